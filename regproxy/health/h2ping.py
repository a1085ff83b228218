"""Health checks of a Triple-only address: an HTTP/2 PING on the connection calls use.

A Dubbo heartbeat means nothing to a port that speaks only HTTP/2 (an application's Triple port,
a provider registered ``tri://`` only): it would be counted down while it serves. HTTP/2 has its
own liveness frame, PING (RFC 9113 §6.7), which every server answers with an ACK; gRPC's
keepalive uses it. The PING goes on the listener's own connection to the host
(``TriplePool.ping``), never a connection of its own: apache-dubbo's Python server serves only the
connection it accepted last, so a checker's connection would cut the calls off. ``H2PingProbe``
has HeartbeatProbe's interface, so the app watch and the active checks pick one or the other by
protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# Sends a PING to an address over the connection calls use, and returns once it is answered.
Pinger = Callable[[str], Awaitable[None]]


class H2PingProbe:
    """PINGs one ``HOST:PORT`` through ``pinger``; ``check`` raises (naming the reason) unless the
    ACK came within the timeout."""

    def __init__(self, address: str, pinger: Pinger) -> None:
        self.address = address
        self._pinger = pinger

    @property
    def connected(self) -> bool:
        return True  # the pool keeps the connection

    async def check(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._pinger(self.address)

    def close(self) -> None:
        """Nothing of its own to close: the connection is the pool's."""
