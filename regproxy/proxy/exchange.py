"""One request in flight through a listener (``Exchange``) and the routing decision it follows
(``Plan``): where it came from, where it may go, its deadline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from regproxy.dubbo.frame import FLAG_TWOWAY, Frame
from regproxy.proxy.stats import Histogram

if TYPE_CHECKING:
    from regproxy.proxy.cluster import FanOut
    from regproxy.proxy.filters import StreamFilter
    from regproxy.proxy.listener import DownstreamConnection
    from regproxy.proxy.upstream import UpstreamConnection
    from regproxy.routing import Host, LoadBalancer
    from regproxy.routing.model import ProviderGuard

# At the egress the consumer's timeout is in the attachments, after every argument. Most requests
# are answered long before any timeout: their deadline is first looked at after this delay, and
# only requests still in flight then have their attachments read (Forwarder._on_deadline).
TIMEOUT_PROBE_S: Final = 0.01


class Plan:
    """A routing decision: the hosts, balancer and policy a request gets, with the labels and
    latency histogram of its counters. The forwarder memoises one per (service, version, method,
    and group where the table matches on it) while the table and rules stay the same; a request
    routed by a rule gets its own."""

    __slots__ = (
        "actives",
        "balancer",
        "counter_key",
        "fallback_ms",
        "filters",
        "first_look_s",
        "forks",
        "guard",
        "hist",
        "hosts",
        "method",
        "mode",
        "needs_arguments",
        "only",
        "retries",
        "retry_on",
        "service",
        "special",
        "timeout_ms",
        "token",
    )

    def __init__(
        self,
        timeout_ms: int,
        retries: int,
        hosts: tuple[Host, ...],
        balancer: LoadBalancer,
        service: str,
        method: str,
        hist: Histogram,
        retry_on: int = 1,
        filters: tuple[StreamFilter, ...] = (),
        *,
        fallback_ms: int = 0,
        mode: int = 0,
        forks: int = 2,
        actives: dict[str, int] | None = None,
        token: bool = False,
        needs_arguments: bool = False,
        guard: ProviderGuard | None = None,
    ) -> None:
        self.timeout_ms = timeout_ms  # 0: the consumer's, read late (egress)
        # When the consumer's request carries no timeout: the providers' declared one, else 0 (the
        # listener's default). regproxy.governance.params.
        self.fallback_ms = fallback_ms
        self.first_look_s = timeout_ms / 1000 if timeout_ms else TIMEOUT_PROBE_S
        self.retries = retries
        # The hosts and balancer of the table the request started on: a retry stays on them even
        # if the routing table is swapped meanwhile.
        self.hosts = hosts
        self.balancer = balancer
        self.service = service  # "group/interface:version", for messages and counters
        self.method = method
        self.counter_key = f"{service}.{method}"
        self.hist = hist  # the latency histogram of (service, method)
        # RETRY_* flags of regproxy.routing.rules: which failures after writing may be retried
        # (connect failures before writing always may, while retries last).
        self.retry_on = retry_on
        self.filters = filters  # the rule's stream filters; () for most requests
        # Dubbo's cluster invoker and consumer filters (regproxy.governance.params MODE_*): the
        # mode, forking's `forks`, `actives` per provider address, whether to send each provider's
        # `token`, whether the balancer hashes the arguments (consistenthash).
        self.mode = mode
        self.forks = forks
        self.actives = actives if actives else None
        self.token = token
        self.needs_arguments = needs_arguments
        self.guard = guard  # the ingress: a publication's token and executes (Route.guard)
        # Anything but a plain send and answer: the forwarder takes its slower path for the plan.
        self.special = mode >= 3 or bool(actives) or token or needs_arguments or guard is not None
        # A cluster of one usable host: while no host is failing, every balancer would pick it.
        only = hosts[0] if len(hosts) == 1 and not self.special else None
        self.only = only if only is not None and only.healthy and only.weight > 0 else None


class Exchange:
    """One request in flight: the bytes as received (forwarded with an upstream id, and again on a
    retry), the client connection and id its answer goes to, the Plan it follows, its deadline's
    bucket and the hosts tried. Made by the Forwarder; an upstream connection holds it from writing
    to answer. Invariant: ``slot`` is 0 once it was answered (or for a one-way request), so a late
    response, deadline or filter resumption finds nothing to do."""

    __slots__ = (
        "downstream",
        "downstream_id",
        "fan",
        "holds",
        "plan",
        "raw",
        "retries_left",
        "slot",
        "started",
        "timeout_ms",
        "tried",
        "two_way",
        "upstream",
        "upstream_id",
    )

    def __init__(
        self,
        downstream: DownstreamConnection,
        raw: bytes,
        request_id: int,
        plan: Plan,
        started: float,
        slot: int = 0,
        tried: tuple[str, ...] = (),
    ) -> None:
        self.downstream = downstream
        self.raw = raw  # the request as received, header and body: forwarded with its id replaced
        self.downstream_id = request_id
        self.two_way = bool(raw[2] & FLAG_TWOWAY)
        self.plan = plan
        self.started = started  # perf_counter() when the request arrived
        self.retries_left = plan.retries
        # 0 at the egress until the deadline wheel first asks: the consumer's timeout is read from
        # the attachments only for requests still in flight then (see Forwarder._on_deadline).
        self.timeout_ms = plan.timeout_ms
        # The addresses it was sent to, in order: a tuple, so that the requests of one read to one
        # host share it; a retry makes a new one.
        self.tried = tried
        # The deadline's bucket in the wheel; 0: none (answered, or one-way). Given here when the
        # caller puts the deadline in the wheel (DeadlineWheel.add_at) right after.
        self.slot = slot
        self.upstream: UpstreamConnection | None = None
        self.upstream_id = 0
        # Special plans only (Plan.special): the fan-out this is one branch of (forking, broadcast),
        # and the provider address whose `actives` slot it holds ("" for none).
        self.fan: FanOut | None = None
        self.holds = ""

    @property
    def service(self) -> str:
        return self.plan.service

    @property
    def method(self) -> str:
        return self.plan.method

    @property
    def label(self) -> str:
        return self.plan.counter_key

    @property
    def frame(self) -> Frame:
        return Frame.of(self.raw)
