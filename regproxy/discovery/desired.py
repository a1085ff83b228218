"""Desired state: the publications and subscriptions the HTTP API asked for, as discovery keeps them.

Owns the value types only; the coordinator (regproxy.discovery.coordinator.Discovery) creates,
changes and drops them. Nothing here touches a registry, a table holder or the event loop.

Invariants (kept by the coordinator):

* a PublishSpec is immutable; its ``key`` (``group/interface:version``) names one publication;
* ``Publication.registered`` is a subset of ``Publication.registries``;
* ``SubscriptionState.providers`` holds, per registry key, the usable provider URLs last applied
  (all of the interface's, unfiltered by version and group: Dubbo's rules are applied when the
  hosts are built), and ``watching`` the registries whose watch is set; the memo fields are derived
  from ``providers`` and dropped whenever it is replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from regproxy.discovery.app_hosts import FoundURL
from regproxy.discovery.protection import Hold
from regproxy.registry.url import DubboURL, Subscription
from regproxy.routing import Cluster, Host, Route
from regproxy.routing.model import HostPolicy


class NotFound(LookupError):
    """Unpublish or unsubscribe of something this sidecar does not have (the API answers 404)."""


@dataclass(frozen=True)
class PublishSpec:
    interface: str
    port: int
    methods: tuple[str, ...] = ()
    version: str = ""
    group: str = ""
    application: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    # The protocol the application serves it in: "dubbo" or "tri" (Triple).  One service may be
    # published in both (two publications, each with its own application port).
    protocol: str = "dubbo"

    @property
    def key(self) -> str:
        """``group/interface:version``, and ``@tri`` after it for a Triple publication."""
        key = Subscription(self.interface, self.version, self.group).cluster_name
        return key if self.protocol == "dubbo" else f"{key}@{self.protocol}"

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
            protocol=d.get("protocol") or "dubbo",
        )


@dataclass
class Publication:
    spec: PublishSpec
    url: DubboURL
    registries: list[str]  # registry keys
    registered: set[str] = field(default_factory=set)  # keys where the node was created
    # The URL a previous run of this sidecar registered (restored from the state file, same
    # address): removed from each registry before ``url`` goes in (see Discovery._register).
    previous: DubboURL | None = None
    # The URL before the config center's provider-side configurators changed it (``url`` is what is
    # registered); None while none applies.  See Discovery._configure_publication.
    published: DubboURL | None = None

    @property
    def base(self) -> DubboURL:
        """The URL as published, before any configurator."""
        return self.published if self.published is not None else self.url


@dataclass
class SubscriptionState:
    sub: Subscription
    registries: list[str]
    consumer: DubboURL
    providers: dict[str, list[DubboURL]] = field(default_factory=dict)  # registry key -> all URLs
    watching: set[str] = field(default_factory=set)
    listeners: dict[str, Callable[[list[DubboURL]], None]] = field(default_factory=dict)
    # Registry key -> the empty list held back while ``providers`` keeps the last one (see
    # regproxy.discovery.protection): present only while a hold runs.
    held: dict[str, Hold] = field(default_factory=dict)
    # Derived from ``providers`` and kept until one of its lists is replaced, so a registry event
    # rebuilds only its own subscription's cluster and cache text (see Discovery.hosts_of).
    cluster_memo: tuple[tuple[list[DubboURL] | None, ...], tuple[Host, ...]] | None = None
    text_memo: dict[str, tuple[list[DubboURL], list[str]]] = field(default_factory=dict)
    route: Route | None = None  # the subscription's route: fixed by ``sub``, built once
    cluster: Cluster | None = None  # the last cluster built; reused while its hosts are current
    policy: HostPolicy | None = None  # the config center's rules bound to the hosts (hosts_of)
    # Declared values the hosts' calls cannot use (governance.params.declaration_problems), as last
    # logged: logged again only when they change.
    param_problems: tuple[str, ...] = ()
    # Dubbo 3 application-level discovery (regproxy.discovery.apps).  ``migration`` is the /sub's own
    # setting ("" = the consumer's migration.step, else discovery.migration); ``providers`` holds, per
    # registry, what the setting selects of ``interface_urls`` (the registry's interface-level list)
    # and ``app_found`` (the application-level URLs), and ``found`` how each address was found.
    migration: str = ""
    interface_urls: dict[str, list[DubboURL]] = field(default_factory=dict)
    app_found: dict[str, tuple[FoundURL, ...]] = field(default_factory=dict)
    found: dict[str, dict[str, FoundURL]] = field(default_factory=dict)
