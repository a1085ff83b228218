"""Dubbo's dynamic rules through discovery, on the in-process config center (memory://): what each
rule kind does to a subscription's cluster or a publication's registered URL, that a refused rule
changes nothing, that deleting a rule restores what was before, and that rules in force survive a
restart.  The same rules through ZooKeeper and through traffic: test_governance_e2e.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regproxy.discovery import Discovery, PublishSpec, ingress_table
from regproxy.discovery.views import explain, parameters_of
from regproxy.dubbo.encode import encode_request
from regproxy.dubbo.request import RequestBody
from regproxy.governance.params import MODE_DEFAULT, MODE_FAILOVER, call_params
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, Subscription, provider_url
from regproxy.routing import Cluster, RoutingTable, TableHolder
from regproxy.state import StateStore
from tests.test_discovery import IFACE, REG_A, _fresh_stores, new_discovery, settle  # noqa: F401
from tests.wait import wait_for

SUB = Subscription(IFACE, "1.0.0", "g")
SERVICE_KEY = f"{IFACE}:1.0.0:g"  # the rule id's key: URL.getColonSeparatedKey
RULE_KEY = f"g/{IFACE}:1.0.0"  # the key inside a configurators rule: ConfigParser.appendService reads it


def provider(host: str, *, application: str = "shop", **params: str) -> DubboURL:
    return provider_url(
        interface=IFACE, ip=host, port=20882, version="1.0.0", group="g", application=application,
        methods=("sayHi", "other"), params=params or None, pid=1, timestamp_ms=1,
    )  # fmt: skip


A, B, C = provider("10.0.0.1"), provider("10.0.0.2"), provider("10.0.0.3", **{"dubbo.tag": "gray"})


@pytest.fixture
async def world() -> AsyncIterator[tuple[Discovery, MemoryRegistry]]:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    for url in (A, B, C):
        made["a"].set_provider(url)
    await d.subscribe(SUB, application="web")
    yield d, made["a"]
    await d.stop()


def cluster(d: Discovery) -> Cluster:
    return d.egress.current.clusters[SUB.cluster_name]


def hosts(d: Discovery) -> dict[str, int]:
    return {h.address: h.weight for h in cluster(d).hosts}


async def write(reg: MemoryRegistry, rule_id: str, text: str | None) -> None:
    if text is None:
        await reg.delete_rule(rule_id)
    else:
        await reg.write_rule(rule_id, text)
    await settle()


def request(method: str = "sayHi", **attachments: str) -> RequestBody:
    raw = encode_request(1, IFACE, method, ["bob"], version="1.0.0", group="g", attachments=attachments)
    return RequestBody(raw, 16)


def routed(d: Discovery, req: RequestBody) -> set[str] | str:
    c = cluster(d)
    assert c.policy is not None
    out = c.policy.route(c.hosts, req)
    return out if isinstance(out, str) else {h.address for h in out}


WEIGHT_B = f"""\
configVersion: v3.0
scope: service
key: {RULE_KEY}
configs:
  - side: consumer
    providerAddresses: ["10.0.0.2:20882"]
    parameters: {{weight: "300"}}
"""

DISABLE_A = f"""\
configVersion: v3.0
scope: service
key: {RULE_KEY}
configs:
  - side: consumer
    providerAddresses: ["10.0.0.1:20882"]
    parameters: {{disabled: "true"}}
