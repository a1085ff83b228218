"""Dubbo's condition router: a ``.condition-router`` rule's YAML parsed into an immutable model, and
the model evaluated against a provider list, the consumer's URL and one request.  Pure: no I/O, no
logging, no clock; the one random draw (a v3.1 rule's weighted destinations) is a parameter.

The specification is apache/dubbo 3.3 (``dubbo-cluster``, package ``org.apache.dubbo.rpc.cluster.router``).
Where each behaviour comes from:

* ``ConditionRuleParser.parse``: one YAML mapping; ``configVersion`` starting with ``v3.1`` selects the
  multi-destination format (``MultiDestConditionRouterRule``), any other (or none) the string format
  (``ConditionRouterRule``).  ``AbstractRouterRule.parseFromMap0`` reads the common fields:
  ``scope``, ``key``, ``enabled`` (default true), ``force`` (false), ``runtime`` (true), ``priority``
  (0), ``dynamic`` (false).
* ``ConditionStateRouter.init`` / ``parseRule`` (v3.0) and ``MultiDestConditionRouter.init`` (v3.1):
  the condition syntax, see :func:`_parse_expression`; ``doRoute``: when/then, force, blocking.
* ``ConditionSubSet`` / ``DestinationSet`` (v3.1): destination weights and the weighted pick.
* ``AbstractConditionMatcher`` and its subclasses: which value a key reads on each side, and how a
  key's ``=`` and ``!=`` values combine; ``RangeValuePattern`` (``1~100``) and
  ``WildcardValuePattern`` → ``UrlUtils.isMatchGlobPattern`` (``*`` and ``$name``).
* ``ListenableStateRouter.doRoute``: a rule's conditions run one after the other, each on the
  previous one's output.  ``ServiceStateRouterFactory`` (order 140), ``ProviderAppStateRouterFactory``
  (145) and ``AppStateRouterFactory`` (150) put the three rule sources in that order in the router
  chain (see :class:`ConditionRouters`).  ``priority`` orders nothing in Dubbo 3: it is parsed and kept.

Where regproxy refuses what Dubbo would accept (each a rule that cannot do what it says; Dubbo runs
it silently, usually as a rule that never matches):

* a top-level field Dubbo's parser does not read (``unknown-field``): Dubbo reads the YAML into a
  map and ignores the rest, but regproxy's issue 17 asks that a misspelt field be refused rather
  than silently dropped.  Inside a v3.1 condition, ``priority``, ``trafficDisable``, ``force`` and
  ``ratio`` are refused the same way: they were in the first draft of Dubbo's v3.1 router and in
  dubbo-go's, but the router merged into Dubbo 3.3 (apache/dubbo#14456) reads only ``from`` and ``to``.
* a string condition without ``=>`` (Dubbo reads the whole string as the ``then`` part), or with two;
* a key without a value (``host``, ``host =``; Dubbo keeps a matcher that never matches), a stray
  operator (``a = = b``, ``host = a &``), ``,`` not after a value of the same key, a key given twice
  without ``&`` (Dubbo would drop the first);
* ``arguments[...]`` / ``attachments[...]`` keys Dubbo cannot read (``arguments[0].name``: Dubbo
  ignores ``.name`` and compares the whole argument; ``attachments[a.b]``: Dubbo cuts the key at the
  ``.`` and never finds it) or on the ``then`` side (no invocation there: Dubbo reads a placeholder);
* ranges Dubbo's ``RangeValuePattern`` cannot evaluate: ``101~`` (``String.split`` drops the empty end,
  so it never matches, although Dubbo's documentation shows it), more than one ``~``, bounds that are
  not non-negative Java ints (Dubbo's ``StringUtils.parseInteger`` reads them as 0), ``low > high``;
* booleans other than ``true``/``false``, versions other than v2.7, v3.0 and v3.1, a scope other than
  ``service`` or ``application``, missing or empty ``conditions`` (Dubbo marks the rule invalid and
  keeps the previous one: that choice is the caller's).

Reasons (``RuleError.reason``): ``yaml``, ``unknown-field``, ``type``, ``version``, ``scope``,
``condition``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

import yaml

from regproxy import yamlio
from regproxy.dubbo.hessian2 import JavaObject
from regproxy.governance.errors import RuleError
from regproxy.registry.url import DubboURL, is_match_glob_pattern

__all__ = [
    "ARGUMENTS",
    "ATTACHMENTS",
    "METHOD",
    "NOT_FOUND",
    "Blocked",
    "Condition",
    "ConditionRouters",
    "ConditionRule",
    "Destination",
    "Matcher",
    "Routed",
    "ValuePattern",
    "java_string",
    "parse_condition_rule",
    "provider_rule_application",
]

# What a rule reads from the request (ConditionRule.request_reads).
METHOD: Final = "method"
ARGUMENTS: Final = "arguments"
ATTACHMENTS: Final = "attachments"
RequestPart = Literal["method", "arguments", "attachments"]

DEFAULT_WEIGHT: Final = 100  # Constants.DefaultRouteConditionSubSetWeight
JAVA_INT_MAX: Final = 2**31 - 1
# AbstractConditionMatcher.DOES_NOT_FOUND_VALUE: what an argument key reads when there is no such argument.
NOT_FOUND: Final = "dubbo_internal_not_found_argument_condition_value"
GENERIC_METHODS = frozenset({"$invoke", "$invokeAsync"})  # RpcUtils.getMethodName
_EMPTY: Mapping[str, object] = MappingProxyType({})

_YAML = "yaml"
_UNKNOWN_FIELD = "unknown-field"
_TYPE = "type"
_VERSION = "version"
_SCOPE = "scope"
_CONDITION = "condition"

# AbstractRouterRule.parseFromMap0, ConditionRouterRule and ConditionRuleParser read exactly these.
_FIELDS = frozenset(
    {"configVersion", "scope", "key", "enabled", "force", "runtime", "priority", "dynamic", "conditions"}
)
_VERSIONS = ("v2.7", "v3.0", "v3.1")  # Constants.RULE_VERSION_V27 / V30 / V31
_SCOPES = ("service", "application")
_V31_CONDITION_FIELDS = frozenset({"from", "to"})  # MultiDestCondition
_V31_DRAFT_FIELDS = frozenset({"priority", "trafficDisable", "force", "ratio"})
_JAVA_TRIM = "".join(map(chr, range(0x21)))  # String.trim() strips every char <= U+0020

# ConditionStateRouter.ROUTE_PATTERN ([&!=,]*)\s*([^&!=,\s]+), anchored and with blanks before the
# separator (which find() would skip) and an empty token allowed, so that a match at a position never
# backtracks.  re.ASCII: Java's \s is ASCII whitespace only.
_PAIR = re.compile(r"\s*([&!=,]*)\s*([^&!=,\s]*)", re.ASCII)
_ARGUMENT_KEY = re.compile(r"arguments\[([0-9]+)\]", re.ASCII)  # ArgumentConditionMatcher
_ATTACHMENT_KEY = re.compile(r"attachments\[([^.]+)\]")  # AttachmentConditionMatcher, key cut at "."
_DIGITS = re.compile(r"[0-9]+", re.ASCII)  # StringUtils.NUM_PATTERN ^\d+$
_JAVA_INT = re.compile(r"[-+]?[0-9]+", re.ASCII)  # what Integer.parseInt accepts


# ---------------------------------------------------------------------------------------------------
# Values and patterns


@dataclass(frozen=True, slots=True)
class ValuePattern:
    """One value of a key: a glob (``WildcardValuePattern``), a range (``RangeValuePattern``, chosen
    whenever the text holds ``~``) or, on the ``then`` side only, ``$name``: the consumer URL's value
    of ``name`` used as the glob (``UrlUtils.isMatchGlobPattern(pattern, value, param)``; on the
    ``when`` side Dubbo passes no consumer URL, so ``$name`` there is the literal text)."""

    text: str
    reference: str | None = None  # "$name" on the then side: name
    is_range: bool = False
    low: int | None = None  # range: "~100" has none
    high: int = 0

    def accepts(self, value: str, consumer: DubboURL, when: bool) -> bool:
        if self.is_range:
            return self._in_range(value, when)
        pattern = self.text if self.reference is None else _raw_parameter(consumer, self.reference)
        return is_match_glob_pattern(pattern, value)

    def _in_range(self, value: str, when: bool) -> bool:
        # RangeValuePattern.match: StringUtils.parseInteger reads a value that is not all digits as 0;
        # digits beyond a Java int make Integer.parseInt throw, and the pattern answers its default,
        # which is "no match" on the when side and "match" on the then side.
        number = 0
        if _DIGITS.fullmatch(value):
            digits = value.lstrip("0")
            if len(digits) > 10 or (digits and int(digits) > JAVA_INT_MAX):
                return not when
            number = int(digits or "0")
        if self.low is not None and number < self.low:
            return False
        return number <= self.high


def _raw_parameter(url: DubboURL, name: str) -> str | None:
    """``URL.getRawParameter(name)`` of the consumer URL (what ``$name`` refers to)."""
    if name == "protocol":
        return url.protocol
    if name in ("username", "password"):
        return None  # regproxy's URLs carry no user info
    if name == "host":
        return url.host
    if name == "port":
        return str(url.port)
    if name == "path":
        return url.path or None
    return url.params.get(name)


def _url_value(url: DubboURL, key: str) -> str | None:
    """``URL.toOriginalMap().get(key)``: the parameters, overlaid with the URL's own fields."""
    if key == "protocol":
        return url.protocol
    if key == "host":
        return url.host
    if key == "port" and url.port > 0:
        return str(url.port)
    if key == "path" and url.path:
        return url.path
    if key == "address":  # URLAddress.getAddress: host[:port], no IPv6 brackets
        return f"{url.host}:{url.port}" if url.port > 0 else url.host
    return url.params.get(key)


