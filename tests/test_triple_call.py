"""A Triple call's routing facts from its request headers (regproxy.triple.call): what Dubbo 3.3
sends (RequestMetadata.toHeaders, StreamUtils.putHeaders) and reads (GrpcRequestHandlerMapping,
StreamUtils.toAttachments, TripleHeaderEnum), and grpc/grpc doc/PROTOCOL-HTTP2.md."""

from __future__ import annotations

import dataclasses

import pytest

from regproxy.triple.call import (
    DUBBO_INTERNAL_KEYS,
    TRIPLE_HEADERS,
    TripleCall,
    parse_call,
    parse_content_type,
    parse_path,
)
from regproxy.triple.status import Code, TripleError

Headers = list[tuple[str | bytes, str | bytes]]


def request(*extra: tuple[str, str], path: str = "/org.apache.dubbo.demo.DemoService/sayHello") -> Headers:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "10.0.0.7:50051"),
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
        *extra,
    ]


def as_bytes(headers: Headers) -> Headers:
    return [
        (n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v) for n, v in headers
    ]


def test_a_dubbo_consumers_request() -> None:
    # RequestMetadata.toHeaders, in its order, as h2 gives them (bytes); attachments after it.
    headers = as_bytes(
        [
            (":scheme", "http"),
            (":authority", "10.0.0.7:50051"),
            (":method", "POST"),
            (":path", "/org.apache.dubbo.demo.DemoService/sayHello"),
            ("content-type", "application/grpc+proto"),
            ("te", "trailers"),
            ("grpc-timeout", "3000m"),
            ("tri-service-version", "2.0.0"),
            ("tri-service-group", "blue"),
            ("tri-consumer-appname", "demo-consumer"),
            ("grpc-accept-encoding", "identity,gzip"),
            ("dubbo.tag", "gray"),
            ("traceid", "abc123"),
            ("tri-header-convert", "%7B%22traceid%22%3A%22traceId%22%7D"),
        ]
    )
    assert parse_call(headers) == TripleCall(
        service="org.apache.dubbo.demo.DemoService",
        method="sayHello",
        version="2.0.0",
        group="blue",
        application="demo-consumer",
        timeout_ms=3000,
        content_type="application/grpc+proto",
        message_format="proto",
        encoding="identity",
        authority="10.0.0.7:50051",
        attachments=(("te", "trailers"), ("dubbo.tag", "gray"), ("traceId", "abc123")),
    )


def test_a_python_sdk_request() -> None:
    # apache/dubbo-python RequestMetadata.to_headers: content type application/grpc+data, no
    # version header for 1.0.0, attachments as str().
    call = parse_call(
        [
            (":scheme", "http"),
            (":authority", "127.0.0.1:50051"),
            (":method", "POST"),
            (":path", "/org.apache.dubbo.samples.HelloWorld/sayHello"),
            ("content-type", "application/grpc+data"),
            ("tri-consumer-appname", "py-consumer"),
        ]
    )
    assert call.message_format == "data"
    assert call.version == "" and call.group == ""
    assert call.application == "py-consumer"
    assert call.timeout_ms is None


def test_a_grpc_clients_request() -> None:
    # What a grpcio client sends: bare application/grpc (protobuf), microsecond timeouts.
    call = parse_call(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/helloworld.Greeter/SayHello"),
            (":authority", "localhost:50051"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-python/1.85.3 grpc-c/50.0.0 (linux; chttp2)"),
            ("grpc-accept-encoding", "identity, deflate, gzip"),
            ("grpc-timeout", "4999871u"),
            ("grpc-encoding", "gzip"),
        ]
    )
    assert (call.service, call.method) == ("helloworld.Greeter", "SayHello")
    assert call.path == "/helloworld.Greeter/SayHello"
    assert call.message_format == "proto"
    assert call.timeout_ms == 5000  # rounded up
    assert call.encoding == "gzip"
    assert call.attachment("user-agent") == "grpc-python/1.85.3 grpc-c/50.0.0 (linux; chttp2)"
    assert call.attachment("grpc-accept-encoding") is None


def test_defaults_without_optional_headers() -> None:
    call = parse_call(request())
    assert (call.version, call.group, call.application, call.timeout_ms) == ("", "", "", None)
    assert call.encoding == "identity"


