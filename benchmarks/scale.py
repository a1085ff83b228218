"""The control side at scale: a real ZooKeeper holding 10,000 providers of 1,000 services.

    python -m benchmarks.scale [--services 1000] [--per-service 10] [--subscribe 100]

The providers are written straight into ZooKeeper with kazoo, as the provider sidecars of a
large deployment would have written them (``/dubbo/{interface}/providers/{encoded URL}``,
ephemeral, URLs from ``regproxy.registry.url.provider_url``). Then one ``regproxy run`` sidecar:

1. subscribes to ``--subscribe`` services at once (16 concurrent ``/sub``, like applications
   starting together): the time until all of them are routable, per the admin API;
2. sees one provider added, then removed, in one subscribed service, ``--changes`` times: the time
   from the ZooKeeper write to the new egress table. The sidecar's egress table version (admin
   ``config_dump?listener=egress``, which costs the sidecar the same whatever its table's size) is
   polled every millisecond; when it moves, the cluster is checked for the change;
3. sees ``--changes`` more changes 0.6 s apart with nobody polling: the sidecar's CPU time per
   change, less what it uses idle over the same time — the whole cost of a change, deferred work
   (the provider cache file) included;
4. its memory (RSS) at each stage.

Active health checks are turned off in that sidecar (``--health-checks`` keeps them): they would
heartbeat every known provider, and these 10,000 addresses do not exist.

Then it subscribes to every other service (the sidecar then knows all the providers) and does 2–4
again: if a change costs in proportion to the table rather than to the change, it shows as the
ratio between the two stages.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError

from benchmarks import procstat
from benchmarks.topologies import HOST, Sidecar, TopologyError, http_json
from regproxy.registry.url import provider_url
from tests.zkserver import ZooKeeperServer

CHANGE_TARGET_MS = 50.0


@dataclass(frozen=True)
class ScaleSettings:
    services: int = 1000
    per_service: int = 10
    subscribe: int = 100
    changes: int = 20
    full_table: bool = True  # then subscribe to every service and measure again
    # Active health checks heartbeat every known host: here 10,000 addresses that do not exist,
    # whose failing connects would be measured instead of the registry → table path. Off unless asked.
    health_checks: bool = False
    timeout_s: float = 300.0  # the longest a subscription stage may take before the run gives up


def interface(i: int) -> str:
    return f"org.apache.dubbo.bench.scale.Service{i:04d}"


def providers_path(i: int) -> str:
    return f"/dubbo/{interface(i)}/providers"


def leaf(i: int, ip: str) -> str:
    url = provider_url(
        interface=interface(i), ip=ip, port=20880, methods=["sayBye", "sayHi"],
        application=f"bench-app-{i:04d}", pid=4242, timestamp_ms=1_700_000_000_000,
    )  # fmt: skip
    return f"{providers_path(i)}/{url.encoded()}"


def provider_ip(i: int, j: int) -> str:
    return f"10.{1 + i // 250}.{i % 250}.{1 + j}"


def write_providers(zk: KazooClient, s: ScaleSettings) -> float:
    """Every service's parents, then its providers, pipelined; seconds taken."""
    start = time.monotonic()
    zk.ensure_path("/dubbo")
    for level in ("/dubbo/{}", "/dubbo/{}/providers"):
        pending = [zk.create_async(level.format(interface(i))) for i in range(s.services)]
        for p in pending:
            with contextlib.suppress(NodeExistsError):
                p.get(timeout=60)
    # Ephemeral, as provider registrations are: they belong to this writer's session.
    pending = [
        zk.create_async(leaf(i, provider_ip(i, j)), ephemeral=True)
        for i in range(s.services)
        for j in range(s.per_service)
    ]
    for p in pending:
        p.get(timeout=120)
    return time.monotonic() - start


