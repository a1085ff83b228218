"""What ``GET /api/v1/clusters`` says of each host beyond its counts, and ``config_dump?sidecar``:
an in-process sidecar with static clusters in front of the demo provider and of ports nobody
listens on (dead hosts).

* ``ejected``, ``state`` and ``reason``: from the health the egress picks hosts with
  (regproxy.health.hosts.Health, the same ``describe()`` as /api/v1/stats's ``health.hosts``);
* ``effective_weight``: Dubbo's ``AbstractLoadBalance.getWeight`` (warm-up after the provider's
  ``timestamp``, over ``warmup`` ms) at the balancers' wall clock;
* ``errors``: ``ListenerStats.upstream_errors``, also ``regproxy_upstream_errors_total`` in /metrics;
  and the latency per host beside them (``upstream_latency``,
  ``regproxy_upstream_request_duration_seconds``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml

from regproxy import native
from regproxy.api.admin import host_state
from regproxy.config import load_config
from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.demo.provider import GREETINGS_SERVICE as GREET
from regproxy.demo.provider import Provider, default_services
from regproxy.dubbo.frame import Status
from regproxy.registry.memory import MemoryRegistry
from regproxy.routing.dubbo_balancers import warmup_weight
from regproxy.sidecar import Sidecar
from tests.ports import free_port
from tests.sidecars import loopback_listeners, samples
from tests.triple_stack import GREETER, start_stack, stop_stack
from tests.wait import wait_for

# Nothing listens on it: connecting is refused at once.
DEAD = f"127.0.0.1:{free_port()}"  # free_port never hands it out again in this process
# Only active checks (outlier detection off, so that it cannot eject the host first), fast.
ACTIVE_ONLY = {
    "active": {"interval_s": 0.1, "timeout_s": 0.5, "unhealthy_threshold": 2, "healthy_threshold": 2},
    "outlier": {"enabled": False},
    "app_check": {"enabled": False},
}
# Only outlier detection: 3 failures in a row eject a host for 60 s (the test is over long before).
OUTLIER_ONLY = {
    "active": {"enabled": False},
    "outlier": {"consecutive_failures": 3, "base_ejection_s": 60, "max_ejection_s": 120},
    "app_check": {"enabled": False},
}

Get = Callable[[str], Awaitable[Any]]
Start = Callable[..., Awaitable[tuple[Sidecar, Get]]]


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    app = Provider(default_services(), name="good")
    await app.start("127.0.0.1", 0)
    try:
        yield app
    finally:
        await app.close(grace=0.1)


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Starts a sidecar with the given clusters, one route per cluster (no retries: a request
    that fails on a host is answered with that failure) and health settings; gives it and a GET of
    its admin port (JSON, or the text of /metrics)."""
    MemoryRegistry.reset_all()
    started: list[Sidecar] = []
    http = aiohttp.ClientSession()

    async def run(clusters: list[dict[str, Any]], health: dict[str, Any]) -> tuple[Sidecar, Get]:
        config = loopback_listeners(
            advertise_ip="127.0.0.1",
            data_dir=str(tmp_path / f"data{len(started)}"),
            registries=["memory://"],
            clusters=[{k: v for k, v in c.items() if k != "service"} for c in clusters],
            routes=[
                {"name": c["name"], "match": {"service": c["service"]}, "cluster": c["name"], "retries": 0}
                for c in clusters
            ],
            health=health,
        )
        path = tmp_path / f"sidecar{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        sc = Sidecar(load_config(path))
        await sc.start()
        started.append(sc)

        async def get(what: str) -> Any:
            async with http.get(f"http://{config['admin']}{what}") as r:
                assert r.status == 200, (what, await r.text())
                return await r.text() if what == "/metrics" else await r.json()

        return sc, get

    try:
        yield run
    finally:
        await http.close()
        for sc in started:
            await sc.stop()


async def hosts_of(get: Get, cluster: str) -> dict[str, dict[str, Any]]:
    body = await get("/api/v1/clusters")
    (found,) = [c for c in body["clusters"] if c["name"] == cluster]
    return {h["address"]: h for h in found["hosts"]}


