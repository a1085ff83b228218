"""Dubbo 3 application-level discovery as stored in a registry: instances, their metadata, the mapping.

Pure values and text forms, no I/O.  Facts followed (apache/dubbo 3.3, Apache Curator 5.7):

* An application instance lives at ZooKeeper ``/services/<app>/<id>`` with ``id = host + ":" + port``
  (``ZookeeperServiceDiscovery.DEFAULT_GROUP``, ``CuratorFrameworkUtils.generateId``), an ephemeral
  node (Curator ``ServiceDiscoveryImpl.internalRegisterService``: ``ServiceType.DYNAMIC``).
* Its data is Curator's ``ServiceInstance`` written by ``JsonInstanceSerializer`` (Jackson), in the
  compatible mode that the serializer's one-argument constructor picks (the one Dubbo's
  ``ServiceDiscoveryBuilder`` gets), i.e. ``OldServiceInstance``'s properties in declaration order:
  ``name, id, address, port, sslPort, payload, registrationTimeUTC, serviceType, uriSpec`` (no
  ``enabled``).  The payload carries ``@class`` (``@JsonTypeInfo(use = CLASS)`` on ``getPayload``) and
  Dubbo's ``ZookeeperInstance`` fields ``id, name, metadata``; the metadata is the instance's
  ``getSortedMetadata()`` (a ``TreeMap``, keys sorted).  Jackson writes no blanks.
* Reading, Dubbo takes ``name``, ``address``, ``port`` and ``payload.metadata`` only
  (``CuratorFrameworkUtils.build(URL, ServiceInstance)``); unknown properties are ignored
  (``FAIL_ON_UNKNOWN_PROPERTIES`` false), and the payload must be a ``ZookeeperInstance``
  (``JsonInstanceSerializer.deserialize`` casts it).  dubbo-go writes the same document from a Go
  struct and map (``registry/zookeeper`` ``toCuratorInstance``): keys sorted, no ``sslPort``,
  ``serviceType`` or ``uriSpec``, ``registrationTimeUTC`` 0 left out.
* Metadata keys (``ServiceInstanceMetadataUtils``): see the ``*_KEY`` constants below.
* The service-name mapping: ZooKeeper ``/dubbo/mapping/<interface>`` (``ZookeeperMetadataReport
  .buildPathKey`` with ``ServiceNameMapping.DEFAULT_MAPPING_GROUP``), Nacos config dataId
  ``<interface>`` in group ``mapping`` (``NacosMetadataReport``); the content is application names
  joined by ``,``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

__all__ = [
    "DUBBO_ROOT",
    "EMPTY_REVISION",
    "ENDPOINTS_KEY",
    "LOCAL",
    "MAPPING_GROUP",
    "METADATA_SERVICE_V1",
    "METADATA_SERVICE_V2",
    "METADATA_VERSION_KEY",
    "REMOTE",
    "REVISION_KEY",
    "SERVICES_ROOT",
    "STORAGE_TYPE_KEY",
    "URL_PARAMS_KEY",
    "ZOOKEEPER_INSTANCE_CLASS",
    "AppInstance",
    "Endpoint",
    "InstanceError",
    "instance_metadata",
    "instance_path",
    "instances_path",
    "mapping_apps",
    "mapping_path",
    "mapping_with",
    "metadata_service_params",
    "nacos_mapping_config",
    "nacos_mapping_ticket",
    "parse_curator",
    "path_segment",
    "to_curator",
]

# -- where things live ---------------------------------------------------------------------------------

SERVICES_ROOT = "/services"  # ZookeeperServiceDiscovery.DEFAULT_GROUP (the registry URL's default group)
DUBBO_ROOT = "/dubbo"  # AbstractMetadataReport.DEFAULT_ROOT, as ZookeeperMetadataReport prefixes it
MAPPING_GROUP = "mapping"  # ServiceNameMapping.DEFAULT_MAPPING_GROUP
# The payload's Java class: JsonInstanceSerializer only accepts instances whose payload is one.
ZOOKEEPER_INSTANCE_CLASS = "org.apache.dubbo.registry.zookeeper.ZookeeperInstance"

# -- instance metadata keys (ServiceInstanceMetadataUtils) -----------------------------------------------

# The revision of the MetadataInfo of every service the instance exports (MetadataInfo.calAndGetRevision).
REVISION_KEY = "dubbo.metadata.revision"
# Where consumers get that MetadataInfo: "remote" = the metadata report, anything else = the instance's
# MetadataService (MetadataUtils.getRemoteMetadata); absent means "local" (DEFAULT_METADATA_STORAGE_TYPE).
STORAGE_TYPE_KEY = "dubbo.metadata.storage-type"
# JSON list of {"port": int, "protocol": str} (DefaultServiceInstance.Endpoint): the port of each
# protocol the instance serves (ProtocolPortsMetadataCustomizer).
ENDPOINTS_KEY = "dubbo.endpoints"
# JSON object of the MetadataService URL's parameters, "port" and "protocol" last
# (getMetadataServiceParameter; read by StandardMetadataServiceURLBuilder).  Dubbo 2.7 wrote
# {protocol: {...}} instead, which 3.x cannot read.
URL_PARAMS_KEY = "dubbo.metadata-service.url-params"
# Which MetadataService the instance serves (MetadataServiceURLParamsMetadataCustomizer): "1.0.0" =
# org.apache.dubbo.metadata.MetadataService, "2.0.0" = MetadataServiceV2 (triple;
# MetadataUtils.referMetadataService).
METADATA_VERSION_KEY = "meta-v"
METADATA_SERVICE_V1 = "1.0.0"  # MetadataService.VERSION / MetadataServiceDelegation.VERSION
METADATA_SERVICE_V2 = "2.0.0"  # MetadataServiceDelegationV2.VERSION

LOCAL: Final = "local"  # CommonConstants.DEFAULT_METADATA_STORAGE_TYPE
REMOTE: Final = "remote"  # CommonConstants.REMOTE_METADATA_STORAGE_TYPE
# RevisionResolver.EMPTY_REVISION: an instance exporting nothing; consumers skip it, as one without a
# revision (ServiceInstancesChangedListener.onEvent).
EMPTY_REVISION = "0"

# RegistryProtocol.DEFAULT_REGISTER_PROVIDER_KEYS, in order, less those getMetadataServiceParameter
# removes first (application, group, deprecated, timestamp).
_URL_PARAM_KEYS = (
    "codec",
    "exchanger",
    "serialization",
    "prefer.serialization",
    "cluster",
    "connections",
    "loadbalance",
    "mock",
    "path",
    "timeout",
    "token",
    "version",
    "warmup",
    "weight",
    "dubbo",
    "release",
    "side",
    "ipv6",
    "serialize.packable.factory",
    "auth",
    "authenticator",
    "username",
    "password",
)

StorageType = Literal["local", "remote"]
_SERVICE_TYPES = ("DYNAMIC", "STATIC", "PERMANENT", "DYNAMIC_SEQUENTIAL")  # Curator's ServiceType


class InstanceError(ValueError):
    """An instance (or its metadata) that Dubbo would not read; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One entry of ``dubbo.endpoints`` (``DefaultServiceInstance.Endpoint``)."""

    port: int
    protocol: str


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535


def _json_text(value: object) -> str:
    # Jackson's (and fastjson2's) compact form: no blanks, non-ASCII written as is.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_value(text: str, where: str) -> object:
    """A metadata value that holds JSON, parsed (InstanceError naming ``where`` otherwise)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise InstanceError(where, f"not JSON ({exc})") from None


