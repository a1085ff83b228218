"""Nacos specifics (weights, health), the Nacos path end to end, and one sidecar on ZooKeeper and
Nacos at once. The Nacos server is the protocol double; the client is the official SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from regproxy.demo.provider import Provider, default_services
from regproxy.registry.nacos import instance_metadata, service_name
from regproxy.registry.url import provider_url
from regproxy.sidecar import Sidecar
from tests.peers.nacos.server import NacosDouble
from tests.sidecars import SidecarProc
from tests.test_registry_contract import GROUP, IFACE, SERVICE, VERSION, api, hosts, sidecar_config
from tests.test_registry_e2e import run_dubbo_python
from tests.topology import GREET
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

SVC = service_name("providers", IFACE, VERSION, GROUP)


async def in_process(tmp: Path, registries: list[str]) -> Sidecar:
    sc = Sidecar(sidecar_config(tmp, registries))
    await sc.start()
    await wait_for(
        lambda: all(r.connected for r in sc.discovery.registries.values()), 10, "registries connected"
    )
    return sc


def external(nacos: NacosDouble, ip: str, *, weight: float = 1.0, dubbo_weight: int | None = None) -> None:
    params = {"weight": str(dubbo_weight)} if dubbo_weight is not None else None
    url = provider_url(interface=IFACE, ip=ip, port=20882, version=VERSION, group=GROUP, params=params)
    nacos.register_external(SVC, ip, 20882, weight=weight, metadata=instance_metadata(url))


async def test_nacos_weight_wins_and_unhealthy_or_disabled_not_routed(
    nacos: NacosDouble, tmp_path: Path
) -> None:
    sc = await in_process(tmp_path, [f"nacos://{nacos.address}"])
    try:
        # The Nacos weight is what its console edits: it wins over a stale Dubbo `weight` in metadata.
        external(nacos, "10.2.0.1", weight=2.0, dubbo_weight=500)
        external(nacos, "10.2.0.2")
        status, body = await api(sc, "/sub", {"service": SERVICE})
        assert status == 200
        assert {p["address"]: p["weight"] for p in body["providers"]} == {
            "10.2.0.1:20882": 200,
            "10.2.0.2:20882": 100,
        }
        nacos.set_weight(SVC, "10.2.0.2", 20882, 0.5)
        await wait_for(lambda: hosts(sc).get("10.2.0.2:20882") == 50, 2, "the console weight edit")
        nacos.set_unhealthy(SVC, "10.2.0.1", 20882)
        await wait_for(lambda: set(hosts(sc)) == {"10.2.0.2:20882"}, 2, "the unhealthy instance to leave")
        nacos.set_unhealthy(SVC, "10.2.0.1", 20882, False)
        await wait_for(lambda: set(hosts(sc)) == {"10.2.0.1:20882", "10.2.0.2:20882"}, 2, "it back")
        nacos.set_enabled(SVC, "10.2.0.2", 20882, False)
        await wait_for(lambda: set(hosts(sc)) == {"10.2.0.1:20882"}, 2, "the disabled instance to leave")
        # And what this sidecar registers: Dubbo weight 50 is Nacos weight 0.5.
        pub = {"service": {**SERVICE, "port": 20991, "params": {"weight": "50"}}}
        assert (await api(sc, "/pub", pub))[0] == 200
        mine = [i for i in nacos.instances(SVC) if i.port == sc.ingress.address[1]]
        assert len(mine) == 1 and mine[0].weight == 0.5 and mine[0].metadata["category"] == "providers"
        assert mine[0].metadata["protocol"] == "dubbo" and mine[0].metadata["path"] == IFACE
    finally:
        await sc.stop()


@pytest.mark.process
async def test_dubbo_python_through_sidecars_on_nacos(nacos: NacosDouble, tmp_path: Path) -> None:
    app = Provider(default_services(greetings_version="1.0.0"), name="app")
    await app.start("127.0.0.1", 0)
    registry = f"nacos://{nacos.address}"
    provider = SidecarProc("p", tmp_path / "p", registries=[registry], app_port=app.port)
    consumer = SidecarProc("c", tmp_path / "c", registries=[registry], app_port=1)
    try:
        await asyncio.gather(provider.start(), consumer.start())
        pub = {"service": {"interface": GREET, "version": "1.0.0", "methods": ["sayHi"], "port": app.port}}
        status, body = await provider.post("/pub", pub)
        assert status == 200, body
        assert [i.port for i in nacos.instances(f"providers:{GREET}:1.0.0:")] == [provider.ingress]
        status, body = await consumer.post("/sub", {"service": {"interface": GREET, "version": "1.0.0"}})
        assert status == 200 and [p["address"] for p in body["providers"]] == [
            f"127.0.0.1:{provider.ingress}"
        ]
        assert await run_dubbo_python(consumer.egress) == {"sayHi": "hi, bob"}
        assert app.services.count("sayHi") == 1
    finally:
        await consumer.kill()
        await provider.kill()
        await app.close(grace=0.1)


async def test_one_sidecar_on_zookeeper_and_nacos(
    nacos: NacosDouble, zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    zk_url, nacos_url = f"zookeeper://{zk_server.hosts}", f"nacos://{nacos.address}"
    a = await in_process(tmp_path / "a", [zk_url, nacos_url])
    try:
        # Publishing without naming a registry goes to both.
        assert (await api(a, "/pub", {"service": {**SERVICE, "port": 20991}}))[0] == 200
        me = f"127.0.0.1:{a.ingress.address[1]}"
        zk_nodes = zk.get_children(f"/dubbo/{IFACE}/providers")
        assert len(zk_nodes) == 1 and me in zk_nodes[0].replace("%3A", ":")
        assert [f"{i.ip}:{i.port}" for i in nacos.instances(SVC)] == [me]
        # Providers found in either registry are routed to; one seen in both is one host.
        zk.create(
            f"/dubbo/{IFACE}/providers/"
            + provider_url(
                interface=IFACE, ip="10.3.0.1", port=20882, version=VERSION, group=GROUP
            ).encoded(),
            ephemeral=True,
        )
        external(nacos, "10.3.0.2")
        status, body = await api(a, "/sub", {"service": SERVICE})
        assert status == 200
        assert sorted(p["address"] for p in body["providers"]) == sorted(
            [me, "10.3.0.1:20882", "10.3.0.2:20882"]
        )
        # The request's registry field picks one: unpublishing from Nacos alone leaves ZooKeeper's node.
        unpub = {"registry": {"type": "nacos", "addr": nacos.address}, "service": {**SERVICE, "port": 20991}}
        assert (await api(a, "/unpub", unpub))[0] == 200
        mine = a.ingress.address[1]
        await wait_for(lambda: all(i.port != mine for i in nacos.instances(SVC)), 3, "ours gone from Nacos")
        assert len(zk.get_children(f"/dubbo/{IFACE}/providers")) == 2
    finally:
        await a.stop()


async def test_oversized_metadata_is_a_clear_502(nacos: NacosDouble, tmp_path: Path) -> None:
    sc = await in_process(tmp_path, [f"nacos://{nacos.address}"])
    try:
        methods = [f"method{i:03d}" for i in range(150)]  # Nacos 2.3+ caps metadata at 1024 characters
        status, body = await api(sc, "/pub", {"service": {**SERVICE, "port": 20991, "methods": methods}})
        assert status == 502 and "nacos" in body["err_msg"] and SVC in body["err_msg"], body
        assert nacos.instances(SVC) == [] and sc.discovery.publications == {}
    finally:
        await sc.stop()
