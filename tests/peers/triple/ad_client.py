"""A Triple consumer on apache-dubbo (PyPI ``apache-dubbo`` 3.0.0b1, unchanged): calls the Greeter
service (greeter.py) and runs one scenario, printing one JSON line of results.

Runs in the apache-dubbo venv (venv.py), never in regproxy's: both install a top-level ``dubbo``.

    python -m tests.peers.triple.ad_client (--target tri://HOST:PORT | --registry zookeeper://HOST:PORT)
        SCENARIO [options]

Scenarios (greeter.py has the methods):

    unary --count N            N greet calls; "counts": replies per server name, "errors": per status
    server-stream --n N        greetStream(N): the replies
    client-stream --n N --size B   N messages of B bytes; the server's count and total
    bidi --n N                 greetBidi, one message at a time, each echo read before the next is sent
    big --mb M                 size() of an M MB message (10**6 bytes: apache-dubbo refuses to encode
                               one over 4 MiB, ``TriEncoder``'s fixed ``DEFAULT_MAX_MESSAGE_SIZE``)
    fail --text T              fail(T): the status and message that come back
    deadline --n N [--grpc-timeout-ms T] [--wait-s S]
                               slowStream(N): each message's arrival (ms) and how the call ends
    cancel --after K [--how rst|exit]
                               slowStream, cancelled after K messages (see below)

The JSON line always has "scenario", "ok" (the scenario's own check held) and "elapsed_ms"; a failed call
adds "error": {"code": <gRPC status name or null>, "message": ..., "type": <exception class>}.  Nothing is
printed as a bare traceback: a failure to connect or to find a provider is an "error" too.

apache-dubbo facts this client lives with (read from ``dubbo/protocol/triple/``, ``dubbo/client.py``):

* A call's headers (``RequestMetadata.to_headers``): ``:method POST``, ``:scheme http``, ``:authority
  host:port``, ``:path /<service>/<method>``, ``content-type: application/grpc+data``, ``te: trailers``.
  ``RequestMetadata`` has fields for ``tri-service-version``, ``tri-service-group``,
  ``tri-consumer-appname`` and ``grpc-timeout`` but ``TripleInvoker._create_metadata`` sets none of them,
  and ``ReferenceConfig`` has no version, group or timeout: apache-dubbo sends no deadline and waits
  for ever.  ``deadline --grpc-timeout-ms T`` sets that unused field (``RequestMetadata.timeout``) to
  ``<T>m`` so the header goes out as the SDK would send it; without it the deadline must come from
  elsewhere (a sidecar's timeout), and ``--wait-s`` bounds the wait here.
* A failed call raises ``StatusRpcError`` whose ``status`` holds the gRPC code and the ``grpc-message``.
* The SDK has no public way to cancel a call.  ``cancel --how rst`` calls ``TripleClientCall
  .cancel_by_local``, what apache-dubbo itself does when a message cannot be serialized: RST_STREAM with
  CANCEL (0x8) on that stream, the connection stays.  It needs the call object, which only a
  bidi-stream callable hands back, and it sends nothing once the client has half-closed
  (``DefaultHttp2Stream.cancel_by_local`` returns when the stream is closed locally), so slowStream is
  called through ``Client.bi_stream`` and its request written without END_STREAM: on the wire HEADERS,
  one DATA, later RST_STREAM(CANCEL).  ``--how exit`` prints the result and ends the process at once:
  the connection closes under the stream, as when a consumer dies.
* Every request stream ends with an *empty* message: ``done_writing`` is ``send_message(None,
  last=True)``, which frames ``b""`` (``00 00000000``) in the DATA frame carrying END_STREAM, for unary
  calls too.  apache-dubbo's server drops empty messages; a grpcio server does not: its client-stream
  method counts one message more, its bidi method echoes one empty message more.  The client-stream and
  bidi scenarios report that (``"extra_empty_message"``) and accept it.
* With ``--registry`` the SDK subscribes to ``/dubbo/<service>/providers`` and picks a provider at random
  per call (``FailfastCluster``, ``RandomLoadBalance``); ``--providers K`` first waits (kazoo, directly)
  until K providers are registered, as the SDK reads whatever is there when it subscribes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run by path: make `tests.peers.triple` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import dubbo
from dubbo.classes import EOF
from dubbo.configs import ApplicationConfig, LoggerConfig, ReferenceConfig, RegistryConfig

from tests.peers.triple import greeter


def error_of(exc: BaseException) -> dict[str, Any]:
    """A failed call as JSON: the gRPC status name when the SDK gives one (``StatusRpcError.status``)."""
    status = getattr(exc, "status", None)
    if status is not None and hasattr(status, "code"):
        return {"code": status.code.name, "message": status.description, "type": type(exc).__name__}
    return {"code": None, "message": str(exc), "type": type(exc).__name__}


def _wait_for_providers(registry: str, count: int, timeout: float = 15.0) -> None:
    from kazoo.client import KazooClient

    parts = urlsplit(registry)
    zk = KazooClient(hosts=f"{parts.hostname}:{parts.port}")
    zk.start(timeout=timeout)
    try:
        deadline = time.monotonic() + timeout
        path = f"/dubbo/{greeter.INTERFACE}/providers"
        while len(zk.get_children(path) if zk.exists(path) else []) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} providers under {path} after {timeout} s")
            time.sleep(0.05)
    finally:
        zk.stop()
        zk.close()


def make_client(args: argparse.Namespace) -> Any:
    registry = None
    if args.registry:
        parts = urlsplit(args.registry)
        if parts.scheme != "zookeeper" or not parts.hostname or not parts.port:
            raise SystemExit(f"--registry: zookeeper://host:port expected, not {args.registry!r}")
        if args.providers:
            _wait_for_providers(args.registry, args.providers)
        registry = RegistryConfig(protocol="zookeeper", host=parts.hostname, port=parts.port)
        reference = ReferenceConfig(protocol="tri", service=greeter.INTERFACE)
    else:
        parts = urlsplit(args.target)
        if parts.scheme != "tri" or not parts.hostname or not parts.port:
            raise SystemExit(f"--target: tri://host:port expected, not {args.target!r}")
        reference = ReferenceConfig(
            protocol="tri", service=greeter.INTERFACE, host=parts.hostname, port=parts.port
        )
    boot = dubbo.Dubbo(
        application_config=ApplicationConfig(args.app),
        registry_config=registry,
        logger_config=LoggerConfig(level="WARNING"),  # the SDK logs every connection at INFO otherwise
    )
    return boot.create_client(reference)


class _StatusRecorder:
    """Keeps the status a streaming call ended with.  apache-dubbo's stream listener puts EOF and then
    *raises* the error in its event thread (``TriReadStream.put_exception``), so a reader sees a clean
    EOF either way; wrapping ``on_close`` is the only way to tell a failed stream from a finished one."""

    def __init__(self) -> None:
        from dubbo.protocol.triple.call.client_call import ReadStreamToClientCallListenerAdapter

        self.statuses: list[Any] = []
        original = ReadStreamToClientCallListenerAdapter.on_close
        recorder = self

        def on_close(adapter: Any, status: Any, trailers: Any) -> None:
            recorder.statuses.append(status)
            original(adapter, status, trailers)

        ReadStreamToClientCallListenerAdapter.on_close = on_close  # type: ignore[method-assign]

    def last_error(self) -> dict[str, Any] | None:
        if not self.statuses or self.statuses[-1].code.name == "OK":
            return None
        status = self.statuses[-1]
        return {"code": status.code.name, "message": status.description, "type": "StatusRpcError"}


def unary(client: Any, args: argparse.Namespace, _rec: _StatusRecorder) -> dict[str, Any]:
    call = client.unary(greeter.GREET, greeter.ser_str, greeter.de_str)
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    first_error = None
    for i in range(args.count):
        try:
            counts[greeter.server_of(call(f"call-{i}"))] += 1
        except Exception as exc:
            err = error_of(exc)
            errors[str(err["code"])] += 1
            first_error = first_error or err
    out: dict[str, Any] = {"counts": dict(counts), "errors": dict(errors), "ok": not errors}
    if first_error:
        out["error"] = first_error
    return out


def server_stream(client: Any, args: argparse.Namespace, rec: _StatusRecorder) -> dict[str, Any]:
    stream = client.server_stream(greeter.GREET_STREAM, greeter.ser_u32, greeter.de_str)(args.n)
    replies = []
    while (msg := stream.read(timeout=args.wait_s)) not in (EOF, None):
        replies.append(msg)
    out: dict[str, Any] = {"replies": replies, "ok": len(replies) == args.n and rec.last_error() is None}
    if err := rec.last_error():
        out["error"] = err
    return out


def client_stream(client: Any, args: argparse.Namespace, rec: _StatusRecorder) -> dict[str, Any]:
    chunks = (bytes([i % 256]) * args.size for i in range(args.n))
    stream = client.client_stream(greeter.GREET_CLIENT_STREAM, greeter.ser_bytes, greeter.de_str)(chunks)
    reply = stream.read(timeout=args.wait_s)
    if reply in (EOF, None):
        return {"ok": False, "error": rec.last_error() or {"code": None, "message": "no reply", "type": None}}
    got = json.loads(reply)
    # n, or n + 1 where the server counts the empty message apache-dubbo ends with (module docstring)
    extra = got["count"] == args.n + 1
    ok = got["count"] in (args.n, args.n + 1) and got["bytes"] == args.n * args.size
    return {"reply": got, "extra_empty_message": extra, "ok": ok}


def bidi(client: Any, args: argparse.Namespace, rec: _StatusRecorder) -> dict[str, Any]:
    stream = client.bi_stream(greeter.GREET_BIDI, greeter.ser_str, greeter.de_str)()
    echoes: list[str] = []
    for i in range(args.n):
        stream.write(f"ping-{i}")
        # Read before writing the next: an echo that only comes after the half-close shows up as None.
        echo = stream.read(timeout=args.wait_s)
        if echo in (EOF, None):
            err = rec.last_error() or {"code": None, "message": f"no echo of ping-{i}", "type": None}
            return {"echoes": echoes, "ok": False, "error": err}
        echoes.append(echo)
    stream.done_writing()
    end = stream.read(timeout=args.wait_s)
    extra = end == ""  # the echo of the empty message apache-dubbo ends with (module docstring)
    if extra:
        end = stream.read(timeout=args.wait_s)
    out: dict[str, Any] = {"echoes": echoes, "ended": end is EOF, "extra_empty_message": extra}
    out["ok"] = echoes == [f"ping-{i}" for i in range(args.n)] and end is EOF and rec.last_error() is None
    if err := rec.last_error():
        out["error"] = err
    return out


def big(client: Any, args: argparse.Namespace, _rec: _StatusRecorder) -> dict[str, Any]:
    size = int(args.mb * 1_000_000)
    got = client.unary(greeter.SIZE, greeter.ser_bytes, greeter.de_u64)(b"\x5a" * size)
    return {"sent": size, "reply": got, "ok": got == size}


def fail(client: Any, args: argparse.Namespace, _rec: _StatusRecorder) -> dict[str, Any]:
    try:
        reply = client.unary(greeter.FAIL, greeter.ser_str, greeter.de_str)(args.text)
    except Exception as exc:
        err = error_of(exc)
        return {"error": err, "ok": err["code"] not in (None, "OK") and args.text in (err["message"] or "")}
    return {"reply": reply, "ok": False}


def _set_grpc_timeout(ms: int) -> None:
    """Make every call carry ``grpc-timeout: <ms>m`` through the SDK's own, otherwise unused,
    ``RequestMetadata.timeout`` field (module docstring)."""
    from dubbo.protocol.triple.invoker import TripleInvoker

    original = TripleInvoker._create_metadata

    def create_metadata(self: Any, invocation: Any) -> Any:
        metadata = original(self, invocation)
        metadata.timeout = f"{ms}m"
        return metadata

    TripleInvoker._create_metadata = create_metadata  # type: ignore[method-assign]


def deadline(client: Any, args: argparse.Namespace, rec: _StatusRecorder) -> dict[str, Any]:
    start = time.monotonic()
    stream = client.server_stream(greeter.SLOW_STREAM, greeter.ser_u32, greeter.de_str)(args.n)
    arrivals: list[float] = []
    end = "completed"
    give_up = start + args.wait_s
    while True:
        msg = stream.read(timeout=max(0.0, give_up - time.monotonic()))
        if msg is None:
            end = "gave up waiting"
            break
        if msg is EOF:
            break
        arrivals.append(greeter.ms_since(start))
    out: dict[str, Any] = {
        "received": len(arrivals), "arrivals_ms": arrivals, "end_ms": greeter.ms_since(start)
    }  # fmt: skip
    if err := rec.last_error():
        out["error"] = err
        end = "error"
    out["end"] = end
    # What the scenario is for: the stream stopped early with DEADLINE_EXCEEDED.
    out["ok"] = end == "error" and out["error"]["code"] == "DEADLINE_EXCEEDED" and len(arrivals) < args.n
    return out


def cancel(client: Any, args: argparse.Namespace, rec: _StatusRecorder) -> dict[str, Any]:
    # Through bi_stream, and without half-closing: the only way to an RST_STREAM (module docstring).
    stream = client.bi_stream(greeter.SLOW_STREAM, greeter.ser_u32, greeter.de_str)()
    stream.write(args.n)
    received = []
    while len(received) < args.after:
        msg = stream.read(timeout=args.wait_s)
        if msg in (EOF, None):
            err = rec.last_error() or {
                "code": None,
                "message": "stream ended before the cancel",
                "type": None,
            }
            return {"received": received, "ok": False, "error": err}
        received.append(msg)
    if args.how == "exit":
        # Report first, then die with the stream open: the kernel closes the connection.
        greeter.emit({"scenario": "cancel", "how": "exit", "received": received, "ok": True})
        os._exit(0)
    call = stream._write_stream._call  # TripleClientCall: see the module docstring
    call.cancel_by_local(RuntimeError("cancelled by the test client"))
    # Nothing more should arrive: the call is done and apache-dubbo drops (and logs) what comes after.
    late = stream.read(timeout=0.3)
    return {
        "how": "rst",
        "received": received,
        "after_cancel": None if late is None else ("EOF" if late is EOF else late),
        "ok": late is None,
    }


SCENARIOS: dict[str, Callable[[Any, argparse.Namespace, _StatusRecorder], dict[str, Any]]] = {
    "unary": unary,
    "server-stream": server_stream,
    "client-stream": client_stream,
    "bidi": bidi,
    "big": big,
    "fail": fail,
    "deadline": deadline,
    "cancel": cancel,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="tri://host:port of one provider (or of a sidecar's egress)")
    where.add_argument("--registry", help="zookeeper://host:port: find the providers there, as the SDK does")
    p.add_argument("--providers", type=int, default=1, help="with --registry: wait for this many first")
    p.add_argument("--app", default="greeter-consumer", help="application name")
    p.add_argument("--wait-s", type=float, default=10.0, help="the longest wait for one message")
    greeter.add_scenario_arguments(p, SCENARIOS)
    p.add_argument("--grpc-timeout-ms", type=int, help="deadline: send grpc-timeout (module docstring)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scenario == "deadline" and args.grpc_timeout_ms:
        _set_grpc_timeout(args.grpc_timeout_ms)
    recorder = _StatusRecorder()
    start = time.monotonic()
    try:
        client = make_client(args)
        out = SCENARIOS[args.scenario](client, args, recorder)
    except Exception as exc:
        out = {"ok": False, "error": error_of(exc)}
    greeter.emit({"scenario": args.scenario, "elapsed_ms": greeter.ms_since(start), **out})
    # The SDK has no way to close a client; its threads would keep the process up otherwise.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
