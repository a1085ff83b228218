"""MetadataService.getMetadataInfo over the Dubbo protocol: regproxy as the consumer and as the provider.

Where each fact comes from (apache/dubbo 3.3):

* path, version ``1.0.0``, group = application, the ``timeout`` default 5000 and the url-params laid
  over it: dubbo-registry/dubbo-registry-api/.../registry/client/metadata/
  StandardMetadataServiceURLBuilder.java, MetadataService.java (VERSION), MetadataConstants.java
* the attachments a consumer sends (path, version, group, timeout; token when set) and the head:
  dubbo-rpc/dubbo-rpc-dubbo/.../DubboInvoker.java (doInvoke), dubbo-rpc/dubbo-rpc-api/.../
  AbstractInvoker.java (keys interface/group/token), DubboCodec.java (encodeRequestData)
* null for an unknown or empty revision: .../registry/client/metadata/MetadataServiceDelegation.java
* flags 4/5 with ``dubbo=2.0.2`` for 2.0.2 consumers, 1/2 for older: DubboCodec.encodeResponseData
* SERVICE_ERROR "Not found exported service" for a group/version not exported (DubboProtocol
  .getInvoker), BAD_REQUEST "Service not found:<path>, <method>" for a method the interface lacks
  (DecodeableRpcInvocation.decode), both through HeaderExchangeHandler.handleRequest
* Java writes ``MetadataInfo.services`` as a typed ``java.util.concurrent.ConcurrentHashMap`` and
  ``params`` as an untyped ``HashMap`` (hessian-lite's MapSerializer).
"""

from __future__ import annotations

import struct

import pytest

from regproxy.dubbo.encode import (
    decode_response,
    encode_error,
    encode_request,
    encode_response,
    java_exception,
)
from regproxy.dubbo.frame import Frame, Status
from regproxy.dubbo.hessian2 import JavaObject
from regproxy.dubbo.metadata_service import (
    METADATA_SERVICE,
    MetadataServiceError,
    answer_metadata_request,
    decode_metadata_response,
    encode_metadata_request,
    is_metadata_service_request,
)
from regproxy.dubbo.request import RequestBody
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo, to_java_object

APP = "demo-provider"
INSTANCE = "10.0.0.7:20880"
GREETER = ServiceInfo(
    "org.example.Greeter",
    group="g1",
    version="1.0",
    protocol="dubbo",
    port=20880,
    path="org.example.Greeter",
    params={"methods": "greet", "timeout": "3000"},
)
INFO = MetadataInfo.of(APP, [GREETER])
OTHER = MetadataInfo.of(APP, [ServiceInfo("org.example.Other", protocol="dubbo", port=20880)])
INFOS = {INFO.revision or "": INFO, OTHER.revision or "": OTHER}
URL_PARAMS = {"version": "1.0.0", "dubbo": "2.0.2", "release": "3.3.2", "port": "20880", "protocol": "dubbo"}


def _str(text: str) -> bytes:
    """A hessian2 string of ASCII, short (< 32) or medium (< 1024) form."""
    raw = text.encode()
    n = len(raw)
    return (bytes((n,)) if n < 32 else bytes((0x30 | (n >> 8), n & 0xFF))) + raw


def _frame(flag: int, status: int, request_id: int, body: bytes) -> bytes:
    return struct.pack(">HBBqI", 0xDABB, flag, status, request_id, len(body)) + body


def _ask(request: bytes) -> tuple[Frame, RequestBody]:
    frame = Frame.of(request)
    return frame, RequestBody(frame.body)


def _body(request: bytes) -> RequestBody:
    return _ask(request)[1]


def _answer(request: bytes, infos: dict[str, MetadataInfo] | None = None) -> Frame:
    frame, body = _ask(request)
    assert is_metadata_service_request(body)
    answer = answer_metadata_request(frame, body, APP, INFOS if infos is None else infos)
    assert answer is not None
    return Frame.of(answer)


# --- the request, as a Java 3.3 consumer sends it ---------------------------------------------------


def test_request_matches_the_bytes_written_from_the_spec() -> None:
    revision = INFO.revision or ""
    body = b"".join(
        (
            _str("2.0.2"),  # Version.getProtocolVersion
            _str(METADATA_SERVICE),  # no interface parameter: the path
            _str("1.0.0"),
            _str("getMetadataInfo"),
            _str("Ljava/lang/String;"),
            _str(revision),
            b"H",
            _str("path") + _str(METADATA_SERVICE),
            _str("version") + _str("1.0.0"),
            _str("group") + _str(APP),
            _str("timeout") + _str("5000"),
            b"Z",
        )
    )
    # request, two-way, hessian2 (2); status byte 0 in a request
    expected = _frame(0xC2, 0, 42, body)
    assert encode_metadata_request(42, APP, revision, url_params=URL_PARAMS) == expected
    # An instance without url-params: generateUrlWithoutMetadata's version 1.0.0, the same request.
    assert encode_metadata_request(42, APP, revision) == expected


