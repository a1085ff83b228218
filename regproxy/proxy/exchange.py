"""One request in flight through a listener: where it came from, where it may go, its deadline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from regproxy.dubbo.frame import FLAG_TWOWAY, Frame
from regproxy.proxy.stats import Histogram

if TYPE_CHECKING:
    from regproxy.proxy.filters import StreamFilter
    from regproxy.proxy.listener import DownstreamConnection
    from regproxy.proxy.upstream import UpstreamConnection
    from regproxy.routing import Host, LoadBalancer


class Exchange:
    __slots__ = (
        "balancer",
        "downstream",
        "downstream_id",
        "filters",
        "hist",
        "hosts",
        "method",
        "raw",
        "retries_left",
        "retry_on",
        "service",
        "slot",
        "started",
        "timeout_ms",
        "tried",
        "two_way",
        "upstream",
        "upstream_id",
    )

    def __init__(
        self,
        downstream: DownstreamConnection,
        raw: bytes,
        request_id: int,
        service: str,
        method: str,
        hosts: Sequence[Host],
        balancer: LoadBalancer,
        retries: int,
        timeout_ms: int,
        started: float,
        hist: Histogram,
        retry_on: int = 1,
        filters: tuple[StreamFilter, ...] = (),
    ) -> None:
        self.downstream = downstream
        self.raw = raw  # the request as received, header and body: forwarded with its id replaced
        self.downstream_id = request_id
        self.two_way = bool(raw[2] & FLAG_TWOWAY)
        self.service = service  # "group/interface:version", for messages and counters
        self.method = method
        self.started = started  # perf_counter() when the request arrived
        self.hist = hist  # the latency histogram of (service, method)
        # The hosts and balancer of the snapshot the request started on: a retry stays on it even
        # if the routing table is swapped meanwhile.
        self.hosts = hosts
        self.balancer = balancer
        self.retries_left = retries
        # RETRY_* flags of regproxy.routing.rules: which failures after writing may be retried
        # (connect failures before writing always may, while retries_left lasts).
        self.retry_on = retry_on
        self.filters = filters  # the rule's stream filters; () for most requests
        # 0 at the egress until the deadline wheel first asks: the consumer's timeout is read from
        # the attachments only for requests still in flight then (see Forwarder._on_deadline).
        self.timeout_ms = timeout_ms
        self.tried: list[str] = []
        self.slot = 0  # the deadline's bucket in the wheel; 0: none (answered, or one-way)
        self.upstream: UpstreamConnection | None = None
        self.upstream_id = 0

    @property
    def label(self) -> str:
        return f"{self.service}.{self.method}"

    @property
    def frame(self) -> Frame:
        return Frame.of(self.raw)
