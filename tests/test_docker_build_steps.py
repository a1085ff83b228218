"""The Docker image's build, run without a Docker engine: the Dockerfile's own steps, in fresh venvs.

There is no Docker engine where the tests run. The Dockerfile keeps its work in
scripts/docker-build.sh (one step per stage), and this test plays the Dockerfile stage by stage:
each stage is a directory standing for its filesystem and a fresh python3.11 venv standing for the
image's Python; its ``COPY`` lines copy (from the checkout, as ``.dockerignore`` filters the
context, or ``--from`` the builder), and its ``RUN`` lines that call the script run as written,
with the stage's absolute paths moved under its directory. Only the lines that need root and
Debian (apt-get, useradd) are not run. Then the installed ``regproxy run``, started outside any
checkout, must log the compiled data path, and load the ``.so`` files of every compiled module.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regproxy import native
from tests.ports import free_ports
from tests.sidecars import terminate

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "python3.11"  # the Python of the image (python:3.11-slim)
# Lines of the Dockerfile this test does not run: they need root and Debian, and install nothing
# Python imports (the C compiler is this machine's; the user only changes who runs the sidecar).
NOT_RUN = ("apt-get", "useradd")


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """The Dockerfile as (stage name, [(instruction, arguments)]), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            name = rest.split(" AS ")[1].strip() if " AS " in rest else f"stage{len(out)}"
            out.append((name, []))
        else:
            out[-1][1].append((word, rest.strip()))
    return out


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``rel`` out of the context (its last matching line decides)."""
    out = False
    for p in patterns:
        keep = p.startswith("!")
        pat = p.lstrip("!")
        parts = rel.split("/")
        # A pattern matches the path or one of its parents (a kept directory keeps its files).
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts)))
        if pat.startswith("**/"):  # at any depth: any component of the path
            hit = hit or any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        if hit:
            out = not keep
    return out


def copy_tree(src: Path, dest: Path, rel: str, patterns: list[str] | None) -> None:
    if src.is_dir():
        for child in sorted(src.iterdir()):
            copy_tree(child, dest / child.name, f"{rel}/{child.name}" if rel else child.name, patterns)
        return
    if patterns is not None and ignored(rel, patterns):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def in_stage(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def copy(args: str, root: Path, roots: dict[str, Path], patterns: list[str]) -> None:
    words = args.split()
    origin, context = ROOT, patterns
    if words[0].startswith("--from="):
        origin, context = roots[words.pop(0).split("=", 1)[1]], None
    *sources, dest = words
    for source in sources:
        src = in_stage(origin, source)  # the checkout is the context: what .dockerignore drops is absent
        target = in_stage(root, dest)
        if dest.endswith("/") and not src.is_dir():
            target = target / src.name
        copy_tree(src, target, source.strip("/"), context)


def stage_env(venv: Path) -> dict[str, str]:
    # The sidecar's own environment, not this test run's: no forced pure Python, no checkout on the path.
    env = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, "PYTHONPATH", "REGPROXY_NATIVE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = str(venv / "bin" / "python")
    env["VIRTUAL_ENV"] = str(venv)
    return env


def run_line(command: str, root: Path, env: dict[str, str]) -> None:
    # Every absolute path (/src, /dist) is the stage's, under its root here: never this machine's.
    moved = re.sub(r"(?<![\w./-])/(?=[\w.-])", f"{root}/", command)
    done = subprocess.run(
        ["sh", "-c", moved], cwd=root, env=env, capture_output=True, text=True, check=False, timeout=420
    )
    noise = re.compile(r"^WARNING: Location '.*' is ignored")  # this machine's pip.conf (see Makefile)
    output = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if not noise.match(line))
    assert done.returncode == 0, f"RUN {command}\n(as {moved})\n{output[-4000:]}"


@pytest.mark.process
@pytest.mark.timeout(480)
def test_the_image_build_steps_give_a_sidecar_running_the_compiled_data_path(tmp_path: Path) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    roots: dict[str, Path] = {}
    venvs: dict[str, Path] = {}
    ran: list[str] = []
    timings: dict[str, float] = {}
    for name, instructions in stages():
        root = roots[name] = tmp_path / name
        root.mkdir()
        venv = venvs[name] = tmp_path / f"venv-{name}"
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True)
        env = stage_env(venv)
        start = time.monotonic()
        for word, args in instructions:
            if word == "COPY":
                copy(args, root, roots, patterns)
            elif word == "RUN" and not any(tool in args for tool in NOT_RUN):
                run_line(args, root, env)
                ran.append(f"{name}: {args}")
        timings[name] = time.monotonic() - start
    builder, runtime = list(roots)
    assert any("docker-build.sh builder" in r for r in ran), ran
    assert any(r.startswith(f"{runtime}: ") and "docker-build.sh runtime" in r for r in ran), ran

    # The builder's wheel is what the runtime stage installed.
    assert list((roots[builder] / "dist").glob("regproxy-*.whl"))
    # The runtime venv has neither mypy nor mypyc: the compiled modules came in the wheel.
    venv = venvs[runtime]
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not (site / "mypy").exists() and not (site / "mypyc").exists()
    assert (site / native.STAMP).is_file()
    for module in native.MODULES:
        assert native.compiled_paths(module, site), f"{module}: no compiled module in the image's package"

    # `regproxy run` as the image's ENTRYPOINT runs it: from its WORKDIR, not this checkout.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    egress, ingress, api, admin, app = free_ports(5)
    log = workdir / "regproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "regproxy"), "run", "--egress", f"127.0.0.1:{egress}",
             "--ingress", f"127.0.0.1:{ingress}", "--api", f"127.0.0.1:{api}",
             "--admin", f"127.0.0.1:{admin}",
             "--app-port", str(app), "--data-dir", str(workdir)],
            cwd=workdir, env=stage_env(venv), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "regproxy running" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        started = [line for line in log.read_text().splitlines() if "regproxy running" in line]
        assert started, log.read_text()
        assert "data path compiled with mypyc" in started[0], started[0]
        code = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import regproxy.native as n, importlib; "
             "print(*(importlib.import_module(m).__file__ for m in n.MODULES), sep='\\n')"],
            cwd=workdir, env=stage_env(venv), capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(code) == len(native.MODULES) and all(
            f.startswith(str(site)) and f.endswith(".so") for f in code
        ), code
    finally:
        terminate(proc, 30)
    print(f"stage times: {', '.join(f'{n} {s:.0f} s' for n, s in timings.items())}", file=sys.stderr)
