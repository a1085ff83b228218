"""upstream.user_timeout_ms: an upstream host that vanishes without a reset (power, a cut link) is
given up on within the bound, with active health checks off and requests whose own deadline is far
away.

    host (this test)                         pod "provider" (a network namespace, tests/netns.py)
    DubboClient -> egress Listener  ------>  demo provider <pod-ip>:20880
                   user_timeout_ms 2000
                   request timeout 30 s

The pod is cut off by setting its veth down on the bridge side: its packets vanish, no reset, no
FIN. Without the bound the requests in flight would wait for their 30 s deadline, and the connection
would look open for TCP's ~15 minutes. Two ways a request can be in flight, both bounded:

* acknowledged before the cut, its answer not yet due (EchoService.sleep): nothing is
  unacknowledged, so TCP retransmits nothing; keepalive probes find the silence;
* written after the cut: never acknowledged, TCP_USER_TIMEOUT ends the retransmissions.

Each time the pod comes back, the next request connects afresh and is answered.

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q -s tests/test_upstream_timeout.py   # prints the figures
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from regproxy.config import Config, ConfigError
from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.proxy.upstream import UpstreamConnection, silence_bound_options
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from tests.netns import PodNetwork
from tests.test_pods import PodProc, netns_ready  # noqa: F401 - netns_ready is a fixture used here
from tests.wait import wait_for

ECHO = "org.apache.dubbo.samples.api.EchoService"
APP_PORT = 20880
USER_TIMEOUT_MS = 2000
REQUEST_TIMEOUT_S = 30.0
# Detected within the bound plus the kernel's granularity (keepalive probes go at whole seconds).
BOUND_S = USER_TIMEOUT_MS / 1000 + 1.5


@dataclass
class World:
    net: PodNetwork
    pod_ip: str
    upstream: str  # the provider's address, as the egress dials it
    egress: Listener
    provider: PodProc

    async def reachable(self, timeout: float) -> None:
        """Until the provider accepts a connection from here (at the start, and after the veth
        came up again: the link takes a moment)."""

        async def accepts() -> bool:
            self.provider.check_running()
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection(self.pod_ip, APP_PORT), 0.5)
            except (OSError, TimeoutError):
                return False
            w.close()
            return True

        await wait_for(accepts, timeout, "the provider in its pod", detail=self.provider.log_tail)

    async def reconnect(self) -> None:
        await asyncio.to_thread(self.net.reconnect, "provider")
        await self.reachable(10)

    def connection(self) -> UpstreamConnection:
        assert self.egress.forwarder is not None
        (conn,) = self.egress.forwarder.pool._conns[self.upstream]
        return conn


@pytest.fixture
async def world(netns_ready: None, tmp_path: Path) -> AsyncIterator[World]:  # noqa: F811
    with PodNetwork(["provider"]) as net:
        pod = net.pods["provider"]
        provider = PodProc("provider", pod.exec_args(
            sys.executable, "-m", "regproxy", "demo-provider", "--name", "pod", "--host", "0.0.0.0",
            "--port", str(APP_PORT),
        ), tmp_path / "provider.log")  # fmt: skip
        await provider.start()
        upstream = f"{pod.ip}:{APP_PORT}"
        table = RoutingTable(
            routes=[Route(name="echo", match=RouteMatch(service=ECHO), cluster="pod")],
            clusters=[Cluster(name="pod", hosts=(Host(address=upstream),))],
        )
        egress = Listener(
            "egress",
            ListenerSettings(
                host="127.0.0.1",
                port=0,
                max_body=1 << 20,
                default_timeout_ms=int(REQUEST_TIMEOUT_S * 1000),
                connect_timeout_ms=1000,
                connections_per_host=1,
                user_timeout_ms=USER_TIMEOUT_MS,
            ),
            TableHolder(table),
        )
        await egress.start()
        world = World(net, pod.ip, upstream, egress, provider)
        try:
            await world.reachable(20)
            yield world
        finally:
            await egress.stop()
            await provider.kill()


def unacknowledged(conn: UpstreamConnection) -> int:
    """Segments the connection has sent that its peer has not acknowledged (tcp_info.tcpi_unacked)."""
    assert conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    # struct tcp_info: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, ...
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("5I", info, 8)[4])


async def answered(client: DubboClient) -> None:
    assert await client.call(ECHO, "echo", ["x"], timeout=REQUEST_TIMEOUT_S) == "x"


async def fails_within_bound(call: asyncio.Future[object], cut_at: float, what: str) -> float:
    with pytest.raises(DubboCallError) as err:
        await asyncio.wait_for(call, REQUEST_TIMEOUT_S)
    took = time.monotonic() - cut_at
    message = str(err.value)
    print(f"{what}: failed {took:.2f} s after the cut: {message}")
    assert "acknowledged nothing for 2000 ms (upstream.user_timeout_ms)" in message, message
    assert took < BOUND_S, f"{what}: failed {took:.2f} s after the cut (bound {BOUND_S} s)"
    return took


@pytest.mark.netns
@pytest.mark.process
@pytest.mark.timeout(60)
async def test_a_vanished_provider_fails_requests_within_the_user_timeout(world: World) -> None:
    client = await DubboClient.connect("127.0.0.1", world.egress.address[1])
    try:
        await answered(client)
        first = world.connection()
        assert first.transport is not None
        sock = first.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_MS
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1

        # --- acknowledged before the cut (keepalive finds the silence).
        call = asyncio.ensure_future(client.call(ECHO, "sleep", [20_000], timeout=REQUEST_TIMEOUT_S))
        await wait_for(lambda: first.pending and unacknowledged(first) == 0, 5, "the request acknowledged")
        cut_at = time.monotonic()
        await asyncio.to_thread(world.net.cut, "provider")
        keepalive_s = await fails_within_bound(call, cut_at, "acknowledged request")
        await world.reconnect()
        await answered(client)  # a new connection
        second = world.connection()
        assert second is not first

        # --- written after the cut (TCP_USER_TIMEOUT ends the retransmissions).
        cut_at = time.monotonic()
        await asyncio.to_thread(world.net.cut, "provider")
        call = asyncio.ensure_future(client.call(ECHO, "echo", ["lost"], timeout=REQUEST_TIMEOUT_S))
        await wait_for(lambda: second.pending and unacknowledged(second) > 0, 5, "the request written")
        retransmit_s = await fails_within_bound(call, cut_at, "unacknowledged request")
        await world.reconnect()
        await answered(client)
        assert world.connection() is not second
        print(
            f"user_timeout_ms={USER_TIMEOUT_MS}, request timeout {REQUEST_TIMEOUT_S:.0f} s: acknowledged "
            f"request failed after {keepalive_s:.2f} s, unacknowledged after {retransmit_s:.2f} s"
        )
    finally:
        client.close()


def keepalive_of(user_timeout_ms: int) -> dict[str, int]:
    names = {getattr(socket, n): n for n in ("TCP_USER_TIMEOUT", "TCP_KEEPIDLE", "TCP_KEEPINTVL")}
    names[socket.SO_KEEPALIVE] = "SO_KEEPALIVE"
    return {names[option]: value for _level, option, value in silence_bound_options(user_timeout_ms)}


def test_keepalive_probes_reach_the_bound() -> None:
    """Probes start after half the bound of silence; with TCP_USER_TIMEOUT set the kernel gives up
    at the first probe at or past the bound: idle + k * interval lands on it."""
    assert silence_bound_options(0) == []
    for bound_ms, idle, interval in ((1000, 1, 1), (2000, 1, 1), (10_000, 5, 1), (60_000, 30, 10)):
        got = keepalive_of(bound_ms)
        assert got == {"SO_KEEPALIVE": 1, "TCP_USER_TIMEOUT": bound_ms, "TCP_KEEPIDLE": idle,
                       "TCP_KEEPINTVL": interval}, bound_ms  # fmt: skip
        # The kernel gives up at the first probe time idle + k * interval (k >= 1) at or past the
        # bound: on it, except below 2 s (the first probe goes at 1 s, the verdict a second later).
        gives_up = next(
            idle + k * interval for k in itertools.count(1) if idle + k * interval >= bound_ms / 1000
        )
        assert gives_up == max(bound_ms / 1000, 2), bound_ms


def test_user_timeout_ms_defaults_to_10_s_and_refuses_out_of_range_values() -> None:
    assert Config.from_dict({}).upstream.user_timeout_ms == 10_000
    assert Config.from_dict({"upstream": {"user_timeout_ms": 0}}).upstream.user_timeout_ms == 0
    assert Config.from_dict({"upstream": {"user_timeout_ms": 1000}}).upstream.user_timeout_ms == 1000
    for bad in (500, -1, 3_600_001):
        with pytest.raises(ConfigError) as err:
            Config.from_dict({"upstream": {"user_timeout_ms": bad}})
        assert "upstream.user_timeout_ms" in str(err.value), bad
