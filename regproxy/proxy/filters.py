"""Stream filters on the request path of the egress listener.

A rule's filters run in order after routing and before a host is picked.  Each returns a decision
and touches nothing else: ``CONTINUE`` (None: run the next one, then forward), ``Answer`` (the
request is answered with this status and message, not forwarded) or ``Delay`` (the chain goes on
after this many seconds).  The Forwarder carries the decision out.  A request whose rule has no
filters walks no chain at all.

Built-ins: fault injection (delay, abort), local rate limit (token bucket per service or per
method), the access log (on completion, one line per request; off by default) and metrics (the
listener's ``ListenerStats``, always on and counted inline by the forwarder, so it is not a chain
member and costs no call per request).
"""

from __future__ import annotations

import logging
import random as _random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from regproxy.dubbo.frame import Status
from regproxy.routing.rules import Fault, RateLimit, Rule

if TYPE_CHECKING:
    from regproxy.proxy.exchange import Exchange


class Answer:
    """Answer the request with ``status`` and ``message`` instead of forwarding it."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class Delay:
    """Run the rest of the chain (and forward) after ``seconds``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Decision = Answer | Delay | None
CONTINUE: Decision = None

# Token buckets are per key (service or service.method): bound what a stream of invented names can add.
_MAX_BUCKETS = 4096


class StreamFilter(Protocol):
    def on_request(self, exch: Exchange) -> Decision:
        """CONTINUE, or what to do with ``exch`` instead (Answer, Delay)."""
        ...


class FaultFilter:
    """Abort a share of requests with a Dubbo status, and delay a share before forwarding."""

    __slots__ = ("_rng", "aborted", "delayed", "fault", "rule")

    def __init__(self, rule: str, fault: Fault, rng: _random.Random | None = None) -> None:
        self.rule = rule
        self.fault = fault
        self._rng = rng or _random.Random()
        self.aborted = 0
        self.delayed = 0

    def on_request(self, exch: Exchange) -> Decision:
        f = self.fault
        rng = self._rng
        if f.abort_percent and rng.random() * 100 < f.abort_percent:
            self.aborted += 1
            return Answer(f.abort_status, f.abort_message or f"fault injected by rule {self.rule!r}")
        if f.delay_percent and rng.random() * 100 < f.delay_percent:
            self.delayed += 1
            return Delay(f.delay_ms / 1000)
        return CONTINUE


class RateLimitFilter:
    """A local token bucket: ``requests_per_second`` refill, ``burst`` capacity, per key."""

    __slots__ = ("_buckets", "_clock", "limit", "rejected", "rule")

    def __init__(self, rule: str, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.rule = rule
        self.limit = limit
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]
        self.rejected = 0

    def on_request(self, exch: Exchange) -> Decision:
        limit = self.limit
        key = exch.service if limit.per == "service" else exch.label
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [float(limit.burst), now]
            if len(self._buckets) < _MAX_BUCKETS:
                self._buckets[key] = bucket
        tokens = min(float(limit.burst), bucket[0] + (now - bucket[1]) * limit.requests_per_second)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.rejected += 1
            return Answer(
                Status.SERVER_THREADPOOL_EXHAUSTED,
                f"rate limited by rule {self.rule!r}: over {limit.requests_per_second:g} requests/s "
                f"(burst {limit.burst}) for {key}",
            )
        bucket[0] = tokens - 1.0
        return CONTINUE


def build_filters(rule: Rule) -> tuple[StreamFilter, ...]:
    """The chain of one rule: faults first (a drill simulates the upstream), then the rate limit."""
    chain: list[StreamFilter] = []
    if rule.fault is not None:
        chain.append(FaultFilter(rule.name, rule.fault))
    if rule.rate_limit is not None:
        chain.append(RateLimitFilter(rule.name, rule.rate_limit))
    return tuple(chain)


class AccessLog:
    """One line per finished request: listener, service, method, upstream host, status, duration.

    ``target=True`` logs to the ``regproxy.access`` logger (the process log); a string is a file
    path the lines are appended to.
    """

    def __init__(self, target: bool | str) -> None:
        self.target = target
        self._handler: logging.Handler | None = None
        if isinstance(target, str):
            self.logger = logging.getLogger(f"regproxy.access.{target}")
            self.logger.propagate = False
            self.logger.setLevel(logging.INFO)
            self._handler = logging.FileHandler(target, encoding="utf-8")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(self._handler)
        else:
            self.logger = logging.getLogger("regproxy.access")

    def record(
        self, listener: str, exch: Exchange, status: int, seconds: float, protocol: str = "dubbo"
    ) -> None:
        """``status``: the Dubbo status, or for a Triple call (``protocol`` "tri", said at the end of
        the line) the grpc-status, -1 when the call ended without one (a reset)."""
        self.logger.info(
            "%s %s %s upstream=%s status=%d duration_ms=%.1f%s",
            listener,
            exch.service,
            exch.method,
            exch.tried[-1] if exch.tried else "-",
            status,
            seconds * 1000,
            "" if protocol == "dubbo" else f" protocol={protocol}",
        )

    def close(self) -> None:
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