def _parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    where = f"payload.metadata[{ENDPOINTS_KEY}]"
    if not text.strip():
        return ()  # ServiceInstanceMetadataUtils.hasEndpoints: blank means none
    raw = _json_value(text, where)
    if not isinstance(raw, list):
        raise InstanceError(where, f"must be a JSON list, not {type(raw).__name__}")
    endpoints = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise InstanceError(f"{where}[{i}]", "must be a JSON object")
        if not _is_port(entry.get("port")):
            raise InstanceError(f"{where}[{i}].port", f"must be a port 1..65535, not {entry.get('port')!r}")
        protocol = entry.get("protocol")
        if not isinstance(protocol, str) or not protocol:
            raise InstanceError(f"{where}[{i}].protocol", f"must be a non-empty string, not {protocol!r}")
        endpoints.append(Endpoint(entry["port"], protocol))
    return tuple(endpoints)


def _parse_url_params(text: str) -> Mapping[str, str] | None:
    where = f"payload.metadata[{URL_PARAMS_KEY}]"
    if not text.strip():
        return None  # StandardMetadataServiceURLBuilder: blank means "build the URL without metadata"
    raw = _json_value(text, where)
    if not isinstance(raw, dict):
        raise InstanceError(where, f"must be a JSON object, not {type(raw).__name__}")
    for key, value in raw.items():
        if isinstance(value, dict):
            problem = "a nested object is Dubbo 2.7's {protocol: params} form, which Dubbo 3 cannot read"
            raise InstanceError(f"{where}.{key}", problem)
        if not isinstance(value, str):
            raise InstanceError(f"{where}.{key}", f"must be a string, not {value!r}")
    # StandardMetadataServiceURLBuilder.generateWithMetadata builds the URL from these two.
    protocol = raw.get("protocol")
    if not protocol:
        raise InstanceError(f"{where}.protocol", "missing")
    port = raw.get("port")
    if port is None or not port.isdecimal() or not 0 < int(port) <= 65535:
        raise InstanceError(f"{where}.port", f"must be a port 1..65535, not {port!r}")
    return MappingProxyType(dict(raw))


