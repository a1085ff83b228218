"""One parameter model: the value a Dubbo parameter has for a call of one method to one provider,
and where it came from.  Pure: no I/O.

A Dubbo 3.3 consumer that discovers a provider at interface level holds it as a
``DubboServiceAddressURL`` (apache/dubbo ``dubbo-common``, ``url.component``): the provider's URL,
the consumer's own reference URL and the configurators' override URL, read through
``getMethodParameter(method, key)`` in this order:

1. the override URL's ``<method>.<key>`` (``getMethodParameterStrict``), then the consumer's, then
   the provider's (``ServiceAddressURL.getMethodParameter``);
2. then ``getParameter(key)``: the override URL's ``<key>``, the consumer's, the provider's.

So a provider's ``sayHi.timeout=200`` beats a consumer's service-wide ``timeout=1000``, and an
empty value counts as unset at every step.  That is exactly what one flat map gives when the layers
are laid over each other, provider first (:func:`layered`), and read with
``routing.dubbo_balancers.method_parameter``: each host's ``metadata`` is that map, so the
balancers, the routers and the planner all read the same values.  The consumer's parameters are
its own reference configuration (``/sub``'s ``params``) less the keys a consumer never lends a
provider (``DefaultProviderURLMergeProcessor.mergeUrl`` and ``ServiceAddressURL.getParameter``:
group, version, application, side, ``dubbo.tag``...).

Above all three: the local file's route (``timeout_ms``, retries), regproxy's own configuration.
Below: regproxy's defaults (:data:`KEYS`).  :func:`effective` says which layer a value came from,
for ``config_dump``; :func:`call_params` is what the planner needs of a cluster for one method.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from regproxy.registry.url import CONSUMER_KEYS
from regproxy.routing.dubbo_balancers import DUBBO_BALANCERS, method_parameter
from regproxy.routing.model import Host, ProviderGuard

__all__ = [
    "CLUSTER_MODES",
    "KEYS",
    "CallParams",
    "Effective",
    "KeySpec",
    "Source",
    "call_params",
    "consumer_own",
    "declaration_error",
    "declaration_problems",
    "effective",
    "generated_token",
    "layered",
    "parameter_view",
    "provider_guard",
    "token_of",
]

Source = Literal["route", "override", "consumer", "provider", "default"]

# What a consumer's parameters never set on a provider's URL: regproxy's own consumer keys, and
# those DefaultProviderURLMergeProcessor drops from the consumer's map (group, version, generic,
# release, dubbo, methods, timestamp, dubbo.tag) or ServiceAddressURL answers from the provider
# (application, side, category).
_NOT_LENT: Final = CONSUMER_KEYS | {"generic", "methods", "dubbo.tag", "tag"}

# Dubbo's cluster invokers regproxy carries out (rpc.cluster.support.*ClusterInvoker).
CLUSTER_MODES: Final = ("failover", "failfast", "failsafe", "forking", "broadcast")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One supported parameter: regproxy's default (``None``: see ``meaning``), what it does and
    which Dubbo class it comes from.  docs/parameters.md is the table of these."""

    default: str | None
    meaning: str
    dubbo: str


KEYS: Final[Mapping[str, KeySpec]] = {
    "timeout": KeySpec(
        None,
        "call timeout in ms when the request carries no `timeout`/`_TO` attachment "
        "(else `timeouts.default_ms`)",
        "DubboInvoker.calculateTimeout",
    ),
    "retries": KeySpec(
        None,
        "failover: extra attempts on other providers after a failure, timeouts included; unset: no "
        "retry once the request was written (regproxy's default; Dubbo's is 2)",
        "FailoverClusterInvoker",
    ),
    "cluster": KeySpec("failover", "failover, failfast, failsafe, forking or broadcast", "Cluster"),
    "forks": KeySpec("2", "forking: providers called at once", "ForkingClusterInvoker"),
    "loadbalance": KeySpec(
        "random",
        "random, roundrobin, leastactive, shortestresponse or consistenthash",
        "AbstractClusterInvoker.initLoadBalance",
    ),
    "weight": KeySpec("100", "share of a weighted balancer", "AbstractLoadBalance.getWeight"),
    "warmup": KeySpec(
        "600000",
        "ms after the provider's `timestamp` during which its weight ramps up",
        "AbstractLoadBalance.getWeight",
    ),
    "hash.arguments": KeySpec("0", "consistenthash: the arguments hashed", "ConsistentHashLoadBalance"),
    "hash.nodes": KeySpec("160", "consistenthash: virtual nodes per provider", "ConsistentHashLoadBalance"),
    "token": KeySpec(
        None, "sent as the `token` attachment; checked by the provider's ingress", "TokenFilter"
    ),
    "actives": KeySpec(
        "0",
        "calls in flight per provider and method at most (0: no limit); a call waits up to its "
        "timeout for a slot. Also what leastactive and shortestresponse count",
        "ActiveLimitFilter",
    ),
    "executes": KeySpec(
        "0",
        "provider side (a publication's params): calls in flight per method at most at the ingress",
        "ExecuteLimitFilter",
    ),
}


