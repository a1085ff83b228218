"""The Nacos adapter, over nacos-sdk-python's asyncio naming client (``v2.nacos``, gRPC).

Layout, as Dubbo 2.7/3.x writes it: service ``{category}:{interface}:{version}:{group}`` (empty
parts keep their colons), in the Nacos group from the registry URL (``DEFAULT_GROUP``; not the
Dubbo group), instance ``ip:port`` = this sidecar's advertise IP and ingress port, metadata = the
provider URL's parameters plus ``category``, ``protocol`` and ``path``.

Weights: the Nacos instance weight is what Nacos's console and API edit, so it wins. A Dubbo
``weight`` of W is registered as Nacos weight W/100 (Dubbo's default 100 is Nacos's default 1.0),
and a provider read from Nacos gets Dubbo weight round(nacos_weight * 100), whatever its metadata
says. Unhealthy or disabled instances are delivered with ``enabled=false`` so they are not routed.

Credentials (``?username=u&password=p``): the client logs in over HTTP (``POST
/nacos/v1/auth/users/login``, username and password as parameters) and sends the ``accessToken`` it
gets with each gRPC request. It never says a login was *refused*: a wrong password only shows later
as "get access token failed", the same as an unreachable server. So before starting the client, and
whenever a probe fails that way, this adapter logs in itself: a 401/403 answer is state
``auth_failed`` (not ready, the reason in the log and /readyz, never the password), retried every
``AUTH_RETRY_S`` in case the user is fixed on the server.

Dubbo's dynamic rules (the config center, regproxy.governance): a rule is the config whose dataId
is the rule id (``<key><suffix>``), group ``dubbo``, in the registry URL's namespace, read through
the SDK's config client (its own gRPC connection, made on first use with the naming client's
settings). A watch delivers the current content, then each change the SDK's listener reports, each
once (by md5, which is also the version shown); blank content is a deletion, as Dubbo's
``NacosDynamicConfiguration.getChangeType`` has it. The SDK can miss a push: across a quick server
restart (tests/test_nacos_config_peer.py), and one that comes while it fetches the previous change.
So every reconnection reads the watched rules again, and so does each change the SDK reports.

Dubbo 3 application-level discovery (registry/base.py's ``app_discovery`` half), as Dubbo 3.3's Nacos
modules keep it:

* An application instance is a Nacos instance of service ``<app>`` (``$`` written ``___``, as
  ``NacosNamingServiceWrapper.handleInnerSymbol`` does) in the registry URL's group, made as
  ``NacosNamingServiceUtils.toInstance`` makes it: ip and port = the instance address, metadata =
  ``AppInstance.metadata`` as it is (``dubbo.endpoints`` and ``dubbo.metadata-service.url-params`` are
  JSON text in a string), healthy, enabled, ephemeral, and neither weight nor instance id of its own
  (Nacos's defaults: 1.0, and ``ip#port#cluster#group@@service``).  Nacos keeps one entry per service
  and connection, so a second instance of one application from this sidecar goes with the first in
  one ``batchRegisterInstance``, as ``NacosNamingServiceWrapper.registerInstance`` does.  Read back,
  an instance is its address and metadata (``toServiceInstance``), and only those Dubbo's
  ``NacosServiceDiscovery.getInstances`` takes are delivered (``selectInstances(healthy=true)``:
  healthy, enabled, weight above 0); one Dubbo could not use (a port of 0, unreadable
  ``dubbo.endpoints``) is skipped, logged once and counted in ``unparseable``.  Registered instances
  are re-registered after a reconnection by the client's redo, as provider instances are.
* The service-name mapping is the config dataId ``<interface>``, group ``mapping``
  (``NacosMetadataReport.getServiceAppMapping``).  An application is added by compare-and-set
  (``MetadataServiceNameMapping.map`` over ``NacosMetadataReport.getConfigItem`` and
  ``registerServiceAppMapping``: casMd5 = the MD5 of the content read, "0" for none), again after a
  random pause under ``CAS_RETRY_WAIT_S`` while another writer came first, at most ``CAS_RETRIES``
  times more (Dubbo's defaults).  A watch is a config watch as a rule's; like
  ``NacosMetadataReport.MappingDataListener`` it ignores a deletion.
* An application's ``MetadataInfo`` at a revision (``storage-type=remote``) is the config dataId
  ``<app>``, group ``<revision>``, content its JSON (``NacosMetadataReport.publishAppMetadata`` and
  ``getAppMetadata``).

Connection: the client reconnects by itself and re-registers its instances and subscriptions (its
"redo" service); this adapter only reports the state and refuses new work while disconnected. An
outage is two lines of ours (registry/base.py): unreachable, with the cause the probe or the first
failed start saw, and back after N s; the attempts in between are logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from regproxy.governance.keys import RULE_GROUP
from regproxy.registry.base import (
    AUTH_FAILED,
    CONNECTED,
    CONNECTING,
    STOPPED,
    SUSPENDED,
    InstancesListener,
    MappingListener,
    ProvidersListener,
    Registry,
    RegistryError,
    RegistryUnavailable,
    RuleListener,
    error_text,
)
from regproxy.registry.instances import (
    AppInstance,
    mapping_apps,
    mapping_with,
    nacos_mapping_config,
    nacos_mapping_ticket,
)
from regproxy.registry.metadata_info import MetadataInfo, MetadataInfoError, dump_json, parse_json
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import ANY, PROVIDERS, DubboURL, Subscription

log = logging.getLogger(__name__)


DEFAULT_WEIGHT = 100
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)  # between attempts to create the client while unreachable
RELIST_S = 10.0  # how often wildcard subscriptions look for new versions or groups
# The client notices a dead or restarted server only at a keep-alive 5-10 s later, and after a short
# restart not at all (it counts the new server's "connection unregistered" as healthy). A cheap
# naming request every second finds out, and makes the client reconnect.
PROBE_S = 1.0
_META_KEYS = ("category", "protocol", "path")
AUTH_RETRY_S = 5.0  # while the server refuses our credentials, log in again this often
LOGIN_PATH = "/nacos/v1/auth/users/login"
SDK_LOGGERS = ("naming", "config", "nacos")  # where the SDK's clients add their file handlers
CLIENT_DISCONNECT = -401  # the SDK's NacosException code for a request while it has no connection
# A watched rule is read again when a push came while it was being read: at most this often.
SETTLE_READS = 3
# A mapping publish that lost its compare-and-set is tried again this many times, each after a random
# pause below CAS_RETRY_WAIT_S (MetadataServiceNameMapping: dubbo.metadata-report.cas-retry-times 10,
# cas-retry-wait-time 100 ms).
CAS_RETRIES = 10
CAS_RETRY_WAIT_S = 0.1
# The weight of an application instance: NacosNamingServiceUtils.toInstance sets none, so Nacos's
# Instance default.
APP_WEIGHT = 1.0


def service_name(category: str, interface: str, version: str, group: str) -> str:
    return f"{category}:{interface}:{version}:{group}"


def app_service_name(app: str) -> str:
    """The Nacos service of application ``app``'s instances: its name, ``$`` written ``___``
    (``NacosNamingServiceWrapper.handleInnerSymbol``, which every register and subscribe goes through)."""
    return app.replace("$", "___")


def to_nacos_weight(dubbo_weight: int) -> float:
    return max(0.0, dubbo_weight / DEFAULT_WEIGHT)


def from_nacos_weight(nacos_weight: float) -> int:
    return max(0, round(nacos_weight * DEFAULT_WEIGHT))


def config_namespace(namespace: str) -> str:
    """The namespace the config client is given.  Nacos 2.x reads and writes "public" as the
    default namespace "" (``NamespaceUtil.processNamespaceParameter``), but keys a listen by the
    tenant as the client sent it (``ConfigChangeBatchListenRequestHandler``, ``GroupKey2.getKey``):
    a client told "public" would listen where no change is ever pushed."""
    return "" if namespace.strip().lower() == "public" else namespace


def md5_hex(content: str) -> str:
    """A config's md5 as Nacos computes it (``MD5Utils.md5Hex(content, "UTF-8")``)."""
    return hashlib.md5(content.encode()).hexdigest()


