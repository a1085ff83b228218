"""An asyncio Dubbo 2 client on regproxy's codec, used by the tests, the demo consumer and the benchmark.

One connection carries many calls at once: each call gets a request id and a future, and responses
are matched by id in whatever order they come back. Frames written in the same event-loop turn are
joined into one ``write`` (the benchmark pipelines hundreds of calls; one system call per call
would measure the client rather than the proxy). The client answers the peer's heartbeats, and
when the connection goes away every pending call fails with ``ConnectionLost`` at once instead of
waiting for its timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from regproxy.dubbo.encode import (
    DUBBO_VERSION,
    Response,
    decode_response,
    encode_error,
    encode_request,
    heartbeat_reply,
    heartbeat_request,
)
from regproxy.dubbo.frame import DEFAULT_MAX_BODY, Frame, FrameParser, ProtocolError, Status
from regproxy.dubbo.hessian2 import Hessian2Error, JavaObject

__all__ = [
    "CallTimeout",
    "ConnectionLost",
    "DubboCallError",
    "DubboClient",
    "DubboError",
    "RemoteException",
]


class DubboError(Exception):
    """Base of everything a call can raise besides programming errors."""


class DubboCallError(DubboError):
    """The call did not produce a result: a non-OK response status, or a local failure given a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        try:
            name = Status(self.status).name
        except ValueError:
            name = "UNKNOWN"
        return f"status {self.status} ({name}): {self.message}"


