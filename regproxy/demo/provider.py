"""A Dubbo provider on regproxy's codec: the application behind the ingress in the demo, the tests and
the benchmark.

It behaves as a Java Dubbo provider does where a consumer can see it: heartbeats are answered; a
missing service or method is status 70 (SERVICE_ERROR, as when Dubbo finds no invoker) naming
``interface:version.method``; an undecodable body is status 40 (BAD_REQUEST); a method that raises
is an OK response carrying a Java exception (flag 0); response flags 3/4/5 with attachments go
only to consumers whose protocol version is 2.0.2..2.0.99 — dubbo-python says 2.4.10 and reads
0/1/2 only. Responses produced in one ``data_received`` are written with one ``write``.

Services live in a ``ServiceRegistry``: (interface, version) → method name → handler. A handler
takes the decoded arguments and returns the value or an awaitable of it; tests add their own.
The registry counts calls per method, which is how tests observe load balancing.

With ``--publish URL`` the provider announces itself the way an application beside regproxy does:
through ``regproxy.sdk`` it publishes each exported service to its sidecar's ``/pub`` (retrying
while the sidecar starts or its registry is not connected yet) and takes them out with ``/unpub``
on the way out. ``regproxy demo`` publishes its providers with the same ``publish``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from regproxy.demo.runner import run
from regproxy.dubbo.encode import (
    DUBBO_VERSION,
    encode_error,
    encode_response,
    heartbeat_reply,
    java_exception,
    readonly_event,
    supports_response_attachments,
)
from regproxy.dubbo.frame import HESSIAN2, Frame, FrameParser, ProtocolError, Status
from regproxy.dubbo.request import RequestBody
from regproxy.sdk import DEFAULT_BASE_URL, AsyncRegproxyClient, RegproxyError

log = logging.getLogger("regproxy.demo.provider")

GREETINGS_SERVICE = "org.apache.dubbo.samples.api.GreetingsService"
ECHO_SERVICE = "org.apache.dubbo.samples.api.EchoService"

Handler = Callable[..., Any]

_NO_VERSION = ("", "0.0.0", "*")


def _norm_version(version: str | None) -> str:
    return "" if version is None or version in _NO_VERSION else version


def _service_key(interface: str, version: str) -> str:
    """Dubbo's ``interface:version`` form; the version is left out when there is none."""
    return f"{interface}:{version}" if version else interface


class ServiceNotFound(LookupError):
    pass


class ServiceRegistry:
    """Exported services and the number of calls each method received."""

    def __init__(self) -> None:
        self.services: dict[tuple[str, str], dict[str, Handler]] = {}
        self.calls: Counter[tuple[str, str, str]] = Counter()  # (interface, version, method) -> calls

    def add(self, interface: str, methods: Mapping[str, Handler], *, version: str = "") -> None:
        """Export ``methods`` of ``interface`` at ``version`` (merged into what is already there)."""
        self.services.setdefault((interface, _norm_version(version)), {}).update(methods)

    def lookup(self, interface: str, version: str, method: str) -> Handler:
        version = _norm_version(version)
        methods = self.services.get((interface, version))
        target = f"{_service_key(interface, version)}.{method}"
        if methods is None:
            exported = ", ".join(sorted(_service_key(i, v) for i, v in self.services)) or "nothing"
            raise ServiceNotFound(
                f"Not found exported service for {target}: no service {_service_key(interface, version)} "
                f"(exported: {exported}); may be a version or group mismatch"
            )
        handler = methods.get(method)
        if handler is None:
            raise ServiceNotFound(
                f"Not found method for {target}: {_service_key(interface, version)} has "
                f"{', '.join(sorted(methods)) or 'no methods'}"
            )
        return handler

    def count(self, method: str, interface: str | None = None, version: str | None = None) -> int:
        """Calls received by ``method`` (of any interface/version unless given)."""
        norm = None if version is None else _norm_version(version)
        return sum(
            n
            for (i, v, m), n in self.calls.items()
            if m == method and (interface is None or i == interface) and (norm is None or v == norm)
        )

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


async def _sleep(ms: int) -> int:
    await asyncio.sleep(ms / 1000)
    return ms


DEFAULT_GREETING = "hi, {name}"


def check_greeting(template: str) -> str:
    """``template`` if it formats with {name}, {provider} and {version}; ValueError naming the problem."""
    try:
        template.format(name="n", provider="p", version="v")
    except (KeyError, IndexError, ValueError) as e:
        placeholders = "{name}, {provider}, {version}"
        raise ValueError(
            f"greeting {template!r}: {type(e).__name__}: {e} (placeholders: {placeholders})"
        ) from None
    return template