def consumer_own(params: Mapping[str, str]) -> dict[str, str]:
    """The consumer's parameters a provider URL takes (``mergeUrl``): not regproxy's own keys, not
    empty values (they count as unset)."""
    return {k: v for k, v in params.items() if v and k not in _NOT_LENT}


def layered(provider: Mapping[str, str], consumer: Mapping[str, str]) -> dict[str, str]:
    """The provider URL's parameters with the consumer's own over them (``consumer_own`` applied
    already); the configurators' overrides go over this (``governance.policy.configured``).

    Two things keep the flat map reading as the layers do.  ``URLParam.parse`` reads a
    ``default.<key>`` as ``<key>`` where that is absent, per URL: so a consumer's
    ``default.timeout`` beats a provider's ``timeout``.  And each layer's method-level values are
    checked against its own ``methods`` list (``getMethodParameterStrict``): a consumer's list is its
    interface's, which has every method it configures, so the methods its method-level values name
    join the provider's list."""
    if not consumer:
        return dict(provider)
    own = _parsed(consumer)
    merged = {**_parsed(provider), **own}
    methods = provider.get("methods", "")
    if methods:
        named = {m for m, _, key in (k.partition(".") for k in own) if key in KEYS and m != "default"}
        extra = [m for m in named if m and m not in methods]
        if extra:
            merged["methods"] = ",".join([methods, *sorted(extra)])
    return merged


def _parsed(params: Mapping[str, str]) -> dict[str, str]:
    out = dict(params)
    for key, value in params.items():
        if key.startswith("default.") and key[8:] and key[8:] not in params:
            out[key[8:]] = value
    return out


class Effective(NamedTuple):
    value: str
    source: Source
    key: str  # the parameter read: "<method>.<key>" or "<key>" ("" for a default)


def effective(
    method: str,
    key: str,
    *,
    provider: Mapping[str, str],
    consumer: Mapping[str, str] = {},
    override: Mapping[str, str] = {},
    route: str | None = None,
) -> Effective | None:
    """``key``'s value for a call of ``method`` and the layer it came from: the route, then
    Dubbo's order (module doc), then regproxy's default; None when none has one.  ``method`` ""
    reads the service-level values only."""
    if route:
        return Effective(route, "route", key)
    layers: tuple[tuple[Source, Mapping[str, str]], ...] = (
        ("override", override),
        ("consumer", consumer),
        ("provider", provider),
    )
    if method:
        mkey = f"{method}.{key}"
        for source, params in layers:
            methods = params.get("methods", "")
            if (not methods or method in methods) and params.get(mkey):
                return Effective(params[mkey], source, mkey)
    for source, params in layers:
        value = params.get(key) or params.get(f"default.{key}")
        if value:
            return Effective(value, source, key)
    spec = KEYS.get(key)
    if spec is not None and spec.default is not None:
        return Effective(spec.default, "default", "")
    return None


