"""What the admin API shows of a subscription, worked out again from the discovery's state on each
request (not the data path): each stage's hosts for a request (``explain``) and each provider's
effective Dubbo parameters with their sources (``parameters_of``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from regproxy.discovery.desired import NotFound
from regproxy.governance.configurator import configure_consumer
from regproxy.governance.params import consumer_own, layered, parameter_view
from regproxy.governance.policy import ClusterPolicy, Probe
from regproxy.registry.url import DubboURL, matches

if TYPE_CHECKING:
    from regproxy.discovery.coordinator import Discovery


def explain(disc: Discovery, cluster: str, method: str, tag: str = "") -> dict[str, Any]:
    """What each stage does to subscription ``cluster``'s providers for a request to ``method``
    (with ``dubbo.tag`` = ``tag``): the operator's "why does my call go there"."""
    st = disc.subscriptions.get(cluster)
    if st is None:
        raise NotFound(f"no subscription {cluster!r} (see /api/v1/subscriptions)")
    seen: dict[str, DubboURL] = {}
    for key in st.registries:
        for url in st.providers.get(key, ()):
            seen.setdefault(url.address, url)
    stages: list[dict[str, Any]] = [{"stage": "registry", "hosts": sorted(seen)}]
    rules = disc.rules.service_rules(st) if disc.rules.stores else None
    hosts = disc.hosts_of(st)
    if rules is not None and rules.configurators:
        stages.append({"stage": "configurators", "hosts": [f"{h.address} weight {h.weight}" for h in hosts]})
    policy = st.policy
    if isinstance(policy, ClusterPolicy) and policy.routes:
        probe = Probe(method, {"dubbo.tag": tag} if tag else {})
        for stage, result in policy.explain(hosts, probe):
            entry = (
                {"stage": stage, "hosts": result}
                if isinstance(result, list)
                else {"stage": stage, "hosts": [], "message": result}
            )
            stages.append(entry)
    return {
        "cluster": cluster,
        "method": method,
        "tag": tag,
        "rules": list(rules.sources if rules else ()),
        "stages": stages,
    }


def parameters_of(disc: Discovery, cluster: str) -> list[dict[str, Any]]:
    """Each provider of subscription ``cluster`` with the effective value of every supported
    parameter and the layer it came from (regproxy.governance.params): service-wide ("*") and
    for each method with a value of its own. For config_dump; recomputed, not the data path."""
    st = disc.subscriptions.get(cluster)
    if st is None:
        raise NotFound(f"no subscription {cluster!r} (see /api/v1/subscriptions)")
    own = consumer_own(st.consumer.params)
    rules = disc.rules.service_rules(st) if disc.rules.stores else None
    configurators = rules.configurators if rules is not None else ()
    application = st.consumer.params.get("application", "")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key in st.registries:
        for url in st.providers.get(key, ()):
            if url.address in seen or not matches(st.sub, url):
                continue
            seen.add(url.address)
            merged = dataclasses.replace(url, params=layered(url.params, own))
            override: dict[str, str] = {}
            if configurators:
                after = configure_consumer(
                    merged, configurators, application=application, local_host=disc.advertise_ip
                )
                override = {k: v for k, v in after.params.items() if merged.params.get(k) != v}
            methods = [m for m in url.params.get("methods", "").split(",") if m and m != "*"]
            values = parameter_view(url.params, own, override, methods=methods)
            out.append({"address": url.address, "parameters": values})
    return out


def found_how(disc: Discovery, cluster: str, address: str) -> dict[str, str] | None:
    """How subscription ``cluster``'s provider at ``address`` was found (merge_found): ``how`` is
    ``interface``, ``application`` or ``both``, with the application and its metadata revision when
    found at application level; None when ``cluster`` is no subscription or has no such provider."""
    st = disc.subscriptions.get(cluster)
    if st is None:
        return None
    for key in st.registries:
        found = st.found.get(key, {}).get(address)
        if found is None:
            continue
        out: dict[str, str] = {}
        if found.application is not None:
            out["how"] = "both" if found.interface else "application"
            out["application"] = found.application.app
            out["revision"] = found.application.revision
        else:
            out["how"] = "interface"
        return out
    return None


def found_counts(disc: Discovery, cluster: str, key: str) -> dict[str, int]:
    """How many of subscription ``cluster``'s providers on registry ``key`` were found each way."""
    st = disc.subscriptions.get(cluster)
    counts = {"interface": 0, "application": 0, "both": 0}
    if st is None:
        return counts
    for found in st.found.get(key, {}).values():
        how = "interface" if found.application is None else "both" if found.interface else "application"
        counts[how] += 1
    return counts
