"""What both ends of regproxy's HTTP/2 connections share: the ``h2`` state, writes gathered once
per loop pass (TripleForwarder.dirty), acknowledging what was consumed, and the socket's own
backpressure (no DATA written while its buffer is over the high mark). TripleDownstream (a client's
connection to a listener) and TripleUpstream (a connection to a host) add what each side reads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import h2.connection
import h2.exceptions

if TYPE_CHECKING:
    from regproxy.triple.forwarder import TripleForwarder


class H2Side(asyncio.Protocol):
    """One HTTP/2 connection of a TripleForwarder: ``h2``, its transport once connected, and the
    flags the exchanges read (``write_paused``, ``closed``)."""

    def __init__(self, fwd: TripleForwarder, conn: h2.connection.H2Connection) -> None:
        self.fwd = fwd
        self.h2 = conn
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.closed = False
        self._dirty = False

    def _window_opened(self, stream_id: int) -> None:
        """A window opened (0: the connection's, or every stream's): send what waited."""
        raise NotImplementedError

    def pause_writing(self) -> None:
        """Its socket does not keep up: no DATA is written to it until it does."""
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._window_opened(0)

    def ack(self, stream_id: int, size: int) -> None:
        """``size`` flow-controlled bytes of ``stream_id`` were consumed: its window reopens."""
        if size <= 0 or self.closed:
            return
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.ProtocolError, ValueError):
            return
        self.dirty()

    def dirty(self) -> None:
        """Something was queued in ``h2``: written at the end of this loop pass."""
        if not self._dirty and self.transport is not None:
            self._dirty = True
            self.fwd.dirty(self)

    def flush(self) -> None:
        self._dirty = False
        transport = self.transport
        if transport is not None:
            data = self.h2.data_to_send()
            if data:
                transport.write(data)

    def send_queued(self, stream_id: int, queue: deque[bytes]) -> list[bytes]:
        """Send from ``queue`` what the stream's window (and the connection's, and the socket) takes,
        in frames no larger than the peer allows; what is sent leaves the queue. The chunks sent.
        Raises h2's StreamClosedError when the stream is gone."""
        conn = self.h2
        sent: list[bytes] = []
        while queue and not self.write_paused:
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                break
            chunk = queue[0]
            n = min(len(chunk), window, conn.max_outbound_frame_size)
            if n == len(chunk):
                queue.popleft()
            else:
                queue[0] = chunk[n:]
                chunk = chunk[:n]
            conn.send_data(stream_id, chunk)
            sent.append(chunk)
        return sent
