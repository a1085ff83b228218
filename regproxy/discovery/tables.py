"""The routing tables that follow from desired state: pure functions of their arguments.

* ingress: each published service to the application port it was published with, nothing else;
* egress: the static routes first, then one route and one cluster per subscription, in
  ``route_order`` (exact versions and groups before wildcards);
* a subscription's hosts: the providers every registry of it reports, filtered by Dubbo's rules,
  one host per address, this sidecar's own listeners left out.

No registry, no event loop, no table holder: the coordinator (regproxy.discovery.coordinator)
calls these and swaps what they return.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence

from regproxy.discovery.desired import PublishSpec
from regproxy.governance.params import provider_guard
from regproxy.registry.url import DubboURL, Subscription, matches
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable
from regproxy.routing.balancer import DUBBO_LB
from regproxy.routing.model import PROTOCOL_BITS, SPEAKS_ANY, SPEAKS_DUBBO, HostPolicy, speaks_names

log = logging.getLogger(__name__)

# Dubbo's cluster layer: the balancer, cluster mode, retries, timeout... the providers' URLs, the
# consumer's params and the overrides declare (regproxy.governance.params); Dubbo's `random` when
# nothing is declared, as a Dubbo SDK consumer would.
DYNAMIC_LB = DUBBO_LB

# A provider left out for being one of this sidecar's own listeners: (registry key, URL, what it is).
OwnHit = tuple[str, DubboURL, str]


def ingress_table(published: Iterable[PublishSpec] = ()) -> RoutingTable:
    """Ingress routes: each service published through this sidecar (interface, version and group) to
    the application port it was published with, and nothing else.

    A service published in both protocols (``dubbo`` on one application port, ``tri`` on another, or
    both on one port) has one route to a cluster of those ports, each host speaking what was
    published on it (``Host.speaks``): each call goes to the port that serves its protocol.

    A publication with ``token`` or ``executes`` gets their checks on its route (``Route.guard``).

    There is no catch-all: the ingress is reachable from other hosts, and forwarding whatever
    arrives would let anyone reach any service of the local application (or, with a crafted
    publication elsewhere, its ports) without it being published. Others get SERVICE_NOT_FOUND.
    """
    by_service: dict[tuple[str, str, str], list[PublishSpec]] = {}
    for spec in sorted(published, key=lambda p: p.key):
        by_service.setdefault((spec.interface, spec.version, spec.group), []).append(spec)
    routes: list[Route] = []
    clusters: dict[str, Cluster] = {}
    for specs in by_service.values():
        speaks: dict[int, int] = {}
        for spec in specs:
            speaks[spec.port] = speaks.get(spec.port, 0) | PROTOCOL_BITS.get(spec.protocol, SPEAKS_DUBBO)
        # app:PORT for a Dubbo port (as before Triple), app:PORT/tri, app:PORT/dubbo+tri otherwise.
        cname = "app:" + ",".join(
            str(port) if bits == SPEAKS_DUBBO else f"{port}/{'+'.join(speaks_names(bits))}"
            for port, bits in sorted(speaks.items())
        )
        if cname not in clusters:
            hosts = tuple(Host(address=f"127.0.0.1:{p}", speaks=bits) for p, bits in sorted(speaks.items()))
            clusters[cname] = Cluster(name=cname, hosts=hosts)
        # The group is always matched, though it costs decoding the attachments of every request:
        # a group not published here must not reach the application either.
        first = specs[0]
        match = RouteMatch(service=first.interface, version=first.version, group=first.group)
        # The provider filters are Dubbo's (hessian attachments): the Dubbo publication's.
        dubbo = next((spec for spec in specs if spec.protocol == "dubbo"), first)
        guard = provider_guard(dubbo.interface, dubbo.params)
        routes.append(Route(name=f"pub:{dubbo.key}", match=match, cluster=cname, retries=0, guard=guard))
    return RoutingTable(routes=routes, clusters=list(clusters.values()))


def hosts_from(
    sub: Subscription,
    registries: Sequence[str],
    providers: Mapping[str, Sequence[DubboURL]],
    own: Mapping[str, str],
) -> tuple[tuple[Host, ...], list[OwnHit]]:
    """The hosts of subscription ``sub``: the providers of each of its ``registries`` (in that order)
    a Dubbo consumer would use, the first URL of an address winning; and those left out because
    their address is in ``own`` (this sidecar's own listeners, lowercase).

    Each host speaks the protocols its address is registered with (``dubbo://``, ``tri://``, or both
    for one address: a sidecar's ingress, or a Dubbo 3 port that takes both), and those its URL's
    ``ext.protocol`` names (Dubbo 3.3's port unification: ``ServiceConfig`` registers the URL of a
    port that also serves other protocols with them there, and ``RegistryDirectory
    .getEffectiveProtocol`` lets a consumer use any of them).  The parameters are the first URL's."""
    hosts: dict[str, Host] = {}
    hits: list[OwnHit] = []
    for key in registries:
        for url in providers.get(key, ()):
            known = hosts.get(url.address)
            if known is not None and known.speaks == SPEAKS_ANY:
                continue
            if not matches(sub, url):
                if url.protocol not in PROTOCOL_BITS:
                    log.debug("ignoring %s provider %s", url.protocol, url)
                continue
            bits = PROTOCOL_BITS[url.protocol] | _ext_bits(url)
            if known is not None:
                if not known.speaks & bits:
                    hosts[url.address] = dataclasses.replace(known, speaks=known.speaks | bits)
                continue
            if own and (what := own.get(url.address.lower())) is not None:
                hits.append((key, url, what))
                continue
            hosts[url.address] = Host(
                address=url.address, weight=url.weight, metadata=dict(url.params), speaks=bits
            )
    return tuple(hosts.values()), hits


def _ext_bits(url: DubboURL) -> int:
    """The protocols a provider URL's ``ext.protocol`` adds (comma-separated, unknown ones left out)."""
    ext = url.params.get("ext.protocol")
    if not ext:
        return 0
    bits = 0
    for name in ext.split(","):
        bits |= PROTOCOL_BITS.get(name.strip().lower(), 0)
    return bits


def route_order(sub: Subscription) -> tuple[bool, bool, str]:
    """Where a subscription's route goes among the others: exact versions and groups before
    wildcards, so "*" never shadows a precise subscription; then by name."""
    return (sub.version == "*", sub.group == "*" or "," in sub.group, sub.cluster_name)


def subscription_route(sub: Subscription) -> Route:
    name = sub.cluster_name
    return Route(name=name, match=sub.route_match(), cluster=name)


def subscription_cluster(
    sub: Subscription, hosts: tuple[Host, ...], policy: HostPolicy | None = None
) -> Cluster:
    return Cluster(name=sub.cluster_name, lb=DYNAMIC_LB, hosts=hosts, policy=policy)


def egress_table(static: RoutingTable, routed: Iterable[tuple[Route, Cluster]]) -> RoutingTable:
    """The static routes and clusters, then the subscriptions' (``routed``, already in route_order
    and without those a static cluster shadows)."""
    routes: list[Route] = list(static.routes)
    clusters: list[Cluster] = list(static.clusters.values())
    for route, cluster in routed:
        routes.append(route)
        clusters.append(cluster)
    return RoutingTable(routes=routes, clusters=clusters)
