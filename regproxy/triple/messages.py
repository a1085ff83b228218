"""gRPC's length-prefixed messages, the content of a Triple stream's DATA frames.

grpc/grpc doc/PROTOCOL-HTTP2.md, "Requests":

    Length-Prefixed-Message → Compressed-Flag Message-Length Message
    Compressed-Flag         → 0 / 1                 # 1 byte unsigned integer
    Message-Length          → {length of Message}   # 4 byte unsigned integer (big endian)

and, under "Data Frames": "DATA frame boundaries have no relation to Length-Prefixed-Message
boundaries and implementations should make no assumptions about their alignment." So the decoder
takes bytes in any chunking and returns whole messages. It does no I/O.

Dubbo 3.3 reads the same framing in ``frame.TriDecoder`` and ``h12.grpc.GrpcStreamingDecoder``:
a flag byte with any bit of 0xFE set is an error ("gRPC frame header malformed: reserved bits not
zero"), bit 0 says compressed. They read the length as a signed int and set no bound on it; here a
length over ``max_message`` is refused as soon as the 5-byte header is in, before any of the message
is kept (doc/statuscodes.md: a message "larger than configured limit" is RESOURCE_EXHAUSTED). The
default bound is Dubbo's ``TripleConfig.DEFAULT_MAX_BODY_SIZE``, 8 MiB (which Dubbo applies to
HTTP/1 bodies), the same as regproxy's bound on a Dubbo frame body (regproxy.dubbo.frame).

The receive buffer works as regproxy.dubbo.frame's does: appends, and messages sliced from a view;
the consumed prefix is dropped once per ``feed``, and what remains then is at most one partial
message, so each byte is copied a bounded number of times whatever the chunking: linear cost.
When nothing is buffered, messages are sliced from the chunk itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from regproxy.triple.status import Code, TripleError

HEADER_LEN: Final = 5
DEFAULT_MAX_MESSAGE: Final = 8 * 1024 * 1024  # TripleConfig.DEFAULT_MAX_BODY_SIZE
MAX_LENGTH: Final = 0xFFFF_FFFF  # what Message-Length's 4 bytes can say
FLAG_COMPRESSED: Final = 0x01
RESERVED_MASK: Final = 0xFE  # TriDecoder.RESERVED_MASK

_HEADER: Final = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class Message:
    """One message: its bytes, and whether they are compressed (by the stream's grpc-encoding)."""

    compressed: bool
    data: bytes


class MessageError(TripleError):
    """The stream's bytes are not length-prefixed messages; the stream cannot go on.

    ``messages`` holds the messages completed before the bad bytes, which the caller may still
    deliver.
    """

    def __init__(self, message: str, code: Code = Code.INTERNAL) -> None:
        super().__init__(message, code)
        self.messages: list[Message] = []


class MessageTooLarge(MessageError):
    """A message's length, read from its header, is over the limit: RESOURCE_EXHAUSTED."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"gRPC message of {size} bytes exceeds the limit of {limit} bytes", Code.RESOURCE_EXHAUSTED
        )
        self.size = size
        self.limit = limit


def _bad_flag(flag: int) -> MessageError:
    return MessageError(
        f"gRPC message header malformed: compressed flag 0x{flag:02x}, expected 0 or 1 "
        "(reserved bits not zero)"
    )


class MessageDecoder:
    """Incremental decoder: ``feed(bytes) -> list[Message]``; ``end()`` at the stream's end.

    Raises MessageError on a flag byte other than 0 or 1, MessageTooLarge on a length over
    ``max_message``. After an error the decoder is unusable: further feeds raise the same error
    again (with no messages).
    """

    __slots__ = ("_buf", "_error", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._error: MessageError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """The messages that ``data`` completes, in order."""
        if self._error is not None:
            self._error.messages = []
            raise self._error
        if not self._buf:
            messages, used = self._parse(data, 0)
            if used < len(data):
                self._buf += memoryview(data)[used:]
            return messages
        self._buf += data
        # A view, so that slicing a message out copies its bytes once (a bytearray slice: twice).
        with memoryview(self._buf) as view:
            messages, used = self._parse(view, 0)
        if used:
            del self._buf[:used]  # once per feed; what remains is at most one partial message
        return messages

    def end(self) -> None:
        """The stream ended (END_STREAM): raises MessageError if it ended inside a message."""
        if self._error is not None:
            self._error.messages = []
            raise self._error
        have = len(self._buf)
        if not have:
            return
        if have < HEADER_LEN:
            error = MessageError(f"stream ended inside a gRPC message header: {have} of {HEADER_LEN} bytes")
        else:
            _flag, length = _HEADER.unpack_from(self._buf)
            error = MessageError(f"stream ended inside a gRPC message: {have - HEADER_LEN} of {length} bytes")
        raise self._fail(error, [])

    def _fail(self, error: MessageError, messages: list[Message]) -> MessageError:
        error.messages = messages
        self._error = error
        self._buf = bytearray()
        return error

    def _parse(self, buf: bytes | memoryview, pos: int) -> tuple[list[Message], int]:
        messages: list[Message] = []
        end = len(buf)
        limit = self.max_message
        unpack = _HEADER.unpack_from
        while end - pos >= HEADER_LEN:
            flag, length = unpack(buf, pos)
            if flag & RESERVED_MASK:
                raise self._fail(_bad_flag(flag), messages)
            if length > limit:
                raise self._fail(MessageTooLarge(length, limit), messages)
            start = pos + HEADER_LEN
            stop = start + length
            if stop > end:
                break
            messages.append(Message(flag == FLAG_COMPRESSED, bytes(buf[start:stop])))
            pos = stop
        if end > pos and buf[pos] & RESERVED_MASK:
            # Fail on a bad flag at once, instead of waiting for a header that may never come.
            raise self._fail(_bad_flag(buf[pos]), messages)
        return messages, pos


def message_header(length: int, compressed: bool = False) -> bytes:
    """The 5-byte header of a ``length``-byte message: to send before the message's bytes without
    joining them (a large message is not copied)."""
    if not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"a gRPC message holds 0 to {MAX_LENGTH} bytes, not {length}")
    return _HEADER.pack(FLAG_COMPRESSED if compressed else 0, length)


def pack_message(data: bytes, compressed: bool = False) -> bytes:
    """``data`` as one length-prefixed message (its bytes already compressed if ``compressed``)."""
    return b"".join((message_header(len(data), compressed), data))
