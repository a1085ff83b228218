"""The admin HTTP API (aiohttp, default 127.0.0.1:34901): what the sidecar is doing, and a few controls.

Reading (GET; with ``auth_token`` set, every path but the probes and the status page's static files
needs ``Authorization: Bearer TOKEN``):

* ``/``: the status page for a web browser (regproxy/api/status_page.py), the endpoint list otherwise;
* ``/healthz`` (alive), ``/readyz`` (200 ready / 503 not, with the reasons);
* ``/api/v1/config_dump`` with ``?allrouters ?allclusters ?alllisteners ?router=NAME ?cluster=NAME
  ?listener=NAME`` (the query names operators of Envoy- and MOSN-style sidecars already script
  against) and ``?sidecar`` (this process: version, data path, uptime); several may be combined;
* ``/api/v1/clusters``, ``/api/v1/publications``, ``/api/v1/subscriptions``, ``/api/v1/stats``;
* ``/metrics`` (Prometheus text), ``/api/v1/loglevel``.

Changing (POST): ``/api/v1/loglevel``, ``/api/v1/drain``, ``/api/v1/reload``.  Without a token
(``admin_token``, else ``auth_token``) only loopback callers may use them, and from a web browser only
through the status page opened at a loopback address (see :func:`check_caller`); with one every
caller must send ``Authorization: Bearer TOKEN``.  The checks run in a middleware before a body is
read, so a new route cannot forget them.

Replies are JSON built from the models in regproxy/api/admin_models.py, which the OpenAPI document
and ``regproxy ctl`` share; errors have the pub/sub API's shape ``{"err_no": N, "err_msg": "..."}``
with a matching HTTP status.  The server sees the sidecar only through :class:`AdminTarget`.
Credentials never appear: the config is dumped redacted, registries are shown by their redacted
names, and secret-looking Dubbo URL parameters (a provider's ``token``) are replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from regproxy import native
from regproxy.api.admin_models import (
    Alive,
    Clusters,
    ClusterSource,
    ConfigDump,
    ConfigHost,
    ConfigProblem,
    ConfigRefused,
    ConfigTableCluster,
    Connection,
    Draining,
    Endpoint,
    HostState,
    Index,
    ListenerName,
    ListenerView,
    LiveCluster,
    LiveHost,
    LogLevelReply,
    LogLevelSet,
    ProviderView,
    Publications,
    PublicationView,
    Readiness,
    ReadinessDetail,
    RegistryPublications,
    RegistrySubscriptions,
    Reloaded,
    RouteMatchView,
    Router,
    RouteView,
    Rules,
    ServiceSeries,
    SidecarInfo,
    Stats,
    Subscriptions,
    SubscriptionView,
    TimeSeriesReply,
)
from regproxy.api.admin_openapi import build_admin_openapi
from regproxy.api.auth import check_bearer, is_loopback, warn_if_remote
from regproxy.api.http import serve, stop_api
from regproxy.api.metrics import MetricsSource, metrics_registry
from regproxy.api.models import ErrNo, ErrorReply
from regproxy.api.status_page import ASSET_PATHS, wants_html
from regproxy.api.status_page import asset as status_asset
from regproxy.api.status_page import page as status_page
from regproxy.api.timeseries import HISTORY_S, INTERVAL_S, TimeSeries
from regproxy.config import LOG_LEVELS, ConfigError
from regproxy.discovery.views import explain, found_how, parameters_of
from regproxy.governance.params import consumer_own
from regproxy.health.hosts import Health
from regproxy.registry.base import CONNECTED
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, matches, regproxy_release
from regproxy.routing.dubbo_balancers import dubbo_weight
from regproxy.routing.model import speaks_names

if TYPE_CHECKING:
    from regproxy.config import Config
    from regproxy.discovery import Discovery
    from regproxy.proxy.engine import Listener
    from regproxy.routing import RoutingTable

__all__ = [
    "AdminTarget",
    "build_admin_app",
    "check_caller",
    "is_loopback",
    "start_admin",
    "stop_admin",
]

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
MAX_BODY = 16 * 1024  # the only bodies are {"level": "..."}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Open even with auth_token: liveness/readiness probes (kubelet) carry no credentials.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
REDACTED = "***"
# Dubbo URL parameters whose values are credentials (a provider's `token` authenticates consumers).
SECRET_PARAMS = frozenset(
    {"password", "token", "secret", "secretkey", "secret_key", "accesskey", "access_key"}
)
LISTENERS: tuple[ListenerName, ...] = ("egress", "ingress")
CONFIG_DUMP_QUERY = (
    "sidecar", "allrouters", "allclusters", "alllisteners", "router", "cluster", "listener",
)  # fmt: skip

ENDPOINTS: tuple[tuple[Literal["GET", "POST"], str, str], ...] = (
    ("GET", "/healthz", "alive"),
    ("GET", "/readyz", "ready: registries connected, state restored, not draining (503 otherwise)"),
    ("GET", "/api/v1/config_dump", "effective config and live tables; ?allrouters ?router=NAME ..."),
    ("GET", "/api/v1/rules", "dynamic rules in force and refused; ?cluster=NAME&method=M&tag=T: each stage"),
    ("GET", "/api/v1/clusters", "clusters and hosts with weight, health, state, requests, errors"),
    ("GET", "/api/v1/publications", "services published, per registry"),
    ("GET", "/api/v1/subscriptions", "services subscribed and their providers, per registry"),
    ("GET", "/api/v1/stats", "counters as JSON"),
    (
        "GET",
        "/api/v1/timeseries",
        "each service's requests/s, errors/s, p50 and p99, a point a second; ?seconds=N",
    ),
    ("GET", "/metrics", "Prometheus metrics"),
    ("GET", "/openapi.json", "this API as an OpenAPI 3.1 document"),
    ("GET", "/api/v1/loglevel", "current log level"),
    ("POST", "/api/v1/loglevel", 'set the log level: {"level": "debug"} or ?level=debug'),
    ("POST", "/api/v1/drain", "unpublish, finish requests in flight, exit"),
    ("POST", "/api/v1/reload", "re-read the config file (routes, clusters, timeouts, log level)"),
)


class AdminTarget(MetricsSource, Protocol):
    """What the admin API reads and steers of a sidecar (regproxy.sidecar.Sidecar is one): what the
    metrics read, and the config, the log level, the counters, drain and reload."""

    @property
    def config(self) -> Config: ...

    @property
    def config_path(self) -> str | None: ...

    @property
    def advertise_ip(self) -> str: ...

    @property
    def log_level(self) -> str: ...

    def set_log_level(self, level: str) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    @property
    def timeseries(self) -> TimeSeries: ...

    def start_drain(self) -> object: ...

    async def reload(self) -> dict[str, Any]: ...


class AdminError(Exception):
    def __init__(
        self,
        status: int,
        err_no: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.err_no = int(err_no)
        self.message = message
        self.headers = dict(headers or {})
        self.problems = tuple(problems)  # (config key, problem) of a refused reload

    def reply(self) -> ErrorReply:
        if self.problems:
            errors = [ConfigProblem(key=k, problem=p) for k, p in self.problems]
            return ConfigRefused(err_no=self.err_no, err_msg=self.message, errors=errors)
        return ErrorReply(err_no=self.err_no, err_msg=self.message)


def _json(status: int, reply: BaseModel, headers: Mapping[str, str] | None = None) -> web.Response:
    # Indented: operators read these with curl more often than programs do.
    body = orjson.dumps(reply.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    return web.Response(status=status, body=body, content_type=JSON_TYPE, headers=headers)


def _error(status: int, err_no: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json(status, ErrorReply(err_no=int(err_no), err_msg=message), headers)


# --------------------------------------------------------------------------------------------------
# Who may change things


def check_caller(
    *,
    remote: str | None,
    authorization: str | None,
    origin: str | None,
    token: str | None,
    key: str = "admin_token",
    host: str | None = None,
) -> AdminError | None:
    """Why a changing request must be refused, or None when it may go ahead.

    * With a token (``admin_token``, else ``auth_token``): ``Authorization: Bearer TOKEN`` from any
      caller, loopback included; none or another scheme -> 401, a wrong token -> 403.
    * Without: loopback callers only (403 otherwise).  A request carrying ``Origin`` comes from a
      web browser, and a page on any site can make the browser POST to 127.0.0.1 (or rebind a DNS
      name to it): refused too, since nothing else authenticates it, unless it comes from this
      port's own status page (:func:`_own_page`).  curl, ``regproxy ctl`` and other programs send
      no Origin.

    ``X-Forwarded-For`` is ignored on purpose: behind a local reverse proxy every caller would look
    like loopback, so such a setup needs the token.
    """
    if token is not None:
        refusal = check_bearer(authorization, token, key=key, api="admin")
        if refusal is None:
            return None
        return AdminError(refusal.status, refusal.err_no, refusal.message, headers=refusal.headers)
    if not is_loopback(remote):
        return AdminError(
            403,
            ErrNo.FORBIDDEN,
            f"only loopback callers may change this sidecar (caller {remote or 'unknown'}); "
            "set admin_token or auth_token to allow others",
        )
    if origin is not None and not _own_page(origin, host):
        return AdminError(
            403,
            ErrNo.FORBIDDEN,
            "requests from a web browser (Origin header) may not change this sidecar "
            "unless admin_token or auth_token is set",
        )
    return None


def _own_page(origin: str, host: str | None) -> bool:
    """Whether a browser's request comes from the status page this admin port served, opened at a
    loopback address: the ``Origin`` is ``http://`` + the ``Host`` the request was sent to, and that
    host is 127.0.0.1, [::1] or localhost.

    Same origin alone is not enough: a page of another site whose name was rebound to 127.0.0.1
    (DNS rebinding) is same-origin with itself, but its Host is its own name, not a loopback one.
    """
    if host is None or origin.lower() != f"http://{host}".lower():
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() == "localhost" or is_loopback(name.strip("[]"))


def _public(request: web.Request) -> bool:
    """Readable without auth_token: the probes (the kubelet has no token) and the status page's
    static files, which hold no data (everything on it comes from the API; status_page)."""
    path = request.path
    if path in PROBE_PATHS or path in ASSET_PATHS:
        return True
    return path == "/" and wants_html(request.headers.get("Accept"))


def _refusal(sc: AdminTarget, request: web.Request) -> AdminError | None:
    """Why ``request`` may not go ahead.  auth_token guards every path but the probes and the status
    page's files (:func:`_public`); admin_token (or auth_token when it is unset) guards the changing
    ones."""
    cfg = sc.config
    headers = request.headers
    if request.method not in SAFE_METHODS:
        key = "admin_token" if cfg.admin_token is not None else "auth_token"
        return check_caller(
            remote=request.remote,
            authorization=headers.get("Authorization"),
            origin=headers.get("Origin"),
            token=cfg.admin_token if cfg.admin_token is not None else cfg.auth_token,
            key=key,
            host=headers.get("Host"),
        )
    if cfg.auth_token is not None and not _public(request):
        auth = headers.get("Authorization")
        refusal = check_bearer(auth, cfg.auth_token, key="auth_token", api="admin")
        # admin_token may do more than auth_token here, so it may read too (one token for ctl).
        if (
            refusal is not None
            and refusal.status == 403
            and cfg.admin_token is not None
            and check_bearer(auth, cfg.admin_token, key="admin_token", api="admin") is None
        ):
            return None
        if refusal is not None:
            return AdminError(refusal.status, refusal.err_no, refusal.message, headers=refusal.headers)
    return None


# --------------------------------------------------------------------------------------------------
# Views: the reply models, built from the running sidecar


def _redact_params(params: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in params.items()}


def _redact_effective(providers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``Discovery.parameters_of`` with the values of secret parameters (``token``) as ``***``."""
    for provider in providers:
        for values in provider["parameters"].values():
            for key, entry in values.items():
                if key in SECRET_PARAMS:
                    entry["value"] = REDACTED
    return providers


