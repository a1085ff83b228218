"""Dubbo 3's migration rule (regproxy/governance/migration.py): rules as Dubbo's source, tests and
documentation write them, what Dubbo 3.3 looks up for one consumer, and the address-list decision."""

from __future__ import annotations

import pytest

from regproxy.governance.errors import RuleError
from regproxy.governance.migration import (
    DEFAULT_SETTING,
    NEAREST_STEP,
    Migration,
    MigrationDefaults,
    MigrationRule,
    MigrationSetting,
    MigrationStep,
    Source,
    SubMigrationRule,
    call_source,
    display_service_key,
    next_step,
    parse_migration_rule,
    preferred_source,
    rule_key,
    should_migrate,
    sources,
)

IF = MigrationStep.FORCE_INTERFACE
AF = MigrationStep.APPLICATION_FIRST
FA = MigrationStep.FORCE_APPLICATION
F03 = 0.30000001192092896  # 0.3f, what Float.valueOf("0.3") holds

# The Javadoc of org.apache.dubbo.registry.client.migration.model.MigrationRule (Dubbo 3.3), the
# same rule MigrationRuleTest.test_parse parses.
JAVADOC_RULE = """\
key: demo-consumer
step: APPLICATION_FIRST
threshold: 1.0
proportion: 60
delay: 60
force: false
interfaces:
  - serviceKey: DemoService:1.0.0
    threshold: 0.5
    proportion: 30
    delay: 30
    force: true
    step: APPLICATION_FIRST
  - serviceKey: GreetingService:1.0.0
    step: FORCE_APPLICATION
applications:
 - serviceKey: TestApplication
   threshold: 0.3
   proportion: 20
   delay: 10
   force: false
   step: FORCE_INTERFACE
"""

# "Application-level service discovery address migration rules" (dubbo.apache.org, Java SDK
# upgrades-and-compatibility/service-discovery/service-discovery-rule): its example rule.
DOCS_RULE = """\
key: demo-consumer
step: APPLICATION_FIRST
threshold: 1.0
proportion: 60
delay: 0
force: false
interfaces:
  - serviceKey: DemoService:1.0.0
    threshold: 0.5
    proportion: 30
    delay: 0
    force: true
    step: APPLICATION_FIRST
  - serviceKey: GreetingService:1.0.0
    step: FORCE_APPLICATION
"""

# dubbo-common/src/test/resources/dubbo-migration.yaml (the local migration rule file).
LOCAL_FILE_RULE = "key: demo-consumer\nstep: APPLICATION_FIRST\nthreshold: 0.1\n"

# ZKTools.testMigrationRule (dubbo-registry-api tests).
ZKTOOLS_RULE = """\
key: demo-consumer
interfaces:
  - serviceKey: org.apache.dubbo.demo.DemoService:1.0.0
    threshold: 1.0
    step: FORCE_APPLICATION"""


def test_rule_key_and_display_service_key() -> None:
    # MigrationRuleListener.init: <application>.migration; URL.getDisplayServiceKey: no group.
    assert rule_key("demo-consumer") == "demo-consumer.migration"
    assert display_service_key("DemoService", "1.0.0") == "DemoService:1.0.0"
    assert display_service_key("DemoService") == "DemoService"


def test_javadoc_rule_parses_as_migration_rule_test_says() -> None:
    rule = parse_migration_rule(JAVADOC_RULE)
    assert rule == MigrationRule(
        key="demo-consumer",
        step=AF,
        threshold=1.0,
        proportion=60,
        delay=60,
        force=False,
        interfaces=(
            SubMigrationRule("DemoService:1.0.0", AF, 0.5, 30, 30, True),
            SubMigrationRule("GreetingService:1.0.0", FA),
        ),
        applications=(SubMigrationRule("TestApplication", IF, F03, 20, 10, False),),
    )


