"""The Discovery coordinator: a sidecar's publications and subscriptions carried out on its
registries, and registry events turned into new routing tables.

Flow is one way: registry events → provider lists per (subscription, registry), through the
empty-provider protection (regproxy.discovery.protection) → a new egress table snapshot, swapped
atomically. Publications → registry nodes with this sidecar's advertise IP and ingress port (the
port rewrite) → an ingress table that sends each published service to the application's real port.

Nothing is lost on faults: a publication or subscription is kept as desired state and carried
out again whenever a registry (re)connects; a registry that is down leaves the last known
providers in place; the state file brings all of it back after a restart.

What it builds on, each in its own module: desired (the state kept), tables (pure table building),
persistence (the state file), screen (provider checks, own addresses), protection (empty lists).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from regproxy.discovery.app_hosts import REMOTE_APPLICATION_KEY, FoundURL, Source, merge_found
from regproxy.discovery.app_registration import AppRegistrar, RegisterMode
from regproxy.discovery.apps import AppDiscovery, Fetcher, provided_by
from regproxy.discovery.desired import NotFound, Publication, PublishSpec, SubscriptionState
from regproxy.discovery.persistence import Saver, cached_providers, saved_state
from regproxy.discovery.protection import DEFAULT_HOLD_S, EmptyProtection
from regproxy.discovery.rules import OVERRIDES, Rules, publication_rule_ids, subscription_rule_ids
from regproxy.discovery.screen import Screen, short
from regproxy.discovery.tables import (
    egress_table,
    hosts_from,
    ingress_table,
    route_order,
    subscription_cluster,
    subscription_route,
)
from regproxy.governance.configurator import configure_provider
from regproxy.governance.migration import DEFAULT_SETTING, MigrationSetting, MigrationStep
from regproxy.governance.params import consumer_own, declaration_problems, generated_token, layered
from regproxy.governance.policy import ClusterPolicy, configured
from regproxy.registry.base import CONNECTED, CONNECTING, Registry, RegistryError, RegistryUnavailable
from regproxy.registry.instances import LOCAL, REVISION_KEY, StorageType
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, Subscription, consumer_url, provider_url
from regproxy.routing import Cluster, Host, Route, RoutingTable, TableHolder
from regproxy.state import SavedState, StateSaveError, StateStore
from regproxy.tls import TLS_PARAM

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 3.0  # how long a request naming a new registry waits for it to connect

RegistryFactory = Callable[[RegistryURL], Registry]


class Discovery:
    """A sidecar's publications and subscriptions, carried out on its registries, and the routing
    tables that follow from them.

    Owns: the registry adapters (``registries``: the configured ones, started here, and those a
    request named, closed again once nothing uses them); the desired state (``publications``,
    ``subscriptions``) and the providers each registry reports; the event flow from the adapters
    to the tables; the state file (through ``saver``: API changes before they are answered,
    provider caches a moment later); the empty-provider holds (``protection``).

    May touch: in the registries, only its own nodes (its publications' provider nodes, its
    subscriptions' consumer nodes, and the provider node a previous run of this sidecar left at
    this address); the egress and ingress table holders, by swapping whole snapshots (the egress
    keeps ``static_table``'s routes first, it never edits them). Never a listener or a connection:
    the engine only reads the tables.

    Invariants:

    * ``pub.registered`` is a subset of ``pub.registries``: the registries where its node was
      created and not removed since. Nothing is registered while ``withdrawn`` (draining) or for an
      application port in ``suspended``; such publications stay desired state (and in the file).
    * Desired state is never dropped on a registry fault: what a registry missed is carried out
      when it connects again (``_catch_up``), and the last providers it reported keep routing.
    * Every provider list, from an event or a subscribe, passes ``screen.usable`` and then
      ``protection`` before it replaces ``st.providers[key]`` (``_offer``): a list emptied of
      every provider the subscription would use is held back for ``protection.hold_s``.
    * The egress table is the static routes, then one route per subscription in ``route_order``
      (exact versions and groups before wildcards); ``_routed`` mirrors that order.
    * The ingress table routes exactly the published services (and, for ``unpublish_grace_s``,
      the ones just unpublished) to their application ports: nothing else reaches the application.
    * Calls that change desired state hold ``_lock`` across their awaits; registry events
      (``_on_providers``) apply without an await, so a table swap never interleaves with another.
    """

    def __init__(
        self,
        *,
        registry_urls: Sequence[RegistryURL],
        factory: RegistryFactory,
        egress: TableHolder,
        ingress: TableHolder,
        static_table: RoutingTable,
        advertise_ip: str,
        ingress_port: int,
        application: str = "regproxy",
        store: StateStore | None = None,
        ingress_tls: bool = False,
        empty_protection_s: float = DEFAULT_HOLD_S,
        register_mode: RegisterMode = "all",
        migration: MigrationSetting = DEFAULT_SETTING,
        metadata_storage: StorageType = LOCAL,
        metadata_fetcher: Fetcher | None = None,
    ) -> None:
        self._factory = factory
        self.ingress_tls = ingress_tls  # published as regproxy.tls=true: egresses dial us with TLS
        self._configured = [u.to_url(redact=False) for u in registry_urls]
        self._registry_urls: dict[str, RegistryURL] = {u.to_url(redact=False): u for u in registry_urls}
        self.registries: dict[str, Registry] = {}
        # Registries that reached CONNECTED at least once in this process. One a request brought in
        # (not configured) counts for readiness only then: a request naming a host that never
        # answers must not take the sidecar out of service (see ready_states).
        self._ever_connected: set[str] = set()
        self.egress = egress
        self.ingress = ingress
        self.static_table = static_table
        self.advertise_ip = advertise_ip
        self.ingress_port = ingress_port
        self.application = application
        self.store = store
        self.publications: dict[str, Publication] = {}
        self.subscriptions: dict[str, SubscriptionState] = {}
        self.restored = False
        self.from_cache: set[str] = set()  # subscriptions serving providers read from the state file
        self.saver = Saver(store, self.snapshot)
        self._routed: list[tuple[bool, bool, str]] = []  # see _rebuild_egress
        self._lock = asyncio.Lock()  # API calls change shared state in steps with awaits between
        self.withdrawn = False  # draining: nodes taken out of the registries, no new publications
        # Application ports that do not answer heartbeats (regproxy.health.app): their publications
        # stay desired state but are out of the registries until resume_publications. Independent
        # of ``withdrawn``: draining wins, a resume while draining registers nothing.
        self.suspended: dict[int, str] = {}  # app port -> reason
        # For /metrics: provider_events, state_changes, invalid_providers, own_providers_ignored, ...
        self.events: Counter[str] = Counter()
        self.screen = Screen(self.events, self._registry_name)
        self.protection = EmptyProtection(
            empty_protection_s, self._release_held, registry_name=self._registry_name, events=self.events
        )
        self._tasks: set[asyncio.Task[None]] = set()
        # An unpublished service keeps its ingress route this long (drain.grace_s): consumers learn of
        # the removal through the registry a moment later and their requests meanwhile must not fail.
        self.unpublish_grace_s = 3.0
        self._lingering: dict[str, tuple[PublishSpec, float]] = {}  # key -> (spec, loop time to drop)
        # Publications being registered: routable at the ingress already (see _publish).
        self._opening: dict[str, PublishSpec] = {}
        # Dubbo's dynamic rules from the registries that are config centers (regproxy.discovery.rules).
        self.rules = Rules(self._on_rule_change)
        # rule id (or OVERRIDES + interface) -> the subscriptions and publications under it, as of
        # the last _sync_rules: a rule's change re-evaluates those alone.
        self._rule_users: dict[str, set[str]] = {}
        self._rules_task: asyncio.Task[None] | None = None
        self._rules_dirty = False
        self._sub_rule_ids: dict[str, set[str]] = {}  # subscription -> its rule ids at the last sync
        # Dubbo 3 application-level discovery: this sidecar's instances (app_registrar) and the
        # subscriptions' application-level addresses (apps); regproxy.discovery.apps says how.
        self.app_registrar = AppRegistrar(mode=register_mode, storage_type=metadata_storage)
        if ingress_tls:
            self.app_registrar.instance_metadata[TLS_PARAM] = "true"
        self.migration = MigrationSetting(migration)
        self.apps = AppDiscovery(self._on_app_found, metadata_fetcher or _no_fetcher, events=self.events)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for key in self._configured:
            await self._registry(key)
        if self.store is not None:
            await self._restore(self.store.load())
        self.restored = True

    async def stop(self) -> None:
        try:
            await self.saver.flush()
        except StateSaveError as exc:
            log.error("stopping with changes that are not on disk (a restart will lack them): %s", exc)
        self.saver.close()
        for task in list(self._tasks):
            task.cancel()
        for st in self.subscriptions.values():
            self.protection.end(st)
        await self.apps.stop()
        for reg in list(self.registries.values()):
            try:
                await reg.stop()
            except Exception:
                log.exception("stopping registry %s", reg.name)

    async def _registry(self, key: str) -> Registry:
        reg = self.registries.get(key)
        if reg is None:
            url = self._registry_urls[key]
            reg = self._factory(url)
            self.registries[key] = reg
            if reg.config_center and url.config_center:
                self.rules.store(key, url.scheme)
            reg.add_state_listener(lambda state, key=key: self._on_state(key, state))
            await reg.start()
        return reg

    def _targets(self, registry: RegistryURL | None) -> list[str]:
        if registry is None:
            if not self._configured:
                raise ValueError(
                    "registry: none is configured; name one in the request or start regproxy with --registry"
                )
            return list(self._configured)
        key = registry.to_url(redact=False)
        self._registry_urls.setdefault(key, registry)
        return [key]

    async def _connected(self, key: str) -> Registry:
        """The registry, waiting briefly if it has not connected yet since it started (a sidecar
        just started, or a registry first named by this request): not a reason for a 503. Once a
        connection attempt has failed (``unreachable_since``) there is nothing to wait for."""
        reg = await self._registry(key)
        if reg.state == CONNECTING:
            deadline = time.monotonic() + CONNECT_WAIT_S
            while not reg.connected and reg.unreachable_since is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return reg

    def _in_use(self) -> set[str]:
        """Keys of the registries some publication or subscription uses."""
        keys = {k for p in self.publications.values() for k in p.registries}
        keys.update(k for st in self.subscriptions.values() for k in st.registries)
        return keys

    async def _release_unused(self, keys: Iterable[str]) -> None:
        """Close the registries among ``keys`` that a request brought in (not configured) and that
        nothing uses now: one that never connected, or whose last publication or subscription is
        gone. Kept, it would retry its connection forever, and it is not the operator's."""
        in_use = self._in_use()
        for key in dict.fromkeys(keys):
            if key in self._configured or key in in_use:
                continue
            reg = self.registries.pop(key, None)
            self._registry_urls.pop(key, None)
            self.rules.drop(key)
            self.apps.drop_registry(key)
            self.app_registrar.forget(key)
            never = key not in self._ever_connected
            self._ever_connected.discard(key)
            if reg is None:
                continue
            why = "it never connected" if never else "nothing uses it any more"
            log.warning("registry %s (named by a request, not configured): closed, %s", reg.name, why)
            try:
                await reg.stop()
            except Exception:
                log.exception("stopping registry %s", reg.name)

    def _on_state(self, key: str, state: str) -> None:
        self.events["state_changes"] += 1
        if state != CONNECTED:
            return  # suspended or lost: keep routing on what we know
        if key in self.registries:
            self._ever_connected.add(key)
        # (Re)connected: carry out whatever desired state this registry has not got yet. The
        # adapter re-creates its own nodes after a session loss; this covers what never made it.
        task = asyncio.get_running_loop().create_task(self._catch_up(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, key: str) -> None:
        reg = self.registries.get(key)
        if reg is None:
            return
        async with self._lock:
            for pub in list(self.publications.values()):
                if (
                    key in pub.registries
                    and key not in pub.registered
                    and not self.withdrawn
                    and pub.spec.port not in self.suspended
                ):
                    try:
                        await self._register(pub, key, reg)
                        log.info("published %s to %s", pub.spec.key, reg.name)
                    except RegistryError as exc:
                        log.warning("publishing %s to %s: %s", pub.spec.key, reg.name, exc)
            await self._sync_apps([key])
            watched = False
            for st in list(self.subscriptions.values()):
                if key in st.registries and key not in st.watching:
                    try:
                        await self._watch(st, key, reg, wait=False)
                        watched = True
                    except RegistryError as exc:
                        log.warning("subscribing %s on %s: %s", st.sub.cluster_name, reg.name, exc)
            if watched:
                self._rebuild_egress()
                self._save_soon()
        self._rules_soon()

    # --- publish ------------------------------------------------------------------------------

    async def publish(self, spec: PublishSpec, registry: RegistryURL | None = None) -> str:
        if self.withdrawn:
            raise RegistryUnavailable("this sidecar is draining: it publishes nothing new")
        async with self._lock:
            targets = self._targets(registry)
            try:
                url = await self._publish(spec, targets)
            finally:
                await self._release_unused(targets)
        # Outside the lock, so API calls arriving together share one write (StateWriter).
        await self._save()
        return url

    async def _publish(self, spec: PublishSpec, targets: list[str]) -> str:
        existing = self.publications.get(spec.key)
        params = generated_token(spec.params, existing.spec.params if existing is not None else None)
        if params is not spec.params:
            spec = dataclasses.replace(spec, params=params)
        if existing is not None and existing.spec == spec and set(targets) <= existing.registered:
            return str(existing.url)  # idempotent: the same URL, nothing re-registered
        base = existing.base if existing is not None and existing.spec == spec else self._provider_url(spec)
        pub = Publication(
            spec,
            base,
            sorted(set(targets) | set(existing.registries if existing else ())),
            previous=existing.previous if existing is not None else None,
        )
        self._configure_publication(pub)
        url = pub.url
        if existing is not None and existing.url == url:
            pub.registered = set(existing.registered)
        done: list[str] = []
        suspended = self.suspended.get(spec.port)
        if suspended is not None:
            # Kept, not registered: resume_publications registers it once the app answers again.
            log.warning("publication %s kept but not registered: %s", spec.key, suspended)
        # Routable at the ingress before any registry has it: a consumer that sees the registration
        # at once (a ZooKeeper watch can beat the reply to our create) must not be told "no route".
        self._opening[spec.key] = spec
        self._rebuild_ingress()
        try:
            for key in targets:
                if key in pub.registered or suspended is not None:
                    continue
                reg = await self._connected(key)
                try:
                    await self._register(pub, key, reg)
                except RegistryError:
                    # All or nothing for the caller: undo what this request did, report the cause.
                    await self._unregister(pub, done)
                    raise
                done.append(key)
        except BaseException:
            del self._opening[spec.key]
            self._rebuild_ingress()
            raise
        del self._opening[spec.key]
        if existing is not None and existing.url != url:
            await self._unregister(existing, existing.registered)
        self.publications[spec.key] = pub
        self._rebuild_ingress()
        await self._sync_apps(pub.registries)
        log.info("published %s as %s (app port %d)", spec.key, url, spec.port)
        self._rules_soon()
        return str(url)

    def _configure_publication(self, pub: Publication) -> None:
        """``pub.url`` = its published URL after the provider-side configurators in force
        (``configure_provider``; Dubbo's ``OverrideListener`` re-exports with the result)."""
        base = pub.base
        configurators = self.rules.provider_configurators(pub) if self.rules.stores else ()
        url = configure_provider(base, configurators) if configurators else base
        pub.url = url
        pub.published = base if url != base else None

    async def _reconfigure(self, pub: Publication) -> None:
        """A provider-side rule of ``pub`` changed: where its URL changes, register the new URL and
        then remove the old one in every registry it is in, so every consumer (a sidecar or a plain
        Dubbo SDK) sees the new ``weight`` or ``disabled``; removing the rule brings the published
        URL back the same way."""
        old = pub.url
        self._configure_publication(pub)
        if pub.url == old:
            return
        changed = {k: v for k, v in pub.url.params.items() if old.params.get(k) != v}
        gone = sorted(k for k in old.params if k not in pub.url.params)
        log.info(
            "re-registering %s with the config center's overrides: %s%s",
            pub.spec.key, changed or "none", f" (no longer set: {', '.join(gone)})" if gone else "",
        )  # fmt: skip
        for key in sorted(pub.registered):
            reg = self.registries.get(key)
            if reg is None:
                continue
            try:
                await reg.register(pub.url)
            except RegistryError as exc:
                # Still registered as before there; the reconnect's catch-up registers the new URL.
                log.warning("re-registering %s in %s: %s", pub.spec.key, reg.name, exc)
                pub.registered.discard(key)
                await self._quietly(reg.unregister(old))
                continue
            await self._quietly(reg.unregister(old))
        await self._sync_apps(pub.registries)

    def _url_params(self, spec: PublishSpec) -> dict[str, str]:
        """The publication's own parameters, and regproxy.tls set by this sidecar alone (the value
        tells consumers' sidecars how to dial our ingress; a caller cannot choose it)."""
        params = {k: v for k, v in spec.params.items() if k != TLS_PARAM}
        if self.ingress_tls:
            params[TLS_PARAM] = "true"
        return params

    def _provider_url(self, spec: PublishSpec, timestamp_ms: int | None = None) -> DubboURL:
        """The URL ``spec`` is registered with: this sidecar's advertise IP and ingress port, and this
        process's pid and the time now, or ``timestamp_ms`` (a Dubbo provider puts both in the URL
        it registers; consumers warm a provider up from its ``timestamp``)."""
        return provider_url(
            timestamp_ms=timestamp_ms,
            interface=spec.interface,
            ip=self.advertise_ip,
            port=self.ingress_port,
            methods=spec.methods,
            version=spec.version,
            group=spec.group,
            application=spec.application or self.application,
            params=self._url_params(spec),
            protocol=spec.protocol,
        )

    async def _register(self, pub: Publication, key: str, reg: Registry) -> None:
        """Register ``pub`` in the registry ``key`` (RegistryError when refused or unreachable). The
        node a previous run left there (``pub.previous``: killed, its session not expired yet) goes
        first: consumers would see the same address twice until that session expires."""
        if pub.previous is not None:
            await self._quietly(reg.unregister(pub.previous))
        if self.app_registrar.registers_interfaces or not reg.app_discovery:
            await reg.register(pub.url)
        pub.registered.add(key)
        if pub.registered.issuperset(pub.registries):
            pub.previous = None

    async def _unregister(self, pub: Publication, keys: Iterable[str]) -> None:
        """Take ``pub``'s node out of the registries ``keys``; never raises (a registry that cannot be
        reached removes it later, or loses it with its session: see each adapter's ``unregister``)."""
        for key in list(keys):
            reg = self.registries.get(key)
            if reg is not None:
                await self._quietly(reg.unregister(pub.url))
            pub.registered.discard(key)

    async def unpublish(self, spec: PublishSpec, registry: RegistryURL | None = None) -> None:
        async with self._lock:
            pub = self.publications.get(spec.key)
            if pub is None:
                raise NotFound(f"service {spec.key} is not published by this sidecar")
            keys = pub.registries if registry is None else [registry.to_url(redact=False)]
            if not set(keys) & set(pub.registries):
                raise NotFound(f"service {spec.key} is not published to {registry}")
            await self._unregister(pub, keys)
            pub.registries = [k for k in pub.registries if k not in keys]
            if not pub.registries:
                del self.publications[spec.key]
                self._linger(pub.spec)
            self._rebuild_ingress()
            await self._sync_apps(keys)
            await self._release_unused(keys)
        self._rules_soon()
        await self._save()

    async def withdraw_all(self) -> None:
        """Take every publication out of every registry (drain), keeping them in the state file so
        a restarted sidecar publishes them again."""
        async with self._lock:
            self.withdrawn = True
            for pub in self.publications.values():
                await self._unregister(pub, pub.registered)
            await self._sync_apps(self.registries)
            log.info("withdrew %d publication(s) from the registries", len(self.publications))

    def published_ports(self) -> set[int]:
        """The application ports publications point at (what the app checker heartbeats)."""
        return {p.spec.port for p in self.publications.values()}

    def triple_only_ports(self) -> set[int]:
        """The published ports with only Triple publications (the app checker PINGs them over
        HTTP/2: a Dubbo heartbeat means nothing there)."""
        dubbo = {p.spec.port for p in self.publications.values() if p.spec.protocol == "dubbo"}
        return {p.spec.port for p in self.publications.values()} - dubbo

    async def suspend_publications(self, reason: str, *, port: int | None = None) -> int:
        """Take the publications of application ``port`` (None: every published port) out of every
        registry because the application does not answer; they stay desired state, and neither a
        registry reconnect nor a new /pub registers them until ``resume_publications``. Returns
        how many publications were taken out."""
        async with self._lock:
            ports = self.published_ports() if port is None else {port}
            for p in ports:
                self.suspended[p] = reason
            count = 0
            for pub in self.publications.values():
                if pub.spec.port not in ports:
                    continue
                count += 1
                await self._unregister(pub, pub.registered)
            await self._sync_apps(self.registries)
            log.warning("unpublished %d publication(s) of app port(s) %s: %s", count, sorted(ports), reason)
            return count

    async def resume_publications(self, *, port: int | None = None) -> int:
        """Register the publications of ``port`` (None: every suspended port) again; nothing is
        registered while draining (withdraw_all wins). Registries that are down get them on
        reconnect. Returns how many publications were registered somewhere."""
        async with self._lock:
            ports = set(self.suspended) if port is None else {port}
            for p in ports:
                self.suspended.pop(p, None)
            if self.withdrawn:
                log.info("app port(s) %s answer again; draining, so nothing is published", sorted(ports))
                return 0
            count = 0
            for pub in self.publications.values():
                if pub.spec.port not in ports:
                    continue
                registered = False
                for key in pub.registries:
                    reg = self.registries.get(key)
                    if key in pub.registered or reg is None or not reg.connected:
                        continue
                    try:
                        await self._register(pub, key, reg)
                    except RegistryError as exc:
                        log.warning("publishing %s to %s again: %s", pub.spec.key, reg.name, exc)
                        continue
                    registered = True
                count += registered
            await self._sync_apps(self.registries)
            log.info("published %d publication(s) of app port(s) %s again", count, sorted(ports))
            return count

    # --- subscribe ----------------------------------------------------------------------------

    async def subscribe(
        self,
        sub: Subscription,
        registry: RegistryURL | None = None,
        *,
        application: str = "",
        params: Mapping[str, str] | None = None,
        migration: str = "",
    ) -> tuple[str, list[dict[str, Any]]]:
        """Subscribe ``sub`` for the consumer ``application`` (regproxy's own name when empty) with
        the consumer's own ``params``: what its ``consumer://`` URL carries and rules match on; and
        ``migration``, where its providers are found (empty: see ``migration_of``)."""
        async with self._lock:
            targets = self._targets(registry)
            st = self.subscriptions.get(sub.cluster_name)
            created = st is None
            consumer = self._consumer_url(sub, application, params)
            if st is None:
                st = SubscriptionState(sub, [], consumer, migration=migration)
                self.subscriptions[sub.cluster_name] = st
            else:
                if _identity(st.consumer) != _identity(consumer):
                    await self._replace_consumer(st, consumer)
                if st.migration != migration:
                    await self._change_migration(st, migration)
            try:
                for key in targets:
                    if key not in st.registries:
                        st.registries.append(key)
                    if key not in st.watching:
                        await self._watch(st, key, await self._connected(key))
            except RegistryError:
                if created:
                    await self._drop_subscription(st)
                else:
                    st.registries = [k for k in st.registries if k in st.watching]
                await self._release_unused(targets)
                raise
            self._route_subscription(st)
            view = self._provider_view(st)
        self._rules_soon()
        await self._save()
        return sub.cluster_name, view

    async def _replace_consumer(self, st: SubscriptionState, consumer: DubboURL) -> None:
        """The consumer's application or parameters changed: its node shows the new ones, and the
        rules are those of the new application."""
        for key in st.watching:
            reg = self.registries.get(key)
            if reg is not None:
                await self._quietly(reg.unregister(st.consumer))
                await self._quietly(reg.register(consumer))
        st.consumer = consumer
        self._forget_cluster(st)
        for key in list(st.watching):  # provided-by may name other applications now
            reg = self.registries.get(key)
            if reg is not None:
                await self._track_apps(st, key, reg, wait=False)
                self._offer(st, key, self._merged(st, key))

    async def _change_migration(self, st: SubscriptionState, migration: str) -> None:
        """The /sub names another migration setting: find the providers the new way from now on."""
        st.migration = migration
        for key in list(st.watching):
            reg = self.registries.get(key)
            if reg is not None:
                await self._track_apps(st, key, reg, wait=False)
                self._offer(st, key, self._merged(st, key))
        self._forget_cluster(st)

    def migration_of(self, st: SubscriptionState) -> MigrationSetting:
        """Where ``st``'s providers are found: the /sub's ``migration``; else the Dubbo step its consumer
        parameters name (``migration.step``, which a Dubbo reference reads before any rule:
        ``MigrationRule.getStep``); else ``discovery.migration``."""
        if st.migration:
            return MigrationSetting(st.migration)
        step = st.consumer.params.get(MIGRATION_STEP_KEY, "")
        for setting, nearest in _STEP_SETTINGS:
            if step == nearest:
                return setting
        return self.migration

    async def _watch(self, st: SubscriptionState, key: str, reg: Registry, *, wait: bool = True) -> None:
        listener = st.listeners.get(key)
        if listener is None:
            listener = st.listeners[key] = lambda urls, st=st, key=key: self._on_providers(st, key, urls)
        urls = await reg.subscribe(st.sub, listener)
        try:
            await reg.register(st.consumer)
        except RegistryError:
            await self._quietly(reg.unsubscribe(st.sub, listener))
            raise
        st.interface_urls[key] = urls
        await self._track_apps(st, key, reg, wait=wait)
        st.watching.add(key)
        self._offer(st, key, self._merged(st, key))
        self.from_cache.discard(st.sub.cluster_name)

    async def _track_apps(self, st: SubscriptionState, key: str, reg: Registry, *, wait: bool) -> None:
        """Find ``st``'s providers at application level on ``key`` too, unless its setting is
        ``interface`` or the registry holds no application-level discovery; a refusal leaves the
        interface-level providers in force (logged)."""
        name = st.sub.cluster_name
        if not reg.app_discovery or self.migration_of(st) == MigrationSetting.INTERFACE:
            await self.apps.untrack(key, name)
            st.app_found.pop(key, None)
            return
        try:
            await self.apps.track(key, reg, name, st.sub, named=provided_by(st.consumer.params), wait=wait)
        except (RegistryError, ValueError) as exc:  # ValueError: a name the registry cannot hold
            log.warning("%s: application-level discovery on %s: %s", name, reg.name, exc)

    def _on_app_found(self, name: str, key: str, found: tuple[FoundURL, ...]) -> None:
        """New application-level addresses of subscription ``name`` on registry ``key`` (apps)."""
        st = self.subscriptions.get(name)
        if st is None or key not in st.registries:
            return
        st.app_found[key] = found
        if key in st.watching:  # else _watch offers them with the interface-level ones
            self._on_changed(st, key)

    def _merged(self, st: SubscriptionState, key: str) -> list[DubboURL]:
        """The URLs the subscription's migration setting selects on ``key`` (app_hosts.merge_found),
        and how each was found (``st.found``)."""
        merged = merge_found(
            st.sub, st.interface_urls.get(key, ()), st.app_found.get(key, ()), self.migration_of(st)
        )
        st.found[key] = {f.url.address: f for f in merged}
        return [f.url for f in merged]

    async def unsubscribe(self, sub: Subscription, registry: RegistryURL | None = None) -> None:
        async with self._lock:
            st = self.subscriptions.get(sub.cluster_name)
            if st is None:
                raise NotFound(f"service {sub.cluster_name} is not subscribed by this sidecar")
            if registry is not None:
                key = registry.to_url(redact=False)
                if key not in st.registries:
                    raise NotFound(f"service {sub.cluster_name} is not subscribed on {registry}")
                await self._unwatch(st, key)
                st.registries.remove(key)
                self.protection.end(st, key)
                st.providers.pop(key, None)
                if st.registries:
                    self._update_cluster(st)
            dropped = list(st.registries) if registry is None else [registry.to_url(redact=False)]
            if not st.registries or registry is None:
                await self._drop_subscription(st)
                self._unroute_subscription(st)
            await self._release_unused(dropped)
        self._rules_soon()
        await self._save()

    async def _unwatch(self, st: SubscriptionState, key: str) -> None:
        await self.apps.untrack(key, st.sub.cluster_name)
        for held in (st.interface_urls, st.app_found, st.found):
            held.pop(key, None)
        reg = self.registries.get(key)
        listener = st.listeners.pop(key, None)
        if reg is not None and key in st.watching:
            if listener is not None:
                await self._quietly(reg.unsubscribe(st.sub, listener))
            await self._quietly(reg.unregister(st.consumer))
        st.watching.discard(key)

    async def _drop_subscription(self, st: SubscriptionState) -> None:
        for key in list(st.watching):
            await self._unwatch(st, key)
        self.protection.end(st)
        self.subscriptions.pop(st.sub.cluster_name, None)
        self.from_cache.discard(st.sub.cluster_name)

    def _on_providers(self, st: SubscriptionState, key: str, urls: list[DubboURL]) -> None:
        """Every registry's provider events arrive here.  Nothing raised while applying one may
        reach the registry adapter: some adapters stop delivering on an exception, and the next
        event must still apply; so a failure is logged with the service, counted, and dropped."""
        if self.subscriptions.get(st.sub.cluster_name) is not st:
            return  # a late event for a subscription that is gone
        self.events["provider_events"] += 1
        st.interface_urls[key] = urls
        self._on_changed(st, key)

    def _on_changed(self, st: SubscriptionState, key: str) -> None:
        """A registry event changed what ``st`` finds on ``key``: the selection applied (see _offer)."""
        try:
            applied = self._offer(st, key, self._merged(st, key))
            self.from_cache.discard(st.sub.cluster_name)
            if applied:
                self._update_cluster(st)
                self._save_soon()
                if self.rules.stores and subscription_rule_ids(st) != self._sub_rule_ids.get(
                    st.sub.cluster_name
                ):
                    self._rules_soon()  # another provider application: its rules are watched
        except Exception:
            self._apply_failed(st, key)

    def _offer(self, st: SubscriptionState, key: str, urls: Iterable[DubboURL]) -> bool:
        """A provider list registry ``key`` reports for ``st`` (an event, or what a subscribe
        answered): its usable URLs (screen.usable) replace ``st.providers[key]`` unless the
        empty-provider protection holds them back. Whether they did."""
        usable = self.screen.usable(st.sub.cluster_name, key, urls)
        if self.protection.holds_back(st, key, usable):
            return False
        st.providers[key] = usable
        return True

    def _release_held(self, st: SubscriptionState, key: str, urls: list[DubboURL]) -> None:
        """A hold ran out (see protection): the list held back is applied, as an event's would be."""
        if self.subscriptions.get(st.sub.cluster_name) is not st or key not in st.registries:
            return
        try:
            st.providers[key] = urls
            self._update_cluster(st)
            self._save_soon()
        except Exception:
            self._apply_failed(st, key)

    def _apply_failed(self, st: SubscriptionState, key: str) -> None:
        self.events["provider_event_failures"] += 1
        st.cluster_memo = None  # built from a list that may not be the one now held
        log.exception(
            "registry %s: applying providers of %s failed; later events still apply",
            self._registry_name(key), st.sub.cluster_name,
        )  # fmt: skip

    def _registry_name(self, key: str) -> str:
        reg = self.registries.get(key)
        return reg.name if reg is not None else key

    def event_counts(self) -> dict[str, int]:
        """The registry events counted here, with the entries the adapters could not even parse
        (ZooKeeper node names, Nacos instances) in ``invalid_providers``."""
        counts = dict(self.events)
        counts.update(self.app_registrar.events)
        unparseable = sum(reg.unparseable for reg in self.registries.values())
        counts["invalid_providers"] = counts.get("invalid_providers", 0) + unparseable
        return counts

    def _consumer_url(
        self, sub: Subscription, application: str = "", params: Mapping[str, str] | None = None
    ) -> DubboURL:
        return consumer_url(
            interface=sub.interface,
            ip=self.advertise_ip,
            version=sub.version,
            group=sub.group,
            application=application or self.application,
            params=params,
        )

    # --- tables -------------------------------------------------------------------------------

    def hosts_of(self, st: SubscriptionState) -> tuple[Host, ...]:
        """Providers from every registry of the subscription, filtered by Dubbo's rules; a provider
        seen in two registries is one host.  Memoised until a provider list is replaced."""
        source = tuple(st.providers.get(key) for key in st.registries)
        memo = st.cluster_memo
        if memo is not None and len(memo[0]) == len(source) and all(map(operator.is_, memo[0], source)):
            return memo[1]
        hosts = self._hosts_from(st)
        st.cluster_memo = (source, hosts)
        return hosts

    def _hosts_from(self, st: SubscriptionState) -> tuple[Host, ...]:
        """The hosts, with the config center's rules applied (``governance.policy``): configurators
        on the provider URLs, and the routers bound to the result as the cluster's policy."""
        rules = self.rules.service_rules(st) if self.rules.stores else None
        providers: Mapping[str, Sequence[DubboURL]] = st.providers
        own = consumer_own(st.consumer.params)
        if own:
            # The consumer's reference configuration over each provider's URL (ServiceAddressURL):
            # what the balancer, the cluster mode and the routers read (governance.params).
            providers = {
                key: [dataclasses.replace(url, params=layered(url.params, own)) for url in urls]
                for key, urls in providers.items()
            }
        timeouts: dict[str, int] = {}
        if rules is not None and rules.configurators:
            done = configured(
                providers,
                rules.configurators,
                application=st.consumer.params.get("application", ""),
                local_host=self.advertise_ip,
            )
            providers, timeouts = done.providers, done.timeouts
            if done.disabled:
                log.debug("%s: %d provider(s) disabled by configurators", st.sub.cluster_name, done.disabled)
        hosts, own = hosts_from(st.sub, st.registries, providers, self.screen.own)
        problems = declaration_problems(hosts)
        if problems != st.param_problems:
            st.param_problems = problems
            for problem in problems:
                log.warning("%s: a provider parameter cannot be used, the default applies: %s",
                            st.sub.cluster_name, problem)  # fmt: skip
        for key, url, what in own:
            self.screen.report_own(st.sub.cluster_name, key, url, what)
        st.policy = None
        if rules is not None and (rules.routes or timeouts):
            urls: dict[str, DubboURL] = {}
            for key in st.registries:
                for url in providers.get(key, ()):
                    urls.setdefault(url.address, url)
            st.policy = ClusterPolicy(rules, st.consumer, urls, hosts, timeouts=timeouts)
        return hosts

    def _forget_cluster(self, st: SubscriptionState) -> None:
        """The rules of ``st`` changed: its hosts and policy are made again at the next look."""
        st.cluster_memo = None
        st.cluster = None

    @property
    def own_addresses(self) -> dict[str, str]:
        """This sidecar's own listener addresses (see set_own_addresses)."""
        return self.screen.own

    def set_own_addresses(self, addresses: Mapping[str, str]) -> None:
        """This sidecar's own listener addresses (``own_addresses``), once they are known: providers
        at any of them are left out of every cluster from now on."""
        if not self.screen.set_own(addresses):
            return
        for st in self.subscriptions.values():
            st.cluster_memo = None
        if self.subscriptions:
            self._rebuild_egress()

    def _provider_view(self, st: SubscriptionState) -> list[dict[str, Any]]:
        return [
            {"address": h.address, "weight": h.weight, "metadata": dict(h.metadata)}
            for h in self.hosts_of(st)
        ]

    def set_static_table(self, table: RoutingTable) -> None:
        """A reloaded config's static routes and clusters, merged with the subscriptions' ones."""
        self.static_table = table
        self._rebuild_egress()

    def _update_cluster(self, st: SubscriptionState) -> None:
        """Providers of one subscription changed: replace its cluster alone when the table already
        routes to it (cost independent of the table's size), else rebuild the table."""
        name = st.sub.cluster_name
        table = self.egress.current
        if name in self.static_table.clusters or name not in table.clusters:
            self._rebuild_egress()
            return
        self.egress.swap(table.replacing_cluster(self._cluster_of(st)))

    def _cluster_of(self, st: SubscriptionState) -> Cluster:
        hosts = self.hosts_of(st)
        if st.cluster is None or st.cluster.hosts is not hosts:
            st.cluster = subscription_cluster(st.sub, hosts, st.policy)
        return st.cluster

    @staticmethod
    def _route_of(st: SubscriptionState) -> Route:
        if st.route is None:
            st.route = subscription_route(st.sub)
        return st.route

    def _route_subscription(self, st: SubscriptionState) -> None:
        """Give a subscription its route and cluster: inserted in its place in a table that keeps
        everything else (see RoutingTable.inserting), or its cluster replaced when it has one."""
        name = st.sub.cluster_name
        table = self.egress.current
        if name in table.clusters or name in self.static_table.clusters:
            self._update_cluster(st)
            return
        key = route_order(st.sub)
        at = bisect.bisect_left(self._routed, key)
        index = len(self.static_table.routes) + at
        self.egress.swap(table.inserting(index, self._route_of(st), self._cluster_of(st)))
        self._routed.insert(at, key)

    def _unroute_subscription(self, st: SubscriptionState) -> None:
        name = st.sub.cluster_name
        table = self.egress.current
        if name in self.static_table.clusters or name not in table.clusters:
            self._rebuild_egress()
            return
        self.egress.swap(table.removing(name, name))
        key = route_order(st.sub)
        at = bisect.bisect_left(self._routed, key)
        if at < len(self._routed) and self._routed[at] == key:
            del self._routed[at]

    def _rebuild_egress(self) -> None:
        static = self.static_table
        pairs: list[tuple[Route, Cluster]] = []
        routed: list[tuple[bool, bool, str]] = []
        for st in sorted(self.subscriptions.values(), key=lambda st: route_order(st.sub)):
            name = st.sub.cluster_name
            if name in static.clusters:
                log.warning("subscription %s shadowed by a static cluster of the same name", name)
                continue
            pairs.append((self._route_of(st), self._cluster_of(st)))
            routed.append(route_order(st.sub))
        self.egress.swap(egress_table(static, pairs))
        self._routed = routed  # order keys of the subscription routes, as they follow the static ones

    def _linger(self, spec: PublishSpec) -> None:
        if self.unpublish_grace_s <= 0:
            return
        loop = asyncio.get_running_loop()
        self._lingering[spec.key] = (spec, loop.time() + self.unpublish_grace_s)
        loop.call_later(self.unpublish_grace_s + 0.01, self._rebuild_ingress)

    def _rebuild_ingress(self) -> None:
        specs = {key: p.spec for key, p in self.publications.items()}
        specs.update(self._opening)
        if self._lingering:
            now = asyncio.get_running_loop().time()
            for key, (spec, until) in list(self._lingering.items()):
                if until <= now or key in specs:
                    del self._lingering[key]
                else:
                    specs[key] = spec
        self.ingress.swap(ingress_table(specs.values()))

    # --- the config center's rules ---------------------------------------------------------------

    def _rules_soon(self) -> None:
        """Desired state, providers or a connection changed: watch the rules that follow from them
        (one task at a time; changes meanwhile make it run once more)."""
        if not self.rules.stores:
            return
        self._rules_dirty = True
        if self._rules_task is None or self._rules_task.done():
            self._rules_task = asyncio.get_running_loop().create_task(self._sync_rules())
            self._tasks.add(self._rules_task)
            self._rules_task.add_done_callback(self._tasks.discard)

    async def _sync_rules(self) -> None:
        while self._rules_dirty:
            self._rules_dirty = False
            users: dict[str, set[str]] = {}
            wanted: dict[str, tuple[set[str], set[str]]] = {k: (set(), set()) for k in self.rules.stores}
            self._sub_rule_ids = {}
            for name, st in self.subscriptions.items():
                ids = self._sub_rule_ids[name] = subscription_rule_ids(st)
                self._want(wanted, users, st.registries, ids, st.sub.interface, f"sub:{name}")
            for name, pub in self.publications.items():
                ids = publication_rule_ids(pub)
                self._want(wanted, users, pub.registries, ids, pub.spec.interface, f"pub:{name}")
            self._rule_users = users
            for key, (ids, interfaces) in wanted.items():
                reg = self.registries.get(key)
                if reg is not None and reg.connected:
                    await self.rules.sync(key, reg, ids, interfaces)

    @staticmethod
    def _want(
        wanted: dict[str, tuple[set[str], set[str]]],
        users: dict[str, set[str]],
        registries: Iterable[str],
        ids: set[str],
        interface: str,
        user: str,
    ) -> None:
        for key in registries:
            if key in wanted:
                wanted[key][0].update(ids)
                wanted[key][1].add(interface)
        for rule_id in (*ids, OVERRIDES + interface):
            users.setdefault(rule_id, set()).add(user)

    def _on_rule_change(self, key: str, rule_id: str) -> None:
        """A rule changed in the config center ``key`` (or was restored): the subscriptions and
        publications under it, and only those, are evaluated again."""
        self.events["rule_changes"] += 1
        for user in sorted(self._rule_users.get(rule_id, ())):
            kind, _, name = user.partition(":")
            if kind == "sub":
                st = self.subscriptions.get(name)
                if st is not None and key in st.registries:
                    self._forget_cluster(st)
                    self._update_cluster(st)
            else:
                pub = self.publications.get(name)
                if pub is not None and key in pub.registries:
                    task = asyncio.get_running_loop().create_task(self._reconfigure_locked(pub))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        self._save_soon()

    async def _reconfigure_locked(self, pub: Publication) -> None:
        async with self._lock:
            if self.publications.get(pub.spec.key) is pub:
                await self._reconfigure(pub)

    def rules_view(self) -> list[dict[str, Any]]:
        """Every config center's rules in force and refused, for config_dump and ``ctl rules``."""
        return self.rules.describe({key: reg.name for key, reg in self.registries.items()})

    def refused_rules(self) -> list[str]:
        """One line per refused rule, for /readyz's detail."""
        return [
            f"{r['source'] or r['rule_id']}: {r['reason']}: {r['message']}"
            for center in self.rules_view()
            for r in center["refused"]
        ]

    # --- persistence --------------------------------------------------------------------------

    def snapshot(self) -> SavedState:
        state = saved_state(self.publications.values(), self.subscriptions)
        state.rules = self.rules.snapshot()
        return state

    async def _save(self) -> None:
        """Desired state changed (an API call): answer only once it is on disk (see Saver.save)."""
        await self.saver.save()

    def _save_soon(self) -> None:
        """The provider cache changed: it may lag, and bursts of events share one write."""
        self.saver.save_soon()

    def state_save_status(self) -> dict[str, Any] | None:
        """The state file's writes (StateWriter.describe), None without a data directory."""
        return self.saver.describe()

    @property
    def state_save_error(self) -> str | None:
        """Why the last state write failed; None while writes succeed (or there is no data dir)."""
        return self.saver.error

    async def _restore(self, saved: SavedState) -> None:
        """Bring back what a previous run had: routes from the provider cache at once, registry
        work as each registry connects (now, or later through _on_state)."""
        for key in saved.rules:
            if key in self._registry_urls:
                await self._registry(key)
        self.rules.restore(saved.rules)
        for item in saved.subscriptions:
            try:
                sub = Subscription(item["interface"], item.get("version", ""), item.get("group", ""))
                keys = [self._remember(k) for k in item.get("registries", [])]
                # Inside the try: a field of the wrong type (an int interface) is refused here.
                consumer = self._consumer_url(sub, item.get("application", ""), item.get("params") or None)
                st = SubscriptionState(sub, keys, consumer, migration=_migration_item(item))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.error("state file: skipping subscription %s: %s", short(repr(item)), exc)
                continue
            st.providers.update(cached_providers(sub.cluster_name, saved.providers.get(sub.cluster_name)))
            for key, urls in st.providers.items():
                # Found at application level last time: kept as such until discovery says otherwise,
                # so the interface-level list a reconnection delivers first does not drop them.
                st.app_found[key] = tuple(
                    FoundURL(
                        u,
                        application=Source(u.params[REMOTE_APPLICATION_KEY], u.params.get(REVISION_KEY, "")),
                    )
                    for u in urls
                    if REMOTE_APPLICATION_KEY in u.params
                )
            self.subscriptions[sub.cluster_name] = st
            if any(st.providers.values()):
                self.from_cache.add(sub.cluster_name)
        for item in saved.publications:
            try:
                spec = PublishSpec.from_dict(item["spec"])
                keys = [self._remember(k) for k in item.get("registries", [])]
                saved_url = DubboURL.parse(item["url"])
                # Registered anew, as this process: its pid, and the address and regproxy.tls of this
                # run (either may have changed since). The timestamp stays the publication's: the
                # sidecar restarted, not the application, and a new one would make every consumer
                # warm a warm provider up again (AbstractLoadBalance.getWeight, docs/parameters.md).
                stamp = saved_url.params.get("timestamp", "")
                url = self._provider_url(spec, int(stamp) if stamp.isdigit() else None)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.error("state file: skipping publication %s: %s", short(repr(item)), exc)
                continue
            # The previous run's node, when it was at this address: a killed sidecar's lives on
            # until its session expires. One elsewhere is not ours to remove.
            previous = saved_url if saved_url.address == url.address and saved_url != url else None
            pub = self.publications[spec.key] = Publication(spec, url, keys, previous=previous)
            self._configure_publication(pub)
        self._rebuild_egress()
        self._rebuild_ingress()
        if saved.publications or saved.subscriptions:
            log.info(
                "restored %d publication(s) and %d subscription(s) from %s",
                len(self.publications), len(self.subscriptions), self.store.path if self.store else "?",
            )  # fmt: skip
        for key in {k for p in self.publications.values() for k in p.registries} | {
            k for s in self.subscriptions.values() for k in s.registries
        }:
            reg = await self._registry(key)
            if reg.connected:
                await self._catch_up(key)

    def _remember(self, key: str) -> str:
        if key not in self._registry_urls:
            self._registry_urls[key] = RegistryURL.parse(key)
        return key

    @staticmethod
    async def _quietly(op: Any) -> None:
        try:
            await op
        except RegistryError as exc:  # RegistryUnavailable included
            log.warning("%s", exc)

    async def _sync_apps(self, keys: Iterable[str]) -> None:
        """The application-level registrations (app_registration) of registries ``keys`` made to follow
        the publications registered there (none while draining or suspended: their instances go)."""
        for key in list(dict.fromkeys(keys)):
            reg = self.registries.get(key)
            if reg is None:
                continue
            pubs = [(p.spec, p.url) for p in self.publications.values() if key in p.registered]
            await self.app_registrar.sync(key, reg, pubs, self.application)

    # --- views for the API and admin ----------------------------------------------------------

    def registry_states(self) -> dict[str, str]:
        return {reg.name: reg.state for reg in self.registries.values()}

    def ready_states(self) -> dict[str, str]:
        """The states readiness counts: every configured registry's, and a registry's a request
        brought in only once it has connected and while something uses it (one restored from the
        state file that never connects in this run is no reason to be unready either)."""
        in_use = self._in_use()
        return {
            reg.name: reg.state
            for key, reg in self.registries.items()
            if key in self._configured or ((key in self._ever_connected or reg.connected) and key in in_use)
        }


MIGRATION_STEP_KEY = "migration.step"  # a Dubbo reference's own step (MigrationRule.getStep)
_STEP_SETTINGS = (
    (MigrationSetting.INTERFACE, MigrationStep.FORCE_INTERFACE),
    (MigrationSetting.APPLICATION, MigrationStep.FORCE_APPLICATION),
    (MigrationSetting.BOTH, MigrationStep.APPLICATION_FIRST),
)


def _migration_item(item: Mapping[str, Any]) -> str:
    """A saved subscription's ``migration`` ("" when absent).  One that is no setting is dropped with
    an ERROR naming it, the subscription kept: the default setting applies to it."""
    value = item.get("migration") or ""
    if value in set(MigrationSetting):
        return str(value)
    if value:
        choices = ", ".join(MigrationSetting)
        log.error(
            "state file: subscription %s: migration %s is none of %s; the default applies",
            short(repr(item.get("interface"))), short(repr(value)), choices,
        )  # fmt: skip
    return ""


async def _no_fetcher(instance: Any, revision: str) -> Any:
    raise ValueError("this sidecar asks no MetadataService (no metadata fetcher configured)")


def _identity(consumer: DubboURL) -> dict[str, str]:
    """A consumer URL's parameters but the ones that change with each run (pid, timestamp)."""
    return {k: v for k, v in consumer.params.items() if k not in ("pid", "timestamp")}
