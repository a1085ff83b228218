"""The short history the status page draws: per listener, protocol and service, once a second, the
requests and errors a second and the p50 and p99 latency of that second, for the last
HISTORY_S seconds.

Pure: ``TimeSeries.sample(now, counters)`` takes the listeners' cumulative counters (what
``ListenerStats`` holds: requests and errors per ``service.method``, a latency histogram per
(service, method)) and keeps the differences since the previous sample. Bounded: HISTORY_S points
per series, MAX_SERIES series (the ones seen first; a peer inventing services gets no more).
The sidecar calls ``sample`` every INTERVAL_S; the admin API serves ``points``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

INTERVAL_S: Final = 1.0
HISTORY_S: Final = 900  # 15 minutes
MAX_SERIES: Final = 256

# (listener, protocol, service)
SeriesKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Counters:
    """One service's cumulative counters on one listener and protocol: requests, errors, and the
    latency histogram's bucket bounds (seconds) and counts (one more count than bounds: +Inf)."""

    requests: int
    errors: int
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()


@dataclass(slots=True)
class Point:
    t: float  # wall-clock seconds
    rps: float
    eps: float
    p50_ms: float | None  # None: no call ended in that interval
    p99_ms: float | None


@dataclass(slots=True)
class _Series:
    last: Counters
    points: deque[Point] = field(default_factory=lambda: deque(maxlen=HISTORY_S))


def quantile_ms(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram's counts, in milliseconds, interpolated within its bucket
    (the way Prometheus's histogram_quantile reads buckets); the last finite bound for +Inf; None
    for no observation."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for i, n in enumerate(counts):
        if i >= len(bounds):
            return round(lower * 1000, 3)  # in +Inf: the highest bound is all that can be said
        upper = bounds[i]
        if n and seen + n >= rank:
            return round((lower + (upper - lower) * (rank - seen) / n) * 1000, 3)
        seen += n
        lower = upper
    return round(lower * 1000, 3)


class TimeSeries:
    """The history: ``sample`` once per interval, ``points`` to read it."""

    def __init__(self, history: int = HISTORY_S, max_series: int = MAX_SERIES) -> None:
        self.history = history
        self.max_series = max_series
        self._series: dict[SeriesKey, _Series] = {}
        self._last_t: float | None = None

    def sample(self, now: float, counters: Mapping[SeriesKey, Counters]) -> None:
        """Add a point per series from the cumulative ``counters`` at wall-clock time ``now``. The
        first sample of a series only sets its base (a rate needs two)."""
        elapsed = now - self._last_t if self._last_t is not None else None
        self._last_t = now
        for key, cur in counters.items():
            series = self._series.get(key)
            if series is None:
                if len(self._series) < self.max_series:
                    self._series[key] = _Series(cur, deque(maxlen=self.history))
                continue
            last, series.last = series.last, cur
            if not elapsed or elapsed <= 0 or cur.requests < last.requests:
                continue  # the first interval, or the counters started again (a restart of stats)
            deltas = (
                [c - p for c, p in zip(cur.counts, last.counts, strict=True)]
                if len(cur.counts) == len(last.counts)
                else list(cur.counts)
            )
            series.points.append(
                Point(
                    t=round(now, 3),
                    rps=round((cur.requests - last.requests) / elapsed, 3),
                    eps=round((cur.errors - last.errors) / elapsed, 3),
                    p50_ms=quantile_ms(cur.bounds, deltas, 0.5),
                    p99_ms=quantile_ms(cur.bounds, deltas, 0.99),
                )
            )

    def points(self, seconds: float | None = None) -> list[tuple[SeriesKey, list[Point]]]:
        """Every series with its points of the last ``seconds`` (all of them: None)."""
        out = []
        for key, series in sorted(self._series.items()):
            points = list(series.points)
            if seconds is not None and self._last_t is not None:
                since = self._last_t - seconds
                points = [p for p in points if p.t > since]
            out.append((key, points))
        return out


def by_service(
    per_method: Mapping[str, int],
    errors: Mapping[str, int],
    histograms: Iterable[tuple[str, Sequence[float], Sequence[int]]],
) -> dict[str, Counters]:
    """A listener's counters by service: ``per_method`` and ``errors`` are by ``service.method``
    (ListenerStats.per_service and per_service_errors), ``histograms`` (service, bounds, counts)
    one per (service, method); each summed per service."""
    requests: dict[str, int] = {}
    errs: dict[str, int] = {}
    for label, n in per_method.items():
        service = label.rpartition(".")[0] or label
        requests[service] = requests.get(service, 0) + n
    for label, n in errors.items():
        service = label.rpartition(".")[0] or label
        errs[service] = errs.get(service, 0) + n
    hists: dict[str, tuple[tuple[float, ...], list[int]]] = {}
    for service, bounds, counts in histograms:
        known = hists.get(service)
        if known is None:
            hists[service] = (tuple(bounds), list(counts))
        elif len(known[1]) == len(counts):
            for i, n in enumerate(counts):
                known[1][i] += n
    return {
        service: Counters(
            requests=n,
            errors=errs.get(service, 0),
            bounds=hists.get(service, ((), []))[0],
            counts=tuple(hists.get(service, ((), []))[1]),
        )
        for service, n in requests.items()
    }
