"""Compile regproxy's data path with mypyc, in place (what and why: regproxy/native.py).

    .venv/bin/python scripts/native.py           # build if a source changed since the last build
    .venv/bin/python scripts/native.py --clean   # remove the compiled modules: pure Python again

Needs mypy (the `native` extra: `pip install -e '.[native]'`) and a C compiler with Python's
headers. Without them it says so and leaves the data path pure Python, unless
REGPROXY_NATIVE=require (``make test`` sets it): then it fails, so that CI always tests what the
benchmark measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from regproxy import native  # the checkout's regproxy, not an installed one

GROUP = "regproxy._native"  # the compiled modules' shared library: regproxy/_native__mypyc*.so


def compiled_files() -> list[Path]:
    files = [p for m in native.MODULES for p in native.compiled_paths(m)]
    files += sorted((native.ROOT / "regproxy").glob("_native__mypyc*"))
    return files


def clean() -> None:
    for path in [*compiled_files(), native.ROOT / native.STAMP]:
        path.unlink(missing_ok=True)


def build() -> str | None:
    """Compile the modules; None on success, else what went wrong."""
    try:
        import mypyc.build  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as exc:
        return f"mypyc is not installed ({exc}); pip install -e '.[native]'"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc) on PATH"
    hashes = native.source_hashes()
    clean()
    # In a child process, whose compiler output is shown only when the build fails.
    done = subprocess.run(
        [sys.executable, __file__, "--compile"], cwd=native.ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        clean()
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        return f"mypyc build failed:\n{tail}\n"
    (native.ROOT / native.STAMP).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    return None


def compile_in_place() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    paths = [str(native.source_path(m).relative_to(native.ROOT)) for m in native.MODULES]
    setup(
        name="regproxy-native",
        packages=[],
        ext_modules=mypycify(
            # Errors are checked in these modules only: the rest of regproxy is imported, not compiled.
            ["--ignore-missing-imports", "--follow-imports=silent", *paths],
            opt_level="3",
            separate=[(paths, GROUP)],
        ),
        script_args=["build_ext", "--inplace", "--quiet"],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)  # the build's child process
    args = ap.parse_args()
    if args.compile:
        compile_in_place()
        return 0
    if args.clean:
        clean()
        print("native: compiled data path removed; regproxy runs pure Python")
        return 0
    problem = native.check()
    if problem is None:
        print("native: the compiled data path is up to date")
        return 0
    print(f"native: compiling the data path with mypyc ({problem})", flush=True)
    error = build()
    if error is None:
        print(f"native: compiled {len(native.MODULES)} modules")
        return 0
    required = os.environ.get("REGPROXY_NATIVE") == "require"
    print(f"native: {error}; the data path stays pure Python", file=sys.stderr)
    return 1 if required else 0


if __name__ == "__main__":
    raise SystemExit(main())
