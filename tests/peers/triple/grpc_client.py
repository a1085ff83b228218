"""A gRPC client on grpcio (Google's gRPC) calling the Greeter service (greeter.py) by its method paths
``/org.apache.dubbo.samples.Greeter/<method>``, no Dubbo at all: one scenario, one JSON line of results.

Runs in regproxy's venv (grpcio and protobuf are pinned in constraints.txt).

    python -m tests.peers.triple.grpc_client --target HOST:PORT SCENARIO [options] [--header K=V ...]

The scenarios and the JSON are ad_client.py's (``--target`` may be ``tri://HOST:PORT`` too), with what
grpcio has and apache-dubbo lacks:

* ``deadline --timeout-ms T``: a real gRPC deadline, sent as ``grpc-timeout`` (grpcio writes it as
  ``<T+1>m``) and enforced here too: the call ends ``DEADLINE_EXCEEDED`` whoever notices first.
* ``cancel --after K``: ``Call.cancel()``, i.e. RST_STREAM(CANCEL) on that stream.
* ``--header K=V`` (repeatable) sends metadata with every call, e.g. ``tri-service-version``,
  ``tri-service-group``, ``tri-consumer-appname``: the routing headers apache-dubbo never sends.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before grpc is imported: the suite runs gRPC without its fork handlers (tests/conftest.py says why).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

if __package__ in (None, ""):  # run by path: make `tests.peers.triple` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.peers.triple import greeter

Metadata = tuple[tuple[str, str], ...]


def error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return {"code": exc.code().name, "message": exc.details(), "type": type(exc).__name__}
    return {"code": None, "message": str(exc), "type": type(exc).__name__}


class Stub:
    """The Greeter's methods on one channel, each sending ``metadata``."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata) -> None:
        g = greeter
        self.metadata = metadata
        self.greet = channel.unary_unary(g.path(g.GREET), g.ser_str, g.de_str)
        self.greet_stream = channel.unary_stream(g.path(g.GREET_STREAM), g.ser_u32, g.de_str)
        self.greet_client_stream = channel.stream_unary(g.path(g.GREET_CLIENT_STREAM), g.ser_bytes, g.de_str)
        self.greet_bidi = channel.stream_stream(g.path(g.GREET_BIDI), g.ser_str, g.de_str)
        self.fail = channel.unary_unary(g.path(g.FAIL), g.ser_str, g.de_str)
        self.size = channel.unary_unary(g.path(g.SIZE), g.ser_bytes, g.de_u64)
        self.slow_stream = channel.unary_stream(g.path(g.SLOW_STREAM), g.ser_u32, g.de_str)


def unary(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    first_error = None
    for i in range(args.count):
        try:
            reply = stub.greet(f"call-{i}", timeout=args.wait_s, metadata=stub.metadata)
            counts[greeter.server_of(reply)] += 1
        except grpc.RpcError as exc:
            err = error_of(exc)
            errors[str(err["code"])] += 1
            first_error = first_error or err
    out: dict[str, Any] = {"counts": dict(counts), "errors": dict(errors), "ok": not errors}
    if first_error:
        out["error"] = first_error
    return out


def server_stream(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    replies = list(stub.greet_stream(args.n, timeout=args.wait_s, metadata=stub.metadata))
    return {"replies": replies, "ok": len(replies) == args.n}


def client_stream(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    chunks = (bytes([i % 256]) * args.size for i in range(args.n))
    got = json.loads(stub.greet_client_stream(chunks, timeout=args.wait_s, metadata=stub.metadata))
    return {"reply": got, "ok": got["count"] == args.n and got["bytes"] == args.n * args.size}


def bidi(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    outbox: queue.Queue[str | None] = queue.Queue()

    def requests() -> Iterator[str]:
        while (item := outbox.get()) is not None:
            yield item

    call = stub.greet_bidi(requests(), timeout=args.wait_s, metadata=stub.metadata)
    echoes = []
    for i in range(args.n):
        outbox.put(f"ping-{i}")
        echoes.append(next(call))  # the echo, read before the next ping is sent
    outbox.put(None)  # half-close
    rest = list(call)
    return {
        "echoes": echoes,
        "ended": True,
        "ok": echoes == [f"ping-{i}" for i in range(args.n)] and not rest,
    }


def big(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.mb * 1_000_000)
    got = stub.size(b"\x5a" * size, timeout=args.wait_s, metadata=stub.metadata)
    return {"sent": size, "reply": got, "ok": got == size}


def fail(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    try:
        reply = stub.fail(args.text, timeout=args.wait_s, metadata=stub.metadata)
    except grpc.RpcError as exc:
        err = error_of(exc)
        return {"error": err, "ok": args.text in (err["message"] or "")}
    return {"reply": reply, "ok": False}


def deadline(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    timeout = args.timeout_ms / 1000 if args.timeout_ms else args.wait_s
    arrivals: list[float] = []
    out: dict[str, Any] = {}
    try:
        for _msg in stub.slow_stream(args.n, timeout=timeout, metadata=stub.metadata):
            arrivals.append(greeter.ms_since(start))
        out["end"] = "completed"
    except grpc.RpcError as exc:
        out["end"] = "error"
        out["error"] = error_of(exc)
    out.update(received=len(arrivals), arrivals_ms=arrivals, end_ms=greeter.ms_since(start))
    out["ok"] = (
        out["end"] == "error" and out["error"]["code"] == "DEADLINE_EXCEEDED" and len(arrivals) < args.n
    )
    return out


def cancel(stub: Stub, args: argparse.Namespace) -> dict[str, Any]:
    call = stub.slow_stream(args.n, timeout=args.wait_s, metadata=stub.metadata)
    received = [next(call) for _ in range(args.after)]
    if args.how == "exit":
        greeter.emit({"scenario": "cancel", "how": "exit", "received": received, "ok": True})
        os._exit(0)
    call.cancel()
    try:
        late = list(call)
        return {"how": "rst", "received": received, "after_cancel": late, "ok": False}
    except grpc.RpcError as exc:
        # What grpcio reports locally for its own cancel: CANCELLED "Locally cancelled by application!"
        return {"how": "rst", "received": received, "after_cancel": None, "error": error_of(exc), "ok": True}


SCENARIOS: dict[str, Callable[[Stub, argparse.Namespace], dict[str, Any]]] = {
    "unary": unary,
    "server-stream": server_stream,
    "client-stream": client_stream,
    "bidi": bidi,
    "big": big,
    "fail": fail,
    "deadline": deadline,
    "cancel": cancel,
}


def _metadata(pairs: list[str]) -> Metadata:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--header: K=V expected, not {pair!r}")
        out.append((key.lower(), value))
    return tuple(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="host:port (or tri://host:port)")
    p.add_argument("--header", action="append", default=[], help="K=V metadata on every call")
    p.add_argument("--wait-s", type=float, default=10.0, help="deadline of every call but `deadline`'s")
    greeter.add_scenario_arguments(p, SCENARIOS)
    p.add_argument("--timeout-ms", type=int, help="deadline: the call's deadline")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    target = args.target.removeprefix("tri://")
    options = [
        ("grpc.max_receive_message_length", greeter.MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", greeter.MAX_MESSAGE_BYTES),
    ]
    start = time.monotonic()
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            out = SCENARIOS[args.scenario](Stub(channel, _metadata(args.header)), args)
        except Exception as exc:
            out = {"ok": False, "error": error_of(exc)}
    greeter.emit({"scenario": args.scenario, "elapsed_ms": greeter.ms_since(start), **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