async def test_a_dead_host_is_ejected_with_its_errors_and_the_good_one_has_none(
    provider: Provider, start: Start
) -> None:
    good = f"127.0.0.1:{provider.port}"
    clusters = [
        {"name": "pair", "service": GREET, "lb": "round_robin",
         "hosts": [{"address": good}, {"address": DEAD}]},
        {"name": "empty", "service": "com.example.Empty", "hosts": []},
    ]  # fmt: skip
    sc, get = await start(clusters, OUTLIER_ONLY)
    client = await DubboClient.connect("127.0.0.1", sc.egress.address[1])
    failed = 0
    try:
        # Before any traffic: both available, full weight, no errors.
        hosts = await hosts_of(get, "pair")
        for address in (good, DEAD):
            h = hosts[address]
            assert (h["ejected"], h["state"], h["reason"], h["errors"]) == (False, "available", None, 0), h
            assert h["effective_weight"] == h["weight"] == 100  # no timestamp: no warm-up

        async def burst() -> bool:
            # Concurrent calls: round robin sends half of them to the dead host before its connect
            # fails (after which the pool passes it over for a second), each a failure for it.
            nonlocal failed
            results = await asyncio.gather(
                *(client.call(GREET, "sayHi", [f"n{i}"]) for i in range(10)), return_exceptions=True
            )
            for r in results:
                if isinstance(r, DubboCallError):
                    failed += 1
                else:
                    assert r in {f"hi, n{i}" for i in range(10)}, r
            return (await hosts_of(get, "pair"))[DEAD]["ejected"]

        await wait_for(burst, 10, "the dead host ejected", interval=0.1)
        # Requests that tried no host are nobody's errors: one no route takes, one to a cluster
        # without hosts (answered by the forwarder's _fail, as the dead host's failures were).
        for service in ("com.example.Nowhere", "com.example.Empty"):
            with pytest.raises(DubboCallError) as no_host:
                await client.call(service, "x", [])
            assert no_host.value.status == Status.SERVICE_NOT_FOUND, service

        hosts = await hosts_of(get, "pair")
        dead, ok = hosts[DEAD], hosts[good]
        assert (dead["ejected"], dead["state"]) == (True, "ejected"), dead
        assert re.fullmatch(
            r"ejected after 3 consecutive failures, back in \d+\.\d s \(ejection 1 of this host\)",
            dead["reason"],
        ), dead["reason"]
        assert 50 < float(dead["reason"].split("back in ")[1].split(" s")[0]) <= 60
        # Every call that failed was the dead host's, and only those.
        assert failed > 0 and dead["errors"] == failed, (failed, dead)
        assert dead["healthy"] is True  # the routing table's word: outlier detection is another
        assert (ok["ejected"], ok["state"], ok["reason"], ok["errors"]) == (False, "available", None, 0), ok
        assert ok["total_requests"] > 0

        # The same source as /api/v1/stats's health view, and the counter behind both.
        stats = await get("/api/v1/stats")
        assert stats["health"]["hosts"][DEAD]["ejected"] is True
        assert stats["egress"]["upstream_errors"] == {DEAD: failed}
        m = samples(await get("/metrics"))
        labels = {"listener": "egress", "protocol": "dubbo", "address": DEAD}
        assert m[("regproxy_upstream_errors_total", frozenset(labels.items()))] == failed
        assert not [k for k in m if k[0] == "regproxy_upstream_errors_total" and ("address", good) in k[1]]
        # Latency per host: every call once, by the host that answered it or failed it (a refused
        # connect is answered by the forwarder's _fail: the dead host's latency too).
        duration = "regproxy_upstream_request_duration_seconds_count"
        assert m[(duration, frozenset(labels.items()))] == failed
        good_labels = frozenset({**labels, "address": good}.items())
        assert m[(duration, good_labels)] == ok["total_requests"]
        assert stats["egress"]["upstream_latency"][good]["count"] == ok["total_requests"]
        assert stats["egress"]["upstream_latency"][DEAD]["count"] == failed
    finally:
        client.close()


