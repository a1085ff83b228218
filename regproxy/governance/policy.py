"""A subscription's providers as Dubbo's consumer-side rules leave them, and the routing stage the
planner runs per request.  Pure: no I/O, no clock; the only random draw (a v3.1 condition's weighted
destinations) uses the generator it is given.

Built by the discovery coordinator whenever a subscription's providers or its rules change
(regproxy.discovery.rules gathers the rules in force); the planner (regproxy.proxy.plan) reads it
through ``routing.model.HostPolicy``.  What a Dubbo 3.3 consumer does, in order:

1. ``RegistryDirectory.refreshInvoker`` → ``toInvokers`` → ``overrideWithConfigurators``: each provider
   URL configured by the registry's 2.6-era override URLs, then the consumer application's
   configurators, then the service's (``configured``); a provider whose result has ``disabled=true``
   (or, without ``disabled``, ``enabled=false``) is dropped.  The configured ``weight`` and
   ``dubbo.tag`` are what the balancer and the tag router read, and a configured ``timeout`` /
   ``<method>.timeout`` bounds the call (``timeout_ms``).
2. The router chain (``RouterChain``, by ``@Activate`` order): ``TagStateRouter`` (100), then the
   condition rules of the service (``ServiceStateRouter``, 140), the provider application
   (``ProviderAppStateRouter``, 145) and the consumer application (``AppStateRouter``, 150).  The
   local file's ``routes:`` subsets and the balancer come after (regproxy.proxy.plan).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from regproxy.governance.condition import GENERIC_METHODS, ConditionRouters
from regproxy.governance.configurator import Configurator, configure_consumer
from regproxy.governance.tag import TagRouting, TagRule, force_tag, requested_tag
from regproxy.registry.url import DubboURL
from regproxy.routing.model import Host, RequestView

__all__ = [
    "ClusterPolicy",
    "Configured",
    "Probe",
    "ServiceRules",
    "configured",
    "enabled",
    "override_timeouts",
]

# Per-method results kept for rules that read nothing of a request but its method: bounded, a peer
# sending endless method names must not grow it.
MAX_METHODS: Final = 256


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """The dynamic rules one subscription is under, each already parsed (regproxy.governance.store).
    ``configurators`` in Dubbo's order (registry override URLs, application, service); ``sources``:
    the rule ids they came from, for ``config_dump``."""

    configurators: tuple[Configurator, ...] = ()
    conditions: ConditionRouters = field(default_factory=ConditionRouters)
    tag: TagRule | None = None
    sources: tuple[str, ...] = ()

    @property
    def routes(self) -> bool:
        """Whether a router rule is in force (configurators alone change hosts, not requests)."""
        return bool(self.conditions.rules) or (self.tag is not None and self.tag.active)

    def __bool__(self) -> bool:
        return bool(self.configurators) or self.routes


def enabled(url: DubboURL) -> bool:
    """``RegistryDirectory.toInvokers``: ``disabled`` when present, else ``enabled`` (default true)."""
    disabled = url.params.get("disabled")
    if disabled is not None:
        return disabled.lower() != "true"
    return url.params.get("enabled", "true").lower() != "false"


@dataclass(slots=True)
class Configured:
    """A subscription's provider lists after configurators: ``providers`` (per registry, the disabled
    left out), the timeouts they set (``timeout_ms``: method, "" for the service → ms) and how many
    providers they disabled."""

    providers: dict[str, list[DubboURL]]
    timeouts: dict[str, int]
    disabled: int


def configured(
    providers: Mapping[str, Sequence[DubboURL]],
    configurators: Sequence[Configurator],
    *,
    application: str,
    local_host: str,
) -> Configured:
    """Each provider URL as a consumer of ``application`` on ``local_host`` reads it through
    ``configurators`` (``configure_consumer``); a provider they disable is left out (``enabled``)."""
    out: dict[str, list[DubboURL]] = {}
    timeouts: dict[str, int] = {}
    disabled = 0
    for key, urls in providers.items():
        kept: list[DubboURL] = []
        for url in urls:
            after = configure_consumer(url, configurators, application=application, local_host=local_host)
            if after is not url:
                for method, ms in override_timeouts(url, after).items():
                    timeouts[method] = max(timeouts.get(method, 0), ms)
            if enabled(after):
                kept.append(after)
            else:
                disabled += 1
        out[key] = kept
    return Configured(out, timeouts, disabled)


def override_timeouts(before: DubboURL, after: DubboURL) -> dict[str, int]:
    """The ``timeout`` (key "") and ``<method>.timeout`` values configurators set on one provider.

    Dubbo reads the timeout from the invoker it chose; regproxy bounds a call before it picks a
    host, so where configurators give providers different values the largest wins (no call is cut
    shorter than its provider's override allows: see ``configured``)."""
    out: dict[str, int] = {}
    for key, value in after.params.items():
        if key != "timeout" and not key.endswith(".timeout"):
            continue
        if before.params.get(key) == value or not (value.isascii() and value.isdigit()) or int(value) <= 0:
            continue
        out["" if key == "timeout" else key[: -len(".timeout")]] = int(value)
    return out


class ClusterPolicy:
    """One subscription's rules bound to its providers: ``routing.model.HostPolicy``.

    ``urls``: address → the provider URL after configurators (what condition rules read of a
    provider); ``consumer``: the consumer's URL (``consumer://ip/interface?application=...``)."""

    __slots__ = (
        "_by_method",
        "_by_tag",
        "_cached_for",
        "_conditioned",
        "_conditions",
        "_conditions_fixed",
        "_has_conditions",
        "_per_request",
        "_reads_arguments",
        "_reads_method",
        "_rng",
        "_tag",
        "_timeouts",
        "_urls",
        "consumer",
        "routes",
        "routes_tags",
        "rules",
    )

    def __init__(
        self,
        rules: ServiceRules,
        consumer: DubboURL,
        urls: Mapping[str, DubboURL],
        hosts: Sequence[Host],
        *,
        timeouts: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.rules = rules
        self.consumer = consumer
        self._urls = dict(urls)
        self._timeouts = dict(timeouts or {})
        self._rng = rng if rng is not None else random.Random()
        self._conditions = rules.conditions
        self._has_conditions = bool(rules.conditions.rules)
        tag_rule = rules.tag if rules.tag is not None and rules.tag.active else None
        self._tag = TagRouting.bind(tag_rule, hosts, params=_params) if tag_rule is not None else None
        self.routes = self._tag is not None or self._has_conditions
        self.routes_tags = self._tag is not None
        # What the condition rules read of a request, worked out once (the rules' own properties
        # walk every condition each time they are asked).
        reads = self._conditions.request_reads
        self._reads_method = "method" in reads
        self._reads_arguments = "arguments" in reads
        # The conditions' result depends on the method alone (and the hosts they get): kept per
        # (hosts, method) even when the tag router makes the whole route per request.
        self._conditions_fixed = not (reads - {"method"}) and not self._conditions.randomized
        # Anything but the method read, or a random draw: the planner routes each such request.
        self._per_request = self._tag is not None or not self._conditions_fixed
        self._by_method: dict[str, tuple[Host, ...] | str] = {}
        self._by_tag: dict[tuple[str, bool], tuple[Host, ...]] = {}
        self._conditioned: dict[tuple[int, str], tuple[tuple[Host, ...], tuple[Host, ...] | str]] = {}
        self._cached_for: tuple[Host, ...] | None = None

    def fixed_for(self, method: str) -> bool:
        """Whether every request for ``method`` gets the same hosts (the plan may be memoised): no
        rule reads the attachments or arguments or draws, and the method is not a generic call's
        (``$invoke`` names the invoked method in its first argument, ``RpcUtils.getMethodName``)."""
        return not self._per_request and not (self._reads_method and method in GENERIC_METHODS)

    def request_key(self, request: RequestView) -> tuple[str, bool] | None:
        """When the hosts depend on nothing of a request but its method and its tag: the tag and
        whether it is forced (a plan may be memoised under them); None when each request must be
        routed (a rule reads arguments or other attachments, or draws)."""
        if self._tag is None or not self._conditions_fixed:
            return None
        if self._reads_method and request.method in GENERIC_METHODS:
            return None
        attachments = request.attachments
        return requested_tag(attachments), force_tag(attachments)

    def key_of(self, attachments: Mapping[str, Any]) -> tuple[str, bool]:
        """``request_key`` of a request with these attachments, for a method that has one."""
        return requested_tag(attachments), force_tag(attachments)

    def timeout_ms(self, method: str) -> int | None:
        """The timeout configurators set for ``method`` (``<method>.timeout`` before ``timeout``)."""
        if not self._timeouts:
            return None
        return self._timeouts.get(method) or self._timeouts.get("")

    def route(self, hosts: tuple[Host, ...], request: RequestView) -> tuple[Host, ...] | str:
        """The hosts the tag and condition routers leave for ``request``, in their order, or why
        there are none (the NoRoute message).  Results that depend only on the method and the
        request's tag are kept, per host tuple: a rule costs a dict lookup or two per request."""
        if self._cached_for is not hosts:
            self._by_method, self._by_tag, self._conditioned = {}, {}, {}
            self._cached_for = hosts
        method = request.method
        if self.fixed_for(method):
            known = self._by_method.get(method)
            if known is None:
                known = self._route(hosts, request, {})
                if len(self._by_method) < MAX_METHODS:
                    self._by_method[method] = known
            return known
        return self._route(hosts, request, request.attachments)

    def explain(self, hosts: tuple[Host, ...], request: RequestView) -> list[tuple[str, Any]]:
        """Each router's output for ``request``, in the chain's order: (stage, the addresses it left
        or why it left none).  For operators (``/api/v1/rules?cluster=``): not cached, not the data path."""
        out: list[tuple[str, Any]] = []
        attachments = request.attachments
        if self._tag is not None:
            tag = requested_tag(attachments)
            hosts = self._tag.route(hosts, tag, force_tag(attachments), params=_params)
            out.append(("tag router", [h.address for h in hosts] or f"no provider for dubbo.tag={tag!r}"))
        conditions = self._conditions
        for stage, rule in (
            ("service condition rule", conditions.service),
            ("provider application condition rule", conditions.provider_application),
            ("consumer application condition rule", conditions.consumer_application),
        ):
            if rule is None or not hosts:
                continue
            urls = [self._urls[h.address] for h in hosts if h.address in self._urls]
            routed = rule.route(
                urls, self.consumer, request.method, (), attachments, draw=self._rng.randrange
            )
            if routed.blocked is not None:
                out.append((stage, str(routed.blocked)))
                return out
            keep = {u.address for u in routed.providers}
            hosts = tuple(h for h in hosts if h.address in keep)
            out.append((stage, [h.address for h in hosts]))
        return out

    def _route(
        self, hosts: tuple[Host, ...], request: RequestView, attachments: Mapping[str, Any]
    ) -> tuple[Host, ...] | str:
        if self._tag is not None:
            tag = requested_tag(attachments)
            key = (tag, force_tag(attachments))
            tagged = self._by_tag.get(key)
            if tagged is None:
                tagged = self._tag.route(hosts, tag, key[1], params=_params)
                if len(self._by_tag) < MAX_METHODS:
                    self._by_tag[key] = tagged
            if not tagged:
                asked = f"dubbo.tag={tag!r}" if tag else "no dubbo.tag"
                return f"the tag rule leaves no provider for a request with {asked}"
            hosts = tagged
        if not self._has_conditions:
            return hosts
        method = request.method
        if self._conditions_fixed and not (self._reads_method and method in GENERIC_METHODS):
            ckey = (id(hosts), method)
            entry = self._conditioned.get(ckey)
            if entry is None or entry[0] is not hosts:
                entry = (hosts, self._condition(hosts, request, attachments))
                if len(self._conditioned) < MAX_METHODS:
                    self._conditioned[ckey] = entry
            return entry[1]
        return self._condition(hosts, request, attachments)

    def _condition(
        self, hosts: tuple[Host, ...], request: RequestView, attachments: Mapping[str, Any]
    ) -> tuple[Host, ...] | str:
        urls = [self._urls[h.address] for h in hosts if h.address in self._urls]
        arguments: Sequence[object] = ()
        if self._reads_arguments or (self._reads_method and request.method in GENERIC_METHODS):
            arguments = _arguments(request)
        routed = self._conditions.route(
            urls, self.consumer, request.method, arguments, attachments, draw=self._rng.randrange
        )
        if routed.blocked is not None:
            return str(routed.blocked)
        if not routed.providers:
            return "the condition rules leave no provider"
        keep = {u.address for u in routed.providers}
        return tuple(h for h in hosts if h.address in keep)


class Probe:
    """A request as an operator describes it (``/api/v1/rules?cluster=...&method=...&tag=...``)."""

    def __init__(self, method: str, attachments: Mapping[str, Any]) -> None:
        self.method = method
        self.attachments = attachments

    def arguments(self) -> list[Any]:
        return []


def _params(host: Host) -> Mapping[str, str]:
    # A host's metadata is its provider URL's parameters after configurators (discovery.tables).
    return host.metadata


def _arguments(request: RequestView) -> Sequence[object]:
    """The decoded arguments, or none when they cannot be decoded (a rule on them then matches
    nothing, as for a call without them)."""
    try:
        return request.arguments()
    except Exception:  # hessian2 of a class the decoder cannot read: never fail the request here
        return ()
