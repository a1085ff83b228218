"""Property-based fuzzing of the Dubbo listeners: the real protocol objects, driven with hostile input.

What is real: ``DownstreamConnection`` (the egress or ingress listener's side of a client connection),
the ``Forwarder`` with a real routing table, the ``UpstreamPool``'s ``UpstreamConnection`` objects,
the write batcher and the event loop (uvloop). What is a double: the transports (they record what is
written and deliver ``connection_lost`` the way a real one does, on the next loop pass) and the far
ends (a provider or the local app answering each request, or a hostile one answering garbage).

The properties, checked for every example:

* no exception escapes ``data_received``/``connection_lost``, and none reaches the loop's handler;
* every two-way request that arrives whole before any bad bytes gets exactly one response with its
  own request id (an OK answer carries its own request's body back: ids are never crossed);
  one-way requests, events and responses from the consumer get none;
* a broken stream (bad magic, a body over the limit) gets exactly one status-40 error response,
  naming the cause, and the connection is closed once the requests before it are answered;
* afterwards nothing is left pending: no request in flight in the forwarder or on the connection,
  no upstream request pending or waiting, no connection registered once the client hung up.

``make fuzz`` runs the same properties with REGPROXY_FUZZ_EXAMPLES=200000 (random, not derandomized).
The codec alone is fuzzed in tests/test_frame.py and tests/test_hessian2.py; this file is about the
listeners and the forwarding state around the codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regproxy.discovery import PublishSpec, ingress_table
from regproxy.dubbo.encode import encode_request, readonly_event
from regproxy.dubbo.frame import Frame, FrameParser, Status, pack_header
from regproxy.dubbo.hessian2 import decode_value
from regproxy.dubbo.request import strip_via
from regproxy.proxy.batch import Batcher
from regproxy.proxy.forwarder import Forwarder
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.upstream import UpstreamConnection, UpstreamEvents, UpstreamPool
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder

# The number of examples per property: 1,200 in `make test` (the same every run: derandomized; they
# cost ~15 s of its 10-minute budget), 200,000 random ones under `make fuzz`.
EXAMPLES = int(os.environ.get("REGPROXY_FUZZ_EXAMPLES", "1200"))
LONG_RUN = EXAMPLES > 1200
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # CI: the same examples on every run (a failure reproduces), no example database written.
    # `make fuzz`: random exploration, failures saved in .hypothesis/ and replayed first next time.
    derandomize=not LONG_RUN,
    database=settings().database if LONG_RUN else None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

MAX_BODY = 4096  # small, so that "over the limit" is cheap to generate; the checks do not depend on it
ROUTED = ("com.example.Greeter", "com.example.Echo")
UNROUTED = "com.example.Nowhere"
PROVIDERS = ("10.0.0.1:20882", "10.0.0.2:20882")
APP_PORT = 20880
GREET = "org.apache.dubbo.samples.api.GreetingsService"


# --- transports and far ends ---------------------------------------------------------------------


class FakeTransport:
    """Records writes; close() and abort() deliver connection_lost on the next loop pass, as uvloop does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, peer: str) -> None:
        self.loop = loop
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.on_write: Callable[[bytes], None] | None = None
        self.closed = False
        self.eof = False  # write_eof() was called
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            host, _, port = self.peer.rpartition(":")
            return (host, int(port))
        return default

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        assert not self.eof, "write after write_eof"
        assert isinstance(data, (bytes, bytearray)) and data, "empty or non-bytes write"
        self.written += data
        if self.on_write is not None:
            self.on_write(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        assert not self.eof and not self.closed
        self.eof = True
        # The peer reads to the end and closes its side; the protocol hears it as eof_received.
        self.loop.call_soon(self._peer_closed)

    def _peer_closed(self) -> None:
        if not self.closed and not self.protocol.eof_received():
            self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    # Writes land at once in ``written``: nothing is ever unsent, so flow control never pauses.
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


# What a far end does with one request it receives (the hostile provider's script).
OK = "ok"  # answer status 20 with the request's own body
ACTIONS_BENIGN = ("ok",)
ACTIONS_HOSTILE = (
    "ok",
    "status",  # answer a random non-OK status
    "dup",  # answer twice (the second must be dropped)
    "stray",  # a response with an id nobody asked for, then the answer
    "heartbeat",  # the provider pings first (the connection answers it), then the answer
    "readonly",  # a read-only event (no new requests on this connection), then the answer
    "hb_reply",  # a stray heartbeat reply, then the answer
    "garbage",  # bytes that are not Dubbo: every request pending on the connection fails
    "oversize",  # a header announcing a body over the limit: same
    "truncated",  # half a response, then the connection closes
    "close",  # the connection closes with the request pending
    "refuse",  # (at connect) the connection cannot be made: the request was never written
    "silent",  # no answer at all: the consumer's deadline answers it
)


@dataclass
class FarEnd:
    """The provider (or local app) side of one upstream connection."""

    loop: asyncio.AbstractEventLoop
    conn: UpstreamConnection
    script: Callable[[], str]
    split: Callable[[bytes], list[bytes]]
    transport: FakeTransport = field(init=False)
    parser: FrameParser = field(default_factory=lambda: FrameParser(1 << 30))
    busy: int = 0  # answers scheduled and not yet delivered

    def __post_init__(self) -> None:
        self.transport = FakeTransport(self.loop, self.conn, "10.9.9.9:20882")
        self.transport.on_write = self._received

    def attach(self) -> None:
        self.busy -= 1
        if self.script() == "refuse":
            self.conn.connect_failed(f"cannot connect to {self.conn.address}: refused (test double)")
        else:
            self.conn.connection_made(self.transport)

    def _received(self, data: bytes) -> None:
        for frame in self.parser.feed(data):
            if frame.is_event:  # the proxy's reply to our heartbeat: a response event
                assert not frame.is_request and frame.request_id == 777 and frame.body == b"N", frame
                continue
            assert frame.is_request, f"the proxy sent a response upstream: {frame!r}"
            if frame.two_way:
                self.busy += 1
                self.loop.call_soon(self._answer, frame, self.script())

    def _send(self, data: bytes) -> None:
        if self.transport.closed:
            return
        for chunk in self.split(data):
            self.conn.data_received(chunk)
            if self.transport.closed:
                return

    def _answer(self, req: Frame, action: str) -> None:
        self.busy -= 1
        rid = req.request_id
        ok = pack_header(0x02, Status.OK, rid, len(req.body)) + req.body
        if action in ("ok", "refuse"):
            self._send(ok)
        elif action == "status":
            status = (30, 31, 35, 40, 50, 60, 70, 80, 90, 100)[rid % 10]
            self._send(pack_header(0x02, status, rid, 1) + b"N")
        elif action == "dup":
            self._send(ok + ok)
        elif action == "stray":
            self._send(pack_header(0x02, Status.OK, rid + 10_000_000, 1) + b"N" + ok)
        elif action == "heartbeat":
            self._send(pack_header(0xE2, 0, 777, 1) + b"N" + ok)
        elif action == "readonly":
            self._send(readonly_event(778) + ok)
        elif action == "hb_reply":
            self._send(pack_header(0x22, Status.OK, 779, 1) + b"N" + ok)
        elif action == "garbage":
            self._send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        elif action == "oversize":
            self._send(pack_header(0x02, Status.OK, rid, MAX_BODY + 1))
        elif action == "truncated":
            self._send(ok[: max(1, len(ok) // 2)])
            self.transport.close()
        elif action == "close":
            self.transport.close()
        elif action == "silent":
            pass
        else:  # pragma: no cover - a typo in a script
            raise AssertionError(action)


class DoublePool(UpstreamPool):
    """The real pool, whose connections are made to far-end doubles instead of sockets."""

    def __init__(self, *a: Any, far_end: Callable[[UpstreamConnection], FarEnd], **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.make_far_end = far_end
        self.far_ends: list[FarEnd] = []
        self.made: list[UpstreamConnection] = []

    def _connect(self, conn: UpstreamConnection) -> None:
        end = self.make_far_end(conn)
        self.far_ends.append(end)
        self.made.append(conn)
        end.busy += 1
        self.loop.call_soon(end.attach)  # requests wait in `waiting` until then, as with a real connect


# --- the world of one example --------------------------------------------------------------------


def egress_routes() -> RoutingTable:
    hosts = tuple(Host(address=a) for a in PROVIDERS)
    return RoutingTable(
        routes=[Route(name=s, match=RouteMatch(service=s), cluster="p", retries=1) for s in ROUTED],
        clusters=[Cluster(name="p", hosts=hosts)],
    )


def published(app_port: int, services: tuple[str, ...] = ROUTED) -> RoutingTable:
    """The ingress table of a sidecar through which ``services`` were published (no group, no version)."""
    return ingress_table([PublishSpec(interface=s, port=app_port) for s in services])


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    fwd: Forwarder
    pool: DoublePool
    errors: list[dict[str, Any]]

    def pending_upstream(self) -> int:
        return sum(len(c.pending) + len(c.waiting) for c in self.pool.made)

    def busy(self) -> bool:
        return (
            self.fwd.in_flight > 0
            or any(end.busy for end in self.pool.far_ends)
            or bool(self.fwd.batcher._dirty)
        )

    async def settle(self, limit_s: float = 5.0) -> None:
        """Run the loop until nothing is in flight (answers, timeouts, closes delivered)."""
        deadline = self.loop.time() + limit_s
        spins = 0
        while self.busy() or spins < 3:
            spins = spins + 1 if not self.busy() else 0
            if self.loop.time() > deadline:
                raise AssertionError(
                    f"still busy after {limit_s}s: in_flight={self.fwd.in_flight}, "
                    f"upstream pending={self.pending_upstream()}"
                )
            # Zero while callbacks are queued; a real sleep only when waiting for a timer (a deadline).
            await asyncio.sleep(0 if any(e.busy for e in self.pool.far_ends) else 0.0005)

    def check_clean(self) -> None:
        assert not self.errors, self.errors
        assert self.fwd.in_flight == 0
        assert not self.fwd.downstreams and self.fwd.stats.downstream_connections == 0
        assert self.pending_upstream() == 0, [(c.pending, c.waiting) for c in self.pool.made]
        assert not self.fwd.batcher._dirty


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The proxy logs each refused stream at warning: thousands of lines would dominate the run time."""
    logger = logging.getLogger("regproxy")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def make_world(
    loop: asyncio.AbstractEventLoop,
    listener: str,
    script: Callable[[], str],
    split: Callable[[bytes], list[bytes]],
) -> World:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    batcher = Batcher(loop)
    holder = TableHolder(published(APP_PORT) if listener == "ingress" else egress_routes())
    pools: list[DoublePool] = []

    def make_pool(events: UpstreamEvents) -> UpstreamPool:
        pool = DoublePool(
            loop,
            batcher,
            events,
            max_body=MAX_BODY,
            far_end=lambda conn: FarEnd(loop, conn, script, split),
        )
        pools.append(pool)
        return pool

    fwd = Forwarder(
        listener,
        loop,
        holder,
        batcher,
        make_pool,
        default_timeout_ms=3000,
        timeout_from_attachment=listener == "egress",
    )
    return World(loop, fwd, pools[0], errors)


# --- what consumers send -------------------------------------------------------------------------


@dataclass
class Segment:
    data: bytes
    request_id: int | None  # the id a response must carry, None when no response is due
    fatal: bool = False  # the stream is broken from here on
    body: bytes = b""


# Generation is most of the cost of an example: hypothesis draws the structure (what kind of frame,
# which flag, which bytes change) and a seed; the seed fills in the details (method names, argument
# values, attachments) through random.Random, which is far cheaper than a draw per detail.
_METHODS = ("sayHi", "echo", "", "m\u00e9thode", "x" * 300, "get$set", "\U0001f600")
_ATTACHMENT_VALUES = (
    "",
    "-1",
    "0",
    "abc",
    "99999999999999999999",
    "1.0",
    "g",
    "\u0000",
    7,
    -(2**63),
    2**63 - 1,
)


def _details(seed: int) -> tuple[str, list[Any], dict[str, Any], str, str]:
    rnd = random.Random(seed)
    args: list[Any] = [
        rnd.choice(
            [None, True, rnd.randint(-(2**40), 2**40), "s" * rnd.randint(0, 40), b"\x00\xff", [1, "a"]]
        )
        for _ in range(rnd.randint(0, 3))
    ]
    att = {
        rnd.choice(["group", "dubbo.tag", "dubbo.force.tag", "x", "path", "interface"]): rnd.choice(
            _ATTACHMENT_VALUES
        )
        for _ in range(rnd.randint(0, 4))
    }
    return rnd.choice(_METHODS), args, att, rnd.choice(["", "1.0", "0.0.0", "*"]), rnd.choice(["", "g"])


# Strategies are made once: building one inside a draw costs a validation each time.
_seed = st.integers(0, 2**32)
_service = st.sampled_from((*ROUTED, UNROUTED))
_one_in_five = st.integers(0, 4)
_byte = st.integers(0, 255)
_junk = st.binary(max_size=64)
_tail = st.binary(max_size=32)
_segment_kind = st.sampled_from(["valid", "odd", "empty"])
_ending = st.sampled_from(["none", "fatal", "partial"])
_fatal_kind = st.sampled_from(["magic", "magic2", "oversize"])
_oversize = st.integers(MAX_BODY + 1, 2**32 - 1)
_count = st.integers(0, 8)
# Flags worth hitting: requests (two-way, one-way, other serializations), events, responses, anything.
_flags = st.one_of(st.sampled_from([0xC2, 0x82, 0xE2, 0xA2, 0x02, 0x22, 0xC3, 0xC6, 0xD7, 0xC0]), _byte)


def valid_request(draw: st.DrawFn, rid: int) -> Segment:
    service = draw(_service)
    two_way = draw(_one_in_five) != 0  # one in five one-way
    method, args, att, version, group = _details(draw(_seed))
    raw = encode_request(
        rid, service, method, args, version=version, group=group, attachments=att, two_way=two_way
    )
    return Segment(raw, rid if two_way else None, body=raw[16:])


def odd_frame(draw: st.DrawFn, rid: int) -> Segment:
    """A frame with a well-formed header and a body that may be anything (a mutated request, junk)."""
    flag = draw(_flags)
    seed = draw(_seed)
    if seed % 2:  # a request body with bytes changed and perhaps cut short
        rnd = random.Random(seed)
        method, args, att, _version, _group = _details(rnd.getrandbits(32))
        body = bytearray(encode_request(rid, rnd.choice(ROUTED), method, args, attachments=att)[16:])
        for _ in range(rnd.randint(0, 4)):
            body[rnd.randrange(len(body))] = rnd.randrange(256)
        if rnd.random() < 0.4:
            body = body[: rnd.randint(0, len(body))]
    else:
        body = bytearray(draw(_junk))
    data = pack_header(flag, draw(_byte), rid, len(body)) + bytes(body)
    two_way_request = flag & 0xC0 == 0xC0
    return Segment(data, rid if two_way_request else None)


def fatal_segment(draw: st.DrawFn, rid: int) -> Segment:
    kind = draw(_fatal_kind)
    if kind == "oversize":  # refused from the header: its id is known, so the error names the request
        head = pack_header(draw(_flags), 0, rid, draw(_oversize))
        return Segment(head + draw(_tail), rid, fatal=True)
    first = draw(_byte)
    second = draw(_byte)
    if kind == "magic" and first == 0xDA:
        first = 0xDB
    elif kind == "magic2":  # the first byte right, the second wrong
        first, second = 0xDA, (0xBC if second == 0xBB else second)
    return Segment(bytes([first, second]) + draw(_tail), 0, fatal=True)


@st.composite
def consumer_stream(draw: st.DrawFn) -> list[Segment]:
    segs: list[Segment] = []
    for i in range(draw(_count)):
        kind = draw(_segment_kind)
        if kind == "valid":
            segs.append(valid_request(draw, i + 1))
        elif kind == "odd":
            segs.append(odd_frame(draw, i + 1))
        else:
            segs.append(Segment(b"", None))
    ending = draw(_ending)
    if ending == "fatal":
        segs.append(fatal_segment(draw, len(segs) + 1))
    elif ending == "partial":  # the stream stops inside a frame: nothing due for it
        tail = valid_request(draw, len(segs) + 1).data
        segs.append(Segment(tail[: 1 + draw(_seed) % (len(tail) - 1)], None))
    return segs


def splitter(cuts: list[int]) -> Callable[[bytes], list[bytes]]:
    """Split bytes at the given sizes, cycled: the same chunking idea for any stream."""

    def split(data: bytes) -> list[bytes]:
        if not cuts:
            return [data]
        out: list[bytes] = []
        pos = i = 0
        while pos < len(data):
            out.append(data[pos : pos + cuts[i % len(cuts)]])
            pos += cuts[i % len(cuts)]
            i += 1
        return out

    return split


_cuts = st.lists(st.one_of(st.integers(1, 3), st.integers(1, 300)), max_size=6)


def responses_of(data: bytes) -> list[Frame]:
    parser = FrameParser(1 << 30)
    frames = parser.feed(bytes(data))
    assert parser.buffered == 0, "the proxy wrote a partial frame"
    return frames


async def drive(
    world: World, segments: list[Segment], cuts: list[int], yields: list[bool], hang_up_early: bool
) -> tuple[FakeTransport, DownstreamConnection]:
    fwd = world.fwd
    down = DownstreamConnection(fwd, MAX_BODY)
    transport = FakeTransport(world.loop, down, "10.1.1.1:40000")
    down.connection_made(transport)  # type: ignore[arg-type]
    stream = b"".join(s.data for s in segments)
    for i, chunk in enumerate(splitter(cuts)(stream)):
        if transport.paused or transport.closed:
            break  # a real transport delivers nothing after pause_reading / close
        down.data_received(chunk)
        if yields and yields[i % len(yields)]:
            await asyncio.sleep(0)  # let answers interleave with the rest of the stream
    if hang_up_early:
        transport.close()  # the consumer goes away with requests in flight
    await world.settle()
    return transport, down


def check_answers(world: World, transport: FakeTransport, segments: list[Segment], hung_up: bool) -> None:
    frames = responses_of(transport.written)
    by_id: dict[int, list[Frame]] = {}
    for f in frames:
        assert not f.is_request or f.is_event, f"the proxy sent a request to a consumer: {f!r}"
        by_id.setdefault(f.request_id, []).append(f)
    name = world.fwd.name
    due: dict[int, Segment] = {}
    fatal: Segment | None = None
    for seg in segments:
        if seg.fatal:
            fatal = seg
            break
        if seg.request_id is not None:
            due[seg.request_id] = seg
    if hung_up:  # answers were dropped with the connection; at most one each
        assert all(len(v) == 1 for v in by_id.values()), by_id
        return
    if fatal is not None:
        got = by_id.pop(fatal.request_id, [])  # type: ignore[arg-type]
        assert len(got) == 1 and got[0].status == Status.BAD_REQUEST, got
        message = decode_value(got[0].body)
        # Garbage as a connection's first bytes is named by protocol detection (regproxy.triple.detect).
        known = ("bad magic", "exceeds the limit", "expected Dubbo (magic 0xdabb) or HTTP/2")
        assert f"regproxy {name}:" in message and any(k in message for k in known), message
        assert transport.eof and transport.closed, "a broken stream must be half-closed, then closed"
    assert set(by_id) == set(due), (sorted(by_id), sorted(due))
    for rid, got in by_id.items():
        assert len(got) == 1, f"request {rid} answered {len(got)} times"
        f = got[0]
        if f.is_event:
            assert f.body == b"N" and f.status == Status.OK
        elif f.status == Status.OK:
            # The far end echoes what it got: the request, plus the egress's loop marker (stripped here).
            echoed = strip_via(f.body, 0)
            assert due[rid].body == b"" or echoed == due[rid].body, f"request {rid} got another's answer"
        else:
            message = decode_value(f.body)
            assert message is None or isinstance(message, str)


def run_example(
    listener: str,
    segments: list[Segment],
    cuts: list[int],
    yields: list[bool],
    hang_up_early: bool,
    script: Callable[[], str] = lambda: OK,
    upstream_cuts: list[int] | None = None,
) -> None:
    loop = LOOP
    world = make_world(loop, listener, script, splitter(upstream_cuts or []))
    with quiet_logs():
        transport, down = loop.run_until_complete(drive(world, segments, cuts, yields, hang_up_early))
        check_answers(world, transport, segments, hang_up_early)
        assert down.in_flight == 0
        if not transport.closed:
            transport.close()  # the consumer hangs up at the end
        loop.run_until_complete(world.settle())
        world.check_clean()
        # The upstream connections too: close them as the listener's stop() would.
        loop.run_until_complete(world.pool.close())
        loop.run_until_complete(world.settle())
        assert not world.errors, world.errors


LOOP = uvloop.new_event_loop()


@pytest.mark.slow
@FUZZ
@given(consumer_stream(), _cuts, st.lists(st.booleans(), max_size=4), st.integers(0, 9))
def test_egress_listener_fuzz(
    segments: list[Segment], cuts: list[int], yields: list[bool], hang: int
) -> None:
    run_example("egress", segments, cuts, yields, hang_up_early=hang == 0)


@pytest.mark.slow
@FUZZ
@given(consumer_stream(), _cuts, st.lists(st.booleans(), max_size=4), st.integers(0, 9))
def test_ingress_listener_fuzz(
    segments: list[Segment], cuts: list[int], yields: list[bool], hang: int
) -> None:
    run_example("ingress", segments, cuts, yields, hang_up_early=hang == 0)


_action = st.sampled_from(ACTIONS_HOSTILE)


@st.composite
def requests_for_provider(draw: st.DrawFn) -> tuple[list[Segment], list[str]]:
    """Well-formed consumer requests, and what the hostile provider does with each (in order)."""
    n = 1 + draw(_count)
    actions = draw(st.lists(_action, min_size=n, max_size=n + 4))
    segs: list[Segment] = []
    for i in range(n):
        rid = i + 1
        # A silent provider leaves the deadline to answer: short ones, so an example stays fast (they
        # race every other answer, which is part of the point).
        attachments = {"timeout": "3"} if "silent" in actions else {}
        raw = encode_request(rid, ROUTED[i % 2], "m", [i], attachments=attachments)
        segs.append(Segment(raw, rid, body=raw[16:]))
    return segs, actions


@pytest.mark.slow
@FUZZ
@given(requests_for_provider(), _cuts, _cuts, st.lists(st.booleans(), max_size=4))
def test_upstream_response_fuzz(
    case: tuple[list[Segment], list[str]], cuts: list[int], upstream_cuts: list[int], yields: list[bool]
) -> None:
    """A hostile provider answering the egress: every consumer request still gets one answer."""
    segments, actions = case
    script = iter(actions)
    run_example(
        "egress",
        segments,
        cuts,
        yields,
        hang_up_early=False,
        script=lambda: next(script, OK),
        upstream_cuts=upstream_cuts,
    )


# --- the same streams over real sockets ----------------------------------------------------------
# Fewer examples (each costs a connection and a few round trips): the whole path, client socket ->
# egress -> ingress -> demo provider, with the kernel choosing the chunking.

SOCKET_FUZZ = settings(
    max_examples=max(100, EXAMPLES // 25),
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


async def socket_exchange(port: int, segments: list[Segment], cuts: list[int]) -> tuple[list[Frame], bool]:
    """Write the stream in chunks; read until every due answer came, or the proxy closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    due = 0
    fatal = False
    for seg in segments:
        if seg.fatal:
            fatal = True
            break
        due += seg.request_id is not None
    try:
        for chunk in splitter(cuts)(b"".join(s.data for s in segments)):
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()  # the proxy may close a broken stream before all of it is sent
        parser = FrameParser(1 << 30)
        frames: list[Frame] = []
        closed = False
        while fatal or len(frames) < due:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
            except ConnectionError:
                chunk = b""
            if not chunk:
                closed = True
                break
            frames += parser.feed(chunk)
        return frames, closed
    finally:
        writer.close()


@pytest.mark.slow
def test_listeners_fuzz_over_real_sockets() -> None:
    from regproxy.demo.client import DubboClient
    from regproxy.demo.provider import serve
    from regproxy.proxy.engine import Listener, ListenerSettings

    loop = uvloop.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    def settings_(max_body: int) -> ListenerSettings:
        return ListenerSettings("127.0.0.1", 0, max_body, 3000, 500, 1)

    async def start() -> tuple[asyncio.AbstractServer, Listener, Listener]:
        provider = await serve("127.0.0.1", 0)
        ingress = Listener(
            "ingress",
            settings_(MAX_BODY),
            TableHolder(published(provider.sockets[0].getsockname()[1], (*ROUTED, GREET))),
        )
        await ingress.start()
        hosts = (Host(address=f"127.0.0.1:{ingress.address[1]}"),)
        table = RoutingTable(
            routes=[Route(name=s, match=RouteMatch(service=s), cluster="i") for s in (*ROUTED, "*")],
            clusters=[Cluster(name="i", hosts=hosts)],
        )
        egress = Listener("egress", settings_(MAX_BODY), TableHolder(table))
        await egress.start()
        return provider, ingress, egress

    provider, ingress, egress = loop.run_until_complete(start())

    @SOCKET_FUZZ
    @given(consumer_stream(), _cuts, st.booleans())
    def example(segments: list[Segment], cuts: list[int], to_ingress: bool) -> None:
        target = ingress if to_ingress else egress
        frames, closed = loop.run_until_complete(socket_exchange(target.address[1], segments, cuts))
        fatal = next((s for s in segments if s.fatal), None)
        due = {
            s.request_id
            for s in segments[: segments.index(fatal) if fatal else None]
            if s.request_id is not None
        }
        ids = [f.request_id for f in frames]
        if fatal is not None:
            assert closed and ids.count(fatal.request_id) == 1  # type: ignore[arg-type]
            ids.remove(fatal.request_id)  # type: ignore[arg-type]
        assert sorted(ids) == sorted(due), (ids, due)

        async def after() -> None:
            # Served afterwards, and nothing left over once the connection is gone.
            client = await DubboClient.connect("127.0.0.1", egress.address[1])
            try:
                assert await client.call(GREET, "sayHi", ["z"]) == "hi, z"
            finally:
                client.close()
            for _ in range(400):
                if not egress.forwarder.downstreams and ingress.forwarder.in_flight == 0:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.005)
            assert not egress.forwarder.downstreams and egress.forwarder.in_flight == 0  # type: ignore[union-attr]
            assert ingress.forwarder.in_flight == 0  # type: ignore[union-attr]

        loop.run_until_complete(after())

    try:
        with quiet_logs():
            example()
        assert not errors, errors
    finally:

        async def stop() -> None:
            await egress.stop()
            await ingress.stop()
            provider.close()
            await provider.wait_closed()

        loop.run_until_complete(stop())
        loop.close()
