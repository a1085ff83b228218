"""Dubbo's configurators (regproxy/governance/configurator.py): config-center rules as Dubbo's
documentation, Dubbo Admin and Dubbo's own tests write them, 2.6 override URLs from the registry,
and what Dubbo 3.3's AbstractConfigurator makes of them in a consumer and in a provider."""

from __future__ import annotations

import pytest

from regproxy.governance.configurator import (
    Configurator,
    applies,
    colon_service_key,
    configure,
    configure_consumer,
    configure_provider,
    consumer_view,
    parse_configurators,
    parse_override_url,
    registry_configurators,
    rule_key,
)
from regproxy.governance.errors import RuleError
from regproxy.registry.url import DubboURL, java_url_encode

SVC = "com.x.Svc"
CONSUMER_APP = "shop-frontend"
CONSUMER_IP = "10.0.0.9"


def _provider(address: str = "10.0.0.5:20880", **params: str) -> DubboURL:
    host, _, port = address.rpartition(":")
    base = {
        "application": "shop-detail",
        "interface": SVC,
        "side": "provider",
        "timeout": "1000",
        "weight": "100",
    }
    return DubboURL("dubbo", host, int(port), SVC, {**base, **params})


P = _provider()


def _consumer(provider: DubboURL, *rules: tuple[Configurator, ...]) -> DubboURL:
    configurators = tuple(c for rule in rules for c in rule)
    return configure_consumer(provider, configurators, application=CONSUMER_APP, local_host=CONSUMER_IP)


def _service_rule(items: str, key: str = SVC, version: str = "v2.7") -> tuple[Configurator, ...]:
    return parse_configurators(f"configVersion: {version}\nscope: service\nkey: {key}\nconfigs:\n{items}")


def _app_rule(items: str, key: str, version: str = "v2.7") -> tuple[Configurator, ...]:
    return parse_configurators(f"configVersion: {version}\nscope: application\nkey: {key}\nconfigs:\n{items}")


# --- parsing: the documentation's examples -----------------------------------------------------------


def test_docs_application_scope_weight() -> None:
    # https://dubbo.apache.org/en/docs3-v2/java-sdk/advanced-features-and-usage/traffic/config-rule/
    # "Application Granularity" (written out by hand)
    (c,) = parse_configurators(
        """---
configVersion: v2.7
scope: application
key: demo
enabled: true
configs:
- addresses: ["0.0.0.0:20880"]
  side: provider
  parameters:
    weight: 1000
..."""
    )
    assert str(c.url) == (
        "override://0.0.0.0:20880/*?application=demo&category=appdynamicconfigurators&configVersion=v2.7"
        "&enabled=true&providerAddresses=0.0.0.0:20880&side=provider&weight=1000"
    )
    assert c.kind == "override" and c.match is None and c.priority == 0


def test_docs_service_scope_timeout() -> None:
    # the same page, "Service Granularity"
    (c,) = parse_configurators(
        """---
configVersion: v2.7
scope: service
key: org.apache.dubbo.samples.governance.api.DemoService
enabled: true
configs:
- addresses: [0.0.0.0]
  side: consumer
  parameters:
    timeout: 6000
..."""
    )
    assert str(c.url) == (
        "override://0.0.0.0/org.apache.dubbo.samples.governance.api.DemoService?category=dynamicconfigurators"
        "&configVersion=v2.7&enabled=true&side=consumer&timeout=6000"
    )


def test_docs_template() -> None:
    # the same page, "Configuration template" (its "applications/services: []" placeholder written
    # as the application scope's services)
    rule = parse_configurators(
        """---
configVersion: v2.7
scope: application
key: app-name
enabled: true
configs:
- addresses: ["0.0.0.0"]
  providerAddresses: ["1.1.1.1:20880", "2.2.2.2:20881"]
  side: consumer
  services: []
  parameters:
    timeout: 1000
    cluster: failfase
    loadbalance: random
- addresses: ["0.0.0.0:20880"]
  side: provider
  services: []
  parameters:
    threadpool: fixed
    threads: 200
    iothreads: 4
    dispatcher: all
    weight: 200
..."""
    )
    consumer, provider = rule
    assert consumer.url.params["providerAddresses"] == "1.1.1.1:20880,2.2.2.2:20881"
    assert consumer.url.params["side"] == "consumer" and consumer.url.port == 0
    assert provider.url.params["providerAddresses"] == "0.0.0.0:20880" and provider.url.port == 20880
    assert provider.url.params["threads"] == "200" and provider.url.path == "*"


