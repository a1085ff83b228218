"""An application that calls Dubbo services through its regproxy sidecar, with dubbo-python's client.

It subscribes to GreetingsService and EchoService through the sidecar's HTTP API (POST /sub,
through regproxy.sdk), waits until the sidecar knows a provider, then calls both through the
sidecar's egress and prints each answer. It unsubscribes when it is done or interrupted.

    python examples/consumer.py --api http://127.0.0.1:22222 --egress 127.0.0.1:20881 --count 5

dubbo-python is pointed straight at the egress (``host=``): it needs no registry of its own.
"""

from __future__ import annotations

import argparse
import sys
import time

from dubbo.client import DubboClient

from regproxy.sdk import RegproxyClient, RegproxyError, SubscribeResult

GREETINGS_SERVICE = "org.apache.dubbo.samples.api.GreetingsService"
ECHO_SERVICE = "org.apache.dubbo.samples.api.EchoService"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Example consumer calling through regproxy's egress.")
    parser.add_argument("--api", default="http://127.0.0.1:22222", help="the sidecar's HTTP API")
    parser.add_argument("--egress", default="127.0.0.1:20881", help="the sidecar's egress, HOST:PORT")
    parser.add_argument("--version", default="1.0.0", help="version of the services to call")
    parser.add_argument("--count", type=int, default=5, help="rounds of calls; 0 = until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--name", default="bob", help="the argument of sayHi")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a provider to appear")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each call")
    return parser.parse_args(argv)


def wait_for_providers(sidecar: RegproxyClient, interface: str, version: str, wait: float) -> SubscribeResult:
    """Subscribe, and subscribe again (it is idempotent) until the sidecar knows a provider."""
    deadline = time.monotonic() + wait
    while True:
        found = sidecar.subscribe(interface, version=version)
        if found.providers or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def run(args: argparse.Namespace) -> int:
    sidecar = RegproxyClient(args.api, start_timeout=args.wait)
    subscribed: list[str] = []
    ok = failed = 0
    try:
        for interface in (GREETINGS_SERVICE, ECHO_SERVICE):
            found = wait_for_providers(sidecar, interface, args.version, args.wait)
            subscribed.append(interface)
            addresses = ", ".join(p.address for p in found.providers) or "none yet"
            print(f"subscribed {found.cluster}: providers {addresses}", flush=True)
            if not found.providers:
                print(f"no provider of {interface} after {args.wait:g} s", file=sys.stderr, flush=True)
                return 1

        greetings = DubboClient(GREETINGS_SERVICE, version=args.version, host=args.egress)
        echo = DubboClient(ECHO_SERVICE, version=args.version, host=args.egress)
        n = 0
        while args.count == 0 or n < args.count:
            n += 1
            calls = [
                (greetings, "sayHi", args.name, f"sayHi({args.name!r})"),
                (echo, "sum", [n, n + 1], f"sum({n}, {n + 1})"),
            ]
            for client, method, call_args, shown in calls:
                try:
                    value = client.call(method, call_args, timeout=args.timeout)
                except Exception as e:  # dubbo-python raises its own exceptions and socket errors
                    failed += 1
                    print(f"[{n}] {shown} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                else:
                    ok += 1
                    print(f"[{n}] {shown} -> {value!r}", flush=True)
            if args.count == 0 or n < args.count:
                time.sleep(args.interval)
    except RegproxyError as e:
        print(f"subscribe failed: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        for interface in subscribed:
            try:
                sidecar.unsubscribe(interface, version=args.version)
                print(f"unsubscribed {interface}", flush=True)
            except RegproxyError as e:
                print(f"unsubscribe {interface} failed: {e}", file=sys.stderr, flush=True)
    print(f"{ok} calls succeeded, {failed} failed", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
