"""Dubbo 3 application-level discovery through real sidecars (issue 19, docs/discovery.md).

Sidecars are ``regproxy run`` processes on a real ZooKeeper (and on the Nacos protocol double); the
Dubbo 3 applications they meet are the doubles of ``tests/peers/dubbo3.py``: a provider application
that registers at application level only, as dubbo-go 3.1+ does (its instance, the service-name
mapping, a MetadataService served over Dubbo), and a consumer that finds services the way a Dubbo 3.3
consumer does (mapping → instances → MetadataInfo → call).  What each test pins:

* a provider found only at application level is routable through the consumer's egress within a
  second of registering, and gone within a second of leaving (``ServiceInstancesChangedListener``);
* a new revision (a method added) reaches the routes (the instance's ``dubbo.metadata.revision``);
* an address registered both ways is one host, found "both";
* a sidecar publishing with ``register_mode: instance`` is reached through two sidecars at
  application level alone, and a Dubbo 3 consumer finds and calls a regproxy publication through the
  ingress, which answers ``MetadataService.getMetadataInfo`` itself;
* each ``register_mode`` writes exactly its nodes, unpublish and drain take them out, and a session
  expiry brings them back;
* a MetadataService that does not answer leaves the hosts already routable, and is asked again;
* the ``migration`` setting picks interface-level, application-level or both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import pytest
import pytest_asyncio
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from regproxy.demo.client import DubboClient
from regproxy.demo.provider import Provider, default_services
from tests.peers.dubbo3 import (
    Dubbo3Consumer,
    Dubbo3Provider,
    NacosBackend,
    Service,
    ZooKeeperBackend,
    answered_by,
)
from tests.peers.nacos import NacosDouble
from tests.sidecars import SidecarProc, value
from tests.topology import GREET, VERSION, egress_cluster
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer, emptied

pytestmark = [pytest.mark.process, pytest.mark.asyncio(loop_scope="module")]

APP = "d3-shop"  # the Dubbo 3 provider application (a double)
# A consumer that keeps nothing once its providers left: "gone within a second" means gone.
CONSUMER_CONFIG = """\
discovery: {empty_protection_s: 0, metadata_timeout_ms: 500}
health:
  outlier: {enabled: false}
"""


def iface(name: str) -> str:
    """A service of its own for each test: the module's sidecars outlive the tests."""
    return f"org.d3.{name}"


async def cluster(sc: SidecarProc, interface: str) -> dict[str, dict[str, Any]]:
    """The consumer sidecar's egress hosts of ``interface`` (no version, no group)."""
    return await egress_cluster(sc, interface)


async def subscribe(sc: SidecarProc, interface: str, **service: Any) -> list[dict[str, Any]]:
    status, body = await sc.post("/sub", {"service": {"interface": interface, **service}})
    assert status == 200, body
    return list(body["providers"])


async def call(sc: SidecarProc, interface: str, method: str = "sayHi", *, version: str = "") -> Any:
    client = await DubboClient.connect("127.0.0.1", sc.egress)
    try:
        return await client.call(interface, method, ["world"], version=version or None, timeout=5)
    finally:
        client.close()


async def children(zk: KazooClient, path: str) -> list[str]:
    """The children of ``path``, URL-decoded; none when it does not exist."""
    try:
        found = await asyncio.to_thread(zk.get_children, path)
    except NoNodeError:
        return []
    return [unquote_plus(c) for c in found]


