"""One contract for every registry: the same expectations, run against a real ZooKeeper and
against the Nacos protocol double driven by the official nacos-sdk-python client (and, for the
empty-provider protection, against memory:// too: the policy is discovery's, whatever the adapter).

Each test runs a sidecar in-process (its HTTP API, its tables) on the registry under test; the
registry is changed behind its back the way other processes or operators would change it.

Dubbo 3 application-level discovery (the end of this file) is held to its contract on the Registry
itself, on every registry that holds it: nothing wires it into a sidecar yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote_plus, urlsplit

import aiohttp
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from regproxy.api.admin import subscriptions_view
from regproxy.config import Config
from regproxy.discovery.protection import Hold
from regproxy.registry.base import Registry
from regproxy.registry.instances import AppInstance
from regproxy.registry.instances import instance_metadata as app_instance_metadata
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from regproxy.registry.nacos import instance_metadata, service_name, to_nacos_weight
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import provider_url
from regproxy.registry.zookeeper import ZooKeeperRegistry
from regproxy.sidecar import Sidecar
from tests.peers.nacos.server import NacosDouble
from tests.ports import free_port
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

IFACE = "com.x.ContractSvc"
VERSION = "1.0.0"
GROUP = "g"


class Providers(Protocol):
    """A registry whose providers the test changes behind the sidecar's back."""

    url: str

    def add(self, ip: str, port: int, weight: int = 100) -> None: ...
    def remove(self, ip: str, port: int) -> None: ...


class Backend(Providers, Protocol):
    back_within_s: float  # how long a registration may take to come back after a restart

    def set_weight(self, ip: str, port: int, weight: int) -> None: ...
    def nodes(self) -> dict[str, dict[str, str]]: ...  # address -> URL parameters, as registered
    async def restart(self, down_s: float) -> None: ...


def _url(ip: str, port: int, weight: int) -> Any:
    return provider_url(
        interface=IFACE, ip=ip, port=port, version=VERSION, group=GROUP, params={"weight": str(weight)},
        pid=1, timestamp_ms=1,
    )  # fmt: skip


class ZooKeeperBackend:
    path = f"/dubbo/{IFACE}/providers"
    back_within_s = 5.0

    def __init__(self, server: ZooKeeperServer, zk: KazooClient) -> None:
        self.server, self.zk = server, zk
        self.url = f"zookeeper://{server.hosts}"
        self._leaves: dict[tuple[str, int], str] = {}

    def add(self, ip: str, port: int, weight: int = 100) -> None:
        leaf = _url(ip, port, weight).encoded()
        self.zk.ensure_path(self.path)
        self.zk.create(f"{self.path}/{leaf}", ephemeral=True)
        self._leaves[(ip, port)] = leaf

    def remove(self, ip: str, port: int) -> None:
        self.zk.delete(f"{self.path}/{self._leaves.pop((ip, port))}")

    def set_weight(self, ip: str, port: int, weight: int) -> None:
        self.remove(ip, port)  # a weight edit in ZooKeeper is a delete and a create
        self.add(ip, port, weight)

    def nodes(self) -> dict[str, dict[str, str]]:
        out = {}
        for leaf in self.zk.get_children(self.path) if self.zk.exists(self.path) else []:
            parts = urlsplit(unquote_plus(leaf))
            out[parts.netloc] = {k: v[0] for k, v in parse_qs(parts.query).items()}
        return out

    async def restart(self, down_s: float) -> None:
        await asyncio.to_thread(self.server.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.server.start)