def test_the_call_is_frozen() -> None:
    call = parse_call(request())
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.service = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "service", "method"),
    [
        ("/org.apache.dubbo.demo.DemoService/sayHello", "org.apache.dubbo.demo.DemoService", "sayHello"),
        ("/helloworld.Greeter/SayHello", "helloworld.Greeter", "SayHello"),
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.Health", "Check"),
        ("/a/b", "a", "b"),
        ("/Svc$Inner/m_1", "Svc$Inner", "m_1"),
    ],
)
def test_parse_path(path: str, service: str, method: str) -> None:
    assert parse_path(path) == (service, method)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "//",
        "/svc",
        "/svc/",
        "//method",
        "svc/method",
        "/ctx/org.apache.dubbo.demo.DemoService/sayHello",  # Dubbo's context path: not taken
        "/svc/method/",
        "/svc//method",
    ],
)
def test_bad_paths_are_unimplemented(path: str) -> None:
    with pytest.raises(TripleError) as caught:
        parse_call(request(path=path))
    assert caught.value.code is Code.UNIMPLEMENTED
    assert caught.value.http_status == 200
    assert repr(path) in caught.value.message


def test_a_long_bad_path_is_cut_in_the_message() -> None:
    with pytest.raises(TripleError) as caught:
        parse_path("/" + "x" * 10_000)
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("content_type", "message_format"),
    [
        ("application/grpc", "proto"),
        ("application/grpc+proto", "proto"),  # Dubbo's MediaType.APPLICATION_GRPC_PROTO
        ("application/grpc+json", "json"),
        ("application/grpc+data", "data"),  # apache/dubbo-python's APPLICATION_GRPC_PROTO
        ("application/grpc;charset=utf-8", "proto"),
        ("application/grpc+json; charset=utf-8", "json"),
        ("Application/GRPC+JSON", "json"),
        ("application/grpc+", "proto"),
    ],
)
def test_grpc_content_types(content_type: str, message_format: str) -> None:
    assert parse_content_type(content_type) == message_format
    call = parse_call([*request()[:4], ("content-type", content_type)])
    assert call.content_type == content_type
    assert call.message_format == message_format


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",  # Triple's HTTP mode (GenericHttp2ServerTransportListener): not carried
        "application/grpcx",  # GrpcUtils.isGrpcRequest takes it (startsWith); the spec does not
        "application/grpc-web",
        "text/plain",
        "",
    ],
)
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(TripleError) as caught:
        parse_call([*request()[:4], ("content-type", content_type)])
    assert caught.value.http_status == 415
    assert caught.value.code is Code.INTERNAL
    assert repr(content_type) in caught.value.message


def test_no_content_type_is_415() -> None:
    with pytest.raises(TripleError) as caught:
        parse_call(request()[:4])
    assert caught.value.http_status == 415


@pytest.mark.parametrize("method", ["GET", "PUT", "post"])
def test_only_post(method: str) -> None:
    headers = request()
    headers[0] = (":method", method)
    with pytest.raises(TripleError) as caught:
        parse_call(headers)
    assert caught.value.http_status == 405
    assert repr(method) in caught.value.message


def test_no_method_and_no_path() -> None:
    with pytest.raises(TripleError) as caught:
        parse_call(request()[1:])
    assert caught.value.http_status == 405
    with pytest.raises(TripleError) as no_path:
        parse_call([h for h in request() if h[0] != ":path"])
    assert no_path.value.code is Code.UNIMPLEMENTED


@pytest.mark.parametrize(
    "name",
    [
        ":path",
        "content-type",
        "grpc-timeout",
        "tri-service-version",
        "tri-service-group",
        "tri-consumer-appname",
    ],
)
def test_a_repeated_routing_header_is_refused(name: str) -> None:
    values = {":path": "/a/b", "content-type": "application/grpc", "grpc-timeout": "1S"}
    value = values.get(name, "x")
    with pytest.raises(TripleError) as caught:
        parse_call(request((name, value), (name, value)))
    assert caught.value.code is Code.INTERNAL
    assert f"header {name} repeated" in caught.value.message


def test_a_repeated_encoding_takes_the_first() -> None:
    # dubbo-python can send grpc-encoding twice (its accept-encoding goes there too).
    call = parse_call(request(("grpc-encoding", "gzip"), ("grpc-encoding", "identity")))
    assert call.encoding == "gzip"


@pytest.mark.parametrize(
    ("value", "ms"),
    [("1S", 1000), ("1H", 3_600_000), ("250m", 250), ("172800000m", 172_800_000), ("1n", 1)],
)
def test_the_deadline(value: str, ms: int) -> None:
    # 172800000m: a Dubbo consumer's two-day timeout, 9 digits (TripleInvoker: timeout + "m").
    assert parse_call(request(("grpc-timeout", value))).timeout_ms == ms


