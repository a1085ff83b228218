"""Dubbo 3's migration rule (interface-level vs application-level addresses) and regproxy's own setting.

Facts from Dubbo 3.3 (``org.apache.dubbo.registry.client.migration``):

* Where: ``MigrationRuleListener`` reads key ``<consumer application>.migration`` in config-center
  group ``DUBBO_SERVICEDISCOVERY_MIGRATION`` (ZooKeeper ``/dubbo/config/DUBBO_SERVICEDISCOVERY_MIGRATION
  /<app>.migration``).  An empty or deleted rule is ``INIT``: the rule with nothing set, so every
  value comes from the defaults below.  A rule that fails to parse is logged and the previous rule
  kept (``parseRule``): callers should keep the last good rule on RuleError.
* What (``MigrationRule``/``SubMigrationRule.parseFromMap``): ``key``, ``step`` (``MigrationStep``:
  ``FORCE_INTERFACE``, ``APPLICATION_FIRST``, ``FORCE_APPLICATION``), ``threshold`` (a Java
  float), ``proportion``, ``delay`` (seconds), ``force``, and two lists of sub-rules, ``interfaces``
  and ``applications``, each entry a ``serviceKey`` with its own step/threshold/proportion/delay/
  force.  ``key`` is read but never compared with anything.
* Lookup (``MigrationRule.getValue``), per field: the ``interfaces`` entry whose ``serviceKey``
  equals the consumer URL's ``getDisplayServiceKey()`` — ``interface`` or ``interface:version``, the
  group is not part of it — if it sets that field; else the ``applications`` entry of the first
  *provider* application (from the service-name mapping, ``ServiceNameMapping.getRemoteMapping``, a
  ``TreeSet``: sorted) that has one setting that field; else the rule's own value; else the default:

  - step: the consumer URL's ``migration.step``, else ``dubbo.application.migration.step``, else
    ``dubbo.application.service-discovery.migration``, else ``APPLICATION_FIRST``;
  - threshold: the consumer URL's ``migration.threshold``, else -1, which
    ``DefaultMigrationAddressComparator`` (like any negative threshold) replaces with
    ``dubbo.application.migration.threshold``, default **0.0** (Dubbo's documentation says 1.0; the
    code says 0.0, and the code is what runs);
  - proportion: ``migration.promotion``, default 100; delay: ``migration.delay``, default 0;
    force: ``migration.force``, default false.

  :class:`MigrationDefaults` holds these defaults as regproxy's configuration gives them.
* Decision (``DefaultMigrationAddressComparator.shouldMigrate(new, old)``, :func:`should_migrate`):
  false when ``new`` has no addresses; true when ``old`` has none; else ``(float) new / (float) old
  >= threshold`` in Java ``float`` arithmetic.  ``MigrationInvoker.calcPreferredInvoker`` (step
  ``APPLICATION_FIRST``, rerun on every address notification) uses the application-level list when
  ``shouldMigrate(application, interface)``, else the interface-level one (:func:`preferred_source`).
  So with the default threshold 0.0 one application-level address is enough to switch.
* Per call (``MigrationInvoker.invoke``, :func:`call_source`): in ``APPLICATION_FIRST`` with
  ``proportion < 100``, a call whose ``ThreadLocalRandom.nextDouble(100)`` exceeds the proportion
  goes to the interface-level list whatever was preferred.
* Step changes (``MigrationRuleHandler.refreshInvoker``, ``migrateToForce*Invoker``,
  :func:`next_step`): ``APPLICATION_FIRST`` is always taken.  A ``FORCE_*`` step is taken at once
  when the other kind of subscription does not exist (first refer, or already in that step);
  otherwise, after ``delay`` seconds, only with ``force`` or when ``shouldMigrate(target, other)``
  holds — else the consumer stays in its current step.

Parsing is stricter than Dubbo (``MigrationRule.parse`` is SnakeYAML plus casts and
``valueOf``), in the way of :mod:`regproxy.governance.fields`:

* where Dubbo throws and keeps the previous rule, regproxy raises RuleError too: a step that is not
  exactly one of the three names (``MigrationStep.valueOf`` is case-sensitive), a threshold or
  integer that does not parse, ``key``/``serviceKey`` not a string, a sub-rule that is not a mapping,
  a document that is not a mapping (whitespace-only text included: only ``""`` is ``INIT``);
* where Dubbo silently ignores or misreads, regproxy refuses: unknown fields (Dubbo's own
  ``ZKTools`` writes ``applications: [{name: demo-provider}]``, which Dubbo reads as a sub-rule with
  no ``serviceKey`` that never matches), ``interfaces``/``applications`` that are not lists
  (ignored by Dubbo), a sub-rule without ``serviceKey`` (never matches), two sub-rules with the same
  ``serviceKey`` in one list (the later silently replaces the earlier), ``force`` other than
  true/false (``Boolean.valueOf`` makes it false), a negative threshold (ignored by the comparator,
  but it still hides the rule's own threshold), a threshold that is NaN, infinite or beyond a Java
  float, or written in Java-only forms (``0.5f``, hex), a proportion outside 0..100 (above 100 acts
  as 100, below 0 sends every call to interface level) and a negative delay (acts as 0).

Dubbo's documentation marks ``key`` and ``step`` required; the code does not require them, and
neither does regproxy.

regproxy's own setting (issue 19: "A migration setting per subscription or globally (``interface``,
``application``, ``both``, default ``both``) says which to use"), :class:`MigrationSetting`:

* ``interface`` — interface-level addresses only; Dubbo's ``FORCE_INTERFACE``.
* ``application`` — application-level addresses only; Dubbo's ``FORCE_APPLICATION``.
* ``both`` (default) — the union of both lists, a provider found both ways being one host (the
  issue's "Providers found both ways are one host" only means something when the two are used
  together).  Its nearest Dubbo step is ``APPLICATION_FIRST``, which also subscribes both ways but
  then uses *one* list (:func:`preferred_source`).  regproxy takes the union instead because a
  sidecar serves mixed fleets: under ``APPLICATION_FIRST`` a single application-level provider
  (dubbo-go 3.1+ registers only that way) would hide every interface-only provider (Dubbo 2.x) of
  the same service.  No threshold or proportion applies to ``both``.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from .errors import RuleError
from .fields import Fields, load_document

__all__ = [
    "DEFAULTS",
    "DEFAULT_SETTING",
    "NEAREST_STEP",
    "RULE_GROUP",
    "RULE_SUFFIX",
    "Migration",
    "MigrationDefaults",
    "MigrationRule",
    "MigrationSetting",
    "MigrationStep",
    "Source",
    "SubMigrationRule",
    "call_source",
    "display_service_key",
    "next_step",
    "parse_migration_rule",
    "preferred_source",
    "rule_key",
    "should_migrate",
    "sources",
]

RULE_SUFFIX: Final = ".migration"  # MigrationRuleListener.init
RULE_GROUP: Final = "DUBBO_SERVICEDISCOVERY_MIGRATION"  # MigrationRuleListener

_VALUE_FIELDS = frozenset({"step", "threshold", "proportion", "delay", "force"})
_RULE_FIELDS = _VALUE_FIELDS | {"key", "interfaces", "applications"}
_SUB_FIELDS = _VALUE_FIELDS | {"serviceKey"}
# What regproxy takes for Float.valueOf: plain decimal notation (Java also takes "0.5f", "0x1p-1",
# "NaN", "Infinity"; none of them is how anyone means a threshold).
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class MigrationStep(StrEnum):
    """``MigrationStep``."""

    FORCE_INTERFACE = "FORCE_INTERFACE"
    APPLICATION_FIRST = "APPLICATION_FIRST"
    FORCE_APPLICATION = "FORCE_APPLICATION"


class Source(StrEnum):
    """Which address list: interface-level (``RegistryDirectory``) or application-level
    (``ServiceDiscoveryRegistryDirectory``)."""

    INTERFACE = "interface"
    APPLICATION = "application"


class MigrationSetting(StrEnum):
    """regproxy's own per-subscription or global setting (see the module docstring)."""

    INTERFACE = "interface"
    APPLICATION = "application"
    BOTH = "both"


