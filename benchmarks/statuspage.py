"""What an open status page costs the sidecar it shows: each admin read the page makes, timed on an
in-process sidecar whose egress has one cluster of N hosts (static, each with the parameters a
Dubbo 3 provider registers, health checks off: as many hosts as a large subscription), in CPU time
of the handler itself, which runs on the sidecar's event loop between the requests it forwards.

    python -m benchmarks.statuspage [--hosts 10 100 1000 5000] [--reads 50]

Per table size it prints each read's CPU (median of ``--reads``), the page's fast round (clusters
and the last seconds of timeseries: every refresh) and slow round (the other seven: every third
refresh), the interval the page then keeps (two seconds, or 100 times its last round: status.js's
BUSY_FACTOR) and the share of one core that comes to.  HTTP parsing and the socket are left out: a
few tens of microseconds a read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import make_mocked_request

from regproxy.api.admin import ADMIN_KEY, build_admin_app
from regproxy.config import load_config
from regproxy.demo.embedded import free_ports
from regproxy.registry.memory import MemoryRegistry
from regproxy.sidecar import Sidecar

FAST = ("/api/v1/clusters?brief", "/api/v1/timeseries?seconds=5")
SLOW = (
    "/api/v1/stats",
    "/api/v1/config_dump?sidecar",
    "/readyz",
    "/api/v1/publications",
    "/api/v1/subscriptions",
    "/api/v1/rules",
    "/api/v1/config_dump?allrouters",
)
# Not read by the page, for comparison: the whole clusters view, as `regproxy ctl clusters` reads it.
OTHERS = ("/api/v1/clusters",)
HANDLERS = {
    "/api/v1/stats": "stats",
    "/api/v1/clusters": "clusters",
    "/api/v1/timeseries": "timeseries",
    "/api/v1/config_dump": "config_dump",
    "/readyz": "readyz",
    "/api/v1/publications": "publications",
    "/api/v1/subscriptions": "subscriptions",
    "/api/v1/rules": "rules",
}
FAST_S = 2.0  # status.js: FAST_MS
BUSY_FACTOR = 100  # status.js: BUSY_FACTOR
SLOW_EVERY = 3  # status.js: SLOW_EVERY


# What a Dubbo 3 provider registers beside its address (a ServiceConfig's URL parameters): each host
# of a subscription carries them as metadata, and /api/v1/clusters shows them.
PROVIDER_PARAMS = {
    "anyhost": "true", "application": "greetings-provider", "deprecated": "false", "dubbo": "2.0.2",
    "dynamic": "true", "generic": "false", "interface": "org.apache.dubbo.bench.Big",
    "methods": "sayHi,sayHello,greet", "pid": "4242", "prefer.serialization": "hessian2,fastjson2",
    "release": "3.2.11", "revision": "1.0.0", "service-name-mapping": "true", "side": "provider",
    "timestamp": "1733300000000", "version": "1.0.0", "timeout": "3000", "retries": "2",
    "loadbalance": "random", "threads": "200",
}  # fmt: skip


def _config(tmp: Path, hosts: int) -> Path:
    egress, ingress, api, admin = free_ports(4)
    data: dict[str, Any] = {
        "egress": f"127.0.0.1:{egress}",
        "ingress": f"127.0.0.1:{ingress}",
        "api": f"127.0.0.1:{api}",
        "admin": f"127.0.0.1:{admin}",
        "app_port": 1,
        "advertise_ip": "127.0.0.1",
        "registries": ["memory://"],
        "data_dir": str(tmp),
        "log_level": "warning",
        "health": {"active": {"enabled": False}, "app_check": {"enabled": False}},
        "clusters": [
            {
                "name": "big",
                "hosts": [
                    {"address": f"10.{i // 250}.{i % 250}.1:20882", "metadata": PROVIDER_PARAMS}
                    for i in range(hosts)
                ],
            }
        ],
        "routes": [{"name": "big", "match": {"service": "org.apache.dubbo.bench.Big"}, "cluster": "big"}],
    }
    path = tmp / "regproxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def measure(hosts: int, reads: int) -> dict[str, Any]:
    """CPU ms per read of each path, and the page's rounds, on a sidecar with ``hosts`` hosts."""
    MemoryRegistry.reset_all()
    with tempfile.TemporaryDirectory(prefix="regproxy-statuspage-") as tmp:
        sc = Sidecar(load_config(_config(Path(tmp), hosts)))
        await sc.start()
        try:
            app = build_admin_app(sc)
            admin = app[ADMIN_KEY]
            per_path: dict[str, float] = {}
            for path in FAST + SLOW + OTHERS:
                handler = getattr(admin, HANDLERS[path.split("?", 1)[0]])
                request = make_mocked_request("GET", path, app=app)
                times = []
                for _ in range(reads):
                    started = time.process_time()
                    await handler(request)
                    times.append(time.process_time() - started)
                per_path[path] = statistics.median(times) * 1000
        finally:
            await sc.stop()
    fast = sum(per_path[p] for p in FAST)
    slow = sum(per_path[p] for p in SLOW)
    every_s = max(FAST_S, BUSY_FACTOR * (fast + slow / SLOW_EVERY) / 1000)
    return {
        "hosts": hosts,
        "reads_ms": per_path,
        "fast_round_ms": fast,
        "slow_round_ms": slow,
        "every_s": every_s,
        "core_percent": (fast + slow / SLOW_EVERY) / 1000 / every_s * 100,
    }


async def main(host_counts: list[int], reads: int) -> None:
    for hosts in host_counts:
        r = await measure(hosts, reads)
        print(
            f"{hosts:>6} hosts: fast round {r['fast_round_ms']:.2f} ms, slow round {r['slow_round_ms']:.2f} "
            f"ms, every {r['every_s']:.1f} s: {r['core_percent']:.2f}% of a core"
        )
        for path, ms in r["reads_ms"].items():
            print(f"         {path:<34} {ms:8.3f} ms{'  (not read by the page)' if path in OTHERS else ''}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 1000, 5000])
    parser.add_argument("--reads", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.hosts, args.reads))
