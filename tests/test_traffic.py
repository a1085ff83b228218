"""Traffic management with real traffic: client -> egress -> ingress -> demo providers, in-process.

Providers carry metadata through the static cluster's hosts (as a registry's provider URL
parameters would); which host served a request is read from the egress's per-upstream counter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
import yaml

from regproxy.config import Config, ConfigError, load_config
from regproxy.demo.client import DubboClient
from regproxy.demo.provider import serve
from regproxy.dubbo.frame import Status
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.registry.memory import MemoryRegistry
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.routing.from_config import rule_set, static_table
from regproxy.sidecar import Sidecar, _reload_on_signal
from tests.ports import free_port
from tests.sidecars import loopback_listeners


def app_table(port: int) -> RoutingTable:
    """An ingress table that sends every service to the app on ``port``: these tests exercise the
    proxy engine, not which services the ingress admits (tests/test_security.py does that)."""
    app = Cluster(name="app", hosts=(Host(address=f"127.0.0.1:{port}"),))
    return RoutingTable(
        routes=[Route(name="app", match=RouteMatch(service="*"), cluster="app", retries=0)], clusters=[app]
    )


GREET = "org.apache.dubbo.samples.api.GreetingsService"


def settings() -> ListenerSettings:
    return ListenerSettings(
        host="127.0.0.1",
        port=0,
        max_body=8 * 1024 * 1024,
        default_timeout_ms=3000,
        connect_timeout_ms=500,
        connections_per_host=1,
    )


@dataclass
class Fleet:
    providers: list[asyncio.AbstractServer]
    ingresses: list[Listener]
    egress: Listener | None = None

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{i.address[1]}" for i in self.ingresses]

    def config(self, rules: Sequence[dict[str, Any]], metas: Sequence[dict[str, str]], **extra: Any) -> dict:
        hosts = [{"address": a, "metadata": dict(m)} for a, m in zip(self.addresses, metas, strict=True)]
        return {
            "clusters": [{"name": "demo", "lb": "round_robin", "hosts": hosts}],
            # The last route plays the service's subscription: rules without a cluster default to it.
            "routes": [*rules, {"name": "greet", "match": {"service": GREET}, "cluster": "demo"}],
            **extra,
        }

    async def start_egress(self, cfg: dict) -> Listener:
        c = Config.from_dict(cfg)
        self.egress = Listener("egress", settings(), TableHolder(static_table(c)))
        await self.egress.start()
        assert self.egress.forwarder is not None
        self.egress.forwarder.rules = rule_set(c)
        return self.egress

    def served(self) -> list[int]:
        assert self.egress is not None and self.egress.forwarder is not None
        ups = self.egress.forwarder.stats.upstream_requests
        return [ups.get(a, 0) for a in self.addresses]

    async def client(self) -> DubboClient:
        assert self.egress is not None
        return await DubboClient.connect("127.0.0.1", self.egress.address[1])


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet([], [])
    for _ in range(2):
        p = await serve("127.0.0.1", 0)
        f.providers.append(p)
        ing = Listener("ingress", settings(), TableHolder(app_table(p.sockets[0].getsockname()[1])))
        await ing.start()
        f.ingresses.append(ing)
    yield f
    if f.egress is not None:
        await f.egress.stop()
    for ing in f.ingresses:
        await ing.stop()
    for p in f.providers:
        p.close()
        await p.wait_closed()


async def many(client: DubboClient, n: int, batch: int = 200, **kw: Any) -> list[Any]:
    """``n`` sayHi calls, ``batch`` at a time; the Response of each."""
    out: list[Any] = []
    for start in range(0, n, batch):
        out += await asyncio.gather(
            *(client.invoke(GREET, "sayHi", [f"n{i}"], **kw) for i in range(start, min(n, start + batch)))
        )
    return out


GRAY_STABLE = [{"env": "gray"}, {"env": "stable"}]


async def test_weighted_subsets_split_20_80(fleet: Fleet) -> None:
    rule = {
        "name": "canary",
        "match": {"service": GREET},
        "route": {
            "weighted_subsets": [
                {"subset": {"env": "gray"}, "weight": 20},
                {"subset": {"env": "stable"}, "weight": 80},
            ]
        },
    }
    await fleet.start_egress(fleet.config([rule], GRAY_STABLE))
    async with await fleet.client() as client:
        responses = await many(client, 5000)
    assert all(r.status == Status.OK for r in responses)
    gray, stable = fleet.served()
    assert gray + stable == 5000
    assert abs(gray / 5000 - 0.20) <= 0.03, (gray, stable)


async def test_attachment_match_sends_only_matching_requests_to_gray(fleet: Fleet) -> None:
    rules = [
        {
            "name": "gray-users",
            "match": {
                "service": {"prefix": "org.apache.dubbo."},
                "attachments": {"x-env": {"exact": "gray"}},
            },
            "route": {"weighted_subsets": [{"subset": {"env": "gray"}}]},
        },
        {
            "name": "everyone-else",
            "match": {"service": GREET, "method": {"regex": "say.*"}},
            "route": {"weighted_subsets": [{"subset": {"env": "stable"}}]},
        },
    ]
    await fleet.start_egress(fleet.config(rules, GRAY_STABLE))
    async with await fleet.client() as client:
        tagged = await many(client, 300, attachments={"x-env": "gray"})
        assert fleet.served() == [300, 0]
        other = await many(client, 300, attachments={"x-env": "grayish"})
        plain = await many(client, 300)
    assert all(r.status == Status.OK for r in tagged + other + plain)
    assert fleet.served() == [300, 600]


async def test_empty_subset_is_status_60_naming_it(fleet: Fleet) -> None:
    rule = {
        "name": "blue",
        "match": {"service": GREET},
        "route": {"weighted_subsets": [{"subset": {"env": "blue"}}]},
    }
    await fleet.start_egress(fleet.config([rule], GRAY_STABLE))
    async with await fleet.client() as client:
        resp = await client.invoke(GREET, "sayHi", ["x"])
    assert resp.status == Status.SERVICE_NOT_FOUND
    assert "subset {env=blue}" in (resp.error or "") and "'blue'" in (resp.error or "")


async def test_tag_routing_with_and_without_force(fleet: Fleet) -> None:
    await fleet.start_egress(fleet.config([], [{"dubbo.tag": "gray"}, {}]))
    async with await fleet.client() as client:
        assert all(r.status == Status.OK for r in await many(client, 50, attachments={"dubbo.tag": "gray"}))
        assert fleet.served() == [50, 0]
        # An unknown tag falls back to untagged providers; no tag goes to untagged providers only.
        assert all(r.status == Status.OK for r in await many(client, 50, attachments={"dubbo.tag": "blue"}))
        assert all(r.status == Status.OK for r in await many(client, 50))
        assert fleet.served() == [50, 100]
        forced = await client.invoke(
            GREET, "sayHi", ["x"], attachments={"dubbo.tag": "blue", "dubbo.force.tag": "true"}
        )
        assert forced.status == Status.SERVICE_NOT_FOUND and "tag 'blue'" in (forced.error or "")
        ok = await client.invoke(
            GREET, "sayHi", ["x"], attachments={"dubbo.tag": "gray", "dubbo.force.tag": "true"}
        )
        assert ok.status == Status.OK


async def test_retry_succeeds_on_second_host_when_first_refuses(fleet: Fleet) -> None:
    dead = f"127.0.0.1:{free_port()}"
    rule = {
        "name": "retry",
        "match": {"service": GREET},
        "route": {"retry": {"attempts": 1, "on": ["connect-failure"]}},
    }
    cfg = fleet.config([rule], GRAY_STABLE)
    cfg["clusters"][0]["hosts"] = [{"address": dead}, {"address": fleet.addresses[0]}]
    await fleet.start_egress(cfg)
    async with await fleet.client() as client:
        responses = [await client.invoke(GREET, "sayHi", [f"n{i}"]) for i in range(20)]
    assert all(r.status == Status.OK for r in responses), [
        r.error for r in responses if r.status != Status.OK
    ]
    assert fleet.egress is not None and fleet.egress.forwarder is not None
    assert fleet.egress.forwarder.stats.connect_failures >= 1
    assert fleet.egress.forwarder.stats.upstream_requests[fleet.addresses[0]] == 20


async def test_no_retry_when_the_route_says_zero(fleet: Fleet) -> None:
    dead = f"127.0.0.1:{free_port()}"
    rule = {"name": "once", "match": {"service": GREET}, "route": {"retry": {"attempts": 0}}}
    cfg = fleet.config([rule], GRAY_STABLE)
    cfg["clusters"][0]["hosts"] = [{"address": dead}]
    await fleet.start_egress(cfg)
    async with await fleet.client() as client:
        resp = await client.invoke(GREET, "sayHi", ["x"])
    assert resp.status == Status.SERVER_ERROR and "tried 1 host(s)" in (resp.error or "")


async def test_fault_abort_at_configured_rate(fleet: Fleet) -> None:
    rule = {
        "name": "drill",
        "match": {"service": GREET},
        "fault": {"abort": {"status": 70, "message": "drill abort", "percentage": 20}},
    }
    await fleet.start_egress(fleet.config([rule], GRAY_STABLE))
    async with await fleet.client() as client:
        responses = await many(client, 2000)
    aborted = [r for r in responses if r.status == Status.SERVICE_ERROR]
    assert all(r.status in (Status.OK, Status.SERVICE_ERROR) for r in responses)
    assert all("drill abort" in (r.error or "") for r in aborted)
    assert abs(len(aborted) / 2000 - 0.20) <= 0.03, len(aborted)


@pytest.mark.slow
async def test_fault_delay_at_configured_rate(fleet: Fleet) -> None:
    rule = {
        "name": "slow",
        "match": {"service": GREET},
        "fault": {"delay": {"fixed": "300ms", "percentage": 20}},
    }
    await fleet.start_egress(fleet.config([rule], GRAY_STABLE))
    async with await fleet.client() as client:

        async def timed(i: int) -> float:
            t0 = perf_counter()
            resp = await client.invoke(GREET, "sayHi", [f"n{i}"])
            assert resp.status == Status.OK
            return perf_counter() - t0

        durations: list[float] = []
        for start in range(0, 2000, 250):
            durations += await asyncio.gather(*(timed(i) for i in range(start, start + 250)))
    # The rate is the filter's own count; the durations show each delayed request took the delay.
    # (Counting slow responses alone also counts the ones a loaded machine made slow.)
    assert fleet.egress is not None and fleet.egress.forwarder is not None
    (chain,) = fleet.egress.forwarder.planner._filters.values()
    delayed = sum(getattr(f, "delayed", 0) for f in chain)
    assert abs(delayed / 2000 - 0.20) <= 0.03, delayed
    slow = sum(d >= 0.29 for d in durations)
    assert slow >= delayed, (slow, delayed)
    assert sorted(durations)[1000] < 0.29  # most requests were not delayed


async def test_rate_limit_rejects_the_excess_with_status_100(fleet: Fleet) -> None:
    rule = {
        "name": "limited",
        "match": {"service": GREET},
        "rate_limit": {"requests_per_second": 5, "burst": 20, "per": "method"},
    }
    await fleet.start_egress(fleet.config([rule], GRAY_STABLE))
    async with await fleet.client() as client:
        responses = await many(client, 100, batch=100)
    ok = [r for r in responses if r.status == Status.OK]
    limited = [r for r in responses if r.status == Status.SERVER_THREADPOOL_EXHAUSTED]
    assert len(ok) + len(limited) == 100
    assert 20 <= len(ok) <= 22, len(ok)  # the burst, plus what refills during the test
    assert "rate limited by rule 'limited'" in (limited[0].error or "")


async def test_access_log_one_line_per_request(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    from regproxy.proxy.filters import AccessLog

    egress = await fleet.start_egress(fleet.config([], GRAY_STABLE))
    assert egress.forwarder is not None
    egress.forwarder.access_log = AccessLog(True)
    with caplog.at_level(logging.INFO, logger="regproxy.access"):
        async with await fleet.client() as client:
            await many(client, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "regproxy.access"]
    assert len(lines) == 3
    assert lines[0].startswith(f"egress {GREET} sayHi upstream=127.0.0.1:") and "status=20" in lines[0]


# --- reload through a whole Sidecar --------------------------------------------------------------


def sidecar_config(fleet: Fleet, tmp_path: Path, weights: tuple[int, int]) -> dict[str, Any]:
    rule = {
        "name": "canary",
        "match": {"service": GREET},
        "route": {
            "weighted_subsets": [
                {"subset": {"env": "gray"}, "weight": weights[0]},
                {"subset": {"env": "stable"}, "weight": weights[1]},
            ]
        },
    }
    return loopback_listeners(
        advertise_ip="127.0.0.1",
        data_dir=str(tmp_path),
        registries=["memory://"],
        **fleet.config([rule], GRAY_STABLE),
    )


async def test_reload_under_traffic_drops_nothing_and_bad_reload_is_refused(
    fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    MemoryRegistry.reset_all()
    path = tmp_path / "regproxy.yaml"
    data = sidecar_config(fleet, tmp_path, (100, 0))
    path.write_text(yaml.safe_dump(data))
    sc = Sidecar(load_config(path), loader=lambda: load_config(path), config_path=str(path))
    await sc.start()
    try:
        assert sc.egress.forwarder is not None
        ups = sc.egress.forwarder.stats.upstream_requests
        gray, stable = fleet.addresses
        client = await DubboClient.connect("127.0.0.1", sc.egress.address[1])
        stop = asyncio.Event()

        async def traffic() -> list[Any]:
            out: list[Any] = []
            while not stop.is_set():
                out += await asyncio.gather(*(client.invoke(GREET, "sayHi", ["x"]) for _ in range(20)))
            return out

        task = asyncio.create_task(traffic())
        for i in range(10):
            data["routes"][0]["route"]["weighted_subsets"][0]["weight"] = 0 if i % 2 == 0 else 100
            data["routes"][0]["route"]["weighted_subsets"][1]["weight"] = 100 if i % 2 == 0 else 0
            path.write_text(yaml.safe_dump(data))
            result = await sc.reload()
            assert result["reloaded"] and "static routes and clusters" in result["changes"]
            await asyncio.sleep(0.03)
        stop.set()
        responses = await task
        assert len(responses) > 100
        assert all(r.status == Status.OK for r in responses), {r.error for r in responses if r.status != 20}
        assert ups[gray] > 0 and ups[stable] > 0

        # The last reload sent everything to gray; a bad config changes nothing and is named.
        before = ups[stable]
        bad = {**data, "routes": [{**data["routes"][0], "route": {"timeout": "soon"}}, data["routes"][1]]}
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError) as info:
            await sc.reload()
        assert "routes[0].route.timeout" in str(info.value) and "'soon' is not a duration" in str(info.value)
        with caplog.at_level(logging.ERROR, logger="regproxy"):
            await _reload_on_signal(sc)  # what SIGHUP does
        assert any("SIGHUP: reload refused" in r.getMessage() for r in caplog.records)
        assert all(r.status == Status.OK for r in await many(client, 50))
        assert ups[stable] == before
        client.close()
    finally:
        await sc.stop()
