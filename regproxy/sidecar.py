"""Wires the parts together and owns the lifecycle: start, reload, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from regproxy import native
from regproxy.api.http import build_app, start_api, stop_api
from regproxy.api.timeseries import INTERVAL_S as TIMESERIES_INTERVAL_S
from regproxy.api.timeseries import Counters, SeriesKey, TimeSeries, by_service
from regproxy.config import Config, ConfigError
from regproxy.discovery import Discovery, ingress_table, own_addresses
from regproxy.discovery.apps import Fetcher
from regproxy.discovery.metadata_client import fetch_metadata, metadata_ssl
from regproxy.discovery.metadata_served import MetadataServed
from regproxy.dubbo.metadata_service import METADATA_SERVICE
from regproxy.governance.migration import MigrationSetting
from regproxy.health.app import AppWatch
from regproxy.health.h2ping import Pinger
from regproxy.health.hosts import Health, egress_view, speaks_view
from regproxy.netutil import detect_advertise_ip, loopback_ingress_ip
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.proxy.filters import AccessLog
from regproxy.proxy.flow import FlowLimits
from regproxy.proxy.loops import LoopGuard
from regproxy.registry.base import RegistryError
from regproxy.registry.factory import make_registry
from regproxy.registry.instances import AppInstance
from regproxy.registry.metadata_info import MetadataInfo
from regproxy.rlimits import raise_open_files_limit
from regproxy.routing import TableHolder
from regproxy.routing.from_config import rule_set, static_table
from regproxy.state import StateStore
from regproxy.tls import SidecarTLS, UpstreamTLS

log = logging.getLogger("regproxy")

# Keys a reload cannot change in a running process: sockets are bound, registries connected.
_RESTART_KEYS = (
    "egress", "ingress", "api", "admin", "app_port", "advertise_ip", "data_dir", "registries", "health",
    "api_allow_remote", "admin_allow_remote",
)  # fmt: skip
# Application-level discovery is set up with the Discovery coordinator: a change waits for a restart.
_DISCOVERY_RESTART_KEYS = ("register_mode", "migration", "metadata_storage", "metadata_timeout_ms")
# After the read-only event, the time for requests already on the wire to arrive before we count
# what is in flight (one loopback or LAN round trip is far less).
_READONLY_SETTLE_S = 0.2
# Java Dubbo's QoS (telnet) server listens here by default, and so does our API (MOSN's port).
DUBBO_QOS_PORT = 22222


class Sidecar:
    """One regproxy process: its parts, wired together, and their lifecycle (start, reload, drain, stop).

    What it owns (creates, starts and stops; nothing else does):

    * the two Dubbo listeners with their forwarders: ``egress`` (the local consumers' calls, routed
      by ``egress_table`` and ``rules``) and ``ingress`` (other sidecars' calls, sent to the local
      application by ``ingress_table``);
    * ``discovery``, made at start: the registries, publications, subscriptions and the state file.
      It is the one writer of both tables after start (the egress: ``static_table`` plus a cluster
      per subscription; the ingress: a route per publication), always by swapping a whole table;
    * the health checks (``_start_health`` / ``_stop_health``): ``health``, the egress's active
      checks and outlier detection, and ``app_watch``, the heartbeats of the published app ports;
    * the HTTP API and admin listeners, ``tls`` (certificates, re-read on reload), the access log
      and the ``loop_guard`` (this sidecar's id in loop markers).

    What it may touch of its parts from outside them: the forwarders' knobs, as plain attribute
    assignments between requests (``rules``, ``access_log``, ``default_timeout_ms``, ``health``),
    the egress's counters and pool from health callbacks (an ejection counted, a dead host's
    connections dropped), and Discovery's public methods. Never a connection or a request in flight.

    Invariants:

    * Everything runs on one event loop. ``reload()`` does not await, so reloads never interleave and
      a request never sees the new table without the new rules, or the reverse: ``static_table`` and
      ``rules`` are built first (a bad config changes nothing), then swapped with no await between.
    * ``config`` is the configuration in effect: keys a running process cannot change
      (``_RESTART_KEYS``, a TLS change that needs a restart) keep their running values after a reload.
    * ``start()`` either completes or stops what it had started and raises; ``stop()`` stops the API
      first, then health, listeners and discovery, whatever was started.
    * Draining is one way: once ``draining`` is set the sidecar is never ready again (``readiness``);
      ready also needs the state restored, every registry connected and the last state write to
      have succeeded.
    """

    def __init__(
        self,
        config: Config,
        *,
        loader: Callable[[], Config] | None = None,
        config_path: str | None = None,
        origins: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        # Config key -> the flag that set it, to name the right source in start-up errors.
        self._origins = dict(origins or {})
        self._loader = loader
        self.static_table = static_table(config)
        self.rules = rule_set(config)
        self._access_log: AccessLog | None = AccessLog(config.access_log) if config.access_log else None
        self.egress_table = TableHolder(self.static_table)
        self.ingress_table = TableHolder(ingress_table())
        self.advertise_ip = _advertise_ip(config)
        self.tls = SidecarTLS(config.tls, self.egress_table) if config.tls.enabled else None
        # This sidecar's id in the loop marker, and its own connections (regproxy.proxy.loops).
        self.loop_guard = LoopGuard()
        self.egress = Listener(
            "egress",
            self._settings(config.egress.host, config.egress.port, upstream_tls=self.upstream_tls),
            self.egress_table,
            self.loop_guard,
        )
        self.ingress = Listener(
            "ingress",
            self._settings(
                config.ingress.host,
                config.ingress.port,
                ingress=True,
                server_ssl=self.tls.server_ssl if self.tls else None,
            ),
            self.ingress_table,
            self.loop_guard,
        )
        self.discovery: Discovery | None = None
        self.started_at = time.time()
        self.draining = False
        self._stopped = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        # The last 15 minutes of each service's rates and latency, for the status page.
        self.timeseries = TimeSeries()
        self._sampler: asyncio.Task[None] | None = None
        self._api: web.AppRunner | None = None
        self._admin: web.AppRunner | None = None
        self.health: Health | None = None
        self.app_watch: AppWatch | None = None

    @property
    def upstream_tls(self) -> UpstreamTLS | None:
        return self.tls.upstream if self.tls is not None else None

    def _metadata_fetcher(self) -> Fetcher:
        """How this sidecar asks a Dubbo 3 instance's MetadataService for a revision's MetadataInfo:
        over TLS when the instance is a sidecar whose ingress speaks only TLS (it says so in its
        instance metadata: regproxy.discovery.app_registration) or tls.egress is ``always``."""
        timeout_s = self.config.discovery.metadata_timeout_ms / 1000

        async def fetch(instance: AppInstance, revision: str) -> MetadataInfo:
            context = metadata_ssl(instance, self.upstream_tls)
            return await fetch_metadata(instance, revision, timeout_s=timeout_s, ssl=context)

        return fetch

    def _settings(
        self,
        host: str,
        port: int,
        *,
        ingress: bool = False,
        server_ssl: ssl.SSLContext | None = None,
        upstream_tls: UpstreamTLS | None = None,
    ) -> ListenerSettings:
        c = self.config
        return ListenerSettings(
            host=host,
            port=port,
            max_body=c.limits.max_body_bytes,
            # The consumer's egress enforces the request's deadline; the ingress only bounds a hung
            # app, and so skips reading the timeout attachment (the arguments before it) per request.
            default_timeout_ms=c.timeouts.ingress_ms if ingress else c.timeouts.default_ms,
            timeout_from_attachment=not ingress,
            connect_timeout_ms=c.timeouts.connect_ms,
            connections_per_host=c.upstream.connections_per_host,
            max_connections=c.limits.max_connections,
            idle_timeout_s=c.limits.idle_timeout_s,
            flow=FlowLimits(
                c.limits.max_in_flight_per_connection,
                c.limits.max_in_flight_bytes_per_connection,
                c.limits.max_unsent_bytes_per_connection,
            ),
            server_ssl=server_ssl,
            handshake_timeout_s=c.tls.handshake_timeout_s,
            upstream_tls=upstream_tls,
            # The ingress's upstream is the app on 127.0.0.1: loopback loses no packets, and a busy
            # app that stops reading for a while (a zero window) must not have its connection cut.
            user_timeout_ms=0 if ingress else c.upstream.user_timeout_ms,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        from regproxy.api.admin import build_admin_app, start_admin

        c = self.config
        self._check_start()  # before anything binds or connects
        await self.ingress.start()
        try:
            await self.egress.start()
            self._apply_rules()
            # The port other sidecars must dial: the bound one (a config may ask for port 0).
            ingress_port = self.ingress.address[1]
            self.discovery = Discovery(
                registry_urls=c.registries,
                factory=make_registry,
                egress=self.egress_table,
                ingress=self.ingress_table,
                static_table=self.static_table,
                advertise_ip=self.advertise_ip,
                ingress_port=ingress_port,
                store=StateStore(c.data_dir),
                ingress_tls=self.ingress.settings.server_ssl is not None,
                empty_protection_s=c.discovery.empty_protection_s,
                register_mode=c.discovery.register_mode,
                migration=MigrationSetting(c.discovery.migration),
                metadata_storage=c.discovery.metadata_storage,
                metadata_fetcher=self._metadata_fetcher(),
            )
            self.discovery.unpublish_grace_s = c.drain.grace_s
            if self.ingress.forwarder is not None:
                # Dubbo 3 consumers ask this sidecar's instance for its MetadataInfo on the ingress.
                served = MetadataServed()
                self.ingress.forwarder.local_services[METADATA_SERVICE] = served
                self.discovery.app_registrar.served = served
            self._ignore_own_providers()
            await self.discovery.start()
            await self._start_health()
            app = build_app(
                self.discovery,
                app_port=c.app_port,
                registries=c.registries,
                token=lambda: self.config.auth_token,  # read on use: a reload changes it
                allow_body_registries=lambda: self.config.api_allow_body_registries,
                own_ports=lambda: {p: f"{name} listener {host}:{p}" for name, host, p in self.listeners()},
            )
            tok = c.auth_token is not None
            self._api = await _listen(
                "api", start_api(app, c.api.host, c.api.port, has_token=tok), str(c.api), c.api.port
            )
            admin = build_admin_app(self)
            self._admin = await _listen(
                "admin",
                start_admin(admin, c.admin.host, c.admin.port, has_token=tok),
                str(c.admin),
                c.admin.port,
            )
            self._ignore_own_providers()  # again, with the API's and admin's ports as bound
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        except BaseException:
            await self.stop()
            raise

    def listeners(self) -> list[tuple[str, str, int]]:
        """(name, host, port) of this sidecar's four listeners; a port asked as 0 is the bound one
        once listening."""
        c = self.config
        out = []
        for name, lst in (("egress", self.egress), ("ingress", self.ingress)):
            s = lst.settings
            out.append((name, s.host, lst.address[1] if lst.server is not None else s.port))
        for name, runner in (("api", self._api), ("admin", self._admin)):
            where = getattr(c, name)
            bound = runner.addresses if runner is not None else []
            out.append((name, where.host, bound[0][1] if bound else where.port))
        return out

    def _ignore_own_providers(self) -> None:
        """Providers at the egress, API or admin listener would make the egress forward to this
        sidecar itself; the ingress is a legitimate provider (a consumer and a provider in one pod)."""
        if self.discovery is not None:
            mine = [(n, h, p) for n, h, p in self.listeners() if n != "ingress" and p]
            self.discovery.set_own_addresses(own_addresses(mine, self.advertise_ip))

    def _check_start(self) -> None:
        """What the config's validation cannot know without touching this host: ConfigError."""
        problem = data_dir_problem(self.config.data_dir)
        if problem is not None:
            raise self._key_error("data_dir", problem)
        if not self.config.registries:
            log.warning(
                "no registry is configured (registries: in the config file, or --registry URL): "
                'publications and subscriptions that name no registry fail with "registry: none is '
                'configured"; static clusters still route'
            )

    def _key_error(self, key: str, problem: str) -> ConfigError:
        """A problem with a config key found at start, naming where the value came from."""
        if key in self._origins:
            return ConfigError([(key, f"{problem} (from {self._origins[key]})")])
        if key not in self.config.model_fields_set:
            return ConfigError([(key, f"{problem} (the default)")])
        return ConfigError([(key, problem)], self.config_path)

    async def _start_health(self) -> None:
        """Upstream host health for the egress, and the app watch of the published ports; each runs
        its rounds until ``_stop_health``."""
        assert self.discovery is not None
        hs = self.config.health
        if hs.active.enabled or hs.outlier.enabled:
            hosts, clusters_of = egress_view(self.egress_table)
            self.health = Health(
                hs,
                hosts,
                clusters_of,
                on_eject=self._count_ejection,
                on_unreachable=self._drop_upstream,
                tls=self.upstream_tls,
                speaks_of=speaks_view(self.egress_table),
                pinger=self._pinger(self.egress),
            )
            self.health.start()
            if self.egress.forwarder is not None:
                self.egress.forwarder.health = self.health  # egress only: ingress has just the local app
        # Provider side: withdraw the publications of an app port that stops answering heartbeats.
        self.app_watch = AppWatch(hs.app_check, self.discovery, pinger=self._pinger(self.ingress))
        self.app_watch.start()

    @staticmethod
    def _pinger(listener: Listener) -> Pinger | None:
        """HTTP/2 PINGs over ``listener``'s own Triple connections (health.h2ping)."""
        fwd = listener.forwarder
        return fwd.triple.pool.ping if fwd is not None and fwd.triple is not None else None

    async def _stop_health(self) -> None:
        """What ``_start_health`` started, whatever part of it did, in the reverse order: the app
        watch (it suspends and resumes publications in Discovery), then the host checks."""
        if self.app_watch is not None:
            await self.app_watch.stop()
        if self.health is not None:
            await self.health.stop()

    def _drop_upstream(self, address: str) -> None:
        if self.egress.forwarder is not None and (n := self.egress.forwarder.pool.drop(address)):
            log.warning("health: %s does not answer: dropped %d connection(s) to it", address, n)

    def _count_ejection(self, address: str) -> None:
        if self.egress.forwarder is not None:
            self.egress.forwarder.stats.ejections += 1

    def _apply_rules(self) -> None:
        # Rules drive the egress only: the ingress forwards to the local application as it is.
        fwd = self.egress.forwarder
        if fwd is not None:
            fwd.rules = self.rules
            fwd.access_log = self._access_log
            if fwd.triple is not None:
                fwd.triple.access_log = self._access_log
        if self.ingress.forwarder is not None:
            self.ingress.forwarder.access_log = self._access_log
            if self.ingress.forwarder.triple is not None:
                self.ingress.forwarder.triple.access_log = self._access_log

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        for runner in (self._api, self._admin):
            if runner is not None:
                await stop_api(runner)
        self._api = self._admin = None
        await self._stop_health()
        await self.egress.stop()
        await self.ingress.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        self._stopped.set()

    def request_stop(self) -> None:
        self._stopped.set()

    async def run_until_stopped(self) -> None:
        await self._stopped.wait()

    # --- drain --------------------------------------------------------------------------------

    def start_drain(self) -> asyncio.Task[None]:
        """Begin draining (idempotent); the task ends when the sidecar may exit."""
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain())
        return self._drain_task

    async def drain(self) -> None:
        """Leave without losing a request: out of the registries first, then keep serving while
        consumers see the change, then refuse new connections, tell open ones we are read-only,
        let what is in flight finish (bounded), and stop."""
        if self.draining:
            return
        self.draining = True
        grace = self.config.drain.grace_s
        log.info("draining: withdrawing publications, serving %.1f s more", grace)
        if self.discovery is not None:
            await self.discovery.withdraw_all()
        await asyncio.sleep(grace)
        listeners = (self.ingress, self.egress)
        for lst in listeners:
            lst.stop_accepting()
            lst.announce_readonly()
        await asyncio.sleep(_READONLY_SETTLE_S)
        timeout = self.config.drain.timeout_s
        idle = await asyncio.gather(*(lst.forwarder.wait_idle(timeout) for lst in listeners if lst.forwarder))
        if not all(idle):
            log.warning("draining: requests still in flight after %.1f s; stopping anyway", timeout)
        log.info("drained")
        self.request_stop()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        d = self.discovery
        states = d.ready_states() if d is not None else {}
        restored = d is not None and d.restored
        detail: dict[str, Any] = {
            "registries": states,
            "restored": restored,  # the restore step is done (a readiness gate), whatever it found
            # What the state file held: publications and subscriptions restored, or none at all.
            "saved_state": d.store.loaded if d is not None and d.store is not None else None,
            "draining": self.draining,
            "serving_from_cache": sorted(d.from_cache) if d is not None else [],
            # The state file's writes: while the last one failed, changes are answered 503.
            "state_save": d.state_save_status() if d is not None else None,
            # Refused dynamic rules do not make the sidecar unready (the previous version routes),
            # but a probe's log should show them.
            "rules_refused": d.refused_rules() if d is not None else [],
        }
        ready = (
            restored
            and not self.draining
            and all(s == "connected" for s in states.values())
            and (d is None or d.state_save_error is None)
        )
        return ready, detail

    # --- reload and knobs ---------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the config (the same file and flags); apply what a running sidecar can change.

        Raises ConfigError, leaving everything as it was."""
        if self._loader is None:
            return {
                "reloaded": False,
                "changes": [],
                "needs_restart": [],
                "reason": "no config file to re-read",
            }
        new = self._loader()
        old = self.config
        changes: list[str] = []
        needs_restart = [k for k in _RESTART_KEYS if getattr(new, k) != getattr(old, k)]
        if self.tls is not None:
            needs_restart += self.tls.restart_needed(new.tls)
        elif new.tls.enabled:
            needs_restart.append("tls.enabled")
        discovery_restart = [
            k for k in _DISCOVERY_RESTART_KEYS if getattr(new.discovery, k) != getattr(old.discovery, k)
        ]
        needs_restart += [f"discovery.{k}" for k in discovery_restart]
        tls_restart = any(k.startswith("tls.") for k in needs_restart)
        # Built before anything changes: a bad table or rule set changes nothing.
        table = static_table(new)
        rules = rule_set(new)
        # The files are read again (a rotated certificate, key or CA); unusable ones refuse the reload.
        tls_ready = None
        if self.tls is not None and not tls_restart:
            try:
                tls_ready = self.tls.prepare(new.tls)
            except OSError as exc:  # ssl.SSLError included; the files changed since load_config read them
                raise ConfigError([("tls", f"cannot use the certificate files: {exc}")]) from None
        access_log = (
            AccessLog(new.access_log) if new.access_log and new.access_log != old.access_log else None
        )
        if new.clusters != old.clusters or new.routes != old.routes:
            # Table and rules are swapped with no await in between, so no request sees one without
            # the other; requests in flight keep what they derived from the old ones.
            self.static_table = table
            self.rules = rules
            if self.discovery is not None:
                self.discovery.set_static_table(table)
            else:
                self.egress_table.swap(table)
            self._apply_rules()
            changes.append("static routes and clusters")
        if new.access_log != old.access_log:
            if self._access_log is not None:
                self._access_log.close()
            self._access_log = access_log
            self._apply_rules()
            changes.append("access_log")
        if new.timeouts.default_ms != old.timeouts.default_ms and self.egress.forwarder is not None:
            self.egress.forwarder.default_timeout_ms = new.timeouts.default_ms
            changes.append("timeouts.default_ms")
        if new.timeouts.ingress_ms != old.timeouts.ingress_ms and self.ingress.forwarder is not None:
            self.ingress.forwarder.default_timeout_ms = new.timeouts.ingress_ms
            changes.append("timeouts.ingress_ms")
        if self.tls is not None and tls_ready is not None and self.tls.apply(new.tls, tls_ready):
            changes.append("tls (files re-read)")
        if new.log_level != old.log_level:
            self.set_log_level(new.log_level)
            changes.append("log_level")
        if new.discovery.empty_protection_s != old.discovery.empty_protection_s:
            if self.discovery is not None:  # for holds that begin from now on
                self.discovery.protection.hold_s = new.discovery.empty_protection_s
            changes.append("discovery.empty_protection_s")
        # Read from self.config on use, so swapping the config below applies them.
        changes += [
            k
            for k in ("auth_token", "admin_token", "drain", "api_allow_body_registries")
            if getattr(new, k) != getattr(old, k)
        ]
        keep = {k: getattr(old, k) for k in needs_restart if k in _RESTART_KEYS}
        if tls_restart:
            keep["tls"] = old.tls
        if discovery_restart:
            keep["discovery"] = new.discovery.model_copy(
                update={k: getattr(old.discovery, k) for k in discovery_restart}
            )
        self.config = new.model_copy(update=keep)
        log.info("reloaded config: %s", ", ".join(changes) or "no change")
        if needs_restart:
            log.warning("reload: %s changed; takes effect after a restart", ", ".join(needs_restart))
        return {"reloaded": True, "changes": changes, "needs_restart": needs_restart}

    @property
    def log_level(self) -> str:
        return logging.getLevelName(logging.getLogger().level).lower()

    def set_log_level(self, level: str) -> None:
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown log level {level!r} (debug, info, warning, error or critical)")
        logging.getLogger().setLevel(value)

    def service_counters(self) -> dict[SeriesKey, Counters]:
        """Each listener's and protocol's cumulative counters by service (api.timeseries)."""
        out: dict[SeriesKey, Counters] = {}
        for lst in (self.egress, self.ingress):
            fwd = lst.forwarder
            if fwd is None:
                continue
            sides = [("dubbo", fwd.stats)]
            if fwd.triple is not None:
                sides.append(("tri", fwd.triple.stats))
            for protocol, stats in sides:
                histograms = [(svc, h.buckets, h.counts) for (svc, _m), h in list(stats.latency.items())]
                per = by_service(stats.per_service, stats.per_service_errors, histograms)
                for service, counters in per.items():
                    out[(lst.name, protocol, service)] = counters
        return out

    async def _sample_forever(self) -> None:
        """The status page's history: a sample a second (api.timeseries)."""
        while True:
            await asyncio.sleep(TIMESERIES_INTERVAL_S)
            self.timeseries.sample(time.time(), self.service_counters())

    def stats(self) -> dict[str, Any]:
        d = self.discovery
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "id": self.loop_guard.id,  # in the loop marker and the loop errors (regproxy.proxy.loops)
            "draining": self.draining,
            "egress": self.egress.forwarder.stats.snapshot() if self.egress.forwarder else {},
            "ingress": self.ingress.forwarder.stats.snapshot() if self.ingress.forwarder else {},
            # Triple calls, counted apart (responses by grpc-status; regproxy.triple.forwarder).
            "triple": {
                lst.name: lst.forwarder.triple.stats.snapshot()
                for lst in (self.egress, self.ingress)
                if lst.forwarder is not None and lst.forwarder.triple is not None
            },
            "registry": {
                "states": d.registry_states() if d is not None else {},
                "events": d.event_counts() if d is not None else {},
            },
            "state_save": d.state_save_status() if d is not None else None,
            "health": {
                "hosts": self.health.describe() if self.health is not None else {},
                "app_check": self.app_watch.describe() if self.app_watch is not None else {},
                "suspended_app_ports": {str(k): v for k, v in d.suspended.items()} if d is not None else {},
            },
        }


