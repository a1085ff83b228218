"""End to end over real sockets: client → egress → ingress → demo provider, and every error path."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.demo.provider import ServiceRegistry, default_services, serve
from regproxy.dubbo.encode import encode_request, heartbeat_request
from regproxy.dubbo.frame import FrameParser, pack_header
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from tests.ports import free_port
from tests.wait import wait_for


def app_table(port: int) -> RoutingTable:
    """An ingress table that sends every service to the app on ``port``: these tests exercise the
    proxy engine, not which services the ingress admits (tests/test_security.py does that)."""
    app = Cluster(name="app", hosts=(Host(address=f"127.0.0.1:{port}"),))
    return RoutingTable(
        routes=[Route(name="app", match=RouteMatch(service="*"), cluster="app", retries=0)], clusters=[app]
    )


GREET = "org.apache.dubbo.samples.api.GreetingsService"
ECHO = "org.apache.dubbo.samples.api.EchoService"


def settings(port: int = 0, **kw: int) -> ListenerSettings:
    base = dict(
        host="127.0.0.1",
        port=port,
        max_body=8 * 1024 * 1024,
        default_timeout_ms=3000,
        connect_timeout_ms=500,
        connections_per_host=1,
    )
    base.update(kw)
    return ListenerSettings(**base)  # type: ignore[arg-type]


def egress_table(
    ingress: str,
    *,
    timeout_ms: int | None = None,
    extra_hosts: tuple[str, ...] = (),
    retries: int = 1,
    lb: str = "round_robin",
) -> RoutingTable:
    hosts = tuple(Host(address=a) for a in (ingress, *extra_hosts))
    return RoutingTable(
        routes=[
            Route(
                name="greet",
                match=RouteMatch(service=GREET),
                cluster="demo",
                timeout_ms=timeout_ms,
                retries=retries,
            ),
            Route(
                name="echo",
                match=RouteMatch(service=ECHO),
                cluster="demo",
                timeout_ms=timeout_ms,
                retries=retries,
            ),
        ],
        clusters=[Cluster(name="demo", lb=lb, hosts=hosts)],
    )


@dataclass
class Stack:
    provider: asyncio.AbstractServer
    provider_port: int
    ingress: Listener
    egress: Listener
    egress_holder: TableHolder

    @property
    def egress_port(self) -> int:
        return self.egress.address[1]

    @property
    def ingress_addr(self) -> str:
        return f"127.0.0.1:{self.ingress.address[1]}"

    async def client(self) -> DubboClient:
        return await DubboClient.connect("127.0.0.1", self.egress_port)


async def start_stack(services: ServiceRegistry | None = None) -> Stack:
    provider = await serve("127.0.0.1", 0, services=services)
    pport = provider.sockets[0].getsockname()[1]
    ingress = Listener("ingress", settings(), TableHolder(app_table(pport)))
    await ingress.start()
    holder = TableHolder(egress_table(f"127.0.0.1:{ingress.address[1]}"))
    egress = Listener("egress", settings(), holder)
    await egress.start()
    return Stack(provider, pport, ingress, egress, holder)


async def stop_stack(st: Stack) -> None:
    await st.egress.stop()
    await st.ingress.stop()
    st.provider.close()
    await st.provider.wait_closed()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    st = await start_stack()
    yield st
    await stop_stack(st)


async def raw_exchange(port: int, data: bytes, *, expect: int = 1, timeout: float = 5.0) -> tuple[list, bool]:
    """Send raw bytes; return the frames received and whether the proxy closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    parser = FrameParser()
    frames: list = []
    closed = False
    try:
        while len(frames) < expect:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                closed = True
                break
            frames.extend(parser.feed(chunk))
        if not closed:
            try:
                closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
            except TimeoutError:
                closed = False
    finally:
        writer.close()
    return frames, closed


def error_message(frame) -> str:
    from regproxy.dubbo.hessian2 import decode_value

    return decode_value(frame.body)


async def test_demo_calls_through_both_hops(stack: Stack) -> None:
    client = await stack.client()
    try:
        assert await client.call(GREET, "sayHi", ["ann"]) == "hi, ann"
        assert await client.call(ECHO, "sum", [2, 40]) == 42
        value = {"k": ["a😀b", 1, 2.5, None, True], "long": "x" * 70000}
        assert await client.call(ECHO, "echo", [value]) == value
    finally:
        client.close()