def default_services(
    *,
    greetings_version: str = "",
    echo_version: str = "",
    greeting: str = DEFAULT_GREETING,
    provider_name: str = "provider",
) -> ServiceRegistry:
    """GreetingsService.sayHi and EchoService.echo/sum/sleep, as the Dubbo samples define them.

    sayHi answers ``greeting`` formatted with the caller's name, ``provider_name`` and
    ``greetings_version``: the demos sign their answers so that a consumer sees which provider
    answered (the default is the samples' plain ``hi, NAME``).
    """
    check_greeting(greeting)
    registry = ServiceRegistry()

    def say_hi(name: Any) -> str:
        return greeting.format(name=name, provider=provider_name, version=greetings_version)

    registry.add(GREETINGS_SERVICE, {"sayHi": say_hi}, version=greetings_version)
    registry.add(
        ECHO_SERVICE,
        {"echo": lambda value: value, "sum": lambda *values: sum(values), "sleep": _sleep},
        version=echo_version,
    )
    return registry


class ProviderProtocol(asyncio.Protocol):
    """One consumer connection."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.registry = provider.services
        self.peer = "?"
        self._parser = FrameParser()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.provider.connections.add(self)
        log.debug("%s: connection from %s", self.provider.name, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.provider.connections.discard(self)
        for task in self._tasks:
            task.cancel()
        log.debug("%s: connection from %s closed (%s)", self.provider.name, self.peer, exc or "normally")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed(data)
        except ProtocolError as e:
            for frame in e.frames:
                self._handle(frame)
            log.warning("%s: protocol error from %s, closing: %s", self.provider.name, self.peer, e)
            if e.request_id is not None:
                self._out.append(encode_error(e.request_id, Status.BAD_REQUEST, str(e)))
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for frame in frames:
            self._handle(frame)
        self._flush()

    def send(self, data: bytes) -> None:
        """Queue bytes for the connection; everything queued in one loop turn goes in one write."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _handle(self, frame: Frame) -> None:
        if not frame.is_request:
            return  # e.g. the reply to a heartbeat we never send
        if frame.is_event:
            if frame.two_way and frame.is_heartbeat:
                self._out.append(heartbeat_reply(frame.request_id))
            return
        rid = frame.request_id
        two_way = frame.two_way
        if frame.serialization != HESSIAN2:
            if two_way:
                message = f"serialization id {frame.serialization} is not supported (only hessian2 is)"
                self._out.append(encode_error(rid, Status.BAD_REQUEST, message))
            return
        try:
            body = RequestBody(frame.body)
            args = body.arguments()
            _ = body.attachments  # a broken attachment map is a broken request too
        except Exception as e:  # anything the decoder raises means the body is malformed
            if two_way:
                message = f"Fail to decode request due to: {type(e).__name__}: {e}"
                self._out.append(encode_error(rid, Status.BAD_REQUEST, message))
            return
        try:
            handler = self.registry.lookup(body.path, body.version, body.method)
        except ServiceNotFound as e:
            if two_way:
                self._out.append(
                    encode_error(rid, Status.SERVICE_ERROR, f"{e} (provider {self.provider.name})")
                )
            return
        self.registry.calls[(body.path, _norm_version(body.version), body.method)] += 1
        with_attachments = supports_response_attachments(body.dubbo_version)
        try:
            result = handler(*args)
        except Exception as e:
            if two_way:
                self._out.append(self._exception_response(rid, e, with_attachments))
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._finish(rid, result, two_way, with_attachments))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif two_way:
            self._out.append(self._value_response(rid, result, with_attachments))

    async def _finish(self, rid: int, awaitable: Any, two_way: bool, with_attachments: bool) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if two_way:
                self.send(self._exception_response(rid, e, with_attachments))
            return
        if two_way:
            self.send(self._value_response(rid, value, with_attachments))

    def _response_attachments(self, with_attachments: bool) -> dict[str, Any] | None:
        # As Java providers do for 2.0.2+ consumers: report the protocol version back.
        return {"dubbo": DUBBO_VERSION} if with_attachments else None

    def _value_response(self, rid: int, value: Any, with_attachments: bool) -> bytes:
        try:
            return encode_response(rid, value, attachments=self._response_attachments(with_attachments))
        except Exception as e:  # the handler returned something hessian2 cannot carry
            message = f"Failed to serialize the response of {type(value).__name__}: {type(e).__name__}: {e}"
            return encode_error(rid, Status.BAD_RESPONSE, message)

    def _exception_response(self, rid: int, error: Exception, with_attachments: bool) -> bytes:
        return encode_response(
            rid,
            exception=java_exception(str(error)),
            attachments=self._response_attachments(with_attachments),
        )


