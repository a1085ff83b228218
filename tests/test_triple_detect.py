"""Protocol detection on a connection's first bytes (regproxy.triple.detect), after Dubbo 3.3's
port unification: DubboDetector, Http2ProtocolDetector, NettyPortUnificationServerHandler."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.dubbo.encode import heartbeat_request
from regproxy.triple.detect import (
    DUBBO,
    DUBBO_MAGIC,
    HTTP2,
    HTTP2_PREFACE,
    MAX_NEEDED,
    NEED_MORE,
    NEITHER,
    SHOWN,
    Detection,
    detect,
    escape,
)

# An HTTP/2 SETTINGS frame (RFC 9113 §6.5), empty: what a client sends right after the preface.
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_the_preface_is_rfc_9113s() -> None:
    # RFC 9113 §3.4: the client connection preface, 24 octets; Netty's connectionPrefaceBuf().
    assert bytes.fromhex("505249202a20485454502f322e300d0a0d0a534d0d0a0d0a") == HTTP2_PREFACE
    assert MAX_NEEDED == 24
    # DubboDetector's Preface: the two magic bytes (regproxy.dubbo.frame.MAGIC_BYTES too).
    assert DUBBO_MAGIC == b"\xda\xbb"


def test_the_two_protocols_differ_in_their_first_byte() -> None:
    # So the order the detectors are asked in never matters (Dubbo asks them in a HashSet's order).
    assert DUBBO_MAGIC[0] != HTTP2_PREFACE[0]


@pytest.mark.parametrize(
    ("data", "protocol"),
    [
        # Zero bytes: a prefix of both. (DubboDetector alone says UNRECOGNIZED; the port
        # unification handler never asks it with fewer than two bytes.)
        (b"", NEED_MORE),
        # DubboDetector: one byte matching the magic is NEED_MORE_DATA, two are RECOGNIZED.
        (b"\xda", NEED_MORE),
        (b"\xda\xbb", DUBBO),
        (heartbeat_request(7), DUBBO),
        (b"\xda\xbb\x00", DUBBO),  # the magic decides; what follows is the frame parser's business
        # Http2ProtocolDetector: a prefix of the preface is NEED_MORE_DATA, all of it RECOGNIZED.
        (b"P", NEED_MORE),
        (b"PRI * HTTP/2.0\r\n", NEED_MORE),
        (HTTP2_PREFACE[:23], NEED_MORE),
        (HTTP2_PREFACE, HTTP2),
        (HTTP2_PREFACE + SETTINGS, HTTP2),
        # Neither: as soon as a byte differs from both.
        (b"\xdb", NEITHER),
        (b"\xda\x00", NEITHER),
        (b"\xda\xbc", NEITHER),
        (b"\x00", NEITHER),
        (b"p", NEITHER),  # the preface is case-sensitive
        (b"PRI * HTTP/1.1\r\n", NEITHER),
        (HTTP2_PREFACE[:23] + b"\r", NEITHER),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", NEITHER),
        (b"ls\r\n", NEITHER),  # telnet, Dubbo's QOS command (the handler's two-byte wait)
        (b"\x16\x03\x01\x00\xa5\x01", NEITHER),
    ],
)
def test_detect(data: bytes, protocol: str) -> None:
    result = detect(data)
    assert result.protocol == protocol
    assert bool(result.message) == (protocol == NEITHER)


@pytest.mark.parametrize("n", range(MAX_NEEDED))
def test_every_prefix_of_the_preface_needs_more(n: int) -> None:
    assert detect(HTTP2_PREFACE[:n]) == Detection(NEED_MORE)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"GET / HTTP/1.1\r\n", "an HTTP/1 request"),
        (b"POST /org.apache.dubbo.Demo/sayHello HTTP/1.1\r\n", "an HTTP/1 request"),
        (b"OPTIONS * HTTP/1.1\r\n", "an HTTP/1 request"),
        (b"\x16\x03\x01\x00\xa5\x01\x00", "a TLS handshake"),
        (b"PRI * HTTP/1.1\r\n", "a malformed HTTP/2 preface"),
        (b"\x00\x01garbage", "unrecognized protocol"),
    ],
)
def test_the_message_says_what_the_bytes_look_like(data: bytes, says: str) -> None:
    message = detect(data).message
    assert message.startswith(says)
    assert "0xdabb" in message and "PRI * HTTP/2.0" in message


def test_the_message_shows_the_bytes_escaped_and_bounded() -> None:
    data = b"GET /\r\n\t'\\" + bytes(range(0x7C, 0x84)) + b"x" * 1000
    message = detect(data).message
    assert "'GET /\\r\\n\\t\\'\\\\|}~\\x7f\\x80\\x81\\x82\\x83" + "x" * 14 + "'" in message
    assert len(data[:SHOWN]) == 32
    assert f"({len(data)} bytes)" in message
    assert len(message) < 300
    assert message.isascii() and message.isprintable()


def test_a_short_sighting_has_no_ellipsis() -> None:
    message = detect(b"\x00\x01").message
    assert message.endswith("first bytes '\\x00\\x01'")


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"abc XYZ~", "abc XYZ~"),
        (b"\r\n\t", "\\r\\n\\t"),
        (b"\x00\x1f\x7f\xff", "\\x00\\x1f\\x7f\\xff"),
        (b"'\\", "\\'\\\\"),
    ],
)
def test_escape(data: bytes, text: str) -> None:
    assert escape(data) == text


@given(st.binary(max_size=64), st.binary(max_size=16))
def test_an_answer_other_than_need_more_never_changes(data: bytes, more: bytes) -> None:
    # What the handler relies on: once a protocol (or neither) is decided, more bytes agree.
    first = detect(data).protocol
    if first != NEED_MORE:
        assert detect(data + more).protocol == first


@given(st.binary(max_size=64))
def test_need_more_only_for_a_strict_prefix(data: bytes) -> None:
    if detect(data).protocol == NEED_MORE:
        assert len(data) < MAX_NEEDED
        assert DUBBO_MAGIC.startswith(data) or HTTP2_PREFACE.startswith(data)