def java_string(value: object) -> str:
    """``String.valueOf(argument)`` for a decoded hessian2 argument, as ``ArgumentConditionMatcher``
    compares it: strings as they are, ``null``, ``true``/``false``, integers in decimal, doubles as
    ``Double.toString`` writes them, an enum constant by its name.  Other values (objects, lists,
    maps, dates, bytes) have a Java string form regproxy cannot know (``toString()`` of the class,
    an identity hash); they read as a text with a space in it, which no single value in a condition
    can equal, so ``=`` with a plain value fails and ``!=`` succeeds, as it almost always would in
    Java.  A Java ``float`` argument arrives as a hessian2 double and is written as one."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))  # int(): hessian2.Long's repr is Long(n)
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, str):
        return value
    if (
        isinstance(value, JavaObject)
        and set(value.fields) == {"name"}
        and isinstance(value.fields["name"], str)
    ):
        return value.fields["name"]  # Enum.toString()
    return f"<{type(value).__name__} value>"


def _java_double(x: float) -> str:
    """``Double.toString(x)``: the shortest digits that read back as ``x`` (Python's repr finds the
    same), written plainly for 10^-3 <= |x| < 10^7 and as ``d.dddE<n>`` otherwise."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    parts = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, parts.digits))
    exponent = len(digits) - 1 + int(parts.exponent)  # x = d.ddd × 10^exponent
    if 1e-3 <= abs(x) < 1e7:
        if exponent >= 0:
            whole = digits[: exponent + 1].ljust(exponent + 1, "0")
            return f"{sign}{whole}.{digits[exponent + 1 :] or '0'}"
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exponent}"


