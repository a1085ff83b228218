"""One request in flight through a listener: where it came from, where it may go, its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from regproxy.dubbo.frame import Frame

if TYPE_CHECKING:
    from regproxy.proxy.listener import DownstreamConnection
    from regproxy.proxy.upstream import UpstreamConnection
    from regproxy.routing import Host, LoadBalancer


class Exchange:
    __slots__ = (
        "balancer",
        "downstream",
        "downstream_id",
        "frame",
        "hosts",
        "method",
        "retries_left",
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
