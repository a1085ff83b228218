"""The forwarding engine: the egress and ingress listeners, their upstream pools, their tables.

Egress routes consumer requests by the routing table (static routes from the config, dynamic
ones from subscriptions) to provider sidecars. Ingress hands requests from peer sidecars to the
local application by its own table (see ``regproxy.discovery.ingress_table``). The engine only
reads tables; it never talks to a registry.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from regproxy.dubbo.encode import readonly_event
from regproxy.proxy.batch import Batcher
from regproxy.proxy.flow import FlowLimits
from regproxy.proxy.forwarder import Forwarder
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.loops import LoopGuard
from regproxy.proxy.upstream import UpstreamEvents, UpstreamPool
from regproxy.routing import TableHolder
from regproxy.tls import UpstreamTLS
from regproxy.triple.forwarder import TripleForwarder

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ListenerSettings:
    host: str
    port: int
    max_body: int
    default_timeout_ms: int
    connect_timeout_ms: int
    connections_per_host: int
    max_connections: int = 10000
    idle_timeout_s: float = 300.0
    flow: FlowLimits | None = None  # per-connection bounds; None: FlowLimits' defaults
    # Egress honours each request's `timeout` attachment. Ingress does not read it (the egress
    # already enforces it): its default_timeout_ms is only an upper bound against a hung app.
    timeout_from_attachment: bool = True
    # Mutual TLS (regproxy/tls.py): the ingress serves it, the egress dials it.
    server_ssl: ssl.SSLContext | None = None
    handshake_timeout_s: float = 5.0
    upstream_tls: UpstreamTLS | None = None
    # TCP_USER_TIMEOUT + keepalive on upstream connections (UpstreamPool); 0 = the kernel's defaults.
    user_timeout_ms: int = 0


class Listener:
    """One listening socket with its forwarder and upstream pool."""

    def __init__(
        self, name: str, settings: ListenerSettings, table: TableHolder, guard: LoopGuard | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.table = table
        # Shared by a sidecar's two listeners, so that each recognises the other's connections (a
        # listener alone still catches loops to itself).
        self.guard = guard if guard is not None else LoopGuard()
        self.server: asyncio.AbstractServer | None = None
        self.forwarder: Forwarder | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when 0 was asked for)."""
        assert self.server is not None
        sock = self.server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        batcher = Batcher(loop)
        s = self.settings
        flow = s.flow if s.flow is not None else FlowLimits()

        def make_pool(events: UpstreamEvents) -> UpstreamPool:
            return UpstreamPool(
                loop,
                batcher,
                events,
                per_host=s.connections_per_host,
                connect_timeout_s=s.connect_timeout_ms / 1000,
                max_body=s.max_body,
                tls=s.upstream_tls,
                guard=self.guard,
                name=self.name,
                max_unsent=flow.max_unsent,
                user_timeout_ms=s.user_timeout_ms,
            )

        fwd = Forwarder(
            self.name,
            loop,
            self.table,
            batcher,
            make_pool,
            default_timeout_ms=s.default_timeout_ms,
            timeout_from_attachment=s.timeout_from_attachment,
            max_connections=s.max_connections,
            guard=self.guard,
            flow=flow,
        )
        # The same port takes Triple (HTTP/2): the listener hands such connections over at their
        # first bytes (regproxy.proxy.listener._Vetting).
        fwd.triple = TripleForwarder(
            self.name,
            loop,
            self.table,
            guard=self.guard,
            default_timeout_ms=s.default_timeout_ms,
            timeout_from_attachment=s.timeout_from_attachment,
            connect_timeout_s=s.connect_timeout_ms / 1000,
            max_connections=s.max_connections,
            tls=s.upstream_tls,
        )
        self.forwarder = fwd
        try:
            self.server = await loop.create_server(
                lambda: DownstreamConnection(fwd, s.max_body),
                s.host,
                s.port,
                reuse_address=True,
                backlog=1024,
                # Handshakes that fail (plaintext, no or a foreign certificate) close the connection
                # before DownstreamConnection exists: such a client is never served.
                **(
                    {"ssl": s.server_ssl, "ssl_handshake_timeout": s.handshake_timeout_s}
                    if s.server_ssl
                    else {}
                ),
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"{self.name}: cannot listen on {s.host}:{s.port}: {exc.strerror}"
            ) from exc
        log.info("%s listening on %s:%d%s", self.name, *self.address, " (mutual TLS)" if s.server_ssl else "")
        self._sweeper = loop.create_task(self._close_idle(s.idle_timeout_s))

    async def _close_idle(self, idle_s: float) -> None:
        """Close client connections with nothing in flight and no bytes for ``idle_s`` seconds.

        A sweep every quarter of the idle time costs one pass over the connections, instead of a
        timer reset on every frame.
        """
        loop = asyncio.get_running_loop()
        fwd = self.forwarder
        assert fwd is not None
        while True:
            await asyncio.sleep(max(0.05, min(idle_s / 4, 5.0)))
            cutoff = loop.time() - idle_s
            for down in list(fwd.downstreams):
                if down.in_flight <= 0 and down.last_active < cutoff and down.transport is not None:
                    partial = down.partial_bytes
                    if partial:
                        log.warning(
                            "%s: closing connection from %s: %d bytes of a frame and no whole frame "
                            "in %.0f s (limits.idle_timeout_s)", self.name, down.peer, partial, idle_s,
                        )  # fmt: skip
                    else:
                        log.info("%s: closing idle connection from %s", self.name, down.peer)
                    down.transport.close()
            triple = fwd.triple
            if triple is not None:
                for tdown in list(triple.downstreams):
                    if not tdown.exchanges and tdown.last_active < cutoff and tdown.transport is not None:
                        log.info("%s: closing idle HTTP/2 connection from %s", self.name, tdown.peer)
                        tdown.close()

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already open keep being served."""
        if self.server is not None:
            self.server.close()

    def announce_readonly(self) -> None:
        """Dubbo's read-only event on every client connection, and a GOAWAY on every HTTP/2 one:
        send no new requests here."""
        if self.forwarder is not None:
            for i, down in enumerate(list(self.forwarder.downstreams)):
                if down.closing:
                    continue  # half-closed after a broken stream: nothing more may be written
                down.queue(readonly_event(i + 1))
                down.flush()
            triple = self.forwarder.triple
            if triple is not None:
                for tdown in list(triple.downstreams):
                    tdown.announce_goaway()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        if self.forwarder is not None:
            for down in list(self.forwarder.downstreams):
                if down.transport is not None:
                    down.transport.close()
            await self.forwarder.pool.close()
            if self.forwarder.triple is not None:
                await self.forwarder.triple.close()
        if self.server is not None:
            await self.server.wait_closed()
