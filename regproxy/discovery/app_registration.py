"""This sidecar's publications registered at application level, as a Dubbo 3 provider registers them.

With ``discovery.register_mode`` ``instance`` or ``all`` (Dubbo 3's ``dubbo.registry.register-mode``,
default ``all``: ``RegistryProtocol`` registers interface-level, ``ServiceDiscoveryRegistry`` the
instance), on each registry that holds application-level discovery, per application of the
publications registered there (``discovery.app_publish.app_publications``):

* the remote metadata report first, when ``discovery.metadata_storage`` is ``remote``, so a consumer
  that sees the new revision finds its ``MetadataInfo`` (``AbstractServiceDiscovery.register`` reports
  the metadata before ``doRegister``);
* the instance (``/services/<app>/<ip:port>``), its data replaced when the revision changes
  (``AbstractServiceDiscovery.update``); removed with the application's last publication;
* the service-name mapping of each interface, written once (``ServiceNameMapping.map`` on export; never
  removed, as Dubbo never removes it).

The MetadataInfo of every revision registered somewhere, and of the one before it (a consumer that
saw it a moment ago may still ask), is what the ingress serves as the MetadataService
(``served``).  A registry that refuses or cannot be reached now is done again at its next sync (the
coordinator syncs on every change and on every reconnection); the adapter re-creates the instance
after a session loss, as it does provider nodes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Literal, Protocol

from regproxy.discovery.app_publish import app_publications
from regproxy.discovery.desired import PublishSpec
from regproxy.registry.base import Registry, RegistryError
from regproxy.registry.instances import LOCAL, AppInstance, StorageType
from regproxy.registry.metadata_info import MetadataInfo
from regproxy.registry.url import DubboURL

log = logging.getLogger(__name__)

RegisterMode = Literal["interface", "instance", "all"]
REGISTER_MODES: tuple[RegisterMode, ...] = ("interface", "instance", "all")
# Revisions of one application served at once: those registered now and the ones just before.
SERVED_REVISIONS = 4


class Served(Protocol):
    """Where the ingress's MetadataService reads (regproxy.discovery.metadata_served)."""

    def set(self, app: str, infos: dict[str, MetadataInfo]) -> None: ...

    def drop(self, app: str) -> None: ...


class AppRegistrar:
    """The application-level registrations of this sidecar's publications (module docstring)."""

    def __init__(
        self, served: Served | None = None, *, mode: RegisterMode = "all", storage_type: StorageType = LOCAL
    ) -> None:
        self.mode: RegisterMode = mode
        self.storage_type: StorageType = storage_type
        self.served = served
        # Added to each instance's metadata: regproxy.tls=true when the ingress speaks only TLS, so that
        # another sidecar asks its MetadataService over TLS (Sidecar._metadata_fetcher).
        self.instance_metadata: dict[str, str] = {}
        self.instances: dict[str, dict[str, AppInstance]] = {}  # registry key -> app -> registered
        self._mapped: set[tuple[str, str, str]] = set()  # (registry key, interface, app) written
        self._reported: set[tuple[str, str, str]] = set()  # (registry key, app, revision) written
        self._infos: dict[str, dict[str, MetadataInfo]] = {}  # app -> revision -> info, oldest first
        self.events: dict[str, int] = {"app_registrations": 0, "app_registration_failures": 0}

    @property
    def registers_interfaces(self) -> bool:
        return self.mode != "instance"

    @property
    def registers_instances(self) -> bool:
        return self.mode != "interface"

    async def sync(
        self, key: str, reg: Registry, publications: Iterable[tuple[PublishSpec, DubboURL]], default_app: str
    ) -> bool:
        """Make ``reg`` hold exactly the instances of ``publications`` (those registered there), with
        their mappings and reports.  False when some step failed (logged; the next sync retries)."""
        if not self.registers_instances or not reg.app_discovery:
            return True
        try:
            wanted = app_publications(publications, default_app, storage_type=self.storage_type)
        except ValueError as exc:  # publications on two addresses, no application name: a bug, said
            self.events["app_registration_failures"] += 1
            log.error("registering the applications of %s: %s", reg.name, exc)
            return False
        have = self.instances.setdefault(key, {})
        ok = True
        for app, (info, instance) in sorted(wanted.items()):
            if self.instance_metadata:
                instance = dataclasses.replace(
                    instance, metadata={**instance.metadata, **self.instance_metadata}
                )
            self._serve(app, info)
            try:
                if self.storage_type != LOCAL and (key, app, info.revision) not in self._reported:
                    await reg.write_metadata(info)
                    self._reported.add((key, app, info.revision))
                if have.get(app) != instance:
                    await reg.register_instance(instance)
                    have[app] = instance
                    self.events["app_registrations"] += 1
                    log.info(
                        "registered instance %s of application %s in %s (revision %s, %d service(s))",
                        instance.id, app, reg.name, info.revision, len(info.services),
                    )  # fmt: skip
                for service in info.services.values():
                    interface = service.name or service.path or ""
                    if interface and (key, interface, app) not in self._mapped:
                        await reg.add_mapping(interface, app)
                        self._mapped.add((key, interface, app))
            except (RegistryError, ValueError) as exc:  # ValueError: a name the registry cannot hold
                ok = False
                self.events["app_registration_failures"] += 1
                log.warning(
                    "registering application %s in %s: %s; retried when it reconnects", app, reg.name, exc
                )
        for app in [a for a in have if a not in wanted]:
            try:
                await reg.unregister_instance(have[app])
            except (RegistryError, ValueError) as exc:
                ok = False
                log.warning("removing the instance of application %s from %s: %s", app, reg.name, exc)
                continue
            log.info("removed instance %s of application %s from %s", have[app].id, app, reg.name)
            del have[app]
        self._unserve_gone()
        return ok

    def forget(self, key: str) -> None:
        """The registry is closed: what was registered there went with its session."""
        self.instances.pop(key, None)
        self._mapped = {m for m in self._mapped if m[0] != key}
        self._reported = {r for r in self._reported if r[0] != key}
        self._unserve_gone()

    def _serve(self, app: str, info: MetadataInfo) -> None:
        infos = self._infos.setdefault(app, {})
        infos.pop(info.revision, None)
        infos[info.revision] = info  # newest last
        while len(infos) > SERVED_REVISIONS:
            del infos[next(iter(infos))]
        if self.served is not None:
            self.served.set(app, dict(infos))

    def _unserve_gone(self) -> None:
        """An application no registry has an instance of any more is not served (after a drain, its
        last consumers have had the registry's word that it is gone)."""
        registered = {app for apps in self.instances.values() for app in apps}
        for app in [a for a in self._infos if a not in registered]:
            del self._infos[app]
            if self.served is not None:
                self.served.drop(app)
