"""Dubbo 3's ``org.apache.dubbo.metadata.MetadataService`` over the Dubbo protocol, both sides, sans-IO:
regproxy asking a Dubbo 3 instance for the ``MetadataInfo`` of a revision (consumer side), and
regproxy's ingress answering a Dubbo 3 consumer that asks regproxy (provider side).

Facts followed (apache/dubbo 3.3; ``.../registry/client/metadata/`` is
``dubbo-registry/dubbo-registry-api/src/main/java/org/apache/dubbo/registry/client/metadata/``):

* The service: interface ``org.apache.dubbo.metadata.MetadataService``, exported with version
  ``MetadataService.VERSION`` = ``1.0.0`` (``ConfigurableMetadataServiceExporter.exportV1``); a consumer
  refers to it with group = the provider's application name (``StandardMetadataServiceURLBuilder``).
* What a 3.3 consumer calls: only ``getMetadataInfo(String revision)``
  (``MetadataUtils.RemoteMetadataService.getRemoteMetadata``); ``getAndListenInstanceMetadata`` is
  called only by ``ReflectionBasedServiceDiscovery`` (DNS/Kubernetes registries, not ZooKeeper or
  Nacos) and ``getMetadataInfos()`` by no consumer code at all.  Both sides here handle
  ``getMetadataInfo``; the provider side also answers ``getMetadataInfos()``, the other metadata
  read, since it costs nothing.  ``MetadataServiceV2`` (protobuf over Triple, chosen when the
  instance says ``meta-v=2.0.0`` and the consumer has protobuf) is out of scope: V1 is always
  exported beside it.
* The consumer's URL (``StandardMetadataServiceURLBuilder.generateWithMetadata``): the instance's
  ``dubbo.metadata-service.url-params`` (a JSON map, usually ``version``, ``dubbo``, ``release``,
  ``side``, ``port``, ``protocol``) laid over ``timeout`` = ``dubbo.application.metadata.proxy.delay``
  or 5000 (``MetadataConstants.DEFAULT_METADATA_TIMEOUT_VALUE``), then ``group`` = the application
  and ``side=consumer``.  Without url-params (``generateUrlWithoutMetadata``) the version is ``1.0.0``.
  ``connections``, ``threads``, ``retries`` and the like shape the client, not the request.
* The request (``DubboInvoker.doInvoke``, ``AbstractInvoker`` with keys ``interface``, ``group``,
  ``token``, ``DubboCodec.encodeRequestData``): head = ``2.0.2`` (``Version.getProtocolVersion``),
  the path (no ``interface`` parameter on that URL), the URL's version or ``0.0.0``, the method, the
  descriptor ``Ljava/lang/String;``, the revision; attachments ``path``, ``version``, ``group``,
  ``timeout`` (milliseconds as a string) and ``token`` when the url-params carry one.  Serialization:
  hessian2 unless the url-params prefer another (``UrlUtils.serializationId``,
  ``DefaultSerializationSelector``); regproxy always sends hessian2, which every provider accepts.
* The provider (``MetadataServiceDelegation.getMetadataInfo``): an empty revision, or one it has no
  ``MetadataInfo`` for (or whose ``MetadataInfo`` carries another revision), is answered with
  **null**, not an error.  ``getMetadataInfos`` returns a ``List`` of every local ``MetadataInfo``.
* Response flags (``DubboCodec.encodeResponseData``): with attachments only for consumers that accept
  them (``Version.isSupportResponseAttachment``), and then the attachments carry ``dubbo=2.0.2``.
* Errors a Java provider answers: a path/version/group it does not export → ``SERVICE_ERROR`` with
  ``Not found exported service: ...`` (``DubboProtocol.getInvoker``, ``HeaderExchangeHandler``); a
  method/descriptor the interface lacks → ``BAD_REQUEST`` with ``Fail to decode request due to: ...
  Service not found:<path>, <method>`` (``DecodeableRpcInvocation.decode``, ``HeaderExchangeHandler``).
* The consumer treats null, an exception or a failed call as no metadata and retries
  (``MetadataUtils.getRemoteMetadata`` → ``MetadataInfo.EMPTY``, ``AbstractServiceDiscovery
  .getRemoteMetadata``).  It keeps a ``MetadataInfo`` for a revision only when its revision is that
  revision (``ServiceInstancesChangedListener.doOnEvent``; the provider guarantees the same in
  ``MetadataServiceDelegation``); regproxy caches per revision, so a mismatch is an error here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from regproxy.dubbo.encode import (
    DUBBO_VERSION,
    decode_response,
    encode_error,
    encode_response,
    supports_response_attachments,
)
from regproxy.dubbo.frame import FLAG_REQUEST, FLAG_TWOWAY, HESSIAN2, Frame, Status, pack_header
from regproxy.dubbo.hessian2 import Hessian2Error, Hessian2Writer
from regproxy.dubbo.request import RequestBody
from regproxy.registry.metadata_info import MetadataInfo, MetadataInfoError, from_java_object, to_java_object

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "GET_METADATA_INFO",
    "GET_METADATA_INFOS",
    "METADATA_SERVICE",
    "METADATA_SERVICE_VERSION",
    "MetadataServiceError",
    "answer_metadata_request",
    "decode_metadata_response",
    "encode_metadata_request",
    "is_metadata_service_request",
    "not_exported",
]

METADATA_SERVICE: Final = "org.apache.dubbo.metadata.MetadataService"
METADATA_SERVICE_VERSION: Final = "1.0.0"  # MetadataService.VERSION
GET_METADATA_INFO: Final = "getMetadataInfo"
GET_METADATA_INFOS: Final = "getMetadataInfos"
STRING_DESCRIPTOR: Final = "Ljava/lang/String;"
DEFAULT_TIMEOUT_MS: Final = 5000  # MetadataConstants.DEFAULT_METADATA_TIMEOUT_VALUE
_DEFAULT_VERSION: Final = "0.0.0"  # CommonConstants.DEFAULT_VERSION, AbstractInvoker's fallback
# (method, descriptor) pairs the ingress answers; every other call is refused as Java refuses a
# method its interface lacks.
_SERVED: Final = frozenset({(GET_METADATA_INFO, STRING_DESCRIPTOR), (GET_METADATA_INFOS, "")})
_REQ_FLAG: Final = FLAG_REQUEST | FLAG_TWOWAY | HESSIAN2


class MetadataServiceError(Exception):
    """A ``getMetadataInfo`` call that gave no usable MetadataInfo; the message names the instance and
    the revision."""


# --- consumer side --------------------------------------------------------------------------------


def encode_metadata_request(
    request_id: int,
    app: str,
    revision: str,
    *,
    url_params: Mapping[str, str] | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> bytes:
    """The ``getMetadataInfo(revision)`` request a Dubbo 3.3 consumer sends to an instance of ``app``.

    ``url_params`` is the instance's ``dubbo.metadata-service.url-params`` (parsed), None when the
    instance has none; ``timeout_ms`` is the consumer's ``dubbo.application.metadata.proxy.delay``.
    Raises ValueError when the url-params name a protocol other than ``dubbo``: that endpoint does
    not speak this codec.
    """
    if url_params:
        protocol = url_params.get("protocol", "dubbo")
        if protocol != "dubbo":
            raise ValueError(f"the MetadataService of {app!r} is exported over {protocol!r}, not dubbo")
        version = url_params.get("version") or _DEFAULT_VERSION
        timeout = url_params.get("timeout") or str(timeout_ms)  # the url-params are laid over it
        token = url_params.get("token")
    else:
        version, timeout, token = METADATA_SERVICE_VERSION, str(timeout_ms), None
    attachments = {"path": METADATA_SERVICE, "version": version, "group": app, "timeout": timeout}
    if token:
        attachments["token"] = token
    writer = Hessian2Writer()
    for head in (DUBBO_VERSION, METADATA_SERVICE, version, GET_METADATA_INFO, STRING_DESCRIPTOR, revision):
        writer.write_string(head)
    writer.write_value(attachments)
    body = writer.getvalue()
    return pack_header(_REQ_FLAG, 0, request_id, len(body)) + body


def decode_metadata_response(frame: Frame, *, instance: str, revision: str) -> MetadataInfo:
    """The MetadataInfo in the answer to ``encode_metadata_request``, from ``instance`` (its address,
    for the message).  Raises MetadataServiceError for a non-OK status, an exception, null, a value
    that is no MetadataInfo, a malformed body, or a MetadataInfo of another revision."""
    where = f"MetadataService.getMetadataInfo({revision!r}) on {instance}"
    try:
        response = decode_response(frame)
    except Hessian2Error as exc:
        raise MetadataServiceError(f"{where}: malformed response: {exc}") from None
    if response.status != Status.OK:
        try:
            status = Status(response.status).name
        except ValueError:
            status = str(response.status)
        raise MetadataServiceError(f"{where} failed with status {status}: {response.error}")
    if response.exception is not None:
        raise MetadataServiceError(f"{where} threw {_describe_exception(response.exception)}")
    if response.value is None:
        raise MetadataServiceError(f"{where}: the instance has no metadata for that revision (null)")
    try:
        info = from_java_object(response.value)
    except MetadataInfoError as exc:
        raise MetadataServiceError(f"{where}: {exc}") from None
    if info.revision != revision:
        raise MetadataServiceError(f"{where} answered the metadata of revision {info.revision!r}")
    return info


def _describe_exception(exception: Any) -> str:
    class_name = getattr(exception, "class_name", type(exception).__name__)
    fields = getattr(exception, "fields", None)
    message = fields.get("detailMessage") if isinstance(fields, dict) else None
    return f"{class_name}: {message}" if message else str(class_name)


# --- provider side --------------------------------------------------------------------------------


def is_metadata_service_request(body: RequestBody) -> bool:
    """Whether a request is for the MetadataService (whatever its version, group or method: the
    ingress answers all of them, with errors where Java would)."""
    return body.path == METADATA_SERVICE


def _exported_key(app: str) -> str:
    """``DubboProtocol.serviceKey`` of the MetadataService regproxy exports, without the port."""
    return f"{app}/{METADATA_SERVICE}:{METADATA_SERVICE_VERSION}"


def not_exported(request_id: int, body: RequestBody, apps: Iterable[str]) -> bytes:
    """The answer to a MetadataService request of a version or group not exported here, when the
    MetadataServices of ``apps`` are: ``SERVICE_ERROR`` "Not found exported service" listing them
    (``DubboProtocol.getInvoker``, which lists its ``exporterMap`` keys)."""
    asked = f"{body.group + '/' if body.group else ''}{body.path}:{body.version}"
    exported = ", ".join(_exported_key(app) for app in sorted(apps))
    return encode_error(
        request_id,
        Status.SERVICE_ERROR,
        f"Not found exported service: {asked} in [{exported}], may be version or group mismatch",
    )


def answer_metadata_request(
    frame: Frame, body: RequestBody, app: str, infos: Mapping[str, MetadataInfo]
) -> bytes | None:
    """The response regproxy's ingress sends to a MetadataService request (``frame``, its ``body`` read
    as a RequestBody), serving ``app``'s metadata ``infos`` by revision; None for a one-way request,
    which gets no answer.  A Dubbo error status for a version, group or method Java would not serve.
    Raises Hessian2Error when the arguments or attachments are malformed."""
    if not frame.two_way:
        return None
    request_id = frame.request_id
    if frame.serialization != HESSIAN2:
        return encode_error(
            request_id,
            Status.BAD_REQUEST,
            f"Fail to decode request due to: serialization id {frame.serialization}: "
            "regproxy's MetadataService reads hessian2 (2) only",
        )
    if body.version != METADATA_SERVICE_VERSION or body.group != app:
        return not_exported(request_id, body, (app,))
    if (body.method, body.param_types) not in _SERVED:
        return encode_error(
            request_id,
            Status.BAD_REQUEST,
            "Fail to decode request due to: java.lang.IllegalArgumentException: Service not found:"
            f"{body.path}, {body.method} (regproxy serves getMetadataInfo(String) and getMetadataInfos())",
        )
    value: Any
    if body.method == GET_METADATA_INFO:
        revision = body.arguments()[0]
        if not isinstance(revision, str) and revision is not None:
            return encode_error(
                request_id,
                Status.BAD_REQUEST,
                "Fail to decode request due to: getMetadataInfo expects a String, "
                f"got {type(revision).__name__}",
            )
        info = infos.get(revision) if revision else None
        # MetadataServiceDelegation.getMetadataInfo: null unless the info carries that very revision.
        value = to_java_object(info) if info is not None and info.revision == revision else None
    else:
        value = [to_java_object(info) for info in infos.values()]
    attachments = {"dubbo": DUBBO_VERSION} if supports_response_attachments(body.dubbo_version) else None
    return encode_response(request_id, value, attachments=attachments)