# ---------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True, slots=True)
class Matcher:
    """One key of a condition and its values (``AbstractConditionMatcher``): the key matches when its
    value exists, equals none of ``mismatches`` (the ``!=`` values, checked first) and, when there are
    ``=`` values, equals one of ``matches``.

    ``source`` says where the value is read: ``method`` (the invoked method, ``when`` side only:
    ``method`` and ``methods`` both read it there), ``argument`` (``arguments[index]``),
    ``attachment`` (``attachments[name]``), or ``url`` (the consumer's URL on the ``when`` side, the
    provider's on the ``then`` side: parameters, and ``protocol``, ``host``, ``port``, ``path``,
    ``address`` from the URL itself)."""

    key: str
    matches: tuple[ValuePattern, ...]
    mismatches: tuple[ValuePattern, ...]
    source: Literal["url", "method", "argument", "attachment"] = "url"
    index: int = 0  # argument
    name: str = ""  # attachment

    def accepts(self, value: str | None, consumer: DubboURL, when: bool) -> bool:
        if value is None:  # the key is absent: neither "=" nor "!=" matches
            return False
        for pattern in self.mismatches:
            if pattern.accepts(value, consumer, when):
                return False
        if not self.matches:
            return True
        return any(pattern.accepts(value, consumer, when) for pattern in self.matches)


