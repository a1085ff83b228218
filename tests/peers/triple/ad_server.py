"""A Triple provider on apache-dubbo (PyPI ``apache-dubbo`` 3.0.0b1, unchanged): the Greeter service
(greeter.py) on one port, optionally registered in ZooKeeper the way the SDK registers itself.

Runs in the apache-dubbo venv (venv.py), never in regproxy's: both install a top-level ``dubbo``.

    python -m tests.peers.triple.ad_server --port 20880 --name p1 \\
        [--host 127.0.0.1] [--registry zookeeper://127.0.0.1:2181] [--log-headers]

Prints ``READY <port>`` once it accepts connections, then one JSON line per event on stdout:
``{"event": "headers", ...}`` for every request with --log-headers, and
``{"event": "stream_end", "method": "slowStream", "sent": k, "outcome": "completed" | "cancelled"}``
when slowStream stops (cancelled: the client reset the stream, or the connection went away, before all
were sent; ``_call_gone``).  SIGTERM or SIGINT exits at once.

What apache-dubbo does, read from its source (``dubbo/protocol/triple/``):

* An answer is ``:status 200``, ``content-type: application/grpc+data``, the messages, then trailers
  ``content-type: application/grpc+data`` (again) and ``grpc-status: 0``.
* An exception in a method is a trailers-only answer: ``grpc-status: 13`` (INTERNAL), ``grpc-message:
  Invoke method failed: <str(exception)>`` in raw UTF-8, not percent-encoded, and an extra header
  ``tri_rpc_status`` holding the status's repr (``DefaultMethodRunner.handle_exception`` passes it as the
  keyword ``tri_rpc_status``, ``TriServerWriteStream.done_writing`` pops ``tri-rpc-status``, and the
  leftover keyword goes out as an attachment).
* It serves only the connection accepted last: one ``StreamServerMultiplexHandler`` per exported
  service is shared by all connections and re-initialised by each new one (``do_init``), so calls on
  an older connection hang (tests/test_triple_peers.py shows it).  One client at a time, then.
* It ignores empty request messages (``TripleServerCall.on_message``): apache-dubbo's client ends every
  request stream with one (ad_client.py), which a grpcio server receives as a message.
* An unknown service or method is trailers-only ``grpc-status: 12`` (UNIMPLEMENTED) ``Service <name> is
  not found`` (``ServerTransportListener.on_headers``).
* It reads no ``grpc-timeout``: a deadline is enforced by the caller (or a proxy), never by this server.
* A method never sees the request headers; --log-headers wraps ``ServerTransportListener.on_headers``
  to print them first (it then calls the original: behaviour unchanged).
* With a registry, ``RegistryProtocol.export`` writes ``/dubbo/<service>/providers/<url>``, ephemeral,
  where ``<url>`` is ``ServiceConfig.to_url()`` percent-encoded: ``tri://<host>:<port>?service=<service>``,
  no path and no other parameter; it also serves ``org.apache.dubbo.MetricsService/cpu`` then.  It never
  unregisters: the node goes with the ZooKeeper session (a process that exits leaves it until the session
  times out), as apache-dubbo has no shutdown hook.
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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run by path: make `tests.peers.triple` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import dubbo
from dubbo.configs import ApplicationConfig, LoggerConfig, RegistryConfig, ServiceConfig
from dubbo.proxy.handlers import RpcMethodHandler, RpcServiceHandler

from tests.peers.triple import greeter


def service_handler(name: str) -> RpcServiceHandler:
    """The Greeter methods of a server named ``name`` (the name starts every greeting)."""

    def greet(who: str) -> str:
        return f"{name}: hello {who}"

    def greet_stream(stream: Any) -> Iterator[str]:
        n = stream.read()
        for i in range(n):
            yield f"{name}:{i}"

    def greet_client_stream(stream: Any) -> str:
        count = total = 0
        for chunk in stream:
            count += 1
            total += len(chunk)
        return json.dumps({"count": count, "bytes": total, "server": name})

    def greet_bidi(stream: Any) -> Iterator[str]:
        # A generator: apache-dubbo writes each value as it is yielded, so every message is echoed
        # as it arrives, not after the client half-closes.
        yield from stream

    def fail(text: str) -> str:
        raise RuntimeError(text)

    def slow(ms: int) -> str:
        time.sleep(ms / 1000)
        return f"{name}: slept {ms}"

    def size(data: bytes) -> int:
        return len(data)

    def slow_stream(stream: Any) -> None:
        # Writes itself rather than yielding, to stop once the call is gone (_call_gone): apache-dubbo
        # would otherwise go on writing into a reset stream, and a test could not see the cancel arrive.
        n = stream.read()
        sent = 0
        outcome = "completed"
        for i in range(n):
            if i:
                time.sleep(greeter.SLOW_STREAM_INTERVAL_S)
            if _call_gone(stream):
                outcome = "cancelled"
                break
            stream.write(f"{name}:{i}")
            sent += 1
        else:
            stream.done_writing()
        greeter.emit({"event": "stream_end", "method": greeter.SLOW_STREAM, "sent": sent, "outcome": outcome})

    return RpcServiceHandler(
        service_name=greeter.INTERFACE,
        method_handlers=[
            RpcMethodHandler.unary(greet, greeter.GREET, greeter.de_str, greeter.ser_str),
            RpcMethodHandler.server_stream(
                greet_stream, greeter.GREET_STREAM, greeter.de_u32, greeter.ser_str
            ),
            RpcMethodHandler.client_stream(
                greet_client_stream, greeter.GREET_CLIENT_STREAM, greeter.de_bytes, greeter.ser_str
            ),
            RpcMethodHandler.bi_stream(greet_bidi, greeter.GREET_BIDI, greeter.de_str, greeter.ser_str),
            RpcMethodHandler.unary(fail, greeter.FAIL, greeter.de_str, greeter.ser_str),
            RpcMethodHandler.unary(slow, greeter.SLOW, greeter.de_u32, greeter.ser_str),
            RpcMethodHandler.unary(size, greeter.SIZE, greeter.de_bytes, greeter.ser_u64),
            RpcMethodHandler.server_stream(slow_stream, greeter.SLOW_STREAM, greeter.de_u32, greeter.ser_str),
        ],
    )


def _call_gone(stream: Any) -> bool:
    """Whether the client reset the call's HTTP/2 stream (RST_STREAM: a cancel, a deadline) or its
    connection went away.

    apache-dubbo does not tell a method: a server-streaming call's inbound side stops reading at the
    request's END_STREAM (``FrameInboundController._run``), so a later RST_STREAM reaches no listener.
    Only the h2 state machine knows; this peeks at it through the SDK's private attributes, read-only
    (``TriReadWriteStream`` -> ``TripleServerCall`` -> ``TripleServerStream`` -> ``DefaultHttp2Stream``
    -> ``Http2ServerProtocol``)."""
    try:
        h2_stream = stream._write_stream._call._server_stream._stream
        protocol = h2_stream._protocol
        if protocol._transport is None or protocol._transport.is_closing():
            return True
        state = protocol._h2_connection.streams.get(h2_stream.id)  # h2 drops closed streams from it
        return state is None or state.closed
    except AttributeError:  # another apache-dubbo: say nothing rather than guess
        return False


def log_request_headers() -> None:
    """Print every request's headers (pseudo-headers first, in arrival order) before apache-dubbo
    handles them."""
    from dubbo.protocol.triple.stream.server_stream import ServerTransportListener

    original = ServerTransportListener.on_headers

    def on_headers(self: Any, headers: Any, end_stream: bool) -> None:
        greeter.emit({"event": "headers", "headers": [[k, str(v)] for k, v in headers.to_list()]})
        original(self, headers, end_stream)

    ServerTransportListener.on_headers = on_headers  # type: ignore[method-assign]


def registry_config(url: str) -> RegistryConfig:
    parts = urlsplit(url)
    if parts.scheme != "zookeeper" or not parts.hostname or not parts.port:
        raise SystemExit(f"--registry: zookeeper://host:port expected, not {url!r}")
    return RegistryConfig(protocol="zookeeper", host=parts.hostname, port=parts.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="listen and registered address")
    parser.add_argument("--name", default="ad-server", help="starts every greeting: which server answered")
    parser.add_argument("--registry", help="zookeeper://host:port: register as the SDK does")
    parser.add_argument("--app", default="greeter-provider", help="application name")
    parser.add_argument("--log-headers", action="store_true", help="print each request's headers")
    args = parser.parse_args(argv)

    if args.log_headers:
        log_request_headers()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    # apache-dubbo logs INFO to the console by default; warnings and errors are what a test wants.
    boot = dubbo.Dubbo(
        application_config=ApplicationConfig(args.app),
        registry_config=registry_config(args.registry) if args.registry else None,
        logger_config=LoggerConfig(level="WARNING"),
    )
    service = ServiceConfig(service_handler(args.name), host=args.host, port=args.port, protocol="tri")
    server = boot.create_server(service)
    server.start()  # returns once the port accepts connections (AioServer.export waits for it)
    print(greeter.ready_line(args.port), flush=True)
    stop.wait()
    # At once: apache-dubbo has no way to stop a server, and interpreter shutdown would wait for its
    # method threads, one of which may be blocked for ever reading a call whose client vanished.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
