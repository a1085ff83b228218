"""The routing decision, pure: where a request goes and under which policy.

Input: the routing table snapshot (regproxy.routing.table), the rule set (regproxy.routing.rules)
and the request's head, with its attachments read only where a rule or a tag needs them. Output:
a ``Plan`` (hosts, balancer, timeout, retries, filters) or a ``NoRoute`` naming the status and the
reason the request is answered with. No sockets, no event loop, no writes: the Forwarder runs the
request a Plan describes (deadlines, retries, responses) and writes the NoRoute answer.

Stages, in order (``Planner.route``): rule match (service, then version, method and attachments) →
the route of the table → the cluster → the config center's routers bound to it (the cluster's
``policy``: Dubbo's tag router, then its condition rules; regproxy.governance.policy) → a rule's
weighted subset → Dubbo static tag routing (where the policy does not route tags itself). The
configurators' weights and timeouts are in the cluster and its policy already.

The common case costs one dict lookup: a request with no rule and no tag routing gets a Plan
memoised by (service, version, method, and the group where the table matches on it), and by the
exact bytes of its head (``heads``), until the table or the rules change.  A policy whose routers
read only the method keeps that; one with a tag rule memoises per (tag, forced, group).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from regproxy.dubbo.frame import Status
from regproxy.dubbo.request import RequestBody, group_of, memoised_attachments
from regproxy.governance.params import (
    MODE_DEFAULT,
    MODE_FAILOVER,
    CallParams,
    call_params,
)
from regproxy.proxy.cluster import CallCounts
from regproxy.proxy.exchange import Plan
from regproxy.proxy.filters import StreamFilter, build_filters
from regproxy.proxy.stats import Histogram
from regproxy.routing import Host, LoadBalancer, RoutingTable, make_balancer, service_label
from regproxy.routing.balancer import DUBBO_LB
from regproxy.routing.dubbo_balancers import DubboBalancer, MethodBalancer, make_dubbo_balancer
from regproxy.routing.model import SPEAKS_DUBBO, Cluster, HostPolicy, ProviderGuard
from regproxy.routing.rules import (
    RETRY_CONNECT,
    RETRY_FAILOVER,
    Rule,
    RuleSet,
    Subset,
    TagIndex,
    subset_hosts,
)
from regproxy.triple.request import TripleRequest

# What is routed: a Dubbo request's body, or a Triple call's headers (regproxy.triple.request),
# which read the same (service, version, method, group, attachments).  A union, not a Protocol:
# compiled, the Dubbo body's attributes stay native reads.
Request = RequestBody | TripleRequest

# Memoised plans and head bytes, at most: a peer inventing services must not grow them without end.
MAX_PLANS: Final = 4096


def _wall_ms() -> int:
    """``System.currentTimeMillis()``: provider timestamps (warm-up) are wall-clock milliseconds."""
    return int(time.time() * 1000)


class NoRoute:
    """A request the planner cannot send anywhere: answered with ``status`` and ``message``."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"NoRoute({self.status}, {self.message!r})"


class GroupPlans:
    """The plans of one request head that depend on its attachments, with the head's argument
    count, so that they can be found in memoised attachment bytes: by group where the table matches
    on the group; by (the policy's key, group) where a policy routes on a little of each request (a
    tag rule: HostPolicy.key_of), which ``keyed`` looks up."""

    __slots__ = ("by_group", "by_key", "nargs", "policy", "seen", "seen_plan")

    def __init__(self, nargs: int, policy: HostPolicy | None = None) -> None:
        self.nargs = nargs
        self.by_group: dict[str, Plan] = {}
        self.policy = policy
        self.by_key: dict[tuple[object, str], Plan] = {}
        # The attachments (the memo's mapping for the same bytes) last looked up, and their plan:
        # a client mostly sends the same ones, found again by identity.
        self.seen: Mapping[str, Any] | None = None
        self.seen_plan: Plan | None = None

    def keyed(self, raw: bytes, args_start: int) -> Plan | None:
        """The plan of a request with this head whose attachment bytes were decoded before; None:
        decode it (Planner.plan)."""
        attachments = memoised_attachments(raw, args_start, self.nargs)
        if attachments is None:
            return None
        if attachments is self.seen:
            return self.seen_plan
        assert self.policy is not None
        plan = self.by_key.get((self.policy.key_of(attachments), group_of(attachments)))
        if plan is not None:  # plans are only added to by_key, never replaced: this one stays right
            self.seen, self.seen_plan = attachments, plan
        return plan


