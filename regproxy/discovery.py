"""Publications and subscriptions: what the HTTP API asks for, carried out on the registries, and
the routing tables kept in step with what the registries report.

Flow is one way: registry events → provider lists per (subscription, registry) → a new egress
table snapshot, swapped atomically. Publications → registry nodes with this sidecar's advertise
IP and ingress port (the port rewrite) → an ingress table that sends each published service to the
application's real port.

Nothing is lost on faults: a publication or subscription is kept as desired state and carried
out again whenever a registry (re)connects; a registry that is down leaves the last known
providers in place; the state file brings all of it back after a restart.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from regproxy.address import is_loopback_host
from regproxy.registry.base import CONNECTED, CONNECTING, Registry, RegistryError, RegistryUnavailable
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import (
    DubboURL,
    Subscription,
    consumer_url,
    matches,
    provider_problem,
    provider_url,
)
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.state import SavedState, StateSaveError, StateStore, StateWriter
from regproxy.tls import TLS_PARAM

log = logging.getLogger(__name__)

DYNAMIC_LB = "weighted_round_robin"  # honours provider weights; equal weights give plain round robin
CONNECT_WAIT_S = 3.0  # how long a request naming a new registry waits for it to connect
CACHE_SAVE_DELAY_S = 3.0  # provider cache writes are coalesced: a write is linear in the table


@dataclass(frozen=True)
class PublishSpec:
    interface: str
    port: int
    methods: tuple[str, ...] = ()
    version: str = ""
    group: str = ""
    application: str = ""
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return Subscription(self.interface, self.version, self.group).cluster_name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = list(self.methods)
        d["params"] = dict(self.params)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PublishSpec:
        return cls(
            interface=d["interface"],
            port=int(d["port"]),
            methods=tuple(d.get("methods") or ()),
            version=d.get("version") or "",
            group=d.get("group") or "",
            application=d.get("application") or "",
            params=dict(d.get("params") or {}),
        )


def _short(text: str, limit: int = 300) -> str:
    """``text`` cut for a log line: a registry node may be 1 MB long."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def ingress_table(published: Iterable[PublishSpec] = ()) -> RoutingTable:
    """Ingress routes: each service published through this sidecar (interface, version and group) to
    the application port it was published with, and nothing else.

    There is no catch-all: the ingress is reachable from other hosts, and forwarding whatever
    arrives would let anyone reach any service of the local application (or, with a crafted
    publication elsewhere, its ports) without it being published. Others get SERVICE_NOT_FOUND.
    """
    routes: list[Route] = []
    clusters: dict[str, Cluster] = {}
    for spec in sorted(published, key=lambda p: p.key):
        cname = f"app:{spec.port}"
        if cname not in clusters:
            clusters[cname] = Cluster(name=cname, hosts=(Host(address=f"127.0.0.1:{spec.port}"),))
        # The group is always matched, though it costs decoding the attachments of every request:
        # a group not published here must not reach the application either.
        match = RouteMatch(service=spec.interface, version=spec.version, group=spec.group)
        routes.append(Route(name=f"pub:{spec.key}", match=match, cluster=cname, retries=0))
    return RoutingTable(routes=routes, clusters=list(clusters.values()))


def own_addresses(listeners: Iterable[tuple[str, str, int]], advertise_ip: str) -> dict[str, str]:
    """The provider addresses (``host:port`` as DubboURL.address writes them, lowercase) at which a
    sidecar reaches its own listeners, each with what it is ("egress listener 127.0.0.1:20880"), for
    ``listeners`` given as (name, bound host, port): the bound host; the loopback names when it is
    bound to a loopback or unspecified address; the advertise IP when that is the bound host or the
    host is unspecified (a listener on 127.0.0.1 is not reachable at the advertise IP: something
    else may listen on that port there)."""
    unspecified = ("", "0.0.0.0", "::")
    out: dict[str, str] = {}
    for name, host, port in listeners:
        what = f"{name} listener {'[' + host + ']' if ':' in host else host or '*'}:{port}"
        hosts = {host.lower()}
        if host in unspecified or is_loopback_host(host):
            hosts.update(("127.0.0.1", "localhost", "::1"))
        if host in unspecified:
            hosts.add(advertise_ip.lower())
        for h in hosts - {""}:
            out[f"[{h}]:{port}" if ":" in h else f"{h}:{port}"] = what
    return out


