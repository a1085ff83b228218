"""Building Dubbo frames: what the proxy emits itself, and full requests/responses for the demo
provider, the demo consumer and the benchmark client. Sans-IO: every function returns bytes."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from regproxy.dubbo.frame import (
    FLAG_EVENT,
    FLAG_REQUEST,
    FLAG_TWOWAY,
    HEADER_LEN,
    HESSIAN2,
    REQUEST_ID,
    Frame,
    Status,
    pack_header,
)
from regproxy.dubbo.hessian2 import (
    Hessian2Error,
    Hessian2Reader,
    Hessian2Writer,
    JavaObject,
    Long,
    encode_value,
)

DUBBO_VERSION = "2.0.2"

# Response body flags (hessian2 int before the value).
RESPONSE_WITH_EXCEPTION = 0
RESPONSE_VALUE = 1
RESPONSE_NULL_VALUE = 2
RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS = 3
RESPONSE_VALUE_WITH_ATTACHMENTS = 4
RESPONSE_NULL_VALUE_WITH_ATTACHMENTS = 5

_REQ_FLAG = FLAG_REQUEST | FLAG_TWOWAY | HESSIAN2
_ONEWAY_FLAG = FLAG_REQUEST | HESSIAN2
_RESP_FLAG = HESSIAN2
_NULL = b"N"


def heartbeat_request(request_id: int) -> bytes:
    return pack_header(FLAG_REQUEST | FLAG_TWOWAY | FLAG_EVENT | HESSIAN2, 0, request_id, 1) + _NULL


def heartbeat_reply(request_id: int) -> bytes:
    return pack_header(FLAG_EVENT | HESSIAN2, Status.OK, request_id, 1) + _NULL


def readonly_event(request_id: int) -> bytes:
    """One-way event a provider sends before shutting down: consumers stop picking this connection."""
    body = encode_value("R")
    return pack_header(FLAG_REQUEST | FLAG_EVENT | HESSIAN2, 0, request_id, len(body)) + body


def encode_error(request_id: int, status: int, message: str) -> bytes:
    """A response with a non-OK status: its body is one hessian2 string, the message."""
    body = encode_value(message)
    return pack_header(_RESP_FLAG, status, request_id, len(body)) + body


def with_request_id(head: bytes, request_id: int) -> bytes:
    """A frame header with another request id; the body is sent unchanged, not re-encoded."""
    return head[:4] + REQUEST_ID.pack(request_id) + head[12:HEADER_LEN]


def _java_descriptor(value: Any) -> str:
    if isinstance(value, bool):
        return "Z"
    if isinstance(value, Long):
        return "J"
    if isinstance(value, int):
        return "I" if -(2**31) <= value < 2**31 else "J"
    if isinstance(value, float):
        return "D"
    if isinstance(value, str):
        return "Ljava/lang/String;"
    if isinstance(value, (bytes, bytearray)):
        return "[B"
    if isinstance(value, JavaObject):
        return "L" + value.class_name.replace(".", "/") + ";"
    if isinstance(value, (list, tuple)):
        return "Ljava/util/List;"
    if isinstance(value, Mapping):
        return "Ljava/util/Map;"
    if isinstance(value, datetime.datetime):
        return "Ljava/util/Date;"
    return "Ljava/lang/Object;"


def param_descriptor(args: Sequence[Any]) -> str:
    """A JVM descriptor for Python arguments, as a Java consumer would declare them."""
    return "".join(_java_descriptor(a) for a in args)


def encode_request(
    request_id: int,
    service: str,
    method: str,
    args: Sequence[Any] = (),
    *,
    version: str = "0.0.0",
    group: str = "",
    dubbo_version: str = DUBBO_VERSION,
    attachments: Mapping[str, Any] | None = None,
    param_types: str | None = None,
    two_way: bool = True,
) -> bytes:
    writer = Hessian2Writer()
    writer.write_string(dubbo_version)
    writer.write_string(service)
    writer.write_string(version or "0.0.0")
    writer.write_string(method)
    writer.write_string(param_descriptor(args) if param_types is None else param_types)
    for arg in args:
        writer.write_value(arg)
    att: dict[str, Any] = {"path": service, "interface": service}
    if version and version != "0.0.0":
        att["version"] = version
    if group:
        att["group"] = group
    if attachments:
        att.update(attachments)
    writer.write_value(att)
    body = writer.getvalue()
    return pack_header(_REQ_FLAG if two_way else _ONEWAY_FLAG, 0, request_id, len(body)) + body


def supports_response_attachments(dubbo_version: str) -> bool:
    """Providers answer with flags 3/4/5 only to consumers that say 2.0.2 .. 2.0.99."""
    parts = dubbo_version.split(".")
    if len(parts) != 3 or parts[:2] != ["2", "0"] or not parts[2].isdigit():
        return False
    return 2 <= int(parts[2]) <= 99


def encode_response(
    request_id: int,
    value: Any = None,
    *,
    exception: Any = None,
    attachments: Mapping[str, Any] | None = None,
) -> bytes:
    """An OK response carrying a value, null, or an application exception (a Java Throwable).

    With ``attachments`` not None the 3/4/5 flags are used (only for consumers that accept them,
    see ``supports_response_attachments``).
    """
    writer = Hessian2Writer()
    extra = 3 if attachments is not None else 0
    if exception is not None:
        writer.write_int(RESPONSE_WITH_EXCEPTION + extra)
        writer.write_value(exception)
    elif value is None:
        writer.write_int(RESPONSE_NULL_VALUE + extra)
    else:
        writer.write_int(RESPONSE_VALUE + extra)
        writer.write_value(value)
    if attachments is not None:
        writer.write_value(dict(attachments))
    body = writer.getvalue()
    return pack_header(_RESP_FLAG, Status.OK, request_id, len(body)) + body


def java_exception(message: str, class_name: str = "java.lang.RuntimeException") -> JavaObject:
    """A Throwable as Java peers serialize it (hessian-lite writes detailMessage among its fields)."""
    return JavaObject(class_name, {"detailMessage": message, "stackTrace": [], "suppressedExceptions": []})


@dataclass(slots=True)
class Response:
    request_id: int
    status: int
    value: Any = None
    exception: Any = None
    error: str | None = None  # the message of a non-OK status
    attachments: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK and self.exception is None


def decode_response(frame: Frame) -> Response:
    """Decode a hessian2 response frame; raises Hessian2Error when its body is malformed."""
    reader = Hessian2Reader(frame.body)
    if frame.status != Status.OK:
        message = reader.read_value() if frame.body else ""
        return Response(
            frame.request_id, frame.status, error=message if isinstance(message, str) else repr(message)
        )
    flag = reader.read_int()
    resp = Response(frame.request_id, frame.status)
    base = flag - 3 if flag >= 3 else flag
    if flag < 0 or flag > 5:
        raise Hessian2Error(f"response flag {flag} is not one of 0..5")
    if base == RESPONSE_WITH_EXCEPTION:
        resp.exception = reader.read_value()
    elif base == RESPONSE_VALUE:
        resp.value = reader.read_value()
    if flag >= 3:
        att = reader.read_value()
        if isinstance(att, dict):
            resp.attachments = att
    return resp
