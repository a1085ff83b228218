"""The forwarder's memoised routing decisions follow every change of table, rules and group."""

from __future__ import annotations

import asyncio

from benchmarks.hotpath import Transport
from regproxy.config import Config
from regproxy.dubbo.encode import encode_error, encode_request, encode_response
from regproxy.dubbo.frame import FrameParser, Status
from regproxy.proxy.batch import Batcher
from regproxy.proxy.forwarder import Forwarder
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.upstream import UpstreamConnection, UpstreamEvents, UpstreamPool
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.routing.from_config import rule_set
from tests.wait import wait_for

SVC = "com.x.Svc"
A, B = "10.0.0.1:20882", "10.0.0.2:20882"


def table(address: str, group: str | None = None) -> RoutingTable:
    return RoutingTable(
        [Route("r", RouteMatch(service=SVC, group=group), "c")],
        [Cluster("c", "round_robin", (Host(address),))],
    )


class Harness:
    def __init__(self, initial: RoutingTable, *, ingress: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.batcher = Batcher(loop)
        self.holder = TableHolder(initial)

        def make_pool(events: UpstreamEvents) -> UpstreamPool:
            return UpstreamPool(loop, self.batcher, events, max_body=1 << 20)

        self.fwd = Forwarder(
            "ingress" if ingress else "egress",
            loop,
            self.holder,
            self.batcher,
            make_pool,
            default_timeout_ms=3000,
            timeout_from_attachment=not ingress,  # the ingress bounds the app by its own default
        )
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
    h.fwd.rules = rule_set(Config.from_dict({"clusters": [{"name": "c"}], "routes": [abort]}))
    assert h.send() == f"status {Status.SERVICE_NOT_FOUND}"
    h.fwd.rules = rule_set(Config.from_dict({}))
    assert h.send() == B
    # A table matching on the group: one memo per group, and other groups get no route.
    h.holder.swap(table(A, group="g"))
    missing = f"status {Status.SERVICE_NOT_FOUND}"
    assert [h.send("g"), h.send("g"), h.send("h"), h.send(""), h.send("g")] == [A, A, missing, missing, A]


async def test_each_request_keeps_its_own_timeout_when_its_plan_is_memoised() -> None:
    """At the egress the consumer's timeout is read late, per request, not memoised with the
    routing decision: three requests of one method, three deadlines."""
    loop = asyncio.get_running_loop()
    h = Harness(table(A))
    answers: list[tuple[float, bytes]] = []
    h.down_t.write = lambda data: answers.append((loop.time(), bytes(data)))  # type: ignore[method-assign]
    start = loop.time()
    for request_id, timeout_ms in ((1, 2000), (2, 80), (3, 250)):
        h.down.data_received(
            encode_request(request_id, SVC, "m", ["x"], attachments={"timeout": str(timeout_ms)})
        )
        h.batcher.flush()
    assert len(h.fwd.planner.heads) == 1  # requests 2 and 3 took the memoised plan
    await wait_for(lambda: len(answers) >= 2, 1.5, "the 80 and 250 ms timeouts", interval=0.01)
    got = {}
    for when, data in answers:
        frame = FrameParser().feed(data)[0]
        got[frame.request_id] = (when - start, frame.status, frame.body)
    assert list(got) == [2, 3]  # in deadline order; request 1 is still waiting for its 2 s
    for request_id, timeout_ms in ((2, 80), (3, 250)):
        elapsed, status, body = got[request_id]
        assert status == Status.CLIENT_TIMEOUT
        # Its own deadline: named in the answer, and never earlier (a loaded machine is only later).
        assert f"timeout after {timeout_ms} ms".encode() in body
        assert elapsed >= timeout_ms / 1000 - 0.002, (request_id, elapsed)


async def test_a_reloaded_default_timeout_reaches_memoised_plans() -> None:
    """The ingress's plans carry its default timeout; a reload's new one must replace them."""
    loop = asyncio.get_running_loop()
    h = Harness(table(A), ingress=True)
    answers: list[tuple[float, bytes]] = []
    h.down_t.write = lambda data: answers.append((loop.time(), bytes(data)))  # type: ignore[method-assign]
    h.down.data_received(encode_request(1, SVC, "m", ["x"]))  # makes the plan, with 3000 ms
    h.batcher.flush()
    assert h.fwd.planner.heads
    h.fwd.default_timeout_ms = 60  # what a reload of timeouts.ingress_ms does
    start = loop.time()
    h.down.data_received(encode_request(2, SVC, "m", ["x"]))
    h.batcher.flush()
    await wait_for(lambda: answers, 1.5, "request 2's 60 ms timeout", interval=0.01)
    assert len(answers) == 1, answers  # request 1 still has its 3 s
    when, data = answers[0]
    frame = FrameParser().feed(data)[0]
    assert frame.request_id == 2 and frame.status == Status.SERVER_TIMEOUT
    assert b"timeout after 60 ms" in frame.body and when - start >= 0.058


async def test_requests_answered_while_a_read_is_sent_leave_no_deadline_behind() -> None:
    """A read's plan hits get their deadlines before any is sent: one answered on the spot (here
    the pool is shutting down) takes its deadline out, and is never answered a second time."""
    h = Harness(table(A))
    answers: list[bytes] = []
    h.down_t.write = lambda data: answers.append(bytes(data))  # type: ignore[method-assign]
    h.down.data_received(encode_request(1, SVC, "m", ["x"]))  # makes the plan
    h.batcher.flush()
    h.fwd.pool.closed = True
    h.down.data_received(b"".join(encode_request(i, SVC, "m", ["x"]) for i in (2, 3, 4)))
    h.batcher.flush()
    assert len(h.fwd.deadlines) == 1  # request 1's, still waiting for its answer
    await asyncio.sleep(0.05)  # past the first look at the deadlines
    frames = [f for data in answers for f in FrameParser().feed(data)]
    assert sorted(f.request_id for f in frames) == [2, 3, 4]
    assert all(f.status == Status.SERVER_ERROR and b"shutting down" in f.body for f in frames)
    assert h.fwd.in_flight == 1 and h.down.in_flight == 1


async def test_a_read_of_responses_counts_each_one_whatever_the_runs() -> None:
    """Responses of one upstream read are counted per run of equal latency and per run of one
    client: interleaved clients and reads must still count every response once."""
    h = Harness(table(A))
    other = DownstreamConnection(h.fwd, 1 << 20)
    other_t = Transport()
    other.connection_made(other_t)  # type: ignore[arg-type]
    for down in (h.down, other):  # two reads of three requests, one per client
        down.data_received(b"".join(encode_request(i, SVC, "m", ["x"]) for i in (1, 2, 3)))
    h.batcher.flush()
    sent = FrameParser().feed(h.up[A].last)  # both reads, in one write at the round's end
    assert len(sent) == 6
    # Answer them interleaved, client by client, in one read.
    order = [0, 3, 1, 4, 2, 5]
    h.fwd.pool._conns[A][0].data_received(b"".join(encode_response(sent[i].request_id, "ok") for i in order))
    h.batcher.flush()
    hist = h.fwd.stats.latency[(SVC, "m")]
    assert hist.count == 6 and sum(hist.counts) == 6 and hist.sum > 0
    assert h.fwd.stats.responses[Status.OK] == 6
    assert h.down.in_flight == other.in_flight == h.fwd.in_flight == 0
    for t in (h.down_t, other_t):
        assert sorted(f.request_id for f in FrameParser().feed(t.last)) == [1, 2, 3]


async def test_a_connections_head_memo_follows_each_request() -> None:
    """Each client connection remembers its last request head; requests that alternate methods,
    in one read and across reads, must each still get their own method's route."""
    h = Harness(
        RoutingTable(
            [
                Route("a", RouteMatch(service=SVC, method="ma"), "ca"),
                Route("b", RouteMatch(service=SVC, method="mb"), "cb"),
            ],
            [Cluster("ca", "round_robin", (Host(A),)), Cluster("cb", "round_robin", (Host(B),))],
        )
    )
    methods = ["ma", "ma", "mb", "ma", "mb", "mb", "ma"]
    for rounds in range(2):  # the first read makes the plans, the second finds them by head
        h.down.data_received(b"".join(encode_request(i, SVC, m, ["x"]) for i, m in enumerate(methods)))
        h.batcher.flush()
        for address, method in ((A, "ma"), (B, "mb")):
            got = FrameParser().feed(h.up[address].last)
            assert len(got) == methods.count(method), (rounds, address)
    # Another method with the same arguments, then the first again, one request per read.
    for method, address in (("mb", B), ("ma", A), ("mb", B)):
        before = h.up[address].writes
        h.down.data_received(encode_request(99, SVC, method, ["x"]))
        h.batcher.flush()
        assert h.up[address].writes == before + 1, method


class _Reports:
    """A HostHealth that records what the data path reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, bool]] = []

    def available(self, address: str) -> bool:
        return True

    def any_unavailable(self) -> bool:
        return False

    def report(self, address: str, ok: bool) -> None:
        self.reports.append((address, ok))


async def test_a_run_of_answers_from_one_host_is_one_health_report_in_order() -> None:
    """Answers from one host in one read are reported once per run of successes, but a failure in
    between is reported where it came, and the success after it again: outlier detection counts
    consecutive failures, so an answer after a failure must reset the count."""
    h = Harness(table(A))
    health = _Reports()
    h.fwd.health = health  # type: ignore[assignment]
    h.down.data_received(b"".join(encode_request(i, SVC, "m", ["x"]) for i in range(1, 7)))
    h.batcher.flush()
    sent = FrameParser().feed(h.up[A].last)
    statuses = [Status.OK, Status.OK, Status.SERVER_ERROR, Status.OK, Status.OK, Status.SERVICE_ERROR]
    h.fwd.pool._conns[A][0].data_received(
        b"".join(
            encode_response(f.request_id, "ok") if s == Status.OK else encode_error(f.request_id, s, "no")
            for f, s in zip(sent, statuses, strict=True)
        )
    )
    h.batcher.flush()
    # 70 (the service threw) says nothing bad about the host.
    assert health.reports == [(A, True), (A, False), (A, True), (A, True)]
    assert h.fwd.stats.responses == {Status.OK: 4, Status.SERVER_ERROR: 1, Status.SERVICE_ERROR: 1}
    assert h.fwd.in_flight == 0 and len(h.fwd.deadlines) == 0
