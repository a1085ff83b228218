"""Routing: immutable table snapshots, route matching, clusters and load balancers (pure, no I/O)."""

from __future__ import annotations

from .balancer import (
    BALANCERS,
    LeastRequest,
    LoadBalancer,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    make_balancer,
)
from .model import (
    NO_VERSION,
    Cluster,
    Host,
    Route,
    RouteMatch,
    ServiceKey,
    normalize_version,
    service_label,
    split_address,
)
from .table import RoutingTable, TableHolder

__all__ = [
    "BALANCERS",
    "NO_VERSION",
    "Cluster",
    "Host",
    "LeastRequest",
    "LoadBalancer",
    "Random",
    "RoundRobin",
    "Route",
    "RouteMatch",
    "RoutingTable",
    "ServiceKey",
    "TableHolder",
    "WeightedRoundRobin",
    "make_balancer",
    "normalize_version",
    "service_label",
    "split_address",
]