def _redact_url(url: DubboURL) -> str:
    if not SECRET_PARAMS.intersection(k.lower() for k in url.params):
        return str(url)
    return str(replace(url, params=_redact_params(url.params)))


def _listeners_of(sc: AdminTarget) -> tuple[tuple[ListenerName, Listener], ...]:
    return (("egress", sc.egress), ("ingress", sc.ingress))


def _router(table: RoutingTable) -> Router:
    return Router(
        version=table.version,
        routes=[
            RouteView(
                name=r.name,
                match=RouteMatchView(
                    service=r.match.service,
                    version=r.match.version,
                    group=r.match.group,
                    method=r.match.method,
                ),
                cluster=r.cluster,
                timeout_ms=r.timeout_ms,
                retries=r.retries,
            )
            for r in table.routes
        ],
    )


def _routers(sc: AdminTarget) -> dict[ListenerName, Router]:
    return {name: _router(lst.table.current) for name, lst in _listeners_of(sc)}


def _cluster_source(sc: AdminTarget, listener: ListenerName, cluster: str) -> ClusterSource:
    if listener == "ingress":
        return "local"  # the application on this host, one cluster per published app port
    return "config" if any(c.name == cluster for c in sc.config.clusters) else "registry"


def _config_clusters(sc: AdminTarget) -> list[ConfigTableCluster]:
    """The clusters of both tables as configured/discovered (no live counters)."""
    return [
        ConfigTableCluster(
            listener=name,
            source=_cluster_source(sc, name, c.name),
            name=c.name,
            lb=c.lb,
            hosts=[
                ConfigHost(
                    address=h.address,
                    weight=h.weight,
                    healthy=h.healthy,
                    protocols=speaks_names(h.speaks),
                    metadata=_redact_params(h.metadata),
                    found=_found(sc, name, c.name, h.address),
                )
                for h in c.hosts
            ],
        )
        for name, lst in _listeners_of(sc)
        for c in lst.table.current.clusters.values()
    ]


