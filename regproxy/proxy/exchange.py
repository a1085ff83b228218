"""One request in flight through a listener: where it came from, where it may go, its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from regproxy.dubbo.frame import Frame

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
        "frame",
        "hosts",
        "method",
        "retries_left",
        "retry_on",
        "service",
        "started",
        "timeout_ms",
        "timer",
        "tried",
        "upstream",
        "upstream_id",
    )

    def __init__(
        self,
        downstream: DownstreamConnection,
        frame: Frame,
        service: str,
        method: str,
        hosts: Sequence[Host],
        balancer: LoadBalancer,
        retries: int,
        timeout_ms: int,
        started: float,
        retry_on: int = 1,
        filters: tuple[StreamFilter, ...] = (),
    ) -> None:
        self.downstream = downstream
        self.downstream_id = frame.request_id
        self.frame = frame
        self.service = service  # "group/interface:version", for messages and counters
        self.method = method
        self.started = started  # perf_counter() when the request arrived
        # The hosts and balancer of the snapshot the request started on: a retry stays on it even
        # if the routing table is swapped meanwhile.
        self.hosts = hosts
        self.balancer = balancer
        self.retries_left = retries
        # RETRY_* flags of regproxy.routing.rules: which failures after writing may be retried
        # (connect failures before writing always may, while retries_left lasts).
        self.retry_on = retry_on
        self.filters = filters  # the rule's stream filters; () for most requests
        self.timeout_ms = timeout_ms
        self.tried: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.upstream: UpstreamConnection | None = None
        self.upstream_id = 0

    @property
    def label(self) -> str:
        return f"{self.service}.{self.method}"

    @property
    def two_way(self) -> bool:
        return self.frame.two_way
