"""The pure table building of regproxy/discovery/tables.py: plain values in, tables out, no loop."""

from __future__ import annotations

from regproxy.discovery.desired import PublishSpec
from regproxy.discovery.tables import (
    DYNAMIC_LB,
    egress_table,
    hosts_from,
    ingress_table,
    route_order,
    subscription_cluster,
    subscription_route,
)
from regproxy.registry.url import DubboURL, Subscription
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable
from regproxy.routing.model import SPEAKS_ANY, SPEAKS_DUBBO, SPEAKS_TRI
from tests.test_discovery import IFACE, remote

SUB = Subscription(IFACE, "1.0.0", "g")


def test_ingress_table_routes_exactly_what_is_published() -> None:
    table = ingress_table(
        [PublishSpec(IFACE, 20990, version="1.0.0", group="g"), PublishSpec("com.y.Other", 20990)]
    )
    route = table.match(IFACE, "1.0.0", "m", "g")
    assert route is not None and route.cluster == "app:20990" and route.retries == 0
    assert [h.address for h in table.clusters["app:20990"].hosts] == ["127.0.0.1:20990"]
    assert len(table.clusters) == 1  # one cluster per application port
    assert table.match(IFACE, "1.0.0", "m", "other") is None
    assert table.match(IFACE, "2.0.0", "m", "g") is None
    assert not ingress_table().routes and not ingress_table().clusters


def test_hosts_follow_dubbo_rules_one_per_address_first_registry_wins() -> None:
    providers = {
        "a": [remote(1, weight=10), remote(2, version="2.0.0"), remote(3, group="other")],
        "b": [remote(1, weight=99), remote(4)],
    }
    hosts, own = hosts_from(SUB, ["a", "b"], providers, {})
    assert [(h.address, h.weight) for h in hosts] == [("10.9.9.9:1", 10), ("10.9.9.9:4", 100)]
    assert own == []
    assert hosts[0].metadata["interface"] == IFACE
    # Only the subscription's registries count, in its order.
    hosts, _ = hosts_from(SUB, ["b"], providers, {})
    assert [(h.address, h.weight) for h in hosts] == [("10.9.9.9:1", 99), ("10.9.9.9:4", 100)]


def test_own_addresses_are_left_out_and_named() -> None:
    hosts, own = hosts_from(SUB, ["a"], {"a": [remote(1), remote(2)]}, {"10.9.9.9:2": "egress listener x"})
    assert [h.address for h in hosts] == ["10.9.9.9:1"]
    assert [(key, url.port, what) for key, url, what in own] == [("a", 2, "egress listener x")]


def test_exact_subscriptions_order_before_wildcards() -> None:
    subs = [
        Subscription(IFACE, "*", "g"),
        Subscription(IFACE, "1.0.0", "*"),
        Subscription(IFACE, "1.0.0", "g"),
    ]
    assert sorted(subs, key=route_order) == [subs[2], subs[1], subs[0]]
    assert route_order(Subscription(IFACE, "1.0.0", "a,b"))[1]  # a group list is a wildcard too


def test_egress_table_keeps_static_routes_first() -> None:
    static = RoutingTable(
        routes=[Route(name="static", match=RouteMatch(service="com.s.S"), cluster="s")],
        clusters=[Cluster(name="s", hosts=(Host(address="10.0.0.1:1"),))],
    )
    cluster = subscription_cluster(SUB, (Host(address="10.9.9.9:1"),))
    assert cluster.name == SUB.cluster_name and cluster.lb == DYNAMIC_LB
    table = egress_table(static, [(subscription_route(SUB), cluster)])
    assert [r.name for r in table.routes] == ["static", SUB.cluster_name]
    assert set(table.clusters) == {"s", SUB.cluster_name}
    route = table.match(IFACE, "1.0.0", "m", "g")
    assert route is not None and route.cluster == SUB.cluster_name
    assert egress_table(static, []).routes == static.routes


def test_a_host_speaks_what_its_address_is_registered_with_and_its_ext_protocol() -> None:
    def url(protocol: str, port: int, **params: str) -> DubboURL:
        return DubboURL(protocol, "10.9.9.9", port, IFACE, {"interface": IFACE, "version": "1.0.0",
                                                           "group": "g", **params})  # fmt: skip

    providers = {
        "a": [
            url("dubbo", 1, weight="7"),
            url("tri", 1, weight="99"),  # the same address: one host that takes both, the first's params
            url("dubbo", 2),
            url("tri", 3),
            # Dubbo 3.3's port unification (ServiceConfig, RegistryDirectory.getEffectiveProtocol).
            url("dubbo", 4, **{"ext.protocol": "tri,"}),
            url("rest", 5),
        ]
    }
    hosts, _ = hosts_from(SUB, ["a"], providers, {})
    assert [(h.address, h.speaks, h.weight) for h in hosts] == [
        ("10.9.9.9:1", SPEAKS_ANY, 7),
        ("10.9.9.9:2", SPEAKS_DUBBO, 100),
        ("10.9.9.9:3", SPEAKS_TRI, 100),
        ("10.9.9.9:4", SPEAKS_ANY, 100),
    ]


def test_a_service_published_in_both_protocols_has_one_ingress_route() -> None:
    # Two application ports: each call goes to the port of its protocol (Host.speaks).
    table = ingress_table([PublishSpec(IFACE, 20880), PublishSpec(IFACE, 50051, protocol="tri")])
    route = table.match(IFACE, "", "m", "")
    assert route is not None and route.cluster == "app:20880,50051/tri"
    hosts = table.clusters["app:20880,50051/tri"].hosts
    assert [(h.address, h.speaks) for h in hosts] == [
        ("127.0.0.1:20880", SPEAKS_DUBBO),
        ("127.0.0.1:50051", SPEAKS_TRI),
    ]
    # One port that takes both (a Dubbo 3 application with port unification).
    table = ingress_table([PublishSpec(IFACE, 20880), PublishSpec(IFACE, 20880, protocol="tri")])
    assert [(h.address, h.speaks) for h in table.clusters["app:20880/dubbo+tri"].hosts] == [
        ("127.0.0.1:20880", SPEAKS_ANY)
    ]
    # A Dubbo-only publication keeps its cluster name; another service's Triple-only port is apart.
    table = ingress_table([PublishSpec(IFACE, 20880), PublishSpec("com.y.Other", 20880, protocol="tri")])
    assert set(table.clusters) == {"app:20880", "app:20880/tri"}
