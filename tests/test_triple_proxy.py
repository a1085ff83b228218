"""Triple calls through an egress and an ingress, in process: grpcio's asyncio client and server
(an independent HTTP/2 and gRPC implementation) on both ends, and a raw h2 client for what a gRPC
library would not do. The apache-dubbo peers through real sidecars are in
tests/test_triple_e2e.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import h2.errors
import h2.events
import pytest

from regproxy.demo.client import DubboClient
from regproxy.demo.provider import serve
from regproxy.discovery.desired import PublishSpec
from regproxy.discovery.tables import ingress_table
from regproxy.proxy.engine import Listener
from regproxy.proxy.filters import AccessLog
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.routing.model import SPEAKS_DUBBO, SPEAKS_TRI
from regproxy.routing.rules import RateLimit, Rule, RuleSet, StringMatch
from regproxy.tls import SidecarTLS
from tests.pki import make_pki
from tests.ports import free_port
from tests.test_proxy_e2e import settings
from tests.test_tls import tls_config
from tests.triple_stack import (
    GREETER,
    RawH2,
    TripleStack,
    start_app,
    start_stack,
    stop_stack,
    table,
)

DEMO_GREET = "org.apache.dubbo.samples.api.GreetingsService"


@pytest.fixture
async def stack() -> AsyncIterator[TripleStack]:
    st = await start_stack()
    yield st
    await stop_stack(st)


def method(channel: grpc.aio.Channel, name: str, kind: str = "unary_unary") -> grpc.aio.MultiCallable:
    return getattr(channel, kind)(f"/{GREETER}/{name}")


async def test_every_call_kind_through_two_hops(stack: TripleStack) -> None:
    async with stack.channel() as ch:
        assert await method(ch, "greet")(b"world", timeout=5) == b"app0:world"
        parts = [m async for m in method(ch, "greetStream", "unary_stream")(b"4", timeout=5)]
        assert parts == [b"part0", b"part1", b"part2", b"part3"]
        assert await method(ch, "greetClientStream", "stream_unary")(iter([b"abc"] * 5), timeout=5) == b"5/15"
        echoed = [
            m async for m in method(ch, "greetBidi", "stream_stream")(iter([b"p", b"q", b"r"]), timeout=5)
        ]
        assert echoed == [b"p", b"q", b"r"]
    stats = stack.egress.forwarder.triple.stats  # type: ignore[union-attr]
    assert stats.per_service == {
        f"{GREETER}.greet": 1,
        f"{GREETER}.greetStream": 1,
        f"{GREETER}.greetClientStream": 1,
        f"{GREETER}.greetBidi": 1,
    }
    assert stats.responses == {0: 4}


async def test_a_4_mib_message_each_way(stack: TripleStack) -> None:
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB, four times the stream window
    async with stack.channel() as ch:
        assert await method(ch, "greet")(big, timeout=20) == big
        got = await method(ch, "greetClientStream", "stream_unary")(iter([big, big]), timeout=20)
        assert got == b"2/%d" % (2 * len(big))


async def test_the_application_status_and_message_pass_through(stack: TripleStack) -> None:
    async with stack.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(ch, "fail")(b"thing", timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "no such thing: thing"


async def test_no_route_is_unavailable_and_names_the_service(stack: TripleStack) -> None:
    async with stack.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary("/com.example.Nowhere/call")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "regproxy egress: no route for com.example.Nowhere method call"


async def test_a_path_that_is_not_interface_and_method_is_unimplemented(stack: TripleStack) -> None:
    client = await RawH2.connect(stack.egress_port)
    try:
        sid = client.request("/only-one-segment", b"x")
        await client.until(lambda: client.ended(sid))
        trailers = client.trailers(sid)
        assert trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
        assert "expected /{interface}/{method}" in trailers["grpc-message"]
    finally:
        await client.close()


async def test_regproxy_answers_the_deadline_and_the_application_sees_what_is_left(
    stack: TripleStack,
) -> None:
    client = await RawH2.connect(stack.egress_port)
    try:
        # A raw client enforces no deadline itself: the answer is regproxy's.
        sid = client.request(f"/{GREETER}/slow", b"2000", **{"grpc-timeout": "300m"})
        await client.until(lambda: client.ended(sid))
        trailers = client.trailers(sid)
        assert trailers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        assert trailers["grpc-message"].startswith("regproxy egress: deadline of 300 ms exceeded for ")
        assert stack.egress.forwarder.triple.stats.timeouts == 1  # type: ignore[union-attr]
        # The deadline goes upstream as what is left of it, never more.
        sid = client.request(f"/{GREETER}/deadline", b"", **{"grpc-timeout": "5S"})
        await client.until(lambda: client.ended(sid))
        (left,) = stack.apps[0][2].deadlines
        assert 3.0 < left <= 5.0
    finally:
        await client.close()


async def test_a_deadline_that_expires_mid_stream_ends_it_with_what_came_before(stack: TripleStack) -> None:
    client = await RawH2.connect(stack.egress_port)
    try:
        sid = client.request(f"/{GREETER}/drip", b"50", **{"grpc-timeout": "350m"})
        await client.until(lambda: client.ended(sid))
        assert client.data(sid).count(b"drop") == 3  # 100, 200, 300 ms
        assert client.trailers(sid)["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        # The application's stream is cancelled, not left running.
        seen = stack.apps[0][2]
        async with asyncio.timeout(3):
            while not seen.cancelled:
                await asyncio.sleep(0.02)
    finally:
        await client.close()


async def test_a_cancelled_call_is_cancelled_at_the_application(stack: TripleStack) -> None:
    async with stack.channel() as ch:
        call = method(ch, "drip", "unary_stream")(b"100", timeout=10)
        got = [await call.read(), await call.read()]
        assert got == [b"drop0", b"drop1"]
        call.cancel()
    seen = stack.apps[0][2]
    async with asyncio.timeout(3):
        while not seen.cancelled:
            await asyncio.sleep(0.02)
    triple = stack.egress.forwarder.triple  # type: ignore[union-attr]
    async with asyncio.timeout(3):
        while triple.in_flight:
            await asyncio.sleep(0.02)
    assert triple.stats.responses.get(grpc.StatusCode.CANCELLED.value[0]) == 1


async def test_a_slow_reader_holds_up_its_own_stream_only(stack: TripleStack) -> None:
    # A client that never acknowledges DATA: its stream's window (1 MiB) closes, and regproxy holds
    # the rest of the 4 MiB answer back. Calls on another connection, and other streams on this one,
    # go on.
    lazy = await RawH2.connect(stack.egress_port, auto_ack=False)
    try:
        lazy.conn.increment_flow_control_window(1 << 30)  # the connection window: not what stops it
        lazy.flush()
        size = 4 << 20
        stuck = lazy.request(f"/{GREETER}/big", str(size).encode())
        await asyncio.sleep(0.5)
        assert not lazy.ended(stuck)
        received = len(lazy.data(stuck))
        assert 0 < received <= 65_535  # the stream's window, never opened by this client
        async with stack.channel() as ch:
            for _ in range(5):
                assert await method(ch, "greet")(b"other", timeout=2) == b"app0:other"
        # Another stream of the same connection: it opens the stream's window itself.
        other = lazy.request(f"/{GREETER}/greet", b"small")
        await lazy.until(lambda: lazy.ended(other))
        assert lazy.trailers(other)["grpc-status"] == "0"
        assert not lazy.ended(stuck)
        ingress = stack.ingress.forwarder.triple  # type: ignore[union-attr]
        egress = stack.egress.forwarder.triple  # type: ignore[union-attr]
        # Bounded: what the egress holds for the stuck stream is at most the windows in between.
        (held,) = [sum(map(len, e.to_down)) for d in egress.downstreams for e in d.exchanges.values()]
        assert held <= (1 << 20) * 2, held
        assert ingress.in_flight == 1
        lazy.conn.acknowledge_received_data(received, stuck)  # now read it all
        lazy.auto_ack = True
        lazy.flush()
        await lazy.until(lambda: lazy.ended(stuck), timeout=10)
        assert len(lazy.data(stuck)) == size + 5
    finally:
        await lazy.close()


async def test_dubbo_and_triple_clients_share_the_egress_port() -> None:
    # Port unification: one egress port, a Dubbo consumer and a Triple one at the same time.
    stack = await start_stack()
    demo = await serve("127.0.0.1", 0)
    demo_port = demo.sockets[0].getsockname()[1]
    routes = [
        Route(name="greeter", match=RouteMatch(service=GREETER), cluster="tri"),
        Route(name="demo", match=RouteMatch(service=DEMO_GREET), cluster="dubbo"),
    ]
    clusters = [
        Cluster(name="tri", hosts=(Host(address=stack.ingress_address),)),
        Cluster(name="dubbo", hosts=(Host(address=f"127.0.0.1:{demo_port}", speaks=SPEAKS_DUBBO),)),
    ]
    stack.egress_table.swap(RoutingTable(routes=routes, clusters=clusters))
    dubbo = await DubboClient.connect("127.0.0.1", stack.egress_port)
    try:
        async with stack.channel() as ch:

            async def triple_calls() -> list[bytes]:
                return [await method(ch, "greet")(b"%d" % i, timeout=5) for i in range(50)]

            async def dubbo_calls() -> list[object]:
                return [await dubbo.call(DEMO_GREET, "sayHi", [f"n{i}"]) for i in range(50)]

            tri, dub = await asyncio.gather(triple_calls(), dubbo_calls())
        assert tri == [b"app0:%d" % i for i in range(50)]
        assert dub == [f"hi, n{i}" for i in range(50)]
    finally:
        dubbo.close()
        demo.close()
        await stop_stack(stack)


async def test_a_call_is_routed_to_the_hosts_of_its_protocol() -> None:
    # One cluster, a Dubbo-only host first and the ingress (both protocols) second: every Triple call
    # goes to the ingress, never to the Dubbo-only host.
    stack = await start_stack()
    demo = await serve("127.0.0.1", 0)
    dubbo_only = Host(address=f"127.0.0.1:{demo.sockets[0].getsockname()[1]}", speaks=SPEAKS_DUBBO)
    stack.egress_table.swap(table(GREETER, (dubbo_only, Host(address=stack.ingress_address))))
    try:
        async with stack.channel() as ch:
            for _ in range(10):
                assert await method(ch, "greet")(b"x", timeout=5) == b"app0:x"
        assert stack.egress.forwarder.triple.stats.upstream_requests == {stack.ingress_address: 10}  # type: ignore[union-attr]
    finally:
        demo.close()
        await stop_stack(stack)


async def test_calls_spread_over_two_applications_and_a_dead_host_is_passed_over() -> None:
    stack = await start_stack(apps=2)
    dead = f"127.0.0.1:{free_port()}"
    stack.egress_table.swap(
        table(GREETER, (Host(address=dead, speaks=SPEAKS_TRI), Host(address=stack.ingress_address)))
    )
    try:
        async with stack.channel() as ch:
            answers = [await method(ch, "greet")(b"x", timeout=5) for _ in range(200)]
        assert answers.count(b"app0:x") == 100 and answers.count(b"app1:x") == 100
        triple = stack.egress.forwarder.triple  # type: ignore[union-attr]
        assert triple.stats.responses == {0: 200}
        assert triple.stats.connect_failures >= 1 and triple.stats.retries >= 1
    finally:
        await stop_stack(stack)


async def test_a_call_to_its_own_egress_is_a_loop() -> None:
    egress = Listener("egress", settings(), TableHolder(table(GREETER, ())))
    await egress.start()
    try:
        own = Host(address=f"127.0.0.1:{egress.address[1]}", speaks=SPEAKS_TRI)
        egress.table.swap(table(GREETER, (own,), retries=0))
        client = await RawH2.connect(egress.address[1])
        try:
            sid = client.request(f"/{GREETER}/greet", b"x", **{"grpc-timeout": "2S"})
            await client.until(lambda: client.ended(sid))
            trailers = client.trailers(sid)
            assert trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
            assert "loop" in trailers["grpc-message"], trailers
        finally:
            await client.close()
    finally:
        await egress.stop()


async def test_a_client_breaking_http2_gets_goaway_and_others_go_on(stack: TripleStack) -> None:
    bad = await RawH2.connect(stack.egress_port)
    try:
        # A DATA frame on stream 2, which a client may not open (even ids are the server's).
        bad.send_raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x02x")
        await bad.until(lambda: any(isinstance(e, h2.events.ConnectionTerminated) for e in bad.events))
        (goaway,) = [e for e in bad.events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    finally:
        await bad.close()
    async with stack.channel() as ch:
        assert await method(ch, "greet")(b"still", timeout=5) == b"app0:still"
    assert stack.egress.forwarder.triple.stats.protocol_errors == 1  # type: ignore[union-attr]


async def test_a_rate_limit_rule_answers_unavailable_naming_the_rule(stack: TripleStack) -> None:
    cap = RateLimit(requests_per_second=0.001, burst=2)
    rule = Rule(name="cap", service=StringMatch("exact", GREETER), rate_limit=cap)
    stack.egress.forwarder.rules = RuleSet([rule])  # type: ignore[union-attr]
    async with stack.channel() as ch:
        assert await method(ch, "greet")(b"1", timeout=5) == b"app0:1"
        assert await method(ch, "greet")(b"2", timeout=5) == b"app0:2"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(ch, "greet")(b"3", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details().startswith("rate limited by rule 'cap': over 0.001 requests/s (burst 2)")
    assert stack.apps[0][2].calls == 2


async def test_a_rule_matches_a_triple_attachment_header(stack: TripleStack) -> None:
    # Attachments are the headers (StreamUtils.toAttachments): a rule on `dubbo.tag` sends tagged calls
    # to a cluster that does not exist here, and says so.
    rule = Rule(
        name="gray",
        service=StringMatch("exact", GREETER),
        attachments=(("dubbo.tag", StringMatch("exact", "gray")),),
        cluster="gray-cluster",
    )
    stack.egress.forwarder.rules = RuleSet([rule])  # type: ignore[union-attr]
    async with stack.channel() as ch:
        assert await method(ch, "greet")(b"plain", timeout=5) == b"app0:plain"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(ch, "greet")(b"x", timeout=5, metadata=(("dubbo.tag", "gray"),))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "rule 'gray' sends" in caught.value.details() and "gray-cluster" in caught.value.details()


async def test_the_access_log_has_a_line_per_call_labelled_tri(
    stack: TripleStack, caplog: pytest.LogCaptureFixture
) -> None:
    log = AccessLog(True)
    stack.egress.forwarder.triple.access_log = log  # type: ignore[union-attr]
    caplog.set_level(logging.INFO, logger="regproxy.access")
    async with stack.channel() as ch:
        await method(ch, "greet")(b"x", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await method(ch, "fail")(b"y", timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "regproxy.access"]
    upstream = stack.ingress_address
    assert lines[0].startswith(f"egress {GREETER} greet upstream={upstream} status=0 duration_ms=")
    assert lines[1].startswith(f"egress {GREETER} fail upstream={upstream} status=9 duration_ms=")
    assert all(line.endswith(" protocol=tri") for line in lines), lines


async def test_triple_between_sidecars_over_mutual_tls(tmp_path: Path) -> None:
    # The ingress serves mutual TLS only; the egress dials it with TLS, and after the handshake the
    # ingress tells HTTP/2 from Dubbo as on a plain port.
    pki = make_pki(tmp_path)
    server, port, _seen = await start_app("tls-app")
    ingress_tls = SidecarTLS(tls_config(pki.peer, pki.ca), None)
    app = (Host(address=f"127.0.0.1:{port}", speaks=SPEAKS_TRI),)
    ingress_settings = settings(server_ssl=ingress_tls.server_ssl)
    ingress = Listener("ingress", ingress_settings, TableHolder(table("*", app)))
    await ingress.start()
    egress_cfg = tls_config(pki.peer, pki.ca).model_copy(update={"egress": "always", "ingress": False})
    egress_tls = SidecarTLS(egress_cfg, None)
    peer = (Host(address=f"127.0.0.1:{ingress.address[1]}"),)
    egress_settings = settings(upstream_tls=egress_tls.upstream)
    egress = Listener("egress", egress_settings, TableHolder(table(GREETER, peer)))
    await egress.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{egress.address[1]}") as ch:
            assert await method(ch, "greet")(b"secret", timeout=5) == b"tls-app:secret"
            parts = [m async for m in method(ch, "greetStream", "unary_stream")(b"3", timeout=5)]
            assert parts == [b"part0", b"part1", b"part2"]
        # A plaintext HTTP/2 client at the TLS-only ingress is refused before any byte is read.
        client = await RawH2.connect(ingress.address[1])
        try:
            client.request(f"/{GREETER}/greet", b"x")
            await client.until(lambda: client.closed, timeout=5)
        finally:
            await client.close()
        assert ingress.forwarder.triple.stats.requests == 2  # type: ignore[union-attr]
    finally:
        await egress.stop()
        await ingress.stop()
        await server.stop(None)


async def test_the_ingress_checks_a_published_token_on_triple_calls() -> None:
    # TokenFilter, as for a Dubbo call: the publication's `token` parameter must come with each call
    # (an attachment: a header); the egress adds it from the provider's URL (Plan.token).
    server, port, seen = await start_app("token-app")
    specs = [PublishSpec(GREETER, port, protocol="tri", params={"token": "s3cret"})]
    ingress_settings = settings(timeout_from_attachment=False)
    ingress = Listener("ingress", ingress_settings, TableHolder(ingress_table(specs)))
    await ingress.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingress.address[1]}") as ch:
            good = await method(ch, "greet")(b"a", timeout=5, metadata=(("token", "s3cret"),))
            assert good == b"token-app:a"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(ch, "greet")(b"b", timeout=5, metadata=(("token", "guess"),))
        assert caught.value.code() == grpc.StatusCode.UNKNOWN
        details = caught.value.details()
        assert details.startswith(f"Invalid token! Forbid invoke remote service interface {GREETER}")
        assert details.endswith("consumer incorrect token is guess")
        assert seen.calls == 1
    finally:
        await ingress.stop()
        await server.stop(None)


async def test_draining_sends_goaway_once_the_streams_in_flight_finish(stack: TripleStack) -> None:
    # Dubbo's read-only event, in HTTP/2: a GOAWAY. Not while a call is answering: h2 (apache-dubbo's
    # client is built on it) takes any frame after a GOAWAY as a protocol error.
    busy = await RawH2.connect(stack.egress_port)
    idle = await RawH2.connect(stack.egress_port)
    try:
        done = idle.request(f"/{GREETER}/greet", b"x")
        await idle.until(lambda: idle.ended(done))
        sid = busy.request(f"/{GREETER}/drip", b"5", **{"grpc-timeout": "5S"})
        await busy.until(lambda: b"drop0" in busy.data(sid))
        stack.egress.announce_readonly()

        def goaway(client: RawH2) -> list[h2.events.ConnectionTerminated]:
            return [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]

        await idle.until(lambda: bool(goaway(idle)))
        (sent,) = goaway(idle)
        assert sent.error_code == h2.errors.ErrorCodes.NO_ERROR and sent.last_stream_id == 2**31 - 1
        assert not goaway(busy)
        await busy.until(lambda: bool(goaway(busy)))
        assert busy.data(sid).count(b"drop") == 5 and busy.trailers(sid)["grpc-status"] == "0"
    finally:
        await busy.close()
        await idle.close()


async def test_an_application_going_away_ends_the_calls_on_its_connection_with_a_status(
    stack: TripleStack, caplog: pytest.LogCaptureFixture
) -> None:
    # grpcio's graceful stop sends GOAWAY and would let the call finish; h2 (regproxy's HTTP/2) takes
    # every frame after a GOAWAY as a protocol error, so the call on that connection ends here, with
    # a status naming the cause, and nothing escapes into the loop.
    server = stack.apps[0][0]
    async with stack.channel() as ch:
        call = method(ch, "drip", "unary_stream")(b"20", timeout=10)
        assert await call.read() == b"drop0"
        stopping = asyncio.get_running_loop().create_task(server.stop(grace=3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        await stopping
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details()
    # grpcio's GOAWAY comes with a PING in one read, which h2 refuses as a whole: the connection's end
    # is what the call learns.
    assert details.startswith("regproxy ingress: "), details
    assert "sent GOAWAY" in details or " lost " in details, details
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage() or r.exc_info]