def _found(sc: AdminTarget, listener: ListenerName, cluster: str, address: str) -> dict[str, str] | None:
    """How an egress host of a subscription was found (views.found_how); None elsewhere."""
    if listener != "egress" or sc.discovery is None:
        return None
    return found_how(sc.discovery, cluster, address)


def host_state(
    table_healthy: bool, health: Mapping[str, Any] | None, consecutive_failures: int
) -> tuple[HostState, str | None]:
    """A host's state and, unless available, why, in words.

    ``health`` is the host's entry of ``Health.describe()`` (what /api/v1/stats shows under
    ``health.hosts``; None without health checking): the active check's ``healthy`` and
    ``last_error``, the outlier detector's ``ejected``, ``ejected_for_s`` and ``ejections``.
    ``consecutive_failures`` is the outlier setting that ejects a host.  Unhealthy wins over
    ejected: an ejection ends on a timer, a host that fails its checks stays out until it answers.
    """
    if health is not None and health.get("healthy") is False:
        error = health.get("last_error")
        # No last error while unhealthy: it has answered again, but not healthy_threshold times yet.
        return "unhealthy", error or "failing its active health checks (answering again, not healthy yet)"
    if not table_healthy:
        return "unhealthy", "marked unhealthy in the routing table"
    if health is not None and health.get("ejected"):
        left = health.get("ejected_for_s") or 0.0
        return "ejected", (
            f"ejected after {consecutive_failures} consecutive failures, back in {left:.1f} s "
            f"(ejection {health.get('ejections', 0)} of this host)"
        )
    return "available", None