"""


async def test_a_consumer_configurator_sets_weight_and_removing_it_restores(
    world: tuple[Discovery, MemoryRegistry],
) -> None:
    d, reg = world
    assert hosts(d) == {"10.0.0.1:20882": 100, "10.0.0.2:20882": 100, "10.0.0.3:20882": 100}
    await write(reg, SERVICE_KEY + ".configurators", WEIGHT_B)
    await wait_for(lambda: hosts(d)["10.0.0.2:20882"] == 300, 2, "weight 300 on B")
    assert hosts(d)["10.0.0.1:20882"] == 100
    await write(reg, SERVICE_KEY + ".configurators", None)
    await wait_for(lambda: hosts(d)["10.0.0.2:20882"] == 100, 2, "weight back to 100")
    assert cluster(d).policy is None  # no rule: the planner's common path


async def test_a_rule_already_written_applies_from_the_subscription_on() -> None:
    # The watch set by the subscription reads the rule there is: no change needed to deliver it.
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    try:
        for url in (A, B):
            made["a"].set_provider(url)
        await made["a"].write_rule(SERVICE_KEY + ".configurators", DISABLE_A)
        await d.subscribe(SUB, application="web")
        await wait_for(lambda: set(hosts(d)) == {"10.0.0.2:20882"}, 2, "A disabled by the rule already there")
    finally:
        await d.stop()


async def test_disabled_provider_leaves_the_cluster(world: tuple[Discovery, MemoryRegistry]) -> None:
    d, reg = world
    await write(reg, SERVICE_KEY + ".configurators", DISABLE_A)
    await wait_for(lambda: "10.0.0.1:20882" not in hosts(d), 2, "A disabled")
    assert set(hosts(d)) == {"10.0.0.2:20882", "10.0.0.3:20882"}


async def test_a_refused_rule_keeps_the_previous_one_and_is_shown(
    world: tuple[Discovery, MemoryRegistry],
) -> None:
    d, reg = world
    rule_id = SERVICE_KEY + ".configurators"
    await write(reg, rule_id, WEIGHT_B)
    await wait_for(lambda: hosts(d)["10.0.0.2:20882"] == 300, 2, "weight 300 on B")
    await write(reg, rule_id, "configVersion: v3.0\nscope: service\nkey: x\nconfigs: [{bogus: 1}]\n")
    await settle()
    assert hosts(d)["10.0.0.2:20882"] == 300
    (view,) = d.rules_view()
    assert [r["rule_id"] for r in view["in_force"]] == [rule_id]
    (refused,) = view["refused"]
    assert refused["rule_id"] == rule_id and refused["reason"], refused
    assert sum(d.rules.error_counts().values()) == 1


async def test_timeout_override_reaches_the_policy(world: tuple[Discovery, MemoryRegistry]) -> None:
    d, reg = world
    text = WEIGHT_B.replace('{weight: "300"}', '{timeout: "250", sayHi.timeout: "120"}').replace(
        'providerAddresses: ["10.0.0.2:20882"]', 'addresses: ["0.0.0.0"]'
    )
    await write(reg, SERVICE_KEY + ".configurators", text)
    await wait_for(lambda: cluster(d).policy is not None, 2, "a policy")
    policy = cluster(d).policy
    assert policy is not None
    assert (policy.timeout_ms("sayHi"), policy.timeout_ms("other")) == (120, 250)


async def test_each_parameter_says_where_it_came_from() -> None:
    """The parameter model (regproxy.governance.params): a provider's method-level value beats the
    consumer's service-level one (ServiceAddressURL.getMethodParameter), the consumer's /sub params
    beat the provider's service-level ones, a configurator beats both; the hosts' metadata, which
    the balancers and the planner read, holds the same values."""
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    try:
        made["a"].set_provider(provider("10.0.0.1", timeout="300", **{"sayHi.timeout": "150"}, weight="200"))
        await d.subscribe(SUB, application="web", params={"timeout": "1000", "loadbalance": "roundrobin"})
        await write(made["a"], SERVICE_KEY + ".configurators", WEIGHT_B.replace("10.0.0.2", "10.0.0.1"))
        await wait_for(lambda: hosts(d) == {"10.0.0.1:20882": 300}, 2, "the override's weight")
        (entry,) = parameters_of(d, SUB.cluster_name)
        values = entry["parameters"]
        assert values["*"]["timeout"] == {"value": "1000", "source": "consumer"}
        assert values["*"]["loadbalance"] == {"value": "roundrobin", "source": "consumer"}
        assert values["*"]["weight"] == {"value": "300", "source": "override"}
        assert values["*"]["cluster"] == {"value": "failover", "source": "default"}
        assert values["sayHi"] == {"timeout": {"value": "150", "source": "provider"}}
        assert "other" not in values  # no value of its own
        (host,) = cluster(d).hosts
        assert (host.metadata["timeout"], host.metadata["sayHi.timeout"]) == ("1000", "150")
        assert host.metadata["loadbalance"] == "roundrobin" and host.metadata["application"] == "shop"
    finally:
        await d.stop()


async def test_an_unusable_provider_parameter_is_logged_once_and_the_default_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider URL's ``loadbalance=fastest`` or ``sayHi.retries=two`` does not fail calls (the
    default applies, governance.params.call_params), and an operator is told, once per change."""
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    try:
        with caplog.at_level(logging.WARNING, logger="regproxy.discovery.coordinator"):
            made["a"].set_provider(provider("10.0.0.1", loadbalance="fastest", **{"sayHi.retries": "two"}))
            await d.subscribe(SUB, application="web")
            await wait_for(lambda: len(cluster(d).hosts) == 1, 2, "the provider routed")
            made["a"].set_provider(provider("10.0.0.2", loadbalance="fastest", **{"sayHi.retries": "two"}))
            await wait_for(lambda: len(cluster(d).hosts) == 2, 2, "the second provider routed")
        lines = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
        assert lines == [
            f"{SUB.cluster_name}: a provider parameter cannot be used, the default applies: "
            "loadbalance='fastest' is not one of random, roundrobin, leastactive, shortestresponse, "
            "consistenthash: random used",
            f"{SUB.cluster_name}: a provider parameter cannot be used, the default applies: "
            "sayHi: retries='two' is not a number: not declared",
        ], lines
        declared = call_params(cluster(d).hosts, "sayHi")
        assert (declared.loadbalance, declared.retries, declared.mode) == ("random", None, MODE_DEFAULT)
    finally:
        await d.stop()


