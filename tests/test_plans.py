"""The forwarder's memoised routing decisions follow every change of table, rules and group."""

from __future__ import annotations

import asyncio

from benchmarks.hotpath import Transport
from regproxy.config import Config
from regproxy.dubbo.encode import encode_request
from regproxy.dubbo.frame import FrameParser, Status
from regproxy.proxy.batch import Batcher
from regproxy.proxy.forwarder import Forwarder
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.upstream import UpstreamConnection, UpstreamEvents, UpstreamPool
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder

SVC = "com.x.Svc"
A, B = "10.0.0.1:20882", "10.0.0.2:20882"


def table(address: str, group: str | None = None) -> RoutingTable:
    return RoutingTable(
        [Route("r", RouteMatch(service=SVC, group=group), "c")],
        [Cluster("c", "round_robin", (Host(address),))],
    )


class Harness:
    def __init__(self, initial: RoutingTable) -> None:
        loop = asyncio.get_running_loop()
        self.batcher = Batcher(loop)
        self.holder = TableHolder(initial)

        def make_pool(events: UpstreamEvents) -> UpstreamPool:
            return UpstreamPool(loop, self.batcher, events, max_body=1 << 20)

        self.fwd = Forwarder("egress", loop, self.holder, self.batcher, make_pool, default_timeout_ms=3000)
        self.up: dict[str, Transport] = {}
        for address in (A, B):
            conn = UpstreamConnection(self.fwd.pool, address)
            self.fwd.pool._conns[address] = [conn]
            self.up[address] = Transport()
            conn.connection_made(self.up[address])  # type: ignore[arg-type]
        self.down = DownstreamConnection(self.fwd, 1 << 20)
        self.down_t = Transport()
        self.down.connection_made(self.down_t)  # type: ignore[arg-type]

    def send(self, group: str = "") -> str:
        """Where one request went: an upstream address, or the Dubbo status answered here."""
        before = {a: t.writes for a, t in self.up.items()}
        replies = self.down_t.writes
        self.down.data_received(encode_request(1, SVC, "m", ["x"], group=group))
        self.batcher.flush()
        for address, t in self.up.items():
            if t.writes > before[address]:
                return address
        assert self.down_t.writes > replies, "neither forwarded nor answered"
        return f"status {FrameParser().feed(self.down_t.last)[0].status}"


async def test_plans_follow_table_swaps_rules_and_groups() -> None:
    h = Harness(table(A))
    assert [h.send() for _ in range(3)] == [A, A, A]
    h.holder.swap(table(B))
    assert h.send() == B  # a new table: the memoised decision is not reused
    # A rule for the service: its fault aborts every request, memo or not.
    abort = {"name": "no", "match": {"service": SVC}, "fault": {"abort": {"status": 60, "percentage": 100}}}
    h.fwd.rules = Config.from_dict({"clusters": [{"name": "c"}], "routes": [abort]}).to_rule_set()
    assert h.send() == f"status {Status.SERVICE_NOT_FOUND}"
    h.fwd.rules = Config.from_dict({}).to_rule_set()
    assert h.send() == B
    # A table matching on the group: one memo per group, and other groups get no route.
    h.holder.swap(table(A, group="g"))
    missing = f"status {Status.SERVICE_NOT_FOUND}"
    assert [h.send("g"), h.send("g"), h.send("h"), h.send(""), h.send("g")] == [A, A, missing, missing, A]
