"""One Triple call in flight: a client's stream (downstream) joined to one upstream stream.

The exchange moves bytes between the two streams and nothing else decides here: where the call
goes, retries, deadlines and errors are the TripleForwarder's. The rules it keeps:

* **Per-stream flow control.** DATA read on one side is acknowledged to its sender (its window
  reopened) only once written on the other side, so each stream holds at most its window
  (regproxy.triple.settings) and a slow reader slows its own stream only. What the other side's
  window does not take yet waits in the exchange, in order.
* **Order.** Response headers, then DATA, then trailers, as they came; the request's END_STREAM
  goes upstream after the last of its DATA.
* **Once.** The call ends exactly once (``finish``): answered, reset or failed. After that every
  byte still arriving on either stream is acknowledged and dropped.
* **Replay.** Until the upstream has answered anything, a copy of what was sent (up to
  REPLAY_LIMIT bytes) is kept, so that a stream the upstream refused unprocessed (REFUSED_STREAM,
  GOAWAY, a connection that failed) can be sent to another host: the only retry that is safe for a
  stream.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING

import h2.errors
import h2.exceptions

from regproxy.triple.call import TripleCall
from regproxy.triple.status import Code, TripleError, encode_grpc_message, limit_message

if TYPE_CHECKING:
    import asyncio

    from regproxy.proxy.exchange import Plan
    from regproxy.triple.downstream import TripleDownstream
    from regproxy.triple.forwarder import TripleForwarder
    from regproxy.triple.upstream import TripleUpstream

# The most bytes of a request kept for replaying it to another host (see the module's docstring):
# a unary call's message, not a stream's.
REPLAY_LIMIT = 64 * 1024

Headers = list[tuple[bytes, bytes]]


def trailers_only(code: int, message: str) -> Headers:
    """A Trailers-Only response (PROTOCOL-HTTP2.md): HTTP status, content type and the status, in one
    HEADERS frame that ends the stream."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(code).encode()),
        (b"grpc-message", encode_grpc_message(limit_message(message)).encode()),
    ]


def status_trailers(code: int, message: str) -> Headers:
    return [
        (b"grpc-status", str(code).encode()),
        (b"grpc-message", encode_grpc_message(limit_message(message)).encode()),
    ]


