"""Routing a service registered in both protocols (issue 20): which hosts speak what, from the
registry's URLs (regproxy.discovery.tables.hosts_from) and from the sidecar's own publications
(ingress_table), and a planner keeping only the hosts that speak its caller's protocol
(regproxy.proxy.plan.Planner, ``speaks=``). Plain values in, values out: no loop, no socket.

Dubbo's side of the facts: a Dubbo 3 provider registers one URL per protocol it exports
(``ServiceConfig.doExportUrlsFor1Protocol``: ``dubbo://`` and ``tri://``, same parameters), on
one port each or on one port for both (port unification); a consumer without a ``protocol``
setting takes every protocol it can speak (``RegistryDirectory.toInvokers``).
"""

from __future__ import annotations

import random

from regproxy.discovery.desired import PublishSpec
from regproxy.discovery.tables import hosts_from, ingress_table
from regproxy.dubbo.encode import encode_request
from regproxy.dubbo.request import RequestBody
from regproxy.proxy.exchange import Plan
from regproxy.proxy.plan import NoRoute, Planner
from regproxy.proxy.stats import ListenerStats
from regproxy.registry.url import DubboURL, Subscription, provider_url
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable
from regproxy.routing.model import SPEAKS_ANY, SPEAKS_DUBBO, SPEAKS_TRI
from regproxy.triple.call import parse_call
from regproxy.triple.request import TripleRequest

IFACE = "com.x.Svc"
SUB = Subscription(IFACE, "1.0.0", "g")


def url(
    port: int, protocol: str, *, ip: str = "10.9.9.9", weight: int | None = None, version: str = "1.0.0"
) -> DubboURL:
    params = {"weight": str(weight)} if weight is not None else None
    return provider_url(
        interface=IFACE, ip=ip, port=port, version=version, group="g", params=params, pid=1, timestamp_ms=1,
        protocol=protocol,
    )  # fmt: skip


def speaks(hosts: tuple[Host, ...]) -> list[tuple[str, int]]:
    return [(h.address, h.speaks) for h in hosts]


# --- hosts_from ----------------------------------------------------------------------------------------


def test_one_address_in_both_protocols_is_one_host_speaking_both() -> None:
    hosts, own = hosts_from(SUB, ["a"], {"a": [url(20880, "dubbo"), url(20880, "tri")]}, {})
    assert speaks(hosts) == [("10.9.9.9:20880", SPEAKS_ANY)] and own == []
    # Either order.
    hosts, _ = hosts_from(SUB, ["a"], {"a": [url(20880, "tri"), url(20880, "dubbo")]}, {})
    assert speaks(hosts) == [("10.9.9.9:20880", SPEAKS_ANY)]


def test_two_addresses_are_two_hosts_each_speaking_its_own() -> None:
    hosts, _ = hosts_from(SUB, ["a"], {"a": [url(20880, "dubbo"), url(50051, "tri")]}, {})
    assert speaks(hosts) == [("10.9.9.9:20880", SPEAKS_DUBBO), ("10.9.9.9:50051", SPEAKS_TRI)]
    # Two machines, one protocol each.
    hosts, _ = hosts_from(
        SUB, ["a"], {"a": [url(20880, "tri", ip="10.0.0.1"), url(20880, "dubbo", ip="10.0.0.2")]}, {}
    )
    assert speaks(hosts) == [("10.0.0.1:20880", SPEAKS_TRI), ("10.0.0.2:20880", SPEAKS_DUBBO)]


def test_the_first_url_of_an_address_gives_its_parameters() -> None:
    first, second = url(20880, "dubbo", weight=10), url(20880, "tri", weight=99)
    (host,), _ = hosts_from(SUB, ["a"], {"a": [first, second]}, {})
    assert host.weight == 10 and host.metadata == dict(first.params) and host.speaks == SPEAKS_ANY
    first, second = url(20880, "tri", weight=99), url(20880, "dubbo", weight=10)
    (host,), _ = hosts_from(SUB, ["a"], {"a": [first, second]}, {})
    assert host.weight == 99 and host.metadata == dict(first.params) and host.speaks == SPEAKS_ANY
    # Across registries too: the first registry's URL, and both protocols.
    (host,), _ = hosts_from(
        SUB, ["a", "b"], {"a": [url(20880, "dubbo", weight=10)], "b": [url(20880, "tri", weight=99)]}, {}
    )
    assert host.weight == 10 and host.speaks == SPEAKS_ANY


def test_a_url_the_subscription_does_not_take_adds_no_protocol() -> None:
    providers = {"a": [url(20880, "dubbo"), url(20880, "tri", version="2.0.0")]}
    hosts, _ = hosts_from(SUB, ["a"], providers, {})
    assert speaks(hosts) == [("10.9.9.9:20880", SPEAKS_DUBBO)]


# --- ingress_table -------------------------------------------------------------------------------------


