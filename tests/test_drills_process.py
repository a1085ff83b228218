"""Process and data-path fault drills (issue 8): a real ZooKeeper, real sidecar and application
processes, traffic running.  Each drill prints one line saying what happened (requests sent,
failed, retried, time to recover) and asserts its bound; docs/reliability.md lists the figures.

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q -s tests/test_drills_process.py
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import aiohttp
import pytest
import yaml
from kazoo.client import KazooClient

from regproxy.demo.client import DubboClient, DubboError
from regproxy.demo.provider import Provider, default_services
from regproxy.discovery import PublishSpec, ingress_table
from regproxy.dubbo.encode import encode_response
from regproxy.dubbo.frame import FrameParser, Status
from regproxy.proxy.engine import Listener
from regproxy.routing import TableHolder
from regproxy.routing.from_config import rule_set, static_table
from tests.ports import free_port
from tests.sidecars import ROOT, SidecarProc
from tests.test_proxy_e2e import ECHO, egress_table, settings
from tests.topology import GREET, PROVIDERS, VERSION, pub_body
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

CLUSTER = f"{GREET}:{VERSION}"  # the egress cluster a subscription to GREET 1.0.0 makes

# Every sidecar of the process drills runs with this file (flags override the rest).  The route
# allows retrying a request that may have run (`reset`) and one an upstream says it did not run
# (`unavailable`: a provider sidecar whose application is down answers 60); the application is
# checked every second so a dead one leaves the registry well inside the 5 s bound; a provider the
# consumer ejected (outlier detection) comes back after 2 s, not 10, to keep the drills short.
DRILL_CONFIG: dict[str, Any] = {
    "routes": [
        {
            "name": "greet-retry",
            "match": {"service": GREET},
            "route": {"retry": {"attempts": 2, "on": ["connect-failure", "reset", "unavailable"]}},
        }
    ],
    "health": {
        "app_check": {"interval_s": 1, "timeout_s": 0.5, "failures": 2},
        "outlier": {"base_ejection_s": 2},
    },
}


def report(drill: str, **figures: object) -> None:
    """The drill's one-line summary (pytest -s shows it; -rA keeps it in the report)."""
    print(f"\nDRILL {drill}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# ---------------------------------------------------------------------------------------------------
# Processes


class AppProc:
    """The demo provider as its own process (`regproxy demo-provider`), so it can be killed -9."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "regproxy", "demo-provider", "--port", str(self.port),
                "--name", self.name, "--greetings-version", VERSION, "--log-level", "warning"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=log, cwd=str(ROOT))
        proc = self.proc

        async def listening() -> bool:
            assert proc.returncode is None, f"{self.name} exited: {self.log_path.read_text()}"
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            w.close()
            return True

        await wait_for(listening, timeout, f"{self.name} listening on {self.port}", interval=0.05)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # SIGKILL: no read-only event, no unpublish, sockets reset by the kernel
            await self.proc.wait()


HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http, http.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.json()


async def egress_stats(sc: SidecarProc) -> dict[str, Any]:
    stats: dict[str, Any] = (await get_json(sc.admin_url + "/api/v1/stats"))["egress"]
    return stats


async def cluster_hosts(sc: SidecarProc, cluster: str = CLUSTER) -> set[str]:
    """Host addresses of an egress cluster, as the consumer sidecar routes right now."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        url = f"{sc.admin_url}/api/v1/config_dump?cluster={cluster}"
        async with http.get(url) as resp:
            if resp.status == 404:
                return set()
            reply = await resp.json()
    return {h["address"] for c in reply["clusters"] if c["listener"] == "egress" for h in c["hosts"]}


# ---------------------------------------------------------------------------------------------------
# Traffic: several connections, each one call at a time, every outcome time-stamped


@dataclass
class Load:
    """``connections`` callers through one egress, each with one call in flight at most, so the
    requests in flight at any instant are at most ``connections``."""

    port: int
    connections: int = 8
    pause_s: float = 0.005
    timeout_s: float = 5.0
    ok: list[float] = field(default_factory=list)  # monotonic time of each success
    failed: list[tuple[float, float, str]] = field(default_factory=list)  # (time, latency, why)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False

    @property
    def sent(self) -> int:
        return len(self.ok) + len(self.failed)

    async def _caller(self, i: int) -> None:
        client = await DubboClient.connect("127.0.0.1", self.port)
        try:
            while not self.stopping:
                t0 = time.monotonic()
                try:
                    await client.call(GREET, "sayHi", [f"c{i}"], version=VERSION, timeout=self.timeout_s)
                    self.ok.append(time.monotonic())
                except DubboError as exc:
                    now = time.monotonic()
                    self.failed.append((now, now - t0, str(exc)))
                    if client.is_closed:
                        client = await DubboClient.connect("127.0.0.1", self.port)
                await asyncio.sleep(self.pause_s)
        finally:
            client.close()

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self._caller(i)) for i in range(self.connections)]

    async def stop(self) -> None:
        self.stopping = True  # as well as the cancel: a drill must end even if a cancel got lost
        for t in self.tasks:
            t.cancel()
        results = await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 15)
        errors = [r for r in results if not isinstance(r, asyncio.CancelledError)]
        assert not errors, errors  # a caller that died would hide failures

    def ok_after(self, t: float) -> int:
        return sum(1 for x in self.ok if x > t)


# ---------------------------------------------------------------------------------------------------
# The world of the process drills: ZooKeeper, provider apps and sidecars, one consumer sidecar


@dataclass
class Drill:
    zk_server: ZooKeeperServer
    apps: list[AppProc]
    providers: list[SidecarProc]
    consumer: SidecarProc

    def ingress(self, i: int) -> str:
        return f"127.0.0.1:{self.providers[i].ingress}"


def build_drill(zk_server: ZooKeeperServer, tmp_path: Path, n: int) -> Drill:
    cfg = tmp_path / "drill.yaml"
    cfg.write_text(yaml.safe_dump(DRILL_CONFIG))
    registry = f"zookeeper://{zk_server.hosts}"
    apps = [AppProc(f"app-{i}", tmp_path) for i in range(n)]
    providers = [
        SidecarProc(
            f"p{i}",
            tmp_path / f"p{i}",
            registries=[registry],
            app_port=app.port,
            extra=["--config", str(cfg)],
        )
        for i, app in enumerate(apps)
    ]
    consumer = SidecarProc(
        "a", tmp_path / "a", registries=[registry], app_port=1, extra=["--config", str(cfg)]
    )
    return Drill(zk_server, apps, providers, consumer)


async def start_drill(d: Drill) -> None:
    """Everything up, every app published through its sidecar, the consumer routing to them all."""
    await asyncio.gather(*(x.start() for x in (*d.apps, *d.providers, d.consumer)))
    for app, p in zip(d.apps, d.providers, strict=True):
        status, body = await p.post("/pub", pub_body(app.port))
        assert status == 200, body
    status, body = await d.consumer.post("/sub", {"service": {"interface": GREET, "version": VERSION}})
    assert status == 200 and body["cluster"] == CLUSTER, body
    want = {d.ingress(i) for i in range(len(d.providers))}
    await wait_for(lambda: _has_hosts(d.consumer, want), 10, f"the consumer routing to {want}")


async def _has_hosts(consumer: SidecarProc, want: set[str]) -> bool:
    return await cluster_hosts(consumer) == want


async def _reached(consumer: SidecarProc, address: str) -> bool:
    """Whether the consumer's egress has sent requests to ``address``."""
    return bool((await egress_stats(consumer))["upstream_requests"].get(address, 0))


async def stop_drill(d: Drill) -> None:
    if not d.zk_server.running:
        d.zk_server.start()
    for x in (d.consumer, *d.providers, *d.apps):
        await x.kill()


@pytest.fixture
async def drill(
    request: pytest.FixtureRequest, zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path
) -> AsyncIterator[Drill]:
    """The world with ``request.param`` providers (parametrize with indirect=True); ``zk`` has
    emptied /dubbo."""
    d = build_drill(zk_server, tmp_path, request.param)
    try:
        await start_drill(d)
        yield d
    finally:
        await stop_drill(d)


# ---------------------------------------------------------------------------------------------------
# Drill 1: a provider application killed with kill -9


@pytest.mark.process
@pytest.mark.parametrize("drill", [2], indirect=True, ids=["two-providers"])
async def test_drill_provider_app_killed(drill: Drill, zk: KazooClient) -> None:
    """Two providers, each app behind its own sidecar; one app is SIGKILLed under traffic.

    Bound: failures only among the requests in flight to it at the kill (at most one per caller),
    the rest retried on the other provider; its publication gone from ZooKeeper within 5 s."""
    d = drill
    dead, alive = d.ingress(0), d.ingress(1)
    load = Load(d.consumer.egress, connections=8)
    load.start()
    try:
        await wait_for(lambda: _reached(d.consumer, dead), 10, "traffic to the first provider")
        before = await egress_stats(d.consumer)
        assert not load.failed, load.failed[:3]
        t_kill = time.monotonic()
        await d.apps[0].kill()
        await wait_for(
            lambda: list(provider_nodes(zk)) == [alive], 5.0, "the dead app's node to go", in_thread=True
        )
        withdrawn_s = time.monotonic() - t_kill
        routed_s = await wait_for(lambda: _has_hosts(d.consumer, {alive}), 5.0, "the consumer to drop it")
        routed_s += withdrawn_s
        # Traffic goes on on the survivor: 100 calls answered once the dead app was withdrawn.
        await wait_for(lambda: load.ok_after(t_kill + withdrawn_s) > 100, 10, "traffic on the survivor")
        after = await egress_stats(d.consumer)
    finally:
        await load.stop()
    retried = after["retries"] - before["retries"]
    report(
        "provider-app-kill9",
        sent=load.sent,
        failed=len(load.failed),
        retried=retried,
        unpublished_s=round(withdrawn_s, 2),
        consumer_rerouted_s=round(routed_s, 2),
        ok_after_kill=load.ok_after(t_kill),
    )
    # Only requests that were inside the killed app may fail (at most one per caller); one that was
    # never written to it (connection refused) did not run and must have been retried.
    assert len(load.failed) <= load.connections, load.failed[:5]
    assert all("in flight" in why for _, _, why in load.failed), load.failed[:5]
    assert all(t < t_kill + 1.0 for t, _, _ in load.failed), "a failure long after the kill"
    assert withdrawn_s < 5.0


# ---------------------------------------------------------------------------------------------------
# Drill 2: the provider sidecar killed with kill -9, then restarted on the same data directory


def provider_nodes(zk: KazooClient) -> dict[str, list[int]]:
    """Provider nodes in ZooKeeper: address -> the sessions owning its nodes (one per node).

    Every read is bounded: a kazoo call that never returns would otherwise block the thread the
    drill waits on, and the drill would hang instead of failing."""
    out: dict[str, list[int]] = {}
    if not zk.exists_async(PROVIDERS).get(timeout=5):
        return out
    for leaf in zk.get_children_async(PROVIDERS).get(timeout=5):
        stat = zk.exists_async(f"{PROVIDERS}/{leaf}").get(timeout=5)
        if stat is not None:
            out.setdefault(urlsplit(unquote_plus(leaf)).netloc, []).append(stat.ephemeralOwner)
    return out


@pytest.mark.process
@pytest.mark.parametrize("drill", [1, 2], indirect=True, ids=["alone", "with-peer"])
async def test_drill_provider_sidecar_killed_and_restarted(drill: Drill, zk: KazooClient) -> None:
    """A provider sidecar is SIGKILLed under traffic, down 1 s, then started again with the same
    data directory and flags (no /pub from anyone).

    Bound, always: the restarted sidecar re-creates its publication from the state file under its
    new ZooKeeper session within 5 s and serves traffic again within 5 s of its start.  Alone (the
    only provider): every request in the outage is answered with an error at once (none hangs)
    and nothing fails once traffic is back.  With a peer: no request fails (those lost in flight
    are retried under `reset`, those refused under `connect-failure`)."""
    d = drill
    p = d.providers[0]
    address = d.ingress(0)
    load = Load(d.consumer.egress, connections=4)
    load.start()
    try:
        await wait_for(lambda: len(load.ok) > 50, 10, "steady traffic before the kill")
        assert not load.failed, load.failed[:3]
        (old_owner,) = (await asyncio.to_thread(provider_nodes, zk))[address]
        before = await egress_stats(d.consumer)
        t_kill = time.monotonic()
        await p.kill()
        await asyncio.sleep(1.0)
        await p.start()
        t_up = time.monotonic()

        def restored() -> bool:
            # One node, owned by the new session: the leftover of the killed one (its session lives
            # on until it times out) was replaced, so that session's expiry cannot take it away.
            owners = provider_nodes(zk).get(address, [])
            return len(owners) == 1 and owners[0] != old_owner

        await wait_for(restored, 5.0, "the publication re-created by the restarted sidecar", in_thread=True)
        restored_s = time.monotonic() - t_up

        async def served_again() -> bool:
            stats = await get_json(p.admin_url + "/api/v1/stats")
            return bool(stats["ingress"]["responses"].get("20", 0) > 0)

        served_s = await wait_for(served_again, 5.0, "the restarted sidecar to serve traffic")
        # Steady traffic through the restarted sidecar.
        await wait_for(
            lambda: load.ok_after(t_up + served_s) > 50, 10, "50 calls through the restarted sidecar"
        )
        after = await egress_stats(d.consumer)
    finally:
        await load.stop()
    status, pubs = await p.post("/pub", pub_body(d.apps[0].port))  # idempotent: the same URL again
    assert status == 200, pubs
    outage = [f for f in load.failed if f[0] < t_up + served_s + 0.5]
    report(
        f"provider-sidecar-kill9-restart-{'alone' if len(d.providers) == 1 else 'with-peer'}",
        sent=load.sent,
        failed=len(load.failed),
        retried=after["retries"] - before["retries"],
        sidecar_down_s=round(t_up - t_kill, 2),
        republished_after_start_s=round(restored_s, 2),
        served_after_start_s=round(served_s, 2),
        traffic_back_after_kill_s=round(t_up + served_s - t_kill, 2),
        slowest_failure_s=round(max((f[1] for f in load.failed), default=0.0), 3),
    )
    if len(d.providers) == 1:
        assert load.failed, "killing the only provider's sidecar failed nothing: the drill did not happen"
        assert all(f[1] < 1.5 for f in load.failed), "a request hung in the outage"
        assert outage == load.failed, "requests failed after traffic was back"
    else:
        assert not load.failed, load.failed[:3]


# ---------------------------------------------------------------------------------------------------
# In-process stacks for the data-path drills: egress -> ingress (set up as a sidecar sets it up) ->
# an application, on real loopback sockets


def ingress_listener(app_port: int) -> Listener:
    """An ingress as a sidecar runs it, with GreetingsService and EchoService published."""
    s = settings(default_timeout_ms=60_000)  # timeouts.ingress_ms's default
    s.timeout_from_attachment = False  # the consumer's egress enforces deadlines
    published = [PublishSpec(GREET, app_port), PublishSpec(ECHO, app_port)]
    return Listener("ingress", s, TableHolder(ingress_table(published)))


def upstream_idle(lst: Listener) -> bool:
    """Nothing in flight and nothing left in any upstream connection's maps."""
    fwd = lst.forwarder
    assert fwd is not None
    conns = [c for cs in fwd.pool._conns.values() for c in cs]
    return fwd.in_flight == 0 and all(not c.pending and not c.waiting for c in conns)


class ResettingApp(asyncio.Protocol):
    """A provider that answers every request ("ok"), except that while ``armed[0]`` > 0 a connection
    collects that many requests, answers none and resets (SO_LINGER 0: RST, not FIN)."""

    def __init__(self, armed: list[int], received: list[int]) -> None:
        self.armed = armed
        self.received = received
        self.parser = FrameParser()
        self.held = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        out = []
        for frame in self.parser.feed(data):
            if not frame.is_request or frame.is_event:
                continue
            self.received[0] += 1
            if self.armed[0] > 0:
                self.held += 1
                if self.held >= self.armed[0]:
                    self.armed[0] = 0
                    sock = self.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.transport.abort()
                    return
            else:
                out.append(encode_response(frame.request_id, "ok"))
        if out:
            self.transport.write(b"".join(out))


async def test_drill_upstream_resets_mid_request() -> None:
    """The application takes 20 requests and resets the connection: each of the 20 gets an error
    response through both hops at once (never a hang until the deadline); the next requests
    succeed.  Then the egress in front of a resetting and a healthy provider with
    `retry.on: [reset]`: no request fails, the lost ones are retried."""
    from regproxy.config import Config

    loop = asyncio.get_running_loop()
    armed, received = [0], [0]
    app = await loop.create_server(lambda: ResettingApp(armed, received), "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    ingress = ingress_listener(app_port)
    await ingress.start()
    egress = Listener("egress", settings(), TableHolder(egress_table(f"127.0.0.1:{ingress.address[1]}")))
    await egress.start()
    client = await DubboClient.connect("127.0.0.1", egress.address[1])
    try:
        assert (await client.invoke(GREET, "sayHi", ["warm"])).status == Status.OK
        armed[0] = 20

        async def timed(i: int) -> tuple[float, int, str]:
            t0 = time.monotonic()
            r = await client.invoke(GREET, "sayHi", [f"r{i}"], timeout=5)  # deadline 5 s
            return time.monotonic() - t0, r.status, r.error or ""

        lost = await asyncio.wait_for(asyncio.gather(*(timed(i) for i in range(20))), 4)
        after = await asyncio.wait_for(asyncio.gather(*(timed(i) for i in range(50))), 4)
        await wait_for(lambda: upstream_idle(egress) and upstream_idle(ingress), 2, "idle")
    finally:
        client.close()
        await egress.stop()
        await ingress.stop()

    # The same with a retry policy at the egress, a resetting and a healthy provider behind it.
    armed2, received2 = [0], [0]
    good = await loop.create_server(lambda: ResettingApp([0], [0]), "127.0.0.1", 0)
    bad = await loop.create_server(lambda: ResettingApp(armed2, received2), "127.0.0.1", 0)
    hosts = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in (bad, good)]
    cfg = Config.from_dict(
        {
            "clusters": [{"name": "demo", "hosts": [{"address": h} for h in hosts]}],
            "routes": [
                {
                    "name": "r",
                    "match": {"service": GREET},
                    "cluster": "demo",
                    "route": {"retry": {"attempts": 1, "on": ["reset"]}},
                }
            ],
        }
    )
    egress = Listener("egress", settings(), TableHolder(static_table(cfg)))
    await egress.start()
    assert egress.forwarder is not None
    egress.forwarder.rules = rule_set(cfg)
    client = await DubboClient.connect("127.0.0.1", egress.address[1])
    try:
        assert (await client.invoke(GREET, "sayHi", ["warm"])).status == Status.OK  # connects both
        assert (await client.invoke(GREET, "sayHi", ["warm"])).status == Status.OK
        armed2[0] = 10
        retried = await asyncio.wait_for(
            asyncio.gather(*(client.invoke(GREET, "sayHi", [f"x{i}"], timeout=5) for i in range(40))), 4
        )
        retries = egress.forwarder.stats.retries
    finally:
        client.close()
        await egress.stop()
        for s in (app, good, bad):
            s.close()

    errors = [(lat, st, why) for lat, st, why in lost if st != Status.OK]
    report(
        "upstream-reset-mid-request",
        sent=len(lost) + len(after),
        failed=len(errors),
        in_flight_at_reset=20,
        slowest_error_s=round(max(lat for lat, _, _ in lost), 3),
        failed_after_reset=sum(st != Status.OK for _, st, _ in after),
        with_reset_retry_sent=len(retried),
        with_reset_retry_failed=sum(r.status != Status.OK for r in retried),
        with_reset_retry_retried=retries,
    )
    assert len(errors) == 20 and all(
        st == Status.SERVER_ERROR and "in flight" in why for _, st, why in errors
    )
    assert max(lat for lat, _, _ in lost) < 1.0, "an error waited for the deadline instead of the reset"
    assert all(st == Status.OK for _, st, _ in after), after[:3]
    assert received2[0] >= 10 and retries >= 10
    assert all(r.status == Status.OK for r in retried), [r.error for r in retried if r.status != Status.OK][
        :3
    ]


# ---------------------------------------------------------------------------------------------------
# Drill 4: a slow provider; deadlines kept, nothing kept after them


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_drill_slow_provider_deadlines_and_memory() -> None:
    """The provider answers after the caller's deadline.  Bound: the timeout error is answered at
    the deadline ±100 ms (200 ms, 500 ms, 1 s); after thousands of timed-out requests nothing is
    left in the forwarders (pending maps, in flight), the late answers are dropped (never sent to
    the client), and traced memory grows by less than 256 KiB over 8,000 of them."""
    app = Provider(default_services(), name="slow")
    await app.start("127.0.0.1", 0)
    ingress = ingress_listener(app.port)
    await ingress.start()
    egress = Listener("egress", settings(), TableHolder(egress_table(f"127.0.0.1:{ingress.address[1]}")))
    await egress.start()
    assert egress.forwarder is not None and ingress.forwarder is not None
    clients = [await DubboClient.connect("127.0.0.1", egress.address[1]) for _ in range(4)]

    async def late_call(i: int, deadline_ms: int, sleep_ms: int) -> tuple[float, int]:
        t0 = time.monotonic()
        r = await clients[i % len(clients)].invoke(
            ECHO,
            "sleep",
            [sleep_ms],
            attachments={"timeout": str(deadline_ms)},
            timeout=deadline_ms / 1000 + 3,
        )
        return time.monotonic() - t0, r.status

    async def batch(n: int, deadline_ms: int, sleep_ms: int) -> list[tuple[float, int]]:
        return await asyncio.gather(*(late_call(i, deadline_ms, sleep_ms) for i in range(n)))

    try:
        errors_ms: dict[int, list[float]] = {}
        for deadline in (200, 500, 1000):
            got = await batch(5, deadline, deadline + 400)
            assert all(st == Status.CLIENT_TIMEOUT for _, st in got), got
            errors_ms[deadline] = [round(lat * 1000 - deadline, 1) for lat, _ in got]
        # The ingress waits for the app (a 60 s deadline): idle there once the late answers are back.
        await wait_for(lambda: upstream_idle(egress) and upstream_idle(ingress), 3, "the late answers")

        # Enough requests that a leak of 33 bytes each passes the bound, which the swing of dict
        # capacities (pending maps sized by the 500 at once, not by the count) stays well under.
        n_batches, per_batch = 16, 500
        statuses: Counter[int] = Counter()  # not a list: its growth would be traced too

        async def settled() -> tuple[int, tracemalloc.Snapshot]:
            await wait_for(lambda: upstream_idle(egress) and upstream_idle(ingress), 3, "late answers")
            gc.collect()
            return tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()

        # Warm-up, traced too: connections, counters, histograms, dicts grown to the batch size.
        tracemalloc.start()
        for _ in range(2):
            statuses.update(st for _, st in await batch(per_batch, 50, 100))
        base_traced, base_snap = await settled()
        base_rss = rss_bytes()
        for _ in range(n_batches):
            statuses.update(st for _, st in await batch(per_batch, 50, 100))
        end_traced, end_snap = await settled()
        tracemalloc.stop()
        grown_traced = end_traced - base_traced
        top = [str(st) for st in end_snap.compare_to(base_snap, "lineno")[:3]]
        grown_rss = rss_bytes() - base_rss
        est, ist = egress.forwarder.stats, ingress.forwarder.stats
        forwarded_ok = est.responses.get(Status.OK, 0)
        app_answered = ist.responses.get(Status.OK, 0)
    finally:
        for c in clients:
            c.close()
        await egress.stop()
        await ingress.stop()
        await app.close(grace=0.1)

    total = (n_batches + 2) * per_batch
    worst = max(abs(e) for errs in errors_ms.values() for e in errs)
    report(
        "slow-provider",
        deadline_error_ms={k: max(v, key=abs) for k, v in errors_ms.items()},
        timed_out=total,
        late_answers_dropped=app_answered,
        forwarded_late=forwarded_ok,
        traced_growth_kib=round(grown_traced / 1024, 1),
        rss_growth_kib=round(grown_rss / 1024),
    )
    assert worst <= 100, errors_ms
    assert statuses[Status.CLIENT_TIMEOUT] == total, statuses
    # Every late answer reached the egress (the app answered them all) and none went to a client.
    assert forwarded_ok == 0 and app_answered >= total
    assert grown_traced < 256 * 1024, (grown_traced, top)  # < 33 B per request measured


# ---------------------------------------------------------------------------------------------------
# What the drills found (regressions tests for the fixes)