def _advertise_ip(config: Config) -> str:
    if config.advertise_ip is not None:
        return config.advertise_ip
    own = loopback_ingress_ip(config.ingress.host)
    if own is None:
        return detect_advertise_ip()
    # A detected interface address would be registered with a port that only loopback serves:
    # every call from elsewhere would fail.  The loopback address is true, and works on one host.
    log.warning(
        "ingress %s listens on loopback only: advertising %s, which only this host can reach; give "
        "ingress an address other hosts reach (e.g. 0.0.0.0:%d), or set advertise_ip: %s to say it is meant",
        config.ingress, own, config.ingress.port, own,
    )  # fmt: skip
    return own


def data_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot hold the state file (it is created if missing), or None.

    Tried for real, a directory created and a file written and removed: permission bits say
    nothing for root, and /proc or a read-only mount refuse what os.access() allows."""
    directory = Path(path)
    if not directory.is_absolute():
        path = f"{path} ({directory.absolute()})"  # relative to a working directory the user may not know
    if directory.exists() and not directory.is_dir():
        return f"{path} is not a directory"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in directory.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            return f"{path} cannot be created: {blocker} is not a directory"
        return f"{path} cannot be created ({exc.strerror})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".regproxy-write-test.", dir=directory)
    except OSError as exc:
        return f"{path} is not writable: cannot create a file in it ({exc.strerror})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def listen_error(name: str, where: str, port: int, exc: OSError) -> str:
    """The message for a listener that cannot bind: which listener, where, why, and for the port
    Java Dubbo's QoS server takes by default, what to do about it."""
    message = f"{name}: cannot listen on {where}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE and port == DUBBO_QOS_PORT:
        message += (
            f"; Java Dubbo's QoS server listens on {DUBBO_QOS_PORT} by default: if a Dubbo application "
            "on this host has it, set dubbo.application.qos-enable=false there (or move it with "
            f"dubbo.application.qos-port), or move regproxy with --{name} HOST:PORT"
        )
    return message