def test_a_service_published_in_both_protocols_on_two_ports() -> None:
    table = ingress_table([
        PublishSpec(IFACE, 20880, version="1.0.0", group="g"),
        PublishSpec(IFACE, 50051, version="1.0.0", group="g", protocol="tri"),
    ])  # fmt: skip
    (route,) = table.routes
    assert route.cluster == "app:20880,50051/tri"
    assert table.match(IFACE, "1.0.0", "m", "g") is route
    assert list(table.clusters) == ["app:20880,50051/tri"]
    hosts = table.clusters["app:20880,50051/tri"].hosts
    assert speaks(hosts) == [("127.0.0.1:20880", SPEAKS_DUBBO), ("127.0.0.1:50051", SPEAKS_TRI)]


def test_a_service_published_in_both_protocols_on_one_port() -> None:
    table = ingress_table([
        PublishSpec(IFACE, 20880, version="1.0.0", group="g", protocol="tri"),
        PublishSpec(IFACE, 20880, version="1.0.0", group="g"),
    ])  # fmt: skip
    (route,) = table.routes
    assert route.cluster == "app:20880/dubbo+tri"
    assert speaks(table.clusters["app:20880/dubbo+tri"].hosts) == [("127.0.0.1:20880", SPEAKS_ANY)]


def test_a_service_published_in_one_protocol() -> None:
    table = ingress_table([PublishSpec(IFACE, 50051, protocol="tri")])
    assert [r.cluster for r in table.routes] == ["app:50051/tri"]
    assert speaks(table.clusters["app:50051/tri"].hosts) == [("127.0.0.1:50051", SPEAKS_TRI)]
    table = ingress_table([PublishSpec(IFACE, 20880)])  # as before Triple
    assert [r.cluster for r in table.routes] == ["app:20880"]
    assert speaks(table.clusters["app:20880"].hosts) == [("127.0.0.1:20880", SPEAKS_DUBBO)]


# --- Planner(speaks=) ----------------------------------------------------------------------------------

DUBBO_ONLY = Host("10.0.0.1:20880", speaks=SPEAKS_DUBBO)
TRI_ONLY = Host("10.0.0.2:50051", speaks=SPEAKS_TRI)
BOTH = Host("10.0.0.3:20880", speaks=SPEAKS_ANY)


def planner(speaks_: int) -> Planner:
    return Planner(
        ListenerStats().histogram,
        lambda address: 0,
        default_timeout_ms=3000,
        timeout_from_attachment=True,
        rng=random.Random(7),
        speaks=speaks_,
    )


def one_cluster(*hosts: Host, lb: str = "round_robin") -> RoutingTable:
    return RoutingTable([Route("r", RouteMatch(service=IFACE), "c")], [Cluster("c", lb, hosts)])


def dubbo_plan(p: Planner, table: RoutingTable) -> Plan | NoRoute:
    raw = encode_request(1, IFACE, "m", ["x"])
    if p.table is not table:
        p.reset(table)
    return p.plan(raw, RequestBody(raw, 16), table)


def triple_plan(p: Planner, table: RoutingTable) -> Plan | NoRoute:
    headers = [
        (b":method", b"POST"),
        (b":path", f"/{IFACE}/m".encode()),
        (b"content-type", b"application/grpc"),
    ]
    if p.table is not table:
        p.reset(table)
    return p.plan(b"", TripleRequest(parse_call(headers)), table)  # type: ignore[arg-type]


def test_a_planner_keeps_only_the_hosts_that_speak_its_protocol() -> None:
    for lb in ("round_robin", "dubbo"):
        table = one_cluster(DUBBO_ONLY, TRI_ONLY, BOTH, lb=lb)
        tri = triple_plan(planner(SPEAKS_TRI), table)
        assert isinstance(tri, Plan) and tri.hosts == (TRI_ONLY, BOTH), lb
        dubbo = dubbo_plan(planner(SPEAKS_DUBBO), table)
        assert isinstance(dubbo, Plan) and dubbo.hosts == (DUBBO_ONLY, BOTH), lb


def test_a_planner_whose_hosts_all_speak_it_keeps_the_same_tuple() -> None:
    hosts = (TRI_ONLY, BOTH)
    table = one_cluster(*hosts)
    plan = triple_plan(planner(SPEAKS_TRI), table)
    assert isinstance(plan, Plan) and plan.hosts is table.clusters["c"].hosts


def test_a_planner_with_no_host_of_its_protocol_plans_none() -> None:
    # A Triple call to a cluster of Dubbo-only hosts: a plan with no host (TripleForwarder answers
    # it "no Triple provider"), never a Dubbo host.
    plan = triple_plan(planner(SPEAKS_TRI), one_cluster(DUBBO_ONLY))
    assert isinstance(plan, Plan) and plan.hosts == ()
    plan = dubbo_plan(planner(SPEAKS_DUBBO), one_cluster(TRI_ONLY))
    assert isinstance(plan, Plan) and plan.hosts == ()


def test_the_filtered_hosts_follow_a_table_swap() -> None:
    p = planner(SPEAKS_TRI)
    first = triple_plan(p, one_cluster(DUBBO_ONLY, TRI_ONLY))
    assert isinstance(first, Plan) and first.hosts == (TRI_ONLY,)
    second = triple_plan(p, one_cluster(DUBBO_ONLY, BOTH))
    assert isinstance(second, Plan) and second.hosts == (BOTH,)