async def test_overrides_of_retries_loadbalance_and_cluster_reach_the_call(
    world: tuple[Discovery, MemoryRegistry],
) -> None:
    """A configurator's `retries`, `loadbalance` and `cluster` (issue 17's last three) are what the
    planner reads of the hosts (governance.params.call_params), as a Dubbo consumer reads them from
    the overridden invoker URL."""
    d, reg = world
    text = WEIGHT_B.replace(
        '{weight: "300"}', '{loadbalance: consistenthash, retries: "3", cluster: failover, forks: "5"}'
    ).replace('providerAddresses: ["10.0.0.2:20882"]', 'addresses: ["0.0.0.0"]')
    await write(reg, SERVICE_KEY + ".configurators", text)
    await wait_for(lambda: "loadbalance" in cluster(d).hosts[0].metadata, 2, "the override on the hosts")
    declared = call_params(cluster(d).hosts, "sayHi")
    assert (declared.loadbalance, declared.mode, declared.retries) == ("consistenthash", MODE_FAILOVER, 3)
    assert declared.forks == 5 and declared.problems == ()
    await write(reg, SERVICE_KEY + ".configurators", None)
    await wait_for(lambda: "loadbalance" not in cluster(d).hosts[0].metadata, 2, "the override gone")
    declared = call_params(cluster(d).hosts, "sayHi")
    assert (declared.loadbalance, declared.mode, declared.retries) == ("random", MODE_DEFAULT, None)


CONDITION = f"""\
configVersion: v3.0
scope: service
key: {SERVICE_KEY}
force: true
conditions:
  - "method = sayHi => host = 10.0.0.2"
  - "application = other-app => host = 10.0.0.1"
"""


async def test_a_condition_rule_routes_by_method_and_consumer(
    world: tuple[Discovery, MemoryRegistry],
) -> None:
    d, reg = world
    await write(reg, SERVICE_KEY + ".condition-router", CONDITION)
    await wait_for(lambda: cluster(d).policy is not None, 2, "a policy")
    # Tag routing runs first (TagStateRouter): without a tag rule, untagged C is out of untagged
    # requests only in the planner's static tag stage, so the condition sees all three here.
    assert routed(d, request("sayHi")) == {"10.0.0.2:20882"}
    assert routed(d, request("other")) == {"10.0.0.1:20882", "10.0.0.2:20882", "10.0.0.3:20882"}
    policy = cluster(d).policy
    assert policy is not None and policy.fixed_for("sayHi")  # method-only: memoisable


async def test_application_rules_follow_the_consumer_application(
    world: tuple[Discovery, MemoryRegistry],
) -> None:
    d, reg = world
    await write(
        reg, "web.condition-router", "scope: application\nkey: web\nconditions: ['=> host != 10.0.0.1']\n"
    )
    await wait_for(lambda: cluster(d).policy is not None, 2, "a policy")
    assert "10.0.0.1:20882" not in routed(d, request())
    await d.subscribe(SUB, application="batch")  # another consumer application: web's rule is not its
    await wait_for(lambda: cluster(d).policy is None, 2, "no policy for batch")


TAG = """\
configVersion: v3.0
force: false
enabled: true
key: shop
tags:
  - name: blue
    addresses: ["10.0.0.1:20882"]
"""


async def test_the_tag_rule_of_the_provider_application(world: tuple[Discovery, MemoryRegistry]) -> None:
    d, reg = world
    await write(reg, "shop.tag-router", TAG)
    await wait_for(lambda: cluster(d).policy is not None, 2, "a policy")
    policy = cluster(d).policy
    assert policy is not None and policy.routes_tags and not policy.fixed_for("sayHi")
    assert routed(d, request(**{"dubbo.tag": "blue"})) == {"10.0.0.1:20882"}
    assert routed(d, request(**{"dubbo.tag": "gray"})) == {"10.0.0.3:20882"}  # C's static tag
    assert routed(d, request()) == {"10.0.0.2:20882"}  # untagged: neither blue's address nor C