DEFAULT_SETTING: Final = MigrationSetting.BOTH
# The Dubbo step each regproxy setting corresponds to; BOTH is the union, APPLICATION_FIRST picks one.
NEAREST_STEP: Final = {
    MigrationSetting.INTERFACE: MigrationStep.FORCE_INTERFACE,
    MigrationSetting.APPLICATION: MigrationStep.FORCE_APPLICATION,
    MigrationSetting.BOTH: MigrationStep.APPLICATION_FIRST,
}
_SOURCES: Final = {
    MigrationSetting.INTERFACE: frozenset({Source.INTERFACE}),
    MigrationSetting.APPLICATION: frozenset({Source.APPLICATION}),
    MigrationSetting.BOTH: frozenset({Source.INTERFACE, Source.APPLICATION}),
}


def sources(setting: MigrationSetting) -> frozenset[Source]:
    """The address lists regproxy routes to under its own setting (``both``: their union)."""
    return _SOURCES[setting]


def rule_key(application: str) -> str:
    """The config-center key of a consumer application's migration rule (group :data:`RULE_GROUP`)."""
    return application + RULE_SUFFIX


def display_service_key(interface: str, version: str = "") -> str:
    """``URL.getDisplayServiceKey``, what an ``interfaces`` entry's ``serviceKey`` is compared with:
    the interface, then ``:version`` when the version is not empty.  No group."""
    return f"{interface}:{version}" if version else interface


