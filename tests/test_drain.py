"""Graceful drain: a provider sidecar with a healthy peer leaves under steady traffic and no
request fails."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from kazoo.client import KazooClient

from tests.topology import GREET, VERSION, Traffic, World, leaves, pub_body
from tests.wait import wait_for


@pytest.mark.parametrize("how", ["sigterm", "admin"])
async def test_drain_under_traffic_loses_nothing(world: World, zk: KazooClient, how: str) -> None:
    b, c = world.provider_sidecars
    app_b, app_c = world.apps
    a = world.consumer
    await c.start()
    for sidecar, app in ((b, app_b), (c, app_c)):
        status, _ = await sidecar.post("/pub", pub_body(app.port))
        assert status == 200
    status, sub = await a.post("/sub", {"service": {"interface": GREET, "version": VERSION}})
    assert status == 200 and len(sub["providers"]) == 2
    traffic = Traffic(a.egress)
    traffic.start()
    try:
        await wait_for(lambda: app_b.services.count("sayHi") > 20 and app_c.services.count("sayHi") > 20,
                       5.0, "traffic on both providers")  # fmt: skip
        if how == "sigterm":
            assert b.proc is not None
            b.proc.send_signal(signal.SIGTERM)
        else:
            async with aiohttp.ClientSession() as http, http.post(f"{b.admin_url}/api/v1/drain") as resp:
                assert resp.status == 202
            async with aiohttp.ClientSession() as http, http.get(f"{b.admin_url}/readyz") as resp:
                assert resp.status == 503 and (await resp.json())["detail"]["draining"] is True
        # Out of the registry first: only the peer's node is left.
        only_c = [f"127.0.0.1:{c.ingress}"]
        await wait_for(lambda: [n for n, _ in leaves(zk)] == only_c, 2.0, "withdrawal", in_thread=True)
        assert b.proc is not None
        code = await asyncio.wait_for(b.proc.wait(), 30)
        assert code == 0, b.log_tail()
        served_by_b = app_b.services.count("sayHi")
        await asyncio.sleep(0.5)
        assert app_b.services.count("sayHi") == served_by_b  # nothing reaches the drained side
    finally:
        await traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.ok > 100
