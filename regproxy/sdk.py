"""A small client for regproxy's pub/sub HTTP API, for applications that run beside a sidecar.

A provider publishes its service and a consumer subscribes, then sends its Dubbo calls to the
sidecar's egress (``127.0.0.1:20881`` by default)::

    from regproxy.sdk import RegproxyClient

    rp = RegproxyClient()                                  # http://127.0.0.1:22222
    url = rp.publish("com.x.Svc", port=20880, methods=["a", "b"], version="1.0.0")
    found = rp.subscribe("com.x.Svc", version="1.0.0")     # SubscribeResult(cluster, providers)

``RegproxyClient`` uses only the standard library, so an application needs nothing besides this
file; ``AsyncRegproxyClient`` has the same methods as coroutines, on aiohttp (imported only when
that client is created). This module imports nothing else from regproxy on purpose: it can be
copied into an application that does not install regproxy.

Every failure is a :class:`RegproxyError` carrying the API's ``err_no`` and ``err_msg`` and the
HTTP status. A sidecar started together with its application may not be listening yet, or may
still be connecting to its registry: a refused connection and a 503 (registry unavailable) are
retried with backoff until ``start_timeout`` seconds have passed since the call began. Nothing
else is retried — a reply that was lost may have been acted on.

A 503 with err_no 10 (ERR_STATE_NOT_SAVED) means the change is in effect but the sidecar could not
write it to its data directory (a full disk): a restart of the sidecar would lose it until one of
its retries succeeds. It is not retried here (a disk rarely gets room within seconds, and a repeated
unpublish would find nothing to remove); catch it if the application can run on without that
guarantee.

When the sidecar has ``auth_token``, pass ``token=`` (or set ``REGPROXY_AUTH_TOKEN``): it is sent as
``Authorization: Bearer TOKEN``; a missing or wrong one is a RegproxyError with err_no 8 or 9.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_BASE_URL",
    "ERR_BAD_REQUEST",
    "ERR_FORBIDDEN",
    "ERR_INTERNAL",
    "ERR_METHOD_NOT_ALLOWED",
    "ERR_NOT_FOUND",
    "ERR_NO_REPLY",
    "ERR_REGISTRY",
    "ERR_REGISTRY_UNAVAILABLE",
    "ERR_STATE_NOT_SAVED",
    "ERR_TOO_LARGE",
    "ERR_UNAUTHORIZED",
    "TOKEN_ENV",
    "AsyncRegproxyClient",
    "Provider",
    "RegistrySpec",
    "RegproxyClient",
    "RegproxyConnectionError",
    "RegproxyError",
    "SubscribeResult",
    "registry_ref",
]

DEFAULT_BASE_URL = "http://127.0.0.1:22222"

# err_no values of the API (regproxy.api.models.ErrNo, repeated so this file stands alone).
ERR_BAD_REQUEST = 1  # 400: a missing or illegal field; err_msg names it
ERR_NOT_FOUND = 2  # 404: not published / not subscribed by this sidecar
ERR_REGISTRY_UNAVAILABLE = 3  # 503: the registry is not connected right now
ERR_REGISTRY = 4  # 502: the registry refused or failed the operation
ERR_INTERNAL = 5  # 500
ERR_TOO_LARGE = 6  # 413
ERR_METHOD_NOT_ALLOWED = 7  # 405
ERR_UNAUTHORIZED = 8  # 401: the sidecar has auth_token and no token was sent
ERR_FORBIDDEN = 9  # 403: a wrong token
ERR_STATE_NOT_SAVED = 10  # 503: the change is in effect but not saved to the sidecar's data directory
ERR_NO_REPLY = -1  # the SDK's own: no usable reply (unreachable, timed out, not the regproxy API)

_FIRST_DELAY = 0.05  # first retry after 50 ms, doubling: a sidecar usually starts within a second
_MAX_DELAY = 0.5


class RegproxyError(Exception):
    """The sidecar refused or failed a request. ``err_no`` is the API's code (ERR_* above),
    ``http_status`` the HTTP status (None when there was no reply)."""

    def __init__(self, err_no: int, err_msg: str, http_status: int | None = None) -> None:
        super().__init__(err_no, err_msg, http_status)
        self.err_no = err_no
        self.err_msg = err_msg
        self.http_status = http_status

    @property
    def status(self) -> int | None:
        """Same as ``http_status``."""
        return self.http_status

    def __str__(self) -> str:
        status = f"HTTP {self.http_status}, " if self.http_status is not None else ""
        return f"{self.err_msg} ({status}err_no {self.err_no})"


class RegproxyConnectionError(RegproxyError):
    """No reply: the sidecar could not be reached within ``start_timeout``, the connection broke, or
    the reply did not come within ``timeout``. ``err_no`` is ERR_NO_REPLY."""

    def __init__(self, err_msg: str) -> None:
        super().__init__(ERR_NO_REPLY, err_msg, None)

    def __str__(self) -> str:
        return self.err_msg


# --------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class RegistrySpec:
    """A registry a request names instead of all the sidecar's configured ones: one of those (same
    type and hosts), or any other when the sidecar has ``api_allow_body_registries: true`` (else
    the request is refused: RegproxyError with err_no 1 listing the configured ones)."""

    type: str  # "zookeeper", "nacos" or "memory"
    addr: str = ""  # "h1:2181,h2:2181"; "" for memory
    namespace: str | None = None  # nacos only, like the three below
    group: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, str]:
        body = {"type": self.type, "addr": self.addr}
        for key in ("namespace", "group", "username", "password"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


RegistryArg = str | RegistrySpec | Mapping[str, Any] | None


def registry_ref(registry: RegistryArg) -> dict[str, Any] | None:
    """The ``registry`` of a request body from a URL (``zookeeper://h:2181``,
    ``nacos://h:8848?namespace=ns``, ``memory://``), a RegistrySpec or a dict (sent as given)."""
    if registry is None:
        return None
    if isinstance(registry, RegistrySpec):
        return registry.to_json()
    if isinstance(registry, Mapping):
        return dict(registry)
    parts = urlsplit(registry.strip())
    if not parts.scheme or "://" not in registry:
        raise ValueError(f"registry {registry!r}: expected a URL such as zookeeper://127.0.0.1:2181")
    body: dict[str, Any] = {"type": parts.scheme.lower(), "addr": parts.netloc}
    body.update(parse_qsl(parts.query))  # the sidecar refuses unknown or misplaced ones by name
    return body


@dataclass(frozen=True)
class Provider:
    """One provider of a subscription: its sidecar's ingress address, weight and URL parameters."""

    address: str
    weight: int = 100
    metadata: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the reply's item


@dataclass(frozen=True)
class SubscribeResult:
    """``cluster``: the egress cluster name (``group/interface:version``); ``providers``: the ones
    known when the subscription was made (more may come; the sidecar follows the registry)."""

    cluster: str
    providers: list[Provider]


def _pub_body(
    interface: str,
    port: int | None,
    methods: Iterable[str],
    version: str,
    group: str,
    application: str,
    params: Mapping[str, Any] | None,
    registry: RegistryArg,
    protocol: str = "dubbo",
) -> dict[str, Any]:
    if isinstance(methods, str):  # methods="sayHi" would otherwise become five one-letter methods
        raise TypeError("methods must be a list of method names, not a string")
    service: dict[str, Any] = {
        "interface": interface,
        "methods": list(methods),
        "version": version,
        "group": group,
        "port": port,
        "application": application,
        "params": dict(params or {}),
    }
    if protocol != "dubbo":  # "tri": the application serves it in Triple (docs/triple.md)
        service["protocol"] = protocol
    return _with_registry({"service": service}, registry)


def _sub_body(interface: str, version: str, group: str, registry: RegistryArg) -> dict[str, Any]:
    return _with_registry({"service": {"interface": interface, "version": version, "group": group}}, registry)


def _with_registry(body: dict[str, Any], registry: RegistryArg) -> dict[str, Any]:
    ref = registry_ref(registry)
    if ref is not None:
        body["registry"] = ref
    return body


def _reply(status: int, raw: bytes) -> dict[str, Any]:
    """The decoded reply of a request, or RegproxyError."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "err_no" not in data:
        # Not the regproxy API answering (a proxy, another server on the port).
        text = raw.decode("utf-8", "replace").strip().splitlines()
        snippet = text[0][:200] if text else "empty body"
        raise RegproxyError(ERR_NO_REPLY, f"not a regproxy API reply (HTTP {status}): {snippet}", status)
    try:
        err_no = int(data["err_no"])
    except (TypeError, ValueError):
        err_no = ERR_NO_REPLY
    if err_no != 0 or status >= 400:
        raise RegproxyError(err_no, str(data.get("err_msg") or f"HTTP {status}"), status)
    return data


def _subscribe_result(data: Mapping[str, Any]) -> SubscribeResult:
    providers = [
        Provider(
            address=str(p.get("address", "")),
            weight=int(p.get("weight", 100)),
            metadata=dict(p.get("metadata") or {}),
            raw=dict(p),
        )
        for p in data.get("providers") or ()
        if isinstance(p, Mapping)
    ]
    return SubscribeResult(cluster=str(data.get("cluster", "")), providers=providers)


def _retryable(err: RegproxyError) -> bool:
    return err.err_no == ERR_REGISTRY_UNAVAILABLE


def _is_refused(exc: BaseException | None) -> bool:
    for _ in range(8):  # the chain is short; the bound only guards against a cycle
        if exc is None:
            return False
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _gave_up(error: RegproxyError, retried: bool, start_timeout: float) -> RegproxyError:
    if retried and start_timeout > 0 and isinstance(error, RegproxyConnectionError):
        return RegproxyConnectionError(
            f"{error.err_msg} for {start_timeout:g} s (is the regproxy sidecar running there?)"
        )
    return error


class _Backoff:
    """Delays between attempts, never past ``start_timeout`` from the first one."""

    def __init__(self, start_timeout: float) -> None:
        self.deadline = time.monotonic() + start_timeout
        self.delay = _FIRST_DELAY

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt; None when time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        delay = min(self.delay, left)
        self.delay = min(self.delay * 2, _MAX_DELAY)
        return delay


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url {base_url!r}: expected http://HOST:PORT")
    return base_url.rstrip("/")


# --------------------------------------------------------------------------------------------------
# Clients


TOKEN_ENV = "REGPROXY_AUTH_TOKEN"


def _headers(token: str | None) -> dict[str, str]:
    """Request headers; the token (argument, else $REGPROXY_AUTH_TOKEN) as a bearer credential."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class RegproxyClient:
    """Blocking client (standard library only); safe to share between threads.

    ``timeout``: seconds to wait for each reply. ``start_timeout``: how long a call keeps retrying
    while the sidecar refuses connections or reports its registry unavailable (0: never retry).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 5.0,
        start_timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        self.base_url = _check_base_url(base_url)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self._headers = _headers(token)
        # No proxy: an http_proxy in the environment must not carry a loopback call elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def publish(
        self,
        interface: str,
        *,
        port: int | None,
        methods: Iterable[str] = (),
        version: str = "",
        group: str = "",
        application: str = "",
        params: Mapping[str, Any] | None = None,
        registry: RegistryArg = None,
        protocol: str = "dubbo",
    ) -> str:
        """Publish ``interface`` served by the application on ``port`` (None: the sidecar's
        --app-port) in ``protocol`` ("dubbo", or "tri" for Triple); returns the provider URL the
        sidecar registered (its own address and ingress)."""
        body = _pub_body(interface, port, methods, version, group, application, params, registry, protocol)
        return str(self._post("/pub", body)["url"])

    def unpublish(
        self,
        interface: str,
        *,
        port: int | None = None,
        methods: Iterable[str] = (),
        version: str = "",
        group: str = "",
        application: str = "",
        params: Mapping[str, Any] | None = None,
        registry: RegistryArg = None,
        protocol: str = "dubbo",
    ) -> None:
        """Withdraw a publication (found by interface, version, group and protocol); ERR_NOT_FOUND if
        absent."""
        body = _pub_body(interface, port, methods, version, group, application, params, registry, protocol)
        self._post("/unpub", body)

    def subscribe(
        self, interface: str, *, version: str = "", group: str = "", registry: RegistryArg = None
    ) -> SubscribeResult:
        """Watch ``interface``'s providers; calls to it through the egress are routed to them."""
        return _subscribe_result(self._post("/sub", _sub_body(interface, version, group, registry)))

    def unsubscribe(
        self, interface: str, *, version: str = "", group: str = "", registry: RegistryArg = None
    ) -> None:
        self._post("/unsub", _sub_body(interface, version, group, registry))

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        url = self.base_url + path
        backoff = _Backoff(self.start_timeout)
        while True:
            try:
                status, raw = self._send(url, data)
                return _reply(status, raw)
            except RegproxyError as e:
                error: RegproxyError = e
                retry = _retryable(e)
            except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                error = RegproxyConnectionError(f"POST {url}: {_describe_os_error(reason)}")
                retry = isinstance(reason, BaseException) and _is_refused(reason)
            delay = backoff.next_delay() if retry else None
            if delay is None:
                raise _gave_up(error, retry, self.start_timeout)
            time.sleep(delay)

    def _send(self, url: str, data: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=data, method="POST", headers=self._headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:  # a 4xx/5xx still carries the API's JSON
            with e:
                return e.code, e.read()


class AsyncRegproxyClient:
    """The same calls as coroutines, on aiohttp.

    Use ``async with AsyncRegproxyClient() as rp:`` or call ``await rp.close()``. A ``session``
    passed in is used as is and left open.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 5.0,
        start_timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        token: str | None = None,
    ) -> None:
        import aiohttp  # here, so the blocking client never needs it

        self._aiohttp = aiohttp
        self.base_url = _check_base_url(base_url)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self._headers = _headers(token)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> AsyncRegproxyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._own_session:
            await session.close()

    async def publish(
        self,
        interface: str,
        *,
        port: int | None,
        methods: Iterable[str] = (),
        version: str = "",
        group: str = "",
        application: str = "",
        params: Mapping[str, Any] | None = None,
        registry: RegistryArg = None,
        protocol: str = "dubbo",
    ) -> str:
        body = _pub_body(interface, port, methods, version, group, application, params, registry, protocol)
        return str((await self._post("/pub", body))["url"])

    async def unpublish(
        self,
        interface: str,
        *,
        port: int | None = None,
        methods: Iterable[str] = (),
        version: str = "",
        group: str = "",
        application: str = "",
        params: Mapping[str, Any] | None = None,
        registry: RegistryArg = None,
        protocol: str = "dubbo",
    ) -> None:
        body = _pub_body(interface, port, methods, version, group, application, params, registry, protocol)
        await self._post("/unpub", body)

    async def subscribe(
        self, interface: str, *, version: str = "", group: str = "", registry: RegistryArg = None
    ) -> SubscribeResult:
        return _subscribe_result(await self._post("/sub", _sub_body(interface, version, group, registry)))

    async def unsubscribe(
        self, interface: str, *, version: str = "", group: str = "", registry: RegistryArg = None
    ) -> None:
        await self._post("/unsub", _sub_body(interface, version, group, registry))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        aiohttp = self._aiohttp
        data = json.dumps(body).encode()
        url = self.base_url + path
        backoff = _Backoff(self.start_timeout)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        headers = self._headers
        while True:
            try:
                async with self._http().post(url, data=data, headers=headers, timeout=timeout) as resp:
                    raw = await resp.read()
                return _reply(resp.status, raw)
            except RegproxyError as e:
                error: RegproxyError = e
                retry = _retryable(e)
            except aiohttp.ClientConnectorError as e:
                error = RegproxyConnectionError(f"POST {url}: {_describe_os_error(e.os_error)}")
                retry = _is_refused(e.os_error)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                reason = "no reply within the timeout" if isinstance(e, TimeoutError) else str(e) or repr(e)
                error = RegproxyConnectionError(f"POST {url}: {reason}")
                retry = False
            delay = backoff.next_delay() if retry else None
            if delay is None:
                raise _gave_up(error, retry, self.start_timeout)
            await asyncio.sleep(delay)


def _describe_os_error(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "no reply within the timeout"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
