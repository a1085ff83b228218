"""Dubbo's tag router (regproxy/governance/tag.py): rules as Dubbo's documentation, Dubbo Admin and
Dubbo's own tests write them, and routing decisions as Dubbo 3.3's TagStateRouter makes them."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from regproxy.governance.errors import RuleError
from regproxy.governance.tag import (
    Tag,
    TagRouting,
    TagRule,
    force_tag,
    parse_tag_rule,
    requested_tag,
    rule_key,
    select,
)
from regproxy.registry.url import DubboURL
from regproxy.routing.model import Host
from regproxy.routing.rules import TagIndex


def _params(url: DubboURL) -> Mapping[str, str]:
    return url.params


def _url(address: str, **params: str) -> DubboURL:
    host, _, port = address.rpartition(":")
    return DubboURL(
        "dubbo", host, int(port), "com.x.Svc", {"interface": "com.x.Svc", "side": "provider", **params}
    )


# --- parsing: the documentation's and Dubbo Admin's rules -----------------------------------------


def test_docs_v30_rule_with_match() -> None:
    # https://dubbo.apache.org/en/overview/what/core-features/traffic/tag-rule/ (written out by hand)
    rule = parse_tag_rule(
        """
configVersion: v3.0
force: true
enabled: true
key: shop-detail
tags:
  - name: gray
    match:
      - key: env
        value:
          exact: gray
"""
    )
    assert rule.key == "shop-detail" and rule.config_version == "v3.0" and rule.is_v30
    assert rule.force and rule.enabled and rule.active
    (gray,) = rule.tags
    assert gray.name == "gray" and gray.addresses is None
    assert gray.match is not None and gray.match[0].key == "env"
    assert gray.match[0].value.matches("gray") and not gray.match[0].value.matches("blue")


def test_docs_v27_rule_with_addresses() -> None:
    # https://dubbo.apache.org/zh-cn/docsv2.7/user/examples/routing-rule/ ("标签路由规则", by hand)
    rule = parse_tag_rule(
        """
---
  force: false
  runtime: true
  enabled: true
  key: governance-tagrouter-provider
  tags:
    - name: tag1
      addresses: ["127.0.0.1:20880"]
    - name: tag2
      addresses: ["127.0.0.1:20881"]
...
"""
    )
    assert rule == TagRule(
        tags=(Tag("tag1", ("127.0.0.1:20880",)), Tag("tag2", ("127.0.0.1:20881",))),
        key="governance-tagrouter-provider",
        force=False,
        runtime=True,
    )


def test_dubbo_admin_rule() -> None:
    # What Dubbo Admin's RouteUtils.convertTagroutetoStore + YamlParser.dumpObject write: no
    # configVersion, priority as an int, every boolean present.
    rule = parse_tag_rule(
        "enabled: true\nforce: false\nkey: demo-provider\npriority: 0\nruntime: false\n"
        "tags:\n- addresses:\n  - 10.0.0.1:20880\n  name: gray\n"
    )
    assert rule.config_version is None and not rule.runtime and rule.priority == 0
    assert rule.tags == (Tag("gray", ("10.0.0.1:20880",)),)


def test_dubbo_test_rule_with_null_and_empty_addresses() -> None:
    # TagStateRouterTest.tagRouterRuleParseTest: addresses null, [], ~ are all "no addresses".
    rule = parse_tag_rule(
        "---\nforce: false\nruntime: true\nenabled: false\npriority: 1\nkey: demo-provider\ntags:\n"
        '  - name: tag1\n    addresses: null\n  - name: tag2\n    addresses: ["30.5.120.37:20880"]\n'
        "  - name: tag3\n    addresses: []\n  - name: tag4\n    addresses: ~\n..."
    )
    assert rule.priority == 1 and not rule.enabled and not rule.active
    assert [t.name for t in rule.tags] == ["tag1", "tag2", "tag3", "tag4"]
    enabled = TagRule(tags=rule.tags)
    assert TagRouting.bind(enabled, [], params=_params).tag_addresses == {
        "tag2": frozenset({"30.5.120.37:20880"})
    }


def test_dubbo_test_rule_v30_members() -> None:
    # TagStateRouterTest.tagRouterRuleParseTestV3 and its two invokers.
    rule = parse_tag_rule(
        """---
configVersion: v3.0
force: false
runtime: true
enabled: true
priority: 1
key: demo-provider
tags:
  - name: tag1
    match:
    - key: match_key1
      value:
       exact: value1
  - name: tag2
    addresses:
     - "10.20.3.3:20880"
     - "10.20.3.4:20880"
    match:
    - key: match_key2
      value:
       exact: value2
  - name: tag3
    match:
    - key: match_key2
      value:
       exact: value2
  - name: tag4
    match:
    - key: not_exist
      value:
       exact: not_exist
  - name: tag5
    match:
    - key: match_key2
      value:
       wildcard: "*"
