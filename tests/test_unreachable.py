"""A host that stops answering without closing its connections (power loss, a cut network): the
active checks declare it unreachable and the egress drops its connections to it, so requests in
flight fail at once instead of at their deadline, and nothing more is written on a connection that
TCP would keep "open" for minutes (tests/test_pods.py shows it with a real cut: without the drop,
calls to the host time out for seconds after it came back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from regproxy.config import load_config
from regproxy.config.health import ActiveSettings
from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.demo.provider import GREETINGS_SERVICE as GREET
from regproxy.demo.provider import Provider
from regproxy.dubbo.encode import readonly_event
from regproxy.dubbo.frame import Status
from regproxy.health.active import ActiveChecker
from regproxy.sidecar import Sidecar
from tests.ports import free_port

FAST = ActiveSettings(interval_s=0.15, timeout_s=0.15, unhealthy_threshold=2, healthy_threshold=2)


@dataclass
class SilentConn(asyncio.Protocol):
    """Accepts and reads, never answers, never closes: a host gone dark behind a live socket."""

    data: bytearray = field(default_factory=bytearray)
    transport: asyncio.BaseTransport | None = None
    lost_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = time.monotonic()


@pytest.fixture
async def silent() -> AsyncIterator[tuple[str, list[SilentConn]]]:
    conns: list[SilentConn] = []

    def accept() -> SilentConn:
        conns.append(SilentConn())
        return conns[-1]

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", conns
    finally:
        server.close()
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        await server.wait_closed()


async def test_unreachable_is_reported_for_failed_checks_not_for_a_shutdown(
    silent: tuple[str, list[SilentConn]],
) -> None:
    dark, _ = silent
    closed = f"127.0.0.1:{free_port()}"
    leaving = Provider(name="leaving")
    await leaving.start("127.0.0.1", 0)
    polite = f"127.0.0.1:{leaving.port}"
    unreachable: list[str] = []
    unhealthy: list[str] = []
    checker = ActiveChecker(
        FAST,
        lambda: [dark, closed, polite],
        on_change=lambda address, ok: None if ok else unhealthy.append(address),
        on_unreachable=unreachable.append,
    )
    try:
        await checker.check_once()
        (conn,) = leaving.connections
        conn.send(readonly_event(0))  # shutting down: unhealthy, but its requests still get answers
        for _ in range(3):
            await checker.check_once()
        assert sorted(unhealthy) == sorted([dark, closed, polite])
        assert sorted(unreachable) == sorted([dark, closed])  # once each, and not the one leaving
    finally:
        await checker.stop()
        await leaving.close(grace=0)


async def test_requests_in_flight_to_a_host_gone_dark_fail_when_the_checks_fail_it(
    silent: tuple[str, list[SilentConn]], tmp_path: Path
) -> None:
    dark, conns = silent
    egress = free_port()
    config = {
        "egress": f"127.0.0.1:{egress}", "ingress": f"127.0.0.1:{free_port()}",
        "api": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}",
        "app_port": 1, "advertise_ip": "127.0.0.1", "data_dir": str(tmp_path), "registries": ["memory://"],
        "clusters": [{"name": "dark", "hosts": [{"address": dark}]}],
        "routes": [{"name": "greet", "match": {"service": GREET}, "cluster": "dark", "retries": 0}],
        "health": {"active": {"interval_s": FAST.interval_s, "timeout_s": FAST.timeout_s,
                              "unhealthy_threshold": FAST.unhealthy_threshold},
                   "outlier": {"enabled": False}, "app_check": {"enabled": False}},
    }  # fmt: skip
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    sidecar = Sidecar(load_config(path))
    await sidecar.start()
    client = await DubboClient.connect("127.0.0.1", egress)
    try:
        started = time.monotonic()
        with pytest.raises(DubboCallError) as failed:
            await client.call(GREET, "sayHi", ["x"], timeout=10)
        took = time.monotonic() - started
        # Failed by the drop (two missed heartbeats, well under a second), not by its 10 s deadline.
        assert failed.value.status == Status.SERVER_ERROR and "closed" in failed.value.message, failed.value
        assert took < 3, took
        (data_conn,) = [c for c in conns if b"sayHi" in c.data]
        assert data_conn.lost_at is not None  # the sidecar closed it: nothing more is written on it
    finally:
        client.close()
        await sidecar.stop()
