"""A restarted provider sidecar registers its restored publications as the process it is now: a
fresh ``pid`` in the URL, as a restarted Dubbo provider has (the state file's URL, with the previous
process's pid, was registered again as it was). The ``timestamp`` stays the publication's: the
sidecar restarted, not the application behind it, and consumers warm a provider up from that time
(AbstractLoadBalance.getWeight, docs/parameters.md): a new one would ramp a warm provider down. After
``kill -9`` the previous run's node, which lives on until its ZooKeeper session expires, is removed
first, so consumers never see the address twice. Real ZooKeeper, the sidecar as a process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from regproxy.demo.provider import default_services, serve
from regproxy.registry.instances import parse_curator
from tests.sidecars import SidecarProc
from tests.topology import leaves, pub_body
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

pytestmark = pytest.mark.process


@pytest.fixture
async def sidecar(zk_server: ZooKeeperServer, tmp_path: Path) -> AsyncIterator[SidecarProc]:
    app = await serve("127.0.0.1", 0, services=default_services())  # answers the app check
    sc = SidecarProc(
        "p",
        tmp_path / "p",
        registries=[f"zookeeper://{zk_server.hosts}"],
        app_port=app.sockets[0].getsockname()[1],
    )
    try:
        await sc.start()
        await sc.until_ready()
        yield sc
    finally:
        await sc.kill()
        app.close()


def node_of(zk: KazooClient, address: str) -> list[dict[str, str]]:
    """The provider nodes at ``address``: their pid and timestamp."""
    return [
        {"pid": params["pid"][0], "timestamp": params["timestamp"][0]}
        for netloc, params in leaves(zk)
        if netloc == address
    ]


async def published(sc: SidecarProc, zk: KazooClient) -> dict[str, str]:
    """The one node of ``sc``'s publication, once it is this process's (its pid)."""
    assert sc.proc is not None
    address, pid = f"127.0.0.1:{sc.ingress}", str(sc.proc.pid)
    await wait_for(
        lambda: [n["pid"] for n in node_of(zk, address)] == [pid],
        5,
        f"one node at {address} with pid {pid}",
        in_thread=True,
        detail=sc.log_tail,
    )
    (node,) = node_of(zk, address)
    return node


async def test_restarted_sidecar_registers_with_its_own_pid_and_the_publications_timestamp(
    sidecar: SidecarProc, zk: KazooClient
) -> None:
    """Killed, not stopped: a stopped sidecar takes its node away itself (SIGTERM), and restores
    the publication through the same code as a killed one, whose node is still there."""
    assert (await sidecar.post("/pub", pub_body(sidecar.app_port)))[0] == 200
    before = await published(sidecar, zk)
    instance = f"/services/demo-provider/127.0.0.1:{sidecar.ingress}"  # Dubbo 3's form of it too
    data, stat = zk.get(instance)
    await sidecar.kill()  # its nodes stay until the session expires (10 s)
    assert node_of(zk, f"127.0.0.1:{sidecar.ingress}") == [before]
    await sidecar.start()
    # Within 5 s, less than the killed session's 10 s: the killed run's node was removed, not expired.
    after = await published(sidecar, zk)
    assert after["pid"] != before["pid"]
    assert after["timestamp"] == before["timestamp"]

    # The instance too is this run's, with the same revision (pid and timestamp are not in the
    # MetadataInfo: DefaultMetadataParamsFilter) and the publication's timestamp.
    def renewed() -> bool:
        now = zk.exists(instance)
        return now is not None and now.ephemeralOwner != stat.ephemeralOwner

    await wait_for(renewed, 5, "the instance registered by this run", in_thread=True)
    new_data, _ = zk.get(instance)
    assert (
        parse_curator(new_data, app="demo-provider").metadata
        == parse_curator(data, app="demo-provider").metadata
    )
    # The state file now holds the URL registered by this run.
    status, body = await sidecar.post("/pub", pub_body(sidecar.app_port))  # idempotent: the same URL
    assert status == 200 and f"pid={after['pid']}" in body["url"], body
