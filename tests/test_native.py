"""The compiled data path (regproxy/native.py): never stale, and the pure one still passes."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_this_process_runs_the_data_path_it_says() -> None:
    import regproxy.proxy.forwarder as forwarder

    compiled = not (forwarder.__file__ or "").endswith(".py")
    assert compiled == (native.check() is None), native.describe()
    assert native.describe().startswith("compiled" if compiled else "pure Python")


def _pure_env() -> dict[str, str]:
    return {**os.environ, native.PURE_ENV: "1"}


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


def test_the_pure_data_path_passes_the_data_path_tests() -> None:
    """The suite runs whichever path is built (compiled under make test); these data-path tests
    also run on the pure one, which is the same source."""
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *(str(tests / t) for t in ("test_plans.py", "test_frame.py", "test_deadlines.py"))],
        env=_pure_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
