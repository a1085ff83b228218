from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.routing import (
    NO_VERSION,
    Cluster,
    Host,
    Route,
    RouteMatch,
    RoutingTable,
    ServiceKey,
    TableHolder,
    normalize_version,
    service_label,
    split_address,
)

SVC = "com.x.Svc"
OTHER = "com.x.Other"


def _clusters(*names: str) -> list[Cluster]:
    return [Cluster(n, hosts=(Host(f"10.0.0.{i + 1}:20880"),)) for i, n in enumerate(names)]


def _table(*routes: Route) -> RoutingTable:
    return RoutingTable(routes, _clusters(*sorted({r.cluster for r in routes})))


def _route(name: str, cluster: str | None = None, **match: str | None) -> Route:
    return Route(name, RouteMatch(**match), cluster or name)  # type: ignore[arg-type]


# --- model -------------------------------------------------------------------------------------


@pytest.mark.parametrize("v", [None, *NO_VERSION])
def test_normalize_version_no_version_spellings(v: str | None) -> None:
    assert normalize_version(v) == ""


@pytest.mark.parametrize("v", ["1.0.0", "0.0.1", "2", "**", " "])
def test_normalize_version_keeps_real_versions(v: str) -> None:
    assert normalize_version(v) == v


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (ServiceKey(SVC), SVC),
        (ServiceKey(SVC, "1.0.0"), f"{SVC}:1.0.0"),
        (ServiceKey(SVC, group="g"), f"g/{SVC}"),
        (ServiceKey(SVC, "1.0.0", "g"), f"g/{SVC}:1.0.0"),
        (ServiceKey(SVC, "0.0.0", ""), SVC),
        (ServiceKey(SVC, "*"), SVC),
    ],
)
def test_service_key_str_and_parse(key: ServiceKey, text: str) -> None:
    assert str(key) == text
    assert ServiceKey.parse(text) == key


@pytest.mark.parametrize(
    ("args", "any_version", "label"),
    [
        ((SVC, "", ""), False, SVC),
        ((SVC, None, None), False, SVC),
        ((SVC, "1.0.0", "g"), False, f"g/{SVC}:1.0.0"),
        ((SVC, "0.0.0", "g"), False, f"g/{SVC}"),  # a consumer with no version sends 0.0.0
        ((SVC, "*", ""), False, SVC),
        ((SVC, "*", "g"), True, f"g/{SVC}:*"),  # a subscription's "any version" is named
        ((SVC, "0.0.0", ""), True, SVC),
        ((SVC, "", "a,b"), True, f"a,b/{SVC}"),
    ],
)
def test_service_label(args: tuple[str, str | None, str | None], any_version: bool, label: str) -> None:
    assert service_label(*args, any_version=any_version) == label


def test_service_key_parse_normalizes_version() -> None:
    assert ServiceKey.parse(f"g/{SVC}:0.0.0") == ServiceKey(SVC, "", "g")
    assert ServiceKey.parse(f"{SVC}:*").version == ""
    assert ServiceKey(SVC, "0.0.0") == ServiceKey(SVC)
    assert hash(ServiceKey(SVC, "0.0.0")) == hash(ServiceKey(SVC))


@pytest.mark.parametrize("text", ["", "g/", ":1.0", "g/:1.0", "a/b/c", "x/y/" + SVC])
def test_service_key_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        ServiceKey.parse(text)


_name = st.from_regex(r"[A-Za-z0-9_.\-,]{1,12}", fullmatch=True)


@given(iface=_name, version=st.one_of(st.just(""), _name), group=st.one_of(st.just(""), _name))
def test_service_key_round_trip(iface: str, version: str, group: str) -> None:
    key = ServiceKey(iface, version, group)
    assert ServiceKey.parse(str(key)) == key


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:20880", "127.0.0.1", 20880),
        ("[::1]:20880", "::1", 20880),
        ("[fe80::1%eth0]:1", "fe80::1%eth0", 1),
        ("provider.local:65535", "provider.local", 65535),
    ],
)
def test_host_address_parts(address: str, host: str, port: int) -> None:
    h = Host(address)
    assert (h.host, h.port) == (host, port)
    assert split_address(address) == (host, port)


@pytest.mark.parametrize(
    "address",
    ["", "127.0.0.1", ":20880", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "::1:20880", "[::1:80", "h:x"],
)
def test_host_rejects_bad_address(address: str) -> None:
    with pytest.raises(ValueError, match="invalid address"):
        Host(address)


