"""Test doubles of a Dubbo 3 provider *application* and a Dubbo 3.3 *consumer* at application level.

No Java Dubbo runs where the tests run, so these play one against a real registry: ZooKeeper through a
plain kazoo client, or the Nacos double (tests/peers/nacos) through the official nacos-sdk-python client.
Neither uses regproxy's registry adapters or its discovery code: they are what regproxy's application-level
discovery is tested against.  The wire pieces come from regproxy's codec (frames, hessian2, the
MetadataService request and answer) and its pure models (``MetadataInfo``, the Curator document), which
have tests of their own against Dubbo's sources.

``Dubbo3Provider`` is one provider process of application ``app``: a Dubbo server (regproxy's demo
``ProviderProtocol``, made group-aware, plus the MetadataService) that registers as a Dubbo 3.3 provider
with ``register-mode=instance`` does (dubbo-go 3.1+ registers the same way), optionally also at interface
level.  ``Dubbo3Consumer`` resolves and calls a service as a Dubbo 3.3 consumer with
``register-mode``/``migration`` at application level does.  Each double owns its backend (one registry
session, as one Java process has): ``start()`` opens it, ``stop()`` closes it.

Facts followed (apache/dubbo 3.3, the class named at each step):

Where things are (ZooKeeper):

* ``/services/<app>/<host>:<port>``: the instance, ephemeral (``ZookeeperServiceDiscovery.DEFAULT_GROUP``,
  ``CuratorFrameworkUtils.build``/``generateId``; Curator's ``ServiceDiscoveryImpl`` registers it as
  ``ServiceType.DYNAMIC``, i.e. ephemeral, and re-creates a node left behind).  Curator creates the parents
  as *container* nodes; kazoo cannot, so here they are persistent (an empty ``/services/<app>`` stays).
  Its data is Curator's JSON of ``ServiceInstance<ZookeeperInstance>`` (regproxy's ``to_curator``);
  ``doUpdate`` (a new revision, same id) is Curator's ``updateService``: ``setData`` on that node.
* ``/dubbo/mapping/<interface>``: the application names serving the interface, joined by ``,``; written
  by ``MetadataServiceNameMapping.map`` with compare-and-set on the node version
  (``ZookeeperMetadataReport.registerServiceAppMapping``/``getConfigItem``), persistent, never removed.
* ``/dubbo/metadata/<app>/<revision>``: the ``MetadataInfo`` JSON (``ZookeeperMetadataReport
  .publishAppMetadata``, ``SubscriberMetadataIdentifier`` path ``metadata/<app>/<revision>``), persistent,
  written only when blank, never removed on shutdown (``AbstractServiceDiscovery.unregister`` has the
  ``unReportMetadata`` call commented out).
* ``/dubbo/<interface>/providers/<url>``: interface-level registration (register-mode ``all``).

Where things are (Nacos; ``NacosServiceDiscovery``, ``NacosNamingServiceUtils``, ``NacosMetadataReport``):

* the instance: an ephemeral instance of service ``<app>`` in group ``DEFAULT_GROUP`` (the registry URL's
  group), ip and port the instance's, metadata its sorted metadata; an update re-registers it
  (``NacosNamingServiceWrapper.updateInstance`` falls back to ``registerInstance``).  Consumers read it
  with ``selectInstances(app, group, healthy=true)``.
* the mapping: config dataId ``<interface>``, group ``mapping``, compare-and-set with the md5 of the content
  read (``"0"`` when there was none) as ``casMd5``.
* the metadata report: config dataId ``<app>``, group ``<revision>``.
* interface level: an instance of service ``providers:<interface>:<version>:<group>`` (``NacosRegistry``).

The provider (``AbstractServiceDiscovery``, ``ServiceInstanceMetadataUtils``, customizers):

* Start order: services exported (and registered at interface level when asked), each interface mapped,
  then ``register()``: ``reportMetadata`` (the report, for storage ``remote``) before ``doRegister``.
* Instance metadata: ``dubbo.metadata.revision``, ``dubbo.metadata.storage-type``, ``dubbo.endpoints``
  (``ProtocolPortsMetadataCustomizer``), ``dubbo.metadata-service.url-params`` and ``meta-v``
  (``MetadataServiceURLParamsMetadataCustomizer``), ``timestamp`` (``MetadataInfo
  .extractInstanceParams``).  With storage ``remote`` the MetadataService is not exported
  (``ExporterDeployListener.onModuleStarted``), so there are no url-params and nothing answers it.
* ``MetadataServiceDelegation.getMetadataInfo(revision)`` answers every revision this process has had
  (``AbstractServiceDiscovery.metadataInfos`` keeps them), null for any other.
* ``unregister()`` removes the instance only; the mapping and the report stay.  An update to the empty
  revision ``"0"`` (no services left) unregisters the instance (``AbstractServiceDiscovery.doUpdate``).
* A call to an exported path whose group or version does not match is ``SERVICE_ERROR`` "Not found
  exported service" (``DubboProtocol.getInvoker``: the exporter map is keyed by group/path:version:port).

The consumer (``MetadataServiceNameMapping``, ``ServiceInstancesChangedListener``, ``MetadataUtils``):

* The mapping's application names: split on ``,``, trimmed, empty ones dropped (``ServiceNameMapping
  .getAppNames``); then each application's instances.  An instance is read as ``CuratorFrameworkUtils
  .build(URL, ServiceInstance)`` does: ``name``, ``address``, ``port`` and ``payload.metadata``, nothing else.
* Instances without a revision or with ``"0"`` are skipped (``ServiceInstancesChangedListener.onEvent``).
* Per revision one ``MetadataInfo``, cached (``AbstractServiceDiscovery.getRemoteMetadata``,
  ``MetaCacheManager``): storage ``remote`` → the metadata report (``MetadataUtils.getMetadata``), else
  ``getMetadataInfo(revision)`` over Dubbo to the instance, on the url-params' port and protocol, the
  instance port without them (``StandardMetadataServiceURLBuilder``), one connection per fetch, closed
  after (``MetadataUtils.destroyProxy``).  A failed fetch leaves the instances of that revision out.
* The service matched by interface, version and group (``ServiceKey.Matcher``: ``*`` matches all, a
  comma list matches each, empty matches only empty) and protocol (``ProtocolServiceKey.Matcher``: none
  matches all); its address: the ServiceInfo's port when > 0, else the ``dubbo.endpoints`` port of its
  protocol, else the instance port (``ServiceInstancesChangedListener.getServiceUrlsCache``).

Left out: the 1 s retries of a failed metadata fetch (the consumer records the failure instead), the
consumer's own instance and subscriptions, MetadataServiceV2 (``meta-v=2.0.0``), Triple.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry
from v2.nacos import (
    ClientConfigBuilder,
    ConfigParam,
    DeregisterInstanceParam,
    ListInstanceParam,
    NacosConfigService,
    NacosNamingService,
    RegisterInstanceParam,
)

from regproxy.demo.client import DubboClient
from regproxy.demo.provider import Provider, ProviderProtocol, ServiceRegistry
from regproxy.dubbo.encode import encode_error
from regproxy.dubbo.frame import HESSIAN2, Frame, Status
from regproxy.dubbo.metadata_service import (
    METADATA_SERVICE,
    answer_metadata_request,
    decode_metadata_response,
    encode_metadata_request,
    is_metadata_service_request,
)
from regproxy.dubbo.request import RequestBody
from regproxy.registry.instances import (
    EMPTY_REVISION,
    LOCAL,
    REMOTE,
    AppInstance,
    StorageType,
    instance_metadata,
    mapping_with,
    metadata_service_params,
    nacos_mapping_ticket,
    to_curator,
)
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo, dump_json, parse_json
from regproxy.registry.nacos import close_config_service, service_name
from regproxy.registry.nacos import instance_metadata as url_metadata
from regproxy.registry.url import DubboURL, provider_url

__all__ = [
    "JAVA_RELEASE",
    "Backend",
    "CallResult",
    "Dubbo3Consumer",
    "Dubbo3Provider",
    "InstanceRead",
    "NacosBackend",
    "NoProvider",
    "ProviderAddress",
    "Resolution",
    "Service",
    "ZooKeeperBackend",
    "answered_by",
]

log = logging.getLogger("tests.peers.dubbo3")

JAVA_RELEASE = "3.3.0"  # the ``release`` a Java 3.3.0 provider writes (Version.getVersion())
MAPPING_GROUP = "mapping"  # ServiceNameMapping.DEFAULT_MAPPING_GROUP
NACOS_DEFAULT_GROUP = "DEFAULT_GROUP"  # Nacos's Constants.DEFAULT_GROUP, the registry URL's group default
CAS_RETRIES = 10  # MetadataServiceNameMapping: DEFAULT_CAS_RETRY_TIMES
ANY = "*"  # CommonConstants.ANY_VALUE


def _now_ms() -> int:
    return int(time.time() * 1000)


def _trim(text: str) -> str:
    # String.trim(): every char <= U+0020 at either end.
    return text.strip("".join(chr(c) for c in range(0x21)))


def _names(content: str) -> list[str]:
    """ServiceNameMapping.getAppNames, kept in their order (Dubbo puts them in a TreeSet)."""
    return [name for part in content.split(",") if (name := _trim(part))]


# ---------------------------------------------------------------------------------------------------
# What a consumer reads of an instance


@dataclass(frozen=True)
class InstanceRead:
    """An instance as a consumer reads it (``CuratorFrameworkUtils.build`` / ``toServiceInstance``)."""

    app: str
    host: str
    port: int
    metadata: Mapping[str, str]
    id: str = ""  # the ZooKeeper node name ("" on Nacos)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def revision(self) -> str | None:
        return self.metadata.get("dubbo.metadata.revision") or None

    @property
    def storage_type(self) -> str:
        # ServiceInstanceMetadataUtils.getMetadataStorageType: "local" when absent.
        return self.metadata.get("dubbo.metadata.storage-type", LOCAL)

    def endpoint_port(self, protocol: str) -> int | None:
        """The ``dubbo.endpoints`` port of ``protocol`` (DefaultServiceInstance.getEndpoints)."""
        text = self.metadata.get("dubbo.endpoints")
        if not text:
            return None
        for endpoint in json.loads(text):
            if endpoint.get("protocol") == protocol:
                return int(endpoint["port"])
        return None

    @property
    def url_params(self) -> dict[str, str] | None:
        """``dubbo.metadata-service.url-params``, None when absent or blank."""
        text = self.metadata.get("dubbo.metadata-service.url-params", "")
        return json.loads(text) if text.strip() else None


# ---------------------------------------------------------------------------------------------------
# Backends: one registry session each


class Backend(Protocol):
    """A registry session as a Dubbo 3 process uses it.  ``start``/``stop`` are idempotent."""

    kind: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    # provider side
    async def register_instance(self, instance: AppInstance) -> None: ...
    async def update_instance(self, instance: AppInstance) -> None: ...
    async def unregister_instance(self, instance: AppInstance) -> None: ...
    async def add_mapping(self, interface: str, app: str) -> None: ...
    async def remove_mapping(self, interface: str, app: str) -> None: ...
    async def publish_metadata(self, info: MetadataInfo) -> None: ...
    async def remove_metadata(self, app: str, revision: str) -> None: ...
    async def register_url(self, url: DubboURL) -> None: ...
    async def unregister_url(self, url: DubboURL) -> None: ...

    # consumer side
    async def read_mapping(self, interface: str) -> str: ...
    async def read_instances(self, app: str) -> tuple[list[InstanceRead], list[str]]: ...
    async def read_metadata(self, app: str, revision: str) -> str: ...


class ZooKeeperBackend:
    """A kazoo session on ``hosts`` (``ZookeeperServiceDiscovery`` + ``ZookeeperMetadataReport``)."""

    kind = "zookeeper"

    def __init__(self, hosts: str, *, services_root: str = "/services", dubbo_root: str = "/dubbo") -> None:
        self.hosts = hosts
        self.services_root = services_root
        self.dubbo_root = dubbo_root
        self.client: KazooClient | None = None

    # -- paths ------------------------------------------------------------------------------------

    def instance_path(self, app: str, instance_id: str) -> str:
        return f"{self.services_root}/{app}/{instance_id}"

    def mapping_path(self, interface: str) -> str:
        return f"{self.dubbo_root}/{MAPPING_GROUP}/{interface}"

    def metadata_path(self, app: str, revision: str) -> str:
        return f"{self.dubbo_root}/metadata/{app}/{revision}"

    def url_path(self, url: DubboURL) -> str:
        interface = url.params.get("interface") or url.path
        return f"{self.dubbo_root}/{interface}/providers/{url.encoded()}"

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is not None:
            return
        client = KazooClient(
            hosts=self.hosts, timeout=10.0, connection_retry=KazooRetry(max_tries=-1, max_delay=0.5)
        )
        await asyncio.to_thread(client.start, 15)
        self.client = client

    async def stop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await asyncio.to_thread(_close_kazoo, client)

    def _zk(self) -> KazooClient:
        if self.client is None:
            raise RuntimeError("the ZooKeeper backend is not started")
        return self.client

    # -- provider side ----------------------------------------------------------------------------

    async def register_instance(self, instance: AppInstance) -> None:
        zk, path, data = self._zk(), self.instance_path(instance.app, instance.id), to_curator(instance)

        def create() -> None:
            try:
                zk.create(path, data, ephemeral=True, makepath=True)
            except NodeExistsError:
                # Curator's internalRegisterService: delete what is there and create again, so that
                # watchers see the new registration.
                with contextlib.suppress(NoNodeError):
                    zk.delete(path)
                zk.create(path, data, ephemeral=True, makepath=True)

        await asyncio.to_thread(create)

    async def update_instance(self, instance: AppInstance) -> None:
        zk = self._zk()
        await asyncio.to_thread(zk.set, self.instance_path(instance.app, instance.id), to_curator(instance))

    async def unregister_instance(self, instance: AppInstance) -> None:
        zk = self._zk()
        with contextlib.suppress(NoNodeError):
            await asyncio.to_thread(zk.delete, self.instance_path(instance.app, instance.id))

    async def add_mapping(self, interface: str, app: str) -> None:
        await asyncio.to_thread(self._cas_mapping, interface, app, True)

    async def remove_mapping(self, interface: str, app: str) -> None:
        await asyncio.to_thread(self._cas_mapping, interface, app, False)

    def _cas_mapping(self, interface: str, app: str, add: bool) -> None:
        # MetadataServiceNameMapping.map: read content and stat, append, write with that version;
        # a concurrent writer makes the write fail and the loop read again.
        zk, path = self._zk(), self.mapping_path(interface)
        for _ in range(CAS_RETRIES + 1):
            try:
                data, stat = zk.get(path)
                content: str | None = data.decode()
            except NoNodeError:
                content, stat = None, None
            if add:
                new = mapping_with(content, app)
                if new == content:
                    return
            else:
                if content is None or app not in _names(content):
                    return
                new = ",".join(name for name in _names(content) if name != app)
            try:
                if stat is None:
                    zk.create(path, new.encode(), makepath=True)
                elif not new:
                    zk.delete(path, version=stat.version)
                else:
                    zk.set(path, new.encode(), version=stat.version)
                return
            except (BadVersionError, NodeExistsError, NoNodeError):
                continue
        raise RuntimeError(f"mapping {path}: compare-and-set failed {CAS_RETRIES + 1} times")

    async def publish_metadata(self, info: MetadataInfo) -> None:
        assert info.app is not None and info.revision is not None
        zk, path, content = self._zk(), self.metadata_path(info.app, info.revision), dump_json(info)

        def publish() -> None:
            # ZookeeperMetadataReport.publishAppMetadata: only when the node is blank.
            try:
                data, _ = zk.get(path)
            except NoNodeError:
                data = b""
            if not data.strip():
                if zk.exists(path) is None:
                    zk.create(path, content.encode(), makepath=True)
                else:
                    zk.set(path, content.encode())

        await asyncio.to_thread(publish)

    async def remove_metadata(self, app: str, revision: str) -> None:
        zk = self._zk()
        with contextlib.suppress(NoNodeError):
            await asyncio.to_thread(zk.delete, self.metadata_path(app, revision))

    async def register_url(self, url: DubboURL) -> None:
        zk = self._zk()
        await asyncio.to_thread(zk.create, self.url_path(url), b"", ephemeral=True, makepath=True)

    async def unregister_url(self, url: DubboURL) -> None:
        zk = self._zk()
        with contextlib.suppress(NoNodeError):
            await asyncio.to_thread(zk.delete, self.url_path(url))

    # -- consumer side ----------------------------------------------------------------------------

    async def read_mapping(self, interface: str) -> str:
        zk = self._zk()
        try:
            data, _ = await asyncio.to_thread(zk.get, self.mapping_path(interface))
        except NoNodeError:
            return ""
        return cast(bytes, data).decode()

    async def read_instances(self, app: str) -> tuple[list[InstanceRead], list[str]]:
        zk, folder = self._zk(), f"{self.services_root}/{app}"

        def read() -> tuple[list[InstanceRead], list[str]]:
            try:
                children = sorted(zk.get_children(folder))
            except NoNodeError:
                return [], []
            found: list[InstanceRead] = []
            problems: list[str] = []
            for child in children:
                try:
                    data, _ = zk.get(f"{folder}/{child}")
                except NoNodeError:
                    continue  # gone between the listing and the read
                try:
                    found.append(_read_curator(data, child))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    problems.append(f"{folder}/{child}: unreadable instance ({type(exc).__name__}: {exc})")
            return found, problems

        return await asyncio.to_thread(read)

    async def read_metadata(self, app: str, revision: str) -> str:
        zk = self._zk()
        try:
            data, _ = await asyncio.to_thread(zk.get, self.metadata_path(app, revision))
        except NoNodeError:
            return ""
        return cast(bytes, data).decode()


def _close_kazoo(client: KazooClient) -> None:
    client.stop()
    client.close()


def _read_curator(data: bytes, node: str) -> InstanceRead:
    """CuratorFrameworkUtils.build(URL, ServiceInstance): name, address, port, payload.metadata only."""
    doc = json.loads(data.decode("utf-8"))
    metadata = (doc.get("payload") or {}).get("metadata") or {}
    port = doc["port"]
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port {port!r} is not a number")
    return InstanceRead(
        app=str(doc["name"]),
        host=str(doc["address"]),
        port=port,
        metadata={str(k): str(v) for k, v in metadata.items()},
        id=node,
    )


class NacosBackend:
    """A naming and a config client of nacos-sdk-python on ``server`` (a NacosDouble or ``host:port``),
    their logs and caches under ``directory`` (``NacosServiceDiscovery`` + ``NacosMetadataReport``)."""

    kind = "nacos"

    def __init__(
        self, server: Any, directory: Path, *, namespace: str = "", group: str = NACOS_DEFAULT_GROUP
    ) -> None:
        self.server_address: str = server if isinstance(server, str) else server.address
        self.directory = Path(directory)
        self.namespace = namespace
        self.group = group
        self.naming: Any = None
        self.config: Any = None

    def _client_config(self, sub: str) -> Any:
        where = self.directory / sub
        config = (
            ClientConfigBuilder()
            .server_address(self.server_address)
            .namespace_id(self.namespace)
            .log_dir(str(where / "logs"))
            .cache_dir(str(where / "cache"))
            .load_cache_at_start(False)
            .build()
        )
        # Without this the SDK keeps the last instance of a service after it went away.
        config.update_cache_when_empty = True
        return config

    async def start(self) -> None:
        if self.naming is not None:
            return
        self.naming = await NacosNamingService.create_naming_service(self._client_config("naming"))
        self.config = await NacosConfigService.create_config_service(self._client_config("config"))

    async def stop(self) -> None:
        naming, self.naming = self.naming, None
        config, self.config = self.config, None
        if naming is not None:
            # 2.0.11's shutdown() awaits something that is no coroutine after its work is done.
            with contextlib.suppress(TypeError):
                await naming.shutdown()
        if config is not None:
            await close_config_service(config, 5.0)
        self._drop_log_handlers()

    def _drop_log_handlers(self) -> None:
        # The SDK adds a file handler under log_dir to these loggers for every client it creates.
        prefix = str(self.directory)
        for name in ("naming", "config", "nacos"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(prefix):
                    logger.removeHandler(handler)
                    handler.close()

    def _clients(self) -> tuple[Any, Any]:
        if self.naming is None or self.config is None:
            raise RuntimeError("the Nacos backend is not started")
        return self.naming, self.config

    # -- provider side ----------------------------------------------------------------------------

    async def register_instance(self, instance: AppInstance) -> None:
        naming, _ = self._clients()
        # NacosNamingServiceUtils.toInstance: service name, ip, port, sorted metadata, enabled, healthy.
        param = RegisterInstanceParam(
            service_name=instance.app,
            group_name=self.group,
            ip=instance.host,
            port=instance.port,
            metadata=dict(instance.metadata),
        )
        if not await naming.register_instance(param):
            raise RuntimeError(
                f"Nacos refused the instance {instance.host}:{instance.port} of {instance.app}"
            )

    async def update_instance(self, instance: AppInstance) -> None:
        await self.register_instance(instance)

    async def unregister_instance(self, instance: AppInstance) -> None:
        naming, _ = self._clients()
        param = DeregisterInstanceParam(
            service_name=instance.app, group_name=self.group, ip=instance.host, port=instance.port
        )
        await naming.deregister_instance(param)

    async def _get_config(self, data_id: str, group: str) -> str:
        _, config = self._clients()
        return cast(str, await config.get_config(ConfigParam(data_id=data_id, group=group)) or "")

    async def add_mapping(self, interface: str, app: str) -> None:
        await self._cas_mapping(interface, app, add=True)

    async def remove_mapping(self, interface: str, app: str) -> None:
        await self._cas_mapping(interface, app, add=False)

    async def _cas_mapping(self, interface: str, app: str, *, add: bool) -> None:
        _, config = self._clients()
        for _ in range(CAS_RETRIES + 1):
            content = await self._get_config(interface, MAPPING_GROUP)
            # NacosMetadataReport.getConfigItem: the ticket is the md5 of the content, "0" when empty.
            ticket = nacos_mapping_ticket(content)
            if add:
                new = mapping_with(content, app)
                if new == content:
                    return
            else:
                if app not in _names(content):
                    return
                new = ",".join(name for name in _names(content) if name != app)
                if not new:
                    await config.remove_config(ConfigParam(data_id=interface, group=MAPPING_GROUP))
                    return
            param = ConfigParam(data_id=interface, group=MAPPING_GROUP, content=new, cas_md5=ticket)
            with contextlib.suppress(Exception):  # publishConfigCas failing is "try again"
                if await config.publish_config(param):
                    return
        raise RuntimeError(f"mapping {interface}: compare-and-set failed {CAS_RETRIES + 1} times")

    async def publish_metadata(self, info: MetadataInfo) -> None:
        _, config = self._clients()
        assert info.app is not None and info.revision is not None
        param = ConfigParam(data_id=info.app, group=info.revision, content=dump_json(info))
        if not await config.publish_config(param):
            raise RuntimeError(f"Nacos refused the metadata of {info.app} revision {info.revision}")

    async def remove_metadata(self, app: str, revision: str) -> None:
        _, config = self._clients()
        await config.remove_config(ConfigParam(data_id=app, group=revision))

    def _url_instance(self, url: DubboURL) -> Any:

        interface = url.params.get("interface") or url.path
        name = service_name(
            "providers", interface, url.params.get("version", ""), url.params.get("group", "")
        )
        # NacosRegistry.createInstance: ip, port, the URL's parameters plus category, protocol, path.
        return RegisterInstanceParam(
            service_name=name, group_name=self.group, ip=url.host, port=url.port, metadata=url_metadata(url)
        )

    async def register_url(self, url: DubboURL) -> None:
        naming, _ = self._clients()
        await naming.register_instance(self._url_instance(url))

    async def unregister_url(self, url: DubboURL) -> None:
        naming, _ = self._clients()
        param = self._url_instance(url)
        await naming.deregister_instance(
            DeregisterInstanceParam(
                service_name=param.service_name, group_name=self.group, ip=url.host, port=url.port
            )
        )

    # -- consumer side ----------------------------------------------------------------------------

    async def read_mapping(self, interface: str) -> str:
        return await self._get_config(interface, MAPPING_GROUP)

    async def read_instances(self, app: str) -> tuple[list[InstanceRead], list[str]]:
        naming, _ = self._clients()
        # NacosServiceDiscovery.getInstances: selectInstances(app, group, healthy=true), which subscribes
        # and then reads the SDK's cache, kept up to date by the server's pushes: a change is seen once
        # its push has come (tests wait for it).
        param = ListInstanceParam(service_name=app, group_name=self.group, healthy_only=True)
        found = [
            InstanceRead(
                app=app,
                host=str(instance.ip),
                port=int(instance.port),
                metadata={str(k): str(v) for k, v in (instance.metadata or {}).items()},
            )
            for instance in await naming.list_instances(param)
        ]
        return sorted(found, key=lambda i: (i.host, i.port)), []

    async def read_metadata(self, app: str, revision: str) -> str:
        return await self._get_config(app, revision)


# ---------------------------------------------------------------------------------------------------
# The provider


@dataclass(frozen=True)
class Service:
    """One exported service.  ``params`` are its ServiceInfo's params exactly (None: what a Java 3.3
    provider's URL gives after ``DefaultMetadataParamsFilter``); ``port`` its ServiceInfo's port (None:
    the provider's; -1 leaves it unset, so a consumer takes the ``dubbo.endpoints`` port)."""

    interface: str
    version: str = ""
    group: str = ""
    methods: tuple[str, ...] = ("sayHi",)
    params: Mapping[str, str] | None = None
    port: int | None = None
    protocol: str = "dubbo"

    @classmethod
    def of(cls, info: ServiceInfo) -> Service:
        """A service whose ServiceInfo is ``info`` as given (its methods from ``params["methods"]``)."""
        methods = tuple(m for m in info.params.get("methods", "").split(",") if m)
        return cls(
            interface=info.name or "",
            version=info.version or "",
            group=info.group or "",
            methods=methods,
            params=dict(info.params),
            port=info.port,
            protocol=info.protocol or "dubbo",
        )

    @property
    def key(self) -> str:
        """``group/interface:version`` as Dubbo prints a service key."""
        key = f"{self.group}/{self.interface}" if self.group else self.interface
        return f"{key}:{self.version}" if self.version else key


def answered_by(value: str) -> str:
    """The provider name in a value a ``Dubbo3Provider`` answered (``"<name>: <method>(<args>)"``)."""
    return value.partition(": ")[0]


def _norm_version(version: str) -> str:
    return "" if version in ("", "0.0.0") else version


class _Protocol(ProviderProtocol):
    """The demo provider's connection, with the MetadataService and group-aware lookups in front."""

    def __init__(self, inner: Provider, double: Dubbo3Provider) -> None:
        super().__init__(inner)
        self.double = double

    def _handle(self, frame: Frame) -> None:
        if frame.is_request and not frame.is_event and frame.serialization == HESSIAN2:
            try:
                body = RequestBody(frame.body)
                _ = body.attachments
            except Exception:  # the demo provider answers a malformed body
                body = None
            if body is not None and self.double._intercept(self, frame, body):
                return
        super()._handle(frame)


class Dubbo3Provider:
    """One provider process of application ``app`` on ``host:port`` (port 0: any free one).

    ``services``: :class:`Service` or ``ServiceInfo`` values.  ``storage_type``: ``local`` (consumers ask
    the MetadataService) or ``remote`` (the MetadataInfo is written to the metadata report, and no
    MetadataService is served).  ``register_interface``: also register each service at interface level.
    ``metadata_delay_s`` delays the MetadataService's answers; ``metadata_hang`` never answers them.
    ``instance_metadata`` replaces the whole instance metadata (the revision is still set), for a test
    that wants exactly some Java provider's; ``extra_metadata`` is laid over the computed one.
    Each business call is answered with ``"<name>: <method>(<args>)"``; ``name`` defaults to the address.
    """

    def __init__(
        self,
        backend: Backend,
        app: str,
        services: Iterable[Service | ServiceInfo],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_type: StorageType = LOCAL,
        register_interface: bool = False,
        metadata_delay_s: float = 0.0,
        metadata_hang: bool = False,
        release: str = JAVA_RELEASE,
        instance_metadata: Mapping[str, str] | None = None,
        extra_metadata: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        if storage_type not in (LOCAL, REMOTE):
            raise ValueError(f"storage_type must be {LOCAL!r} or {REMOTE!r}, not {storage_type!r}")
        self.backend = backend
        self.app = app
        self.host = host
        self._bind_port = port
        self.storage_type: StorageType = storage_type
        self.register_interface = register_interface
        self.metadata_delay_s = metadata_delay_s
        self.metadata_hang = metadata_hang
        self.release = release
        self._metadata_override = dict(instance_metadata) if instance_metadata is not None else None
        self.extra_metadata = dict(extra_metadata or {})
        self._name = name
        self._services: list[Service] = [_as_service(s) for s in services]
        self.timestamp_ms = _now_ms()
        self.infos: dict[str, MetadataInfo] = {}  # every revision this process has had
        self.info: MetadataInfo | None = None
        self.instance: AppInstance | None = None  # as registered; None while not registered
        self.urls: list[DubboURL] = []  # interface-level registrations
        self.calls: Counter[tuple[str, str]] = Counter()  # (service key, method) -> calls
        self.metadata_calls = 0
        self.mapped: set[str] = set()
        self._published: set[str] = set()  # revisions written to the metadata report
        self._inner = Provider(ServiceRegistry(), name=name or app)
        self._timers: set[asyncio.TimerHandle] = set()
        self._started = False

    # -- addresses --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._inner.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return self._name or self.address

    @property
    def revision(self) -> str:
        return self.info.revision if self.info is not None and self.info.revision else EMPTY_REVISION

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(self._services)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # -- what is registered -----------------------------------------------------------------------

    def service_url(self, service: Service) -> DubboURL:
        """The URL a Java 3.3 provider exports ``service`` with (what interface level registers)."""
        params = {
            "background": "false",
            "deprecated": "false",
            "dynamic": "true",
            "generic": "false",
            "release": self.release,
            "service-name-mapping": "true",
        }
        url = provider_url(
            interface=service.interface,
            ip=self.host,
            port=self.port,
            methods=service.methods,
            version=service.version,
            group=service.group,
            application=self.app,
            params=params,
            pid=os.getpid(),
            timestamp_ms=self.timestamp_ms,
        )
        return DubboURL(service.protocol, url.host, url.port, url.path, url.params)

    def service_info(self, service: Service) -> ServiceInfo:
        """``new ServiceInfo(url, filters)``: the URL's params less pid and timestamp (the only keys of
        DefaultMetadataParamsFilter's exclusions such a URL has), unless the test gave the params."""
        if service.params is not None:
            params = dict(service.params)
        else:
            url = self.service_url(service)
            params = {k: v for k, v in url.params.items() if k not in ("pid", "timestamp")}
        return ServiceInfo(
            name=service.interface,
            group=service.group or None,
            version=service.version or None,
            protocol=service.protocol,
            port=self.port if service.port is None else service.port,
            path=service.interface,
            params=params,
        )

    def metadata_info(self) -> MetadataInfo:
        return MetadataInfo.of(self.app, (self.service_info(s) for s in self._services))

    def instance_for(self, revision: str) -> AppInstance:
        if self._metadata_override is not None:
            metadata = dict(self._metadata_override)
            metadata["dubbo.metadata.revision"] = revision
        else:
            url_params = None
            if self.storage_type == LOCAL:
                exported = {"version": "1.0.0", "dubbo": "2.0.2", "release": self.release, "side": "provider"}
                url_params = metadata_service_params("dubbo", self.port, exported)
            protocols = {s.protocol: self.port for s in self._services} or {"dubbo": self.port}
            metadata = instance_metadata(
                revision, storage_type=self.storage_type, endpoints=protocols, metadata_service=url_params
            )
            metadata["timestamp"] = str(self.timestamp_ms)
        metadata.update(self.extra_metadata)
        return AppInstance(
            app=self.app, host=self.host, port=self.port, metadata=metadata, registration_time_utc=_now_ms()
        )

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> Dubbo3Provider:
        loop = asyncio.get_running_loop()
        self._inner.server = await loop.create_server(
            lambda: _Protocol(self._inner, self), self.host, self._bind_port
        )
        await self.backend.start()
        self._started = True
        await self._apply(self._services, first=True)
        return self

    async def set_services(self, services: Iterable[Service | ServiceInfo]) -> str:
        """Export ``services`` instead (a revision change): the new MetadataInfo is served beside the old
        ones, the instance's data rewritten with the new revision.  Returns the new revision."""
        await self._apply([_as_service(s) for s in services], first=False)
        return self.revision

    async def stop(self, *, purge: bool = False) -> None:
        """Unregister the instance (and the interface-level URLs) and close the server and the session,
        as a Java provider shutting down does.  ``purge`` also removes what Java leaves behind (its
        name in the mappings, the metadata report), for tests that share a registry."""
        if not self._started:
            return
        self._started = False
        if self.instance is not None:
            await self.backend.unregister_instance(self.instance)
            self.instance = None
        for url in self.urls:
            await self.backend.unregister_url(url)
        self.urls = []
        if purge:
            for interface in sorted(self.mapped):
                await self.backend.remove_mapping(interface, self.app)
            for revision in sorted(self._published):
                await self.backend.remove_metadata(self.app, revision)
        await self._close_server()
        await self.backend.stop()

    async def kill(self) -> None:
        """A crash: the server and the session go without unregistering anything."""
        if not self._started:
            return
        self._started = False
        self._inner.abort_connections()
        await self._close_server()
        await self.backend.stop()

    async def _close_server(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self._inner.close(grace=0)

    async def __aenter__(self) -> Dubbo3Provider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _apply(self, services: list[Service], *, first: bool) -> None:
        self._services = services
        registry = ServiceRegistry()
        for service in services:
            registry.add(
                service.interface,
                {m: self._handler(m) for m in service.methods},
                version=_norm_version(service.version),
            )
        self._inner.services = registry
        for conn in list(self._inner.connections):
            conn.registry = registry
        info = self.metadata_info()
        revision = info.revision or EMPTY_REVISION
        self.info = info
        self.infos[revision] = info
        # ServiceConfig.exported: each service registered at interface level (mode all), then mapped.
        if self.register_interface:
            wanted = [self.service_url(s) for s in services]
            for url in self.urls:
                if url not in wanted:
                    await self.backend.unregister_url(url)
            for url in wanted:
                if url not in self.urls:
                    await self.backend.register_url(url)
            self.urls = wanted
        for service in services:
            if service.interface not in self.mapped and service.interface != METADATA_SERVICE:
                await self.backend.add_mapping(service.interface, self.app)
                self.mapped.add(service.interface)
        # AbstractServiceDiscovery.register/update: report the metadata, then (re)register.
        if revision == EMPTY_REVISION:
            if self.instance is not None:
                await self.backend.unregister_instance(self.instance)
                self.instance = None
            return
        if self.storage_type == REMOTE:
            await self.backend.publish_metadata(info)
            self._published.add(revision)
        instance = self.instance_for(revision)
        if self.instance is None:
            await self.backend.register_instance(instance)
        elif self.instance.metadata.get("dubbo.metadata.revision") != revision:
            await self.backend.update_instance(instance)
        else:
            return
        self.instance = instance

    def _handler(self, method: str) -> Any:
        def answer(*args: Any) -> str:
            return f"{self.name}: {method}({', '.join(str(a) for a in args)})"

        return answer

    # -- requests ---------------------------------------------------------------------------------

    def _intercept(self, conn: _Protocol, frame: Frame, body: RequestBody) -> bool:
        """Handle ``body`` here (True) or leave it to the demo provider (False)."""
        if is_metadata_service_request(body) and self.storage_type == LOCAL:
            self._answer_metadata(conn, frame, body)
            return True
        version = _norm_version(body.version)
        exported = [s for s in self._services if s.interface == body.path]
        service = next(
            (s for s in exported if _norm_version(s.version) == version and s.group == body.group), None
        )
        if service is None:
            # DubboProtocol.getInvoker: no exporter under group/path:version:port.
            if frame.two_way:
                keys = sorted(f"{s.key}:{self.port}" for s in self._services)
                asked = Service(body.path, version, body.group).key
                conn.send(
                    encode_error(
                        frame.request_id,
                        Status.SERVICE_ERROR,
                        f"Not found exported service: {asked}:{self.port} in {keys}, "
                        "may be version or group mismatch",
                    )
                )
            return True
        if body.method in service.methods:
            self.calls[(service.key, body.method)] += 1
        return False  # the demo provider calls the handler (or says the method is not there)

    def _answer_metadata(self, conn: _Protocol, frame: Frame, body: RequestBody) -> None:
        self.metadata_calls += 1
        if self.metadata_hang:
            return
        reply = answer_metadata_request(frame, body, self.app, self.infos)
        if reply is None:
            return
        if self.metadata_delay_s > 0:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.metadata_delay_s, conn.send, reply)
            self._timers.add(timer)
        else:
            conn.send(reply)


def _as_service(service: Service | ServiceInfo) -> Service:
    return Service.of(service) if isinstance(service, ServiceInfo) else service


# ---------------------------------------------------------------------------------------------------
# The consumer


@dataclass(frozen=True)
class ProviderAddress:
    """One address the consumer resolved for the service: the instance, the ServiceInfo it matched."""

    host: str
    port: int
    instance: InstanceRead
    revision: str
    service: ServiceInfo

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def app(self) -> str:
        return self.instance.app

    @property
    def params(self) -> Mapping[str, str]:
        return self.service.params


@dataclass
class Resolution:
    """Everything the consumer read on its way to the addresses of one service."""

    interface: str
    version: str
    group: str
    mapping: str = ""  # the mapping's content as read
    apps: tuple[str, ...] = ()
    instances: list[InstanceRead] = field(default_factory=list)
    metadata: dict[str, MetadataInfo] = field(default_factory=dict)  # revision -> MetadataInfo
    providers: list[ProviderAddress] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what was skipped, and why

    @property
    def addresses(self) -> list[str]:
        return sorted(p.address for p in self.providers)

    @property
    def revisions(self) -> set[str]:
        return {i.revision for i in self.instances if i.revision}


@dataclass(frozen=True)
class CallResult:
    value: Any
    provider: ProviderAddress
    resolution: Resolution

    @property
    def address(self) -> str:
        return self.provider.address


class NoProvider(LookupError):
    """The consumer resolved no address for the service (``resolution`` says what it saw)."""

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution
        problems = "; ".join(resolution.problems) or "none"
        super().__init__(
            f"no provider of {Service(resolution.interface, resolution.version, resolution.group).key}: "
            f"mapping {resolution.mapping!r}, {len(resolution.instances)} instance(s), problems: {problems}"
        )


def _matches(rule: str, value: str | None) -> bool:
    """ServiceKey.Matcher for version and group: ``*`` all, a comma list each, empty only empty."""
    value = value or ""
    if rule == ANY:
        return True
    if not rule:
        return not value
    if "," in rule:
        return any(part.strip() == value for part in rule.split(","))
    return rule == value


class Dubbo3Consumer:
    """A Dubbo 3.3 consumer at application level.  ``metadata_timeout_s`` is the MetadataService call's
    timeout (Dubbo's default 5 s); fetched MetadataInfos are cached per revision, as Dubbo does
    (``metadata_fetches`` counts the fetches per revision)."""

    def __init__(
        self,
        backend: Backend,
        *,
        metadata_timeout_s: float = 5.0,
        call_timeout_s: float = 3.0,
    ) -> None:
        self.backend = backend
        self.metadata_timeout_s = metadata_timeout_s
        self.call_timeout_s = call_timeout_s
        self.cache: dict[str, MetadataInfo] = {}
        self.metadata_fetches: Counter[str] = Counter()
        self._clients: dict[str, DubboClient] = {}
        self._next: Counter[str] = Counter()

    async def start(self) -> Dubbo3Consumer:
        await self.backend.start()
        return self

    async def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        await self.backend.stop()

    async def __aenter__(self) -> Dubbo3Consumer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def forget_metadata(self) -> None:
        self.cache.clear()

    async def resolve(
        self, interface: str, version: str = "", group: str = "", *, protocol: str | None = "dubbo"
    ) -> Resolution:
        """The addresses of ``interface`` at ``version``/``group`` (``protocol`` None: any)."""
        res = Resolution(interface, version, group)
        res.mapping = await self.backend.read_mapping(interface)
        res.apps = tuple(sorted(set(_names(res.mapping))))
        by_revision: dict[str, list[InstanceRead]] = {}
        for app in res.apps:
            instances, problems = await self.backend.read_instances(app)
            res.problems.extend(problems)
            for instance in instances:
                res.instances.append(instance)
                revision = instance.revision
                if not revision or revision == EMPTY_REVISION:
                    res.problems.append(f"{app} {instance.address}: no revision, skipped")
                    continue
                by_revision.setdefault(revision, []).append(instance)
        for revision, instances in by_revision.items():
            info = await self._metadata(revision, instances, res.problems)
            if info is None:
                continue
            res.metadata[revision] = info
            for service in info.services.values():
                if service.name != interface or not _matches(version, service.version):
                    continue
                if not _matches(group, service.group):
                    continue
                if protocol is not None and service.protocol != protocol:
                    continue
                for instance in instances:
                    res.providers.append(
                        ProviderAddress(instance.host, _port(instance, service), instance, revision, service)
                    )
        res.providers.sort(key=lambda p: (p.host, p.port, p.service.match_key))
        return res

    async def call(
        self,
        interface: str,
        method: str = "sayHi",
        arg: str = "world",
        *,
        version: str = "",
        group: str = "",
        address: str | None = None,
    ) -> CallResult:
        """Resolve, pick the next address round-robin (or ``address``), call ``method(arg)`` there.
        Raises NoProvider, or what DubboClient.call raises."""
        res = await self.resolve(interface, version, group)
        providers = res.providers
        if address is not None:
            providers = [p for p in providers if p.address == address]
        if not providers:
            raise NoProvider(res)
        key = Service(interface, version, group).key
        provider = providers[self._next[key] % len(providers)]
        self._next[key] += 1
        client = await self._client(provider.host, provider.port)
        value = await client.call(
            interface,
            method,
            [arg],
            version=provider.service.version or "",
            group=provider.service.group or "",
            timeout=self.call_timeout_s,
        )
        return CallResult(value, provider, res)

    async def _client(self, host: str, port: int) -> DubboClient:
        key = f"{host}:{port}"
        client = self._clients.get(key)
        if client is None or client.is_closed:
            client = await DubboClient.connect(host, port)
            self._clients[key] = client
        return client

    async def _metadata(
        self, revision: str, instances: Sequence[InstanceRead], problems: list[str]
    ) -> MetadataInfo | None:
        cached = self.cache.get(revision)
        if cached is not None:
            return cached
        for instance in instances:
            self.metadata_fetches[revision] += 1
            try:
                if instance.storage_type == REMOTE:
                    info = await self._from_report(instance, revision)
                else:
                    info = await self._from_metadata_service(instance, revision)
            except Exception as exc:
                problems.append(
                    f"{instance.app} {instance.address}: no metadata for revision {revision} "
                    f"({type(exc).__name__}: {exc})"
                )
                continue
            self.cache[revision] = info
            return info
        return None

    async def _from_report(self, instance: InstanceRead, revision: str) -> MetadataInfo:
        content = await self.backend.read_metadata(instance.app, revision)
        if not content:
            raise LookupError(f"the metadata report has nothing for {instance.app}/{revision}")
        info = parse_json(content)
        if info.revision != revision:
            raise ValueError(f"the metadata report's {instance.app}/{revision} is revision {info.revision}")
        return info

    async def _from_metadata_service(self, instance: InstanceRead, revision: str) -> MetadataInfo:
        params = instance.url_params
        port = int(params["port"]) if params and params.get("port") else instance.port
        timeout_ms = int(self.metadata_timeout_s * 1000)
        async with await DubboClient.connect(instance.host, port) as client:
            request_id = client.new_request_id()
            request = encode_metadata_request(
                request_id, instance.app, revision, url_params=params, timeout_ms=timeout_ms
            )
            frame = await client.exchange(
                request_id, request, timeout=self.metadata_timeout_s, what="MetadataService.getMetadataInfo"
            )
        return decode_metadata_response(frame, instance=f"{instance.host}:{port}", revision=revision)


def _port(instance: InstanceRead, service: ServiceInfo) -> int:
    # ServiceInstancesChangedListener.getServiceUrlsCache.
    if service.port > 0:
        return service.port
    endpoint = instance.endpoint_port(service.protocol or "dubbo")
    return endpoint if endpoint is not None else instance.port
