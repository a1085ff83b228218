"""What a Dubbo 3.3 provider application registers at application level for regproxy's publications.

Pure values, no I/O: from the URLs the sidecar registers at interface level, the ``MetadataInfo`` a
Dubbo 3 consumer fetches (its revision) and the instance regproxy writes under ``/services/<app>/``.
Facts followed (apache/dubbo 3.3; the class named at each step):

* A provider registers each exported URL with ``ServiceDiscoveryRegistry`` as well (register-mode
  ``all``); ``AbstractServiceDiscovery.register(URL)`` hands it to ``MetadataInfo.addService``, which
  builds ``new ServiceInfo(url, filters)`` and keys it by its match key.  The URL is the one the
  interface-level registry gets (``RegistryProtocol.register``'s ``registeredProviderUrl``), so the
  URL regproxy registers for a publication is the exported URL here.
* ``ServiceInfo(URL, filters)``: name = ``url.getServiceInterface()`` (the ``interface`` parameter,
  the path when empty), group and version = the ``group``/``version`` parameters (null when absent),
  protocol, port and path of the URL; params = every URL parameter except those the active
  ``MetadataParamsFilter``s exclude.  The one active by default, ``DefaultMetadataParamsFilter``,
  includes no service parameter and excludes ``monitor, bind.ip, bind.port, qos.enable, qos.host,
  qos.port, qos.accept.foreign.ip, validation, interfaces, pid, timestamp, heartbeat.timeout, ipv6``:
  a key is dropped when it ``equalsIgnoreCase`` one of them or contains ``"." + key``
  (``ServiceInfo.extractServiceParams``).  So the revision does not change with the pid or the
  start time of the process.
* The same filter's ``instanceParamsIncluded`` (``heartbeat.timeout, timestamp, ipv6``) are copied
  from each URL into the instance metadata (``MetadataInfo.extractInstanceParams`` then
  ``ServiceInstanceMetadataCustomizer``), the last URL added winning; a consumer warms a provider up
  from that ``timestamp``: the service's own was filtered out, and ``InstanceAddressURL
  .getServiceParameter`` falls back to the instance metadata.  Dubbo refuses at export two URLs with
  different ``ipv6``/``heartbeat.timeout`` values; regproxy has accepted its publications already,
  so the last one wins for those too.
* The instance metadata a consumer reads (``ServiceInstanceMetadataUtils`` keys): the revision
  (``AbstractServiceDiscovery.calOrUpdateInstanceRevision``), the storage type
  (``createServiceInstance``: the registry URL's ``dubbo.metadata.storage-type``, ``local`` by
  default), ``dubbo.endpoints`` (``ProtocolPortsMetadataCustomizer``: each exported protocol's port),
  ``dubbo.metadata-service.url-params`` and ``meta-v`` (``MetadataServiceURLParamsMetadataCustomizer``).
* The MetadataService a provider serves (``ConfigurableMetadataServiceExporter.exportV1`` through
  ``InternalServiceConfigBuilder``): interface ``org.apache.dubbo.metadata.MetadataService``, group
  the application name, version ``1.0.0`` (``MetadataServiceDelegation.VERSION``), not registered.
  Its url-params are ``getMetadataServiceParameter`` of its URL: application, group, deprecated and
  timestamp removed, the register keys left (``version``, ``dubbo``, ``release``, ``side`` for the
  URL regproxy would export), then ``port`` and ``protocol``.  A consumer builds the reference from
  them, adding ``group`` = the application (``StandardMetadataServiceURLBuilder.generateWithMetadata``):
  without ``version`` it would ask for a MetadataService of no version.

Left out on purpose: ``REGISTRY_CLUSTER`` (``ServiceDiscoveryRegistry.addRegistryClusterKey`` adds the
Java provider's registry config id to each URL; regproxy has no such config and a consumer does not
route on it), and the ``InfraAdapter`` extras (environment variables of the Java process).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from regproxy.discovery.desired import PublishSpec
from regproxy.registry.instances import (
    LOCAL,
    METADATA_SERVICE_V1,
    AppInstance,
    StorageType,
    instance_metadata,
    metadata_service_params,
)
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from regproxy.registry.url import DUBBO_PROTOCOL_VERSION, DubboURL, regproxy_release

__all__ = [
    "INSTANCE_PARAMS_INCLUDED",
    "SERVICE_PARAMS_EXCLUDED",
    "app_instance",
    "app_publications",
    "instance_params",
    "metadata_info",
    "metadata_service_url_params",
    "service_info",
    "service_params",
]

# DefaultMetadataParamsFilter.excludedServiceParams, in its order.
SERVICE_PARAMS_EXCLUDED = (
    "monitor",  # CommonConstants.MONITOR_KEY
    "bind.ip",  # remoting Constants.BIND_IP_KEY
    "bind.port",  # remoting Constants.BIND_PORT_KEY
    "qos.enable",  # QosConstants.QOS_ENABLE
    "qos.host",  # QosConstants.QOS_HOST
    "qos.port",  # QosConstants.QOS_PORT
    "qos.accept.foreign.ip",  # QosConstants.ACCEPT_FOREIGN_IP
    "validation",  # FilterConstants.VALIDATION_KEY
    "interfaces",  # rpc Constants.INTERFACES
    "pid",  # CommonConstants.PID_KEY
    "timestamp",  # CommonConstants.TIMESTAMP_KEY
    "heartbeat.timeout",  # remoting Constants.HEARTBEAT_TIMEOUT_KEY
    "ipv6",  # CommonConstants.IPV6_KEY
)
# DefaultMetadataParamsFilter.includedInstanceParams, in its order.
INSTANCE_PARAMS_INCLUDED = ("heartbeat.timeout", "timestamp", "ipv6")


def _java_upper(c: str) -> str:
    # Character.toUpperCase maps one char to one char; Python's may give several ("ß" -> "SS").
    u = c.upper()
    return u if len(u) == 1 else c


def _java_lower(c: str) -> str:
    if c == "\u0130":  # Character.toLowerCase('İ') is 'i'; Python gives "i" + a combining dot
        return "i"
    low = c.lower()
    return low if len(low) == 1 else c


def _equals_ignore_case(a: str, b: str) -> bool:
    """``String.equalsIgnoreCase``: per char, equal once upper-cased, or once upper- then lower-cased."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        ux, uy = _java_upper(x), _java_upper(y)
        if ux != uy and _java_lower(ux) != _java_lower(uy):
            return False
    return True


