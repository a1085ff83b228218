"""Application-level discovery results as provider URLs, and how they join the interface-level ones.

Pure functions, no I/O.  :func:`app_urls` turns a subscription's applications (their instances and,
per revision, the ``MetadataInfo``) into the :class:`DubboURL` s a Dubbo 3.3 consumer would get, so
that :func:`regproxy.discovery.tables.hosts_from`, the parameter model and the governance rules treat
them exactly like interface-level provider URLs.  :func:`merge_found` joins both lists as the
migration setting says.  Facts followed (apache/dubbo 3.3, ``dubbo-registry-api`` unless named):

* ``ServiceInstancesChangedListener.doOnEvent``: instances are grouped by revision; one without a
  revision, or with ``EMPTY_REVISION``, is skipped.  A revision without its ``MetadataInfo`` (the fetch
  failed: ``MetadataInfo.EMPTY``) contributes no address; when *every* revision is in that state the
  listener does not notify at all, so the consumer keeps the addresses it had (and retries).
* Each ``ServiceInfo`` of a revision yields one URL per instance of that revision
  (``getServiceUrlsCache``): the ``ServiceInfo``'s protocol; its port when above 0, else the
  instance's ``dubbo.endpoints`` port for that protocol, else the instance port.
* Which of them a consumer gets (``getAddresses``): the listener files each ``ServiceInfo``'s URLs
  under its *path* and looks them up under the consumer's *interface*, then keeps those whose
  ``ProtocolServiceKey`` the consumer's key matches (``ProtocolServiceKey.Matcher.isMatch``, through
  ``ServiceKey.Matcher``): interface equal; version and group ``*`` (any), empty (only empty), a comma
  list (each item trimmed; an empty item matches the empty value), else equal; protocol: a consumer
  without one (regproxy's) takes every protocol, and the directory later keeps those it speaks --
  here :func:`~regproxy.registry.url.matches` (``dubbo`` only), as for interface-level URLs.
  Not reproduced: a ``ServiceInfo`` with path ``*``, which the listener hands to every consumer of
  the application whatever its interface; no Dubbo provider exports one.
* The URL's parameters (``InstanceAddressURL.getParameters``/``getServiceParameters``): the
  instance metadata, then the ``ServiceInfo``'s params over it (``MetadataInfo.getParameters``); the
  consumer's own parameters come last in Dubbo, and in regproxy from the parameter model, as for
  interface-level URLs.  ``InstanceAddressURL.getParameter`` answers five keys itself:
  ``remote.application`` is the instance's application (set here); ``interface``, ``version`` and
  ``group`` are the consumer's -- which the matching made the ``ServiceInfo``'s, except that a
  wildcard or list would read back as ``*`` or the list: the ``ServiceInfo``'s own values are set
  here, as an interface-level URL carries them, so that a ``*`` subscription still tells providers'
  groups apart; ``side`` reads ``consumer``, which regproxy's rules already apply as the consumer's
  view of every provider URL (``governance.tag``), so the registered ``side=provider`` is kept.
  For a consumer that names no protocol, ``InstanceAddressURL.getProtocolServiceKey`` is the service
  key without one, and ``MetadataInfo.getValidServiceInfo`` then reads the params of whichever
  ``ServiceInfo`` of that key a ``HashSet`` yields first (``getNoProtocolServiceInfo``); here each URL
  has the params of its own protocol's ``ServiceInfo`` -- the same ones whenever the provider exports
  the service alike on every protocol, and a stable choice when it does not.

Deliberate: versions are compared after :func:`~regproxy.routing.normalize_version` ("0.0.0" is no
version), as :class:`~regproxy.registry.url.Subscription` and ``matches`` do for interface-level URLs.

How a URL was found is *not* a URL parameter: condition and tag rules may match any parameter and a
provider may publish any name, so no key is safe from a clash.  It travels beside the URL
(:class:`FoundURL`), for the admin view to show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from regproxy.governance.migration import DEFAULT_SETTING, MigrationSetting
from regproxy.registry.instances import AppInstance
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from regproxy.registry.url import ANY, DubboURL, Subscription, matches
from regproxy.routing import normalize_version

__all__ = [
    "REMOTE_APPLICATION_KEY",
    "AppState",
    "AppURLs",
    "Fetch",
    "FoundURL",
    "Refused",
    "Source",
    "app_urls",
    "merge_found",
    "service_matches",
]

REMOTE_APPLICATION_KEY = "remote.application"  # CommonConstants.REMOTE_APPLICATION_KEY


@dataclass(frozen=True, slots=True)
class AppState:
    """What is known of one application: its instances, and the ``MetadataInfo`` of each revision
    (absent or None: not fetched yet, or the fetch failed)."""

    instances: Sequence[AppInstance]
    metadata: Mapping[str, MetadataInfo | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Source:
    """Where an application-level URL came from: the application and the metadata revision."""

    app: str
    revision: str


@dataclass(frozen=True, slots=True)
class FoundURL:
    """A provider URL and how it was found: ``interface`` when an interface-level registration has
    its address, ``application`` when it came from application-level discovery (then ``url`` is the
    application-level URL: see :func:`merge_found`)."""

    url: DubboURL
    interface: bool = False
    application: Source | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """A revision whose ``MetadataInfo`` is missing, and the instances that published it (whom to
    ask when their storage type is ``local``)."""

    app: str
    revision: str
    instances: tuple[AppInstance, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A URL that cannot be built from what the registry holds (a metadata key a URL cannot carry, a
    port out of range...): the instance, the ``ServiceInfo``'s match key and why."""

    source: Source
    instance: AppInstance
    match_key: str
    reason: str


