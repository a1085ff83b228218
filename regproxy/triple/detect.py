"""Which protocol a connection speaks, from its first bytes: Dubbo 2 or HTTP/2 (Triple).

Dubbo 3's port unification is the model: ``NettyPortUnificationServerHandler.detectProtocol``
asks each protocol's ``ProtocolDetector`` about the bytes received so far; the answer is
RECOGNIZED, UNRECOGNIZED or NEED_MORE_DATA, and when every detector says UNRECOGNIZED it logs the
bytes and closes the connection. Both detectors compare a prefix:

* ``DubboDetector``: the magic 0xdabb (two bytes). One byte 0xda: NEED_MORE_DATA.
* ``Http2ProtocolDetector`` (and the HTTP/2 half of ``h12.TripleProtocolDetector``): Netty's
  ``Http2CodecUtil.connectionPrefaceBuf()``, the client connection preface of RFC 9113 §3.4,
  ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` (24 bytes). Fewer bytes that match it so far:
  NEED_MORE_DATA; a byte that differs: UNRECOGNIZED.

Two differences, neither changing an answer that can be given: Dubbo's detectors call zero bytes
UNRECOGNIZED (the handler waits for two bytes before asking them, "the size of telnet command
ls"); here zero bytes are NEED_MORE, being a prefix of both. And one byte that starts neither
protocol is NEITHER at once, since more bytes cannot change that.

The two prefixes differ in their first byte, so the order in which they are tried does not matter
(Dubbo tries them in a HashSet's order).

Not carried, but named when seen, so that the error says what the client is: an HTTP/1 request
(``TripleProtocolDetector`` accepts one for Triple's HTTP/1 mode, by the methods of
``HttpMethods``) and a TLS handshake (the handler's ``isSsl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DUBBO: Final = "dubbo"
HTTP2: Final = "http2"
NEED_MORE: Final = "need_more"
NEITHER: Final = "neither"

DUBBO_MAGIC: Final = b"\xda\xbb"
HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
# The most bytes ever needed for an answer: the preface's length.
MAX_NEEDED: Final = len(HTTP2_PREFACE)
# How many of the bytes seen an error message shows.
SHOWN: Final = 32

# HttpMethods (dubbo-remoting-http12), the methods TripleProtocolDetector takes for HTTP/1.
_HTTP1_METHODS: Final = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ", b"TRACE ")
# A TLS record of type handshake (22) with a 3.x version: what a TLS client sends first.
_TLS_HANDSHAKE: Final = b"\x16\x03"


@dataclass(frozen=True, slots=True)
class Detection:
    """What the first bytes say: ``protocol`` is DUBBO, HTTP2, NEED_MORE or NEITHER; ``message``
    says what was seen when it is NEITHER (empty otherwise)."""

    protocol: str
    message: str = ""


_DUBBO: Final = Detection(DUBBO)
_HTTP2: Final = Detection(HTTP2)
_NEED_MORE: Final = Detection(NEED_MORE)


def detect(data: bytes) -> Detection:
    """What ``data``, the first bytes of a connection (all received so far), are.

    Pass the bytes buffered so far each time more arrive; at most MAX_NEEDED are looked at.
    """
    n = len(data)
    if n >= 2:
        if data[0] == 0xDA and data[1] == 0xBB:
            return _DUBBO
    elif n == 0 or data[0] == 0xDA:
        return _NEED_MORE
    if data[:MAX_NEEDED] == HTTP2_PREFACE:
        return _HTTP2
    if n < MAX_NEEDED and HTTP2_PREFACE.startswith(data):
        return _NEED_MORE
    return Detection(NEITHER, unrecognized(data))


def unrecognized(data: bytes) -> str:
    """The message for first bytes that are neither Dubbo nor HTTP/2: what they look like, and
    the first SHOWN of them, escaped."""
    head = bytes(data[:SHOWN])
    more = f" ... ({len(data)} bytes)" if len(data) > SHOWN else ""
    seen = f"'{escape(head)}'{more}"
    if head.startswith(_TLS_HANDSHAKE):
        what = "a TLS handshake, on a port that takes plain text"
    elif any(head.startswith(m) for m in _HTTP1_METHODS):
        what = "an HTTP/1 request (Triple is carried over HTTP/2 only: prior knowledge, no upgrade)"
    elif head.startswith(HTTP2_PREFACE[:4]):
        what = "a malformed HTTP/2 preface"
    else:
        what = "unrecognized protocol"
    return f"{what}: expected Dubbo (magic 0xdabb) or HTTP/2 (preface 'PRI * HTTP/2.0'); first bytes {seen}"


def escape(data: bytes) -> str:
    """``data`` as printable ASCII: \\r \\n \\t \\\\ and \\' escaped, other bytes outside
    0x20-0x7E as \\xNN."""
    out: list[str] = []
    for b in data:
        if b == 0x5C:
            out.append("\\\\")
        elif b == 0x27:
            out.append("\\'")
        elif 0x20 <= b <= 0x7E:
            out.append(chr(b))
        elif b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)
