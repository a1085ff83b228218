"""Dubbo's tag router: the ``<provider-application>.tag-router`` rule and the static ``dubbo.tag``.

Facts from Dubbo 3.3 (``org.apache.dubbo.rpc.cluster.router.tag``):

* ``TagRuleParser``/``TagRouterRule``/``Tag``: a YAML map with ``configVersion``, ``force``
  (default false), ``runtime`` (true), ``enabled`` (true), ``valid`` (true), ``priority`` (0),
  ``key``, ``scope``, ``dynamic`` and ``tags``; each tag a ``name`` with ``addresses`` (patterns, see
  :func:`~regproxy.governance.match.match_ip_expression`) and, only when ``configVersion`` starts
  with ``v3.0``, ``match`` (``ParamMatch``: ``key`` and a ``StringMatch`` ``value``).  A rule
  without tags is invalid: the router then uses the static tags only.
* ``TagRouterRule.init``: a tag's ``addresses`` (when not empty) are its members; in a v3.0 rule a
  tag without addresses gets the ``host:port`` of every provider of the service whose registered
  parameters satisfy all its ``match`` entries, and is left out when none does.  A later tag of the
  same name replaces an earlier one (address tags first, then match tags).
* ``TagStateRouter.doRoute``: see :meth:`TagRouting.route`.
* ``TagStateRouter.notify``: the rule is the one of the *first* provider's application
  (``remote.application`` of ``invokers.get(0)``); providers of other applications in the same
  service follow it too.

The request's tag is its ``dubbo.tag`` attachment (Dubbo falls back to the consumer URL's
``dubbo.tag``; regproxy's consumers have none); ``dubbo.force.tag`` is read with
``Boolean.parseBoolean`` (:func:`requested_tag`, :func:`force_tag`).  A provider's static tag is
its ``dubbo.tag`` URL parameter after configurators (in Dubbo the invoker URL's).

Parsing refuses what Dubbo would drop or misread (see :mod:`regproxy.governance.fields`).  When a
rule cannot be parsed Dubbo keeps the rule it had (``TagStateRouter.process`` logs and returns):
callers should keep the last good rule on RuleError, and drop it when the node is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from regproxy.routing.rules import FORCE_TAG_KEY, TAG_KEY

from .errors import RuleError
from .fields import Fields, load_document
from .match import ANYHOST_VALUE, ParamMatch, PatternError, check_cidr, match_ip_expression

__all__ = [
    "CONFIG_VERSIONS",
    "FORCE_TAG_KEY",
    "RULE_SUFFIX",
    "TAG_KEY",
    "TAG_SEPARATOR",
    "Endpoint",
    "Tag",
    "TagRouting",
    "TagRule",
    "force_tag",
    "parse_tag_rule",
    "requested_tag",
    "rule_key",
    "select",
]

RULE_SUFFIX = ".tag-router"  # TagStateRouter.RULE_SUFFIX
TAG_SEPARATOR = "|"  # TagStateRouter.TAG_SEPARATOR: "beta|team1" falls back to "beta"
V30 = "v3.0"
# The versions regproxy accepts.  Dubbo reads any string and only asks whether it starts with
# "v3.0"; a "v3.1" would silently lose its match entries, so it is refused instead.
CONFIG_VERSIONS = ("v2.7", V30)

_RULE_FIELDS = frozenset(
    # AbstractRouterRule.parseFromMap0 reads all of these; TagRouterRule adds tags.
    {
        "configVersion",
        "force",
        "runtime",
        "enabled",
        "valid",
        "priority",
        "dynamic",
        "scope",
        "key",
        "rawRule",
        "tags",
    }
)
_TAG_FIELDS = frozenset({"name", "addresses", "match"})


def rule_key(application: str) -> str:
    """The config-center key of an application's tag rule (``<application>.tag-router``)."""
    return application + RULE_SUFFIX


# ---------------------------------------------------------------------------------------------------
# The rule


@dataclass(frozen=True, slots=True)
class Tag:
    """One ``tags`` entry.  ``addresses``/``match`` are None when not given."""

    name: str
    addresses: tuple[str, ...] | None = None
    match: tuple[ParamMatch, ...] | None = None


@dataclass(frozen=True, slots=True)
class TagRule:
    """A parsed tag rule.  ``active`` is what ``TagStateRouter`` asks before using it."""

    tags: tuple[Tag, ...]
    key: str | None = None
    config_version: str | None = None
    enabled: bool = True
    force: bool = False
    runtime: bool = True
    valid: bool = True
    priority: int = 0

    @property
    def is_v30(self) -> bool:
        return self.config_version is not None and self.config_version.startswith(V30)

    @property
    def active(self) -> bool:
        """False when disabled or invalid (``valid: false``, or no tags): only static tags count."""
        return self.valid and self.enabled and bool(self.tags)


def parse_tag_rule(text: str, *, source: str = "") -> TagRule:
    """Parse a tag rule as ``TagRuleParser.parse`` does; RuleError naming the field otherwise.

    ``source`` (a ZooKeeper path, a Nacos dataId) is put on the error.
    """
    try:
        return _parse(text)
    except RuleError as exc:
        raise exc.at(source) if source else exc from None


