"""Immutable routing-table snapshots and the holder the data path reads them from.

A new snapshot is built for every change (config reload, admin API, registry event) and swapped in
whole, so a request sees one consistent table and the data path needs no locks.  All indexing work
is done at construction; ``match`` is one dict lookup plus a scan over the routes that can apply to
that service (its exact routes and the ``"*"`` routes, in the original order).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from types import MappingProxyType
from typing import Any

from .balancer import BALANCERS
from .model import _NO_VERSION_SET, Cluster, Route

log = logging.getLogger(__name__)

WILDCARD = "*"

# Snapshot ids are global so that two tables never share one, even when built by different holders.
_versions = itertools.count(1)

# (version, group, method, route): the match fields unpacked once, so the scan does no attribute chains.
_Candidate = tuple[str | None, str | None, str | None, Route]


def _compile(routes: Iterable[Route]) -> tuple[_Candidate, ...]:
    return tuple((r.match.version, r.match.group, r.match.method, r) for r in routes)


def _constrains_group(candidates: tuple[_Candidate, ...]) -> bool:
    return any(c[1] is not None for c in candidates)


class RoutingTable:
    """An immutable snapshot of routes and clusters.  Build once, never mutate."""

    __slots__ = (
        "_by_service",
        "_needs_group",
        "_wildcard",
        "_wildcard_group",
        "clusters",
        "routes",
        "version",
    )

    routes: tuple[Route, ...]
    clusters: Mapping[str, Cluster]
    version: int

    def __init__(self, routes: Sequence[Route] = (), clusters: Iterable[Cluster] = ()) -> None:
        routes = tuple(routes)
        by_name: dict[str, Cluster] = {}
        for c in clusters:
            if c.name in by_name:
                raise ValueError(f"duplicate cluster {c.name!r}")
            if c.lb not in BALANCERS:
                choices = ", ".join(sorted(BALANCERS))
                raise ValueError(
                    f"cluster {c.name!r}: unknown load balancer {c.lb!r} (choose one of {choices})"
                )
            by_name[c.name] = c
        route_names: set[str] = set()
        for r in routes:
            if r.name in route_names:
                raise ValueError(f"duplicate route {r.name!r}")
            route_names.add(r.name)
            if r.cluster not in by_name:
                raise ValueError(f"route {r.name!r}: unknown cluster {r.cluster!r}")

        # Each service gets its own merged list (its routes plus the wildcard routes, in table order) so a
        # request never has to interleave two lists.  Building is linear in routes per service, not
        # services x routes, because registry events rebuild the table often.
        wild: list[tuple[int, Route]] = []
        exact: dict[str, list[tuple[int, Route]]] = {}
        for i, r in enumerate(routes):
            if r.match.service == WILDCARD:
                wild.append((i, r))
            else:
                exact.setdefault(r.match.service, []).append((i, r))
        wildcard = _compile(r for _, r in wild)
        by_service = {
            s: _compile(r for _, r in heapq.merge(own, wild, key=itemgetter(0))) for s, own in exact.items()
        }

        _set = object.__setattr__
        _set(self, "routes", routes)
        _set(self, "clusters", MappingProxyType(by_name))
        _set(self, "version", next(_versions))
        _set(self, "_by_service", by_service)
        _set(self, "_wildcard", wildcard)
        _set(self, "_needs_group", {s: _constrains_group(c) for s, c in by_service.items()})
        _set(self, "_wildcard_group", _constrains_group(wildcard))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RoutingTable is immutable (cannot set {name!r}); build a new one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RoutingTable is immutable (cannot delete {name!r})")

    def __repr__(self) -> str:
        return f"<RoutingTable v{self.version}: {len(self.routes)} routes, {len(self.clusters)} clusters>"

    def needs_group(self, service: str) -> bool:
        """True when some route that could match ``service`` constrains the group.

        The group lives in the attachments, after the arguments; the engine skips decoding them
        unless this says the answer depends on it.
        """
        return self._needs_group.get(service, self._wildcard_group)

    def match(self, service: str, version: str, method: str, group: str | None) -> Route | None:
        """The first route, in table order, whose fields all match; None when no route does.

        ``group=None`` means "not parsed" and is only allowed when ``needs_group(service)`` is
        False; reaching a group-constrained route without a group raises ValueError.
        """
        candidates = self._by_service.get(service, self._wildcard)
        if version in _NO_VERSION_SET:
            version = ""
        for r_version, r_group, r_method, route in candidates:
            if r_version is not None and r_version != version:
                continue
            if r_method is not None and r_method != method:
                continue
            if r_group is not None:
                if group is None:
                    raise ValueError(
                        f"route {route.name!r} matches on group but the request group was not parsed "
                        f"(check needs_group({service!r}) first)"
                    )
                if r_group != group:
                    continue
            return route
        return None

    def with_changes(
        self, routes: Sequence[Route] | None = None, clusters: Iterable[Cluster] | None = None
    ) -> RoutingTable:
        """A new snapshot with ``routes`` and/or ``clusters`` replaced (None keeps the current ones)."""
        return RoutingTable(
            self.routes if routes is None else routes,
            self.clusters.values() if clusters is None else clusters,
        )

    def with_cluster(self, cluster: Cluster) -> RoutingTable:
        """A new snapshot with ``cluster`` added, or replacing the cluster of the same name."""
        clusters = dict(self.clusters)
        clusters[cluster.name] = cluster
        return RoutingTable(self.routes, clusters.values())

    def inserting(self, index: int, route: Route, cluster: Cluster) -> RoutingTable:
        """A new snapshot with ``route`` at position ``index`` of the routes and its ``cluster``
        (new, or replacing the one of that name).  Only the route's own service is re-indexed, so a
        subscription added to a table of thousands costs little more than one added to an empty one;
        a wildcard-service route changes every service's list, and builds the table anew."""
        if route.match.service == WILDCARD:
            routes = list(self.routes)
            routes.insert(index, route)
            return self._rebuilt(routes, cluster)
        if any(r.name == route.name for r in self.routes):
            raise ValueError(f"duplicate route {route.name!r}")
        routes = (*self.routes[:index], route, *self.routes[index:])
        return self._reindexed(routes, route.match.service, cluster, None)

    def removing(self, route_name: str, cluster_name: str | None = None) -> RoutingTable:
        """A new snapshot without the route named ``route_name`` (and the cluster ``cluster_name``,
        which no remaining route may use); as ``inserting``, only that route's service is re-indexed."""
        gone = [r for r in self.routes if r.name == route_name]
        if not gone:
            raise KeyError(f"no route {route_name!r}")
        routes = tuple(r for r in self.routes if r.name != route_name)
        if cluster_name is not None and any(r.cluster == cluster_name for r in routes):
            raise ValueError(f"cluster {cluster_name!r} is still used by a route")
        if gone[0].match.service == WILDCARD:
            clusters = dict(self.clusters)
            if cluster_name is not None:
                clusters.pop(cluster_name, None)
            return RoutingTable(routes, clusters.values())
        return self._reindexed(routes, gone[0].match.service, None, cluster_name)

    def _rebuilt(self, routes: Sequence[Route], cluster: Cluster) -> RoutingTable:
        clusters = dict(self.clusters)
        clusters[cluster.name] = cluster
        return RoutingTable(routes, clusters.values())

    def _reindexed(
        self, routes: tuple[Route, ...], service: str, add: Cluster | None, drop: str | None
    ) -> RoutingTable:
        clusters = dict(self.clusters)
        if add is not None:
            if add.lb not in BALANCERS:
                raise ValueError(f"cluster {add.name!r}: unknown load balancer {add.lb!r}")
            clusters[add.name] = add
        if drop is not None:
            clusters.pop(drop, None)
        for r in routes:
            if r.match.service == service and r.cluster not in clusters:
                raise ValueError(f"route {r.name!r}: unknown cluster {r.cluster!r}")
        # The service's routes and the wildcard ones, in table order: one pass over the routes and
        # two map copies (a few µs per thousand routes) instead of re-indexing every service.
        candidates = _compile(r for r in routes if r.match.service == service or r.match.service == WILDCARD)
        by_service = dict(self._by_service)
        needs_group = dict(self._needs_group)
        if any(c[3].match.service == service for c in candidates):
            by_service[service] = candidates
            needs_group[service] = _constrains_group(candidates)
        else:
            by_service.pop(service, None)
            needs_group.pop(service, None)
        new = object.__new__(RoutingTable)
        _set = object.__setattr__
        _set(new, "routes", routes)
        _set(new, "clusters", MappingProxyType(clusters))
        _set(new, "version", next(_versions))
        _set(new, "_by_service", by_service)
        _set(new, "_wildcard", self._wildcard)
        _set(new, "_needs_group", needs_group)
        _set(new, "_wildcard_group", self._wildcard_group)
        return new

    def replacing_cluster(self, cluster: Cluster) -> RoutingTable:
        """A new snapshot where the existing cluster named like ``cluster`` is replaced by it.

        Routes only name clusters, so the route indexes are shared with this snapshot: the cost is
        one copy of the cluster map, not a rebuild.  A registry event changes one cluster's hosts,
        and this keeps its cost flat however many services the table holds.
        """
        if cluster.name not in self.clusters:
            raise KeyError(f"no cluster {cluster.name!r} to replace")
        if cluster.lb not in BALANCERS:
            raise ValueError(f"cluster {cluster.name!r}: unknown load balancer {cluster.lb!r}")
        clusters = dict(self.clusters)
        clusters[cluster.name] = cluster
        new = object.__new__(RoutingTable)
        _set = object.__setattr__
        for name in ("routes", "_by_service", "_wildcard", "_needs_group", "_wildcard_group"):
            _set(new, name, getattr(self, name))
        _set(new, "clusters", MappingProxyType(clusters))
        _set(new, "version", next(_versions))
        return new

    def describe(self) -> dict[str, Any]:
        """Plain data (JSON-ready) for admin dumps; same shape as the config file's sections."""
        return {
            "version": self.version,
            "routes": [
                {
                    "name": r.name,
                    "match": {
                        "service": r.match.service,
                        "version": r.match.version,
                        "group": r.match.group,
                        "method": r.match.method,
                    },
                    "cluster": r.cluster,
                    "timeout_ms": r.timeout_ms,
                    "retries": r.retries,
                }
                for r in self.routes
            ],
            "clusters": [
                {
                    "name": c.name,
                    "lb": c.lb,
                    "hosts": [
                        {
                            "address": h.address,
                            "weight": h.weight,
                            "healthy": h.healthy,
                            "metadata": dict(h.metadata),
                        }
                        for h in c.hosts
                    ],
                }
                for c in self.clusters.values()
            ],
        }


Listener = Callable[[RoutingTable, RoutingTable], None]


class TableHolder:
    """Holds the current snapshot.  Reading ``current`` is the atomic snapshot read of the data path.

    Listeners are called as ``listener(new, old)`` after each swap, in registration order; a
    failing listener is logged and does not stop the others (the swap has already happened).
    """

    __slots__ = ("_listeners", "current")

    def __init__(self, initial: RoutingTable | None = None) -> None:
        self.current: RoutingTable = initial if initial is not None else RoutingTable()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; returns a function that removes it again."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def swap(self, new: RoutingTable) -> RoutingTable:
        """Install ``new`` and return the previous snapshot."""
        old = self.current
        self.current = new
        for listener in tuple(self._listeners):  # a listener may remove itself while being notified
            try:
                listener(new, old)
            except Exception:
                log.exception(
                    "routing table listener %r failed (table v%d -> v%d)", listener, old.version, new.version
                )
        return old
