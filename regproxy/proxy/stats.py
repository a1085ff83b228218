"""Counters kept by the forwarding engine; the admin endpoint and /metrics read them.

Plain ints, lists and dicts (not Counters: an exact dict's item update is about half the cost of
a subclass's on the request path), updated at the cost of an add; turning them into Prometheus
metric families happens at scrape time (regproxy/api/metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Upper bounds in seconds; a sidecar hop is sub-millisecond, consumer timeouts are seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """Per-bucket counts (not cumulative), the last one for +Inf, with sum and count."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float, times: int = 1) -> None:
        # bisect_left's index (the first bound >= seconds), found from the smallest bound up: a hop
        # takes well under a millisecond, so this ends at the first or second bound, where a call
        # to bisect costs more than the whole scan once compiled (benchmarks.hotpath).
        buckets = self.buckets
        i = 0
        n = len(buckets)
        while i < n and buckets[i] < seconds:
            i += 1
        self.counts[i] += times
        self.sum += seconds * times
        self.count += times

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (an estimate, as Prometheus gives)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")

    def snapshot(self) -> dict[str, object]:
        return {
            "count": self.count,
            "sum": round(self.sum, 6),
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
            "buckets": dict(zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True)),
        }


@dataclass(slots=True)
class ListenerStats:
    requests: int = 0
    oneway: int = 0
    heartbeats: int = 0
    responses: dict[int, int] = field(default_factory=dict)  # by Dubbo status, including our own errors
    per_service: dict[str, int] = field(default_factory=dict)  # by "group/interface:version.method"
    # The requests of per_service answered with an error (any status but OK; for Triple, any
    # grpc-status but 0, or a reset): the status page's errors a second per service.
    per_service_errors: dict[str, int] = field(default_factory=dict)
    # (service "group/interface:version", method) -> time from request to response, errors included
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    upstream_requests: dict[str, int] = field(default_factory=dict)  # by upstream address
    # The requests of per_service_errors whose exchange had tried a host, by the last host tried (an
    # error with no host tried, e.g. no route, is nobody's): the admin API's errors per host.
    upstream_errors: dict[str, int] = field(default_factory=dict)
    # upstream address -> time from request to response (errors and timeouts included) of the
    # requests whose last try went to that host: latency per host, beside ``latency`` per service.
    upstream_latency: dict[str, Histogram] = field(default_factory=dict)
    timeouts: int = 0
    retries: int = 0
    connect_failures: int = 0
    protocol_errors: int = 0
    ejections: int = 0  # hosts taken out by health checking (none until that lands)
    downstream_connections: int = 0
    rejected_connections: int = 0
    loops: int = 0  # requests answered with the loop error (regproxy.proxy.loops)
    failsafe: int = 0  # failures a declared `cluster=failsafe` answered with an empty result
    # The ingress's provider filters (Route.guard): calls refused for a wrong token, over `executes`.
    refused_tokens: int = 0
    refused_executes: int = 0
    # Flow control (regproxy.proxy.flow): client connections paused, closed for not reading their
    # answers; requests not written to an upstream that does not read; frames from an upstream
    # that answer no request in flight (requests, never-issued ids).
    paused_reads: int = 0
    unsent_closes: int = 0
    upstream_unsent_refusals: int = 0
    upstream_foreign_frames: int = 0
    # Triple: streams refused over SETTINGS_MAX_CONCURRENT_STREAMS (regproxy.triple.settings).
    refused_streams: int = 0

    def answered(self, status: int) -> None:
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1

    def histogram(self, service: str, method: str) -> Histogram:
        """The latency histogram of (service, method); the forwarder keeps it with its plan."""
        hist = self.latency.get((service, method))
        if hist is None:
            hist = self.latency[(service, method)] = Histogram()
        return hist

    def host_histogram(self, address: str) -> Histogram:
        """The latency histogram of ``address``; an upstream connection keeps it (host_latency)."""
        hist = self.upstream_latency.get(address)
        if hist is None:
            hist = self.upstream_latency[address] = Histogram()
        return hist

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "oneway": self.oneway,
            "heartbeats": self.heartbeats,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "per_service": dict(self.per_service),
            "per_service_errors": dict(self.per_service_errors),
            "latency": {f"{svc}.{m}": h.snapshot() for (svc, m), h in self.latency.items()},
            "upstream_requests": dict(self.upstream_requests),
            "upstream_errors": dict(self.upstream_errors),
            "upstream_latency": {address: h.snapshot() for address, h in self.upstream_latency.items()},
            "timeouts": self.timeouts,
            "retries": self.retries,
            "connect_failures": self.connect_failures,
            "protocol_errors": self.protocol_errors,
            "ejections": self.ejections,
            "downstream_connections": self.downstream_connections,
            "rejected_connections": self.rejected_connections,
            "loops": self.loops,
            "paused_reads": self.paused_reads,
            "unsent_closes": self.unsent_closes,
            "upstream_unsent_refusals": self.upstream_unsent_refusals,
            "upstream_foreign_frames": self.upstream_foreign_frames,
            "refused_streams": self.refused_streams,
            "failsafe": self.failsafe,
            "refused_tokens": self.refused_tokens,
            "refused_executes": self.refused_executes,
        }