def test_request_takes_version_timeout_and_token_from_the_url_params() -> None:
    params = {**URL_PARAMS, "version": "2.0.0", "timeout": "700", "token": "s3cret"}
    body = _body(encode_metadata_request(7, APP, "abc", url_params=params, timeout_ms=1234))
    assert (body.path, body.version, body.method, body.param_types) == (
        METADATA_SERVICE,
        "2.0.0",
        "getMetadataInfo",
        "Ljava/lang/String;",
    )
    assert body.arguments() == ["abc"]
    assert dict(body.attachments) == {
        "path": METADATA_SERVICE,
        "version": "2.0.0",
        "group": APP,
        "timeout": "700",
        "token": "s3cret",
    }
    # url-params without a version: AbstractInvoker's 0.0.0; the consumer's own timeout.
    body = _body(encode_metadata_request(8, APP, "abc", url_params={"protocol": "dubbo"}, timeout_ms=1234))
    assert body.version == "0.0.0"
    assert body.attachments["timeout"] == "1234"


def test_request_refuses_a_metadata_service_on_another_protocol() -> None:
    with pytest.raises(ValueError, match="'tri', not dubbo"):
        encode_metadata_request(1, APP, "abc", url_params={**URL_PARAMS, "protocol": "tri"})


# --- round trips ------------------------------------------------------------------------------------


def test_round_trip_with_response_attachments() -> None:
    revision = INFO.revision or ""
    response = _answer(encode_metadata_request(9, APP, revision, url_params=URL_PARAMS))
    assert response.request_id == 9
    assert response.status == Status.OK
    assert response.body[0] == 0x94  # flag 4: RESPONSE_VALUE_WITH_ATTACHMENTS
    assert decode_metadata_response(response, instance=INSTANCE, revision=revision) == INFO
    generic = decode_response(response)
    assert generic.ok
    assert generic.value == to_java_object(INFO)
    assert generic.attachments == {"dubbo": "2.0.2"}


def test_round_trip_for_a_consumer_without_response_attachments() -> None:
    revision = OTHER.revision or ""
    request = encode_request(
        3,
        METADATA_SERVICE,
        "getMetadataInfo",
        [revision],
        version="1.0.0",
        group=APP,
        dubbo_version="2.0.0",
    )
    response = _answer(request)
    assert response.body[0] == 0x91  # flag 1: RESPONSE_VALUE, no attachments after it
    assert decode_metadata_response(response, instance=INSTANCE, revision=revision) == OTHER
    assert decode_response(response).attachments == {}


def test_get_metadata_infos_lists_every_revision() -> None:
    request = encode_request(4, METADATA_SERVICE, "getMetadataInfos", [], version="1.0.0", group=APP)
    generic = decode_response(_answer(request))
    assert generic.ok
    assert generic.value == [to_java_object(INFO), to_java_object(OTHER)]


@pytest.mark.parametrize(
    ("revision", "infos"),
    [
        ("0123456789abcdef0123456789abcdef", INFOS),  # not one of ours
        ("", INFOS),  # StringUtils.isEmpty(revision)
        ("stale", {"stale": INFO}),  # the info carries another revision
    ],
)
def test_unknown_revision_is_answered_with_null_as_dubbo_does(
    revision: str, infos: dict[str, MetadataInfo]
) -> None:
    response = _answer(encode_metadata_request(5, APP, revision, url_params=URL_PARAMS), infos)
    assert response.status == Status.OK
    generic = decode_response(response)
    assert generic.ok and generic.value is None
    assert response.body[0] == 0x95  # flag 5: RESPONSE_NULL_VALUE_WITH_ATTACHMENTS
    with pytest.raises(MetadataServiceError, match=rf"getMetadataInfo\('{revision}'\) on {INSTANCE}.*null"):
        decode_metadata_response(response, instance=INSTANCE, revision=revision)


def test_null_revision_argument_is_answered_with_null() -> None:
    request = encode_request(
        6,
        METADATA_SERVICE,
        "getMetadataInfo",
        [None],
        version="1.0.0",
        group=APP,
        param_types="Ljava/lang/String;",
    )
    generic = decode_response(_answer(request))
    assert generic.ok and generic.value is None


# --- what the ingress refuses, as Java does -------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "group"),
    [("1.0.0", "another-app"), ("2.0.0", APP), ("1.0.0", "")],
)
def test_other_group_or_version_is_not_exported(version: str, group: str) -> None:
    request = encode_request(11, METADATA_SERVICE, "getMetadataInfo", ["r"], version=version, group=group)
    response = _answer(request)
    assert response.status == Status.SERVICE_ERROR
    error = decode_response(response).error or ""
    assert error.startswith("Not found exported service: ")
    assert f"[{APP}/{METADATA_SERVICE}:1.0.0]" in error
    with pytest.raises(
        MetadataServiceError, match=rf"on {INSTANCE} failed with status SERVICE_ERROR: Not found"
    ):
        decode_metadata_response(response, instance=INSTANCE, revision="r")


