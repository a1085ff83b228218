"""The consumer application of tests/test_pods.py, run inside the consumer pod:

    ip netns exec <ns> python -m tests.pod_client --providers 2

It does what an application beside regproxy does: subscribes to GreetingsService through its
sidecar's API (127.0.0.1:22222) and waits for the providers, then calls sayHi through the egress
(127.0.0.1:20881) from ``--workers`` concurrent loops until SIGTERM.  One JSON line on stdout per
event, so the test can time every call against what it did to the network:

    {"event": "subscribed", "providers": ["10.214.7.3:20882", ...]}
    {"event": "call", "start": T0, "end": T1, "ok": true, "value": "pod-b says hi, w0-1"}
    {"event": "call", "start": T0, "end": T1, "ok": false, "error": "status 30 (CLIENT_TIMEOUT): ..."}

T0/T1 are ``time.monotonic()``: one clock for every process on the machine (a network namespace
does not change it), so the test compares them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from regproxy.demo.client import DubboClient, DubboError
from regproxy.demo.consumer import subscribe
from regproxy.demo.runner import run
from regproxy.sdk import RegproxyError

GREET = "org.apache.dubbo.samples.api.GreetingsService"
VERSION = "1.0.0"


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def worker(n: int, args: argparse.Namespace, stop: asyncio.Event) -> None:
    client: DubboClient | None = None
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            start = time.monotonic()
            try:
                if client is None or client.is_closed:
                    client = await DubboClient.connect(args.host, args.port, timeout=args.timeout)
                value = await client.call(
                    GREET, "sayHi", [f"w{n}-{seq}"], version=VERSION, timeout=args.timeout
                )
            except (DubboError, OSError) as e:
                emit(
                    event="call",
                    start=start,
                    end=time.monotonic(),
                    ok=False,
                    error=f"{type(e).__name__}: {e}",
                )
            else:
                emit(event="call", start=start, end=time.monotonic(), ok=True, value=value)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.pause)
    finally:
        if client is not None:
            client.close()


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        clusters = await subscribe(
            args.api,
            [(GREET, VERSION, "")],
            min_providers=args.providers,
            timeout=args.subscribe_timeout,
            stop=stop,
        )
    except RegproxyError as e:
        emit(event="error", error=f"subscribing through {args.api}: {e}")
        return 1
    if clusters is None:
        return 0
    emit(event="subscribed", providers=sorted(p.address for ps in clusters.values() for p in ps))
    await asyncio.gather(*(worker(n, args, stop) for n in range(args.workers)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pod_client", description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:22222", help="the sidecar API")
    parser.add_argument("--host", default="127.0.0.1", help="the egress host")
    parser.add_argument("--port", type=int, default=20881, help="the egress port")
    parser.add_argument("--providers", type=int, default=1, help="wait for this many providers")
    parser.add_argument("--subscribe-timeout", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4, help="concurrent call loops")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between a loop's calls")
    parser.add_argument("--timeout", type=float, default=3.0, help="each call's timeout (s)")
    return run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