class NotFound(LookupError):
    """Unpublish or unsubscribe of something this sidecar does not have (the API answers 404)."""


@dataclass
class Publication:
    spec: PublishSpec
    url: DubboURL
    registries: list[str]  # registry keys
    registered: set[str] = field(default_factory=set)  # keys where the node was created
    # The URL a previous run of this sidecar registered (restored from the state file, same
    # address): removed from each registry before ``url`` goes in (see Discovery._register).
    previous: DubboURL | None = None


@dataclass
class SubscriptionState:
    sub: Subscription
    registries: list[str]
    consumer: DubboURL
    providers: dict[str, list[DubboURL]] = field(default_factory=dict)  # registry key -> all URLs
    watching: set[str] = field(default_factory=set)
    listeners: dict[str, Callable[[list[DubboURL]], None]] = field(default_factory=dict)
    # Derived from ``providers`` and kept until one of its lists is replaced, so a registry event
    # rebuilds only its own subscription's cluster and cache text (see Discovery.cluster_of).
    cluster_memo: tuple[tuple[list[DubboURL] | None, ...], tuple[Host, ...]] | None = None
    text_memo: dict[str, tuple[list[DubboURL], list[str]]] = field(default_factory=dict)
    route: Route | None = None  # the subscription's route: fixed by ``sub``, built once
    cluster: Cluster | None = None  # the last cluster built; reused while its hosts are current


RegistryFactory = Callable[[RegistryURL], Registry]


