"""Route rules: the traffic-management layer above the routing table (issue 7).

A ``RuleSet`` is an immutable, compiled form of the config's ``routes`` list.  The forwarder reads
it once per request, next to the routing-table snapshot, and keeps what it derived (cluster, hosts,
balancer, retry policy, filters) on the exchange, so a request in flight finishes on the rules it
started with even when a reload swaps both.

Cost model: ``lookup(service)`` is one dict lookup.  It answers None (no rule work at all: the
routing table decides, as before rules existed) unless some rule that can apply to that service
needs rule processing (an attachment or prefix/regex match, subsets, faults, a rate limit, a
retry policy beyond connect failures, or a cluster the table cannot express).  Attachments are
parsed only when a candidate rule for the service needs them (``Rule.needs_attachments``).

Tag routing (Dubbo's static tags) lives here too as ``TagIndex``: a cluster whose hosts carry no
``dubbo.tag`` never makes a request parse its attachments for it.
"""

from __future__ import annotations

import bisect
import random as _random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .model import Host, normalize_version

__all__ = [
    "FORCE_TAG_KEY",
    "RETRY_CONNECT",
    "RETRY_ERROR",
    "RETRY_FAILOVER",
    "RETRY_NAMES",
    "RETRY_RESET",
    "RETRY_TIMEOUT",
    "RETRY_UNAVAILABLE",
    "TAG_KEY",
    "UNAVAILABLE_STATUSES",
    "Fault",
    "RateLimit",
    "Rule",
    "RuleSet",
    "StringMatch",
    "Subset",
    "TagIndex",
    "subset_hosts",
]

# Retry conditions, as bit flags so the per-response check is one AND.
RETRY_CONNECT = 1  # connecting failed: the request was never written; always safe
RETRY_RESET = 2  # the connection was lost with the request written: it may have run
RETRY_UNAVAILABLE = 4  # the upstream answered with a status meaning it did not run the call
# Dubbo's FailoverClusterInvoker, where a provider URL, an override or /sub params declare `retries`
# (regproxy.governance.params): every non-business failure is retried, timeouts and error statuses
# included. Not a `retry.on` name of the local file.
RETRY_TIMEOUT = 8
RETRY_ERROR = 16  # any status but OK
RETRY_FAILOVER = RETRY_CONNECT | RETRY_RESET | RETRY_UNAVAILABLE | RETRY_TIMEOUT | RETRY_ERROR
RETRY_NAMES: Mapping[str, int] = {
    "connect-failure": RETRY_CONNECT,
    "reset": RETRY_RESET,
    "unavailable": RETRY_UNAVAILABLE,
}
# Statuses a Dubbo server sends without invoking the service: channel inactive (35), service not
# found (60: e.g. the peer's ingress has no route to its app) and thread pool exhausted (100).
UNAVAILABLE_STATUSES: frozenset[int] = frozenset({35, 60, 100})

TAG_KEY = "dubbo.tag"
FORCE_TAG_KEY = "dubbo.force.tag"


class StringMatch:
    """exact | prefix | regex (full match, as Envoy does) | present (attachments only)."""

    __slots__ = ("_re", "kind", "value")

    KINDS = ("exact", "prefix", "regex", "present")

    def __init__(self, kind: str, value: str = "") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown match kind {kind!r} (one of {', '.join(self.KINDS)})")
        self.kind = kind
        self.value = value
        self._re = re.compile(value) if kind == "regex" else None

    def __call__(self, text: str) -> bool:
        kind = self.kind
        if kind == "exact":
            return text == self.value
        if kind == "prefix":
            return text.startswith(self.value)
        if kind == "regex":
            assert self._re is not None
            return self._re.fullmatch(text) is not None
        return True  # present: the caller checked the key exists

    def __repr__(self) -> str:
        return f"StringMatch({self.kind}={self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StringMatch) and (self.kind, self.value) == (other.kind, other.value)

    def __hash__(self) -> int:
        return hash((self.kind, self.value))


@dataclass(frozen=True, slots=True)
class Subset:
    """Hosts whose metadata (provider URL parameters) contain all of ``params``."""

    params: tuple[tuple[str, str], ...]
    weight: int = 1

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.params) or "(all hosts)"

    def selects(self, host: Host) -> bool:
        md = host.metadata
        return all(md.get(k) == v for k, v in self.params)


def subset_hosts(hosts: Sequence[Host], subset: Subset) -> tuple[Host, ...]:
    return tuple(h for h in hosts if subset.selects(h))


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection of one rule; percentages are 0..100, floats allowed."""

    delay_ms: int = 0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_message: str = ""
    abort_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per service (``per="service"``) or per service and method (``per="method"``)."""

    requests_per_second: float
    burst: int
    per: str = "service"


