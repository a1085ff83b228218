"""The routing decision without sockets or a loop (regproxy.proxy.plan): a table snapshot, a rule
set and a request in, a Plan or a NoRoute out."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from regproxy.config import Config
from regproxy.dubbo.encode import encode_request
from regproxy.dubbo.frame import Status
from regproxy.dubbo.request import RequestBody
from regproxy.governance.condition import ConditionRouters, parse_condition_rule
from regproxy.governance.policy import ClusterPolicy, ServiceRules
from regproxy.governance.tag import parse_tag_rule
from regproxy.proxy.exchange import Plan
from regproxy.proxy.filters import Answer, Delay, FaultFilter, RateLimitFilter
from regproxy.proxy.plan import GroupPlans, NoRoute, Planner
from regproxy.proxy.stats import ListenerStats
from regproxy.registry.url import consumer_url, provider_url
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, service_label
from regproxy.routing.from_config import rule_set
from regproxy.routing.rules import RETRY_CONNECT, Fault, RateLimit, RuleSet

SVC = "com.x.Svc"
A, B, C = "10.0.0.1:20882", "10.0.0.2:20882", "10.0.0.3:20882"


def planner(*, egress: bool = True, rules: RuleSet | None = None) -> Planner:
    p = Planner(
        ListenerStats().histogram,
        lambda address: 0,
        default_timeout_ms=3000,
        timeout_from_attachment=egress,
        rng=random.Random(7),
    )
    if rules is not None:
        p.rules = rules
    return p


def rules(*routes: dict[str, Any], clusters: tuple[str, ...] = ("c",)) -> RuleSet:
    config = {"clusters": [{"name": c} for c in clusters], "routes": list(routes)}
    return rule_set(Config.from_dict(config))


# A route that only the table's fields would need goes into the table, not the rule set
# (test_rules.py::test_plain_routes_keep_the_table_fast_path): these match on an attachment.
BY_ENV = {"service": SVC, "attachments": {"x-env": {"present": True}}}
ENV_SET = {"attachments": {"x-env": "any"}}


def decide(p: Planner, table: RoutingTable, **request: Any) -> Plan | NoRoute:
    raw = encode_request(
        1,
        request.pop("service", SVC),
        request.pop("method", "m"),
        ["x"],
        **request,
    )
    if p.table is not table:
        p.reset(table)
    return p.plan(raw, RequestBody(raw, 16), table)


def one_cluster(*hosts: Host, group: str | None = None, timeout_ms: int | None = None) -> RoutingTable:
    return RoutingTable(
        [Route("r", RouteMatch(service=SVC, group=group), "c", timeout_ms=timeout_ms)],
        [Cluster("c", "round_robin", hosts)],
    )


@dataclass
class Case:
    name: str
    table: RoutingTable
    request: dict[str, Any] = field(default_factory=dict)
    rules: RuleSet | None = None
    egress: bool = True
    # What the decision must be: the addresses a Plan may pick from and its policy, or a NoRoute.
    hosts: tuple[str, ...] | None = None
    timeout_ms: int = 0
    retries: int | None = None
    label: str | None = None
    no_route: tuple[int, str] | None = None


GRAY = Host(B, metadata={"dubbo.tag": "gray"})
ENV = (Host(A, metadata={"env": "stable"}), Host(B, metadata={"env": "gray"}))
ENV_TABLE = RoutingTable([Route("r", RouteMatch(service=SVC), "c")], [Cluster("c", "round_robin", ENV)])


def canary(env: str) -> RuleSet:
    """A rule sending every request to the subset of cluster c whose hosts have ``env``."""
    subset = {"subset": {"env": env}, "weight": 1}
    return rules(
        {"name": "canary", "match": {"service": SVC}, "cluster": "c", "route": {"weighted_subsets": [subset]}}
    )


CASES = [
    Case("a route to a cluster", one_cluster(Host(A), Host(B)), hosts=(A, B), label=SVC),
    Case(
        "the egress leaves the timeout to the request; the ingress bounds the app",
        one_cluster(Host(A)),
        egress=False,
        hosts=(A,),
        timeout_ms=3000,
    ),
    Case("a route's own timeout", one_cluster(Host(A), timeout_ms=250), hosts=(A,), timeout_ms=250),
    Case(
        "no route",
        one_cluster(Host(A)),
        request={"service": "com.x.Other", "version": "2.0"},
        no_route=(Status.SERVICE_NOT_FOUND, "no route for com.x.Other:2.0 method m"),
    ),
    Case(
        "a group the table does not match",
        one_cluster(Host(A), group="g1"),
        request={"group": "g2"},
        no_route=(Status.SERVICE_NOT_FOUND, "no route for g2/com.x.Svc method m"),
    ),
    Case("the table's group", one_cluster(Host(A), group="g1"), request={"group": "g1"}, hosts=(A,)),
    Case(
        "a rule's cluster the table lacks",
        one_cluster(Host(A)),
        request=ENV_SET,
        rules=rules({"name": "away", "match": BY_ENV, "cluster": "gone"}, clusters=("gone",)),
        no_route=(Status.SERVICE_NOT_FOUND, "rule 'away' sends com.x.Svc to cluster 'gone', which does not"),
    ),
    Case(
        "a rule's timeout and retries",
        one_cluster(Host(A)),
        request=ENV_SET,
        rules=rules(
            {
                "name": "slow",
                "match": BY_ENV,
                "cluster": "c",
                "route": {"timeout": "5s", "retry": {"attempts": 3, "on": ["connect-failure"]}},
            }
        ),
        hosts=(A,),
        timeout_ms=5000,
        retries=3,
    ),
    Case(
        "a rule's subset with no host",
        ENV_TABLE,
        rules=canary("blue"),
        no_route=(Status.SERVICE_NOT_FOUND, "no host in subset {env=blue} of cluster c"),
    ),
    Case(
        "a rule's subset",
        ENV_TABLE,
        rules=canary("gray"),
        hosts=(B,),
    ),
    # Dubbo's static tag routing (TagStateRouter without a dynamic rule).
    Case(
        "tagged request, tagged host",
        one_cluster(Host(A), GRAY),
        request={"attachments": {"dubbo.tag": "gray"}},
        hosts=(B,),
    ),
    Case("untagged request: untagged hosts only", one_cluster(Host(A), GRAY), hosts=(A,)),
    Case(
        "a tag no host has falls back to untagged",
        one_cluster(Host(A), GRAY),
        request={"attachments": {"dubbo.tag": "blue"}},
        hosts=(A,),
    ),
    Case(
        "a forced tag no host has: nowhere",
        one_cluster(Host(A), GRAY),
        request={"attachments": {"dubbo.tag": "blue", "dubbo.force.tag": "true"}},
        no_route=(Status.SERVICE_NOT_FOUND, "no provider for com.x.Svc with"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_case_gets_its_plan_or_its_no_route_answer(case: Case) -> None:
    decision = decide(planner(egress=case.egress, rules=case.rules), case.table, **case.request)
    if case.no_route is not None:
        assert isinstance(decision, NoRoute), decision
        status, text = case.no_route
        assert decision.status == status and text in decision.message, decision
        return
    assert isinstance(decision, Plan), decision
    assert tuple(h.address for h in decision.hosts) == case.hosts
    assert decision.timeout_ms == case.timeout_ms
    if case.retries is not None:
        assert decision.retries == case.retries
    if case.label is not None:
        assert decision.service == case.label and decision.counter_key == f"{case.label}.m"


def test_the_common_case_is_one_memo() -> None:
    """No rule, no tags: the same Plan object every time, found by the head bytes too, until the
    table, the rules or the default timeout change."""
    p = planner(egress=False)
    table = one_cluster(Host(A))
    first = decide(p, table)
    assert isinstance(first, Plan) and decide(p, table) is first
    assert list(p.heads.values()) == [first]
    other = one_cluster(Host(B))
    assert decide(p, other) is not first and len(p.heads) == 1
    again = decide(p, other)
    p.default_timeout_ms = 60  # a reload
    assert not p.heads
    newer = decide(p, other)
    assert isinstance(newer, Plan) and newer is not again and newer.timeout_ms == 60
    p.rules = rules()  # new rules (none for the service): made again
    assert decide(p, other) is not newer


def test_group_matched_heads_keep_one_plan_per_group() -> None:
    p = planner()
    table = RoutingTable(
        [
            Route("g1", RouteMatch(service=SVC, group="g1"), "c1"),
            Route("g2", RouteMatch(service=SVC, group="g2"), "c2"),
        ],
        [Cluster("c1", "round_robin", (Host(A),)), Cluster("c2", "round_robin", (Host(B),))],
    )
    one, two = decide(p, table, group="g1"), decide(p, table, group="g2")
    assert isinstance(one, Plan) and isinstance(two, Plan) and one.hosts != two.hosts
    (entry,) = p.heads.values()
    assert isinstance(entry, GroupPlans) and entry.by_group == {"g1": one, "g2": two}


def test_rules_and_tags_are_decided_per_request() -> None:
    """A request a rule or a tag decides is never memoised: its attachments may differ next time."""
    ruled = planner(rules=rules({"name": "r", "match": BY_ENV, "cluster": "c"}))
    table = one_cluster(Host(A))
    plan = decide(ruled, table, **ENV_SET)
    assert isinstance(plan, Plan) and plan.retry_on == RETRY_CONNECT and not ruled.heads
    tagged = planner()
    decide(tagged, one_cluster(Host(A), GRAY))
    assert not tagged.heads


def governed(*hosts: Host, condition: str = "", tag: str = "") -> RoutingTable:
    """A subscription's table under the config center's rules (governance.policy), as discovery
    builds it: each host's provider URL, the consumer's URL, the parsed rules."""
    urls = {h.address: provider_url(interface=SVC, ip=h.host, port=h.port, application="p") for h in hosts}
    consumer = consumer_url(interface=SVC, ip="10.0.0.9", application="web")
    conditions = ConditionRouters(service=parse_condition_rule(condition) if condition else None)
    rules = ServiceRules(conditions=conditions, tag=parse_tag_rule(tag) if tag else None)
    policy = ClusterPolicy(rules, consumer, urls, hosts)
    cluster = Cluster("c", "round_robin", hosts, policy)
    return RoutingTable([Route("r", RouteMatch(service=SVC), "c")], [cluster])


def test_a_method_condition_rule_keeps_the_one_memo() -> None:
    """A condition rule that reads only the method: decided once per method and table."""
    p = planner()
    table = governed(Host(A), Host(B), condition="conditions: ['method = m => host = 10.0.0.2']")
    plan = decide(p, table)
    assert isinstance(plan, Plan) and [h.address for h in plan.hosts] == [B]
    assert decide(p, table) is plan and list(p.heads.values()) == [plan]
    other = decide(p, table, method="n")
    assert isinstance(other, Plan) and [h.address for h in other.hosts] == [A, B]
    blocked = decide(p, governed(Host(A), condition="conditions: ['method = m => ']"))
    assert isinstance(blocked, NoRoute) and "blocks the request" in blocked.message


def test_a_tag_rule_memoises_a_plan_per_tag() -> None:
    """A tag rule reads each request's dubbo.tag: one plan per (tag, forced, group), not by head."""
    p = planner()
    tag = "force: false\nenabled: true\nkey: p\ntags: [{name: gray, addresses: ['10.0.0.2:20882']}]\n"
    table = governed(Host(A), Host(B), tag=tag)
    untagged = decide(p, table)  # the first request of the key is routed, and the key marked
    assert isinstance(untagged, Plan) and [h.address for h in untagged.hosts] == [A]
    again = decide(p, table)
    gray = decide(p, table, attachments={"dubbo.tag": "gray"})
    assert isinstance(gray, Plan) and [h.address for h in gray.hosts] == [B]
    assert decide(p, table, attachments={"dubbo.tag": "gray"}) is gray and decide(p, table) is again
    # Found by head bytes too, for the forwarder's undecoded path, by the tag in the attachment
    # bytes seen before (GroupPlans.keyed); new attachment bytes are decoded first.
    (entry,) = p.heads.values()
    assert isinstance(entry, GroupPlans) and entry.policy is not None
    for attachments, plan in (({"dubbo.tag": "gray"}, gray), ({}, again)):
        raw = encode_request(1, SVC, "m", ["x"], attachments=attachments)
        assert entry.keyed(raw, RequestBody(raw, 16).head_end) is plan
    unseen = encode_request(1, SVC, "m", ["x"], attachments={"dubbo.tag": "blue"})
    assert entry.keyed(unseen, RequestBody(unseen, 16).head_end) is None


