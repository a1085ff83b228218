"""A client's HTTP/2 connection to a listener (regproxy is the server): Triple calls from a
consumer (egress) or a peer sidecar (ingress).

It comes to life on a connection the listener has already accepted: the listener reads the first
bytes, and when they are the HTTP/2 preface (regproxy.triple.detect) hands the transport over
(``adopt``), as Dubbo 3's port unification does. It turns ``h2``'s events into calls on the
TripleForwarder (new streams) and on each stream's TripleExchange (DATA, ends, resets, windows);
everything it writes goes out once per loop pass (TripleForwarder.dirty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import h2.errors
import h2.events
import h2.exceptions
import hyperframe.frame

from regproxy.triple import settings
from regproxy.triple.connection import H2Side

if TYPE_CHECKING:
    from regproxy.triple.exchange import TripleExchange
    from regproxy.triple.forwarder import TripleForwarder

log = logging.getLogger(__name__)

# What may count against settings.MAX_CONTROL_PER_S (TripleDownstream._costly says which do).
_CONTROL_EVENTS = (
    h2.events.RemoteSettingsChanged,
    h2.events.PingReceived,
    h2.events.StreamReset,
    h2.events.PriorityUpdated,
    h2.events.DataReceived,
)


class TripleDownstream(H2Side):
    """One client connection speaking HTTP/2; ``exchanges`` are its calls in flight by stream id."""

    def __init__(self, fwd: TripleForwarder, peer: str, loop_reason: str | None) -> None:
        super().__init__(fwd, settings.server_connection())
        self.peer = peer
        # Why this connection is the sidecar talking to itself (regproxy.proxy.loops); None mostly.
        self.loop_reason = loop_reason
        self.exchanges: dict[int, TripleExchange] = {}
        self.last_active = fwd.loop.time()
        self.goaway_due = False  # announce_goaway once its calls in flight have ended
        # Frames that are no call's work, in the current second (settings.MAX_CONTROL_PER_S).
        self._control = 0
        self._control_since = self.last_active

    def adopt(self, transport: asyncio.Transport, data: bytes) -> None:
        """Take over ``transport`` from the listener's Dubbo protocol, with the bytes read so far."""
        self.transport = transport
        transport.set_protocol(self)
        settings.start(self.h2)
        self.dirty()
        self.data_received(data)

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover - adopted
        raise RuntimeError("a TripleDownstream is adopted by a listener's connection, never made")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the error's code: sent, then the connection closes.
            self.fwd.broken_connection(self, exc)
            return
        self.last_active = now = self.fwd.loop.time()
        fwd = self.fwd
        for event in events:
            # Counted one by one: a single read may hold thousands of frames.
            if isinstance(event, _CONTROL_EVENTS) and self._costly(event) and self._too_much(now):
                return
            if isinstance(event, h2.events.DataReceived):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    exch.from_down(event.data, event.flow_controlled_length)
                else:
                    self.ack(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, h2.events.RequestReceived):
                fwd.on_request(self, event.stream_id, event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamEnded):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    exch.down_ended()
            elif isinstance(event, h2.events.TrailersReceived):
                # gRPC clients send none; the request ends with them (its StreamEnded follows).
                pass
            elif isinstance(event, h2.events.StreamReset):
                exch = self.exchanges.get(event.stream_id)
                if exch is not None:
                    fwd.down_reset(exch, event.error_code)
            elif isinstance(event, h2.events.WindowUpdated):
                self._window_opened(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._window_opened(0)
            elif isinstance(event, h2.events.ConnectionTerminated):
                # The client's GOAWAY. RFC 9113 lets its open streams finish, but h2 sends nothing
                # after one: the calls in flight cannot be answered, so they end here.
                log.debug("%s: GOAWAY from %s: %s", fwd.name, self.peer, event)
                fwd.end_calls(self, "the client sent GOAWAY")
                self.close()
                return
        self.dirty()

    def _costly(self, event: h2.events.Event) -> bool:
        """Whether a frame counts against MAX_CONTROL_PER_S: SETTINGS, PING, PRIORITY, an empty DATA
        frame that does not end its stream (the floods of CVE-2019-9512/9515/9518; WINDOW_UPDATE is
        not counted: a reader of a large stream sends many), and RST_STREAM (rapid reset,
        CVE-2023-44487) of a call in flight, except one an egress forwarded: one egress connection
        carries the cancellations of all its clients, each of whom its own egress counts. A reset of a
        stream already over costs nothing."""
        if isinstance(event, h2.events.StreamReset):
            exch = self.exchanges.get(event.stream_id)
            return exch is not None and not exch.from_egress
        if isinstance(event, h2.events.DataReceived):
            return not event.data and event.stream_ended is None
        return True

    def refused(self, now: float) -> bool:
        """A stream was refused (MAX_STREAMS): counted as a control frame; True when that was one too
        many and the connection is closing."""
        return self._too_much(now)

    def _too_much(self, now: float) -> bool:
        """Count one frame that is no call's work; past the limit, GOAWAY and close."""
        if now - self._control_since >= 1.0:
            self._control, self._control_since = 0, now
        self._control += 1
        if self._control <= settings.MAX_CONTROL_PER_S:
            return False
        self.fwd.flood(self, f"{self._control} frames that are no call's work (SETTINGS, PING, PRIORITY, "
                             "empty DATA, RST_STREAM, refused streams) in under a second, the limit is "
                             f"{settings.MAX_CONTROL_PER_S}")  # fmt: skip
        self.fwd.end_calls(self, "the client flooded the connection")
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, b"too many control frames")
        self.close()
        return True

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            exch = self.exchanges.get(stream_id)
            if exch is not None and not exch.finished:
                exch.pump_down()
        else:
            for exch in list(self.exchanges.values()):
                if exch.to_down or exch.up_done:
                    exch.pump_down()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.fwd.down_lost(self)

    # --- writes ----------------------------------------------------------------------------------

    def flush(self) -> None:
        super().flush()
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size() > settings.MAX_UNSENT:
            # DATA stops at a closed window, but the answers to its own control frames do not: a
            # client that sends them and never reads is cut off here.
            self.fwd.unsent_overflow(self, transport.get_write_buffer_size())
            self.closed = True
            transport.abort()

    def announce_goaway(self) -> None:
        """Tell the client to open no new stream here: the first GOAWAY of a graceful shutdown (RFC
        9113 §6.8: last stream id 2^31-1, NO_ERROR), HTTP/2's counterpart of Dubbo's read-only event.

        Sent once no call of the connection is in flight (``goaway_due``; TripleForwarder.finish
        sends it when the last one ends): h2, which apache-dubbo's client is built on, takes any
        frame after a GOAWAY as a protocol error and would break the streams still answering.
        Written as a bare frame for the same reason on this side: h2 would close the connection's
        state with it."""
        self.goaway_due = True
        if self.closed or self.transport is None or self.exchanges:
            return
        self.goaway_due = False
        self.flush()
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = 2**31 - 1
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        frame.additional_data = b"regproxy is draining"
        self.transport.write(frame.serialize())

    def close(self) -> None:
        """Flush what is queued (a GOAWAY) and close."""
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