@dataclass(frozen=True, slots=True)
class AppURLs:
    """The result of :func:`app_urls`."""

    urls: tuple[FoundURL, ...]
    # Revisions to fetch, in the order first met.
    to_fetch: tuple[Fetch, ...]
    # Instances without a revision (or with EMPTY_REVISION): skipped, as Dubbo skips them.
    no_revision: tuple[AppInstance, ...]
    # URLs that could not be built; the rest of the application is not held up by them.
    refused: tuple[Refused, ...]
    # True when there were revisions and none had its MetadataInfo: Dubbo then does not notify and the
    # consumer keeps the addresses it had (doOnEvent, "Address refresh failed"); so should the caller.
    keep_previous: bool


def _key_part_matches(wanted: str, value: str) -> bool:
    """``ServiceKey.Matcher`` for a version or a group (values already normalized: None is "")."""
    if wanted == ANY:
        return True
    if not wanted:
        return not value
    if "," in wanted:
        return any(item.strip() == value for item in wanted.split(","))
    return wanted == value


def service_matches(sub: Subscription, service: ServiceInfo) -> bool:
    """Whether a consumer subscribed as ``sub`` gets the URLs of ``service`` (``getAddresses``: the
    path is the consumer's interface, and ``ProtocolServiceKey.Matcher.isMatch`` with no protocol)."""
    if service.path != sub.interface or service.name != sub.interface:
        return False
    version = normalize_version(service.version)
    wanted_version = sub.version
    if wanted_version not in ("", ANY):
        wanted_version = ",".join(normalize_version(v.strip()) for v in wanted_version.split(","))
    return _key_part_matches(wanted_version, version) and _key_part_matches(sub.group, service.group or "")


def _port(instance: AppInstance, service: ServiceInfo, protocol: str) -> int:
    # getServiceUrlsCache: the ServiceInfo's port when set, else the protocol's endpoint, else the
    # instance port (AppInstance.port_for does the last two).
    return service.port if service.port > 0 else instance.port_for(protocol)


def _url(instance: AppInstance, service: ServiceInfo, protocol: str) -> DubboURL:
    params = dict(instance.metadata)
    params.update(service.params)
    # What InstanceAddressURL.getParameter answers itself (see the module docstring).
    params[REMOTE_APPLICATION_KEY] = instance.app
    params["interface"] = service.name or ""
    for key, value in (("version", service.version), ("group", service.group)):
        if value:
            params[key] = value
        else:
            params.pop(key, None)
    return DubboURL(protocol, instance.host, _port(instance, service, protocol), service.path or "", params)