def test_weighted_subsets_follow_their_weights() -> None:
    split = [{"subset": {"env": "gray"}, "weight": 20}, {"subset": {"env": "stable"}, "weight": 80}]
    p = planner(
        rules=rules({"name": "split", "match": {"service": SVC}, "route": {"weighted_subsets": split}})
    )
    table = ENV_TABLE
    picks = [decide(p, table) for _ in range(2000)]
    gray = sum(1 for d in picks if isinstance(d, Plan) and d.hosts[0].address == B)
    assert 300 < gray < 500, gray  # 20 % of 2,000, with the seeded generator's spread


def test_labels_follow_dubbo_service_keys() -> None:
    assert service_label(SVC, "", None) == SVC
    assert service_label(SVC, "0.0.0", "") == SVC
    assert service_label(SVC, "1.0", "g") == "g/com.x.Svc:1.0"


# --- filters decide, the forwarder acts ------------------------------------------------------------


class _Exchange:
    service = SVC
    label = f"{SVC}.m"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(abort_percent=100, abort_status=70), Answer),
        (Fault(delay_percent=100, delay_ms=250), Delay),
        (Fault(), type(None)),
    ],
)
def test_fault_filter_returns_its_decision(fault: Fault, expected: type) -> None:
    decision = FaultFilter("drill", fault).on_request(_Exchange())  # type: ignore[arg-type]
    assert isinstance(decision, expected)
    if isinstance(decision, Answer):
        assert decision.status == 70 and "fault injected by rule 'drill'" in decision.message
    if isinstance(decision, Delay):
        assert decision.seconds == 0.25


def test_rate_limit_answers_once_the_burst_is_spent() -> None:
    now = [0.0]
    f = RateLimitFilter("cap", RateLimit(requests_per_second=1, burst=2), clock=lambda: now[0])
    decisions = [f.on_request(_Exchange()) for _ in range(3)]  # type: ignore[arg-type]
    assert decisions[:2] == [None, None]
    assert isinstance(decisions[2], Answer) and decisions[2].status == Status.SERVER_THREADPOOL_EXHAUSTED
    now[0] = 1.0  # a token back
    assert f.on_request(_Exchange()) is None  # type: ignore[arg-type]