# dubbo-python runs in a child process: imported here, its pool thread busy-loops and slows every
# later test (see tests/test_demo.py).
DUBBO_PYTHON_THROUGH_EGRESS = textwrap.dedent(
    """
    import json, sys
    from dubbo.client import DubboClient
    host = "127.0.0.1:" + sys.argv[1]
    out = {}
    greet = DubboClient("org.apache.dubbo.samples.api.GreetingsService", host=host)
    out["sayHi"] = greet.call("sayHi", "bob", timeout=5)
    echo = DubboClient("org.apache.dubbo.samples.api.EchoService", host=host)
    out["sum"] = echo.call("sum", [3, 4], timeout=5)
    # BMP only: dubbo-python itself mangles characters beyond U+FFFF.
    out["echo"] = echo.call("echo", "文字é", timeout=5)
    missing = DubboClient("com.x.Missing", host=host)
    try:
        missing.call("a", "x", timeout=5)
    except Exception as e:
        out["missing"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
    """
)


@pytest.mark.process
async def test_dubbo_python_client_through_egress() -> None:
    # dubbo-python sends version 1.0.0 by default (and dubbo version 2.4.10, so the provider
    # answers with flags 0/1/2, the only ones it understands).
    st = await start_stack(default_services(greetings_version="1.0.0", echo_version="1.0.0"))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DUBBO_PYTHON_THROUGH_EGRESS,
            str(st.egress_port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 50)
        assert proc.returncode == 0, stderr.decode()
        out = json.loads(stdout)
        assert out["sayHi"] == "hi, bob" and out["sum"] == 7 and out["echo"] == "文字é"
        assert out["missing"][0] == "DubboResponseException"
        assert "no route for com.x.Missing:1.0.0 method a" in out["missing"][1]
        assert st.egress.forwarder.stats.per_service[f"{GREET}:1.0.0.sayHi"] == 1
    finally:
        await stop_stack(st)


async def test_2000_concurrent_requests_over_shared_upstreams(stack: Stack) -> None:
    clients = [await stack.client() for _ in range(20)]
    try:
        calls = [clients[i % 20].call(ECHO, "echo", [f"req-{i}"]) for i in range(2000)]
        results = await asyncio.gather(*calls)
        assert results == [f"req-{i}" for i in range(2000)]
        # 20 downstream connections were multiplexed onto one upstream connection per hop.
        egress_conns = stack.egress.forwarder.pool.describe()
        assert [len(v) for v in egress_conns.values()] == [1]
        assert stack.egress.forwarder.stats.downstream_connections == 20
        assert stack.ingress.forwarder.stats.downstream_connections == 1
    finally:
        for c in clients:
            c.close()


async def test_heartbeat_answered_by_proxy(stack: Stack) -> None:
    frames, closed = await raw_exchange(stack.egress_port, heartbeat_request(77))
    assert len(frames) == 1 and frames[0].request_id == 77 and frames[0].is_event
    assert frames[0].status == 20 and frames[0].flag == 0x22 and frames[0].body == b"N"
    assert not closed


async def test_oneway_request_is_forwarded(stack: Stack) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", stack.egress_port)
    writer.write(encode_request(5, GREET, "sayHi", ["oneway"], two_way=False))
    await writer.drain()
    client = await stack.client()
    try:
        # The one-way call went first on the same path; a two-way call after it proves it was written.
        for _ in range(50):
            if stack.ingress.forwarder.stats.oneway == 1:
                break
            await asyncio.sleep(0.02)
        assert stack.ingress.forwarder.stats.oneway == 1
        assert await client.call(GREET, "sayHi", ["x"]) == "hi, x"
    finally:
        writer.close()
        client.close()


@pytest.mark.slow
async def test_timeout_answers_status_30_and_drops_late_response(stack: Stack) -> None:
    stack.egress_holder.swap(egress_table(stack.ingress_addr, timeout_ms=200))
    client = await stack.client()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DubboCallError) as err:
            await client.call(ECHO, "sleep", [1000], timeout=5)
        elapsed = loop.time() - start
        # The egress's own answer at the 200 ms deadline (status 30 naming it), not the provider's
        # after 1 s, which would be a success; and not before the deadline.
        assert err.value.status == 30
        assert "timeout after 200 ms" in err.value.message and ECHO in err.value.message
        assert elapsed > 0.15
        # The late answer, once the ingress has passed it on, must be dropped by the egress: the
        # next call on the connection gets its own answer (it comes after the late one on the same
        # upstream connection), and the connection keeps working.
        ingress_stats = stack.ingress.forwarder.stats
        await wait_for(lambda: ingress_stats.responses.get(20), 5, "the late answer at the ingress")
        assert await client.call(GREET, "sayHi", ["after"]) == "hi, after"
        assert stack.egress.forwarder.stats.upstream_foreign_frames == 0  # late, not foreign
    finally:
        client.close()


async def test_timeout_from_attachment(stack: Stack) -> None:
    client = await stack.client()
    try:
        with pytest.raises(DubboCallError) as err:
            await client.call(ECHO, "sleep", [1000], attachments={"timeout": "150"}, timeout=5)
        assert err.value.status == 30 and "timeout after 150 ms" in err.value.message
    finally:
        client.close()