def app_urls(sub: Subscription, apps: Mapping[str, AppState]) -> AppURLs:
    """The provider URLs of ``sub`` from its applications (``apps``: application name -> state, the
    applications its interface maps to).

    One URL per (instance, ``ServiceInfo`` of the instance's revision that ``sub`` matches), in the
    order of ``apps``, of each application's instances, then of the services' match keys.  A
    ``ServiceInfo`` without a protocol yields none: Dubbo would build a URL without one, which no
    protocol can refer to.
    """
    urls: list[FoundURL] = []
    fetches: dict[tuple[str, str], list[AppInstance]] = {}
    no_revision: list[AppInstance] = []
    refused: list[Refused] = []
    revisions_seen: set[tuple[str, str]] = set()
    for app, state in apps.items():
        for instance in state.instances:
            revision = instance.revision
            if revision is None:
                no_revision.append(instance)
                continue
            revisions_seen.add((app, revision))
            info = state.metadata.get(revision)
            if info is None:
                fetches.setdefault((app, revision), []).append(instance)
                continue
            source = Source(app, revision)
            for key in sorted(info.services):
                service = info.services[key]
                if not service.protocol or not service_matches(sub, service):
                    continue
                try:
                    url = _url(instance, service, service.protocol)
                except ValueError as exc:
                    refused.append(Refused(source, instance, key, str(exc)))
                    continue
                urls.append(FoundURL(url, application=source))
    return AppURLs(
        urls=tuple(urls),
        to_fetch=tuple(Fetch(app, rev, tuple(found)) for (app, rev), found in fetches.items()),
        no_revision=tuple(no_revision),
        refused=tuple(refused),
        keep_previous=bool(revisions_seen) and len(fetches) == len(revisions_seen),
    )


def merge_found(
    sub: Subscription,
    interface_urls: Iterable[DubboURL],
    application_urls: Iterable[FoundURL],
    migration: MigrationSetting | str = DEFAULT_SETTING,
) -> tuple[FoundURL, ...]:
    """The provider URLs of ``sub`` the migration setting selects, each with how it was found.

    * ``interface``: the interface-level URLs only (Dubbo's ``MigrationStep.FORCE_INTERFACE``);
    * ``application``: the application-level URLs only (``FORCE_APPLICATION``);
    * ``both``: one host per address from both.  Dubbo never joins the two: ``MigrationInvoker`` in
      ``APPLICATION_FIRST`` calls through one whole invoker, the application-level one whenever it has
      addresses (``calcPreferredInvoker`` with ``DefaultMigrationAddressComparator``, whose default
      threshold 0.0 any application-level address meets), else the interface-level one.  regproxy
      keeps every address found either way, so that no provider seen only one way is lost (Dubbo 2
      providers register interface-level only, dubbo-go 3.1+ application-level only), and takes
      Dubbo's preference per address: where an application-level URL the subscription would use
      (:func:`~regproxy.registry.url.matches`) has an address, the interface-level URLs of that address
      are dropped and its ``FoundURL`` says it was found both ways.

    Application-level URLs come first, then the interface-level ones left, each in the given order.
    """
    if migration not in set(MigrationSetting):
        choices = ", ".join(MigrationSetting)
        raise ValueError(f"migration must be one of {choices}, not {migration!r}")
    setting = MigrationSetting(migration)
    interface_list = list(interface_urls) if setting != MigrationSetting.APPLICATION else []
    if setting == MigrationSetting.INTERFACE:
        return tuple(FoundURL(url, interface=True) for url in interface_list)
    app_list = list(application_urls)
    if setting == MigrationSetting.APPLICATION:
        return tuple(app_list)
    taken = {found.url.address for found in app_list if matches(sub, found.url)}
    both = {url.address for url in interface_list} & taken
    merged = [
        FoundURL(found.url, interface=found.url.address in both, application=found.application)
        for found in app_list
    ]
    merged += [FoundURL(url, interface=True) for url in interface_list if url.address not in taken]
    return tuple(merged)
