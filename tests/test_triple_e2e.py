"""Triple through real sidecars and a real ZooKeeper, with Apache's own Python SDK (PyPI
``apache-dubbo``, unchanged, in its own venv: tests/peers/triple) on both ends, and grpcio as a
second, independent client.

    apache-dubbo client -> sidecar c (egress) -> sidecar p-a1|p-a2 (ingress) -> apache-dubbo server a1|a2

The providers are published with ``/pub`` ``"protocol": "tri"`` (``tri://`` at each sidecar's
ingress); the consumer subscribes with ``/sub``. The SDK's client sends no deadline of its own and
its server reads none (tests/test_triple_peers.py), so every deadline here is the sidecars'.
tests/test_triple_e2e_sdk.py has the apache-dubbo client against a grpcio server, and a plain
apache-dubbo provider that registers itself with no sidecar.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import pytest_asyncio
from kazoo.client import KazooClient

from tests.peers.triple import greeter, procs
from tests.sidecars import SidecarProc, value
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer, emptied

pytestmark = [pytest.mark.process, pytest.mark.zookeeper]

IFACE = greeter.INTERFACE
N_SLOW = 30  # slowStream messages, one every 100 ms: far more than any test waits for


async def cluster_hosts(sc: SidecarProc, name: str = IFACE) -> list[dict[str, Any]]:
    """The hosts of egress cluster ``name`` on ``sc``'s admin API."""
    _status, body = await sc.admin_get("/api/v1/clusters")
    for cluster in body["clusters"]:
        if cluster["listener"] == "egress" and cluster["name"] == name:
            return list(cluster["hosts"])
    return []


async def until_hosts(sc: SidecarProc, addresses: set[str], timeout: float = 20.0) -> None:
    async def check() -> bool:
        return {h["address"] for h in await cluster_hosts(sc)} == addresses

    await wait_for(check, timeout, f"egress cluster {IFACE} is {sorted(addresses)}", detail=sc.log_tail)


class Fleet:
    def __init__(self, zk_server: ZooKeeperServer, root: Path) -> None:
        self.registry = f"zookeeper://{zk_server.hosts}"
        self.root = root
        self.servers: list[procs.ServerProc] = []
        self.providers: list[SidecarProc] = []
        self.consumer = SidecarProc("c", root / "c", registries=[self.registry], app_port=1)

    @property
    def target(self) -> str:
        return f"tri://127.0.0.1:{self.consumer.egress}"

    async def provider(self, name: str) -> tuple[procs.ServerProc, SidecarProc]:
        server = await procs.start_server("ad", name=name)
        self.servers.append(server)
        sc = SidecarProc(f"p-{name}", self.root / name, registries=[self.registry], app_port=server.port)
        self.providers.append(sc)
        await sc.start()
        status, body = await sc.post(
            "/pub", {"service": {"interface": IFACE, "port": server.port, "protocol": "tri"}}
        )
        assert status == 200 and body["url"].startswith(f"tri://127.0.0.1:{sc.ingress}/{IFACE}?"), body
        return server, sc

    async def client(
        self, scenario: str, *args: str, kind: procs.ClientKind = "ad", timeout: float = 60.0
    ) -> dict[str, Any]:
        return await procs.run_client(kind, scenario, *args, target=self.target, timeout=timeout)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    zk = await emptied(zk_server)
    await asyncio.to_thread(zk.stop)
    fleet = Fleet(zk_server, tmp_path_factory.mktemp("triple"))
    try:
        await fleet.consumer.start()
        for name in ("a1", "a2"):
            await fleet.provider(name)
        status, body = await fleet.consumer.post("/sub", {"service": {"interface": IFACE}})
        assert status == 200, body
        await until_hosts(fleet.consumer, {f"127.0.0.1:{p.ingress}" for p in fleet.providers})
        yield fleet
    finally:
        for sc in (fleet.consumer, *fleet.providers):
            await sc.kill()
        for server in fleet.servers:
            await server.stop()


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"], result
    return result