async def test_an_error_status_the_host_answers_counts_for_it(provider: Provider, start: Start) -> None:
    """The other Dubbo error path: a response with an error status (the demo provider answers
    SERVICE_ERROR for a method it does not have), counted by ``on_responses``."""
    good = f"127.0.0.1:{provider.port}"
    sc, get = await start([{"name": "one", "service": GREET, "hosts": [{"address": good}]}], OUTLIER_ONLY)
    client = await DubboClient.connect("127.0.0.1", sc.egress.address[1])
    try:
        assert await client.call(GREET, "sayHi", ["a"]) == "hi, a"
        for _ in range(2):
            with pytest.raises(DubboCallError) as err:
                await client.call(GREET, "nope", [])
            assert err.value.status == Status.SERVICE_ERROR
        h = (await hosts_of(get, "one"))[good]
        assert (h["total_requests"], h["errors"], h["state"]) == (3, 2, "available"), h
        # All three answered by the host, its errors too: three in its latency histogram.
        latency = (await get("/api/v1/stats"))["egress"]["upstream_latency"][good]
        assert latency["count"] == 3 and 0 < latency["sum"] < 1, latency
    finally:
        client.close()


async def test_a_host_failing_its_active_checks_is_unhealthy_with_the_checks_error(
    provider: Provider, start: Start
) -> None:
    good = f"127.0.0.1:{provider.port}"
    clusters = [{"name": "checked", "service": GREET, "hosts": [{"address": good}, {"address": DEAD}]}]
    _, get = await start(clusters, ACTIVE_ONLY)

    async def unhealthy() -> bool:
        return (await hosts_of(get, "checked"))[DEAD]["state"] == "unhealthy"

    await wait_for(unhealthy, 10, "the dead host unhealthy by its active checks")
    hosts = await hosts_of(get, "checked")
    stats = await get("/api/v1/stats")
    checked = stats["health"]["hosts"][DEAD]
    assert checked["healthy"] is False and checked["last_error"]
    dead = hosts[DEAD]
    # The check's own words for people: a refused connect, as the OS says it.
    assert dead["reason"] == checked["last_error"] and "refused" in dead["reason"].lower(), dead
    assert (dead["ejected"], dead["errors"]) == (False, 0)  # no request sent: the checks found it
    ok = hosts[good]
    assert (ok["state"], ok["reason"]) == ("available", None), ok


async def test_effective_weight_is_lower_while_a_provider_warms_up(start: Start) -> None:
    """``AbstractLoadBalance.getWeight``: ``timestamp`` (the provider's start, wall-clock ms) and
    ``warmup`` (ms) scale the weight down until the warm-up is over; then it is the weight."""
    stamp = int(time.time() * 1000) - 1000  # started a second ago
    warm = f"127.0.0.1:{free_port()}"
    steady = f"127.0.0.1:{free_port()}"
    clusters = [{"name": "warming", "service": GREET, "hosts": [
        {"address": warm, "weight": 100, "metadata": {"timestamp": str(stamp), "warmup": "4000"}},
        {"address": steady, "weight": 40, "metadata": {"timestamp": str(stamp - 60_000), "warmup": "4000"}},
    ]}]  # fmt: skip
    _, get = await start(clusters, {"active": {"enabled": False}, "outlier": {"enabled": False},
                                    "app_check": {"enabled": False}})  # fmt: skip
    before = int(time.time() * 1000)
    hosts = await hosts_of(get, "warming")
    after = int(time.time() * 1000)
    weight = hosts[warm]["effective_weight"]
    # What Dubbo computes for the uptime the request saw (a monotonic clock would give 1 or 100).
    assert warmup_weight(before - stamp, 4000, 100) <= weight <= warmup_weight(after - stamp, 4000, 100)
    assert 1 < weight < hosts[warm]["weight"] == 100, hosts[warm]
    assert hosts[steady]["effective_weight"] == hosts[steady]["weight"] == 40  # warmed up long ago

    async def warmed() -> bool:
        return (await hosts_of(get, "warming"))[warm]["effective_weight"] == 100

    took = await wait_for(warmed, 8, "the warm-up over")
    assert time.time() * 1000 - stamp >= 4000 - 50, took


