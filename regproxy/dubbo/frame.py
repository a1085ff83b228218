"""Dubbo 2 frames: the 16-byte header and an incremental, sans-IO frame parser.

The parser takes bytes in any chunking and returns whole frames. It does no I/O.

Receive buffer, in the manner of h11's: operations are *append* (``feed``) and *take the first n
bytes* (a frame). Goals: (1) a peer cannot make us spend more than linear time in the bytes it
sends, whatever the chunking — one-byte writes included; (2) a peer cannot make us buffer a body
larger than the limit: the header is checked as soon as its 16 bytes are here, before any body
byte is kept. Taking frames advances an offset instead of deleting from the front of the buffer
(which would be quadratic when many small frames arrive in one chunk); the consumed prefix is
dropped once per ``feed`` call, so each byte is copied a bounded number of times.

When the buffer is empty and a chunk holds only whole frames (the common case on a busy
connection), frames are sliced from the chunk directly and nothing is buffered.
"""

from __future__ import annotations

import struct
import types
from typing import Final

# Status lives in a module of its own, outside the compiled data path (see regproxy.native).
from regproxy.dubbo.status import Status as Status

HEADER_LEN: Final = 16
MAGIC: Final = 0xDABB
MAGIC_BYTES: Final = b"\xda\xbb"

FLAG_REQUEST: Final = 0x80
FLAG_TWOWAY: Final = 0x40
FLAG_EVENT: Final = 0x20
SERIALIZATION_MASK: Final = 0x1F

HESSIAN2: Final = 2
DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024

_HEADER: Final = struct.Struct(">HBBqI")
_MAGIC_AND_LEN: Final = struct.Struct(">H10xI")
# The request id, at bytes 4..12 of a frame: read and patched in place on the proxy's data path.
REQUEST_ID: Final = struct.Struct(">q")
read_request_id: Final = REQUEST_ID.unpack_from  # (frame, 4) -> (id,)
patch_request_id: Final = REQUEST_ID.pack_into  # (bytearray, 4, id)
# The request id and the body length after it (bytes 4..16), written at once when a request is sent
# on: the proxy may have changed the body's length (the loop marker, regproxy.dubbo.request).
patch_id_and_length: Final = struct.Struct(">qI").pack_into  # (bytearray, 4, id, body length)
# Compiled code never joins bytes with ``+``: mypyc 1.13 (the pinned build) declares its bytes
# concatenation to take over its first operand but never releases it, so every ``a + b`` leaked ``a``
# (the slow-provider drill's memory bound in tests/test_drills_process.py caught it: two request-sized
# objects per forwarded request).  ``b"".join((a, b))`` costs the same and counts references right.
# This module runs compiled by mypyc (regproxy.native) or as plain Python: some reads are cheapest
# written differently for each.
def _probe() -> None:
    """Compiled, a function of this module is not a Python function object."""


_COMPILED: Final = not isinstance(_probe, types.FunctionType)


def frame_request_id(frame: bytes) -> int:
    """The request id of a frame: bytes 4 to 12, a signed big-endian long."""
    if not _COMPILED:
        return read_request_id(frame, 4)[0]  # type: ignore[no-any-return]
    # Compiled, eight byte reads and shifts cost a quarter of struct's call and its tuple.
    high = (frame[4] << 24) | (frame[5] << 16) | (frame[6] << 8) | frame[7]
    low = (frame[8] << 24) | (frame[9] << 16) | (frame[10] << 8) | frame[11]
    value = (high << 32) | low
    return value - (1 << 64) if high & 0x80000000 else value


class ProtocolError(Exception):
    """The byte stream is not Dubbo (bad magic) or breaks a limit. The connection cannot go on.

    ``request_id`` is the id of the offending frame when its header could be read, so the peer can
    be told which request failed.
    """

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        # Frames that were complete before the bad bytes: the caller still handles them, so a
        # request that arrived intact is never dropped because garbage followed it. ``raw_frames``
        # from ``feed_raw``, ``frames`` from ``feed``.
        self.raw_frames: list[bytes] = []
        self.frames: list[Frame] = []