def instance_metadata(url: DubboURL) -> dict[str, str]:
    meta = dict(url.params)
    meta.update(category=url.category, protocol=url.protocol, path=url.path)
    return meta


def instance_to_url(instance: Any, interface: str) -> DubboURL:
    """A Nacos instance as the provider URL Dubbo would have registered; ValueError if it is not one."""
    meta = {str(k): str(v) for k, v in (instance.metadata or {}).items()}
    protocol = meta.pop("protocol", "dubbo")
    path = meta.pop("path", interface)
    params = {k: v for k, v in meta.items() if k not in _META_KEYS}
    params.setdefault("interface", interface)
    params["category"] = meta.get("category", PROVIDERS)
    params["weight"] = str(from_nacos_weight(instance.weight))
    if not instance.healthy or not instance.enabled:
        params["enabled"] = "false"
    try:
        return DubboURL(
            protocol=protocol, host=instance.ip, port=int(instance.port), path=path, params=params
        )
    except ValueError as exc:
        raise ValueError(f"instance {instance.ip}:{instance.port} of {interface}: {exc}") from None


class _Watch:
    """The Nacos services one interface's subscriptions need, and the providers seen in each."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.subs: dict[Subscription, list[ProvidersListener]] = {}
        self.services: dict[str, list[DubboURL]] = {}  # Nacos service name -> providers
        self.relist: asyncio.Task[None] | None = None

    def providers(self) -> list[DubboURL]:
        return [u for urls in self.services.values() for u in urls]


ConfigKey = tuple[str, str]  # (dataId, group) in the registry URL's namespace


class _ConfigWatch:
    """One watched config (a rule, a mapping): its listeners, what they were last given, and the
    SDK's listener.  Listeners are called as rule listeners are; a mapping's are ``_MappingWatcher``s."""

    def __init__(self, data_id: str, group: str, what: str) -> None:
        self.data_id = data_id
        self.group = group
        self.what = what  # "rule <id>", "the mapping of <interface>": for errors and logs
        self.listeners: list[RuleListener] = []
        self.content: str | None = None  # as last delivered
        self.delivered = False  # the current content has been delivered once
        self.pushes = 0  # the SDK's calls so far: a read that overlapped one is read again
        self.sdk_listener: Any = None
        self.confirming: asyncio.Task[None] | None = None  # the read after the SDK's call

    @property
    def key(self) -> ConfigKey:
        return self.data_id, self.group

    def stop_confirming(self) -> None:
        if self.confirming is not None:
            self.confirming.cancel()


class _MappingWatcher:
    """A mapping listener as a config watch calls it: the applications, when they changed.

    Its first call, the content when watched, is what ``watch_mapping`` returns rather than a change;
    a deletion is ignored, as ``NacosMetadataReport.MappingDataListener.process`` ignores one (Dubbo
    never shrinks a mapping: one that went is an operator's doing, and the applications stay)."""

    def __init__(self, listener: MappingListener) -> None:
        self.listener = listener
        self.apps: tuple[str, ...] | None = None  # as last seen; None before the first call

    def __call__(self, data_id: str, content: str | None, source: str, version: str) -> None:
        if content is None and self.apps is not None:
            return
        apps = mapping_apps(content)
        if self.apps is None or apps == self.apps:
            self.apps = apps
            return
        self.apps = apps
        self.listener(apps)


class _AppWatch:
    """One watched application: its listeners, the callback given to the client, and the instances
    last delivered."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.service = app_service_name(app)
        self.listeners: list[InstancesListener] = []
        self.instances: list[AppInstance] = []
        self.callback: Callable[[list[Any]], Awaitable[None]] | None = None
        self.ready = False  # the first listing is in: pushes from now on are changes


async def close_config_service(service: Any, timeout_s: float) -> None:
    """Close the SDK's config client now, not in up to 5 s, and without a stray CancelledError.

    ``shutdown()`` awaits the SDK's listen task, which looks at its stop flag only after its 5 s wait
    for work: so the flag is set and the task cancelled first.  Where the cancellation lands outside
    that wait the task ends cancelled, and ``shutdown()``'s own await of it raises CancelledError
    although nobody cancelled the caller: that one is swallowed, a real cancellation of the caller
    is not (tests/nacos_sdk.py closes its clients with this too)."""
    proxy = service.grpc_client_proxy
    proxy.stop_event.set()
    proxy.listen_task.cancel()
    await asyncio.wait([proxy.listen_task], timeout=timeout_s)
    try:
        await asyncio.wait_for(service.shutdown(), timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


class NacosRegistry(Registry):
    config_center = True
    app_discovery = True

    def __init__(self, url: RegistryURL, *, op_timeout_s: float = 5.0) -> None:
        if url.scheme != "nacos":
            raise ValueError(f"not a nacos registry URL: {url}")
        super().__init__(str(url), op_timeout_s=op_timeout_s)
        self.url = url
        self.group = url.group or "DEFAULT_GROUP"
        self._client: Any = None
        self._starter: asyncio.Task[None] | None = None
        self._workdir: str | None = None
        self._registered: dict[tuple[str, str, int], DubboURL] = {}
        self._bad_instances: set[str] = set()  # instances that are no provider URL, reported once
        self._watches: dict[str, _Watch] = {}
        self._callbacks: dict[str, Any] = {}  # Nacos service name -> the callback given to the client
        self._prober: asyncio.Task[None] | None = None
        self._config: Any = None  # the SDK's config client, made on first use (_config_service)
        self._config_lock = asyncio.Lock()  # concurrent first uses make one client
        self._configs_lock = asyncio.Lock()  # config watches are added and removed one at a time
        self._configs: dict[ConfigKey, _ConfigWatch] = {}  # watched rules and mappings
        self._rereading: asyncio.Task[None] | None = None
        # Application-level discovery: this sidecar's instances by application and address, changed
        # one at a time (an application's are registered together), and the watched applications.
        self._app_registered: dict[str, dict[tuple[str, int], AppInstance]] = {}
        self._app_lock = asyncio.Lock()
        self._app_watches: dict[str, _AppWatch] = {}
        self._app_watches_lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._set_state(CONNECTING)
        self._starter = asyncio.get_running_loop().create_task(self._connect())

    def _client_config(self, namespace: str) -> Any:
        """The SDK settings of both clients, naming and config: servers, credentials, and the
        private directory for the logs and cache the SDK writes."""
        from v2.nacos import ClientConfigBuilder

        assert self._workdir is not None, "made by _connect"
        builder = (
            ClientConfigBuilder()
            .server_address(self.url.hosts_string)
            .namespace_id(namespace)
            .log_dir(self._workdir)
            .cache_dir(self._workdir)
            .log_level(logging.WARNING)
            .load_cache_at_start(False)  # stale lists or rules from disk must not come into force
        )
        if self.url.username:
            builder = builder.username(self.url.username).password(self.url.password or "")
        return builder.build()

    async def _connect(self) -> None:
        from v2.nacos import NacosNamingService

        # The client writes logs and a cache of its own; keep them out of the working directory.
        self._workdir = tempfile.mkdtemp(prefix="regproxy-nacos-")
        if self.url.username:
            while (refused := await self._login_refused()) is not None:
                self._auth_refused(refused)
                await asyncio.sleep(AUTH_RETRY_S)
            self.auth_error = ""
        config = self._client_config(self.url.namespace)
        # Deliver an empty list too: the last provider going away must reach the routing table.
        config.set_update_cache_when_empty(True)
        attempt = 0
        while True:
            client = NacosNamingService(config)
            try:
                await client.grpc_client_proxy.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await client.shutdown()  # stop the tasks the failed start left running
                self._drop_client_log("naming")  # each client adds a file handler to a shared logger
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                attempt += 1
                # The first failure is the one WARNING of this outage; the retries are no news.
                self.connect_error = f"cannot connect: {error_text(exc)}"
                self._went_unreachable(self.connect_error)
                log.debug("registry %s: cannot connect (%s); retrying in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            break
        self._client = client
        await client.grpc_client_proxy.rpc_client.register_connection_listener(_StateBridge(self))
        self._set_state(CONNECTED)
        self._prober = asyncio.get_running_loop().create_task(self._probe())

    async def _login_refused(self) -> str | None:
        """Log in as the client would; why the server refused our credentials, or None.

        Anything but a refusal (unreachable, a server without auth, a 5xx) is None: the client's
        own connection handling deals with those.
        """
        import aiohttp

        form = {"username": self.url.username or "", "password": self.url.password or ""}
        timeout = aiohttp.ClientTimeout(total=self._op_timeout_s)
        for host in self.url.hosts:
            url = f"http://{host}{LOGIN_PATH}"
            try:
                async with (
                    aiohttp.ClientSession(timeout=timeout) as http,
                    http.post(url, data=form) as resp,
                ):
                    if resp.status in (401, 403):
                        text = (await resp.text())[:200].strip()
                        return f"HTTP {resp.status} {text!r}" if text else f"HTTP {resp.status}"
                    if resp.status == 200:
                        return None
            except (aiohttp.ClientError, TimeoutError):
                continue
        return None

    def _auth_refused(self, reason: str) -> None:
        message = (
            f"registry {self.name}: Nacos login refused for user {self.url.username!r} ({reason}): "
            "wrong username or password"
        )
        if self.auth_error != message:
            log.error("%s; retrying every %g s", message, AUTH_RETRY_S)
        self.auth_error = message
        self._set_state(AUTH_FAILED)

    async def _probe(self) -> None:
        from v2.nacos import ListServiceParam

        param = ListServiceParam(namespace_id=self.url.namespace, group_name=self.group, page_size=1)
        while True:
            # While refused, log in no more often than AUTH_RETRY_S.
            await asyncio.sleep(AUTH_RETRY_S if self._state == AUTH_FAILED else PROBE_S)
            try:
                # Not wait_for: in 3.11 it can swallow a cancellation that lands as the call ends, and
                # this loop would then outlive stop(), which waits for it.
                async with asyncio.timeout(self._op_timeout_s):
                    await self._client.list_services(param)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.url.username and "access token" in str(exc):
                    refused = await self._login_refused()
                    if refused is not None:
                        self._auth_refused(refused)
                        continue
                if self._state == CONNECTED:  # the cause for the unreachable line
                    self.connect_error = error_text(exc)
                self._connection_changed(False)
            else:
                self.auth_error = ""
                self._connection_changed(True)

    async def stop(self) -> None:
        for task in (self._starter, self._prober, self._rereading):
            if task is not None and not task.done():
                task.cancel()
                # Bounded: a task whose cancellation was swallowed below it (the SDK's awaits) must
                # not keep a sidecar from stopping; it is cancelled again and left to end on its own.
                await asyncio.wait([task], timeout=self._op_timeout_s)
                if not task.done():
                    log.warning("registry %s: %s did not stop when cancelled", self.name, task.get_name())
                    task.cancel()
        for watch in self._watches.values():
            if watch.relist is not None:
                watch.relist.cancel()
        for config in self._configs.values():
            config.stop_confirming()
        self._configs.clear()
        self._app_watches.clear()
        if self._config is not None:
            await self._close_config(self._config)
            self._config = None
        if self._client is not None:
            if self.connected:
                for url in list(self._registered.values()):
                    with contextlib.suppress(Exception):
                        await self._deregister(url)
                for registered in list(self._app_registered.values()):
                    with contextlib.suppress(Exception):
                        await self._deregister_app(next(iter(registered.values())))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.shutdown(), self._op_timeout_s)
            self._client = None
        self._drop_client_log(*SDK_LOGGERS)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._set_state(STOPPED)

    def _drop_client_log(self, *loggers: str) -> None:
        if self._workdir is None:
            return
        for name in loggers:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(
                    self._workdir
                ):
                    logger.removeHandler(handler)
                    handler.close()

    def _connection_changed(self, connected: bool) -> None:
        if self._state == STOPPED or connected == (self._state == CONNECTED):
            return
        if connected and self.auth_error:
            return  # the transport is up, but the server refuses our credentials: still not ready
        self._set_state(CONNECTED if connected else SUSPENDED)
        if connected:
            # The client re-registers and re-subscribes only every 30 s on its own: now, instead.
            redo = self._client.grpc_client_proxy.redo_service
            task = asyncio.get_running_loop().create_task(redo.start_redo_task())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            if self._configs:
                self._reread_configs_soon()

    def _unreachable(self, exc: Exception) -> str | None:
        # The client notices a dead server only at its next health check (seconds later);
        # a call that could not reach it is "unavailable" (503), not a refusal (502).
        if (
            "UNAVAILABLE" in str(exc)
            or getattr(exc, "error_code", None) == CLIENT_DISCONNECT
            or (self._client is not None and not self._client_running())
        ):
            return "server unreachable"
        return None

    def _client_running(self) -> bool:
        try:
            return bool(self._client.grpc_client_proxy.server_health())
        except Exception:
            return False

    # --- register -----------------------------------------------------------------------------

    def _service(self, url: DubboURL) -> str:
        return service_name(url.category, url.interface, url.version, url.group)

    async def register(self, url: DubboURL) -> None:
        from v2.nacos import RegisterInstanceParam

        self._require_connected(f"register {url.interface}")
        name = self._service(url)
        param = RegisterInstanceParam(
            service_name=name,
            group_name=self.group,
            ip=url.host,
            port=url.port,
            weight=to_nacos_weight(url.weight),
            metadata=instance_metadata(url),
            ephemeral=True,
        )
        ok = await self._call(f"register {name}", self._client.register_instance(param))
        if ok is False:
            raise RegistryError(f"registry {self.name}: register {name} refused")
        self._registered[(name, url.host, url.port)] = url

    async def unregister(self, url: DubboURL) -> None:
        # Never raises: an instance of ours that Nacos still has goes with our connection anyway.  The
        # client is told even while disconnected: it registers what it holds again once connected,
        # and a provider unpublished during an outage would come back (as unregister_instance).
        self._registered.pop((self._service(url), url.host, url.port), None)
        if self._client is None:
            return
        try:
            await self._deregister(url)
        except RegistryError as exc:
            log.warning("%s", exc)

    async def _deregister(self, url: DubboURL) -> None:
        from v2.nacos import DeregisterInstanceParam

        name = self._service(url)
        param = DeregisterInstanceParam(
            service_name=name, group_name=self.group, ip=url.host, port=url.port, ephemeral=True
        )
        await self._call(f"deregister {name}", self._client.deregister_instance(param))

    # --- subscribe ----------------------------------------------------------------------------

    async def subscribe(self, sub: Subscription, listener: ProvidersListener) -> list[DubboURL]:
        self._require_connected(f"subscribe {sub.interface}")
        watch = self._watches.get(sub.interface)
        if watch is None:
            watch = self._watches[sub.interface] = _Watch(sub.interface)
        watch.subs.setdefault(sub, []).append(listener)
        try:
            await self._sync_services(watch)
        except RegistryError:
            await self.unsubscribe(sub, listener)
            raise
        if self._wildcard(sub) and watch.relist is None:
            watch.relist = asyncio.get_running_loop().create_task(self._relist(watch))
        return watch.providers()

    async def unsubscribe(self, sub: Subscription, listener: ProvidersListener) -> None:
        watch = self._watches.get(sub.interface)
        if watch is None:
            return
        listeners = watch.subs.get(sub, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            watch.subs.pop(sub, None)
        if not watch.subs:
            if watch.relist is not None:
                watch.relist.cancel()
            del self._watches[sub.interface]
            for name in list(watch.services):
                await self._unsubscribe_service(name)
        elif self.connected:
            with contextlib.suppress(RegistryError):
                await self._sync_services(watch)

    @staticmethod
    def _wildcard(sub: Subscription) -> bool:
        return sub.version == ANY or sub.group == ANY or "," in sub.group

    async def _wanted(self, watch: _Watch) -> set[str]:
        """The Nacos service names the interface's subscriptions cover."""
        names: set[str] = set()
        listed: list[str] | None = None
        for sub in watch.subs:
            if not self._wildcard(sub):
                names.add(service_name(PROVIDERS, sub.interface, sub.version, sub.group))
                continue
            if listed is None:
                listed = await self._list_services(f"{PROVIDERS}:{watch.interface}:")
            names.update(listed)  # filtered by Dubbo's rules later, per subscription
        return names

    async def _list_services(self, prefix: str) -> list[str]:
        from v2.nacos import ListServiceParam

        found: list[str] = []
        page = 1
        while True:
            param = ListServiceParam(
                namespace_id=self.url.namespace, group_name=self.group, page_no=page, page_size=500
            )
            result = await self._call("list services", self._client.list_services(param))
            found += [s for s in result.services if s.startswith(prefix)]
            if len(result.services) < 500 or page * 500 >= result.count:
                return found
            page += 1

    async def _sync_services(self, watch: _Watch) -> None:
        wanted = await self._wanted(watch)
        for name in wanted - set(watch.services):
            await self._subscribe_service(watch, name)
        for name in set(watch.services) - wanted:
            await self._unsubscribe_service(name)
            watch.services.pop(name, None)

    async def _subscribe_service(self, watch: _Watch, name: str) -> None:
        async def changed(instances: list[Any]) -> None:
            self._deliver(watch, name, instances)

        self._callbacks[name] = changed
        instances = await self._subscribe_nacos(name, changed)
        watch.services[name] = self._urls(watch.interface, instances)

    async def _unsubscribe_service(self, name: str) -> None:
        callback = self._callbacks.pop(name, None)
        if callback is not None:
            await self._unsubscribe_nacos(name, callback)

    async def _subscribe_nacos(
        self, name: str, callback: Callable[[list[Any]], Awaitable[None]]
    ) -> list[Any]:
        """Subscribe ``callback`` to Nacos service ``name`` in the registry's group (the client calls
        it with the whole instance list on each change, the first one too) and list the instances now."""
        from v2.nacos import ListInstanceParam, SubscribeServiceParam

        param = SubscribeServiceParam(service_name=name, group_name=self.group, subscribe_callback=callback)
        await self._call(f"subscribe {name}", self._client.subscribe(param))
        listing = ListInstanceParam(
            service_name=name, group_name=self.group, subscribe=True, healthy_only=None
        )
        instances: list[Any] = await self._call(f"list {name}", self._client.list_instances(listing))
        return instances

    async def _unsubscribe_nacos(self, name: str, callback: Callable[[list[Any]], Awaitable[None]]) -> None:
        from v2.nacos import SubscribeServiceParam

        if self._client is None or not self.connected:
            return
        param = SubscribeServiceParam(service_name=name, group_name=self.group, subscribe_callback=callback)
        with contextlib.suppress(RegistryError):
            await self._call(f"unsubscribe {name}", self._client.unsubscribe(param))

    def _urls(self, interface: str, instances: list[Any] | None) -> list[DubboURL]:
        urls: list[DubboURL] = []
        for instance in instances or ():
            try:
                urls.append(instance_to_url(instance, interface))
            except ValueError as exc:
                self._skip_unparseable(str(exc))
        return urls

    def _skip_unparseable(self, what: str) -> None:
        """An instance that is no provider or application instance, named by ``what``: every push
        repeats the whole list, so it is said and counted once (bounded)."""
        if what in self._bad_instances:
            return
        if len(self._bad_instances) >= 4096:
            self._bad_instances.clear()
        self._bad_instances.add(what)
        self.unparseable += 1
        log.warning("registry %s: skipping %s", self.name, what)

    def _deliver(self, watch: _Watch, name: str, instances: list[Any]) -> None:
        """A pushed list, delivered as it is: an empty one just after a reconnect (re-subscriptions
        can answer before providers have re-registered) is held back by discovery
        (regproxy.discovery.protection), as every registry's."""
        if self._watches.get(watch.interface) is not watch or name not in self._callbacks:
            return  # a late push for a subscription that is gone
        watch.services[name] = self._urls(watch.interface, instances)
        providers = watch.providers()
        for listeners in list(watch.subs.values()):
            for listener in list(listeners):
                try:
                    listener(list(providers))
                except Exception:
                    log.exception("registry %s: providers listener failed", self.name)

    async def _relist(self, watch: _Watch) -> None:
        """Wildcard subscriptions: pick up versions or groups registered after they started."""
        while True:
            await asyncio.sleep(RELIST_S)
            if not self.connected:
                continue
            before = set(watch.services)
            try:
                await self._sync_services(watch)
            except RegistryError as exc:
                log.warning("%s", exc)
                continue
            if set(watch.services) != before:
                self._deliver_all(watch)

    def _deliver_all(self, watch: _Watch) -> None:
        providers = watch.providers()
        for listeners in list(watch.subs.values()):
            for listener in list(listeners):
                listener(list(providers))

    # --- the config center: Dubbo's dynamic rules, and the mappings --------------------------------

    def _config_source(self, data_id: str, group: str) -> str:
        namespace = config_namespace(self.url.namespace)
        where = f"nacos dataId {data_id} group {group}"
        return f"{where} namespace {namespace}" if namespace else where

    def _rule_source(self, rule_id: str) -> str:
        return self._config_source(rule_id, RULE_GROUP)

    async def _config_service(self) -> Any:
        """The SDK's config client, connected on first use; RegistryError when it cannot be."""
        from v2.nacos import NacosConfigService

        async with self._config_lock:
            if self._config is not None:
                return self._config
            config = self._client_config(config_namespace(self.url.namespace))
            # A rule that cannot be read is an error, not the SDK's copy on disk of an earlier read.
            config.disable_use_config_cache = True
            service = NacosConfigService(config)
            try:
                await self._call("connect the config client", service.grpc_client_proxy.start())
            except BaseException:
                await self._close_config(service)
                self._drop_client_log("config")
                raise
            self._config = service
            return service

    async def _close_config(self, service: Any) -> None:
        try:
            await close_config_service(service, self._op_timeout_s)
        except Exception as exc:
            log.debug("registry %s: closing the config client: %s", self.name, exc)

    async def _get_config(self, data_id: str, group: str, what: str) -> str | None:
        """The config's content now, None when there is none (Nacos holds no blank content: the
        SDK's "" is a config that does not exist).  ``what`` names the read in errors."""
        from v2.nacos import ConfigParam

        service = await self._config_service()
        param = ConfigParam(data_id=data_id, group=group)
        text = await self._call(what, service.get_config(param))
        return text if text and text.strip() else None

    async def _get_rule(self, rule_id: str) -> str | None:
        return await self._get_config(rule_id, RULE_GROUP, f"read rule {rule_id}")

    async def _read_settled(self, watch: _ConfigWatch) -> str | None:
        """Read a watched config; again when a push came meanwhile, which may be newer than the read."""
        for _ in range(SETTLE_READS):
            pushes = watch.pushes
            text = await self._get_config(watch.data_id, watch.group, f"read {watch.what}")
            if watch.pushes == pushes:
                break
        return text

    async def watch_rule(self, rule_id: str, listener: RuleListener) -> None:
        self._require_connected(f"watch rule {rule_id}")
        await self._watch_config(rule_id, RULE_GROUP, f"rule {rule_id}", listener)

    async def _watch_config(self, data_id: str, group: str, what: str, listener: RuleListener) -> None:
        """Add ``listener`` to the watch of a config, made if there is none; it is called with the
        current content before this returns, then on each change (``watch_rule``'s contract)."""
        async with self._configs_lock:
            watch = self._configs.get((data_id, group))
            if watch is not None:
                watch.listeners.append(listener)
                self._call_config_listener(watch, listener)
                return
            service = await self._config_service()
            watch = self._configs[data_id, group] = _ConfigWatch(data_id, group, what)
            watch.listeners.append(listener)

            async def pushed(namespace: str, group: str, data_id: str, content: str) -> None:
                self._config_pushed(watch, content)

            watch.sdk_listener = pushed
            try:
                await self._call(f"watch {what}", service.add_listener(data_id, group, pushed))
                # add_listener sends nothing: the SDK's listen task sends listens when it wakes, every
                # 5 s.  Woken now, as the SDK's own connect does, changes are pushed from now on.
                service.grpc_client_proxy.execute_config_listen_channel.put_nowait(None)
                text = await self._read_settled(watch)
            except BaseException:  # a cancelled watch too: no half-made watch stays
                del self._configs[data_id, group]
                await service.remove_listener(data_id, group, pushed)
                raise
            self._offer_config(watch, text)

    async def unwatch_rule(self, rule_id: str, listener: RuleListener) -> None:
        await self._unwatch_config((rule_id, RULE_GROUP), listener)

    async def _unwatch_config(self, key: ConfigKey, listener: RuleListener) -> None:
        async with self._configs_lock:
            watch = self._configs.get(key)
            if watch is None:
                return
            if listener in watch.listeners:
                watch.listeners.remove(listener)
            if watch.listeners:
                return
            del self._configs[key]
            watch.stop_confirming()
            if self._config is not None:
                # Local to the SDK: it keeps listening on the server, and drops what is pushed.
                await self._config.remove_listener(watch.data_id, watch.group, watch.sdk_listener)

    def _config_pushed(self, watch: _ConfigWatch, content: str) -> None:
        """The SDK's listener (on the loop, from its listen task): the content after a change."""
        watch.pushes += 1
        if self._configs.get(watch.key) is not watch or not watch.delivered:
            return  # gone; or the first read is under way, and reads again after this push
        if not self.connected:
            return  # nothing while unreachable: the configs are read again once it is back
        self._offer_config(watch, content if content.strip() else None)
        if watch.confirming is None or watch.confirming.done():  # a running one reads again itself
            watch.confirming = asyncio.get_running_loop().create_task(self._confirm_config(watch))

    async def _confirm_config(self, watch: _ConfigWatch) -> None:
        """Read the config after the SDK's call, and deliver it if it is newer.  The SDK loses a
        change pushed while it fetches the previous one: its fetch then marks the config as in step
        with the server (``ConfigSubscribeManager.update_subscribe_cache``), and it does not listen
        for it again until its full sync every 5 minutes.  The server had the newer content before
        it pushed, so this read, after that fetch, gets it."""
        try:
            text = await self._read_settled(watch)
        except RegistryError as exc:  # unreachable now: the configs are read again once it is back
            log.debug("registry %s: reading %s after a change: %s", self.name, watch.what, exc)
            return
        if self._configs.get(watch.key) is watch:
            self._offer_config(watch, text)

    def _offer_config(self, watch: _ConfigWatch, text: str | None) -> None:
        """Deliver ``text`` to the watch's listeners unless it is what they were last given."""
        if watch.delivered and text == watch.content:
            return
        watch.content, watch.delivered = text, True
        for listener in list(watch.listeners):
            self._call_config_listener(watch, listener)

    def _call_config_listener(self, watch: _ConfigWatch, listener: RuleListener) -> None:
        version = md5_hex(watch.content) if watch.content is not None else ""
        try:
            listener(watch.data_id, watch.content, self._config_source(watch.data_id, watch.group), version)
        except Exception:
            log.exception("registry %s: listener for %s failed", self.name, watch.what)

    def _reread_configs_soon(self) -> None:
        if self._rereading is not None:
            self._rereading.cancel()
        self._rereading = asyncio.get_running_loop().create_task(self._reread_configs())

    async def _reread_configs(self) -> None:
        """After a reconnection: read every watched config again and deliver what changed.  The SDK
        can miss a push across a quick server restart (tests/test_nacos_config_peer.py), and this
        read also makes its config client notice and listen again.  A config whose read fails (the
        config client may still be reconnecting) is tried again while the registry stays connected;
        the rules and mappings in force stay meanwhile."""
        pending = list(self._configs)
        attempt = 0
        last_error: RegistryError | None = None
        while pending and self.connected:
            failed: list[ConfigKey] = []
            for key in pending:
                watch = self._configs.get(key)
                if watch is None:
                    continue
                try:
                    text = await self._read_settled(watch)
                except RegistryError as exc:
                    failed.append(key)
                    last_error = exc
                    continue
                if self._configs.get(key) is watch:
                    self._offer_config(watch, text)
            pending = failed
            if not pending:
                return
            if attempt == len(RETRY_DELAYS_S):  # said once; the retries go on quietly
                log.warning(
                    "registry %s: cannot read %s again after reconnecting (%s); retrying",
                    self.name,
                    ", ".join(self._configs[k].what for k in pending if k in self._configs),
                    last_error,
                )
            await asyncio.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
            attempt += 1

    async def read_rule(self, rule_id: str) -> tuple[str | None, str, str]:
        self._require_connected(f"read rule {rule_id}")
        text = await self._get_rule(rule_id)
        return text, self._rule_source(rule_id), md5_hex(text) if text is not None else ""

    async def write_rule(self, rule_id: str, text: str) -> str:
        from v2.nacos import ConfigParam

        where = self._rule_source(rule_id)
        if not text.strip():
            raise RegistryError(
                f"registry {self.name}: cannot write blank content to {where} (Nacos holds none): "
                "delete the rule instead"
            )
        self._require_connected(f"write rule {rule_id}")
        service = await self._config_service()
        # Dubbo's rules are YAML: so typed, the Nacos console shows them as such.
        param = ConfigParam(data_id=rule_id, group=RULE_GROUP, content=text, type="yaml")
        if not await self._call(f"write rule {rule_id}", service.publish_config(param)):
            raise RegistryError(f"registry {self.name}: write rule {rule_id} refused")
        return where

    async def delete_rule(self, rule_id: str) -> bool:
        from v2.nacos import ConfigParam

        self._require_connected(f"delete rule {rule_id}")
        # Nacos answers a removal of nothing with success too: whether there was one is read first.
        if await self._get_rule(rule_id) is None:
            return False
        service = await self._config_service()
        param = ConfigParam(data_id=rule_id, group=RULE_GROUP)
        if not await self._call(f"delete rule {rule_id}", service.remove_config(param)):
            raise RegistryError(f"registry {self.name}: delete rule {rule_id} refused")
        return True

    # --- application-level discovery: the mapping -------------------------------------------------

    async def watch_mapping(self, interface: str, listener: MappingListener) -> tuple[str, ...]:
        what = f"the mapping of {interface}"
        self._require_connected(f"watch {what}")
        data_id, group = nacos_mapping_config(interface)
        watcher = _MappingWatcher(listener)
        await self._watch_config(data_id, group, what, watcher)
        assert watcher.apps is not None, "a config watch calls its listener before it returns"
        return watcher.apps

    async def unwatch_mapping(self, interface: str, listener: MappingListener) -> None:
        key = nacos_mapping_config(interface)
        watch = self._configs.get(key)
        watchers = watch.listeners if watch is not None else []
        for watcher in watchers:
            if isinstance(watcher, _MappingWatcher) and watcher.listener == listener:
                await self._unwatch_config(key, watcher)
                return

    async def add_mapping(self, interface: str, app: str) -> None:
        from v2.nacos import ConfigParam

        data_id, group = nacos_mapping_config(interface)
        what = f"add {app} to the mapping of {interface}"
        self._require_connected(what)
        read = f"read the mapping of {interface}"
        service = await self._config_service()
        content = await self._get_config(data_id, group, read)
        for _ in range(1 + CAS_RETRIES):
            try:
                wanted = mapping_with(content, app)
            except ValueError as exc:
                raise RegistryError(f"registry {self.name}: cannot {what}: {exc}") from None
            if wanted == content:
                return  # there already: Dubbo writes nothing
            ticket = nacos_mapping_ticket(content)
            param = ConfigParam(data_id=data_id, group=group, content=wanted, cas_md5=ticket)
            try:
                if await self._call(what, service.publish_config(param)):
                    return
                failure = RegistryError(f"registry {self.name}: {what} refused")
            except RegistryUnavailable:
                raise
            except RegistryError as exc:  # Nacos answers a lost compare-and-set with a failure too
                failure = exc
            content = await self._get_config(data_id, group, read)
            if nacos_mapping_ticket(content) == ticket:
                raise failure  # nobody wrote meanwhile: not a lost race but a refusal
            log.debug("registry %s: %s: another writer came first; trying again", self.name, what)
            await asyncio.sleep(random.uniform(0, CAS_RETRY_WAIT_S))
        raise RegistryError(
            f"registry {self.name}: cannot {what}: it changed under each of {1 + CAS_RETRIES} attempts"
        )

    # --- application-level discovery: instances ---------------------------------------------------

    def _app_param(self, instance: AppInstance) -> Any:
        from v2.nacos import RegisterInstanceParam

        return RegisterInstanceParam(
            service_name=app_service_name(instance.app),
            group_name=self.group,
            ip=instance.host,
            port=instance.port,
            weight=APP_WEIGHT,
            metadata=dict(instance.metadata),
            ephemeral=True,
            healthy=True,
            enabled=True,
        )

    async def _publish_app(self, instances: list[AppInstance]) -> None:
        """Make this connection's entry for the instances' application hold exactly ``instances``
        (one application, at least one): Nacos keeps one entry per service and connection, which a
        registration replaces, so several go as one batch (NacosNamingServiceWrapper.registerInstance).
        The client remembers the entry, and registers it again after a reconnection."""
        from v2.nacos import BatchRegisterInstanceParam

        app = instances[0].app
        what = f"register the instances of {app}"
        if len(instances) == 1:
            ok = await self._call(what, self._client.register_instance(self._app_param(instances[0])))
        else:
            batch = BatchRegisterInstanceParam(
                service_name=app_service_name(app),
                group_name=self.group,
                instances=[self._app_param(i) for i in instances],
            )
            ok = await self._call(what, self._client.batch_register_instances(batch))
        if ok is False:
            raise RegistryError(f"registry {self.name}: {what} refused")

    async def _deregister_app(self, instance: AppInstance) -> None:
        """Remove this connection's entry for ``instance``'s application (all of its instances)."""
        from v2.nacos import DeregisterInstanceParam

        param = DeregisterInstanceParam(
            service_name=app_service_name(instance.app),
            group_name=self.group,
            ip=instance.host,
            port=instance.port,
            ephemeral=True,
        )
        await self._call(
            f"deregister the instances of {instance.app}", self._client.deregister_instance(param)
        )

    async def _set_app_instances(
        self, app: str, instances: dict[tuple[str, int], AppInstance], gone: AppInstance
    ) -> None:
        if instances:
            await self._publish_app(list(instances.values()))
        else:
            await self._deregister_app(gone)

    async def register_instance(self, instance: AppInstance) -> None:
        self._require_connected(f"register an instance of {instance.app}")
        async with self._app_lock:
            before = self._app_registered.get(instance.app, {})
            after = {**before, (instance.host, instance.port): instance}
            try:
                await self._publish_app(list(after.values()))
            except RegistryError:
                # The client keeps what it was last asked to hold, and would register it again after
                # each reconnection: it is told what stands instead (best effort).
                with contextlib.suppress(RegistryError):
                    await self._set_app_instances(instance.app, before, instance)
                raise
            self._app_registered[instance.app] = after

    async def unregister_instance(self, instance: AppInstance) -> None:
        # Never raises, as unregister: an instance of ours that Nacos still has goes with our
        # connection anyway.  The client is told even while disconnected: it would register the
        # instance again once connected otherwise.
        async with self._app_lock:
            before = self._app_registered.get(instance.app, {})
            address = (instance.host, instance.port)
            if address not in before:
                return
            after = {k: v for k, v in before.items() if k != address}
            if after:
                self._app_registered[instance.app] = after
            else:
                del self._app_registered[instance.app]
            if self._client is None:
                return
            try:
                await self._set_app_instances(instance.app, after, before[address])
            except RegistryError as exc:
                log.warning("%s", exc)

    async def watch_instances(self, app: str, listener: InstancesListener) -> list[AppInstance]:
        self._require_connected(f"watch the instances of {app}")
        async with self._app_watches_lock:
            watch = self._app_watches.get(app)
            if watch is not None:
                watch.listeners.append(listener)
                return list(watch.instances)
            watch = self._app_watches[app] = _AppWatch(app)
            watch.listeners.append(listener)

            async def changed(instances: list[Any]) -> None:
                self._instances_pushed(watch, instances)

            watch.callback = changed
            try:
                found = await self._subscribe_nacos(watch.service, changed)
            except BaseException:
                del self._app_watches[app]
                await self._unsubscribe_nacos(watch.service, changed)
                raise
            watch.instances, watch.ready = self._app_instances(app, found), True
            return list(watch.instances)

    async def unwatch_instances(self, app: str, listener: InstancesListener) -> None:
        async with self._app_watches_lock:
            watch = self._app_watches.get(app)
            if watch is None:
                return
            if listener in watch.listeners:
                watch.listeners.remove(listener)
            if watch.listeners:
                return
            del self._app_watches[app]
            if watch.callback is not None:
                await self._unsubscribe_nacos(watch.service, watch.callback)

    def _instances_pushed(self, watch: _AppWatch, raw: list[Any]) -> None:
        """The client's callback: the application's whole instance list after a change (after a
        reconnection too, when the client's re-subscription finds one)."""
        if self._app_watches.get(watch.app) is not watch or not watch.ready:
            return  # gone; or being made, and its listing reads the client's cache this push updated
        instances = self._app_instances(watch.app, raw)
        if instances == watch.instances:
            return  # a change to instances Dubbo would not take (an unhealthy one's metadata, say)
        watch.instances = instances
        for listener in list(watch.listeners):
            try:
                listener(list(instances))
            except Exception:
                log.exception("registry %s: instances listener for %s failed", self.name, watch.app)

    def _app_instances(self, app: str, raw: list[Any] | None) -> list[AppInstance]:
        """The instances of ``app`` Dubbo would take, by address: NacosServiceDiscovery.getInstances
        asks ``selectInstances(healthy=true)``, which leaves out unhealthy and disabled instances and
        those of weight 0; toServiceInstance keeps the address and the metadata."""
        found: list[AppInstance] = []
        for instance in raw or ():
            if not (instance.healthy and instance.enabled and instance.weight > 0):
                continue
            try:
                metadata = dict(instance.metadata or {})
                found.append(AppInstance(app=app, host=instance.ip, port=instance.port, metadata=metadata))
            except ValueError as exc:  # InstanceError: what Dubbo would refuse too
                self._skip_unparseable(f"instance {instance.ip}:{instance.port} of application {app}: {exc}")
        return sorted(found, key=lambda i: (i.host, i.port))

    # --- application-level discovery: the metadata report -------------------------------------------

    async def read_metadata(self, app: str, revision: str) -> MetadataInfo | None:
        what = f"read the metadata of {app} revision {revision}"
        self._require_connected(what)
        text = await self._get_config(app, revision, what)
        if text is None:
            return None
        try:
            return parse_json(text)
        except MetadataInfoError as exc:
            raise RegistryError(
                f"registry {self.name}: {self._config_source(app, revision)}: {exc}"
            ) from None

    async def write_metadata(self, info: MetadataInfo) -> None:
        from v2.nacos import ConfigParam

        what = f"write the metadata of {info.app} revision {info.revision}"
        if not info.app or not info.revision:
            raise RegistryError(
                f"registry {self.name}: cannot {what}: it needs an application and a revision"
            )
        self._require_connected(what)
        service = await self._config_service()
        # No type, as NacosMetadataReport.publishAppMetadata writes it (Nacos stores "text").
        param = ConfigParam(data_id=info.app, group=info.revision, content=dump_json(info))
        if not await self._call(what, service.publish_config(param)):
            raise RegistryError(f"registry {self.name}: {what} refused")

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "namespace": self.url.namespace,
            "group": self.group,
            "registered": [str(u) for u in self._registered.values()],
            "watched": {i: sorted(w.services) for i, w in self._watches.items()},
            "rules": sorted(d for d, g in self._configs if g == RULE_GROUP),
            "instances": {
                app: sorted(f"{host}:{port}" for host, port in registered)
                for app, registered in self._app_registered.items()
            },
            "apps": sorted(self._app_watches),
            "mappings": sorted(d for d, g in self._configs if g != RULE_GROUP),
        }


class _StateBridge:
    """The client's connection events, turned into this adapter's states."""

    def __init__(self, registry: NacosRegistry) -> None:
        self._registry = registry

    async def on_connected(self) -> None:
        self._registry._connection_changed(True)

    async def on_disconnect(self) -> None:
        self._registry._connection_changed(False)
