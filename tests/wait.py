"""Waiting in tests: the one poll-until helper of the suite.

A test waits for the state it needs (``await wait_for(lambda: ..., 5, "the node to go")``), never a
fixed ``asyncio.sleep``: a sleep is too short on a loaded CI machine and too long everywhere else.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def wait_for(
    check: Callable[[], object | Awaitable[object]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    in_thread: bool = False,
    detail: Callable[[], str] | None = None,
) -> float:
    """Call ``check`` every ``interval`` seconds until it returns something true; the seconds that took.

    ``check`` is a plain function, or one that returns an awaitable (an ``async def``), awaited.
    ``in_thread=True`` calls a plain ``check`` in a worker thread, for one that blocks: a kazoo read
    waits out a ZooKeeper outage, and on the event loop it would stop the in-process apps and traffic
    the test relies on meanwhile.

    After ``timeout`` seconds: AssertionError naming ``what`` and the last value ``check`` returned,
    then what ``detail()`` says (a sidecar's ``log_tail``, say).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = await asyncio.to_thread(check) if in_thread else check()
        if inspect.isawaitable(result):
            result = await result
        took = loop.time() - start
        if result:
            return took
        if took > timeout:
            message = f"timed out after {timeout} s waiting for {what} (last: {result!r:.200})"
            raise AssertionError(f"{message}\n{detail()}" if detail else message)
        await asyncio.sleep(interval)