# A connection's memo of its last request head (DownstreamConnection.last_head): the head bytes,
# what they map to, and the memo (Planner.heads) that mapping came from.
HeadMemo = tuple[bytes, "Plan | GroupPlans | None", "dict[bytes, Plan | GroupPlans] | None"]


class Planner:
    """Routing decisions for one listener, with their memos. ``reset(table)`` whenever the table
    snapshot changes (the Forwarder checks its identity once per read); new rules or a new default
    timeout reset it too."""

    def __init__(
        self,
        histogram: Callable[[str, str], Histogram],
        active: Callable[[str], int],
        *,
        default_timeout_ms: int,
        timeout_from_attachment: bool,
        rng: random.Random | None = None,
        calls: CallCounts | None = None,
        speaks: int = SPEAKS_DUBBO,
    ) -> None:
        # The caller's protocol (a SPEAKS_* bit): plans keep only the hosts that speak it.
        self.speaks = speaks
        self._histogram = histogram  # the listener's latency histogram of (service, method)
        self._active = active  # requests in flight per address, for the least-request balancer
        self._default_timeout_ms = default_timeout_ms
        self.timeout_from_attachment = timeout_from_attachment
        self.rng = rng if rng is not None else random.Random()  # weighted subset choice
        self._rules = RuleSet()
        self._balancers: dict[str, tuple[str, LoadBalancer]] = {}
        # Dubbo's balancers (clusters with lb "dubbo": subscriptions), one per (cluster, name), as
        # Dubbo keeps one state per service; and what each method of a host tuple declares.
        self.calls = calls if calls is not None else CallCounts()
        self._dubbo: dict[tuple[str, str], DubboBalancer] = {}
        self._declared: dict[tuple[int, str], tuple[tuple[Host, ...], CallParams]] = {}
        self._filters: dict[Rule, tuple[StreamFilter, ...]] = {}
        self._subsets: dict[tuple[str, Subset], tuple[tuple[Host, ...], tuple[Host, ...]]] = {}
        self._tags: dict[str, tuple[tuple[Host, ...], TagIndex | None]] = {}
        # The common case's decisions for the table they were made on: by (service, version,
        # method, group or None) and by the exact bytes of the request head.
        self._plans: dict[tuple[str, str, str, str | None], Plan] = {}
        # Keys whose plans depend on a little of each request too (a tag rule: the request's tag):
        # the cluster's policy and its plans by the request's key (HostPolicy.request_key) and group.
        self._keyed: dict[tuple[str, str, str, str | None], tuple[HostPolicy, dict[object, Plan]]] = {}
        self.heads: dict[bytes, Plan | GroupPlans] = {}
        # Host tuples of the table with only the hosts that speak the caller's protocol (see
        # _speaking_only): by the id of the whole tuple, kept with it.
        self._speaking: dict[int, tuple[tuple[Host, ...], tuple[Host, ...]]] = {}
        self.table: RoutingTable | None = None

    # --- what the decisions depend on -----------------------------------------------------------

    @property
    def default_timeout_ms(self) -> int:
        return self._default_timeout_ms

    @default_timeout_ms.setter
    def default_timeout_ms(self, value: int) -> None:
        """A reload's new default: plans that carry the old one are made again."""
        self._default_timeout_ms = value
        self._forget()

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        """Swap the rules; requests in flight keep the hosts, policy and filters they started with."""
        self._rules = rules
        self._filters = {}
        self._subsets = {}
        self._forget()

    def reset(self, table: RoutingTable | None) -> None:
        """Plans are for one table: a new one starts without them."""
        self._forget()
        self.table = table

    def _forget(self) -> None:
        self._speaking = {}
        self._plans = {}
        self._keyed = {}
        self.heads = {}
        self._declared = {}

    # --- decisions ------------------------------------------------------------------------------

    def plan(self, raw: bytes, body: Request, table: RoutingTable) -> Plan | NoRoute:
        """The decision for the request ``raw`` (decoded as ``body``) on ``table``, which must be
        the table of the last ``reset``. A memoisable one is also remembered by ``raw``'s head bytes,
        for the Forwarder's undecoded path."""
        path = body.path
        # The group is read (from the attachments) only where a route depends on it.
        key = (path, body.version, body.method, body.group if table.needs_group(path) else None)
        plan = self._plans.get(key)
        if plan is None:
            keyed = self._keyed.get(key)
            if keyed is not None:
                return self._keyed_plan(keyed, raw, body, table)
            plan = self._memoisable(key, body, table)
        if plan is not None:
            self._remember_head(raw, body, key[3], plan)
            return plan
        return self.route(body, table)

    def _memoisable(
        self, key: tuple[str, str, str, str | None], body: Request, table: RoutingTable
    ) -> Plan | None:
        """The decision for requests like ``body`` when it depends only on the table and ``key`` —
        no rule for the service, no tag routing — memoised; None: every such request takes ``route``."""
        path = body.path
        if self._rules and self._rules.lookup(path) is not None:
            return None
        route = table.match(path, body.version, body.method, key[3])
        if route is None:
            return None
        cluster = table.clusters.get(route.cluster)
        if cluster is None:
            return None
        hosts = cluster.hosts
        policy = cluster.policy
        override_ms = None
        if policy is not None:
            if policy.routes:
                if not policy.fixed_for(body.method):
                    if policy.request_key(body) is not None and len(self._keyed) < MAX_PLANS:
                        self._keyed[key] = (policy, {})  # the next such requests: _keyed_plan
                    return None
                routed = policy.route(hosts, body)
                if isinstance(routed, str):
                    return None  # answered by route(), which says why
                hosts = routed
            override_ms = policy.timeout_ms(body.method)
        static_tags = policy is None or not policy.routes_tags
        if static_tags and self._tag_index(cluster.name, cluster.hosts) is not None:
            return None
        # Requests with a plan are labelled by the group only where the route matches on it.
        service = service_label(path, body.version, key[3])
        timeout_ms = (
            route.timeout_ms
            or override_ms
            or (0 if self.timeout_from_attachment else self._default_timeout_ms)
        )
        plan = self._make_plan(
            cluster,
            cluster.name,
            hosts,
            service,
            body.method,
            timeout_ms,
            route.retries,
            RETRY_CONNECT,
            (),
            False,
            route.guard,
        )
        if len(self._plans) < MAX_PLANS:
            self._plans[key] = plan
        return plan

    def _keyed_plan(
        self,
        keyed: tuple[HostPolicy, dict[object, Plan]],
        raw: bytes,
        body: Request,
        table: RoutingTable,
    ) -> Plan | NoRoute:
        """The plan of a request whose hosts depend on its tag: memoised by (tag, forced, group), and
        by its head bytes for the Forwarder's undecoded path (GroupPlans.keyed)."""
        policy, plans = keyed
        rkey = (policy.request_key(body), body.group)
        plan = plans.get(rkey)
        if plan is None:
            routed = self.route(body, table)
            if not isinstance(routed, Plan) or len(plans) >= 64:
                return routed  # a peer inventing tags gets no more memo
            plan = plans[rkey] = routed
        head_end = body.head_end
        if head_end >= 0 and len(self.heads) < MAX_PLANS and body.ends_with_map:
            head = raw[16:head_end]
            entry = self.heads.get(head)
            if not isinstance(entry, GroupPlans) or entry.policy is not policy:
                entry = self.heads[head] = GroupPlans(body.argument_count, policy)
            entry.by_key[rkey] = plan
        return plan

    def _remember_head(self, raw: bytes, body: Request, group: str | None, plan: Plan) -> None:
        """Let requests with these head bytes (and this group) find ``plan`` without decoding. Not
        for a request without an attachments map: the undecoded path takes a final ``Z`` for the
        map's end (the egress's loop marker goes before it), which in such a request belongs to its
        last argument."""
        if body.head_end < 0 or len(self.heads) >= MAX_PLANS or not body.ends_with_map:
            return
        head = raw[16 : body.head_end]
        if group is None:
            self.heads[head] = plan
            return
        entry = self.heads.get(head)
        if not isinstance(entry, GroupPlans) or entry.policy is not None:
            entry = self.heads[head] = GroupPlans(body.argument_count)
        if len(entry.by_group) < 64:  # groups are few; a peer sending endless new ones gets no memo
            entry.by_group[group] = plan

    def route(self, body: Request, table: RoutingTable) -> Plan | NoRoute:
        """Rules, group, subsets and tags: the plan of this one request (not memoised)."""
        rule = None
        if self._rules:
            cands = self._rules.lookup(body.path)
            if cands is not None:
                rule = RuleSet.first_match(cands, body.version, body.method, body)
        route = None
        if rule is None or rule.cluster is None:
            group = body.group if table.needs_group(body.path) else None
            route = table.match(body.path, body.version, body.method, group)
            if route is None:
                label = service_label(body.path, body.version, body.group)
                why = f" (rule {rule.name!r} names no cluster)" if rule is not None else ""
                return NoRoute(Status.SERVICE_NOT_FOUND, f"no route for {label} method {body.method}{why}")
        local_retries = False  # the local file's rule sets them: they beat what providers declare
        if rule is None:
            assert route is not None
            cluster_name = route.cluster
            rule_timeout = route.timeout_ms
            retries = route.retries
            retry_on = RETRY_CONNECT
            filters: tuple[StreamFilter, ...] = ()
        else:
            cluster_name = rule.cluster or route.cluster  # type: ignore[union-attr]
            rule_timeout = rule.timeout_ms or (route.timeout_ms if route is not None else None)
            if rule.retries is not None:
                retries = rule.retries
                local_retries = True
            elif route is not None:
                retries = route.retries
            else:
                retries = 1
            retry_on = rule.retry_on
            filters = self._filters_of(rule)
        cluster = table.clusters.get(cluster_name)
        if cluster is None:
            # Only a rule can name a cluster the table lacks (a subscription not made yet).
            assert rule is not None
            label = service_label(body.path, body.version, body.group)
            return NoRoute(
                Status.SERVICE_NOT_FOUND,
                f"rule {rule.name!r} sends {label} to cluster {cluster_name!r}, "
                "which does not exist (no static cluster or subscription of that name)",
            )
        hosts = cluster.hosts
        bkey = cluster.name
        policy = cluster.policy
        routes_tags = False
        if policy is not None:
            if policy.routes:
                routed = policy.route(hosts, body)
                if isinstance(routed, str):
                    label = service_label(body.path, body.version, body.group)
                    return NoRoute(
                        Status.SERVICE_NOT_FOUND,
                        f"no provider for {label} method {body.method} in cluster {cluster.name}: {routed}",
                    )
                if routed is not hosts:
                    bkey = f"{bkey}|{body.method}"  # the tag index of these hosts, kept apart
                hosts = routed
                routes_tags = policy.routes_tags
            if not rule_timeout:
                rule_timeout = policy.timeout_ms(body.method)
        if rule is not None and rule.subsets:
            subset = rule.choose_subset(self.rng)
            assert subset is not None
            hosts = self._subset_hosts(cluster.name, hosts, subset)
            if not hosts:
                label = service_label(body.path, body.version, body.group)
                return NoRoute(
                    Status.SERVICE_NOT_FOUND,
                    f"no host in subset {{{subset.label}}} of cluster {cluster.name} for {label} "
                    f"(rule {rule.name!r})",
                )
            bkey = f"{bkey}|{subset.label}"
        tags = None if routes_tags else self._tag_index(bkey, hosts)
        if tags is not None:
            what, hosts = tags.select(body.attachments)
            if not hosts:
                label = service_label(body.path, body.version, body.group)
                return NoRoute(
                    Status.SERVICE_NOT_FOUND,
                    f"no provider for {label} with {what} in cluster {cluster.name} (dubbo tag routing)",
                )
            bkey = f"{bkey}|{what}"
        # For the label only: free when the attachments were read anyway.
        service = service_label(body.path, body.version, body.group if body.attachments_read else "")
        return self._make_plan(
            cluster,
            bkey,
            hosts,
            service,
            body.method,
            rule_timeout or 0,
            retries,
            retry_on,
            filters,
            local_retries,
            route.guard if route is not None else None,
        )

    def _make_plan(
        self,
        cluster: Cluster,
        bkey: str,
        hosts: tuple[Host, ...],
        service: str,
        method: str,
        timeout_ms: int,
        retries: int,
        retry_on: int,
        filters: tuple[StreamFilter, ...],
        local_retries: bool,
        guard: ProviderGuard | None,
    ) -> Plan:
        """The Plan, with what the hosts declare where the cluster follows Dubbo (lb "dubbo": the
        balancer, cluster mode, retries, timeout, actives and token of regproxy.governance.params;
        the local file's retries and timeout still come first).  Only the hosts that speak the
        caller's protocol are in it."""
        hosts = self._speaking_only(hosts)
        hist = self._histogram(service, method)
        if cluster.lb != DUBBO_LB:
            return Plan(
                timeout_ms,
                retries,
                hosts,
                self._balancer(bkey, cluster.lb),
                service,
                method,
                hist,
                retry_on,
                filters,
                guard=guard,
            )
        declared = self._declared_for(hosts, method)
        mode = declared.mode
        if not local_retries and mode != MODE_DEFAULT:
            # Declared: Dubbo's invoker decides. Failover retries every non-business failure
            # (`retries`, 2 when only `cluster=failover` says so); the others try one provider.
            if mode == MODE_FAILOVER:
                retries = declared.retries if declared.retries is not None else 2
                retry_on = RETRY_FAILOVER
            else:
                retries = 0
        balancer = MethodBalancer(self._dubbo_balancer(cluster.name, declared.loadbalance), method)
        return Plan(
            timeout_ms,
            retries,
            hosts,
            balancer,
            service,
            method,
            hist,
            retry_on,
            filters,
            fallback_ms=declared.timeout_ms or 0,
            mode=mode,
            forks=declared.forks,
            actives=dict(declared.actives) if declared.actives else None,
            token=declared.token,
            needs_arguments=balancer.needs_arguments,
            guard=guard,
        )

    def _speaking_only(self, hosts: tuple[Host, ...]) -> tuple[Host, ...]:
        """``hosts`` without those that do not speak the caller's protocol: the same tuple when all
        do (the common case), else one tuple per input tuple until the table changes, so that what
        is memoised by the hosts' identity (``_declared_for``) stays memoised."""
        speaks = self.speaks
        for host in hosts:
            if not host.speaks & speaks:
                break
        else:
            return hosts
        known = self._speaking.get(id(hosts))
        if known is not None and known[0] is hosts:
            return known[1]
        only = tuple(host for host in hosts if host.speaks & speaks)
        self._speaking[id(hosts)] = (hosts, only)
        return only

    def _declared_for(self, hosts: tuple[Host, ...], method: str) -> CallParams:
        key = (id(hosts), method)
        entry = self._declared.get(key)
        if entry is None or entry[0] is not hosts:
            if len(self._declared) >= MAX_PLANS:
                self._declared = {}
            entry = self._declared[key] = (hosts, call_params(hosts, method))
        return entry[1]

    def _dubbo_balancer(self, cluster: str, name: str) -> DubboBalancer:
        key = (cluster, name)
        balancer = self._dubbo.get(key)
        if balancer is None:
            if len(self._dubbo) >= MAX_PLANS:
                self._dubbo = {}  # subscriptions come and go; their balancers start over
            calls = self.calls
            balancer = self._dubbo[key] = make_dubbo_balancer(
                name, clock=_wall_ms, rng=self.rng, active=calls.in_flight, stats=calls.stats
            )
        return balancer

    # --- what the stages keep ---------------------------------------------------------------------

    def _filters_of(self, rule: Rule) -> tuple[StreamFilter, ...]:
        chain = self._filters.get(rule)
        if chain is None:
            chain = self._filters[rule] = build_filters(rule)
        return chain

    def _subset_hosts(self, cluster: str, hosts: tuple[Host, ...], subset: Subset) -> tuple[Host, ...]:
        key = (cluster, subset)
        entry = self._subsets.get(key)
        if entry is None or entry[0] is not hosts:  # the cluster's host tuple is replaced on change
            entry = self._subsets[key] = (hosts, subset_hosts(hosts, subset))
        return entry[1]

    def _tag_index(self, key: str, hosts: tuple[Host, ...]) -> TagIndex | None:
        entry = self._tags.get(key)
        if entry is None or entry[0] is not hosts:
            if len(self._tags) > MAX_PLANS:
                self._tags.clear()  # clusters come and go with subscriptions; do not grow forever
            entry = self._tags[key] = (hosts, TagIndex.build(hosts))
        return entry[1]

    def _balancer(self, cluster: str, lb: str) -> LoadBalancer:
        entry = self._balancers.get(cluster)
        if entry is None or entry[0] != lb:
            entry = (lb, make_balancer(lb, active=self._active))
            self._balancers[cluster] = entry
        return entry[1]
