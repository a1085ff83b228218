"""ZooKeeperRegistry against a real ZooKeeper (tests/zkserver.py): nodes, watches, restarts, expiry.

The ``zk`` fixture is an independent kazoo client: it plays "someone else" (other providers,
operators editing weights by hand) and reads what our registry wrote.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kazoo.client import KazooClient

from regproxy.registry.base import CONNECTED, CONNECTING, LOST, STOPPED, SUSPENDED, RegistryUnavailable
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, Subscription, consumer_url, java_url_decode, provider_url
from regproxy.registry.zookeeper import ZooKeeperRegistry, node_path, providers_path
from tests.ports import free_port
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

SVC = "com.x.Svc"
PROVIDERS = providers_path(SVC)


def make_registry(hosts: str, **kw: Any) -> ZooKeeperRegistry:
    opts: dict[str, Any] = dict(session_timeout_s=10.0, op_timeout_s=2.0, reconnect_max_delay_s=0.5)
    opts.update(kw)
    return ZooKeeperRegistry(RegistryURL.parse(f"zookeeper://{hosts}"), **opts)


class Recorder:
    """A providers listener that keeps every list it is given."""

    def __init__(self) -> None:
        self.lists: list[list[DubboURL]] = []

    def __call__(self, urls: list[DubboURL]) -> None:
        assert asyncio.get_running_loop()  # delivered on the event loop, never on a kazoo thread
        self.lists.append(urls)

    @property
    def last(self) -> list[DubboURL] | None:
        return self.lists[-1] if self.lists else None

    def addresses(self) -> set[str]:
        return {u.address for u in self.last or []}

    async def wait_for(self, predicate: Callable[[list[DubboURL]], bool], timeout: float = 2.0) -> None:
        await wait_for(lambda: self.last is not None and predicate(self.last), timeout, "providers list")


@pytest.fixture
async def registry(zk: KazooClient, zk_server: ZooKeeperServer) -> AsyncIterator[ZooKeeperRegistry]:
    reg = make_registry(zk_server.hosts)
    await reg.start()
    await wait_for(lambda: reg.connected, 10, "registry connected")
    try:
        yield reg
    finally:
        await reg.stop()


def other_provider(ip: str, port: int = 20880, **params: str) -> DubboURL:
    return provider_url(interface=SVC, ip=ip, port=port, methods=["a", "b"], version="1.0.0", params=params)


def create_other(zk: KazooClient, url: DubboURL) -> str:
    """Register ``url`` as another process would (its own session, ephemeral)."""
    return zk.create(node_path(url), ephemeral=True, makepath=True)


# ---------------------------------------------------------------------------------------------------
# registrations


async def test_register_writes_dubbo_compatible_ephemeral_leaf(
    registry: ZooKeeperRegistry, zk: KazooClient
) -> None:
    url = provider_url(
        interface=SVC,
        ip="10.0.0.5",
        port=20882,
        methods=["b", "a"],
        version="1.0.0",
        group="g",
        application="app",
        params={"weight": "60"},
    )
    await registry.register(url)

    leaves = zk.get_children(PROVIDERS)
    assert leaves == [url.encoded()]
    _, stat = zk.get(f"{PROVIDERS}/{leaves[0]}")
    assert stat.ephemeralOwner == registry.session_id  # ephemeral, owned by our session
    assert zk.get(f"/dubbo/{SVC}")[1].ephemeralOwner == 0  # parents persistent

    # The leaf reads back with our model and with a plain urllib reader (what a Dubbo consumer sees).
    decoded = java_url_decode(leaves[0])
    assert DubboURL.parse(decoded) == url
    parts = urlsplit(decoded)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("dubbo", "10.0.0.5", 20882, f"/{SVC}")
    assert query["interface"] == SVC and query["side"] == "provider" and query["methods"] == "a,b"
    assert (query["version"], query["group"], query["weight"]) == ("1.0.0", "g", "60")
    assert list(query) == sorted(query)  # parameters sorted by key, as Dubbo writes them

    # Consumers go under consumers/.
    consumer = consumer_url(interface=SVC, ip="10.0.0.9", version="1.0.0")
    await registry.register(consumer)
    assert zk.get_children(f"/dubbo/{SVC}/consumers") == [consumer.encoded()]

    assert registry.describe()["registered"] == sorted([str(url), str(consumer)])
    await registry.register(url)  # idempotent: the node is ours already
    assert zk.get_children(PROVIDERS) == [url.encoded()]

    await registry.unregister(url)
    assert zk.get_children(PROVIDERS) == []
    await registry.unregister(url)  # already gone: fine


async def test_register_replaces_a_leftover_node_of_another_session(
    registry: ZooKeeperRegistry, zk: KazooClient
) -> None:
    url = other_provider("10.0.0.5")
    create_other(zk, url)  # e.g. our previous session's node, not reaped yet
    assert zk.exists(node_path(url)).ephemeralOwner == zk.client_id[0]

    await registry.register(url)
    assert zk.exists(node_path(url)).ephemeralOwner == registry.session_id


async def test_stop_removes_own_nodes_only(zk: KazooClient, zk_server: ZooKeeperServer) -> None:
    reg = make_registry(zk_server.hosts)
    await reg.start()
    await wait_for(lambda: reg.connected, 10, "registry connected")
    mine = [other_provider("10.0.0.1"), other_provider("10.0.0.2")]
    for url in mine:
        await reg.register(url)
    theirs = other_provider("10.0.0.3")
    create_other(zk, theirs)

    t0 = time.monotonic()
    await reg.stop()
    assert time.monotonic() - t0 < 2
    assert reg.state == STOPPED
    assert zk.get_children(PROVIDERS) == [theirs.encoded()]
    await reg.stop()  # twice: no-op


# ---------------------------------------------------------------------------------------------------
# subscriptions


async def test_subscribe_delivers_adds_removes_and_weight_changes(
    registry: ZooKeeperRegistry, zk: KazooClient, caplog: pytest.LogCaptureFixture
) -> None:
    a = other_provider("10.0.0.1")
    create_other(zk, a)
    zk.create(f"{PROVIDERS}/not-a-url", ephemeral=True)  # skipped with a warning

    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="regproxy.registry.zookeeper"):
        current = await registry.subscribe(Subscription(SVC, "1.0.0"), rec)
    assert current == [a]
    assert "not-a-url" in caplog.text

    b = other_provider("10.0.0.2")
    create_other(zk, b)
    await rec.wait_for(lambda urls: {u.address for u in urls} == {a.address, b.address})

    # An operator changes a's weight by hand: its leaf is deleted and created with the new URL.
    a50 = other_provider("10.0.0.1", weight="50")
    n = len(rec.lists)
    zk.delete(node_path(a))
    create_other(zk, a50)
    await rec.wait_for(lambda urls: sorted(urls, key=str) == sorted([a50, b], key=str))
    assert {u.address: u.weight for u in rec.last or []} == {a.address: 50, b.address: 100}
    # Coalesced: the delete and create normally arrive as one list (never more than two), and
    # no list in between lacks the provider (a lost provider is held back for a re-create).
    assert len(rec.lists) - n <= 2
    assert all(a.address in {u.address for u in urls} for urls in rec.lists[n:])

    zk.delete(node_path(b))
    await rec.wait_for(lambda urls: urls == [a50])


async def test_subscribe_before_any_provider_and_shared_watch(
    registry: ZooKeeperRegistry, zk: KazooClient
) -> None:
    v1, v2 = Recorder(), Recorder()
    assert await registry.subscribe(Subscription(SVC, "1.0.0"), v1) == []  # the path does not exist yet
    assert zk.exists(PROVIDERS) is not None  # created so the watch could be set
    assert await registry.subscribe(Subscription(SVC, "2.0.0", "g"), v2) == []
    assert registry.describe()["watched"] == {SVC: {"subscriptions": 2, "providers": 0}}

    a = other_provider("10.0.0.1")
    create_other(zk, a)
    await v1.wait_for(lambda urls: urls == [a])  # full, unfiltered list for both subscriptions
    await v2.wait_for(lambda urls: urls == [a])

    await registry.unsubscribe(Subscription(SVC, "1.0.0"), v1)
    n1 = len(v1.lists)
    b = other_provider("10.0.0.2")
    create_other(zk, b)
    await v2.wait_for(lambda urls: len(urls) == 2)
    assert len(v1.lists) == n1

    await registry.unsubscribe(Subscription(SVC, "2.0.0", "g"), v2)
    assert registry.describe()["watched"] == {}


async def test_every_provider_gone_is_delivered_at_once(registry: ZooKeeperRegistry, zk: KazooClient) -> None:
    """The adapter delivers the empty list as it is, like any other: holding it back is discovery's
    (regproxy/discovery/protection.py; tests/test_registry_contract.py covers it per registry)."""
    a = other_provider("10.0.0.1")
    create_other(zk, a)
    rec = Recorder()
    assert await registry.subscribe(Subscription(SVC, "1.0.0"), rec) == [a]
    t0 = time.monotonic()
    zk.delete(node_path(a))
    await rec.wait_for(lambda urls: urls == [], timeout=2)
    assert time.monotonic() - t0 < 1.0  # the removal re-list (removal_hold_s), never a longer hold


# ---------------------------------------------------------------------------------------------------
# connection loss, session loss


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_zookeeper_restart_keeps_session_nodes_and_watch(
    registry: ZooKeeperRegistry, zk: KazooClient, zk_server: ZooKeeperServer
) -> None:
    states: list[str] = []
    registry.add_state_listener(states.append)
    kept, dropped = other_provider("10.0.0.1"), other_provider("10.0.0.2")
    await registry.register(kept)
    await registry.register(dropped)
    rec = Recorder()
    await registry.subscribe(Subscription(SVC, "1.0.0"), rec)
    session = registry.session_id

    down_at = time.monotonic()
    await asyncio.to_thread(zk_server.stop)
    await wait_for(lambda: registry.state == SUSPENDED, 5, "suspended")

    # While ZooKeeper is down: no hang, a clear error.
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"zookeeper://127\.0\.0\.1"):
        await registry.register(other_provider("10.0.0.9"))
    with pytest.raises(RegistryUnavailable):
        await registry.subscribe(Subscription("com.x.Other"), Recorder())
    assert time.monotonic() - t0 < 2
    await registry.unregister(dropped)  # forgotten now, deleted once connected again

    await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
    await asyncio.to_thread(zk_server.start)
    up_at = time.monotonic()
    await wait_for(lambda: registry.connected, 5, "connected again")
    reconnect_s = time.monotonic() - up_at

    assert states == [SUSPENDED, CONNECTED]  # the session survived: no LOST
    assert registry.session_id == session
    await wait_for(lambda: zk.connected, 5, "the reader reconnected")
    assert zk.get_children(PROVIDERS) == [kept.encoded()]  # ours kept, the withdrawn one deleted
    assert reconnect_s < 2

    # The watch was re-armed (kazoo drops watches on every disconnect).
    b = other_provider("10.0.0.3")
    create_other(zk, b)
    await rec.wait_for(lambda urls: b in urls)


@pytest.mark.timeout(60)
async def test_session_expiry_recreates_nodes_and_rearms_watch(
    registry: ZooKeeperRegistry, zk: KazooClient, zk_server: ZooKeeperServer
) -> None:
    states: list[str] = []
    registry.add_state_listener(states.append)
    mine = other_provider("10.0.0.1")
    await registry.register(mine)
    other = other_provider("10.0.0.2")
    create_other(zk, other)
    rec = Recorder()
    assert set(await registry.subscribe(Subscription(SVC, "1.0.0"), rec)) == {mine, other}
    old = registry.session_credentials
    assert old is not None

    t0 = time.monotonic()
    await asyncio.to_thread(zk_server.expire_session, *old)
    await wait_for(lambda: LOST in states and registry.connected, 5, "lost, then connected")
    # Our node is back, owned by the new session, within 5 s.
    await wait_for(lambda: zk.exists(node_path(mine)) is not None, 5, "node re-created")
    recovered_s = time.monotonic() - t0
    assert states[states.index(LOST) :] == [LOST, CONNECTED]
    assert registry.session_id not in (None, old[0])
    assert zk.exists(node_path(mine)).ephemeralOwner == registry.session_id
    assert recovered_s < 5
    # The re-read list was delivered after the new session (our own node is among the providers).
    await rec.wait_for(lambda urls: set(urls) == {mine, other})

    b = other_provider("10.0.0.3")
    create_other(zk, b)
    await rec.wait_for(lambda urls: b in urls)


async def test_start_against_nothing_returns_at_once() -> None:
    reg = make_registry(f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    await reg.start()
    assert time.monotonic() - t0 < 0.5
    assert reg.state == CONNECTING
    await asyncio.sleep(0.3)  # a few refused connection attempts
    assert reg.state == CONNECTING
    with pytest.raises(RegistryUnavailable, match="connecting"):
        await reg.register(other_provider("10.0.0.1"))
    t0 = time.monotonic()
    await reg.stop()
    assert time.monotonic() - t0 < 3
    assert reg.state == STOPPED