class NacosBackend:
    service = service_name("providers", IFACE, VERSION, GROUP)
    back_within_s = 5.0

    def __init__(self, double: NacosDouble) -> None:
        self.double = double
        self.url = f"nacos://{double.address}"

    def add(self, ip: str, port: int, weight: int = 100) -> None:
        # Persistent, as a provider kept by another Nacos server would be: it survives the restart.
        meta = instance_metadata(_url(ip, port, weight))
        self.double.register_external(
            self.service, ip, port, weight=to_nacos_weight(weight), metadata=meta, ephemeral=False
        )

    def remove(self, ip: str, port: int) -> None:
        assert self.double.deregister_external(self.service, ip, port)

    def set_weight(self, ip: str, port: int, weight: int) -> None:
        assert self.double.set_weight(self.service, ip, port, to_nacos_weight(weight)) == 1

    def nodes(self) -> dict[str, dict[str, str]]:
        return {f"{i.ip}:{i.port}": dict(i.metadata) for i in self.double.instances(self.service)}

    async def restart(self, down_s: float) -> None:
        await self.double.restart(downtime=down_s)


class MemoryBackend:
    """memory://, the in-process registry: providers set by "someone else" through its test hooks."""

    url = "memory://"

    def __init__(self) -> None:
        MemoryRegistry.reset_all()
        self.other = MemoryRegistry()  # never started: only its hooks on the shared store are used

    def add(self, ip: str, port: int, weight: int = 100) -> None:
        self.other.set_provider(_url(ip, port, weight))

    def remove(self, ip: str, port: int) -> None:
        (url,) = [u for u in self.other.nodes(IFACE) if u.address == f"{ip}:{port}"]
        assert self.other.remove_provider(url)


