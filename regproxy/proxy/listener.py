"""The downstream side of a listener: a consumer's (egress) or a peer sidecar's (ingress)
connection. Parses frames and hands each to the forwarder; answers a broken stream with a Dubbo
error, then closes it."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from regproxy.dubbo.encode import encode_error
from regproxy.dubbo.frame import FrameParser, ProtocolError, Status
from regproxy.proxy.batch import BatchedWriter

if TYPE_CHECKING:
    from regproxy.proxy.forwarder import Forwarder

log = logging.getLogger(__name__)


class DownstreamConnection(asyncio.Protocol, BatchedWriter):
    __slots__ = (
        "_batcher",
        "_closing",
        "_forwarder",
        "_loop",
        "_out",
        "_parser",
        "in_flight",
        "last_active",
        "peer",
        "transport",
    )

    def __init__(self, forwarder: Forwarder, max_body: int) -> None:
        self._forwarder = forwarder
        self._batcher = forwarder.batcher
        self._parser = FrameParser(max_body)
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.in_flight = 0  # two-way requests forwarded and not yet answered
        self._closing = False
        self._loop = forwarder.loop
        self.last_active = self._loop.time()  # for the idle sweep

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if not self._forwarder.connection_opened(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            self._handle(exc.frames)
            self._protocol_error(exc)
            return
        self._handle(frames)

    def _handle(self, frames: list) -> None:
        handle = self._forwarder.handle_frame
        for frame in frames:
            handle(self, frame)

    def _protocol_error(self, exc: ProtocolError) -> None:
        fwd = self._forwarder
        fwd.stats.protocol_errors += 1
        fwd.stats.responses[Status.BAD_REQUEST] += 1
        log.warning("%s: closing connection from %s: %s", fwd.name, self.peer, exc)
        # The request id is known when the header was readable (e.g. an oversized body): the
        # consumer learns which call failed. Garbage gets id 0: still a readable Dubbo error.
        request_id = exc.request_id if exc.request_id is not None else 0
        self.queue(
            encode_error(request_id, Status.BAD_REQUEST, f"regproxy {fwd.name}: {exc}; closing connection")
        )
        # Read no more, but let the requests that arrived intact before the bad bytes be answered
        # (each is bounded by its deadline) before closing.
        self._closing = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._close_if_done()

    def answered(self) -> None:
        """One forwarded request got its response (or an error made here)."""
        self.in_flight -= 1
        self.last_active = self._loop.time()
        if self._closing:
            self._close_if_done()

    def _close_if_done(self) -> None:
        if self.in_flight <= 0 and self.transport is not None:
            self.flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._out = []
        self._forwarder.connection_closed(self)
