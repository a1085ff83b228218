"""The request lifecycle shared by the egress and ingress listeners: take the routing decision
from the planner (regproxy.proxy.plan, pure), run a rule's filters, pick a host, forward, enforce
the deadline, retry a request that was never written, and answer with a Dubbo error that names the
cause when nothing else can. Also the data path's share of loop detection (regproxy.proxy.loops):
the egress marks what it forwards, the ingress takes the mark out, and a request that comes back
to an egress it passed is answered, never forwarded again.

The Forwarder owns the requests in flight (their deadlines, retries and answers) and the socket
writes; it decides nothing about where a request goes. Downstream connections talk to it through
``handle`` and ``connection_opened/closed``; the upstream pool through ``UpstreamEvents``."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final

from regproxy.dubbo.encode import encode_error, heartbeat_reply
from regproxy.dubbo.frame import (
    FLAG_EVENT,
    FLAG_TWOWAY,
    HESSIAN2,
    SERIALIZATION_MASK,
    ProtocolError,
    Status,
    frame_request_id,
    patch_request_id,
)
from regproxy.dubbo.hessian2 import Hessian2Error
from regproxy.dubbo.request import (
    VIA_ID_LEN,
    VIA_KEY_BYTES,
    VIA_MAX_IDS,
    VIA_WINDOW,
    RequestBody,
    compact_head_end,
    find_via,
    memoised_group,
    strip_via,
    via_entry,
    with_attachments,
)
from regproxy.governance.params import MODE_BROADCAST, MODE_FAILSAFE, MODE_FORKING, token_of
from regproxy.health import HostHealth, NoHealth
from regproxy.proxy.batch import Batcher
from regproxy.proxy.cluster import CallCounts, FanOut, failed, failsafe_reply
from regproxy.proxy.deadlines import DeadlineWheel
from regproxy.proxy.exchange import Exchange, Plan
from regproxy.proxy.filters import AccessLog, Delay
from regproxy.proxy.flow import FlowLimits
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.loops import LoopGuard
from regproxy.proxy.plan import GroupPlans, HeadMemo, NoRoute, Planner
from regproxy.proxy.stats import Histogram, ListenerStats
from regproxy.proxy.upstream import UpstreamEvents, UpstreamPool
from regproxy.routing import Host, TableHolder, service_label
from regproxy.routing.dubbo_balancers import MethodBalancer
from regproxy.routing.model import ProviderGuard
from regproxy.routing.rules import (
    RETRY_ERROR,
    RETRY_RESET,
    RETRY_TIMEOUT,
    RETRY_UNAVAILABLE,
    UNAVAILABLE_STATUSES,
    RuleSet,
)

log = logging.getLogger(__name__)

# Answers that say the host could not serve the call, for outlier detection: its channel inactive,
# a server error, or the service not there (a provider sidecar whose application is down says 60).
_HOST_FAILURES: Final = frozenset({Status.CHANNEL_INACTIVE, Status.SERVICE_NOT_FOUND, Status.SERVER_ERROR})

SERIALIZATION_NAMES = {
    2: "hessian2",
    3: "java",
    4: "compactedjava",
    6: "fastjson",
    7: "nativejava",
    8: "kryo",
    9: "fst",
    21: "protostuff",
    22: "protobuf",
    23: "fastjson2",
    25: "gson",
}


_OK: Final = 20  # Status.OK
_Z: Final = 0x5A  # the end of a hessian2 map: the last byte of a request body with attachments
# The loop marker's bytes as the data path looks for them (regproxy.dubbo.request.find_via): its
# value's last id sits right before the final Z, preceded by the value's length tag when it is the
# only id, by a space when it ends a chain.
_ONE_ID: Final = VIA_ID_LEN
_SPACE: Final = 0x20
_VIA_ONE_ID: Final = b"".join((VIA_KEY_BYTES, bytes((VIA_ID_LEN,))))  # key and tag: 23 bytes from the end

# The third header byte of a two-way hessian2 request that is not an event: the common case.
_TWOWAY_HESSIAN2_REQUEST: Final = 0x80 | FLAG_TWOWAY | HESSIAN2

# A service a listener answers itself instead of routing (``Forwarder.local_services``): given the
# request (whole frame, the loop marker already out) and its body, the whole response frame, or None
# for no answer (a one-way request).  May raise Hessian2Error for a body it cannot read.
LocalService = Callable[[bytes, RequestBody], bytes | None]


class Forwarder(UpstreamEvents):
    """One listener's requests in flight, from the client connection that sent them to the answer.

    Owns: the requests in flight (``in_flight``, the deadline wheel), the upstream pool, the client
    connections it admitted, the listener's counters. Asks the Planner where a request goes and
    carries the decision out; never decides routing itself. Client connections reach it only
    through the DownstreamEvents methods (regproxy.proxy.listener), the pool through UpstreamEvents.
    Invariants: a two-way request is answered exactly once (a response, or an error made here),
    after which its deadline is gone and its connection's in-flight count is down; a request is
    retried only when it was never written, or when its rule allows it after a reset.
    """

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        table: TableHolder,
        batcher: Batcher,
        pool_factory: Callable[[UpstreamEvents], UpstreamPool],
        *,
        default_timeout_ms: int,
        timeout_from_attachment: bool = True,
        max_connections: int = 10000,
        stats: ListenerStats | None = None,
        guard: LoopGuard | None = None,
        flow: FlowLimits | None = None,
    ) -> None:
        self.name = name  # "egress" or "ingress", in messages so an operator knows which hop spoke
        self.flow = flow if flow is not None else FlowLimits()  # per-connection bounds
        # Loop detection (regproxy.proxy.loops), shared with the sidecar's other listener and pools.
        # The egress writes its id into each request (``via``: what goes before the final Z of an
        # unmarked one); the ingress takes the marker out before the application sees it.
        self.guard = guard if guard is not None else LoopGuard()
        self.via: bytes | None = self.guard.via_suffix if name == "egress" else None
        self.strip_via = name == "ingress"
        self.loop = loop
        self.table = table
        self.batcher = batcher
        self.pool = pool_factory(self)
        self.downstreams: set[DownstreamConnection] = set()
        self.timeout_from_attachment = timeout_from_attachment
        # What a deadline passing means here: the consumer's timeout (egress), or the app being
        # too slow for the ingress's bound.
        self.timeout_status = Status.CLIENT_TIMEOUT if timeout_from_attachment else Status.SERVER_TIMEOUT
        # What "no upstream could be reached, nothing was sent" is answered with.  The ingress's only
        # upstream is its application: while that is down the service is not served here (60, which
        # the consumer's egress may retry elsewhere: `retry.on: unavailable`). A server error (80)
        # would be final: the egress cannot tell it from a call that ran and failed.
        self.not_written_status = Status.SERVER_ERROR if timeout_from_attachment else Status.SERVICE_NOT_FOUND
        self.max_connections = max_connections
        self.in_flight = 0  # two-way requests forwarded and not answered, over all connections
        self._idle: asyncio.Event | None = None  # set when in_flight drops to zero (drain waits)
        self.stats = stats or ListenerStats()
        # Dubbo's RpcStatus for plans that declare `actives` (regproxy.proxy.cluster).
        self.calls = CallCounts()
        # Where requests go (pure: regproxy.proxy.plan); the Forwarder only runs what it decides.
        self.planner = Planner(
            self.stats.histogram,
            self.pool.active,
            default_timeout_ms=default_timeout_ms,
            timeout_from_attachment=timeout_from_attachment,
            calls=self.calls,
        )
        self.deadlines = DeadlineWheel(loop, self._on_deadline)  # type: ignore[arg-type]
        self.access_log: AccessLog | None = None  # off by default: no formatting per request
        self._health: HostHealth = NoHealth()
        self._health_on = False
        # Services this listener answers itself, by request path: the sidecar installs them (the
        # ingress's MetadataService, regproxy.discovery.metadata_served), so the data path imports
        # nothing of discovery.  Consulted in _handle_general only: a path no table routes never
        # gets a plan, so never takes handle()'s fast path.
        self.local_services: dict[str, LocalService] = {}
        # The listener's Triple side (regproxy.triple.forwarder.TripleForwarder), which takes the
        # connections whose first bytes are the HTTP/2 preface; None: HTTP/2 is refused. Typed Any:
        # the compiled data path knows nothing of it but these calls. It follows this forwarder's
        # rules, default timeout and health.
        self.triple: Any = None

    @property
    def default_timeout_ms(self) -> int:
        return self.planner.default_timeout_ms

    @default_timeout_ms.setter
    def default_timeout_ms(self, value: int) -> None:
        """A reload's new default: plans that carry the old one are made again."""
        self.planner.default_timeout_ms = value
        if self.triple is not None:
            self.triple.planner.default_timeout_ms = value

    @property
    def rules(self) -> RuleSet:
        return self.planner.rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        """Swap the rules; requests in flight keep the hosts, policy and filters they started with."""
        self.planner.rules = rules
        if self.triple is not None:
            self.triple.planner.rules = rules

    # --- from the downstream side -------------------------------------------------------------

    def connection_opened(self, down: DownstreamConnection) -> bool:
        """Admit a client connection, unless the listener is at its connection limit."""
        if len(self.downstreams) >= self.max_connections:
            self.stats.rejected_connections += 1
            log.warning(
                "%s: refusing connection from %s: %d connections open (limits.max_connections)",
                self.name,
                down.peer,
                len(self.downstreams),
            )
            return False
        self.downstreams.add(down)
        self.stats.downstream_connections += 1
        return True

    def connection_closed(self, down: DownstreamConnection) -> None:
        if down in self.downstreams:
            self.downstreams.discard(down)
            self.stats.downstream_connections -= 1

    def broken_stream(self, down: DownstreamConnection, exc: ProtocolError) -> bytes:
        self.stats.protocol_errors += 1
        self.stats.answered(Status.BAD_REQUEST)
        log.warning("%s: closing connection from %s: %s", self.name, down.peer, exc)
        # The request id is known when the header was readable (e.g. an oversized body): the
        # consumer learns which call failed. Garbage gets id 0: still a readable Dubbo error.
        request_id = exc.request_id if exc.request_id is not None else 0
        message = f"regproxy {self.name}: {exc}; closing connection"
        return encode_error(request_id, Status.BAD_REQUEST, message)

    def paused(self, down: DownstreamConnection) -> None:
        self.stats.paused_reads += 1

    def unsent_overflow(self, down: DownstreamConnection, unsent: int) -> None:
        self.stats.unsent_closes += 1
        log.warning(
            "%s: closing connection from %s: %d bytes of answers unsent, the limit is %d "
            "(limits.max_unsent_bytes_per_connection): the client stopped reading; %d request(s) in flight "
            "will not be answered on it", self.name, down.peer, unsent, self.flow.max_unsent, down.in_flight,
        )  # fmt: skip

    def handle(self, down: DownstreamConnection, frames: list[bytes]) -> None:
        """The frames one read brought from a downstream connection, each header and body in one
        bytes object."""
        # The common case first, with nothing decoded: a two-way hessian2 request whose head bytes
        # (and, where the table matches on the group, attachment bytes) were seen before on this
        # table and rules. Anything else takes _handle_general, which also makes the plans.
        # What does not change within one read is looked up once for all its frames.
        planner = self.planner
        if self.table.current is not planner.table:
            planner.reset(self.table.current)
        heads = planner.heads
        deadlines = self.deadlines
        started = perf_counter()  # not loop.time(): uvloop's is cached per loop pass, in whole ms
        pool = self.pool
        # While no host is failing or unavailable, a cluster of one usable host needs no pick. Nothing
        # this call does changes that: failures and health reports come in callbacks of their own.
        direct = not (pool.any_failing or pool.closed or (self._health_on and self._health.any_unavailable()))
        # The plan hits, in runs of one plan: a run is counted once, its deadlines go in one bucket,
        # and its requests to one host in one call once every run has its deadlines.
        runs: list[tuple[Plan, list[Exchange]]] = []
        last: Plan | None = None
        batch: list[Exchange] = []
        look = -1.0
        slot = 0
        size = 0  # the bytes of the plan hits, held until answered (flow control)
        tried: tuple[str, ...] = ()
        # The connection's last head: a client often calls one method many times in a row, and
        # bytes that start with a head's bytes have that head (hessian strings carry their length).
        memo: HeadMemo = down.last_head
        memo_head, memo_entry, memo_of = memo
        entry: Plan | GroupPlans | None
        plan: Plan | None
        via = self.via
        strip = self.strip_via
        for raw in frames:
            if raw[2] == _TWOWAY_HESSIAN2_REQUEST:
                if strip:
                    # The ingress: the marker of the egress that sent it is not for the application.
                    # A byte tells where to look: one id (the common case) has its length tag 10
                    # bytes from the end, a chain of ids a space; anything else has no marker.
                    n = len(raw)
                    c = raw[n - 10]
                    if c == _ONE_ID:
                        # Compiled, a slice compare costs a fifth of a startswith() method call.
                        if raw[n - 1] == _Z and raw[n - 23 : n - 9] == _VIA_ONE_ID:
                            raw = b"".join((raw[: n - 23], b"Z"))
                    elif c == _SPACE:
                        raw = strip_via(raw)
                if memo_of is heads and raw.startswith(memo_head, 16):
                    entry = memo_entry
                    end = 16 + len(memo_head)
                else:
                    end = compact_head_end(raw, 16)
                    entry = heads.get(raw[16:end]) if end > 0 else None
                    if entry is not None:
                        memo_head, memo_entry, memo_of = raw[16:end], entry, heads
                if entry is not None:
                    if isinstance(entry, GroupPlans):
                        if entry.policy is None:
                            group = memoised_group(raw, end, entry.nargs)
                            plan = entry.by_group.get(group) if group is not None else None
                        else:
                            plan = entry.keyed(raw, end)  # a tag rule: by the request's tag
                    else:
                        plan = entry
                    if plan is not None:
                        if via is not None and raw[len(raw) - 1] == _Z:
                            # The egress: an unmarked request gets this sidecar's id; one that has a
                            # marker passed other egresses (or this one: a loop) and is looked at
                            # in _handle_general. The tail is searched only when the byte before
                            # the last id's place could belong to a marker (see the ingress above).
                            n = len(raw)
                            c = raw[n - 10]
                            if c in (_ONE_ID, _SPACE):
                                lo = n - VIA_WINDOW
                                if raw.rfind(VIA_KEY_BYTES, lo if lo > 16 else 16) >= 0:
                                    self._handle_general(down, raw)
                                    continue
                            raw = b"".join((raw[: n - 1], via))
                        if plan is not last:
                            last, batch = plan, []
                            runs.append((plan, batch))
                            if plan.first_look_s != look:
                                look = plan.first_look_s
                                slot = deadlines.slot_for(look)
                            only = plan.only
                            # Shared by the run's requests: a retry makes a request a tuple of its own.
                            tried = (only.address,) if direct and only is not None else ()
                        batch.append(Exchange(down, raw, frame_request_id(raw), plan, started, slot, tried))
                        size += len(raw)
                        continue
            self._handle_general(down, raw)
        down.last_head = (memo_head, memo_entry, memo_of)
        if not runs:
            return
        # Deadlines first, all of them: a request answered while the others are sent (no host, a
        # connect error) must find its deadline there to take it out.
        per_service = self.stats.per_service
        n = 0
        for plan, batch in runs:
            per_service[plan.counter_key] = per_service.get(plan.counter_key, 0) + len(batch)
            deadlines.add_at(batch, batch[0].slot)  # type: ignore[arg-type]
            n += len(batch)
        self.stats.requests += n
        down.in_flight += n
        down.in_flight_bytes += size
        self.in_flight += n
        for plan, batch in runs:
            if batch[0].tried:
                self._send_run(plan.only, batch)  # type: ignore[arg-type]
            else:
                for exch in batch:
                    self._dispatch(exch, None)

    def _send_run(self, host: Host, exchs: list[Exchange]) -> None:
        """``_send`` for requests that already name ``host`` as tried."""
        sent = self.stats.upstream_requests
        sent[host.address] = sent.get(host.address, 0) + len(exchs)
        self.pool.connection(host.address).submit_all(exchs)

    def _handle_general(self, down: DownstreamConnection, raw: bytes) -> None:
        flag = raw[2]
        request_id = frame_request_id(raw)
        two_way = bool(flag & FLAG_TWOWAY)
        if not flag & 0x80:
            return  # a response from a consumer: only replies to our heartbeats, nothing to do
        if flag & FLAG_EVENT:
            self.stats.heartbeats += 1
            if two_way:
                down.queue(heartbeat_reply(request_id))
            return
        stats = self.stats
        stats.requests += 1
        if flag & SERIALIZATION_MASK != HESSIAN2:
            sid = flag & SERIALIZATION_MASK
            name = SERIALIZATION_NAMES.get(sid, "unknown")
            self.reply_error(
                down,
                request_id,
                two_way,
                Status.BAD_REQUEST,
                f"serialization id {sid} ({name}) is not supported; regproxy reads hessian2 (2)",
            )
            return
        if self.strip_via:
            raw = strip_via(raw)  # none left when handle() took it out already
        try:
            body = RequestBody(raw, 16)
            if self.local_services:
                local = self.local_services.get(body.path)
                if local is not None:
                    self._answer_locally(down, raw, body, request_id, two_way, local)
                    return
            # The egress marks a request in its attachments map; one without a map (Dubbo 2.0.x)
            # is left as it is: its final Z, if any, is its last argument's.
            if self.via is not None and raw[len(raw) - 1] == _Z and body.ends_with_map:
                marked = self._mark(down, raw, request_id, two_way)
                if marked is None:
                    return  # a loop: answered
                raw = marked
            planner = self.planner
            table = self.table.current
            if table is not planner.table:
                planner.reset(table)
            decision = planner.plan(raw, body, table)
            if isinstance(decision, NoRoute):
                self.reply_error(down, request_id, two_way, decision.status, decision.message)
                return
            plan = decision
            if not plan.timeout_ms:  # the consumer's timeout: the body is decoded anyway, read it now
                timeout_ms = (
                    (self.timeout_from_attachment and body.timeout_ms())
                    or plan.fallback_ms
                    or self.default_timeout_ms
                )
            else:
                timeout_ms = plan.timeout_ms
        except Hessian2Error as exc:
            self.reply_error(down, request_id, two_way, Status.BAD_REQUEST, f"malformed request body: {exc}")
            return
        stats.per_service[plan.counter_key] = stats.per_service.get(plan.counter_key, 0) + 1
        if not two_way:
            stats.oneway += 1
        exch = Exchange(down, raw, request_id, plan, perf_counter())
        exch.timeout_ms = timeout_ms
        if two_way:
            down.in_flight += 1
            down.in_flight_bytes += len(raw)
            self.in_flight += 1
            self.deadlines.add(exch, timeout_ms / 1000)
        if plan.filters:
            self._run_filters(exch, 0)
        else:
            self._dispatch(exch, None)

    def _answer_locally(
        self,
        down: DownstreamConnection,
        raw: bytes,
        body: RequestBody,
        request_id: int,
        two_way: bool,
        service: LocalService,
    ) -> None:
        """A request for one of ``local_services``: answered here, never routed, counted as an answer
        made here (by the status it carries).  A handler that fails is an error reply, not a broken
        connection: BAD_REQUEST for a body it could not read, SERVER_ERROR for anything else."""
        stats = self.stats
        if not two_way:
            stats.oneway += 1
        try:
            answer = service(raw, body)
            status = answer[3] if answer is not None else _OK  # the response header's status byte
        except Hessian2Error as exc:
            self.reply_error(down, request_id, two_way, Status.BAD_REQUEST, f"malformed request body: {exc}")
            return
        except Exception as exc:
            log.exception("%s: answering %r here failed", self.name, body)
            self.reply_error(
                down,
                request_id,
                two_way,
                Status.SERVER_ERROR,
                f"answering {body.path}.{body.method} failed: {type(exc).__name__}: {exc}",
            )
            return
        if not two_way:
            return  # nobody waits for an answer
        if answer is None:
            # Every two-way request is answered exactly once: a handler's silence is not an answer.
            self.reply_error(down, request_id, two_way, Status.SERVER_ERROR, f"{body.path} answered nothing")
            return
        stats.answered(status)
        down.queue(answer)

    @property
    def health(self) -> HostHealth:
        return self._health

    @health.setter
    def health(self, health: HostHealth) -> None:
        self._health = health
        if self.triple is not None:
            self.triple.health = health
        # The no-op costs nothing: skip even the calls.
        self._health_on = not isinstance(health, NoHealth)

    def _run_filters(self, exch: Exchange, start: int) -> None:
        """A rule's filters from ``start``, each deciding (regproxy.proxy.filters): go on, answer
        the request here, or go on after a delay."""
        filters = exch.plan.filters
        for i in range(start, len(filters)):
            decision = filters[i].on_request(exch)
            if decision is None:
                continue
            if isinstance(decision, Delay):
                self.loop.call_later(decision.seconds, self._resume_filters, exch, i + 1)
            else:
                self._fail(exch, decision.status, decision.message)
            return
        self._dispatch(exch, None)

    def _resume_filters(self, exch: Exchange, index: int) -> None:
        if exch.two_way and not exch.slot:
            return  # answered meanwhile (deadline passed)
        self._run_filters(exch, index)

    def _pick(self, exch: Exchange) -> Host | None:
        pool = self.pool
        # Asking about each host costs a call per host per request: only when some host is down.
        plan = exch.plan
        hosts = plan.hosts
        failing = [h.address for h in hosts if pool.is_failing(h.address)] if pool.any_failing else []
        if self._health_on and self._health.any_unavailable():
            # Ejected or failing active checks: avoided, but still used when nothing else is left.
            available = self._health.available
            failing += [h.address for h in hosts if not available(h.address)]
        if plan.needs_arguments:
            return self._pick_hashed(exch, failing)
        if failing:
            host = plan.balancer.pick(hosts, set(exch.tried).union(failing))
            if host is not None:
                return host
        return plan.balancer.pick(hosts, exch.tried)

    def _pick_hashed(self, exch: Exchange, failing: list[str]) -> Host | None:
        """consistenthash: the balancer reads the call's arguments. One that cannot be decoded or
        turned into Java's string hashes as no argument (Java's toString of an object without one is
        its identity, which no other consumer could reproduce either)."""
        plan = exch.plan
        balancer = plan.balancer
        assert isinstance(balancer, MethodBalancer)
        try:
            arguments: list[object] = RequestBody(exch.raw, 16).arguments()
            if failing:
                host = balancer.pick_with(plan.hosts, set(exch.tried).union(failing), arguments)
                if host is not None:
                    return host
            return balancer.pick_with(plan.hosts, exch.tried, arguments)
        except (Hessian2Error, TypeError, ValueError) as exc:
            log.debug("%s: hashing %s without its arguments: %s", self.name, exch.label, exc)
            return balancer.pick_with(plan.hosts, exch.tried, [])

    def _dispatch(self, exch: Exchange, last_error: str | None) -> None:
        if exch.plan.special and not self.pool.closed and self._dispatch_special(exch):
            return
        host = self._pick(exch) if not self.pool.closed else None
        if host is None:
            if last_error is not None:
                self._fail(
                    exch,
                    self.not_written_status,
                    f"{last_error}; tried {len(exch.tried)} host(s) for {exch.label}",
                )
            elif self.pool.closed:
                self._fail(exch, Status.SERVER_ERROR, f"regproxy {self.name} is shutting down")
            else:
                self._fail(
                    exch,
                    Status.SERVICE_NOT_FOUND,
                    f"no provider for {exch.label.rpartition('.')[0]} (cluster has no healthy host)",
                )
            return
        self._send(exch, host)

    def _send(self, exch: Exchange, host: Host) -> None:
        exch.tried += (host.address,)
        exch.upstream_id = 0  # a retry after writing: the id belonged to the previous connection
        sent = self.stats.upstream_requests
        sent[host.address] = sent.get(host.address, 0) + 1
        self.pool.connection(host.address).submit(exch)

    # --- Dubbo's cluster invokers and consumer filters (Plan.special; regproxy.proxy.cluster) ------

    def _dispatch_special(self, exch: Exchange) -> bool:
        """Send a request of a special plan; False when there is no host (``_dispatch`` answers)."""
        plan = exch.plan
        if exch.holds:
            self._release(exch, False)  # a retry: the slot of the provider before is given back
        if plan.guard is not None and not exch.tried and self._refused_by_guard(exch, plan.guard):
            return True
        if plan.mode >= MODE_FORKING and exch.fan is None:
            return self._fan_out(exch)
        host = self._pick(exch)
        if host is None:
            return False
        self._go(exch, host)
        return True

    def _go(self, exch: Exchange, host: Host) -> None:
        """Send a request of a special plan to ``host``, or queue it for an `actives` slot there."""
        plan = exch.plan
        actives = plan.actives
        if actives is not None and exch.fan is None:
            limit = actives.get(host.address, 0)
            if limit:
                key = (host.address, plan.method)
                if not self.calls.begin(key, limit):
                    # ActiveLimitFilter: wait for a slot on this provider, up to the call's timeout.
                    waiting = self.calls.waiting.get(key)
                    if waiting is None:
                        waiting = self.calls.waiting[key] = deque()
                    waiting.append(exch)
                    exch.tried += (host.address,)
                    return
                exch.holds = host.address
        self._send_special(exch, host)

    def _refused_by_guard(self, exch: Exchange, guard: ProviderGuard) -> bool:
        """The ingress's provider filters for a publication (``Route.guard``): True when ``exch`` was
        answered here. Dubbo answers both with the RpcException's message, status 70."""
        method = exch.plan.method
        if guard.token:
            try:
                remote = RequestBody(exch.raw, 16).attachments.get("token")
            except Hessian2Error:
                remote = None  # the application says what is wrong with the body
            if remote != guard.token:
                self.stats.refused_tokens += 1
                self._fail(
                    exch,
                    Status.SERVICE_ERROR,
                    f"Invalid token! Forbid invoke remote service interface {guard.service} method "
                    f"{method}() from consumer {exch.downstream.peer} to provider {self.name}, consumer "
                    f"incorrect token is {'null' if remote is None else remote}",
                )
                return True
        limit = guard.executes(method)
        if limit:
            key = f"executes:{exch.plan.service}"
            if not self.calls.begin((key, method), limit):
                self.stats.refused_executes += 1
                self._fail(
                    exch,
                    Status.SERVICE_ERROR,
                    f"Failed to invoke method {method} in provider {exch.plan.service}, cause: The service "
                    f'using threads greater than <dubbo:service executes="{limit}" /> limited.',
                )
                return True
            exch.holds = key
        return False

    def _send_special(self, exch: Exchange, host: Host, queued: bool = False) -> None:
        """Send with the provider's token; ``queued``: woken from the `actives` queue, where it was
        already named as tried."""
        if exch.plan.token:
            # TokenFilter on the provider: every call carries the token of the provider it goes to.
            token = token_of(host.metadata)
            if token:
                try:
                    exch.raw = with_attachments(exch.raw, {"token": token})
                except (ValueError, TypeError) as exc:
                    log.debug("%s: no token added to %s: %s", self.name, exch.label, exc)
        if queued:
            exch.upstream_id = 0
            sent = self.stats.upstream_requests
            sent[host.address] = sent.get(host.address, 0) + 1
            self.pool.connection(host.address).submit(exch)
            return
        self._send(exch, host)

    def _release(self, exch: Exchange, ok: bool) -> None:
        """Give back the `actives` slot ``exch`` holds, and let the next waiting call have it."""
        address = exch.holds
        exch.holds = ""
        key = (address, exch.plan.method)
        elapsed_ms = int((perf_counter() - exch.started) * 1000)
        calls = self.calls
        calls.end(key, elapsed_ms, ok)
        waiting = calls.waiting.get(key)
        while waiting:
            nxt = waiting.popleft()
            if nxt.two_way and not nxt.slot:
                continue  # its deadline passed meanwhile: answered
            limit = nxt.plan.actives.get(address, 0) if nxt.plan.actives is not None else 0
            if not calls.begin(key, limit):
                waiting.appendleft(nxt)
                break
            nxt.holds = address
            host = next((h for h in nxt.plan.hosts if h.address == address), None)
            if host is None:
                calls.end(key, 0, False)
                nxt.holds = ""
                self._fail(
                    nxt, self.not_written_status, f"provider {address} left while {nxt.label} waited for it"
                )
                continue
            self._send_special(nxt, host, queued=True)
        if not waiting:
            calls.waiting.pop(key, None)

    def _waiting_on(self, exch: Exchange) -> bool:
        """Whether ``exch`` waits for an `actives` slot; taken out of the queue if so."""
        if not exch.tried:
            return False
        waiting = self.calls.waiting.get((exch.tried[-1], exch.plan.method))
        if waiting is None or exch not in waiting:
            return False
        waiting.remove(exch)
        return True

    def _fan_out(self, exch: Exchange) -> bool:
        """ForkingClusterInvoker (``forks`` providers chosen by the balancer, all when ``forks`` <= 0
        or at least their number) and BroadcastClusterInvoker (every provider): one request each, at
        once. False when there is no provider."""
        plan = exch.plan
        hosts = plan.hosts
        if not hosts:
            return False
        chosen: list[Host]
        if plan.mode == MODE_BROADCAST or plan.forks <= 0 or plan.forks >= len(hosts):
            chosen = list(hosts)
        else:
            chosen = []
            taken: list[str] = []
            for _ in range(4 * plan.forks):  # Dubbo loops until it has forks distinct ones
                exch.tried = tuple(taken)
                host = self._pick(exch)
                if host is None:
                    break
                if host.address not in taken:
                    taken.append(host.address)
                    chosen.append(host)
                    if len(chosen) >= plan.forks:
                        break
        if not chosen:
            return False
        fan = FanOut(exch, len(chosen), plan.mode == MODE_BROADCAST)
        exch.fan = fan
        for _ in chosen:
            child = Exchange(exch.downstream, exch.raw, exch.downstream_id, plan, exch.started)
            child.fan = fan
            fan.children.append(child)
        exch.tried = tuple(h.address for h in chosen)
        for child, host in zip(fan.children, chosen, strict=True):
            self._send_special(child, host)
        if not exch.two_way:
            exch.fan = None  # nothing to collect
        return True

    def _child_result(self, child: Exchange, result: bytes | tuple[int, str], failure: bool) -> None:
        """One branch of a fan-out ended; answer the consumer when its answer is decided."""
        fan = child.fan
        assert fan is not None
        child.fan = None  # settled: a late event for it finds nothing
        answer = fan.settle(result, failure)
        parent = fan.parent
        if answer is None or (parent.two_way and not parent.slot):
            return
        if isinstance(answer, tuple):
            status, message = answer
            if fan.broadcast:
                message = (
                    f"broadcast: {fan.failures} of {fan.expected} provider(s) failed; the last: {message}"
                )
            else:
                message = (
                    f"Failed to forking invoke provider {list(parent.tried)}, but no luck to perform the "
                    f"invocation. Last error is: {message}"
                )
            parent.fan = None
            self._fail(parent, status, message)
            return
        self._answer(parent, answer)

    def _answer(self, exch: Exchange, raw: bytes) -> None:
        """Answer ``exch`` with a response from elsewhere (a fan-out's branch, a failsafe result)."""
        if exch.slot:
            self.deadlines.discard(exch)
        exch.fan = None
        status = raw[3]
        elapsed = perf_counter() - exch.started
        if self.access_log is not None:
            self.access_log.record(self.name, exch, status, elapsed)
        self.stats.answered(status)
        out = bytearray(raw)
        patch_request_id(out, 4, exch.downstream_id)
        exch.downstream.queue(out)
        exch.plan.hist.observe(elapsed)
        self._answered(exch)

    def _settle(self, exch: Exchange, raw: bytes) -> bytes | None:
        """A response to a request of a special plan: its slot given back; a fan-out branch's
        taken (None); a failsafe failure made an empty result. Else the response to answer with."""
        if exch.holds:
            self._release(exch, raw[3] == _OK)
        fan = exch.fan
        if fan is not None:
            # Forking takes the first answer, a business exception included (it completes the call);
            # broadcast counts that exception as the provider's failure (Result.hasException).
            self._child_result(exch, raw, failed(raw) if fan.broadcast else raw[3] != _OK)
            return None
        if exch.plan.mode == MODE_FAILSAFE and raw[3] != _OK:
            self.stats.failsafe += 1
            log.debug(
                "%s: failsafe: status %d for %s answered with an empty result", self.name, raw[3], exch.label
            )
            return failsafe_reply(exch.downstream_id)
        return raw

    def _retry_written(self, exch: Exchange) -> bool:
        """Send a written request again on another host; False when there is none (or no budget)."""
        if exch.retries_left <= 0 or (exch.two_way and not exch.slot) or self.pool.closed:
            return False
        host = self._pick(exch)
        if host is None:
            return False
        exch.retries_left -= 1
        self.stats.retries += 1
        if exch.plan.special:
            if exch.holds:
                self._release(exch, False)
            self._go(exch, host)  # the new provider's token and `actives` slot
        else:
            self._send(exch, host)
        return True

    def _on_deadline(self, exch: Exchange) -> None:
        if not exch.timeout_ms:
            # The first look at a request whose timeout is the consumer's: read it now.
            try:
                timeout_ms = RequestBody(exch.raw, 16).timeout_ms()
            except Hessian2Error:
                timeout_ms = None  # the provider will say what is wrong with the body
            exch.timeout_ms = timeout_ms or exch.plan.fallback_ms or self.default_timeout_ms
            remaining = exch.timeout_ms / 1000 - (perf_counter() - exch.started)
            if remaining > 0:
                self.deadlines.add(exch, remaining)
                return
        self._on_timeout(exch)

    def _on_timeout(self, exch: Exchange) -> None:
        if exch.upstream is not None:
            exch.upstream.forget(exch)
        plan = exch.plan
        if plan.special and self._timeout_special(exch):
            return
        if self._health_on and exch.tried:
            self._health.report(exch.tried[-1], False)
        self.stats.timeouts += 1
        if plan.retry_on & RETRY_TIMEOUT and exch.retries_left > 0 and not self.pool.closed:
            # Dubbo's failover retries a timeout on another provider, with the whole timeout again.
            self.deadlines.add(exch, exch.timeout_ms / 1000)
            if self._retry_written(exch):
                return
            self.deadlines.discard(exch)
        where = exch.tried[-1] if exch.tried else "no host"
        self._fail(
            exch,
            self.timeout_status,
            f"timeout after {exch.timeout_ms} ms waiting for {where} for {exch.label}",
        )

    # --- from the upstream side ---------------------------------------------------------------

    def _timeout_special(self, exch: Exchange) -> bool:
        """A special plan's deadline passed: True when answered here (an `actives` wait)."""
        fan = exch.fan
        if fan is not None:
            for child in fan.children:  # their answers would come to nothing now
                child.fan = None
                if child.upstream is not None:
                    child.upstream.forget(child)
            exch.fan = None
        if exch.holds:
            self._release(exch, False)
        elif exch.plan.actives is not None and self._waiting_on(exch):
            address = exch.tried[-1]
            limit = exch.plan.actives.get(address, 0)
            self.stats.timeouts += 1
            elapsed = int((perf_counter() - exch.started) * 1000)
            self._fail(
                exch,
                self.timeout_status,
                f"Waiting concurrent invoke timeout in client-side for service: {exch.service}, method: "
                f"{exch.method}, elapsed: {elapsed}, timeout: {exch.timeout_ms}. concurrent invokes: "
                f"{self.calls.in_flight(address, exch.method)}. max concurrent invoke limit: {limit} "
                f"(actives of provider {address})",
            )
            return True
        return False

    def host_latency(self, address: str) -> Histogram:
        return self.stats.host_histogram(address)

    def on_responses(self, exchs: list[Exchange], raws: list[bytes], host_hist: Histogram) -> None:
        # What does not change within one read is looked up once for all its responses.
        health = self._health if self._health_on else None
        responses = self.stats.responses
        access_log = self.access_log
        now = perf_counter()  # they all arrived in this read
        done: list[Exchange] = []  # answered here: their deadlines go, all at once
        ok = 0
        ok_host: str | None = None  # the last host reported healthy: a run of its answers is one report
        # Runs of responses with the same latency (requests that came in one read) and to the same
        # client are counted and queued once per run.
        hist: Histogram | None = None
        latency = 0.0
        same_latency = 0
        down: DownstreamConnection | None = None
        out = bytearray()  # the responses of the run to ``down``, each with the consumer's id
        count = 0
        size = 0  # the bytes of the run's requests, no longer held
        for i in range(len(exchs)):  # an index, not zip(): a C loop once compiled (regproxy.native)
            exch = exchs[i]
            raw = raws[i]
            if exch.plan.special:
                settled = self._settle(exch, raw)
                if settled is None:
                    continue  # a fan-out's branch: answered, if at all, with the others
                raw = settled
            status = raw[3]
            if status == _OK:
                ok += 1
                if health is not None and exch.tried[-1] != ok_host:
                    ok_host = exch.tried[-1]
                    health.report(ok_host, True)
            else:
                if health is not None:
                    health.report(exch.tried[-1], status not in _HOST_FAILURES)
                    ok_host = None
                retry_on = exch.plan.retry_on
                if (
                    retry_on & RETRY_ERROR
                    or (retry_on & RETRY_UNAVAILABLE and status in UNAVAILABLE_STATUSES)
                ) and self._retry_written(exch):
                    # The upstream did not run it (see UNAVAILABLE_STATUSES) and the route allows
                    # retrying; or Dubbo's failover was declared, which retries any failure.
                    continue
                responses[status] = responses.get(status, 0) + 1
                errors = self.stats.per_service_errors
                errors[exch.plan.counter_key] = errors.get(exch.plan.counter_key, 0) + 1
                if exch.tried:
                    self._host_error(exch.tried[-1])
            done.append(exch)
            elapsed = now - exch.started
            if exch.plan.hist is hist and elapsed == latency:
                same_latency += 1
            else:
                if hist is not None:
                    hist.observe(latency, same_latency)
                    host_hist.observe(latency, same_latency)  # one host answered this whole read
                hist, latency, same_latency = exch.plan.hist, elapsed, 1
            if access_log is not None:
                access_log.record(self.name, exch, status, elapsed)
            to = exch.downstream
            if to is not down:
                if down is not None:
                    down.queue(out)
                    down.answered(count, size)  # after its answers are queued: it may close then
                down, out, count, size = to, bytearray(), 0, 0
            # The response as it came, with the consumer's request id: one copy, no re-encoding.
            at = len(out)
            out += raw
            patch_request_id(out, at + 4, exch.downstream_id)
            count += 1
            size += len(exch.raw)
        if hist is not None:
            hist.observe(latency, same_latency)
            host_hist.observe(latency, same_latency)
        if down is not None:
            down.queue(out)
            down.answered(count, size)
        if ok:
            responses[_OK] = responses.get(_OK, 0) + ok
        self.deadlines.discard_all(done)  # type: ignore[arg-type]
        self.in_flight -= len(done)
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def on_not_written(self, exch: Exchange, reason: str) -> None:
        self.stats.connect_failures += 1
        self._not_written(exch, reason)

    def on_unsent_full(self, exch: Exchange, reason: str) -> None:
        """Not written: the upstream connection has limits.max_unsent_bytes_per_connection unsent
        (its peer does not read). Another host may take it, as after a connect failure."""
        self.stats.upstream_unsent_refusals += 1
        self._not_written(exch, reason)

    def on_foreign(self, exch: Exchange | None, reason: str) -> None:
        """The upstream sent something that is not an answer to a request in flight (see
        UpstreamConnection.data_received); ``exch``: the request it came in place of, answered here."""
        self.stats.upstream_foreign_frames += 1
        if exch is not None:
            if self._health_on and exch.tried:
                self._health.report(exch.tried[-1], False)
            self._fail(exch, Status.SERVER_ERROR, f"{reason} ({exch.label})")

    def _not_written(self, exch: Exchange, reason: str) -> None:
        if self._health_on and exch.tried:
            self._health.report(exch.tried[-1], False)
        if exch.fan is not None:
            self._fail(exch, self.not_written_status, f"{reason} ({exch.label})")
            return
        if exch.two_way and not exch.slot:
            return  # already answered (deadline passed)
        if exch.retries_left > 0:
            exch.retries_left -= 1
            self.stats.retries += 1
            self._dispatch(exch, reason)
        else:
            self._fail(
                exch, self.not_written_status, f"{reason}; tried {len(exch.tried)} host(s) for {exch.label}"
            )

    def on_lost(self, exch: Exchange, reason: str) -> None:
        # Written, so it may have run: retrying could call the provider twice. Report it instead.
        # SERVER_ERROR, not CHANNEL_INACTIVE: Java consumers treat both alike, and clients with a
        # short status table (dubbo-python) hang on 35 instead of failing the call.
        if self._health_on and exch.tried:
            self._health.report(exch.tried[-1], False)
        if exch.plan.retry_on & RETRY_RESET and self._retry_written(exch):
            return  # the route says a second execution is acceptable
        self._fail(exch, Status.SERVER_ERROR, f"{reason} ({exch.label})")

    # --- loops (regproxy.proxy.loops) -----------------------------------------------------------

    def _mark(self, down: DownstreamConnection, raw: bytes, request_id: int, two_way: bool) -> bytes | None:
        """The egress's marking of a request whose body ends with its attachments map: ``raw`` with
        this sidecar's id added to the marker, or None when the request looped (or passed too many
        egresses) and has been answered."""
        found = find_via(raw, 16)
        if found is None:
            via = self.via
            assert via is not None
            return b"".join((raw[: len(raw) - 1], via))
        at, chain = found
        ids = chain.split(b" ")
        own = self.guard.id_bytes
        if own in ids:
            path = " -> ".join(i.decode("ascii", "replace") for i in (*ids, own))
            self._refuse(
                down,
                request_id,
                two_way,
                raw,
                f"request loop: {{label}} came back to sidecar {self.guard.id}, which it passed already "
                f"(egresses passed: {path}); not forwarded again. A static cluster or a provider address "
                "leads back to a sidecar's egress",
            )
            return None
        if len(ids) >= VIA_MAX_IDS:
            self._refuse(
                down,
                request_id,
                two_way,
                raw,
                f"{{label}} already passed {len(ids)} sidecar egresses ({chain.decode('ascii', 'replace')}), "
                f"the most a request may pass without reaching an ingress ({VIA_MAX_IDS}): refused as a loop",
            )
            return None
        # A chain of egresses (a static cluster naming another sidecar's egress): this one joins it.
        return b"".join((raw[:at], via_entry(b" ".join((chain, own))), b"Z"))

    def to_triple(self, down: DownstreamConnection, data: bytes, loop_reason: str | None) -> None:
        """``down``'s first bytes are the HTTP/2 preface (regproxy.triple.detect): the Triple side
        takes the connection over (Dubbo 3's port unification), with the bytes read so far."""
        transport = down.transport
        if self.triple is None or transport is None:
            raise ProtocolError("HTTP/2 (Triple) is not served on this listener")
        self.connection_closed(down)  # no longer one of this forwarder's connections
        down.transport = None
        self.triple.adopt(transport, data, down.peer, loop_reason)

    def vet(self, down: DownstreamConnection) -> str | None:
        """Why a new client connection is this sidecar's own, in a loop (see LoopGuard.vet); None
        for every other connection. Called once, at its first bytes."""
        transport = down.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        return self.guard.vet(down.peer, self.name, local)

    def refuse_loop(self, down: DownstreamConnection, frames: list[bytes], reason: str) -> None:
        """Answer every request on a connection found to be a loop, forward none."""
        for raw in frames:
            flag = raw[2]
            if not flag & 0x80:
                continue
            request_id = frame_request_id(raw)
            two_way = bool(flag & FLAG_TWOWAY)
            if flag & FLAG_EVENT:
                if two_way:
                    down.queue(heartbeat_reply(request_id))
                continue
            self.stats.requests += 1
            self._refuse(down, request_id, two_way, raw, f"request loop: {{label}} not forwarded: {reason}")

    def _refuse(
        self, down: DownstreamConnection, request_id: int, two_way: bool, raw: bytes, message: str
    ) -> None:
        """Answer a looped request with SERVER_ERROR naming the loop, count it, log it (once a minute
        per service). 80: the consumer did nothing wrong (not 40, a bad request), the deployment
        did; it is final for the consumer, and counts against the host for outlier detection."""
        self.stats.loops += 1
        try:
            body = RequestBody(raw, 16)
            label = f"{service_label(body.path, body.version, None)}.{body.method}"
        except Hessian2Error:
            label = "a request"
        text = message.replace("{label}", label)  # not format(): the chain is bytes from the wire
        if two_way:
            self.stats.answered(Status.SERVER_ERROR)
            down.queue(encode_error(request_id, Status.SERVER_ERROR, f"regproxy {self.name}: {text}"))
        self.guard.report(
            f"{self.name} {label}",
            f"{self.name}: {text} (from {down.peer}{'' if two_way else '; one-way, dropped'}; "
            f"counted in regproxy_loops_total)",
        )

    # --- answers made here --------------------------------------------------------------------

    def _fail(self, exch: Exchange, status: int, message: str) -> None:
        plan = exch.plan
        if plan.special:
            if exch.holds:
                self._release(exch, False)
            if exch.fan is not None and exch.fan.parent is not exch:
                self._child_result(exch, (status, message), True)
                return
            if plan.mode == MODE_FAILSAFE and exch.two_way:
                # FailsafeClusterInvoker: the failure is logged, the consumer gets an empty result.
                self.stats.failsafe += 1
                log.warning(
                    "%s: failsafe: %s answered with an empty result: %s", self.name, exch.label, message
                )
                self._answer(exch, failsafe_reply(exch.downstream_id))
                return
        if exch.slot:
            self.deadlines.discard(exch)
        if self.access_log is not None:
            self.access_log.record(self.name, exch, status, perf_counter() - exch.started)
        if not exch.two_way:
            log.warning("%s: one-way request dropped: %s", self.name, message)
            return
        self.reply_error(exch.downstream, exch.downstream_id, True, status, message)
        elapsed = perf_counter() - exch.started
        exch.plan.hist.observe(elapsed)
        errors = self.stats.per_service_errors
        errors[plan.counter_key] = errors.get(plan.counter_key, 0) + 1
        if exch.tried:  # none tried (no route, no host, refused by a filter): no host's error
            self._host_error(exch.tried[-1])
            # A timeout counts in the host's latency too: what its slowness cost the caller.
            self.stats.host_histogram(exch.tried[-1]).observe(elapsed)
        self._answered(exch)

    def _host_error(self, address: str) -> None:
        """An error answered from ``address`` (the last host the exchange tried): error paths only."""
        by_host = self.stats.upstream_errors
        by_host[address] = by_host.get(address, 0) + 1

    def _answered(self, exch: Exchange) -> None:
        exch.downstream.answered(1, len(exch.raw))
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no two-way request (nor Triple call) is in flight; False when ``timeout``
        passed first."""
        if self.triple is not None and self.triple.in_flight:
            started = self.loop.time()
            if not await self.triple.wait_idle(timeout):
                return False
            timeout = max(0.0, timeout - (self.loop.time() - started))
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None

    def reply_error(
        self, down: DownstreamConnection, request_id: int, two_way: bool, status: int, message: str
    ) -> None:
        self.stats.answered(status)
        if two_way:
            down.queue(encode_error(request_id, status, f"regproxy {self.name}: {message}"))
        else:
            log.warning("%s: one-way request not forwarded: %s", self.name, message)
