"""What one provider change costs the control side, in-process and repeatable: discovery over the
in-memory registry, 10 providers per service, the cost measured in CPU time for tables of growing
size. The scale benchmark (benchmarks/scale.py) measures the same through a real ZooKeeper and a
sidecar process, where 10 ms CPU ticks and the machine's other work blur small figures.

    python -m benchmarks.changecost [--services 100 1000 3000] [--changes 200]

Per table size it prints: the CPU per provider change (registry event -> new egress table), the
CPU of one provider-cache write (state snapshot and JSON on the loop, file write in a thread; done
at most every CACHE_SAVE_DELAY_S), and the time to subscribe to every service at once.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from regproxy.discovery import Discovery, ingress_table
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, Subscription, provider_url
from regproxy.routing import RoutingTable, TableHolder
from regproxy.state import StateStore


def _provider(service: int, host: str) -> DubboURL:
    return provider_url(
        interface=f"org.apache.dubbo.bench.Service{service:05d}",
        ip=host,
        port=20882,
        version="1.0.0",
        methods=["sayHi"],
        pid=1,
        timestamp_ms=1,
    )


async def measure(services: int, changes: int) -> dict[str, float]:
    MemoryRegistry.reset_all()
    made: dict[str, MemoryRegistry] = {}

    def factory(url: RegistryURL) -> MemoryRegistry:
        made["reg"] = MemoryRegistry(name="reg")
        return made["reg"]

    with tempfile.TemporaryDirectory(prefix="regproxy-changecost-") as tmp:
        disc = Discovery(
            registry_urls=[RegistryURL.parse("zookeeper://bench:2181")],
            factory=factory,
            egress=TableHolder(RoutingTable()),
            ingress=TableHolder(ingress_table()),
            static_table=RoutingTable(),
            advertise_ip="10.0.0.1",
            ingress_port=20882,
            store=StateStore(tmp),
        )
        await disc.start()
        reg = made["reg"]
        for i in range(services):
            for j in range(10):
                reg.set_provider(_provider(i, f"10.1.{j}.{i % 250 + 1}"))
        t0 = time.process_time()
        await asyncio.gather(
            *(
                disc.subscribe(Subscription(f"org.apache.dubbo.bench.Service{i:05d}", "1.0.0"))
                for i in range(services)
            )
        )
        subscribe_s = time.process_time() - t0
        extra = [_provider(services // 2, f"10.2.{k // 250}.{k % 250 + 1}") for k in range(changes)]
        await disc.saver.flush()  # start from a written cache
        version = disc.egress.current.version
        t0 = time.process_time()
        for url in extra:
            reg.set_provider(url)
            await asyncio.sleep(0)
        change_ms = (time.process_time() - t0) / changes * 1000
        assert disc.egress.current.version >= version + changes, "not every change reached the table"
        t0 = time.process_time()
        await disc.saver.save()
        save_ms = (time.process_time() - t0) * 1000
        await disc.stop()
    return {"services": services, "change_ms": change_ms, "save_ms": save_ms, "subscribe_all_s": subscribe_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, nargs="+", default=[100, 1000, 3000])
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    heads = ("services", "providers", "CPU ms/change", "cache write ms", "subscribe all s")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (9, 10, 14, 15, 16), strict=True)))
    for n in args.services:
        r = asyncio.run(measure(n, args.changes))
        change, save, sub = r["change_ms"], r["save_ms"], r["subscribe_all_s"]
        print(f"{n:>9,} {n * 10:>10,} {change:>14.3f} {save:>15.2f} {sub:>16.2f}")


if __name__ == "__main__":
    main()
