"""Prometheus metrics for ``GET /metrics``: a collector that reads the sidecar's counters at scrape time.

The data path never touches prometheus_client: it adds to plain ints, Counters and our own
Histogram (regproxy/proxy/stats.py), which costs an add per request.  A scrape walks those once and
builds metric families from them, so the work is paid by the scraper, every 15 s or so, not by
each request.  Counters are read without a lock: everything runs on the event loop, and the scrape
handler runs there too.

Families (all prefixed ``regproxy_``; ``listener`` is ``egress`` or ``ingress``):

* requests, one-way requests, heartbeats, responses by Dubbo status, request duration histogram
  per service and method, timeouts, retries, connect failures, protocol errors, ejections;
* client (downstream) connections open and refused; requests in flight;
* upstream connections per address and state, requests in flight, sent and answered with an error
  per upstream address, and their latency histogram;
* registry state (one gauge per registry and state, 1 for the current one), registry events,
  publications, subscriptions, subscriptions served from the state file's cache;
* state file writes that succeeded and that failed, and whether the last one failed;
* readiness, draining, start time, routing table versions.

The collector sees the sidecar only through :class:`MetricsSource`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from regproxy.dubbo.frame import Status
from regproxy.proxy.stats import Histogram, ListenerStats
from regproxy.registry.base import AUTH_FAILED, CONNECTED, CONNECTING, LOST, STOPPED, SUSPENDED
from regproxy.triple.status import Code

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from regproxy.discovery import Discovery
    from regproxy.proxy.engine import Listener
    from regproxy.proxy.forwarder import Forwarder

__all__ = ["REGISTRY_STATES", "MetricsSource", "SidecarCollector", "histogram_buckets", "metrics_registry"]

PREFIX = "regproxy"
# Every state a registry adapter reports (regproxy.registry.base), so each registry always has the
# full set of series and an alert can use `regproxy_registry_state{state="connected"} == 0`.
REGISTRY_STATES: tuple[str, ...] = (CONNECTING, CONNECTED, SUSPENDED, LOST, STOPPED, AUTH_FAILED)

# Scalar ListenerStats fields exported as counters: (attribute, family name, help).
_LISTENER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("requests", "requests", "Dubbo requests received (heartbeats excluded), one-way included."),
    ("oneway", "oneway_requests", "One-way requests received."),
    ("heartbeats", "heartbeats", "Heartbeat events received from clients."),
    ("timeouts", "timeouts", "Requests answered with a timeout by regproxy."),
    ("retries", "retries", "Requests retried on another host after a connect failure."),
    ("connect_failures", "upstream_connect_failures", "Requests whose upstream connection failed."),
    ("protocol_errors", "protocol_errors", "Client connections closed for a malformed Dubbo stream."),
    ("ejections", "ejections", "Upstream hosts ejected by health checking."),
    ("rejected_connections", "rejected_connections", "Client connections refused (limits.max_connections)."),
    ("loops", "loops", "Requests answered with the loop error (they came back to this sidecar)."),
    # Flow control (regproxy/proxy/flow.py).
    (
        "paused_reads",
        "paused_reads",
        "Times a client connection stopped being read (its in-flight or unsent limit).",
    ),
    ("unsent_closes", "unsent_closes", "Client connections closed for leaving too many answers unread."),
    (
        "upstream_unsent_refusals",
        "upstream_unsent_refusals",
        "Requests not written to an upstream connection whose peer left too many bytes unread.",
    ),
    (
        "upstream_foreign_frames",
        "upstream_foreign_frames",
        "Frames from an upstream that answer no request in flight (requests, ids never sent).",
    ),
    (
        "refused_streams",
        "refused_streams",
        "Triple streams refused (REFUSED_STREAM) over the concurrent streams a client was told.",
    ),
    # Dubbo's cluster layer (docs/parameters.md).
    ("failsafe", "failsafe_answers", "Failures a declared cluster=failsafe answered with an empty result."),
    ("refused_tokens", "token_refusals", "Calls the ingress refused for a missing or wrong token."),
    ("refused_executes", "executes_refusals", "Calls the ingress refused over a publication's executes."),
)


def _name(short: str) -> str:
    return f"{PREFIX}_{short}"


def _sides(fwd: Forwarder) -> list[tuple[str, ListenerStats, int, Callable[[int], str]]]:
    """A listener's two protocols: (protocol label, counters, calls in flight, status namer)."""
    sides: list[tuple[str, ListenerStats, int, Callable[[int], str]]] = [
        ("dubbo", fwd.stats, fwd.in_flight, _status_name)
    ]
    if fwd.triple is not None:
        sides.append(("tri", fwd.triple.stats, fwd.triple.in_flight, _grpc_status_name))
    return sides


