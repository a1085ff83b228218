"""The demo's Triple applications, on Apache's Python SDK (PyPI ``apache-dubbo``, Triple only).

Runs in an interpreter that has apache-dubbo (``make demo`` builds ``.venv-peers/apache-dubbo``), by
path, never imported by regproxy: apache-dubbo installs a top-level ``dubbo`` package, as the
dubbo-python test peer in regproxy's own venv does. Standard library and ``dubbo`` only.

    python regproxy/demo/triple_app.py provider --port 50051 --name triple-provider
    python regproxy/demo/triple_app.py consumer --target tri://127.0.0.1:20881 --rate 10

The provider serves ``GREETER.greet`` (a string in, a string out, UTF-8: no protobuf needed) and
prints ``READY <port>``. The consumer calls it ``--rate`` times a second through the given address
(its sidecar's egress) and prints one JSON line a second: calls, errors, p50 and p99 in ms, who
answered, the first error. Both stop on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

GREETER = "org.apache.dubbo.samples.Greeter"
METHOD = "greet"


def _encode(text: str) -> bytes:
    return text.encode()


def _decode(data: bytes) -> str:
    return data.decode()


def provider(args: argparse.Namespace) -> int:
    import dubbo
    from dubbo.configs import LoggerConfig, ServiceConfig
    from dubbo.proxy.handlers import RpcMethodHandler, RpcServiceHandler

    def greet(who: str) -> str:
        return f"hi, {who}, from {args.name}"

    handler = RpcServiceHandler(
        service_name=GREETER, method_handlers=[RpcMethodHandler.unary(greet, METHOD, _decode, _encode)]
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    boot = dubbo.Dubbo(logger_config=LoggerConfig(level="WARNING"))
    server = boot.create_server(ServiceConfig(handler, host="127.0.0.1", port=args.port, protocol="tri"))
    server.start()  # returns once the port accepts connections
    print(f"READY {args.port}", flush=True)
    stop.wait()
    # At once: apache-dubbo has no way to stop a server, and the interpreter's shutdown would wait for
    # its threads.
    sys.stdout.flush()
    os._exit(0)


def consumer(args: argparse.Namespace) -> int:
    import dubbo
    from dubbo.configs import LoggerConfig, ReferenceConfig

    target = urlsplit(args.target)
    if target.scheme != "tri" or not target.hostname or not target.port:
        raise SystemExit(f"--target: tri://host:port expected, not {args.target!r}")
    boot = dubbo.Dubbo(logger_config=LoggerConfig(level="WARNING"))
    client = boot.create_client(
        ReferenceConfig(protocol="tri", service=GREETER, host=target.hostname, port=target.port)
    )
    call = client.unary(METHOD, _encode, _decode)  # one HTTP/2 connection, kept
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    interval = 1.0 / args.rate
    window: dict[str, Any] = {"latencies": [], "errors": 0, "by": Counter(), "error": None}
    tick = time.monotonic() + 1.0
    next_at = time.monotonic()
    while not stop.is_set():
        start = time.monotonic()
        try:
            answer = call("demo")
            window["latencies"].append((time.monotonic() - start) * 1000)
            window["by"][answer.rsplit("from ", 1)[-1]] += 1
        except Exception as exc:  # the SDK's own errors: counted and named, the loop goes on
            window["errors"] += 1
            window["error"] = window["error"] or f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now >= tick:
            _report(window)
            window = {"latencies": [], "errors": 0, "by": Counter(), "error": None}
            tick += 1.0
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    sys.stdout.flush()
    os._exit(0)  # as the provider: the SDK's threads would hold the interpreter's shutdown


def _report(window: dict[str, Any]) -> None:
    latencies = sorted(window["latencies"])

    def pick(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else 0.0

    line = {
        "calls": len(latencies) + window["errors"],
        "errors": window["errors"],
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "by": dict(window["by"]),
        "error": window["error"],
    }
    print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triple_app.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("provider")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="triple-provider")
    c = sub.add_parser("consumer")
    c.add_argument("--target", required=True, help="tri://host:port: the consumer sidecar's egress")
    c.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args(argv)
    return provider(args) if args.role == "provider" else consumer(args)


if __name__ == "__main__":
    sys.exit(main())