async def test_no_route_names_service_key(stack: Stack) -> None:
    client = await stack.client()
    try:
        with pytest.raises(DubboCallError) as err:
            await client.call("com.x.Missing", "a", [], version="1.0.0", group="g")
        assert err.value.status == 60
        assert "no route for g/com.x.Missing:1.0.0" in err.value.message
        assert await client.call(GREET, "sayHi", ["still"]) == "hi, still"
    finally:
        client.close()


async def test_no_provider_when_cluster_empty(stack: Stack) -> None:
    stack.egress_holder.swap(
        RoutingTable(
            routes=[Route(name="r", match=RouteMatch(service=GREET), cluster="empty")],
            clusters=[Cluster(name="empty", hosts=())],
        )
    )
    client = await stack.client()
    try:
        with pytest.raises(DubboCallError) as err:
            await client.call(GREET, "sayHi", ["x"])
        assert err.value.status == 60 and "no provider for " + GREET in err.value.message
    finally:
        client.close()


async def test_connect_failure_names_host(stack: Stack) -> None:
    dead = f"127.0.0.1:{free_port()}"
    stack.egress_holder.swap(
        RoutingTable(
            routes=[Route(name="r", match=RouteMatch(service=GREET), cluster="dead", retries=1)],
            clusters=[Cluster(name="dead", hosts=(Host(address=dead),))],
        )
    )
    client = await stack.client()
    try:
        with pytest.raises(DubboCallError) as err:
            await client.call(GREET, "sayHi", ["x"])
        assert err.value.status == 80
        assert f"cannot connect to {dead}" in err.value.message
    finally:
        client.close()


async def test_connect_failure_retried_on_another_host(stack: Stack) -> None:
    dead = f"127.0.0.1:{free_port()}"
    # The dead host is listed first: round robin sends the first request there, the retry succeeds.
    stack.egress_holder.swap(
        RoutingTable(
            routes=[Route(name="r", match=RouteMatch(service=GREET), cluster="mixed", retries=1)],
            clusters=[Cluster(name="mixed", hosts=(Host(address=dead), Host(address=stack.ingress_addr)))],
        )
    )
    client = await stack.client()
    try:
        results = await asyncio.gather(*(client.call(GREET, "sayHi", [str(i)]) for i in range(20)))
        assert results == [f"hi, {i}" for i in range(20)]
        assert stack.egress.forwarder.stats.connect_failures >= 1
    finally:
        client.close()


async def test_oversized_frame_rejected_before_buffering(stack: Stack) -> None:
    head = pack_header(0xC2, 0, 99, 9 * 1024 * 1024)  # announces 9 MiB, sends none of it
    frames, closed = await raw_exchange(stack.egress_port, head)
    assert frames[0].request_id == 99 and frames[0].status == 40
    assert "exceeds the limit of 8388608 bytes" in error_message(frames[0])
    assert closed
    client = await stack.client()
    try:
        assert await client.call(GREET, "sayHi", ["ok"]) == "hi, ok"
    finally:
        client.close()