class _Body(Protocol):
    @property
    def attachments(self) -> Mapping[str, Any]: ...
    @property
    def group(self) -> str: ...


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One compiled route rule.  ``cluster=None``: the cluster the routing table gives the service
    (its subscription's), i.e. the rule only adds behaviour."""

    name: str
    service: StringMatch
    version: str | None = None
    group: str | None = None
    method: StringMatch | None = None
    attachments: tuple[tuple[str, StringMatch], ...] = ()
    cluster: str | None = None
    subsets: tuple[Subset, ...] = ()
    timeout_ms: int | None = None
    retries: int | None = None  # None: the table route's (or 1)
    retry_on: int = RETRY_CONNECT
    fault: Fault | None = None
    rate_limit: RateLimit | None = None
    # True when the routing table holds an equivalent route (exact/"*" service, exact method, no
    # attachments, a static cluster, no extra behaviour): such a rule alone needs no rule work.
    in_table: bool = False
    _cumulative: tuple[int, ...] = field(default=(), init=False, repr=False)
    _total: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.version is not None:
            object.__setattr__(self, "version", normalize_version(self.version))
        if self.subsets:
            weights = [s.weight for s in self.subsets]
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"rule {self.name!r}: subset weights must be >= 0 with a positive sum")
            acc, cum = 0, []
            for w in weights:
                acc += w
                cum.append(acc)
            object.__setattr__(self, "_cumulative", tuple(cum))
            object.__setattr__(self, "_total", acc)

    @property
    def needs_attachments(self) -> bool:
        return bool(self.attachments) or self.group is not None

    @property
    def rich(self) -> bool:
        """Needs the rule path of the forwarder (the table alone cannot do what it says)."""
        return not self.in_table or bool(
            self.subsets or self.fault or self.rate_limit or self.retry_on & ~RETRY_CONNECT
        )

    def matches(self, version: str, method: str, body: _Body) -> bool:
        """Everything but the service (already selected by ``RuleSet.lookup``)."""
        if self.version is not None and self.version != version:
            return False
        if self.method is not None and not self.method(method):
            return False
        if self.group is not None and body.group != self.group:
            return False
        if self.attachments:
            att = body.attachments
            for key, m in self.attachments:
                value = att.get(key)
                if value is None:
                    return False
                if not m(value if isinstance(value, str) else str(value)):
                    return False
        return True

    def choose_subset(self, rng: _random.Random) -> Subset | None:
        if not self.subsets:
            return None
        if len(self.subsets) == 1:
            return self.subsets[0]
        x = rng.random() * self._total
        return self.subsets[min(bisect.bisect_right(self._cumulative, x), len(self.subsets) - 1)]


# A bound on cached per-service candidate lists: service names come from requests, i.e. from peers.
_LOOKUP_CACHE_MAX = 16384


class RuleSet:
    """All rules, in config order, with a per-service index of the candidates that can apply."""

    __slots__ = ("_cache", "_exact", "_patterns", "_wildcard", "rules")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        names: set[str] = set()
        for r in self.rules:
            if r.name in names:
                raise ValueError(f"duplicate rule {r.name!r}")
            names.add(r.name)
        indexed = list(enumerate(self.rules))
        self._wildcard = [(i, r) for i, r in indexed if r.service.kind == "exact" and r.service.value == "*"]
        self._patterns = [(i, r) for i, r in indexed if r.service.kind in ("prefix", "regex")]
        exact: dict[str, list[tuple[int, Rule]]] = {}
        for i, r in indexed:
            if r.service.kind == "exact" and r.service.value != "*":
                exact.setdefault(r.service.value, []).append((i, r))
        self._exact = exact
        self._cache: dict[str, tuple[Rule, ...] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"<RuleSet: {len(self.rules)} rules>"

    def lookup(self, service: str) -> tuple[Rule, ...] | None:
        """The rules that can apply to ``service``, in order; None when the table alone decides."""
        try:
            return self._cache[service]
        except KeyError:
            pass
        found = self._exact.get(service, []) + self._wildcard
        found += [(i, r) for i, r in self._patterns if r.service(service)]
        found.sort(key=lambda t: t[0])
        cands = tuple(r for _, r in found)
        result = cands if any(r.rich for r in cands) else None
        if len(self._cache) < _LOOKUP_CACHE_MAX:
            self._cache[service] = result
        return result

    @staticmethod
    def first_match(cands: tuple[Rule, ...], version: str, method: str, body: _Body) -> Rule | None:
        version = normalize_version(version)
        for r in cands:
            if r.matches(version, method, body):
                return r
        return None


class TagIndex:
    """Dubbo static tag routing over one host list.

    A request with ``dubbo.tag=T`` goes to hosts tagged T; if there is none, to untagged hosts,
    unless ``dubbo.force.tag=true`` (then nowhere).  A request without a tag goes to untagged
    hosts only (Dubbo's TagRouter without a dynamic rule: a tagged provider takes tagged
    traffic only).
    """

    __slots__ = ("tagged", "untagged")

    def __init__(self, hosts: Sequence[Host]) -> None:
        tagged: dict[str, list[Host]] = {}
        untagged: list[Host] = []
        for h in hosts:
            tag = h.metadata.get(TAG_KEY)
            if tag:
                tagged.setdefault(tag, []).append(h)
            else:
                untagged.append(h)
        self.tagged = {t: tuple(hs) for t, hs in tagged.items()}
        self.untagged = tuple(untagged)

    @staticmethod
    def build(hosts: Sequence[Host]) -> TagIndex | None:
        """None when no host is tagged: tag routing then changes nothing and costs nothing."""
        if not any(h.metadata.get(TAG_KEY) for h in hosts):
            return None
        return TagIndex(hosts)

    def select(self, attachments: Mapping[str, Any]) -> tuple[str, tuple[Host, ...]]:
        """(what was selected, for messages, and the hosts; empty when nothing may serve it)."""
        tag = attachments.get(TAG_KEY)
        if tag and isinstance(tag, str):
            hosts = self.tagged.get(tag)
            if hosts:
                return f"tag {tag!r}", hosts
            if str(attachments.get(FORCE_TAG_KEY, "")).lower() == "true":
                return f"tag {tag!r} (dubbo.force.tag=true)", ()
        return "untagged hosts", self.untagged