def _parse(text: str) -> TagRule:
    fields = Fields(load_document(text), "", _RULE_FIELDS)
    version = fields.string("configVersion")
    if version is not None and version not in CONFIG_VERSIONS:
        raise RuleError(
            f"configVersion {version!r} is not one of {', '.join(CONFIG_VERSIONS)}", reason="version"
        )
    is_v30 = version is not None and version.startswith(V30)
    for unused in ("scope", "rawRule"):  # read by AbstractRouterRule, unused by the tag router
        fields.string(unused)
    fields.boolean("dynamic", False)
    entries = fields.mappings("tags", _TAG_FIELDS)
    tags = tuple(_parse_tag(entry, is_v30) for entry in entries or ())
    return TagRule(
        tags=tags,
        key=fields.string("key"),
        config_version=version,
        enabled=fields.boolean("enabled", True),
        force=fields.boolean("force", False),
        runtime=fields.boolean("runtime", True),
        # TagRuleParser: no tags makes the rule invalid (the router falls back to static tags).
        valid=fields.boolean("valid", True) and bool(tags),
        priority=fields.integer("priority", 0),
    )


def _parse_tag(entry: Fields, is_v30: bool) -> Tag:
    name = entry.required("name")
    addresses = entry.strings("addresses")
    for i, address in enumerate(addresses or ()):
        where = f"{entry.path('addresses')}[{i}]"
        if not address.strip():
            raise RuleError(f"{where} is empty", reason="value")
        if "/" in address:  # a CIDR that CIDRUtils refuses never matches anything
            check_cidr(address, where)
    match: tuple[ParamMatch, ...] | None = None
    if "match" in entry:
        if not is_v30:
            # Tag.parseFromMap reads match only for configVersion v3.0: elsewhere Dubbo ignores it.
            raise RuleError(
                f"{entry.path('match')} needs configVersion: v3.0 (Dubbo ignores match in other versions)",
                reason="version",
            )
        match = ParamMatch.parse_list(entry.raw("match"), entry.path("match"))
    if is_v30 and not addresses and match is None:
        # TagRouterRule.init iterates a v3.0 tag's match when it has no addresses: a NullPointerException.
        raise RuleError(f"{entry.where} ({name!r}) has neither addresses nor match", reason="missing-field")
    return Tag(name=name, addresses=addresses, match=match)


# ---------------------------------------------------------------------------------------------------
# The request


def requested_tag(attachments: Mapping[str, object]) -> str:
    """The request's ``dubbo.tag`` (``RpcInvocation.getAttachment``: only a string counts); "" for none."""
    value = attachments.get(TAG_KEY)
    return value if isinstance(value, str) else ""


def force_tag(attachments: Mapping[str, object]) -> bool:
    """``dubbo.force.tag`` as ``TagStateRouter.isForceUseTag`` reads it: ``Boolean.parseBoolean``."""
    value = attachments.get(FORCE_TAG_KEY)
    return isinstance(value, str) and value.lower() == "true"


# ---------------------------------------------------------------------------------------------------
# Routing


class Endpoint(Protocol):
    """A provider as the tag router sees it: a host and a port (``routing.Host``, ``DubboURL``)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


E = TypeVar("E", bound=Endpoint)
Params = Callable[[E], Mapping[str, str]]


def _address_matches(patterns: frozenset[str], host: str, port: int) -> bool:
    """``TagStateRouter.checkAddressMatch``: any pattern matches; a pattern that throws does not,
    and then its ``0.0.0.0:<port>`` comparison is skipped too (it sits after the match in the try)."""
    for pattern in patterns:
        try:
            if match_ip_expression(pattern, host, port):
                return True
        except PatternError:
            continue
        if pattern == f"{ANYHOST_VALUE}:{port}":
            return True
    return False


def _original_parameter(params: Mapping[str, str], key: str) -> str | None:
    """``ServiceAddressURL.getOriginalParameter`` on a consumer's provider URL: side and category
    are the consumer's view; everything else is what the provider registered."""
    if key == "side":
        return "consumer"
    if key == "category":
        return "providers"
    return params.get(key)