# (rule, display service key, provider applications from the mapping) -> what applies.
# The first four rows are MigrationRuleTest.test_parse's assertions; the rest follow getValue.
LOOKUPS = [
    (JAVADOC_RULE, "DemoService:1.0.0", (), Migration(AF, 0.5, 30, 30, True)),
    # An interface entry that sets only step: everything else from the rule.
    (JAVADOC_RULE, "GreetingService:1.0.0", (), Migration(FA, 1.0, 60, 60, False)),
    # No interface entry; the mapping names TestApplication: its entry.
    (JAVADOC_RULE, "GreetingService:1.0.1", ("TestApplication",), Migration(IF, F03, 20, 10, False)),
    # Neither: the rule's own values.
    (JAVADOC_RULE, "GreetingService:1.0.1", (), Migration(AF, 1.0, 60, 60, False)),
    # The interface entry's fields come before the application entry's, field by field.
    (JAVADOC_RULE, "GreetingService:1.0.0", ("TestApplication",), Migration(FA, F03, 20, 10, False)),
    # The display key has no group and needs the version: a bare interface does not match.
    (JAVADOC_RULE, "DemoService", (), Migration(AF, 1.0, 60, 60, False)),
    (DOCS_RULE, "DemoService:1.0.0", (), Migration(AF, 0.5, 30, 0, True)),
    (DOCS_RULE, "GreetingService:1.0.0", (), Migration(FA, 1.0, 60, 0, False)),
    (LOCAL_FILE_RULE, "any.Service", (), Migration(AF, 0.10000000149011612, 100, 0, False)),
    (ZKTOOLS_RULE, "org.apache.dubbo.demo.DemoService:1.0.0", (), Migration(FA, 1.0, 100, 0, False)),
    # ...and for another service of that consumer, the defaults: APPLICATION_FIRST, threshold 0.0.
    (ZKTOOLS_RULE, "org.apache.dubbo.demo.GreetingService", (), Migration(AF, 0.0, 100, 0, False)),
    # "" is Dubbo's INIT rule: all defaults.
    ("", "DemoService:1.0.0", ("TestApplication",), Migration(AF, 0.0, 100, 0, False)),
]


@pytest.mark.parametrize(("text", "service_key", "apps", "expected"), LOOKUPS)
def test_lookup(text: str, service_key: str, apps: tuple[str, ...], expected: Migration) -> None:
    assert parse_migration_rule(text).lookup(service_key, apps) == expected


def test_application_entries_in_mapping_order_sorted() -> None:
    # getRemoteMapping is a TreeSet: the alphabetically first application with a value wins, per field.
    rule = parse_migration_rule(
        "applications:\n"
        "  - {serviceKey: zeta, step: FORCE_INTERFACE, proportion: 10}\n"
        "  - {serviceKey: alpha, step: FORCE_APPLICATION}\n"
    )
    assert rule.lookup("S", ["zeta", "alpha", "other"]) == Migration(FA, 0.0, 10, 0, False)


def test_defaults_are_regproxys_configuration() -> None:
    # The consumer URL's migration.* parameters / dubbo.application.migration.* properties.
    defaults = MigrationDefaults(step=FA, threshold=0.8, proportion=50, delay=5, force=True)
    assert MigrationRule().lookup("S", (), defaults) == Migration(FA, 0.8, 50, 5, True)
    rule = parse_migration_rule("step: FORCE_INTERFACE")
    assert rule.lookup("S", (), defaults) == Migration(IF, 0.8, 50, 5, True)


@pytest.mark.parametrize(
    ("text", "attribute", "expected"),
    [
        ("threshold: '0.5'", "threshold", 0.5),  # Float.valueOf(value.toString()) takes strings
        ("threshold: 1", "threshold", 1.0),
        ("threshold: ' 2.5e-1 '", "threshold", 0.25),  # Float.valueOf trims
        ("proportion: '30'", "proportion", 30),
        ("delay: 0", "delay", 0),
        ("force: 'TRUE'", "force", True),
        ("force: false", "force", False),
    ],
)
def test_values_dubbo_converts(text: str, attribute: str, expected: object) -> None:
    value = getattr(parse_migration_rule(text), attribute)
    assert value == expected and type(value) is type(expected)


