"""A Triple call's routing facts, read from its request headers.

The headers a Dubbo 3.3 consumer sends (``RequestMetadata.toHeaders``):

* ``:method POST``, ``:scheme``, ``:authority`` (the provider's address), ``:path``
  ``/{interface}/{method}`` (``RequestPath.toFullPath``), ``te: trailers``, ``content-type:
  application/grpc+proto``;
* ``grpc-timeout``: the call's timeout (``TripleInvoker``: ``timeout + "m"``);
* ``tri-service-version`` (left out for "1.0.0" when ``IGNORE_1_0_0_VERSION`` is set; the Python
  SDK, apache/dubbo-python ``RequestMetadata.to_headers``, always leaves it out for "1.0.0"),
  ``tri-service-group``, ``tri-consumer-appname``;
* ``grpc-accept-encoding``, and ``grpc-encoding`` when it compresses;
* the invocation's attachments as headers (``StreamUtils.putHeaders``): keys lower-cased, byte
  arrays base64 under a ``-bin`` name, and, when a key had upper case (``CONVERT_NO_LOWER_HEADER``,
  on by default), ``tri-header-convert``: the percent-encoded JSON of {lower-case: original}.

The attachments read here are what a Dubbo provider reads (``StreamUtils.toAttachments``): every
header except the HTTP/2 pseudo-headers and those ``TripleHeaderEnum.containsExcludeAttachments``
names (TripleHeaderEnum's own names and its internal keys), renamed back by
``tri-header-convert``. Unlike Dubbo, also without any ``grpc-*`` header (PROTOCOL-HTTP2.md:
reserved for gRPC), and ``-bin`` values are kept as sent (Dubbo decodes them to bytes and drops
the suffix). Like Dubbo, ``te``, ``content-type`` and ``user-agent`` stay in.

Malformed requests raise TripleError with the status to answer (doc/statuscodes.md names only
library-generated codes; a request that cannot be read is INTERNAL as "error parsing request").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from regproxy.triple.status import Code, TripleError, decode_grpc_message
from regproxy.triple.timeout import DUBBO_MAX_DIGITS, parse_timeout

CONTENT_TYPE_GRPC: Final = "application/grpc"

# TripleHeaderEnum (3.3): its names, and excludeAttachmentsSet's internal keys
# (CommonConstants GROUP_KEY, INTERFACE_KEY, PATH_KEY, REMOTE_APPLICATION_KEY, APPLICATION_KEY,
# TripleConstants.SERIALIZATION_KEY, RestConstants.HEADER_SERVICE_VERSION / HEADER_SERVICE_GROUP).
TRIPLE_HEADERS: Final = frozenset(
    {
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
)
DUBBO_INTERNAL_KEYS: Final = frozenset(
    {
        "group",
        "interface",
        "path",
        "remote.application",
        "application",
        "serialization",
        "rest-service-version",
        "rest-service-group",
    }
)
RESERVED: Final = TRIPLE_HEADERS | DUBBO_INTERNAL_KEYS
BIN_SUFFIX: Final = "-bin"  # TripleConstants.HEADER_BIN_SUFFIX

# Headers that decide where a call goes: one value each, or the request is refused (two values
# could route one way here and another way at the provider).
_SINGLE: Final = frozenset(
    {
        ":method",
        ":path",
        ":authority",
        "content-type",
        "grpc-timeout",
        "tri-service-version",
        "tri-service-group",
        "tri-consumer-appname",
    }
)


@dataclass(frozen=True, slots=True)
class TripleCall:
    """The facts of one Triple call that route it.

    ``version``, ``group`` and ``application`` are "" when the header is absent. Note that a
    missing version may mean "1.0.0" (see the module's docstring); Dubbo's ``TriplePathResolver``
    falls back from the version asked to "1.0.0" and then to the bare path
    (``RESOLVE_FALLBACK_TO_DEFAULT``, on by default). ``timeout_ms`` is None without
    ``grpc-timeout`` (no deadline). ``message_format`` is the content type's subtype: "proto"
    for a bare ``application/grpc`` (gRPC's default), else what follows the '+'.
    ``attachments`` are (name, value) in the order received, repeated names included.
    """

    service: str
    method: str
    version: str = ""
    group: str = ""
    application: str = ""
    timeout_ms: int | None = None
    content_type: str = CONTENT_TYPE_GRPC
    message_format: str = "proto"
    encoding: str = "identity"
    authority: str = ""
    attachments: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        """The ``:path``: ``/{service}/{method}``."""
        return f"/{self.service}/{self.method}"

    def attachment(self, name: str) -> str | None:
        """The first value of attachment ``name``, or None."""
        for key, value in self.attachments:
            if key == name:
                return value
        return None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def parse_path(path: str) -> tuple[str, str]:
    """The service and method of a ``:path``, ``/{interface}/{method}``.

    Exactly two non-empty segments (PROTOCOL-HTTP2.md: Path → "/" Service-Name "/" method name).
    Dubbo 3.3's ``RequestPath.parse`` also takes ``/{contextPath}/{interface}/{method}``; that form
    is refused here. A path that names no method is UNIMPLEMENTED: statuscodes.md's "method not
    found", and Dubbo's answer (HTTP 404, which ``httpStatusToGrpcCode`` makes UNIMPLEMENTED).
    """
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise TripleError(f"bad :path {path[:200]!r}: expected /{{interface}}/{{method}}", Code.UNIMPLEMENTED)
    return parts[1], parts[2]


def parse_content_type(content_type: str) -> str:
    """The message format of a gRPC content type: "proto" for ``application/grpc``, else the
    subtype after '+' (``application/grpc+json`` -> "json"), parameters after ';' left out.

    PROTOCOL-HTTP2.md: Content-Type → "application/grpc" [("+proto" / "+json" / {custom})], and a
    content type not beginning with "application/grpc" SHOULD get HTTP 415. Dubbo 3.3's
    ``GrpcUtils.isGrpcRequest`` takes any string starting with it (``application/grpcx`` too);
    here what follows must be '+', ';' or nothing (as grpc-go does). Media types are
    case-insensitive (RFC 9110 §8.3.1), so case is ignored.
    """
    lowered = content_type.strip().lower()
    rest = lowered[len(CONTENT_TYPE_GRPC) :]
    if not lowered.startswith(CONTENT_TYPE_GRPC) or (rest and rest[0] not in "+;"):
        raise TripleError(
            f"content-type {content_type[:200]!r} is not gRPC (expected application/grpc[+format])",
            Code.INTERNAL,
            http_status=415,
        )
    if not rest.startswith("+"):
        return "proto"
    subtype = rest[1:].split(";", 1)[0].strip()
    return subtype or "proto"


def _header_convert(value: str) -> dict[str, str]:
    """The {lower-case: original} map of a ``tri-header-convert`` value; empty when it is not one
    (Dubbo would fail the call; a proxy keeps the lower-case names instead)."""
    try:
        mapping = json.loads(decode_grpc_message(value))
    except ValueError:
        return {}
    if not isinstance(mapping, dict):
        return {}
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, str)}


def _is_attachment(name: str) -> bool:
    if name.startswith(":") or name.startswith("grpc-") or name in RESERVED:
        return False
    # Dubbo checks the name with its -bin suffix dropped too (StreamUtils.putAttachment).
    return not (name.endswith(BIN_SUFFIX) and name[: -len(BIN_SUFFIX)] in RESERVED)


def parse_call(headers: Iterable[tuple[str | bytes, str | bytes]]) -> TripleCall:
    """The TripleCall of a request's headers, as the HTTP/2 layer gives them: (name, value) pairs,
    as bytes or text. Raises TripleError (with the gRPC status to answer) when they are not a
    Triple call's."""
    single: dict[str, str] = {}
    attachments: list[tuple[str, str]] = []
    convert = ""
    encoding = ""
    for raw_name, raw_value in headers:
        # HTTP/2 names are lower case (RFC 9113 §8.2.1); lowering costs little and forgives.
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        value = _text(raw_value)
        if name in _SINGLE:
            if name in single:
                raise TripleError(f"header {name} repeated: {single[name]!r} and {value!r}", Code.INTERNAL)
            single[name] = value
        elif name == "grpc-encoding":
            if not encoding:  # the first, as Dubbo's header() reads it
                encoding = value.strip()
        elif name == "tri-header-convert":
            convert = value
        elif _is_attachment(name):
            attachments.append((name, value))

    method = single.get(":method")
    if method != "POST":
        raise TripleError(
            f"HTTP method {method!r} is not POST: a gRPC request is a POST (PROTOCOL-HTTP2.md)",
            Code.INTERNAL,
            http_status=405,
        )
    content_type = single.get("content-type")
    if content_type is None:
        raise TripleError(
            "no content-type: a gRPC request has application/grpc[+format]", Code.INTERNAL, http_status=415
        )
    message_format = parse_content_type(content_type)
    path = single.get(":path")
    if path is None:
        raise TripleError("no :path: a gRPC request names /{interface}/{method}", Code.UNIMPLEMENTED)
    service, method_name = parse_path(path)

    timeout_ms: int | None = None
    timeout = single.get("grpc-timeout")
    if timeout is not None:
        try:
            # Dubbo's consumers write milliseconds with as many digits as it takes (timeout.py).
            timeout_ms = parse_timeout(timeout, DUBBO_MAX_DIGITS)
        except ValueError as exc:
            raise TripleError(str(exc), Code.INTERNAL) from None

    if convert and attachments:
        renames = _header_convert(convert)
        if renames:
            attachments = [(_renamed(name, renames), value) for name, value in attachments]

    return TripleCall(
        service=service,
        method=method_name,
        version=single.get("tri-service-version", ""),
        group=single.get("tri-service-group", ""),
        application=single.get("tri-consumer-appname", ""),
        timeout_ms=timeout_ms,
        content_type=content_type,
        message_format=message_format,
        encoding=encoding or "identity",
        authority=single.get(":authority", ""),
        attachments=tuple(attachments),
    )


def _renamed(name: str, renames: dict[str, str]) -> str:
    """``name`` with its original case back (``StreamUtils.toAttachments``); a ``-bin`` name keeps
    its suffix, its base renamed (Dubbo maps the name without it)."""
    if name.endswith(BIN_SUFFIX):
        base = name[: -len(BIN_SUFFIX)]
        original = renames.get(base)
        return name if original is None else original + BIN_SUFFIX
    return renames.get(name, name)