class Fleet:
    def __init__(self, zk_server: ZooKeeperServer, zk: KazooClient, root: Path) -> None:
        self.zk_server = zk_server
        self.zk = zk
        self.root = root
        self.registry = f"zookeeper://{zk_server.hosts}"
        config = root / "consumer.yaml"
        config.write_text(CONSUMER_CONFIG)
        self.a = SidecarProc("a", root / "a", registries=[self.registry], app_port=1,
                             extra=["--config", str(config)])  # fmt: skip
        services = default_services(greetings_version=VERSION, provider_name="behind-b")
        for name in ("Published", "PublishedOnNacos"):  # what the sidecars publish for Dubbo 3 consumers
            services.add(iface(name), {"sayHi": lambda arg, name=name: f"{name} says hi to {arg}"})
        self.app = Provider(services, name="b-app")
        self.b: SidecarProc | None = None
        self.doubles: list[Dubbo3Provider] = []

    async def sidecar(self, name: str, mode: str) -> SidecarProc:
        """A provider sidecar beside the module's app, registering with ``register_mode`` ``mode``."""
        config = self.root / f"{name}.yaml"
        config.write_text(f"discovery: {{register_mode: {mode}}}\n")
        sc = SidecarProc(name, self.root / name, registries=[self.registry], app_port=self.app.port,
                         extra=["--config", str(config)])  # fmt: skip
        await sc.start()
        return sc

    def backend(self) -> ZooKeeperBackend:
        return ZooKeeperBackend(self.zk_server.hosts)

    async def provider(self, services: list[Service], app: str, **kw: Any) -> Dubbo3Provider:
        """A Dubbo 3 provider application (a double): each test names its own."""
        double = await Dubbo3Provider(self.backend(), app, services, **kw).start()
        self.doubles.append(double)
        return double


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    zk = await emptied(zk_server)
    fleet = Fleet(zk_server, zk, tmp_path_factory.mktemp("app-discovery"))
    await fleet.app.start("127.0.0.1", 0)
    try:
        await fleet.a.start()
        fleet.b = await fleet.sidecar("b", "instance")
        yield fleet
    finally:
        for double in fleet.doubles:
            await double.stop(purge=True)
        for sc in (fleet.a, fleet.b):
            if sc is not None:
                await sc.kill()
        await fleet.app.close(grace=0.1)
        await asyncio.to_thread(zk.stop)
        zk.close()


# ---------------------------------------------------------------------------------------------------
# Consuming: a Dubbo 3 application registered at application level only


async def test_an_application_level_only_provider_is_routed_within_a_second_and_gone_within_a_second(
    fleet: Fleet,
) -> None:
    interface = iface("Only")
    assert await subscribe(fleet.a, interface) == []
    double = await fleet.provider([Service(interface)], app="d3-only")
    assert await children(fleet.zk, f"/dubbo/{interface}/providers") == []  # nothing at interface level
    took = await wait_for(lambda: _has(fleet.a, interface, double.address), 1.0, "the provider routed")
    hosts = await cluster(fleet.a, interface)
    found = hosts[double.address]["found"]
    assert found == {"how": "application", "application": "d3-only", "revision": double.revision}, found
    assert answered_by(await call(fleet.a, interface)) == double.address
    assert double.calls[(interface, "sayHi")] == 1
    # The host carries the service's parameters and the instance's (InstanceAddressURL).
    metadata = hosts[double.address]["metadata"]
    assert metadata["remote.application"] == "d3-only" and metadata["methods"] == "sayHi", metadata
    print(f"routed {took * 1000:.0f} ms after the instance registered")

    await double.stop()
    fleet.doubles.remove(double)
    took = await wait_for(lambda: _gone(fleet.a, interface), 1.0, "the provider gone")
    print(f"gone {took * 1000:.0f} ms after the instance left")


async def _has(sc: SidecarProc, interface: str, address: str) -> bool:
    return address in await cluster(sc, interface)


async def _gone(sc: SidecarProc, interface: str) -> bool:
    return not await cluster(sc, interface)


async def test_a_new_revision_updates_the_routes(fleet: Fleet) -> None:
    interface = iface("Revised")
    await subscribe(fleet.a, interface)
    double = await fleet.provider([Service(interface, methods=("sayHi",))], app="d3-revised")
    await wait_for(lambda: _has(fleet.a, interface, double.address), 5.0, "the provider routed")
    first = double.revision
    second = await double.set_services([Service(interface, methods=("sayHi", "sayHello"))])
    assert second != first

    async def revised() -> bool:
        host = (await cluster(fleet.a, interface)).get(double.address, {})
        return (
            host.get("found", {}).get("revision") == second
            and host["metadata"]["methods"] == "sayHello,sayHi"
        )

    await wait_for(revised, 2.0, "the new revision's methods in the route")


