"""A demo Dubbo consumer: calls GreetingsService.sayHi and EchoService.sum through the local egress.

It prints every result and every error, reconnects when the connection is lost, and exits non-zero
if any call failed — so a compose file or a smoke test can use its exit code.

``--greetings-version 1.0.0,2.0.0`` calls sayHi once per listed version in every round. With
``--subscribe URL`` it first subscribes to what it calls through its sidecar's ``/sub`` (with
regproxy.sdk, which retries while the sidecar starts) and waits until every subscription has a
provider, as an application beside regproxy does before its first call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from regproxy.demo.client import DubboClient, DubboError
from regproxy.demo.provider import DEFAULT_SIDECAR_API, ECHO_SERVICE, GREETINGS_SERVICE, until_stopped
from regproxy.demo.runner import run
from regproxy.sdk import AsyncRegproxyClient, RegproxyError
from regproxy.sdk import Provider as SdkProvider

# (interface, version, group): what a consumer subscribes to.
ServiceRef = tuple[str, str, str]


def parse_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError naming the input otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {target!r}: expected HOST:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"target {target!r}: write an IPv6 address in brackets, e.g. [::1]:20881")
    return host, int(port)


async def subscribe(
    api: str,
    services: Sequence[ServiceRef],
    *,
    min_providers: int = 1,
    timeout: float = 60.0,
    stop: asyncio.Event | None = None,
    poll: float = 0.25,
) -> dict[str, list[SdkProvider]] | None:
    """Subscribe to ``services`` through the sidecar API at ``api`` (with regproxy.sdk); cluster
    name -> providers.

    Then asks again (``/sub`` is idempotent and answers the current providers) until every
    subscription has ``min_providers``, or ``timeout`` seconds passed: the caller decides what too
    few providers means. Raises RegproxyError when the sidecar refuses or cannot be reached in
    ``timeout``; None when ``stop`` is set first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    clusters: dict[str, list[SdkProvider]] = {}
    async with AsyncRegproxyClient(api, start_timeout=timeout) as rp:
        for interface, version, group in services:
            while True:
                found = await until_stopped(rp.subscribe(interface, version=version, group=group), stop)
                if found is None:
                    return None
                clusters[found.cluster] = found.providers
                if len(found.providers) >= min_providers or loop.time() + poll >= deadline:
                    break
                await until_stopped(asyncio.sleep(poll), stop)
                if stop is not None and stop.is_set():
                    return None
    return clusters


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="regproxy-demo-consumer", description="Demo Dubbo consumer.")
    parser.add_argument("--target", default="127.0.0.1:20881", help="HOST:PORT to call (the egress)")
    parser.add_argument("--count", type=int, default=10, help="rounds of calls; 0 = until interrupted")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each response")
    parser.add_argument("--name", default="bob", help="the argument of sayHi")
    parser.add_argument(
        "--greetings-version",
        default="",
        help="GreetingsService version to call; a comma list calls each of them every round",
    )
    parser.add_argument("--echo-version", default="")
    parser.add_argument("--group", default="", help="Dubbo group sent with every call")
    parser.add_argument(
        "--subscribe",
        metavar="URL",
        help="first subscribe to the services called through the regproxy sidecar API at URL "
        f"(e.g. {DEFAULT_SIDECAR_API}) and wait for their providers",
    )
    parser.add_argument(
        "--subscribe-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="wait at most S seconds for the sidecar and the providers (default 120)",
    )
    args = parser.parse_args(argv)
    args.greetings_versions = [v.strip() for v in args.greetings_version.split(",")]
    try:
        args.host, args.port = parse_target(args.target)
    except ValueError as e:
        parser.error(str(e))
    if args.count < 0:
        parser.error("--count must be 0 or more")
    return args


async def _subscribe(args: argparse.Namespace, stop: asyncio.Event) -> bool:
    """Subscribe through the sidecar (--subscribe); False when that failed for good."""
    refs: list[ServiceRef] = [(GREETINGS_SERVICE, v, args.group) for v in args.greetings_versions]
    refs.append((ECHO_SERVICE, args.echo_version, args.group))
    try:
        clusters = await subscribe(args.subscribe, refs, timeout=args.subscribe_timeout, stop=stop)
    except RegproxyError as e:
        print(f"subscribing through {args.subscribe} failed: {e}", file=sys.stderr, flush=True)
        return False
    for cluster, providers in (clusters or {}).items():
        if providers:
            hosts = ", ".join(p.address for p in providers)
            print(f"subscribed to {cluster}: {hosts}", flush=True)
        else:
            print(f"subscribed to {cluster}: no provider yet", file=sys.stderr, flush=True)
    return True


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    if args.subscribe and not await _subscribe(args, stop):
        return 1
    several = len(args.greetings_versions) > 1
    client: DubboClient | None = None
    ok = failed = 0
    round_no = 0
    try:
        while not stop.is_set() and (args.count == 0 or round_no < args.count):
            round_no += 1
            calls: list[tuple[str, str, str, list[Any]]] = [
                (GREETINGS_SERVICE, version, "sayHi", [args.name]) for version in args.greetings_versions
            ]
            calls.append((ECHO_SERVICE, args.echo_version, "sum", [round_no, round_no + 1]))
            for service, version, method, call_args in calls:
                # With several versions the line says which one was called.
                label = f"{method}:{version}" if several and service == GREETINGS_SERVICE else method
                shown = f"{label}({', '.join(map(repr, call_args))})"
                try:
                    if client is None or client.is_closed:
                        client = await DubboClient.connect(args.host, args.port, timeout=args.timeout)
                    value = await client.call(
                        service, method, call_args, version=version, group=args.group, timeout=args.timeout
                    )
                except (DubboError, OSError) as e:
                    failed += 1
                    print(
                        f"[{round_no}] {shown} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True
                    )
                else:
                    ok += 1
                    print(f"[{round_no}] {shown} -> {value!r}", flush=True)
            if args.count == 0 or round_no < args.count:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.interval)
    finally:
        if client is not None:
            client.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.wait_closed(), 1)
    print(f"{ok} calls succeeded, {failed} failed", file=sys.stderr if failed else sys.stdout, flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run(_main(_parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
