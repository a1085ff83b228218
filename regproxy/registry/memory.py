"""``memory://``: an in-process registry with ZooKeeper-like semantics, for the embedded demo and unit tests.

Every MemoryRegistry created with the same ``name`` shares one store, so two sidecars in one
process see each other's providers.  The store mirrors the ZooKeeper layout: nodes per
(interface, category), keyed by the encoded URL (the leaf name), each with an owner.  Nodes are
ephemeral by owner: ``stop()`` removes the instance's nodes, like a closed session.

Listeners get the full, unfiltered provider list of the interface on every change, scheduled on
the instance's event loop (never called synchronously from the changing call).  Test hooks:
``simulate_down()``/``simulate_up()`` model a lost connection (optionally a lost session), and
``set_provider()``/``remove_provider()``/``replace_provider()`` act as "someone else" registering.

It is a config center too (regproxy.governance): ``write_rule``/``delete_rule`` on any instance
of the store reach every ``watch_rule`` listener, with a version counting the changes (like a
ZooKeeper node's mzxid).

Not a replacement for ZooKeeper in integration tests: there is no network, no session timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from regproxy.registry.base import (
    CONNECTED,
    CONNECTING,
    LOST,
    STOPPED,
    SUSPENDED,
    ProvidersListener,
    Registry,
    RuleListener,
)
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import PROVIDERS, DubboURL, Subscription

__all__ = ["MemoryRegistry"]

log = logging.getLogger(__name__)

_Binding = tuple[Subscription, ProvidersListener]


class _Store:
    """One shared namespace: the nodes and which registries watch which interface."""

    def __init__(self) -> None:
        # (interface, category) -> leaf name -> (url, owner); owner None = registered by "someone else".
        self.nodes: dict[tuple[str, str], dict[str, tuple[DubboURL, MemoryRegistry | None]]] = {}
        self.watchers: dict[str, set[MemoryRegistry]] = {}
        self.rules: dict[str, tuple[str, int]] = {}  # rule id -> (text, version)
        self.rule_version = 0
        self.rule_watchers: dict[str, set[MemoryRegistry]] = {}

    def set_rule(self, rule_id: str, text: str | None) -> None:
        self.rule_version += 1
        if text is None:
            self.rules.pop(rule_id, None)
        else:
            self.rules[rule_id] = (text, self.rule_version)
        for reg in list(self.rule_watchers.get(rule_id, ())):
            reg._deliver_rule(rule_id)

    def urls(self, interface: str, category: str = PROVIDERS) -> list[DubboURL]:
        return [url for url, _ in self.nodes.get((interface, category), {}).values()]

    def put(self, url: DubboURL, owner: MemoryRegistry | None) -> None:
        # Creating an existing leaf takes it over, as the ZooKeeper adapter does (delete, create again).
        self.nodes.setdefault((url.interface, url.category), {})[url.encoded()] = (url, owner)
        self._changed(url)

    def remove(self, url: DubboURL) -> bool:
        leaves = self.nodes.get((url.interface, url.category))
        if leaves is None or leaves.pop(url.encoded(), None) is None:
            return False
        if not leaves:
            del self.nodes[(url.interface, url.category)]
        self._changed(url)
        return True

    def remove_owned(self, owner: MemoryRegistry) -> None:
        for leaves in list(self.nodes.values()):
            for url, who in list(leaves.values()):
                if who is owner:
                    self.remove(url)

    def _changed(self, url: DubboURL) -> None:
        if url.category == PROVIDERS:
            self.notify(url.interface)

    def notify(self, interface: str) -> None:
        watchers = self.watchers.get(interface)
        if not watchers:
            return
        snapshot = self.urls(interface)
        for registry in list(watchers):
            registry._deliver(interface, snapshot)


class MemoryRegistry(Registry):
    """The ``memory://`` registry.  ``name`` selects the shared store ("" = the default one)."""

    _stores: ClassVar[dict[str, _Store]] = {}

    def __init__(
        self,
        url: RegistryURL | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        name: str = "",
    ) -> None:
        if url is not None and url.scheme != "memory":
            raise ValueError(f"MemoryRegistry needs a memory:// URL, not {url.scheme}://")
        super().__init__(f"memory://{name}")
        self._store = self._stores.setdefault(name, _Store())
        self._loop = loop
        self._registered: dict[str, DubboURL] = {}  # leaf -> url: re-created after a simulated session loss
        self._bindings: dict[str, list[_Binding]] = {}  # interface -> (subscription, listener)
        self._down = False
        self._pending_deletes: dict[str, DubboURL] = {}  # unregistered while suspended
        self._rule_listeners: dict[str, list[RuleListener]] = {}
        self._rule_seen: dict[str, tuple[str | None, str]] = {}  # rule id -> last delivered

    @classmethod
    def reset_all(cls) -> None:
        """Forget every store (tests).  Existing instances keep their old, now private, store."""
        cls._stores.clear()

    # -- Registry ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._state in (CONNECTING, STOPPED) and not self._down:
            self._set_state(CONNECTED)

    async def stop(self) -> None:
        self._store.remove_owned(self)
        for interface in self._bindings:
            self._unwatch(interface)
        self._bindings.clear()
        for rule_id in self._rule_listeners:
            self._store.rule_watchers.get(rule_id, set()).discard(self)
        self._rule_listeners.clear()
        self._rule_seen.clear()
        self._registered.clear()
        self._pending_deletes.clear()
        self._down = False
        self._set_state(STOPPED)

    async def register(self, url: DubboURL) -> None:
        self._require_connected(f"register {url.interface}")
        leaf = url.encoded()
        self._pending_deletes.pop(leaf, None)
        self._registered[leaf] = url
        self._store.put(url, self)

    async def unregister(self, url: DubboURL) -> None:
        leaf = url.encoded()
        self._registered.pop(leaf, None)
        if self._state == CONNECTED:
            self._store.remove(url)
        elif self._state == SUSPENDED:
            self._pending_deletes[leaf] = url  # the node still exists: delete it when connected again
        # LOST: the session's nodes are already gone; STOPPED: stop() removed them.

    async def subscribe(self, sub: Subscription, listener: ProvidersListener) -> list[DubboURL]:
        self._require_connected(f"subscribe to {sub.interface}")
        bindings = self._bindings.setdefault(sub.interface, [])
        if not any(s == sub and cb == listener for s, cb in bindings):
            bindings.append((sub, listener))
        self._store.watchers.setdefault(sub.interface, set()).add(self)
        return self._store.urls(sub.interface)

    async def unsubscribe(self, sub: Subscription, listener: ProvidersListener) -> None:
        bindings = self._bindings.get(sub.interface)
        if not bindings:
            return
        bindings[:] = [(s, cb) for s, cb in bindings if not (s == sub and cb == listener)]
        if not bindings:
            del self._bindings[sub.interface]
            self._unwatch(sub.interface)

    # -- the config center ----------------------------------------------------------------------------

    config_center = True

    def _rule_now(self, rule_id: str) -> tuple[str | None, str, str]:
        found = self._store.rules.get(rule_id)
        source = f"memory://{self.name.removeprefix('memory://')}/{rule_id}"
        return (None, source, "") if found is None else (found[0], source, str(found[1]))

    async def watch_rule(self, rule_id: str, listener: RuleListener) -> None:
        self._require_connected(f"watch rule {rule_id}")
        self._rule_listeners.setdefault(rule_id, []).append(listener)
        self._store.rule_watchers.setdefault(rule_id, set()).add(self)
        text, source, version = self._rule_now(rule_id)
        listener(rule_id, text, source, version)
        self._rule_seen[rule_id] = (text, version)

    async def unwatch_rule(self, rule_id: str, listener: RuleListener) -> None:
        listeners = self._rule_listeners.get(rule_id, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            self._rule_listeners.pop(rule_id, None)
            self._rule_seen.pop(rule_id, None)
            self._store.rule_watchers.get(rule_id, set()).discard(self)

    async def read_rule(self, rule_id: str) -> tuple[str | None, str, str]:
        self._require_connected(f"read rule {rule_id}")
        return self._rule_now(rule_id)

    async def write_rule(self, rule_id: str, text: str) -> str:
        self._require_connected(f"write rule {rule_id}")
        self._store.set_rule(rule_id, text)
        return self._rule_now(rule_id)[1]

    async def delete_rule(self, rule_id: str) -> bool:
        self._require_connected(f"delete rule {rule_id}")
        existed = rule_id in self._store.rules
        if existed:
            self._store.set_rule(rule_id, None)
        return existed

    def _deliver_rule(self, rule_id: str) -> None:
        """Schedule the listeners of ``rule_id`` with what the store holds then (while connected;
        ``simulate_up`` delivers what changed meanwhile)."""
        if self._state != CONNECTED or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._call_rule_listeners, rule_id)
        except RuntimeError:
            log.debug("registry %s: loop closed, dropping a change of rule %s", self.name, rule_id)

    def _call_rule_listeners(self, rule_id: str) -> None:
        text, source, version = self._rule_now(rule_id)
        if self._state != CONNECTED or self._rule_seen.get(rule_id) == (text, version):
            return
        self._rule_seen[rule_id] = (text, version)
        for listener in list(self._rule_listeners.get(rule_id, ())):
            try:
                listener(rule_id, text, source, version)
            except Exception:
                log.exception("registry %s: listener of rule %s failed", self.name, rule_id)

    # -- delivery -----------------------------------------------------------------------------------

    def _unwatch(self, interface: str) -> None:
        watchers = self._store.watchers.get(interface)
        if watchers is not None:
            watchers.discard(self)
            if not watchers:
                del self._store.watchers[interface]

    def _deliver(self, interface: str, snapshot: list[DubboURL]) -> None:
        """Schedule the listeners of ``interface`` with ``snapshot`` (called by the store on a change)."""
        if self._state != CONNECTED:
            return  # like a ZooKeeper client: no events while disconnected; simulate_up() re-delivers
        # Bind the listeners now: one subscribed after this change already got a newer list from
        # subscribe() and must not be handed this older one.
        bindings = list(self._bindings.get(interface, ()))
        if not bindings or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._call_listeners, interface, snapshot, bindings)
        except RuntimeError:  # the loop is closed: this instance is dead
            log.debug("registry %s: loop closed, dropping an update of %s", self.name, interface)

    def _call_listeners(self, interface: str, snapshot: list[DubboURL], bindings: list[_Binding]) -> None:
        current = self._bindings.get(interface, [])
        for binding in bindings:
            if binding not in current:
                continue  # unsubscribed in the meantime
            try:
                binding[1](list(snapshot))
            except Exception:
                log.exception("registry %s: providers listener of %s failed", self.name, interface)

    # -- test hooks ---------------------------------------------------------------------------------

    def simulate_down(self, *, lose_session: bool = False) -> None:
        """Lose the connection: state SUSPENDED, or LOST with ``lose_session`` (own nodes vanish).

        While down, register/subscribe raise RegistryUnavailable and no updates are delivered.
        """
        if self._state == STOPPED:
            return
        self._down = True
        if lose_session:
            # State first: this instance is disconnected, so it must not hear of its own nodes going.
            self._set_state(LOST)
            self._store.remove_owned(self)
            self._pending_deletes.clear()
        elif self._state != LOST:
            self._set_state(SUSPENDED)

    def simulate_up(self) -> None:
        """Reconnect: re-create own nodes after a lost session, delete what was unregistered while
        suspended, then deliver the current list of every watched interface (as a re-read would)."""
        if not self._down or self._state == STOPPED:
            return
        self._down = False
        was_lost = self._state == LOST
        self._set_state(CONNECTED)
        for url in self._pending_deletes.values():
            self._store.remove(url)
        self._pending_deletes.clear()
        if was_lost:
            for url in self._registered.values():
                self._store.put(url, self)
        for interface in list(self._bindings):
            self._deliver(interface, self._store.urls(interface))
        for rule_id in list(self._rule_listeners):
            self._deliver_rule(rule_id)

    def set_provider(self, url: DubboURL) -> None:
        """Add (or replace) a node as if another process had registered it; ``stop()`` leaves it."""
        self._store.put(url, None)

    def remove_provider(self, url: DubboURL) -> bool:
        """Delete a node whoever owns it; False when there was none."""
        return self._store.remove(url)

    def replace_provider(self, old: DubboURL, new: DubboURL) -> None:
        """Swap ``old`` for ``new`` in one change (e.g. a weight edit): listeners see one update."""
        key = (old.interface, old.category)
        leaves = self._store.nodes.get(key)
        if leaves is not None:
            leaves.pop(old.encoded(), None)
            if not leaves:
                del self._store.nodes[key]
        self._store.nodes.setdefault((new.interface, new.category), {})[new.encoded()] = (new, None)
        for interface in {old.interface, new.interface}:
            self._store.notify(interface)

    def nodes(self, interface: str, category: str = PROVIDERS) -> list[DubboURL]:
        """The nodes of ``interface`` in ``category`` ("providers", "consumers") right now."""
        return self._store.urls(interface, category)