@asynccontextmanager
async def backend_named(name: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if name == "zookeeper":
        yield ZooKeeperBackend(request.getfixturevalue("zk_server"), request.getfixturevalue("zk"))
    elif name == "nacos":
        async with NacosDouble() as double:
            yield NacosBackend(double)
    else:
        yield MemoryBackend()


@pytest.fixture(params=[pytest.param("zookeeper", marks=pytest.mark.zookeeper), "nacos"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with backend_named(request.param, request) as b:
        yield b


@pytest.fixture(params=[pytest.param("zookeeper", marks=pytest.mark.zookeeper), "nacos", "memory"])
async def providers(request: pytest.FixtureRequest) -> AsyncIterator[Providers]:
    async with backend_named(request.param, request) as b:
        yield b


def sidecar_config(tmp: Path, registries: list[str], **extra: Any) -> Config:
    return Config.from_dict({
        "egress": f"127.0.0.1:{free_port()}", "ingress": f"127.0.0.1:{free_port()}",
        "api": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}",
        "advertise_ip": "127.0.0.1", "app_port": 20990, "data_dir": str(tmp), "registries": registries,
        **extra,
    })  # fmt: skip


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Sidecar]:
    sc = Sidecar(config)
    await sc.start()
    try:
        await wait_for(
            lambda: all(r.connected for r in sc.discovery.registries.values()), 10, "registry connected"
        )
        yield sc
    finally:
        await sc.stop()


@pytest.fixture
async def sidecar(backend: Backend, tmp_path: Path) -> AsyncIterator[Sidecar]:
    # Nothing answers on the app port here: the app check would rightly take the publications out of
    # the registry (suspend_publications), which is not what these tests look at.
    config = sidecar_config(tmp_path, [backend.url], health={"app_check": {"enabled": False}})
    async with running(config) as sc:
        yield sc


async def api(sc: Sidecar, path: str, body: object) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{sc.config.api.port}{path}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def hosts(sc: Sidecar) -> dict[str, int]:
    cluster = sc.egress_table.current.clusters.get(f"{GROUP}/{IFACE}:{VERSION}")
    return {h.address: h.weight for h in cluster.hosts} if cluster else {}


SERVICE = {"interface": IFACE, "version": VERSION, "group": GROUP}
PUB = {"service": {**SERVICE, "methods": ["b", "a"], "port": 20991, "application": "contract"}}


async def test_publish_rewrites_port_and_unpublish_removes(backend: Backend, sidecar: Sidecar) -> None:
    status, body = await api(sidecar, "/pub", PUB)
    assert status == 200 and body["err_no"] == 0, body
    me = f"127.0.0.1:{sidecar.ingress.address[1]}"
    await wait_for(lambda: me in backend.nodes(), 3, "the registered provider")
    params = backend.nodes()[me]
    assert params["interface"] == IFACE and params["version"] == VERSION and params["group"] == GROUP
    assert params["methods"] == "a,b" and params["side"] == "provider" and params["application"] == "contract"
    # The ingress sends that service to the application's real port.
    route = sidecar.ingress_table.current.match(IFACE, VERSION, "a", GROUP)
    assert route is not None and sidecar.ingress_table.current.clusters[route.cluster].hosts[0].port == 20991
    assert (await api(sidecar, "/pub", PUB))[0] == 200  # idempotent
    status, _ = await api(sidecar, "/unpub", PUB)
    assert status == 200
    await wait_for(lambda: me not in backend.nodes(), 3, "the provider to go")
    assert (await api(sidecar, "/unpub", PUB))[0] == 404


async def test_subscribe_follows_added_removed_changed(backend: Backend, sidecar: Sidecar) -> None:
    backend.add("10.1.0.1", 20882)
    status, body = await api(sidecar, "/sub", {"service": SERVICE})
    assert status == 200 and body["cluster"] == f"{GROUP}/{IFACE}:{VERSION}"
    assert [p["address"] for p in body["providers"]] == ["10.1.0.1:20882"]
    backend.add("10.1.0.2", 20882)
    both = {"10.1.0.1:20882", "10.1.0.2:20882"}
    await wait_for(lambda: set(hosts(sidecar)) == both, 2, "the added provider")
    backend.set_weight("10.1.0.2", 20882, 300)
    await wait_for(lambda: hosts(sidecar).get("10.1.0.2:20882") == 300, 2, "the weight change")
    assert hosts(sidecar)["10.1.0.1:20882"] == 100
    backend.remove("10.1.0.1", 20882)
    await wait_for(lambda: set(hosts(sidecar)) == {"10.1.0.2:20882"}, 2, "the removed provider")
    status, _ = await api(sidecar, "/unsub", {"service": SERVICE})
    assert status == 200 and hosts(sidecar) == {}
    assert sidecar.egress_table.current.match(IFACE, VERSION, "m", GROUP) is None
    assert (await api(sidecar, "/unsub", {"service": SERVICE}))[0] == 404


@pytest.mark.slow
async def test_registry_restart_keeps_last_known_providers(backend: Backend, sidecar: Sidecar) -> None:
    backend.add("10.1.0.1", 20882)
    assert (await api(sidecar, "/sub", {"service": SERVICE}))[0] == 200
    assert (await api(sidecar, "/pub", PUB))[0] == 200
    me = f"127.0.0.1:{sidecar.ingress.address[1]}"
    restart = asyncio.ensure_future(backend.restart(3.0))
    await asyncio.sleep(1.5)
    # Down: routing goes on with what was known; publishing anything new is refused clearly.
    assert "10.1.0.1:20882" in hosts(sidecar)
    other = {"service": {**PUB["service"], "version": "9.9.9"}}
    status, body = await api(sidecar, "/pub", other)
    assert status == 503 and body["err_no"] != 0, body
    await restart
    # Back: this sidecar's publication is registered again; the providers are still routed to.
    await wait_for(lambda: me in backend.nodes(), backend.back_within_s, "our provider after the restart")
    assert "10.1.0.1:20882" in hosts(sidecar)


async def test_bad_input_writes_nothing(backend: Backend, sidecar: Sidecar) -> None:
    for service in (
        {"interface": "com/x/Evil", "port": 1},
        {"interface": IFACE, "version": "1&x=1", "port": 1},
        {"interface": IFACE, "group": "a b", "port": 1},
        {"interface": "com..x", "port": 1},
        {"interface": IFACE, "port": 0},
    ):
        status, body = await api(sidecar, "/pub", {"service": service})
        assert status == 400 and body["err_no"] != 0 and "service." in body["err_msg"], body
    assert backend.nodes() == {}


# ---------------------------------------------------------------------------------------------------
# Empty-provider protection (regproxy/discovery/protection.py): one policy for every registry.

HOLD_S = 0.5
CLUSTER = f"{GROUP}/{IFACE}:{VERSION}"


def protected(tmp: Path, url: str, hold_s: float) -> Config:
    return sidecar_config(tmp, [url], discovery={"empty_protection_s": hold_s})


def holding(sc: Sidecar) -> bool:
    """What the admin API's subscriptions view says of the one subscription's list."""
    ((sub,),) = [r.subscriptions for r in subscriptions_view(sc.discovery).registries]
    return sub.holding_empty


def the_hold(sc: Sidecar) -> Hold:
    (hold,) = sc.discovery.subscriptions[CLUSTER].held.values()
    return hold


def record_hosts(sc: Sidecar) -> list[set[str]]:
    """The subscription's hosts in every egress table swapped in from now on."""
    seen: list[set[str]] = []

    def listener(new: Any, old: Any) -> None:
        cluster = new.clusters.get(CLUSTER)
        seen.append({h.address for h in cluster.hosts} if cluster else set())

    sc.egress_table.add_listener(listener)
    return seen


async def test_last_provider_gone_is_routed_during_the_hold_then_dropped(
    providers: Providers, tmp_path: Path
) -> None:
    async with running(protected(tmp_path, providers.url, HOLD_S)) as sc:
        providers.add("10.1.0.1", 20882)
        assert (await api(sc, "/sub", {"service": SERVICE}))[0] == 200
        assert set(hosts(sc)) == {"10.1.0.1:20882"}
        providers.remove("10.1.0.1", 20882)
        await wait_for(lambda: holding(sc), 3, "the hold to begin")
        hold = the_hold(sc)
        # Held: the last provider is still routed to.
        assert set(hosts(sc)) == {"10.1.0.1:20882"}
        await wait_for(lambda: hosts(sc) == {}, 3, "the empty list once the hold is over")
        assert asyncio.get_running_loop().time() - hold.since >= HOLD_S
        assert not holding(sc)
        assert sc.discovery.event_counts()["empty_holds"] == 1


async def test_provider_back_within_the_hold_never_empties_the_table(
    providers: Providers, tmp_path: Path
) -> None:
    async with running(protected(tmp_path, providers.url, HOLD_S * 10)) as sc:
        providers.add("10.1.0.1", 20882)
        assert (await api(sc, "/sub", {"service": SERVICE}))[0] == 200
        seen = record_hosts(sc)
        providers.remove("10.1.0.1", 20882)
        await wait_for(lambda: holding(sc), 3, "the hold to begin")
        hold = the_hold(sc)
        providers.add("10.1.0.1", 20882, weight=300)  # back, re-registered (here with a new weight)
        await wait_for(lambda: hosts(sc) == {"10.1.0.1:20882": 300}, 3, "the provider back")
        assert not holding(sc)
        assert hold.timer.cancelled()  # the hold is over: its end will apply nothing
        assert set() not in seen, seen


async def test_hold_zero_applies_the_empty_list_at_once(providers: Providers, tmp_path: Path) -> None:
    async with running(protected(tmp_path, providers.url, 0)) as sc:
        providers.add("10.1.0.1", 20882)
        assert (await api(sc, "/sub", {"service": SERVICE}))[0] == 200
        providers.remove("10.1.0.1", 20882)
        await wait_for(lambda: hosts(sc) == {}, 3, "the empty list")
        assert not holding(sc) and sc.discovery.event_counts().get("empty_holds", 0) == 0


# ---------------------------------------------------------------------------------------------------
# Dubbo 3 application-level discovery (Registry.watch_mapping ... write_metadata): two registries on
# one backend, one writing as a Dubbo 3 provider application would, the other watching as a consumer.
# On every registry with ``app_discovery``: Nacos joins once its adapter implements the operations.

APP = "contract-app"


@asynccontextmanager
async def app_registries(name: str, request: pytest.FixtureRequest) -> AsyncIterator[list[Registry]]:
    zk: KazooClient | None = None
    regs: list[Registry]
    if name == "zookeeper":
        server: ZooKeeperServer = request.getfixturevalue("zk_server")
        zk = request.getfixturevalue("zk")
        with contextlib.suppress(NoNodeError):
            zk.delete("/services", recursive=True)  # the zk fixture clears /dubbo only
        url = RegistryURL.parse(f"zookeeper://{server.hosts}")
        regs = [ZooKeeperRegistry(url, op_timeout_s=2.0, reconnect_max_delay_s=0.5) for _ in range(2)]
    else:
        MemoryRegistry.reset_all()
        regs = [MemoryRegistry(), MemoryRegistry()]
    try:
        for reg in regs:
            await reg.start()
        await wait_for(lambda: all(r.connected for r in regs), 10, "registries connected")
        assert all(r.app_discovery for r in regs)
        yield regs
    finally:
        for reg in regs:
            await reg.stop()
        if zk is not None:
            with contextlib.suppress(NoNodeError):
                zk.delete("/services", recursive=True)


@pytest.fixture(params=[pytest.param("zookeeper", marks=pytest.mark.zookeeper), "memory"])
async def app_pair(request: pytest.FixtureRequest) -> AsyncIterator[list[Registry]]:
    async with app_registries(request.param, request) as regs:
        yield regs


def app_instance(ip: str, revision: str) -> AppInstance:
    return AppInstance(app=APP, host=ip, port=20880, metadata=app_instance_metadata(revision))


async def test_app_instances_follow_registrations_revisions_and_stops(app_pair: list[Registry]) -> None:
    provider, consumer = app_pair
    seen: list[list[AppInstance]] = []
    assert await consumer.watch_instances(APP, seen.append) == []

    def now() -> list[AppInstance] | None:
        return seen[-1] if seen else None

    a, b = app_instance("10.1.0.1", "r1"), app_instance("10.1.0.2", "r1")
    await provider.register_instance(a)
    await wait_for(lambda: now() == [a], 3, "the registered instance")
    await provider.register_instance(b)
    await wait_for(lambda: now() == [a, b], 3, "the second instance")
    a2 = app_instance("10.1.0.1", "r2")
    await provider.register_instance(a2)  # a new revision at the same address replaces it
    await wait_for(lambda: now() == [a2, b], 3, "the new revision")
    await provider.unregister_instance(b)
    await wait_for(lambda: now() == [a2], 3, "the unregistered instance to go")
    await provider.stop()  # ephemeral: a stopped registry's instances go
    await wait_for(lambda: now() == [], 3, "the stopped registry's instance to go")
    await consumer.unwatch_instances(APP, seen.append)


async def test_mapping_grows_by_compare_and_set_and_is_watched(app_pair: list[Registry]) -> None:
    one, two = app_pair
    seen: list[tuple[str, ...]] = []
    assert await two.watch_mapping(IFACE, seen.append) == ()
    await asyncio.gather(one.add_mapping(IFACE, "app-a"), two.add_mapping(IFACE, "app-b"))
    await wait_for(lambda: seen and seen[-1] == ("app-a", "app-b"), 3, "both applications")
    n = len(seen)
    await one.add_mapping(IFACE, "app-b")  # there already: no change
    await asyncio.sleep(0.2)
    assert len(seen) == n
    await two.unwatch_mapping(IFACE, seen.append)


async def test_metadata_report_round_trip(app_pair: list[Registry]) -> None:
    writer, reader = app_pair
    info = MetadataInfo.of(APP, [ServiceInfo(name=IFACE, version=VERSION, group=GROUP, protocol="dubbo")])
    assert info.revision
    assert await reader.read_metadata(APP, info.revision) is None
    await writer.write_metadata(info)
    assert await reader.read_metadata(APP, info.revision) == info