class Discovery:
    """A sidecar's publications and subscriptions, carried out on its registries, and the routing
    tables that follow from them.

    Owns: the registry adapters (``registries``: the configured ones, started here, and those a
    request named, closed again once nothing uses them); the desired state (``publications``,
    ``subscriptions``) and the providers each registry reports; the state file (written through
    a StateWriter: API changes before they are answered, provider caches a moment later).

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
    * The egress table is the static routes, then one route per subscription in ``_order_key``
      order (exact versions and groups before wildcards); ``_routed`` mirrors that order.
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
        self._writer = StateWriter(store, self.snapshot) if store is not None else None
        self._routed: list[tuple[bool, bool, str]] = []  # see _rebuild_egress
        self._lock = asyncio.Lock()  # API calls change shared state in steps with awaits between
        self.withdrawn = False  # draining: nodes taken out of the registries, no new publications
        # Application ports that do not answer heartbeats (regproxy.health.app): their publications
        # stay desired state but are out of the registries until resume_publications. Independent
        # of ``withdrawn``: draining wins, a resume while draining registers nothing.
        self.suspended: dict[int, str] = {}  # app port -> reason
        self.events: Counter[str] = Counter()  # provider_events, state_changes (for /metrics)
        self._tasks: set[asyncio.Task[None]] = set()
        # An unpublished service keeps its ingress route this long (drain.grace_s): consumers learn of
        # the removal through the registry a moment later and their requests meanwhile must not fail.
        self.unpublish_grace_s = 3.0
        self._lingering: dict[str, tuple[PublishSpec, float]] = {}  # key -> (spec, loop time to drop)
        # Provider addresses that are this sidecar's own egress, API or admin listener (see
        # own_addresses): the egress would forward to itself. Its ingress is not among them.
        self.own_addresses: dict[str, str] = {}
        self._ignored_own: set[str] = set()  # provider URLs already reported as ignored
        self._invalid_seen: set[str] = set()  # invalid provider URLs already reported (see _usable)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for key in self._configured:
            await self._registry(key)
        if self.store is not None:
            await self._restore(self.store.load())
        self.restored = True

    async def stop(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.flush()
            except StateSaveError as exc:
                log.error("stopping with changes that are not on disk (a restart will lack them): %s", exc)
            self._writer.close()
        for task in list(self._tasks):
            task.cancel()
        for reg in list(self.registries.values()):
            try:
                await reg.stop()
            except Exception:
                log.exception("stopping registry %s", reg.name)

    async def _registry(self, key: str) -> Registry:
        reg = self.registries.get(key)
        if reg is None:
            reg = self._factory(self._registry_urls[key])
            self.registries[key] = reg
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

    def _held(self) -> set[str]:
        """Keys of the registries some publication or subscription uses."""
        keys = {k for p in self.publications.values() for k in p.registries}
        keys.update(k for st in self.subscriptions.values() for k in st.registries)
        return keys

    async def _release_unused(self, keys: Iterable[str]) -> None:
        """Close the registries among ``keys`` that a request brought in (not configured) and that
        nothing uses now: one that never connected, or whose last publication or subscription is
        gone. Kept, it would retry its connection forever, and it is not the operator's."""
        held = self._held()
        for key in dict.fromkeys(keys):
            if key in self._configured or key in held:
                continue
            reg = self.registries.pop(key, None)
            self._registry_urls.pop(key, None)
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
            watched = False
            for st in list(self.subscriptions.values()):
                if key in st.registries and key not in st.watching:
                    try:
                        await self._watch(st, key, reg)
                        watched = True
                    except RegistryError as exc:
                        log.warning("subscribing %s on %s: %s", st.sub.cluster_name, reg.name, exc)
            if watched:
                self._rebuild_egress()
                self._save_soon()

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
        if existing is not None and existing.spec == spec and set(targets) <= existing.registered:
            return str(existing.url)  # idempotent: the same URL, nothing re-registered
        url = existing.url if existing is not None and existing.spec == spec else self._provider_url(spec)
        pub = Publication(
            spec,
            url,
            sorted(set(targets) | set(existing.registries if existing else ())),
            previous=existing.previous if existing is not None else None,
        )
        if existing is not None and existing.url == url:
            pub.registered = set(existing.registered)
        done: list[str] = []
        suspended = self.suspended.get(spec.port)
        if suspended is not None:
            # Kept, not registered: resume_publications registers it once the app answers again.
            log.warning("publication %s kept but not registered: %s", spec.key, suspended)
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
        if existing is not None and existing.url != url:
            await self._unregister(existing, existing.registered)
        self.publications[spec.key] = pub
        self._rebuild_ingress()
        log.info("published %s as %s (app port %d)", spec.key, url, spec.port)
        return str(url)

    def _url_params(self, spec: PublishSpec) -> dict[str, str]:
        """The publication's own parameters, and regproxy.tls set by this sidecar alone (the value
        tells consumers' sidecars how to dial our ingress; a caller cannot choose it)."""
        params = {k: v for k, v in spec.params.items() if k != TLS_PARAM}
        if self.ingress_tls:
            params[TLS_PARAM] = "true"
        return params

    def _provider_url(self, spec: PublishSpec) -> DubboURL:
        """The URL ``spec`` is registered with: this sidecar's advertise IP and ingress port, and this
        process's pid and the time now (a Dubbo provider puts both in the URL it registers)."""
        return provider_url(
            interface=spec.interface,
            ip=self.advertise_ip,
            port=self.ingress_port,
            methods=spec.methods,
            version=spec.version,
            group=spec.group,
            application=spec.application or self.application,
            params=self._url_params(spec),
        )

    async def _register(self, pub: Publication, key: str, reg: Registry) -> None:
        """Register ``pub`` in the registry ``key`` (RegistryError when refused or unreachable). The
        node a previous run left there (``pub.previous``: killed, its session not expired yet) goes
        first: consumers would see the same address twice until that session expires."""
        if pub.previous is not None:
            await self._quietly(reg.unregister(pub.previous))
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
            await self._release_unused(keys)
        await self._save()

    async def withdraw_all(self) -> None:
        """Take every publication out of every registry (drain), keeping them in the state file so
        a restarted sidecar publishes them again."""
        async with self._lock:
            self.withdrawn = True
            for pub in self.publications.values():
                await self._unregister(pub, pub.registered)
            log.info("withdrew %d publication(s) from the registries", len(self.publications))

    def published_ports(self) -> set[int]:
        """The application ports publications point at (what the app checker heartbeats)."""
        return {p.spec.port for p in self.publications.values()}

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
            log.info("published %d publication(s) of app port(s) %s again", count, sorted(ports))
            return count

    # --- subscribe ----------------------------------------------------------------------------

    async def subscribe(
        self, sub: Subscription, registry: RegistryURL | None = None
    ) -> tuple[str, list[dict[str, Any]]]:
        async with self._lock:
            targets = self._targets(registry)
            st = self.subscriptions.get(sub.cluster_name)
            created = st is None
            if st is None:
                st = SubscriptionState(sub, [], self._consumer_url(sub))
                self.subscriptions[sub.cluster_name] = st
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
        await self._save()
        return sub.cluster_name, view

    async def _watch(self, st: SubscriptionState, key: str, reg: Registry) -> None:
        listener = st.listeners.get(key)
        if listener is None:
            listener = st.listeners[key] = lambda urls, st=st, key=key: self._on_providers(st, key, urls)
        urls = await reg.subscribe(st.sub, listener)
        try:
            await reg.register(st.consumer)
        except RegistryError:
            await self._quietly(reg.unsubscribe(st.sub, listener))
            raise
        st.watching.add(key)
        st.providers[key] = self._usable(st, key, urls)
        self.from_cache.discard(st.sub.cluster_name)

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
                st.providers.pop(key, None)
                if st.registries:
                    self._update_cluster(st)
            dropped = list(st.registries) if registry is None else [registry.to_url(redact=False)]
            if not st.registries or registry is None:
                await self._drop_subscription(st)
                self._unroute_subscription(st)
            await self._release_unused(dropped)
        await self._save()

    async def _unwatch(self, st: SubscriptionState, key: str) -> None:
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
        self.subscriptions.pop(st.sub.cluster_name, None)
        self.from_cache.discard(st.sub.cluster_name)

    def _on_providers(self, st: SubscriptionState, key: str, urls: list[DubboURL]) -> None:
        """Every registry's provider events arrive here.  Nothing raised while applying one may
        reach the registry adapter: some adapters stop delivering on an exception, and the next
        event must still apply; so a failure is logged with the service, counted, and dropped."""
        if self.subscriptions.get(st.sub.cluster_name) is not st:
            return  # a late event for a subscription that is gone
        self.events["provider_events"] += 1
        try:
            st.providers[key] = self._usable(st, key, urls)
            self.from_cache.discard(st.sub.cluster_name)
            self._update_cluster(st)
            self._save_soon()
        except Exception:
            self.events["provider_event_failures"] += 1
            st.cluster_memo = None  # built from a list that may not be the one now held
            log.exception(
                "registry %s: applying providers of %s failed; later events still apply",
                self._registry_name(key), st.sub.cluster_name,
            )  # fmt: skip

    def _registry_name(self, key: str) -> str:
        reg = self.registries.get(key)
        return reg.name if reg is not None else key

    def _usable(self, st: SubscriptionState, key: str, urls: Iterable[DubboURL]) -> list[DubboURL]:
        """The one check every provider URL passes, from any registry (events and the list a
        subscribe returns): one that cannot be routed to (see provider_problem) is left out, never
        kept in the providers (so never saved), and reported with one WARNING per URL, not one per
        event, and counted as ``invalid_providers``."""
        out: list[DubboURL] = []
        for url in urls:
            problem = provider_problem(url)
            if problem is None:
                out.append(url)
            elif self._first_sighting(str(url)):
                log.warning(
                    "registry %s: skipping provider %s of %s: %s",
                    self._registry_name(key), _short(str(url)), st.sub.cluster_name, problem,
                )  # fmt: skip
        return out

    def event_counts(self) -> dict[str, int]:
        """The registry events counted here, with the entries the adapters could not even parse
        (ZooKeeper node names, Nacos instances) in ``invalid_providers``."""
        counts = dict(self.events)
        unparseable = sum(reg.unparseable for reg in self.registries.values())
        counts["invalid_providers"] = counts.get("invalid_providers", 0) + unparseable
        return counts

    def _first_sighting(self, text: str) -> bool:
        """Whether an invalid provider URL is new (to report and count it once); bounded memory."""
        if text in self._invalid_seen:
            return False
        if len(self._invalid_seen) >= 4096:
            self._invalid_seen.clear()
        self._invalid_seen.add(text)
        self.events["invalid_providers"] += 1
        return True

    def _consumer_url(self, sub: Subscription) -> DubboURL:
        return consumer_url(
            interface=sub.interface,
            ip=self.advertise_ip,
            version=sub.version,
            group=sub.group,
            application=self.application,
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
        hosts: dict[str, Host] = {}
        own = self.own_addresses
        for key in st.registries:
            for url in st.providers.get(key, ()):
                if url.address in hosts:
                    continue
                if not matches(st.sub, url):
                    if url.protocol != "dubbo":
                        log.debug("ignoring %s provider %s", url.protocol, url)
                    continue
                if own and (what := own.get(url.address.lower())) is not None:
                    self._ignore_own(st, key, url, what)
                    continue
                hosts[url.address] = Host(address=url.address, weight=url.weight, metadata=dict(url.params))
        return tuple(hosts.values())

    def _ignore_own(self, st: SubscriptionState, key: str, url: DubboURL, what: str) -> None:
        """A provider whose address is one of this sidecar's own listeners: requests sent there
        would come back into this sidecar (the egress forwarding to itself, forever). Said once per
        URL, not at every rebuild, and counted."""
        text = str(url)
        if text in self._ignored_own:
            return
        if len(self._ignored_own) >= 4096:
            self._ignored_own.clear()
        self._ignored_own.add(text)
        self.events["own_providers_ignored"] += 1
        reg = self.registries.get(key)
        log.warning(
            "registry %s: ignoring provider %s of %s: %s is this sidecar's own %s, and requests sent "
            "there would come back into it in a loop",
            reg.name if reg is not None else key, text, st.sub.cluster_name, url.address, what,
        )  # fmt: skip

    def set_own_addresses(self, addresses: Mapping[str, str]) -> None:
        """This sidecar's own listener addresses (``own_addresses``), once they are known: providers
        at any of them are left out of every cluster from now on."""
        addresses = {a.lower(): what for a, what in addresses.items()}
        if addresses == self.own_addresses:
            return
        self.own_addresses = addresses
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
            st.cluster = Cluster(name=st.sub.cluster_name, lb=DYNAMIC_LB, hosts=hosts)
        return st.cluster

    @staticmethod
    def _route_of(st: SubscriptionState) -> Route:
        if st.route is None:
            name = st.sub.cluster_name
            st.route = Route(name=name, match=st.sub.route_match(), cluster=name)
        return st.route

    @staticmethod
    def _order_key(st: SubscriptionState) -> tuple[bool, bool, str]:
        # Exact versions and groups before wildcards, so "*" never shadows a precise subscription.
        return (st.sub.version == "*", st.sub.group == "*" or "," in st.sub.group, st.sub.cluster_name)

    def _route_subscription(self, st: SubscriptionState) -> None:
        """Give a subscription its route and cluster: inserted in its place in a table that keeps
        everything else (see RoutingTable.inserting), or its cluster replaced when it has one."""
        name = st.sub.cluster_name
        table = self.egress.current
        if name in table.clusters or name in self.static_table.clusters:
            self._update_cluster(st)
            return
        key = self._order_key(st)
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
        key = self._order_key(st)
        at = bisect.bisect_left(self._routed, key)
        if at < len(self._routed) and self._routed[at] == key:
            del self._routed[at]

    def _rebuild_egress(self) -> None:
        static = self.static_table
        routes: list[Route] = list(static.routes)
        clusters: list[Cluster] = list(static.clusters.values())
        routed: list[tuple[bool, bool, str]] = []
        for st in sorted(self.subscriptions.values(), key=self._order_key):
            name = st.sub.cluster_name
            if name in static.clusters:
                log.warning("subscription %s shadowed by a static cluster of the same name", name)
                continue
            clusters.append(self._cluster_of(st))
            routes.append(self._route_of(st))
            routed.append(self._order_key(st))
        self.egress.swap(RoutingTable(routes=routes, clusters=clusters))
        self._routed = routed  # order keys of the subscription routes, as they follow the static ones

    def _linger(self, spec: PublishSpec) -> None:
        if self.unpublish_grace_s <= 0:
            return
        loop = asyncio.get_running_loop()
        self._lingering[spec.key] = (spec, loop.time() + self.unpublish_grace_s)
        loop.call_later(self.unpublish_grace_s + 0.01, self._rebuild_ingress)

    def _rebuild_ingress(self) -> None:
        specs = {key: p.spec for key, p in self.publications.items()}
        if self._lingering:
            now = asyncio.get_running_loop().time()
            for key, (spec, until) in list(self._lingering.items()):
                if until <= now or key in specs:
                    del self._lingering[key]
                else:
                    specs[key] = spec
        self.ingress.swap(ingress_table(specs.values()))

    # --- persistence --------------------------------------------------------------------------

    def snapshot(self) -> SavedState:
        return SavedState(
            publications=[
                {"spec": p.spec.to_dict(), "url": str(p.url), "registries": p.registries}
                for p in self.publications.values()
            ],
            subscriptions=[
                {
                    "interface": s.sub.interface,
                    "version": s.sub.version,
                    "group": s.sub.group,
                    "registries": s.registries,
                }
                for s in self.subscriptions.values()
            ],
            providers={name: self._provider_texts(s) for name, s in self.subscriptions.items()},
        )

    @staticmethod
    def _provider_texts(st: SubscriptionState) -> dict[str, list[str]]:
        """The cache form of a subscription's providers, re-rendered only for lists that changed:
        the whole state is saved after every event, and rendering 10,000 URLs each time would make
        one provider's change cost in proportion to every provider known."""
        out: dict[str, list[str]] = {}
        memo = st.text_memo
        for key, urls in st.providers.items():
            seen = memo.get(key)
            if seen is None or seen[0] is not urls:
                seen = memo[key] = (urls, [str(u) for u in urls])
            out[key] = seen[1]
        for key in memo.keys() - st.providers.keys():
            del memo[key]
        return out

    async def _save(self) -> None:
        """Desired state changed (an API call): answer only once it is on disk.

        StateSaveError when it could not be written: the change is kept, in effect here and in the
        registries, and the writer retries the whole state until a write succeeds (see StateWriter).
        Undoing it instead would mean more registry calls that can fail in turn, and would race with
        the other calls sharing the failed write."""
        if self._writer is not None:
            await self._writer.save()

    def state_save_status(self) -> dict[str, Any] | None:
        """The state file's writes (StateWriter.describe), None without a data directory."""
        return self._writer.describe() if self._writer is not None else None

    @property
    def state_save_error(self) -> str | None:
        """Why the last state write failed; None while writes succeed (or there is no data dir)."""
        return self._writer.error if self._writer is not None else None

    def _save_soon(self) -> None:
        """The provider cache changed: it may lag, and bursts of events share one write."""
        if self._writer is not None:
            self._writer.save_later(CACHE_SAVE_DELAY_S)

    async def _restore(self, saved: SavedState) -> None:
        """Bring back what a previous run had: routes from the provider cache at once, registry
        work as each registry connects (now, or later through _on_state)."""
        for item in saved.subscriptions:
            try:
                sub = Subscription(item["interface"], item.get("version", ""), item.get("group", ""))
                keys = [self._remember(k) for k in item.get("registries", [])]
                # Inside the try: a field of the wrong type (an int interface) is refused here.
                st = SubscriptionState(sub, keys, self._consumer_url(sub))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.error("state file: skipping subscription %s: %s", _short(repr(item)), exc)
                continue
            st.providers.update(
                self._cached_providers(sub.cluster_name, saved.providers.get(sub.cluster_name))
            )
            self.subscriptions[sub.cluster_name] = st
            if any(st.providers.values()):
                self.from_cache.add(sub.cluster_name)
        for item in saved.publications:
            try:
                spec = PublishSpec.from_dict(item["spec"])
                keys = [self._remember(k) for k in item.get("registries", [])]
                saved_url = DubboURL.parse(item["url"])
                # Registered anew, as this process: its pid, the time now, and the address and
                # regproxy.tls of this run (either may have changed since).
                url = self._provider_url(spec)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.error("state file: skipping publication %s: %s", _short(repr(item)), exc)
                continue
            # The previous run's node, when it was at this address: a killed sidecar's lives on
            # until its session expires. One elsewhere is not ours to remove.
            previous = saved_url if saved_url.address == url.address and saved_url != url else None
            self.publications[spec.key] = Publication(spec, url, keys, previous=previous)
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

    def _cached_providers(self, name: str, cached: object) -> dict[str, list[DubboURL]]:
        """A subscription's providers as the state file holds them (registry key -> URL texts),
        each part checked as registry URLs are (provider_problem): a part of the wrong type, an
        unparseable or unusable URL is dropped with an ERROR naming it; the rest is restored."""
        out: dict[str, list[DubboURL]] = {}
        if cached is None:
            return out
        if not isinstance(cached, dict):
            log.error(
                "state file: skipping cached providers of %s: %s is not a mapping", name, _short(repr(cached))
            )
            return out
        for key, texts in cached.items():
            if not isinstance(texts, list):
                log.error(
                    "state file: skipping cached providers of %s from %s: %s is not a list",
                    name, key, _short(repr(texts)),
                )  # fmt: skip
                continue
            urls: list[DubboURL] = []
            for text in texts:
                try:
                    if not isinstance(text, str):
                        raise ValueError("not a URL string")
                    url = DubboURL.parse(text)
                    problem = provider_problem(url)
                    if problem is not None:
                        raise ValueError(problem)
                except ValueError as exc:
                    log.error(
                        "state file: skipping cached provider %s of %s from %s: %s",
                        _short(repr(text)), name, key, exc,
                    )  # fmt: skip
                    continue
                urls.append(url)
            out[key] = urls
        return out

    @staticmethod
    async def _quietly(op: Any) -> None:
        try:
            await op
        except RegistryError as exc:  # RegistryUnavailable included
            log.warning("%s", exc)

    # --- views for the API and admin ----------------------------------------------------------

    def registry_states(self) -> dict[str, str]:
        return {reg.name: reg.state for reg in self.registries.values()}

    def ready_states(self) -> dict[str, str]:
        """The states readiness counts: every configured registry's, and a registry's a request
        brought in only once it has connected and while something uses it (one restored from the
        state file that never connects in this run is no reason to be unready either)."""
        held = self._held()
        return {
            reg.name: reg.state
            for key, reg in self.registries.items()
            if key in self._configured or ((key in self._ever_connected or reg.connected) and key in held)
        }
