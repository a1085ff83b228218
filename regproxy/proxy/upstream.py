"""Pooled, multiplexed connections to upstream hosts (a provider's ingress, or the local app).

Many downstream connections share a few upstream connections: each request gets a fresh request
id on the upstream connection, and the response is mapped back to the downstream connection and
its original id. A connection is CONNECTING, OPEN or CLOSED; requests that arrive while it is
connecting wait in ``waiting`` and have not been written, so a failed connect can retry them on
another host without any risk of a duplicate call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Final, cast

from regproxy.dubbo.encode import encode_error, heartbeat_reply
from regproxy.dubbo.frame import (
    FLAG_EVENT,
    FLAG_REQUEST,
    FLAG_TWOWAY,
    FrameParser,
    ProtocolError,
    Status,
    frame_request_id,
    patch_id_and_length,
)
from regproxy.native import mypyc_attr
from regproxy.proxy.batch import EARLY_FLUSH_FRAMES, BatchedWriter, Batcher
from regproxy.proxy.stats import Histogram

if TYPE_CHECKING:
    from regproxy.proxy.exchange import Exchange
    from regproxy.proxy.loops import LoopGuard
    from regproxy.tls import UpstreamTLS

log = logging.getLogger(__name__)

_MAX_ID: Final = 2**63 - 1
WARN_EVERY_S: Final = 60.0  # a misbehaving peer's warning, at most this often (UpstreamPool.warn)
_REQUEST_OR_EVENT: Final = FLAG_REQUEST | FLAG_EVENT
# How TCP reports a connection it gave up on (TCP_USER_TIMEOUT, or its own retransmission limit):
# ETIMEDOUT, or the soft error met meanwhile (no ARP answer: EHOSTUNREACH; an ICMP unreachable).
_GAVE_UP: Final = frozenset((errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN))


def silence_bound_options(user_timeout_ms: int) -> list[tuple[int, int, int]]:
    """The socket options (level, option, value) that close a connection whose peer acknowledged
    nothing for about ``user_timeout_ms`` ([] for 0: the kernel's defaults, ~15 minutes).

    TCP_USER_TIMEOUT bounds data that stays unacknowledged (a request written to a host that
    vanished); keepalive covers the connection with nothing unacknowledged (a request the host
    acknowledged before it vanished, whose answer never comes): probes start after half the bound
    of silence, and with TCP_USER_TIMEOUT set the kernel gives up at the first probe past the bound
    (not after TCP_KEEPCNT probes). Options this platform lacks are left out."""
    if user_timeout_ms <= 0:
        return []
    idle_s = max(1, user_timeout_ms // 2000)
    # Probes at idle + k * interval reach the bound at the k-th one (seconds are the unit).
    interval_s = max(1, (user_timeout_ms - idle_s * 1000) // 3000)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_USER_TIMEOUT", user_timeout_ms),
        ("TCP_KEEPIDLE", idle_s),
        ("TCP_KEEPINTVL", interval_s),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, int(option), value))
    return options


def _os_error(exc: BaseException | None) -> tuple[object, object]:
    """``exc``'s errno and strerror, read untyped: typeshed says int and str, but an OSError made
    without arguments has None in both (uvloop raises ConnectionResetError() for a peer that closed
    in the TLS handshake), and compiled code would raise TypeError reading None as an int."""
    return getattr(exc, "errno", None), getattr(exc, "strerror", None)


def _connect_error(exc: BaseException, tls: bool) -> str:
    """Why a connect failed, for the log and the caller's error."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    code, text = _os_error(exc)
    if tls and isinstance(exc, ConnectionResetError) and code is None:
        # No alert, no reason: under TLS 1.2 a refused client certificate looks like this when the
        # peer is an asyncio server (see UpstreamTLS.refused for TLS 1.3).
        return (
            "the peer closed the connection in the TLS handshake without an alert (it refused this "
            "sidecar's certificate, or does not speak TLS on this port)"
        )
    if isinstance(text, str) and text:
        return text
    return str(exc) or type(exc).__name__


class ConnState(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class UpstreamEvents:
    """What the pool reports back to the forwarder (which owns responses to downstream)."""

    def on_responses(self, exchs: list[Exchange], raws: list[bytes], latency: Histogram) -> None:
        """The responses one read brought (``raws``), each with its exchange (no longer pending);
        ``latency``: the histogram of the host they came from (``host_latency``)."""

    def host_latency(self, address: str) -> Histogram:
        """The latency histogram of the requests answered by ``address``; a connection to it takes
        it once, so a read's responses are counted without looking the host up."""
        return Histogram()

    def on_not_written(self, exch: Exchange, reason: str) -> None: ...
    def on_lost(self, exch: Exchange, reason: str) -> None: ...

    def on_unsent_full(self, exch: Exchange, reason: str) -> None:
        """Not written: the connection's peer leaves too many bytes unread (regproxy.proxy.flow)."""

    def on_foreign(self, exch: Exchange | None, reason: str) -> None:
        """A frame that answers no request in flight; ``exch``: the request it came in place of."""


class UpstreamConnection(asyncio.Protocol, BatchedWriter):
    __slots__ = (
        "_next_id",
        "_parser",
        "_pool",
        "address",
        "full",
        "latency",
        "local",
        "pending",
        "readonly",
        "state",
        "waiting",
    )

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self._pool = pool
        self._batcher = pool.batcher
        self._out: list[bytes | bytearray] = []
        self._parser = FrameParser(pool.max_body)
        self._next_id = 0
        self.address = address
        self.state = ConnState.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, Exchange] = {}
        self.waiting: list[Exchange] = []
        self.readonly = False  # the provider announced shutdown: no new requests
        # Its peer left limits.max_unsent_bytes_per_connection unread: new requests are not written.
        self.full = False
        self.local: str | None = None  # "ip:port" of our end while open, when the pool has a LoopGuard
        self.latency = pool.events.host_latency(address)

    @property
    def load(self) -> int:
        return len(self.pending) + len(self.waiting)

    def submit(self, exch: Exchange) -> None:
        self.submit_all((exch,))

    def submit_all(self, exchs: Sequence[Exchange]) -> None:
        """Write each request with a fresh id of this connection, or keep it for when it opens."""
        if self.state is not ConnState.OPEN:
            for exch in exchs:
                exch.upstream = self
            self.waiting.extend(exchs)
            return
        if self.full:
            self._refuse_full(exchs)
            return
        pending, out = self.pending, self._out  # open: the transport is there
        if not out:
            self._batcher.mark(self)
        upstream_id = self._next_id
        buf = bytearray()
        for exch in exchs:
            upstream_id = upstream_id + 1 if upstream_id < _MAX_ID else 1
            exch.upstream = self
            exch.upstream_id = upstream_id
            if exch.two_way:
                pending[upstream_id] = exch
            # The request as it came, with this connection's id: one copy, no re-encoding. The body
            # length is written with it: the forwarder may have added or removed the loop marker.
            raw = exch.raw
            at = len(buf)
            buf += raw
            patch_id_and_length(buf, at + 4, upstream_id, len(raw) - 16)
        out.append(buf)
        self._next_id = upstream_id

    def forget(self, exch: Exchange) -> None:
        """Drop a request whose deadline passed; a late response will find nothing and be dropped."""
        if not exch.upstream_id or self.pending.pop(exch.upstream_id, None) is None:
            with contextlib.suppress(ValueError):
                self.waiting.remove(exch)

    def _refuse_full(self, exchs: Sequence[Exchange]) -> None:
        transport = self.transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        reason = (
            f"not sent: {unsent} bytes to {self.address} are still unsent (its peer is not reading; "
            f"limits.max_unsent_bytes_per_connection is {self._pool.max_unsent})"
        )
        events = self._pool.events
        for exch in exchs:
            exch.upstream = None
            events.on_unsent_full(exch, reason)

    # asyncio.Protocol

    def pause_writing(self) -> None:
        # The transport's high mark is max_unsent itself: past it, nothing more is written here.
        # (One large write can pass it by much: the figure is what is unsent, not the limit.)
        self.full = True
        self._pool.full_changed(self)
        transport = self.transport
        self._pool.warn(
            f"{self.address} full",
            f"{transport.get_write_buffer_size() if transport is not None else '?'} bytes to "
            f"{self.address} unsent (limits.max_unsent_bytes_per_connection): its peer is not reading; "
            "new requests go to other hosts or fail until it reads",
        )

    def resume_writing(self) -> None:
        self.full = False
        self._pool.full_changed(self)
        log.info("%s reads again: requests are written to it", self.address)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        max_unsent = self._pool.max_unsent
        self.transport.set_write_buffer_limits(high=max_unsent, low=max_unsent // 2)
        self.state = ConnState.OPEN
        self._pool.connected(self)
        waiting, self.waiting = self.waiting, []
        if waiting:
            self.submit_all(waiting)

    def connect_failed(self, reason: str) -> None:
        self.state = ConnState.CLOSED
        self._pool.discard(self, failed=True)
        waiting, self.waiting = self.waiting, []
        events = self._pool.events
        for exch in waiting:
            events.on_not_written(exch, reason)

    def data_received(self, data: bytes) -> None:
        error: ProtocolError | None = None
        try:
            frames = self._parser.feed_raw(data)
        except ProtocolError as exc:
            frames, error = exc.raw_frames, exc
        events = self._pool.events
        pending = self.pending
        exchs: list[Exchange] = []
        raws: list[bytes] = []
        foreign: str | None = None
        for raw in frames:
            flag = raw[2]
            if flag & _REQUEST_OR_EVENT:
                # A request from the provider (only events are legitimate), or a heartbeat reply.
                if flag & FLAG_REQUEST and flag & FLAG_EVENT:
                    if flag & FLAG_TWOWAY:
                        self.queue(heartbeat_reply(frame_request_id(raw)))
                    elif raw[-1:] == b"R" and len(raw) > 16:
                        self.readonly = True
                        self._pool.discard(self)
                elif flag & FLAG_REQUEST:
                    self._foreign_request(raw)
                continue
            upstream_id = frame_request_id(raw)
            exch = pending.pop(upstream_id, None)
            if exch is not None:
                exchs.append(exch)
                raws.append(raw)
            elif upstream_id > self._next_id or upstream_id <= 0:
                # Not a late answer (the deadline passed and it was forgotten: dropped): an id this
                # connection never gave. A peer that invents ids cannot be trusted with the others.
                foreign = f"it answered request id {upstream_id}, which was never sent on it"
                break
        if exchs:
            events.on_responses(exchs, raws, self.latency)
            if len(exchs) >= EARLY_FLUSH_FRAMES:
                self._batcher.flush()
        if foreign is not None:
            events.on_foreign(None, foreign)
            self._warn(f"{foreign}; closing it, its requests in flight fail now")
            self._fail_all(f"{self.address} {foreign}: the connection was closed with the request in flight")
            if self.transport is not None:
                self.transport.abort()
        elif error is not None:
            self._fail_all(f"provider {self.address} sent a malformed stream: {error}")
            if self.transport is not None:
                self.transport.abort()

    def _foreign_request(self, raw: bytes) -> None:
        """A request from the upstream, not a heartbeat. Echoed back (an echo server, a TCP relay to
        a consumer, a loop), its id is one of ours: the request it stands in for is answered with
        the reason now, not at its deadline. Otherwise it is the provider calling back (a Dubbo
        callback parameter), which regproxy does not carry: answered with an error, so the provider
        does not wait either."""
        request_id = frame_request_id(raw)
        exch = self.pending.get(request_id)
        # Ours only if it is what we sent: a provider numbers its own requests (a Java one from 0,
        # JVM-wide: org.apache.dubbo.remoting.exchange.Request's static INVOKE_ID), so a callback
        # can carry the id of a request of ours in flight.
        if exch is not None and len(raw) == len(exch.raw) and raw[16:] == exch.raw[16:]:
            del self.pending[request_id]
            reason = (
                f"{self.address} answered with a request frame (flag 0x{raw[2]:02x}), not a response: "
                "it is not a Dubbo provider, or it sends requests back"
            )
            self._warn(reason)
            self._pool.events.on_foreign(exch, reason)
            return
        self._warn(
            f"it sent a request (id {request_id}); regproxy does not carry calls from a provider "
            "to its consumer"
        )
        self._pool.events.on_foreign(None, "a request from the provider")
        if raw[2] & FLAG_TWOWAY:
            self.queue(
                encode_error(
                    request_id,
                    Status.BAD_REQUEST,
                    "regproxy: requests from a provider to its consumer (Dubbo callbacks) are not carried",
                )
            )

    def _warn(self, what: str) -> None:
        # A peer sending the wrong frames sends many, on each new connection too.
        self._pool.warn(
            f"{self.address} foreign",
            f"upstream connection to {self.address}: {what} (counted in upstream_foreign_frames)",
        )

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        # CLOSED already: this side closed it (drop, close), which is no refusal by the peer.
        by_peer = self.state is not ConnState.CLOSED
        self.state = ConnState.CLOSED
        self.transport = None
        pool = self._pool
        if (
            exc is None
            and by_peer
            and pool.tls is not None
            and transport is not None
            and pool.tls.refused(transport)
        ):
            # The peer never completed the TLS handshake: nothing written here reached it, so this
            # is a connect failure (another host may take the requests), not a lost connection.
            reason = f"cannot connect to {self.address}: {pool.tls.refusal_reason}"
            pool.warn(f"{self.address} tls", reason)
            pool.discard(self, failed=True)
            self._fail_all(reason, written=False)
            return
        pool.discard(self)
        code, text = _os_error(exc)
        if code in _GAVE_UP and pool.user_timeout_ms:
            silent = (
                f"{self.address} acknowledged nothing for {pool.user_timeout_ms} ms "
                f"(upstream.user_timeout_ms): unreachable or gone ({text or exc})"
            )
            pool.warn(
                f"{self.address} timeout",
                f"connection to {self.address} closed: {silent}; {self.load} request(s) in flight fail",
            )
            self._fail_all(f"connection to {self.address} closed with the request in flight: {silent}")
            return
        why = f"connection to {self.address} closed" + (f" ({exc})" if exc else "")
        self._fail_all(why + " with the request in flight")

    def _fail_all(self, reason: str, *, written: bool = True) -> None:
        pending, self.pending = self.pending, {}
        events = self._pool.events
        for exch in pending.values():
            if written:
                events.on_lost(exch, reason)
            else:
                events.on_not_written(exch, reason)
        waiting, self.waiting = self.waiting, []
        for exch in waiting:
            events.on_not_written(exch, reason)

    def close(self) -> None:
        if self.transport is not None:
            self.state = ConnState.CLOSED  # our close, not the peer's (connection_lost)
            self.transport.close()


# Tests replace how the pool dials (tests/test_listener_fuzz.py): a subclass in plain Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamPool:
    """Up to ``per_host`` connections per address, made on first use, shared by all requests."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        batcher: Batcher,
        events: UpstreamEvents,
        *,
        per_host: int = 1,
        connect_timeout_s: float = 1.0,
        max_body: int,
        backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        tls: UpstreamTLS | None = None,
        guard: LoopGuard | None = None,
        name: str = "",
        max_unsent: int = 64 * 1024 * 1024,
        user_timeout_ms: int = 0,
    ) -> None:
        self.loop = loop
        # upstream.user_timeout_ms: set on each connection once it is open, never per request.
        self.user_timeout_ms = user_timeout_ms
        self._sockopts = silence_bound_options(user_timeout_ms)
        self.max_unsent = max_unsent  # limits.max_unsent_bytes_per_connection (regproxy.proxy.flow)
        self.tls = tls
        # The sidecar's loop guard learns the local address of each connection (regproxy.proxy.loops);
        # ``name`` is the listener whose pool this is.
        self.guard = guard
        self.name = name
        self.batcher = batcher
        self.events = events
        self.per_host = per_host
        self.connect_timeout_s = connect_timeout_s
        self.max_body = max_body
        self.backoff_s = backoff_s
        self._clock = clock
        self._conns: dict[str, list[UpstreamConnection]] = {}
        self._next: dict[str, int] = {}
        self._failed_until: dict[str, float] = {}
        self._full: set[str] = set()  # addresses whose connections are all full (full_changed)
        self._warned_at: dict[str, float] = {}  # by warn()'s key
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def connection(self, address: str) -> UpstreamConnection:
        conns = self._conns.get(address)
        if conns and self.per_host == 1:
            return conns[0]  # the default: one connection per host, every request multiplexed on it
        if conns is None:
            conns = self._conns[address] = []
        if len(conns) < self.per_host:
            conn = UpstreamConnection(self, address)
            conns.append(conn)
            self._connect(conn)
            return conn
        i = self._next.get(address, 0) + 1
        self._next[address] = i
        return conns[i % len(conns)]

    @property
    def any_failing(self) -> bool:
        """False when no host failed a connect lately or is full: then ``is_failing`` is False for all."""
        return bool(self._failed_until) or bool(self._full)

    def is_failing(self, address: str) -> bool:
        """Connecting to it failed recently, or its connections are full: pick another host first."""
        if address in self._full:
            return True
        until = self._failed_until.get(address)
        return until is not None and until > self._clock()

    def full_changed(self, conn: UpstreamConnection) -> None:
        """A connection's peer stopped or started reading again (regproxy.proxy.flow): an address
        whose every connection is full is avoided by the balancer, as after a connect failure, so
        that requests do not spend a retry on it."""
        conns = self._conns.get(conn.address)
        if conns and all(c.full for c in conns):
            self._full.add(conn.address)
        else:
            self._full.discard(conn.address)

    def warn(self, key: str, message: str) -> None:
        """Log ``message`` at most once a minute per ``key``: a misbehaving peer repeats itself, on
        every new connection too."""
        now = self._clock()
        if now - self._warned_at.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
            if len(self._warned_at) >= 4096:
                self._warned_at.clear()
            self._warned_at[key] = now
            log.warning("%s", message)

    def active(self, address: str) -> int:
        """Requests in flight to an address (the least-request balancer reads this)."""
        conns = self._conns.get(address)
        return sum(c.load for c in conns) if conns else 0

    def drop(self, address: str) -> int:
        """Abort the open connections to ``address`` (a host that stopped answering heartbeats); how
        many. A host that vanished without a reset (power, network) leaves connections that look open
        until TCP gives up, minutes later: requests in flight on them would wait for their deadline, and
        once the host is back, new requests would queue behind TCP's retransmission backoff. Aborted,
        the requests in flight fail now (as lost) and the next request connects afresh."""
        conns = self._conns.get(address, [])
        open_conns = [c for c in conns if c.state is ConnState.OPEN]
        for conn in open_conns:
            conns.remove(conn)  # out of the pool now: nothing new is written on it
            if conn.transport is not None:
                conn.state = ConnState.CLOSED  # our abort: whatever it looks like, no TLS refusal
                conn.transport.abort()  # connection_lost fails what is in flight
        if not conns:
            self._conns.pop(address, None)
        return len(open_conns)

    def connected(self, conn: UpstreamConnection) -> None:
        self._failed_until.pop(conn.address, None)
        # Before anything is written on it: the listener that accepts it looks at its first bytes.
        if self.guard is not None and conn.transport is not None:
            transport = conn.transport
            local, remote = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
            conn.local = self.guard.opened(local, self.name, conn.address, remote)

    def discard(self, conn: UpstreamConnection, *, failed: bool = False) -> None:
        if conn.local is not None and self.guard is not None:
            self.guard.closed(conn.local)
            conn.local = None
        conns = self._conns.get(conn.address)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.address]
        if conn.address in self._full:
            self.full_changed(conn)  # the full one is gone: a new connection starts empty
        if failed:
            self._failed_until[conn.address] = self._clock() + self.backoff_s

    def _connect(self, conn: UpstreamConnection) -> None:
        task = self.loop.create_task(self._open(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, conn: UpstreamConnection) -> None:
        host, _, port = conn.address.rpartition(":")
        host = host.strip("[]")
        # TLS handshake included: a peer whose certificate fails verification is a connect failure
        # (nothing written, the request can go to another host), reported with OpenSSL's reason.
        tls = self.tls.connect_args(conn.address, host) if self.tls is not None else {}
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: conn, host, int(port), **tls),
                self.connect_timeout_s + tls.get("ssl_handshake_timeout", 0),
            )
        except (TimeoutError, OSError, ValueError) as exc:
            reason = _connect_error(exc, bool(tls))
            log.warning("cannot connect to %s: %s", conn.address, reason)
            conn.connect_failed(f"cannot connect to {conn.address}: {reason}")
        except asyncio.CancelledError:
            conn.connect_failed(f"connecting to {conn.address} was cancelled (shutting down)")
            raise
        else:
            if self._sockopts:
                self._bound_silence(conn)
        self.batcher.flush()

    def _bound_silence(self, conn: UpstreamConnection) -> None:
        """upstream.user_timeout_ms on a new connection (see silence_bound_options): a host that
        vanished without a reset (power, network) is given up on within the bound, even with active
        health checks off; the requests in flight fail then, and the next request connects anew."""
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return  # closed already
        try:
            for level, option, value in self._sockopts:
                sock.setsockopt(level, option, value)
        except OSError as exc:
            self.warn(
                "sockopt",
                f"upstream.user_timeout_ms cannot be set on connections to {conn.address}: {exc}",
            )

    def describe(self) -> dict[str, list[dict[str, object]]]:
        return {
            address: [{"state": c.state.value, "in_flight": c.load, "readonly": c.readonly} for c in conns]
            for address, conns in self._conns.items()
        }

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