class TagRouting:
    """A tag rule bound to one service's providers: Dubbo's ``TagRouterRule`` after ``init``.

    Build it once per (providers, rule) with :meth:`bind`; :meth:`route` then answers per request.
    ``bind(None, ...)`` (no rule) and a rule that is not ``active`` route by static tags only.
    """

    __slots__ = ("_force", "_members", "_rule_active", "_tag_addresses")

    def __init__(self, rule: TagRule | None, tag_addresses: Mapping[str, frozenset[str]]) -> None:
        self._rule_active = rule is not None and rule.active
        self._force = rule is not None and rule.force
        self._tag_addresses = dict(tag_addresses)
        # (host, port) -> the tags whose addresses match it.  Matching a pattern costs a parse, so
        # each provider is matched once (bind does it for all of them), not once per request.  Being
        # at one of the rule's addresses (Dubbo's getAddresses(), the union) is "in some tag".
        self._members: dict[tuple[str, int], frozenset[str]] = {}

    @classmethod
    def bind(cls, rule: TagRule | None, providers: Sequence[E], *, params: Params[E]) -> TagRouting:
        """``TagRouterRule.init`` over the service's providers.

        ``params`` gives a provider's registered URL parameters, which a v3.0 tag's ``match`` reads.
        """
        tag_addresses: dict[str, frozenset[str]] = {}
        if rule is not None and rule.active:
            for tag in rule.tags:
                if tag.addresses:
                    tag_addresses[tag.name] = frozenset(tag.addresses)
            if rule.is_v30 and providers:
                for tag in rule.tags:
                    if tag.addresses:
                        continue
                    matchers = tag.match or ()
                    members = frozenset(
                        f"{p.host}:{p.port}"  # URL.getAddress(), as TagRouterRule.init writes it
                        for p in providers
                        if all(m.value.matches(_original_parameter(params(p), m.key)) for m in matchers)
                    )
                    if members:  # "null means tag not set"
                        tag_addresses[tag.name] = members
        routing = cls(rule, tag_addresses)
        for p in providers:
            routing._membership(p)
        return routing

    @property
    def tag_addresses(self) -> Mapping[str, frozenset[str]]:
        """Dubbo's ``tagnameToAddresses``: each tag's address patterns."""
        return self._tag_addresses

    def _membership(self, p: Endpoint) -> frozenset[str]:
        key = (p.host, p.port)
        names = self._members.get(key)
        if names is None:
            names = frozenset(
                name
                for name, patterns in self._tag_addresses.items()
                if _address_matches(patterns, p.host, p.port)
            )
            self._members[key] = names
        return names

    def _level(self, tag: str, force: bool) -> str | None:
        """``TagStateRouter.selectAddressByTagLevel``: "a|b|c" tries "a|b|c", "a|b", "a" unless forced."""
        if force or TAG_SEPARATOR not in tag:
            return tag if tag in self._tag_addresses else None
        parts = tag.split(TAG_SEPARATOR)
        for i in range(len(parts), 0, -1):
            name = TAG_SEPARATOR.join(parts[:i])
            if self._tag_addresses.get(name):
                return name
        return None

    def route(
        self, candidates: Sequence[E], request_tag: str, force_tag: bool, *, params: Params[E]
    ) -> tuple[E, ...]:
        """The providers ``TagStateRouter.doRoute`` keeps, in their order.

        ``params`` gives a candidate's URL parameters after configurators; its ``dubbo.tag`` is the
        static tag.  With an active rule and a request tag T:

        1. T (or, unless ``force_tag``, its longest ``|``-prefix) names a rule tag: the candidates
           at its addresses — returned even when empty if the *rule* says ``force: true``; when
           empty otherwise, go to 3.  A rule tag takes precedence over static tags: static ``T``
           providers are not consulted.
        2. T names no rule tag: the candidates whose static tag is T.
        3. Still nothing: empty if ``force_tag``, else the failover — candidates at no rule address
           and without a static tag (not "all providers").

        Without a request tag: the candidates at no rule address and without a static tag — but
        when every candidate is at a rule address, none (an untagged request then fails even if
        some candidates carry no tag at all).

        Without an active rule (``filterUsingStaticTag``): T → the static-T candidates, else (unless
        ``force_tag``) the untagged ones; no T → the untagged ones.  A tagged provider never serves
        untagged requests.
        """
        if not self._rule_active:
            if request_tag:
                tagged = tuple(c for c in candidates if params(c).get(TAG_KEY) == request_tag)
                if tagged or force_tag:
                    return tagged
            return tuple(c for c in candidates if not params(c).get(TAG_KEY))
        if request_tag:
            name = self._level(request_tag, force_tag)
            if name is not None:
                result = tuple(c for c in candidates if name in self._membership(c))
                if result or self._force:
                    return result
            else:
                result = tuple(c for c in candidates if params(c).get(TAG_KEY) == request_tag)
            if result or force_tag:
                return result
            return tuple(c for c in candidates if not self._membership(c) and not params(c).get(TAG_KEY))
        if self._tag_addresses:
            outside = tuple(c for c in candidates if not self._membership(c))
            if not outside:
                return outside
            return tuple(c for c in outside if not params(c).get(TAG_KEY))
        return tuple(c for c in candidates if not params(c).get(TAG_KEY))


def select(
    rule: TagRule | None,
    providers: Sequence[E],
    request_tag: str,
    force_tag: bool = False,
    *,
    params: Params[E],
) -> tuple[E, ...]:
    """One routing decision: :meth:`TagRouting.bind` and :meth:`TagRouting.route` over the same
    providers, with the same parameters for the rule's ``match`` and the static tags."""
    return TagRouting.bind(rule, providers, params=params).route(
        providers, request_tag, force_tag, params=params
    )
