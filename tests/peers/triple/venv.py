"""The apache-dubbo peer's own venv, ``<repo>/.venv-peers/apache-dubbo``, built from requirements.txt.

apache-dubbo (PyPI, Apache's Python SDK: Triple only) installs a top-level ``dubbo`` package, and so does
dubbo-python, the Dubbo-protocol test peer in regproxy's own venv: the two cannot share one.  The peers
that use it (ad_server.py, ad_client.py) run as processes of this venv's python.

``apache_dubbo_python()`` returns that python, building the venv first when it is missing or was built
from other pins (a stamp file holds a digest of requirements.txt and of the interpreter).  Two
pytest-xdist workers may ask at once: an exclusive ``fcntl`` lock on ``.venv-peers/apache-dubbo.lock``
makes the second wait for the first and then find the venv ready.  The venv gets no pip of its own: the
calling interpreter's pip installs into it (``pip --python``), which also makes the build take about two
seconds rather than six.

    python -m tests.peers.triple.venv      # build it if needed (`make test` does), print its python
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PINS = Path(__file__).with_name("requirements.txt")
PEERS_DIR = ROOT / ".venv-peers"
VENV = PEERS_DIR / "apache-dubbo"
STAMP_NAME = ".regproxy-pins"

# pip warns "Location '...' is ignored" for every project a configured file:// index lacks: lines that
# say nothing about these pins (the Makefile's PIP_QUIET_LOCATIONS drops the same ones).
_QUIET = re.compile(r"^WARNING: Location '.*' is ignored")


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _wanted_stamp() -> str:
    """What the venv must have been built from: these pins, by this interpreter's Python."""
    digest = hashlib.sha256(PINS.read_bytes())
    digest.update(f"{sys.version_info[:3]} {getattr(sys, '_base_executable', sys.executable)}".encode())
    return digest.hexdigest()


def _is_current(venv: Path, wanted: str) -> bool:
    try:
        return (venv / STAMP_NAME).read_text().strip() == wanted and _python(venv).exists()
    except OSError:
        return False


def _pip_install(python: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", "-r", str(PINS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )  # fmt: skip
    said = "\n".join(line for line in done.stdout.splitlines() if not _QUIET.match(line))
    if done.returncode != 0:
        raise RuntimeError(f"installing {PINS.name} into {python.parent.parent} failed:\n{said}")
    if said.strip():
        print(said, file=sys.stderr)


def ensure(venv: Path = VENV) -> Path:
    """The venv's python; the venv is (re)built from requirements.txt first if it is not current."""
    wanted = _wanted_stamp()
    if _is_current(venv, wanted):
        return _python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if _is_current(venv, wanted):  # another process built it while this one waited
            return _python(venv)
        # From scratch: a venv of other pins may hold packages the new ones no longer list.
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        _pip_install(_python(venv))
        tmp = venv / f"{STAMP_NAME}.tmp"
        tmp.write_text(wanted + "\n")
        os.replace(tmp, venv / STAMP_NAME)  # the stamp last: a half-built venv is never current
    return _python(venv)


def apache_dubbo_python() -> Path:
    """The python of ``<repo>/.venv-peers/apache-dubbo``, built first if missing or of other pins."""
    return ensure(VENV)


if __name__ == "__main__":
    print(apache_dubbo_python())
