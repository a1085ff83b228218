"""Upstreams that break the Dubbo exchange, against a running sidecar (a `regproxy run` process).

The application behind the ingress is a stand-in that misbehaves on purpose (``FakeApp``): a TCP
echo server, which sends the sidecar's requests back as they came; a provider that answers with
request ids it was never sent; one that calls back its consumer (a Dubbo callback); one that stops
reading. In each case the requests the fault touches are answered at once with an error naming the
cause, not at their deadline; the connection logs it once; the listener's stats count it
(GET /api/v1/stats); and calls are served again once the application behaves. Throughout, a normal
client calls another service of the same sidecar (a demo provider behind it) and every one of its
calls succeeds: a broken upstream connection harms only what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.demo.provider import serve
from regproxy.dubbo.encode import encode_request, encode_response, heartbeat_reply
from regproxy.dubbo.frame import Frame, FrameParser, Status
from regproxy.dubbo.hessian2 import decode_value
from regproxy.dubbo.request import RequestBody
from tests.sidecars import SidecarProc
from tests.test_abuse import GREET, SteadyClient
from tests.wait import wait_for

pytestmark = pytest.mark.process

SVC = "com.example.faults.Svc"  # served by the fake application, published on the sidecar
ONLY = "com.example.faults.Only"  # routed by the egress to one host, in the last test
LISTENER = "com.example.faults.Listener"  # what the application "calls back"
# The application's own request id: the id of the sidecar's first request too (a Java provider
# numbers its requests JVM-wide from 0: org.apache.dubbo.remoting.exchange.Request.INVOKE_ID).
CALLBACK_ID = 1
UNISSUED = 1 << 40  # added to a request's id by the "bad_id" application: an id never sent to it
FOREIGN_LOG = "counted in upstream_foreign_frames"
PAUSE_LOG = "unsent (limits.max_unsent_bytes_per_connection): its peer is not reading"


class FakeApp:
    """The application behind the ingress, misbehaving as ``mode`` says (it may change between calls):

    * ``echo``: writes back every byte it reads;
    * ``ok``: answers each request with its first argument; method ``hold`` is never answered, and
      ``late`` after ``late_s``;
    * ``bad_id``: as ``ok``, but with the request's id plus ``UNISSUED``;
    * ``callback``: as ``ok``, and on connect sends a one-way and a two-way request of its own.

    ``stalled``: each new connection is not read (with a 4 KiB receive buffer) until ``unstall``;
    ``conns`` lists the connections it reads.
    """

    def __init__(self, mode: str, *, stalled: bool = False, late_s: float = 1.0) -> None:
        self.mode = mode
        self.stalled = stalled
        self.late_s = late_s
        self.conns: list[_AppConn] = []
        self.requests: list[str] = []  # the methods of the requests it read, in order
        self.answers: list[Frame] = []  # responses the sidecar sent it (to its callbacks)
        self.late_sent = 0
        self._server: asyncio.AbstractServer | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._unread: list[socket.socket] = []  # accepted while stalled, not read yet
        self.port = 0

    async def __aenter__(self) -> FakeApp:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.stalled:
            # Inherited by accepted sockets: the kernel holds little of what the sidecar writes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        if self.stalled:
            # Accepted by hand, not by a server: uvloop starts reading a server's connection after
            # connection_made, whatever it paused.
            self._accepting = asyncio.ensure_future(self._accept(sock))
        else:
            self._server = await loop.create_server(lambda: _AppConn(self), sock=sock)
        return self

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with listening:
            while True:
                conn, _ = await loop.sock_accept(listening)
                if self.stalled:
                    self._unread.append(conn)
                else:
                    await loop.connect_accepted_socket(lambda: _AppConn(self), conn)

    async def __aexit__(self, *exc: object) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for sock in self._unread:
            sock.close()
        for conn in self.conns:
            conn.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def unstall(self) -> None:
        """Read (and answer) from now on, the connections accepted so far included."""
        self.stalled = False
        loop = asyncio.get_running_loop()
        unread, self._unread = self._unread, []
        for sock in unread:
            await loop.connect_accepted_socket(lambda: _AppConn(self), sock)


class _AppConn(asyncio.Protocol):
    def __init__(self, app: FakeApp) -> None:
        self.app = app
        self.parser = FrameParser()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self.app.conns.append(self)
        if self.app.mode == "callback":
            # One-way first: once the two-way one is answered, the one-way one was read before it.
            self.transport.write(
                encode_request(CALLBACK_ID - 1, LISTENER, "changed", ["one-way"], two_way=False)
                + encode_request(CALLBACK_ID, LISTENER, "changed", ["two-way"])
            )

    def data_received(self, data: bytes) -> None:
        app = self.app
        if app.mode == "echo":
            self.transport.write(data)
            return
        out: list[bytes] = []
        for frame in self.parser.feed(data):
            if not frame.is_request:
                app.answers.append(frame)
                continue
            if frame.is_event:
                if frame.two_way:
                    out.append(heartbeat_reply(frame.request_id))
                continue
            body = RequestBody(frame.body)
            app.requests.append(body.method)
            if body.method == "hold" or not frame.two_way:
                continue
            reply_id = frame.request_id + (UNISSUED if app.mode == "bad_id" else 0)
            reply = encode_response(reply_id, body.arguments()[0])
            if body.method == "late":
                asyncio.get_running_loop().call_later(app.late_s, self._late, reply)
            else:
                out.append(reply)
        if out:
            self.transport.write(b"".join(out))

    def _late(self, reply: bytes) -> None:
        self.transport.write(reply)
        self.app.late_sent += 1


@contextlib.asynccontextmanager
async def sidecar_for(
    app: FakeApp,
    tmp_path: Path,
    *,
    clusters: tuple[dict[str, Any], ...] = (),
    routes: tuple[dict[str, Any], ...] = (),
    **config: Any,
) -> AsyncIterator[SidecarProc]:
    """A sidecar (memory:// registry) with SVC published on ``app``'s port, so its ingress forwards
    SVC there; its egress routes SVC to its own ingress, unless one of ``routes`` (tried first)
    says otherwise; ``config``: other top-level keys. Beside it, GREET is published on a demo
    provider, and a SteadyClient calls it through the egress (and so the ingress) from start to
    end: each of its calls must succeed."""
    provider = await serve("127.0.0.1", 0)
    provider_port = provider.sockets[0].getsockname()[1]
    path = tmp_path / "regproxy.yaml"
    sc = SidecarProc("faults", tmp_path / "sc", registries=["memory://"], app_port=app.port,
                     extra=["--config", str(path), "--log-level", "info"])  # fmt: skip
    path.write_text(
        yaml.safe_dump(
            {
                "drain": {"grace_s": 0, "timeout_s": 1},  # stop at once: held calls are not waited for
                # The app is checked by the data path here, not by heartbeats that an echo server
                # or a stalled one would fail (withdrawing the publication mid-test).
                "health": {"app_check": {"enabled": False}},
                "clusters": [*clusters, {"name": "self", "hosts": [{"address": f"127.0.0.1:{sc.ingress}"}]}],
                "routes": [
                    *routes,
                    {"name": "faults", "match": {"service": SVC}, "cluster": "self"},
                    {"name": "greet", "match": {"service": GREET}, "cluster": "self"},
                ],
                **config,
            }
        )
    )
    await sc.start()
    try:
        for service, port in ((SVC, app.port), (GREET, provider_port)):
            status, reply = await sc.post("/pub", {"service": {"interface": service, "port": port}})
            assert status == 200, reply
        with SteadyClient(sc.egress) as steady:
            yield sc
            await steady.finish(at_least=1)  # a short test; what matters: no call failed
    finally:
        await sc.stop()
        provider.close()
        await provider.wait_closed()


async def stats(sc: SidecarProc, listener: str) -> dict[str, Any]:
    status, body = await sc.admin_get("/api/v1/stats")
    assert status == 200, body
    return body[listener]  # type: ignore[no-any-return]


def log_lines(sc: SidecarProc, text: str) -> list[str]:
    return [line for line in sc.log_path.read_text(errors="replace").splitlines() if text in line]


async def failing_call(
    client: DubboClient, method: str, arg: str, *, timeout: float = 5.0
) -> tuple[DubboCallError, float]:
    """The error of a call expected to fail, and how long it took (the timeout is far above it)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DubboCallError) as info:
        await client.call(SVC, method, [arg], timeout=timeout)
    return info.value, loop.time() - start


