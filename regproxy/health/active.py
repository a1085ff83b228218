"""Active health checks: a Dubbo heartbeat to every upstream host, every ``interval_s``.

Each host gets one kept connection of its own (not a data-path connection: a check must not queue
behind requests, and a request must not fail because a check closed its connection). A heartbeat
is an event request (flag 0xe2, body ``N``); the host must answer with an event response (0x22)
carrying the same id within ``timeout_s``, connecting included. ``unhealthy_threshold`` failures in
a row make a healthy host unhealthy, ``healthy_threshold`` answers in a row make it healthy again.
A failed check closes the connection (its state is unknown); the next round connects again.

Hosts start healthy: a host that just appeared in the table is routed to at once, as without
health checks, and taken out only when it fails. A host that sends the read-only event (a
provider or sidecar shutting down) is unhealthy at once. Hosts that left the table are forgotten,
their connections closed.

A host made unhealthy by failed checks (not one that announced its shutdown: its requests in flight
still get their answers) is also passed to ``on_unreachable``: the sidecar drops its data-path
connections to it, see ``UpstreamPool.drop``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from regproxy.config.health import ActiveSettings
from regproxy.dubbo.encode import heartbeat_reply, heartbeat_request
from regproxy.dubbo.frame import FLAG_EVENT, FLAG_REQUEST, FrameParser, ProtocolError, Status
from regproxy.health.h2ping import H2PingProbe, Pinger
from regproxy.health.rounds import Rounds
from regproxy.routing.model import SPEAKS_DUBBO

if TYPE_CHECKING:
    from regproxy.tls import UpstreamTLS

log = logging.getLogger(__name__)

# Heartbeat replies are tiny; a peer that sends big frames on this connection is not one to wait for.
_MAX_BODY = 64 * 1024
_MAX_ID = 2**63 - 1

HostsProvider = Callable[[], Iterable[str]]


class _Connection(asyncio.Protocol):
    """A probe's kept connection: heartbeat replies matched by id, heartbeats from the peer answered."""

    def __init__(self, on_readonly: Callable[[], None] | None) -> None:
        self._on_readonly = on_readonly
        self.transport: asyncio.Transport | None = None
        self._parser = FrameParser(_MAX_BODY)
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            self._lost(f"malformed stream: {exc}")
            self.close()
            return
        for frame in frames:
            if frame.flag & FLAG_REQUEST:
                if frame.flag & FLAG_EVENT:
                    if frame.two_way:
                        self.write(heartbeat_reply(frame.request_id))
                    elif frame.body[-1:] == b"R" and self._on_readonly is not None:
                        self._on_readonly()  # read-only: the peer is shutting down
                continue
            fut = self._waiting.pop(frame.request_id, None)
            if fut is not None and not fut.done():
                # Only an event reply answers a heartbeat; anything else under our id is a broken peer.
                fut.set_result(frame.status if frame.flag & FLAG_EVENT else -1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost("connection closed" + (f" ({exc})" if exc else ""))

    def _lost(self, why: str) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(why))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def ping(self, request_id: int) -> None:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        self.write(heartbeat_request(request_id))
        try:
            status = await fut
        finally:
            self._waiting.pop(request_id, None)
        if status != Status.OK:
            why = "a non-event frame" if status < 0 else f"status {status}"
            raise ConnectionError(f"answered the heartbeat with {why}")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # nothing of ours is worth flushing