@dataclass(frozen=True, slots=True)
class Destination:
    """A ``then`` part: the providers every matcher accepts (all of them when there is none).  A v3.0
    condition has one destination, a v3.1 condition one per ``to`` entry, each with its ``weight``."""

    match: tuple[Matcher, ...]
    weight: int = DEFAULT_WEIGHT

    def select(self, providers: tuple[DubboURL, ...], consumer: DubboURL) -> tuple[DubboURL, ...]:
        if not self.match:
            return providers
        return tuple(p for p in providers if self._accepts(p, consumer))

    def _accepts(self, provider: DubboURL, consumer: DubboURL) -> bool:
        return all(m.accepts(_url_value(provider, m.key), consumer, False) for m in self.match)


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a rule.  ``when`` empty: every request; ``to`` empty: requests that match are
    blocked (no provider, whatever ``force`` says).  ``text`` is the condition as written (v3.1: its
    ``from`` and ``to`` matches)."""

    text: str
    when: tuple[Matcher, ...]
    to: tuple[Destination, ...]

    def applies(
        self, consumer: DubboURL, method: str, arguments: Sequence[object], attachments: Mapping[str, object]
    ) -> bool:
        return all(
            m.accepts(_request_value(m, consumer, method, arguments, attachments), consumer, True)
            for m in self.when
        )

    @property
    def request_reads(self) -> frozenset[RequestPart]:
        reads: set[RequestPart] = set()
        for m in self.when:
            if m.source == "method":
                reads.add(METHOD)
            elif m.source == "argument":
                reads.add(ARGUMENTS)
            elif m.source == "attachment":
                reads.add(ATTACHMENTS)
        return frozenset(reads)


def _request_value(
    m: Matcher,
    consumer: DubboURL,
    method: str,
    arguments: Sequence[object],
    attachments: Mapping[str, object],
) -> str | None:
    if m.source == "method":
        return method
    if m.source == "argument":
        # ArgumentConditionMatcher: String.valueOf(arguments[index]), or DOES_NOT_FOUND_VALUE.
        return java_string(arguments[m.index]) if m.index < len(arguments) else NOT_FOUND
    if m.source == "attachment":
        value = attachments.get(m.name)  # RpcInvocation.getAttachment: string values only
        return value if isinstance(value, str) else None
    return _url_value(consumer, m.key)


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why a rule left no provider: ``condition`` blocks the request (an empty ``then``, or a v3.1
    condition without ``to``), or none of its destinations has a provider and the rule is ``force``."""

    rule: ConditionRule
    condition: Condition

    def __str__(self) -> str:
        what = "blocks the request" if not self.condition.to else "matches no provider and force is true"
        name = self.rule.key or "condition rule"
        return f"{name}: condition {self.condition.text!r} {what}"


class Routed(NamedTuple):
    """The providers left after routing, in their original order, and, when a rule emptied the list,
    which condition did."""

    providers: tuple[DubboURL, ...]
    blocked: Blocked | None = None


Draw = Callable[[int], int]  # n -> a uniform int in [0, n): random.randrange


@dataclass(frozen=True, slots=True)
class ConditionRule:
    """A parsed ``.condition-router`` rule.  ``config_version`` is as written ("" when absent);
    ``multi_destination`` is true for v3.1.  ``runtime`` and ``priority`` are kept for display: Dubbo 3
    routes by neither (use :attr:`request_dependent` to decide what may be cached)."""

    config_version: str
    multi_destination: bool
    scope: str  # "service", "application" or "" when absent
    key: str
    enabled: bool
    force: bool
    runtime: bool
    priority: int
    conditions: tuple[Condition, ...]

    def route(
        self,
        providers: Sequence[DubboURL],
        consumer: DubboURL,
        method: str = "",
        arguments: Sequence[object] = (),
        attachments: Mapping[str, object] = _EMPTY,
        *,
        draw: Draw = random.randrange,
    ) -> Routed:
        """The providers this rule leaves for one request (``ListenableStateRouter.doRoute``).

        ``consumer`` is the consumer's URL (``consumer://ip/interface?application=...``); ``method`` the
        invoked method (for ``$invoke``/``$invokeAsync`` with a string first argument, that argument,
        as ``RpcUtils.getMethodName`` reads it); ``arguments`` the decoded arguments (see
        :func:`java_string`); ``attachments`` the request's attachments.  The request parts are read
        only when :attr:`request_reads` names them.  ``draw`` picks among a v3.1 condition's weighted
        destinations.
        """
        current = tuple(providers)
        if not self.enabled:
            return Routed(current)
        invoked = _invoked_method(method, arguments)
        for condition in self.conditions:
            if not current:  # AbstractStateRouter: an empty list goes through untouched
                break
            if not condition.applies(consumer, invoked, arguments, attachments):
                continue
            if not condition.to:
                return Routed((), Blocked(self, condition))
            chosen = _pick(condition.to, current, consumer, draw)
            if chosen:
                current = chosen
            elif self.force:
                return Routed((), Blocked(self, condition))
            # force false and no provider matched: the condition is skipped (Dubbo returns its input)
        return Routed(current)

    @property
    def request_reads(self) -> frozenset[RequestPart]:
        """The parts of the request a ``when`` reads: ``method``, ``arguments``, ``attachments``.
        Empty: the result depends only on the providers and the consumer URL (cache it).  With
        ``method`` in it, a generic call (``$invoke``) needs its first argument too."""
        if not self.enabled:
            return frozenset()
        return frozenset().union(*(c.request_reads for c in self.conditions))

    @property
    def request_dependent(self) -> bool:
        return bool(self.request_reads)

    @property
    def randomized(self) -> bool:
        """True when a condition has several weighted destinations: the result is drawn per request."""
        return self.enabled and any(len(c.to) > 1 for c in self.conditions)