class Admin:
    """A keep-alive connection to the sidecar's admin API: polls cost one request, not a handshake."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def get(self, path: str) -> tuple[int, Any]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")

    def table_version(self) -> Any:
        _s, body = self.get("/api/v1/config_dump?listener=egress")
        return body["listeners"][0]["table_version"]

    def hosts(self, cluster: str) -> set[str] | None:
        status, body = self.get(f"/api/v1/config_dump?cluster={cluster}")
        if status != 200:
            return None
        return {h["address"] for c in body["clusters"] if c["listener"] == "egress" for h in c["hosts"]}

    def routable(self) -> dict[str, int]:
        """Hosts per egress cluster."""
        _s, body = self.get("/api/v1/config_dump?allclusters")
        return {c["name"]: len(c["hosts"]) for c in body["clusters"] if c["listener"] == "egress"}

    def close(self) -> None:
        self.conn.close()


def subscribe(sidecar: Sidecar, admin: Admin, services: range, s: ScaleSettings) -> dict[str, Any]:
    """Subscribe to ``services`` concurrently; seconds until every one has all its providers."""
    replies: list[float] = []

    def sub(i: int) -> None:
        t = time.monotonic()
        status, body = http_json(
            "POST", f"{sidecar.api_url}/sub", {"service": {"interface": interface(i)}}, 120
        )
        if status != 200:
            raise TopologyError(f"/sub {interface(i)} answered {status}: {body}")
        replies.append(time.monotonic() - t)

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(sub, services))
    answered = time.monotonic() - start
    wanted = {interface(i) for i in services}
    while True:
        counts = admin.routable()
        if all(counts.get(name, 0) >= s.per_service for name in wanted):
            break
        if time.monotonic() - start > s.timeout_s:
            raise TopologyError(f"subscriptions not routable after {s.timeout_s} s")
        time.sleep(0.02)
    return {
        "new_subscriptions": len(services),
        "routable_s": round(time.monotonic() - start, 3),
        "all_sub_replies_s": round(answered, 3),
        "sub_reply_ms": {
            "p50": round(statistics.median(replies) * 1000, 2),
            "max": round(max(replies) * 1000, 2),
        },
    }


def wait_change(admin: Admin, version: Any, cluster: str, address: str, present: bool, t0: float) -> float:
    """ms from t0 until the egress table moved past ``version`` with ``address`` (not) in ``cluster``."""
    deadline = t0 + 10
    while time.monotonic() < deadline:
        v = admin.table_version()
        if v != version:
            t = time.monotonic()
            if (address in (admin.hosts(cluster) or ())) == present:
                return (t - t0) * 1000
            version = v  # another change; keep waiting for ours
        time.sleep(0.001)
    raise TopologyError(f"{cluster}: change of {address} not in the routing table after 10 s")


def change_latency(zk: KazooClient, admin: Admin, subscribed: int, s: ScaleSettings) -> dict[str, Any]:
    adds: list[float] = []
    removes: list[float] = []
    for k in range(s.changes):
        i = (k * 7) % subscribed
        address_ip = f"10.250.{k // 250}.{k % 250 + 1}"
        path = leaf(i, address_ip)
        address = f"{address_ip}:20880"
        for present in (True, False):
            version = admin.table_version()
            t0 = time.monotonic()  # before the write: its commit in ZooKeeper is part of the figure
            if present:
                zk.create(path, ephemeral=True)
            else:
                zk.delete(path)
            (adds if present else removes).append(
                wait_change(admin, version, interface(i), address, present, t0)
            )
            time.sleep(0.05)

    def pct(v: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(v), 2), "max": round(max(v), 2)}

    return {"add": pct(adds), "remove": pct(removes)}


def cpu_per_change(zk: KazooClient, pid: int, subscribed: int, s: ScaleSettings) -> dict[str, float]:
    gap = 0.6
    n = s.changes
    idle0 = procstat.cpu_seconds(pid)
    time.sleep(gap * n)
    idle = procstat.cpu_seconds(pid) - idle0
    busy0 = procstat.cpu_seconds(pid)
    paths = []
    for k in range(n):
        i = (k * 11) % subscribed
        path = leaf(i, f"10.251.{k // 250}.{k % 250 + 1}")
        paths.append(path)
        zk.create(path, ephemeral=True)
        time.sleep(gap)
    busy = procstat.cpu_seconds(pid) - busy0
    for path in paths:
        zk.delete(path)
    return {
        "cpu_ms_per_change": round(max(0.0, busy - idle) / n * 1000, 2),
        "idle_cpu_ms_per_s": round(idle / (gap * n) * 1000, 2),
    }


def settle_rss(pid: int) -> float:
    time.sleep(1.0)
    return round(procstat.rss_bytes(pid) / 2**20, 1)


def stage(
    zk: KazooClient, sidecar: Sidecar, admin: Admin, subscribed: int, s: ScaleSettings
) -> dict[str, Any]:
    out: dict[str, Any] = {"subscribed": subscribed, "providers_known": subscribed * s.per_service}
    out["change_to_table_ms"] = change_latency(zk, admin, subscribed, s)
    out.update(cpu_per_change(zk, sidecar.proc.pid, subscribed, s))
    out["rss_mb"] = settle_rss(sidecar.proc.pid)
    return out


def run(s: ScaleSettings, log: TextIO = sys.stderr) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="regproxy-scale-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        server = ZooKeeperServer(workdir / "zookeeper")
        server.start()
        stack.callback(server.stop)
        # ZooKeeper's own port, not the test gate in front of it: the gate is a Python thread relay
        # that guards against a start-up race which is over once start() has returned.
        hosts = f"{HOST}:{server.server_port}"
        zk = KazooClient(hosts=hosts, timeout=30)
        zk.start(30)
        stack.callback(zk.stop)
        write_s = write_providers(zk, s)
        print(f"  wrote {s.services * s.per_service} providers in {write_s:.1f} s", file=log, flush=True)
        config: dict[str, Any] = {"registries": [f"zookeeper://{hosts}"], "app_port": 1}
        if not s.health_checks:
            config["health"] = {"active": {"enabled": False}}
        sidecar = Sidecar("scale", workdir, config)
        stack.callback(sidecar.stop)
        admin = Admin(sidecar.admin)
        stack.callback(admin.close)
        result: dict[str, Any] = {
            "services": s.services,
            "providers": s.services * s.per_service,
            "zookeeper_write_s": round(write_s, 2),
            "active_health_checks": s.health_checks,
            "rss_mb_idle": settle_rss(sidecar.proc.pid),
        }
        first = subscribe(sidecar, admin, range(s.subscribe), s)
        print(f"  {s.subscribe} subscriptions routable in {first['routable_s']} s", file=log, flush=True)
        result[f"subscribed_{s.subscribe}"] = {**first, **stage(zk, sidecar, admin, s.subscribe, s)}
        if s.full_table and s.services > s.subscribe:
            rest = subscribe(sidecar, admin, range(s.subscribe, s.services), s)
            print(
                f"  {s.services} subscriptions routable after {rest['routable_s']} s more",
                file=log,
                flush=True,
            )
            result[f"subscribed_{s.services}"] = {**rest, **stage(zk, sidecar, admin, s.services, s)}
        return result


def print_summary(r: dict[str, Any], out: TextIO = sys.stdout) -> None:
    w = out.write
    checks = "on" if r.get("active_health_checks") else "off"
    w(f"\ncontrol side: {r['providers']:,} providers of {r['services']:,} services in ZooKeeper "
      f"(written in {r['zookeeper_write_s']} s); one sidecar, active health checks {checks}, "
      f"RSS idle {r['rss_mb_idle']} MB\n")  # fmt: skip
    w(f"  {'subscribed':>10} {'known':>7} {'routable s':>11} {'add p50/max ms':>16} "
      f"{'remove p50/max ms':>19} {'CPU ms/change':>14} {'idle ms/s':>10} {'RSS MB':>7}\n")  # fmt: skip
    for key, st in r.items():
        if not key.startswith("subscribed_"):
            continue
        c = st["change_to_table_ms"]
        add, rm = c["add"], c["remove"]
        w(
            f"  {st['subscribed']:>10,} {st['providers_known']:>7,} {st['routable_s']:>11.2f} "
            f"{add['p50']:>7.1f} / {add['max']:<7.1f} {rm['p50']:>8.1f} / {rm['max']:<8.1f}"
            f"{st['cpu_ms_per_change']:>14.2f} {st['idle_cpu_ms_per_s']:>10.1f} {st['rss_mb']:>7.1f}\n"
        )
    w("  routable s: from the stage's first /sub until every service it subscribed has all its providers\n")
    w("  idle ms/s: the sidecar's CPU per second with nothing changing\n")
    w(f"  target: a provider change in the routing table within {CHANGE_TARGET_MS:g} ms; "
      "cost in proportion to the change, not to the table\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=ScaleSettings.services)
    parser.add_argument("--per-service", type=int, default=ScaleSettings.per_service)
    parser.add_argument("--subscribe", type=int, default=ScaleSettings.subscribe)
    parser.add_argument("--changes", type=int, default=ScaleSettings.changes)
    parser.add_argument(
        "--no-full-table", action="store_true", help="stop after the first subscription stage"
    )
    parser.add_argument(
        "--health-checks", action="store_true", help="keep active health checks on (they probe every host)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    s = ScaleSettings(
        args.services,
        args.per_service,
        args.subscribe,
        args.changes,
        not args.no_full_table,
        args.health_checks,
    )
    result = run(s)
    print_summary(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