class HeartbeatProbe:
    """Heartbeats one ``HOST:PORT`` over a kept connection (made on first use, and again after a
    failure). ``check`` raises (naming the reason) unless the answer came within the timeout."""

    def __init__(
        self,
        address: str,
        *,
        on_readonly: Callable[[], None] | None = None,
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.address = address
        self.on_readonly = on_readonly
        self.tls = tls  # the egress's: a TLS ingress refuses a plaintext heartbeat
        self._conn: _Connection | None = None
        self._next_id = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def check(self, timeout_s: float) -> None:
        self._next_id = rid = self._next_id + 1 if self._next_id < _MAX_ID else 1
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancellation (3.11)
                await self._ping(rid)
        except BaseException:
            self.close()  # its state is unknown (a late answer, half a frame): start again next time
            raise

    async def _ping(self, rid: int) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            host, _, port = self.address.rpartition(":")
            host = host.strip("[]")
            conn = self._conn = _Connection(self._readonly)
            tls = self.tls.connect_args(self.address, host) if self.tls is not None else {}
            await asyncio.get_running_loop().create_connection(lambda: conn, host, int(port), **tls)
        await conn.ping(rid)

    def _readonly(self) -> None:
        self.close()  # later answers on this connection mean nothing: the peer is going away
        if self.on_readonly is not None:
            self.on_readonly()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class _HostState:
    healthy: bool = True
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive
    probe: HeartbeatProbe | H2PingProbe | None = None
    last_error: str | None = None
    checked_at: float | None = None  # wall clock, for people


class ActiveChecker:
    """Heartbeats every address ``hosts_provider()`` returns (read again each round)."""

    def __init__(
        self,
        settings: ActiveSettings,
        hosts_provider: HostsProvider,
        *,
        on_change: Callable[[str, bool], None] | None = None,
        tls: UpstreamTLS | None = None,
        on_unreachable: Callable[[str], None] | None = None,
        speaks_of: Callable[[str], int] | None = None,
        pinger: Pinger | None = None,
    ) -> None:
        self.settings = settings
        self.hosts_provider = hosts_provider
        # What each host speaks (Host.speaks): a Triple-only host gets HTTP/2 PINGs through
        # ``pinger`` (the egress's TriplePool.ping), not heartbeats.
        self.speaks_of = speaks_of
        self.pinger = pinger
        self.on_change = on_change
        self.tls = tls
        self.on_unreachable = on_unreachable
        self.unhealthy: set[str] = set()  # what the data path reads
        self._hosts: dict[str, _HostState] = {}
        self._rounds = Rounds("health-active", "active health check", self.check_once, settings.interval_s)
        self.rounds = 0

    def available(self, address: str) -> bool:
        return address not in self.unhealthy

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.settings.enabled:
            self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
        for st in self._hosts.values():
            if st.probe is not None:
                st.probe.close()
                st.probe = None

    async def check_once(self) -> None:
        """One round: every current host checked concurrently; hosts gone from the table forgotten.
        Raises what ``hosts_provider`` raises (the round's runner logs it)."""
        current = set(self.hosts_provider())
        for address in [a for a in self._hosts if a not in current]:
            st = self._hosts.pop(address)
            if st.probe is not None:
                st.probe.close()
            self.unhealthy.discard(address)
        if current:
            await asyncio.gather(*(self._check(a) for a in current))
        self.rounds += 1

    # --- one check ----------------------------------------------------------------------------

    async def _check(self, address: str) -> None:
        st = self._hosts.get(address)
        if st is None:
            st = self._hosts[address] = _HostState()
        if st.probe is None:
            on_readonly = lambda: self._readonly(address)  # noqa: E731 - one closure for either probe
            if (
                self.pinger is not None
                and self.speaks_of is not None
                and not self.speaks_of(address) & SPEAKS_DUBBO
            ):
                st.probe = H2PingProbe(address, self.pinger)
            else:
                st.probe = HeartbeatProbe(address, on_readonly=on_readonly, tls=self.tls)
        try:
            await st.probe.check(self.settings.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(address, st, failure_reason(exc))
        else:
            self._answered(address, st)
        st.checked_at = time.time()

    def _answered(self, address: str, st: _HostState) -> None:
        st.failures = 0
        st.successes += 1
        st.last_error = None
        if not st.healthy and st.successes >= self.settings.healthy_threshold:
            st.healthy = True
            self.unhealthy.discard(address)
            log.info("health: %s answers heartbeats again: healthy", address)
            if self.on_change is not None:
                self.on_change(address, True)

    def _failed(self, address: str, st: _HostState, reason: str) -> None:
        st.successes = 0
        st.failures += 1
        st.last_error = reason
        if st.healthy and st.failures >= self.settings.unhealthy_threshold:
            self._mark_unhealthy(address, st, f"{st.failures} heartbeats failed, the last: {reason}")
            if self.on_unreachable is not None:
                self.on_unreachable(address)

    def _mark_unhealthy(self, address: str, st: _HostState, why: str) -> None:
        st.healthy = False
        self.unhealthy.add(address)
        log.warning("health: %s is unhealthy: %s", address, why)
        if self.on_change is not None:
            self.on_change(address, False)

    def _readonly(self, address: str) -> None:
        st = self._hosts.get(address)
        if st is None:
            return
        st.successes = 0
        st.last_error = "sent the read-only event (shutting down)"
        if st.healthy:
            self._mark_unhealthy(address, st, st.last_error)

    # --- views --------------------------------------------------------------------------------

    def describe(self, address: str) -> dict[str, Any]:
        st = self._hosts.get(address)
        if st is None:
            return {"healthy": True, "checked": False}
        return {
            "healthy": st.healthy,
            "checked": st.checked_at is not None,
            "checked_at": st.checked_at,
            "consecutive_check_failures": st.failures,
            "last_error": st.last_error,
            "connected": st.probe is not None and st.probe.connected,
        }

    def known(self) -> set[str]:
        return set(self._hosts)