def _invoked_method(method: str, arguments: Sequence[object]) -> str:
    if method in GENERIC_METHODS and arguments and isinstance(arguments[0], str):
        return arguments[0]
    return method


def _pick(
    destinations: tuple[Destination, ...], providers: tuple[DubboURL, ...], consumer: DubboURL, draw: Draw
) -> tuple[DubboURL, ...]:
    """MultiDestConditionRouter.doRoute and DestinationSet.randDestination: the destinations that keep
    some provider, one of them drawn by weight.  Dubbo draws r in [0, total) and takes the first
    destination where r - (weights so far) <= 0: the first destination gets one value more than its
    weight and the last one less (weights 1 and 1 always pick the first); regproxy takes the first
    where r < (weights so far), each destination exactly its weight."""
    found = [(d.weight, subset) for d in destinations if (subset := d.select(providers, consumer))]
    if not found:
        return ()
    if len(found) == 1:
        return found[0][1]
    r = draw(sum(weight for weight, _ in found))
    for weight, subset in found:
        if r < weight:
            return subset
        r -= weight
    return found[-1][1]


@dataclass(frozen=True, slots=True)
class ConditionRouters:
    """The condition rules one consumer's calls to one service pass through, in the order of Dubbo's
    router chain: the service's rule (``ServiceStateRouter``, key = the service key), the provider
    application's (``ProviderAppStateRouter``, see :func:`provider_rule_application`), then the
    consumer application's (``AppStateRouter``).  Each works on the previous one's output; the first
    to empty the list ends it.  (The tag router, order 100, runs before all three.)"""

    service: ConditionRule | None = None
    provider_application: ConditionRule | None = None
    consumer_application: ConditionRule | None = None

    @property
    def rules(self) -> tuple[ConditionRule, ...]:
        return tuple(r for r in (self.service, self.provider_application, self.consumer_application) if r)

    def route(
        self,
        providers: Sequence[DubboURL],
        consumer: DubboURL,
        method: str = "",
        arguments: Sequence[object] = (),
        attachments: Mapping[str, object] = _EMPTY,
        *,
        draw: Draw = random.randrange,
    ) -> Routed:
        """:meth:`ConditionRule.route` through every rule in order."""
        routed = Routed(tuple(providers))
        for rule in self.rules:
            if not routed.providers:
                break
            routed = rule.route(routed.providers, consumer, method, arguments, attachments, draw=draw)
        return routed

    @property
    def request_reads(self) -> frozenset[RequestPart]:
        return frozenset().union(*(r.request_reads for r in self.rules))

    @property
    def request_dependent(self) -> bool:
        return bool(self.request_reads)

    @property
    def randomized(self) -> bool:
        return any(r.randomized for r in self.rules)


def provider_rule_application(providers: Sequence[DubboURL], consumer: DubboURL) -> str:
    """Whose application rule ``ProviderAppStateRouter.notify`` applies: the ``application`` of the
    *first* provider of the service's full list (in the registry's order), unless it is empty or the
    consumer's own application (then none: "").  Its rule is ``<application>.condition-router``, the
    same node an application-scope rule of that application lives in."""
    if not providers:
        return ""
    application = providers[0].params.get("application", "")
    return "" if application == consumer.params.get("application", "") else application


# ---------------------------------------------------------------------------------------------------
# Parsing