async def test_an_address_registered_both_ways_is_one_host(fleet: Fleet) -> None:
    interface = iface("Both")
    await subscribe(fleet.a, interface)
    double = await fleet.provider([Service(interface)], app="d3-both-ways", register_interface=True)
    assert await children(fleet.zk, f"/dubbo/{interface}/providers")

    async def both() -> bool:
        hosts = await cluster(fleet.a, interface)
        return list(hosts) == [double.address] and hosts[double.address]["found"]["how"] == "both"

    await wait_for(both, 2.0, "one host found both ways")
    _, dump = await fleet.a.admin_get(f"/api/v1/config_dump?cluster={interface}")
    ((host,),) = [c["hosts"] for c in dump["clusters"]]
    assert host["found"] == {"how": "both", "application": "d3-both-ways", "revision": double.revision}
    _, subs = await fleet.a.admin_get("/api/v1/subscriptions")
    (view,) = [s for r in subs["registries"] for s in r["subscriptions"] if s["interface"] == interface]
    assert view["migration"] == "both"
    revisions = view["applications"]["applications"]["d3-both-ways"]["revisions"]
    assert revisions == {double.revision: {"instances": [double.address], "metadata": "cached"}}, revisions


async def test_the_migration_setting_picks_where_providers_are_found(fleet: Fleet) -> None:
    interface = iface("Migrating")
    app_only = await fleet.provider([Service(interface)], app="d3-app-only")
    both = await fleet.provider([Service(interface)], app="d3-both", register_interface=True)
    for migration, expected in (
        ("application", {app_only.address: "application", both.address: "application"}),
        ("interface", {both.address: "interface"}),
        ("both", {app_only.address: "application", both.address: "both"}),
    ):
        await subscribe(fleet.a, interface, migration=migration)

        async def selected(expected: dict[str, str] = expected) -> bool:
            hosts = await cluster(fleet.a, interface)
            return {a: h["found"]["how"] for a, h in hosts.items()} == expected

        await wait_for(selected, 2.0, f"the providers migration {migration} selects")
    # A Dubbo reference's own step, in the consumer's params, when the /sub names no setting.
    await subscribe(fleet.a, interface, params={"migration.step": "FORCE_INTERFACE"})
    await wait_for(lambda: _only(fleet.a, interface, both.address), 2.0, "FORCE_INTERFACE's providers")


async def _only(sc: SidecarProc, interface: str, address: str) -> bool:
    return list(await cluster(sc, interface)) == [address]


async def test_a_metadata_service_that_never_answers_leaves_the_hosts_routable(fleet: Fleet) -> None:
    interface = iface("Hanging")
    await subscribe(fleet.a, interface)
    # Two instances of one application; one moves to a revision its MetadataService never serves.
    # Dubbo's doOnEvent would drop that instance's addresses (the other revision has its metadata);
    # regproxy keeps it at the revision it had (regproxy.discovery.apps).
    steady = await fleet.provider([Service(interface)], app="d3-hanging")
    double = await fleet.provider([Service(interface)], app="d3-hanging")
    await wait_for(lambda: _has(fleet.a, interface, double.address), 5.0, "the provider routed")
    first = double.revision
    failures_before = await _events(fleet.a, "metadata_fetch_failures")
    double.metadata_hang = True
    second = await double.set_services([Service(interface, methods=("sayHi", "sayBye"))])

    async def failing() -> bool:
        return await _events(fleet.a, "metadata_fetch_failures") > failures_before

    await wait_for(failing, 5.0, "a timed-out MetadataService call counted")
    for _ in range(5):  # the host stays, on its old revision, and calls reach it
        hosts = await cluster(fleet.a, interface)
        assert sorted(hosts) == sorted([steady.address, double.address]), hosts
        assert hosts[double.address]["found"]["revision"] == first, hosts
        await asyncio.sleep(0.2)
    answered = {answered_by(await call(fleet.a, interface)) for _ in range(20)}
    assert answered == {steady.address, double.address}
    _, subs = await fleet.a.admin_get("/api/v1/subscriptions")
    (view,) = [s for r in subs["registries"] for s in r["subscriptions"] if s["interface"] == interface]
    state = view["applications"]["applications"]["d3-hanging"]["revisions"][second]["metadata"]
    assert state.startswith("failing") and "timed out" in state, state
    # Asked again with backoff: once the MetadataService answers, the new revision applies.
    double.metadata_hang = False

    async def revised() -> bool:
        host = (await cluster(fleet.a, interface)).get(double.address, {})
        return host.get("found", {}).get("revision") == second

    await wait_for(revised, 10.0, "the new revision once the MetadataService answers")