def _f32(value: float) -> float:
    """``value`` rounded to a Java ``float``; OverflowError beyond its range."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


# ---------------------------------------------------------------------------------------------------
# The rule


@dataclass(frozen=True, slots=True)
class SubMigrationRule:
    """One ``interfaces`` or ``applications`` entry; None where the entry does not set the field."""

    service_key: str
    step: MigrationStep | None = None
    threshold: float | None = None
    proportion: int | None = None
    delay: int | None = None
    force: bool | None = None


@dataclass(frozen=True, slots=True)
class MigrationDefaults:
    """What applies when no rule sets a field (see the module docstring for Dubbo's chain).
    ``threshold`` is the comparator's fallback, ``dubbo.application.migration.threshold``."""

    step: MigrationStep = MigrationStep.APPLICATION_FIRST
    threshold: float = 0.0
    proportion: int = 100
    delay: int = 0
    force: bool = False


DEFAULTS: Final = MigrationDefaults()


@dataclass(frozen=True, slots=True)
class Migration:
    """The values that apply to one subscription."""

    step: MigrationStep
    threshold: float
    proportion: int
    delay: int
    force: bool


@dataclass(frozen=True, slots=True)
class MigrationRule:
    """A parsed migration rule.  ``MigrationRule()`` is Dubbo's ``INIT`` rule (nothing set)."""

    key: str | None = None
    step: MigrationStep | None = None
    threshold: float | None = None
    proportion: int | None = None
    delay: int | None = None
    force: bool | None = None
    interfaces: tuple[SubMigrationRule, ...] = ()
    applications: tuple[SubMigrationRule, ...] = ()

    def lookup(
        self,
        service_key: str,
        provider_applications: Iterable[str] = (),
        defaults: MigrationDefaults = DEFAULTS,
    ) -> Migration:
        """``MigrationRule.getStep/getThreshold/getProportion/getDelay/getForce`` for one consumer.

        ``service_key`` is :func:`display_service_key` of the subscription; ``provider_applications``
        the applications the service-name mapping gives for its interface (taken in sorted order,
        as Dubbo's ``TreeSet``).  Each field is looked up on its own: interface entry, application
        entries, the rule, ``defaults``.
        """
        chain: list[SubMigrationRule | MigrationRule] = []
        chain.extend(s for s in self.interfaces if s.service_key == service_key)
        by_app = {s.service_key: s for s in self.applications}
        chain.extend(by_app[a] for a in sorted(set(provider_applications)) if a in by_app)
        chain.append(self)
        return Migration(
            step=_first(chain, lambda r: r.step, defaults.step),
            threshold=_first(chain, lambda r: r.threshold, defaults.threshold),
            proportion=_first(chain, lambda r: r.proportion, defaults.proportion),
            delay=_first(chain, lambda r: r.delay, defaults.delay),
            force=_first(chain, lambda r: r.force, defaults.force),
        )


T = TypeVar("T")


def _first(
    chain: Iterable[SubMigrationRule | MigrationRule],
    get: Callable[[SubMigrationRule | MigrationRule], T | None],
    default: T,
) -> T:
    """``MigrationRule.getValue`` then the rule's own field: the first value set, else ``default``."""
    for rule in chain:
        value = get(rule)
        if value is not None:
            return value
    return default


def parse_migration_rule(text: str, *, source: str = "") -> MigrationRule:
    """Parse a migration rule as ``MigrationRule.parse`` does; RuleError naming the field otherwise.

    ``""`` (an empty or deleted node, Dubbo's ``INIT``) is the rule with nothing set.  ``source`` (a
    ZooKeeper path, a Nacos dataId) is put on the error.
    """
    if text == "":
        return MigrationRule()
    try:
        return _parse(text)
    except RuleError as exc:
        raise exc.at(source) if source else exc from None


def _parse(text: str) -> MigrationRule:
    fields = Fields(load_document(text), "", _RULE_FIELDS)
    return MigrationRule(
        key=fields.string("key"),
        step=_step(fields),
        threshold=_threshold(fields),
        proportion=_bounded(fields, "proportion", 0, 100),
        delay=_bounded(fields, "delay", 0, None),
        force=fields.boolean("force", False) if "force" in fields else None,
        interfaces=_sub_rules(fields, "interfaces"),
        applications=_sub_rules(fields, "applications"),
    )


def _sub_rules(fields: Fields, key: str) -> tuple[SubMigrationRule, ...]:
    entries = fields.mappings(key, _SUB_FIELDS) or []
    seen: dict[str, int] = {}
    out: list[SubMigrationRule] = []
    for i, entry in enumerate(entries):
        service_key = entry.required("serviceKey")
        if service_key in seen:
            # setInterfaces/setApplications put each entry in a HashMap: the later one wins silently.
            raise RuleError(
                f"{entry.path('serviceKey')} {service_key!r} repeats {key}[{seen[service_key]}]"
                " (Dubbo would silently use only the later entry)",
                reason="value",
            )
        seen[service_key] = i
        out.append(
            SubMigrationRule(
                service_key=service_key,
                step=_step(entry),
                threshold=_threshold(entry),
                proportion=_bounded(entry, "proportion", 0, 100),
                delay=_bounded(entry, "delay", 0, None),
                force=entry.boolean("force", False) if "force" in entry else None,
            )
        )
    return tuple(out)


def _step(fields: Fields) -> MigrationStep | None:
    value = fields.string("step")
    if value is None:
        return None
    try:
        return MigrationStep(value)
    except ValueError:
        names = ", ".join(MigrationStep)
        raise RuleError(f"{fields.path('step')} {value!r} is not one of {names}", reason="value") from None


def _threshold(fields: Fields) -> float | None:
    """``Float.valueOf(value.toString())``, refusing what Dubbo would misread (see the module docstring)."""
    value = fields.raw("threshold")
    if value is None:
        return None
    where = fields.path("threshold")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RuleError(f"{where} must be a number, not {value!r}", reason="type")
    if isinstance(value, str) and not _DECIMAL.fullmatch(value.strip()):
        raise RuleError(f"{where} must be a decimal number, not {value!r}", reason="type")
    number = float(value)
    try:
        number = _f32(number) if math.isfinite(number) else number
    except OverflowError:
        number = math.inf  # Float.valueOf of a value beyond Float.MAX_VALUE
    if not math.isfinite(number):
        raise RuleError(f"{where} must be a finite Java float, not {value!r}", reason="value")
    if number < 0:
        raise RuleError(
            f"{where} must not be negative (Dubbo ignores it and uses dubbo.application.migration.threshold)",
            reason="value",
        )
    return number


def _bounded(fields: Fields, key: str, low: int, high: int | None) -> int | None:
    if key not in fields:
        return None
    number = fields.integer(key, 0)
    if number < low or (high is not None and number > high):
        span = f"{low}..{high}" if high is not None else f"at least {low}"
        raise RuleError(f"{fields.path(key)} must be {span}, not {number}", reason="value")
    return number


# ---------------------------------------------------------------------------------------------------
# The decisions


def should_migrate(new_count: int, old_count: int, threshold: float) -> bool:
    """``DefaultMigrationAddressComparator.shouldMigrate``: move from the ``old`` address list to the
    ``new`` one?  ``threshold`` is the one :meth:`MigrationRule.lookup` gives (never negative)."""
    if new_count <= 0:
        return False
    if old_count <= 0:
        return True
    # (float) new / (float) old >= threshold, all Java floats: a float quotient of two floats is the
    # double quotient rounded once more (double has more than 2 * 24 + 2 bits, so no double rounding).
    ratio = _f32(_f32(float(new_count)) / _f32(float(old_count)))
    return ratio >= _f32(threshold)


def preferred_source(
    step: MigrationStep, interface_count: int, application_count: int, threshold: float
) -> Source:
    """The address list a Dubbo 3 consumer uses in ``step`` (``MigrationInvoker.calcPreferredInvoker``
    for ``APPLICATION_FIRST``, recomputed whenever either list changes)."""
    if step is MigrationStep.FORCE_INTERFACE:
        return Source.INTERFACE
    if step is MigrationStep.FORCE_APPLICATION:
        return Source.APPLICATION
    if should_migrate(application_count, interface_count, threshold):
        return Source.APPLICATION
    return Source.INTERFACE


def call_source(step: MigrationStep, preferred: Source, proportion: int, draw: float) -> Source:
    """The list one call goes to (``MigrationInvoker.invoke``): in ``APPLICATION_FIRST`` with a
    proportion under 100, a call whose ``draw`` (``ThreadLocalRandom.nextDouble(100)``, in [0, 100))
    exceeds the proportion goes to the interface-level list."""
    if step is MigrationStep.APPLICATION_FIRST and proportion < 100 and draw > proportion:
        return Source.INTERFACE
    return preferred


def next_step(
    current: MigrationStep | None,
    requested: MigrationStep,
    migration: Migration,
    interface_count: int,
    application_count: int,
) -> MigrationStep:
    """The step a consumer in ``current`` (None: not referred yet) is in after a rule asks for
    ``requested`` (``MigrationRuleHandler.refreshInvoker``); the counts are the two lists' addresses
    after ``migration.delay``."""
    if current is None or current is requested or requested is MigrationStep.APPLICATION_FIRST:
        return requested
    if requested is MigrationStep.FORCE_INTERFACE:
        # migrateToForceInterfaceInvoker: the application-level subscription exists (current is
        # APPLICATION_FIRST or FORCE_APPLICATION), so force or the comparator must agree.
        new, old = interface_count, application_count
    else:
        new, old = application_count, interface_count
    if migration.force or should_migrate(new, old, migration.threshold):
        return requested
    return current
