"""Registry fault drills: a real ZooKeeper (standalone, or a three-node ensemble) goes wrong while
traffic runs through real sidecar processes (consumer sidecar -> provider sidecar -> demo app).

Each drill prints one line (run pytest with ``-s`` to see it): requests sent, failed, retried by the
consumer sidecar, and how long the registry side took to recover; then asserts its bound.  The
figures of the last run are in docs/reliability.md ("Registry fault drills").

What "recovered" means here is checked from outside the sidecars: the provider node and the
consumer node are in ZooKeeper, owned by sessions that have a live connection to a server (``cons``),
and both sidecars answer ``/readyz`` 200 (their registry adapter reports "connected" only once it
has re-created its nodes and re-armed its watches).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import pytest
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from tests.sidecars import SidecarProc
from tests.topology import (
    GREET,
    PROVIDERS,
    VERSION,
    Traffic,
    World,
    egress_hosts,
    leaves,
    open_world,
    pub_body,
    set_weight_by_hand,
)
from tests.wait import wait_for
from tests.zkserver import ZooKeeperEnsemble, ZooKeeperServer

pytestmark = [pytest.mark.zookeeper, pytest.mark.process]

CONSUMERS = f"/dubbo/{GREET}/consumers"
RECOVERY_BOUND_S = 5.0  # registrations back (and sidecars ready) within this of the registry's return
OUTAGE_S = 15.0


def owners(zk: KazooClient, provider: SidecarProc) -> dict[str, int | None]:
    """The sessions owning the provider node of ``provider``, its Dubbo 3 application instance
    (discovery.register_mode all) and the (one) consumer node; None = absent."""
    found: dict[str, int | None] = {"provider": None, "instance": None, "consumer": None}
    stat = zk.exists(f"/services/demo-provider/127.0.0.1:{provider.ingress}")
    found["instance"] = stat.ephemeralOwner if stat else None
    for leaf in zk.get_children(PROVIDERS) if zk.exists(PROVIDERS) else []:
        if urlsplit(unquote_plus(leaf)).netloc == f"127.0.0.1:{provider.ingress}":
            stat = zk.exists(f"{PROVIDERS}/{leaf}")
            found["provider"] = stat.ephemeralOwner if stat else None
    for leaf in zk.get_children(CONSUMERS) if zk.exists(CONSUMERS) else []:
        stat = zk.exists(f"{CONSUMERS}/{leaf}")
        found["consumer"] = stat.ephemeralOwner if stat else None
    return found


async def ready(sidecar: SidecarProc) -> bool:
    try:
        status, _ = await sidecar.admin_get("/readyz")
    except OSError:
        return False
    return status == 200


async def retries(consumer: SidecarProc) -> int:
    _, stats = await consumer.admin_get("/api/v1/stats")
    return int(stats["egress"].get("retries", 0))


async def serve(world: World, zk: KazooClient) -> Traffic:
    """Provider b published, consumer a subscribed, traffic flowing through a -> b -> app b."""
    a, b = world.consumer, world.provider_sidecars[0]
    status, body = await b.post("/pub", pub_body(world.apps[0].port))
    assert status == 200, body
    status, body = await a.post("/sub", {"service": {"interface": GREET, "version": VERSION}})
    assert status == 200, body
    await wait_for(lambda: all(owners(zk, b).values()), 5.0, "both nodes", in_thread=True)
    traffic = Traffic(a.egress)
    traffic.start()
    await wait_for(lambda: traffic.ok > 0, 5.0, "the first request through a -> b")
    return traffic


def report(drill: str, traffic: Traffic, retried: int, **figures: float) -> None:
    measured = " ".join(f"{k}={v:.2f}s" for k, v in figures.items())
    print(
        f"\nDRILL {drill}: sent={traffic.sent} failed={len(traffic.failures)} retried={retried} {measured}"
        + (f" first failure: {traffic.failures[0]}" if traffic.failures else "")
    )


# ---------------------------------------------------------------------------------------------------
# 1. ZooKeeper stopped 15 s, then restarted


async def test_zookeeper_stopped_15s_under_traffic(
    world: World, zk: KazooClient, zk_server: ZooKeeperServer
) -> None:
    a, b = world.consumer, world.provider_sidecars[0]
    traffic = await serve(world, zk)
    retries_before = await retries(a)
    try:
        await asyncio.to_thread(zk.stop)
        await asyncio.to_thread(zk_server.stop)
        down_at = time.monotonic()
        # While the registry is down: the last known providers keep serving, /pub answers 503.
        await asyncio.sleep(3)
        status, body = await b.post("/pub", pub_body(1234, version="9.9.9"))
        assert status == 503 and "zookeeper" in body["err_msg"], body
        await asyncio.sleep(OUTAGE_S - (time.monotonic() - down_at))
        sent_during = traffic.sent
        await asyncio.to_thread(zk_server.start)  # returns once the server serves (its gate is open)
        up_at = time.monotonic()
        await asyncio.to_thread(zk.start, 15)

        async def registered() -> bool:
            found = await asyncio.to_thread(owners, zk, b)
            live = await asyncio.to_thread(zk_server.session_ids)
            return all(o in live for o in found.values()) and await ready(a) and await ready(b)

        await wait_for(registered, 15.0, "both nodes owned by live sessions and both sidecars ready")
        recovery = time.monotonic() - up_at
        await asyncio.sleep(1)
    finally:
        await traffic.stop()
    retried = await retries(a) - retries_before
    report("zookeeper-stopped-15s", traffic, retried, outage=up_at - down_at, registrations_back=recovery)
    assert traffic.failures == [], traffic.failures[:5]
    assert sent_during > 300  # traffic really ran through the outage (~100/s unloaded)
    assert recovery < RECOVERY_BOUND_S


# ---------------------------------------------------------------------------------------------------
# 2. Sessions of both sidecars expired


async def test_session_expiry_recreates_nodes_and_watches_fire(
    world: World, zk: KazooClient, zk_server: ZooKeeperServer
) -> None:
    a, b = world.consumer, world.provider_sidecars[0]
    traffic = await serve(world, zk)
    retries_before = await retries(a)
    try:
        before = await asyncio.to_thread(owners, zk, b)
        ok_before = traffic.ok
        expired_at = time.monotonic()
        for session in (before["provider"], before["consumer"]):
            assert session is not None
            await asyncio.to_thread(zk_server.expire_session, session)

        async def recreated() -> bool:
            found = await asyncio.to_thread(owners, zk, b)
            live = await asyncio.to_thread(zk_server.session_ids)
            fresh = all(found[k] is not None and found[k] != before[k] for k in found)
            return fresh and all(o in live for o in found.values())

        await wait_for(recreated, 15.0, "every node re-created by new sessions")
        recovery = time.monotonic() - expired_at
        await wait_for(lambda: _both_ready(a, b), 5.0, "both sidecars ready")
        ok_through = traffic.ok - ok_before

        # The consumer's watch, armed again in its new session, still sees a change made in ZooKeeper.
        # A hand edit of the interface-level node changes a host found at application level too only
        # where the subscription uses interface-level URLs (Dubbo's FORCE_INTERFACE; with both, the
        # application-level URL is the one used, as under Dubbo's APPLICATION_FIRST: docs/discovery.md).
        status, body = await a.post(
            "/sub", {"service": {"interface": GREET, "version": VERSION, "migration": "interface"}}
        )
        assert status == 200, body
        changed_at = time.monotonic()
        await set_weight_by_hand(zk, b.ingress, 300)
        ingress = f"127.0.0.1:{b.ingress}"
        await wait_for(lambda: _weight_is(a, ingress, 300), 5.0, "the weight change in the consumer's table")
        watch_delay = time.monotonic() - changed_at
        await asyncio.sleep(0.5)
    finally:
        await traffic.stop()
    retried = await retries(a) - retries_before
    report("session-expired", traffic, retried, nodes_recreated=recovery, watch_fired=watch_delay)
    assert recovery < RECOVERY_BOUND_S
    assert traffic.failures == [], traffic.failures[:5]
    assert ok_through > 10  # requests did run while the nodes were being re-created


async def _both_ready(a: SidecarProc, b: SidecarProc) -> bool:
    return await ready(a) and await ready(b)


async def _weight_is(consumer: SidecarProc, address: str, weight: int) -> bool:
    return (await egress_hosts(consumer)).get(address) == weight


# ---------------------------------------------------------------------------------------------------
# 3. A three-node ensemble loses its leader


@pytest.fixture
async def ensemble(tmp_path: Path) -> AsyncIterator[ZooKeeperEnsemble]:
    ens = ZooKeeperEnsemble(tmp_path / "ensemble")
    await asyncio.to_thread(ens.start)
    try:
        yield ens
    finally:
        await asyncio.to_thread(ens.stop)


async def test_ensemble_leader_killed_under_traffic(ensemble: ZooKeeperEnsemble, tmp_path: Path) -> None:
    reader = KazooClient(
        hosts=ensemble.hosts, timeout=10.0, connection_retry=KazooRetry(max_tries=-1, max_delay=0.5)
    )
    await asyncio.to_thread(reader.start, 15)
    try:
        async with open_world(f"zookeeper://{ensemble.hosts}", tmp_path / "world") as world:
            await _leader_drill(world, ensemble, reader)
    finally:
        await asyncio.to_thread(reader.stop)
        reader.close()


async def _leader_drill(world: World, ensemble: ZooKeeperEnsemble, zk: KazooClient) -> None:
    a, b, c = world.consumer, *world.provider_sidecars
    app_c = world.apps[1]
    traffic = await serve(world, zk)
    retries_before = await retries(a)
    try:
        before = await asyncio.to_thread(owners, zk, b)
        leader = ensemble.leader()
        assert leader is not None, ensemble.modes()
        killed_at = time.monotonic()
        await asyncio.to_thread(leader.stop, True)  # kill -9

        async def new_leader() -> bool:
            return await asyncio.to_thread(
                lambda: len(ensemble.serving()) == 2 and ensemble.leader() is not None
            )

        election = await wait_for(new_leader, 15.0, f"a new leader ({ensemble.modes()})")

        async def intact() -> bool:
            found = await asyncio.to_thread(owners, zk, b)
            live = set().union(
                *await asyncio.to_thread(lambda: [m.session_ids() for m in ensemble.serving()])
            )
            # Same sessions as before: nothing was lost, so nothing had to be re-created.
            return (
                found == before
                and all(o in live for o in found.values())
                and await ready(a)
                and await ready(b)
            )

        await wait_for(intact, 15.0, "the same nodes owned by live sessions and both sidecars ready")
        recovery = time.monotonic() - killed_at

        # After the failover, a second provider registers and the consumer's watch picks it up.
        await c.start()
        changed_at = time.monotonic()
        status, body = await c.post("/pub", pub_body(app_c.port))
        assert status == 200, body
        await wait_for(
            lambda: _has_host(a, f"127.0.0.1:{c.ingress}"), 10.0, "the new provider in the consumer's table"
        )
        watch_delay = time.monotonic() - changed_at
        await wait_for(lambda: app_c.services.count("sayHi") > 0, 5.0, "traffic on the new provider")
    finally:
        await traffic.stop()
    retried = await retries(a) - retries_before
    report(
        "ensemble-leader-killed",
        traffic,
        retried,
        election=election,
        registrations_ok=recovery,
        new_provider_seen=watch_delay,
    )
    assert traffic.failures == [], traffic.failures[:5]
    assert recovery < RECOVERY_BOUND_S
    assert {netloc for netloc, _ in leaves(zk)} == {f"127.0.0.1:{b.ingress}", f"127.0.0.1:{c.ingress}"}


async def _has_host(consumer: SidecarProc, address: str) -> bool:
    return address in await egress_hosts(consumer)