def test_docs_v30_application_scope() -> None:
    # https://dubbo.apache.org/en/overview/what/core-features/traffic/configuration-rule/ (by hand)
    (c,) = parse_configurators(
        """
configVersion: v3.0
scope: application
key: shop-detail
configs:
  - side: provider
    parameters:
      accesslog: 'true'
"""
    )
    assert c.url.host == "0.0.0.0" and c.url.params["accesslog"] == "true"
    assert c.url.params["configVersion"] == "v3.0" and c.url.params["providerAddresses"] == "0.0.0.0"
    assert configure_provider(P, (c,)).params["accesslog"] == "true"


def test_docs_v30_service_scope_match_uses_a_field_dubbo_does_not_read() -> None:
    # The same page's second example matches "application"; Dubbo 3.3's ConditionMatch has "app",
    # and PojoUtils ignores the unknown key, so Dubbo applies the rule to every consumer.  Refused.
    with pytest.raises(RuleError) as err:
        parse_configurators(
            """
configVersion: v3.0
scope: service
key: org.apache.dubbo.samples.UserService
configs:
  - match:
      application:
        oneof:
          - exact: shop-frontend
    side: consumer
    parameters:
      retries: '4'
"""
        )
    assert err.value.reason == "unknown-field" and "configs[0].match" in err.value.message
    assert "'application'" in err.value.message and "app" in err.value.message


def test_the_same_rule_with_app_limits_the_consumers() -> None:
    rule = _service_rule(
        "  - match:\n      app:\n        oneof:\n          - exact: shop-frontend\n"
        "    side: consumer\n    parameters:\n      retries: '4'\n",
        version="v3.0",
    )
    assert _consumer(P, rule).params["retries"] == "4"
    other = configure_consumer(P, rule, application="checkout", local_host=CONSUMER_IP)
    assert "retries" not in other.params


# --- parsing: Dubbo's own test rules (dubbo-cluster/src/test/resources) -----------------------------


def test_service_group_version_key() -> None:
    # ServiceGroupVersion.yml: the key is read as group/interface:version; no side (it never applies).
    (c,) = parse_configurators(
        "configVersion: v2.7\nscope: service\nkey: testgroup/servicekey:1.0.0\n"
        "configs:\n- addresses: ['127.0.0.1:20880']\n  parameters:\n    weight: 222\n"
    )
    assert c.url.params["group"] == "testgroup" and c.url.params["version"] == "1.0.0"
    assert c.url.path == "servicekey" and c.url.address == "127.0.0.1:20880"
    assert "side" not in c.url.params


def test_app_multi_services() -> None:
    # AppMultiServices.yml: 2 addresses x 2 services; sorted with 0.0.0.0 first (toConfigurators).
    rule = parse_configurators(
        "configVersion: v2.7\nscope: application\nkey: demo-consumer\nconfigs:\n"
        "- addresses: [127.0.0.1, 0.0.0.0]\n  services: ['service1', 'service2']\n"
        "  parameters:\n    loadbalance: random\n    cluster: failfast\n    timeout: 6666\n"
    )
    assert [(c.url.host, c.url.path) for c in rule] == [
        ("0.0.0.0", "service1"),
        ("0.0.0.0", "service2"),
        ("127.0.0.1", "service1"),
        ("127.0.0.1", "service2"),
    ]
    assert all(c.url.params["application"] == "demo-consumer" for c in rule)
    assert all(c.url.params["timeout"] == "6666" for c in rule)


def test_service_multi_apps() -> None:
    # ServiceMultiApps.yml-like: one URL per application
    rule = _service_rule(
        "- addresses: [127.0.0.1]\n  applications: [app1, app2]\n"
        "  side: consumer\n  parameters:\n    timeout: 6666\n"
    )
    assert [c.url.params["application"] for c in rule] == ["app1", "app2"]


