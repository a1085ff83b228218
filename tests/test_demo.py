"""The demo provider, client and consumer over loopback, and dubbo-python against our provider."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from regproxy.demo.client import CallTimeout, ConnectionLost, DubboCallError, DubboClient, RemoteException
from regproxy.demo.consumer import parse_target
from regproxy.demo.provider import ECHO_SERVICE, GREETINGS_SERVICE, Provider, default_services, serve
from regproxy.dubbo.encode import (
    decode_response,
    encode_request,
    encode_response,
    heartbeat_reply,
    heartbeat_request,
    with_request_id,
)
from regproxy.dubbo.frame import FrameParser, Status, pack_header
from regproxy.dubbo.hessian2 import JavaObject, Long
from regproxy.dubbo.request import RequestBody
from tests.wait import wait_for

VECTORS = Path(__file__).parent / "vectors" / "dubbo-python-requests.json"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    services = default_services()
    # dubbo-python sends version 1.0.0 unless told otherwise.
    services.add(GREETINGS_SERVICE, {"sayHi": lambda name: f"hi, {name}"}, version="1.0.0")
    p = Provider(services, name="test-provider")
    await p.start("127.0.0.1", 0)
    yield p
    await p.close(grace=0)


@pytest.fixture
async def client(provider: Provider) -> AsyncIterator[DubboClient]:
    c = await DubboClient.connect("127.0.0.1", provider.port)
    yield c
    c.close()
    await c.wait_closed()


async def test_say_hi_and_sum(provider: Provider, client: DubboClient) -> None:
    assert await client.call(GREETINGS_SERVICE, "sayHi", ["bob"]) == "hi, bob"
    assert await client.call(ECHO_SERVICE, "sum", [1, 2]) == 3
    assert await client.call(ECHO_SERVICE, "sum", [2**31 - 1, 1]) == 2**31
    assert provider.services.count("sayHi") == 1
    assert provider.services.count("sum", ECHO_SERVICE) == 2


async def test_serve_function_binds_port_zero() -> None:
    server = await serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with await DubboClient.connect("127.0.0.1", port) as c:
        assert await c.call(GREETINGS_SERVICE, "sayHi", ["ann"]) == "hi, ann"
    server.close()
    await server.wait_closed()


NESTED_VALUES = [
    pytest.param("grüße 😀 𝄞 ok", id="non-bmp"),
    pytest.param("x" * 70_000, id="70k-ascii"),
    pytest.param("é😀" * 23_400, id="70k-units-non-bmp"),
    pytest.param("", id="empty-string"),
    pytest.param({"a": 1, "b": [1, 2, {"c": None}], "long": 2**40, "f": 2.5}, id="dict"),
    pytest.param([1, "two", 3.25, None, True, False, [], {}], id="list"),
    pytest.param(b"\x00\xff" * 600, id="bytes"),
    pytest.param(
        JavaObject("com.example.Point", {"x": 1, "y": -2, "label": "p😀"}),
        id="java-object",
    ),
    pytest.param(
        [
            JavaObject("com.example.Point", {"x": 1, "y": 2, "label": "a"}),
            JavaObject("com.example.Point", {"x": 3, "y": 4, "label": "b"}),
            {"nested": JavaObject("com.example.Line", {"name": "l", "points": [1, 2]})},
        ],
        id="objects-sharing-a-class",
    ),
    pytest.param(datetime.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=datetime.UTC), id="date"),
    pytest.param(Long(5), id="long"),
]


@pytest.mark.parametrize("value", NESTED_VALUES)
async def test_echo_round_trips_values(client: DubboClient, value: Any) -> None:
    assert await client.call(ECHO_SERVICE, "echo", [value]) == value


async def test_echo_answers_null_with_null(client: DubboClient) -> None:
    resp = await client.invoke(ECHO_SERVICE, "echo", [None])
    assert resp.ok and resp.value is None


async def test_500_pipelined_calls_on_one_connection(provider: Provider, client: DubboClient) -> None:
    async def later(value: int) -> int:
        # Answer out of order, so matching by request id is what makes every result right.
        await asyncio.sleep((value * 7919 % 50) / 1000)
        return value * 2

    provider.services.add(ECHO_SERVICE, {"later": later})
    n = 500
    calls = []
    for i in range(n):
        if i % 3 == 0:
            calls.append(client.call(ECHO_SERVICE, "later", [i]))
        elif i % 3 == 1:
            calls.append(client.call(GREETINGS_SERVICE, "sayHi", [f"n{i}"]))
        else:
            calls.append(client.call(ECHO_SERVICE, "echo", [{"i": i}]))
    results = await asyncio.gather(*calls)
    for i, result in enumerate(results):
        expected = i * 2 if i % 3 == 0 else f"hi, n{i}" if i % 3 == 1 else {"i": i}
        assert result == expected
    assert len(provider.connections) == 1
    assert client.in_flight == 0


async def test_unknown_method_and_service_are_status_70(client: DubboClient) -> None:
    with pytest.raises(DubboCallError) as err:
        await client.call(ECHO_SERVICE, "nope", [1])
    assert err.value.status == Status.SERVICE_ERROR
    assert f"{ECHO_SERVICE}.nope" in err.value.message

    with pytest.raises(DubboCallError) as err:
        await client.call("com.example.Missing", "m", [], version="2.0.0")
    assert err.value.status == Status.SERVICE_ERROR
    assert "com.example.Missing:2.0.0.m" in err.value.message

    # A version nobody exports is a missing service too, as in Dubbo.
    with pytest.raises(DubboCallError) as err:
        await client.call(GREETINGS_SERVICE, "sayHi", ["x"], version="9.9.9")
    assert f"{GREETINGS_SERVICE}:9.9.9.sayHi" in err.value.message


async def test_versions_are_normalized(client: DubboClient) -> None:
    for version in ("", "0.0.0", "*"):
        assert await client.call(ECHO_SERVICE, "sum", [1, 1], version=version) == 2
    assert await client.call(GREETINGS_SERVICE, "sayHi", ["v"], version="1.0.0") == "hi, v"


async def test_handler_exception_is_remote_exception(provider: Provider, client: DubboClient) -> None:
    def boom(reason: str) -> None:
        raise ValueError(f"bad input: {reason}")

    async def aboom() -> None:
        await asyncio.sleep(0)
        raise KeyError("async")

    provider.services.add(ECHO_SERVICE, {"boom": boom, "aboom": aboom})
    with pytest.raises(RemoteException) as err:
        await client.call(ECHO_SERVICE, "boom", ["x"])
    assert err.value.class_name == "java.lang.RuntimeException"
    assert err.value.detail_message == "bad input: x"
    assert "bad input: x" in str(err.value)
    with pytest.raises(RemoteException, match="async"):
        await client.call(ECHO_SERVICE, "aboom", [])
    # The connection is still usable.
    assert await client.call(ECHO_SERVICE, "sum", [4, 5]) == 9


async def test_heartbeat_is_answered_with_its_round_trip_time(client: DubboClient) -> None:
    rtt = await client.heartbeat()
    assert 0 <= rtt < 3


async def test_response_flags_follow_consumer_version(provider: Provider) -> None:
    async with await DubboClient.connect("127.0.0.1", provider.port) as modern:
        resp = await modern.invoke(GREETINGS_SERVICE, "sayHi", ["a"])
        assert resp.value == "hi, a" and resp.attachments == {"dubbo": "2.0.2"}
    async with await DubboClient.connect("127.0.0.1", provider.port, dubbo_version="2.4.10") as old:
        rid = old.new_request_id()
        frame = await old.exchange(
            rid, encode_request(rid, GREETINGS_SERVICE, "sayHi", ["a"], dubbo_version="2.4.10")
        )
        assert frame.body == b"\x91\x05hi, a"  # flag 1, no attachments
        rid = old.new_request_id()
        frame = await old.exchange(
            rid, encode_request(rid, ECHO_SERVICE, "echo", [None], dubbo_version="2.6.0")
        )
        assert frame.body == b"\x92"  # flag 2 (null), no attachments


async def test_malformed_body_is_status_40(client: DubboClient) -> None:
    rid = client.new_request_id()
    body = b"\x052.0.2\xff\xfe"  # a version string, then garbage where the path should be
    frame = await client.exchange(rid, pack_header(0xC2, 0, rid, len(body)) + body)
    resp = decode_response(frame)
    assert resp.status == Status.BAD_REQUEST
    assert resp.error and "Fail to decode request" in resp.error

    rid = client.new_request_id()
    body = b"\x00"
    frame = await client.exchange(rid, pack_header(0xC0 | 3, 0, rid, len(body)) + body)  # java serialization
    resp = decode_response(frame)
    assert resp.status == Status.BAD_REQUEST and resp.error and "serialization id 3" in resp.error
    assert await client.call(ECHO_SERVICE, "sum", [1, 2]) == 3


async def test_oneway_call_gets_no_response(provider: Provider, client: DubboClient) -> None:
    client.call_oneway(GREETINGS_SERVICE, "sayHi", ["quiet"])
    client.call_oneway(ECHO_SERVICE, "nope", [])  # errors on one-way calls are not answered either
    assert await client.call(ECHO_SERVICE, "sum", [1, 2]) == 3  # answered after the one-way calls
    assert provider.services.count("sayHi") == 1
    assert client.in_flight == 0


async def test_timeout_then_late_response_is_dropped(client: DubboClient) -> None:
    with pytest.raises(CallTimeout) as err:
        await client.call(ECHO_SERVICE, "sleep", [300], timeout=0.05)
    assert err.value.status == Status.CLIENT_TIMEOUT
    assert client.in_flight == 0
    await asyncio.sleep(0.35)  # the late answer arrives and is ignored
    assert await client.call(ECHO_SERVICE, "sleep", [1]) == 1


async def test_timeout_is_sent_as_attachment(provider: Provider, client: DubboClient) -> None:
    seen: list[dict[str, Any]] = []
    server = await asyncio.start_server(_recording_handler(seen), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with await DubboClient.connect("127.0.0.1", port) as c:
        assert await c.call(ECHO_SERVICE, "echo", [1], timeout=1.5, group="g1") == "recorded"
    server.close()
    assert seen[0]["timeout"] == "1500" and seen[0]["group"] == "g1"


def _recording_handler(seen: list[dict[str, Any]]) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = FrameParser()
        while data := await reader.read(65536):
            for frame in parser.feed(data):
                seen.append(RequestBody(frame.body).attachments)
                writer.write(encode_response(frame.request_id, "recorded"))
        writer.close()

    return handle


async def test_pending_calls_fail_when_connection_is_lost(provider: Provider, client: DubboClient) -> None:
    calls = [asyncio.ensure_future(client.call(ECHO_SERVICE, "sleep", [5000], timeout=10)) for _ in range(3)]
    await wait_for(lambda: provider.services.count("sleep") >= 3, 5, "the three calls at the provider")
    provider.abort_connections()
    for call in calls:
        with pytest.raises(ConnectionLost, match="lost") as err:
            await asyncio.wait_for(call, 2)
        assert err.value.status == Status.CHANNEL_INACTIVE
    assert client.is_closed
    with pytest.raises(ConnectionLost):
        await client.call(ECHO_SERVICE, "sum", [1, 2])


async def test_close_fails_pending_calls(client: DubboClient) -> None:
    call = asyncio.ensure_future(client.call(ECHO_SERVICE, "sleep", [5000], timeout=10))
    await asyncio.sleep(0.01)
    client.close()
    with pytest.raises(ConnectionLost, match="closed by the client"):
        await call
    await client.wait_closed()


async def test_client_answers_peer_heartbeat_and_reports_garbage() -> None:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(heartbeat_request(77))
        got.set_result(await reader.readexactly(len(heartbeat_reply(77))))
        await reader.readexactly(16)  # header of the client's request
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # not Dubbo
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = await DubboClient.connect("127.0.0.1", port)
    assert await asyncio.wait_for(got, 2) == heartbeat_reply(77)
    with pytest.raises(ConnectionLost, match="protocol error"):
        await c.call(ECHO_SERVICE, "sum", [1, 2])
    await asyncio.wait_for(c.wait_closed(), 2)
    server.close()


async def test_provider_close_sends_readonly_event(provider: Provider, client: DubboClient) -> None:
    call = asyncio.ensure_future(client.call(ECHO_SERVICE, "sleep", [50]))
    # Closed while the 50 ms call runs: look often.
    await wait_for(lambda: provider.services.count("sleep") >= 1, 5, "the call at the provider",
                   interval=0.005)  # fmt: skip
    await provider.close(grace=2)
    assert await call == 50  # in-flight calls finish before the connections close
    assert client.readonly
    await asyncio.wait_for(client.wait_closed(), 2)


async def test_provider_refuses_oversized_frame_and_answers_requests_before_garbage(
    provider: Provider,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", provider.port)
    good = encode_request(5, ECHO_SERVICE, "sum", [1, 2])
    writer.write(good + pack_header(0xC2, 0, 6, 9 * 1024 * 1024))  # a valid call, then a 9 MiB body announced
    parser = FrameParser()
    frames = []
    while data := await asyncio.wait_for(reader.read(65536), 2):
        frames += parser.feed(data)
    writer.close()
    assert [f.request_id for f in frames] == [5, 6]
    assert decode_response(frames[0]).value == 3
    error = decode_response(frames[1])
    assert error.status == Status.BAD_REQUEST and error.error and "exceeds the limit" in error.error


async def test_args_must_be_a_sequence(client: DubboClient) -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        await client.call(GREETINGS_SERVICE, "sayHi", "bob")  # type: ignore[arg-type]


# -- golden vectors: what dubbo-python 0.0.4 really sends ------------------------------------------

GOLDEN_EXPECTED = {
    "sayHi": {
        "path": GREETINGS_SERVICE,
        "param_types": "Ljava/lang/String;",
        "arguments": ["bob"],
    },
    "sum": {
        "path": ECHO_SERVICE,
        "param_types": "II",
        "arguments": [1, 2],
    },
}


def _golden() -> list[dict[str, Any]]:
    return json.loads(VECTORS.read_text())["requests"]


@pytest.mark.parametrize("vector", _golden(), ids=lambda v: v["name"])
def test_dubbo_python_golden_request_parses(vector: dict[str, Any]) -> None:
    expected = GOLDEN_EXPECTED[vector["name"]]
    frames = FrameParser().feed(bytes.fromhex(vector["hex"]))
    assert len(frames) == 1
    frame = frames[0]
    assert frame.request_id == vector["request_id"]
    assert frame.flag == 0xC2 and frame.is_request and frame.two_way and not frame.is_event
    assert frame.serialization == 2
    body = RequestBody(frame.body)
    assert body.dubbo_version == "2.4.10"
    assert body.path == expected["path"]
    assert body.version == "1.0.0"
    assert body.method == vector["name"]
    assert body.param_types == expected["param_types"]
    assert body.arguments() == expected["arguments"]
    assert body.attachments == {"path": expected["path"], "interface": expected["path"], "version": "1.0.0"}
    assert body.group == "" and body.timeout_ms() is None
    # The lazy path (attachments without decoding the arguments) agrees.
    assert RequestBody(frame.body).attachments == body.attachments


async def test_provider_answers_golden_requests(provider: Provider) -> None:
    provider.services.add(ECHO_SERVICE, {"sum": lambda *v: sum(v)}, version="1.0.0")
    answers = {"sayHi": b"\x91\x07hi, bob", "sum": b"\x91\x93"}  # flag 1 + value, no attachments for 2.4.10
    async with await DubboClient.connect("127.0.0.1", provider.port) as c:
        for vector in _golden():
            frame = FrameParser().feed(bytes.fromhex(vector["hex"]))[0]
            rid = c.new_request_id()
            reply = await c.exchange(rid, with_request_id(frame.head, rid) + frame.body)
            assert reply.status == Status.OK and reply.body == answers[vector["name"]]


# -- dubbo-python's own client against our provider -------------------------------------------------

# dubbo-python keeps one process-wide connection pool whose reader thread busy-loops while the pool
# is empty (SelectConnectionPool._read_from_server: `if len(conns)==0: continue`). Imported into the
# test process it makes every later asyncio test ~100x slower, so it runs in a child process.
DUBBO_PYTHON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from dubbo.client import DubboClient
    host = "127.0.0.1:" + sys.argv[1]
    out = {}
    greet = DubboClient("org.apache.dubbo.samples.api.GreetingsService", host=host)
    out["sayHi"] = greet.call("sayHi", "bob", timeout=5)
    echo = DubboClient("org.apache.dubbo.samples.api.EchoService", version="", host=host)
    out["sum"] = echo.call("sum", [1, 2], timeout=5)
    out["echo"] = echo.call("echo", "grüße", timeout=5)
    for method in ("boom", "nope"):
        try:
            echo.call(method, "x", timeout=5)
        except Exception as e:
            out[method] = [type(e).__name__, str(e)]
    print(json.dumps(out))
    """
)


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_dubbo_python_client_calls_our_provider(provider: Provider) -> None:
    def boom(x: str) -> None:
        raise RuntimeError(f"boom {x}")

    provider.services.add(ECHO_SERVICE, {"boom": boom})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DUBBO_PYTHON_SCRIPT,
        str(provider.port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["sayHi"] == "hi, bob"
    assert out["sum"] == 3
    assert out["echo"] == "grüße"
    assert out["boom"][0] == "DubboResponseException"
    assert "java.lang.RuntimeException: boom x" in out["boom"][1]
    assert out["nope"][0] == "DubboResponseException" and f"{ECHO_SERVICE}.nope" in out["nope"][1]
    assert provider.services.count("sayHi", GREETINGS_SERVICE, "1.0.0") == 1


# -- the command-line entry points ------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_demo_consumer_command_calls_both_services_and_counts_the_calls(provider: Provider) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy.demo.consumer",
        "--target", f"127.0.0.1:{provider.port}", "--count", "3", "--interval", "0.01",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "sayHi('bob') -> 'hi, bob'" in text and "sum(3, 4) -> 7" in text
    assert "6 calls succeeded, 0 failed" in text
    assert provider.services.count("sayHi") == 3 and provider.services.count("sum") == 3


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_consumer_main_fails_when_calls_fail(provider: Provider) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy.demo.consumer",
        "--target", f"127.0.0.1:{provider.port}", "--count", "1", "--greetings-version", "7.7.7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "sayHi('bob') failed: DubboCallError: status 70" in stderr.decode()
    assert "sum(1, 2) -> 3" in stdout.decode()


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_provider_main_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy.demo.provider", "--port", "0", "--name", "p-main",
        "--greetings-version", "2.0.0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert "p-main: listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
        async with await DubboClient.connect("127.0.0.1", port) as c:
            assert await c.call(GREETINGS_SERVICE, "sayHi", ["m"], version="2.0.0") == "hi, m"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        rest = (await proc.stderr.read()).decode()
        assert "p-main: shutting down after 1 calls" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_parse_target_takes_host_port_or_bracketed_ipv6_and_refuses_the_rest() -> None:
    assert parse_target("127.0.0.1:20881") == ("127.0.0.1", 20881)
    assert parse_target("[::1]:20881") == ("::1", 20881)
    assert parse_target("egress.local:1") == ("egress.local", 1)
    for bad in ("127.0.0.1", ":20881", "h:0", "h:70000", "::1:20881", "h:x"):
        with pytest.raises(ValueError, match="target"):
            parse_target(bad)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_client_and_provider_on_both_event_loops(loop_name: str) -> None:
    # conftest runs async tests on uvloop; the plain asyncio loop (transports differ) gets this run too.
    factory = asyncio.new_event_loop if loop_name == "asyncio" else uvloop.new_event_loop

    async def scenario() -> None:
        provider = Provider(name=loop_name)
        await provider.start("127.0.0.1", 0)
        async with await DubboClient.connect("127.0.0.1", provider.port) as c:
            results = await asyncio.gather(*(c.call(ECHO_SERVICE, "sum", [i, 1]) for i in range(200)))
            assert results == [i + 1 for i in range(200)]
            assert await c.call(GREETINGS_SERVICE, "sayHi", ["uv"]) == "hi, uv"
            await c.heartbeat()
            call = asyncio.ensure_future(c.call(ECHO_SERVICE, "sleep", [5000], timeout=10))
            await wait_for(lambda: provider.services.count("sleep") >= 1, 5, "the call at the provider")
            provider.abort_connections()
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(call, 2)
        await provider.close(grace=0)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


async def test_a_cancelled_call_is_cancelled_even_when_its_answer_arrived() -> None:
    """The answer and the caller's cancellation in the same loop pass: the call must end cancelled.
    (With asyncio.wait_for, Python 3.11 returned the answer instead, and a call loop stopped by
    cancelling it went on for ever.)"""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    client = await DubboClient.connect("127.0.0.1", port)
    try:
        task = asyncio.ensure_future(client.call(GREETINGS_SERVICE, "sayHi", ["x"], timeout=5))
        for _ in range(3):
            await asyncio.sleep(0)  # the request is written; the call waits for its answer
        (request_id,) = client._pending
        client.data_received(encode_response(request_id, "hi, x"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        client.close()
        silent.close()