MALFORMED = [
    # (text, reason, the field the message names)
    ("step: application_first", "value", "step"),  # MigrationStep.valueOf is case-sensitive
    ("step: FORCE_APP", "value", "step"),
    ("step: 1", "type", "step"),
    ("threshold: abc", "type", "threshold"),  # NumberFormatException: Dubbo keeps the old rule
    ("threshold: 0.5f", "type", "threshold"),  # Java-only literal
    ("threshold: .nan", "value", "threshold"),
    ("threshold: 1e40", "value", "threshold"),  # beyond Float.MAX_VALUE: Infinity
    ("threshold: -1", "value", "threshold"),  # the comparator ignores negatives
    ("threshold: true", "type", "threshold"),
    ("proportion: 60.0", "type", "proportion"),  # Integer.valueOf("60.0") throws
    ("proportion: 101", "value", "proportion"),
    ("proportion: -1", "value", "proportion"),
    ("delay: -5", "value", "delay"),
    ("delay: 3000000000", "type", "delay"),  # not a Java int
    ("force: yes", "type", "force"),  # Boolean.valueOf("yes") is false
    ("key: 12", "type", "key"),  # (String) cast
    ("steps: FORCE_APPLICATION", "unknown-field", "steps"),
    ("interfaces: {serviceKey: S}", "type", "interfaces"),  # not a List: Dubbo ignores it
    ("applications: S", "type", "applications"),
    ("interfaces: [S]", "type", "interfaces[0]"),  # not a Map: ClassCastException
    ("interfaces: [{step: FORCE_APPLICATION}]", "missing-field", "interfaces[0].serviceKey"),
    ("interfaces: [{serviceKey: ' '}]", "missing-field", "interfaces[0].serviceKey"),
    ("interfaces: [{serviceKey: 7}]", "type", "interfaces[0].serviceKey"),
    ("interfaces: [{serviceKey: S, step: force_interface}]", "value", "interfaces[0].step"),
    ("interfaces: [{serviceKey: S, threshold: -0.5}]", "value", "interfaces[0].threshold"),
    ("interfaces: [{serviceKey: S, weight: 1}]", "unknown-field", "weight"),
    ("interfaces: [{serviceKey: S}, {serviceKey: S}]", "value", "interfaces[1].serviceKey"),
    # ZKTools.testAppMigrationRule writes name:, which Dubbo never reads (serviceKey stays null).
    ("applications: [{name: demo-provider, step: FORCE_APPLICATION}]", "unknown-field", "name"),
    ("- step: FORCE_APPLICATION", "type", "the rule"),  # a list document
    ("  \n", "type", "the rule"),  # not "": SnakeYAML gives null, parseFromMap throws
    ("step: [", "yaml", "not YAML"),
]


