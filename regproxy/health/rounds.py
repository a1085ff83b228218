"""``Rounds``: the one task runner of health checking (active checks, the app watch, the outlier sweep).

Each of them is a round of work repeated every interval from start to stop; they start, stop and
survive a failing round the same way, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Rounds"]

log = logging.getLogger(__name__)

# Distinct errors remembered between two good rounds: errors whose text changes every round (an
# address, a count) are logged this many times at most, not once a round.
MAX_DISTINCT_ERRORS = 16


class Rounds:
    """Runs ``work()`` at once, then every ``interval_s`` (start to start; at once again when a round
    took longer), from ``start()`` until ``stop()``; both may be called any number of times.

    A round that raises does not end the task: a bug must not end health checking for good. Its error
    is logged with its traceback once, then at DEBUG while it recurs (the same type and message), until
    a round succeeds: a broken round repeating every interval would otherwise flood the log."""

    def __init__(self, name: str, what: str, work: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self.name = name  # the task's
        self.what = what  # for the log: "active health check", ...
        self.interval_s = interval_s
        self._work = work
        self._task: asyncio.Task[None] | None = None
        self._logged: set[tuple[type[BaseException], str]] = set()  # since the last good round

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._work()
            except Exception as exc:
                self._failed(exc)
            else:
                self._logged.clear()
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    def _failed(self, exc: Exception) -> None:
        key = (type(exc), str(exc))
        if key in self._logged or len(self._logged) >= MAX_DISTINCT_ERRORS:
            log.debug("%s round failed again: %r", self.what, exc)
            return
        self._logged.add(key)
        log.exception("%s round failed (the same failure again is logged at DEBUG until a round succeeds)",
                      self.what)  # fmt: skip
