"""Rule keys and locations, as apache/dubbo 3.3 builds them (see regproxy/governance/keys.py)."""

from __future__ import annotations

import pytest

from regproxy.governance.keys import (
    CONDITION_ROUTER,
    CONFIGURATORS,
    TAG_ROUTER,
    legacy_configurators_path,
    service_rule_key,
    split_rule_id,
    zk_rule_path,
)


@pytest.mark.parametrize(
    ("interface", "version", "group", "key"),
    [
        # URL.getColonSeparatedKey appends ':' even for a blank part.
        ("org.apache.dubbo.demo.DemoService", "", "", "org.apache.dubbo.demo.DemoService::"),
        ("org.apache.dubbo.demo.DemoService", "1.0.0", "", "org.apache.dubbo.demo.DemoService:1.0.0:"),
        ("org.apache.dubbo.demo.DemoService", "", "g1", "org.apache.dubbo.demo.DemoService::g1"),
        ("org.apache.dubbo.demo.DemoService", "1.0.0", "g1", "org.apache.dubbo.demo.DemoService:1.0.0:g1"),
    ],
)
def test_service_rule_key_keeps_blank_parts(interface: str, version: str, group: str, key: str) -> None:
    assert service_rule_key(interface, version, group) == key


def test_zookeeper_paths() -> None:
    rule_id = service_rule_key("com.foo.Svc") + CONDITION_ROUTER
    assert zk_rule_path(rule_id) == "/dubbo/config/dubbo/com.foo.Svc::.condition-router"
    assert zk_rule_path("shop-app" + TAG_ROUTER) == "/dubbo/config/dubbo/shop-app.tag-router"
    assert legacy_configurators_path("com.foo.Svc") == "/dubbo/com.foo.Svc/configurators"


def test_split_rule_id() -> None:
    assert split_rule_id("com.foo.Svc:1.0:.configurators") == ("com.foo.Svc:1.0:", CONFIGURATORS)
    assert split_rule_id("shop-app.tag-router") == ("shop-app", TAG_ROUTER)
    for bad in ("com.foo.Svc::", ".tag-router", "app.script-router", ""):
        with pytest.raises(ValueError, match="is not <key>"):
            split_rule_id(bad)
