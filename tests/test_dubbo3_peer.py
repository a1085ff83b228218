"""The Dubbo 3 doubles (tests/peers/dubbo3.py) against each other, on a real ZooKeeper and the Nacos double.

These pin down that the provider double writes what a Java 3.3 provider writes (the expected node and
config contents below are written by hand from Dubbo's sources, each fact's class named beside it) and
that the consumer double finds and calls it the way a Java 3.3 consumer does, so that regproxy's
application-level discovery can be tested against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from regproxy.demo.client import DubboCallError
from regproxy.dubbo.frame import Status
from regproxy.registry.metadata_info import ServiceInfo
from regproxy.registry.url import DubboURL, java_url_decode
from tests.peers.dubbo3 import (
    Backend,
    Dubbo3Consumer,
    Dubbo3Provider,
    NacosBackend,
    Service,
    ZooKeeperBackend,
    answered_by,
)
from tests.peers.nacos import NacosDouble
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

GREETER = "org.x.Greeter"
ECHO = "org.x.Echo"
APP = "shop"

Backends = Callable[[], Backend]


@pytest.fixture(
    params=[
        pytest.param("zookeeper", marks=pytest.mark.zookeeper),
        pytest.param("nacos"),
    ]
)
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """``backends()`` -> a new, unstarted backend session (each double owns one, as a process does)."""
    made: list[Backend] = []
    double: NacosDouble | None = None
    if request.param == "zookeeper":
        request.getfixturevalue("zk")  # /dubbo and /services emptied
        hosts = request.getfixturevalue("zk_server").hosts

        def make() -> Backend:
            backend: Backend = ZooKeeperBackend(hosts)
            made.append(backend)
            return backend

    else:
        double = NacosDouble()
        await double.start()

        def make() -> Backend:
            assert double is not None
            backend: Backend = NacosBackend(double, tmp_path / f"nacos-{len(made)}")
            made.append(backend)
            return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.stop()
        if double is not None:
            await double.stop()


def greeter(**kw: Any) -> Service:
    return Service(GREETER, version="1.0.0", group="g", methods=("sayHi",), **kw)


# ---------------------------------------------------------------------------------------------------
# The consumer finds and calls the provider


@pytest.mark.parametrize("storage", ["local", "remote"])
async def test_consumer_resolves_and_calls_the_provider(backends: Backends, storage: Any) -> None:
    provider = await Dubbo3Provider(
        backends(), APP, [greeter(), Service(ECHO, methods=("echo",))], storage_type=storage
    ).start()
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        res = await consumer.resolve(GREETER, "1.0.0", "g")
        assert res.apps == (APP,)
        assert res.addresses == [provider.address]
        assert res.revisions == {provider.revision}
        [found] = res.providers
        assert found.revision == provider.revision
        assert found.service.match_key == f"g/{GREETER}:1.0.0:dubbo"
        assert found.params["methods"] == "sayHi"
        assert found.params["application"] == APP
        assert found.instance.storage_type == storage

        result = await consumer.call(GREETER, "sayHi", "bob", version="1.0.0", group="g")
        assert result.value == f"{provider.address}: sayHi(bob)"
        assert answered_by(result.value) == provider.address
        echoed = await consumer.call(ECHO, "echo", "x")
        assert echoed.value == f"{provider.address}: echo(x)"
        assert provider.calls == Counter({(f"g/{GREETER}:1.0.0", "sayHi"): 1, (ECHO, "echo"): 1})
        # local: one getMetadataInfo for the one revision (then cached); remote: none at all.
        assert provider.metadata_calls == (1 if storage == "local" else 0)
        assert consumer.metadata_fetches == Counter({provider.revision: 1})
        # Another version or group is not that service.
        assert (await consumer.resolve(GREETER, "2.0.0", "g")).providers == []
        assert (await consumer.resolve(GREETER, "1.0.0")).providers == []
        assert (await consumer.resolve(GREETER, "*", "*")).addresses == [provider.address]
    finally:
        await consumer.stop()
        await provider.stop(purge=True)


async def test_calls_are_spread_over_the_providers_of_an_application(backends: Backends) -> None:
    one = await Dubbo3Provider(backends(), APP, [greeter()]).start()
    two = await Dubbo3Provider(backends(), APP, [greeter()]).start()
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        assert one.revision != two.revision  # the port is part of each ServiceInfo, so of the revision
        seen: Counter[str] = Counter()
        for _ in range(10):
            result = await consumer.call(GREETER, version="1.0.0", group="g")
            seen[answered_by(result.value)] += 1
        assert seen == Counter({one.address: 5, two.address: 5})
        assert one.total_calls == two.total_calls == 5
        assert (one.metadata_calls, two.metadata_calls) == (1, 1)
    finally:
        await consumer.stop()
        await one.stop(purge=True)
        await two.stop(purge=True)


async def test_a_revision_change_is_seen(backends: Backends) -> None:
    provider = await Dubbo3Provider(backends(), APP, [greeter()]).start()
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        old = provider.revision
        assert (await consumer.resolve(GREETER, "1.0.0", "g")).revisions == {old}
        assert (await consumer.resolve(ECHO)).providers == []  # no application mapped to it yet
        new = await provider.set_services([greeter(), Service(ECHO, methods=("echo",))])
        assert new != old and new == provider.revision

        async def sees_new() -> bool:
            return (await consumer.resolve(ECHO)).revisions == {new}

        await wait_for(sees_new, 5, "the new revision")
        res = await consumer.resolve(ECHO)
        assert res.addresses == [provider.address]
        assert (await consumer.call(ECHO, "echo", "y")).value == f"{provider.address}: echo(y)"
        # MetadataServiceDelegation answers every revision the process has had.
        assert set(provider.infos) == {old, new}
        assert consumer.metadata_fetches == Counter({old: 1, new: 1})
    finally:
        await consumer.stop()
        await provider.stop(purge=True)


async def test_a_metadata_service_that_does_not_answer_leaves_the_instance_out(backends: Backends) -> None:
    provider = await Dubbo3Provider(backends(), APP, [greeter()], metadata_hang=True).start()
    consumer = await Dubbo3Consumer(backends(), metadata_timeout_s=0.3).start()
    try:
        res = await consumer.resolve(GREETER, "1.0.0", "g")
        assert res.providers == [] and len(res.instances) == 1
        [problem] = res.problems
        assert "CallTimeout" in problem and provider.revision in problem
        assert provider.metadata_calls == 1
        provider.metadata_hang = False
        provider.metadata_delay_s = 0.1  # slower than usual, within the timeout
        assert (await consumer.resolve(GREETER, "1.0.0", "g")).addresses == [provider.address]
    finally:
        await consumer.stop()
        await provider.stop(purge=True)


async def test_the_service_port_else_the_endpoint_else_the_instance_port(backends: Backends) -> None:
    # ServiceInstancesChangedListener.getServiceUrlsCache.
    unset = ServiceInfo(GREETER, "g", "1.0.0", "dubbo", -1, GREETER, {"methods": "sayHi"})
    provider = await Dubbo3Provider(backends(), APP, [unset]).start()
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        assert (await consumer.resolve(GREETER, "1.0.0", "g")).addresses == [provider.address]
        await provider.set_services([dataclasses.replace(Service.of(unset), port=1)])
        assert (await consumer.resolve(GREETER, "1.0.0", "g")).addresses == ["127.0.0.1:1"]
        await provider.stop()

        endpoints = json.dumps([{"port": 2, "protocol": "dubbo"}])
        other = Dubbo3Provider(backends(), APP, [unset], extra_metadata={"dubbo.endpoints": endpoints})
        await other.start()
        try:
            assert (await consumer.resolve(GREETER, "1.0.0", "g")).addresses == ["127.0.0.1:2"]
        finally:
            await other.stop(purge=True)
    finally:
        await consumer.stop()
        await provider.stop(purge=True)


async def test_a_call_for_another_group_is_not_found(backends: Backends) -> None:
    provider = await Dubbo3Provider(backends(), APP, [greeter()]).start()
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        [found] = (await consumer.resolve(GREETER, "1.0.0", "g")).providers
        client = await consumer._client(found.host, found.port)
        with pytest.raises(DubboCallError) as err:
            await client.call(GREETER, "sayHi", ["x"], version="1.0.0", group="h")
        assert err.value.status == Status.SERVICE_ERROR  # DubboProtocol.getInvoker
        assert "Not found exported service: h/org.x.Greeter:1.0.0" in err.value.message
        assert provider.total_calls == 0
    finally:
        await consumer.stop()
        await provider.stop(purge=True)


async def test_two_applications_share_a_mapping(backends: Backends) -> None:
    shop = Dubbo3Provider(backends(), APP, [greeter()])
    other = Dubbo3Provider(backends(), "other", [greeter()])
    # Started together: the mapping's compare-and-set keeps both names whichever writes first.
    await asyncio.gather(shop.start(), other.start())
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        res = await consumer.resolve(GREETER, "1.0.0", "g")
        # MetadataServiceNameMapping.map appends ",<app>" to what it read.
        assert res.mapping in ("shop,other", "other,shop")
        assert res.apps == ("other", "shop")
        assert res.addresses == sorted([shop.address, other.address])
        # unregister() removes the instance only: the mapping stays (Java never removes itself).
        await other.stop()

        async def other_gone() -> bool:
            return (await consumer.resolve(GREETER, "1.0.0", "g")).addresses == [shop.address]

        await wait_for(other_gone, 5, "the instance of other to go")
        assert (await consumer.resolve(GREETER, "1.0.0", "g")).apps == ("other", "shop")
    finally:
        await consumer.stop()
        await shop.stop(purge=True)
        await other.stop(purge=True)


async def test_a_killed_provider_goes_with_its_session(backends: Backends) -> None:
    provider = await Dubbo3Provider(backends(), APP, [greeter()]).start()
    consumer = await Dubbo3Consumer(backends()).start()
    try:
        assert (await consumer.resolve(GREETER, "1.0.0", "g")).addresses == [provider.address]
        await provider.kill()  # no unregister: the ephemeral node (instance) goes with the session

        async def gone() -> bool:
            return not (await consumer.resolve(GREETER, "1.0.0", "g")).instances

        await wait_for(gone, 5, "the killed provider's instance to go")
    finally:
        await consumer.stop()
        await provider.stop()


# ---------------------------------------------------------------------------------------------------
# What is written, against contents written by hand from Dubbo's sources

# A ServiceInfo given exactly, so that the revision can be written out by hand.
PARAMS = {"side": "provider", "methods": "sayHi", "application": APP}


def hand_revision(port: int) -> str:
    # MetadataInfo.calAndGetRevision: app, then per service (TreeMap order of the keys)
    # ServiceInfo.toDescString() = matchKey + port + path + new TreeMap<>(params), hashed by MD5Utils.getMd5.
    text = f"shopg/{GREETER}:1.0.0:dubbo{port}{GREETER}" + "{application=shop, methods=sayHi, side=provider}"
    return hashlib.md5(text.encode()).hexdigest()


def hand_metadata(port: int, revision: str, timestamp: int, storage: str) -> dict[str, str]:
    metadata = {
        # ProtocolPortsMetadataCustomizer -> ServiceInstanceMetadataUtils.setEndpoints (a JSON list of
        # DefaultServiceInstance.Endpoint {port, protocol}).
        "dubbo.endpoints": f'[{{"port":{port},"protocol":"dubbo"}}]',
        # AbstractServiceDiscovery.calOrUpdateInstanceRevision (EXPORTED_SERVICES_REVISION_PROPERTY_NAME).
        "dubbo.metadata.revision": revision,
        # AbstractServiceDiscovery.createServiceInstance -> setMetadataStorageType.
        "dubbo.metadata.storage-type": storage,
        # MetadataServiceURLParamsMetadataCustomizer: always meta-v (MetadataServiceDelegation.VERSION).
        "meta-v": "1.0.0",
        # MetadataInfo.extractInstanceParams (DefaultMetadataParamsFilter.includedInstanceParams).
        "timestamp": str(timestamp),
    }
    if storage == "local":
        # MetadataServiceURLParamsMetadataCustomizer with ServiceInstanceMetadataUtils
        # .getMetadataServiceParameter: the register keys of the MetadataService URL in
        # RegistryProtocol.DEFAULT_REGISTER_PROVIDER_KEYS order, then port and protocol.  With storage
        # remote the MetadataService is not exported, so there are none (ExporterDeployListener).
        metadata["dubbo.metadata-service.url-params"] = (
            '{"version":"1.0.0","dubbo":"2.0.2","release":"3.3.0","side":"provider",'
            f'"port":"{port}","protocol":"dubbo"}}'
        )
    return dict(sorted(metadata.items()))  # ServiceInstance.getSortedMetadata (a TreeMap)


def hand_metadata_info(port: int, revision: str) -> dict[str, Any]:
    # MetadataInfo's and ServiceInfo's non-transient fields (MetadataInfo.getContent -> JsonUtils.toJson).
    return {
        "app": APP,
        "revision": revision,
        "services": {
            f"g/{GREETER}:1.0.0:dubbo": {
                "name": GREETER,
                "group": "g",
                "version": "1.0.0",
                "protocol": "dubbo",
                "port": port,
                "path": GREETER,
                "params": PARAMS,
            }
        },
    }


def exact_greeter() -> Service:
    return Service(GREETER, version="1.0.0", group="g", methods=("sayHi",), params=PARAMS)


async def start_exact(backend: Backend, storage: Any) -> Dubbo3Provider:
    provider = Dubbo3Provider(backend, APP, [exact_greeter()], storage_type=storage, register_interface=True)
    return await provider.start()


@pytest.mark.zookeeper
@pytest.mark.parametrize("storage", ["local", "remote"])
async def test_zookeeper_nodes_are_what_java_writes(
    zk: KazooClient, zk_server: ZooKeeperServer, storage: Any
) -> None:
    with contextlib.suppress(NoNodeError):
        zk.delete("/services", recursive=True)
    provider = await start_exact(ZooKeeperBackend(zk_server.hosts), storage)
    try:
        port, revision = provider.port, provider.revision
        assert revision == hand_revision(port)
        node = f"/services/{APP}/127.0.0.1:{port}"  # ZookeeperServiceDiscovery.DEFAULT_GROUP, generateId
        data, stat = zk.get(node)
        assert stat.ephemeralOwner != 0  # Curator ServiceType.DYNAMIC
        registered = json.loads(data)["registrationTimeUTC"]
        metadata = hand_metadata(port, revision, provider.timestamp_ms, storage)
        # Curator's JsonInstanceSerializer (Jackson, compact), OldServiceInstance's property order; the
        # payload is CuratorFrameworkUtils.build's ZookeeperInstance(id, name, metadata) with @class.
        compact = json.dumps(metadata, separators=(",", ":"))
        expected = (
            f'{{"name":"shop","id":"127.0.0.1:{port}","address":"127.0.0.1","port":{port},"sslPort":null,'
            '"payload":{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance",'
            f'"id":"127.0.0.1:{port}","name":"shop","metadata":{compact}}},'
            f'"registrationTimeUTC":{registered},"serviceType":"DYNAMIC","uriSpec":null}}'
        )
        assert data.decode() == expected
        # ZookeeperMetadataReport.registerServiceAppMapping: /dubbo/mapping/<interface>, persistent.
        mapping, stat = zk.get(f"/dubbo/mapping/{GREETER}")
        assert mapping == b"shop" and stat.ephemeralOwner == 0
        # ZookeeperMetadataReport.publishAppMetadata: /dubbo/metadata/<app>/<revision>, remote only here.
        report = f"/dubbo/metadata/{APP}/{revision}"
        if storage == "remote":
            content, stat = zk.get(report)
            assert json.loads(content) == hand_metadata_info(port, revision) and stat.ephemeralOwner == 0
        else:
            assert zk.exists(report) is None
        # Interface level as well (register-mode all): ZookeeperRegistry's /dubbo/<iface>/providers/<url>.
        [leaf] = zk.get_children(f"/dubbo/{GREETER}/providers")
        url = DubboURL.parse(java_url_decode(leaf))
        assert (url.host, url.port, url.path) == ("127.0.0.1", port, GREETER)
        assert {k: url.params[k] for k in ("application", "group", "version", "methods")} == {
            "application": APP,
            "group": "g",
            "version": "1.0.0",
            "methods": "sayHi",
        }

        # A revision change is Curator's updateService: setData on the same ephemeral node.
        before = zk.exists(node)
        new = await provider.set_services([exact_greeter(), Service(ECHO, methods=("echo",))])
        after_data, after = zk.get(node)
        assert after.czxid == before.czxid and after.version == before.version + 1
        assert json.loads(after_data)["payload"]["metadata"]["dubbo.metadata.revision"] == new
        assert zk.get(f"/dubbo/mapping/{ECHO}")[0] == b"shop"
    finally:
        await provider.stop()
    # unregister(): the instance and the interface-level URL go, the mapping and the report stay.
    assert zk.exists(node) is None
    assert zk.get_children(f"/dubbo/{GREETER}/providers") == []
    assert zk.get(f"/dubbo/mapping/{GREETER}")[0] == b"shop"
    assert (zk.exists(f"/dubbo/metadata/{APP}/{revision}") is not None) == (storage == "remote")


@pytest.mark.parametrize("storage", ["local", "remote"])
async def test_nacos_entries_are_what_java_writes(tmp_path: Path, storage: Any) -> None:
    async with NacosDouble() as double:
        provider = await start_exact(NacosBackend(double, tmp_path / "p"), storage)
        try:
            port, revision = provider.port, provider.revision
            assert revision == hand_revision(port)
            # NacosServiceDiscovery.doRegister / NacosNamingServiceUtils.toInstance: service <app> in
            # DEFAULT_GROUP, ip, port, the sorted metadata.
            [instance] = double.instances(APP)
            assert (instance.ip, instance.port, instance.ephemeral) == ("127.0.0.1", port, True)
            assert dict(instance.metadata) == hand_metadata(port, revision, provider.timestamp_ms, storage)
            # NacosMetadataReport: the mapping is config <interface> in group "mapping".
            mapping = double.config(GREETER, group="mapping")
            assert mapping is not None and mapping.content == "shop"
            # NacosMetadataReport.publishAppMetadata: config <app> in group <revision>.
            report = double.config(APP, group=revision)
            if storage == "remote":
                assert report is not None
                assert json.loads(report.content) == hand_metadata_info(port, revision)
            else:
                assert report is None
            # NacosRegistry at interface level: service providers:<iface>:<version>:<group>.
            [url_instance] = double.instances(f"providers:{GREETER}:1.0.0:g")
            assert url_instance.metadata["application"] == APP
            assert url_instance.metadata["category"] == "providers"

            new = await provider.set_services([exact_greeter(), Service(ECHO, methods=("echo",))])
            [instance] = double.instances(APP)
            assert instance.metadata["dubbo.metadata.revision"] == new
            mapping = double.config(ECHO, group="mapping")
            assert mapping is not None and mapping.content == "shop"
        finally:
            await provider.stop()
        assert double.instances(APP) == []
        assert double.instances(f"providers:{GREETER}:1.0.0:g") == []
        mapping = double.config(GREETER, group="mapping")
        assert mapping is not None and mapping.content == "shop"