CLUSTERS_QUERY = ("brief",)


def live_clusters(sc: AdminTarget, *, brief: bool = False) -> list[LiveCluster]:
    """Every cluster with its hosts and what the forwarder knows of them right now; ``brief``: without
    each host's metadata (null), most of the reply's size and cost with a provider's parameters."""
    out: list[LiveCluster] = []
    # The balancers' clock (proxy.plan's System.currentTimeMillis()): provider timestamps are wall-clock ms.
    now_ms = int(time.time() * 1000)
    for name, lst in _listeners_of(sc):
        fwd = lst.forwarder
        pool = fwd.pool if fwd is not None else None
        conns = pool.describe() if pool is not None else {}
        sent = fwd.stats.upstream_requests if fwd is not None else {}
        failed = fwd.stats.upstream_errors if fwd is not None else {}
        triple = fwd.triple if fwd is not None else None
        tri_sent = triple.stats.upstream_requests if triple is not None else {}
        tri_failed = triple.stats.upstream_errors if triple is not None else {}
        # The health the forwarder picks hosts with (the egress's; NoHealth elsewhere or when off),
        # described as /api/v1/stats's health.hosts is: one source for both views.
        health = fwd.health if fwd is not None else None
        described = health.describe() if isinstance(health, Health) else {}
        threshold = health.settings.outlier.consecutive_failures if isinstance(health, Health) else 0
        for cluster in lst.table.current.clusters.values():
            hosts: list[LiveHost] = []
            for h in cluster.hosts:
                entry = described.get(h.address)
                state, reason = host_state(h.healthy, entry, threshold)
                hosts.append(
                    LiveHost(
                        address=h.address,
                        weight=h.weight,
                        healthy=h.healthy,
                        protocols=speaks_names(h.speaks),
                        ejected=bool(entry is not None and entry.get("ejected")),
                        state=state,
                        reason=reason,
                        effective_weight=dubbo_weight(h, "", now_ms),
                        active_requests=(pool.active(h.address) if pool is not None else 0)
                        + (triple.pool.active(h.address) if triple is not None else 0),
                        total_requests=sent.get(h.address, 0) + tri_sent.get(h.address, 0),
                        errors=failed.get(h.address, 0) + tri_failed.get(h.address, 0),
                        connections=[Connection.model_validate(c) for c in conns.get(h.address, [])],
                        metadata=None if brief else _redact_params(h.metadata),
                        found=_found(sc, name, cluster.name, h.address),
                    )
                )
            out.append(
                LiveCluster(
                    name=cluster.name,
                    listener=name,
                    source=_cluster_source(sc, name, cluster.name),
                    lb=cluster.lb,
                    hosts=hosts,
                )
            )
    return out


