"""``python -m tests.peers.nacos --port 8848``: the Nacos double as a process (gRPC on port + 1000).

Prints one line ``nacos double ready http=HOST:PORT grpc=HOST:GRPC_PORT`` on stdout once both ports
accept connections (``--port 0`` picks a free pair, so a script can read the port from that line),
then runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from tests.peers.nacos.server import NacosDouble


def _user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"want NAME:PASSWORD, got {value!r}")
    return name, password


async def _serve(args: argparse.Namespace) -> None:
    double = NacosDouble(
        args.port, host=args.host, users=dict(args.user) if args.user else None, push_delay=args.push_delay
    )
    await double.start()
    host = double.host
    print(f"nacos double ready http={host}:{double.port} grpc={host}:{double.grpc_port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await double.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.peers.nacos", description="A Nacos 2.x naming and config double for tests."
    )
    parser.add_argument("--port", type=int, default=8848, help="Nacos server port; gRPC is on port + 1000")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--user", action="append", default=[], type=_user, metavar="NAME:PASSWORD", help="require login"
    )
    parser.add_argument("--push-delay", type=float, default=0.0, help="seconds to gather changes per push")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and requests")
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
