"""What mutual TLS on the egress → ingress hop costs: the same calls through an egress and an ingress
listener in plaintext and with TLS, alternating, in one process (demo client, both listeners, demo
provider).  CPU time per call is the figure to compare: on a shared machine calls/s swings with the
load, while the process's CPU time for the same work does not.  Certificates are made in a
temporary directory (``cryptography``, from the test extra).

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.tls_overhead --calls 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks import aio
from regproxy.config import TLSConfig
from regproxy.demo.client import DubboClient
from regproxy.demo.provider import default_services, serve
from regproxy.discovery import PublishSpec, ingress_table
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.tls import SidecarTLS
from tests.pki import make_pki

ECHO = "org.apache.dubbo.samples.api.EchoService"


def _settings(**kw: object) -> ListenerSettings:
    return ListenerSettings(
        host="127.0.0.1",
        port=0,
        max_body=8 * 1024 * 1024,
        default_timeout_ms=10_000,
        connect_timeout_ms=1000,
        connections_per_host=1,
        **kw,  # type: ignore[arg-type]
    )


async def one_round(tls: SidecarTLS | None, calls: int, concurrency: int, size: int) -> tuple[float, float]:
    """(CPU µs per call, calls per second) for ``calls`` echo calls of ``size`` bytes."""
    provider = await serve("127.0.0.1", 0, services=default_services())
    pport = provider.sockets[0].getsockname()[1]
    ingress = Listener(
        "ingress",
        _settings(server_ssl=tls.server_ssl if tls else None),
        TableHolder(ingress_table([PublishSpec(ECHO, pport)])),
    )
    await ingress.start()
    table = RoutingTable(
        routes=[Route(name="echo", match=RouteMatch(service=ECHO), cluster="c")],
        clusters=[Cluster(name="c", hosts=(Host(address=f"127.0.0.1:{ingress.address[1]}"),))],
    )
    egress = Listener("egress", _settings(upstream_tls=tls.upstream if tls else None), TableHolder(table))
    await egress.start()
    clients = [await DubboClient.connect("127.0.0.1", egress.address[1]) for _ in range(8)]
    payload = "x" * size
    await clients[0].call(ECHO, "echo", [payload])  # connect (and handshake) outside the measure

    async def worker(i: int) -> None:
        client = clients[i % len(clients)]
        for _ in range(calls // concurrency):
            await client.call(ECHO, "echo", [payload], timeout=30)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = calls // concurrency * concurrency
    for client in clients:
        client.close()
    await egress.stop()
    await ingress.stop()
    provider.close()
    return cpu / done * 1e6, done / wall


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        cfg = TLSConfig(
            enabled=True, cert_file=pki.peer.cert, key_file=pki.peer.key, ca_file=pki.ca, egress="always"
        )
        for _ in range(args.rounds):
            for name, tls in (("plaintext", None), ("mutual TLS", SidecarTLS(cfg, None))):
                cpu_us, rate = await one_round(tls, args.calls, args.concurrency, args.size)
                print(f"{name:>10}: {cpu_us:6.1f} µs CPU per call, {rate:8.0f} calls/s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="echo payload, characters")
    parser.add_argument("--rounds", type=int, default=3)
    aio.run(main(parser.parse_args()))