class Frame:
    """One Dubbo frame: its raw header and body, with the header fields decoded."""

    __slots__ = ("body", "body_len", "flag", "head", "request_id", "status")

    def __init__(self, head: bytes, body: bytes) -> None:
        _magic, self.flag, self.status, self.request_id, self.body_len = _HEADER.unpack(head)
        self.head = head
        self.body = body

    @classmethod
    def of(cls, raw: bytes) -> Frame:
        """The frame whose header and body are ``raw`` (as ``FrameParser.feed_raw`` returns them)."""
        return cls(raw[:HEADER_LEN], raw[HEADER_LEN:])

    @property
    def is_request(self) -> bool:
        return bool(self.flag & FLAG_REQUEST)

    @property
    def two_way(self) -> bool:
        return bool(self.flag & FLAG_TWOWAY)

    @property
    def is_event(self) -> bool:
        return bool(self.flag & FLAG_EVENT)

    @property
    def serialization(self) -> int:
        return self.flag & SERIALIZATION_MASK

    @property
    def is_heartbeat(self) -> bool:
        """An event whose body is hessian2 null (or empty, as some old clients send)."""
        return bool(self.flag & FLAG_EVENT) and self.body in (b"N", b"")

    def __bytes__(self) -> bytes:
        return b"".join((self.head, self.body))  # not +: see the note on bytes_concat below

    def __repr__(self) -> str:
        kind = "request" if self.is_request else f"response status={self.status}"
        return (
            f"<Frame {kind} id={self.request_id} flag=0x{self.flag:02x} "
            f"serialization={self.serialization} body={self.body_len}B>"
        )


def _bad_magic(magic: int) -> str:
    return f"bad magic 0x{magic:04x} (expected 0xdabb): not a Dubbo stream"


def pack_header(flag: int, status: int, request_id: int, body_len: int) -> bytes:
    return _HEADER.pack(MAGIC, flag, status, request_id, body_len)


class FrameParser:
    """Incremental parser: ``feed(bytes) -> list[Frame]``; raises ProtocolError on bad input.

    ``feed_raw`` returns each frame as one bytes object, header and body together, without making
    Frame objects: the proxy's data path reads the few header bytes it needs in place, and a chunk
    that is exactly one frame is returned as it is, without a copy.

    After a ProtocolError the stream is unusable; further feeds raise the same error again (with
    no frames). The error carries, in ``raw_frames`` (and ``frames`` from ``feed``), the frames
    completed before the bad bytes.
    """

    __slots__ = ("_buf", "_error", "_pos", "max_body")

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        of = Frame.of
        try:
            return [of(raw) for raw in self.feed_raw(data)]
        except ProtocolError as exc:
            exc.frames = [of(raw) for raw in exc.raw_frames]
            raise

    def feed_raw(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            self._error.raw_frames = []
            raise self._error
        if not self._buf:
            if len(data) >= HEADER_LEN:
                # The most common chunk on a connection with one request in flight: one whole frame.
                magic, body_len = _MAGIC_AND_LEN.unpack_from(data)
                if magic == MAGIC and len(data) == HEADER_LEN + body_len and body_len <= self.max_body:
                    return [bytes(data)]
            frames, used = self._parse(data, 0)
            if used < len(data):
                self._buf += memoryview(data)[used:]
            return frames
        self._buf += data
        # A view, so that slicing a frame out copies its bytes once (a bytearray slice would copy twice).
        with memoryview(self._buf) as view:
            frames, self._pos = self._parse(view, self._pos)
        # Drop the consumed prefix once per feed; what remains is at most one partial frame.
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return frames

    def _bad_header(self, buf: bytes | memoryview, pos: int) -> ProtocolError:
        magic, _flag, _status, request_id, body_len = _HEADER.unpack_from(buf, pos)
        if magic != MAGIC:
            return ProtocolError(_bad_magic(magic))
        return ProtocolError(
            f"frame body of {body_len} bytes exceeds the limit of {self.max_body} bytes", request_id
        )

    def _fail(self, error: ProtocolError, frames: list[bytes]) -> ProtocolError:
        error.raw_frames = frames
        self._error = error
        self._buf = bytearray()
        self._pos = 0
        return error

    def _parse(self, buf: bytes | memoryview, pos: int) -> tuple[list[bytes], int]:
        frames: list[bytes] = []
        end = len(buf)
        max_body = self.max_body
        unpack = _MAGIC_AND_LEN.unpack_from
        # Slicing bytes gives bytes; a slice of the buffer's view is copied out once.
        view = buf.__class__ is memoryview
        while end - pos >= HEADER_LEN:
            magic, body_len = unpack(buf, pos)
            if magic != MAGIC or body_len > max_body:
                raise self._fail(self._bad_header(buf, pos), frames)
            stop = pos + HEADER_LEN + body_len
            if stop > end:
                break
            frames.append(bytes(buf[pos:stop]) if view else buf[pos:stop])  # type: ignore[arg-type]
            pos = stop
        if end - pos >= 2 and buf[pos : pos + 2] != MAGIC_BYTES:
            # Fail fast on garbage instead of waiting for a full header that may never come.
            raise self._fail(ProtocolError(_bad_magic((buf[pos] << 8) | buf[pos + 1])), frames)
        if end - pos == 1 and buf[pos] != MAGIC_BYTES[0]:
            raise self._fail(ProtocolError(_bad_magic(buf[pos] << 8)), frames)
        return frames, pos