def test_v30_match_like_configurator_v3_yml() -> None:
    # ConfiguratorV3.yml and ConfigParserTest.parseProviderConfigurationV3's URLs (which pass the
    # address with its port to ConditionMatch.isMatch).
    (c,) = parse_configurators(
        """---
configVersion: v3.0
scope: application
key: demo-provider
configs:
  - match:
      address:
        wildcard: "10.0.0.1:20880"
      service:
        oneof:
          - exact: "DemoService"
          - exact: "DemoService2"
      param:
        - key: match_key1
          value:
            exact: value1
    side: provider
    parameters:
      weight: 200
..."""
    )
    assert c.url.path == "*" and c.url.params["weight"] == "200" and c.match is not None

    def check(text: str) -> bool:
        url = DubboURL.parse(text)
        assert c.match is not None
        return c.match.matches(url.address, url)

    assert check("dubbo://10.0.0.1:20880/DemoService?match_key1=value1")
    assert check("dubbo://10.0.0.1:20880/DemoService2?match_key1=value1")
    assert not check("dubbo://10.0.0.2:20880/DemoService?match_key1=value1")
    assert not check("dubbo://10.0.0.1:20880/DemoServiceNotMatch?match_key1=value1")
    assert not check("dubbo://10.0.0.1:20880/DemoService?match_key1=value_not_match")
    # In a provider the address matched is the URL's host, without the port: this rule never applies.
    provider = DubboURL.parse(
        "dubbo://10.0.0.1:20880/DemoService?application=demo-provider&side=provider&match_key1=value1"
    )
    assert not applies(c, provider, local_host="10.0.0.1")


def test_json_array_of_override_urls() -> None:
    # ConfigParserTest.parseURLJsonArrayCompatible
    (c,) = parse_configurators(
        '["override://0.0.0.0/com.xx.Service?category=configurators&timeout=6666&disabled=true'
        '&dynamic=false&enabled=true&group=dubbo&priority=1&version=1.0" ]'
    )
    assert c.url.host == "0.0.0.0" and c.url.path == "com.xx.Service" and c.url.params["timeout"] == "6666"
    assert c.priority == 1


def test_dubbo_admin_weight_rule() -> None:
    # OverrideServiceImpl.saveWeight on a new key: insertConfig writes no configVersion and
    # enabled: false at the top; the item's type (weight) makes the item's own enabled count.
    rule = parse_configurators(
        "configs:\n- addresses:\n  - 10.0.0.5:20880\n  enabled: true\n  parameters:\n    weight: 300\n"
        "  side: provider\n  type: weight\nenabled: false\nkey: com.x.Svc\nscope: service\n"
    )
    (c,) = rule
    assert c.url.params["enabled"] == "true" and c.url.params["configVersion"] == "null"
    assert configure_provider(P, rule).params["weight"] == "300"


def test_item_enabled_counts_only_with_a_type() -> None:
    general = _service_rule("- side: consumer\n  enabled: false\n  parameters: {timeout: 5}\n")
    typed = _service_rule("- side: consumer\n  type: balancing\n  parameters: {timeout: 5}\n")
    assert general[0].url.params["enabled"] == "true"  # the rule's enabled, the item's ignored
    assert typed[0].url.params["enabled"] == "null"  # a typed item without enabled is off
    assert _consumer(P, general).params["timeout"] == "5"
    assert _consumer(P, typed).params["timeout"] == "1000"


def test_security_keys_are_dropped_and_later_keys_win() -> None:
    (c,) = _service_rule(
        "- side: consumer\n  parameters:\n    runtime: 'true'\n    router: x\n    type: y\n    timeout: 5\n"
        "    enabled: 'false'\n    category: mine\n"
    )
    assert not {"runtime", "router", "type"} & set(c.url.params)
    # ConfigParser appends enabled after the parameters: URL.valueOf keeps the later one.
    assert c.url.params["enabled"] == "true" and c.url.params["category"] == "mine"


def test_rule_keys() -> None:
    assert rule_key("shop-detail") == "shop-detail.configurators"
    # URLTest.testGetColonSeparatedKey
    assert colon_service_key("org.apache.dubbo.test.interfaceName", "1.0.0", "group") == (
        "org.apache.dubbo.test.interfaceName:1.0.0:group"
    )
    assert (
        colon_service_key("org.apache.dubbo.test.interfaceName", "1.0.0")
        == "org.apache.dubbo.test.interfaceName:1.0.0:"
    )
    assert colon_service_key("org.apache.dubbo.test.interfaceName", group="group") == (
        "org.apache.dubbo.test.interfaceName::group"
    )
    assert colon_service_key("org.apache.dubbo.test.interfaceName") == "org.apache.dubbo.test.interfaceName::"