def parameter_view(
    provider: Mapping[str, str],
    consumer: Mapping[str, str],
    override: Mapping[str, str],
    *,
    methods: Iterable[str] = (),
) -> dict[str, dict[str, dict[str, str]]]:
    """For ``config_dump``: each supported key's effective value and source, service-wide ("*")
    and for each of ``methods`` where a method-level value differs."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    service: dict[str, dict[str, str]] = {}
    for key in KEYS:
        found = effective("", key, provider=provider, consumer=consumer, override=override)
        if found is not None:
            service[key] = {"value": found.value, "source": found.source}
    out["*"] = service
    for method in methods:
        own: dict[str, dict[str, str]] = {}
        for key in KEYS:
            found = effective(method, key, provider=provider, consumer=consumer, override=override)
            if found is not None and found.key.startswith(f"{method}."):
                own[key] = {"value": found.value, "source": found.source}
        if own:
            out[method] = own
    return out


# Cluster modes as the planner and forwarder carry them (Plan.mode).
MODE_DEFAULT: Final = 0  # nothing declared: regproxy's conservative failover (no retry once written)
MODE_FAILOVER: Final = 1  # declared failover: `retries` extra attempts after any non-business failure
MODE_FAILFAST: Final = 2
MODE_FAILSAFE: Final = 3  # a failure answers an empty (null) result
MODE_FORKING: Final = 4
MODE_BROADCAST: Final = 5
_MODES: Final = {
    "failover": MODE_FAILOVER,
    "failfast": MODE_FAILFAST,
    "failsafe": MODE_FAILSAFE,
    "forking": MODE_FORKING,
    "broadcast": MODE_BROADCAST,
}


class CallParams(NamedTuple):
    """What the planner takes from a cluster's hosts for one method (``call_params``)."""

    loadbalance: str  # one of DUBBO_BALANCERS
    mode: int  # MODE_*
    retries: int | None  # extra attempts declared (failover), None: not declared
    forks: int
    timeout_ms: int | None  # the largest `timeout` the hosts declare for the method
    actives: Mapping[str, int]  # address -> calls in flight at most; empty: no limit, nothing counted
    token: bool  # some host asks for a token (token_of)
    problems: tuple[str, ...]  # values not understood, each with what was used instead


def token_of(params: Mapping[str, str]) -> str:
    """The provider's token ("" for none): ``TokenFilter`` checks it when ``ConfigUtils.isNotEmpty``
    (not "false", "0", "null" or "N/A"); a Java provider exported with ``token=true`` registers the
    UUID it made, so the value in the registry is the token itself."""
    token = params.get("token", "")
    if token.lower() in ("", "false", "0", "null", "n/a"):
        return ""
    return token


_WHOLE_NUMBERS: Final = ("timeout", "retries", "forks", "actives", "executes", "warmup", "hash.nodes")


def declaration_error(key: str, value: str) -> str | None:
    """Why ``key=value`` cannot be declared through regproxy's API (``/pub`` or ``/sub`` params), for
    the keys this model reads, service- or method-level; None when it can. Values read from a
    registry are not refused, only logged (``declaration_problems``): they are another writer's."""
    for name in (*_WHOLE_NUMBERS, "loadbalance", "cluster"):
        if key == name or key.endswith("." + name):
            break
    else:
        return None
    if name == "loadbalance" and value not in DUBBO_BALANCERS:
        return f"{key} must be one of {', '.join(DUBBO_BALANCERS)} (got {value!r})"
    if name == "cluster" and value not in CLUSTER_MODES:
        return f"{key} must be one of {', '.join(CLUSTER_MODES)} (got {value!r})"
    if name in _WHOLE_NUMBERS and (_int(value) is None or (name != "forks" and int(value) < 0)):
        least = "a whole number" if name == "forks" else "a whole number, 0 or more"
        return f"{key} must be {least} (got {value!r})"
    return None


# The keys call_params reads from the first host, per method: where a value of one is unusable.
_DECLARED_PER_METHOD: Final = ("loadbalance", "cluster", "retries", "forks")


def declaration_problems(hosts: Sequence[Host]) -> tuple[str, ...]:
    """Every value ``call_params`` would set aside for these hosts, service-wide and for each method
    with a declaration of its own, each once ("<method>: ..." for a method's): what the coordinator
    logs, so that a provider's ``loadbalance=fastest`` is seen rather than silently defaulted."""
    if not hosts:
        return ()
    methods = {""}
    for key in hosts[0].metadata:
        method, _, name = key.partition(".")
        if name in _DECLARED_PER_METHOD and method != "default":
            methods.add(method)
    service = call_params(hosts, "").problems
    out = list(service)
    for method in sorted(methods - {""}):
        # A method without its own value reads the service's: that problem is named once, above.
        out += [f"{method}: {p}" for p in call_params(hosts, method).problems if p not in service]
    return tuple(out)


