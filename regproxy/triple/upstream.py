"""regproxy's HTTP/2 connections to upstream hosts (regproxy is the client), for Triple calls.

One pool per listener. A host gets one connection, multiplexing every call to it, as gRPC clients
do; calls beyond the streams its server allows at once (or UPSTREAM_STREAMS) wait for one to end.
Never a second connection while one is usable: apache-dubbo's Python server (3.0.0b1) serves
only the connection it accepted last, so a second one would silence the first. For the same
reason the ingress's app check PINGs the application over this same connection (``ping``).
A connection that failed to open, or lost, fails only the calls on it: each is retried elsewhere
when the upstream cannot have started it, else answered (TripleForwarder). A host whose connection
failed is avoided for a short while (``is_failing``), as the Dubbo pool does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING

import h2.events
import h2.exceptions

from regproxy.proxy.loops import LoopGuard
from regproxy.routing import split_address
from regproxy.triple import settings
from regproxy.triple.connection import H2Side

if TYPE_CHECKING:
    from regproxy.tls import UpstreamTLS
    from regproxy.triple.exchange import Headers, TripleExchange
    from regproxy.triple.forwarder import TripleForwarder

log = logging.getLogger(__name__)

# How long a host whose connection could not be opened is avoided by picks (unless nothing else).
FAILING_S = 2.0


class TripleUpstream(H2Side):
    """One HTTP/2 connection to ``address``; ``exchanges`` by upstream stream id, ``waiting`` the
    calls to open once it is up."""

    def __init__(self, pool: TriplePool, address: str) -> None:
        super().__init__(pool.fwd, settings.client_connection())
        self.pool = pool
        self.address = address
        self.exchanges: dict[int, TripleExchange] = {}
        self.waiting: list[TripleExchange] = []
        self.ready = False
        self.draining = False  # a GOAWAY came: no new streams
        self._end: str | None = None  # its local address in the loop guard
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self.connected: asyncio.Future[None] = pool.loop.create_future()

    # --- streams ---------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not (self.closed or self.draining)

    def _has_room(self) -> bool:
        limit = min(self.h2.remote_settings.max_concurrent_streams, settings.UPSTREAM_STREAMS)
        return len(self.exchanges) < limit

    def open(self, exch: TripleExchange, headers: Headers) -> None:
        """Open a stream for ``exch`` now, or once the connection is up and has room."""
        if not self.ready or self.waiting or not self._has_room():
            exch.headers = headers
            self.waiting.append(exch)
            return
        self._start(exch, headers)

    def _start_waiting(self) -> None:
        while self.waiting and self.ready and self.usable and self._has_room():
            exch = self.waiting.pop(0)
            if not exch.finished:
                self._start(exch, exch.headers)

    def _start(self, exch: TripleExchange, headers: Headers) -> None:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=False)
        self.exchanges[sid] = exch
        self.dirty()
        exch.opened(self, sid)

    def forget(self, stream_id: int) -> None:
        self.exchanges.pop(stream_id, None)
        if self.waiting:
            self._start_waiting()
        elif self.draining and not self.exchanges:
            self.close()

    async def ping(self) -> None:
        """An HTTP/2 PING answered on this connection (ConnectionError when it goes first)."""
        opaque = os.urandom(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[opaque] = fut
        self.h2.ping(opaque)
        self.dirty()
        try:
            await fut
        finally:
            self._pings.pop(opaque, None)

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local, remote = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        self._end = self.pool.guard.opened(local, self.pool.name, self.address, remote)
        settings.start(self.h2)
        self.ready = True
        if not self.connected.done():
            self.connected.set_result(None)
        self._start_waiting()
        self.dirty()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.pool.fwd.upstream_broken(self, f"HTTP/2 protocol error from {self.address}: {exc}")
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    exch.from_up(event.data, event.flow_controlled_length)
                else:
                    self.ack(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, h2.events.ResponseReceived):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    exch.up_headers(event.headers, event.stream_ended is not None)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.TrailersReceived):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    exch.up_trailers(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamEnded):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    exch.up_ended()
            elif isinstance(event, h2.events.StreamReset):
                exch = self.exchanges.pop(event.stream_id, None)
                if exch is not None:
                    self.pool.fwd.up_reset(exch, event.error_code)
            elif isinstance(event, h2.events.WindowUpdated):
                self._window_opened(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._window_opened(0)
                self._start_waiting()  # MAX_CONCURRENT_STREAMS may have grown
            elif isinstance(event, h2.events.PingAckReceived):
                fut = self._pings.pop(event.ping_data, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._goaway(event)
        self.dirty()

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """The server's GOAWAY: streams above its last id were never processed (RFC 9113 §6.8) and
        may go elsewhere, as may those still waiting. RFC 9113 lets the others finish, but h2 takes
        every frame after a GOAWAY as a protocol error: they are lost with the connection (retried
        where their route allows it after a reset: TripleForwarder.up_lost)."""
        self.draining = True
        why = f"{self.address} sent GOAWAY ({event.error_code!s})"
        self._fail_pings(why)
        waiting, self.waiting = self.waiting, []
        for exch in waiting:
            self.pool.fwd.up_unprocessed(exch, why)
        last = event.last_stream_id if event.last_stream_id is not None else 0
        exchanges, self.exchanges = self.exchanges, {}
        for sid, exch in exchanges.items():
            if sid > last:
                self.pool.fwd.up_unprocessed(exch, why)
            else:
                self.pool.fwd.up_lost(exch, why)
        self.close()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            exch = self.exchanges.get(stream_id)
            if exch is not None and not exch.finished:
                exch.pump_up()
        else:
            for exch in list(self.exchanges.values()):
                if exch.to_up or (exch.down_done and not exch.up_end_sent):
                    exch.pump_up()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self._end is not None:
            self.pool.guard.closed(self._end)
        reason = f"connection to {self.address} lost" + (f": {exc}" if exc else "")
        self._fail_pings(reason)
        self.pool.lost(self, reason)

    def connect_failed(self, reason: str) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(reason))
            self.connected.exception()  # retrieved: nobody need wait for it
        self.pool.lost(self, reason)

    def _fail_pings(self, why: str) -> None:
        pings, self._pings = self._pings, {}
        for fut in pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError(why))

    # --- writes ----------------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.flush()
            self.transport.close()
        self.closed = True


class TriplePool:
    """A listener's upstream HTTP/2 connections, by host address."""

    def __init__(
        self,
        fwd: TripleForwarder,
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        guard: LoopGuard,
        connect_timeout_s: float,
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.fwd = fwd
        # The egress's mutual TLS to peer sidecars (regproxy.tls), as the Dubbo pool dials them: after
        # the handshake the HTTP/2 preface goes first, and the ingress tells the protocols apart.
        self.tls = tls
        self.loop = loop
        self.name = name
        self.guard = guard
        self.connect_timeout_s = connect_timeout_s
        self.conns: dict[str, list[TripleUpstream]] = {}
        self.failing: dict[str, float] = {}  # address -> until (loop time)
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def is_failing(self, address: str) -> bool:
        until = self.failing.get(address)
        if until is None:
            return False
        if until <= self.loop.time():
            del self.failing[address]
            return False
        return True

    def active(self, address: str) -> int:
        """Calls in flight to ``address`` (the least-active balancers read it)."""
        return sum(len(c.exchanges) + len(c.waiting) for c in self.conns.get(address, ()))

    def open(self, exch: TripleExchange, address: str, headers: Headers) -> None:
        """Send ``exch`` to ``address``, on its connection (a new one when it has none usable)."""
        self._connection(address).open(exch, headers)

    def _connection(self, address: str) -> TripleUpstream:
        conns = self.conns.setdefault(address, [])
        for conn in conns:
            if conn.usable:
                return conn
        conn = TripleUpstream(self, address)
        conns.append(conn)
        task = self.loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    async def ping(self, address: str) -> None:
        """A PING to ``address`` on the connection calls use (made when there is none): whether
        the host answers HTTP/2, without a connection of its own (see the module's docstring)."""
        conn = self._connection(address)
        if not conn.ready:
            await asyncio.shield(conn.connected)
        await conn.ping()

    async def _connect(self, conn: TripleUpstream) -> None:
        try:
            host, port = split_address(conn.address)
            tls = self.tls.connect_args(conn.address, host) if self.tls is not None else {}
            async with asyncio.timeout(self.connect_timeout_s + tls.get("ssl_handshake_timeout", 0)):
                await self.loop.create_connection(lambda: conn, host, port, **tls)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = (
                f"cannot connect to {conn.address}: timed out after {self.connect_timeout_s:g} s"
                if isinstance(exc, TimeoutError)
                else f"cannot connect to {conn.address}: {exc}"
            )
            self.failing[conn.address] = self.loop.time() + FAILING_S
            self.fwd.stats.connect_failures += 1
            conn.connect_failed(reason)

    def lost(self, conn: TripleUpstream, reason: str) -> None:
        """``conn`` is gone: its calls are retried or answered (TripleForwarder)."""
        conns = self.conns.get(conn.address)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.address]
        waiting, conn.waiting = conn.waiting, []
        for exch in waiting:
            self.fwd.up_unprocessed(exch, reason)
        exchanges, conn.exchanges = conn.exchanges, {}
        for exch in exchanges.values():
            self.fwd.up_lost(exch, reason)

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.close()
