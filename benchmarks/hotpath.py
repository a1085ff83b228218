"""The Python cost of one request through one hop, without sockets: a repeatable figure for
changes to the data path, unlike the end-to-end benchmark whose CPU figures move with the machine.

    python -m benchmarks.hotpath [--requests 100000] [--hop egress|ingress] [--depth N] [--profile]
                                 [--rules none|method|tag]

A real Forwarder with the table a sidecar builds for that hop (egress: a subscription's route, the
timeout attachment read, and the default health checking; ingress: the publication's route,
matched on the group) gets the benchmark's request through ``DownstreamConnection.data_received``;
the frame it writes upstream is answered through ``UpstreamConnection.data_received``, and the
response written downstream is checked.
Transports are stand-ins that keep the last write, so system calls and the event loop's own work
are left out: what remains is regproxy's Python per request (parse, route, pick, exchange, timer,
id mapping, stats, batching). ``--depth 16`` sends the requests 16 to a chunk and answers them 16 to
a chunk, as at the benchmark's ``pipelined`` load. ``--profile`` prints cProfile's hottest functions
instead (``--rows N`` of them).

``--rules`` puts the config center's rules on the egress (regproxy.governance, docs/governance.md):
100 services in the table, each under a configurator and a condition rule, and the measured one
under 20 condition clauses across its service, provider-application and consumer-application rules
(``method``: clauses that read only the method, evaluated once per method and table; ``tag``: the
same plus a tag rule of the provider application, which reads each request's attachments).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

from benchmarks.payload import ID, METHOD, SERVICE, request_template, response_template
from regproxy import native
from regproxy.config.health import HealthSettings
from regproxy.discovery import PublishSpec, ingress_table
from regproxy.discovery.tables import DYNAMIC_LB
from regproxy.governance.condition import ConditionRouters, parse_condition_rule
from regproxy.governance.configurator import configure_consumer, parse_configurators
from regproxy.governance.policy import ClusterPolicy, ServiceRules
from regproxy.governance.tag import parse_tag_rule
from regproxy.health.hosts import Health, egress_view
from regproxy.proxy.batch import Batcher
from regproxy.proxy.forwarder import Forwarder
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.upstream import UpstreamConnection, UpstreamEvents, UpstreamPool
from regproxy.registry.url import consumer_url, provider_url
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder

UPSTREAM = "10.0.0.1:20882"
OTHER_SERVICES = 99  # with the measured one: 100 services under rules


def _condition(key: str, clauses: list[str]) -> str:
    return "configVersion: v3.0\nscope: service\nkey: " + key + "\nconditions:\n" + "".join(
        f"  - '{c}'\n" for c in clauses
    )


def governed_cluster(name: str, service: str, host: Host, rules: str) -> Cluster:
    """A subscription's cluster as discovery makes it under the config center's rules."""
    url = provider_url(interface=service, ip=host.host, port=host.port, application="bench-provider")
    consumer = consumer_url(interface=service, ip="10.0.0.9", application="bench-consumer")
    configurators = parse_configurators(
        f"configVersion: v3.0\nscope: service\nkey: {service}\nconfigs:\n"
        "  - side: consumer\n    addresses: ['0.0.0.0']\n    parameters: {weight: '150'}\n"
    )
    url = configure_consumer(url, configurators, application="bench-consumer", local_host="10.0.0.9")
    # 20 clauses: none matches the benchmark's method, so every provider stays (the rules' cost,
    # not a smaller cluster, is what is measured).
    clauses = [f"method = other{i} => host = 10.0.0.{i}" for i in range(20)]
    conditions = ConditionRouters(
        service=parse_condition_rule(_condition(service, clauses[:10])),
        provider_application=parse_condition_rule(_condition("bench-provider", clauses[10:15])),
        consumer_application=parse_condition_rule(_condition("bench-consumer", clauses[15:])),
    )
    tag = None
    if rules == "tag":
        tag = parse_tag_rule("force: false\nenabled: true\nkey: bench-provider\ntags:\n"
                             "  - name: gray\n    addresses: ['10.0.0.7:20882']\n")  # fmt: skip
    hosts = (Host(host.address, url.weight, metadata=dict(url.params)),)
    policy = ClusterPolicy(ServiceRules(configurators, conditions, tag), consumer, {url.address: url}, hosts)
    return Cluster(name, DYNAMIC_LB, hosts, policy=policy)


class Transport:
    """Keeps the last write; enough of a transport for the protocols."""

    def __init__(self) -> None:
        self.last = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


Harness = tuple[Forwarder, DownstreamConnection, UpstreamConnection, Transport, Transport, Batcher]


def build(hop: str, rules: str = "none") -> Harness:
    loop = asyncio.get_running_loop()
    batcher = Batcher(loop)
    if hop == "egress" and rules != "none":  # 100 subscriptions under rules, the measured one first
        names = [SERVICE] + [f"com.bench.Other{i}" for i in range(OTHER_SERVICES)]
        table = RoutingTable(
            [Route(f"r{i}", RouteMatch(service=n, version=""), f"c{i}") for i, n in enumerate(names)],
            [governed_cluster(f"c{i}", n, Host(UPSTREAM), rules) for i, n in enumerate(names)],
        )
        upstream = UPSTREAM
    elif hop == "egress":  # as a subscription makes it: one route to the providers' sidecars
        table = RoutingTable(
            [Route("bench", RouteMatch(service=SERVICE, version=""), "bench")],
            [Cluster("bench", DYNAMIC_LB, (Host(UPSTREAM),))],
        )
        upstream = UPSTREAM
    else:  # as a publication makes it: the published service (group matched) to the app
        table = ingress_table([PublishSpec(SERVICE, 20880, (METHOD,))])
        upstream = "127.0.0.1:20880"

    def make_pool(events: UpstreamEvents) -> UpstreamPool:
        return UpstreamPool(loop, batcher, events, max_body=8 << 20)

    holder = TableHolder(table)
    fwd = Forwarder(
        hop,
        loop,
        holder,
        batcher,
        make_pool,
        default_timeout_ms=3000,
        timeout_from_attachment=hop == "egress",
    )
    if hop == "egress":
        # Health checking as a sidecar's default config has it at the egress (active checks and
        # outlier detection): the data path reports every response. Not started: the active checks
        # would dial the host, and only the per-request cost is measured here.
        fwd.health = Health(HealthSettings(), *egress_view(holder))
    # An upstream connection already open, so the pool never dials.
    up = UpstreamConnection(fwd.pool, upstream)
    fwd.pool._conns[upstream] = [up]  # a harness reaching into the pool on purpose
    up_t = Transport()
    up.connection_made(up_t)  # type: ignore[arg-type]
    down = DownstreamConnection(fwd, 8 << 20)
    down_t = Transport()
    down.connection_made(down_t)  # type: ignore[arg-type]
    return fwd, down, up, down_t, up_t, batcher


async def run(requests: int, hop: str, depth: int, profile: bool, rows: int, rules: str = "none") -> float:
    fwd, down, up, down_t, up_t, batcher = build(hop, rules)
    req_head, req_tail = request_template()
    resp_head, resp_tail = response_template()
    response_len = len(resp_head) + 8 + len(resp_tail)
    # Chunks of ``depth`` requests, ids 1..1024 in turn.
    ids = [(i % 1024) + 1 for i in range(1024 * depth)]
    chunks = [
        b"".join(req_head + ID.pack(i) + req_tail for i in ids[k : k + depth])
        for k in range(0, 1024 * depth, depth)
    ]
    feed_down, feed_up, flush = down.data_received, up.data_received, batcher.flush
    # One round first, untimed, for the length of what the hop writes upstream per request: the
    # egress adds its loop marker (regproxy.proxy.loops).
    feed_down(chunks[0])
    flush()
    sent = up_t.last
    sent_len = len(sent) // depth
    feed_up(b"".join(resp_head + sent[p + 4 : p + 12] + resp_tail for p in range(0, len(sent), sent_len)))
    flush()
    rounds = max(1, requests // depth)
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    start = time.process_time()
    for i in range(rounds):
        feed_down(chunks[i & 1023])
        flush()
        sent = up_t.last
        feed_up(
            b"".join(
                resp_head + sent[pos + 4 : pos + 12] + resp_tail for pos in range(0, len(sent), sent_len)
            )
        )
        flush()
        if i & 1023 == 0:
            await asyncio.sleep(0)  # let the loop run its timers
    elapsed = time.process_time() - start
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(rows)
    last = down_t.last
    if len(last) != depth * response_len or last[-response_len:][3] != 20:
        raise SystemExit(f"wrong last response: {last[:16].hex()}")
    if last[-response_len:][4:12] != ID.pack(ids[((rounds - 1) & 1023) * depth + depth - 1]):
        raise SystemExit(f"wrong id in the last response: {last[-response_len:][:16].hex()}")
    if fwd.in_flight != 0 or up.pending:
        raise SystemExit("requests left in flight")
    return elapsed / (rounds * depth) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--hop", choices=("egress", "ingress"), default="egress")
    ap.add_argument("--depth", type=int, default=1, help="requests per chunk (16: the pipelined load)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--rows", type=int, default=18, help="functions --profile prints")
    ap.add_argument("--once", action="store_true", help="one run, not the best of 3 (for callgrind)")
    ap.add_argument("--rules", choices=("none", "method", "tag"), default="none",
                    help="the config center's rules on the egress (see above)")  # fmt: skip
    args = ap.parse_args()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    best = min(
        runner(run(args.requests, args.hop, args.depth, args.profile, args.rows, args.rules))
        for _ in range(1 if args.profile or args.once else 3)
    )
    print(
        f"{args.hop}: {best:.2f} µs of Python per request (best of 3, {args.requests:,} requests, "
        f"{args.depth} per chunk; rules: {args.rules}; data path {native.describe()})"
    )


if __name__ == "__main__":
    main()