class CallTimeout(DubboCallError):
    """No response within the call's timeout (Dubbo's consumer reports this as CLIENT_TIMEOUT)."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.CLIENT_TIMEOUT, message)


class ConnectionLost(DubboCallError):
    """The connection closed before the response came (Dubbo's CHANNEL_INACTIVE)."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.CHANNEL_INACTIVE, message)


class RemoteException(DubboError):
    """The provider's method threw: status OK, response flag 0. ``exception`` is the Java Throwable."""

    def __init__(self, exception: Any) -> None:
        self.exception = exception
        super().__init__(self._describe(exception))

    @property
    def class_name(self) -> str | None:
        return self.exception.class_name if isinstance(self.exception, JavaObject) else None

    @property
    def detail_message(self) -> str | None:
        if isinstance(self.exception, JavaObject):
            message = self.exception.fields.get("detailMessage")
            return message if isinstance(message, str) else None
        return None

    @staticmethod
    def _describe(exception: Any) -> str:
        if isinstance(exception, JavaObject):
            message = exception.fields.get("detailMessage")
            return f"{exception.class_name}: {message}" if message is not None else exception.class_name
        return repr(exception)


def _check_args(args: Sequence[Any]) -> None:
    # call(s, "sayHi", "bob") would otherwise send three one-character arguments.
    if isinstance(args, (str, bytes, bytearray)):
        raise TypeError(f"args must be a sequence of arguments, not {type(args).__name__}: wrap it in a list")


class DubboClient(asyncio.Protocol):
    """One Dubbo connection. Create it with ``await DubboClient.connect(host, port)``."""

    def __init__(self, *, dubbo_version: str = DUBBO_VERSION, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.dubbo_version = dubbo_version
        self.peer = "?"
        self.readonly = False  # the provider announced it is shutting down
        self._parser = FrameParser(max_body)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._paused: asyncio.Future[None] | None = None
        self._closed_error: ConnectionLost | None = None
        self._closed = self._loop.create_future()

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float | None = 3.0,
        dubbo_version: str = DUBBO_VERSION,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> DubboClient:
        """Open a connection; raises OSError (or TimeoutError) when the peer cannot be reached."""
        loop = asyncio.get_running_loop()
        _transport, client = await asyncio.wait_for(
            loop.create_connection(lambda: cls(dubbo_version=dubbo_version, max_body=max_body), host, port),
            timeout,
        )
        return client

    def close(self) -> None:
        """Close the connection; calls still pending fail with ConnectionLost."""
        if self._closed_error is None:
            self._fail_all(ConnectionLost(f"connection to {self.peer} closed by the client"))
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed or closing: no new call can be sent."""
        transport = self._transport
        return self._closed_error is not None or transport is None or transport.is_closing()

    @property
    def in_flight(self) -> int:
        """Two-way requests sent and not yet answered (or timed out)."""
        return len(self._pending)

    async def __aenter__(self) -> DubboClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- calls -------------------------------------------------------------------------------------

    def new_request_id(self) -> int:
        return next(self._ids)

    async def invoke(
        self,
        service: str,
        method: str,
        args: Sequence[Any] = (),
        *,
        version: str = "",
        group: str = "",
        attachments: Mapping[str, Any] | None = None,
        param_types: str | None = None,
        timeout: float | None = 3.0,
    ) -> Response:
        """Send one request and return the decoded response whatever its status.

        Raises only for failures without a response: CallTimeout, ConnectionLost, or a
        DubboCallError(BAD_RESPONSE) when the response body cannot be decoded.
        """
        _check_args(args)
        request_id = self.new_request_id()
        data = encode_request(
            request_id,
            service,
            method,
            args,
            version=version,
            group=group,
            dubbo_version=self.dubbo_version,
            attachments=self._with_timeout(attachments, timeout),
            param_types=param_types,
        )
        frame = await self.exchange(request_id, data, timeout=timeout, what=f"{service}.{method}")
        try:
            return decode_response(frame)
        except Hessian2Error as e:
            raise DubboCallError(
                Status.BAD_RESPONSE, f"undecodable response to {service}.{method}: {e}"
            ) from e

    async def call(
        self,
        service: str,
        method: str,
        args: Sequence[Any] = (),
        *,
        version: str = "",
        group: str = "",
        attachments: Mapping[str, Any] | None = None,
        param_types: str | None = None,
        timeout: float | None = 3.0,
    ) -> Any:
        """Call ``service.method(*args)`` and return its value.

        Raises DubboCallError for a non-OK status (CallTimeout, ConnectionLost are subclasses) and
        RemoteException when the method threw.
        """
        resp = await self.invoke(
            service,
            method,
            args,
            version=version,
            group=group,
            attachments=attachments,
            param_types=param_types,
            timeout=timeout,
        )
        if resp.status != Status.OK:
            raise DubboCallError(resp.status, resp.error or "")
        if resp.exception is not None:
            raise RemoteException(resp.exception)
        return resp.value

    def call_oneway(
        self,
        service: str,
        method: str,
        args: Sequence[Any] = (),
        *,
        version: str = "",
        group: str = "",
        attachments: Mapping[str, Any] | None = None,
        param_types: str | None = None,
    ) -> None:
        """Send a request that expects no response (the two-way flag is clear)."""
        _check_args(args)
        self._check_open()
        data = encode_request(
            self.new_request_id(),
            service,
            method,
            args,
            version=version,
            group=group,
            dubbo_version=self.dubbo_version,
            attachments=attachments,
            param_types=param_types,
            two_way=False,
        )
        self._write(data)

    async def heartbeat(self, *, timeout: float | None = 3.0) -> float:
        """Send a heartbeat and wait for its reply; returns the round-trip time in seconds."""
        request_id = self.new_request_id()
        start = time.perf_counter()
        frame = await self.exchange(
            request_id, heartbeat_request(request_id), timeout=timeout, what="heartbeat"
        )
        if frame.status != Status.OK:
            raise DubboCallError(frame.status, f"heartbeat answered with status {frame.status}")
        return time.perf_counter() - start

    async def exchange(
        self, request_id: int, data: bytes, *, timeout: float | None = 3.0, what: str = "request"
    ) -> Frame:
        """Write an already encoded two-way request whose id is ``request_id``; return the response frame.

        The benchmark uses this with pre-encoded requests (see ``new_request_id``).
        """
        self._check_open()
        while self._paused is not None:
            await self._paused  # the transport's buffer is above its high-water mark
            self._check_open()
        future: asyncio.Future[Frame] = self._loop.create_future()
        self._pending[request_id] = future
        self._write(data)
        try:
            if timeout is None:
                return await future
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the result when the response
            # and a cancellation of the caller arrive together, so a cancelled call loop goes on.
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise CallTimeout(
                f"{what} to {self.peer} got no response within {timeout:g} s (request id {request_id})"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = peer[0]
            self.peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed(data)
        except ProtocolError as e:
            for frame in e.frames:
                self._handle(frame)
            self._protocol_error(e)
            return
        for frame in frames:
            self._handle(frame)
        self._flush()  # heartbeat replies go out with this batch

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by the peer"
        self._fail_all(ConnectionLost(f"connection to {self.peer} lost ({reason})"))
        self._out.clear()
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    # -- internals ---------------------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        if frame.is_request:
            self._handle_peer_request(frame)
            return
        future = self._pending.pop(frame.request_id, None)
        if future is not None and not future.done():
            future.set_result(frame)
        # else: the call timed out or was cancelled; the late response is dropped.

    def _handle_peer_request(self, frame: Frame) -> None:
        if frame.is_event:
            if frame.is_heartbeat:
                if frame.two_way:
                    self._out.append(heartbeat_reply(frame.request_id))
            elif frame.body == b"\x01R":  # hessian2 "R": the provider is going read-only
                self.readonly = True
            return
        if frame.two_way:
            self._out.append(
                encode_error(frame.request_id, Status.BAD_REQUEST, "this Dubbo client exports no services")
            )

    def _protocol_error(self, error: ProtocolError) -> None:
        message = f"protocol error from {self.peer}: {error}"
        rid = error.request_id
        if rid is not None and rid in self._pending:
            future = self._pending.pop(rid)
            if not future.done():
                future.set_exception(DubboCallError(Status.BAD_RESPONSE, message))
        self._fail_all(ConnectionLost(message))
        if self._transport is not None:
            self._transport.abort()

    def _fail_all(self, error: ConnectionLost) -> None:
        if self._closed_error is None:
            self._closed_error = error
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _check_open(self) -> None:
        if self._closed_error is not None:
            raise ConnectionLost(str(self._closed_error.message))
        if self._transport is None or self._transport.is_closing():
            raise ConnectionLost(f"connection to {self.peer} is closing")

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    @staticmethod
    def _with_timeout(
        attachments: Mapping[str, Any] | None, timeout: float | None
    ) -> Mapping[str, Any] | None:
        # Dubbo 3 consumers tell the provider (and so regproxy) their timeout as a string of ms.
        if timeout is None or (attachments is not None and "timeout" in attachments):
            return attachments
        merged = {"timeout": str(max(1, round(timeout * 1000)))}
        if attachments:
            merged.update(attachments)
        return merged

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<DubboClient {self.peer} {state} in_flight={len(self._pending)}>"
