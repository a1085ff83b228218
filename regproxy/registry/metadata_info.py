"""Dubbo 3's application-level service metadata (``org.apache.dubbo.metadata.MetadataInfo``): the model,
its revision, and the two forms it travels in.  Pure values, no I/O.

Facts followed (Dubbo 3.3, ``dubbo-metadata/dubbo-metadata-api/.../metadata/MetadataInfo.java`` unless
another file is named):

* A ``MetadataInfo`` is an application name, a revision and its services keyed by match key.  Its
  serialisable (non-transient) fields are ``app``, ``revision``, ``services``; a ``ServiceInfo``'s are
  ``name``, ``group``, ``version``, ``protocol``, ``port`` (an int, -1 when unset), ``path``, ``params``
  (a String→String map).  Every other field of either class is ``transient`` and never travels.
* ``ServiceInfo`` service key: ``BaseServiceMetadata.buildServiceKey`` (dubbo-common) =
  ``[group/]name[:version]``, group and version left out when empty; match key = service key, then
  ``:protocol`` when the protocol is not empty.
* Revision (``MetadataInfo.calAndGetRevision``): ``"0"`` (``RevisionResolver.EMPTY_REVISION``) when there
  are no services; otherwise the app name followed by each service's ``ServiceInfo.toDescString()``
  (``matchKey + port + path + new TreeMap<>(params)``) in the order of a ``TreeMap`` over the services'
  keys, hashed by ``RevisionResolver.calRevision`` = ``MD5Utils.getMd5`` (dubbo-common): MD5 of the
  string's UTF-8 bytes, as 32 lowercase hex digits.  Java's ``TreeMap`` orders ``String`` keys by UTF-16
  code units and prints as ``{k1=v1, k2=v2}``; a null string concatenates as ``null``.
* The remote metadata report (``ZookeeperMetadataReport``/``NacosMetadataReport.publishAppMetadata``)
  stores ``MetadataInfo.getContent()``, which is ``JsonUtils.toJson(this)``; it reads it back with
  ``JsonUtils.toJavaObject(content, MetadataInfo.class)``, which ignores unknown keys and leaves an absent
  key at its default.  Dubbo's JSON libraries (fastjson2 first, then fastjson, gson, jackson:
  ``dubbo-common/.../json/impl``) leave out null values.  :func:`dump_json` writes the serialisable fields
  in declaration order (what gson writes); :func:`parse_json` reads any of those libraries' output,
  ignoring the extra getter-derived keys a bean-based library may add.
* Over Dubbo, ``MetadataService.getMetadataInfo(revision)`` returns the object as hessian2: a ``C``
  definition of ``org.apache.dubbo.metadata.MetadataInfo`` with its non-transient fields in declaration
  order, ``services`` a map of ``org.apache.dubbo.metadata.MetadataInfo$ServiceInfo`` objects.  Java
  writes the map as a typed ``java.util.concurrent.ConcurrentHashMap``; regproxy writes an untyped map,
  which Java reads into the ``Map`` field as a ``HashMap`` (``MetadataInfo.readResolve`` then rebuilds the
  object around it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from regproxy.dubbo.hessian2 import JavaObject

__all__ = [
    "EMPTY_REVISION",
    "METADATA_INFO_CLASS",
    "SERVICE_INFO_CLASS",
    "MetadataInfo",
    "MetadataInfoError",
    "ServiceInfo",
    "calculate_revision",
    "dump_json",
    "from_java_object",
    "java_map_string",
    "parse_json",
    "revision_source",
    "to_java_object",
]

EMPTY_REVISION = "0"  # RevisionResolver.EMPTY_REVISION
METADATA_INFO_CLASS = "org.apache.dubbo.metadata.MetadataInfo"
SERVICE_INFO_CLASS = "org.apache.dubbo.metadata.MetadataInfo$ServiceInfo"
_JAVA_INT = range(-0x80000000, 0x80000000)


class MetadataInfoError(ValueError):
    """A metadata document or object that is not a MetadataInfo; the message names the field."""


def _java_order(text: str) -> bytes:
    # Java's String.compareTo compares UTF-16 code units; big-endian UTF-16 bytes sort the same way
    # (Python's own str order is by code point, which differs for characters beyond U+FFFF).
    return text.encode("utf-16-be", "surrogatepass")


def _java_str(text: str | None) -> str:
    return "null" if text is None else text


def java_map_string(params: Mapping[str, str]) -> str:
    """``new TreeMap<>(params).toString()``: ``{k1=v1, k2=v2}`` in Java's String order."""
    return "{" + ", ".join(f"{k}={params[k]}" for k in sorted(params, key=_java_order)) + "}"


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """``MetadataInfo.ServiceInfo``: one exported service of the application."""

    name: str | None
    group: str | None = None
    version: str | None = None
    protocol: str | None = None
    port: int = -1
    path: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def service_key(self) -> str:
        """``BaseServiceMetadata.buildServiceKey(name, group, version)``."""
        key = _java_str(self.name)
        if self.group:
            key = f"{self.group}/{key}"
        if self.version:
            key = f"{key}:{self.version}"
        return key

    @property
    def match_key(self) -> str:
        """``ServiceInfo.getMatchKey()``: the service key, then ``:protocol`` when there is one."""
        if self.protocol:
            return f"{self.service_key}:{self.protocol}"
        return self.service_key

    def desc_string(self) -> str:
        """``ServiceInfo.toDescString()``: the part of the revision this service contributes."""
        return f"{self.match_key}{self.port}{_java_str(self.path)}{java_map_string(self.params)}"


