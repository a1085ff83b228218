"""Provider side: heartbeat the local application and keep it out of the registries while it is down.

``AppChecker`` heartbeats one address (``127.0.0.1:PORT``). After ``failures`` failed heartbeats in
a row it calls ``on_down`` once; when the application answers again it calls ``on_up`` once. A
read-only event from the application (a Dubbo provider shutting down) counts as down at once.

``AppWatch`` runs one checker per application port that publications point at (``spec.port``; an
application can publish services on several ports), started and stopped as publications come and
go, and suspends / resumes the publications of that port in Discovery. It checks nothing while
nothing is published: there is nothing to take out of the registries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from regproxy.config.health import AppCheckSettings
from regproxy.health.active import HeartbeatProbe, failure_reason
from regproxy.health.h2ping import H2PingProbe, Pinger
from regproxy.health.rounds import Rounds

if TYPE_CHECKING:
    from regproxy.discovery import Discovery

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[Any]]


class AppChecker:
    """``pinger``: the port serves Triple only, and is checked with HTTP/2 PINGs through it
    (health.h2ping)."""

    def __init__(
        self,
        settings: AppCheckSettings,
        address: str,
        on_down: Callback,
        on_up: Callback,
        pinger: Pinger | None = None,
    ) -> None:
        self.settings = settings
        self.address = address
        self.on_down = on_down
        self.on_up = on_up
        self.up = True  # assumed until it fails: it just published, or is starting with the sidecar
        self.failures = 0
        self.last_error: str | None = None
        self.checked_at: float | None = None
        self._readonly = False
        self.triple = pinger is not None
        self._probe: HeartbeatProbe | H2PingProbe = (
            H2PingProbe(address, pinger)
            if pinger is not None
            else HeartbeatProbe(address, on_readonly=self._on_readonly)
        )

    def _on_readonly(self) -> None:
        self._readonly = True

    async def check_once(self) -> None:
        try:
            await self._probe.check(self.settings.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self.last_error = failure_reason(exc)
        else:
            self.failures = 0
            self.last_error = None
        if self._readonly:  # since the last check it said it is shutting down: down, whatever it answered
            self._readonly = False
            self.failures = max(self.failures + 1, self.settings.failures)
            self.last_error = "the application sent the read-only event (shutting down)"
        self.checked_at = time.time()
        if self.up and self.failures >= self.settings.failures:
            self.up = False
            log.warning("app check: %s is down (%d failed heartbeats, %s)", self.address, self.failures,
                        self.last_error)  # fmt: skip
            await self._call(self.on_down)
        elif not self.up and self.failures == 0:
            self.up = True
            log.info("app check: %s answers heartbeats again", self.address)
            await self._call(self.on_up)

    async def _call(self, callback: Callback) -> None:
        try:
            await callback()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("app check: callback for %s failed", self.address)

    async def stop(self) -> None:
        """Close the heartbeat connection (AppWatch runs the rounds: ``check_once``)."""
        self._probe.close()

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "up": self.up,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
        }


class AppWatch:
    """One AppChecker per published application port, wired to Discovery's suspend / resume."""

    def __init__(
        self,
        settings: AppCheckSettings,
        discovery: Discovery,
        *,
        host: str = "127.0.0.1",
        pinger: Pinger | None = None,
    ) -> None:
        self.settings = settings
        self.discovery = discovery
        # PINGs a Triple-only port over the ingress's connection to it (TriplePool.ping); without
        # one, such ports get heartbeats like the others.
        self.pinger = pinger
        self.host = host
        self.checkers: dict[int, AppChecker] = {}
        self._rounds = Rounds("app-watch", "app check", self.check_once, settings.interval_s)

    def start(self) -> None:
        if self.settings.enabled:
            self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
        for checker in self.checkers.values():
            await checker.stop()
        self.checkers.clear()

    async def check_once(self) -> None:
        ports = self.discovery.published_ports()
        triple = self.discovery.triple_only_ports() if self.pinger is not None else set()
        # A port whose protocols changed (a Dubbo publication added to a Triple port) gets the
        # other probe.
        for port in [p for p in self.checkers if p not in ports or self.checkers[p].triple != (p in triple)]:
            await self.checkers.pop(port).stop()
            if port in self.discovery.suspended:  # nothing left to resume, but forget the suspension
                await self.discovery.resume_publications(port=port)
        for port in ports:
            if port not in self.checkers:
                self.checkers[port] = self._checker(port, port in triple)
        if self.checkers:
            await asyncio.gather(*(c.check_once() for c in list(self.checkers.values())))

    def _checker(self, port: int, triple: bool) -> AppChecker:
        address = f"{self.host}:{port}"
        discovery = self.discovery

        async def down() -> None:
            what = "HTTP/2 PINGs" if triple else "heartbeats"
            reason = f"the application on {address} does not answer {what}"
            await discovery.suspend_publications(reason, port=port)

        async def up() -> None:
            await discovery.resume_publications(port=port)

        return AppChecker(self.settings, address, down, up, self.pinger if triple else None)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {str(port): c.describe() for port, c in sorted(self.checkers.items())}
