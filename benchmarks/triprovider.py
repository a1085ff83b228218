"""A Triple (gRPC over cleartext HTTP/2) unary echo provider that costs as little as a Python one can.

The Triple benchmark (``benchmarks.triple``) ends at this process, as the Dubbo benchmark ends at
``benchmarks.fastprovider``: so that the hops are what gets measured. grpcio's own server answers
6.8k (thread pool) to 8.8k (``grpc.aio``) unary calls a second on this machine's two cores, less than
two HAProxy hops carry; this one answers each call with a few bytes patched into prepared frames.

It speaks the part of HTTP/2 (RFC 9113) that unary gRPC calls use, as a server with prior knowledge
(h2c, no upgrade): each stream's DATA is echoed back as the response message, between a prepared
``:status: 200`` / ``content-type: application/grpc`` HEADERS frame and a ``grpc-status: 0``
trailers frame (gRPC's PROTOCOL-HTTP2.md: Response → Response-Headers, Length-Prefixed-Message,
Trailers). Request header blocks are never decoded: the answer does not depend on them, and
HPACK's dynamic table concerns only a decoder, so skipping every block keeps nothing out of step.
The answer's blocks use only the static table and literals without indexing, so they are valid on
any connection whatever its encoder state. What a caller asked for (path, ``grpc-timeout``, a
compressed message) is therefore not looked at: every stream gets its own bytes back.

Flow control is kept in both directions: the receive windows are opened to 2^31 - 1 at once (and
the connection's topped up as DATA arrives), and an answer that does not fit the peer's connection
or stream window, or its largest frame, waits for WINDOW_UPDATE (answers leave in order, so one
waiting answer holds back those behind it: enough for a benchmark whose messages are a few bytes).

``--stats-port`` opens a second, plain TCP port that answers every connection with the number of
streams answered so far (ASCII, one line), so a benchmark can check that every response its
generator counted came from here (a proxy's own answer would be an HTTP 200 with a gRPC error in
its trailers, which h2load counts as a success).

    python -m benchmarks.triprovider --port 50051 [--stats-port 50052]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import socket
import struct
from typing import Final, cast

from benchmarks import aio

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 §6).
DATA: Final = 0x0
HEADERS: Final = 0x1
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8

SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
DEFAULT_WINDOW: Final = 65_535
MAX_WINDOW: Final = 2**31 - 1
DEFAULT_MAX_FRAME: Final = 16_384  # what this side takes: SETTINGS_MAX_FRAME_SIZE is not raised
MAX_MESSAGE: Final = 16 * 1024 * 1024  # a stream sending more is not a benchmark's: the connection ends

# length (24 bits as 16 + 8), type, flags, stream id (the reserved bit is masked off where read).
_FRAME: Final = struct.Struct(">HBBBL")
_SETTING: Final = struct.Struct(">HL")
_U32: Final = struct.Struct(">L")

# HPACK (RFC 7541): `:status: 200` is static entry 8, indexed (0x88); `content-type` is static entry
# 31, as a literal without indexing with an indexed name (0x0f 0x10: 15 + 16 in a 4-bit prefix);
# `grpc-status` is a literal without indexing with a literal name (0x00). No Huffman coding.
RESPONSE_HEADERS: Final = b"\x88" + b"\x0f\x10" + b"\x10application/grpc"
TRAILERS: Final = b"\x00\x0bgrpc-status\x010"


def frame_header(length: int, type_: int, flags: int, stream_id: int) -> bytes:
    return _FRAME.pack(length >> 8, length & 0xFF, type_, flags, stream_id)


# What the server sends first (its preface): SETTINGS raising the stream windows to the largest
# allowed, then the connection window raised to the same.
SERVER_PREFACE: Final = (
    frame_header(6, SETTINGS, 0, 0)
    + _SETTING.pack(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
    + frame_header(4, WINDOW_UPDATE, 0, 0)
    + _U32.pack(MAX_WINDOW - DEFAULT_WINDOW)
)
SETTINGS_ACK: Final = frame_header(0, SETTINGS, ACK, 0)
_HEADERS_PREFIX: Final = frame_header(len(RESPONSE_HEADERS), HEADERS, END_HEADERS, 0)[:5]
_TRAILERS_PREFIX: Final = frame_header(len(TRAILERS), HEADERS, END_HEADERS | END_STREAM, 0)[:5]
# Returned to the peer once this much of the connection's receive window is used up.
_TOP_UP: Final = 1 << 30


class Counter:
    """Streams answered, across connections (one event loop: no lock)."""

    __slots__ = ("answered",)

    def __init__(self) -> None:
        self.answered = 0


COUNTER: Final = Counter()


class TripleEcho(asyncio.Protocol):
    """One HTTP/2 connection: frames split, unary streams echoed."""

    __slots__ = (
        "_blocked",
        "_buf",
        "_conn_window",
        "_continuing",
        "_goaway",
        "_max_frame",
        "_peer_window",
        "_preface",
        "_received",
        "_stream_windows",
        "_streams",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface = len(PREFACE)  # bytes of the client's preface still to come
        self._streams: dict[int, bytes] = {}  # open streams -> DATA received so far
        self._continuing = 0  # stream whose header block (with END_STREAM) awaits CONTINUATION, or 0
        self._goaway = False  # the peer said GOAWAY: close once this read's answers are written
        self._received = 0  # DATA bytes received since the connection window was last topped up
        self._conn_window = DEFAULT_WINDOW  # what this side may still send, connection-wide
        self._peer_window = DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self._max_frame = DEFAULT_MAX_FRAME  # the peer's SETTINGS_MAX_FRAME_SIZE
        self._stream_windows: dict[int, int] = {}  # WINDOW_UPDATE credit of streams not yet answered
        self._blocked: collections.deque[tuple[int, bytes]] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(SERVER_PREFACE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _abort(self) -> None:
        # Not a peer this benchmark provider serves; a benchmark has no use for a polite GOAWAY.
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._preface:
            data = self._skip_preface(data)
            if not data:
                return
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        end = len(view)
        pos = 0
        out: list[bytes] = []
        answered = 0
        unpack = _FRAME.unpack_from
        streams = self._streams
        while end - pos >= 9:
            hi, lo, type_, flags, sid = unpack(view, pos)
            length = (hi << 8) | lo
            if length > DEFAULT_MAX_FRAME:
                self._abort()
                return
            start = pos + 9
            stop = start + length
            if stop > end:
                break
            sid &= 0x7FFF_FFFF
            pos = stop
            if type_ == DATA:
                self._received += length
                body = view[start:stop]
                if flags & PADDED:
                    body = body[1 : length - body[0]] if length and body[0] < length else b""
                if sid in streams:
                    so_far = streams[sid]
                    if flags & END_STREAM:
                        del streams[sid]
                        answered += self._answer(out, sid, so_far + body if so_far else bytes(body))
                    elif len(so_far) + len(body) > MAX_MESSAGE:
                        self._abort()
                        return
                    else:
                        streams[sid] = so_far + body
            elif type_ == HEADERS:
                if sid in streams:
                    # Trailers from the client: the request is complete.
                    if flags & END_STREAM:
                        answered += self._answer(out, sid, streams.pop(sid))
                elif flags & END_STREAM:
                    # A request without a message: answered with an empty one.
                    if flags & END_HEADERS:
                        answered += self._answer(out, sid, b"\x00\x00\x00\x00\x00")
                    else:
                        self._continuing = sid
                else:
                    streams[sid] = b""
            elif type_ == CONTINUATION:
                if flags & END_HEADERS and sid == self._continuing:
                    self._continuing = 0
                    answered += self._answer(out, sid, b"\x00\x00\x00\x00\x00")
            else:
                self._control(out, type_, flags, sid, view[start:stop])
        if buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
        if self._received >= _TOP_UP:
            out.append(frame_header(4, WINDOW_UPDATE, 0, 0) + _U32.pack(self._received))
            self._received = 0
        COUNTER.answered += answered
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if self._goaway and self.transport is not None:
            self.transport.close()  # flushes what was written

    def _skip_preface(self, data: bytes) -> bytes:
        n = min(self._preface, len(data))
        done = len(PREFACE) - self._preface
        if data[:n] != PREFACE[done : done + n]:
            self._abort()
            return b""
        self._preface -= n
        return data[n:]

    def _answer(self, out: list[bytes], sid: int, message: bytes) -> int:
        """Queue the whole response of stream ``sid``; 1 (one stream answered)."""
        size = len(message)
        window = self._peer_window + self._stream_windows.pop(sid, 0)
        sid4 = _U32.pack(sid)
        out += (_HEADERS_PREFIX, sid4, RESPONSE_HEADERS)
        if not self._blocked and size <= self._conn_window and size <= window and size <= self._max_frame:
            self._conn_window -= size
            out += (frame_header(size, DATA, 0, sid), message, _TRAILERS_PREFIX, sid4, TRAILERS)
        else:
            self._stream_windows[sid] = window
            self._blocked.append((sid, message))
            self._send_blocked(out)
        return 1

    def _send_blocked(self, out: list[bytes]) -> None:
        """Send what the windows allow of the answers waiting, in order."""
        blocked = self._blocked
        while blocked:
            sid, message = blocked[0]
            window = self._stream_windows[sid]
            n = min(len(message), self._conn_window, window, self._max_frame)
            if n <= 0 and message:
                return
            self._conn_window -= n
            self._stream_windows[sid] = window - n
            out += (frame_header(n, DATA, 0, sid), message[:n])
            if n < len(message):
                blocked[0] = (sid, message[n:])
                continue
            blocked.popleft()
            del self._stream_windows[sid]
            out += (_TRAILERS_PREFIX, _U32.pack(sid), TRAILERS)

    def _control(
        self, out: list[bytes], type_: int, flags: int, sid: int, payload: bytes | bytearray
    ) -> None:
        if type_ == SETTINGS:
            if flags & ACK:
                return
            for i in range(0, len(payload) - 5, 6):
                key, value = _SETTING.unpack_from(payload, i)
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    # RFC 9113 §6.9.2: the change applies to the windows of every open stream.
                    delta = value - self._peer_window
                    self._peer_window = value
                    for s in self._stream_windows:
                        self._stream_windows[s] += delta
                elif key == SETTINGS_MAX_FRAME_SIZE:
                    self._max_frame = value
            out.append(SETTINGS_ACK)
            self._send_blocked(out)
        elif type_ == WINDOW_UPDATE:
            increment = _U32.unpack_from(payload)[0] & 0x7FFF_FFFF
            if sid == 0:
                self._conn_window += increment
            elif sid in self._stream_windows:
                self._stream_windows[sid] += increment
            elif sid in self._streams:
                # Credit for a stream not answered yet: kept until its answer is sent.
                self._stream_windows[sid] = increment
            self._send_blocked(out)
        elif type_ == PING:
            if not flags & ACK:
                out += (frame_header(8, PING, ACK, 0), bytes(payload))
        elif type_ == RST_STREAM:
            self._streams.pop(sid, None)
            if any(s == sid for s, _ in self._blocked):
                self._blocked = collections.deque((s, m) for s, m in self._blocked if s != sid)
                self._stream_windows.pop(sid, None)
        elif type_ == GOAWAY:
            self._goaway = True
        # PRIORITY, PUSH_PROMISE (a client never sends it) and unknown types: ignored (RFC 9113 §5.5).


async def _stats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"{COUNTER.answered}\n".encode())
    await writer.drain()
    writer.close()


async def serve(host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(TripleEcho, host, port, reuse_address=True, backlog=1024)


async def _main(host: str, port: int, stats_port: int | None) -> None:
    server = await serve(host, port)
    stats = None if stats_port is None else await asyncio.start_server(_stats, host, stats_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"triprovider listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    if stats is not None:
        stats.close()


def read_answered(host: str, stats_port: int, timeout: float = 5.0) -> int:
    """Streams a provider started with ``--stats-port`` has answered so far."""
    with socket.create_connection((host, stats_port), timeout=timeout) as s:
        data = b""
        while chunk := s.recv(64):
            data += chunk
    return int(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--stats-port", type=int, default=None)
    args = parser.parse_args(argv)
    aio.run(_main(args.host, args.port, args.stats_port))


if __name__ == "__main__":
    main()
