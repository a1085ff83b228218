"""The Greeter service every Triple peer here serves or calls: its name, its methods and their messages.

Shared by the apache-dubbo peers (ad_server.py, ad_client.py: run in the apache-dubbo venv, see venv.py)
and the grpcio peers (grpc_server.py, grpc_client.py: run in the main venv), so it imports nothing but
the standard library and protobuf, which both venvs have at the same pinned version.

Messages are protobuf well-known types (``google.protobuf.wrappers_pb2``), so no code is generated and a
gRPC client needs nothing but the method path ``/org.apache.dubbo.samples.Greeter/<method>``, which is
what Triple puts in ``:path`` too (``/{service}/{method}``: apache-dubbo's ``RequestMetadata.to_headers``,
Dubbo 3.3's ``TripleHeaderEnum.PATH_KEY``).

=====================  ==============  ========================  =====================================
method                 kind            request                   replies
=====================  ==============  ========================  =====================================
greet                  unary           StringValue(who)          StringValue("<server>: hello <who>")
greetStream            server stream   UInt32Value(n)            n × StringValue("<server>:<i>")
greetClientStream      client stream   BytesValue × k            StringValue(JSON count, bytes, server)
greetBidi              bidi            StringValue × k           each StringValue echoed on arrival
fail                   unary           StringValue(text)         an error carrying ``text``
slow                   unary           UInt32Value(ms)           StringValue("<server>: slept <ms>"),
                                                                 after ``ms`` milliseconds
size                   unary           BytesValue(data)          UInt64Value(len(data))
slowStream             server stream   UInt32Value(n)            n × StringValue("<server>:<i>"), one
                                                                 every SLOW_STREAM_INTERVAL_S
=====================  ==============  ========================  =====================================
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from google.protobuf import wrappers_pb2

INTERFACE = "org.apache.dubbo.samples.Greeter"

GREET = "greet"
GREET_STREAM = "greetStream"
GREET_CLIENT_STREAM = "greetClientStream"
GREET_BIDI = "greetBidi"
FAIL = "fail"
SLOW = "slow"
SIZE = "size"
SLOW_STREAM = "slowStream"

# One message of slowStream every 100 ms: a deadline or a cancel lands between two of them.
SLOW_STREAM_INTERVAL_S = 0.1
# What the peers accept in one message (grpcio's default is 4 MiB received, and a "4 MB" test message
# plus its protobuf framing is just over that).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def path(method: str) -> str:
    """The HTTP/2 ``:path`` of a Greeter method, as a gRPC client names it."""
    return f"/{INTERFACE}/{method}"


# Serializers and deserializers, one per message type: the shapes apache-dubbo's handlers and
# grpcio's method handlers both take (a value in, bytes out; bytes in, a value out).


def ser_str(value: str) -> bytes:
    return wrappers_pb2.StringValue(value=value).SerializeToString()


def de_str(data: bytes) -> str:
    return wrappers_pb2.StringValue.FromString(data).value


def ser_bytes(value: bytes) -> bytes:
    return wrappers_pb2.BytesValue(value=value).SerializeToString()


def de_bytes(data: bytes) -> bytes:
    return wrappers_pb2.BytesValue.FromString(data).value


def ser_u32(value: int) -> bytes:
    return wrappers_pb2.UInt32Value(value=value).SerializeToString()


def de_u32(data: bytes) -> int:
    return wrappers_pb2.UInt32Value.FromString(data).value


def ser_u64(value: int) -> bytes:
    return wrappers_pb2.UInt64Value(value=value).SerializeToString()


def de_u64(data: bytes) -> int:
    return wrappers_pb2.UInt64Value.FromString(data).value


def server_of(reply: str) -> str:
    """The server name a greet, greetStream or slowStream reply starts with."""
    return reply.split(":", 1)[0]


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed at once: how the peers report to tests/peers/triple/procs.py."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def ready_line(port: int) -> str:
    """What a server prints once it accepts connections (procs.py waits for it)."""
    return f"READY {port}"


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (time.monotonic()), as the clients report durations."""
    return round((time.monotonic() - start) * 1000, 1)


def add_scenario_arguments(p: argparse.ArgumentParser, scenarios: Iterable[str]) -> None:
    """The scenario and its knobs, the same for both clients (ad_client.py, grpc_client.py)."""
    p.add_argument("scenario", choices=sorted(scenarios))
    p.add_argument("--count", type=int, default=10, help="unary: calls")
    p.add_argument("--n", type=int, default=5, help="messages in a stream")
    p.add_argument("--size", type=int, default=1000, help="client-stream: bytes per message")
    p.add_argument("--mb", type=float, default=4, help="big: MB (10**6 bytes) in the message")
    p.add_argument("--text", default="boom", help="fail: the error text asked for")
    p.add_argument("--after", type=int, default=3, help="cancel: messages read before cancelling")
    p.add_argument("--how", choices=("rst", "exit"), default="rst", help="cancel: RST_STREAM or exit")
