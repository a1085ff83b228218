"""Route rules: config parsing, compilation and matching (no sockets)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from regproxy.config import Config, ConfigError
from regproxy.routing import Host
from regproxy.routing.from_config import rule_set, static_table
from regproxy.routing.rules import (
    RETRY_CONNECT,
    RETRY_RESET,
    RETRY_UNAVAILABLE,
    Rule,
    RuleSet,
    StringMatch,
    Subset,
    TagIndex,
    subset_hosts,
)

GREET = "org.apache.dubbo.samples.api.GreetingsService"


class Body:
    def __init__(self, attachments: dict[str, Any] | None = None) -> None:
        self._att = attachments or {}
        self.read = False

    @property
    def attachments(self) -> dict[str, Any]:
        self.read = True
        return self._att

    @property
    def group(self) -> str:
        return str(self.attachments.get("group", ""))


def config(*routes: dict[str, Any]) -> Config:
    return Config.from_dict({"clusters": [{"name": "demo"}], "routes": list(routes)})


def test_issue_format_parses_and_compiles() -> None:
    c = config(
        {
            "name": "greet-canary",
            "match": {"service": GREET, "method": "sayHi", "attachments": {"x-env": {"exact": "gray"}}},
            "route": {
                "weighted_subsets": [
                    {"subset": {"env": "gray"}, "weight": 20},
                    {"subset": {"env": "stable"}, "weight": 80},
                ],
                "timeout": "3s",
                "retry": {"attempts": 2, "on": ["connect-failure", "reset", "unavailable"]},
            },
            "fault": {
                "delay": {"fixed": "100ms", "percentage": 10},
                "abort": {"status": 70, "percentage": 5},
            },
            "rate_limit": {"requests_per_second": 100},
        }
    )
    (rule,) = rule_set(c).rules
    assert rule.cluster is None and rule.timeout_ms == 3000 and rule.retries == 2
    assert rule.retry_on == RETRY_CONNECT | RETRY_RESET | RETRY_UNAVAILABLE
    assert [s.label for s in rule.subsets] == ["env=gray", "env=stable"]
    assert rule.fault is not None and rule.fault.delay_ms == 100 and rule.fault.abort_percent == 5
    assert rule.rate_limit is not None and rule.rate_limit.burst == 100
    assert rule.needs_attachments and rule.rich
    # Not expressible by the table: only a rule.
    assert static_table(c).routes == ()


@pytest.mark.parametrize(
    ("value", "ms"), [("3s", 3000), ("250ms", 250), (1500, 1500), ("1.5s", 1500), ("2m", 120000)]
)
def test_route_timeout_takes_durations_with_units_or_milliseconds(value: Any, ms: int) -> None:
    c = config({"name": "r", "route": {"timeout": value}})
    assert c.routes[0].timeout == ms


@pytest.mark.parametrize(
    ("route", "key", "text"),
    [
        ({"name": "r", "route": {"timeout": "soon"}}, "routes[0].route.timeout", "not a duration"),
        (
            {"name": "r", "match": {"service": {"regex": "("}}, "route": {}},
            "routes[0].match.service",
            "bad regex",
        ),
        (
            {"name": "r", "match": {"service": {"exact": "a", "prefix": "b"}}, "route": {}},
            "routes[0].match.service",
            "exactly one",
        ),
        ({"name": "r", "route": {"retry": {"on": ["sometimes"]}}}, "routes[0].route.retry.on[0]", ""),
        ({"name": "r", "cluster": "demo", "route": {"cluster": "demo"}}, "routes[0]", "not both"),
        (
            {"name": "r", "route": {"weighted_subsets": [{"subset": {"a": "b"}, "weight": 0}]}},
            "routes[0].route.weighted_subsets",
            "all be 0",
        ),
        (
            {"name": "r", "fault": {"abort": {"status": 70, "percentage": 101}}},
            "routes[0].fault.abort.percentage",
            "",
        ),
        ({"name": "r"}, "routes[0].cluster", "required unless"),
    ],
)
def test_rule_errors_are_named(route: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(route)
    assert any(path == key and text in problem for path, problem in info.value.errors), info.value.errors


def test_plain_routes_keep_the_table_fast_path() -> None:
    c = config({"name": "old", "match": {"service": GREET}, "cluster": "demo", "retries": 2})
    assert [r.name for r in static_table(c).routes] == ["old"]
    rules = rule_set(c)
    assert rules.lookup(GREET) is None  # the table decides; no rule work per request
    assert rules.lookup("other.Service") is None


def test_lookup_orders_exact_wildcard_and_patterns() -> None:
    c = config(
        {"name": "a", "match": {"service": {"prefix": "org."}}, "fault": {"abort": {"percentage": 1}}},
        {"name": "b", "match": {"service": "*"}, "cluster": "demo"},
        {
            "name": "c",
            "match": {"service": GREET},
            "cluster": "demo",
            "rate_limit": {"requests_per_second": 1},
        },
    )
    rules = rule_set(c)
    cands = rules.lookup(GREET)
    assert cands is not None and [r.name for r in cands] == ["a", "b", "c"]
    assert rules.lookup("com.Other") is None  # only the plain "*" route applies


def test_matching_method_version_attachments() -> None:
    rule = Rule(
        name="r",
        service=StringMatch("exact", GREET),
        version="1.0.0",
        method=StringMatch("regex", "say.*"),
        attachments=(("x-env", StringMatch("prefix", "gr")), ("trace", StringMatch("present"))),
    )
    assert rule.matches("1.0.0", "sayHi", Body({"x-env": "gray", "trace": 1}))
    assert not rule.matches("1.0.0", "sayHi", Body({"x-env": "gray"}))
    assert not rule.matches("1.0.0", "hello", Body({"x-env": "gray", "trace": 1}))
    assert not rule.matches("2.0.0", "sayHi", Body({"x-env": "gray", "trace": 1}))
    body = Body()
    plain = Rule(name="p", service=StringMatch("exact", GREET))
    assert plain.matches("", "x", body) and not body.read  # no attachment parsing when not needed


def test_weighted_choice() -> None:
    rule = Rule(
        name="r",
        service=StringMatch("exact", GREET),
        subsets=(Subset((("e", "a"),), 1), Subset((("e", "b"),), 3)),
    )
    rng = random.Random(7)
    picks = [rule.choose_subset(rng) for _ in range(10000)]
    share = sum(p is rule.subsets[0] for p in picks) / 10000
    assert abs(share - 0.25) < 0.02


def test_subset_and_tag_index() -> None:
    hosts = (
        Host("10.0.0.1:1", metadata={"env": "gray", "dubbo.tag": "t1"}),
        Host("10.0.0.2:1", metadata={"env": "stable"}),
        Host("10.0.0.3:1", metadata={"env": "stable", "zone": "a"}),
    )
    assert [h.address for h in subset_hosts(hosts, Subset((("env", "stable"), ("zone", "a"))))] == [
        "10.0.0.3:1"
    ]
    assert TagIndex.build(hosts[1:]) is None
    idx = TagIndex.build(hosts)
    assert idx is not None
    assert idx.select({"dubbo.tag": "t1"})[1] == hosts[:1]
    assert idx.select({"dubbo.tag": "t2"})[1] == hosts[1:]
    assert idx.select({"dubbo.tag": "t2", "dubbo.force.tag": "true"})[1] == ()
    assert idx.select({})[1] == hosts[1:]


def test_duplicate_rule_names_rejected() -> None:
    r = Rule(name="x", service=StringMatch("exact", "*"))
    with pytest.raises(ValueError, match="duplicate rule"):
        RuleSet([r, r])
