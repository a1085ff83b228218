"""Load balancers: choose one host of a cluster for one request.

``pick`` runs once per request (and once per retry), so every balancer scans the host tuple in
place: no filtered copies, no sorting.  A host is eligible when it is healthy, has a positive
weight and its address is not in ``exclude`` (the addresses a retry has already tried).  When no
host is eligible, ``pick`` returns None and the caller answers with an error naming the service.

Balancers keep per-cluster state and are not thread-safe; the proxy runs on one asyncio loop.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Container, Sequence
from typing import Protocol

from .model import Host

__all__ = [
    "BALANCERS",
    "DUBBO_LB",
    "LeastRequest",
    "LoadBalancer",
    "Random",
    "RoundRobin",
    "WeightedRoundRobin",
    "make_balancer",
]


class LoadBalancer(Protocol):
    def pick(self, hosts: Sequence[Host], exclude: Container[str] = ()) -> Host | None: ...


class RoundRobin:
    """Each eligible host in turn, ignoring weights."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, hosts: Sequence[Host], exclude: Container[str] = ()) -> Host | None:
        n = len(hosts)
        start = self._next
        for i in range(start, start + n):
            h = hosts[i % n]
            if h.healthy and h.weight > 0 and h.address not in exclude:
                # Keep the counter small; the modulo above tolerates the host list changing size.
                self._next = (i + 1) % n
                return h
        return None


class Random:
    """Random choice with probability proportional to weight."""

    __slots__ = ("_rng",)

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng if rng is not None else _random.Random()

    def pick(self, hosts: Sequence[Host], exclude: Container[str] = ()) -> Host | None:
        total = 0
        for h in hosts:
            if h.healthy and h.weight > 0 and h.address not in exclude:
                total += h.weight
        if not total:
            return None
        x = self._rng.random() * total
        last = None
        for h in hosts:
            if h.healthy and h.weight > 0 and h.address not in exclude:
                x -= h.weight
                if x < 0:
                    return h
                last = h
        return last  # only reached through float rounding at the very top of the range


class WeightedRoundRobin:
    """Smooth weighted round robin, as in nginx (ngx_http_upstream_get_peer).

    Every pick adds each eligible host's weight to its current weight, chooses the host with the
    largest current weight (first one on ties) and subtracts the total from it.  Over sum(weights)
    picks each host is chosen exactly weight times, spread out rather than in bursts.  State is
    keyed by address, so a host list change leaves the other hosts' positions intact.
    """

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, hosts: Sequence[Host], exclude: Container[str] = ()) -> Host | None:
        current = self._current
        get = current.get
        total = 0
        best: Host | None = None
        best_cw = 0
        for h in hosts:
            w = h.weight
            address = h.address
            if not h.healthy or w <= 0 or address in exclude:
                continue
            cw = get(address, 0) + w
            current[address] = cw
            total += w
            if best is None or cw > best_cw:
                best, best_cw = h, cw
        if best is None:
            return None
        current[best.address] = best_cw - total
        if len(current) > 2 * len(hosts) + 16:
            self._forget_removed(hosts)
        return best

    def _forget_removed(self, hosts: Sequence[Host]) -> None:
        # Addresses that left the cluster would otherwise accumulate forever under registry churn.
        live = {h.address for h in hosts}
        self._current = {a: cw for a, cw in self._current.items() if a in live}


class LeastRequest:
    """Power of two choices: sample two distinct eligible hosts, take the less loaded one.

    Load is compared as (active + 1) / weight, i.e. the load per unit of weight the host would
    have after taking this request; with equal weights that is simply fewer active requests.
    On a tie the heavier host wins, then the first sample.
    """

    __slots__ = ("_active", "_rng")

    def __init__(self, active: Callable[[str], int], rng: _random.Random | None = None) -> None:
        self._active = active
        self._rng = rng if rng is not None else _random.Random()

    def pick(self, hosts: Sequence[Host], exclude: Container[str] = ()) -> Host | None:
        eligible = 0
        only: Host | None = None
        for h in hosts:
            if h.healthy and h.weight > 0 and h.address not in exclude:
                eligible += 1
                only = h
        if eligible <= 1:
            return only
        # Two distinct ranks among the eligible hosts, then find them without building a list.
        i = int(self._rng.random() * eligible)
        j = int(self._rng.random() * (eligible - 1))
        if j >= i:
            j += 1
        if eligible == len(hosts):
            a, b = hosts[i], hosts[j]
        else:
            a = b = hosts[0]  # placeholders; both ranks exist, so both are overwritten
            rank = 0
            for h in hosts:
                if h.healthy and h.weight > 0 and h.address not in exclude:
                    if rank == i:
                        a = h
                    elif rank == j:
                        b = h
                    rank += 1
        # Cross-multiplied to stay in integers: (la+1)/wa vs (lb+1)/wb.
        load_a = (self._active(a.address) + 1) * b.weight
        load_b = (self._active(b.address) + 1) * a.weight
        if load_b < load_a or (load_b == load_a and b.weight > a.weight):
            return b
        return a


# "dubbo": Dubbo's balancer each provider's `loadbalance` names (regproxy.routing.dubbo_balancers,
# `random` when none does), with the rest of Dubbo's cluster layer (regproxy.governance.params):
# what subscriptions use; made by the planner, not by make_balancer.
DUBBO_LB = "dubbo"
BALANCERS: frozenset[str] = frozenset(
    {"round_robin", "random", "weighted_round_robin", "least_request", DUBBO_LB}
)


def make_balancer(name: str, active: Callable[[str], int] | None = None) -> LoadBalancer:
    """A fresh balancer by config name.  ``active`` (in-flight requests per address) is required
    for ``least_request``, which has nothing to compare without it."""
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return Random()
    if name == "weighted_round_robin":
        return WeightedRoundRobin()
    if name == DUBBO_LB:
        raise ValueError("load balancer 'dubbo' is Dubbo's cluster layer: the planner makes it per method")
    if name == "least_request":
        if active is None:
            raise ValueError("load balancer 'least_request' needs an active-request counter")
        return LeastRequest(active)
    raise ValueError(f"unknown load balancer {name!r} (choose one of {', '.join(sorted(BALANCERS))})")