async def _events(sc: SidecarProc, event: str) -> float:
    return value(await sc.metrics(), "regproxy_registry_events_total", event=event)


# ---------------------------------------------------------------------------------------------------
# Publishing: regproxy seen at application level


async def test_two_sidecars_route_at_application_level_alone(fleet: Fleet) -> None:
    """b registers instance-only (register_mode instance): a finds the service through the mapping,
    asks b's ingress for the MetadataInfo and calls through b to its application."""
    assert fleet.b is not None
    await subscribe(fleet.a, GREET, version=VERSION)
    body = {"service": {"interface": GREET, "version": VERSION, "methods": ["sayHi"], "application": "b-app"}}
    status, reply = await fleet.b.post("/pub", body)
    assert status == 200, reply
    assert await children(fleet.zk, f"/dubbo/{GREET}/providers") == []
    ingress = f"127.0.0.1:{fleet.b.ingress}"
    took = await wait_for(lambda: _has_cluster(fleet.a, f"{GREET}:{VERSION}", ingress), 1.0, "b routed")
    print(f"b routed by a {took * 1000:.0f} ms after its /pub answered")
    hosts = await egress_cluster(fleet.a, f"{GREET}:{VERSION}")
    assert hosts[ingress]["found"]["how"] == "application"
    client = await DubboClient.connect("127.0.0.1", fleet.a.egress)
    try:
        assert await client.call(GREET, "sayHi", ["bob"], version=VERSION, timeout=5) == "hi, bob"
    finally:
        client.close()
    assert fleet.app.services.count("sayHi") >= 1
    m = await fleet.b.metrics()
    assert value(m, "regproxy_registry_events_total", event="app_registrations") >= 1
    status, reply = await fleet.b.post("/unpub", body)
    assert status == 200, reply
    took = await wait_for(lambda: _no_hosts(fleet.a, f"{GREET}:{VERSION}"), 1.0, "b gone")
    print(f"b gone from a {took * 1000:.0f} ms after its /unpub answered")


async def _no_hosts(sc: SidecarProc, name: str) -> bool:
    return not await egress_cluster(sc, name)


async def _has_cluster(sc: SidecarProc, name: str, address: str) -> bool:
    return address in await egress_cluster(sc, name)


async def test_a_dubbo3_consumer_finds_and_calls_a_regproxy_publication(fleet: Fleet) -> None:
    interface = iface("Published")
    sc = await fleet.sidecar("c", "all")
    try:
        body = {"service": {"interface": interface, "methods": ["sayHi"], "application": "c-app"}}
        status, body = await sc.post("/pub", body)
        assert status == 200, body
        async with Dubbo3Consumer(fleet.backend()) as consumer:
            res = await consumer.resolve(interface)
            assert res.apps == ("c-app",) and res.addresses == [f"127.0.0.1:{sc.ingress}"], res.problems
            (revision,) = res.revisions
            # The MetadataInfo came from the ingress and carries the publication as Dubbo exports it.
            (service,) = res.metadata[revision].services.values()
            assert (service.name, service.protocol, service.port) == (interface, "dubbo", sc.ingress)
            assert service.params["methods"] == "sayHi" and "timestamp" not in service.params
            # The call goes through the ingress to the application behind it.
            result = await consumer.call(interface, "sayHi", "alice")
            assert result.address == f"127.0.0.1:{sc.ingress}"
            assert result.value == "Published says hi to alice"
    finally:
        await sc.kill()


