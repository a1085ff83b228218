"""Running a demo ``main`` coroutine: on uvloop when it is installed (as the sidecar runs), else asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            return runner.run(coro)
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
            return 130
