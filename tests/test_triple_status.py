"""gRPC statuses (regproxy.triple.status): the codes (grpc/grpc doc/statuscodes.md, Dubbo 3.3's
TriRpcStatus.Code), grpc-message (doc/PROTOCOL-HTTP2.md "Responses"), and Dubbo 3.3's mappings
(TriRpcStatus, DefaultFuture.doReceived, AbstractInvoker.waitForResultIfSync)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.dubbo.status import Status
from regproxy.triple.status import (
    BAD_REQUEST,
    LOOP,
    MESSAGE_LIMIT,
    NO_PROVIDER,
    PROXY_ERROR_CODES,
    RATE_LIMITED,
    TIMEOUT,
    TOO_LARGE,
    UNREACHABLE,
    Code,
    RpcCode,
    TripleError,
    decode_grpc_message,
    encode_grpc_message,
    grpc_code_for_http_status,
    grpc_code_for_response_status,
    grpc_code_for_rpc_code,
    grpc_code_for_rst_stream,
    limit_message,
    parse_grpc_status,
    proxy_error,
    rpc_code_for_grpc_code,
    rpc_code_for_response_status,
)


def test_codes_are_grpcs() -> None:
    # doc/statuscodes.md, in TriRpcStatus.Code's order.
    assert [(c.name, c.value) for c in Code] == [
        ("OK", 0),
        ("CANCELLED", 1),
        ("UNKNOWN", 2),
        ("INVALID_ARGUMENT", 3),
        ("DEADLINE_EXCEEDED", 4),
        ("NOT_FOUND", 5),
        ("ALREADY_EXISTS", 6),
        ("PERMISSION_DENIED", 7),
        ("RESOURCE_EXHAUSTED", 8),
        ("FAILED_PRECONDITION", 9),
        ("ABORTED", 10),
        ("OUT_OF_RANGE", 11),
        ("UNIMPLEMENTED", 12),
        ("INTERNAL", 13),
        ("UNAVAILABLE", 14),
        ("DATA_LOSS", 15),
        ("UNAUTHENTICATED", 16),
    ]


def test_rpc_codes_are_rpc_exceptions() -> None:
    # org.apache.dubbo.rpc.RpcException's constants (3.3).
    assert [(c.name, c.value) for c in RpcCode] == [
        ("UNKNOWN_EXCEPTION", 0),
        ("NETWORK_EXCEPTION", 1),
        ("TIMEOUT_EXCEPTION", 2),
        ("BIZ_EXCEPTION", 3),
        ("FORBIDDEN_EXCEPTION", 4),
        ("SERIALIZATION_EXCEPTION", 5),
        ("NO_INVOKER_AVAILABLE_AFTER_FILTER", 6),
        ("LIMIT_EXCEEDED_EXCEPTION", 7),
        ("TIMEOUT_TERMINATE", 8),
        ("REGISTRY_EXCEPTION", 9),
        ("ROUTER_CACHE_NOT_BUILD", 10),
        ("METHOD_NOT_FOUND", 11),
        ("VALIDATION_EXCEPTION", 12),
        ("AUTHORIZATION_EXCEPTION", 13),
    ]


# TriRpcStatus.dubboCodeToTriCode, every RpcException code.
DUBBO_TO_TRI = [
    (RpcCode.UNKNOWN_EXCEPTION, Code.UNKNOWN),
    (RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (RpcCode.TIMEOUT_EXCEPTION, Code.DEADLINE_EXCEEDED),
    (RpcCode.BIZ_EXCEPTION, Code.UNKNOWN),
    (RpcCode.FORBIDDEN_EXCEPTION, Code.PERMISSION_DENIED),
    (RpcCode.SERIALIZATION_EXCEPTION, Code.INTERNAL),
    (RpcCode.NO_INVOKER_AVAILABLE_AFTER_FILTER, Code.UNKNOWN),
    (RpcCode.LIMIT_EXCEEDED_EXCEPTION, Code.UNAVAILABLE),
    (RpcCode.TIMEOUT_TERMINATE, Code.DEADLINE_EXCEEDED),
    (RpcCode.REGISTRY_EXCEPTION, Code.UNKNOWN),
    (RpcCode.ROUTER_CACHE_NOT_BUILD, Code.UNKNOWN),
    (RpcCode.METHOD_NOT_FOUND, Code.NOT_FOUND),
    (RpcCode.VALIDATION_EXCEPTION, Code.UNKNOWN),
    (RpcCode.AUTHORIZATION_EXCEPTION, Code.UNAUTHENTICATED),
    (99, Code.UNKNOWN),  # a code Dubbo does not define
]


@pytest.mark.parametrize(("rpc_code", "code"), DUBBO_TO_TRI)
def test_dubbo_code_to_tri_code(rpc_code: int, code: Code) -> None:
    assert grpc_code_for_rpc_code(rpc_code) is code


# TriRpcStatus.triCodeToDubboCode, every gRPC code.
TRI_TO_DUBBO = {
    Code.DEADLINE_EXCEEDED: RpcCode.TIMEOUT_EXCEPTION,
    Code.PERMISSION_DENIED: RpcCode.FORBIDDEN_EXCEPTION,
    Code.UNAVAILABLE: RpcCode.NETWORK_EXCEPTION,
    Code.UNIMPLEMENTED: RpcCode.METHOD_NOT_FOUND,
}


@pytest.mark.parametrize("code", list(Code))
def test_tri_code_to_dubbo_code(code: Code) -> None:
    assert rpc_code_for_grpc_code(code) is TRI_TO_DUBBO.get(code, RpcCode.UNKNOWN_EXCEPTION)


# Every Dubbo 2 response status (Response's status byte): the exception DefaultFuture.doReceived
# completes the call with, the RpcException code AbstractInvoker gives it, and dubboCodeToTriCode.
RESPONSE_STATUSES = [
    (Status.OK, None, Code.OK),
    (Status.SERIALIZATION_ERROR, RpcCode.SERIALIZATION_EXCEPTION, Code.INTERNAL),
    (Status.CLIENT_TIMEOUT, RpcCode.TIMEOUT_EXCEPTION, Code.DEADLINE_EXCEEDED),
    (Status.SERVER_TIMEOUT, RpcCode.TIMEOUT_EXCEPTION, Code.DEADLINE_EXCEEDED),
    (Status.CHANNEL_INACTIVE, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.BAD_REQUEST, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.BAD_RESPONSE, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.SERVICE_NOT_FOUND, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.SERVICE_ERROR, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.SERVER_ERROR, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.CLIENT_ERROR, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
    (Status.SERVER_THREADPOOL_EXHAUSTED, RpcCode.NETWORK_EXCEPTION, Code.UNAVAILABLE),
]


def test_the_table_covers_every_status() -> None:
    assert {row[0] for row in RESPONSE_STATUSES} == set(Status)


@pytest.mark.parametrize(("status", "rpc_code", "code"), RESPONSE_STATUSES)
def test_response_status_to_grpc_code(status: Status, rpc_code: RpcCode | None, code: Code) -> None:
    assert rpc_code_for_response_status(status) is rpc_code
    assert grpc_code_for_response_status(status) is code
    assert grpc_code_for_response_status(int(status)) is code  # as read from a frame's byte


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        # TriRpcStatus.httpStatusToGrpcCode (doc/http-grpc-status-mapping.md, plus 1xx and 431).
        (100, Code.INTERNAL),
        (199, Code.INTERNAL),
        (200, Code.UNKNOWN),
        (400, Code.INTERNAL),
        (401, Code.UNAUTHENTICATED),
        (403, Code.PERMISSION_DENIED),
        (404, Code.UNIMPLEMENTED),
        (415, Code.UNKNOWN),
        (429, Code.UNAVAILABLE),
        (431, Code.INTERNAL),
        (500, Code.UNKNOWN),
        (502, Code.UNAVAILABLE),
        (503, Code.UNAVAILABLE),
        (504, Code.UNAVAILABLE),
    ],
)
def test_http_status_to_grpc_code(http_status: int, code: Code) -> None:
    assert grpc_code_for_http_status(http_status) is code


@pytest.mark.parametrize(
    ("error_code", "code"),
    [
        # PROTOCOL-HTTP2.md "Errors", RST_STREAM codes of RFC 9113 §7.
        (0x0, Code.INTERNAL),  # NO_ERROR
        (0x1, Code.INTERNAL),  # PROTOCOL_ERROR
        (0x2, Code.INTERNAL),  # INTERNAL_ERROR
        (0x3, Code.INTERNAL),  # FLOW_CONTROL_ERROR
        (0x4, Code.INTERNAL),  # SETTINGS_TIMEOUT
        (0x5, None),  # STREAM_CLOSED: no mapping
        (0x6, Code.INTERNAL),  # FRAME_SIZE_ERROR
        (0x7, Code.UNAVAILABLE),  # REFUSED_STREAM
        (0x8, Code.CANCELLED),  # CANCEL
        (0x9, Code.INTERNAL),  # COMPRESSION_ERROR
        (0xA, Code.INTERNAL),  # CONNECT_ERROR
        (0xB, Code.RESOURCE_EXHAUSTED),  # ENHANCE_YOUR_CALM
        (0xC, Code.PERMISSION_DENIED),  # INADEQUATE_SECURITY
        (0xD, Code.INTERNAL),  # HTTP_1_1_REQUIRED: not in the table, as unknown
        (0xFF, Code.INTERNAL),  # unknown: RFC 9113 §7, as INTERNAL_ERROR
    ],
)
def test_rst_stream_to_grpc_code(error_code: int, code: Code | None) -> None:
    assert grpc_code_for_rst_stream(error_code) is code


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("0", Code.OK),
        ("14", Code.UNAVAILABLE),
        ("16", Code.UNAUTHENTICATED),
        (b"4", Code.DEADLINE_EXCEEDED),
        ("007", Code.PERMISSION_DENIED),  # leading zeros: not sent, but read
        # "Error parsing returned status": UNKNOWN (statuscodes.md), as is a code gRPC lacks.
        ("17", Code.UNKNOWN),
        ("99999999999999999999", Code.UNKNOWN),
        ("", Code.UNKNOWN),
        ("-1", Code.UNKNOWN),
        ("+1", Code.UNKNOWN),
        ("1 ", Code.UNKNOWN),
        ("OK", Code.UNKNOWN),
        ("\u0663", Code.UNKNOWN),  # an Arabic-Indic digit
        (b"\xff", Code.UNKNOWN),
    ],
)
def test_parse_grpc_status(value: str | bytes, code: Code) -> None:
    assert parse_grpc_status(value) is code


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("", ""),
        ("no provider for com.example.Demo", "no provider for com.example.Demo"),
        (" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"),  # kept
        ("100%", "100%25"),
        ("a\nb\tc\r", "a%0Ab%09c%0D"),
        ("\x00\x1f\x7f", "%00%1F%7F"),
        ("\u00e9", "%C3%A9"),
        ("\u65e5\u672c", "%E6%97%A5%E6%9C%AC"),
        ("\U0001f600", "%F0%9F%98%80"),
        ("\ud800", "?"),  # a lone surrogate has no UTF-8
    ],
)
def test_encode_grpc_message(text: str, encoded: str) -> None:
    assert encode_grpc_message(text) == encoded


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("", ""),
        ("plain", "plain"),
        ("100%25", "100%"),
        ("%C3%A9", "\u00e9"),
        ("%c3%a9", "\u00e9"),  # RFC 3986 §2.1: either case of hex digit
        ("a+b", "a+b"),  # '+' is itself (Dubbo's QueryStringDecoder would make it a space)
        # Dubbo 3.3's encoding (Netty QueryStringEncoder: all but unreserved as %XX) reads the same.
        ("no%20provider%3A%20com.example.Demo", "no provider: com.example.Demo"),
        # Lenient: a broken %-sequence is kept as is (PROTOCOL-HTTP2.md: never an error).
        ("%", "%"),
        ("100%", "100%"),
        ("%4", "%4"),
        ("a%4", "a%4"),
        ("%zz", "%zz"),
        ("%%41", "%A"),
        ("%zz%41%", "%zzA%"),
        ("%G1%41", "%G1A"),
        # Bytes that are not UTF-8 become U+FFFD.
        ("%E6%97", "\ufffd"),
        ("%FF", "\ufffd"),
        (b"%E6%97%A5", "\u65e5"),
        (b"raw \xe6\x97\xa5", "raw \u65e5"),  # raw UTF-8 (not allowed, but read)
        (b"\xff%41", "\ufffdA"),
    ],
)
def test_decode_grpc_message(value: str | bytes, text: str) -> None:
    assert decode_grpc_message(value) == text


@given(st.text())
def test_encode_then_decode_is_the_text(text: str) -> None:
    encoded = encode_grpc_message(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert decode_grpc_message(encoded) == text
        assert decode_grpc_message(encoded.encode("ascii")) == text


@given(st.binary())
def test_decode_never_raises(value: bytes) -> None:
    assert isinstance(decode_grpc_message(value), str)
    assert isinstance(decode_grpc_message(value.decode("latin-1")), str)


def test_limit_message_is_dubbos_1kb() -> None:
    # TriRpcStatus.limitSizeTo1KB: 1024 characters, cut before encoding.
    assert MESSAGE_LIMIT == 1024
    assert limit_message("x" * 1023) == "x" * 1023
    assert limit_message("x" * 1024) == "x" * 1024
    assert limit_message("x" * 5000) == "x" * 1024


def test_triple_error_trailers() -> None:
    error = TripleError("timed out after 3000 ms: 100% of it", Code.DEADLINE_EXCEEDED)
    assert error.trailers() == [
        ("grpc-status", "4"),
        ("grpc-message", "timed out after 3000 ms: 100%25 of it"),
    ]
    assert error.http_status == 200
    assert str(error) == error.message
    assert "DEADLINE_EXCEEDED" in repr(error)
    long = TripleError("\u00e9" * 2000)
    assert long.code is Code.INTERNAL
    assert long.trailers()[1][1] == "%C3%A9" * 1024


# regproxy's own errors, and the Dubbo 3.3 fact each follows.
PROXY_ERRORS = [
    (NO_PROVIDER, Code.UNAVAILABLE),
    (UNREACHABLE, Code.UNAVAILABLE),
    (TIMEOUT, Code.DEADLINE_EXCEEDED),
    (RATE_LIMITED, Code.UNAVAILABLE),
    (LOOP, Code.INTERNAL),
    (BAD_REQUEST, Code.INTERNAL),
    (TOO_LARGE, Code.RESOURCE_EXHAUSTED),
]


def test_the_table_covers_every_proxy_error() -> None:
    assert {cause for cause, _ in PROXY_ERRORS} == set(PROXY_ERROR_CODES)


@pytest.mark.parametrize(("cause", "code"), PROXY_ERRORS)
def test_proxy_errors(cause: str, code: Code) -> None:
    error = proxy_error(cause, f"{cause}: com.example.Demo")
    assert error.code is code
    assert error.message == f"{cause}: com.example.Demo"
    assert error.http_status == 200


def test_proxy_errors_agree_with_dubbo_where_dubbo_has_the_case() -> None:
    # No provider: regproxy's ingress answers a Dubbo caller 60; Dubbo 3.3 makes 60 UNAVAILABLE.
    assert PROXY_ERROR_CODES[NO_PROVIDER] is grpc_code_for_response_status(Status.SERVICE_NOT_FOUND)
    # Nothing sent: 80 at the egress, UNAVAILABLE in Dubbo 3.3 too.
    assert PROXY_ERROR_CODES[UNREACHABLE] is grpc_code_for_response_status(Status.SERVER_ERROR)
    assert PROXY_ERROR_CODES[TIMEOUT] is grpc_code_for_response_status(Status.CLIENT_TIMEOUT)
    assert PROXY_ERROR_CODES[TIMEOUT] is grpc_code_for_response_status(Status.SERVER_TIMEOUT)
    # Rate limited: 100 to a Dubbo caller; Dubbo's own limits raise LIMIT_EXCEEDED_EXCEPTION.
    assert PROXY_ERROR_CODES[RATE_LIMITED] is grpc_code_for_response_status(
        Status.SERVER_THREADPOOL_EXHAUSTED
    )
    assert PROXY_ERROR_CODES[RATE_LIMITED] is grpc_code_for_rpc_code(RpcCode.LIMIT_EXCEEDED_EXCEPTION)
    # A request that cannot be read: Dubbo's answer to a bad HTTP request, 400, is INTERNAL.
    assert PROXY_ERROR_CODES[BAD_REQUEST] is grpc_code_for_http_status(400)


def test_a_loop_is_not_answered_as_retryable() -> None:
    # Dubbo's chain would make the loop's 80 UNAVAILABLE, which a gRPC retry policy may retry.
    assert grpc_code_for_response_status(Status.SERVER_ERROR) is Code.UNAVAILABLE
    assert PROXY_ERROR_CODES[LOOP] is not Code.UNAVAILABLE


def test_an_unknown_cause_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        proxy_error("nonsense", "x")
