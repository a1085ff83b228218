"""The data path compiled with mypyc, and the checks that keep it from running stale code.

The modules in ``MODULES`` hold regproxy's per-request work: frame splitting, the forwarder, the
connections, deadlines and counters. They are ordinary typed Python, and run as such; ``make
native`` (``scripts/native.py``) also compiles them with mypyc (part of mypy), which turns the same
source into C extension modules that Python imports in place of the ``.py`` files. At the
benchmark's pipelined load that cuts the Python per request by a third (docs/performance.md).

A compiled module left over after its source was edited would silently run the old code. So the
build records a hash of every compiled source (``STAMP``); on the first import of regproxy,
``install()`` compares them with the sources on disk, and if they differ — or if
``REGPROXY_PURE_PYTHON=1`` asks for it — puts an import finder first that loads these modules from
their ``.py`` files, and says why in ``describe()`` (logged at start), with how to compile it
where regproxy runs (``build_hint()``: a checkout's ``make native``; nothing to do in a package).
Nothing else changes: the compiled and the pure data path are one source, and the tests run both.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

try:  # installed with mypy; mypyc reads the decorator, plain Python needs only a stand-in
    from mypy_extensions import mypyc_attr
except ImportError:  # pragma: no cover - without the native extra

    def mypyc_attr(*_attrs: str, **_kwattrs: Any) -> Any:  # type: ignore[no-redef]
        return lambda cls: cls


MODULES = (
    "regproxy.dubbo.frame",
    "regproxy.dubbo.request",
    "regproxy.proxy.batch",
    "regproxy.proxy.deadlines",
    "regproxy.proxy.exchange",
    "regproxy.proxy.flow",
    "regproxy.proxy.forwarder",
    "regproxy.proxy.listener",
    "regproxy.proxy.plan",
    "regproxy.proxy.stats",
    "regproxy.proxy.upstream",
)

ROOT = Path(__file__).resolve().parent.parent  # the directory that holds the regproxy package
STAMP = "regproxy/_native.json"  # relative to ROOT; written by scripts/native.py
PURE_ENV = "REGPROXY_PURE_PYTHON"

_state = {"mode": "pure Python (not checked yet)"}


def source_path(module: str, root: Path = ROOT) -> Path:
    return root / (module.replace(".", "/") + ".py")


def compiled_paths(module: str, root: Path = ROOT) -> list[Path]:
    """The extension modules Python would import for ``module`` instead of its source."""
    base = source_path(module, root).with_suffix("")
    return [p for suffix in importlib.machinery.EXTENSION_SUFFIXES if (p := Path(f"{base}{suffix}")).exists()]


def source_hashes(root: Path = ROOT, modules: Sequence[str] = MODULES) -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m, root).read_bytes()).hexdigest() for m in modules}


def check(root: Path = ROOT, modules: Sequence[str] = MODULES) -> str | None:
    """None when the compiled modules match their sources; else why the pure ones must run.
    Also a reason when nothing is compiled (the finder is then harmless). The reason only: how to
    compile is ``build_hint()``'s, which depends on where regproxy runs from."""
    if not any(compiled_paths(m, root) for m in modules):
        return "not compiled"
    try:
        built = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return f"compiled modules without {STAMP}: cannot tell what they were built from"
    current = source_hashes(root, modules)
    changed = sorted(m for m in modules if built.get(m) != current[m])
    if changed:
        return f"sources changed since the build ({', '.join(changed)})"
    return None


def build_hint(root: Path = ROOT) -> str:
    """How the data path gets compiled, as true where this regproxy runs from: a source checkout
    has the Makefile and scripts/native.py; an installed package (``pip install``, the Docker image)
    has neither, and runs the pure data path, which is complete, by design."""
    if (root / "scripts" / "native.py").is_file():
        if (root / "Makefile").is_file():
            return "make native builds it"
        return "python scripts/native.py builds it"
    return (
        "as expected for an installed package, which ships the data path as Python only; compiling it "
        "for less CPU per request is done in a source checkout with make native (docs/performance.md)"
    )


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the data-path modules from their ``.py`` files, whatever extension sits beside them."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or not path:
            return None
        source = os.path.join(path[0], fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def install() -> None:
    """Run once, before any data-path module is imported (regproxy/__init__.py)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        why: str | None = f"pure Python ({PURE_ENV} is set)"
    else:
        problem = check()
        why = None if problem is None else f"pure Python: {problem} ({build_hint()})"
    if why is None:
        _state["mode"] = "compiled with mypyc"
        return
    _state["mode"] = why
    if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst(MODULES))


def describe() -> str:
    """Which data path this process runs, for the start-up log and the admin API."""
    loaded = [sys.modules[m] for m in MODULES if m in sys.modules]
    if loaded and all((mod.__file__ or "").endswith(".py") for mod in loaded):
        return _state["mode"] if _state["mode"].startswith("pure") else "pure Python"
    return _state["mode"]