def _excluded(key: str) -> bool:
    return any(_equals_ignore_case(key, ex) or f".{ex}" in key for ex in SERVICE_PARAMS_EXCLUDED)


def service_params(url: DubboURL) -> dict[str, str]:
    """The URL parameters a ServiceInfo keeps (``ServiceInfo.extractServiceParams`` with the
    ``DefaultMetadataParamsFilter`` alone active)."""
    return {key: value for key, value in url.params.items() if not _excluded(key)}


def service_info(url: DubboURL) -> ServiceInfo:
    """``new MetadataInfo.ServiceInfo(url, filters)`` for an exported URL."""
    return ServiceInfo(
        # URL.getServiceInterface(): getParameter(INTERFACE_KEY, getPath()), the path when empty.
        name=url.params.get("interface") or url.path,
        group=url.params.get("group"),  # URL.getGroup(): null when absent
        version=url.params.get("version"),
        protocol=url.protocol,
        port=url.port,
        path=url.path,
        params=service_params(url),
    )


def metadata_info(app: str, urls: Iterable[DubboURL]) -> MetadataInfo:
    """The MetadataInfo of application ``app`` exporting ``urls``, its revision calculated
    (``MetadataInfo.addService`` for each, then ``calAndGetRevision``)."""
    return MetadataInfo.of(app, (service_info(url) for url in urls))


def instance_params(urls: Iterable[DubboURL]) -> dict[str, str]:
    """The instance-level parameters taken from the exported URLs, the last URL winning
    (``MetadataInfo.extractInstanceParams``)."""
    params: dict[str, str] = {}
    for url in urls:
        for key in INSTANCE_PARAMS_INCLUDED:
            value = url.params.get(key)
            if value is not None:
                params[key] = value
    return params


def metadata_service_url_params(protocol: str, port: int) -> dict[str, str]:
    """``dubbo.metadata-service.url-params`` of the MetadataService (v1) regproxy serves on
    ``protocol``/``port``: what ``getMetadataServiceParameter`` keeps of the URL
    ``ConfigurableMetadataServiceExporter`` would export (version 1.0.0, group = the application)."""
    exported = {
        "version": METADATA_SERVICE_V1,
        "dubbo": DUBBO_PROTOCOL_VERSION,
        "release": regproxy_release(),
        "side": "provider",
    }
    return metadata_service_params(protocol, port, exported)


def app_instance(
    app: str, urls: Sequence[DubboURL], revision: str, *, storage_type: StorageType = LOCAL
) -> AppInstance:
    """The instance of ``app`` serving ``urls`` (all on one address: the sidecar's ingress), with the
    MetadataService on that same address, over Dubbo: the ingress answers it there whatever the
    services' protocols (it takes Dubbo and Triple on one port).  ValueError when ``urls`` is empty
    or holds two addresses."""
    if not urls:
        raise ValueError(f"application {app!r} exports nothing: it has no instance")
    first = urls[0]
    for url in urls[1:]:
        if (url.host, url.port) != (first.host, first.port):
            raise ValueError(f"application {app!r} is published on {first.address} and {url.address}")
    endpoints: dict[str, int] = {}
    for url in urls:  # ProtocolPortsMetadataCustomizer: protocol -> port, a later URL overriding
        endpoints[url.protocol] = url.port
    metadata = instance_metadata(
        revision,
        storage_type=storage_type,
        endpoints=endpoints,
        metadata_service=metadata_service_url_params("dubbo", first.port),
    )
    metadata.update(instance_params(urls))
    return AppInstance(app=app, host=first.host, port=first.port, metadata=metadata)


def app_publications(
    publications: Iterable[tuple[PublishSpec, DubboURL]],
    default_app: str,
    *,
    storage_type: StorageType = LOCAL,
) -> dict[str, tuple[MetadataInfo, AppInstance]]:
    """Per application (``PublishSpec.application``, ``default_app`` when empty): its MetadataInfo
    and the instance to register, from the publications and the URL each is registered with.

    The revision does not depend on the order of ``publications``; the instance's ``timestamp`` is
    the last publication's, as Dubbo keeps the last service's (see :func:`instance_params`).
    """
    if not default_app:
        raise ValueError("default_app must not be empty")
    by_app: dict[str, list[DubboURL]] = {}
    for spec, url in publications:
        by_app.setdefault(spec.application or default_app, []).append(url)
    result: dict[str, tuple[MetadataInfo, AppInstance]] = {}
    for app, urls in by_app.items():
        info = metadata_info(app, urls)
        instance = app_instance(app, urls, info.calculated_revision(), storage_type=storage_type)
        result[app] = (info, instance)
    return result