# --- parsing: malformed rules ----------------------------------------------------------------------

ITEM = "- side: consumer\n  parameters: {timeout: 5}\n"
SIDE = "  side: consumer\n  parameters: {t: 5}\n"  # the rest of an item


def _v27(items: str) -> str:
    return f"configVersion: v2.7\nkey: a\nconfigs:\n{items}"


def _v30(items: str) -> str:
    return f"configVersion: v3.0\nkey: a\nconfigs:\n{items}"


MALFORMED = [
    ("configs: [", "yaml"),
    ("key: a\nkey: b\nconfigs: []\n", "yaml"),
    ("just text", "type"),
    ("[]", "value"),
    ("[1]", "type"),
    ('["dubbo://1.2.3.4:20880/x"]', "url"),
    ("configVersion: v2.7\nkey: a\nconfig:\n" + ITEM, "unknown-field"),
    ("configVersion: v2.6\nkey: a\nconfigs:\n" + ITEM, "version"),
    ("configVersion: 2.7\nkey: a\nconfigs:\n" + ITEM, "type"),
    ("configVersion: v2.7\nscope: services\nkey: a\nconfigs:\n" + ITEM, "value"),
    ("configVersion: v2.7\nconfigs:\n" + ITEM, "missing-field"),
    ("configVersion: v2.7\nkey: ''\nconfigs:\n" + ITEM, "missing-field"),
    ("configVersion: v2.7\nkey: 'g/'\nconfigs:\n" + ITEM, "value"),
    ("configVersion: v2.7\nkey: a\n", "missing-field"),
    ("configVersion: v2.7\nkey: a\nenabled: yes\nconfigs:\n" + ITEM, "type"),
    ("configVersion: v2.7\nkey: a\nconfigs: []\n", "value"),
    ("configVersion: v2.7\nkey: a\nconfigs: {side: consumer}\n", "type"),
    (_v27("- side: consumer\n"), "missing-field"),
    (_v27("- side: consumer\n  parameters: {}\n"), "missing-field"),
    (_v27("- side: consumer\n  parameters: [timeout]\n"), "type"),
    (_v27("- side: consumer\n  parameters: {timeout: ~}\n"), "type"),
    (_v27("- side: consumer\n  parameters: {timeout: 1.5}\n"), "type"),
    (_v27("- side: consumer\n  parameters: {a: 'x&b=c'}\n"), "value"),
    (_v27("- side: consumer\n  parameters: {priority: high}\n"), "value"),
    (_v27("- side: Consumer\n  parameters: {timeout: 5}\n"), "value"),
    (_v27("- address: [1.2.3.4]\n" + SIDE), "unknown-field"),
    (_v27("- addresses: '1.2.3.4'\n" + SIDE), "type"),
    (_v27("- addresses: ['0.0.0.0:*']\n" + SIDE), "address"),
    (_v27("- addresses: ['10.0.0.0/24']\n" + SIDE), "address"),
    (_v27("- match: {app: {oneof: [{exact: x}]}}\n" + SIDE), "version"),  # match needs v3.0
    (_v30("- match: {app: [x]}\n" + SIDE), "type"),
    (_v30("- match: {param: {key: k}}\n" + SIDE), "type"),
    (_v30("- match: {address: {cird: '1.2.3.4/x'}}\n" + SIDE), "address"),
    (_v30("- match: {service: {oneof: [{regex: '['}]}}\n" + SIDE), "regex"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_rules_are_refused(text: str, reason: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_configurators(text)
    assert err.value.reason == reason, err.value.message


def test_errors_name_the_field_and_the_source() -> None:
    path = "/dubbo/config/dubbo/com.x.Svc::.configurators"
    with pytest.raises(RuleError) as err:
        parse_configurators(
            "configVersion: v2.7\nkey: a\nconfigs:\n- side: consumer\n  parameters: [t]\n", source=path
        )
    assert err.value.source == path and "configs[0].parameters" in str(err.value)


# --- 2.6 override URLs from the registry -------------------------------------------------------------

# https://dubbo.apache.org/zh-cn/docsv2.7/user/examples/config-rule-deprecated/ (written out by hand)
DOCS_26 = {
    "timeout": "override://0.0.0.0/com.foo.BarService?category=configurators&dynamic=false&application=foo&timeout=1000",
    # The page spells it "disbaled": a parameter nobody reads — the provider stays enabled.
    "disable": "override://10.20.153.10/com.foo.BarService?category=configurators&dynamic=false&disbaled=true",
    "weight": "override://10.20.153.10/com.foo.BarService?category=configurators&dynamic=false&weight=200",
    "loadbalance": "override://10.20.153.10/com.foo.BarService?category=configurators&dynamic=false&loadbalance=leastactive",
    "mock": "override://0.0.0.0/com.foo.BarService?category=configurators&dynamic=false&application=foo&mock=force:return+null",
}
BAR = DubboURL.parse(
    "dubbo://10.20.153.10:20880/com.foo.BarService?application=bar&interface=com.foo.BarService&side=provider"
)


def _registry(*urls: str, side: str = "consumer") -> tuple[Configurator, ...]:
    return registry_configurators([parse_override_url(java_url_encode(u)) for u in urls], side=side)


def test_override_url_leaf_names_are_decoded() -> None:
    leaf = java_url_encode(DOCS_26["mock"])
    assert "%3A%2F%2F" in leaf  # what ZooKeeperRegistry looks for in a child's name
    url = parse_override_url(leaf)
    assert url.params["mock"] == "force:return+null" and url.params["application"] == "foo"


def test_26_url_without_a_port_names_a_consumer() -> None:
    # configureDeprecated: no port -> consumers at that host (or 0.0.0.0); providers only from 0.0.0.0.
    weight = _registry(DOCS_26["weight"])
    on_that_consumer = configure_consumer(BAR, weight, application="any", local_host="10.20.153.10")
    assert on_that_consumer.params["weight"] == "200"
    assert configure_consumer(BAR, weight, application="any", local_host="10.0.0.9") == BAR
    assert configure_provider(BAR, _registry(DOCS_26["weight"], side="provider")) == BAR


def test_26_url_with_a_port_names_a_provider() -> None:
    weight = _registry("override://10.20.153.10:20880/com.foo.BarService?category=configurators&weight=200")
    assert configure_consumer(BAR, weight, application="any", local_host="10.0.0.9").params["weight"] == "200"
    assert configure_provider(BAR, weight).params["weight"] == "200"
    other_port = DubboURL("dubbo", "10.20.153.10", 20881, BAR.path, BAR.params)
    assert configure_provider(other_port, weight) == other_port


def test_26_application_condition() -> None:
    timeout = _registry(DOCS_26["timeout"])
    assert (
        configure_consumer(BAR, timeout, application="foo", local_host="10.0.0.9").params["timeout"] == "1000"
    )
    assert configure_consumer(BAR, timeout, application="other", local_host="10.0.0.9") == BAR
    # on the provider side application is the provider's own
    foo_provider = DubboURL("dubbo", BAR.host, BAR.port, BAR.path, {**BAR.params, "application": "foo"})
    assert (
        configure_provider(foo_provider, _registry(DOCS_26["timeout"], side="provider")).params["timeout"]
        == "1000"
    )
    assert configure_provider(BAR, _registry(DOCS_26["timeout"], side="provider")) == BAR


def test_26_misspelt_disable_leaves_the_provider_enabled() -> None:
    url = configure_consumer(BAR, _registry(DOCS_26["disable"]), application="x", local_host="10.20.153.10")
    assert url.params["disbaled"] == "true" and url.enabled


def test_26_tilde_conditions_are_matched_and_not_applied() -> None:
    rule = _registry("override://0.0.0.0/com.foo.BarService?~application=bar&weight=5", side="provider")
    assert configure_provider(BAR, rule).params["weight"] == "5"
    assert "~application" not in configure_provider(BAR, rule).params
    other = DubboURL("dubbo", BAR.host, BAR.port, BAR.path, {**BAR.params, "application": "baz"})
    assert configure_provider(other, rule) == other


def test_26_group_and_version_must_equal_the_services() -> None:
    versioned = DubboURL("dubbo", BAR.host, BAR.port, BAR.path, {**BAR.params, "version": "1.0"})
    plain = _registry("override://0.0.0.0/com.foo.BarService?weight=5", side="provider")
    exact = _registry("override://0.0.0.0/com.foo.BarService?version=1.0&weight=5", side="provider")
    assert configure_provider(versioned, plain) == versioned
    assert configure_provider(versioned, exact).params["weight"] == "5"


def test_registry_lists() -> None:
    admin_copy = (
        "override://0.0.0.0/com.foo.BarService?category=configurators&compatible_config=true&weight=7"
    )
    # a consumer ignores Dubbo Admin's 2.6 copies (RegistryDirectory.isNotCompatibleFor26x) ...
    assert _registry(admin_copy) == ()
    # ... a provider applies them
    assert configure_provider(BAR, _registry(admin_copy, side="provider")).params["weight"] == "7"
    # empty:// clears; a URL with nothing but anyhost is skipped
    assert _registry(DOCS_26["weight"], "empty://0.0.0.0/com.foo.BarService?category=configurators") == ()
    assert _registry("override://0.0.0.0/com.foo.BarService?anyhost=true") == ()
    assert _registry() == ()
    with pytest.raises(ValueError):
        registry_configurators([], side="both")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (java_url_encode("route://0.0.0.0/com.foo.BarService?category=routers&rule=x"), "url"),
        (java_url_encode("override://0.0.0.0/com.foo.BarService?priority=high"), "value"),
        ("override%3A%2F%2F0.0.0.0%3Aabc%2Fx", "url"),
        ("not-a-url", "url"),
        ("override%ZZ", "url"),
    ],
)
def test_bad_override_urls_are_refused(name: str, reason: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_override_url(name)
    assert err.value.reason == reason


# --- applying: which rule applies where ------------------------------------------------------------

TIMEOUT_6000 = _service_rule("- addresses: [0.0.0.0]\n  side: consumer\n  parameters:\n    timeout: 6000\n")


def test_consumer_rule_applies_in_consumers_only() -> None:
    assert _consumer(P, TIMEOUT_6000).params["timeout"] == "6000"
    assert configure_provider(P, TIMEOUT_6000) == P


@pytest.mark.parametrize(
    ("items", "applied"),
    [
        ("- addresses: ['10.0.0.9']\n", True),  # the consumer's own address
        ("- addresses: ['10.0.0.9:1234']\n", True),  # the port of an address is not compared
        ("- addresses: ['10.0.0.8']\n", False),  # another consumer
        ("- providerAddresses: ['10.0.0.5:20880']\n", True),
        ("- providerAddresses: ['10.0.0.5']\n", True),
        ("- providerAddresses: ['0.0.0.0:*']\n", True),
        ("- providerAddresses: ['0.0.0.0:20880']\n", True),
        ("- providerAddresses: ['10.0.0.6:20880', '10.0.0.5:20880']\n", True),
        ("- providerAddresses: ['10.0.0.6:20880']\n", False),
        ("- providerAddresses: ['10.0.0.5:20881']\n", False),
        ("- applications: [shop-frontend]\n", True),
        ("- applications: [checkout]\n", False),
        ("- applications: ['*']\n", True),
    ],
)
def test_consumer_rule_conditions(items: str, applied: bool) -> None:
    rule = _service_rule(items + "  side: consumer\n  parameters: {timeout: 6000}\n")
    assert (_consumer(P, rule).params["timeout"] == "6000") is applied


@pytest.mark.parametrize(
    ("key", "provider", "applied"),
    [
        (SVC, P, True),
        # the key is read as group/interface:version: a bare interface (as Dubbo Admin writes it)
        # misses a provider with a version or a group
        (SVC, _provider(version="1.0.0"), False),
        (f"{SVC}:1.0.0", _provider(version="1.0.0"), True),
        (f"g/{SVC}:1.0.0", _provider(version="1.0.0", group="g"), True),
        (f"g/{SVC}:1.0.0", _provider(version="1.0.0"), False),
        ("com.x.Other", P, False),
    ],
)
def test_service_key_match(key: str, provider: DubboURL, applied: bool) -> None:
    rule = _service_rule("- side: consumer\n  parameters: {timeout: 6000}\n", key=key)
    assert (_consumer(provider, rule).params["timeout"] == "6000") is applied


def test_application_scope_consumer_rule() -> None:
    mine = _app_rule(
        "- side: consumer\n  services: [com.x.Svc]\n  parameters: {retries: 5}\n", key=CONSUMER_APP
    )
    others = _app_rule("- side: consumer\n  parameters: {retries: 5}\n", key="checkout")
    any_service = _app_rule("- side: consumer\n  parameters: {retries: 5}\n", key=CONSUMER_APP)
    assert _consumer(P, mine).params["retries"] == "5"
    assert "retries" not in _consumer(P, others).params
    assert _consumer(P, any_service).params["retries"] == "5"


def test_application_scope_provider_rule() -> None:
    rule = _app_rule(
        "- addresses: ['0.0.0.0:20880']\n  side: provider\n  parameters: {weight: 1000}\n", key="shop-detail"
    )
    assert configure_provider(P, rule).params["weight"] == "1000"
    on_20881 = _provider("10.0.0.5:20881")
    assert configure_provider(on_20881, rule) == on_20881  # providerAddresses 0.0.0.0:20880
    other_app = _provider(application="cart")
    assert configure_provider(other_app, rule) == other_app
    assert _consumer(P, rule) == P  # side: provider


def test_disabled_and_rule_enabled() -> None:
    disable = _service_rule(
        "- side: consumer\n  providerAddresses: ['10.0.0.5:20880']\n  parameters: {disabled: true}\n"
    )
    assert not _consumer(P, disable).enabled
    assert _consumer(_provider("10.0.0.6:20880"), disable).enabled
    off = parse_configurators(
        "configVersion: v2.7\nkey: com.x.Svc\nenabled: false\n"
        "configs:\n- side: consumer\n  parameters: {timeout: 1}\n"
    )
    assert _consumer(P, off) == P


def test_enabled_cannot_be_overridden() -> None:
    rule = _registry("override://0.0.0.0/com.x.Svc?enabled=true&weight=3", side="provider")
    disabled_provider = _provider(enabled="false")
    # enabled is a condition key: it is not applied (the configurator itself is enabled=true)
    assert configure_provider(disabled_provider, rule).params["enabled"] == "false"


def test_parameters_of_every_kind() -> None:
    rule = _service_rule(
        "- side: consumer\n  parameters:\n    weight: 50\n    timeout: 300\n    sayHello.timeout: 200\n"
        "    retries: 0\n    loadbalance: leastactive\n    cluster: failfast\n"
        "    dubbo.tag: gray\n    tag: blue\n"
    )
    configured = _consumer(P, rule).params
    assert {k: configured[k] for k in ("weight", "timeout", "sayHello.timeout", "retries")} == {
        "weight": "50",
        "timeout": "300",
        "sayHello.timeout": "200",
        "retries": "0",
    }
    assert configured["loadbalance"] == "leastactive" and configured["cluster"] == "failfast"
    # dubbo.tag is the static tag the tag router reads; "tag" is just a parameter of that name
    assert configured["dubbo.tag"] == "gray" and configured["tag"] == "blue"


def test_what_else_lands_on_the_url() -> None:
    # Only CONDITION_KEYS are kept off: providerAddresses (written by ConfigParser for side:
    # provider) lands on the provider URL, which Dubbo then re-registers.
    rule = _service_rule("- addresses: ['10.0.0.5:20880']\n  side: provider\n  parameters: {weight: 5}\n")
    configured = configure_provider(P, rule)
    assert configured.params["providerAddresses"] == "10.0.0.5:20880"
    assert not {"category", "configVersion", "enabled"} & (set(configured.params) - set(P.params))


# --- applying: precedence ---------------------------------------------------------------------------


def test_a_specific_address_beats_0_0_0_0_whatever_the_order() -> None:
    for order in ("'0.0.0.0', '10.0.0.9'", "'10.0.0.9', '0.0.0.0'"):
        rule = _service_rule(f"- addresses: [{order}]\n  side: consumer\n  parameters: {{timeout: 1}}\n")
        assert [c.url.host for c in rule] == ["0.0.0.0", "10.0.0.9"]
    both = _service_rule(
        "- addresses: ['10.0.0.9']\n  side: consumer\n  parameters: {timeout: 2}\n"
        "- addresses: ['0.0.0.0']\n  side: consumer\n  parameters: {timeout: 1}\n"
    )
    assert _consumer(P, both).params["timeout"] == "2"


def test_higher_priority_applies_last() -> None:
    rule = _service_rule(
        "- side: consumer\n  parameters: {timeout: 2, priority: 5}\n"
        "- side: consumer\n  parameters: {timeout: 1, priority: 1}\n"
    )
    assert [c.priority for c in rule] == [1, 5]
    assert _consumer(P, rule).params["timeout"] == "2"


def test_sources_apply_in_order_service_rule_last() -> None:
    registry = _registry("override://0.0.0.0/com.x.Svc?timeout=10")
    application = _app_rule("- side: consumer\n  parameters: {timeout: 20}\n", key=CONSUMER_APP)
    service = _service_rule("- side: consumer\n  parameters: {timeout: 30}\n")
    assert _consumer(P, registry).params["timeout"] == "10"
    assert _consumer(P, registry, application).params["timeout"] == "20"
    assert _consumer(P, registry, application, service).params["timeout"] == "30"


def test_absent_adds_only_what_the_configured_url_lacks() -> None:
    absent = registry_configurators(
        [parse_override_url("absent://0.0.0.0/com.x.Svc?weight=7&timeout=9", encoded=False)], side="provider"
    )
    assert absent[0].kind == "absent"
    # the provider has timeout and weight: nothing changes
    assert configure_provider(P, absent) == P
    # a 3.x consumer configures a URL with neither: both are set (DubboServiceAddressURL)
    configured = configure_consumer(P, absent, application="x", local_host="10.0.0.9")
    assert configured.params["weight"] == "7" and configured.params["timeout"] == "9"
    # two absent configurators: the first one wins
    first = registry_configurators(
        [
            parse_override_url(u, encoded=False)
            for u in ("absent://0.0.0.0/com.x.Svc?k=1", "absent://0.0.0.0/com.x.Svc?k=2")
        ],
        side="provider",
    )
    assert configure_provider(P, first).params["k"] == "1"


def test_an_empty_value_does_not_override_in_a_consumer() -> None:
    rule = _registry("override://0.0.0.0/com.x.Svc?timeout=&weight=3")
    configured = _consumer(P, rule)
    assert configured.params["timeout"] == "1000" and configured.params["weight"] == "3"


# --- applying: v3.0 match ------------------------------------------------------------------------------


TIMEOUT_1000 = "{param: [{key: timeout, value: {exact: '1000'}}]}"


def test_v30_match_param_sees_only_the_consumer_view() -> None:
    rule = _service_rule(
        f"- match: {TIMEOUT_1000}\n  side: consumer\n  parameters: {{retries: 7}}\n"
        f"- match: {TIMEOUT_1000}\n  side: provider\n  parameters: {{weight: 7}}\n",
        version="v3.0",
    )
    # the provider has timeout=1000, but a 3.x consumer's configurators see only application, side,
    # group and version
    assert "retries" not in _consumer(P, rule).params
    assert configure_provider(P, rule).params["weight"] == "7"


def test_v30_match_address_and_provider_address() -> None:
    rule = _service_rule(
        "- match:\n    address: {cird: '10.0.0.0/24'}\n    providerAddress: {wildcard: '10.0.0.5:*'}\n"
        "  side: consumer\n  parameters: {retries: 7}\n",
        version="v3.0",
    )
    assert _consumer(P, rule).params["retries"] == "7"
    assert (
        "retries" not in configure_consumer(P, rule, application=CONSUMER_APP, local_host="10.1.0.9").params
    )
    assert "retries" not in _consumer(_provider("10.0.0.6:20880"), rule).params


def test_consumer_view_and_applies() -> None:
    view = consumer_view(_provider(version="1.0.0", group="g"), application=CONSUMER_APP)
    assert view.params == {"application": CONSUMER_APP, "side": "consumer", "group": "g", "version": "1.0.0"}
    assert (view.host, view.port, view.path) == (P.host, P.port, P.path)
    (rule,) = TIMEOUT_6000
    assert applies(rule, consumer_view(P, application=CONSUMER_APP), local_host=CONSUMER_IP)
    assert not applies(rule, P, local_host=CONSUMER_IP)  # the provider's own URL is side=provider


def test_nothing_changed_returns_the_same_url() -> None:
    assert _consumer(P, ()) is P
    assert configure(P, TIMEOUT_6000, local_host=CONSUMER_IP) is P
    assert configure_provider(P, TIMEOUT_6000) is P
    # it applies, but the provider already has weight=100 and timeout=1000
    same = _registry("override://0.0.0.0/com.x.Svc?weight=100&timeout=1000", side="provider")
    assert configure_provider(P, same) is P


def test_configure_provider_wants_a_provider_url() -> None:
    with pytest.raises(ValueError):
        configure_provider(consumer_view(P, application="x"), TIMEOUT_6000)
