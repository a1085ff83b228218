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

And it holds Dubbo 3 application-level discovery as the ZooKeeper adapter does: instances per
application (ephemeral by owner like provider nodes, keyed by instance id, i.e. address), the
service-name mapping per interface (its text, application names joined by ``,``; a deletion is not
delivered, as ZooKeeper's isn't), and the metadata report per (application, revision) as the JSON
text ZooKeeper would hold.  ``set_instance()``/``remove_instance()``, ``set_mapping()`` and
``set_metadata()`` play another Dubbo 3 application.

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
    InstancesListener,
    MappingListener,
    ProvidersListener,
    Registry,
    RegistryError,
    RuleListener,
)
from regproxy.registry.instances import (
    AppInstance,
    instance_path,
    instances_path,
    mapping_apps,
    mapping_path,
    mapping_with,
    path_segment,
)
from regproxy.registry.metadata_info import MetadataInfo, dump_json, parse_json
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import PROVIDERS, DubboURL, Subscription

__all__ = ["MemoryRegistry"]

log = logging.getLogger(__name__)

_Binding = tuple[Subscription, ProvidersListener]
_InstanceKey = tuple[str, str]  # (application, instance id): one instance node


class _Store:
    """One shared namespace: the nodes and which registries watch which interface."""

    def __init__(self) -> None:
        # (interface, category) -> leaf name -> (url, owner); owner None = registered by "someone else".
        self.nodes: dict[tuple[str, str], dict[str, tuple[DubboURL, MemoryRegistry | None]]] = {}
        self.watchers: dict[str, set[MemoryRegistry]] = {}
        self.rules: dict[str, tuple[str, int]] = {}  # rule id -> (text, version)
        self.rule_version = 0
        self.rule_watchers: dict[str, set[MemoryRegistry]] = {}
        # Application-level discovery: app -> instance id -> (instance, owner; None = someone else),
        # interface -> mapping text, (app, revision) -> MetadataInfo JSON.
        self.instances: dict[str, dict[str, tuple[AppInstance, MemoryRegistry | None]]] = {}
        self.instance_watchers: dict[str, set[MemoryRegistry]] = {}
        self.mappings: dict[str, str] = {}
        self.mapping_watchers: dict[str, set[MemoryRegistry]] = {}
        self.metadata: dict[tuple[str, str], str] = {}

    def app_instances(self, app: str) -> list[AppInstance]:
        """``app``'s instances, by id (as the ZooKeeper adapter lists its leaves)."""
        found = self.instances.get(app, {})
        return [found[key][0] for key in sorted(found)]

    def put_instance(self, instance: AppInstance, owner: MemoryRegistry | None) -> None:
        # Registering an existing id replaces it, as a new revision rewrites the ZooKeeper node.
        self.instances.setdefault(instance.app, {})[instance.id] = (instance, owner)
        self.notify_instances(instance.app)

    def remove_instance(self, app: str, instance_id: str) -> bool:
        found = self.instances.get(app)
        if found is None or found.pop(instance_id, None) is None:
            return False
        if not found:
            del self.instances[app]
        self.notify_instances(app)
        return True

    def notify_instances(self, app: str) -> None:
        snapshot = self.app_instances(app)
        for registry in list(self.instance_watchers.get(app, ())):
            registry._deliver_instances(app, snapshot)

    def set_mapping(self, interface: str, text: str) -> None:
        self.mappings[interface] = text
        for registry in list(self.mapping_watchers.get(interface, ())):
            registry._deliver_mapping(interface)

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
        for app, found in list(self.instances.items()):
            for instance, who in list(found.values()):
                if who is owner:
                    self.remove_instance(app, instance.id)

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
        # Application-level discovery, as for providers: what we registered (re-created after a
        # simulated session loss), what was unregistered while suspended, and the listeners.
        self._instances: dict[_InstanceKey, AppInstance] = {}
        self._pending_instance_deletes: dict[_InstanceKey, AppInstance] = {}
        self._instance_listeners: dict[str, list[InstancesListener]] = {}
        self._mapping_listeners: dict[str, list[MappingListener]] = {}
        self._mapping_seen: dict[str, tuple[str, ...]] = {}  # interface -> apps last delivered

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
        for app in self._instance_listeners:
            _discard(self._store.instance_watchers, app, self)
        self._instance_listeners.clear()
        for interface in self._mapping_listeners:
            _discard(self._store.mapping_watchers, interface, self)
        self._mapping_listeners.clear()
        self._mapping_seen.clear()
        self._registered.clear()
        self._pending_deletes.clear()
        self._instances.clear()
        self._pending_instance_deletes.clear()
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

    # -- application-level discovery ------------------------------------------------------------------

    app_discovery = True

    # Names are checked as the ZooKeeper adapter's paths check them (ValueError), so that what passes
    # here passes there.

    async def watch_mapping(self, interface: str, listener: MappingListener) -> tuple[str, ...]:
        mapping_path(interface)
        self._require_connected(f"watch the mapping of {interface}")
        self._mapping_listeners.setdefault(interface, []).append(listener)
        self._store.mapping_watchers.setdefault(interface, set()).add(self)
        apps = mapping_apps(self._store.mappings.get(interface))
        # Not reset for a second listener: a change scheduled for the first one must still reach it.
        self._mapping_seen.setdefault(interface, apps)
        return apps

    async def unwatch_mapping(self, interface: str, listener: MappingListener) -> None:
        listeners = self._mapping_listeners.get(interface, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            self._mapping_listeners.pop(interface, None)
            self._mapping_seen.pop(interface, None)
            _discard(self._store.mapping_watchers, interface, self)

    async def add_mapping(self, interface: str, app: str) -> None:
        mapping_path(interface)
        mapping_with(None, app)
        self._require_connected(f"map {interface} to {app}")
        # One process, one loop: the read and the write cannot be split by another writer, so the
        # compare-and-set of the ZooKeeper adapter is a plain update here.
        current = self._store.mappings.get(interface)
        updated = mapping_with(current, app)
        if updated != current:
            self._store.set_mapping(interface, updated)

    async def watch_instances(self, app: str, listener: InstancesListener) -> list[AppInstance]:
        instances_path(app)
        self._require_connected(f"watch the instances of {app}")
        self._instance_listeners.setdefault(app, []).append(listener)
        self._store.instance_watchers.setdefault(app, set()).add(self)
        return self._store.app_instances(app)

    async def unwatch_instances(self, app: str, listener: InstancesListener) -> None:
        listeners = self._instance_listeners.get(app, [])
        if listener in listeners:
            listeners.remove(listener)  # the first one: a listener added twice stays once
        if not listeners:
            self._instance_listeners.pop(app, None)
            _discard(self._store.instance_watchers, app, self)

    async def register_instance(self, instance: AppInstance) -> None:
        instance_path(instance)
        self._require_connected(f"register the instance {instance.id} of {instance.app}")
        key = (instance.app, instance.id)
        self._pending_instance_deletes.pop(key, None)
        self._instances[key] = instance
        self._store.put_instance(instance, self)

    async def unregister_instance(self, instance: AppInstance) -> None:
        key = (instance.app, instance.id)
        self._instances.pop(key, None)
        if self._state == CONNECTED:
            self._store.remove_instance(*key)
        elif self._state == SUSPENDED:
            self._pending_instance_deletes[key] = instance  # still there: delete it when connected
        # LOST: gone with the session; STOPPED: stop() removed it.

    async def read_metadata(self, app: str, revision: str) -> MetadataInfo | None:
        path_segment(app, "application")
        path_segment(revision, "revision")
        self._require_connected(f"read the metadata of {app} revision {revision}")
        text = self._store.metadata.get((app, revision))
        if text is None or not text.strip():
            return None
        try:
            return parse_json(text)
        except ValueError as exc:
            raise RegistryError(
                f"registry {self.name}: metadata {app}/{revision} is no MetadataInfo: {exc}"
            ) from None

    async def write_metadata(self, info: MetadataInfo) -> None:
        if not info.app or not info.revision:
            raise ValueError(f"a MetadataInfo needs an application and a revision to be written: {info!r}")
        path_segment(info.app, "application")
        path_segment(info.revision, "revision")
        self._require_connected(f"write the metadata of {info.app} revision {info.revision}")
        # As ZookeeperMetadataReport.publishAppMetadata: a revision already there is left as it is.
        key = (info.app, info.revision)
        if not self._store.metadata.get(key, "").strip():
            self._store.metadata[key] = dump_json(info)

    def _deliver_instances(self, app: str, snapshot: list[AppInstance]) -> None:
        """Schedule the listeners of ``app``'s instances with ``snapshot`` (as ``_deliver``)."""
        if self._state != CONNECTED:
            return
        listeners = list(self._instance_listeners.get(app, ()))
        if not listeners or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._call_instance_listeners, app, snapshot, listeners)
        except RuntimeError:
            log.debug("registry %s: loop closed, dropping an update of %s's instances", self.name, app)

    def _call_instance_listeners(
        self, app: str, snapshot: list[AppInstance], listeners: list[InstancesListener]
    ) -> None:
        current = self._instance_listeners.get(app, [])
        for listener in listeners:
            if listener not in current:
                continue  # unwatched in the meantime
            try:
                listener(list(snapshot))
            except Exception:
                log.exception("registry %s: instances listener of %s failed", self.name, app)

    def _deliver_mapping(self, interface: str) -> None:
        """Schedule the listeners of ``interface``'s mapping with what the store holds then."""
        if self._state != CONNECTED or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._call_mapping_listeners, interface)
        except RuntimeError:
            log.debug("registry %s: loop closed, dropping a change of %s's mapping", self.name, interface)

    def _call_mapping_listeners(self, interface: str) -> None:
        text = self._store.mappings.get(interface)
        if self._state != CONNECTED or text is None:
            return  # no mapping (any more): not a change, as in ZooKeeper
        apps = mapping_apps(text)
        if interface not in self._mapping_listeners or self._mapping_seen.get(interface) == apps:
            return
        self._mapping_seen[interface] = apps
        for listener in list(self._mapping_listeners[interface]):
            try:
                listener(apps)
            except Exception:
                log.exception("registry %s: mapping listener of %s failed", self.name, interface)

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
            self._pending_instance_deletes.clear()
        elif self._state != LOST:
            self._set_state(SUSPENDED)

    def simulate_up(self) -> None:
        """Reconnect: re-create own nodes (and instances) after a lost session, delete what was
        unregistered while suspended, then deliver the current list of every watched interface and
        application (as a re-read would), and each watched mapping that changed meanwhile."""
        if not self._down or self._state == STOPPED:
            return
        self._down = False
        was_lost = self._state == LOST
        self._set_state(CONNECTED)
        for url in self._pending_deletes.values():
            self._store.remove(url)
        self._pending_deletes.clear()
        for app, instance_id in self._pending_instance_deletes:
            self._store.remove_instance(app, instance_id)
        self._pending_instance_deletes.clear()
        if was_lost:
            for url in self._registered.values():
                self._store.put(url, self)
            for instance in self._instances.values():
                self._store.put_instance(instance, self)
        for interface in list(self._bindings):
            self._deliver(interface, self._store.urls(interface))
        for rule_id in list(self._rule_listeners):
            self._deliver_rule(rule_id)
        for app in list(self._instance_listeners):
            self._deliver_instances(app, self._store.app_instances(app))
        for interface in list(self._mapping_listeners):
            self._deliver_mapping(interface)

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

    def set_instance(self, instance: AppInstance) -> None:
        """Register (or replace, at its id) an instance as another Dubbo 3 application would;
        ``stop()`` leaves it."""
        self._store.put_instance(instance, None)

    def remove_instance(self, app: str, instance_id: str) -> bool:
        """Delete the instance ``instance_id`` (``host:port``) of ``app`` whoever registered it; False
        when there was none."""
        return self._store.remove_instance(app, instance_id)

    def instances(self, app: str) -> list[AppInstance]:
        """The instances of ``app`` right now."""
        return self._store.app_instances(app)

    def set_mapping(self, interface: str, text: str) -> None:
        """Set ``interface``'s mapping text (application names joined by ``,``), as another writer
        (or an operator) would: listeners get the applications it names when they changed."""
        self._store.set_mapping(interface, text)

    def mapping(self, interface: str) -> str | None:
        """``interface``'s mapping text right now, None when there is none."""
        return self._store.mappings.get(interface)

    def set_metadata(self, app: str, revision: str, content: MetadataInfo | str) -> None:
        """Put a MetadataInfo (or any text: what another writer left) in the metadata report."""
        text = dump_json(content) if isinstance(content, MetadataInfo) else content
        self._store.metadata[(app, revision)] = text


def _discard(watchers: dict[str, set[MemoryRegistry]], key: str, registry: MemoryRegistry) -> None:
    found = watchers.get(key)
    if found is not None:
        found.discard(registry)
        if not found:
            del watchers[key]