class Provider:
    """A provider server: the registry it serves and the connections it has open."""

    def __init__(self, services: ServiceRegistry | None = None, *, name: str = "provider") -> None:
        self.services = services if services is not None else default_services()
        self.name = name
        self.connections: set[ProviderProtocol] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 20880) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ProviderProtocol(self), host, port)
        return self.server

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        if self.server is None or not self.server.sockets:
            raise RuntimeError("the provider is not listening")
        return int(self.server.sockets[0].getsockname()[1])

    def abort_connections(self) -> None:
        """Close every consumer connection at once (a crashed provider, as consumers see it)."""
        for conn in list(self.connections):
            conn.abort()

    async def close(self, *, grace: float = 2.0) -> None:
        """Stop listening, tell consumers this provider is going away, let calls in flight finish."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.send(readonly_event(0))
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.in_flight for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()
        if self.server is not None:
            await self.server.wait_closed()


async def serve(
    host: str = "127.0.0.1",
    port: int = 20880,
    *,
    services: ServiceRegistry | None = None,
    name: str = "provider",
) -> asyncio.Server:
    """Start a provider serving ``services`` (the default demo services when None)."""
    return await Provider(services, name=name).start(host, port)


# -- talking to the sidecar's HTTP API, through regproxy.sdk as applications do ----------------------

DEFAULT_SIDECAR_API = DEFAULT_BASE_URL

_T = TypeVar("_T")


async def until_stopped(aw: Awaitable[_T], stop: asyncio.Event | None) -> _T | None:
    """``await aw``, unless ``stop`` is set first: then ``aw`` is cancelled and the result is None.

    The SDK keeps retrying while a sidecar starts; a SIGTERM meanwhile must not wait for that.
    """
    if stop is None:
        return await aw
    task = asyncio.ensure_future(aw)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def publish(
    api: str,
    services: ServiceRegistry,
    *,
    port: int,
    application: str,
    timeout: float = 60.0,
    stop: asyncio.Event | None = None,
) -> list[str] | None:
    """Publish every exported (interface, version) through the sidecar API at ``api``.

    Retries for ``timeout`` seconds while the sidecar is not listening yet or its registry is not
    connected; raises RegproxyError (which names the problem) otherwise. Returns the URLs the
    sidecar registered, or None when ``stop`` was set first.
    """
    urls: list[str] = []
    async with AsyncRegproxyClient(api, start_timeout=timeout) as rp:
        for (interface, version), methods in services.services.items():
            call = rp.publish(
                interface, port=port, methods=sorted(methods), version=version, application=application
            )
            url = await until_stopped(call, stop)
            if url is None:
                return None
            urls.append(url)
    return urls


async def unpublish(
    api: str, services: ServiceRegistry, *, port: int, application: str, timeout: float = 3.0
) -> None:
    """Best effort: take every exported service out of the registry before the provider goes away.

    No retries: on the way out a sidecar that does not answer is not worth waiting for (when both
    stop together, its own drain unpublishes everything anyway).
    """
    async with AsyncRegproxyClient(api, timeout=timeout, start_timeout=0) as rp:
        for (interface, version), methods in services.services.items():
            try:
                await rp.unpublish(
                    interface, port=port, methods=sorted(methods), version=version, application=application
                )
            except RegproxyError as e:
                log.warning("unpublishing %s: %s", _service_key(interface, version), e)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="regproxy-demo-provider", description="Demo Dubbo provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=20880)
    parser.add_argument("--name", default="provider", help="shown in log lines")
    parser.add_argument("--greetings-version", default="", help="version GreetingsService is exported at")
    parser.add_argument("--echo-version", default="", help="version EchoService is exported at")
    parser.add_argument(
        "--greeting",
        default=DEFAULT_GREETING,
        help="what sayHi answers, with {name} (the argument), {provider} (--name) and {version} "
        f"(--greetings-version) filled in (default: {DEFAULT_GREETING!r})",
    )
    parser.add_argument(
        "--publish",
        metavar="URL",
        help="after starting, publish every service through the regproxy sidecar API at URL "
        f"(e.g. {DEFAULT_SIDECAR_API}), retrying while it starts; unpublish on shutdown",
    )
    parser.add_argument(
        "--publish-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up (exit 1) when publishing has not succeeded after S seconds (default 120)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        check_greeting(args.greeting)
    except ValueError as e:
        parser.error(str(e))
    return args


async def _main(args: argparse.Namespace) -> int:
    services = default_services(
        greetings_version=args.greetings_version,
        echo_version=args.echo_version,
        greeting=args.greeting,
        provider_name=args.name,
    )
    provider = Provider(services, name=args.name)
    await provider.start(args.host, args.port)
    exported = ", ".join(_service_key(i, v) for i, v in services.services)
    log.info("%s: listening on %s:%d, exporting %s", args.name, args.host, provider.port, exported)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    published = False
    if args.publish:
        try:
            urls = await publish(
                args.publish,
                services,
                port=provider.port,
                application=args.name,
                timeout=args.publish_timeout,
                stop=stop,
            )
        except RegproxyError as e:
            log.error("%s: publishing through %s failed: %s", args.name, args.publish, e)
            await provider.close(grace=0)
            return 1
        if urls is not None:
            published = True
            for url in urls:
                log.info("%s: published %s", args.name, url)
    await stop.wait()
    log.info("%s: shutting down after %d calls", args.name, services.total_calls)
    if published:
        # First out of the registry, so consumers stop choosing this provider, then close.
        await unpublish(args.publish, services, port=provider.port, application=args.name)
    await provider.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
