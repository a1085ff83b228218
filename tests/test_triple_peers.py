"""The Triple test peers (tests/peers/triple) against each other directly, no sidecar: apache-dubbo
(PyPI ``apache-dubbo``, Apache's Python SDK, in its own venv) and grpcio, as client and server, every
scenario; what each client puts on the wire and what each server answers, pinned; and apache-dubbo's
own registration in a real ZooKeeper.

These are the facts the sidecar tests of issue 20 build on: when a scenario fails through two sidecars
but passes here, the sidecars are at fault, not the peers.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from kazoo.client import KazooClient

from tests.peers.triple import greeter, h2_call, procs
from tests.peers.triple.venv import PINS, ROOT, apache_dubbo_python

pytestmark = pytest.mark.process

N_SLOW = 30  # slowStream messages: 3 s at 100 ms each, far more than any test waits for


def _pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line!r}"
            out[name.lower().replace("_", "-")] = version
    return out


def test_peer_venv_holds_exactly_the_pins() -> None:
    pins = _pins(PINS.read_text())
    assert pins["apache-dubbo"] == "3.0.0b1"
    # The peers' messages cross between the two venvs; kazoo is apache-dubbo's ZooKeeper client.
    constraints = _pins((ROOT / "constraints.txt").read_text())
    for shared in ("protobuf", "kazoo"):
        assert pins[shared] == constraints[shared], shared
    python = apache_dubbo_python()
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert _pins(frozen) == pins


# ---------------------------------------------------------------------------------------------------
# One server of each kind for the whole module: the scenarios are independent calls.  Sync fixtures:
# a ServerProc holds threads and a process, nothing tied to an event loop.


@pytest.fixture(scope="module")
def ad_server() -> Iterator[procs.ServerProc]:
    proc = procs.ServerProc.start("ad", name="ad1", log_headers=True)
    yield proc
    proc.stop_now()


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[procs.ServerProc]:
    proc = procs.ServerProc.start("grpc", name="g1", log_headers=True)
    yield proc
    proc.stop_now()


async def _slow_stream_end(server: procs.ServerProc, since: int) -> dict[str, Any]:
    return await server.wait_event(lambda e: e["event"] == "stream_end", since=since)


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"], result
    return result


# ---------------------------------------------------------------------------------------------------
# The calls that pass the same way whoever is client and server.

PAIRS = [("ad", "ad"), ("grpc", "ad"), ("ad", "grpc"), ("grpc", "grpc")]


def _server(request: pytest.FixtureRequest, kind: str) -> procs.ServerProc:
    return request.getfixturevalue("ad_server" if kind == "ad" else "grpc_server")


@pytest.mark.parametrize(("client", "server_kind"), PAIRS)
async def test_unary_streams_and_a_4_mb_message(
    request: pytest.FixtureRequest, client: procs.ClientKind, server_kind: str
) -> None:
    server = _server(request, server_kind)
    name, t = server.name, server.target
    # One client at a time: an apache-dubbo server serves only its newest connection
    # (test_apache_dubbo_server_serves_only_its_newest_connection).
    unary = await procs.run_client(client, "unary", "--count", "20", target=t)
    stream = await procs.run_client(client, "server-stream", "--n", "5", target=t)
    upload = await procs.run_client(client, "client-stream", "--n", "5", "--size", "1000", target=t)
    bidi = await procs.run_client(client, "bidi", "--n", "5", target=t)
    big = await procs.run_client(client, "big", "--mb", "4", target=t)
    assert _ok(unary)["counts"] == {name: 20}
    assert _ok(stream)["replies"] == [f"{name}:{i}" for i in range(5)]
    assert _ok(upload)["reply"]["bytes"] == 5000
    # apache-dubbo's client ends every request stream with an empty message; its own server drops it,
    # a grpcio server gets it (tests/peers/triple/ad_client.py).
    extra = client == "ad" and server_kind == "grpc"
    assert upload["reply"]["count"] == 5 + extra
    assert upload.get("extra_empty_message", False) is extra
    assert _ok(bidi)["echoes"] == [f"ping-{i}" for i in range(5)]
    assert bidi.get("extra_empty_message", False) is extra
    assert _ok(big)["reply"] == 4_000_000


@pytest.mark.parametrize(("client", "server_kind"), PAIRS)
async def test_a_server_error_keeps_its_status_and_message(
    request: pytest.FixtureRequest, client: procs.ClientKind, server_kind: str
) -> None:
    server = _server(request, server_kind)
    result = _ok(await procs.run_client(client, "fail", "--text", "boom 42", target=server.target))
    if server_kind == "ad":  # DefaultMethodRunner.handle_exception
        assert result["error"]["code"] == "INTERNAL"
        assert result["error"]["message"] == "Invoke method failed: boom 42"
    else:
        assert result["error"]["code"] == "FAILED_PRECONDITION"
        assert result["error"]["message"] == "boom 42"


@pytest.mark.parametrize(("client", "server_kind"), PAIRS)
async def test_a_cancel_reaches_the_server(
    request: pytest.FixtureRequest, client: procs.ClientKind, server_kind: str
) -> None:
    server = _server(request, server_kind)
    since = server.mark()
    result = _ok(
        await procs.run_client(client, "cancel", "--n", str(N_SLOW), "--after", "2", target=server.target)
    )
    assert result["how"] == "rst" and len(result["received"]) == 2
    end = await _slow_stream_end(server, since)
    assert end["outcome"] == "cancelled" and 2 <= end["sent"] < N_SLOW, end


@pytest.mark.parametrize(("client", "server_kind"), [("ad", "ad"), ("grpc", "ad")])
async def test_a_client_that_dies_mid_stream_is_seen_by_the_server(
    request: pytest.FixtureRequest, client: procs.ClientKind, server_kind: str
) -> None:
    server = _server(request, server_kind)
    since = server.mark()
    args = ["--n", str(N_SLOW), "--after", "2", "--how", "exit"]
    assert _ok(await procs.run_client(client, "cancel", *args, target=server.target))["how"] == "exit"
    end = await _slow_stream_end(server, since)
    assert end["outcome"] == "cancelled" and end["sent"] < N_SLOW, end


# ---------------------------------------------------------------------------------------------------
# Deadlines: who sends grpc-timeout and who enforces it differs.


async def test_grpcio_deadline_expires_mid_stream_on_apache_dubbo_server(ad_server: procs.ServerProc) -> None:
    since = ad_server.mark()
    result = _ok(
        await procs.run_client(
            "grpc", "deadline", "--n", str(N_SLOW), "--timeout-ms", "350", target=ad_server.target
        )
    )
    assert 2 <= result["received"] <= 4, result  # one message every 100 ms
    assert 330 <= result["end_ms"] < 1500, result
    # grpcio resets the stream when its deadline passes; the server stops there.
    end = await _slow_stream_end(ad_server, since)
    assert end["outcome"] == "cancelled" and end["sent"] < N_SLOW


async def test_grpcio_server_enforces_the_grpc_timeout_an_apache_dubbo_client_sends(
    grpc_server: procs.ServerProc,
) -> None:
    since = grpc_server.mark()
    result = _ok(
        await procs.run_client(
            "ad", "deadline", "--n", str(N_SLOW), "--grpc-timeout-ms", "350", "--wait-s", "5",
            target=grpc_server.target,
        )
    )  # fmt: skip
    assert result["error"]["code"] == "DEADLINE_EXCEEDED" and 2 <= result["received"] <= 4, result
    assert (await _slow_stream_end(grpc_server, since))["outcome"] == "cancelled"
    headers = await grpc_server.wait_event(lambda e: e["event"] == "headers", since=since)
    assert 0 < headers["time_remaining_s"] <= 0.35


async def test_apache_dubbo_server_ignores_grpc_timeout(ad_server: procs.ServerProc) -> None:
    """Nothing on an apache-dubbo-to-apache-dubbo path enforces a deadline: the client sends none by
    itself, and the server reads none (``ServerTransportListener``).  Through sidecars, the sidecars
    must."""
    since = ad_server.mark()
    result = await procs.run_client(
        "ad", "deadline", "--n", "5", "--grpc-timeout-ms", "150", "--wait-s", "5", target=ad_server.target
    )
    assert result["end"] == "completed" and result["received"] == 5 and "error" not in result, result
    headers = await ad_server.wait_event(lambda e: e["event"] == "headers", since=since)
    assert ["grpc-timeout", "150m"] in headers["headers"]
    assert (await _slow_stream_end(ad_server, since))["outcome"] == "completed"


# ---------------------------------------------------------------------------------------------------
# What each client sends and each server answers, byte for byte where it matters: what the sidecars
# parse and pass through.


async def test_what_each_client_sends() -> None:
    async with procs.running_server("capture") as capture:
        await procs.run_client("ad", "unary", "--count", "1", target=capture.target)
        ad = await capture.wait_event(lambda e: e["event"] == "request")
        since = capture.mark()
        await procs.run_client(
            "grpc", "deadline", "--n", "1", "--timeout-ms", "1500", "--header", "tri-service-version=1.0.0",
            "--header", "tri-consumer-appname=shop", target=capture.target,
        )  # fmt: skip
        grpc_request = await capture.wait_event(lambda e: e["event"] == "request", since=since)
    authority = ["127.0.0.1", str(capture.port)]
    # apache-dubbo (RequestMetadata.to_headers): no user-agent, no grpc-timeout, no tri-* header at all
    # (TripleInvoker._create_metadata sets none), content-type application/grpc+data.
    assert ad["headers"] == [
        [":scheme", "http"], [":method", "POST"], [":authority", ":".join(authority)],
        [":path", greeter.path(greeter.GREET)], ["content-type", "application/grpc+data"], ["te", "trailers"],
    ]  # fmt: skip
    assert ad["messages"] == 2, "the call's message, then the empty one apache-dubbo ends with"
    names = [k for k, _ in grpc_request["headers"]]
    assert names[:6] == [":path", ":authority", ":method", ":scheme", "content-type", "te"]
    got = dict(grpc_request["headers"])
    assert got["content-type"] == "application/grpc" and got["te"] == "trailers"
    assert re.fullmatch(r"1[45]\d\dm", got["grpc-timeout"]), got  # grpcio: an integer and a unit
    assert got["user-agent"].startswith("grpc-python/")
    assert got["tri-service-version"] == "1.0.0" and got["tri-consumer-appname"] == "shop"
    assert grpc_request["messages"] == 1


def test_what_apache_dubbo_server_answers(ad_server: procs.ServerProc) -> None:
    ok = h2_call.call(ad_server.port, greeter.path(greeter.GREET), [greeter.ser_str("x")])
    assert ok.headers == [(":status", "200"), ("content-type", "application/grpc+data")]
    assert [greeter.de_str(m) for m in ok.messages] == ["ad1: hello x"]
    # TripleServerCall.complete puts content-type in the trailers too.
    assert ok.trailers == [("content-type", "application/grpc+data"), ("grpc-status", "0")]

    # An error is trailers-only, its grpc-message raw UTF-8 (not percent-encoded), and it carries an
    # extra `tri_rpc_status` header: TriServerWriteStream.done_writing pops "tri-rpc-status", not the
    # "tri_rpc_status" keyword it was given, so the status's repr goes out as an attachment.
    failed = h2_call.call(ad_server.port, greeter.path(greeter.FAIL), [greeter.ser_str("ü 100%")])
    assert failed.trailers == [] and failed.messages == []
    assert [k for k, _ in failed.headers] == [
        ":status", "content-type", "tri_rpc_status", "grpc-status", "grpc-message",
    ]  # fmt: skip
    assert failed.header("grpc-status") == "13"
    assert failed.header("grpc-message") == "Invoke method failed: ü 100%"

    missing = h2_call.call(ad_server.port, greeter.path("noSuchMethod"), [b""])
    assert missing.header("grpc-status") == "12"
    assert missing.header("grpc-message") == f"Service {greeter.INTERFACE} is not found"


def test_what_grpcio_server_answers(grpc_server: procs.ServerProc) -> None:
    ok = h2_call.call(grpc_server.port, greeter.path(greeter.GREET), [greeter.ser_str("x")])
    assert dict(ok.headers)["content-type"] == "application/grpc"
    assert ok.trailers == [("grpc-status", "0"), ("grpc-message", "")]
    failed = h2_call.call(grpc_server.port, greeter.path(greeter.FAIL), [greeter.ser_str("ü 100%")])
    assert failed.header("grpc-status") == "9"
    assert failed.header("grpc-message") == "%C3%BC 100%25"  # percent-encoded, as the gRPC spec asks


@pytest.mark.parametrize("kind", ["ad", "grpc"])
def test_apache_dubbo_server_serves_only_its_newest_connection(kind: procs.Kind) -> None:
    """apache-dubbo 3.0.0b1's server keeps one ``StreamServerMultiplexHandler`` per exported service
    (``TripleProtocol.export``), shared by every connection, and each new connection's
    ``connection_made`` re-initialises it (``do_init``: its protocol becomes the new connection's, its
    stream table is emptied).  So once a second TCP connection is accepted, even one closed at once
    without a byte, the calls of every older connection are answered on the newest one's protocol
    (nowhere) and hang.  A proxy must therefore hold exactly one connection to such a provider and
    open no other to it (no separate health-check connection).  grpcio serves them all."""
    server = procs.ServerProc.start(kind, name="c1")
    try:
        with h2_call.Connection(server.port) as older:
            greet = greeter.path(greeter.GREET)
            assert older.call(greet, [greeter.ser_str("a")]).header("grpc-status") == "0"
            socket.create_connection(("127.0.0.1", server.port)).close()  # a bare TCP probe
            with h2_call.Connection(server.port) as newer:
                # Answered: so the server has taken both new connections in (accepts are asynchronous).
                assert newer.call(greet, [greeter.ser_str("b")]).header("grpc-status") == "0"
                if kind == "ad":
                    with pytest.raises(TimeoutError):
                        older.call(greet, [greeter.ser_str("c")], timeout=1.0)
                else:
                    assert older.call(greet, [greeter.ser_str("c")]).header("grpc-status") == "0"
    finally:
        server.stop_now()


# ---------------------------------------------------------------------------------------------------
# apache-dubbo in ZooKeeper: how a plain Triple provider with no sidecar registers, and that the SDK
# finds providers there.


async def test_apache_dubbo_registers_a_tri_provider_in_zookeeper(zk: KazooClient, zk_server: Any) -> None:
    registry = f"zookeeper://{zk_server.hosts}"
    providers = f"/dubbo/{greeter.INTERFACE}/providers"
    async with (
        procs.running_server("ad", name="z1", registry=registry) as one,
        procs.running_server("ad", name="z2", registry=registry) as two,
    ):
        nodes = await _children(zk, providers, 2)
        urls = {}
        for node in nodes:
            url = unquote(node)
            parts = urlsplit(url)
            assert parts.scheme == "tri" and parts.hostname == "127.0.0.1", url
            # RegistryProtocol.export registers ServiceConfig.to_url(): no path, one parameter.
            assert parts.path == ""
            assert dict(parse_qsl(parts.query)) == {"service": greeter.INTERFACE}, url
            data, stat = zk.get(f"{providers}/{node}")
            assert stat.ephemeralOwner != 0 and data == f"127.0.0.1:{parts.port}".encode()
            urls[parts.port] = url
            print(f"apache-dubbo provider node: {node}\n  = {url}")
        assert set(urls) == {one.port, two.port}

        # The SDK as consumer: subscribes there, picks a provider at random per call.
        result = _ok(
            await procs.run_client("ad", "unary", "--count", "200", "--providers", "2", registry=registry)
        )
        assert set(result["counts"]) == {"z1", "z2"} and sum(result["counts"].values()) == 200
        assert min(result["counts"].values()) > 50, result


async def _children(zk: KazooClient, path: str, count: int, timeout: float = 15.0) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        nodes = zk.get_children(path) if zk.exists(path) else []
        if len(nodes) >= count:
            return nodes
        assert loop.time() < deadline, f"{path}: {nodes}"
        await asyncio.sleep(0.05)
