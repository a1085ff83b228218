"""Dubbo 3 application-level discovery for the subscriptions, on every registry that holds it.

For a subscribed interface: its applications from the service-name mapping (or from the consumer's
``provided-by`` parameter, which Dubbo reads instead: ``ServiceDiscoveryRegistry.subscribe`` with
``ServiceNameMapping.getMappingByUrl``), the instances of each application, each instance's metadata
revision, the ``MetadataInfo`` of each revision (fetched once, cached per revision), and from those
the provider URLs a Dubbo 3.3 consumer would get (``discovery.app_hosts.app_urls``).  The coordinator
joins them with the interface-level URLs (``merge_found``) and applies the result as it applies a
registry event.

Faults never take hosts away: a ``MetadataInfo`` that cannot be fetched is asked for again with backoff
while some instance still has that revision.  Meanwhile an instance that moved to that revision keeps
the addresses of the revision it had (regproxy's departure: Dubbo's ``doOnEvent`` drops such an
instance's addresses while other revisions have theirs), a new instance at that revision adds none,
and when no revision of the subscription has its ``MetadataInfo`` nothing is delivered at all, so the
hosts found before stay (as ``doOnEvent`` keeps the old addresses then and retries).  A registry that
is unreachable delivers nothing (registry.base), so nothing changes either.

Owns: the watches of mappings and instances (shared by the subscriptions that need them, dropped with
the last), the metadata cache and the fetches.  Calls ``on_found(name, key, found)`` on the event loop
whenever the application-level URLs of subscription ``name`` on registry ``key`` change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from regproxy.discovery.app_hosts import AppState, Fetch, FoundURL, app_urls
from regproxy.registry.base import InstancesListener, MappingListener, Registry, RegistryError
from regproxy.registry.instances import REMOTE, REVISION_KEY, AppInstance
from regproxy.registry.metadata_info import MetadataInfo
from regproxy.registry.url import Subscription

log = logging.getLogger(__name__)

# A MetadataInfo fetch that failed is tried again after this, doubling up to the maximum.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
# How long a new subscription waits for its first application-level addresses before it is answered
# (Dubbo's consumer blocks its first notification on them the same way); later ones apply on arrival.
INITIAL_WAIT_S = 3.0
# MetadataInfos of revisions no instance has any more, kept in case one comes back (a rollback).
UNUSED_KEPT = 64
# The consumer parameter naming the provider applications (CommonConstants.PROVIDED_BY).
PROVIDED_BY = "provided-by"

FoundCallback = Callable[[str, str, tuple[FoundURL, ...]], None]
Fetcher = Callable[[AppInstance, str], Awaitable[MetadataInfo]]


def provided_by(params: dict[str, str] | Any) -> tuple[str, ...]:
    """The applications a consumer names in ``provided-by`` (comma-separated, trimmed), in order."""
    text = params.get(PROVIDED_BY, "") if params else ""
    return tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))


@dataclass
class _Tracked:
    """One subscription on one registry."""

    sub: Subscription
    named: tuple[str, ...]  # provided-by; empty: the mapping says
    found: tuple[FoundURL, ...] | None = None  # the last delivered (None: nothing yet)
    event: asyncio.Event = field(default_factory=asyncio.Event)  # set once something was delivered


@dataclass
class _OnRegistry:
    """What is watched on one registry."""

    reg: Registry
    tracked: dict[str, _Tracked] = field(default_factory=dict)  # subscription name -> its tracking
    mappings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # interface -> applications
    mapping_listeners: dict[str, MappingListener] = field(default_factory=dict)
    instances: dict[str, list[AppInstance]] = field(default_factory=dict)  # application -> instances
    instance_listeners: dict[str, InstancesListener] = field(default_factory=dict)

    def apps_of(self, t: _Tracked) -> tuple[str, ...]:
        return t.named or self.mappings.get(t.sub.interface, ())

    def apps_in_use(self) -> set[str]:
        return {app for t in self.tracked.values() for app in self.apps_of(t)}


@dataclass
class _Failure:
    attempts: int
    error: str


class AppDiscovery:
    """Application-level addresses for the subscriptions, per registry (see the module docstring)."""

    def __init__(
        self, on_found: FoundCallback, fetcher: Fetcher, *, events: Counter[str] | None = None
    ) -> None:
        self._on_found = on_found
        self.fetcher = fetcher  # asks an instance's MetadataService (regproxy.discovery.metadata_client)
        self.events: Counter[str] = events if events is not None else Counter()
        self._on: dict[str, _OnRegistry] = {}  # registry key -> what is watched there
        self.metadata: dict[tuple[str, str], MetadataInfo] = {}  # (application, revision) -> info
        self._unused: dict[tuple[str, str], None] = {}  # cached but no instance has it: oldest first
        self._fetching: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.failures: dict[tuple[str, str], _Failure] = {}  # fetches failing now, for the views
        self._refused_said: set[tuple[str, str, str, str]] = set()
        # (registry key, application, instance id) -> the last revision of that instance whose
        # MetadataInfo was known: what it stands at while its new revision's is being fetched.
        self._last_good: dict[tuple[str, str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- tracking -------------------------------------------------------------------------------

    async def track(
        self,
        key: str,
        reg: Registry,
        name: str,
        sub: Subscription,
        *,
        named: Iterable[str] = (),
        wait: bool = True,
    ) -> tuple[FoundURL, ...] | None:
        """Start finding ``sub``'s providers at application level on registry ``key`` for subscription
        ``name`` (again: a change of ``named`` applies); with ``wait``, wait up to INITIAL_WAIT_S for
        the first addresses.  Returns them (None: none known yet; they are delivered through
        ``on_found`` when they come; so are these).  RegistryError when the registry refuses a watch."""
        on = self._on.get(key)
        if on is None:
            on = self._on[key] = _OnRegistry(reg)
        apps = tuple(named)
        t = on.tracked.get(name)
        if t is None or t.sub != sub or t.named != apps:
            t = on.tracked[name] = _Tracked(sub, apps)
            await self._unwatch_mappings(on)  # the one it had may be needed no more (provided-by now)
        if not t.named and sub.interface not in on.mapping_listeners:
            listener = on.mapping_listeners[sub.interface] = lambda apps, key=key, interface=sub.interface: (
                self._mapping_changed(key, interface, apps)
            )
            try:
                on.mappings[sub.interface] = await reg.watch_mapping(sub.interface, listener)
            except BaseException:
                on.mapping_listeners.pop(sub.interface, None)
                on.tracked.pop(name, None)
                raise
        await self._watch_apps(key, on)
        self._refresh(key, on, [name])
        if t.found is None and wait:
            try:
                async with asyncio.timeout(INITIAL_WAIT_S):
                    await t.event.wait()
            except TimeoutError:
                log.info("%s: no application-level address on %s yet; it applies when found", name, reg.name)
        return t.found

    async def untrack(self, key: str, name: str) -> None:
        """Stop finding subscription ``name``'s providers on ``key``; drop the watches nothing needs."""
        on = self._on.get(key)
        if on is None or on.tracked.pop(name, None) is None:
            return
        await self._unwatch_mappings(on)
        await self._watch_apps(key, on)
        if not on.tracked:
            del self._on[key]
        self._prune()

    def drop_registry(self, key: str) -> None:
        """The registry is closed: forget what was watched there (its watches went with it)."""
        self._on.pop(key, None)
        self._forget_last_good(key)
        self._prune()

    async def _unwatch_mappings(self, on: _OnRegistry) -> None:
        """Drop the mapping watches no tracked subscription reads (one named by provided-by reads none)."""
        interfaces = {t.sub.interface for t in on.tracked.values() if not t.named}
        for interface in [i for i in on.mapping_listeners if i not in interfaces]:
            listener = on.mapping_listeners.pop(interface)
            on.mappings.pop(interface, None)
            await self._quietly(on.reg.unwatch_mapping(interface, listener))

    def _forget_last_good(self, key: str, app: str | None = None, keep: Iterable[str] = ()) -> None:
        """Drop the last good revisions remembered on ``key`` (of ``app`` only when given), but for the
        instances ``keep`` names."""
        kept = set(keep)
        for ident in [k for k in self._last_good if k[0] == key and app in (None, k[1]) and k[2] not in kept]:
            del self._last_good[ident]

    async def stop(self) -> None:
        for task in [*self._fetching.values(), *self._tasks]:
            task.cancel()

    async def _watch_apps(self, key: str, on: _OnRegistry) -> None:
        """Watch the instances of every application some tracked subscription needs, and only those."""
        wanted = on.apps_in_use()
        for app in [a for a in on.instance_listeners if a not in wanted]:
            listener = on.instance_listeners.pop(app)
            on.instances.pop(app, None)
            self._forget_last_good(key, app)
            await self._quietly(on.reg.unwatch_instances(app, listener))
        for app in sorted(wanted - on.instance_listeners.keys()):
            listener = on.instance_listeners[app] = lambda instances, key=key, app=app: (
                self._instances_changed(key, app, instances)
            )
            try:
                on.instances[app] = await on.reg.watch_instances(app, listener)
            except (RegistryError, ValueError) as exc:  # ValueError: a name the registry cannot hold
                # The others still count; this one is watched again at the next mapping change or
                # reconnection (the coordinator tracks the subscription again then).
                on.instance_listeners.pop(app, None)
                log.warning("watching the instances of application %s on %s: %s", app, on.reg.name, exc)

    # --- registry events (on the event loop) ----------------------------------------------------

    def _mapping_changed(self, key: str, interface: str, apps: tuple[str, ...]) -> None:
        on = self._on.get(key)
        if on is None or interface not in on.mapping_listeners or on.mappings.get(interface) == apps:
            return
        self.events["app_mapping_events"] += 1
        on.mappings[interface] = apps
        log.info("%s maps to application(s) %s on %s", interface, ", ".join(apps) or "none", on.reg.name)
        self._spawn(self._after_mapping(key, on, interface))

    async def _after_mapping(self, key: str, on: _OnRegistry, interface: str) -> None:
        await self._watch_apps(key, on)
        self._refresh(
            key, on, [n for n, t in on.tracked.items() if t.sub.interface == interface and not t.named]
        )

    def _instances_changed(self, key: str, app: str, instances: list[AppInstance]) -> None:
        on = self._on.get(key)
        if on is None or app not in on.instance_listeners:
            return
        self.events["app_instance_events"] += 1
        on.instances[app] = instances
        self._forget_last_good(key, app, keep=(i.id for i in instances))
        self._refresh(key, on, [n for n, t in on.tracked.items() if app in on.apps_of(t)])
        self._prune()

    # --- addresses ------------------------------------------------------------------------------

    def _refresh(self, key: str, on: _OnRegistry, names: Iterable[str]) -> None:
        """Work out the addresses of subscriptions ``names`` on ``key`` again and deliver those that
        changed; start the fetches they lack."""
        for name in names:
            t = on.tracked.get(name)
            if t is None:
                continue
            apps: dict[str, AppState] = {}
            for app in on.apps_of(t):
                instances = [self._standing(key, app, i) for i in on.instances.get(app, ())]
                revisions = {i.revision for i in instances if i.revision}
                apps[app] = AppState(instances, {rev: self.metadata.get((app, rev)) for rev in revisions})
            result = app_urls(t.sub, apps)
            for fetch in result.to_fetch:
                self._fetch_soon(key, fetch)
            for refused in result.refused:
                said = (name, refused.source.revision, refused.instance.id, refused.match_key)
                if said not in self._refused_said:
                    if len(self._refused_said) > 10_000:  # said once each, within bounds
                        self._refused_said.clear()
                    self._refused_said.add(said)
                    log.warning(
                        "%s: instance %s of %s (revision %s) gives no usable URL for %s: %s",
                        name, refused.instance.id, refused.source.app, refused.source.revision,
                        refused.match_key, refused.reason,
                    )  # fmt: skip
            if result.keep_previous:
                continue  # no revision has its metadata yet: keep the hosts found before
            if t.found is not None and t.found == result.urls:
                continue
            t.found = result.urls
            t.event.set()
            try:
                self._on_found(name, key, result.urls)
            except Exception:
                log.exception("%s: applying application-level addresses failed", name)

    def _standing(self, key: str, app: str, instance: AppInstance) -> AppInstance:
        """``instance`` as it is used now: at its revision when that revision's MetadataInfo is known
        (remembered as its last good one), else at its last good revision while the new one is
        fetched (the fetch started here); as it is when it has none to fall back on."""
        revision = instance.revision
        if revision is None:
            return instance
        ident = (key, app, instance.id)
        if (app, revision) in self.metadata:
            self._last_good[ident] = revision
            return instance
        previous = self._last_good.get(ident)
        if previous is None or (app, previous) not in self.metadata:
            return instance
        self._fetch_soon(key, Fetch(app, revision, (instance,)))
        return dataclasses.replace(instance, metadata={**instance.metadata, REVISION_KEY: previous})

    # --- metadata -------------------------------------------------------------------------------

    def _referenced(self, app: str, revision: str) -> list[tuple[str, AppInstance]]:
        """(registry key, instance) of every watched instance of ``app`` at ``revision``."""
        return [
            (key, i)
            for key, on in self._on.items()
            for i in on.instances.get(app, ())
            if i.revision == revision and app in on.apps_in_use()
        ]

    def _fetch_soon(self, key: str, fetch: Fetch) -> None:
        ident = (fetch.app, fetch.revision)
        if ident in self._fetching or ident in self.metadata:
            return
        self._fetching[ident] = asyncio.get_running_loop().create_task(self._fetch(ident))

    async def _fetch(self, ident: tuple[str, str]) -> None:
        app, revision = ident
        delay = RETRY_FIRST_S
        try:
            while True:
                holders = self._referenced(app, revision)
                if not holders:
                    self.failures.pop(ident, None)
                    return  # no instance has it any more
                try:
                    info = await self._fetch_once(app, revision, holders)
                except (RegistryError, OSError, ValueError) as exc:
                    self._failed(ident, str(exc), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.events["metadata_fetches"] += 1
                self.metadata[ident] = info
                failure = self.failures.pop(ident, None)
                if failure is not None:
                    log.info(
                        "metadata of %s revision %s fetched after %d failure(s)",
                        app,
                        revision,
                        failure.attempts,
                    )
                break
        finally:
            self._fetching.pop(ident, None)
        for key, on in list(self._on.items()):
            self._refresh(key, on, [n for n, t in on.tracked.items() if app in on.apps_of(t)])

    async def _fetch_once(
        self, app: str, revision: str, holders: list[tuple[str, AppInstance]]
    ) -> MetadataInfo:
        """The MetadataInfo from the metadata report when an instance says it is stored there
        (``storage-type=remote``), else from the instances' MetadataService, each asked in turn."""
        errors: list[str] = []
        for key, instance in holders:
            if instance.storage_type == REMOTE:
                reg = self._on[key].reg
                info = await reg.read_metadata(app, revision)
                if info is None:
                    raise RegistryError(
                        f"registry {reg.name}: no metadata of {app} revision {revision} in its report"
                    )
                if info.revision != revision:
                    raise RegistryError(
                        f"registry {reg.name}: the metadata report of {app} revision {revision} "
                        f"holds revision {info.revision}"
                    )
                return info
        for _key, instance in holders:
            try:
                return await self.fetcher(instance, revision)
            except Exception as exc:  # each instance in turn; the last error is the one reported
                errors.append(str(exc))
        raise ValueError("; ".join(errors[-3:]))

    def _failed(self, ident: tuple[str, str], error: str, retry_in: float) -> None:
        self.events["metadata_fetch_failures"] += 1
        failure = self.failures.get(ident)
        if failure is None:
            self.failures[ident] = _Failure(1, error)
            log.warning(
                "metadata of application %s revision %s: %s; hosts found before stay, retrying in %.1f s "
                "and then with backoff up to %.0f s", ident[0], ident[1], error, retry_in, RETRY_MAX_S,
            )  # fmt: skip
            return
        failure.attempts += 1
        if error != failure.error:
            failure.error = error
            log.warning(
                "metadata of application %s revision %s: %s (attempt %d)", *ident, error, failure.attempts
            )

    def _prune(self) -> None:
        """Keep the MetadataInfos some instance has, and the last UNUSED_KEPT others."""
        used = {
            (app, i.revision)
            for on in self._on.values()
            for app, insts in on.instances.items()
            for i in insts
        }
        for ident in self.metadata:
            if ident in used:
                self._unused.pop(ident, None)
            elif ident not in self._unused:
                self._unused[ident] = None
        while len(self._unused) > UNUSED_KEPT:
            ident = next(iter(self._unused))
            del self._unused[ident]
            self.metadata.pop(ident, None)

    # --- views ----------------------------------------------------------------------------------

    def view(self, key: str, name: str) -> dict[str, Any] | None:
        """How subscription ``name`` is found at application level on ``key``: its applications, their
        instances and revisions, and each revision's metadata state; None when not tracked there."""
        on = self._on.get(key)
        t = on.tracked.get(name) if on is not None else None
        if on is None or t is None:
            return None
        apps: dict[str, Any] = {}
        for app in on.apps_of(t):
            revisions: dict[str, dict[str, Any]] = {}
            for instance in on.instances.get(app, ()):
                rev = instance.revision or ""
                entry = revisions.setdefault(rev, {"instances": []})
                entry["instances"].append(instance.id)
            for rev, entry in revisions.items():
                failure = self.failures.get((app, rev))
                if not rev:
                    entry["metadata"] = "no revision: skipped"
                elif (app, rev) in self.metadata:
                    entry["metadata"] = "cached"
                elif failure is not None:
                    entry["metadata"] = f"failing ({failure.attempts} attempt(s)): {failure.error}"
                else:
                    entry["metadata"] = "fetching"
            apps[app] = {"instances": len(on.instances.get(app, ())), "revisions": revisions}
        return {"from": "provided-by" if t.named else "mapping", "applications": apps}

    # --- helpers --------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(op: Awaitable[None]) -> None:
        try:
            await op
        except RegistryError as exc:
            log.warning("%s", exc)
