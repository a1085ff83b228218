"""The localhost pub/sub HTTP API (aiohttp): POST /pub, /unpub, /sub, /unsub, GET /openapi.json.

Every reply is JSON ``{"err_no": N, "err_msg": "..."}`` (plus ``url`` / ``cluster`` and
``providers`` on success) with a matching HTTP status, so both SDKs that look only at ``err_no``
and HTTP clients that look only at the status see errors. A 200 means the change is in effect and
saved in the data directory; a change that could not be saved is answered 503 (err_no 10) although
it is in effect (see regproxy.state). aiohttp's own errors (unknown path, wrong method) are turned
into the same shape by one middleware; an unexpected exception is logged with its traceback and
answered with a generic 500, never with internals.

Bodies are read with a cap: a Content-Length over the limit is refused before a byte is read, and
a chunked body stops being read as soon as it passes the limit. The content type is not checked:
SDKs of this kind often send none, and the body is parsed as JSON whatever it says.

The API never touches the data path; it validates (``regproxy.api.models``) and calls Discovery.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from regproxy.address import is_loopback_host
from regproxy.api.auth import check_bearer, warn_if_remote
from regproxy.api.models import ErrNo, PubRequest, RegistryRef, SubRequest, describe_errors
from regproxy.api.openapi import build_openapi
from regproxy.discovery import NotFound, PublishSpec
from regproxy.registry.base import RegistryError, RegistryUnavailable
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import Subscription
from regproxy.state import SAVE_RETRY_S, StateSaveError

__all__ = [
    "DEFAULT_MAX_BODY",
    "ApiError",
    "DiscoveryAPI",
    "build_app",
    "publish_spec",
    "resolve_registry",
    "same_registry",
    "start_api",
    "stop_api",
    "subscription",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024
JSON_TYPE = "application/json"
ENDPOINTS: dict[str, str] = {
    "/pub": "publish a service (provider)",
    "/unpub": "unpublish a service",
    "/sub": "subscribe to a service (consumer)",
    "/unsub": "unsubscribe",
}


class DiscoveryAPI(Protocol):
    """What the API needs of regproxy.discovery.Discovery (tests pass a fake)."""

    async def publish(self, spec: PublishSpec, registry: RegistryURL | None = None) -> str: ...

    async def unpublish(self, spec: PublishSpec, registry: RegistryURL | None = None) -> None: ...

    async def subscribe(
        self,
        sub: Subscription,
        registry: RegistryURL | None = None,
        *,
        application: str = "",
        params: Mapping[str, str] | None = None,
        migration: str = "",
    ) -> tuple[str, list[dict[str, Any]]]: ...

    async def unsubscribe(self, sub: Subscription, registry: RegistryURL | None = None) -> None: ...


class ApiError(Exception):
    """An error reply: HTTP status, err_no and a message safe to show the caller."""

    def __init__(
        self,
        status: int,
        err_no: ErrNo,
        message: str,
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.err_no = err_no
        self.message = message
        self.close = close  # drop the connection after replying (the body was not read)
        self.headers = dict(headers or {})


def _json(status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON_TYPE, headers=headers)


def _error(
    status: int, err_no: ErrNo, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return _json(status, {"err_no": int(err_no), "err_msg": message}, headers)


# --------------------------------------------------------------------------------------------------
# Request -> Discovery arguments


def publish_spec(req: PubRequest, app_port: int) -> PublishSpec:
    s = req.service
    return PublishSpec(
        interface=s.interface,
        port=s.port if s.port is not None else app_port,
        methods=tuple(s.methods),
        version=s.version,
        group=s.group,
        application=s.application,
        params=dict(s.params),
        protocol=s.protocol,
    )


def subscription(req: SubRequest) -> Subscription:
    s = req.service
    return Subscription(s.interface, s.version, s.group)


def _host_key(host: str) -> str:
    """One spelling per host: case and a trailing dot do not matter, an IP address is compared as
    an address, and localhost and every loopback address are one host (this one)."""
    host = host.lower().rstrip(".")
    if is_loopback_host(host):
        return "loopback"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def same_registry(ref: RegistryURL, configured: RegistryURL) -> bool:
    """Whether a request's ``ref`` names the ``configured`` registry: same scheme, the same hosts
    in any order (see _host_key), and every setting the request gives equal to the configured one
    (SDKs send type and address only; one that sends another namespace means another registry)."""
    if ref.scheme != configured.scheme:
        return False
    if _hosts(ref) != _hosts(configured):
        return False
    return all(
        hmac.compare_digest(_setting(ref, key).encode(), _setting(configured, key).encode())
        for key in ref.params
    )


def _hosts(url: RegistryURL) -> set[tuple[str, int]]:
    return {(_host_key(a.host), a.port) for a in url.hosts}


def _setting(url: RegistryURL, key: str) -> str:
    if key == "group" and url.group is not None:
        return url.group  # nacos: DEFAULT_GROUP when the URL has none
    return url.params.get(key, "")


def resolve_registry(
    ref: RegistryRef | None, configured: Sequence[RegistryURL], *, allow_others: bool = False
) -> RegistryURL | None:
    """The registry a request names, as a RegistryURL (None: the configured ones).

    SDKs name a registry by type and address only. When that is a configured registry (see
    :func:`same_registry`), the configured URL is used with its settings (a nacos namespace and
    credentials), so the request reaches the same registry connection instead of opening a second
    one without them. Any other registry is refused (an ApiError naming the configured ones)
    unless ``allow_others`` (api_allow_body_registries): a request must not make the sidecar dial
    a host the operator did not choose, nor hold a registry it cannot reach and stay unready.
    """
    if ref is None:
        return None
    url = ref.url
    for candidate in configured:
        if same_registry(url, candidate):
            return candidate
    if allow_others:
        return url
    names = ", ".join(str(c) for c in configured) or "none"
    raise ApiError(
        400,
        ErrNo.BAD_REQUEST,
        f"registry: {url} is not a registry this sidecar is configured with (configured: {names}); "
        "name one of those or leave registry out, or set api_allow_body_registries: true to allow others",
    )


# --------------------------------------------------------------------------------------------------
# The app

_M = TypeVar("_M", bound=BaseModel)


Flag = Callable[[], bool] | bool


class _Api:
    # This sidecar's listener ports -> what each is ("ingress listener 127.0.0.1:20881"), read per
    # request (ports bound as 0 are known only once listening); see _refuse_own_port.
    own_ports: Callable[[], Mapping[int, str]] | None = None

    def __init__(
        self,
        discovery: DiscoveryAPI,
        app_port: int,
        registries: Sequence[RegistryURL],
        max_body: int,
        allow_body_registries: Flag = False,
    ) -> None:
        self.discovery = discovery
        self.app_port = app_port
        self.registries = tuple(registries)
        self.max_body = max_body
        self.openapi = orjson.dumps(build_openapi(max_body=max_body))
        allow = allow_body_registries
        self._allow_others: Callable[[], bool] = allow if callable(allow) else (lambda: allow)

    def _registry(self, ref: RegistryRef | None) -> RegistryURL | None:
        return resolve_registry(ref, self.registries, allow_others=self._allow_others())

    async def _body(self, request: web.Request) -> bytes:
        limit = self.max_body
        length = request.content_length
        if length is not None and length > limit:
            raise ApiError(
                413,
                ErrNo.TOO_LARGE,
                f"request body of {length} bytes is over the {limit} byte limit",
                close=True,
            )
        buf = bytearray()
        while True:
            chunk = await request.content.read(limit + 1 - len(buf))
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                raise ApiError(
                    413, ErrNo.TOO_LARGE, f"request body is over the {limit} byte limit", close=True
                )

    async def _parse(self, request: web.Request, model: type[_M]) -> _M:
        body = await self._body(request)
        if not body.strip():
            raise ApiError(400, ErrNo.BAD_REQUEST, "request body: empty (expected a JSON object)")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, ErrNo.BAD_REQUEST, f"request body: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ApiError(400, ErrNo.BAD_REQUEST, "request body: must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise ApiError(400, ErrNo.BAD_REQUEST, describe_errors(e, model=model)) from None

    async def _call(self, what: str, op: Awaitable[Any]) -> Any:
        # Only errors raised by Discovery are the caller's fault or the registry's; a ValueError
        # from anywhere else would be a regproxy bug and must stay a 500.
        try:
            return await op
        except StateSaveError as e:
            # Kept, not undone (Discovery._save): the caller must know it is in effect but not durable.
            raise ApiError(
                503,
                ErrNo.STATE_NOT_SAVED,
                f"{what}: {e}; the change is in effect, but a restart would lose it until a save "
                f"succeeds (retried every {SAVE_RETRY_S:g} s)",
            ) from None
        except NotFound as e:
            raise ApiError(404, ErrNo.NOT_FOUND, str(e) or "not found") from None
        except RegistryUnavailable as e:
            raise ApiError(503, ErrNo.REGISTRY_UNAVAILABLE, f"{what}: {e}") from None
        except RegistryError as e:
            raise ApiError(502, ErrNo.REGISTRY_ERROR, f"{what}: {e}") from None
        except ValueError as e:
            raise ApiError(400, ErrNo.BAD_REQUEST, str(e)) from None

    async def pub(self, request: web.Request) -> web.Response:
        req = await self._parse(request, PubRequest)
        spec = publish_spec(req, self.app_port)
        self._refuse_own_port(spec, given=req.service.port is not None)
        registry = self._registry(req.registry)
        url = await self._call(f"publish {spec.interface}", self.discovery.publish(spec, registry))
        # app_port: the port calls for it go to, so a caller that left port out sees --app-port's.
        return _json(200, {"err_no": 0, "err_msg": "publish success", "url": str(url), "app_port": spec.port})

    def _refuse_own_port(self, spec: PublishSpec, *, given: bool) -> None:
        """A publication's application port must not be one of this sidecar's listeners: the
        ingress would hand the service's requests to the sidecar itself, round and round."""
        what = self.own_ports().get(spec.port) if self.own_ports is not None else None
        if what is None:
            return
        source = "" if given else " (not given: the --app-port fallback)"
        raise ApiError(
            400,
            ErrNo.BAD_REQUEST,
            f"service.port: {spec.port}{source} is this sidecar's own {what}; requests for "
            f"{spec.key} would be forwarded back into the sidecar in a loop. Give the application's port",
        )

    async def unpub(self, request: web.Request) -> web.Response:
        req = await self._parse(request, PubRequest)
        spec = publish_spec(req, self.app_port)
        registry = self._registry(req.registry)
        await self._call(f"unpublish {spec.interface}", self.discovery.unpublish(spec, registry))
        return _json(200, {"err_no": 0, "err_msg": "unpub success"})

    async def sub(self, request: web.Request) -> web.Response:
        req = await self._parse(request, SubRequest)
        sub = subscription(req)
        registry = self._registry(req.registry)
        cluster, providers = await self._call(
            f"subscribe {sub.cluster_name}",
            self.discovery.subscribe(
                sub,
                registry,
                application=req.service.application,
                params=req.service.params,
                migration=req.service.migration,
            ),
        )
        return _json(
            200, {"err_no": 0, "err_msg": "subscribe success", "cluster": cluster, "providers": providers}
        )

    async def unsub(self, request: web.Request) -> web.Response:
        req = await self._parse(request, SubRequest)
        sub = subscription(req)
        registry = self._registry(req.registry)
        await self._call(f"unsubscribe {sub.cluster_name}", self.discovery.unsubscribe(sub, registry))
        return _json(200, {"err_no": 0, "err_msg": "unsub success"})

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type=JSON_TYPE)

    async def index(self, request: web.Request) -> web.Response:
        return _json(
            200,
            {
                "err_no": 0,
                "err_msg": "regproxy pub/sub API",
                "endpoints": [{"method": "POST", "path": p, "summary": s} for p, s in ENDPOINTS.items()],
                "openapi": "/openapi.json",
            },
        )


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        level = logging.WARNING if e.status >= 500 else logging.INFO
        log.log(level, "HTTP API: %s %s -> %d %s", request.method, request.path, e.status, e.message)
        resp = _error(e.status, e.err_no, e.message, e.headers)
        if e.close:
            resp.force_close()
        return resp
    except web.HTTPException as e:
        # aiohttp's router raises these for unknown paths and wrong methods.
        headers: dict[str, str] = {}
        if isinstance(e, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(e.allowed_methods))
            headers["Allow"] = allowed
            return _error(
                405,
                ErrNo.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on this path (use {allowed})",
                headers,
            )
        if e.status == 404:
            return _error(404, ErrNo.NOT_FOUND, "no such endpoint (see GET / or /openapi.json)")
        if e.status == 413:
            return _error(413, ErrNo.TOO_LARGE, e.reason)
        if e.status < 400:
            raise
        err_no = ErrNo.INTERNAL if e.status >= 500 else ErrNo.BAD_REQUEST
        return _error(e.status, err_no, e.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("HTTP API: unexpected error in %s %s", request.method, request.path)
        return _error(500, ErrNo.INTERNAL, "internal error in regproxy (details in its log)")


# Read-only documents that hold nothing about this host: served without a token.
_OPEN_PATHS = frozenset({"/", "/openapi.json"})
TokenSource = Callable[[], str | None] | str | None


def _auth_middleware(token: TokenSource) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    get_token = token if callable(token) else (lambda: token)

    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # Runs before any body is read, for every route (a new one cannot forget it).
        if not (request.method in ("GET", "HEAD") and request.path in _OPEN_PATHS):
            secret = get_token()
            if secret is not None:
                refusal = check_bearer(
                    request.headers.get("Authorization"), secret, key="auth_token", api="pub/sub"
                )
                if refusal is not None:
                    log.warning(
                        "HTTP API: refused %s %s from %s: %s",
                        request.method, request.path, request.remote, refusal.message,
                    )  # fmt: skip
                    raise ApiError(
                        refusal.status, ErrNo(refusal.err_no), refusal.message, headers=refusal.headers
                    )
            elif "Origin" in request.headers:
                # Any web page can make a browser POST here (a "simple" text/plain request needs no
                # preflight, and the body is parsed whatever its type); SDKs send no Origin.
                raise ApiError(
                    403,
                    ErrNo.FORBIDDEN,
                    "requests from a web browser (Origin header) are refused unless auth_token is set",
                )
        return await handler(request)

    return auth


def build_app(
    discovery: DiscoveryAPI,
    *,
    app_port: int,
    registries: Sequence[RegistryURL] = (),
    max_body: int = DEFAULT_MAX_BODY,
    token: TokenSource = None,
    allow_body_registries: Flag = False,
    own_ports: Callable[[], Mapping[int, str]] | None = None,
) -> web.Application:
    """The pub/sub API as an aiohttp app.

    ``app_port``: the application's port when a /pub names none. ``registries``: the configured
    registries, so a request naming one of them by type and address reuses its settings, and one
    naming another is refused (see :func:`resolve_registry`). ``max_body``: largest request body,
    in bytes. ``token``: the bearer token every request but ``GET /`` and ``/openapi.json`` must
    carry (``auth_token``), or a function returning it (read per request, so a reload applies);
    None: no token.
    ``allow_body_registries``: whether a request may name a registry that is not one of
    ``registries`` (api_allow_body_registries; a bool or a function read per request).
    ``own_ports``: a function giving this sidecar's listener ports, each with what it is; a /pub
    whose application port is one of them is refused (it would make the sidecar forward to itself).
    """
    api = _Api(discovery, app_port, registries, max_body, allow_body_registries)
    api.own_ports = own_ports
    # client_max_size backs up our own cap should anything call request.read().
    app = web.Application(middlewares=[_errors, _auth_middleware(token)], client_max_size=max_body)
    app.router.add_post("/pub", api.pub)
    app.router.add_post("/unpub", api.unpub)
    app.router.add_post("/sub", api.sub)
    app.router.add_post("/unsub", api.unsub)
    app.router.add_get("/openapi.json", api.openapi_json)
    app.router.add_get("/", api.index)
    return app


async def start_api(app: web.Application, host: str, port: int, *, has_token: bool = False) -> web.AppRunner:
    """Serve ``app`` on host:port (port 0: any free port; see ``runner.addresses``)."""
    warn_if_remote("api", host, has_token=has_token)
    return await serve(app, host, port, "HTTP API")


async def serve(app: web.Application, host: str, port: int, what: str) -> web.AppRunner:
    """Serve an aiohttp app on host:port (also the admin API's); logs where ``what`` listens."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("%s listening on %s", what, ", ".join(_fmt(a) for a in runner.addresses))
    return runner


async def stop_api(runner: web.AppRunner) -> None:
    await runner.cleanup()


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)
