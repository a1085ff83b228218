"""The lifecycle of a Triple call through one listener, as regproxy.proxy.forwarder is a Dubbo
request's: read the call's routing facts from its headers (regproxy.triple.call), take the
decision from the same planner (regproxy.proxy.plan, with only the hosts that speak Triple), run
the rule's filters, pick a host with the same balancers and health, open a stream to it
(regproxy.triple.upstream), and let the TripleExchange carry the bytes. Also what the Dubbo path
does around a call: the deadline (``grpc-timeout``, propagated as what is left of it), the retry
that is safe for a stream (one the upstream never processed), loop detection (the
``regproxy-via`` header: ids of the egresses a call passed), counters, the access log, and an
answer that names the cause when regproxy ends a call itself, as a gRPC status
(regproxy.triple.status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter

import h2.errors
import h2.exceptions

from regproxy.governance.params import token_of
from regproxy.health import HostHealth, NoHealth
from regproxy.proxy.filters import AccessLog, Delay
from regproxy.proxy.loops import LoopGuard
from regproxy.proxy.plan import NoRoute, Planner
from regproxy.proxy.stats import ListenerStats
from regproxy.routing import Host, TableHolder
from regproxy.routing.model import SPEAKS_TRI
from regproxy.routing.rules import RETRY_RESET
from regproxy.tls import UpstreamTLS
from regproxy.triple import settings
from regproxy.triple.call import parse_call
from regproxy.triple.downstream import TripleDownstream
from regproxy.triple.exchange import Headers, TripleExchange
from regproxy.triple.request import DEFAULT_VERSION, TripleRequest
from regproxy.triple.status import (
    LOOP,
    NO_PROVIDER,
    RATE_LIMITED,
    TIMEOUT,
    UNREACHABLE,
    Code,
    TripleError,
    grpc_code_for_response_status,
    proxy_error,
)
from regproxy.triple.timeout import format_timeout
from regproxy.triple.upstream import TriplePool, TripleUpstream

log = logging.getLogger(__name__)

# The header that carries the ids of the egresses a call passed (the Dubbo path's
# ``regproxy.via`` attachment): an egress that finds its own id answers the call with the loop
# error; the ingress takes the header out before the application sees it.
VIA_HEADER = b"regproxy-via"
# Headers regproxy sets itself on what it forwards (the rest go as they came). ``host`` goes: it
# would contradict the :authority set for the host (RFC 9113 §8.3.1), which h2 refuses.
_REWRITTEN = frozenset({b":authority", b":scheme", b"grpc-timeout", b"host", VIA_HEADER})
# How much later than the deadline it was sent the ingress ends a call (see on_request).
INGRESS_GRACE_MS = 50
# Dubbo's SERVER_THREADPOOL_EXHAUSTED, what a rate-limit rule answers a Dubbo call with.
_RATE_LIMIT_STATUS = 100


class TripleForwarder:
    """One listener's Triple calls in flight, from the client's stream to the upstream's answer.

    Owns the client connections that spoke HTTP/2 (``downstreams``), the upstream pool and the
    calls (``in_flight``). Shares with the listener's Dubbo forwarder: the table, the loop guard,
    the health view and the access log; its counters are its own (``stats``), so that metrics tell
    the protocols apart.
    Invariants: a call ends exactly once (``finish``); a call is sent to another host only when the
    upstream cannot have processed it.
    """

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        table: TableHolder,
        *,
        guard: LoopGuard,
        default_timeout_ms: int,
        timeout_from_attachment: bool,
        connect_timeout_s: float,
        max_connections: int = 10000,
        stats: ListenerStats | None = None,
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.name = name
        self.loop = loop
        self.table = table
        self.guard = guard
        self.egress = timeout_from_attachment  # the egress reads the caller's deadline and marks calls
        self.via = guard.id_bytes if name == "egress" else None
        self.max_connections = max_connections
        self.stats = stats if stats is not None else ListenerStats()
        self.pool = TriplePool(
            self, loop, name=name, guard=guard, connect_timeout_s=connect_timeout_s, tls=tls
        )
        self.planner = Planner(
            self.stats.histogram,
            self.pool.active,
            default_timeout_ms=default_timeout_ms,
            timeout_from_attachment=timeout_from_attachment,
            speaks=SPEAKS_TRI,
        )
        self.downstreams: set[TripleDownstream] = set()
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self.health: HostHealth = NoHealth()
        self.access_log: AccessLog | None = None
        self._dirty: list[TripleDownstream | TripleUpstream] = []
        self._flush_handle: asyncio.Handle | None = None

    # --- connections -----------------------------------------------------------------------------

    def adopt(self, transport: asyncio.Transport, data: bytes, peer: str, loop_reason: str | None) -> None:
        """A listener connection whose first bytes are the HTTP/2 preface: served here from now on."""
        down = TripleDownstream(self, peer, loop_reason)
        if len(self.downstreams) >= self.max_connections:
            self.stats.rejected_connections += 1
            log.warning(
                "%s: refusing HTTP/2 connection from %s: %d connections open (limits.max_connections)",
                self.name, peer, len(self.downstreams),
            )  # fmt: skip
            transport.close()
            return
        self.downstreams.add(down)
        self.stats.downstream_connections += 1
        down.adopt(transport, data)

    def down_lost(self, down: TripleDownstream) -> None:
        if down in self.downstreams:
            self.downstreams.discard(down)
            self.stats.downstream_connections -= 1
        self.end_calls(down, "the client's connection closed")

    def end_calls(self, down: TripleDownstream, why: str) -> None:
        """The client's calls cannot be answered any more: each is cancelled upstream and ends."""
        for exch in list(down.exchanges.values()):
            if not exch.finished:
                log.debug("%s: %s cancelled: %s", self.name, exch.label, why)
                exch.reset_up()
                down.closed = True  # nothing more is written to it
                self.finish(exch, int(Code.CANCELLED))

    def broken_connection(self, down: TripleDownstream, exc: h2.exceptions.ProtocolError) -> None:
        """The client broke HTTP/2: h2 queued a GOAWAY naming the error; its calls end."""
        self.stats.protocol_errors += 1
        log.warning("%s: closing HTTP/2 connection from %s: %s: %s", self.name, down.peer,
                    type(exc).__name__, exc)  # fmt: skip
        self.end_calls(down, "the client broke HTTP/2")
        down.close()

    def flood(self, down: TripleDownstream, what: str) -> None:
        self.stats.protocol_errors += 1
        log.warning("%s: closing HTTP/2 connection from %s: %s (GOAWAY ENHANCE_YOUR_CALM)", self.name,
                    down.peer, what)  # fmt: skip

    def unsent_overflow(self, down: TripleDownstream, unsent: int) -> None:
        self.stats.unsent_closes += 1
        log.warning(
            "%s: closing HTTP/2 connection from %s: %d bytes written to it and not read, the limit is %d: "
            "the client does not read", self.name, down.peer, unsent, settings.MAX_UNSENT,
        )  # fmt: skip

    def upstream_broken(self, up: TripleUpstream, reason: str) -> None:
        self.stats.protocol_errors += 1
        log.warning("%s: %s; closing the connection", self.name, reason)

    # --- writes, once per loop pass --------------------------------------------------------------

    def dirty(self, conn: TripleDownstream | TripleUpstream) -> None:
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    # --- a new call ------------------------------------------------------------------------------

    def on_request(self, down: TripleDownstream, stream_id: int, headers: Headers) -> None:
        stats = self.stats
        if len(down.exchanges) >= settings.MAX_STREAMS:
            # Over the SETTINGS_MAX_CONCURRENT_STREAMS it was told: a stream error (settings.py).
            with contextlib.suppress(h2.exceptions.ProtocolError):
                down.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            down.dirty()
            stats.refused_streams += 1
            down.refused(self.loop.time())
            return
        stats.requests += 1
        started = perf_counter()
        if down.loop_reason is not None:
            self._refuse(
                down, stream_id, proxy_error(LOOP, f"request loop: not forwarded: {down.loop_reason}")
            )
            stats.loops += 1
            return
        try:
            call = parse_call(headers)
        except TripleError as exc:
            self._refuse(down, stream_id, exc, bad=True)
            return
        via = b""
        for name, value in headers:
            if name == VIA_HEADER:
                via = value
                break
        if self.via is not None and via and self.via in via.split(b" "):
            stats.loops += 1
            message = (
                f"request loop: /{call.service}/{call.method} came back to the egress of sidecar "
                f"{self.guard.id} (passed {via.decode('ascii', 'replace')}): not forwarded"
            )
            self.guard.report(f"{self.name}:tri:{call.service}", message)
            self._refuse(down, stream_id, proxy_error(LOOP, message))
            return
        table = self.table.current
        planner = self.planner
        if table is not planner.table:
            planner.reset(table)
        decision = planner.plan(b"", TripleRequest(call), table)  # type: ignore[arg-type]
        if isinstance(decision, NoRoute) and not call.version:
            # No version named: Dubbo's TriplePathResolver falls back to 1.0.0.
            fallback = planner.plan(b"", TripleRequest(call, DEFAULT_VERSION), table)  # type: ignore[arg-type]
            if not isinstance(fallback, NoRoute):
                decision = fallback
        if isinstance(decision, NoRoute):
            self._refuse(
                down, stream_id, proxy_error(NO_PROVIDER, f"regproxy {self.name}: {decision.message}")
            )
            return
        plan = decision
        guard = plan.guard
        if guard is not None and guard.token and call.attachment("token") != guard.token:
            # TokenFilter on the provider: a call must carry the token it was published with. Dubbo
            # throws a bare RpcException, which TriRpcStatus.getStatus makes UNKNOWN.
            stats.refused_tokens += 1
            remote = call.attachment("token")
            message = (
                f"Invalid token! Forbid invoke remote service interface {guard.service} method "
                f"{call.method}() from consumer {down.peer} to provider {self.name}, consumer incorrect "
                f"token is {'null' if remote is None else remote}"
            )
            self._refuse(down, stream_id, TripleError(message, Code.UNKNOWN))
            return
        stats.per_service[plan.counter_key] = stats.per_service.get(plan.counter_key, 0) + 1
        exch = TripleExchange(self, down, stream_id, call, self._forwarded(headers, via), plan, started)
        exch.from_egress = bool(via) and self.via is None
        down.exchanges[stream_id] = exch
        self.in_flight += 1
        timeout_ms: int | None
        if self.egress:
            # As for a Dubbo call: the route's or rule's timeout (or the config center's override)
            # first, then the caller's own, then the providers' declared one; else none (a stream
            # may rightly last long: gRPC's "no deadline").
            timeout_ms = plan.timeout_ms or call.timeout_ms
            if timeout_ms is None:
                timeout_ms = plan.fallback_ms or None
        else:
            # The ingress: the deadline the egress sent, passed on as it is; never the ingress's
            # default bound, which a stream may outlive.
            timeout_ms = call.timeout_ms
        if timeout_ms is not None:
            exch.timeout_ms = timeout_ms
            # The ingress ends it a little later than the egress does, so that the hop nearer the
            # caller answers (its message names the egress): a backstop for a caller that comes
            # straight to the ingress.
            grace = 0 if self.egress else INGRESS_GRACE_MS
            exch.deadline = self.loop.call_later((timeout_ms + grace) / 1000, self._on_deadline, exch)
        if plan.filters:
            self._run_filters(exch, 0)
        else:
            self._dispatch(exch, None)

    def _forwarded(self, headers: Headers, via: bytes) -> Headers:
        """The request headers as they go upstream, before :authority and grpc-timeout (set per
        attempt): the egress adds its id to ``regproxy-via``, the ingress takes the header out."""
        out: Headers = []
        for name, value in headers:
            if name not in _REWRITTEN:
                out.append((name, value))
        if self.via is not None:
            out.append((VIA_HEADER, via + b" " + self.via if via else self.via))
        return out

    def _refuse(self, down: TripleDownstream, stream_id: int, error: TripleError, bad: bool = False) -> None:
        """Answer a call that never got an exchange (not a gRPC request, no route, a loop)."""
        if bad:
            self.stats.protocol_errors += 1
            log.info("%s: refusing a call from %s: %s", self.name, down.peer, error.message)
        headers: Headers
        if error.http_status != 200:
            headers = [(b":status", str(error.http_status).encode()), *_encoded(error.trailers())]
        else:
            headers = [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                *_encoded(error.trailers()),
            ]
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            down.h2.send_headers(stream_id, headers, end_stream=True)
        down.dirty()
        self._count(int(error.code))

    def _count(self, code: int) -> None:
        responses = self.stats.responses
        responses[code] = responses.get(code, 0) + 1

    # --- filters, picks, sends -------------------------------------------------------------------

    def _run_filters(self, exch: TripleExchange, start: int) -> None:
        filters = exch.plan.filters
        for i in range(start, len(filters)):
            decision = filters[i].on_request(exch)  # type: ignore[arg-type]
            if decision is None:
                continue
            if isinstance(decision, Delay):
                self.loop.call_later(decision.seconds, self._resume_filters, exch, i + 1)
            else:
                cause = RATE_LIMITED if decision.status == _RATE_LIMIT_STATUS else None
                error = (
                    proxy_error(cause, decision.message)
                    if cause is not None
                    else TripleError(decision.message, grpc_code_for_response_status(decision.status))
                )
                self.fail(exch, error)
            return
        self._dispatch(exch, None)

    def _resume_filters(self, exch: TripleExchange, index: int) -> None:
        if not exch.finished:
            self._run_filters(exch, index)

    def _pick(self, exch: TripleExchange) -> Host | None:
        plan = exch.plan
        hosts = plan.hosts
        pool = self.pool
        failing = [h.address for h in hosts if pool.is_failing(h.address)] if pool.failing else []
        health = self.health
        if health.any_unavailable():
            failing += [h.address for h in hosts if not health.available(h.address)]
        balancer = plan.balancer
        if plan.needs_arguments:
            # consistenthash reads the call's arguments, which are not decoded here: it hashes
            # none, as the Dubbo path does for arguments it cannot read.
            pick_with = balancer.pick_with  # type: ignore[attr-defined]
            if failing:
                host: Host | None = pick_with(hosts, set(exch.tried).union(failing), [])
                if host is not None:
                    return host
            return pick_with(hosts, exch.tried, [])  # type: ignore[no-any-return]
        if failing:
            host = balancer.pick(hosts, set(exch.tried).union(failing))
            if host is not None:
                return host
        return balancer.pick(hosts, exch.tried)

    def _dispatch(self, exch: TripleExchange, last_error: str | None) -> None:
        host = self._pick(exch) if not self.pool.closed else None
        if host is None:
            if last_error is not None:
                self.fail(exch, proxy_error(UNREACHABLE, f"regproxy {self.name}: {last_error}; tried "
                                            f"{len(exch.tried)} host(s) for {exch.label}"))  # fmt: skip
            elif self.pool.closed:
                self.fail(exch, TripleError(f"regproxy {self.name} is shutting down", Code.UNAVAILABLE))
            else:
                self.fail(exch, proxy_error(NO_PROVIDER, f"regproxy {self.name}: no Triple provider for "
                                            f"{exch.service} (cluster has no healthy host)"))  # fmt: skip
            return
        exch.tried += (host.address,)
        sent = self.stats.upstream_requests
        sent[host.address] = sent.get(host.address, 0) + 1
        headers = self._attempt_headers(exch, host)
        size = sum(len(name) + len(value) + 32 for name, value in headers)  # RFC 9113 §6.5.2
        if size > settings.MAX_HEADER_LIST:
            # What the caller sent, and what regproxy adds, is over what an upstream (another
            # sidecar's listener) takes: refused here, rather than the upstream cutting the
            # connection every call shares.
            message = (
                f"regproxy {self.name}: the call's headers come to {size} bytes with what regproxy adds "
                f"(:authority, grpc-timeout, regproxy-via), over the {settings.MAX_HEADER_LIST} an "
                "upstream takes"
            )
            self.fail(exch, TripleError(message, Code.RESOURCE_EXHAUSTED))
            return
        self.pool.open(exch, host.address, headers)

    def _attempt_headers(self, exch: TripleExchange, host: Host) -> Headers:
        """The headers of one attempt: :authority the host, what is left of the deadline, and the
        provider's token where it declares one (Dubbo's TokenFilter reads the attachment)."""
        headers = exch.headers
        pseudo = [h for h in headers if h[0].startswith(b":")]
        rest = [h for h in headers if not h[0].startswith(b":")]
        out: Headers = [*pseudo, (b":scheme", b"http"), (b":authority", host.address.encode())]
        out.extend(rest)
        if exch.timeout_ms is not None:
            left = exch.timeout_ms - int((perf_counter() - exch.started) * 1000)
            out.append((b"grpc-timeout", format_timeout(max(left, 1)).encode()))
        if exch.plan.token:
            token = token_of(host.metadata)
            if token:
                out = [h for h in out if h[0] != b"token"]
                out.append((b"token", token.encode()))
        return out

    def _original_headers(self, exch: TripleExchange) -> None:
        """Before a retry: the headers without what the last attempt set."""
        exch.headers = [h for h in exch.headers if h[0] not in (b":scheme", b":authority", b"grpc-timeout")]

    # --- what the upstream does ------------------------------------------------------------------

    def up_unprocessed(self, exch: TripleExchange, reason: str) -> None:
        """The upstream never processed the call (not connected, REFUSED_STREAM, above a GOAWAY's
        last stream): sent to another host if its request is all still here, else answered."""
        if exch.finished:
            return
        self.health.report(exch.tried[-1], False)
        if exch.replay is None:
            self.fail(exch, proxy_error(UNREACHABLE, f"regproxy {self.name}: {reason}; the request "
                                        f"was too large to send again for {exch.label}"))  # fmt: skip
            return
        self._retry(exch, reason)

    def _retry(self, exch: TripleExchange, reason: str) -> None:
        replay = exch.replay or []
        exch.to_up.extendleft(reversed(replay))
        exch.replay, exch.replay_bytes = [], 0
        exch.up, exch.up_id, exch.up_end_sent = None, 0, False
        self._original_headers(exch)
        self.stats.retries += 1
        log.debug("%s: %s: %s; trying another host", self.name, exch.label, reason)
        self._dispatch(exch, reason)

    def up_lost(self, exch: TripleExchange, reason: str) -> None:
        """The connection went while the call was on it: the upstream may have run it."""
        if exch.finished:
            return
        self.health.report(exch.tried[-1], False)
        if not exch.up_answered and exch.replay is not None and exch.plan.retry_on & RETRY_RESET:
            self._retry(exch, reason)
            return
        self.fail(exch, proxy_error(UNREACHABLE, f"regproxy {self.name}: {reason} during {exch.label}"))

    def up_reset(self, exch: TripleExchange, error_code: int) -> None:
        """The upstream reset its stream: REFUSED_STREAM is a call it never processed; any other
        code is passed on to the client as it came."""
        if exch.finished:
            return
        if error_code == h2.errors.ErrorCodes.REFUSED_STREAM and not exch.up_answered:
            exch.up = None
            self.up_unprocessed(exch, f"{exch.tried[-1]} refused the stream")
            return
        exch.up = None  # its stream is gone
        exch.reset_down(error_code)
        self.finish(exch, -1)

    def down_reset(self, exch: TripleExchange, error_code: int) -> None:
        """The client reset (cancelled) its stream: the upstream's is reset too."""
        if exch.finished:
            return
        exch.reset_up(h2.errors.ErrorCodes.CANCEL)
        self.finish(exch, int(Code.CANCELLED))

    def _on_deadline(self, exch: TripleExchange) -> None:
        exch.deadline = None
        if exch.finished:
            return
        self.stats.timeouts += 1
        upstream = exch.tried[-1] if exch.tried else "none picked"
        message = (
            f"regproxy {self.name}: deadline of {exch.timeout_ms} ms exceeded for {exch.label} "
            f"(upstream {upstream})"
        )
        self.fail(exch, proxy_error(TIMEOUT, message))

    # --- ends ------------------------------------------------------------------------------------

    def fail(self, exch: TripleExchange, error: TripleError) -> None:
        """End the call here with ``error``: the upstream stream is reset, the client told."""
        if exch.finished:
            return
        exch.reset_up()
        exch.answer_error(error)
        self.finish(exch, exch.status)

    def finish(self, exch: TripleExchange, status: int) -> None:
        """The call is over (answered, failed or reset): counted once, its streams forgotten."""
        if exch.finished:
            return
        exch.finished = True
        exch.status = status
        if exch.deadline is not None:
            exch.deadline.cancel()
            exch.deadline = None
        down = exch.down
        down.exchanges.pop(exch.down_id, None)
        if down.goaway_due and not down.exchanges:
            down.dirty()  # the end of this call goes out first
            self.loop.call_soon(down.announce_goaway)
        if not exch.down_done and not down.closed:
            # The answer is complete but the client still sends: it may stop (gRPC servers do so).
            exch.reset_down(h2.errors.ErrorCodes.NO_ERROR)
        exch.reset_up()  # forgets the upstream stream; resets it unless both sides ended
        exch.to_up.clear()
        exch.to_down.clear()
        elapsed = perf_counter() - exch.started
        exch.plan.hist.observe(elapsed)
        if exch.tried:
            self.stats.host_histogram(exch.tried[-1]).observe(elapsed)
        self._count(status)
        if status != 0:
            errors = self.stats.per_service_errors
            errors[exch.plan.counter_key] = errors.get(exch.plan.counter_key, 0) + 1
            if exch.tried:  # by the last host tried; none tried (no route, no host): nobody's
                by_host = self.stats.upstream_errors
                by_host[exch.tried[-1]] = by_host.get(exch.tried[-1], 0) + 1
        if exch.up_answered and exch.tried:
            self.health.report(exch.tried[-1], True)
        if self.access_log is not None:
            self.access_log.record(self.name, exch, status, elapsed, protocol="tri")  # type: ignore[arg-type]
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight (drain), at most ``timeout`` seconds."""
        if self.in_flight <= 0:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None

    async def close(self) -> None:
        for down in list(self.downstreams):
            down.close()
        await self.pool.close()


def _encoded(pairs: list[tuple[str, str]]) -> Headers:
    return [(name.encode(), value.encode()) for name, value in pairs]