class TripleExchange:
    """One call: its downstream stream, the plan it was routed by, its upstream stream once open."""

    __slots__ = (
        "call",
        "deadline",
        "down",
        "down_done",
        "down_headers_sent",
        "down_id",
        "finished",
        "from_egress",
        "fwd",
        "headers",
        "plan",
        "replay",
        "replay_bytes",
        "started",
        "status",
        "timeout_ms",
        "to_down",
        "to_up",
        "trailers",
        "tried",
        "up",
        "up_answered",
        "up_done",
        "up_end_sent",
        "up_id",
    )

    def __init__(
        self,
        fwd: TripleForwarder,
        down: TripleDownstream,
        down_id: int,
        call: TripleCall,
        headers: Headers,
        plan: Plan,
        started: float,
    ) -> None:
        self.fwd = fwd
        self.down = down
        self.down_id = down_id
        self.call = call
        self.headers = headers  # what goes upstream, grpc-timeout and :authority set when opened
        self.plan = plan
        self.started = started
        self.timeout_ms: int | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.tried: tuple[str, ...] = ()
        self.up: TripleUpstream | None = None
        self.up_id = 0  # 0 until the upstream stream is open
        self.up_answered = False  # the upstream sent anything: no replay any more
        self.up_end_sent = False
        self.up_done = False  # the upstream ended its side
        self.down_done = False  # the client ended its side (all of the request is here)
        self.down_headers_sent = False
        self.finished = False
        # At the ingress: the call came through an egress (it carried regproxy-via), so its client's
        # resets were counted there (TripleDownstream._costly).
        self.from_egress = False
        self.status = -1  # the grpc-status the call ended with (-1: none, e.g. a reset)
        self.to_up: deque[bytes] = deque()
        self.to_down: deque[bytes] = deque()
        self.trailers: Headers | None = None
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0

    # --- for filters and the access log (the Dubbo Exchange's names) --------------------------

    @property
    def service(self) -> str:
        return self.plan.service

    @property
    def method(self) -> str:
        return self.plan.method

    @property
    def label(self) -> str:
        return self.plan.counter_key

    # --- the request: client -> upstream -------------------------------------------------------

    def from_down(self, data: bytes, flow: int) -> None:
        """DATA from the client (``flow``: its flow-controlled length, padding included)."""
        down = self.down
        padding = flow - len(data)
        if self.finished or padding:
            down.ack(self.down_id, len(data) + padding if self.finished else padding)
            if self.finished:
                return
        if data:
            self.to_up.append(data)
            self.pump_up()

    def down_ended(self) -> None:
        self.down_done = True
        if not self.finished:
            self.pump_up()

    def opened(self, up: TripleUpstream, stream_id: int) -> None:
        """The upstream stream is open (its headers sent): what waited goes now."""
        self.up = up
        self.up_id = stream_id
        self.pump_up()

    def pump_up(self) -> None:
        """Send what the upstream stream's window takes; acknowledge it to the client."""
        up = self.up
        if up is None or not self.up_id or self.up_end_sent:
            return
        conn = up.h2
        sent = 0
        try:
            for chunk in up.send_queued(self.up_id, self.to_up):
                sent += len(chunk)
                if self.replay is not None:
                    if self.replay_bytes + len(chunk) <= REPLAY_LIMIT:
                        self.replay.append(chunk)
                        self.replay_bytes += len(chunk)
                    else:
                        self.replay = None
            if not self.to_up and self.down_done:
                conn.end_stream(self.up_id)
                self.up_end_sent = True
        except h2.exceptions.ProtocolError:
            pass  # the upstream reset it, or went away: its event ends the call
        if sent:
            self.down.ack(self.down_id, sent)
        up.dirty()

    # --- the response: upstream -> client ------------------------------------------------------

    def up_headers(self, headers: Headers, ended: bool) -> None:
        """The upstream's response headers (``ended``: a Trailers-Only response)."""
        self.up_answered = True
        self.replay = None
        if self.finished:
            return
        down = self.down
        try:
            down.h2.send_headers(self.down_id, headers, end_stream=ended)
        except h2.exceptions.ProtocolError:  # the client reset it, or the connection is ending
            self.fwd.finish(self, -1)
            return
        finally:
            down.dirty()
        self.down_headers_sent = True
        if ended:
            self.up_done = True
            self.fwd.finish(self, _status_of(headers))

    def from_up(self, data: bytes, flow: int) -> None:
        up = self.up
        assert up is not None
        padding = flow - len(data)
        if self.finished or padding:
            up.ack(self.up_id, len(data) + padding if self.finished else padding)
            if self.finished:
                return
        self.up_answered = True
        self.replay = None
        if data:
            self.to_down.append(data)
            self.pump_down()

    def up_trailers(self, headers: Headers) -> None:
        self.trailers = headers
        self.up_done = True
        if not self.finished:
            self.pump_down()

    def up_ended(self) -> None:
        """The upstream ended its side (after trailers, or without any: passed on as it is)."""
        self.up_done = True
        if not self.finished:
            self.pump_down()

    def pump_down(self) -> None:
        """Send what the client stream's window takes; acknowledge it to the upstream; then the
        trailers (or END_STREAM) once nothing is left."""
        down = self.down
        conn = down.h2
        sid = self.down_id
        sent = 0
        try:
            sent = sum(len(chunk) for chunk in down.send_queued(sid, self.to_down))
            ended = False
            if not self.to_down and self.up_done:
                if self.trailers is not None:
                    conn.send_headers(sid, self.trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                ended = True
        except h2.exceptions.ProtocolError:
            self.fwd.finish(self, -1)  # the client reset it meanwhile, or the connection is ending
            return
        finally:
            down.dirty()
        if sent and self.up is not None:
            self.up.ack(self.up_id, sent)
        if ended:
            self.fwd.finish(self, _status_of(self.trailers) if self.trailers is not None else -1)

    # --- ends ---------------------------------------------------------------------------------

    def answer_error(self, error: TripleError) -> None:
        """End the call towards the client with ``error``'s status: Trailers-Only when nothing was
        answered yet, else trailers after what was (what is still queued is dropped)."""
        down = self.down
        code = int(error.code)
        try:
            if not self.down_headers_sent:
                down.h2.send_headers(self.down_id, trailers_only(code, error.message), end_stream=True)
                self.down_headers_sent = True
            else:
                self.to_down.clear()
                down.h2.send_headers(self.down_id, status_trailers(code, error.message), end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            code = -1  # the client reset it meanwhile: nobody to tell
        down.dirty()
        self.status = code

    def reset_up(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset the upstream stream, if it is open (the call is over here)."""
        up = self.up
        if up is None or not self.up_id:
            return
        up.forget(self.up_id)
        if not self.up_done or not self.up_end_sent:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                up.h2.reset_stream(self.up_id, error_code)
            up.dirty()

    def reset_down(self, error_code: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.down.h2.reset_stream(self.down_id, error_code)
        self.down.dirty()


def _status_of(headers: Headers | None) -> int:
    """The grpc-status of a response's trailers (or Trailers-Only headers); -1 without one."""
    if headers:
        for name, value in headers:
            if name == b"grpc-status":
                return int(value) if value.isdigit() and len(value) < 4 else int(Code.UNKNOWN)
    return -1