async def test_register_modes_write_exactly_their_nodes_and_unpublish_and_drain_remove_them(
    fleet: Fleet,
) -> None:
    for mode, interface_nodes, instance_nodes in (("interface", True, False), ("instance", False, True),
                                                  ("all", True, True)):  # fmt: skip
        interface = iface(f"Mode{mode.title()}")
        sc = await fleet.sidecar(f"mode-{mode}", mode)
        app = f"app-{mode}"
        instance = f"/services/{app}/127.0.0.1:{sc.ingress}"
        try:
            body = {"service": {"interface": interface, "methods": ["sayHi"], "application": app}}
            status, reply = await sc.post("/pub", body)
            assert status == 200, reply
            providers = await children(fleet.zk, f"/dubbo/{interface}/providers")
            assert bool(providers) is interface_nodes, (mode, providers)
            assert bool(await asyncio.to_thread(fleet.zk.exists, instance)) is instance_nodes, mode
            mapping = await asyncio.to_thread(fleet.zk.exists, f"/dubbo/mapping/{interface}")
            assert bool(mapping) is instance_nodes, mode
            if instance_nodes:
                data, _ = await asyncio.to_thread(fleet.zk.get, f"/dubbo/mapping/{interface}")
                assert data == app.encode()
            status, reply = await sc.post("/unpub", body)
            assert status == 200, reply
            assert not await asyncio.to_thread(fleet.zk.exists, instance)  # its application's last service
            assert await children(fleet.zk, f"/dubbo/{interface}/providers") == []
            if mode == "all":  # a drain takes both forms out
                status, reply = await sc.post("/pub", body)
                assert status == 200, reply
                assert await asyncio.to_thread(fleet.zk.exists, instance)
                status, _ = await _admin_post(sc, "/api/v1/drain")
                assert status == 202  # accepted: the drain goes on after the answer
                await wait_for(_absent(fleet.zk, instance), 5.0, "the instance gone on drain")
        finally:
            await sc.kill()