def test_host_defaults_and_metadata_copy() -> None:
    meta = {"zone": "a"}
    h = Host("1.2.3.4:80", metadata=meta)
    meta["zone"] = "b"  # the caller's dict is copied, not shared
    assert (h.weight, h.healthy, dict(h.metadata)) == (100, True, {"zone": "a"})
    assert h == Host("1.2.3.4:80", metadata={"zone": "a"})
    assert hash(h) == hash(Host("1.2.3.4:80", metadata={"zone": "a"}))


def test_host_copy_and_pickle() -> None:
    h = Host("1.2.3.4:80", 7, False, {"k": "v"})
    assert copy.deepcopy(h) == h
    assert pickle.loads(pickle.dumps(h)) == h
    assert dataclasses.replace(h, weight=1).port == 80


def test_cluster_stores_tuple_and_rejects_duplicate_addresses() -> None:
    c = Cluster("c", hosts=[Host("1.1.1.1:1")])  # type: ignore[arg-type]
    assert isinstance(c.hosts, tuple)
    with pytest.raises(ValueError, match=r"duplicate host address '1\.1\.1\.1:1'"):
        Cluster("c", hosts=(Host("1.1.1.1:1"), Host("1.1.1.1:1", weight=5)))


def test_route_match_normalizes_version_but_keeps_none() -> None:
    assert RouteMatch(version="0.0.0").version == ""
    assert RouteMatch(version="*").version == ""
    assert RouteMatch().version is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RouteMatch(service=""), "service"),
        (lambda: RouteMatch(method=""), "method"),
        (lambda: Route("", RouteMatch(), "c"), "route name"),
        (lambda: Route("r", RouteMatch(), "c", timeout_ms=0), "'r': timeout_ms"),
        (lambda: Route("r", RouteMatch(), "c", retries=-1), "'r': retries"),
        (lambda: Cluster(""), "cluster name"),
    ],
)
def test_model_validation(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


# --- immutability ------------------------------------------------------------------------------


def test_snapshot_is_immutable() -> None:
    table = _table(_route("r", service=SVC))
    route = table.routes[0]
    cluster = table.clusters["r"]
    host = cluster.hosts[0]
    with pytest.raises(AttributeError):
        table.routes = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        table.version = 99  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del table.clusters  # type: ignore[misc]
    with pytest.raises(AttributeError):
        table.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        table.clusters["x"] = cluster  # type: ignore[index]
    with pytest.raises(TypeError):
        del table.clusters["r"]  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.cluster = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.match.service = OTHER  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cluster.hosts = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.weight = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        host.metadata["k"] = "v"  # type: ignore[index]
    with pytest.raises(AttributeError):
        table.routes.append(route)  # type: ignore[attr-defined]


def test_table_copies_the_route_list() -> None:
    routes = [_route("r", service=SVC)]
    table = RoutingTable(routes, _clusters("r"))
    routes.append(_route("s", cluster="r"))
    assert len(table.routes) == 1
    assert table.match(OTHER, "", "m", None) is None


# --- validation --------------------------------------------------------------------------------


def test_route_with_unknown_cluster_names_the_route() -> None:
    with pytest.raises(ValueError, match=r"route 'greet': unknown cluster 'nope'"):
        RoutingTable([Route("greet", RouteMatch(service=SVC), "nope")], _clusters("c"))


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate cluster 'c'"):
        RoutingTable((), _clusters("c", "c"))
    with pytest.raises(ValueError, match="duplicate route 'r'"):
        RoutingTable([_route("r", "c"), _route("r", "c")], _clusters("c"))


def test_unknown_load_balancer_is_rejected_at_build_time() -> None:
    with pytest.raises(ValueError, match=r"cluster 'c': unknown load balancer 'fastest' \(choose one of"):
        RoutingTable((), [Cluster("c", lb="fastest")])


# --- matching ----------------------------------------------------------------------------------


def test_empty_table_matches_nothing() -> None:
    table = RoutingTable()
    assert table.match(SVC, "", "m", None) is None
    assert table.needs_group(SVC) is False
    assert table.routes == ()
    assert dict(table.clusters) == {}


def test_first_matching_route_wins_in_table_order() -> None:
    table = _table(
        _route("wild-first", service="*", method="ping"),
        _route("exact", service=SVC),
        _route("wild-later", service="*"),
        _route("exact-unreachable", service=SVC),
    )
    assert table.match(SVC, "", "ping", None).name == "wild-first"
    assert table.match(SVC, "", "greet", None).name == "exact"
    assert table.match(OTHER, "", "greet", None).name == "wild-later"
    assert table.match(OTHER, "", "ping", None).name == "wild-first"


def test_wildcard_before_exact_keeps_order() -> None:
    table = _table(_route("catch-all", service="*"), _route("exact", service=SVC))
    assert table.match(SVC, "", "m", None).name == "catch-all"


def test_service_is_exact() -> None:
    table = _table(_route("r", service=SVC))
    assert table.match(SVC, "", "m", None).name == "r"
    assert table.match(SVC + "2", "", "m", None) is None
    assert table.match("com.x.svc", "", "m", None) is None


@pytest.mark.parametrize(
    ("route_version", "request_version", "matches"),
    [
        (None, "", True),
        (None, "0.0.0", True),
        (None, "2.0.0", True),
        ("1.0.0", "1.0.0", True),
        ("1.0.0", "1.0.1", False),
        ("1.0.0", "0.0.0", False),
        ("", "", True),
        ("", "0.0.0", True),
        ("", "*", True),
        ("", "1.0.0", False),
        ("0.0.0", "", True),
        ("*", "0.0.0", True),
        ("*", "1.0.0", False),  # "*" is a spelling of "no version", not a wildcard (use None for any)
    ],
)
def test_version_semantics(route_version: str | None, request_version: str, matches: bool) -> None:
    table = _table(_route("r", service=SVC, version=route_version))
    assert (table.match(SVC, request_version, "m", None) is not None) is matches


@pytest.mark.parametrize(
    ("route_group", "request_group", "matches"),
    [
        (None, "", True),
        (None, "g", True),
        ("g", "g", True),
        ("g", "h", False),
        ("g", "", False),
        ("", "", True),
        ("", "g", False),
    ],
)
def test_group_semantics(route_group: str | None, request_group: str, matches: bool) -> None:
    table = _table(_route("r", service=SVC, group=route_group))
    assert (table.match(SVC, "", "m", request_group) is not None) is matches


@pytest.mark.parametrize(
    ("route_method", "request_method", "matches"),
    [(None, "sayHello", True), ("sayHello", "sayHello", True), ("sayHello", "sayhello", False)],
)
def test_method_semantics(route_method: str | None, request_method: str, matches: bool) -> None:
    table = _table(_route("r", service=SVC, method=route_method))
    assert (table.match(SVC, "", request_method, None) is not None) is matches


def test_all_fields_must_match() -> None:
    table = _table(
        _route("full", "a", service=SVC, version="1.0.0", group="g", method="m"),
        _route("fallback", "b", service=SVC),
    )
    assert table.match(SVC, "1.0.0", "m", "g").name == "full"
    assert table.match(SVC, "1.0.1", "m", "g").name == "fallback"
    assert table.match(SVC, "1.0.0", "n", "g").name == "fallback"
    assert table.match(SVC, "1.0.0", "m", "h").name == "fallback"


def test_groups_and_versions_route_to_separate_clusters() -> None:
    table = _table(
        _route("v1-g1", service=SVC, version="1.0.0", group="g1"),
        _route("v1-nogroup", service=SVC, version="1.0.0", group=""),
        _route("v2-any", service=SVC, version="2.0.0"),
    )
    assert table.match(SVC, "1.0.0", "m", "g1").cluster == "v1-g1"
    assert table.match(SVC, "1.0.0", "m", "").cluster == "v1-nogroup"
    assert table.match(SVC, "1.0.0", "m", "g2") is None
    assert table.match(SVC, "2.0.0", "m", "g9").cluster == "v2-any"


def test_needs_group_when_a_route_of_the_service_matches_on_group() -> None:
    table = _table(
        _route("grouped", service=SVC, group="g"),
        _route("plain", service=OTHER),
        _route("no-group-only", service="com.x.Third", group=""),
    )
    assert table.needs_group(SVC) is True
    assert table.needs_group(OTHER) is False
    assert table.needs_group("com.x.Third") is True  # "" is a constraint too
    assert table.needs_group("com.x.Unknown") is False


def test_needs_group_through_wildcard() -> None:
    table = _table(_route("plain", service=OTHER), _route("wild", service="*", group="canary"))
    assert table.needs_group(OTHER) is True  # a later wildcard route could still be reached
    assert table.needs_group("com.x.Unknown") is True


def test_unparsed_group_is_only_accepted_when_not_needed() -> None:
    table = _table(_route("grouped", service=SVC, group="g"), _route("plain", service=OTHER))
    assert table.match(OTHER, "", "m", None).name == "plain"
    with pytest.raises(ValueError, match="'grouped' matches on group"):
        table.match(SVC, "", "m", None)


def test_group_check_is_skipped_when_other_fields_already_fail() -> None:
    table = _table(_route("grouped", service=SVC, method="a", group="g"), _route("plain", "c", service=SVC))
    # needs_group is True here, but a request the grouped route cannot take never reaches its group check.
    assert table.match(SVC, "", "b", None).name == "plain"


# --- snapshots ---------------------------------------------------------------------------------


def test_every_new_table_has_a_higher_version() -> None:
    a, b = RoutingTable(), RoutingTable()
    assert b.version > a.version
    assert a.with_changes().version > b.version


def test_with_changes_and_with_cluster() -> None:
    table = _table(_route("r", service=SVC))
    assert table.with_changes() is not table
    assert table.with_changes().routes == table.routes
    extra = Route("extra", RouteMatch(service=OTHER), "r")
    changed = table.with_changes(routes=[*table.routes, extra])
    assert changed.match(OTHER, "", "m", None) is extra
    assert table.match(OTHER, "", "m", None) is None
    with pytest.raises(ValueError, match="route 'r': unknown cluster 'r'"):
        table.with_changes(clusters=())

    bigger = Cluster("r", "weighted_round_robin", (Host("10.0.0.1:1"), Host("10.0.0.2:1")))
    updated = table.with_cluster(bigger)
    assert updated.clusters["r"] is bigger
    assert len(table.clusters["r"].hosts) == 1
    assert set(updated.with_cluster(Cluster("new")).clusters) == {"r", "new"}


def test_replacing_cluster_shares_the_route_index() -> None:
    table = _table(_route("r", service=SVC))
    bigger = Cluster("r", "weighted_round_robin", (Host("10.0.0.1:1"), Host("10.0.0.2:1")))
    updated = table.replacing_cluster(bigger)
    assert updated.clusters["r"] is bigger and len(table.clusters["r"].hosts) == 1
    assert updated.version > table.version and updated.routes is table.routes
    assert updated.match(SVC, "", "m", None) is table.match(SVC, "", "m", None)
    with pytest.raises(KeyError, match="no cluster 'new'"):
        table.replacing_cluster(Cluster("new"))
    with pytest.raises(ValueError, match="unknown load balancer"):
        table.replacing_cluster(Cluster("r", "fastest"))
    with pytest.raises(AttributeError, match="immutable"):
        updated.version = 1  # type: ignore[misc]


def test_inserting_and_removing_reindex_only_the_route_service() -> None:
    table = _table(_route("first", service=SVC, version="1"), _route("any", service="*", method="ping"))
    other_list = table._by_service.get(OTHER)  # type: ignore[attr-defined]
    added = table.inserting(1, _route("second", service=SVC), Cluster("second"))
    assert [r.name for r in added.routes] == ["first", "second", "any"]
    assert added.match(SVC, "1", "m", None).name == "first"  # type: ignore[union-attr]
    assert added.match(SVC, "2", "m", None).name == "second"  # type: ignore[union-attr]
    assert added.match(SVC, "2", "ping", None).name == "second"  # table order: before the wildcard
    assert added._by_service.get(OTHER) is other_list  # type: ignore[attr-defined]
    assert added.match(OTHER, "", "ping", None).name == "any"  # type: ignore[union-attr]
    # A wildcard-service route changes every service's list: rebuilt whole, same answers.
    wild = added.inserting(0, _route("w", service="*", method="m"), Cluster("w"))
    assert wild.match(SVC, "2", "m", None).name == "w"  # type: ignore[union-attr]
    assert wild.match(OTHER, "", "m", None).name == "w"  # type: ignore[union-attr]
    back = wild.removing("w", "w").removing("second", "second")
    assert [r.name for r in back.routes] == ["first", "any"] and set(back.clusters) == {"first", "any"}
    assert back.match(SVC, "2", "m", None) is None
    gone = back.removing("first", "first")
    assert gone.match(SVC, "1", "m", None) is None and not gone.needs_group(SVC)
    with pytest.raises(ValueError, match="duplicate route 'first'"):
        table.inserting(0, _route("first", service=SVC), Cluster("first"))
    with pytest.raises(KeyError, match="no route 'nope'"):
        table.removing("nope")
    with pytest.raises(ValueError, match="still used"):
        table.removing("any", "first")


def test_describe_is_plain_data() -> None:
    table = RoutingTable(
        [Route("greet", RouteMatch(service=SVC, version="1.0.0", group=""), "c", timeout_ms=500, retries=0)],
        [Cluster("c", "random", (Host("[::1]:20880", 5, False, {"zone": "a"}),))],
    )
    assert table.describe() == {
        "version": table.version,
        "routes": [
            {
                "name": "greet",
                "match": {"service": SVC, "version": "1.0.0", "group": "", "method": None},
                "cluster": "c",
                "timeout_ms": 500,
                "retries": 0,
            }
        ],
        "clusters": [
            {
                "name": "c",
                "lb": "random",
                "hosts": [
                    {"address": "[::1]:20880", "weight": 5, "healthy": False, "metadata": {"zone": "a"}}
                ],
            }
        ],
    }
    assert type(table.describe()["clusters"][0]["hosts"][0]["metadata"]) is dict


# --- holder ------------------------------------------------------------------------------------


def test_holder_swap_returns_old_and_notifies_listeners() -> None:
    first, second = RoutingTable(), _table(_route("r", service=SVC))
    holder = TableHolder(first)
    seen: list[tuple[int, int]] = []
    holder.add_listener(lambda new, old: seen.append((new.version, old.version)))

    assert holder.swap(second) is first
    assert holder.current is second
    assert seen == [(second.version, first.version)]


def test_holder_default_is_an_empty_table() -> None:
    holder = TableHolder()
    assert holder.current.routes == ()


def test_holder_listener_removal_and_failures() -> None:
    holder = TableHolder()
    calls: list[str] = []

    def broken(new: RoutingTable, old: RoutingTable) -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    holder.add_listener(broken)
    remove = holder.add_listener(lambda new, old: calls.append("ok"))
    new = RoutingTable()
    # A failing listener neither undoes the swap nor keeps later listeners from hearing about it.
    holder.swap(new)
    assert holder.current is new
    assert calls == ["broken", "ok"]

    remove()
    remove()  # idempotent
    holder.swap(RoutingTable())
    assert calls == ["broken", "ok", "broken"]


def test_listener_may_remove_itself_during_notification() -> None:
    holder = TableHolder()
    calls: list[str] = []
    removers = []

    def once(new: RoutingTable, old: RoutingTable) -> None:
        calls.append("once")
        removers[0]()

    removers.append(holder.add_listener(once))
    holder.add_listener(lambda new, old: calls.append("always"))
    holder.swap(RoutingTable())
    holder.swap(RoutingTable())
    assert calls == ["once", "always", "always"]


_field = st.sampled_from


@given(
    st.lists(
        st.tuples(
            _field(["a", "b", "*"]),
            _field([None, "", "1.0.0"]),
            _field([None, "", "g"]),
            _field([None, "x", "y"]),
        ),
        max_size=10,
    ),
    _field(["a", "b", "c"]),
    _field(["", "0.0.0", "1.0.0"]),
    _field(["", "g", "h"]),
    _field(["x", "y", "z"]),
)
def test_match_equals_first_match_of_a_linear_scan(
    specs: list[tuple[str, str | None, str | None, str | None]],
    service: str,
    version: str,
    group: str,
    method: str,
) -> None:
    routes = [Route(f"r{i}", RouteMatch(*spec), "c") for i, spec in enumerate(specs)]
    table = RoutingTable(routes, [Cluster("c")])
    v = normalize_version(version)
    expected = next(
        (
            r
            for r in routes
            if r.match.service in (service, "*")
            and r.match.version in (None, v)
            and r.match.group in (None, group)
            and r.match.method in (None, method)
        ),
        None,
    )
    assert table.match(service, version, method, group) is expected
    assert table.needs_group(service) == any(
        r.match.group is not None for r in routes if r.match.service in (service, "*")
    )