@pytest.mark.parametrize("value", ["", "1", "1x", "-5m", "soon", "1" * 19 + "m"])
def test_a_malformed_deadline_is_refused_naming_it(value: str) -> None:
    with pytest.raises(TripleError) as caught:
        parse_call(request(("grpc-timeout", value)))
    assert caught.value.code is Code.INTERNAL
    assert repr(value) in caught.value.message


@pytest.mark.parametrize(
    "name",
    [
        *sorted(TRIPLE_HEADERS | DUBBO_INTERNAL_KEYS),
        "grpc-previous-rpc-attempts",
        "grpc-message-type",
        "grpc-trace-bin",
        "group-bin",
        "application-bin",
    ],
)
def test_reserved_headers_are_not_attachments(name: str) -> None:
    assert parse_call(request((name, "1S" if name == "grpc-timeout" else "v"))).attachment(name) is None


def test_the_reserved_lists_are_dubbos() -> None:
    # TripleHeaderEnum's names, and excludeAttachmentsSet's internal keys (3.3).
    assert set(TRIPLE_HEADERS) == {
        "http-status",
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "tri-consumer-appname",
        "tri-service-version",
        "tri-service-group",
        "tri-service-timeout",
        "tri-header-convert",
        "tri-exception-code",
    }
    assert set(DUBBO_INTERNAL_KEYS) == {
        "group",
        "interface",
        "path",
        "remote.application",
        "application",
        "serialization",
        "rest-service-version",
        "rest-service-group",
    }


def test_attachments_keep_order_repeats_and_the_rest() -> None:
    call = parse_call(
        request(
            ("dubbo.tag", "gray"),
            ("x-b", "1"),
            ("x-a", "2"),
            ("x-b", "3"),
            ("token-bin", "AAEC"),
            ("tri-other", "kept"),  # only TripleHeaderEnum's tri- names are reserved
            ("version", "1.0.0"),  # not in Dubbo's internal keys
            ("timeout", "3000"),
        )
    )
    assert call.attachments == (
        ("te", "trailers"),
        ("dubbo.tag", "gray"),
        ("x-b", "1"),
        ("x-a", "2"),
        ("x-b", "3"),
        ("token-bin", "AAEC"),
        ("tri-other", "kept"),
        ("version", "1.0.0"),
        ("timeout", "3000"),
    )
    assert call.attachment("x-b") == "1"
    assert call.attachment("missing") is None


def test_header_convert_restores_the_case_of_names() -> None:
    # StreamUtils.putHeaders: lower-case names, byte arrays under name-bin, and the map
    # {lower: original} as TriRpcStatus.encodeMessage(JSON); toAttachments maps them back.
    convert = "%7B%22traceid%22%3A%22traceId%22%2C%22tokenbytes%22%3A%22tokenBytes%22%7D"
    call = parse_call(
        request(
            ("traceid", "abc"), ("tokenbytes-bin", "AAEC"), ("other", "x"), ("tri-header-convert", convert)
        )
    )
    assert call.attachments == (
        ("te", "trailers"),
        ("traceId", "abc"),
        ("tokenBytes-bin", "AAEC"),
        ("other", "x"),
    )


@pytest.mark.parametrize("convert", ["not json", "%7B", "[1, 2]", '{"traceid": 5}', "null"])
def test_a_bad_header_convert_leaves_names_as_they_are(convert: str) -> None:
    call = parse_call(request(("traceid", "abc"), ("tri-header-convert", convert)))
    assert call.attachment("traceid") == "abc"


def test_bytes_and_text_headers_read_the_same() -> None:
    headers = request(("grpc-timeout", "2S"), ("tri-service-group", "g"), ("x-k", "v"))
    assert parse_call(as_bytes(headers)) == parse_call(headers)


def test_a_value_that_is_not_utf8_does_not_fail() -> None:
    call = parse_call([*as_bytes(request()), (b"x-raw", b"\xff\xfeok")])
    assert call.attachment("x-raw") == "\ufffd\ufffdok"


def test_upper_case_names_are_read_lower_case() -> None:
    # RFC 9113 §8.2.1 makes them malformed; h2 refuses them unless told not to. Read anyway.
    call = parse_call(
        [(":method", "POST"), (":path", "/a/b"), ("Content-Type", "application/grpc"), ("X-K", "v")]
    )
    assert call.attachment("x-k") == "v"