def _listeners(sc: AdminTarget) -> list[ListenerView]:
    out = []
    for name, lst in _listeners_of(sc):
        fwd = lst.forwarder
        server = lst.server
        accepting = server is not None and bool(server.sockets)
        if accepting:
            host, port = lst.address
        else:  # not started, or no longer accepting (draining): the configured address
            host, port = lst.settings.host, lst.settings.port
        out.append(
            ListenerView(
                name=name,
                address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                accepting=accepting,
                connections=len(fwd.downstreams) if fwd is not None else 0,
                in_flight=fwd.in_flight if fwd is not None else 0,
                table_version=lst.table.current.version,
            )
        )
    return out


def _registry_name(disc: Discovery, key: str) -> str:
    reg = disc.registries.get(key)
    if reg is not None:
        return reg.name  # the adapter's redacted name
    try:
        return RegistryURL.parse(key).to_url(redact=True)
    except ValueError:
        return "(unparsable registry)"  # never echo a key that may hold a password


def _registry_keys(disc: Discovery, extra: Iterable[str]) -> list[str]:
    keys = dict.fromkeys(disc.registries)
    keys.update(dict.fromkeys(extra))
    return sorted(keys, key=lambda k: _registry_name(disc, k))


def _registry_state(disc: Discovery, key: str) -> str:
    reg = disc.registries.get(key)
    return reg.state if reg is not None else "unknown"


def publications_view(disc: Discovery | None) -> Publications:
    if disc is None:
        return Publications(withdrawn=False, registries=[])
    pubs = sorted(disc.publications.values(), key=lambda p: p.spec.key)
    registries = [
        RegistryPublications(
            registry=_registry_name(disc, key),
            state=_registry_state(disc, key),
            publications=[
                PublicationView(
                    service=p.spec.key,
                    interface=p.spec.interface,
                    version=p.spec.version,
                    group=p.spec.group,
                    methods=list(p.spec.methods),
                    application=p.spec.application,
                    app_port=p.spec.port,
                    url=_redact_url(p.url),
                    registered=key in p.registered,
                )
                for p in pubs
                if key in p.registries
            ],
        )
        for key in _registry_keys(disc, (k for p in pubs for k in p.registries))
    ]
    return Publications(withdrawn=disc.withdrawn, registries=registries)


def subscriptions_view(disc: Discovery | None) -> Subscriptions:
    if disc is None:
        return Subscriptions(registries=[])
    subs = sorted(disc.subscriptions.values(), key=lambda s: s.sub.cluster_name)
    effective = {s.sub.cluster_name: _redact_effective(parameters_of(disc, s.sub.cluster_name)) for s in subs}

    def listed(s: Any, key: str) -> set[str]:
        return {u.address for u in s.providers.get(key, ())}

    registries = [
        RegistrySubscriptions(
            registry=_registry_name(disc, key),
            state=_registry_state(disc, key),
            subscriptions=[
                SubscriptionView(
                    cluster=s.sub.cluster_name,
                    interface=s.sub.interface,
                    version=s.sub.version,
                    group=s.sub.group,
                    application=s.consumer.params.get("application", ""),
                    params=_redact_params(consumer_own(s.consumer.params)),
                    effective=[p for p in effective[s.sub.cluster_name] if p["address"] in listed(s, key)],
                    watching=key in s.watching,
                    migration=disc.migration_of(s).value,
                    applications=disc.apps.view(key, s.sub.cluster_name),
                    # Providers read from the state file at start, not yet confirmed by a registry.
                    from_cache=s.sub.cluster_name in disc.from_cache,
                    # This registry's list lost every provider: the last one is kept for a while
                    # (discovery.empty_protection_s, regproxy/discovery/protection.py).
                    holding_empty=key in s.held,
                    providers=[
                        ProviderView(
                            address=u.address,
                            weight=u.weight,
                            found=found_how(disc, s.sub.cluster_name, u.address),
                        )
                        for u in s.providers.get(key, ())
                        if matches(s.sub, u)
                    ],
                )
                for s in subs
                if key in s.registries
            ],
        )
        for key in _registry_keys(disc, (k for s in subs for k in s.registries))
    ]
    return Subscriptions(registries=registries)


def _check_query(query: Mapping[str, str], known: Sequence[str]) -> None:
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise AdminError(
            400,
            ErrNo.BAD_REQUEST,
            f"unknown query parameter(s) {', '.join(unknown)} (known: {', '.join(known)})",
        )