def _grpc_status_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return "RESET" if code == -1 else "UNKNOWN"


def _status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return "UNKNOWN"


def _le(bound: float) -> str:
    # The text format's own float spelling, so "le" labels match what clients expect ("0.001").
    return repr(float(bound))


def histogram_buckets(hist: Histogram) -> list[tuple[str, float]]:
    """Our per-bucket counts as Prometheus's cumulative (le, count) pairs, ending with +Inf."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip(hist.buckets, hist.counts, strict=False):
        total += n
        out.append((_le(bound), total))
    total += sum(hist.counts[len(hist.buckets) :])
    out.append(("+Inf", total))
    return out


class MetricsSource(Protocol):
    """What the metrics read of a sidecar (regproxy.sidecar.Sidecar is one): its two listeners (their
    forwarders' counters and pools, their routing tables), discovery, readiness and lifetime."""

    @property
    def egress(self) -> Listener: ...

    @property
    def ingress(self) -> Listener: ...

    @property
    def discovery(self) -> Discovery | None: ...

    @property
    def draining(self) -> bool: ...

    @property
    def started_at(self) -> float: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class SidecarCollector(Collector):
    """Builds the metric families from a running sidecar's counters on every ``collect()``."""

    def __init__(self, sidecar: MetricsSource) -> None:
        self.sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        sc = self.sidecar
        listeners = [lst for lst in (sc.egress, sc.ingress) if lst.forwarder is not None]
        yield from self._listener_families(listeners)
        yield from self._upstream_families(listeners)
        yield from self._discovery_families()
        yield from self._state_families()
        yield from self._sidecar_families()

    # --- the forwarding engine ----------------------------------------------------------------

    def _listener_families(self, listeners: list[Listener]) -> Iterator[Metric]:
        counters = {
            attr: CounterMetricFamily(_name(name), doc, labels=["listener", "protocol"])
            for attr, name, doc in _LISTENER_COUNTERS
        }
        responses = CounterMetricFamily(
            _name("responses"),
            "Responses sent to clients, regproxy's own errors included: by Dubbo status (protocol dubbo), "
            "by grpc-status (protocol tri; -1 RESET: the call ended in a stream reset).",
            labels=["listener", "protocol", "status", "status_name"],
        )
        duration = HistogramMetricFamily(
            _name("request_duration_seconds"),
            "Time from a request's arrival to its response (errors and timeouts included); for a Triple "
            "stream, to its end.",
            labels=["listener", "protocol", "service", "method"],
        )
        downstream = GaugeMetricFamily(
            _name("downstream_connections"), "Client connections open.", labels=["listener", "protocol"]
        )
        in_flight = GaugeMetricFamily(
            _name("requests_in_flight"),
            "Two-way requests (Triple calls) forwarded and not yet answered (ended).",
            labels=["listener", "protocol"],
        )
        for lst in listeners:
            fwd = lst.forwarder
            assert fwd is not None
            name = lst.name
            for protocol, stats, calls, status_name in _sides(fwd):
                for attr, family in counters.items():
                    family.add_metric([name, protocol], getattr(stats, attr))
                for code, n in sorted(stats.responses.items()):
                    responses.add_metric([name, protocol, str(code), status_name(code)], n)
                for (service, method), hist in sorted(stats.latency.items()):
                    duration.add_metric([name, protocol, service, method], histogram_buckets(hist), hist.sum)
                downstream.add_metric([name, protocol], stats.downstream_connections)
                in_flight.add_metric([name, protocol], calls)
        yield from counters.values()
        yield from (responses, duration, downstream, in_flight)

    def _upstream_families(self, listeners: list[Listener]) -> Iterator[Metric]:
        conns = GaugeMetricFamily(
            _name("upstream_connections"),
            "Connections to upstream hosts by state (connecting, open; readonly: the host is shutting down).",
            labels=["listener", "address", "state"],
        )
        pending = GaugeMetricFamily(
            _name("upstream_requests_in_flight"),
            "Requests written or waiting on connections to an upstream host.",
            labels=["listener", "address"],
        )
        sent = CounterMetricFamily(
            _name("upstream_requests"),
            "Requests sent to an upstream host (each retry counts for the host it went to).",
            labels=["listener", "protocol", "address"],
        )
        failed = CounterMetricFamily(
            _name("upstream_errors"),
            "Requests (Triple calls) answered with an error whose last try went to this upstream host: "
            "an error status from it, a timeout waiting for it, a failed connect, a lost connection.",
            labels=["listener", "protocol", "address"],
        )
        duration = HistogramMetricFamily(
            _name("upstream_request_duration_seconds"),
            "Time from a request's arrival to its response (errors and timeouts included; for a Triple "
            "stream, to its end), by the upstream host its last try went to.",
            labels=["listener", "protocol", "address"],
        )
        for lst in listeners:
            fwd = lst.forwarder
            assert fwd is not None
            for address, described in sorted(fwd.pool.describe().items()):
                by_state: Counter[str] = Counter()
                load = 0
                for c in described:
                    by_state["readonly" if c.get("readonly") else str(c.get("state"))] += 1
                    load += int(str(c.get("in_flight") or 0))
                for state, n in sorted(by_state.items()):
                    conns.add_metric([lst.name, address, state], n)
                pending.add_metric([lst.name, address], load)
            for protocol, stats, _calls, _status in _sides(fwd):
                for address, n in sorted(stats.upstream_requests.items()):
                    sent.add_metric([lst.name, protocol, address], n)
                for address, n in sorted(stats.upstream_errors.items()):
                    failed.add_metric([lst.name, protocol, address], n)
                for address, hist in sorted(stats.upstream_latency.items()):
                    duration.add_metric([lst.name, protocol, address], histogram_buckets(hist), hist.sum)
        yield from (conns, pending, sent, failed, duration)

    # --- registries ---------------------------------------------------------------------------

    def _discovery_families(self) -> Iterator[Metric]:
        disc = self.sidecar.discovery
        state = GaugeMetricFamily(
            _name("registry_state"),
            "1 for the registry's current connection state, 0 for the others.",
            labels=["registry", "state"],
        )
        events = CounterMetricFamily(
            _name("registry_events"),
            "Registry notifications handled: provider list changes and connection state changes; "
            "provider URLs ignored because they name this sidecar's own egress, API or admin listener; "
            "invalid provider URLs skipped (each counted once); provider events that failed to apply; "
            "provider lists emptied and held back by the empty-provider protection; dynamic rules that "
            "changed (or were restored); Dubbo 3 application-level discovery: mapping and instance "
            "changes, MetadataInfo fetches and failed fetch attempts, this sidecar's instance "
            "registrations and the ones that failed.",
            labels=["event"],
        )
        pubs = GaugeMetricFamily(_name("publications"), "Services this sidecar publishes.")
        subs = GaugeMetricFamily(_name("subscriptions"), "Services this sidecar subscribes to.")
        cached = GaugeMetricFamily(
            _name("subscriptions_from_cache"),
            "Subscriptions routed on providers read from the state file, not yet confirmed by a registry.",
        )
        rule_errors = CounterMetricFamily(
            _name("rule_errors"),
            "Dynamic rules refused (the previous good version stays in force), by where they were read "
            "(zookeeper, nacos, memory, state) and why (yaml, unknown-field, condition, ...).",
            labels=["source", "reason"],
        )
        rules = GaugeMetricFamily(
            _name("rules_in_force"), "Dynamic rules from the config center in force.", labels=["registry"]
        )
        if disc is not None:
            for (origin, reason), n in sorted(disc.rules.error_counts().items()):
                rule_errors.add_metric([origin, reason], n)
            for center in disc.rules_view():
                rules.add_metric([center["registry"]], len(center["in_force"]))
            seen: set[str] = set()
            for reg in sorted(disc.registries.values(), key=lambda r: r.name):
                if reg.name in seen:
                    continue  # two URLs differing only in a redacted password: one series set
                seen.add(reg.name)
                current = reg.state
                for s in REGISTRY_STATES if current in REGISTRY_STATES else (*REGISTRY_STATES, current):
                    state.add_metric([reg.name, s], 1 if s == current else 0)
            counts = disc.event_counts()
            for kind in (
                "provider_events",
                "state_changes",
                "own_providers_ignored",
                "invalid_providers",
                "provider_event_failures",
                "empty_holds",
                "rule_changes",
                "app_mapping_events",
                "app_instance_events",
                "metadata_fetches",
                "metadata_fetch_failures",
                "app_registrations",
                "app_registration_failures",
            ):
                events.add_metric([kind], counts.get(kind, 0))
            pubs.add_metric([], len(disc.publications))
            subs.add_metric([], len(disc.subscriptions))
            cached.add_metric([], len(disc.from_cache))
        yield from (state, events, pubs, subs, cached, rule_errors, rules)

    # --- the state file -----------------------------------------------------------------------

    def _state_families(self) -> Iterator[Metric]:
        disc = self.sidecar.discovery
        status = disc.state_save_status() if disc is not None else None
        yield CounterMetricFamily(
            _name("state_saves"),
            "Writes of the state file (data_dir/regproxy-state.json) that succeeded.",
            value=status["writes"] if status else 0,
        )
        yield CounterMetricFamily(
            _name("state_save_failures"),
            "Writes of the state file that failed (disk full, I/O error), each retry included; the "
            "API answered the changes they were for with 503.",
            value=status["failures"] if status else 0,
        )
        yield GaugeMetricFamily(
            _name("state_save_failing"),
            "1 while the last write of the state file failed: changes since are in effect but not on "
            "disk, and /readyz answers 503.",
            value=0 if status is None or status["ok"] else 1,
        )

    # --- the sidecar as a whole ---------------------------------------------------------------

    def _sidecar_families(self) -> Iterator[Metric]:
        sc = self.sidecar
        ready, _detail = sc.readiness()
        yield GaugeMetricFamily(_name("ready"), "1 when /readyz answers 200.", value=1 if ready else 0)
        yield GaugeMetricFamily(
            _name("draining"), "1 while the sidecar drains before exiting.", value=1 if sc.draining else 0
        )
        yield GaugeMetricFamily(
            _name("start_time_seconds"), "When the sidecar started (Unix time).", value=sc.started_at
        )
        version = GaugeMetricFamily(
            _name("routing_table_version"),
            "Version of the routing table in use; it changes on every swap.",
            labels=["listener"],
        )
        hosts = GaugeMetricFamily(
            _name("cluster_hosts"), "Hosts in a cluster of the routing table.", labels=["listener", "cluster"]
        )
        for lst in (sc.egress, sc.ingress):
            table, name = lst.table.current, lst.name
            version.add_metric([name], table.version)
            for cname, cluster in sorted(table.clusters.items()):
                hosts.add_metric([name, cname], len(cluster.hosts))
        yield from (version, hosts)


def metrics_registry(sidecar: MetricsSource, *, process: bool = True) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) with the sidecar's collector, and the
    process and platform collectors (memory, CPU, open files, Python version)."""
    registry = CollectorRegistry()
    registry.register(SidecarCollector(sidecar))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry
