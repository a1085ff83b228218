"""A small topology for end-to-end tests: a registry (a real ZooKeeper, or the Nacos double), a
consumer sidecar and two provider sidecars as processes, each provider sidecar beside a demo
provider app; steady traffic through the consumer's egress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, unquote_plus, urlsplit

import pytest
from kazoo.client import KazooClient

from regproxy.demo.client import DubboClient, DubboError
from regproxy.demo.provider import Provider, default_services
from tests.sidecars import SidecarProc
from tests.zkserver import ZooKeeperServer

GREET = "org.apache.dubbo.samples.api.GreetingsService"
VERSION = "1.0.0"  # dubbo-python's default
PROVIDERS = f"/dubbo/{GREET}/providers"
CLUSTER = f"{GREET}:{VERSION}"  # a consumer sidecar's egress cluster for GREET
# A consumer's reference config (/sub params) for tests that count calls per provider: Dubbo's smooth
# round robin, without the warm-up that would even out the weights of providers registered moments
# ago (AbstractLoadBalance.getWeight: 10 minutes by default). Nothing declared, a subscription uses
# Dubbo's weighted random (regproxy.governance.params).
EXACT_SPLIT = {"loadbalance": "roundrobin", "warmup": "0"}


def pub_body(app_port: int, **service: object) -> dict[str, object]:
    return {"service": {"interface": GREET, "methods": ["sayHi"], "version": VERSION, "group": "",
                        "port": app_port, "application": "demo-provider", **service}}  # fmt: skip


def leaves(zk: KazooClient) -> list[tuple[str, dict[str, list[str]]]]:
    """Provider nodes as an independent reader sees them: (host:port, query params)."""
    out = []
    for leaf in zk.get_children(PROVIDERS) if zk.exists(PROVIDERS) else []:
        parts = urlsplit(unquote_plus(leaf))
        out.append((parts.netloc, parse_qs(parts.query)))
    return out


async def egress_cluster(consumer: SidecarProc, cluster: str = CLUSTER) -> dict[str, dict[str, Any]]:
    """A consumer sidecar's egress cluster as it routes right now: address -> its host in
    ``/api/v1/clusters`` (weight, metadata...); {} before any."""
    _, body = await consumer.admin_get("/api/v1/clusters")
    for found in body["clusters"]:
        if found["listener"] == "egress" and found["name"] == cluster:
            return {h["address"]: h for h in found["hosts"]}
    return {}


async def egress_hosts(consumer: SidecarProc, cluster: str = CLUSTER) -> dict[str, int]:
    """A consumer sidecar's egress cluster as it routes right now: address -> weight ({} before any)."""
    return {address: h["weight"] for address, h in (await egress_cluster(consumer, cluster)).items()}


async def set_weight_by_hand(zk: KazooClient, ingress_port: int, weight: int) -> None:
    def edit() -> None:
        for leaf in zk.get_children(PROVIDERS):
            url = unquote_plus(leaf)
            if f"127.0.0.1:{ingress_port}/" in url:
                new = url + f"&weight={weight}" if "weight=" not in url else url
                zk.delete(f"{PROVIDERS}/{leaf}")
                zk.create(f"{PROVIDERS}/{quote_plus(new, safe='*')}", ephemeral=True)

    await asyncio.to_thread(edit)


@dataclass
class Traffic:
    """Steady calls through the consumer sidecar's egress, counting every failure."""

    port: int
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def sent(self) -> int:
        return self.ok + len(self.failures)

    async def run(self) -> None:
        client = await DubboClient.connect("127.0.0.1", self.port)
        try:
            while True:
                try:
                    await client.call(GREET, "sayHi", ["t"], version=VERSION, timeout=5)
                    self.ok += 1
                except DubboError as exc:
                    self.failures.append(str(exc))
                await asyncio.sleep(0.01)
        finally:
            client.close()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class World:
    apps: list[Provider]
    provider_sidecars: list[SidecarProc]
    consumer: SidecarProc


@asynccontextmanager
async def open_world(registry: str, tmp_path: Path) -> AsyncIterator[World]:
    """Consumer sidecar "a" and provider sidecar "b" running, "c" ready to start, all on the
    registry URL ``registry`` (``zookeeper://`` a standalone server or every member of an
    ensemble, ``nacos://``...)."""
    apps: list[Provider] = []
    sidecars: list[SidecarProc] = []
    for name in ("b", "c"):
        app = Provider(default_services(greetings_version=VERSION), name=f"app-{name}")
        await app.start("127.0.0.1", 0)
        apps.append(app)
        sidecars.append(SidecarProc(name, tmp_path / name, registries=[registry], app_port=app.port))
    consumer = SidecarProc("a", tmp_path / "a", registries=[registry], app_port=1)
    try:
        await asyncio.gather(consumer.start(), sidecars[0].start())
        yield World(apps, sidecars, consumer)
    finally:
        for sc in [consumer, *sidecars]:
            await sc.kill()
        for app in apps:
            await app.close(grace=0.1)


@pytest.fixture
async def world(
    zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path, needs_process: None
) -> AsyncIterator[World]:
    try:
        async with open_world(f"zookeeper://{zk_server.hosts}", tmp_path) as w:
            yield w
    finally:
        if not zk_server.running:  # a drill stopped it and failed before starting it again
            zk_server.start()