def config_dump(sc: AdminTarget, query: Mapping[str, str]) -> ConfigDump:
    """The config dump, whole or cut down by the query (AdminError 400/404 on a bad query)."""
    _check_query(query, CONFIG_DUMP_QUERY)
    for name in ("router", "cluster", "listener"):
        if name in query and not query[name]:
            raise AdminError(400, ErrNo.BAD_REQUEST, f"{name}: give a name, e.g. ?{name}=egress")
    if not query:
        return ConfigDump(
            sidecar=_sidecar_info(sc),
            config=sc.config.redacted_dict(),
            routers=_routers(sc),
            clusters=_config_clusters(sc),
            listeners=_listeners(sc),
            publications=publications_view(sc.discovery),
            subscriptions=subscriptions_view(sc.discovery),
            rules=rules_view(sc.discovery),
        )
    sidecar = _sidecar_info(sc) if "sidecar" in query else None
    routers: dict[ListenerName, Router] | None = None
    clusters: list[ConfigTableCluster] | None = None
    listeners: list[ListenerView] | None = None
    if "allrouters" in query or "router" in query:
        routers = _routers(sc)
        if "router" in query:
            name = query["router"]
            if name not in routers:
                raise AdminError(
                    404, ErrNo.NOT_FOUND, f"no router named {name!r} (routers: {', '.join(routers)})"
                )
            routers = {n: r for n, r in routers.items() if n == name}
    if "allclusters" in query or "cluster" in query:
        clusters = _config_clusters(sc)
        if "cluster" in query:
            name = query["cluster"]
            clusters = [c for c in clusters if c.name == name]
            if not clusters:
                raise AdminError(404, ErrNo.NOT_FOUND, f"no cluster named {name!r} (see ?allclusters)")
    if "alllisteners" in query or "listener" in query:
        listeners = _listeners(sc)
        if "listener" in query:
            name = query["listener"]
            listeners = [entry for entry in listeners if entry.name == name]
            if not listeners:
                raise AdminError(
                    404, ErrNo.NOT_FOUND, f"no listener named {name!r} (listeners: {', '.join(LISTENERS)})"
                )
    return ConfigDump(sidecar=sidecar, routers=routers, clusters=clusters, listeners=listeners)


def _sidecar_info(sc: AdminTarget) -> SidecarInfo:
    return SidecarInfo(
        config_path=sc.config_path,
        advertise_ip=sc.advertise_ip,
        started_at=sc.started_at,
        uptime_s=round(time.time() - sc.started_at, 3),
        draining=sc.draining,
        log_level=sc.log_level,
        version=regproxy_release(),
        data_path=native.describe(),  # the words of the start-up line
    )


RULES_QUERY = ("cluster", "method", "tag")


def rules_view(disc: Discovery | None, query: Mapping[str, str] | None = None) -> Rules:
    """Every config center's rules; with ``?cluster=NAME`` (and ``method``, ``tag``) also what each
    stage does to that subscription's providers (AdminError 400/404 on a bad query)."""
    query = query or {}
    _check_query(query, RULES_QUERY)
    if ("method" in query or "tag" in query) and "cluster" not in query:
        raise AdminError(400, ErrNo.BAD_REQUEST, "method and tag explain a cluster: give ?cluster=NAME too")
    reply: dict[str, Any] = {"centers": disc.rules_view() if disc is not None else []}
    if "cluster" in query:
        if disc is None:
            raise AdminError(404, ErrNo.NOT_FOUND, "no discovery: this sidecar subscribes to nothing")
        try:
            reply["explain"] = explain(disc, query["cluster"], query.get("method", ""), query.get("tag", ""))
        except LookupError as exc:  # discovery's NotFound
            raise AdminError(404, ErrNo.NOT_FOUND, str(exc)) from None
    return Rules.model_validate(reply)


def readiness_view(sc: AdminTarget) -> Readiness:
    ready, raw = sc.readiness()  # a failing state save makes it not ready (Sidecar.readiness)
    detail = ReadinessDetail.model_validate(raw)
    reasons: list[str] = []
    if not ready:
        # Spelled out for people and probes' logs; the detail below is for programs.
        errors = {r.name: r.auth_error for r in sc.discovery.registries.values()} if sc.discovery else {}
        for name, state in sorted(detail.registries.items()):
            if state != CONNECTED:
                why = errors.get(name)
                reasons.append(f"registry {name} is {state}" + (f": {why}" if why else ""))
        if not detail.restored:
            reasons.append("saved state not restored yet")
        if detail.draining:
            reasons.append("draining")
        save = detail.state_save
        if save is not None and not save.ok:
            reasons.append(
                f"data_dir {save.data_dir}: state not saved to {save.file} for "
                f"{save.failing_for_s or 0:g} s ({save.consecutive_failures} attempts): {save.error}; "
                "changes are answered 503"
            )
    return Readiness(status="ready" if ready else "not ready", ready=ready, reasons=reasons, detail=detail)


