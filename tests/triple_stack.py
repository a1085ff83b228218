"""An in-process Triple path for tests: a gRPC application (grpcio's asyncio server, an
independent HTTP/2 and gRPC implementation) behind an ingress listener, behind an egress
listener, with static tables; and a raw HTTP/2 client (h2) for what a gRPC library would not send.

The service is ``GREETER`` with one method per call kind (unary ``greet``, server-stream
``greetStream``, client-stream ``greetClientStream``, bidi ``greetBidi``), and ``fail`` (a status
and message the test can look for), ``slow`` (sleeps the milliseconds it is sent), ``deadline``
(answers the deadline it was given, as the application sees it), ``big`` (answers as many bytes
as it is asked) and ``drip`` (one message every 100 ms, ``n`` of them). Messages are raw bytes
(identity serializers): the proxy never reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events

from regproxy.proxy.engine import Listener
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.routing.model import SPEAKS_TRI
from regproxy.triple.messages import pack_message
from tests.test_proxy_e2e import settings

GREETER = "org.apache.dubbo.samples.Greeter"
BIG = 16 << 20
GRPC_OPTIONS = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)]


@dataclass
class Seen:
    """What the application saw: the deadlines it was given, the calls it saw cancelled, the
    request metadata of the last call."""

    deadlines: list[float] = field(default_factory=list)
    cancelled: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    calls: int = 0


def _handlers(seen: Seen, name: str) -> grpc.GenericRpcHandler:
    async def greet(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.calls += 1
        seen.metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        return name.encode() + b":" + request if len(request) < 1024 else request

    async def greet_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request or b"3")):
            yield b"part%d" % i

    async def greet_client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        count = total = 0
        async for message in requests:
            count += 1
            total += len(message)
        return b"%d/%d" % (count, total)

    async def greet_bidi(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such thing: " + request.decode())
        return b""  # pragma: no cover - abort raises

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(int(request) / 1000)
        return b"late"

    async def deadline(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        left = context.time_remaining()
        seen.deadlines.append(left if left is not None else -1.0)
        return str(left).encode()

    async def big(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return bytes(int(request))

    async def drip(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            for i in range(int(request)):
                await asyncio.sleep(0.1)
                yield b"drop%d" % i
        except asyncio.CancelledError:
            seen.cancelled += 1
            raise

    return grpc.method_handlers_generic_handler(
        GREETER,
        {
            "greet": grpc.unary_unary_rpc_method_handler(greet),
            "greetStream": grpc.unary_stream_rpc_method_handler(greet_stream),
            "greetClientStream": grpc.stream_unary_rpc_method_handler(greet_client_stream),
            "greetBidi": grpc.stream_stream_rpc_method_handler(greet_bidi),
            "fail": grpc.unary_unary_rpc_method_handler(fail),
            "slow": grpc.unary_unary_rpc_method_handler(slow),
            "deadline": grpc.unary_unary_rpc_method_handler(deadline),
            "drip": grpc.unary_stream_rpc_method_handler(drip),
            "big": grpc.unary_unary_rpc_method_handler(big),
        },
    )


async def start_app(name: str = "app") -> tuple[grpc.aio.Server, int, Seen]:
    """A gRPC application on a free loopback port: (server, port, what it saw)."""
    seen = Seen()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((_handlers(seen, name),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, seen


def table(
    service: str, hosts: tuple[Host, ...], *, timeout_ms: int | None = None, retries: int = 1
) -> RoutingTable:
    return RoutingTable(
        routes=[
            Route(
                name="r",
                match=RouteMatch(service=service),
                cluster="c",
                timeout_ms=timeout_ms,
                retries=retries,
            )
        ],
        clusters=[Cluster(name="c", lb="round_robin", hosts=hosts)],
    )


@dataclass
class TripleStack:
    """grpc client → egress → ingress → gRPC application (``apps``: one or more)."""

    apps: list[tuple[grpc.aio.Server, int, Seen]]
    ingress: Listener
    egress: Listener
    egress_table: TableHolder

    @property
    def egress_port(self) -> int:
        return self.egress.address[1]

    @property
    def ingress_address(self) -> str:
        return f"127.0.0.1:{self.ingress.address[1]}"

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.egress_port}", options=GRPC_OPTIONS)


async def start_stack(apps: int = 1, *, egress_timeout_ms: int | None = None) -> TripleStack:
    started = [await start_app(f"app{i}") for i in range(apps)]
    app_hosts = tuple(Host(address=f"127.0.0.1:{port}", speaks=SPEAKS_TRI) for _, port, _ in started)
    ingress = Listener("ingress", settings(timeout_from_attachment=False), TableHolder(table("*", app_hosts)))
    await ingress.start()
    holder = TableHolder(
        table(GREETER, (Host(address=f"127.0.0.1:{ingress.address[1]}"),), timeout_ms=egress_timeout_ms)
    )
    egress = Listener("egress", settings(), holder)
    await egress.start()
    return TripleStack(started, ingress, egress, holder)


async def stop_stack(stack: TripleStack) -> None:
    await stack.egress.stop()
    await stack.ingress.stop()
    for server, _, _ in stack.apps:
        await server.stop(None)


# --- a raw HTTP/2 client ------------------------------------------------------------------------


def request_headers(path: str, **extra: str) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "regproxy"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    headers.extend(extra.items())
    return headers


class RawH2:
    """A bare HTTP/2 client connection (h2 on asyncio streams): sends what a test says, collects
    every event, and acknowledges DATA only when ``auto_ack`` (a reader that never reads leaves
    it off)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auto_ack: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[h2.events.Event] = []
        self.closed = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, *, auto_ack: bool = True) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, auto_ack)
        client.conn.initiate_connection()
        client.flush()
        client._task = asyncio.get_running_loop().create_task(client._read())
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self.events.append(event)
                    if self.auto_ack and isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.flush()
                self._changed.set()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed = True
            self._changed.set()

    def request(self, path: str, body: bytes | None = None, *, end: bool = True, **headers: str) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, request_headers(path, **headers), end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(sid, pack_message(body), end_stream=end)
        self.flush()
        return sid

    def of(self, sid: int) -> list[h2.events.Event]:
        return [e for e in self.events if getattr(e, "stream_id", None) == sid]

    def trailers(self, sid: int) -> dict[str, str]:
        """The stream's status: its trailers, or its Trailers-Only headers."""
        for event in self.of(sid):
            if isinstance(event, h2.events.TrailersReceived):
                return dict(event.headers)  # type: ignore[arg-type]
        for event in self.of(sid):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_ended is not None:
                return dict(event.headers)  # type: ignore[arg-type]
        return {}

    def data(self, sid: int) -> bytes:
        return b"".join(e.data for e in self.of(sid) if isinstance(e, h2.events.DataReceived))

    def ended(self, sid: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) for e in self.of(sid))

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.closed:
                    if predicate():
                        return
                    raise AssertionError(f"connection closed; events: {self.events[-5:]}")
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()