@dataclass(frozen=True, slots=True)
class AppInstance:
    """One instance of a Dubbo 3 application, as ``/services/<app>/<id>`` holds it.

    ``metadata`` is a read-only mapping, keys sorted as Dubbo writes them (excluded from the hash;
    equality compares it).  ``id`` defaults to ``host:port`` (``CuratorFrameworkUtils.generateId``).
    ``registration_time_utc`` is Curator's ``registrationTimeUTC`` (ms since the epoch; the writer's clock).
    The metadata values Dubbo itself parses (``dubbo.endpoints``, ``dubbo.metadata-service.url-params``)
    are checked on construction: an instance Dubbo could not use raises :class:`InstanceError`.
    """

    app: str
    host: str
    port: int
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    id: str = ""
    registration_time_utc: int = 0
    # Derived from the metadata: dubbo.endpoints, and dubbo.metadata-service.url-params (None if blank).
    endpoints: tuple[Endpoint, ...] = field(init=False, compare=False, repr=False)
    metadata_service_params: Mapping[str, str] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.app, str) or not self.app:
            raise InstanceError("name", f"must be a non-empty string, not {self.app!r}")
        if not isinstance(self.host, str) or not self.host:
            raise InstanceError("address", f"must be a non-empty string, not {self.host!r}")
        # ServiceInstanceMetadataUtils.isValidInstance: a port of 0 is no instance.
        if not _is_port(self.port):
            raise InstanceError("port", f"must be a port 1..65535, not {self.port!r}")
        if not isinstance(self.id, str):
            raise InstanceError("id", f"must be a string, not {self.id!r}")
        if not self.id:
            _set(self, "id", f"{self.host}:{self.port}")
        t = self.registration_time_utc
        if isinstance(t, bool) or not isinstance(t, int):
            raise InstanceError("registrationTimeUTC", f"must be an integer, not {t!r}")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InstanceError(f"payload.metadata[{key}]", f"must be a string, not {value!r}")
        metadata = dict(sorted(self.metadata.items()))  # as getSortedMetadata (a TreeMap) writes them
        _set(self, "metadata", MappingProxyType(metadata))
        _set(self, "endpoints", _parse_endpoints(metadata.get(ENDPOINTS_KEY, "")))
        _set(self, "metadata_service_params", _parse_url_params(metadata.get(URL_PARAMS_KEY, "")))

    def __reduce__(self) -> tuple[type[AppInstance], tuple[str, str, int, dict[str, str], str, int]]:
        # mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict instead.
        return (
            AppInstance,
            (self.app, self.host, self.port, dict(self.metadata), self.id, self.registration_time_utc),
        )

    @property
    def revision(self) -> str | None:
        """The metadata revision, None when there is none to fetch (absent, empty or ``EMPTY_REVISION``)."""
        value = self.metadata.get(REVISION_KEY)
        return None if not value or value == EMPTY_REVISION else value

    @property
    def storage_type(self) -> StorageType:
        """``remote`` when the MetadataInfo is in the metadata report, else ``local``.

        Any value but ``remote`` means the instance's MetadataService (MetadataUtils.getRemoteMetadata).
        """
        return REMOTE if self.metadata.get(STORAGE_TYPE_KEY, LOCAL) == REMOTE else LOCAL

    @property
    def metadata_service_version(self) -> str | None:
        """The ``meta-v`` value: ``METADATA_SERVICE_V2`` means MetadataServiceV2, else the v1 service."""
        return self.metadata.get(METADATA_VERSION_KEY)

    def port_for(self, protocol: str) -> int:
        """The port serving ``protocol``: its ``dubbo.endpoints`` entry, else the instance port.

        As ServiceInstancesChangedListener.getServiceUrlsCache does when the service declares no port.
        """
        for endpoint in self.endpoints:
            if endpoint.protocol == protocol:
                return endpoint.port
        return self.port

    def metadata_service_address(self) -> tuple[str, int]:
        """``(protocol, port)`` of the instance's MetadataService (StandardMetadataServiceURLBuilder.build).

        From ``dubbo.metadata-service.url-params``; without them Dubbo assumes ``dubbo`` on the instance
        port (``generateUrlWithoutMetadata``, unless the consumer configured a metadataServicePort).
        """
        params = self.metadata_service_params
        if params is None:
            return "dubbo", self.port
        return params["protocol"], int(params["port"])


