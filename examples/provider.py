"""An application that provides Dubbo services and publishes them through its regproxy sidecar.

It serves the demo GreetingsService and EchoService (regproxy.demo.provider) on --port, asks the
sidecar to publish both (POST /pub, through regproxy.sdk), and on Ctrl-C or SIGTERM unpublishes
them before it stops serving, so consumers move away before the port closes.

    python examples/provider.py --api http://127.0.0.1:22222 --port 20880

The application knows nothing about ZooKeeper or Nacos: only its sidecar's HTTP API.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from regproxy.demo.provider import ECHO_SERVICE, GREETINGS_SERVICE, Provider, default_services
from regproxy.sdk import AsyncRegproxyClient, RegproxyError

# What this application exports: interface -> methods (the demo provider's handlers).
SERVICES = {GREETINGS_SERVICE: ["sayHi"], ECHO_SERVICE: ["echo", "sleep", "sum"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Example provider publishing itself through regproxy.")
    parser.add_argument("--api", default="http://127.0.0.1:22222", help="the sidecar's HTTP API")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve Dubbo on")
    parser.add_argument(
        "--port", type=int, default=20880, help="port to serve Dubbo on (the sidecar's app_port)"
    )
    # dubbo-python's client asks for version 1.0.0 unless told otherwise.
    parser.add_argument("--version", default="1.0.0", help="version both services are exported at")
    parser.add_argument("--group", default="", help="Dubbo group of both services")
    parser.add_argument("--application", default="example-provider", help="application name in the registry")
    parser.add_argument(
        "--start-timeout", type=float, default=30.0, help="seconds to wait for the sidecar to come up"
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    services = default_services(greetings_version=args.version, echo_version=args.version)
    provider = Provider(services, name=args.application)
    await provider.start(args.host, args.port)
    print(f"serving {', '.join(SERVICES)} on {args.host}:{provider.port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    published: list[str] = []
    async with AsyncRegproxyClient(args.api, start_timeout=args.start_timeout) as sidecar:
        try:
            for interface, methods in SERVICES.items():
                url = await sidecar.publish(
                    interface,
                    port=provider.port,  # our real port; the sidecar registers its own address
                    methods=methods,
                    version=args.version,
                    group=args.group,
                    application=args.application,
                )
                published.append(interface)
                print(f"published {interface} as {url}", flush=True)
            print("ready; Ctrl-C to unpublish and stop", flush=True)
            await stop.wait()
        except RegproxyError as e:
            print(f"publish failed: {e}", file=sys.stderr, flush=True)
            return 1
        finally:
            # Out of the registry first, then stop serving: consumers stop sending before we go.
            for interface in published:
                try:
                    await sidecar.unpublish(interface, version=args.version, group=args.group)
                    print(f"unpublished {interface}", flush=True)
                except RegproxyError as e:
                    print(f"unpublish {interface} failed: {e}", file=sys.stderr, flush=True)
            await provider.close()
    print(f"stopped after {services.total_calls} calls", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
