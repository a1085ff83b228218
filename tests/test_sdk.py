"""regproxy.sdk against a real sidecar (`regproxy run` with memory://): both clients, their errors,
and the retries while the sidecar is starting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from regproxy.sdk import (
    ERR_BAD_REQUEST,
    ERR_NO_REPLY,
    ERR_NOT_FOUND,
    AsyncRegproxyClient,
    RegistrySpec,
    RegproxyClient,
    RegproxyConnectionError,
    RegproxyError,
    SubscribeResult,
    registry_ref,
)
from tests.ports import free_port
from tests.sidecars import SidecarProc

GREET = "org.apache.dubbo.samples.api.GreetingsService"


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[SidecarProc]:
    sc = SidecarProc("sdk", tmp_path / "sc", registries=["memory://"], app_port=free_port())
    await sc.start()
    try:
        yield sc
    finally:
        await sc.kill()


# -- the blocking client (standard library) ----------------------------------------------------------


def _sync_round_trip(sc: SidecarProc) -> None:
    rp = RegproxyClient(sc.api_url)
    url = rp.publish(GREET, port=sc.app_port, methods=["sayHi"], version="1.0.0", application="sdk-test")
    # The sidecar registers its own address and ingress port, not the application's.
    assert url.startswith(f"dubbo://127.0.0.1:{sc.ingress}/{GREET}?")
    assert "application=sdk-test" in url and "methods=sayHi" in url
    assert (
        rp.publish(GREET, port=sc.app_port, methods=["sayHi"], version="1.0.0", application="sdk-test") == url
    )

    found = rp.subscribe(GREET, version="1.0.0")
    assert isinstance(found, SubscribeResult)
    assert found.cluster == f"{GREET}:1.0.0"
    (provider,) = found.providers
    assert provider.address == f"127.0.0.1:{sc.ingress}" and provider.weight == 100
    assert provider.metadata["interface"] == GREET and provider.raw["address"] == provider.address

    rp.unsubscribe(GREET, version="1.0.0")
    rp.unpublish(GREET, version="1.0.0")
    with pytest.raises(RegproxyError) as err:
        rp.unpublish(GREET, version="1.0.0")
    assert err.value.err_no == ERR_NOT_FOUND and err.value.http_status == 404 and err.value.status == 404
    assert GREET in err.value.err_msg
    with pytest.raises(RegproxyError) as err:
        rp.unsubscribe(GREET, version="1.0.0")
    assert err.value.err_no == ERR_NOT_FOUND and err.value.status == 404


@pytest.mark.process
async def test_sync_publish_subscribe_unsubscribe_unpublish(sidecar: SidecarProc) -> None:
    await asyncio.to_thread(_sync_round_trip, sidecar)


def _sync_bad_input(sc: SidecarProc) -> None:
    rp = RegproxyClient(sc.api_url)
    with pytest.raises(RegproxyError) as err:
        rp.publish("com/x/Evil", port=20880)
    e = err.value
    assert (e.err_no, e.http_status) == (ERR_BAD_REQUEST, 400)
    assert e.err_msg.startswith("service.interface: ")
    assert "service.interface" in str(e) and "HTTP 400" in str(e)
    with pytest.raises(RegproxyError) as err:
        rp.subscribe(GREET, version="1.0&x=1")
    assert err.value.err_no == ERR_BAD_REQUEST and "service.version" in err.value.err_msg
    with pytest.raises(RegproxyError) as err:
        rp.publish(GREET, port=70000)
    assert err.value.status == 400 and "service.port" in err.value.err_msg
    with pytest.raises(TypeError):
        rp.publish(GREET, port=1, methods="sayHi")  # a string, not a list of names


@pytest.mark.process
async def test_sync_errors_carry_err_no_err_msg_and_status(sidecar: SidecarProc) -> None:
    await asyncio.to_thread(_sync_bad_input, sidecar)


def _sync_named_registry(sc: SidecarProc) -> None:
    rp = RegproxyClient(sc.api_url)
    # The sidecar's own registry, named explicitly: the request reaches the configured connection.
    for registry in ("memory://", RegistrySpec("memory"), {"type": "memory", "addr": ""}):
        url = rp.publish(GREET, port=None, version="2.0.0", registry=registry)  # None: --app-port
        assert f"127.0.0.1:{sc.ingress}" in url
        found = rp.subscribe(GREET, version="2.0.0", registry=registry)
        assert [p.address for p in found.providers] == [f"127.0.0.1:{sc.ingress}"]
    with pytest.raises(RegproxyError) as err:
        rp.subscribe(GREET, registry={"type": "etcd", "addr": "h:1"})
    assert err.value.err_no == ERR_BAD_REQUEST and "registry" in err.value.err_msg
    # A registry the sidecar is not configured with: refused at once (no retry, nothing dialled).
    with pytest.raises(RegproxyError) as err:
        rp.subscribe(GREET, registry="zookeeper://127.0.0.1:1")
    assert err.value.err_no == ERR_BAD_REQUEST and err.value.http_status == 400
    assert err.value.err_msg.startswith("registry: zookeeper://127.0.0.1:1 is not a registry this sidecar")


@pytest.mark.process
async def test_sync_registry_argument(sidecar: SidecarProc) -> None:
    await asyncio.to_thread(_sync_named_registry, sidecar)


def test_registry_ref_forms() -> None:
    assert registry_ref(None) is None
    assert registry_ref("zookeeper://10.0.0.1:2181,10.0.0.2:2181") == {
        "type": "zookeeper",
        "addr": "10.0.0.1:2181,10.0.0.2:2181",
    }
    assert registry_ref("nacos://n:8848?namespace=dev&username=u&password=p") == {
        "type": "nacos",
        "addr": "n:8848",
        "namespace": "dev",
        "username": "u",
        "password": "p",
    }
    assert registry_ref(RegistrySpec("nacos", "n:8848", namespace="dev")) == {
        "type": "nacos",
        "addr": "n:8848",
        "namespace": "dev",
    }
    assert "secret" not in repr(RegistrySpec("nacos", "n", password="secret"))
    with pytest.raises(ValueError):
        registry_ref("10.0.0.1:2181")


def test_bad_base_url() -> None:
    with pytest.raises(ValueError):
        RegproxyClient("127.0.0.1:22222")


# -- the asyncio client ----------------------------------------------------------------------------


@pytest.mark.process
async def test_async_round_trip_and_errors(sidecar: SidecarProc) -> None:
    async with AsyncRegproxyClient(sidecar.api_url) as rp:
        url = await rp.publish(GREET, port=sidecar.app_port, methods=["sayHi"], version="1.0.0", group="g")
        assert url.startswith(f"dubbo://127.0.0.1:{sidecar.ingress}/{GREET}?") and "group=g" in url
        found = await rp.subscribe(GREET, version="1.0.0", group="g")
        assert found.cluster == f"g/{GREET}:1.0.0"
        assert [p.address for p in found.providers] == [f"127.0.0.1:{sidecar.ingress}"]
        await rp.unsubscribe(GREET, version="1.0.0", group="g")
        await rp.unpublish(GREET, version="1.0.0", group="g")

        with pytest.raises(RegproxyError) as err:
            await rp.unpublish(GREET, version="1.0.0", group="g")
        assert (err.value.err_no, err.value.status) == (ERR_NOT_FOUND, 404)
        with pytest.raises(RegproxyError) as err:
            await rp.subscribe("com..x")
        assert (err.value.err_no, err.value.http_status) == (ERR_BAD_REQUEST, 400)
        assert err.value.err_msg.startswith("service.interface: ")


@pytest.mark.process
async def test_async_client_uses_a_given_session_and_leaves_it_open(sidecar: SidecarProc) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with AsyncRegproxyClient(sidecar.api_url, session=session) as rp:
            await rp.publish(GREET, port=sidecar.app_port)
        assert not session.closed
        rp2 = AsyncRegproxyClient(sidecar.api_url, session=session)
        await rp2.unpublish(GREET)
        await rp2.close()
        assert not session.closed


# -- while the sidecar is starting, and when it is not there ---------------------------------------


@pytest.mark.process
async def test_sync_call_waits_for_a_sidecar_that_starts_later(tmp_path: Path) -> None:
    sc = SidecarProc("late", tmp_path / "late", registries=["memory://"], app_port=free_port())
    rp = RegproxyClient(sc.api_url, start_timeout=30)
    started = time.monotonic()
    call = asyncio.ensure_future(asyncio.to_thread(rp.publish, GREET, port=sc.app_port, version="1.0.0"))
    try:
        await asyncio.sleep(1.0)
        assert not call.done()  # refused connections are being retried
        await sc.start()
        url = await asyncio.wait_for(call, 30)
        assert url.startswith(f"dubbo://127.0.0.1:{sc.ingress}/")
        assert time.monotonic() - started >= 1.0
    finally:
        await sc.kill()
        await asyncio.gather(call, return_exceptions=True)


@pytest.mark.process
async def test_async_call_waits_for_a_sidecar_that_starts_later(tmp_path: Path) -> None:
    sc = SidecarProc("late", tmp_path / "late", registries=["memory://"], app_port=free_port())
    async with AsyncRegproxyClient(sc.api_url, start_timeout=30) as rp:
        call = asyncio.ensure_future(rp.subscribe(GREET, version="1.0.0"))
        try:
            await asyncio.sleep(1.0)
            assert not call.done()
            await sc.start()
            found = await asyncio.wait_for(call, 30)
            assert found.cluster == f"{GREET}:1.0.0" and found.providers == []
        finally:
            await sc.kill()
            await asyncio.gather(call, return_exceptions=True)


# The clients' default start_timeout: a call that gave up before it kept to the one it was given.
DEFAULT_START_TIMEOUT_S = 10.0


@pytest.mark.slow
async def test_no_sidecar_gives_up_after_start_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegproxyConnectionError) as err:
        await asyncio.to_thread(RegproxyClient(url, start_timeout=0.5).subscribe, GREET)
    elapsed = time.monotonic() - started
    # Retried for the 0.5 s it was given (never less; a loaded machine only makes it longer), then
    # gave up, long before the default's 10 s; the error says for how long it tried.
    assert 0.5 <= elapsed < DEFAULT_START_TIMEOUT_S
    e = err.value
    assert isinstance(e, RegproxyError) and e.err_no == ERR_NO_REPLY and e.http_status is None
    assert "connection refused" in e.err_msg and "0.5 s" in e.err_msg and url in e.err_msg

    started = time.monotonic()
    async with AsyncRegproxyClient(url, start_timeout=0.5) as rp:
        with pytest.raises(RegproxyConnectionError) as err:
            await rp.publish(GREET, port=1)
    assert 0.5 <= time.monotonic() - started < DEFAULT_START_TIMEOUT_S
    assert err.value.err_no == ERR_NO_REPLY and "connection refused" in err.value.err_msg
    assert "0.5 s" in err.value.err_msg


async def test_start_timeout_zero_does_not_retry() -> None:
    # Counted at a sidecar that answers 503 (registry unavailable), which is retried like a refused
    # connection while a start_timeout lasts.
    calls: list[str] = []

    async def unavailable(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"err_no": 3, "err_msg": "registry connecting"}, status=503)

    app = web.Application()
    app.router.add_post("/sub", unavailable)
    runner, url = await _serve(app)
    try:
        with pytest.raises(RegproxyError) as err:
            await asyncio.to_thread(RegproxyClient(url, start_timeout=0).subscribe, GREET)
        assert err.value.err_no == 3 and calls == ["/sub"]
        async with AsyncRegproxyClient(url, start_timeout=0) as rp:
            with pytest.raises(RegproxyError) as err:
                await rp.subscribe(GREET)
        assert err.value.err_no == 3 and calls == ["/sub", "/sub"]
    finally:
        await runner.cleanup()
    # A refused connection is reported as it is, not as a start_timeout that ran out.
    nobody = RegproxyClient(f"http://127.0.0.1:{free_port()}", start_timeout=0)
    with pytest.raises(RegproxyConnectionError) as refused:
        await asyncio.to_thread(nobody.subscribe, GREET)
    assert "connection refused" in refused.value.err_msg
    assert "is the regproxy sidecar running there?" not in refused.value.err_msg


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_unavailable_registry_is_retried_then_reported() -> None:
    # A 503 (registry not connected yet) is retried like a refused connection; 404 is not.
    calls: list[str] = []

    async def sub(request: web.Request) -> web.Response:
        calls.append(request.path)
        if len(calls) < 3:
            return web.json_response({"err_no": 3, "err_msg": "registry connecting"}, status=503)
        return web.json_response(
            {"err_no": 0, "err_msg": "subscribe success", "cluster": "c", "providers": []}
        )

    async def unsub(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"err_no": 2, "err_msg": "not subscribed"}, status=404)

    async def always_503(request: web.Request) -> web.Response:
        return web.json_response({"err_no": 3, "err_msg": "registry down"}, status=503)

    app = web.Application()
    app.router.add_post("/sub", sub)
    app.router.add_post("/unsub", unsub)
    app.router.add_post("/pub", always_503)
    runner, url = await _serve(app)
    try:
        async with AsyncRegproxyClient(url, start_timeout=5) as rp:
            assert (await rp.subscribe("a.B")).cluster == "c"
            assert calls == ["/sub"] * 3
            with pytest.raises(RegproxyError) as err:
                await rp.unsubscribe("a.B")
            assert calls.count("/unsub") == 1 and err.value.err_no == ERR_NOT_FOUND
        started = time.monotonic()
        with pytest.raises(RegproxyError) as err:
            await asyncio.to_thread(RegproxyClient(url, start_timeout=0.4).publish, "a.B", port=1)
        assert 0.4 <= time.monotonic() - started < DEFAULT_START_TIMEOUT_S
        assert (err.value.err_no, err.value.status, err.value.err_msg) == (3, 503, "registry down")
    finally:
        await runner.cleanup()


@pytest.mark.slow
async def test_reply_that_is_not_the_api_and_reply_timeout() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>bad gateway</html>", status=502, content_type="text/html")

    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/pub", html)
    app.router.add_post("/sub", hang)
    runner, url = await _serve(app)
    try:
        with pytest.raises(RegproxyError) as err:
            await asyncio.to_thread(RegproxyClient(url).publish, "a.B", port=1)
        assert err.value.err_no == ERR_NO_REPLY and err.value.status == 502
        assert "not a regproxy API reply" in err.value.err_msg and "bad gateway" in err.value.err_msg

        started = time.monotonic()
        with pytest.raises(RegproxyConnectionError) as err:
            await asyncio.to_thread(RegproxyClient(url, timeout=0.5).subscribe, "a.B")
        assert time.monotonic() - started < 3  # a timeout is not retried: the call may have happened
        assert "no reply within the timeout" in err.value.err_msg

        async with AsyncRegproxyClient(url, timeout=0.5) as rp:
            with pytest.raises(RegproxyConnectionError) as err:
                await rp.subscribe("a.B")
            assert "no reply within the timeout" in err.value.err_msg
            with pytest.raises(RegproxyError) as err:
                await rp.publish("a.B", port=1)
            assert err.value.status == 502 and err.value.err_no == ERR_NO_REPLY
    finally:
        release.set()
        await runner.cleanup()