async def test_garbage_stream_gets_error_and_close(stack: Stack) -> None:
    frames, closed = await raw_exchange(stack.egress_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # The listener tells what the bytes look like (regproxy.triple.detect: port unification).
    message = error_message(frames[0])
    assert frames[0].status == 40 and message.startswith("regproxy egress: an HTTP/1 request"), message
    assert "expected Dubbo (magic 0xdabb) or HTTP/2" in message
    assert closed
    client = await stack.client()
    try:
        assert await client.call(GREET, "sayHi", ["ok"]) == "hi, ok"
    finally:
        client.close()


async def test_request_before_garbage_is_still_answered(stack: Stack) -> None:
    good = encode_request(1, GREET, "sayHi", ["first"])
    frames, closed = await raw_exchange(stack.egress_port, good + b"\x00garbage!" * 3, expect=2)
    by_id = {f.request_id: f for f in frames}
    assert by_id[0].status == 40  # the garbage
    assert by_id[1].status == 20  # the intact request before it was forwarded and answered
    assert closed


async def test_malformed_body_keeps_connection(stack: Stack) -> None:
    body = b"\x05" + b"2.0"  # a string announcing 5 chars with 3
    bad = pack_header(0xC2, 0, 7, len(body)) + body
    good = encode_request(8, GREET, "sayHi", ["after"])
    frames, closed = await raw_exchange(stack.egress_port, bad + good, expect=2)
    by_id = {f.request_id: f for f in frames}
    assert by_id[7].status == 40 and "malformed request body" in error_message(by_id[7])
    assert by_id[8].status == 20
    assert not closed


async def test_unsupported_serialization_named(stack: Stack) -> None:
    req = bytearray(encode_request(3, GREET, "sayHi", ["x"]))
    req[2] = 0xC0 | 23  # fastjson2
    frames, _ = await raw_exchange(stack.egress_port, bytes(req))
    assert frames[0].status == 40 and "serialization id 23 (fastjson2)" in error_message(frames[0])


async def test_a_request_written_one_byte_at_a_time_is_answered(stack: Stack) -> None:
    data = encode_request(11, GREET, "sayHi", ["slow"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.egress_port)
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
        parser = FrameParser()
        frames: list = []
        while not frames:
            frames = parser.feed(await asyncio.wait_for(reader.read(4096), 5))
        assert frames[0].request_id == 11 and frames[0].status == 20
    finally:
        writer.close()


async def test_snapshot_swap_keeps_requests_in_flight(stack: Stack) -> None:
    client = await stack.client()
    try:
        slow = asyncio.ensure_future(client.call(ECHO, "sleep", [300]))
        await asyncio.sleep(0.1)
        stack.egress_holder.swap(RoutingTable())  # no routes at all any more
        assert await slow is None or True  # the request in flight completes on its old snapshot
        with pytest.raises(DubboCallError) as err:
            await client.call(ECHO, "sum", [1, 2])
        assert err.value.status == 60
    finally:
        client.close()


async def test_upstream_reset_mid_request_answers_every_request() -> None:
    """A provider that dies with requests in flight: each gets an error, none hangs."""
    got = asyncio.Event()

    async def reset_on_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(16)
        got.set()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    bad = await asyncio.start_server(reset_on_request, "127.0.0.1", 0)
    port = bad.sockets[0].getsockname()[1]
    holder = TableHolder(egress_table(f"127.0.0.1:{port}", retries=0))
    egress = Listener("egress", settings(), holder)
    await egress.start()
    client = await DubboClient.connect("127.0.0.1", egress.address[1])
    try:
        calls = [asyncio.ensure_future(client.call(GREET, "sayHi", [str(i)], timeout=5)) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 3)
        assert all(isinstance(r, DubboCallError) and r.status == 80 for r in results), results
        assert "closed" in results[0].message
    finally:
        client.close()
        await egress.stop()
        bad.close()


async def test_idle_connections_closed_busy_kept() -> None:
    st = await start_stack()
    await st.egress.stop()
    holder = TableHolder(egress_table(st.ingress_addr))
    egress = Listener("egress", settings(idle_timeout_s=0.3), holder)
    await egress.start()
    try:
        _idle_reader, idle = await asyncio.open_connection("127.0.0.1", egress.address[1])
        busy = await DubboClient.connect("127.0.0.1", egress.address[1])
        slow = asyncio.ensure_future(busy.call(ECHO, "sleep", [700]))
        assert await asyncio.wait_for(_idle_reader.read(1), 2) == b""  # closed by the sweep
        assert await slow == 700  # a connection waiting for an answer is not idle
        busy.close()
        idle.close()
    finally:
        await egress.stop()
        await stop_stack(st)


async def test_a_connection_past_max_connections_is_refused_the_others_served() -> None:
    st = await start_stack()
    await st.egress.stop()
    egress = Listener("egress", settings(max_connections=2), TableHolder(egress_table(st.ingress_addr)))
    await egress.start()
    try:
        a = await DubboClient.connect("127.0.0.1", egress.address[1])
        b = await DubboClient.connect("127.0.0.1", egress.address[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", egress.address[1])
        assert await asyncio.wait_for(reader.read(1), 2) == b""  # the third is refused
        assert egress.forwarder.stats.rejected_connections == 1
        assert await a.call(GREET, "sayHi", ["a"]) == "hi, a"
        assert await b.call(GREET, "sayHi", ["b"]) == "hi, b"
        for c in (a, b):
            c.close()
        writer.close()
    finally:
        await egress.stop()
        await stop_stack(st)


async def test_ingress_bounds_the_app_without_reading_attachments() -> None:
    provider = await serve("127.0.0.1", 0)
    pport = provider.sockets[0].getsockname()[1]
    s = settings(default_timeout_ms=200)
    s.timeout_from_attachment = False
    ingress = Listener("ingress", s, TableHolder(app_table(pport)))
    await ingress.start()
    client = await DubboClient.connect("127.0.0.1", ingress.address[1])
    try:
        # The consumer allows 5 s; the ingress's own bound (200 ms) answers first, as a server timeout.
        with pytest.raises(DubboCallError) as err:
            await client.call(ECHO, "sleep", [1000], attachments={"timeout": "5000"}, timeout=5)
        assert err.value.status == 31 and "timeout after 200 ms" in err.value.message
        assert await client.call(GREET, "sayHi", ["x"]) == "hi, x"
    finally:
        client.close()
        await ingress.stop()
        provider.close()
