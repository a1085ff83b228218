"""The config file's static clusters and routes, compiled for the data path: the routing table's
snapshot (what a plain route can say) and the rule set (every route, in order)."""

from __future__ import annotations

import math

from regproxy.config import Config, RouteConfig
from regproxy.routing.model import Cluster, Host, Route, RouteMatch
from regproxy.routing.rules import (
    RETRY_CONNECT,
    RETRY_NAMES,
    Fault,
    RateLimit,
    Rule,
    RuleSet,
    StringMatch,
    Subset,
)
from regproxy.routing.table import RoutingTable

__all__ = ["rule_set", "static_table"]


def static_table(config: Config) -> RoutingTable:
    """The static routes and clusters as a routing-table snapshot."""
    clusters = [
        Cluster(
            name=c.name,
            lb=c.lb,
            hosts=tuple(
                Host(address=str(h.address), weight=h.weight, metadata=dict(h.metadata)) for h in c.hosts
            ),
        )
        for c in config.clusters
    ]
    static = {c.name for c in config.clusters}
    routes = [
        Route(
            name=r.name,
            match=RouteMatch(
                service=r.match.service,  # type: ignore[arg-type]  # plain: a str
                version=r.match.version,
                group=r.match.group,
                method=r.match.method,  # type: ignore[arg-type]
            ),
            cluster=r.target,  # type: ignore[arg-type]
            timeout_ms=r.timeout,
            retries=r.attempts,
        )
        for r in config.routes
        if _in_table(r, static)
    ]
    return RoutingTable(routes=routes, clusters=clusters)


def _in_table(r: RouteConfig, static: set[str]) -> bool:
    # Routes the table can express go there too, so services without rule work keep the
    # table's fast path; the others exist only as rules.
    return r.match.plain and r.target in static


def rule_set(config: Config) -> RuleSet:
    """Every route as a compiled rule (regproxy.routing.rules), in order."""
    static = {c.name for c in config.clusters}
    rules = []
    for r in config.routes:
        m = r.match
        service = (
            StringMatch("exact", m.service)
            if isinstance(m.service, str)
            else StringMatch(*m.service.kind_value())
        )
        method = None
        if m.method is not None:
            method = (
                StringMatch("exact", m.method)
                if isinstance(m.method, str)
                else StringMatch(*m.method.kind_value())
            )
        action = r.route
        retry_on = RETRY_CONNECT
        subsets: tuple[Subset, ...] = ()
        if action is not None:
            if action.retry is not None:
                for name in action.retry.on:
                    retry_on |= RETRY_NAMES[name]
            subsets = tuple(
                Subset(tuple(sorted(ws.subset.items())), ws.weight) for ws in action.weighted_subsets
            )
        fault = None
        if r.fault is not None and (r.fault.delay or r.fault.abort):
            d, a = r.fault.delay, r.fault.abort
            fault = Fault(
                delay_ms=d.fixed if d else 0,
                delay_percent=d.percentage if d else 0.0,
                abort_status=a.status if a else 0,
                abort_message=a.message if a else "",
                abort_percent=a.percentage if a else 0.0,
            )
        limit = None
        if r.rate_limit is not None:
            rl = r.rate_limit
            burst = rl.burst if rl.burst is not None else max(1, math.ceil(rl.requests_per_second))
            limit = RateLimit(rl.requests_per_second, burst, rl.per)
        rules.append(
            Rule(
                name=r.name,
                service=service,
                version=m.version,
                group=m.group,
                method=method,
                attachments=tuple((k, StringMatch(*v.kind_value())) for k, v in m.attachments.items()),
                cluster=r.target,
                subsets=subsets,
                timeout_ms=r.timeout,
                retries=r.attempts,
                retry_on=retry_on,
                fault=fault,
                rate_limit=limit,
                in_table=_in_table(r, static),
            )
        )
    return RuleSet(rules)