async def test_a_blocking_rule_names_itself(world: tuple[Discovery, MemoryRegistry]) -> None:
    d, reg = world
    await write(
        reg,
        SERVICE_KEY + ".condition-router",
        f"scope: service\nkey: {SERVICE_KEY}\nconditions: ['method = other => ']\n",
    )
    await wait_for(lambda: cluster(d).policy is not None, 2, "a policy")
    why = routed(d, request("other"))
    assert isinstance(why, str) and "blocks the request" in why, why


PROVIDER_WEIGHT = f"""\
configVersion: v3.0
scope: service
key: {RULE_KEY}
configs:
  - side: provider
    addresses: ["10.1.2.3:20882"]
    parameters: {{weight: "7"}}
"""

PUB = PublishSpec(
    interface=IFACE, port=20990, methods=("sayHi",), version="1.0.0", group="g", application="shop"
)


async def test_a_provider_configurator_re_registers_the_publication(
    world: tuple[Discovery, MemoryRegistry],
) -> None:
    d, reg = world
    await d.publish(PUB)

    def ours() -> list[DubboURL]:
        return [u for u in reg.nodes(IFACE) if u.host == "10.1.2.3"]

    assert [u.weight for u in ours()] == [100]
    await write(reg, SERVICE_KEY + ".configurators", PROVIDER_WEIGHT)
    await wait_for(lambda: [u.weight for u in ours()] == [7], 2, "re-registered with weight 7")
    await write(reg, SERVICE_KEY + ".configurators", None)
    await wait_for(lambda: [u.weight for u in ours()] == [100], 2, "back to the published weight")


async def test_rules_in_force_survive_a_restart_while_the_config_center_is_down(tmp_path: Path) -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A], tmp_path)
    await d.start()
    for url in (A, B):
        made["a"].set_provider(url)
    await d.subscribe(SUB, application="web")
    await write(made["a"], SERVICE_KEY + ".configurators", DISABLE_A)
    await wait_for(lambda: set(hosts(d)) == {"10.0.0.2:20882"}, 2, "A disabled")
    await d.saver.flush()
    await d.stop()

    def unreachable(url: RegistryURL) -> MemoryRegistry:
        reg = MemoryRegistry(name="a")
        reg.simulate_down()  # never connects in this run
        return reg

    static = RoutingTable()
    again = Discovery(
        registry_urls=[REG_A], factory=unreachable, egress=TableHolder(static),
        ingress=TableHolder(ingress_table()), static_table=static, advertise_ip="10.1.2.3",
        ingress_port=20882, store=StateStore(tmp_path),
    )  # fmt: skip
    await again.start()
    try:
        # The cache brought A and B back; the saved rule still disables A.
        assert set(hosts(again)) == {"10.0.0.2:20882"}
        (view,) = again.rules_view()
        assert [r["rule_id"] for r in view["in_force"]] == [SERVICE_KEY + ".configurators"]
    finally:
        await again.stop()


async def test_explain_shows_each_stage(world: tuple[Discovery, MemoryRegistry]) -> None:
    """``/api/v1/rules?cluster=&method=&tag=``: the operator's view of where a call may go."""
    d, reg = world
    await write(reg, SERVICE_KEY + ".configurators", DISABLE_A)
    await write(reg, "shop.tag-router", TAG.replace("10.0.0.1:20882", "10.0.0.2:20882"))
    await write(reg, SERVICE_KEY + ".condition-router", CONDITION)
    await wait_for(
        lambda: len(explain(d, SUB.cluster_name, "sayHi", tag="blue")["stages"]) == 4, 2, "four stages"
    )
    out = explain(d, SUB.cluster_name, "sayHi", tag="blue")
    assert [s["stage"] for s in out["stages"]] == [
        "registry", "configurators", "tag router", "service condition rule"
    ]  # fmt: skip
    registry, configurators, tag, condition = out["stages"]
    assert registry["hosts"] == ["10.0.0.1:20882", "10.0.0.2:20882", "10.0.0.3:20882"]
    assert configurators["hosts"] == ["10.0.0.2:20882 weight 100", "10.0.0.3:20882 weight 100"]
    assert tag["hosts"] == ["10.0.0.2:20882"] and condition["hosts"] == ["10.0.0.2:20882"]
    assert set(out["rules"]) == {
        SERVICE_KEY + ".configurators",
        "shop.tag-router",
        SERVICE_KEY + ".condition-router",
    }
    with pytest.raises(LookupError, match="no subscription"):
        explain(d, "nope", "sayHi")
