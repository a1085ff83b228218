"""The one interface every registry adapter implements; the rest of regproxy sees only this.

Adapters deliver plain values on the event loop: the full, unfiltered list of provider URLs of an
interface each time it changes, and their connection state. Filtering by version and group is the
caller's (the same Dubbo rules for every registry).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

from regproxy.registry.url import DubboURL, Subscription

log = logging.getLogger(__name__)

ProvidersListener = Callable[[list[DubboURL]], None]
StateListener = Callable[[str], None]

# Connection states, as reported to state listeners and shown to operators.
CONNECTING = "connecting"
CONNECTED = "connected"
SUSPENDED = "suspended"  # connection lost, session may still be alive: keep serving what we know
LOST = "lost"  # session expired: ephemeral nodes are gone until we re-create them
STOPPED = "stopped"
# Connected, but the registry refuses our credentials (a wrong password): not ready, nothing written.
AUTH_FAILED = "auth_failed"


class RegistryError(Exception):
    """A registry operation failed; the message names the registry and the cause."""


class RegistryUnavailable(RegistryError):
    """The registry is not reachable right now (the HTTP API answers 503)."""


class Registry(ABC):
    """A service registry as regproxy uses it. All methods are called on the event loop."""

    def __init__(self, name: str) -> None:
        self.name = name  # redacted URL: safe to show
        self._state = CONNECTING
        self._state_listeners: list[StateListener] = []
        self.auth_error = ""  # why the state is AUTH_FAILED (no secret in it), for readiness and logs

    @property
    def state(self) -> str:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state == CONNECTED

    def add_state_listener(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        log.info("registry %s: %s -> %s", self.name, self._state, state)
        self._state = state
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("registry %s: state listener failed", self.name)

    def _require_connected(self, what: str) -> None:
        if self._state == AUTH_FAILED:
            # Not "unavailable": retrying will not help until the credentials are fixed.
            raise RegistryError(f"cannot {what}: {self.auth_error or 'registry authentication failed'}")
        if not self.connected:
            raise RegistryUnavailable(f"registry {self.name} is {self._state}: cannot {what} now")

    @abstractmethod
    async def start(self) -> None:
        """Start connecting in the background; return at once, even if the registry is unreachable."""

    @abstractmethod
    async def stop(self) -> None:
        """Remove this sidecar's nodes (best effort, bounded in time) and disconnect."""

    @abstractmethod
    async def register(self, url: DubboURL) -> None:
        """Create the node for ``url`` and remember it, so it is re-created after a session loss."""

    @abstractmethod
    async def unregister(self, url: DubboURL) -> None:
        """Delete the node for ``url`` and forget it."""

    @abstractmethod
    async def subscribe(self, sub: Subscription, listener: ProvidersListener) -> list[DubboURL]:
        """Watch the providers of ``sub.interface``; return the current ones (unfiltered)."""

    @abstractmethod
    async def unsubscribe(self, sub: Subscription, listener: ProvidersListener) -> None:
        """Stop calling ``listener``; drop the watch when no listener is left."""