@pytest.mark.parametrize(
    ("method", "args", "param_types"),
    [
        ("serviceName", [], ""),  # in MetadataService, not served by regproxy
        ("getMetadataInfo", [1], "I"),  # another descriptor
        ("getMetadataInfos", ["x"], "Ljava/lang/String;"),
        ("noSuchMethod", [], ""),
    ],
)
def test_other_methods_are_refused(method: str, args: list[object], param_types: str) -> None:
    request = encode_request(
        12, METADATA_SERVICE, method, args, version="1.0.0", group=APP, param_types=param_types
    )
    response = _answer(request)
    assert response.status == Status.BAD_REQUEST
    error = decode_response(response).error or ""
    assert error.startswith(
        "Fail to decode request due to: java.lang.IllegalArgumentException: "
        f"Service not found:{METADATA_SERVICE}, {method}"
    )


def test_other_serialization_is_refused() -> None:
    request = bytearray(encode_metadata_request(13, APP, "r"))
    request[2] = (request[2] & 0xE0) | 22  # protobuf's id: a body regproxy cannot read
    frame = Frame.of(bytes(request))
    answer = answer_metadata_request(frame, RequestBody(frame.body), APP, INFOS)
    assert answer is not None
    response = Frame.of(answer)
    assert response.status == Status.BAD_REQUEST
    assert "serialization id 22" in (decode_response(response).error or "")


def test_one_way_request_gets_no_answer() -> None:
    request = encode_request(
        14, METADATA_SERVICE, "getMetadataInfo", [INFO.revision], version="1.0.0", group=APP, two_way=False
    )
    frame, body = _ask(request)
    assert answer_metadata_request(frame, body, APP, INFOS) is None


def test_other_services_are_not_the_metadata_services() -> None:
    body = _body(encode_request(15, "org.example.Greeter", "greet", ["x"], group=APP))
    assert not is_metadata_service_request(body)


# --- responses from a Java provider, and malformed ones ------------------------------------------------


def test_java_shaped_response_written_from_the_spec() -> None:
    revision = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    service_fields = ("name", "group", "version", "protocol", "port", "path", "params")
    body = b"".join(
        (
            b"\x94",  # flag 4 as a compact int
            b"C" + _str("org.apache.dubbo.metadata.MetadataInfo") + b"\x93",
            _str("app") + _str("revision") + _str("services"),
            b"\x60",  # an object of class definition 0
            _str(APP) + _str(revision),
            b"M" + _str("java.util.concurrent.ConcurrentHashMap"),  # Java's typed map
            _str("g1/org.example.Greeter:1.0:dubbo"),
            b"C" + _str("org.apache.dubbo.metadata.MetadataInfo$ServiceInfo") + b"\x97",
            b"".join(_str(name) for name in service_fields),
            b"\x61",  # an object of class definition 1
            _str("org.example.Greeter") + _str("g1") + _str("1.0") + _str("dubbo"),
            b"\xd4\x51\x90",  # 20880 as a three-byte int
            _str("org.example.Greeter"),
            b"H" + _str("methods") + _str("greet") + _str("timeout") + _str("3000") + b"Z",
            b"Z",
            b"H" + _str("dubbo") + _str("2.0.2") + b"Z",
        )
    )
    info = decode_metadata_response(Frame.of(_frame(0x02, 20, 1, body)), instance=INSTANCE, revision=revision)
    assert info == MetadataInfo(APP, revision, {"g1/org.example.Greeter:1.0:dubbo": GREETER})
    assert info.calculated_revision() == INFO.revision


def _response(value: object = None, **kwargs: object) -> Frame:
    return Frame.of(encode_response(21, value, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            Frame.of(encode_error(21, Status.SERVER_THREADPOOL_EXHAUSTED, "pool full")),
            "SERVER_THREADPOOL_EXHAUSTED: pool full",
        ),
        (Frame.of(encode_error(21, 77, "odd")), "status 77: odd"),
        (
            _response(exception=java_exception("boom", "java.lang.IllegalStateException")),
            "threw java.lang.IllegalStateException: boom",
        ),
        (_response(None), "no metadata for that revision"),
        (_response("not an object"), "expected an object of class org.apache.dubbo.metadata.MetadataInfo"),
        (_response(JavaObject("java.util.HashMap", {})), "got java.util.HashMap"),
        (_response(to_java_object(OTHER)), f"answered the metadata of revision '{OTHER.revision}'"),
        (Frame.of(_frame(0x02, 20, 21, b"\x99")), "malformed response: response flag 9"),
        (
            Frame.of(_frame(0x02, 20, 21, encode_response(21, to_java_object(INFO))[16:-3])),
            "malformed response",
        ),
        (Frame.of(_frame(0x02, 20, 21, b"")), "malformed response"),
    ],
)
def test_failed_or_malformed_responses_name_instance_and_revision(frame: Frame, message: str) -> None:
    revision = INFO.revision or ""
    with pytest.raises(
        MetadataServiceError, match=rf"getMetadataInfo\('{revision}'\) on {INSTANCE}"
    ) as caught:
        decode_metadata_response(frame, instance=INSTANCE, revision=revision)
    assert message in str(caught.value)
