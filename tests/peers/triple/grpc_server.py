"""A gRPC server on grpcio (Google's gRPC) serving the Greeter service (greeter.py) with no Dubbo at all:
the second, independent Triple provider (Triple is gRPC-compatible on the wire).

Runs in regproxy's venv (grpcio and protobuf are pinned in constraints.txt).

    python -m tests.peers.triple.grpc_server --port P --name g1 [--log-headers]

Prints ``READY <port>``, then one JSON line per event on stdout: ``{"event": "headers", "method": ...,
"metadata": [[k, v], ...], "time_remaining_s": ...}`` per request with --log-headers (grpcio shows the
headers that are not pseudo-headers, and the deadline it derived from ``grpc-timeout``), and
``{"event": "stream_end", "method": "slowStream", "sent": k, "outcome": "completed" | "cancelled"}``
(cancelled: reset by the client, its deadline passed, or its connection went away).

Same methods and messages as ad_server.py, with two differences a test can rely on:

* ``fail(text)`` ends with ``FAILED_PRECONDITION`` and ``text`` as the message (percent-encoded on the
  wire by grpcio, as the gRPC spec asks), where apache-dubbo answers ``INTERNAL`` ``Invoke method
  failed: <text>``: a code other than INTERNAL shows that a proxy passes codes through.
* grpcio enforces the ``grpc-timeout`` it receives: when it passes, the call ends with
  ``DEADLINE_EXCEEDED`` from this side (apache-dubbo's server ignores the header).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Before grpc is imported: the suite runs gRPC without its fork handlers (tests/conftest.py says why).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

if __package__ in (None, ""):  # run by path: make `tests.peers.triple` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.peers.triple import greeter


def _remaining(context: grpc.ServicerContext) -> float | None:
    """The call's deadline, from its ``grpc-timeout``, in seconds; None without one (grpcio gives the
    time to its "infinite future" then)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else round(remaining, 3)


class Greeter:
    """The methods; ``name`` starts every greeting, so a test can tell which server answered."""

    def __init__(self, name: str, log_headers: bool) -> None:
        self.name = name
        self.log_headers = log_headers

    def _log(self, method: str, context: grpc.ServicerContext) -> None:
        if self.log_headers:
            greeter.emit(
                {
                    "event": "headers",
                    "method": method,
                    "metadata": [
                        [k, v if isinstance(v, str) else v.hex()] for k, v in context.invocation_metadata()
                    ],
                    "time_remaining_s": _remaining(context),
                }
            )

    def greet(self, who: str, context: grpc.ServicerContext) -> str:
        self._log(greeter.GREET, context)
        return f"{self.name}: hello {who}"

    def greet_stream(self, n: int, context: grpc.ServicerContext) -> Iterator[str]:
        self._log(greeter.GREET_STREAM, context)
        for i in range(n):
            yield f"{self.name}:{i}"

    def greet_client_stream(self, chunks: Iterator[bytes], context: grpc.ServicerContext) -> str:
        self._log(greeter.GREET_CLIENT_STREAM, context)
        count = total = 0
        for chunk in chunks:
            count += 1
            total += len(chunk)
        return json.dumps({"count": count, "bytes": total, "server": self.name})

    def greet_bidi(self, messages: Iterator[str], context: grpc.ServicerContext) -> Iterator[str]:
        self._log(greeter.GREET_BIDI, context)
        yield from messages  # each echoed as it arrives

    def fail(self, text: str, context: grpc.ServicerContext) -> str:
        self._log(greeter.FAIL, context)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, text)
        raise AssertionError("unreachable: abort raises")

    def slow(self, ms: int, context: grpc.ServicerContext) -> str:
        self._log(greeter.SLOW, context)
        time.sleep(ms / 1000)
        return f"{self.name}: slept {ms}"

    def size(self, data: bytes, context: grpc.ServicerContext) -> int:
        self._log(greeter.SIZE, context)
        return len(data)

    def slow_stream(self, n: int, context: grpc.ServicerContext) -> Iterator[str]:
        self._log(greeter.SLOW_STREAM, context)
        lock = threading.Lock()
        reported = False
        sent = 0

        def report(outcome: str) -> None:
            nonlocal reported
            with lock:
                if not reported:
                    reported = True
                    greeter.emit(
                        {
                            "event": "stream_end",
                            "method": greeter.SLOW_STREAM,
                            "sent": sent,
                            "outcome": outcome,
                        }
                    )

        # Runs when the call ends however it ends; after a normal end it finds the report made.
        context.add_callback(lambda: report("cancelled"))
        for i in range(n):
            if i:
                time.sleep(greeter.SLOW_STREAM_INTERVAL_S)
            if not context.is_active():
                report("cancelled")
                return
            sent += 1
            yield f"{self.name}:{i}"
        report("completed")


def handler(svc: Greeter) -> grpc.GenericRpcHandler:
    g = greeter
    return grpc.method_handlers_generic_handler(
        g.INTERFACE,
        {
            g.GREET: grpc.unary_unary_rpc_method_handler(svc.greet, g.de_str, g.ser_str),
            g.GREET_STREAM: grpc.unary_stream_rpc_method_handler(svc.greet_stream, g.de_u32, g.ser_str),
            g.GREET_CLIENT_STREAM: grpc.stream_unary_rpc_method_handler(
                svc.greet_client_stream, g.de_bytes, g.ser_str
            ),
            g.GREET_BIDI: grpc.stream_stream_rpc_method_handler(svc.greet_bidi, g.de_str, g.ser_str),
            g.FAIL: grpc.unary_unary_rpc_method_handler(svc.fail, g.de_str, g.ser_str),
            g.SLOW: grpc.unary_unary_rpc_method_handler(svc.slow, g.de_u32, g.ser_str),
            g.SIZE: grpc.unary_unary_rpc_method_handler(svc.size, g.de_bytes, g.ser_u64),
            g.SLOW_STREAM: grpc.unary_stream_rpc_method_handler(svc.slow_stream, g.de_u32, g.ser_str),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="grpc-server", help="starts every greeting: which server answered")
    parser.add_argument("--log-headers", action="store_true", help="print each request's metadata")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", greeter.MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", greeter.MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),  # a port already taken is an error, not a second listener
    ]
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=options)
    server.add_generic_rpc_handlers((handler(Greeter(args.name, args.log_headers)),))
    if server.add_insecure_port(f"{args.host}:{args.port}") != args.port:
        raise SystemExit(f"cannot listen on {args.host}:{args.port}")
    server.start()
    print(greeter.ready_line(args.port), flush=True)
    stop.wait()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
