"""The compiled data path (regproxy/native.py): never stale, and the pure one still passes."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from regproxy import native

MODULES = ("pkg.fast", "pkg.slow")


def _tree(root: Path) -> None:
    (root / "pkg").mkdir()
    for m in MODULES:
        native.source_path(m, root).write_text(f"NAME = {m!r}\n")


def test_compiled_modules_run_only_while_they_match_their_sources(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert "not compiled" in (native.check(tmp_path, MODULES) or "")
    suffix = native.compiled_paths  # the extension suffixes Python would import
    ext = native.source_path("pkg.fast", tmp_path).with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])
    ext.write_bytes(b"")
    assert suffix("pkg.fast", tmp_path) == [ext]
    assert "cannot tell" in (native.check(tmp_path, MODULES) or "")
    (tmp_path / native.STAMP).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / native.STAMP).write_text(json.dumps(native.source_hashes(tmp_path, MODULES)))
    assert native.check(tmp_path, MODULES) is None
    native.source_path("pkg.slow", tmp_path).write_text("NAME = 'edited'\n")
    problem = native.check(tmp_path, MODULES) or ""
    assert "sources changed" in problem and "pkg.slow" in problem and "pkg.fast" not in problem


@pytest.mark.process
def test_this_process_runs_the_data_path_it_says() -> None:
    import regproxy.proxy.forwarder as forwarder

    compiled = not (forwarder.__file__ or "").endswith(".py")
    assert compiled == (native.check() is None), native.describe()
    assert native.describe().startswith("compiled" if compiled else "pure Python")


def test_bytes_built_by_the_data_path_are_released() -> None:
    """mypyc 1.13's ``bytes + bytes`` never releases its first operand (regproxy/dubbo/frame.py's
    note): the data path builds bytes with join. Whatever runs here, compiled or pure, the bytes it
    makes per request (the loop marker added, taken out, a frame re-joined) are freed again."""
    import tracemalloc

    from regproxy.dubbo.frame import Frame, FrameParser
    from regproxy.dubbo.request import find_via, strip_via, via_entry

    body = b"\x05hello" * 20 + b"H\x04path\x03a.BZ"
    raw = b"\xda\xbb\xc2\x00" + bytes(8) + len(body).to_bytes(4, "big") + body
    marked = b"".join((raw[:-1], via_entry(b"0123abcd 89abcdef"), b"Z"))
    frame = FrameParser(1 << 20).feed(raw)[0]
    assert isinstance(frame, Frame) and find_via(marked, 16) is not None

    def work() -> None:
        for _ in range(20_000):
            assert strip_via(marked) == raw
            via_entry(b"0123abcd")
            bytes(frame)

    work()  # warm-up: caches, interned constants
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    work()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 20,000 rounds: a leak per call"


def _pure_env() -> dict[str, str]:
    return {**os.environ, native.PURE_ENV: "1"}


@pytest.mark.process
def test_pure_python_can_be_asked_for_whatever_is_compiled() -> None:
    code = (
        "import regproxy.native as n, regproxy.proxy.forwarder as f, regproxy.dubbo.frame as fr;"
        "print(f.__file__, fr.__file__, n.describe())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_pure_env(), capture_output=True, text=True, check=True
    ).stdout
    forwarder_file, frame_file, mode = out.split(" ", 2)
    assert forwarder_file.endswith("forwarder.py") and frame_file.endswith("frame.py")
    assert mode.startswith("pure Python") and native.PURE_ENV in mode


@pytest.mark.process
def test_the_pure_data_path_passes_the_data_path_tests() -> None:
    """The suite runs whichever path is built (compiled under make test); these data-path tests
    also run on the pure one, which is the same source. Not the fuzz properties: they explore
    inputs, which the compiled run already did, and would double their time."""
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not fuzz",
         *(str(tests / t) for t in ("test_plans.py", "test_frame.py", "test_deadlines.py"))],
        env=_pure_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_the_build_hint_is_true_where_regproxy_runs_from(tmp_path: Path) -> None:
    checkout, package = tmp_path / "checkout", tmp_path / "site-packages"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "native.py").write_text("")
    (checkout / "Makefile").write_text("")
    package.mkdir()
    assert native.build_hint(checkout) == "make native builds it"
    (checkout / "Makefile").unlink()
    assert native.build_hint(checkout) == "python scripts/native.py builds it"
    hint = native.build_hint(package)  # pip install, the Docker image: no Makefile, no scripts/
    assert "installed package" in hint and "source checkout" in hint and "builds it" not in hint
    # The reason alone, so that `make native` itself does not print "(make native builds it)".
    assert native.check(package, ()) == "not compiled"


@pytest.mark.process
def test_an_installed_package_does_not_send_its_user_to_a_makefile(tmp_path: Path) -> None:
    # What a wheel installs (the Docker image's `pip install /src`): the package's .py files only.
    site = tmp_path / "site-packages"
    for source in Path(native.ROOT, "regproxy").rglob("*.py"):
        target = site / source.relative_to(native.ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", "import regproxy.native as n; print(n.__file__); print(n.describe())"],
        cwd=site, env=env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[0] == str(site / "regproxy" / "native.py")  # this copy, not the checkout's
    assert out[1].startswith("pure Python: not compiled (as expected for an installed package"), out
    assert "make native builds it" not in out[1]
