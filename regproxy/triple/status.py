"""gRPC statuses for Triple: the codes, the ``grpc-message`` encoding, and their Dubbo mappings.

Sources:

* The codes and their numbers: grpc/grpc doc/statuscodes.md, the same as Dubbo 3.3's
  ``org.apache.dubbo.rpc.TriRpcStatus.Code`` (0 OK ... 16 UNAUTHENTICATED).
* ``grpc-status`` and ``grpc-message``: grpc/grpc doc/PROTOCOL-HTTP2.md, "Responses": Status is
  ``1*DIGIT``; Status-Message is the UTF-8 of the text, percent-encoded, where only
  ``%x20-%x24 / %x26-%x7E`` (space and VCHAR except ``%``) go unencoded, and a decoder "MUST NOT
  error or throw away the message" on invalid values (here: a broken %-sequence is kept as is).
* Dubbo's codes: ``TriRpcStatus.dubboCodeToTriCode`` / ``triCodeToDubboCode`` map the codes of
  ``org.apache.dubbo.rpc.RpcException``; a Dubbo 2 response status (``Response``'s status byte,
  regproxy.dubbo.status.Status) becomes such a code in ``DefaultFuture.doReceived`` (the status
  picks the exception) and ``AbstractInvoker.waitForResultIfSync`` (the exception picks the code).
* HTTP statuses: ``TriRpcStatus.httpStatusToGrpcCode`` (grpc/grpc doc/http-grpc-status-mapping.md
  plus 1xx and 431). RST_STREAM codes: PROTOCOL-HTTP2.md, "Errors".

Two departures from Dubbo, both about text: Dubbo 3.3 encodes ``grpc-message`` with Netty's
``QueryStringEncoder`` (every byte outside the URL-unreserved set becomes %XX) and decodes it with
``QueryStringDecoder.decodeComponent``, which also turns ``+`` into a space; the gRPC spec keeps
``+`` as itself, and so does ``decode_grpc_message``. Both encodings decode the same here.

This module holds IntEnums, so (like regproxy.dubbo.status) it stays out of the mypyc-compiled
data path: mypyc cannot refer to the members of an IntEnum compiled in another module.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from regproxy.dubbo.status import Status


class Code(IntEnum):
    """gRPC status codes (doc/statuscodes.md; ``TriRpcStatus.Code``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcCode(IntEnum):
    """The codes of Dubbo's ``org.apache.dubbo.rpc.RpcException`` (3.3), what TriRpcStatus maps."""

    UNKNOWN_EXCEPTION = 0
    NETWORK_EXCEPTION = 1
    TIMEOUT_EXCEPTION = 2
    BIZ_EXCEPTION = 3
    FORBIDDEN_EXCEPTION = 4
    SERIALIZATION_EXCEPTION = 5
    NO_INVOKER_AVAILABLE_AFTER_FILTER = 6
    LIMIT_EXCEEDED_EXCEPTION = 7
    TIMEOUT_TERMINATE = 8
    REGISTRY_EXCEPTION = 9
    ROUTER_CACHE_NOT_BUILD = 10
    METHOD_NOT_FOUND = 11
    VALIDATION_EXCEPTION = 12
    AUTHORIZATION_EXCEPTION = 13


# --- grpc-message -------------------------------------------------------------------------------

# TriRpcStatus.limitSizeTo1KB: Dubbo cuts a status message to 1024 characters before encoding it.
MESSAGE_LIMIT: Final = 1024

# What each byte of the UTF-8 becomes: itself in %x20-%x7E except '%', else %XX (upper-case hex,
# RFC 3986 §2.1's recommendation, as the gRPC spec's "%" 2HEXDIGIT ; 0-9 A-F).
_ENCODED: Final = tuple(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in range(256))
_HEX: Final = {ord(c): int(c, 16) for c in "0123456789abcdefABCDEF"}


def limit_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, as TriRpcStatus.toEncodedMessage does before encoding."""
    return text if len(text) <= limit else text[:limit]


def encode_grpc_message(text: str) -> str:
    """The ``grpc-message`` value of ``text``: its UTF-8, bytes outside 0x20-0x7E and '%' as %XX.

    Lone surrogates (not encodable as UTF-8) become '?'.
    """
    if text.isascii() and text.isprintable() and "%" not in text:
        return text  # the common case: nothing to encode (ASCII printable is exactly 0x20-0x7E)
    encoded = _ENCODED
    return "".join([encoded[b] for b in text.encode("utf-8", "replace")])


def decode_grpc_message(value: str | bytes) -> str:
    """The text of a ``grpc-message`` value, leniently (PROTOCOL-HTTP2.md: never an error).

    A valid %XX (either case of hex digit) is the byte XX; a '%' not followed by two hex digits
    is kept as is; the bytes are then read as UTF-8, invalid sequences as U+FFFD. A value given
    as text (a header decoded by the HTTP/2 layer) is taken as its UTF-8.
    """
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    at = raw.find(b"%")
    if at < 0:
        return raw.decode("utf-8", "replace")
    hexval = _HEX
    out = bytearray(raw[:at])
    end = len(raw)
    pos = at
    while pos < end:
        if pos + 2 < end and raw[pos + 1] in hexval and raw[pos + 2] in hexval:
            out.append(hexval[raw[pos + 1]] << 4 | hexval[raw[pos + 2]])
            pos += 3
        else:
            out.append(0x25)  # a broken sequence: the '%' stays, what follows is read as usual
            pos += 1
        nxt = raw.find(b"%", pos)
        if nxt < 0:
            out += raw[pos:]
            break
        out += raw[pos:nxt]
        pos = nxt
    return out.decode("utf-8", "replace")


def parse_grpc_status(value: str | bytes) -> Code:
    """The code of a ``grpc-status`` value; UNKNOWN when it is not one.

    doc/statuscodes.md: "Error parsing returned status" is UNKNOWN, generated at the client; a
    number outside 0-16 is UNKNOWN too (as grpc-java's ``Status.fromCodeValue``; Dubbo 3.3's
    ``Code.fromCode`` throws instead). Leading zeros, which the spec says are not sent, are read.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not text or len(text) > 10 or not (text.isascii() and text.isdigit()):
        return Code.UNKNOWN
    number = int(text)
    return Code(number) if number <= 16 else Code.UNKNOWN


class TripleError(Exception):
    """A call that ends with a gRPC status: ``code`` and ``message`` (plain text, not encoded).

    ``http_status`` is the HTTP status to answer with when the call is refused before it starts:
    200 for every gRPC error, except a request that is not gRPC at all (PROTOCOL-HTTP2.md: a
    Content-Type not beginning with "application/grpc" SHOULD get 415).
    """

    def __init__(self, message: str, code: Code = Code.INTERNAL, http_status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status

    def trailers(self) -> list[tuple[str, str]]:
        """The ``grpc-status`` and ``grpc-message`` that report this error, ready to send."""
        return [
            ("grpc-status", str(int(self.code))),
            ("grpc-message", encode_grpc_message(limit_message(self.message))),
        ]

    def __repr__(self) -> str:
        return f"TripleError({self.code.name}, {self.message!r}, http_status={self.http_status})"


# --- Dubbo's codes ------------------------------------------------------------------------------

# TriRpcStatus.dubboCodeToTriCode: every RpcException code not listed is UNKNOWN.
_DUBBO_TO_GRPC: Final[Mapping[int, Code]] = MappingProxyType(
    {
        RpcCode.TIMEOUT_EXCEPTION: Code.DEADLINE_EXCEEDED,
        RpcCode.TIMEOUT_TERMINATE: Code.DEADLINE_EXCEEDED,
        RpcCode.FORBIDDEN_EXCEPTION: Code.PERMISSION_DENIED,
        RpcCode.AUTHORIZATION_EXCEPTION: Code.UNAUTHENTICATED,
        RpcCode.LIMIT_EXCEEDED_EXCEPTION: Code.UNAVAILABLE,
        RpcCode.NETWORK_EXCEPTION: Code.UNAVAILABLE,
        RpcCode.METHOD_NOT_FOUND: Code.NOT_FOUND,
        RpcCode.SERIALIZATION_EXCEPTION: Code.INTERNAL,
    }
)

# TriRpcStatus.triCodeToDubboCode: every gRPC code not listed is UNKNOWN_EXCEPTION.
_GRPC_TO_DUBBO: Final[Mapping[int, RpcCode]] = MappingProxyType(
    {
        Code.DEADLINE_EXCEEDED: RpcCode.TIMEOUT_EXCEPTION,
        Code.PERMISSION_DENIED: RpcCode.FORBIDDEN_EXCEPTION,
        Code.UNAVAILABLE: RpcCode.NETWORK_EXCEPTION,
        Code.UNIMPLEMENTED: RpcCode.METHOD_NOT_FOUND,
    }
)


def grpc_code_for_rpc_code(rpc_code: int) -> Code:
    """TriRpcStatus.dubboCodeToTriCode: the gRPC code of an RpcException code."""
    return _DUBBO_TO_GRPC.get(rpc_code, Code.UNKNOWN)


def rpc_code_for_grpc_code(code: int) -> RpcCode:
    """TriRpcStatus.triCodeToDubboCode: the RpcException code of a gRPC code."""
    return _GRPC_TO_DUBBO.get(code, RpcCode.UNKNOWN_EXCEPTION)


def rpc_code_for_response_status(status: int) -> RpcCode | None:
    """The RpcException code a Dubbo 3.3 consumer raises for a response status; None for OK.

    ``DefaultFuture.doReceived``: CLIENT_TIMEOUT and SERVER_TIMEOUT complete the call with a
    TimeoutException, SERIALIZATION_ERROR with a SerializationException, every other non-OK
    status with a RemotingException; ``AbstractInvoker.waitForResultIfSync`` turns these into
    TIMEOUT_EXCEPTION, SERIALIZATION_EXCEPTION and NETWORK_EXCEPTION.
    """
    if status == Status.OK:
        return None
    if status in (Status.CLIENT_TIMEOUT, Status.SERVER_TIMEOUT):
        return RpcCode.TIMEOUT_EXCEPTION
    if status == Status.SERIALIZATION_ERROR:
        return RpcCode.SERIALIZATION_EXCEPTION
    return RpcCode.NETWORK_EXCEPTION


def grpc_code_for_response_status(status: int) -> Code:
    """The gRPC code Dubbo 3.3 gives a Dubbo response status: the two steps above in a row.

    OK is OK; the timeouts are DEADLINE_EXCEEDED; SERIALIZATION_ERROR is INTERNAL; everything
    else (bad request, service not found, service/server/client error, thread pool exhausted,
    channel inactive, bad response) is UNAVAILABLE.
    """
    rpc_code = rpc_code_for_response_status(status)
    return Code.OK if rpc_code is None else grpc_code_for_rpc_code(rpc_code)


def grpc_code_for_http_status(http_status: int) -> Code:
    """TriRpcStatus.httpStatusToGrpcCode: the code of a response that is not gRPC (no grpc-status).

    1xx, 400 and 431 are INTERNAL; 401 UNAUTHENTICATED; 403 PERMISSION_DENIED; 404
    UNIMPLEMENTED; 429, 502, 503 and 504 UNAVAILABLE; any other UNKNOWN.
    """
    if 100 <= http_status < 200 or http_status in (400, 431):
        return Code.INTERNAL
    if http_status == 401:
        return Code.UNAUTHENTICATED
    if http_status == 403:
        return Code.PERMISSION_DENIED
    if http_status == 404:
        return Code.UNIMPLEMENTED
    if http_status in (429, 502, 503, 504):
        return Code.UNAVAILABLE
    return Code.UNKNOWN


# PROTOCOL-HTTP2.md "Errors": the code of a stream reset with an HTTP/2 error code (RFC 9113 §7).
# CANCEL is CANCELLED when a server sends it (a client's CANCEL cancels the call instead).
_RST_STREAM: Final[Mapping[int, Code]] = MappingProxyType(
    {
        0x0: Code.INTERNAL,  # NO_ERROR: an explicit OK status should have been sent
        0x1: Code.INTERNAL,  # PROTOCOL_ERROR
        0x2: Code.INTERNAL,  # INTERNAL_ERROR
        0x3: Code.INTERNAL,  # FLOW_CONTROL_ERROR
        0x4: Code.INTERNAL,  # SETTINGS_TIMEOUT
        0x6: Code.INTERNAL,  # FRAME_SIZE_ERROR
        0x7: Code.UNAVAILABLE,  # REFUSED_STREAM: nothing was processed, may be retried elsewhere
        0x8: Code.CANCELLED,  # CANCEL
        0x9: Code.INTERNAL,  # COMPRESSION_ERROR
        0xA: Code.INTERNAL,  # CONNECT_ERROR
        0xB: Code.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
        0xC: Code.PERMISSION_DENIED,  # INADEQUATE_SECURITY
    }
)
STREAM_CLOSED: Final = 0x5


def grpc_code_for_rst_stream(error_code: int) -> Code | None:
    """The gRPC code of a stream reset by the peer with ``error_code``.

    None for STREAM_CLOSED (the spec: no mapping, no open stream to report to); an error code the
    table does not know is INTERNAL (RFC 9113 §7: unknown codes MAY be treated as INTERNAL_ERROR).
    """
    if error_code == STREAM_CLOSED:
        return None
    return _RST_STREAM.get(error_code, Code.INTERNAL)


# --- regproxy's own errors ----------------------------------------------------------------------

NO_PROVIDER: Final = "no_provider"
UNREACHABLE: Final = "unreachable"
TIMEOUT: Final = "timeout"
RATE_LIMITED: Final = "rate_limited"
LOOP: Final = "loop"
BAD_REQUEST: Final = "bad_request"
TOO_LARGE: Final = "too_large"

# The status regproxy answers a Triple call with when it fails the call itself. Where Dubbo 3.3
# answers the same situation, its code; where the Dubbo status regproxy would answer a Dubbo call
# with is ambiguous (80 is both a loop and "nothing was sent"), the situation decides.
PROXY_ERROR_CODES: Final[Mapping[str, Code]] = MappingProxyType(
    {
        # No provider to send it to; at the ingress the application is down (60 to a Dubbo
        # caller). 60 -> RemotingException -> NETWORK_EXCEPTION -> UNAVAILABLE in Dubbo 3.3, and
        # UNAVAILABLE is what gRPC clients may retry elsewhere (statuscodes.md: server shutting down).
        NO_PROVIDER: Code.UNAVAILABLE,
        # No upstream could be reached and nothing was sent (80 at the egress): the same chain, and
        # statuscodes.md's "connection breaks" case is UNAVAILABLE too.
        UNREACHABLE: Code.UNAVAILABLE,
        # The deadline passed (30/31): TimeoutException -> TIMEOUT_EXCEPTION -> DEADLINE_EXCEEDED.
        TIMEOUT: Code.DEADLINE_EXCEEDED,
        # A rate-limit rule refused it (100 to a Dubbo caller): Dubbo's own limit filters raise
        # LIMIT_EXCEEDED_EXCEPTION, which dubboCodeToTriCode makes UNAVAILABLE.
        RATE_LIMITED: Code.UNAVAILABLE,
        # A routing loop (80 to a Dubbo caller, final by design): the Dubbo chain would say
        # UNAVAILABLE, which invites a retry that loops again. INTERNAL: a broken invariant of the
        # deployment, never retried.
        LOOP: Code.INTERNAL,
        # A request regproxy cannot read (40 to a Dubbo caller): the Dubbo chain says UNAVAILABLE;
        # httpStatusToGrpcCode(400) and statuscodes.md ("error parsing request") say INTERNAL.
        BAD_REQUEST: Code.INTERNAL,
        # A message over the size limit: statuscodes.md, "larger than configured limit".
        TOO_LARGE: Code.RESOURCE_EXHAUSTED,
    }
)


def proxy_error(cause: str, message: str) -> TripleError:
    """The TripleError that answers a call regproxy failed for ``cause`` (a key of
    PROXY_ERROR_CODES), with ``message`` naming the cause for the caller."""
    return TripleError(message, PROXY_ERROR_CODES[cause])