def generated_token(params: Mapping[str, str], previous: Mapping[str, str] | None) -> Mapping[str, str]:
    """``ServiceConfig``: ``token=true`` or ``token=default`` publishes a random UUID as the token
    (``ConfigUtils.isDefault``). A re-publication keeps the one made before, so consumers holding
    the URL are not turned away."""
    token = params.get("token", "")
    if token.lower() not in ("true", "default"):
        return params
    kept = previous.get("token", "") if previous is not None else ""
    if kept.lower() in ("", "true", "default"):
        kept = str(uuid.uuid4())
    return {**params, "token": kept}


def provider_guard(interface: str, params: Mapping[str, str]) -> ProviderGuard | None:
    """The ingress's checks for a service published with ``params`` (``token``, ``executes`` and
    ``<method>.executes``); None when it declares none."""
    token = token_of(params)
    limits: dict[str, int] = {}
    for key, value in params.items():
        if key == "executes" or key.endswith(".executes"):
            n = _int(value)
            if n is not None and n > 0:
                limits[key[: -len(".executes")] if key != "executes" else ""] = n
    if not token and not limits:
        return None
    return ProviderGuard(interface, token, limits)


def _declared(
    params: Mapping[str, str], method: str, key: str, problems: list[str], instead: str
) -> int | None:
    """``key``'s whole-number value for ``method``; None when unset, or not a number (named in
    ``problems`` with what happens ``instead``)."""
    text = method_parameter(params, method, key)
    if not text:
        return None
    n = _int(text)
    if n is None:
        problems.append(f"{key}={text!r} is not a number: {instead}")
    return n


def _int(text: str) -> int | None:
    text = text.strip()
    if text.lstrip("-").isdigit() and len(text) < 11:
        return int(text)
    return None


def call_params(hosts: Sequence[Host], method: str) -> CallParams:
    """Dubbo reads ``loadbalance`` from the first invoker's URL (``initLoadBalance``) and the
    cluster, ``retries`` and ``forks`` from the invokers' shared URL; regproxy reads them from the
    first host, whose metadata holds the consumer's and the overrides' values too.  The timeout is
    each provider's own in Dubbo; regproxy bounds a call before it picks a host, so the largest one
    declared wins (no call is cut shorter than its provider allows).  Unusable values fall back on
    the default and are named in ``problems``, so a typo never fails calls."""
    problems: list[str] = []
    first = hosts[0].metadata if hosts else {}
    lb = method_parameter(first, method, "loadbalance") or "random"
    if lb not in DUBBO_BALANCERS:
        problems.append(f"loadbalance={lb!r} is not one of {', '.join(DUBBO_BALANCERS)}: random used")
        lb = "random"
    cluster = method_parameter(first, method, "cluster")
    mode = MODE_DEFAULT
    if cluster:
        found = _MODES.get(cluster)
        if found is None:
            problems.append(f"cluster={cluster!r} is not one of {', '.join(CLUSTER_MODES)}: failover used")
        else:
            mode = found
    retries = _declared(first, method, "retries", problems, "not declared")
    if retries is not None:
        retries = max(retries, 0)
        if mode == MODE_DEFAULT:
            mode = MODE_FAILOVER  # Dubbo's default cluster, now with a declared retry budget
    # ForkingClusterInvoker: <= 0 or at least the providers' number means all of them.
    forks = _declared(first, method, "forks", problems, "2 used")
    if forks is None:
        forks = 2
    timeout: int | None = None
    actives: dict[str, int] = {}
    token = False
    for host in hosts:
        md = host.metadata
        text = method_parameter(md, method, "timeout")
        if text:
            ms = _int(text)
            if ms is not None and ms > 0 and (timeout is None or ms > timeout):
                timeout = ms
        text = method_parameter(md, method, "actives")
        if text:
            n = _int(text)
            if n is not None and n > 0:
                actives[host.address] = n
        if not token and token_of(md):
            token = True
    return CallParams(lb, mode, retries, forks, timeout, actives, token, tuple(problems))
