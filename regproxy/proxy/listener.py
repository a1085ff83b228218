"""The downstream side of a listener: a consumer's (egress) or a peer sidecar's (ingress)
connection. Parses frames and hands each to the forwarder; answers a broken stream with a Dubbo
error, then closes it; stops reading a client that asks faster than it reads its answers
(regproxy.proxy.flow)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol, cast

from regproxy.dubbo.frame import FrameParser, ProtocolError
from regproxy.proxy.batch import EARLY_FLUSH_FRAMES, BatchedWriter, Batcher
from regproxy.proxy.flow import FlowLimits
from regproxy.triple.detect import HTTP2, NEED_MORE, NEITHER, detect

if TYPE_CHECKING:
    from regproxy.proxy.forwarder import Forwarder
    from regproxy.proxy.plan import HeadMemo

log = logging.getLogger(__name__)

# After the error response to a broken stream: how long the client has to read it and close.
_LINGER_S = 2.0

# Why reading a client is paused (DownstreamConnection._paused, bits): it is read again once none
# is left. Either alone bounds what one client makes the sidecar hold (regproxy.proxy.flow).
_BUSY: Final = 1  # its requests in flight reached limits.max_in_flight[_bytes]_per_connection
_UNSENT: Final = 2  # its unsent answers passed the write buffer's high mark: it does not keep up
_DUBBO_MAGIC_0: Final = 0xDA  # the first byte of every Dubbo frame


class DownstreamEvents(Protocol):
    """What a client connection reports to the forwarder that owns its requests (the Forwarder),
    symmetric with regproxy.proxy.upstream.UpstreamEvents: the connection touches nothing else of
    it. It reads the listener's ``name``, write ``batcher``, ``loop`` and ``flow`` limits."""

    name: str
    batcher: Batcher
    loop: asyncio.AbstractEventLoop
    flow: FlowLimits

    def connection_opened(self, down: DownstreamConnection) -> bool:
        """Admit the connection (False: close it, e.g. at the connection limit)."""
        ...

    def connection_closed(self, down: DownstreamConnection) -> None: ...

    def vet(self, down: DownstreamConnection) -> str | None:
        """At its first bytes: why the connection is this sidecar's own, in a loop; else None."""
        ...

    def handle(self, down: DownstreamConnection, frames: list[bytes]) -> None:
        """The whole frames one read brought."""
        ...

    def refuse_loop(self, down: DownstreamConnection, frames: list[bytes], reason: str) -> None:
        """Answer every request of ``frames`` with the loop error, forward none."""
        ...

    def broken_stream(self, down: DownstreamConnection, exc: ProtocolError) -> bytes:
        """The stream broke (bad magic, a body over the limit): counted and logged; the error
        response to send before closing."""
        ...

    def paused(self, down: DownstreamConnection) -> None:
        """Reading the connection stopped (flow control): counted."""
        ...

    def unsent_overflow(self, down: DownstreamConnection, unsent: int) -> None:
        """The connection is closed for leaving ``unsent`` bytes of answers unread: counted, logged."""
        ...


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
    the accept here, but always before it writes. Once per connection, nothing per request.

    The first bytes also say which protocol the connection speaks (regproxy.triple.detect, as Dubbo
    3's port unification): Dubbo's magic goes on here at once; the HTTP/2 preface is handed to the
    listener's Triple side (Forwarder.to_triple), with the bytes buffered while it was incomplete;
    anything else is a broken stream whose error says what it looked like."""

    __slots__ = ("conn", "head", "parser")

    def __init__(self, conn: DownstreamConnection, parser: FrameParser) -> None:
        self.conn = conn
        self.parser = parser
        self.head = b""  # first bytes that may be the start of the HTTP/2 preface

    @property
    def buffered(self) -> int:
        return len(self.head)

    def feed_raw(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        conn = self.conn
        if self.head or data[0] != _DUBBO_MAGIC_0:
            data = b"".join((self.head, data))
            detection = detect(data)
            kind = detection.protocol
            if kind == NEED_MORE:
                self.head = data
                return []
            if kind == HTTP2:
                conn._forwarder.to_triple(conn, data, conn._forwarder.vet(conn))
                return []
            if kind == NEITHER:
                conn._parser = self.parser
                raise ProtocolError(detection.message)
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
    """One client connection: a consumer's at the egress, a peer sidecar's at the ingress.

    Owns its parser, its write buffer (BatchedWriter) and its flow-control state; counts its
    requests in flight (``in_flight``, ``in_flight_bytes``), which the Forwarder raises and lowers
    through ``answered``. Reports everything else to the Forwarder through DownstreamEvents.
    Invariants: reading is paused exactly while some reason in ``_paused`` holds; once the stream
    broke (``closing``) nothing more is parsed, and the connection closes when nothing is in flight.
    """

    __slots__ = (
        "_closing",
        "_flow",
        "_forwarder",
        "_linger",
        "_loop",
        "_parser",
        "_paused",
        "in_flight",
        "in_flight_bytes",
        "last_active",
        "last_head",
        "peer",
    )

    def __init__(self, forwarder: DownstreamEvents, max_body: int) -> None:
        # Used only through DownstreamEvents, but typed as the Forwarder it is: compiled, a call
        # through a Protocol is a Python-level call (callgrind: ~900 instructions more per read).
        self._forwarder: Forwarder = cast("Forwarder", forwarder)
        self._flow: FlowLimits = forwarder.flow
        self._batcher = forwarder.batcher
        # The parser, behind a stand-in that vets the connection at its first bytes (see _Vetting).
        self._parser: FrameParser | _Discard | _Vetting | _LoopAnswer = _Vetting(self, FrameParser(max_body))
        self._out: list[bytes | bytearray] = []
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.in_flight = 0  # two-way requests forwarded and not yet answered
        self.in_flight_bytes = 0  # and their size (each held until answered, for a retry)
        self._paused = 0  # _BUSY | _UNSENT: why reading is paused; 0 while it is not
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
            return
        flow = self._flow
        self.transport.set_write_buffer_limits(high=flow.pause_unsent, low=flow.resume_unsent)

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
            flow = self._flow
            if self.in_flight >= flow.max_in_flight or self.in_flight_bytes >= flow.max_in_flight_bytes:
                self._pause(_BUSY)
            if len(frames) >= EARLY_FLUSH_FRAMES:
                self._batcher.flush()

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.queue(self._forwarder.broken_stream(self, exc))
        # Parse no more, but let the requests that arrived intact before the bad bytes be answered
        # (each is bounded by its deadline) before closing. What still arrives is read and dropped:
        # closing a socket with unread bytes makes the kernel send a reset, which destroys the error
        # response (and the answers before it) before the client can read them.
        self._closing = True
        self._parser = _DISCARD
        if self._paused and self.transport is not None:
            self._paused = 0  # read on (and drop): see above
            self.transport.resume_reading()
        self._close_if_done()

    @property
    def partial_bytes(self) -> int:
        """Bytes of a frame received but not yet whole (for the idle sweep's log line)."""
        return self._parser.buffered

    def answered(self, count: int, size: int) -> None:
        """Forwarded requests (``count``, ``size`` bytes together) got their responses (or errors
        made here)."""
        self.in_flight -= count
        self.in_flight_bytes -= size
        self.last_active = self._loop.time()
        if self._paused & _BUSY:
            flow = self._flow
            if (
                self.in_flight <= flow.resume_in_flight
                and self.in_flight_bytes <= flow.resume_in_flight_bytes
            ):
                self._resume(_BUSY)
        if self._closing:
            self._close_if_done()

    # --- flow control (regproxy.proxy.flow) ----------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's unsent answers passed the high mark: read no more requests for now."""
        self._pause(_UNSENT)

    def resume_writing(self) -> None:
        self._resume(_UNSENT)

    def _pause(self, why: int) -> None:
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.pause_reading()
            self._forwarder.paused(self)
        self._paused |= why

    def _resume(self, why: int) -> None:
        paused = self._paused
        self._paused = paused & ~why
        if paused and not self._paused and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def flush(self) -> None:
        BatchedWriter.flush(self)
        if self._paused & _UNSENT:
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size() >= self._flow.max_unsent:
                self._overflow(transport)

    def _overflow(self, transport: asyncio.Transport) -> None:
        """Answers to requests already read still pile up behind a client that stopped reading."""
        self._forwarder.unsent_overflow(self, transport.get_write_buffer_size())
        transport.abort()  # close() would keep the unsent bytes until they are read: never

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