async def _admin_post(sc: SidecarProc, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(f"{sc.admin_url}{path}") as resp:
        return resp.status, await resp.json()


def _absent(zk: KazooClient, path: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not await asyncio.to_thread(zk.exists, path)

    return check


async def test_a_session_expiry_recreates_the_instance_and_keeps_routing(fleet: Fleet) -> None:
    interface = iface("Expiring")
    sc = await fleet.sidecar("expiring", "instance")
    try:
        body = {"service": {"interface": interface, "methods": ["sayHi"], "application": "expiring-app"}}
        status, reply = await sc.post("/pub", body)
        assert status == 200, reply
        path = f"/services/expiring-app/127.0.0.1:{sc.ingress}"
        stat = await asyncio.to_thread(fleet.zk.exists, path)
        assert stat is not None
        await subscribe(fleet.a, interface)
        address = f"127.0.0.1:{sc.ingress}"
        await wait_for(lambda: _has(fleet.a, interface, address), 2.0, "routed at application level")
        before = stat.ephemeralOwner
        await asyncio.to_thread(fleet.zk_server.expire_session, before)

        async def recreated() -> bool:
            now = await asyncio.to_thread(fleet.zk.exists, path)
            return now is not None and now.ephemeralOwner != before

        started = time.monotonic()
        await wait_for(recreated, 15.0, "the instance re-created by a new session")
        print(f"instance back {time.monotonic() - started:.2f} s after the expiry")
        # The consumer keeps nothing while it is gone (empty_protection_s 0): routed again once back.
        await wait_for(lambda: _has(fleet.a, interface, address), 2.0, "routed again")
    finally:
        await sc.kill()


# ---------------------------------------------------------------------------------------------------
# The same on Nacos (the protocol double)


async def test_on_nacos_an_application_level_only_provider_comes_and_goes(tmp_path: Path) -> None:
    interface = iface("OnNacos")
    async with NacosDouble() as nacos:
        config = tmp_path / "consumer.yaml"
        config.write_text(CONSUMER_CONFIG)
        sc = SidecarProc("nacos-a", tmp_path / "a", registries=[f"nacos://{nacos.address}"], app_port=1,
                         extra=["--config", str(config)])  # fmt: skip
        await sc.start()
        double: Dubbo3Provider | None = None
        try:
            await subscribe(sc, interface)
            double = await Dubbo3Provider(
                NacosBackend(nacos, tmp_path / "d3"), APP, [Service(interface)]
            ).start()
            took = await wait_for(lambda: _has(sc, interface, double.address), 1.0, "the provider routed")
            print(f"routed {took * 1000:.0f} ms after the instance registered")
            assert answered_by(await call(sc, interface)) == double.address
            await double.stop()
            double = None
            took = await wait_for(lambda: _gone(sc, interface), 1.0, "the provider gone")
            print(f"gone {took * 1000:.0f} ms after the instance left")
        finally:
            if double is not None:
                await double.stop()
            await sc.kill()


async def test_on_nacos_a_dubbo3_consumer_finds_a_regproxy_publication(tmp_path: Path, fleet: Fleet) -> None:
    interface = iface("PublishedOnNacos")
    async with NacosDouble() as nacos:
        sc = SidecarProc("nacos-c", tmp_path / "c", registries=[f"nacos://{nacos.address}"],
                         app_port=fleet.app.port)  # fmt: skip
        await sc.start()
        try:
            body = {"service": {"interface": interface, "methods": ["sayHi"], "application": "n-app"}}
            status, reply = await sc.post("/pub", body)
            assert status == 200, reply
            async with Dubbo3Consumer(NacosBackend(nacos, tmp_path / "consumer")) as consumer:

                async def resolved() -> bool:
                    res = await consumer.resolve(interface)
                    return res.addresses == [f"127.0.0.1:{sc.ingress}"] and bool(res.metadata)

                await wait_for(resolved, 5.0, "the publication at application level on Nacos")
                result = await consumer.call(interface, "sayHi", "nina")
                assert result.address == f"127.0.0.1:{sc.ingress}"
                assert result.value == "PublishedOnNacos says hi to nina"
        finally:
            await sc.kill()


async def test_on_nacos_one_host_both_ways_and_a_new_revision(tmp_path: Path) -> None:
    interface = iface("BothOnNacos")
    async with NacosDouble() as nacos:
        sc = SidecarProc("nacos-both", tmp_path / "a", registries=[f"nacos://{nacos.address}"], app_port=1)
        await sc.start()
        double: Dubbo3Provider | None = None
        try:
            await subscribe(sc, interface)
            backend = NacosBackend(nacos, tmp_path / "d3")
            double = await Dubbo3Provider(
                backend, "n-both", [Service(interface)], register_interface=True
            ).start()

            async def both() -> bool:
                hosts = await cluster(sc, interface)
                return list(hosts) == [double.address] and hosts[double.address]["found"]["how"] == "both"

            await wait_for(both, 2.0, "one host found both ways on Nacos")
            second = await double.set_services([Service(interface, methods=("sayHi", "sayHello"))])

            async def revised() -> bool:
                host = (await cluster(sc, interface)).get(double.address, {})
                return host.get("found", {}).get("revision") == second

            await wait_for(revised, 2.0, "the new revision on Nacos")
        finally:
            if double is not None:
                await double.stop()
            await sc.kill()