..."""
    )
    providers = [
        _url("10.20.3.3:20880", match_key1="value1", match_key2="value2"),
        _url("10.20.3.4:20880", match_key1="value1"),
    ]
    both = frozenset({"10.20.3.3:20880", "10.20.3.4:20880"})
    assert TagRouting.bind(rule, providers, params=_params).tag_addresses == {
        "tag1": both,
        "tag2": both,  # its addresses; its match is not read
        "tag3": frozenset({"10.20.3.3:20880"}),
        "tag5": frozenset({"10.20.3.3:20880"}),  # tag4 matched nothing: left out
    }


@pytest.mark.parametrize("tags", ["tags: []", "", "tags: ~"])
def test_a_rule_without_tags_is_invalid(tags: str) -> None:
    # TagRuleParser: no tags -> setValid(false); the router then uses static tags only.
    rule = parse_tag_rule(f"key: app\n{tags}\n")
    assert not rule.valid and not rule.active


def test_booleans_as_strings_and_valid() -> None:
    rule = parse_tag_rule(
        "enabled: 'TRUE'\nforce: 'false'\nvalid: false\ntags:\n- name: a\n  addresses: ['*']\n"
    )
    assert rule.enabled and not rule.force and not rule.valid and not rule.active


def test_rule_key() -> None:
    assert rule_key("shop-detail") == "shop-detail.tag-router"


# --- parsing: malformed rules ----------------------------------------------------------------------

MALFORMED = [
    ("tags: [", "yaml"),
    ("key: a\nkey: b\n", "yaml"),  # a duplicate key
    ("- name: a\n", "type"),  # a list, not a rule
    ("plain text", "type"),
    ("focre: true\ntags: []\n", "unknown-field"),
    ("tags:\n- name: a\n  address: ['1.2.3.4']\n", "unknown-field"),
    ("configVersion: v3.1\ntags: []\n", "version"),
    ("configVersion: 3.0\ntags: []\n", "type"),  # a YAML number, a ClassCastException in Dubbo
    ("force: yes\ntags: []\n", "type"),  # YAML 1.2: a string; parseBoolean would read false
    ("priority: 1.5\ntags: []\n", "type"),
    ("priority: 99999999999\ntags: []\n", "type"),
    ("key: 123\ntags: []\n", "type"),
    ("tags: tag1\n", "type"),
    ("tags:\n- tag1\n", "type"),
    ("tags:\n- addresses: ['1.2.3.4']\n", "missing-field"),
    ("tags:\n- name: ''\n  addresses: ['1.2.3.4']\n", "missing-field"),
    ("tags:\n- name: 7\n  addresses: ['1.2.3.4']\n", "type"),
    ("tags:\n- name: a\n  addresses: 1.2.3.4:20880\n", "type"),
    ("tags:\n- name: a\n  addresses: [20880]\n", "type"),
    ("tags:\n- name: a\n  addresses: ['']\n", "value"),
    ("tags:\n- name: a\n  addresses: ['10.0.0.0/x']\n", "address"),  # CIDRUtils: NumberFormatException
    ("tags:\n- name: a\n  match:\n  - key: env\n    value: {exact: gray}\n", "version"),  # match needs v3.0
    ("configVersion: v3.0\ntags:\n- name: a\n  match: {key: env, value: {exact: gray}}\n", "type"),
    ("configVersion: v3.0\ntags:\n- name: a\n  match:\n  - value: {exact: gray}\n", "missing-field"),
    ("configVersion: v3.0\ntags:\n- name: a\n  match:\n  - key: env\n", "missing-field"),
    (
        "configVersion: v3.0\ntags:\n- name: a\n  match:\n  - key: env\n    value: {exactly: gray}\n",
        "unknown-field",
    ),
    ("configVersion: v3.0\ntags:\n- name: a\n  match:\n  - key: env\n    value: {}\n", "value"),
    ("configVersion: v3.0\ntags:\n- name: a\n  match:\n  - key: env\n    value: [gray]\n", "type"),
    ("configVersion: v3.0\ntags:\n- name: a\n  match:\n  - key: env\n    value: {regex: '('}\n", "regex"),
    ("configVersion: v3.0\ntags:\n- name: a\n", "missing-field"),  # an NPE in TagRouterRule.init
    ("configVersion: v3.0\ntags:\n- name: a\n  addresses: []\n", "missing-field"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_rules_are_refused(text: str, reason: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_tag_rule(text)
    assert err.value.reason == reason, err.value.message


def test_errors_name_the_field_and_the_source() -> None:
    with pytest.raises(RuleError) as err:
        parse_tag_rule("tags:\n- name: a\n  addresses: [1]\n", source="/dubbo/config/dubbo/app.tag-router")
    assert err.value.source == "/dubbo/config/dubbo/app.tag-router"
    assert "tags[0].addresses[0]" in str(err.value) and str(err.value).startswith(
        "/dubbo/config/dubbo/app.tag-router"
    )


# --- the request ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attachments", "tag", "force"),
    [
        ({}, "", False),
        ({"dubbo.tag": "gray"}, "gray", False),
        ({"dubbo.tag": 7}, "", False),  # RpcInvocation.getAttachment: only a String
        ({"dubbo.tag": "gray", "dubbo.force.tag": "true"}, "gray", True),
        ({"dubbo.force.tag": "TRUE"}, "", True),  # Boolean.parseBoolean ignores case
        ({"dubbo.force.tag": "yes"}, "", False),
        ({"dubbo.force.tag": True}, "", False),
    ],
)
def test_request_tag_and_force(attachments: dict[str, object], tag: str, force: bool) -> None:
    assert requested_tag(attachments) == tag and force_tag(attachments) is force


# --- routing -------------------------------------------------------------------------------------

A = _url("10.0.0.1:20880")
B = _url("10.0.0.2:20880", **{"dubbo.tag": "gray"})
C = _url("10.0.0.3:20880")
D = _url("10.0.0.4:20880", **{"dubbo.tag": "blue"})
E = _url("10.0.0.5:20880")
F = _url("10.0.0.6:20881")
ALL = [A, B, C, D, E, F]


@pytest.mark.parametrize(
    ("tag", "force", "expected"),
    [
        ("gray", False, [B]),
        ("blue", False, [D]),
        ("red", False, [A, C, E, F]),  # no provider has it: the untagged ones
        ("red", True, []),
        ("", False, [A, C, E, F]),  # a tagged provider never serves untagged requests
        ("", True, [A, C, E, F]),
    ],
)
def test_static_tags_only(tag: str, force: bool, expected: list[DubboURL]) -> None:
    assert list(select(None, ALL, tag, force, params=_params)) == expected


@pytest.mark.parametrize(
    "attachments",
    [{}, {"dubbo.tag": "gray"}, {"dubbo.tag": "red"}, {"dubbo.tag": "red", "dubbo.force.tag": "true"}],
)
def test_static_tags_agree_with_the_routing_tables_tag_index(attachments: dict[str, str]) -> None:
    hosts = [Host(u.address, metadata=u.params) for u in ALL]
    index = TagIndex.build(hosts)
    assert index is not None
    expected = index.select(attachments)[1]
    got = TagRouting.bind(None, hosts, params=lambda h: h.metadata).route(
        hosts, requested_tag(attachments), force_tag(attachments), params=lambda h: h.metadata
    )
    assert got == expected


RULE = parse_tag_rule(
    """
