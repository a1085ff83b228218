"""The downstream side of a listener: a consumer's (egress) or a peer sidecar's (ingress)
connection. Parses frames and hands each to the forwarder; answers a broken stream with a Dubbo
error, then closes it."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from regproxy.dubbo.encode import encode_error
from regproxy.dubbo.frame import FrameParser, ProtocolError, Status
from regproxy.proxy.batch import EARLY_FLUSH_FRAMES, BatchedWriter

if TYPE_CHECKING:
    from regproxy.proxy.forwarder import Forwarder, HeadMemo

log = logging.getLogger(__name__)

# After the error response to a broken stream: how long the client has to read it and close.
_LINGER_S = 2.0


class _Discard:
    """Stands in for the parser once a stream is broken: the bytes still arriving are dropped."""

    __slots__ = ()
    buffered = 0

    def feed_raw(self, data: bytes) -> list[bytes]:
        return []


_DISCARD = _Discard()


class _Vetting:
    """Stands in for the parser until a connection's first bytes, when the forwarder looks at where
    it comes from (Forwarder.vet: is it this sidecar's own connection, in a loop?). Not earlier: the
    pool that opened it records its local address when it opens on that side, which may come after
    the accept here, but always before it writes. Once per connection, nothing per request."""

    __slots__ = ("conn", "parser")
    buffered = 0

    def __init__(self, conn: DownstreamConnection, parser: FrameParser) -> None:
        self.conn = conn
        self.parser = parser

    def feed_raw(self, data: bytes) -> list[bytes]:
        conn = self.conn
        reason = conn._forwarder.vet(conn)
        parser: FrameParser | _LoopAnswer = (
            self.parser if reason is None else _LoopAnswer(conn, self.parser, reason)
        )
        conn._parser = parser
        return parser.feed_raw(data)


class _LoopAnswer:
    """Stands in for the parser on a connection that is a loop: every request on it is answered
    here with the loop error (Forwarder.refuse_loop), none is handed on."""

    __slots__ = ("conn", "parser", "reason")

    def __init__(self, conn: DownstreamConnection, parser: FrameParser, reason: str) -> None:
        self.conn = conn
        self.parser = parser
        self.reason = reason

    @property
    def buffered(self) -> int:
        return self.parser.buffered

    def feed_raw(self, data: bytes) -> list[bytes]:
        fwd = self.conn._forwarder
        try:
            frames = self.parser.feed_raw(data)
        except ProtocolError as exc:
            fwd.refuse_loop(self.conn, exc.raw_frames, self.reason)
            exc.raw_frames = []  # answered: the connection only reports the broken stream
            raise
        fwd.refuse_loop(self.conn, frames, self.reason)
        return []


class DownstreamConnection(asyncio.Protocol, BatchedWriter):
    __slots__ = (
        "_closing",
        "_forwarder",
        "_linger",
        "_loop",
        "_parser",
        "in_flight",
        "last_active",
        "last_head",
        "peer",
    )

    def __init__(self, forwarder: Forwarder, max_body: int) -> None:
        self._forwarder = forwarder
        self._batcher = forwarder.batcher
        # The parser, behind a stand-in that vets the connection at its first bytes (see _Vetting).
        self._parser: FrameParser | _Discard | _Vetting | _LoopAnswer = _Vetting(self, FrameParser(max_body))
        self._out: list[bytes | bytearray] = []
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.in_flight = 0  # two-way requests forwarded and not yet answered
        self._closing = False
        self._linger: asyncio.TimerHandle | None = None
        self._loop = forwarder.loop
        self.last_active = self._loop.time()  # for the idle sweep
        # The forwarder's memo of this connection's last request head: (head bytes, plan entry,
        # the plan memo it came from).
        self.last_head: HeadMemo = (b"", None, None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if not self._forwarder.connection_opened(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed_raw(data)
        except ProtocolError as exc:
            if exc.raw_frames:
                self._forwarder.handle(self, exc.raw_frames)
            self._protocol_error(exc)
            return
        if frames:
            # Activity is a whole frame, not a byte: a sender trickling a frame one byte at a time
            # (slowloris) stays idle, and the idle sweep closes it.
            self.last_active = self._loop.time()
            self._forwarder.handle(self, frames)
            if len(frames) >= EARLY_FLUSH_FRAMES:
                self._batcher.flush()

    def _protocol_error(self, exc: ProtocolError) -> None:
        fwd = self._forwarder
        fwd.stats.protocol_errors += 1
        fwd.stats.answered(Status.BAD_REQUEST)
        log.warning("%s: closing connection from %s: %s", fwd.name, self.peer, exc)
        # The request id is known when the header was readable (e.g. an oversized body): the
        # consumer learns which call failed. Garbage gets id 0: still a readable Dubbo error.
        request_id = exc.request_id if exc.request_id is not None else 0
        self.queue(
            encode_error(request_id, Status.BAD_REQUEST, f"regproxy {fwd.name}: {exc}; closing connection")
        )
        # Parse no more, but let the requests that arrived intact before the bad bytes be answered
        # (each is bounded by its deadline) before closing. What still arrives is read and dropped:
        # closing a socket with unread bytes makes the kernel send a reset, which destroys the error
        # response (and the answers before it) before the client can read them.
        self._closing = True
        self._parser = _DISCARD
        self._close_if_done()

    @property
    def partial_bytes(self) -> int:
        """Bytes of a frame received but not yet whole (for the idle sweep's log line)."""
        return self._parser.buffered

    def answered(self, count: int = 1) -> None:
        """Forwarded requests got their responses (or errors made here)."""
        self.in_flight -= count
        self.last_active = self._loop.time()
        if self._closing:
            self._close_if_done()

    @property
    def closing(self) -> bool:
        """The stream broke: the connection is answering what it had, then closing."""
        return self._closing

    def _close_if_done(self) -> None:
        transport = self.transport
        if self.in_flight <= 0 and transport is not None and self._linger is None:
            self.flush()
            if transport.is_closing():
                return  # closed meanwhile (the client left, the sweep, a stop): write_eof would raise
            if transport.can_write_eof():
                # Half-close: the answers go out, then FIN. The client reads them and closes its side
                # (eof_received closes ours), or the timer closes the connection.
                transport.write_eof()
                self._linger = self._loop.call_later(_LINGER_S, transport.close)
            else:
                transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self.transport = None
        self._out = []
        self._forwarder.connection_closed(self)