@pytest.mark.asyncio(loop_scope="module")
async def test_every_call_kind_and_a_4_mb_message(fleet: Fleet) -> None:
    names = {s.name for s in fleet.servers}
    unary = _ok(await fleet.client("unary", "--count", "20"))
    assert set(unary["counts"]) <= names and sum(unary["counts"].values()) == 20
    stream = _ok(await fleet.client("server-stream", "--n", "5"))
    (name,) = {r.split(":")[0] for r in stream["replies"]}
    assert stream["replies"] == [f"{name}:{i}" for i in range(5)]
    upload = _ok(await fleet.client("client-stream", "--n", "5", "--size", "1000"))
    assert upload["reply"] == {"count": 5, "bytes": 5000} | {
        k: v for k, v in upload["reply"].items() if k not in ("count", "bytes")
    }
    assert _ok(await fleet.client("bidi", "--n", "5"))["echoes"] == [f"ping-{i}" for i in range(5)]
    # apache-dubbo refuses messages over 4 MiB itself (tests/peers/triple/ad_client.py): 4 MB it takes.
    assert _ok(await fleet.client("big", "--mb", "4"))["reply"] == 4_000_000


@pytest.mark.asyncio(loop_scope="module")
async def test_a_server_error_keeps_its_status_and_message(fleet: Fleet) -> None:
    result = _ok(await fleet.client("fail", "--text", "boom 42"))
    # As apache-dubbo's server answers it directly (DefaultMethodRunner.handle_exception).
    assert (result["error"]["code"], result["error"]["message"]) == (
        "INTERNAL",
        "Invoke method failed: boom 42",
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_a_deadline_that_expires_mid_stream_is_the_sidecars(fleet: Fleet) -> None:
    marks = [s.mark() for s in fleet.servers]
    result = _ok(
        await fleet.client("deadline", "--n", str(N_SLOW), "--grpc-timeout-ms", "350", "--wait-s", "5")
    )
    assert result["error"]["code"] == "DEADLINE_EXCEEDED", result
    assert result["error"]["message"].startswith("regproxy egress: deadline of 350 ms exceeded for "), result
    assert 2 <= result["received"] <= 4, result  # one message every 100 ms
    # The provider's stream is cancelled: the egress resets its stream, the ingress the app's.
    ends = await asyncio.gather(
        *(_stream_end(s, m) for s, m in zip(fleet.servers, marks, strict=True)), return_exceptions=True
    )
    ended = [e for e in ends if isinstance(e, dict)]
    assert len(ended) == 1 and ended[0]["outcome"] == "cancelled" and ended[0]["sent"] < N_SLOW, ends


@pytest.mark.asyncio(loop_scope="module")
async def test_the_ingress_ends_a_call_a_little_after_its_deadline(fleet: Fleet) -> None:
    # Straight to a provider's ingress, no egress in front: apache-dubbo's server reads no deadline,
    # so the ingress's backstop (the deadline plus INGRESS_GRACE_MS) answers.
    target = f"tri://127.0.0.1:{fleet.providers[0].ingress}"
    since = fleet.servers[0].mark()
    result = _ok(
        await procs.run_client(
            "ad", "deadline", "--n", str(N_SLOW), "--grpc-timeout-ms", "300", "--wait-s", "5", target=target
        )
    )
    assert result["error"]["code"] == "DEADLINE_EXCEEDED", result
    assert result["error"]["message"].startswith("regproxy ingress: deadline of 300 ms exceeded"), result
    assert 2 <= result["received"] <= 4, result
    # And the application's stream is cancelled (waited for here, so no later test sees it end).
    end = await _stream_end(fleet.servers[0], since)
    assert end["outcome"] == "cancelled", end


async def _stream_end(server: procs.ServerProc, since: int) -> dict[str, Any]:
    return await server.wait_event(lambda e: e["event"] == "stream_end", since=since, timeout=3.0)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_consumer_cancelling_cancels_the_providers_stream(fleet: Fleet) -> None:
    marks = [s.mark() for s in fleet.servers]
    result = _ok(await fleet.client("cancel", "--n", str(N_SLOW), "--after", "2"))
    assert result["how"] == "rst" and len(result["received"]) == 2
    ends = await asyncio.gather(
        *(_stream_end(s, m) for s, m in zip(fleet.servers, marks, strict=True)), return_exceptions=True
    )
    ended = [e for e in ends if isinstance(e, dict)]
    assert len(ended) == 1 and ended[0]["outcome"] == "cancelled" and 2 <= ended[0]["sent"] < N_SLOW, ends


@pytest.mark.asyncio(loop_scope="module")
async def test_5000_calls_spread_over_two_providers_within_3_points(fleet: Fleet) -> None:
    # Dubbo's random load balancer (the subscription's default, as a Dubbo consumer's): equal weights.
    result = _ok(await fleet.client("unary", "--count", "5000", timeout=120))
    counts = result["counts"]
    assert sum(counts.values()) == 5000
    shares = {name: n / 5000 for name, n in counts.items()}
    assert set(shares) == {"a1", "a2"} and all(abs(share - 0.5) <= 0.03 for share in shares.values()), shares
    print(f"5000 calls: {counts}")


@pytest.mark.asyncio(loop_scope="module")
async def test_grpcio_calls_the_apache_dubbo_servers_through_the_sidecars(fleet: Fleet) -> None:
    unary = _ok(await fleet.client("unary", "--count", "20", kind="grpc"))
    assert set(unary["counts"]) <= {"a1", "a2"} and sum(unary["counts"].values()) == 20
    assert len(_ok(await fleet.client("server-stream", "--n", "5", kind="grpc"))["replies"]) == 5
    assert _ok(await fleet.client("bidi", "--n", "5", kind="grpc"))["echoes"] == [
        f"ping-{i}" for i in range(5)
    ]
    # grpcio sends its own deadline: the sidecars pass it on as what is left of it.
    result = _ok(await fleet.client("deadline", "--n", str(N_SLOW), "--timeout-ms", "350", kind="grpc"))
    assert 2 <= result["received"] <= 4, result


@pytest.mark.asyncio(loop_scope="module")
async def test_the_sidecars_show_triple_in_metrics_and_views(fleet: Fleet) -> None:
    await fleet.client("unary", "--count", "3")
    m = await fleet.consumer.metrics()
    assert value(m, "regproxy_requests_total", listener="egress", protocol="tri") >= 3
    assert (
        value(m, "regproxy_responses_total", listener="egress", protocol="tri", status="0", status_name="OK")
        >= 3
    )
    hosts = await cluster_hosts(fleet.consumer)
    assert {h["address"] for h in hosts} == {f"127.0.0.1:{p.ingress}" for p in fleet.providers}
    assert all(h["protocols"] == ["tri"] for h in hosts), hosts
    provider = await fleet.providers[0].metrics()
    assert value(provider, "regproxy_requests_total", listener="ingress", protocol="tri") >= 1
    # The ingress checks its Triple-only application with HTTP/2 PINGs: up, nothing suspended.
    _status, stats = await fleet.providers[0].admin_get("/api/v1/stats")
    (check,) = stats["health"]["app_check"].values()
    assert check["up"] is True and not stats["health"]["suspended_app_ports"], stats["health"]


@pytest.mark.asyncio(loop_scope="module")
async def test_provider_nodes_are_tri_urls_at_each_ingress(fleet: Fleet) -> None:
    # Not the zk fixture: it empties /dubbo, which would unregister the fleet.
    zk = KazooClient(hosts=fleet.registry.removeprefix("zookeeper://"), timeout=10.0)
    await asyncio.to_thread(zk.start, 15)
    try:
        nodes = await asyncio.to_thread(zk.get_children, f"/dubbo/{IFACE}/providers")
    finally:
        await asyncio.to_thread(zk.stop)
    urls = sorted(unquote(n) for n in nodes)
    assert [u.split("?")[0] for u in urls] == sorted(
        f"tri://127.0.0.1:{p.ingress}/{IFACE}" for p in fleet.providers
    )
