"""Triple through real sidecars and a real ZooKeeper, the other way round from
tests/test_triple_e2e.py: Apache's Python SDK (``apache-dubbo``) as the client of a grpcio server
behind a provider sidecar, and a plain apache-dubbo provider that registers itself in ZooKeeper
with no sidecar (``tri://host:port?service=...``, tests/test_triple_peers.py), which a consumer's
sidecar finds with ``/sub`` and calls directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.peers.triple import greeter, procs
from tests.sidecars import SidecarProc
from tests.test_triple_e2e import cluster_hosts, until_hosts
from tests.zkserver import ZooKeeperServer

pytestmark = [pytest.mark.process, pytest.mark.zookeeper]

IFACE = greeter.INTERFACE


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"], result
    return result


async def test_apache_dubbo_client_calls_a_grpcio_server_through_two_sidecars(
    zk: Any, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    registry = f"zookeeper://{zk_server.hosts}"
    async with procs.running_server("grpc", name="g1") as server:
        provider = SidecarProc("p", tmp_path / "p", registries=[registry], app_port=server.port)
        consumer = SidecarProc("c", tmp_path / "c", registries=[registry], app_port=1)
        try:
            await provider.start()
            await consumer.start()
            pub = {"service": {"interface": IFACE, "port": server.port, "protocol": "tri"}}
            assert (await provider.post("/pub", pub))[0] == 200
            assert (await consumer.post("/sub", {"service": {"interface": IFACE}}))[0] == 200
            await until_hosts(consumer, {f"127.0.0.1:{provider.ingress}"})
            target = f"tri://127.0.0.1:{consumer.egress}"
            assert _ok(await procs.run_client("ad", "unary", "--count", "10", target=target))["counts"] == {
                "g1": 10
            }
            stream = _ok(await procs.run_client("ad", "server-stream", "--n", "4", target=target))
            assert stream["replies"] == [f"g1:{i}" for i in range(4)]
            bidi = _ok(await procs.run_client("ad", "bidi", "--n", "3", target=target))
            assert bidi["echoes"][:3] == ["ping-0", "ping-1", "ping-2"]
            failed = _ok(await procs.run_client("ad", "fail", "--text", "boom 7", target=target))
            # grpcio's own status, passed through both sidecars unchanged.
            assert (failed["error"]["code"], failed["error"]["message"]) == ("FAILED_PRECONDITION", "boom 7")
        finally:
            await consumer.kill()
            await provider.kill()


async def test_a_plain_apache_dubbo_provider_with_no_sidecar_is_routed(
    zk: Any, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    registry = f"zookeeper://{zk_server.hosts}"
    async with (
        procs.running_server("ad", name="z1", registry=registry) as one,
        procs.running_server("ad", name="z2", registry=registry) as two,
    ):
        consumer = SidecarProc("c", tmp_path / "c", registries=[registry], app_port=1)
        try:
            await consumer.start()
            assert (await consumer.post("/sub", {"service": {"interface": IFACE}}))[0] == 200
            await until_hosts(consumer, {f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"})
            hosts = await cluster_hosts(consumer)
            assert all(h["protocols"] == ["tri"] for h in hosts), hosts
            target = f"tri://127.0.0.1:{consumer.egress}"
            result = _ok(await procs.run_client("ad", "unary", "--count", "200", target=target))
            assert set(result["counts"]) == {"z1", "z2"} and sum(result["counts"].values()) == 200, result
            assert (
                _ok(await procs.run_client("ad", "client-stream", "--n", "3", target=target))["reply"][
                    "count"
                ]
                == 3
            )
        finally:
            await consumer.kill()
