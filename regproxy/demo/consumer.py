"""A demo Dubbo consumer: calls GreetingsService.sayHi and EchoService.sum through the local egress.

It prints every result and every error, reconnects when the connection is lost, and exits non-zero
if any call failed — so a compose file or a smoke test can use its exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from regproxy.demo.client import DubboClient, DubboError
from regproxy.demo.provider import ECHO_SERVICE, GREETINGS_SERVICE
from regproxy.demo.runner import run


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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="regproxy-demo-consumer", description="Demo Dubbo consumer.")
    parser.add_argument("--target", default="127.0.0.1:20881", help="HOST:PORT to call (the egress)")
    parser.add_argument("--count", type=int, default=10, help="rounds of calls; 0 = until interrupted")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each response")
    parser.add_argument("--name", default="bob", help="the argument of sayHi")
    parser.add_argument("--greetings-version", default="")
    parser.add_argument("--echo-version", default="")
    parser.add_argument("--group", default="", help="Dubbo group sent with every call")
    args = parser.parse_args(argv)
    try:
        args.host, args.port = parse_target(args.target)
    except ValueError as e:
        parser.error(str(e))
    if args.count < 0:
        parser.error("--count must be 0 or more")
    return args


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    client: DubboClient | None = None
    ok = failed = 0
    round_no = 0
    try:
        while not stop.is_set() and (args.count == 0 or round_no < args.count):
            round_no += 1
            calls: list[tuple[str, str, str, list[Any]]] = [
                (GREETINGS_SERVICE, args.greetings_version, "sayHi", [args.name]),
                (ECHO_SERVICE, args.echo_version, "sum", [round_no, round_no + 1]),
            ]
            for service, version, method, call_args in calls:
                shown = f"{method}({', '.join(map(repr, call_args))})"
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
