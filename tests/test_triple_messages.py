"""gRPC length-prefixed messages (regproxy.triple.messages): grpc/grpc doc/PROTOCOL-HTTP2.md's
Length-Prefixed-Message, and Dubbo 3.3's reading of it (frame.TriDecoder, GrpcStreamingDecoder)
and writing (GrpcCompositeCodec.encode)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.triple.messages import (
    DEFAULT_MAX_MESSAGE,
    HEADER_LEN,
    Message,
    MessageDecoder,
    MessageError,
    MessageTooLarge,
    message_header,
    pack_message,
)
from regproxy.triple.status import Code

# HTTP/2's default SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2): the usual DATA frame payload.
DATA_FRAME = 16_384


def feed_in(decoder: MessageDecoder, data: bytes, size: int) -> list[Message]:
    out: list[Message] = []
    for pos in range(0, len(data), size):
        out += decoder.feed(data[pos : pos + size])
    return out


@pytest.mark.parametrize(
    ("data", "compressed", "wire"),
    [
        # Compressed-Flag (1 byte), Message-Length (4 bytes, big endian), Message: what
        # GrpcCompositeCodec.encode writes (a 0, then writeLength's four bytes, then the bytes).
        (b"", False, b"\x00\x00\x00\x00\x00"),
        (b"abc", False, b"\x00\x00\x00\x00\x03abc"),
        (b"abc", True, b"\x01\x00\x00\x00\x03abc"),
        (b"x" * 256, False, b"\x00\x00\x00\x01\x00" + b"x" * 256),
        (b"x" * 0x010203, False, b"\x00\x00\x01\x02\x03" + b"x" * 0x010203),
    ],
)
def test_pack_and_decode(data: bytes, compressed: bool, wire: bytes) -> None:
    assert pack_message(data, compressed) == wire
    decoder = MessageDecoder()
    assert decoder.feed(wire) == [Message(compressed, data)]
    assert decoder.buffered == 0
    decoder.end()


def test_the_default_limit_is_dubbos() -> None:
    # TripleConfig.DEFAULT_MAX_BODY_SIZE, 8 MiB; regproxy.dubbo.frame.DEFAULT_MAX_BODY too.
    assert DEFAULT_MAX_MESSAGE == 8_388_608
    assert HEADER_LEN == 5


def test_many_messages_in_one_chunk_and_one_message_over_many() -> None:
    payloads = [b"", b"a", b"bb" * 10, b"\x00" * 1000, b"last"]
    wire = b"".join(pack_message(p, i % 2 == 1) for i, p in enumerate(payloads))
    expected = [Message(i % 2 == 1, p) for i, p in enumerate(payloads)]
    assert MessageDecoder().feed(wire) == expected
    assert feed_in(MessageDecoder(), wire, 1) == expected
    assert feed_in(MessageDecoder(), wire, 7) == expected


def test_every_split_point() -> None:
    # PROTOCOL-HTTP2.md "Data Frames": DATA frame boundaries have no relation to message boundaries.
    wire = pack_message(b"hello") + pack_message(b"") + pack_message(b"world", True)
    expected = [Message(False, b"hello"), Message(False, b""), Message(True, b"world")]
    for cut in range(len(wire) + 1):
        decoder = MessageDecoder()
        got = decoder.feed(wire[:cut])
        got += decoder.feed(wire[cut:])
        assert got == expected, cut
        assert decoder.buffered == 0
        decoder.end()


def test_buffered_counts_the_partial_message() -> None:
    decoder = MessageDecoder()
    wire = pack_message(b"0123456789")
    assert decoder.feed(wire[:3]) == []
    assert decoder.buffered == 3
    assert decoder.feed(wire[3:12]) == []
    assert decoder.buffered == 12
    assert decoder.feed(wire[12:] + pack_message(b"x")[:2]) == [Message(False, b"0123456789")]
    assert decoder.buffered == 2


@given(
    st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=20),
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=10),
)
def test_any_messages_in_any_chunking(messages: list[tuple[bool, bytes]], sizes: list[int]) -> None:
    wire = b"".join(pack_message(data, compressed) for compressed, data in messages)
    decoder = MessageDecoder()
    got: list[Message] = []
    pos = 0
    i = 0
    while pos < len(wire):
        size = sizes[i % len(sizes)]
        got += decoder.feed(wire[pos : pos + size])
        # Never more than one partial message held.
        assert decoder.buffered < HEADER_LEN + 300
        pos += size
        i += 1
    assert got == [Message(compressed, data) for compressed, data in messages]
    assert decoder.buffered == 0
    decoder.end()


@pytest.mark.parametrize("flag", [0x02, 0x03, 0x80, 0xFF])
def test_reserved_flag_bits_are_an_error(flag: int) -> None:
    # TriDecoder / GrpcStreamingDecoder: (type & 0xFE) != 0 is "reserved bits not zero".
    decoder = MessageDecoder()
    good = pack_message(b"ok")
    with pytest.raises(MessageError) as caught:
        decoder.feed(good + bytes([flag]) + b"\x00\x00\x00\x01x")
    error = caught.value
    assert error.code is Code.INTERNAL
    assert f"0x{flag:02x}" in error.message and "reserved bits" in error.message
    assert error.messages == [Message(False, b"ok")]  # the message before the bad bytes is kept
    # Unusable from then on: the same error, without messages.
    with pytest.raises(MessageError) as again:
        decoder.feed(good)
    assert again.value is error and error.messages == []
    with pytest.raises(MessageError):
        decoder.end()


def test_a_bad_flag_fails_at_its_own_byte() -> None:
    # No waiting for a header that may never come.
    decoder = MessageDecoder()
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(MessageError):
        MessageDecoder().feed(b"\x04")
    decoder2 = MessageDecoder()
    decoder2.feed(pack_message(b"ab")[:-1])
    with pytest.raises(MessageError):
        decoder2.feed(b"b\x10")


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    decoder = MessageDecoder(max_message=1000)
    assert decoder.feed(pack_message(b"x" * 1000)) == [Message(False, b"x" * 1000)]  # at the limit
    header = pack_message(b"x" * 1001)[:HEADER_LEN]
    with pytest.raises(MessageTooLarge) as caught:
        decoder.feed(header)  # the header alone: nothing of the message is kept
    error = caught.value
    assert (error.size, error.limit) == (1001, 1000)
    assert error.code is Code.RESOURCE_EXHAUSTED
    assert error.message == "gRPC message of 1001 bytes exceeds the limit of 1000 bytes"
    assert decoder.buffered == 0


def test_the_largest_length_is_read_unsigned() -> None:
    # Dubbo reads Message-Length with readInt (signed); 0xFFFFFFFF is 4 GiB - 1 here, not -1.
    with pytest.raises(MessageTooLarge) as caught:
        MessageDecoder().feed(b"\x00\xff\xff\xff\xff")
    assert caught.value.size == 0xFFFF_FFFF


@pytest.mark.parametrize(
    ("tail", "says"),
    [
        (b"\x00\x00", "stream ended inside a gRPC message header: 2 of 5 bytes"),
        (b"\x00\x00\x00\x00\x0a123", "stream ended inside a gRPC message: 3 of 10 bytes"),
        (b"\x01\x00\x00\x00\x01", "stream ended inside a gRPC message: 0 of 1 bytes"),
    ],
)
def test_a_stream_that_ends_inside_a_message(tail: bytes, says: str) -> None:
    decoder = MessageDecoder()
    assert decoder.feed(pack_message(b"whole") + tail) == [Message(False, b"whole")]
    with pytest.raises(MessageError) as caught:
        decoder.end()
    assert caught.value.message == says
    assert caught.value.code is Code.INTERNAL


def test_a_4_mb_message_in_data_frames() -> None:
    # issue 20's "a 4 MB message", in DATA frames of the default size.
    payload = bytes(range(256)) * (4_000_000 // 256)
    wire = pack_message(payload) + pack_message(b"after")
    decoder = MessageDecoder()
    assert feed_in(decoder, wire, DATA_FRAME) == [Message(False, payload), Message(False, b"after")]
    assert decoder.buffered == 0


def test_cost_is_linear_in_the_bytes() -> None:
    # 50,000 small messages in one chunk, and the same in 7-byte chunks: a decoder that deleted
    # each message from the front of its buffer would move ~25 GB here.
    wire = b"".join(pack_message(b"%015d" % i) for i in range(50_000))
    started = time.perf_counter()
    assert len(MessageDecoder().feed(wire)) == 50_000
    assert len(feed_in(MessageDecoder(), wire, 7)) == 50_000
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(("length", "compressed"), [(0, False), (7, True), (0xFFFF_FFFF, False)])
def test_message_header(length: int, compressed: bool) -> None:
    assert message_header(length, compressed) == bytes([int(compressed)]) + length.to_bytes(4, "big")


def test_pack_is_the_header_then_the_bytes() -> None:
    assert pack_message(b"abc", True) == message_header(3, True) + b"abc"


@pytest.mark.parametrize("length", [-1, 0x1_0000_0000])
def test_message_header_refuses_what_four_bytes_cannot_say(length: int) -> None:
    with pytest.raises(ValueError, match=f"0 to 4294967295 bytes, not {length}"):
        message_header(length)
