"""Dubbo's condition router (regproxy.governance.condition): rules from Dubbo's documentation parsed
into the expected model, evaluation tables with the providers each leaves, and malformed rules each
refused with its reason.  Pure: no registry, no sockets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from regproxy import yamlio
from regproxy.dubbo.hessian2 import JavaObject, Long
from regproxy.governance.condition import (
    NOT_FOUND,
    Condition,
    ConditionRouters,
    ConditionRule,
    Destination,
    Matcher,
    java_string,
    parse_condition_rule,
    provider_rule_application,
)
from regproxy.governance.errors import RuleError
from regproxy.registry.url import DubboURL, consumer_url, is_match_glob_pattern

SVC = "com.foo.BarService"


def provider(host: str, port: int = 20880, **params: str) -> DubboURL:
    return DubboURL("dubbo", host, port, SVC, {"interface": SVC, "side": "provider", **params})


def consumer(host: str = "10.20.153.10", **params: str) -> DubboURL:
    return DubboURL("consumer", host, 0, SVC, {"interface": SVC, "side": "consumer", **params})


def rule_text(conditions: Sequence[Any], **fields: Any) -> str:
    return yamlio.dump({**fields, "conditions": list(conditions)})


def rule(*conditions: Any, **fields: Any) -> ConditionRule:
    return parse_condition_rule(rule_text(conditions, **fields))


def addresses(providers: Sequence[DubboURL]) -> list[str]:
    return [f"{p.host}:{p.port}" for p in providers]


def no_draw(total: int) -> int:
    raise AssertionError(f"no weighted draw expected (total {total})")


def scripted(*values: int, totals: list[int] | None = None) -> Callable[[int], int]:
    """A draw that answers ``values`` in turn (recording each total asked for in ``totals``)."""
    answers = iter(values)

    def draw(total: int) -> int:
        if totals is not None:
            totals.append(total)
        return next(answers)

    return draw


# A condition's shape: (when, to) with a matcher as (key, source, "=" values, "!=" values) and a
# destination as (matchers, weight).  A "$name" value shows as "$name" and a range as "low~high".
Shape = tuple[tuple[Any, ...], tuple[Any, ...]]


def matcher_shape(m: Matcher) -> tuple[Any, ...]:
    return (m.key, m.source, tuple(p.text for p in m.matches), tuple(p.text for p in m.mismatches))


def shape(c: Condition) -> Shape:
    return (
        tuple(matcher_shape(m) for m in c.when),
        tuple((tuple(matcher_shape(m) for m in d.match), d.weight) for d in c.to),
    )


def then(*matchers: tuple[Any, ...], weight: int = 100) -> tuple[Any, ...]:
    return (tuple(matchers), weight)


BLOCK: tuple[Any, ...] = ()

# ---------------------------------------------------------------------------------------------------
# Parsing: the condition strings of Dubbo's documentation (v3.0 format), each with its expected shape.
# A fragment the documentation shows alone ("method != getComment") is given the other side it needs.

DOC_CONDITIONS: list[tuple[str, Shape]] = [
    # dubbo-website content/en/overview/core-features/traffic/condition-rule.md (and its zh-cn twin):
    (
        "method=getComment => region=Hangzhou",
        ((("method", "method", ("getComment",), ()),), (then(("region", "url", ("Hangzhou",), ())),)),
    ),
    ("=> status != staging", ((), (then(("status", "url", (), ("staging",))),))),
    ("application = product =>", ((("application", "url", ("product",), ()),), BLOCK)),
    (
        "method != getComment => region=Hangzhou",
        ((("method", "method", (), ("getComment",)),), (then(("region", "url", ("Hangzhou",), ())),)),
    ),
    (
        "host != 10.20.153.10,10.20.153.11 =>",
        ((("host", "url", (), ("10.20.153.10", "10.20.153.11")),), BLOCK),
    ),
    ("host != 10.20.* =>", ((("host", "url", (), ("10.20.*",)),), BLOCK)),
    ("=> region = $region", ((), (then(("region", "url", ("$region",), ())),))),
    (
        "userId = 1~100 => region = hangzhou",
        ((("userId", "url", ("1~100",), ()),), (then(("region", "url", ("hangzhou",), ())),)),
    ),
    (
        "attachments[key] = value => region = hangzhou",
        (
            (("attachments[key]", "attachment", ("value",), ()),),
            (then(("region", "url", ("hangzhou",), ())),),
        ),
    ),
    (
        "arguments[0] = tom => region = hangzhou",
        ((("arguments[0]", "argument", ("tom",), ()),), (then(("region", "url", ("hangzhou",), ())),)),
    ),
    # dubbo-website content/zh-cn/docsv2.7/user/examples/routing-rule.md:
    (
        "application=app1 => address=*:20880",
        ((("application", "url", ("app1",), ()),), (then(("address", "url", ("*:20880",), ())),)),
    ),
    (
        "method=sayHello => address=*:20880",
        ((("method", "method", ("sayHello",), ()),), (then(("address", "url", ("*:20880",), ())),)),
    ),
    ("=> host != 172.22.3.91", ((), (then(("host", "url", (), ("172.22.3.91",))),))),
    (
        "register.ip != 10.20.153.10,10.20.153.11 =>",
        ((("register.ip", "url", (), ("10.20.153.10", "10.20.153.11")),), BLOCK),
    ),
    (
        "register.ip = 10.20.153.10,10.20.153.11 =>",
        ((("register.ip", "url", ("10.20.153.10", "10.20.153.11"), ()),), BLOCK),
    ),
    ("=> host = 172.22.3.1*,172.22.3.2*", ((), (then(("host", "url", ("172.22.3.1*", "172.22.3.2*"), ())),))),
    (
        "application != kylin => host != 172.22.3.95,172.22.3.96",
        (
            (("application", "url", (), ("kylin",)),),
            (then(("host", "url", (), ("172.22.3.95", "172.22.3.96"))),),
        ),
    ),
    (
        "method = find*,list*,get*,is* => host = 172.22.3.94,172.22.3.95,172.22.3.96",
        (
            (("method", "method", ("find*", "list*", "get*", "is*"), ()),),
            (then(("host", "url", ("172.22.3.94", "172.22.3.95", "172.22.3.96"), ())),),
        ),
    ),
    (
        "method != find*,list*,get*,is* => host = 172.22.3.97,172.22.3.98",
        (
            (("method", "method", (), ("find*", "list*", "get*", "is*")),),
            (then(("host", "url", ("172.22.3.97", "172.22.3.98"), ())),),
        ),
    ),
    (
        "application = bops => host = 172.22.3.91,172.22.3.92,172.22.3.93",
        (
            (("application", "url", ("bops",), ()),),
            (then(("host", "url", ("172.22.3.91", "172.22.3.92", "172.22.3.93"), ())),),
        ),
    ),
    (
        "host != 172.22.3.* => host != 172.22.3.*",
        ((("host", "url", (), ("172.22.3.*",)),), (then(("host", "url", (), ("172.22.3.*",))),)),
    ),
    ("=> host = $host", ((), (then(("host", "url", ("$host",), ())),))),
    # dubbo-website content/zh-cn/docsv2.7/user/examples/routing-rule-deprecated.md (2.6 rules):
    (
        "host = 10.20.153.10 => host = 10.20.153.11",
        ((("host", "url", ("10.20.153.10",), ()),), (then(("host", "url", ("10.20.153.11",), ())),)),
    ),
    # Dubbo's ConditionStateRouterTest: "&" joins pairs, the same key twice merges its values,
    # "true" as when and "false" as then, and "methods" reads the invoked method too.
    (
        "host = 2.2.2.2,1.1.1.1,3.3.3.3 & host !=1.1.1.1 => host = 1.2.3.4",
        (
            (("host", "url", ("2.2.2.2", "1.1.1.1", "3.3.3.3"), ("1.1.1.1",)),),
            (then(("host", "url", ("1.2.3.4",), ())),),
        ),
    ),
    ("true => host = 1.2.3.4", ((), (then(("host", "url", ("1.2.3.4",), ())),))),
    ("host = 1.1.1.1 => false", ((("host", "url", ("1.1.1.1",), ()),), BLOCK)),
    (
        "methods=getFoo => host = 1.2.3.4",
        ((("methods", "method", ("getFoo",), ()),), (then(("host", "url", ("1.2.3.4",), ())),)),
    ),
    (
        "attachments[user_id] = ~100 => region = hangzhou",
        (
            (("attachments[user_id]", "attachment", ("~100",), ()),),
            (then(("region", "url", ("hangzhou",), ())),),
        ),
    ),
    # ConditionStateRouter.init drops "consumer." and "provider." (what the 2.6 Dubbo Admin wrote):
    (
        "consumer.host = 10.0.16.40 & consumer.host != 10.0.16.41"
        " => provider.host = 10.0.16.* & provider.host != 10.0.15.*",
        (
            (("host", "url", ("10.0.16.40",), ("10.0.16.41",)),),
            (then(("host", "url", ("10.0.16.*",), ("10.0.15.*",))),),
        ),
    ),
    # "method" on the then side is a provider URL parameter (there is no invocation there):
    ("=> method = sayHello", ((), (then(("method", "url", ("sayHello",), ())),))),
    ("=>", ((), BLOCK)),
]


@pytest.mark.parametrize(("text", "expected"), DOC_CONDITIONS, ids=[t for t, _ in DOC_CONDITIONS])
def test_documented_conditions_parse(text: str, expected: Shape) -> None:
    parsed = rule(text)
    assert parsed.conditions[0].text == text
    assert shape(parsed.conditions[0]) == expected


def test_documented_full_rule_v30() -> None:
    # dubbo-website content/en/overview/core-features/traffic/condition-rule.md, the opening example.
    parsed = parse_condition_rule(
        "configVersion: v3.0\n"
        "scope: service\n"
        "force: true\n"
        "runtime: true\n"
        "enabled: true\n"
        "key: org.apache.dubbo.samples.CommentService\n"
        "conditions:\n"
        "  - method=getComment => region=Hangzhou\n"
    )
    assert (parsed.config_version, parsed.multi_destination, parsed.scope, parsed.key) == (
        "v3.0",
        False,
        "service",
        "org.apache.dubbo.samples.CommentService",
    )
    assert (parsed.force, parsed.runtime, parsed.enabled, parsed.priority) == (True, True, True, 0)
    assert [c.text for c in parsed.conditions] == ["method=getComment => region=Hangzhou"]


def test_documented_application_and_service_rules_with_document_markers() -> None:
    # dubbo-website content/zh-cn/docsv2.7/user/examples/routing-rule.md: "---" ... "..." and comments.
    app = parse_condition_rule(
        "# app1的消费者只能消费所有端口为20880的服务实例\n"
        "---\n"
        "scope: application\n"
        "force: true\n"
        "runtime: true\n"
        "enabled: true\n"
        "key: governance-conditionrouter-consumer\n"
        "conditions:\n"
        "  - application=app1 => address=*:20880\n"
        "  - application=app2 => address=*:20881\n"
        "...\n"
    )
    assert (app.scope, app.key, app.config_version) == (
        "application",
        "governance-conditionrouter-consumer",
        "",
    )
    assert [c.text for c in app.conditions] == [
        "application=app1 => address=*:20880",
        "application=app2 => address=*:20881",
    ]
    service = parse_condition_rule(
        "---\nscope: service\nforce: true\nruntime: true\nenabled: true\n"
        "key: org.apache.dubbo.samples.governance.api.DemoService\n"
        "conditions:\n  - method=sayHello => address=*:20880\n  - method=sayHi => address=*:20881\n...\n"
    )
    assert service.scope == "service" and len(service.conditions) == 2
    assert service.request_reads == {"method"}


def test_dubbo_admin_output_and_defaults() -> None:
    # dubbo-admin's RoutingRule written by YamlParser.dumpAsMap: no configVersion, fields sorted.
    parsed = parse_condition_rule(
        "conditions:\n- => host != 172.22.3.91\nenabled: false\nforce: false\n"
        "key: org.apache.dubbo.demo.DemoService\npriority: 3\nruntime: false\nscope: service\n"
    )
    assert (parsed.enabled, parsed.force, parsed.runtime, parsed.priority) == (False, False, False, 3)
    # AbstractRouterRule's defaults: enabled, not force, runtime, priority 0; "true"/"false" strings
    # are read as booleans (Boolean.parseBoolean) and "5" as an int (Integer.parseInt).
    defaults = parse_condition_rule("conditions: ['=> a = b']")
    assert (defaults.enabled, defaults.force, defaults.runtime, defaults.priority, defaults.scope) == (
        True,
        False,
        True,
        0,
        "",
    )
    quoted = parse_condition_rule("force: 'TRUE'\nenabled: 'false'\npriority: '-5'\nconditions: ['=> a = b']")
    assert (quoted.force, quoted.enabled, quoted.priority) == (True, False, -5)


def test_folded_conditions_from_the_parser_javadoc() -> None:
    # ConditionRuleParser's javadoc writes conditions as folded scalars.
    parsed = parse_condition_rule(
        "scope: application\nruntime: true\nforce: false\nconditions:\n  - >\n    method!=sayHello =>\n"
    )
    assert shape(parsed.conditions[0]) == ((("method", "method", (), ("sayHello",)),), BLOCK)


def test_v31_rules_parse() -> None:
    # dubbo-samples 4-governance/dubbo-samples-configconditionrouterv31 (ZKTools.generateAppevelRouter).
    sample = parse_condition_rule(
        "configVersion: v3.1\nscope: application\nkey: governance-conditionrouterv31-consumer\n"
        "force: false\nruntime: true\nenabled: true\nconditions:\n"
        "  - from:\n      match: env=gray\n    to:\n      - match: env!=$env\n        weight: 100"
    )
    assert sample.multi_destination and sample.config_version == "v3.1"
    assert [shape(c) for c in sample.conditions] == [
        ((("env", "url", ("gray",), ()),), (then(("env", "url", (), ("$env",))),)),
    ]
    # Dubbo's ConditionStateRouterTestV31.testParseRawRule: a null from.match is every request, a
    # to entry without weight weighs 100 (Constants.DefaultRouteConditionSubSetWeight).
    raw = parse_condition_rule(
        "configVersion: v3.1\nscope: service\nforce: false\nruntime: true\nenabled: true\nkey: shop\n"
        "conditions:\n  - from:\n      match:\n    to:\n"
        "      - match: region=$region & version=v1\n"
        "      - match: region=$region & version=v2\n        weight: 200\n"
        "      - match: region=$region & version=v3\n        weight: 300\n"
        "  - from:\n      match: region=beijing & version=v1\n    to:\n"
        "      - match: env=$env & region=beijing\n"
    )
    first, second = raw.conditions
    assert first.when == ()
    assert [d.weight for d in first.to] == [100, 200, 300]
    assert [matcher_shape(m) for m in first.to[1].match] == [
        ("region", "url", ("$region",), ()),
        ("version", "url", ("v2",), ()),
    ]
    assert len(second.when) == 2 and len(second.to) == 1
    assert raw.randomized and not raw.request_dependent
    # ConditionStateRouterTestV31.testTrafficDisabledAndIgnoreConditionRouteForce: a condition with
    # from and no to blocks; one with to and no from applies to every request.
    blocks = parse_condition_rule(
        "configVersion: v3.1\nconditions:\n  - from:\n      match: host=127.0.0.1\n"
        "  - to:\n      - match: region!=beijing\n"
    )
    assert [shape(c) for c in blocks.conditions] == [
        ((("host", "url", ("127.0.0.1",), ()),), BLOCK),
        ((), (then(("region", "url", (), ("beijing",))),)),
    ]


def test_v31_weights_and_empty_matches() -> None:
    parsed = parse_condition_rule(
        "configVersion: V3.1\nconditions:\n"
        "  - from: {match: 'true'}\n"
        "    to:\n"
        "      - {match: '', weight: 0}\n"  # ConditionSubSet: weight <= 0 is the default, 100
        "      - {match: 'false', weight: -3}\n"  # MultiDestConditionRouter: "false" is every provider
        "      - {weight: '250'}\n"
        "  - from: null\n"
        "    to: null\n"
    )
    first, second = parsed.conditions
    assert first.when == () and [(d.match, d.weight) for d in first.to] == [((), 100), ((), 100), ((), 250)]
    assert second.when == () and second.to == ()
    assert parsed.config_version == "V3.1"


def test_v27_and_bytes() -> None:
    parsed = parse_condition_rule(b"configVersion: v2.7\nconditions:\n  - '=> host = 1.1.1.1'\n")
    assert not parsed.multi_destination and parsed.config_version == "v2.7"


def test_value_pattern_kinds() -> None:
    # WildcardValuePattern gets the consumer URL only on the then side: "$name" refers to it there and
    # is plain text on the when side; RangeValuePattern takes every value holding "~".
    parsed = rule("region = $region & userId = ~100 => region = $region & userId = 5~10,*x")
    (when_region, when_user), (then_region, then_user) = (
        parsed.conditions[0].when,
        parsed.conditions[0].to[0].match,
    )
    assert (when_region.matches[0].reference, then_region.matches[0].reference) == (None, "region")
    assert [(p.is_range, p.low, p.high) for p in when_user.matches] == [(True, None, 100)]
    assert [(p.is_range, p.low, p.high) for p in then_user.matches] == [(True, 5, 10), (False, None, 0)]


def test_rule_is_immutable_and_hashable() -> None:
    parsed = rule("method = a => host = 1.1.1.1")
    assert hash(parsed) == hash(rule("method = a => host = 1.1.1.1"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.force = True  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------
# Evaluation


P91 = provider("172.22.3.91", region="hangzhou", env="gray")
P94 = provider("172.22.3.94", region="hangzhou", env="normal")
P95 = provider("172.22.3.95", 20881, region="beijing", env="normal", weight="200")
P97 = provider("172.22.3.97", region="beijing", env="gray")
P11 = provider("10.20.153.11", 20881)
PROVIDERS = (P91, P94, P95, P97, P11)
ALL = addresses(PROVIDERS)
ME = consumer("10.20.153.10", application="bops", region="hangzhou", **{"register.ip": "10.20.153.10"})


class Case:
    def __init__(
        self,
        conditions: Sequence[Any],
        expected: Sequence[DubboURL],
        *,
        me: DubboURL = ME,
        method: str = "sayHello",
        arguments: Sequence[object] = (),
        attachments: Mapping[str, object] | None = None,
        blocked: bool = False,
        **fields: Any,
    ) -> None:
        self.conditions = conditions
        self.expected = addresses(expected)
        self.me = me
        self.method = method
        self.arguments = arguments
        self.attachments = attachments or {}
        self.blocked = blocked
        self.fields = fields

    def __repr__(self) -> str:
        return f"{list(self.conditions)!r}"


EVALUATIONS: list[Case] = [
    # then on URL fields and parameters
    Case(["=> host != 172.22.3.91"], (P94, P95, P97, P11)),
    Case(["host = 10.20.153.10 => host = 10.20.153.11"], (P11,)),
    Case(["host = 10.20.153.99 => host = 10.20.153.11"], PROVIDERS),  # when fails: untouched
    Case(["=> address = *:20881"], (P95, P11)),
    Case(["=> port = 20881"], (P95, P11)),
    Case(["=> protocol = dubbo & path = com.foo.*"], PROVIDERS),
    Case(["=> interface = com.foo.BarService"], PROVIDERS),
    Case(["=> host = 172.22.3.9*"], (P91, P94, P95, P97)),
    Case(["=> host = *.97"], (P97,)),
    Case(["=> host = 172.*.95"], (P95,)),
    Case(["=> host = 172.22.3.1*,172.22.3.2*"], PROVIDERS),  # none: force false keeps the list
    Case(["=> host = 172.22.3.1*,172.22.3.2*"], (), blocked=True, force=True),
    Case(["=> region = beijing & env != gray"], (P95,)),
    Case(["=> env != gray"], (P94, P95)),  # a provider without env matches neither = nor !=
    Case(["=> weight = 150~250"], (P95,)),
    Case(["=> weight = ~100"], PROVIDERS),  # only P95 has a weight, and it is 200: nothing, force false
    # $name: the consumer URL's value (getRawParameter)
    Case(["=> region = $region"], (P91, P94)),
    Case(["=> host = $host"], (P94,), me=consumer("172.22.3.94")),
    Case(["=> region = $zone"], PROVIDERS),  # the consumer has no zone: no provider, force false
    # when on the consumer URL
    Case(["application = bops => env = gray"], (P91, P97)),
    Case(["application != bops => env = gray"], PROVIDERS),
    Case(["application != kylin => host != 172.22.3.95,172.22.3.96"], (P91, P94, P97, P11)),
    Case(["register.ip = 10.20.153.10,10.20.153.11 =>"], (), blocked=True),  # blacklist
    Case(["register.ip != 10.20.153.10,10.20.153.11 =>"], PROVIDERS),  # whitelist: listed
    Case(
        ["register.ip != 10.20.153.10,10.20.153.11 =>"],
        (),
        blocked=True,
        me=consumer("10.20.153.12", **{"register.ip": "10.20.153.12"}),
    ),
    Case(["host != 10.20.* => region = beijing"], PROVIDERS),
    Case(["port = 0 => region = beijing"], PROVIDERS),  # a consumer URL has no port key
    Case(["address = 10.20.153.10 & protocol = consumer => region = beijing"], (P95, P97)),
    Case(["application = product =>"], PROVIDERS),
    # when on the method (the invocation), read/write split
    Case(["method = find*,list*,get*,is* => host = 172.22.3.94,172.22.3.95"], (P94, P95), method="findUser"),
    Case(["method = find*,list*,get*,is* => host = 172.22.3.94,172.22.3.95"], PROVIDERS, method="saveUser"),
    Case(["method != find*,list*,get*,is* => host = 172.22.3.97"], (P97,), method="saveUser"),
    Case(["methods = getFoo => host = 172.22.3.97"], (P97,), method="getFoo"),
    Case(
        ["method = findUser => host = 172.22.3.97"], (P97,), method="$invoke", arguments=("findUser", [], [])
    ),
    Case(["method = $echo => host = 172.22.3.97"], (P97,), method="$echo"),
    Case(["host = 10.20.153.10 & method = sayHello => region = beijing"], (P95, P97)),
    Case(["host = 10.20.153.10 & method = sayHi => region = beijing"], PROVIDERS),
    # arguments: String.valueOf(argument)
    Case(["arguments[0] = tom => env = gray"], (P91, P97), arguments=("tom",)),
    Case(["arguments[0] = tom => env = gray"], PROVIDERS, arguments=("jerry",)),
    Case(["arguments[1] = 5 => env = gray"], (P91, P97), arguments=("x", Long(5))),
    Case(["arguments[0] = null => env = gray"], (P91, P97), arguments=(None,)),
    Case(["arguments[0] = true => env = gray"], (P91, P97), arguments=(True,)),
    Case(["arguments[0] = 2.5 => env = gray"], (P91, P97), arguments=(2.5,)),
    Case(
        ["arguments[0] = RED => env = gray"],
        (P91, P97),
        arguments=(JavaObject("com.x.Color", {"name": "RED"}),),
    ),
    Case(["arguments[3] != x => env = gray"], (P91, P97), arguments=("a",)),  # missing: the placeholder
    Case(["arguments[0] = * => env = gray"], (P91, P97)),
    # attachments: string values only
    Case(["attachments[x-env] = gray => env = gray"], (P91, P97), attachments={"x-env": "gray"}),
    Case(["attachments[x-env] = gray => env = gray"], PROVIDERS),
    Case(["attachments[x-env] != gray => env = gray"], PROVIDERS),  # absent: != fails too
    Case(["attachments[timeout] = 3000 => env = gray"], PROVIDERS, attachments={"timeout": 3000}),
    # ranges (RangeValuePattern, Dubbo's ConditionStateRouterTest.testRoute_Range_Pattern)
    Case(["attachments[user_id] = 1~100 => region = hangzhou"], (P91, P94), attachments={"user_id": "80"}),
    Case(["attachments[user_id] = 1~100 => region = hangzhou"], PROVIDERS, attachments={"user_id": "101"}),
    Case(["attachments[user_id] = ~100 => region = hangzhou"], (P91, P94), attachments={"user_id": "1"}),
    Case(["attachments[user_id] = ~100 => region = hangzhou"], (P91, P94), attachments={"user_id": "abc"}),
    Case(["attachments[user_id] = 1~100 => region = hangzhou"], PROVIDERS, attachments={"user_id": "-5"}),
    Case(["attachments[user_id] = 0~9 => region = hangzhou"], PROVIDERS, attachments={"user_id": "9" * 11}),
    Case(
        ["attachments[user_id] = 0~9 => region = hangzhou"],
        (P91, P94),
        attachments={"user_id": "0" * 12 + "7"},
    ),
    # several conditions: each on the previous one's output
    Case(["=> region = hangzhou", "=> env = gray"], (P91,)),
    Case(["=> region = hangzhou", "=> region = beijing"], (P91, P94)),
    Case(["=> region = hangzhou", "=> region = beijing"], (), blocked=True, force=True),
    Case(["=> region = hangzhou", "application = bops =>", "=> env = gray"], (), blocked=True),
    # enabled: false leaves everything as it is
    Case(["=> region = hangzhou"], PROVIDERS, enabled=False),
    Case(["application = bops =>"], PROVIDERS, enabled=False),
    # Dubbo 2.6's prefixes
    Case(["consumer.application = bops => provider.region = beijing"], (P95, P97)),
]


@pytest.mark.parametrize("case", EVALUATIONS, ids=[repr(c) for c in EVALUATIONS])
def test_evaluation(case: Case) -> None:
    parsed = rule(*case.conditions, **case.fields)
    routed = parsed.route(PROVIDERS, case.me, case.method, case.arguments, case.attachments, draw=no_draw)
    assert addresses(routed.providers) == case.expected
    assert (routed.blocked is not None) == case.blocked


def test_blocked_names_the_rule_and_condition() -> None:
    blocking = rule("application = bops =>", key=SVC)
    routed = blocking.route(PROVIDERS, ME)
    assert routed.blocked is not None and routed.blocked.condition is blocking.conditions[0]
    assert str(routed.blocked) == f"{SVC}: condition 'application = bops =>' blocks the request"
    forced = rule("=> region = nowhere", force=True)
    blocked = forced.route(PROVIDERS, ME).blocked
    assert (
        str(blocked)
        == "condition rule: condition '=> region = nowhere' matches no provider and force is true"
    )


def test_no_provider_in_is_no_provider_out() -> None:
    routed = rule("application = bops =>").route((), ME)
    assert routed == ((), None)


def test_v31_weighted_destinations() -> None:
    parsed = parse_condition_rule(
        "configVersion: v3.1\nconditions:\n"
        "  - from: {match: application=bops}\n"
        "    to:\n"
        "      - {match: env=gray, weight: 100}\n"
        "      - {match: env=normal, weight: 900}\n"
        "      - {match: env=staging, weight: 5000}\n"  # no provider: not drawn
    )
    totals: list[int] = []
    gray, normal = addresses((P91, P97)), addresses((P94, P95))
    for r, expected in ((0, gray), (99, gray), (100, normal), (999, normal)):
        assert addresses(parsed.route(PROVIDERS, ME, draw=scripted(r, totals=totals)).providers) == expected
    assert totals == [1000] * 4  # only the destinations that keep a provider count
    # from does not match: untouched, no draw
    assert addresses(parsed.route(PROVIDERS, consumer(application="other"), draw=no_draw).providers) == ALL


def test_v31_single_destination_needs_no_draw_and_force() -> None:
    # Dubbo's ConditionStateRouterTestV31.testMatchAndRouteZero: force true, a destination with no
    # provider empties the list; testMatchRouteZeroAndIgnore: force false skips the condition.
    text = (
        "configVersion: v3.1\nforce: {force}\nconditions:\n"
        "  - from: {{match: region=hangzhou}}\n    to:\n      - {{match: env=gray, weight: 3}}\n"
        "      - {{match: env=ErrTag}}\n"
        "  - from: {{match: region=hangzhou}}\n    to:\n      - {{match: region=nowhere}}\n"
    )
    relaxed = parse_condition_rule(text.format(force="false"))
    assert addresses(relaxed.route(PROVIDERS, ME, draw=no_draw).providers) == addresses((P91, P97))
    strict = parse_condition_rule(text.format(force="true"))
    routed = strict.route(PROVIDERS, ME, draw=no_draw)
    assert routed.providers == () and routed.blocked is not None
    assert routed.blocked.condition is strict.conditions[1]


def test_v31_traffic_disabled_and_match_all() -> None:
    parsed = parse_condition_rule(
        "configVersion: v3.1\nconditions:\n"
        "  - to: [{match: ''}]\n"  # every provider
        "  - from: {match: application=bops}\n"  # no to: blocked
    )
    routed = parsed.route(PROVIDERS, ME)
    assert routed.providers == ()
    assert routed.blocked is not None and routed.blocked.condition is parsed.conditions[1]
    assert parsed.route(PROVIDERS, consumer(application="x")).providers == PROVIDERS


# Dubbo's ConditionStateRouterTestV31: its 40 providers (no port, so "address" is the host) and its
# consumer, with the counts its tests expect.
V31_PROVIDERS = tuple(
    DubboURL.parse(f"dubbo://{host}/com.foo.BarService{query}")
    for host in ("127.0.0.1", "dubbo.apache.org")
    for query in (
        "",
        "",
        *["?env=normal"] * 3,
        *["?region=beijing"] * 3,
        *["?region=beijing&env=gray"] * 4,
        "?region=beijing&env=normal",
        *["?region=hangzhou"] * 2,
        *["?region=hangzhou&env=gray"] * 2,
        *["?region=hangzhou&env=normal"] * 3,
    )
)
V31_CONSUMER = DubboURL.parse("consumer://127.0.0.1/com.foo.BarService?env=gray&region=beijing")


def v31(conditions: str, force: str = "false") -> ConditionRule:
    return parse_condition_rule(
        f"configVersion: v3.1\nscope: service\nforce: {force}\nconditions:\n{conditions}"
    )


def count(predicate: Callable[[str], bool]) -> int:
    return sum(1 for p in V31_PROVIDERS if predicate(str(p)))


def test_dubbo_v31_consequent_and_unmatched_conditions() -> None:
    consequent = v31(
        "  - from: {match: env=gray}\n    to: [{match: env!=gray, weight: 100}]\n"
        "  - from: {match: region=beijing}\n    to: [{match: region=beijing, weight: 100}]\n"
        "  - from:\n    to: [{match: host!=127.0.0.1}]\n"
    )
    expected = count(
        lambda u: "env" in u and "gray" not in u and "region=beijing" in u and "127.0.0.1" not in u
    )
    assert len(consequent.route(V31_PROVIDERS, V31_CONSUMER).providers) == expected == 1
    unmatched = v31(
        "  - from: {match: env!=gray}\n    to: [{match: env=gray, weight: 100}]\n"
        "  - from: {match: region!=beijing}\n    to: [{match: region=beijing, weight: 100}]\n"
        "  - from:\n    to: [{match: host!=127.0.0.1}]\n"
    )
    assert len(unmatched.route(V31_PROVIDERS, V31_CONSUMER).providers) == count(
        lambda u: "127.0.0.1" not in u
    )
    disabled = v31(
        "  - from: {match: host=127.0.0.1}\n"
        "  - from: {match: env=gray}\n    to: [{match: env!=gray, weight: 100}]\n"
        "  - to: [{match: region!=beijing}]\n"
    )
    assert disabled.route(V31_PROVIDERS, V31_CONSUMER).providers == ()


def test_dubbo_v31_multiple_destinations_give_four_sizes() -> None:
    # ConditionStateRouterTestV31.testMultiplyDestination: two conditions of two destinations each
    # leave 8, 6, 4 or 2 providers.
    parsed = v31(
        "  - from: {match: env=gray}\n    to:\n"
        "      - {match: env!=gray, weight: 100}\n      - {match: env=gray, weight: 900}\n"
        "  - from: {match: region=beijing}\n    to:\n"
        "      - {match: region!=beijing, weight: 100}\n      - {match: region=beijing, weight: 200}\n"
    )
    sizes = set()
    for first in (0, 999):
        for second in (0, 299):
            sizes.add(len(parsed.route(V31_PROVIDERS, V31_CONSUMER, draw=scripted(first, second)).providers))
    assert sizes == {8, 6, 4, 2}


def test_routers_run_in_dubbo_chain_order() -> None:
    service = rule("=> region = hangzhou", key=SVC)
    provider_app = rule("=> env = gray", scope="application", key="shop")
    consumer_app = rule("=> region = beijing", scope="application", key="bops", force=True)
    routers = ConditionRouters(service=service, provider_application=provider_app)
    assert addresses(routers.route(PROVIDERS, ME).providers) == addresses((P91,))
    full = ConditionRouters(
        service=service, provider_application=provider_app, consumer_application=consumer_app
    )
    routed = full.route(PROVIDERS, ME)
    assert routed.providers == () and routed.blocked is not None and routed.blocked.rule is consumer_app
    blocking = ConditionRouters(service=rule("application = bops =>"), consumer_application=consumer_app)
    assert blocking.route(PROVIDERS, ME).blocked.rule is blocking.service  # type: ignore[union-attr]
    assert ConditionRouters().route(PROVIDERS, ME) == (PROVIDERS, None)
    assert full.rules == (service, provider_app, consumer_app)


def test_provider_rule_application() -> None:
    # ProviderAppStateRouter.notify: the first provider's application, unless empty or the consumer's.
    shop = provider("1.1.1.1", application="shop")
    assert provider_rule_application((shop, provider("2.2.2.2", application="other")), ME) == "shop"
    assert provider_rule_application((provider("1.1.1.1"), shop), ME) == ""
    assert provider_rule_application((provider("1.1.1.1", application="bops"),), ME) == ""
    assert provider_rule_application((), ME) == ""


@pytest.mark.parametrize(
    ("conditions", "fields", "reads", "randomized"),
    [
        (["=> region = $region", "host = 1.1.1.1 => env = gray"], {}, set(), False),
        (["method = a => env = gray"], {}, {"method"}, False),
        (["methods = a & arguments[0] = 1 => env = gray"], {}, {"method", "arguments"}, False),
        (["attachments[k] = v =>"], {}, {"attachments"}, False),
        (["attachments[k] = v =>"], {"enabled": False}, set(), False),
        (["=> method = a"], {}, set(), False),  # then side: a provider parameter
    ],
)
def test_request_reads(
    conditions: list[str], fields: dict[str, Any], reads: set[str], randomized: bool
) -> None:
    parsed = rule(*conditions, **fields)
    assert parsed.request_reads == reads
    assert parsed.request_dependent == bool(reads)
    assert parsed.randomized == randomized
    assert ConditionRouters(consumer_application=parsed).request_reads == reads


def test_randomized_rules() -> None:
    weighted = parse_condition_rule(
        "configVersion: v3.1\nconditions:\n  - to: [{match: a=b}, {match: a=c}]\n"
    )
    single = parse_condition_rule("configVersion: v3.1\nconditions:\n  - to: [{match: a=b}]\n")
    assert weighted.randomized and not single.randomized
    assert ConditionRouters(service=single, consumer_application=weighted).randomized


def test_consumer_url_from_regproxy() -> None:
    # The consumer URL regproxy builds (registry.url.consumer_url) serves as the when side.
    me = consumer_url(interface=SVC, ip="10.20.153.10", application="bops", pid=1, timestamp_ms=1)
    assert addresses(
        rule("application = bops & side = consumer => env = gray").route(PROVIDERS, me).providers
    ) == (addresses((P91, P97)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tom", "tom"),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (5, "5"),
        (Long(-7), "-7"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        (100.0, "100.0"),
        (0.1, "0.1"),
        (0.001, "0.001"),
        (9.999e-4, "9.999E-4"),
        (1234567.0, "1234567.0"),
        (1e7, "1.0E7"),
        (12345678.9, "1.23456789E7"),
        (1.5e-5, "1.5E-5"),
        (1e21, "1.0E21"),
        (-0.0, "-0.0"),
        (0.0, "0.0"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
        (JavaObject("com.x.Color", {"name": "RED"}), "RED"),
    ],
)
def test_java_string(value: object, expected: str) -> None:
    assert java_string(value) == expected


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, b"x", JavaObject("com.x.User", {"name": "a", "age": 3})])
def test_java_string_of_objects_equals_no_single_value(value: object) -> None:
    assert " " in java_string(value)


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "anything", True),
        ("*", "", True),
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("ab*", "abcd", True),
        ("*cd", "abcd", True),
        ("a*d", "abcd", True),
        ("a*d", "ad", True),
        ("ab*b", "ab", True),  # Dubbo lets prefix and suffix overlap
        ("a*b*c", "a*bxc", True),  # only the last "*" is a wildcard
        ("a*b*c", "axbyc", False),
        (None, "", True),
        (None, "x", False),
        ("", "", True),
        ("x", "", False),
    ],
)
def test_is_match_glob_pattern(pattern: str | None, value: str, expected: bool) -> None:
    assert is_match_glob_pattern(pattern, value) is expected


def test_not_found_placeholder_is_dubbos() -> None:
    assert NOT_FOUND == "dubbo_internal_not_found_argument_condition_value"
    assert rule("arguments[2] = dubbo_internal_* => env = gray").route(PROVIDERS, ME).providers == (P91, P97)


def test_destination_without_matchers_selects_all() -> None:
    assert Destination(()).select(PROVIDERS, ME) == PROVIDERS


# ---------------------------------------------------------------------------------------------------
# Malformed rules: each refused with its reason.

V31 = "configVersion: v3.1\nconditions:\n{}\n"


def cond(text: str) -> str:
    return rule_text([text])


MALFORMED: list[tuple[str, str, str]] = [
    # (rule text, reason, a fragment of the message)
    ("conditions: [", "yaml", "not valid YAML"),
    ("", "yaml", "empty"),
    ("# only a comment\n", "yaml", "empty"),
    ("- '=> a = b'\n", "yaml", "expected a mapping"),
    ("just a string", "yaml", "expected a mapping"),
    ("force: true\nforce: false\nconditions: ['=> a = b']\n", "yaml", "duplicate key 'force'"),
    ("condition: ['=> a = b']\n", "unknown-field", "'condition'"),
    ("rawRule: x\nconditions: ['=> a = b']\n", "unknown-field", "'rawRule'"),
    ("valid: false\nconditions: ['=> a = b']\n", "unknown-field", "'valid'"),
    ("tags: []\nconditions: ['=> a = b']\n", "unknown-field", "'tags'"),
    (V31.format("  - from: {match: a=b}\n    trafficDisable: true"), "unknown-field", "trafficDisable"),
    (V31.format("  - to: [{match: a=b}]\n    ratio: 20"), "unknown-field", "ratio"),
    (V31.format("  - priority: 10\n    to: [{match: a=b}]"), "unknown-field", "priority"),
    (V31.format("  - to: [{match: a=b}]\n    force: true"), "unknown-field", "force"),
    (V31.format("  - from: {matches: a=b}"), "unknown-field", "'matches'"),
    (V31.format("  - to: [{match: a=b, weigth: 5}]"), "unknown-field", "'weigth'"),
    (V31.format("  - when: a=b"), "unknown-field", "'when'"),
    ("force: yes\nconditions: ['=> a = b']\n", "type", "force: expected true or false"),
    ("enabled: 1\nconditions: ['=> a = b']\n", "type", "enabled"),
    ("runtime: null\nforce: maybe\nconditions: ['=> a = b']\n", "type", "force"),
    ("dynamic: sometimes\nconditions: ['=> a = b']\n", "type", "dynamic"),
    ("priority: high\nconditions: ['=> a = b']\n", "type", "priority"),
    ("priority: 1.5\nconditions: ['=> a = b']\n", "type", "priority"),
    ("priority: 99999999999\nconditions: ['=> a = b']\n", "type", "priority"),
    ("conditions: '=> a = b'\n", "type", "expected a list"),
    ("conditions:\n  - host: 1.1.1.1 => a = b\n", "type", "quote"),
    ("conditions:\n  - from: {match: a=b}\n", "type", "configVersion: v3.1"),
    ("conditions: [42]\n", "type", "conditions[0]"),
    ("key: 123\nconditions: ['=> a = b']\n", "type", "key"),
    (V31.format("  - '=> a = b'"), "type", "from and to"),
    (V31.format("  - to: [{match: a=b, weight: heavy}]"), "type", "weight"),
    (V31.format("  - to: [{match: a=b, weight: 1.5}]"), "type", "weight"),
    (V31.format("  - from: env=gray"), "type", "conditions[0].from"),
    (V31.format("  - to: {match: a=b}"), "type", "conditions[0].to"),
    (V31.format("  - to: [null]"), "type", "conditions[0].to[0]"),
    (V31.format("  - from: {match: 5}"), "type", "match"),
    ("configVersion: v3.2\nconditions: ['=> a = b']\n", "version", "'v3.2'"),
    ("configVersion: v4\nconditions: ['=> a = b']\n", "version", "v2.7, v3.0, v3.1"),
    ("configVersion: 3.0\nconditions: ['=> a = b']\n", "version", "the number 3.0"),
    ("configVersion: v3.1.1\nconditions: ['=> a = b']\n", "version", "'v3.1.1'"),
    ("scope: consumer\nconditions: ['=> a = b']\n", "scope", "'consumer'"),
    ("scope: [service]\nconditions: ['=> a = b']\n", "scope", "scope"),
    ("scope: service\n", "condition", "conditions: missing"),
    # Dubbo does not parse the conditions of a disabled rule; regproxy refuses them all the same.
    ("enabled: false\nconditions: ['host => a = b']\n", "condition", "'host' has no"),
    ("conditions: []\n", "condition", "conditions: empty"),
    ("configVersion: v3.1\nconditions: []\n", "condition", "conditions: empty"),
    (cond("host = 1.1.1.1"), "condition", "no '=>'"),
    (cond("a = 1 => b = 2 => c = 3"), "condition", "more than one '=>'"),
    (cond("host => a = b"), "condition", "'host' has no '=' or '!=' value"),
    (cond("host = => a = b"), "condition", "stray '='"),
    (cond("= 1.1.1.1 => a = b"), "condition", "before any key"),
    (cond("host == 1.1.1.1 => a = b"), "condition", "unknown operator '=='"),
    (cond("host = a,,b =>"), "condition", "unknown operator ',,'"),
    (cond("host = a & => b = c"), "condition", "stray '&'"),
    (cond("host = a b => x = y"), "condition", "'b' has no '=' or '!=' value"),
    (cond("host = a host = b =>"), "condition", "given again without '&'"),
    (cond("host = a & method, b =>"), "condition", "',' must follow a value"),
    (cond("host != a &!method = b =>"), "condition", "unknown operator '&!'"),
    (cond("=> arguments[0] = a"), "condition", "then side"),
    (cond("=> attachments[k] = a"), "condition", "then side"),
    (cond("arguments[0].name = x =>"), "condition", "arguments[N]"),
    (cond("arguments = b =>"), "condition", "arguments[N]"),
    (cond("arguments[99999999999] = b =>"), "condition", "arguments[N]"),
    (cond("attachments[dubbo.tag] = gray =>"), "condition", "'.'"),
    (cond("attachments = a =>"), "condition", "attachments[name]"),
    # dubbo-website condition-rule.md documents "userId = 101~", which Dubbo's RangeValuePattern never
    # matches (String.split drops the empty end):
    (cond("userId = 101~ => region = a"), "condition", "range '101~'"),
    (cond("userId = 1~2~3 =>"), "condition", "range '1~2~3'"),
    (cond("userId = ~ =>"), "condition", "range '~'"),
    (cond("userId = -5~5 =>"), "condition", "bound '-5'"),
    (cond("userId = a~b =>"), "condition", "bound 'a'"),
    (cond("userId = 1~99999999999 =>"), "condition", "bound '99999999999'"),
    (cond("userId = 100~1 =>"), "condition", "empty (100 > 1)"),
    (cond("=> host = $"), "condition", "'$' names no consumer parameter"),
    # ConditionRuleParser's javadoc example "ip=127.0.0.1 => 1.1.1.1": a then part without a value,
    # which Dubbo keeps as a matcher that never matches.
    ("conditions:\n  - >\n    ip=127.0.0.1\n    =>\n    1.1.1.1\n", "condition", "'1.1.1.1' has no"),
    (V31.format("  - from: {match: 'a = = b'}"), "condition", "conditions[0].from"),
    (V31.format("  - to: [{match: a=b}, {match: 'c !'}]"), "condition", "conditions[0].to[1]"),
]


@pytest.mark.parametrize(
    ("text", "reason", "message"), MALFORMED, ids=[f"{r}:{t!r}" for t, r, _ in MALFORMED]
)
def test_malformed_rules_are_refused(text: str, reason: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition_rule(text)
    assert caught.value.reason == reason, caught.value.message
    assert message in caught.value.message


def test_rule_error_names_the_condition_and_source() -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition_rule("conditions:\n  - '=> a = 1'\n  - 'host => a = b'\n")
    assert caught.value.message.startswith("conditions[1] 'host => a = b', when:")
    at = caught.value.at("/dubbo/config/dubbo/com.foo.BarService.condition-router")
    assert str(at).startswith("/dubbo/config/dubbo/com.foo.BarService.condition-router: conditions[1]")


def test_yaml_errors_say_where() -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition_rule("scope: service\nconditions: [\n")
    assert "line" in caught.value.message and caught.value.reason == "yaml"


def test_long_conditions_parse_in_one_pass() -> None:
    # Dubbo's find() rescans a run of separators from each of its positions (quadratic in the run);
    # regproxy reads each character once, so a hostile rule costs its length.
    with pytest.raises(RuleError, match="unknown operator"):
        parse_condition_rule(rule_text(["host " + "=" * 50_000 + " a =>"]))
    many = " & ".join(f"k{i} = v{i}" for i in range(5_000))
    assert len(rule(f"{many} =>").conditions[0].when) == 5_000