async def test_request_echoed_by_the_app_fails_at_once(tmp_path: Path) -> None:
    async with FakeApp("echo") as app, sidecar_for(app, tmp_path) as sc:
        slowest = 0.0
        for port, calls in ((sc.ingress, 20), (sc.egress, 3)):  # the egress: via its own ingress
            async with await DubboClient.connect("127.0.0.1", port) as client:
                for i in range(calls):
                    err, took = await failing_call(client, "echo", f"a{i}")
                    assert err.status == Status.SERVER_ERROR, err
                    assert "answered with a request frame" in err.message, err
                    assert took < 1.0, f"failed after {took:.2f} s: at the deadline, not at once"
                    slowest = max(slowest, took)
        assert len(app.conns) == 1  # every call crossed the same upstream connection, which stays
        assert (await stats(sc, "ingress"))["upstream_foreign_frames"] == 23
        warned = log_lines(sc, FOREIGN_LOG)
        assert len(warned) == 1 and "WARNING" in warned[0], warned
        print(f"echo: 23 calls failed, the slowest in {slowest * 1000:.0f} ms")


async def test_response_with_an_id_never_sent_closes_the_connection(tmp_path: Path) -> None:
    async with (
        FakeApp("ok", late_s=1.0) as app,
        # The ingress gives up on the application after 0.8 s: the "late" answer comes after that.
        sidecar_for(app, tmp_path, timeouts={"ingress_ms": 800}) as sc,
        await DubboClient.connect("127.0.0.1", sc.ingress) as client,
    ):
        # A late answer (its id was sent, its deadline passed) is dropped; the connection stays.
        err, _ = await failing_call(client, "late", "slow")
        assert err.status == Status.SERVER_TIMEOUT, err
        await wait_for(lambda: app.late_sent == 1, 5, "the late answer")
        assert await client.call(SVC, "echo", ["after late"], timeout=5) == "after late"
        assert len(app.conns) == 1 and not log_lines(sc, FOREIGN_LOG)
        assert (await stats(sc, "ingress"))["upstream_foreign_frames"] == 0

        # An answer with an id never sent: the connection closes, what is in flight on it fails now.
        app.mode = "bad_id"
        held = asyncio.ensure_future(client.call(SVC, "hold", ["held"], timeout=5))
        await wait_for(lambda: "hold" in app.requests, 5, "the held request at the app")
        err, took = await failing_call(client, "echo", "b")
        with pytest.raises(DubboCallError) as held_err:
            await asyncio.wait_for(held, 5)
        # Failed by the bad frame, at once: the 0.8 s deadline would have answered SERVER_TIMEOUT.
        for e in (err, held_err.value):
            assert e.status == Status.SERVER_ERROR and "which was never sent on it" in e.message, e
        assert (await stats(sc, "ingress"))["upstream_foreign_frames"] == 1
        warned = log_lines(sc, FOREIGN_LOG)
        assert len(warned) == 1 and "WARNING" in warned[0] and "never sent on it" in warned[0], warned

        # The next call opens a new connection and, the application fixed, is served.
        app.mode = "ok"
        assert await client.call(SVC, "echo", ["fixed"], timeout=5) == "fixed"
        assert len(app.conns) == 2
        print(f"id never sent: failed in {took * 1000:.0f} ms")


