"""A pub/sub request's ``registry`` (issue 14, item 3): a body may name only a registry the sidecar
is configured with, unless ``api_allow_body_registries``; and a registry a request brought in that
never connects is closed again (its kazoo client stopped) and never makes the sidecar unready.

Sidecars are real processes (tests/sidecars.py) on a real ZooKeeper; 127.0.0.1:1 is the registry
nobody answers at (port 1 is privileged, nothing listens there in a test machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ports import free_port
from tests.sidecars import SidecarProc
from tests.zkserver import ZooKeeperServer

pytestmark = pytest.mark.process

IFACE = "com.t.BodyRegistrySvc"
DEAD = {"type": "zookeeper", "addr": "127.0.0.1:1"}


@pytest.fixture
async def sidecar_on(zk_server: ZooKeeperServer, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[SidecarProc] = []

    async def start(allow: bool) -> SidecarProc:
        config = tmp_path / f"regproxy-{len(started)}.yaml"
        config.write_text(yaml.safe_dump({"api_allow_body_registries": allow}))
        sc = SidecarProc(
            f"body-registries-{len(started)}",
            tmp_path / f"sc{len(started)}",
            registries=[f"zookeeper://{zk_server.hosts}"],
            app_port=free_port(),
            extra=["--config", str(config)],
        )
        started.append(sc)
        await sc.start()
        await sc.until_ready()
        return sc

    try:
        yield start
    finally:
        for sc in started:
            await sc.stop()


async def test_a_body_naming_the_configured_registry_works(sidecar_on: Any, zk: Any) -> None:
    sc: SidecarProc = await sidecar_on(False)
    host, _, port = sc.registries[0].removeprefix("zookeeper://").partition(":")
    # As MOSN-era SDKs send it, spelled differently from the flag: localhost for 127.0.0.1.
    registry = {"type": "zookeeper", "addr": f"localhost:{port}", "username": "", "password": ""}
    status, body = await sc.post(
        "/pub", {"registry": registry, "service": {"interface": IFACE, "port": 20880}}
    )
    assert status == 200, body
    assert body["app_port"] == 20880
    status, body = await sc.post("/sub", {"registry": registry, "service": {"interface": IFACE}})
    assert status == 200, body
    assert [p["address"] for p in body["providers"]] == [f"127.0.0.1:{sc.ingress}"]
    assert zk.get_children(f"/dubbo/{IFACE}/providers")
    # One connection: the request reached the configured registry, no second one was opened.
    _, stats = await sc.admin_get("/api/v1/stats")
    assert list(stats["registry"]["states"]) == [f"zookeeper://{host}:{port}"]


async def test_a_registry_that_is_not_configured_is_refused(sidecar_on: Any) -> None:
    sc: SidecarProc = await sidecar_on(False)
    status, body = await sc.post("/sub", {"registry": DEAD, "service": {"interface": IFACE}})
    assert status == 400 and body["err_no"] == 1, body
    assert body["err_msg"].startswith("registry: zookeeper://127.0.0.1:1 is not a registry"), body
    assert sc.registries[0] in body["err_msg"] and "api_allow_body_registries" in body["err_msg"]
    # Nothing was dialled, nothing changed: still ready, one registry.
    status, ready = await sc.admin_get("/readyz")
    assert status == 200, ready
    assert list(ready["detail"]["registries"]) == [sc.registries[0]]
    assert "127.0.0.1(127.0.0.1):1" not in sc.log_path.read_text()  # kazoo never dialled it


class HangUp(asyncio.Protocol):
    """A "ZooKeeper" that accepts and hangs up at once: kazoo never gets a session and retries.
    Counting its connections counts kazoo's attempts, whatever regproxy logs."""

    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        HangUp.accepted += 1
        transport.close()


async def test_an_allowed_registry_that_never_connects_is_dropped(sidecar_on: Any) -> None:
    sc: SidecarProc = await sidecar_on(True)
    status, body = await sc.post("/sub", {"registry": DEAD, "service": {"interface": IFACE}})
    assert status == 503 and body["err_no"] == 3, body  # tried for a moment, as the API promises
    # Gone at once: ready, and no trace of it in the admin's registries or subscriptions.
    status, ready = await sc.admin_get("/readyz")
    assert status == 200, ready
    assert list(ready["detail"]["registries"]) == [sc.registries[0]]
    _, stats = await sc.admin_get("/api/v1/stats")
    assert list(stats["registry"]["states"]) == [sc.registries[0]]
    _, subs = await sc.admin_get("/api/v1/subscriptions")
    assert "127.0.0.1:1" not in str(subs)
    assert "zookeeper://127.0.0.1:1 (named by a request, not configured): closed, it never connected" in (
        sc.log_path.read_text()
    )
    # The configured registry serves on as before.
    status, body = await sc.post("/sub", {"service": {"interface": IFACE}})
    assert status == 200, body


async def test_a_dropped_registry_stops_dialling(sidecar_on: Any) -> None:
    sc: SidecarProc = await sidecar_on(True)
    HangUp.accepted = 0
    server = await asyncio.get_running_loop().create_server(HangUp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        registry = {"type": "zookeeper", "addr": f"127.0.0.1:{port}"}
        status, body = await sc.post("/pub", {"registry": registry, "service": {"interface": IFACE}})
        assert status == 503, body
        assert HangUp.accepted >= 1  # it dialled (the 503 comes once an attempt has failed)
        # No new attempt afterwards: kazoo's client is stopped (it retries at least every ~2 s).
        seen = HangUp.accepted
        await asyncio.sleep(5)
        assert HangUp.accepted == seen, sc.log_tail()
        assert (await sc.admin_get("/readyz"))[0] == 200
    finally:
        server.close()
        await server.wait_closed()
