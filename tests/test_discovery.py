"""Discovery over in-process registries: publications, subscriptions, tables, faults, restarts.

The ZooKeeper adapter gets the same treatment against a real ZooKeeper in test_zookeeper.py and
test_registry_e2e.py; here the registry is the in-memory one so every fault can be staged exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from regproxy.discovery import Discovery, NotFound, PublishSpec, ingress_table
from regproxy.registry.base import RegistryError, RegistryUnavailable
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, Subscription, provider_url
from regproxy.routing import Cluster, Host, RoutingTable, TableHolder
from regproxy.state import StateStore
from tests.wait import wait_for

IFACE = "com.x.Svc"
REG_A = RegistryURL.parse("zookeeper://a:1")  # served by memory stores: the factory maps them
REG_B = RegistryURL.parse("zookeeper://b:1")


def factory(made: dict[str, MemoryRegistry]) -> Callable[[RegistryURL], MemoryRegistry]:
    def make(url: RegistryURL) -> MemoryRegistry:
        reg = MemoryRegistry(name=url.hosts[0].host)
        made[url.hosts[0].host] = reg
        return reg

    return make


def new_discovery(
    made: dict[str, MemoryRegistry], registries: list[RegistryURL], data_dir: Path | None = None, **kw: object
) -> Discovery:
    static = RoutingTable()
    return Discovery(
        registry_urls=registries,
        factory=factory(made),
        egress=TableHolder(static),
        ingress=TableHolder(ingress_table()),
        static_table=static,
        advertise_ip=str(kw.get("ip", "10.1.2.3")),
        ingress_port=20882,
        store=StateStore(data_dir) if data_dir else None,
    )


@pytest.fixture(autouse=True)
def _fresh_stores() -> None:
    MemoryRegistry.reset_all()


@pytest.fixture
async def disc() -> AsyncIterator[tuple[Discovery, dict[str, MemoryRegistry]]]:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    yield d, made
    await d.stop()


def remote(port: int, *, version: str = "1.0.0", group: str = "g", weight: int | None = None) -> DubboURL:
    params = {"weight": str(weight)} if weight is not None else None
    return provider_url(
        interface=IFACE,
        ip="10.9.9.9",
        port=port,
        version=version,
        group=group,
        params=params,
        pid=1,
        timestamp_ms=1,
    )


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


SPEC = PublishSpec(interface=IFACE, port=20990, methods=("b", "a"), version="1.0.0", group="g",
                   application="app", params={"weight": "50"})  # fmt: skip


async def test_publish_rewrites_address_and_routes_ingress(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    url = await d.publish(SPEC)
    (node,) = made["a"].nodes(IFACE)
    assert str(node) == url
    assert (node.host, node.port) == ("10.1.2.3", 20882)  # advertise IP and ingress port, not the app's
    assert node.params["methods"] == "a,b" and node.params["weight"] == "50"
    assert node.params["application"] == "app" and node.version == "1.0.0" and node.group == "g"
    table = d.ingress.current
    route = table.match(IFACE, "1.0.0", "a", "g")
    assert route is not None and table.clusters[route.cluster].hosts[0].address == "127.0.0.1:20990"
    # Nothing else reaches the application: another service, version or group has no route.
    assert table.match("com.y.Other", "", "m", "") is None
    assert table.match(IFACE, "2.0.0", "a", "g") is None
    assert table.match(IFACE, "1.0.0", "a", "other") is None
    # Idempotent: the same URL, one node.
    assert await d.publish(SPEC) == url
    assert len(made["a"].nodes(IFACE)) == 1


async def test_a_publication_is_routable_before_any_registry_shows_it(disc: tuple[Discovery, dict]) -> None:
    """A consumer may see the registration before the registry answers us (a ZooKeeper watch can
    beat the reply to our create): the ingress must route the service by then, else that consumer's
    first calls get "no route". A refused registration takes the route away again."""
    d, made = disc
    reg = made["a"]
    routed_at_register: list[bool] = []
    register = reg.register

    async def watching(url: DubboURL) -> None:
        routed_at_register.append(d.ingress.current.match(IFACE, "1.0.0", "a", "g") is not None)
        await register(url)

    reg.register = watching  # type: ignore[method-assign]
    await d.publish(SPEC)
    assert routed_at_register == [True]

    other = PublishSpec(interface="com.y.Refused", port=20991, methods=("m",))

    async def refusing(url: DubboURL) -> None:
        assert d.ingress.current.match("com.y.Refused", "", "m", "") is not None
        raise RegistryError("refused")

    reg.register = refusing  # type: ignore[method-assign]
    with pytest.raises(RegistryError):
        await d.publish(other)
    assert d.ingress.current.match("com.y.Refused", "", "m", "") is None


async def test_publish_without_registry_is_an_error() -> None:
    d = new_discovery({}, [])
    await d.start()
    with pytest.raises(ValueError, match="registry"):
        await d.publish(SPEC)


async def test_publish_while_down_is_503_and_not_kept(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    made["a"].simulate_down()
    with pytest.raises(RegistryUnavailable):
        await d.publish(SPEC)
    assert d.publications == {}


async def test_publish_to_named_registry(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    await d.publish(SPEC, REG_B)
    assert made["b"].nodes(IFACE) and not made["a"].nodes(IFACE)


async def test_unpublish(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    with pytest.raises(NotFound):
        await d.unpublish(SPEC)
    d.unpublish_grace_s = 0.2
    await d.publish(SPEC)
    await d.unpublish(SPEC)
    assert made["a"].nodes(IFACE) == []
    # Consumers still on their old list are served for the grace period, then nothing is forwarded.
    assert d.ingress.current.match(IFACE, "1.0.0", "a", "g") is not None
    await asyncio.sleep(0.35)
    assert d.ingress.current.match(IFACE, "1.0.0", "a", "g") is None


async def test_changed_publication_replaces_node(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    await d.publish(SPEC)
    changed = PublishSpec(**{**SPEC.__dict__, "params": {"weight": "70"}})
    await d.publish(changed)
    (node,) = made["a"].nodes(IFACE)
    assert node.params["weight"] == "70"


async def test_subscribe_filters_and_follows_changes(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    reg = made["a"]
    reg.set_provider(remote(1))
    reg.set_provider(remote(2, version="2.0.0"))  # other version
    reg.set_provider(remote(3, group="other"))  # other group
    cluster, providers = await d.subscribe(Subscription(IFACE, "1.0.0", "g"))
    assert cluster == "g/com.x.Svc:1.0.0"
    assert [p["address"] for p in providers] == ["10.9.9.9:1"]
    assert reg.nodes(IFACE, "consumers")  # the consumer node
    table = d.egress.current
    route = table.match(IFACE, "1.0.0", "m", "g")
    assert route is not None and route.cluster == cluster
    assert table.match(IFACE, "2.0.0", "m", "g") is None  # versions never merge
    # Added, changed (weight) and removed providers are applied as reported.
    reg.set_provider(remote(4))
    await settle()
    assert {h.address for h in d.egress.current.clusters[cluster].hosts} == {"10.9.9.9:1", "10.9.9.9:4"}
    reg.replace_provider(remote(4), remote(4, weight=300))
    await settle()
    weights = {h.address: h.weight for h in d.egress.current.clusters[cluster].hosts}
    assert weights == {"10.9.9.9:1": 100, "10.9.9.9:4": 300}
    reg.remove_provider(remote(1))
    await settle()
    assert [h.address for h in d.egress.current.clusters[cluster].hosts] == ["10.9.9.9:4"]
    assert d.egress.current.clusters[cluster].hosts[0].metadata["interface"] == IFACE


async def test_wildcards_and_exact_subscriptions_coexist(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    made["a"].set_provider(remote(1, version="1.0.0"))
    made["a"].set_provider(remote(2, version="2.0.0"))
    _, anyv = await d.subscribe(Subscription(IFACE, "*", "g"))
    _, exact = await d.subscribe(Subscription(IFACE, "2.0.0", "g"))
    assert len(anyv) == 2 and len(exact) == 1
    route = d.egress.current.match(IFACE, "2.0.0", "m", "g")
    assert route is not None and route.cluster == "g/com.x.Svc:2.0.0"  # exact wins over "*"
    route = d.egress.current.match(IFACE, "1.0.0", "m", "g")
    assert route is not None and route.cluster == "g/com.x.Svc:*"


async def test_provider_event_replaces_only_its_cluster(disc: tuple[Discovery, dict]) -> None:
    """Update cost follows the change, not the table: one service's event leaves every other cluster,
    the routes and the route index as the very same objects, and re-renders only its own cache text."""
    d, made = disc
    reg = made["a"]
    other_iface = "com.x.Other"
    reg.set_provider(remote(1))
    reg.set_provider(DubboURL.parse(str(remote(2)).replace(IFACE, other_iface)))
    mine, _ = await d.subscribe(Subscription(IFACE, "1.0.0", "g"))
    other, _ = await d.subscribe(Subscription(other_iface, "1.0.0", "g"))
    before = d.egress.current
    texts_before = d.snapshot().providers
    reg.set_provider(remote(4))
    await settle()
    after = d.egress.current
    assert after.version > before.version
    assert {h.address for h in after.clusters[mine].hosts} == {"10.9.9.9:1", "10.9.9.9:4"}
    assert after.clusters[other] is before.clusters[other]
    assert after.routes is before.routes
    assert after._by_service is before._by_service  # type: ignore[attr-defined]
    route = after.match(IFACE, "1.0.0", "m", "g")
    assert route is not None and route.cluster == mine
    texts_after = d.snapshot().providers
    assert texts_after[other]["zookeeper://a:1"] is texts_before[other]["zookeeper://a:1"]
    assert len(texts_after[mine]["zookeeper://a:1"]) == 2
    # Nothing changed for the other subscription, so its hosts are not even rebuilt.
    assert d.hosts_of(d.subscriptions[other]) is after.clusters[other].hosts


async def test_incremental_table_equals_a_full_rebuild(disc: tuple[Discovery, dict]) -> None:
    """Subscribes and unsubscribes insert and remove one route each; after every step the table
    must route exactly as one rebuilt from scratch (same routes in the same order, same matches)."""
    import random

    from regproxy.routing import Route, RouteMatch

    d, made = disc
    d.set_static_table(
        RoutingTable(
            [Route("static-one", RouteMatch(service="com.x.S1", method="only"), "static")],
            [Cluster("static", "random", (Host("10.0.0.9:1"),))],
        )
    )
    rng = random.Random(7)
    services = [f"com.x.S{i}" for i in range(6)]
    versions, groups = ["1.0.0", "2.0.0", "*", ""], ["", "g", "h", "*", "g,h"]
    for iface in services:
        made["a"].set_provider(DubboURL.parse(str(remote(1)).replace(IFACE, iface)))
    live: set[Subscription] = set()
    for _ in range(150):
        sub = Subscription(rng.choice(services), rng.choice(versions), rng.choice(groups))
        if sub in live and rng.random() < 0.6:
            await d.unsubscribe(sub)
            live.discard(sub)
        else:
            await d.subscribe(sub)
            live.add(sub)
        incremental = d.egress.current
        d._rebuild_egress()
        full = d.egress.current
        assert [r.name for r in incremental.routes] == [r.name for r in full.routes]
        assert set(incremental.clusters) == set(full.clusters)
        for iface in services:
            for version in ("1.0.0", "2.0.0", "3.0.0", ""):
                for group in ("", "g", "h", "z"):
                    for method in ("only", "m"):
                        a = incremental.match(iface, version, method, group)
                        b = full.match(iface, version, method, group)
                        assert (a and a.name) == (b and b.name), (iface, version, group, method)
        d.egress.swap(incremental)  # carry on from the incremental table


async def test_unsubscribe_removes_route_cluster_and_consumer(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    made["a"].set_provider(remote(1))
    sub = Subscription(IFACE, "1.0.0", "g")
    await d.subscribe(sub)
    await d.unsubscribe(sub)
    assert d.egress.current.routes == () and d.egress.current.clusters == {}
    assert made["a"].nodes(IFACE, "consumers") == []
    made["a"].set_provider(remote(7))  # late events for a dropped subscription change nothing
    await settle()
    assert d.egress.current.clusters == {}
    with pytest.raises(NotFound):
        await d.unsubscribe(sub)


async def test_registry_down_keeps_table_and_session_loss_recreates(disc: tuple[Discovery, dict]) -> None:
    d, made = disc
    reg = made["a"]
    reg.set_provider(remote(1))
    await d.publish(SPEC)
    cluster, _ = await d.subscribe(Subscription(IFACE, "1.0.0", "g"))
    before = d.egress.current
    reg.simulate_down(lose_session=True)
    await settle()
    assert d.egress.current.clusters[cluster].hosts == before.clusters[cluster].hosts  # not wiped
    assert SPEC.key in d.publications  # not forgotten
    reg.simulate_up()
    await settle()
    assert any(n.port == 20882 for n in reg.nodes(IFACE))  # our provider node is back
    assert reg.nodes(IFACE, "consumers")


async def test_two_registries_merge_one_host_per_address() -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A, REG_B])
    await d.start()
    try:
        made["a"].set_provider(remote(1))
        made["b"].set_provider(remote(1))  # the same provider in both
        made["b"].set_provider(remote(2))
        cluster, providers = await d.subscribe(Subscription(IFACE, "1.0.0", "g"))
        assert sorted(p["address"] for p in providers) == ["10.9.9.9:1", "10.9.9.9:2"]
        await d.publish(SPEC)
        assert len(made["a"].nodes(IFACE)) == 2 and len(made["b"].nodes(IFACE)) == 3
        # One registry going away keeps its last providers; the other one's still count.
        made["a"].simulate_down()
        made["b"].remove_provider(remote(2))
        await settle()
        # (10.1.2.3:20882 is this sidecar's own publication of the same service.)
        hosts = {h.address for h in d.egress.current.clusters[cluster].hosts}
        assert hosts == {"10.9.9.9:1", "10.1.2.3:20882"}
    finally:
        await d.stop()


async def test_partial_publish_failure_is_rolled_back() -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A, REG_B])
    await d.start()
    try:
        made["b"].simulate_down()
        with pytest.raises(RegistryUnavailable):
            await d.publish(SPEC)
        assert made["a"].nodes(IFACE) == [] and d.publications == {}
    finally:
        await d.stop()


async def test_restart_restores_state_and_serves_from_cache(tmp_path: Path) -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A], tmp_path)
    await d.start()
    made["a"].set_provider(remote(1))
    await d.publish(SPEC)
    cluster, _ = await d.subscribe(Subscription(IFACE, "1.0.0", "g"))
    await d.stop()  # removes its own nodes, keeps the state file
    assert made["a"].nodes(IFACE) == [remote(1)]

    # Restarted while the registry is unreachable: routes come from the cache.
    made["a"].remove_provider(remote(1))
    MemoryRegistry.reset_all()
    made2: dict[str, MemoryRegistry] = {}
    d2 = new_discovery(made2, [REG_A], tmp_path)
    orig_start = MemoryRegistry.start

    async def start_down(self: MemoryRegistry) -> None:
        await orig_start(self)
        self.simulate_down()

    MemoryRegistry.start = start_down  # type: ignore[method-assign]
    try:
        await d2.start()
    finally:
        MemoryRegistry.start = orig_start  # type: ignore[method-assign]
    try:
        assert d2.restored and cluster in d2.from_cache
        # The cache holds what was last seen, this sidecar's own publication of the service included.
        assert {h.address for h in d2.egress.current.clusters[cluster].hosts} == {
            "10.9.9.9:1",
            "10.1.2.3:20882",
        }
        route = d2.ingress.current.match(IFACE, "1.0.0", "a", "g")
        assert route is not None and route.cluster == "app:20990"
        # The registry comes back: the publication is registered, the watch replaces the cache.
        made2["a"].set_provider(remote(5))
        made2["a"].simulate_up()
        await wait_for(
            lambda: any(n.port == 20882 for n in made2["a"].nodes(IFACE)) and cluster not in d2.from_cache,
            2, "the publication registered and the cache replaced",
        )  # fmt: skip
        assert any(n.port == 20882 for n in made2["a"].nodes(IFACE))
        assert {h.address for h in d2.egress.current.clusters[cluster].hosts} == {
            "10.9.9.9:5",
            "10.1.2.3:20882",
        }
    finally:
        await d2.stop()


async def test_corrupt_state_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "regproxy-state.json").write_text("{not json")
    d = new_discovery({}, [REG_A], tmp_path)
    await d.start()
    assert d.publications == {} and (tmp_path / "regproxy-state.corrupt").exists()
    await d.stop()
