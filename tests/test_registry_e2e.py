"""The registry proxy end to end: a real ZooKeeper, sidecars as separate processes, demo apps,
dubbo-python as an independent consumer and a plain kazoo/urllib reader as an independent check
of what is written in ZooKeeper."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from kazoo.client import KazooClient

from regproxy.demo.client import DubboClient, DubboError
from tests.sidecars import SidecarProc
from tests.topology import (
    EXACT_SPLIT,
    GREET,
    VERSION,
    Traffic,
    World,
    leaves,
    pub_body,
    set_weight_by_hand,
)
from tests.wait import wait_for


async def routes_to(consumer: SidecarProc, weights: dict[str, int]) -> bool:
    """Whether the consumer's sidecar has exactly these providers of GREET, with these weights (its
    egress routes by the same list)."""
    # The same subscription again: see the test for "migration".
    service = {"interface": GREET, "version": VERSION, "params": EXACT_SPLIT, "migration": "interface"}
    status, body = await consumer.post("/sub", {"service": service})
    assert status == 200, body
    return {p["address"]: p["weight"] for p in body["providers"]} == weights


async def test_publish_subscribe_call_spread_and_weights(world: World, zk: KazooClient) -> None:
    b, c = world.provider_sidecars
    app_b, app_c = world.apps
    a = world.consumer

    # Provider sidecar publishes with its own address and ingress port (the port rewrite).
    status, body = await b.post("/pub", pub_body(app_b.port))
    assert status == 200 and body["err_no"] == 0 and body["err_msg"] == "publish success", body
    assert body["url"].startswith(f"dubbo://127.0.0.1:{b.ingress}/{GREET}?")
    (netloc, params), = leaves(zk)  # fmt: skip
    assert netloc == f"127.0.0.1:{b.ingress}"
    assert (
        params["interface"] == [GREET] and params["version"] == [VERSION] and params["side"] == ["provider"]
    )
    assert params["methods"] == ["sayHi"] and params["dubbo"] == ["2.0.2"] and "group" not in params
    assert params["application"] == ["demo-provider"] and params["dynamic"] == ["true"]
    # The same publication again is idempotent.
    status, again = await b.post("/pub", pub_body(app_b.port))
    assert status == 200 and again["url"] == body["url"] and len(leaves(zk)) == 1

    # Consumer sidecar subscribes; dubbo-python's client calls its egress and reaches the app.
    # Interface-level URLs only: the weight is edited below in the provider node by hand, which a host
    # found at application level too would not follow (Dubbo's APPLICATION_FIRST; docs/discovery.md).
    status, sub = await a.post(
        "/sub",
        {"service": {"interface": GREET, "version": VERSION, "methods": ["x"], "params": EXACT_SPLIT,
                     "migration": "interface"}},
    )  # fmt: skip
    assert status == 200 and sub["err_msg"] == "subscribe success" and sub["cluster"] == f"{GREET}:{VERSION}"
    assert [p["address"] for p in sub["providers"]] == [f"127.0.0.1:{b.ingress}"]
    assert zk.get_children(f"/dubbo/{GREET}/consumers")
    out = await run_dubbo_python(a.egress)
    assert out == {"sayHi": "hi, bob"}
    assert app_b.services.count("sayHi") == 1

    # A second provider: traffic spreads to it within 2 s.
    traffic = Traffic(a.egress)
    traffic.start()
    try:
        await c.start()
        status, _ = await c.post("/pub", pub_body(app_c.port))
        assert status == 200
        await wait_for(lambda: app_c.services.count("sayHi") > 0, 2.0, "traffic on the second provider")

        # Weight changed in ZooKeeper by hand (delete + create, as operators' tools do): once the
        # consumer's sidecar has it, the split of the next 200 calls follows.
        await set_weight_by_hand(zk, c.ingress, 300)
        weights = {f"127.0.0.1:{b.ingress}": 100, f"127.0.0.1:{c.ingress}": 300}
        await wait_for(lambda: routes_to(a, weights), 10, "the new weight at the consumer")
        sent = traffic.sent
        await wait_for(lambda: traffic.sent > sent + 1, 10, "a call routed by the new weights")
        before = Counter(b=app_b.services.count("sayHi"), c=app_c.services.count("sayHi"))
        sent = traffic.sent
        await wait_for(lambda: traffic.sent >= sent + 200, 30, "200 calls at the new weights")
        got = Counter(b=app_b.services.count("sayHi"), c=app_c.services.count("sayHi"))
        got.subtract(before)
        assert got["c"] > 2 * got["b"] > 0, got  # 300:100 -> 3:1

        # One unpublished: once the consumer's sidecar no longer lists it, no request goes to it and
        # none fails.
        status, un = await b.post("/unpub", pub_body(app_b.port))
        assert status == 200 and un == {"err_no": 0, "err_msg": "unpub success"}
        only_c = {f"127.0.0.1:{c.ingress}": 300}
        await wait_for(lambda: routes_to(a, only_c), 10, "the consumer to drop the unpublished one")
        sent = traffic.sent
        await wait_for(lambda: traffic.sent > sent + 1, 10, "a call routed without it")
        failures_then, count_b, sent = len(traffic.failures), app_b.services.count("sayHi"), traffic.sent
        await wait_for(lambda: traffic.sent >= sent + 100, 30, "100 more calls")
        assert app_b.services.count("sayHi") == count_b
        assert len(traffic.failures) == failures_then
    finally:
        await traffic.stop()
    assert traffic.failures == [] and traffic.ok > 100
    status, err = await b.post("/unpub", pub_body(app_b.port))
    assert status == 404 and err["err_no"] != 0

    # Unsubscribing removes the route: the egress answers "no route".
    status, _ = await a.post("/unsub", {"service": {"interface": GREET, "version": VERSION}})
    assert status == 200
    client = await DubboClient.connect("127.0.0.1", a.egress)
    try:
        with pytest.raises(DubboError, match="no route"):
            await client.call(GREET, "sayHi", ["x"], version=VERSION)
    finally:
        client.close()


async def test_restarted_provider_sidecar_restores_publications(world: World, zk: KazooClient) -> None:
    b = world.provider_sidecars[0]
    assert (await b.post("/pub", pub_body(world.apps[0].port)))[0] == 200
    assert await b.stop() == 0  # a clean stop takes its nodes away...
    await wait_for(lambda: leaves(zk) == [], 5.0, "the node to go on stop")
    state = json.loads((b.data_dir / "regproxy-state.json").read_text())
    assert [p["spec"]["interface"] for p in state["publications"]] == [GREET]
    await b.start()  # ...and the restarted one brings them back without a /pub
    await wait_for(lambda: len(leaves(zk)) == 1, 5.0, "the restored node")
    assert leaves(zk)[0][0] == f"127.0.0.1:{b.ingress}"


async def test_bad_input_is_4xx_and_sidecar_keeps_serving(world: World) -> None:
    b = world.provider_sidecars[0]
    for body, field_name in [
        ({"service": {"interface": "com/x/Evil", "port": 1}}, "service.interface"),
        ({"service": {"interface": "com.x.Svc", "version": "1.0&x=1", "port": 1}}, "service.version"),
        ({"service": {"interface": "com.x.Svc", "group": "a b", "port": 1}}, "service.group"),
        ({"service": {"interface": "com..x", "port": 1}}, "service.interface"),
        ({"service": {"interface": "com.x.Svc", "port": 70000}}, "service.port"),
        ({"service": {"version": "1"}}, "service.interface"),
    ]:
        status, reply = await b.post("/pub", body)
        assert status == 400 and reply["err_no"] != 0 and field_name in reply["err_msg"], (body, reply)
    status, _ = await b.post("/pub", pub_body(world.apps[0].port))
    assert status == 200


async def run_dubbo_python(egress_port: int) -> dict[str, object]:
    script = textwrap.dedent(
        """
        import json, sys
        from dubbo.client import DubboClient
        client = DubboClient("org.apache.dubbo.samples.api.GreetingsService", host="127.0.0.1:" + sys.argv[1])
        print(json.dumps({"sayHi": client.call("sayHi", "bob", timeout=5)}))
        """
    )
    # Started from a thread with the standard library's subprocess, not the loop's: once, in a
    # clean-clone make test (test_nacos, the in-process Nacos double's gRPC threads running), the
    # child uvloop forked died of SIGSEGV before its exec, printing a Python stack, so Python code
    # ran between fork and exec. _posixsubprocess runs none there.
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, str(egress_port)], capture_output=True, timeout=50
    )
    assert proc.returncode == 0, proc.stderr.decode()
    stdout = proc.stdout
    return json.loads(stdout)


async def test_dead_app_is_unpublished_and_republished(world: World, zk: KazooClient) -> None:
    """The provider sidecar heartbeats its application: a crashed app leaves the registry within
    5 s, and comes back once it answers again, with no /pub from anyone."""
    b = world.provider_sidecars[0]
    app = world.apps[0]
    port = app.port
    assert (await b.post("/pub", pub_body(port)))[0] == 200
    await wait_for(lambda: len(leaves(zk)) == 1, 2.0, "the published node")
    assert app.server is not None
    app.server.close()  # the application dies: no listener, connections cut
    app.abort_connections()
    await wait_for(lambda: leaves(zk) == [], 5.0, "the dead app's node to go")
    await app.start("127.0.0.1", port)
    await wait_for(lambda: len(leaves(zk)) == 1, 5.0, "the node back with the app")
    assert leaves(zk)[0][0] == f"127.0.0.1:{b.ingress}"
