"""Health checks of a Triple-only address: an HTTP/2 PING on a kept connection.

A Dubbo heartbeat means nothing to a port that speaks only HTTP/2 (an application's Triple port,
a provider registered ``tri://`` only): it would be counted down while it serves. HTTP/2 has its
own liveness frame, PING (RFC 9113 §6.7), which every server answers with an ACK; gRPC's
keepalive uses it. A GOAWAY from the server is its way of saying it is shutting down: the
counterpart of Dubbo's read-only event (``on_readonly``). ``H2PingProbe`` has HeartbeatProbe's
interface, so the app watch and the active checks pick one or the other by protocol.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import h2.events
import h2.exceptions

from regproxy.triple import settings


class _Connection(asyncio.Protocol):
    def __init__(self, on_goaway: Callable[[], None]) -> None:
        self.h2 = settings.client_connection()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._on_goaway = on_goaway
        self._waiting: dict[bytes, asyncio.Future[None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._lost(f"HTTP/2 protocol error: {exc}")
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.PingAckReceived):
                fut = self._waiting.pop(event.ping_data, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._lost(f"the server sent GOAWAY ({event.error_code!s})")
                self._on_goaway()
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost("connection closed" + (f" ({exc})" if exc else ""))

    def _lost(self, why: str) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(why))

    async def ping(self) -> None:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        opaque = os.urandom(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[opaque] = fut
        self.h2.ping(opaque)
        self._flush()
        try:
            await fut
        finally:
            self._waiting.pop(opaque, None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class H2PingProbe:
    """PINGs one ``HOST:PORT`` over a kept HTTP/2 connection (made on first use, and again after a
    failure). ``check`` raises (naming the reason) unless the ACK came within the timeout."""

    def __init__(self, address: str, *, on_readonly: Callable[[], None] | None = None) -> None:
        self.address = address
        self.on_readonly = on_readonly
        self._conn: _Connection | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def check(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ping()
        except BaseException:
            self.close()
            raise

    async def _ping(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            host, _, port = self.address.rpartition(":")
            conn = self._conn = _Connection(self._goaway)
            await asyncio.get_running_loop().create_connection(lambda: conn, host.strip("[]"), int(port))
        await conn.ping()

    def _goaway(self) -> None:
        self.close()
        if self.on_readonly is not None:
            self.on_readonly()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
