"""Dubbo 3.3's parameter model (regproxy.governance.params) and what the planner makes of it.

Each group names the apache/dubbo 3.3 class whose behaviour it pins.  The planner tests build a
routing table whose cluster follows Dubbo (lb "dubbo": a subscription's) and read the Plan the
Planner gives a request (regproxy.proxy.plan.Planner._make_plan / _declared_for).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from regproxy.governance.params import (
    CLUSTER_MODES,
    KEYS,
    MODE_BROADCAST,
    MODE_DEFAULT,
    MODE_FAILFAST,
    MODE_FAILOVER,
    MODE_FAILSAFE,
    MODE_FORKING,
    Effective,
    call_params,
    consumer_own,
    effective,
    generated_token,
    layered,
    provider_guard,
    token_of,
)
from regproxy.proxy.exchange import Plan
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable
from regproxy.routing.dubbo_balancers import DUBBO_BALANCERS, MethodBalancer, method_parameter
from regproxy.routing.rules import RETRY_CONNECT, RETRY_FAILOVER
from tests.test_planner import SVC, decide, planner, rules

A, B, C = "10.0.0.1:20880", "10.0.0.2:20880", "10.0.0.3:20880"
M = "sayHi"

# --------------------------------------------------------------------------------------------------
# effective(): DubboServiceAddressURL.getMethodParameter / ServiceAddressURL.getMethodParameter
# (URLParam.getMethodParameterStrict for each URL's own `methods`).


@dataclass(frozen=True)
class Lookup:
    name: str
    provider: Mapping[str, str]
    consumer: Mapping[str, str] = field(default_factory=dict)
    override: Mapping[str, str] = field(default_factory=dict)
    method: str = M
    expected: Effective | None = None


LOOKUPS = [
    Lookup(
        "a provider's method-level value beats a consumer's service-level one",
        {"sayHi.timeout": "200"},
        consumer={"timeout": "1000"},
        expected=Effective("200", "provider", "sayHi.timeout"),
    ),
    Lookup(
        "override <m>.<k> first of the method-level values",
        {"sayHi.timeout": "200"},
        consumer={"sayHi.timeout": "150"},
        override={"sayHi.timeout": "50"},
        expected=Effective("50", "override", "sayHi.timeout"),
    ),
    Lookup(
        "consumer <m>.<k> before provider <m>.<k>",
        {"sayHi.timeout": "200"},
        consumer={"sayHi.timeout": "150"},
        expected=Effective("150", "consumer", "sayHi.timeout"),
    ),
    Lookup(
        "an override's service-level value loses to a provider's method-level one",
        {"sayHi.timeout": "200"},
        override={"timeout": "50"},
        expected=Effective("200", "provider", "sayHi.timeout"),
    ),
    Lookup(
        "service level: override before consumer before provider",
        {"timeout": "300"},
        consumer={"timeout": "1000"},
        override={"timeout": "50"},
        expected=Effective("50", "override", "timeout"),
    ),
    Lookup(
        "service level: consumer before provider",
        {"timeout": "300"},
        consumer={"timeout": "1000"},
        expected=Effective("1000", "consumer", "timeout"),
    ),
    Lookup(
        "empty values count as unset at every step",
        {"timeout": "300"},
        consumer={"timeout": "", "sayHi.timeout": ""},
        override={"sayHi.timeout": "", "timeout": ""},
        expected=Effective("300", "provider", "timeout"),
    ),
    Lookup(
        "default.<k> is read when <k> is absent",
        {"default.timeout": "400"},
        expected=Effective("400", "provider", "timeout"),
    ),
    Lookup(
        "<k> itself beats default.<k>",
        {"timeout": "300", "default.timeout": "400"},
        expected=Effective("300", "provider", "timeout"),
    ),
    Lookup(
        "a methods list without the method hides its method-level values (strict)",
        {"methods": "sayHello,bye", "sayHi.timeout": "200", "timeout": "300"},
        expected=Effective("300", "provider", "timeout"),
    ),
    Lookup(
        "a methods list with the method keeps them",
        {"methods": "sayHello,sayHi", "sayHi.timeout": "200", "timeout": "300"},
        expected=Effective("200", "provider", "sayHi.timeout"),
    ),
    Lookup(
        "methods=* (a generic provider) has no method-level values",
        {"methods": "*", "sayHi.timeout": "200", "timeout": "300"},
        expected=Effective("300", "provider", "timeout"),
    ),
    Lookup(
        "each URL's own methods list: the override's hides only the override's value",
        {"sayHi.timeout": "200"},
        override={"methods": "bye", "sayHi.timeout": "10"},
        expected=Effective("200", "provider", "sayHi.timeout"),
    ),
    Lookup(
        'method "" reads the service-level values only',
        {"sayHi.timeout": "200", "timeout": "300"},
        method="",
        expected=Effective("300", "provider", "timeout"),
    ),
    Lookup("nothing declared, no default: None", {"sayHello.timeout": "200"}, expected=None),
]


@pytest.mark.parametrize("case", LOOKUPS, ids=[c.name for c in LOOKUPS])
def test_effective_follows_dubbo_service_address_url(case: Lookup) -> None:
    found = effective(
        case.method, "timeout", provider=case.provider, consumer=case.consumer, override=case.override
    )
    assert found == case.expected


def test_the_local_route_comes_before_every_dubbo_layer() -> None:
    found = effective(
        M,
        "timeout",
        provider={"sayHi.timeout": "200"},
        consumer={"sayHi.timeout": "150"},
        override={"sayHi.timeout": "50"},
        route="5000",
    )
    assert found == Effective("5000", "route", "timeout")


@pytest.mark.parametrize("key", [k for k, spec in KEYS.items() if spec.default is not None])
def test_regproxy_defaults_come_last(key: str) -> None:
    default = KEYS[key].default
    assert default is not None
    assert effective(M, key, provider={}) == Effective(default, "default", "")
    # Any declared value, even on the provider alone, beats the default.
    assert effective(M, key, provider={key: "7"}) == Effective("7", "provider", key)


@pytest.mark.parametrize("key", ["timeout", "retries", "token", "no.such.key"])
def test_keys_without_a_default_are_none_when_undeclared(key: str) -> None:
    assert effective(M, key, provider={"other": "1"}, consumer={"x": "y"}) is None


# --------------------------------------------------------------------------------------------------
# layered() + method_parameter() on one flat map == effective() (ServiceAddressURL.getMethodParameter
# again): what lets a host's metadata be a single map the balancers, routers and planner all read.


@dataclass(frozen=True)
class Flat:
    name: str
    provider: Mapping[str, str]
    consumer: Mapping[str, str]
    key: str = "timeout"
    expected: str = ""  # what Dubbo reads for M


FLATS = [
    Flat(
        "provider method-level vs consumer service-level",
        {"sayHi.timeout": "200"},
        {"timeout": "1000"},
        expected="200",
    ),
    Flat(
        "consumer method-level over provider's",
        {"sayHi.timeout": "200"},
        {"sayHi.timeout": "150"},
        expected="150",
    ),
    Flat("consumer service-level over provider's", {"timeout": "300"}, {"timeout": "1000"}, expected="1000"),
    Flat("consumer's empty value leaves the provider's", {"timeout": "300"}, {"timeout": ""}, expected="300"),
    Flat("provider's default.<k>", {"default.timeout": "400"}, {}, expected="400"),
    Flat(
        "consumer <k> over provider default.<k>",
        {"default.timeout": "400"},
        {"timeout": "1000"},
        expected="1000",
    ),
    Flat(
        "provider methods list without the method",
        {"methods": "bye", "sayHi.timeout": "200", "timeout": "300"},
        {},
        expected="300",
    ),
    Flat(
        "a consumer's methods is never lent: the provider's list stands",
        {"methods": "sayHello,sayHi", "sayHi.timeout": "200"},
        {"methods": "bye"},
        expected="200",
    ),
    Flat("the consumer's group is not lent", {"group": "g1"}, {"group": "g2"}, key="group", expected="g1"),
    Flat(
        "loadbalance",
        {"loadbalance": "random"},
        {"sayHi.loadbalance": "roundrobin"},
        key="loadbalance",
        expected="roundrobin",
    ),
    # A generic provider (ServiceConfig publishes methods=*) and a consumer's own method-level
    # value: the consumer URL's strict lookup checks the consumer's methods list, not the provider's,
    # so Dubbo reads the consumer's 100.
    Flat(
        "consumer method-level value for a methods=* provider",
        {"methods": "*", "timeout": "300"},
        {"sayHi.timeout": "100"},
        expected="100",
    ),
]


@pytest.mark.parametrize("case", FLATS, ids=[c.name for c in FLATS])
def test_one_flat_map_reads_as_the_layers_do(case: Flat) -> None:
    own = consumer_own(case.consumer)
    found = effective(M, case.key, provider=case.provider, consumer=own)
    layers_value = found.value if found is not None and found.source != "default" else ""
    assert layers_value == case.expected, f"effective() gave {found}"
    flat = method_parameter(layered(case.provider, own), M, case.key)
    assert flat == case.expected, f"flat map {layered(case.provider, own)} read {flat!r}"


def test_layered_lays_the_consumer_over_a_copy_of_the_provider() -> None:
    provider = {"timeout": "300", "weight": "50"}
    merged = layered(provider, {"timeout": "1000"})
    assert merged == {"timeout": "1000", "weight": "50"}
    alone = layered(provider, {})
    assert alone == provider and alone is not provider
    assert provider == {"timeout": "300", "weight": "50"}


# --------------------------------------------------------------------------------------------------
# consumer_own(): DefaultProviderURLMergeProcessor.mergeUrl (and ServiceAddressURL.getParameter,
# which answers group, version, application, side and category from the provider).

NOT_LENT = [
    "group",
    "version",
    "generic",
    "methods",
    "dubbo.tag",
    "application",
    "side",
    "timestamp",
    "pid",
    "release",
    "dubbo",
    "category",
    "interface",
]


def test_a_consumer_never_lends_its_identity() -> None:
    params = dict.fromkeys(NOT_LENT, "x")
    assert consumer_own({**params, "timeout": "1000"}) == {"timeout": "1000"}
    assert [key for key in NOT_LENT if consumer_own({key: "x"})] == []


def test_a_consumer_lends_its_call_parameters_but_not_empty_ones() -> None:
    params = {
        "timeout": "1000",
        "sayHi.timeout": "150",
        "loadbalance": "roundrobin",
        "retries": "0",
        "cluster": "failfast",
        "actives": "",
        "sayHi.retries": "",
    }
    assert consumer_own(params) == {
        "timeout": "1000",
        "sayHi.timeout": "150",
        "loadbalance": "roundrobin",
        "retries": "0",
        "cluster": "failfast",
    }


# --------------------------------------------------------------------------------------------------
# call_params(): AbstractClusterInvoker.initLoadBalance, the cluster invokers (Failover, Failfast,
# Failsafe, Forking, Broadcast), DubboInvoker.calculateTimeout, ActiveLimitFilter, TokenFilter.


def hosts(*metadata: Mapping[str, str]) -> tuple[Host, ...]:
    return tuple(Host(address, metadata=md) for address, md in zip((A, B, C), metadata, strict=False))


def test_loadbalance_comes_from_the_first_invoker_only() -> None:
    assert call_params(
        hosts({"loadbalance": "consistenthash"}, {"loadbalance": "roundrobin"}), M
    ).loadbalance == ("consistenthash")
    assert call_params(hosts({}, {"loadbalance": "roundrobin"}), M).loadbalance == "random"


def test_loadbalance_is_read_per_method() -> None:
    hs = hosts({"sayHi.loadbalance": "leastactive", "loadbalance": "roundrobin"})
    assert call_params(hs, M).loadbalance == "leastactive"
    assert call_params(hs, "bye").loadbalance == "roundrobin"


@pytest.mark.parametrize("name", DUBBO_BALANCERS)
def test_each_dubbo_balancer_is_taken_as_declared(name: str) -> None:
    declared = call_params(hosts({"loadbalance": name}), M)
    assert declared.loadbalance == name and declared.problems == ()


def test_an_unknown_balancer_falls_back_to_random_with_a_problem() -> None:
    declared = call_params(hosts({"loadbalance": "adaptive"}), M)
    assert declared.loadbalance == "random"
    assert len(declared.problems) == 1
    assert "'adaptive'" in declared.problems[0] and "random used" in declared.problems[0]


@pytest.mark.parametrize(
    ("cluster", "mode"),
    [
        ("failover", MODE_FAILOVER),
        ("failfast", MODE_FAILFAST),
        ("failsafe", MODE_FAILSAFE),
        ("forking", MODE_FORKING),
        ("broadcast", MODE_BROADCAST),
    ],
)
def test_cluster_modes(cluster: str, mode: int) -> None:
    assert cluster in CLUSTER_MODES
    declared = call_params(hosts({"cluster": cluster}), M)
    assert declared.mode == mode and declared.retries is None and declared.problems == ()


def test_nothing_declared_is_the_default_mode() -> None:
    declared = call_params(hosts({}, {}), M)
    assert declared.problems == ()
    assert (declared.loadbalance, declared.mode, declared.retries, declared.forks) == (
        "random",
        MODE_DEFAULT,
        None,
        2,
    )
    assert (declared.timeout_ms, dict(declared.actives), declared.token) == (None, {}, False)


def test_no_hosts_gives_the_defaults() -> None:
    declared = call_params((), M)
    assert (declared.loadbalance, declared.mode, declared.retries, declared.timeout_ms) == (
        "random",
        MODE_DEFAULT,
        None,
        None,
    )


@pytest.mark.parametrize(("text", "retries"), [("3", 3), ("0", 0), ("-1", 0)])
def test_retries_without_a_cluster_mean_failover(text: str, retries: int) -> None:
    declared = call_params(hosts({"retries": text}), M)
    assert declared.mode == MODE_FAILOVER and declared.retries == retries and declared.problems == ()


def test_method_level_retries() -> None:
    hs = hosts({"sayHi.retries": "5", "retries": "1"})
    assert call_params(hs, M).retries == 5
    assert call_params(hs, "bye").retries == 1


def test_an_unknown_cluster_keeps_the_default_mode_with_a_problem() -> None:
    declared = call_params(hosts({"cluster": "mergeable"}), M)
    assert declared.mode == MODE_DEFAULT
    assert len(declared.problems) == 1 and "'mergeable'" in declared.problems[0]


@pytest.mark.parametrize("text", ["two", "1.5", "99999999999"])
def test_bad_retries_are_not_declared_with_a_problem(text: str) -> None:
    declared = call_params(hosts({"retries": text}), M)
    assert declared.retries is None and declared.mode == MODE_DEFAULT
    assert len(declared.problems) == 1 and repr(text) in declared.problems[0]


@pytest.mark.parametrize(
    ("text", "forks", "problems"), [("", 2, 0), ("3", 3, 0), ("0", 0, 0), ("many", 2, 1)]
)
def test_forks(text: str, forks: int, problems: int) -> None:
    declared = call_params(hosts({"cluster": "forking", "forks": text}), M)
    assert declared.forks == forks and len(declared.problems) == problems


def test_timeout_is_the_largest_positive_one_method_level_first() -> None:
    hs = hosts({"timeout": "300"}, {"sayHi.timeout": "150", "timeout": "900"}, {"timeout": "-5"})
    assert call_params(hs, M).timeout_ms == 300  # 300 and 150 (method-level beats the host's 900)
    assert call_params(hs, "bye").timeout_ms == 900


@pytest.mark.parametrize("text", ["0", "-1", "soon", ""])
def test_unusable_timeouts_are_ignored(text: str) -> None:
    assert call_params(hosts({"timeout": text}), M).timeout_ms is None


def test_actives_per_address_positive_only() -> None:
    hs = hosts({"actives": "3"}, {"actives": "0"}, {"actives": "-2", "sayHi.actives": "5"})
    assert dict(call_params(hs, M).actives) == {A: 3, C: 5}
    assert dict(call_params(hs, "bye").actives) == {A: 3}


def test_token_is_asked_when_any_host_has_one() -> None:
    assert call_params(hosts({}, {"token": "abc"}), M).token is True
    assert call_params(hosts({"token": "false"}, {"token": "0"}), M).token is False


@pytest.mark.parametrize(
    ("params", "token"),
    [
        ({}, ""),
        ({"token": ""}, ""),
        ({"token": "false"}, ""),
        ({"token": "FALSE"}, ""),
        ({"token": "0"}, ""),
        ({"token": "null"}, ""),
        ({"token": "N/A"}, ""),
        ({"token": "n/a"}, ""),
        ({"token": "abc"}, "abc"),
        ({"token": "0f8f-uuid"}, "0f8f-uuid"),
    ],
)
def test_token_of_follows_config_utils_is_not_empty(params: dict[str, str], token: str) -> None:
    assert token_of(params) == token


# --------------------------------------------------------------------------------------------------
# generated_token(): ServiceConfig (token=true|default publishes a random UUID).


@pytest.mark.parametrize("flag", ["true", "default", "TRUE"])
def test_token_true_publishes_a_uuid(flag: str) -> None:
    params = {"token": flag, "timeout": "300"}
    out = generated_token(params, None)
    assert str(uuid.UUID(out["token"])) == out["token"]
    assert out["timeout"] == "300"
    assert params == {"token": flag, "timeout": "300"}  # the input is left alone
    assert generated_token(params, None)["token"] != out["token"]


def test_a_republication_keeps_the_token_it_made() -> None:
    first = generated_token({"token": "true"}, None)
    again = generated_token({"token": "true", "weight": "50"}, first)
    assert again == {"token": first["token"], "weight": "50"}


def test_a_previous_placeholder_is_not_kept() -> None:
    out = generated_token({"token": "default"}, {"token": "true"})
    assert uuid.UUID(out["token"])


@pytest.mark.parametrize("params", [{}, {"token": "abc"}, {"token": "false"}])
def test_other_tokens_are_published_as_given(params: dict[str, str]) -> None:
    assert generated_token(params, {"token": "old"}) is params


# --------------------------------------------------------------------------------------------------
# provider_guard(): TokenFilter and ExecuteLimitFilter on a publication's parameters.


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"token": "false"},
        {"executes": "0"},
        {"executes": "many"},
        {"sayHi.executes": "-3"},
        {"timeout": "9"},
    ],
)
def test_no_guard_when_nothing_is_declared(params: dict[str, str]) -> None:
    assert provider_guard(SVC, params) is None


def test_a_token_alone_is_guarded() -> None:
    guard = provider_guard(SVC, {"token": "abc"})
    assert guard is not None
    assert (guard.service, guard.token, dict(guard.limits)) == (SVC, "abc", {})
    assert guard.executes(M) == 0


def test_executes_per_method_fall_back_to_the_service_limit() -> None:
    guard = provider_guard(SVC, {"executes": "10", "sayHi.executes": "2", "bye.executes": "0"})
    assert guard is not None and guard.token == ""
    assert dict(guard.limits) == {"": 10, M: 2}
    assert guard.executes(M) == 2
    assert guard.executes("bye") == 10
    only_method = provider_guard(SVC, {"sayHi.executes": "4"})
    assert only_method is not None
    assert (only_method.executes(M), only_method.executes("bye")) == (4, 0)


# --------------------------------------------------------------------------------------------------
# The Planner: Plan fields from what the hosts of a lb "dubbo" cluster declare
# (AbstractClusterInvoker.initLoadBalance, FailoverClusterInvoker, ForkingClusterInvoker, ...).


def dubbo_table(*metadata: Mapping[str, str], lb: str = "dubbo") -> RoutingTable:
    return RoutingTable([Route("r", RouteMatch(service=SVC), "c")], [Cluster("c", lb, hosts(*metadata))])


def plan_for(table: RoutingTable, method: str = M, **request: object) -> Plan:
    decision = decide(planner(), table, method=method, **request)
    assert isinstance(decision, Plan), decision
    return decision


@dataclass(frozen=True)
class PlanCase:
    name: str
    metadata: tuple[Mapping[str, str], ...]
    method: str = M
    retries: int = 1  # the route's, when nothing declared takes over
    retry_on: int = RETRY_CONNECT
    mode: int = MODE_DEFAULT
    forks: int = 2
    fallback_ms: int = 0
    actives: dict[str, int] | None = None
    token: bool = False
    needs_arguments: bool = False
    special: bool = False
    balancer: str = "random"


PLANS = [
    PlanCase("nothing declared", ({},)),
    PlanCase(
        "failover with retries",
        ({"cluster": "failover", "retries": "2"},),
        retries=2,
        retry_on=RETRY_FAILOVER,
        mode=MODE_FAILOVER,
    ),
    PlanCase(
        "failover alone: Dubbo's 2 retries",
        ({"cluster": "failover"},),
        retries=2,
        retry_on=RETRY_FAILOVER,
        mode=MODE_FAILOVER,
    ),
    PlanCase(
        "retries alone: failover", ({"retries": "4"},), retries=4, retry_on=RETRY_FAILOVER, mode=MODE_FAILOVER
    ),
    PlanCase("failfast: one provider", ({"cluster": "failfast"},), retries=0, mode=MODE_FAILFAST),
    PlanCase(
        "failsafe", ({"cluster": "failsafe", "retries": "3"},), retries=0, mode=MODE_FAILSAFE, special=True
    ),
    PlanCase(
        "forking",
        ({"cluster": "forking", "forks": "3"},),
        retries=0,
        mode=MODE_FORKING,
        forks=3,
        special=True,
    ),
    PlanCase("broadcast", ({"cluster": "broadcast"},), retries=0, mode=MODE_BROADCAST, special=True),
    PlanCase("roundrobin", ({"loadbalance": "roundrobin"}, {}), balancer="roundrobin"),
    PlanCase("leastactive", ({"loadbalance": "leastactive"},), balancer="leastactive"),
    PlanCase(
        "consistenthash hashes the arguments",
        ({"loadbalance": "consistenthash"},),
        balancer="consistenthash",
        needs_arguments=True,
        special=True,
    ),
    PlanCase("unknown loadbalance: random", ({"loadbalance": "adaptive"},)),
    PlanCase("unknown cluster: the default mode", ({"cluster": "mergeable"},)),
    PlanCase("a declared timeout", ({"timeout": "300"},), fallback_ms=300),
    PlanCase("a method-level timeout", ({"sayHi.timeout": "150", "timeout": "300"},), fallback_ms=150),
    PlanCase(
        "another method's timeout",
        ({"sayHi.timeout": "150", "timeout": "300"},),
        method="bye",
        fallback_ms=300,
    ),
    PlanCase("the largest timeout of the hosts", ({"timeout": "300"}, {"timeout": "700"}), fallback_ms=700),
    PlanCase("actives", ({"actives": "3"}, {}), actives={A: 3}, special=True),
    PlanCase("token", ({"token": "abc"},), token=True, special=True),
    PlanCase("token false", ({"token": "false"},)),
]


@pytest.mark.parametrize("case", PLANS, ids=[c.name for c in PLANS])
def test_a_dubbo_cluster_plans_what_its_hosts_declare(case: PlanCase) -> None:
    plan = plan_for(dubbo_table(*case.metadata), case.method)
    assert plan.method == case.method
    assert plan.timeout_ms == 0  # the egress leaves it to the request; fallback_ms when it has none
    got = (
        plan.retries,
        plan.retry_on,
        plan.mode,
        plan.forks,
        plan.fallback_ms,
        plan.actives,
        plan.token,
        plan.needs_arguments,
        plan.special,
    )
    want = (
        case.retries,
        case.retry_on,
        case.mode,
        case.forks,
        case.fallback_ms,
        case.actives,
        case.token,
        case.needs_arguments,
        case.special,
    )
    assert got == want
    assert isinstance(plan.balancer, MethodBalancer)
    assert plan.balancer.method == case.method
    assert plan.balancer.balancer.name == case.balancer


@pytest.mark.parametrize(
    "metadata",
    [
        {"cluster": "failover", "retries": "2"},
        {"loadbalance": "consistenthash"},
        {"timeout": "300"},
        {"actives": "3"},
        {"token": "abc"},
        {"cluster": "forking", "forks": "3"},
    ],
)
def test_other_balancers_take_nothing_from_the_hosts(metadata: Mapping[str, str]) -> None:
    plan = plan_for(dubbo_table(metadata, lb="round_robin"))
    assert not isinstance(plan.balancer, MethodBalancer)
    got = (
        plan.retries,
        plan.retry_on,
        plan.mode,
        plan.forks,
        plan.fallback_ms,
        plan.actives,
        plan.token,
        plan.needs_arguments,
        plan.special,
    )
    assert got == (1, RETRY_CONNECT, MODE_DEFAULT, 2, 0, None, False, False, False)


def test_the_local_files_retries_beat_the_declared_ones() -> None:
    local = rules(
        {
            "name": "mine",
            "match": {"service": SVC, "attachments": {"x-env": {"present": True}}},
            "cluster": "c",
            "route": {"retry": {"attempts": 1, "on": ["connect-failure"]}},
        }
    )
    p = planner(rules=local)
    decision = decide(
        p, dubbo_table({"cluster": "failover", "retries": "5"}), method=M, attachments={"x-env": "a"}
    )
    assert isinstance(decision, Plan), decision
    assert (decision.retries, decision.retry_on, decision.mode) == (1, RETRY_CONNECT, MODE_FAILOVER)


def test_one_balancer_per_cluster_and_name_shared_by_methods() -> None:
    table = dubbo_table({"loadbalance": "roundrobin", "bye.loadbalance": "consistenthash"})
    p = planner()
    plans = {}
    for method in (M, "hello", "bye"):
        decision = decide(p, table, method=method)
        assert isinstance(decision, Plan) and isinstance(decision.balancer, MethodBalancer)
        plans[method] = decision.balancer
    assert plans[M].balancer is plans["hello"].balancer
    assert plans[M].balancer.name == "roundrobin" and plans["bye"].balancer.name == "consistenthash"
    assert (plans[M].method, plans["hello"].method) == (M, "hello")


def test_a_new_table_is_read_again() -> None:
    p = planner()
    first = decide(p, dubbo_table({"cluster": "failfast"}), method=M)
    second = decide(p, dubbo_table({"cluster": "failover", "retries": "3", "timeout": "250"}), method=M)
    assert isinstance(first, Plan) and isinstance(second, Plan)
    assert (first.mode, first.retries, first.fallback_ms) == (MODE_FAILFAST, 0, 0)
    assert (second.mode, second.retries, second.fallback_ms) == (MODE_FAILOVER, 3, 250)