force: false
key: app
tags:
  - name: canary
    addresses: ["10.0.0.1:20880"]
  - name: gray
    addresses: ["10.0.0.3"]
  - name: ghost
    addresses: ["10.9.9.9:20880"]
  - name: port
    addresses: ["0.0.0.0:20881"]
"""
)


@pytest.mark.parametrize(
    ("tag", "force", "expected"),
    [
        ("canary", False, [A]),
        ("gray", False, [C]),  # the rule's gray wins: B's static gray is not consulted
        ("blue", False, [D]),  # not a rule tag: static tags
        ("port", False, [F]),  # "0.0.0.0:<port>" matches every host on that port
        # a rule tag whose providers are all gone: the failover (at no rule address, untagged) ...
        ("ghost", False, [E]),
        ("ghost", True, []),  # ... or nothing with dubbo.force.tag
        ("red", False, [E]),  # neither a rule nor a static tag: the failover, not "all untagged"
        ("red", True, []),
        ("canary|team1", False, [A]),  # "a|b" falls back to "a" ...
        ("canary|team1", True, []),  # ... unless forced
        ("", False, [E]),  # untagged requests: at no rule address and untagged
    ],
)
def test_rule_with_addresses(tag: str, force: bool, expected: list[DubboURL]) -> None:
    assert list(select(RULE, ALL, tag, force, params=_params)) == expected


def test_rule_force_returns_an_empty_tag() -> None:
    forced = parse_tag_rule("force: true\ntags:\n- name: ghost\n  addresses: ['10.9.9.9:20880']\n")
    assert select(forced, ALL, "ghost", params=_params) == ()
    assert list(select(forced, ALL, "", params=_params)) == [A, C, E, F]


def test_untagged_requests_get_nothing_when_every_provider_is_in_a_tag() -> None:
    # TagStateRouter: "all addresses are in dynamic tag group, return empty list" — even though A,
    # C and E carry no tag at all.
    everyone = parse_tag_rule("tags:\n- name: all\n  addresses: ['10.0.0.0/24']\n")
    assert select(everyone, [A, C, E], "", params=_params) == ()
    assert list(select(everyone, [A, C, E], "all", params=_params)) == [A, C, E]


@pytest.mark.parametrize(
    "rule_text",
    [
        "enabled: false\ntags:\n- name: gray\n  addresses: ['10.0.0.1']\n",
        "valid: false\ntags:\n- name: gray\n  addresses: ['10.0.0.1']\n",
        "key: app\n",
    ],
)
def test_inactive_rules_route_by_static_tags(rule_text: str) -> None:
    rule = parse_tag_rule(rule_text)
    assert list(select(rule, ALL, "gray", params=_params)) == [B]
    assert list(select(rule, ALL, "", params=_params)) == [A, C, E, F]


def test_v30_match_reads_registered_parameters_and_static_tags_the_configured_ones() -> None:
    rule = parse_tag_rule(
        "configVersion: v3.0\ntags:\n- name: gray\n  match:\n  - key: env\n    value: {exact: gray}\n"
    )
    x = _url("10.0.0.7:20880", env="gray")
    y = _url("10.0.0.8:20880", env="prod")
    z = _url("10.0.0.9:20880")
    registered = {x: x.params, y: y.params, z: z.params}
    # z was tagged "blue" by a configurator after registration.
    configured = {x: x.params, y: y.params, z: {**z.params, "dubbo.tag": "blue"}}
    routing = TagRouting.bind(rule, [x, y, z], params=registered.__getitem__)
    assert routing.tag_addresses == {"gray": frozenset({"10.0.0.7:20880"})}
    assert routing.route([x, y, z], "gray", False, params=configured.__getitem__) == (x,)
    assert routing.route([x, y, z], "blue", False, params=configured.__getitem__) == (z,)
    assert routing.route([x, y, z], "", False, params=configured.__getitem__) == (y,)
    # a subset of the bound providers (an earlier router took x away): the rule's tag is empty
    assert routing.route([y, z], "gray", False, params=configured.__getitem__) == (y,)


def test_match_side_and_category_are_the_consumers_view() -> None:
    # ServiceAddressURL.getOriginalParameter answers side=consumer, category=providers.
    rule = parse_tag_rule(
        "configVersion: v3.0\ntags:\n- name: t\n  match:\n  - key: side\n    value: {exact: consumer}\n"
        "  - key: category\n    value: {exact: providers}\n"
    )
    assert TagRouting.bind(rule, [A], params=_params).tag_addresses == {"t": frozenset({"10.0.0.1:20880"})}


def test_dubbo_v30_test_on_loopback_goes_through_the_failover() -> None:
    # TagStateRouterTest.testTagRouteWithDynamicRuleV3 expects 2 of 3 providers for tag2.  On
    # 127.0.0.1 the addresses the match gives never match (NetUtils treats loopback as IPv6), so
    # the 2 are the failover: the two without a static tag, not the two the match chose.
    rule = parse_tag_rule(
        "configVersion: v3.0\nforce: false\nruntime: true\nenabled: true\npriority: 1\nkey: demo-provider\n"
        "tags:\n  - name: tag2\n    match:\n    - key: match_key\n      value:\n       exact: value\n"
    )
    url1 = DubboURL.parse(
        "test://127.0.0.1:7777/DemoInterface?application=foo&dubbo.tag=tag2&match_key=value"
    )
    url2 = DubboURL.parse("test://127.0.0.1:7778/DemoInterface?application=foo&match_key=value")
    url3 = DubboURL.parse("test://127.0.0.1:7779/DemoInterface?application=foo")
    assert select(rule, [url1, url2, url3], "tag2", params=_params) == (url2, url3)


def test_loopback_addresses_need_a_wildcard_or_cidr() -> None:
    local = _url("127.0.0.1:20880")
    other = _url("127.0.0.1:20881")
    by_address = parse_tag_rule("tags:\n- name: t\n  addresses: ['127.0.0.1:20880']\n")
    by_cidr = parse_tag_rule("tags:\n- name: t\n  addresses: ['127.0.0.1/32']\n")
    assert select(by_address, [local, other], "t", params=_params) == (local, other)  # the failover
    assert select(by_cidr, [local, other], "t", params=_params) == (local, other)  # both in the tag
    assert select(by_cidr, [local, other], "", params=_params) == ()


def test_routing_hosts_of_the_routing_table() -> None:
    hosts = [Host("10.0.0.1:20880", metadata={}), Host("10.0.0.2:20880", metadata={"dubbo.tag": "gray"})]
    routing = TagRouting.bind(RULE, hosts, params=lambda h: h.metadata)
    assert routing.route(hosts, "canary", False, params=lambda h: h.metadata) == (hosts[0],)