async def test_ingress_with_its_app_down_answers_not_served_and_egress_retries(tmp_path: Path) -> None:
    """Found by the app-kill drill: a provider sidecar whose application refused the connection
    answered 80, which no retry policy may repeat (it reads as "ran and failed"), so every request
    sent there failed until the app check withdrew the publication.  Nothing was written: it
    answers 60 now, which `retry.on: unavailable` retries on another provider, and which counts
    as a failure for outlier detection as 80 did."""
    from regproxy.config import Config

    dead_app = free_port()
    ingress = ingress_listener(dead_app)
    await ingress.start()
    good = Provider(default_services(), name="good")
    await good.start("127.0.0.1", 0)
    hosts = [f"127.0.0.1:{ingress.address[1]}", f"127.0.0.1:{good.port}"]
    cfg = Config.from_dict(
        {
            "clusters": [{"name": "demo", "hosts": [{"address": h} for h in hosts]}],
            "routes": [
                {"name": "r", "match": {"service": GREET}, "cluster": "demo",
                 "route": {"retry": {"attempts": 1, "on": ["unavailable"]}}},
            ],
        }
    )  # fmt: skip
    egress = Listener("egress", settings(), TableHolder(static_table(cfg)))
    await egress.start()
    assert egress.forwarder is not None
    client = await DubboClient.connect("127.0.0.1", ingress.address[1])
    try:
        direct = await client.invoke(GREET, "sayHi", ["x"])
        assert direct.status == Status.SERVICE_NOT_FOUND, direct
        assert f"cannot connect to 127.0.0.1:{dead_app}" in (direct.error or "")
        client.close()
        egress.forwarder.rules = rule_set(cfg)
        reports: list[tuple[str, bool]] = []

        class Recorder:  # what outlier detection is told (HostHealth)
            def available(self, address: str) -> bool:
                return True

            def any_unavailable(self) -> bool:
                return False

            def report(self, address: str, ok: bool) -> None:
                reports.append((address, ok))

        egress.forwarder.health = Recorder()
        client = await DubboClient.connect("127.0.0.1", egress.address[1])
        replies = [await client.invoke(GREET, "sayHi", [f"n{i}"]) for i in range(10)]
    finally:
        client.close()
        await egress.stop()
        await ingress.stop()
        await good.close(grace=0.1)
    assert all(r.status == Status.OK for r in replies), [r.error for r in replies if r.status != Status.OK]
    assert egress.forwarder.stats.retries >= 4
    assert (hosts[0], False) in reports and (hosts[0], True) not in reports


@pytest.mark.slow
async def test_sidecar_ingress_bounds_the_app_by_ingress_ms_not_the_attachment(tmp_path: Path) -> None:
    """The slow-provider drill hit it too (fixed on main by 2f97167 meanwhile): a running sidecar's
    ingress read each request's timeout attachment, used timeouts.default_ms and ignored
    timeouts.ingress_ms.  The behaviour over real sockets: the consumer's egress enforces the
    caller's deadline; the ingress bounds the app by ingress_ms and answers 31 (server timeout)."""
    from regproxy.config import Config
    from regproxy.sidecar import Sidecar

    app = Provider(default_services(), name="slow")
    await app.start("127.0.0.1", 0)
    cfg = Config.from_dict(
        {
            "egress": f"127.0.0.1:{free_port()}", "ingress": f"127.0.0.1:{free_port()}",
            "api": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}",
            "advertise_ip": "127.0.0.1", "app_port": app.port, "data_dir": str(tmp_path),
            "registries": ["memory://"], "timeouts": {"default_ms": 100, "ingress_ms": 600},
        }
    )  # fmt: skip
    sc = Sidecar(cfg)
    await sc.start()
    pub = {"service": {"interface": ECHO, "port": app.port, "methods": ["sleep"]}}
    url = f"http://127.0.0.1:{cfg.api.port}/pub"
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http, http.post(url, json=pub) as resp:
        assert resp.status == 200, await resp.text()
    client = await DubboClient.connect("127.0.0.1", cfg.ingress.port)
    try:
        # A 50 ms attachment and a 300 ms call: the ingress waits for the app (its bound is 600 ms).
        slow_ok = await client.invoke(ECHO, "sleep", [300], attachments={"timeout": "50"}, timeout=3)
        t0 = time.monotonic()
        too_slow = await client.invoke(ECHO, "sleep", [1500], timeout=3)
        waited = time.monotonic() - t0
    finally:
        client.close()
        await sc.stop()
        await app.close(grace=0.1)
    assert slow_ok.status == Status.OK and slow_ok.value == 300, slow_ok
    assert too_slow.status == Status.SERVER_TIMEOUT and "600 ms" in (too_slow.error or ""), too_slow
    assert 0.5 < waited < 1.0