@pytest.mark.parametrize(("text", "reason", "names"), MALFORMED)
def test_malformed(text: str, reason: str, names: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_migration_rule(text)
    assert info.value.reason == reason
    assert names in info.value.message


def test_error_names_its_source() -> None:
    source = "/dubbo/config/DUBBO_SERVICEDISCOVERY_MIGRATION/demo-consumer.migration"
    with pytest.raises(RuleError) as info:
        parse_migration_rule("step: NOPE", source=source)
    assert info.value.source == source
    assert str(info.value).startswith(source + ": ")


# (application count, interface count, threshold) -> shouldMigrate(application, interface).
# The first four rows are DefaultMigrationAddressComparatorTest's.
COMPARISONS = [
    (0, 2, 0.0, False),  # no new addresses: never
    (3, 0, 0.0, True),  # no old addresses: always
    (3, 2, 0.0, True),  # default threshold 0.0
    (1, 2, 0.5, True),  # 0.5 >= 0.5
    (0, 0, 0.0, False),
    (1, 3, 0.5, False),
    (1, 100, 0.0, True),  # one instance is enough under the default
    (3, 10, F03, True),  # 3f/10f == 0.3f exactly
    (2, 3, 0.6666667, True),  # 2f/3f rounds to 0.6666667f
    (2, 3, 0.66666675, False),  # the next float up
    (5, 4, 1.2, True),
    (5, 4, 1.3, False),
]


@pytest.mark.parametrize(("app", "iface", "threshold", "expected"), COMPARISONS)
def test_should_migrate(app: int, iface: int, threshold: float, expected: bool) -> None:
    assert should_migrate(app, iface, threshold) is expected


@pytest.mark.parametrize(
    ("step", "iface", "app", "threshold", "expected"),
    [
        (IF, 0, 5, 0.0, Source.INTERFACE),  # forced: even with no interface addresses
        (FA, 5, 0, 0.0, Source.APPLICATION),
        (AF, 5, 1, 0.0, Source.APPLICATION),
        (AF, 5, 0, 0.0, Source.INTERFACE),
        (AF, 0, 0, 0.0, Source.INTERFACE),
        (AF, 0, 1, 1.0, Source.APPLICATION),
        (AF, 4, 3, 1.0, Source.INTERFACE),
        (AF, 4, 4, 1.0, Source.APPLICATION),
    ],
)
def test_preferred_source(
    step: MigrationStep, iface: int, app: int, threshold: float, expected: Source
) -> None:
    assert preferred_source(step, iface, app, threshold) is expected


@pytest.mark.parametrize(
    ("step", "preferred", "proportion", "draw", "expected"),
    [
        (AF, Source.APPLICATION, 60, 59.9, Source.APPLICATION),
        (AF, Source.APPLICATION, 60, 60.0, Source.APPLICATION),  # "> promotion"
        (AF, Source.APPLICATION, 60, 60.1, Source.INTERFACE),
        (AF, Source.APPLICATION, 100, 99.9, Source.APPLICATION),
        (AF, Source.APPLICATION, 0, 0.5, Source.INTERFACE),
        (FA, Source.APPLICATION, 0, 99.0, Source.APPLICATION),  # only APPLICATION_FIRST splits
    ],
)
def test_call_source(
    step: MigrationStep, preferred: Source, proportion: int, draw: float, expected: Source
) -> None:
    assert call_source(step, preferred, proportion, draw) is expected


def _migration(threshold: float = 0.0, force: bool = False) -> Migration:
    return Migration(AF, threshold, 100, 0, force)


@pytest.mark.parametrize(
    ("current", "requested", "migration", "iface", "app", "expected"),
    [
        (None, FA, _migration(), 5, 0, FA),  # first refer: no interface invoker to compare with
        (None, IF, _migration(), 0, 5, IF),
        (AF, AF, _migration(), 0, 0, AF),
        (FA, FA, _migration(), 5, 0, FA),
        (AF, FA, _migration(), 5, 0, AF),  # no application addresses: stays
        (AF, FA, _migration(force=True), 5, 0, FA),  # force skips the comparison
        (AF, FA, _migration(1.0), 5, 4, AF),
        (AF, FA, _migration(1.0), 5, 5, FA),
        (IF, FA, _migration(), 5, 1, FA),
        (FA, IF, _migration(), 0, 5, FA),  # no interface addresses: stays
        (FA, IF, _migration(), 3, 5, IF),
        (AF, IF, _migration(force=True), 0, 5, IF),
        (FA, AF, _migration(), 5, 0, AF),  # APPLICATION_FIRST is always taken
    ],
)
def test_next_step(
    current: MigrationStep | None,
    requested: MigrationStep,
    migration: Migration,
    iface: int,
    app: int,
    expected: MigrationStep,
) -> None:
    assert next_step(current, requested, migration, iface, app) is expected


def test_regproxy_setting() -> None:
    assert DEFAULT_SETTING is MigrationSetting.BOTH
    assert sources(MigrationSetting.INTERFACE) == {Source.INTERFACE}
    assert sources(MigrationSetting.APPLICATION) == {Source.APPLICATION}
    assert sources(MigrationSetting.BOTH) == {Source.INTERFACE, Source.APPLICATION}
    assert NEAREST_STEP == {
        MigrationSetting.INTERFACE: IF,
        MigrationSetting.APPLICATION: FA,
        MigrationSetting.BOTH: AF,
    }
    # The forced settings use exactly the list their Dubbo step uses, whatever the counts.
    for setting in (MigrationSetting.INTERFACE, MigrationSetting.APPLICATION):
        for iface, app in ((0, 3), (3, 0), (2, 2)):
            assert sources(setting) == {preferred_source(NEAREST_STEP[setting], iface, app, 0.0)}