# --------------------------------------------------------------------------------------------------
# The app


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Admin:
    def __init__(self, sidecar: AdminTarget) -> None:
        self.sc = sidecar
        self.registry = metrics_registry(sidecar)
        self.openapi = orjson.dumps(build_admin_openapi(max_body=MAX_BODY))

    # --- reading ------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        # One path, two readers: a browser gets the status page, a program the endpoint list.
        if wants_html(request.headers.get("Accept")):
            reply = status_page()
        else:
            endpoints = [Endpoint(method=m, path=p, summary=s) for m, p, s in ENDPOINTS]
            reply = _json(200, Index(name="regproxy admin API", endpoints=endpoints))
        reply.headers["Vary"] = "Accept"
        return reply

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, Alive(status="alive", uptime_s=round(time.time() - self.sc.started_at, 3)))

    async def readyz(self, request: web.Request) -> web.Response:
        body = readiness_view(self.sc)
        return _json(200 if body.ready else 503, body)

    async def config_dump(self, request: web.Request) -> web.Response:
        return _json(200, config_dump(self.sc, request.query))

    async def clusters(self, request: web.Request) -> web.Response:
        _check_query(request.query, CLUSTERS_QUERY)
        return _json(200, Clusters(clusters=live_clusters(self.sc, brief="brief" in request.query)))

    async def publications(self, request: web.Request) -> web.Response:
        return _json(200, publications_view(self.sc.discovery))

    async def subscriptions(self, request: web.Request) -> web.Response:
        return _json(200, subscriptions_view(self.sc.discovery))

    async def rules(self, request: web.Request) -> web.Response:
        return _json(200, rules_view(self.sc.discovery, request.query))

    async def stats(self, request: web.Request) -> web.Response:
        return _json(200, Stats.model_validate(self.sc.stats()))

    async def timeseries(self, request: web.Request) -> web.Response:
        raw = request.query.get("seconds")
        seconds: float | None = None
        if raw is not None:
            try:
                seconds = float(raw)
                if not 0 < seconds <= HISTORY_S:
                    raise ValueError
            except ValueError:
                message = f"seconds: expected more than 0 and at most {HISTORY_S}, got {raw!r}"
                raise AdminError(400, ErrNo.BAD_REQUEST, message) from None
        series = [
            ServiceSeries(
                listener=listener,  # type: ignore[arg-type]
                protocol=protocol,  # type: ignore[arg-type]
                service=service,
                points=[(p.t, p.rps, p.eps, p.p50_ms, p.p99_ms) for p in points],
            )
            for (listener, protocol, service), points in self.sc.timeseries.points(seconds)
        ]
        return _json(200, TimeSeriesReply(interval_s=INTERVAL_S, history_s=HISTORY_S, series=series))

    async def metrics(self, request: web.Request) -> web.Response:
        # A few hundred lines at most, built from in-memory counters: cheaper than a thread hop.
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")

    async def get_loglevel(self, request: web.Request) -> web.Response:
        return _json(200, LogLevelReply(level=self.sc.log_level))

    # --- changing (the middleware has checked the caller) -------------------------------------

    async def set_loglevel(self, request: web.Request) -> web.Response:
        level: Any = request.query.get("level")
        if level is None:
            body = await _read_json(request)
            level = body.get("level") if isinstance(body, dict) else None
        if not isinstance(level, str) or level.strip().lower() not in LOG_LEVELS:
            shown = "missing" if level is None else repr(level)[:40]
            raise AdminError(
                400,
                ErrNo.BAD_REQUEST,
                f"level: {shown} is not a log level (one of {', '.join(LOG_LEVELS)}); "
                'send {"level": "debug"} or ?level=debug',
            )
        level = level.strip().lower()
        previous = self.sc.log_level
        self.sc.set_log_level(level)
        log.warning("admin: log level %s -> %s (from %s)", previous, level, request.remote)
        return _json(200, LogLevelSet(err_msg="log level set", level=level, previous=previous))

    async def drain(self, request: web.Request) -> web.Response:
        cfg = self.sc.config.drain
        started = not self.sc.draining
        if started:
            log.warning("admin: drain requested by %s", request.remote)
        # The sidecar owns the task (SIGTERM starts the same one); it outlives this request and,
        # at its end, the admin server itself.
        self.sc.start_drain()
        reply = Draining(
            err_msg="draining" if started else "already draining",
            draining=True,
            started=started,
            grace_s=cfg.grace_s,
            timeout_s=cfg.timeout_s,
        )
        return _json(202, reply)

    async def reload(self, request: web.Request) -> web.Response:
        # No lock: Sidecar.reload() does not await, so two reloads can never interleave.
        try:
            result = await self.sc.reload()
        except ConfigError as e:
            log.warning("admin: reload from %s refused: %s", request.remote, e)
            raise AdminError(400, ErrNo.BAD_REQUEST, str(e), problems=e.errors) from None
        log.warning("admin: config reload requested by %s: %s", request.remote, result)
        reason = result.get("reason")
        reply = Reloaded(
            err_msg="reloaded" if result["reloaded"] else str(reason or "not reloaded"),
            reloaded=result["reloaded"],
            changes=result["changes"],
            needs_restart=result["needs_restart"],
            reason=reason,
        )
        return _json(200, reply)