async def test_callback_from_the_app_is_refused_calls_go_on(tmp_path: Path) -> None:
    async with (
        FakeApp("callback") as app,
        sidecar_for(app, tmp_path) as sc,
        await DubboClient.connect("127.0.0.1", sc.ingress) as client,
    ):
        # The first call opens the connection, on which the application sends its own requests.
        assert await client.call(SVC, "echo", ["c0"], timeout=5) == "c0"
        await wait_for(lambda: app.answers, 2, "an answer to the application's request")
        for i in range(1, 4):
            assert await client.call(SVC, "echo", [f"c{i}"], timeout=5) == f"c{i}"
        # One answer: to the two-way request; the one-way one (read before it) gets none.
        assert [(f.request_id, f.status) for f in app.answers] == [(CALLBACK_ID, Status.BAD_REQUEST)]
        assert "(Dubbo callbacks) are not carried" in decode_value(app.answers[0].body)
        assert len(app.conns) == 1
        assert (await stats(sc, "ingress"))["upstream_foreign_frames"] == 2
        warned = log_lines(sc, FOREIGN_LOG)
        assert len(warned) == 1 and "WARNING" in warned[0], warned


class BigCalls:
    """1 MiB calls through ``port``, each on a connection of its own (the sidecar stops reading a
    connection with limits.max_in_flight_bytes_per_connection in flight), left to run."""

    BIG = "x" * (1 << 20)

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients: list[DubboClient] = []
        self.calls: list[asyncio.Future[Any]] = []

    async def until_paused(self, sc: SidecarProc, most: int = 16) -> None:
        """Until the sidecar logs that an upstream connection is full: the kernel's buffers to the
        application are full, and the sidecar's own passed limits.max_unsent_bytes_per_connection."""
        while not log_lines(sc, PAUSE_LOG):
            assert len(self.calls) < most, f"{len(self.calls)} MiB sent to a peer not reading, no pause"
            client = await DubboClient.connect("127.0.0.1", self.port)
            self.clients.append(client)
            self.calls.append(asyncio.ensure_future(client.call(SVC, "echo", [self.BIG], timeout=10)))
            with contextlib.suppress(AssertionError):  # not yet: one more
                await wait_for(lambda: log_lines(sc, PAUSE_LOG), 0.15, "the pause")
        assert "WARNING" in log_lines(sc, PAUSE_LOG)[0]

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for client in self.clients:
            client.close()