@dataclass(frozen=True, slots=True)
class MetadataInfo:
    """``org.apache.dubbo.metadata.MetadataInfo``: ``revision`` is the one the document carried; use
    :meth:`calculated_revision` for the one its content gives."""

    app: str | None
    revision: str | None
    services: Mapping[str, ServiceInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", MappingProxyType(dict(self.services)))

    @classmethod
    def of(cls, app: str, services: Iterable[ServiceInfo]) -> MetadataInfo:
        """What a Dubbo provider publishes: services keyed by match key (``MetadataInfo.addService``),
        the revision calculated from them."""
        keyed = {service.match_key: service for service in services}
        return cls(app, calculate_revision(app, keyed), keyed)

    def calculated_revision(self) -> str:
        return calculate_revision(self.app, self.services)


def revision_source(app: str | None, services: Mapping[str, ServiceInfo]) -> str:
    """The exact string ``MetadataInfo.calAndGetRevision`` hashes (meaningless when ``services`` is
    empty: then the revision is ``EMPTY_REVISION`` and nothing is hashed)."""
    ordered = sorted(services, key=_java_order)
    return _java_str(app) + "".join(services[key].desc_string() for key in ordered)


def calculate_revision(app: str | None, services: Mapping[str, ServiceInfo]) -> str:
    if not services:
        return EMPTY_REVISION
    # String.getBytes(UTF_8) writes '?' for an unpaired surrogate, as errors="replace" does.
    return hashlib.md5(revision_source(app, services).encode("utf-8", "replace")).hexdigest()


# -- JSON: the remote metadata report's /dubbo/metadata/<app>/<revision> (ZooKeeper) or config (Nacos) --


def _opt_str(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise MetadataInfoError(f"{where}{key}: expected a string, got {type(value).__name__}")
    return value


def _port(value: Any, where: str) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or value not in _JAVA_INT:
        raise MetadataInfoError(f"{where}port: expected a Java int, got {value!r}")
    return int(value)  # a hessian2 Long is an int subclass; the model holds plain ints


def _params(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MetadataInfoError(f"{where}params: expected a map of strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise MetadataInfoError(f"{where}params: key {key!r} is not a string")
        if not isinstance(item, str):
            raise MetadataInfoError(f"{where}params[{key!r}]: expected a string, got {type(item).__name__}")
    return dict(value)


def _service_from_doc(doc: Any, where: str) -> ServiceInfo:
    if not isinstance(doc, Mapping):
        raise MetadataInfoError(f"{where.rstrip('.')}: expected an object, got {type(doc).__name__}")
    return ServiceInfo(
        name=_opt_str(doc, "name", where),
        group=_opt_str(doc, "group", where),
        version=_opt_str(doc, "version", where),
        protocol=_opt_str(doc, "protocol", where),
        port=_port(doc.get("port"), where),
        path=_opt_str(doc, "path", where),
        params=_params(doc.get("params"), where),
    )


def _services(value: Any, convert: Callable[[Any, str], ServiceInfo]) -> dict[str, ServiceInfo]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MetadataInfoError(f"services: expected a map, got {type(value).__name__}")
    services: dict[str, ServiceInfo] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise MetadataInfoError(f"services: key {key!r} is not a string")
        services[key] = convert(item, f"services[{key!r}].")
    return services


def parse_json(text: str | bytes) -> MetadataInfo:
    """A metadata report's content, as ``JsonUtils.toJavaObject(content, MetadataInfo.class)`` reads it."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataInfoError(f"metadata is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MetadataInfoError(f"metadata: expected a JSON object, got {type(doc).__name__}")
    return MetadataInfo(
        app=_opt_str(doc, "app", ""),
        revision=_opt_str(doc, "revision", ""),
        services=_services(doc.get("services"), _service_from_doc),
    )


def _service_fields(service: ServiceInfo) -> dict[str, Any]:
    """ServiceInfo's serialisable fields, in declaration order."""
    return {
        "name": service.name,
        "group": service.group,
        "version": service.version,
        "protocol": service.protocol,
        "port": service.port,
        "path": service.path,
        "params": dict(service.params),
    }


def _service_doc(service: ServiceInfo) -> dict[str, Any]:
    return {key: value for key, value in _service_fields(service).items() if value is not None}


def dump_json(info: MetadataInfo) -> str:
    """The serialisable fields in declaration order, nulls left out, as Dubbo's JSON libraries do."""
    doc: dict[str, Any] = {"app": info.app, "revision": info.revision}
    doc = {key: value for key, value in doc.items() if value is not None}
    doc["services"] = {key: _service_doc(service) for key, service in info.services.items()}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


# -- hessian2: MetadataService.getMetadataInfo's return value, a Java object --


def _java_fields(value: Any, class_name: str, where: str) -> dict[str, Any]:
    if not isinstance(value, JavaObject):
        raise MetadataInfoError(
            f"{where}: expected an object of class {class_name}, got {type(value).__name__}"
        )
    if value.class_name != class_name:
        raise MetadataInfoError(f"{where}: expected an object of class {class_name}, got {value.class_name}")
    return value.fields


def _service_from_java(value: Any, where: str) -> ServiceInfo:
    # Java's deserializer ignores fields the class does not have and leaves missing ones at their
    # defaults (null, port -1); so does this.
    return _service_from_doc(_java_fields(value, SERVICE_INFO_CLASS, where.rstrip(".")), where)


def from_java_object(value: Any) -> MetadataInfo:
    """The MetadataInfo in a decoded hessian2 value (a :class:`JavaObject`)."""
    fields = _java_fields(value, METADATA_INFO_CLASS, "metadata")
    return MetadataInfo(
        app=_opt_str(fields, "app", ""),
        revision=_opt_str(fields, "revision", ""),
        services=_services(fields.get("services"), _service_from_java),
    )


def to_java_object(info: MetadataInfo) -> JavaObject:
    """The object Java's hessian2 serializer writes for a MetadataInfo: its non-transient fields, in
    declaration order (``app``, ``revision``, ``services``; ``name``, ``group``, ``version``,
    ``protocol``, ``port``, ``path``, ``params``)."""
    services = {
        key: JavaObject(SERVICE_INFO_CLASS, _service_fields(service))
        for key, service in info.services.items()
    }
    return JavaObject(METADATA_INFO_CLASS, {"app": info.app, "revision": info.revision, "services": services})