async def _read_json(request: web.Request) -> Any:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise AdminError(413, ErrNo.TOO_LARGE, f"request body over the {MAX_BODY} byte limit")
    body = await request.read()  # client_max_size backs the limit for chunked bodies
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise AdminError(400, ErrNo.BAD_REQUEST, f"request body: not valid JSON ({e})") from None


def _middleware(sc: AdminTarget) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def admin_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            refusal = _refusal(sc, request)
            if refusal is not None:
                log.warning(
                    "admin: refused %s %s from %s: %s",
                    request.method, request.path, request.remote, refusal.message,
                )  # fmt: skip
                raise refusal
            return await handler(request)
        except AdminError as e:
            if e.status >= 500:
                log.warning("admin: %s %s -> %d %s", request.method, request.path, e.status, e.message)
            return _json(e.status, e.reply(), e.headers)
        except web.HTTPException as e:
            if isinstance(e, web.HTTPMethodNotAllowed):
                allowed = ", ".join(sorted(e.allowed_methods))
                return _error(
                    405,
                    ErrNo.METHOD_NOT_ALLOWED,
                    f"{request.method} is not allowed on this path (use {allowed})",
                    {"Allow": allowed},
                )
            if e.status == 404:
                return _error(404, ErrNo.NOT_FOUND, "no such endpoint (see GET /)")
            if e.status == 413:
                return _error(413, ErrNo.TOO_LARGE, f"request body over the {MAX_BODY} byte limit")
            if e.status < 400:
                raise
            return _error(e.status, ErrNo.INTERNAL if e.status >= 500 else ErrNo.BAD_REQUEST, e.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admin: unexpected error in %s %s", request.method, request.path)
            return _error(500, ErrNo.INTERNAL, "internal error in regproxy (details in its log)")

    return admin_middleware


ADMIN_KEY = web.AppKey("regproxy_admin", _Admin)


def build_admin_app(sidecar: AdminTarget) -> web.Application:
    """The admin API for ``sidecar`` as an aiohttp app (serve it with :func:`start_admin`)."""
    admin = _Admin(sidecar)
    app = web.Application(middlewares=[_middleware(sidecar)], client_max_size=MAX_BODY)
    app[ADMIN_KEY] = admin
    r = app.router
    r.add_get("/", admin.index)
    for path in ASSET_PATHS:
        r.add_get(path, status_asset)
    r.add_get("/healthz", admin.healthz)
    r.add_get("/readyz", admin.readyz)
    r.add_get("/metrics", admin.metrics)
    r.add_get("/openapi.json", admin.openapi_json)
    r.add_get("/api/v1/config_dump", admin.config_dump)
    r.add_get("/api/v1/rules", admin.rules)
    r.add_get("/api/v1/clusters", admin.clusters)
    r.add_get("/api/v1/publications", admin.publications)
    r.add_get("/api/v1/subscriptions", admin.subscriptions)
    r.add_get("/api/v1/stats", admin.stats)
    r.add_get("/api/v1/timeseries", admin.timeseries)
    r.add_get("/api/v1/loglevel", admin.get_loglevel)
    r.add_post("/api/v1/loglevel", admin.set_loglevel)
    r.add_post("/api/v1/drain", admin.drain)
    r.add_post("/api/v1/reload", admin.reload)
    return app


async def start_admin(
    app: web.Application, host: str, port: int, *, has_token: bool = False
) -> web.AppRunner:
    """Serve the admin app on host:port (port 0: any free port; see ``runner.addresses``)."""
    warn_if_remote("admin", host, has_token=has_token)
    return await serve(app, host, port, "admin API")


stop_admin = stop_api