def parse_condition_rule(text: str | bytes) -> ConditionRule:
    """Parse a ``.condition-router`` rule (YAML, read with YAML 1.2 scalars and duplicate keys refused,
    as every YAML regproxy reads).  Raises :class:`RuleError` naming the field or condition at fault."""
    try:
        data = yamlio.load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise RuleError(f"not valid YAML: {_yaml_problem(exc)}", reason=_YAML) from None
    if data is None:
        raise RuleError("the rule is empty", reason=_YAML)
    if not isinstance(data, dict):
        raise RuleError(f"expected a mapping of fields, got {_kind(data)}", reason=_YAML)
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise RuleError(
            f"unknown field {_quote(unknown[0])}: a condition rule has {', '.join(sorted(_FIELDS))}",
            reason=_UNKNOWN_FIELD,
        )
    version = _config_version(data.get("configVersion"))
    multi = version.lower() == "v3.1"
    scope = _optional_string(data, "scope", _SCOPE)
    if scope and scope not in _SCOPES:
        raise RuleError(f"scope {_quote(scope)}: must be service or application", reason=_SCOPE)
    _boolean(data, "dynamic", False)  # AbstractRouterRule reads it; no router uses it
    raw = data.get("conditions")
    if raw is None:
        raise RuleError("conditions: missing (Dubbo marks such a rule invalid)", reason=_CONDITION)
    if not isinstance(raw, list):
        raise RuleError(f"conditions: expected a list, got {_kind(raw)}", reason=_TYPE)
    if not raw:
        raise RuleError("conditions: empty (Dubbo marks such a rule invalid)", reason=_CONDITION)
    parse_one = _parse_v31_condition if multi else _parse_v30_condition
    return ConditionRule(
        config_version=version,
        multi_destination=multi,
        scope=scope,
        key=_optional_string(data, "key", _TYPE),
        enabled=_boolean(data, "enabled", True),
        force=_boolean(data, "force", False),
        runtime=_boolean(data, "runtime", True),
        priority=_priority(data.get("priority")),
        conditions=tuple(parse_one(item, f"conditions[{i}]") for i, item in enumerate(raw)),
    )


def _yaml_problem(exc: BaseException) -> str:
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def _quote(text: str) -> str:
    """``repr(text)`` for a message, cut short: a condition may be long, and every error names it."""
    return repr(text) if len(text) <= 80 else f"{text[:77]!r}..."


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _config_version(value: object) -> str:
    # ConditionRuleParser: "v3.1..." is the multi-destination format, anything up to "v3.1" the string
    # format, anything after it is ignored ("Only v3.1 and below are supported").
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RuleError(f"configVersion: expected a string such as v3.0, got {_kind(value)}", reason=_VERSION)
    if value.lower() not in _VERSIONS:
        raise RuleError(
            f"configVersion {_quote(value)}: Dubbo 3.3 reads {', '.join(_VERSIONS)}", reason=_VERSION
        )
    return value


