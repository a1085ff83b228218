"""Thinning out a registry client library's repeated log lines.

While ZooKeeper is down, kazoo tries to reconnect every second or two and logs each attempt
("Connecting to ...", then "Connection dropped: ... Connection refused"): hundreds of lines for an
outage that regproxy reports in two of its own (unreachable, back after N s; registry/base.py).
:class:`QuietLog` is the logger such a client is given: of each kind of record (its level and
format string) the first goes through, then at most one per ``every_s`` seconds, carrying the
count of those held back meanwhile, "(12 similar suppressed)". Errors always go through. It can
also show each record to an ``observe`` callback, which is how the ZooKeeper adapter learns of a
failed connection attempt (kazoo has no other hook for it) and why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

Observer = Callable[[int, str, tuple[Any, ...]], None]


class RepeatLimiter:
    """Lets the first of each kind through, then at most one per ``every_s`` seconds.

    Thread-safe: client libraries log from their own threads."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[Hashable, tuple[float, int]] = {}  # kind -> (when last let through, held back)

    def admit(self, kind: Hashable) -> int | None:
        """None: hold this one back; else how many of its kind were held back since the last."""
        now = self._clock()
        with self._lock:
            last = self._kinds.get(kind)
            if last is not None and now - last[0] < self.every_s:
                self._kinds[kind] = (last[0], last[1] + 1)
                return None
            self._kinds[kind] = (now, 0)
            return last[1] if last is not None else 0

    def held_back(self) -> int:
        """How many records are held back since the last of their kind went through."""
        with self._lock:
            return sum(n for _, n in self._kinds.values())

    def reset(self) -> int:
        """Forget every kind (the next of each goes through); how many were held back in all."""
        held = self.held_back()
        with self._lock:
            self._kinds.clear()
        return held


class QuietLog(logging.LoggerAdapter[logging.Logger]):
    """``logger`` with its repeats thinned out by a :class:`RepeatLimiter` (see the module doc)."""

    def __init__(self, logger: logging.Logger, every_s: float, observe: Observer | None = None) -> None:
        super().__init__(logger, {})
        self.limiter = RepeatLimiter(every_s)
        self._observe = observe
        # Set while the client is being stopped on purpose: what it then warns of (kazoo: "Failed
        # connecting to Zookeeper within the connection retry policy", its retries being cut short)
        # is the stop's doing, not news for an operator, and is logged at INFO.
        self.stopping = False

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._observe is not None:
            self._observe(level, str(msg), args)
        if self.stopping and level == logging.WARNING:
            level = logging.INFO
        if not self.isEnabledFor(level):
            return
        if level < logging.ERROR:
            held = self.limiter.admit((level, msg))
            if held is None:
                return
            if held:
                text = str(msg) if args else str(msg).replace("%", "%%")
                msg, args = f"{text} (%d similar suppressed)", (*args, held)
        self.logger.log(level, msg, *args, **kwargs)