UNSENT_LIMITS = {"max_unsent_bytes_per_connection": 65536, "max_in_flight_bytes_per_connection": 16384}


async def test_app_that_stops_reading_gets_no_more_requests(tmp_path: Path) -> None:
    async with FakeApp("ok", stalled=True) as app, sidecar_for(app, tmp_path, limits=UNSENT_LIMITS) as sc:
        big = BigCalls(sc.ingress)
        try:
            await big.until_paused(sc)
            async with await DubboClient.connect("127.0.0.1", sc.ingress) as client:
                for i in range(3):
                    err, took = await failing_call(client, "echo", f"d{i}")
                    assert err.status == Status.SERVICE_NOT_FOUND, err  # the ingress's "not written"
                    assert "not sent:" in err.message and "its peer is not reading" in err.message, err
                    assert took < 1.0, f"failed after {took:.2f} s: queued, not refused"
                assert (await stats(sc, "ingress"))["upstream_unsent_refusals"] == 3

                # The application reads again: what was held is answered, new requests written.
                await app.unstall()
                assert await asyncio.wait_for(asyncio.gather(*big.calls), 10) == [big.BIG] * len(big.calls)
                assert await client.call(SVC, "echo", ["after"], timeout=5) == "after"
            assert len(app.conns) == 1 and app.requests.count("echo") == len(big.calls) + 1
            print(f"paused after {len(big.calls)} MiB held; refused in {took * 1000:.0f} ms")
        finally:
            big.close()


async def test_egress_sends_around_a_host_that_stops_reading(tmp_path: Path) -> None:
    async with (
        FakeApp("ok", stalled=True) as stalled,
        FakeApp("ok") as good,
        sidecar_for(
            good,
            tmp_path,
            limits=UNSENT_LIMITS,
            clusters=(
                {"name": "pair", "hosts": [{"address": f"127.0.0.1:{app.port}"} for app in (stalled, good)]},
                {"name": "only", "hosts": [{"address": f"127.0.0.1:{stalled.port}"}]},
            ),
            routes=(
                {"name": "pair", "match": {"service": SVC}, "cluster": "pair"},
                {"name": "only", "match": {"service": ONLY}, "cluster": "only"},
            ),
        ) as sc,
    ):
        big = BigCalls(sc.egress)
        try:
            await big.until_paused(sc)  # round robin: half of them held by the stalled host
            async with await DubboClient.connect("127.0.0.1", sc.egress) as client:
                # No other host: refused at once, with the egress's "not written" status.
                loop = asyncio.get_running_loop()
                start = loop.time()
                resp = await client.invoke(ONLY, "echo", ["alone"], timeout=5)
                took = loop.time() - start
                error = resp.error or ""
                assert resp.status == Status.SERVER_ERROR, resp
                assert "not sent:" in error and "its peer is not reading" in error, resp
                assert took < 1.0, f"failed after {took:.2f} s: queued, not refused"
                # Another host: the balancer avoids the full one, as a host whose connect failed
                # (UpstreamPool.is_failing), so no call spends a retry on it.
                before = await stats(sc, "egress")
                for i in range(6):
                    assert await client.call(SVC, "echo", [f"e{i}"], timeout=5) == f"e{i}"
                after = await stats(sc, "egress")
            refused = after["upstream_unsent_refusals"] - before["upstream_unsent_refusals"]
            assert refused == 0 and after["retries"] == before["retries"], (before, after)
            print(
                f"paused after {len(big.calls)} MiB sent; one host: refused in {took * 1000:.0f} ms; "
                "two hosts: 6 of 6 calls sent to the host that reads"
            )
        finally:
            big.close()