# -- Curator JSON ------------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, kind: type, *, required: bool, where: str = "") -> Any:
    where = where or key
    value = obj.get(key)
    if value is None:
        if required:
            raise InstanceError(where, "missing")
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise InstanceError(where, f"wrong type {type(value).__name__} ({value!r})")
    return value


def parse_curator(data: bytes, *, app: str) -> AppInstance:
    """Read the data of ``/services/<app>/<id>``: a Curator ``ServiceInstance<ZookeeperInstance>``.

    Raises :class:`InstanceError` naming the field when Dubbo could not read the instance either, or
    when its ``name`` is not ``app`` (the folder it was found in).
    """
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InstanceError("(data)", f"not UTF-8 ({exc})") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise InstanceError("(data)", f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InstanceError("(data)", f"must be a JSON object, not {type(raw).__name__}")
    name = _get(raw, "name", str, required=True)
    if name != app:
        raise InstanceError("name", f"{name!r} found under the application {app!r}")
    address = _get(raw, "address", str, required=True)
    port = _get(raw, "port", int, required=True)
    instance_id = _get(raw, "id", str, required=False) or ""
    # Checked because Jackson would refuse them too; Dubbo does not use them.
    _get(raw, "sslPort", int, required=False)
    service_type = _get(raw, "serviceType", str, required=False)
    if service_type is not None and service_type not in _SERVICE_TYPES:
        raise InstanceError("serviceType", f"unknown Curator ServiceType {service_type!r}")
    registered = _get(raw, "registrationTimeUTC", int, required=False) or 0
    payload = _get(raw, "payload", dict, required=True)
    # Java refuses any other payload class; dubbo-go (which reads the payload as a plain map) wrote
    # none before it copied Java's, so a missing one is accepted.
    cls = payload.get("@class")
    if cls is not None and cls != ZOOKEEPER_INSTANCE_CLASS:
        raise InstanceError("payload.@class", f"must be {ZOOKEEPER_INSTANCE_CLASS}, not {cls!r}")
    metadata = _get(payload, "metadata", dict, required=False, where="payload.metadata") or {}
    return AppInstance(
        app=name,
        host=address,
        port=port,
        metadata=metadata,
        id=instance_id,
        registration_time_utc=registered,
    )


def to_curator(instance: AppInstance) -> bytes:
    """The node data a Dubbo 3.3 provider writes for ``instance`` (CuratorFrameworkUtils.build + Curator)."""
    document = {
        "name": instance.app,
        "id": instance.id,
        "address": instance.host,
        "port": instance.port,
        "sslPort": None,
        "payload": {
            "@class": ZOOKEEPER_INSTANCE_CLASS,
            "id": instance.id,
            "name": instance.app,
            "metadata": dict(instance.metadata),
        },
        "registrationTimeUTC": instance.registration_time_utc,
        "serviceType": "DYNAMIC",
        "uriSpec": None,
    }
    return _json_text(document).encode("utf-8")


def path_segment(value: str, what: str) -> str:
    """``value`` as one name in a ZooKeeper path (ValueError otherwise). Defence in depth: the API
    validates names, but nothing may ever escape its ZooKeeper folder (also regproxy.registry.zookeeper)."""
    if not value or "/" in value or value in (".", "..") or any(ord(c) < 0x20 for c in value):
        raise ValueError(f"invalid {what} {value!r} for a ZooKeeper path")
    return value


def instances_path(app: str, root: str = SERVICES_ROOT) -> str:
    """The folder of ``app``'s instances (Curator ``DiscoveryPathConstructorImpl.getPathForInstances``).

    ``root`` is the base path (CuratorFrameworkUtils.getRootPath: the registry URL's ``rootPath``, else
    its ``group`` with a leading ``/``; both default to ``/services``).
    """
    return f"{root}/{path_segment(app, 'application')}"


def instance_path(instance: AppInstance, root: str = SERVICES_ROOT) -> str:
    """The node of one instance: ``/services/<app>/<id>``."""
    return f"{instances_path(instance.app, root)}/{path_segment(instance.id, 'instance id')}"


# -- building the metadata (the provider side) ---------------------------------------------------------------


def metadata_service_params(protocol: str, port: int, url_params: Mapping[str, str]) -> dict[str, str]:
    """``dubbo.metadata-service.url-params`` of a MetadataService exported as ``protocol`` on ``port``.

    ``url_params`` are that service URL's parameters; as getMetadataServiceParameter, only the
    register keys are kept (in Dubbo's order, blank values left out), then ``port`` and ``protocol``.
    """
    if not protocol:
        raise ValueError("protocol must not be empty")
    if not _is_port(port):
        raise ValueError(f"invalid port {port!r}: must be 1..65535")
    params = {key: url_params[key] for key in _URL_PARAM_KEYS if url_params.get(key, "").strip()}
    params["port"] = str(port)
    params["protocol"] = protocol
    return params


def instance_metadata(
    revision: str,
    *,
    storage_type: StorageType = LOCAL,
    endpoints: Mapping[str, int] | None = None,
    metadata_service: Mapping[str, str] | None = None,
    metadata_service_version: str = METADATA_SERVICE_V1,
) -> dict[str, str]:
    """The metadata a Dubbo 3.3 provider puts on its instance.

    ``endpoints`` maps protocol -> port (ProtocolPortsMetadataCustomizer; left out when empty).
    ``metadata_service`` is :func:`metadata_service_params`' result; MetadataServiceURLParams-
    MetadataCustomizer writes it, and always ``meta-v``.  The storage type is set by
    AbstractServiceDiscovery.createServiceInstance.
    """
    if not revision:
        raise ValueError("revision must not be empty")
    if storage_type not in (LOCAL, REMOTE):
        raise ValueError(f"invalid storage type {storage_type!r}: must be {LOCAL!r} or {REMOTE!r}")
    metadata = {REVISION_KEY: revision, STORAGE_TYPE_KEY: storage_type}
    if endpoints:
        metadata[ENDPOINTS_KEY] = _json_text([{"port": p, "protocol": k} for k, p in endpoints.items()])
    if metadata_service:
        metadata[URL_PARAMS_KEY] = _json_text(dict(metadata_service))
    metadata[METADATA_VERSION_KEY] = metadata_service_version
    return metadata


# -- the service-name mapping -----------------------------------------------------------------------------


def _java_trim(text: str) -> str:
    # String.trim(): strips every char <= U+0020, not Unicode blanks.
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def mapping_path(interface: str, root: str = DUBBO_ROOT) -> str:
    """ZooKeeper node of ``interface``'s mapping: ``/dubbo/mapping/<interface>`` (ZookeeperMetadataReport)."""
    return f"{root}/{MAPPING_GROUP}/{path_segment(interface, 'interface')}"


def nacos_mapping_config(interface: str) -> tuple[str, str]:
    """Nacos ``(dataId, group)`` of ``interface``'s mapping (NacosMetadataReport.getServiceAppMapping)."""
    if not interface:
        raise ValueError("interface must not be empty")
    return interface, MAPPING_GROUP


def nacos_mapping_ticket(content: str | None) -> str:
    """The CAS ticket Dubbo passes to Nacos ``publishConfigCas``: MD5 (lowercase hex) of the content read,
    ``"0"`` when it was empty (NacosMetadataReport.getConfigItem, MD5Utils.getMd5)."""
    if not content:
        return "0"
    return hashlib.md5(content.encode("utf-8")).hexdigest()


def mapping_apps(content: str | bytes | None) -> tuple[str, ...]:
    """The application names in a mapping's content, sorted and unique (ServiceNameMapping.getAppNames:
    split on ``,``, trimmed, empty names dropped, into a TreeSet)."""
    if isinstance(content, bytes):
        content = content.decode("utf-8")
    if not content or not content.strip():
        return ()
    return tuple(sorted({name for part in content.split(",") if (name := _java_trim(part))}))


def mapping_with(content: str | None, app: str) -> str:
    """The mapping content once ``app`` is in it (MetadataServiceNameMapping.map's CAS step).

    Unchanged when a (trimmed) name already equals ``app`` — then Dubbo writes nothing; else ``app``
    appended after a ``,`` (the existing text kept as is), or ``app`` alone when there was nothing.
    """
    if not app or app != _java_trim(app) or "," in app:
        raise ValueError(f"invalid application name {app!r} for a mapping")
    if not content:
        return app
    if any(_java_trim(name) == app for name in content.split(",")):
        return content
    return f"{content},{app}"