async def test_config_dump_sidecar_has_the_version_and_the_data_path(start: Start) -> None:
    _, get = await start([], {"active": {"enabled": False}, "app_check": {"enabled": False}})
    dump = await get("/api/v1/config_dump?sidecar")
    assert list(dump) == ["sidecar"]
    info = dump["sidecar"]
    assert info["version"] == importlib.metadata.version("regproxy")
    assert info["data_path"] == native.describe() and info["data_path"]
    assert info["log_level"] and info["uptime_s"] >= 0 and info["advertise_ip"] == "127.0.0.1"
    both = await get("/api/v1/config_dump?sidecar&alllisteners")
    assert set(both) == {"sidecar", "listeners"}
    whole = (await get("/api/v1/config_dump"))["sidecar"]
    assert (whole["version"], whole["data_path"]) == (info["version"], info["data_path"])


def test_host_state_in_words() -> None:
    """The table's ``healthy=False`` alone is unhealthy; a failing active check wins over an
    ejection (it ends on a timer, the check only when the host answers)."""
    ejected = {"healthy": True, "ejected": True, "ejected_for_s": 12.34, "ejections": 2}
    assert host_state(True, None, 5) == ("available", None)
    assert host_state(True, {"healthy": True, "ejected": False}, 5) == ("available", None)
    assert host_state(False, None, 5) == ("unhealthy", "marked unhealthy in the routing table")
    assert host_state(True, ejected, 5) == (
        "ejected",
        "ejected after 5 consecutive failures, back in 12.3 s (ejection 2 of this host)",
    )
    failing = {**ejected, "healthy": False, "last_error": "Connection refused"}
    assert host_state(True, failing, 5) == ("unhealthy", "Connection refused")
    assert host_state(False, failing, 5) == ("unhealthy", "Connection refused")
    answering = {**failing, "last_error": None}  # answered again, not healthy_threshold times yet
    state, reason = host_state(True, answering, 5)
    assert state == "unhealthy" and reason and "active health checks" in reason


async def test_triple_errors_count_for_the_host_tried_and_not_without_one() -> None:
    """regproxy.triple.forwarder: a call ended with a grpc-status other than 0 counts for its last
    host (the egress's ingress, the ingress's application); one with no route counts for none."""
    stack = await start_stack()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.egress_port}") as ch:
            assert await ch.unary_unary(f"/{GREETER}/greet")(b"x", timeout=5) == b"app0:x"
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await ch.unary_unary(f"/{GREETER}/fail")(b"thing", timeout=5)
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as no_route:
                await ch.unary_unary("/com.example.Nowhere/call")(b"x", timeout=5)
            assert no_route.value.code() == grpc.StatusCode.UNAVAILABLE
        egress = stack.egress.forwarder.triple  # type: ignore[union-attr]
        ingress = stack.ingress.forwarder.triple  # type: ignore[union-attr]
        assert egress is not None and ingress is not None
        assert egress.stats.upstream_errors == {stack.ingress_address: 1}
        assert egress.stats.upstream_requests == {stack.ingress_address: 2}
        (app,) = ingress.stats.upstream_requests
        assert ingress.stats.upstream_errors == {app: 1}
        assert egress.stats.snapshot()["upstream_errors"] == {stack.ingress_address: 1}
        # Both calls that reached a host are in its latency; the one with no route in nobody's.
        assert {a: h.count for a, h in egress.stats.upstream_latency.items()} == {stack.ingress_address: 2}
        assert {a: h.count for a, h in ingress.stats.upstream_latency.items()} == {app: 2}
    finally:
        await stop_stack(stack)