async def _listen(name: str, starting: Any, where: str, port: int) -> web.AppRunner:
    try:
        return await starting
    except OSError as exc:
        raise OSError(exc.errno, listen_error(name, where, port, exc)) from exc


async def _reload_on_signal(sidecar: Sidecar) -> None:
    """SIGHUP: the same reload as POST /api/v1/reload; a bad config is refused and the old one stays.

    No lock: Sidecar.reload() does not await, so two reloads can never interleave."""
    try:
        result = await sidecar.reload()
    except ConfigError as e:
        log.error("SIGHUP: reload refused, keeping the running config: %s", e)
        return
    except Exception:
        log.exception("SIGHUP: reload failed, keeping the running config")
        return
    log.info("SIGHUP: %s", result)


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _main(
    config: Config,
    loader: Callable[[], Config] | None,
    config_path: str | None,
    origins: Mapping[str, str] | None = None,
) -> int:
    sidecar = Sidecar(config, loader=loader, config_path=config_path, origins=origins)
    try:
        await sidecar.start()
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2  # as for the errors load_config finds
    except OSError as exc:
        # A file's error names the file; a listener's strerror is our full message (_listen).
        log.error("%s", exc if exc.filename else (exc.strerror or exc))
        return 1
    except RegistryError as exc:
        log.error("%s", exc)
        return 1
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        if sidecar.draining:  # a second SIGTERM: stop now
            sidecar.request_stop()
        else:
            sidecar.start_drain()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload_on_signal(sidecar))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    loop.add_signal_handler(signal.SIGINT, sidecar.request_stop)
    log.info(
        "regproxy running (egress %s, ingress %s, api %s, admin %s, advertise ip %s; data path %s; id %s)",
        config.egress, config.ingress, config.api, config.admin, sidecar.advertise_ip, native.describe(),
        sidecar.loop_guard.id,
    )  # fmt: skip
    await sidecar.run_until_stopped()
    log.info("stopping")
    await sidecar.stop()
    return 0


def run(
    config: Config,
    *,
    loader: Callable[[], Config] | None = None,
    config_path: str | None = None,
    origins: Mapping[str, str] | None = None,
) -> int:
    """Run the sidecar until SIGINT (stop now) or SIGTERM (drain, then stop); the exit code.

    ``origins`` maps config keys to the flags that set them (for the errors of start-up checks)."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # h2 and hpack log every frame and header at DEBUG: lines about regproxy's own traffic, not
    # regproxy, which would swamp a debug log and slow every Triple call.
    for name in ("h2", "hpack"):
        logging.getLogger(name).setLevel(logging.INFO)
    _install_uvloop()
    raise_open_files_limit(config.limits.max_connections)
    return asyncio.run(_main(config, loader, config_path, origins))