def _optional_string(data: Mapping[str, Any], name: str, reason: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RuleError(f"{name}: expected a string, got {_kind(value)}", reason=reason)
    return value


def _boolean(data: Mapping[str, Any], name: str, default: bool) -> bool:
    # AbstractRouterRule: Boolean.parseBoolean(value.toString()), which reads anything but "true" as
    # false; regproxy takes a YAML boolean or the strings true/false and refuses the rest.
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise RuleError(f"{name}: expected true or false, got {_kind(value)}", reason=_TYPE)


def _java_int(value: object) -> int | None:
    """``Integer.parseInt(value.toString())`` for a YAML int or string; None when Java would throw."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _JAVA_INT.fullmatch(value):
        digits = value.lstrip("+-").lstrip("0")
        if len(digits) > 10:
            return None
        number = -int(digits or "0") if value.startswith("-") else int(digits or "0")
    else:
        return None
    return number if -JAVA_INT_MAX - 1 <= number <= JAVA_INT_MAX else None


def _priority(value: object) -> int:
    if value is None:
        return 0
    number = _java_int(value)
    if number is None:
        raise RuleError(f"priority: expected a Java int, got {_kind(value)}", reason=_TYPE)
    return number


def _parse_v30_condition(item: object, where: str) -> Condition:
    """``ConditionStateRouter.init``: ``when => then``."""
    if not isinstance(item, str):
        hint = ""
        if isinstance(item, dict):
            hint = (
                " (a from/to condition needs configVersion: v3.1)"
                if {"from", "to"} & set(item)
                else " (quote a condition that holds ': ')"
            )
        raise RuleError(f"{where}: expected a string 'when => then', got {_kind(item)}{hint}", reason=_TYPE)
    # Dubbo drops these prefixes anywhere in the text (the 2.6 Admin wrote consumer.host, provider.host).
    rule = item.replace("consumer.", "").replace("provider.", "")
    arrow = rule.find("=>")
    if arrow < 0:
        raise RuleError(
            f"{where} {_quote(item)}: no '=>' (write 'when => then'; '=> then' applies to every request)",
            reason=_CONDITION,
        )
    if "=>" in rule[arrow + 2 :]:
        raise RuleError(f"{where} {_quote(item)}: more than one '=>'", reason=_CONDITION)
    when_text = rule[:arrow].strip(_JAVA_TRIM)
    then_text = rule[arrow + 2 :].strip(_JAVA_TRIM)
    where = f"{where} {_quote(item)}"
    when = () if when_text in ("", "true") else _parse_expression(when_text, True, f"{where}, when")
    if then_text in ("", "false"):
        return Condition(item, when, ())
    then = _parse_expression(then_text, False, f"{where}, then")
    return Condition(item, when, (Destination(then),))


def _parse_v31_condition(item: object, where: str) -> Condition:
    """``MultiDestConditionRouter.init``: ``from: {match: ...}`` and ``to: [{match: ..., weight: N}]``.
    No ``from`` or an empty ``match``: every request.  No ``to`` (or an empty one): the request is
    blocked.  A ``to`` entry with an empty ``match`` (or ``false``): every provider."""
    if not isinstance(item, dict):
        raise RuleError(f"{where}: expected a mapping with from and to, got {_kind(item)}", reason=_TYPE)
    for name in item:
        if name in _V31_DRAFT_FIELDS:
            raise RuleError(
                f"{where}: {name!r} is not read by Dubbo 3.3's condition router (its v3.1 conditions have "
                "only from and to; a condition without to already blocks)",
                reason=_UNKNOWN_FIELD,
            )
        if name not in _V31_CONDITION_FIELDS:
            raise RuleError(f"{where}: unknown field {name!r} (expected from and to)", reason=_UNKNOWN_FIELD)
    source = item.get("from")
    when_text = "" if source is None else _match_of(source, f"{where}.from", ("match",))
    when = (
        ()
        if _blank(when_text) or when_text == "true"
        else _parse_expression(when_text, True, f"{where}.from")
    )
    raw_to = item.get("to")
    if raw_to is None:
        raw_to = []
    if not isinstance(raw_to, list):
        raise RuleError(
            f"{where}.to: expected a list of {{match, weight}}, got {_kind(raw_to)}", reason=_TYPE
        )
    destinations: list[Destination] = []
    shown: list[str] = []
    for i, entry in enumerate(raw_to):
        at = f"{where}.to[{i}]"
        then_text = _match_of(entry, at, ("match", "weight"))
        match = () if _blank(then_text) or then_text == "false" else _parse_expression(then_text, False, at)
        destinations.append(Destination(match, _weight(entry, at)))
        shown.append(f"{then_text!r} weight {destinations[-1].weight}")
    text = f"from {when_text!r} to {', '.join(shown) or 'nothing'}"
    return Condition(text, when, tuple(destinations))


def _blank(text: str) -> bool:
    return not text.strip(" \t\n\x0b\f\r")


def _match_of(entry: object, where: str, allowed: tuple[str, ...]) -> str:
    """The ``match`` string of a ``from`` or ``to`` mapping ("" when absent or null)."""
    if not isinstance(entry, dict):
        raise RuleError(f"{where}: expected a mapping with match, got {_kind(entry)}", reason=_TYPE)
    for name in entry:
        if name not in allowed:
            raise RuleError(
                f"{where}: unknown field {name!r} (expected {' and '.join(allowed)})", reason=_UNKNOWN_FIELD
            )
    match = entry.get("match")
    if match is None:
        return ""
    if not isinstance(match, str):
        raise RuleError(f"{where}.match: expected a string, got {_kind(match)}", reason=_TYPE)
    return match


def _weight(entry: Mapping[str, Any], where: str) -> int:
    value = entry.get("weight")
    if value is None:
        return DEFAULT_WEIGHT
    number = _java_int(value)
    if number is None:
        raise RuleError(f"{where}.weight: expected a Java int, got {_kind(value)}", reason=_TYPE)
    return number if number > 0 else DEFAULT_WEIGHT  # ConditionSubSet: weight <= 0 means the default


def _parse_expression(text: str, when: bool, where: str) -> tuple[Matcher, ...]:
    """``ConditionStateRouter.parseRule``: a separator run and a token, one pair after another.  An
    empty separator starts a key, ``&`` starts (or continues) a key, ``=`` and ``!=`` give it a value,
    ``,`` another value of the same kind; any other separator is an error.

    Dubbo finds the pairs with ``ROUTE_PATTERN.find()``, which steps over a separator run that no
    token follows (``a = = b`` reads as ``a = b``); regproxy refuses such a stray run, and on every
    text without one, reading the pairs in place as done here finds the same pairs.  Each character
    is looked at once (``find()`` rescans a run of separators from each of its positions)."""
    values: dict[str, tuple[list[str], list[str]]] = {}
    key: str | None = None
    current: list[str] | None = None  # the list the last value went to
    pos = 0
    while True:
        found = _PAIR.match(text, pos)  # always matches, possibly nothing
        assert found is not None
        separator, token = found.group(1), found.group(2)
        if not token:
            if separator:
                raise RuleError(
                    f"{where}: stray {_quote(separator)} at offset {found.start(1)}", reason=_CONDITION
                )
            break  # only blanks were left
        pos = found.end()
        if separator in ("", "&"):
            if separator == "" and token in values:
                raise _pair_error(
                    where,
                    found,
                    f"{_quote(token)} is given again without '&' (Dubbo would drop its first values)",
                )
            key, current = token, None
            values.setdefault(token, ([], []))
        elif separator in ("=", "!="):
            if key is None:
                raise _pair_error(where, found, f"{_quote(separator)} before any key")
            current = values[key][0 if separator == "=" else 1]
            current.append(token)
        elif separator == ",":
            if not current:
                raise _pair_error(where, found, "',' must follow a value of the same key")
            current.append(token)
        else:
            raise _pair_error(where, found, f"unknown operator {_quote(separator)} (use =, != , and &)")
    return tuple(_matcher(k, m, n, when, where) for k, (m, n) in values.items())


def _pair_error(where: str, found: re.Match[str], problem: str) -> RuleError:
    # Built only on failure: ``where`` holds the whole condition, too long to format for every pair.
    pair = found.group(1) + found.group(2)
    return RuleError(f"{where}: {_quote(pair)} at offset {found.start(1)}: {problem}", reason=_CONDITION)


def _matcher(key: str, matches: list[str], mismatches: list[str], when: bool, where: str) -> Matcher:
    at = f"{where}: {_quote(key)}"
    if not matches and not mismatches:
        raise RuleError(f"{at} has no '=' or '!=' value (several values are written a,b)", reason=_CONDITION)
    source: Literal["url", "method", "argument", "attachment"] = "url"
    index, name = 0, ""
    if key.startswith("arguments"):  # ArgumentConditionMatcherFactory: any key that starts so
        found = _ARGUMENT_KEY.fullmatch(key)
        index_text = found.group(1).lstrip("0") if found else ""
        if found is None or len(index_text) > 10 or int(index_text or "0") > JAVA_INT_MAX:
            raise RuleError(
                f"{at} is not arguments[N] (Dubbo compares a whole argument, never a field)",
                reason=_CONDITION,
            )
        source, index = "argument", int(index_text or "0")
    elif key.startswith("attachments"):  # AttachmentConditionMatcherFactory
        found = _ATTACHMENT_KEY.fullmatch(key)
        if found is None:
            raise RuleError(
                f"{at} is not attachments[name] with a name without '.' (Dubbo cuts the key at the first "
                "'.' and would never find it)",
                reason=_CONDITION,
            )
        source, name = "attachment", found.group(1)
    elif when and key in ("method", "methods"):  # AbstractConditionMatcher.getSampleValueFromUrl
        source = "method"
    if source in ("argument", "attachment") and not when:
        raise RuleError(
            f"{at} on the then side: only the when side reads the request (providers have none)",
            reason=_CONDITION,
        )
    return Matcher(
        key=key,
        matches=tuple(_value_pattern(v, when, at) for v in matches),
        mismatches=tuple(_value_pattern(v, when, at) for v in mismatches),
        source=source,
        index=index,
        name=name,
    )


def _value_pattern(text: str, when: bool, at: str) -> ValuePattern:
    if "~" in text:  # RangeValuePattern.shouldMatch
        return _range(text, f"{at}: range {_quote(text)}")
    if text.startswith("$") and not when:
        if len(text) == 1:
            raise RuleError(f"{at}: '$' names no consumer parameter", reason=_CONDITION)
        return ValuePattern(text, reference=text[1:])
    return ValuePattern(text)


def _range(text: str, at: str) -> ValuePattern:
    # RangeValuePattern.match splits on "~" with Java's String.split, which drops trailing empty parts.
    parts = text.split("~")
    while parts and not parts[-1]:
        parts.pop()
    if len(parts) != 2:
        raise RuleError(
            f"{at}: write low~high or ~high (Dubbo's RangeValuePattern never matches 'low~', '~' or "
            "several '~'; for no upper bound write low~2147483647)",
            reason=_CONDITION,
        )
    bounds: list[int | None] = []
    for part in parts:
        if not part:
            bounds.append(None)
            continue
        digits = part.lstrip("0")
        if not _DIGITS.fullmatch(part) or len(digits) > 10 or int(digits or "0") > JAVA_INT_MAX:
            raise RuleError(
                f"{at}: bound {_quote(part)} is not a non-negative Java int (Dubbo reads it as 0 or fails)",
                reason=_CONDITION,
            )
        bounds.append(int(digits or "0"))
    low, high = bounds
    assert high is not None  # the last part is never empty
    if low is not None and low > high:
        raise RuleError(f"{at} is empty ({low} > {high})", reason=_CONDITION)
    return ValuePattern(text, is_range=True, low=low, high=high)
