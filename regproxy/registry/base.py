"""The one interface every registry adapter implements; the rest of regproxy sees only this.

Adapters deliver plain values on the event loop: the full, unfiltered list of provider URLs of an
interface each time it changes, and their connection state. Filtering by version and group is the
caller's (the same Dubbo rules for every registry), and so is holding back a list that lost every
provider (regproxy.discovery.protection): adapters deliver every list as it is, an empty one too.

An outage is reported in two lines of regproxy's own, whatever the client library logs meanwhile
(registry/repeats.py thins that out): a WARNING when the registry becomes unreachable (the
connection is lost, or a first connection attempt failed) and an INFO when it is connected again,
with how long it was away. ``unreachable_since`` says it meanwhile: a request that needs the
registry is then answered 503 at once rather than after waiting for a connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TypeVar

from regproxy.registry.instances import AppInstance
from regproxy.registry.metadata_info import MetadataInfo
from regproxy.registry.url import DubboURL, Subscription

log = logging.getLogger(__name__)

ProvidersListener = Callable[[list[DubboURL]], None]
# A dynamic rule's content as the config center holds it now: (rule id, text or None = deleted,
# where it was read (a node path, a dataId), its version (mzxid, md5)).  See ``watch_rule``.
RuleListener = Callable[[str, "str | None", str, str], None]
StateListener = Callable[[str], None]
# Dubbo 3 application-level discovery (regproxy.discovery.apps): the applications an interface maps
# to (every name, as the mapping holds them now), and the instances of one application (all of them).
MappingListener = Callable[[tuple[str, ...]], None]
InstancesListener = Callable[[list[AppInstance]], None]
T = TypeVar("T")

# Connection states, as reported to state listeners and shown to operators.
CONNECTING = "connecting"
CONNECTED = "connected"
SUSPENDED = "suspended"  # connection lost, session may still be alive: keep serving what we know
LOST = "lost"  # session expired: ephemeral nodes are gone until we re-create them
STOPPED = "stopped"
# Connected, but the registry refuses our credentials (a wrong password): not ready, nothing written.
AUTH_FAILED = "auth_failed"

# "Back" is said once a connection has held this long: a client that connects and drops again at
# once (Nacos's does, right after its server restarts) is still in the same outage, not a new one.
BACK_SETTLE_S = 1.0


class RegistryError(Exception):
    """A registry operation failed; the message names the registry and the cause."""


class RegistryUnavailable(RegistryError):
    """The registry is not reachable right now (the HTTP API answers 503)."""


def error_text(exc: BaseException) -> str:
    """One line for an error of a registry client: its type and words (a gRPC error's details only,
    where its text spans several lines), at most 300 characters of them."""
    text = str(exc)
    details = re.search(r'details = "([^"]*)"', text)
    if details:
        text = details[1]
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Registry(ABC):
    """A service registry as regproxy uses it. All methods are called on the event loop."""

    def __init__(self, name: str, *, op_timeout_s: float = 5.0) -> None:
        self.name = name  # redacted URL: safe to show
        self._op_timeout_s = op_timeout_s  # the longest wait for one request's answer (``_call``)
        self._state = CONNECTING
        self._state_listeners: list[StateListener] = []
        self.auth_error = ""  # why the state is AUTH_FAILED (no secret in it), for readiness and logs
        # time.monotonic() when the registry became unreachable; None while reachable (or not known
        # to be unreachable yet: a first connection attempt still under way).
        self.unreachable_since: float | None = None
        # The last connection failure the adapter saw (its client's words), for the unreachable line.
        self.connect_error = ""
        self._back_at = 0.0  # when the connection came back (the outage's end, once it has settled)
        self._settling: asyncio.TimerHandle | None = None  # saying "back" once the connection holds
        # Provider entries the adapter could not even turn into a URL (a ZooKeeper node name, a Nacos
        # instance), each counted once: Discovery adds them to its invalid_providers.
        self.unparseable = 0

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
        if state in (SUSPENDED, LOST):
            self._went_unreachable(self.connect_error or f"connection {state}")
        elif state in (CONNECTED, AUTH_FAILED):  # auth_failed: reachable, refusing us (logged apart)
            self._came_back()
        elif state == STOPPED:
            self._cancel_settling()
            self.unreachable_since = None
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("registry %s: state listener failed", self.name)

    def _went_unreachable(self, why: str) -> None:
        """Note (and log, once per outage) that the registry cannot be reached. Adapters call it for
        a failed first connection attempt; lost connections come here through ``_set_state``."""
        if self._settling is not None:  # it came back a moment ago and left again: the same outage
            self._cancel_settling()
            return
        if self.unreachable_since is not None or self._state == STOPPED:
            return
        self.unreachable_since = time.monotonic()
        log.warning(
            "registry %s is unreachable (%s); reconnecting in the background: routes keep the providers "
            "last seen, and new publications and subscriptions on it are answered 503 until it is back",
            self.name,
            why,
        )

    def _came_back(self) -> None:
        if self.unreachable_since is None or self._settling is not None:
            return
        self._back_at = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (a test's direct call): no settling
            self._say_back()
            return
        self._settling = loop.call_later(BACK_SETTLE_S, self._say_back)

    def _say_back(self) -> None:
        self._settling = None
        since, self.unreachable_since = self.unreachable_since, None
        self.connect_error = ""
        if since is not None:
            log.info("registry %s is back after %.1f s unreachable", self.name, self._back_at - since)

    def _cancel_settling(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None

    def _require_connected(self, what: str) -> None:
        if self._state == AUTH_FAILED:
            # Not "unavailable": retrying will not help until the credentials are fixed.
            raise RegistryError(f"cannot {what}: {self.auth_error or 'registry authentication failed'}")
        if not self.connected:
            why = ""
            if self.unreachable_since is not None:
                away = time.monotonic() - self.unreachable_since
                cause = f": {self.connect_error}" if self.connect_error else ""
                why = f" (unreachable for {away:.0f} s{cause})"
            raise RegistryUnavailable(f"registry {self.name} is {self._state}{why}: cannot {what} now")

    async def _call(self, what: str, op: Awaitable[T], *, passthrough: tuple[type[Exception], ...] = ()) -> T:
        """Await one request to the registry (``op``, from the adapter's client), bounded by
        ``op_timeout_s``, with the client's errors mapped to regproxy's two, each naming the registry
        and ``what``: RegistryUnavailable (the API answers 503: later may work) when no answer came
        in time or ``_unreachable`` says why the registry cannot be reached, RegistryError (502) for
        any other failure.  A RegistryError, and the ``passthrough`` errors the adapter handles
        itself, pass as they are."""
        try:
            async with asyncio.timeout(self._op_timeout_s):  # wait_for can swallow a cancellation (3.11)
                return await op
        except TimeoutError:
            raise RegistryUnavailable(
                f"registry {self.name}: {what}: no answer within {self._op_timeout_s:g} s"
            ) from None
        except (RegistryError, *passthrough):
            raise
        except Exception as exc:
            why = self._unreachable(exc)
            if why is not None:
                raise RegistryUnavailable(f"registry {self.name}: {what}: {why}") from exc
            raise RegistryError(f"registry {self.name}: {what} failed: {error_text(exc)}") from exc

    def _unreachable(self, exc: Exception) -> str | None:
        """Why ``exc``, raised by the adapter's client, means the registry cannot be reached right
        now (a lost connection, a dead server), or None: a refusal.  Adapters know their client."""
        return None

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

    # -- the config center: Dubbo's dynamic rules (regproxy.governance) ----------------------------
    # Adapters whose registry is also a Dubbo config center (ZooKeeper, Nacos) override these.

    config_center: bool = False

    async def watch_rule(self, rule_id: str, listener: RuleListener) -> None:
        """Watch the rule ``rule_id`` (``<key><suffix>``, group ``dubbo``) and call ``listener`` with
        its current content (None when there is none), then on every change: a deletion as None, any
        other content as it is, an empty one too (the rule store decides what parses).  After a
        reconnection the rule is read again and delivered if it changed; while the config center is
        unreachable nothing is delivered (the rules in force stay)."""
        raise RegistryError(f"registry {self.name} is not a config center")

    async def unwatch_rule(self, rule_id: str, listener: RuleListener) -> None:
        """Stop calling ``listener`` for ``rule_id``."""
        return None  # nothing is watched where there is no config center

    async def read_rule(self, rule_id: str) -> tuple[str | None, str, str]:
        """(content or None, where, version) of ``rule_id`` now: ``regproxy ctl rules get``."""
        raise RegistryError(f"registry {self.name} is not a config center")

    async def write_rule(self, rule_id: str, text: str) -> str:
        """Create or replace ``rule_id`` with ``text``; returns where it was written."""
        raise RegistryError(f"registry {self.name} is not a config center")

    async def delete_rule(self, rule_id: str) -> bool:
        """Delete ``rule_id``; False when there was none."""
        raise RegistryError(f"registry {self.name} is not a config center")

    async def watch_overrides(self, interface: str, listener: ProvidersListener) -> list[DubboURL]:
        """Watch the 2.6-era ``override://`` URLs of ``interface`` (ZooKeeper's
        ``/dubbo/<interface>/configurators``); return the current ones, then call ``listener`` with
        the whole list on each change, as ``subscribe`` does for providers.  None here."""
        return []

    async def unwatch_overrides(self, interface: str, listener: ProvidersListener) -> None:
        """Stop calling ``listener`` for ``interface``'s override URLs."""
        return None

    # -- Dubbo 3 application-level discovery (regproxy.registry.instances) --------------------------
    # Adapters of registries that hold it (ZooKeeper, Nacos) set ``app_discovery`` and override these.
    # Listeners are called on the event loop with whole values, as provider listeners are; while the
    # registry is unreachable nothing is delivered, and after a reconnection what changed meanwhile is.

    app_discovery: bool = False

    async def watch_mapping(self, interface: str, listener: MappingListener) -> tuple[str, ...]:
        """Watch the service-name mapping of ``interface``; return the applications it names now (none
        when there is no mapping), then call ``listener`` with all of them on each change."""
        raise RegistryError(f"registry {self.name} holds no application-level discovery")

    async def unwatch_mapping(self, interface: str, listener: MappingListener) -> None:
        """Stop calling ``listener`` for ``interface``'s mapping."""
        return None

    async def add_mapping(self, interface: str, app: str) -> None:
        """Add ``app`` to ``interface``'s mapping unless it is there (a compare-and-set: two
        applications writing at once both end up in it).  The mapping is never shrunk: Dubbo leaves
        an application in it when the application stops exporting the interface."""
        raise RegistryError(f"registry {self.name} holds no application-level discovery")

    async def watch_instances(self, app: str, listener: InstancesListener) -> list[AppInstance]:
        """Watch the instances of application ``app``; return them now, then call ``listener`` with all
        of them on each change.  Entries that do not parse are skipped (logged once, counted in
        ``unparseable``)."""
        raise RegistryError(f"registry {self.name} holds no application-level discovery")

    async def unwatch_instances(self, app: str, listener: InstancesListener) -> None:
        """Stop calling ``listener`` for ``app``'s instances; drop the watch when no listener is left."""
        return None

    async def register_instance(self, instance: AppInstance) -> None:
        """Register this sidecar's ``instance`` (replacing the one registered at its address, for a new
        revision) and remember it, so it is re-created after a session loss as provider nodes are."""
        raise RegistryError(f"registry {self.name} holds no application-level discovery")

    async def unregister_instance(self, instance: AppInstance) -> None:
        """Remove the instance registered at ``instance``'s application and address, and forget it."""
        return None

    async def read_metadata(self, app: str, revision: str) -> MetadataInfo | None:
        """The ``MetadataInfo`` of ``app`` at ``revision`` in the remote metadata report (Dubbo's
        ``storage-type=remote``), None when there is none.  RegistryError when it does not parse."""
        raise RegistryError(f"registry {self.name} holds no metadata report")

    async def write_metadata(self, info: MetadataInfo) -> None:
        """Write ``info`` to the remote metadata report under its application and revision."""
        raise RegistryError(f"registry {self.name} holds no metadata report")
