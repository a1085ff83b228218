"""The load generator: Dubbo requests over many connections from one or more processes.

Two modes, both with the request encoded once and only its id patched per send:

* **closed loop** (``rate=None``): every connection keeps ``depth`` requests in flight; each
  response that comes back sends the next request, all the requests one ``data_received`` calls
  for in one ``write``. The count of responses in the window is the maximum throughput.
* **open loop** (``rate`` req/s): requests leave on a fixed schedule whatever the responses do,
  spread round-robin over the connections. Latency is measured from each request's *intended*
  send time, not from when it was written: a generator (or a proxy) that stalls cannot hide the
  stall by sending less — coordinated omission. The schedule is served by a timer armed at the
  next request's exact time (``benchmarks.pacer``) and by every ``data_received``; how late
  requests actually left is reported (``send_lag``) so a reader can tell the generator kept up.

Responses are parsed with regproxy's ``FrameParser``; only their header (id, status) is read.

Processes: ``LoadGenerator(workers=N)`` keeps N worker processes (spawned, so nothing of the
parent's state is inherited) for its whole life and splits connections (and the rate) among them.
Each run has three phases: every worker connects and says ready; the parent sends one start time
for all, then warm-up, then the measured window ``[t_start, t_end)`` on CLOCK_MONOTONIC, which is
the same clock in every process. During the window the parent reads the CPU time of the
processes it was asked to watch (and of the workers) from /proc, so CPU per request comes from
the very window the requests were counted in.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import socket
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, cast

from benchmarks import aio, procstat
from benchmarks.pacer import Pacer
from benchmarks.payload import ID, request_template
from regproxy.dubbo.encode import heartbeat_reply
from regproxy.dubbo.frame import FrameParser, ProtocolError, Status

_OK = int(Status.OK)
# Open loop: the pacer wakes the generator at most this often. A wake-up costs it tens of µs of CPU
# in a VM: one per request would leave it no time to read responses beyond ~20k req/s. Above
# 10k req/s, requests between two wake-ups leave at the next one (or with a response that came
# in before it), so at most this late.
_MIN_WAKE_GAP_S = 100e-6


@dataclass(frozen=True, slots=True)
class LoadSpec:
    host: str
    port: int
    connections: int
    depth: int = 1  # closed loop: requests in flight per connection
    rate: float | None = None  # open loop: total requests per second; None = closed loop
    duration: float = 5.0  # the measured window, seconds
    warmup: float = 1.0  # load before the window, not counted
    drain: float = 1.0  # open loop: how long to wait after the window for its last responses

    @property
    def closed_loop(self) -> bool:
        return self.rate is None


@dataclass(slots=True)
class LoadResult:
    spec: LoadSpec
    window_s: float
    completed: int  # closed: responses received in the window; open: window requests answered
    errors: int  # responses with a status other than OK, among ``completed``
    missing: int  # open loop: window requests never answered (lost or later than the drain)
    qps: float
    latency_ms: dict[str, float]  # p50, p90, p99, p999, max
    send_lag_ms: dict[str, float]  # open loop: how late requests left against their schedule
    cpu_s: dict[str, float]  # CPU seconds in the window per watched group, "generator" included
    cpu_system_s: dict[str, float]  # the part of cpu_s spent in the kernel (system calls, TCP)
    machine_busy: float  # CPU busy share of the whole machine during the window (0..1 per core total)
    workers: int
    failures: list[str] = field(default_factory=list)  # connection errors, protocol errors

    def cpu_us_per_request(self, group: str) -> float | None:
        if not self.completed or group not in self.cpu_s:
            return None
        return self.cpu_s[group] / self.completed * 1e6

    def utilisation(self, group: str, processes: int = 1) -> float:
        """Share of ``processes`` cores the group kept busy during the window."""
        return self.cpu_s.get(group, 0.0) / (self.window_s * max(1, processes))


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in ms of samples in seconds (nearest rank); empty → zeros."""
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, int(q * n))] * 1000, 4)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": round(s[-1] * 1000, 4)}


# --------------------------------------------------------------------------------------------------
# The worker side: one process, one event loop, some of the connections


@dataclass(frozen=True, slots=True)
class _Window:
    begin: float  # load starts (warm-up)
    start: float  # counting starts
    end: float  # counting and sending stop


class _Worker:
    """State shared by one worker's connections."""

    def __init__(self, spec: LoadSpec, window: _Window) -> None:
        self.spec = spec
        self.win = window
        self.pre, self.post = request_template()
        self.conns: list[_Conn] = []
        self.sending = True
        self.latencies = array("d")
        self.lags = array("d")
        self.completed = 0
        self.errors = 0
        self.window_sent = 0  # open loop: requests scheduled inside the window
        self.scheduled = 0  # open loop: requests scheduled since ``begin``
        self.failures: list[str] = []
        self.pacer: Pacer | None = None
        self.limit = 0  # open loop: requests due before the window's end

    def set_window(self, win: _Window) -> None:
        self.win = win
        if self.spec.rate is not None:
            self.limit = math.ceil((win.end - win.begin) * self.spec.rate - 1e-6)

    def on_timer(self) -> None:
        self.pump(time.monotonic())

    def pacing_period(self) -> float:
        """The pacer's period: every request's own time, or every n-th one's above 10k req/s."""
        interval = 1.0 / cast(float, self.spec.rate)
        return interval * math.ceil(_MIN_WAKE_GAP_S / interval - 1e-9)

    def pump(self, now: float) -> None:
        """Open loop: send every request whose intended time has come (up to the window's end)."""
        if not self.sending:
            return
        win = self.win
        rate = cast(float, self.spec.rate)
        # Request k is due at begin + k/rate, so k+1 requests are due from then on; the epsilon
        # keeps float rounding from putting that instant a hair before k (the pacer would then wake
        # to find nothing due, and wake again at once). Only requests due before the end are sent.
        due_total = min(int((now - win.begin) * rate + 1e-6) + 1, self.limit)
        first = self.scheduled
        if due_total <= first:
            return
        conns = self.conns
        n = len(conns)
        start, end = win.start, win.end
        lags = self.lags
        for k in range(first, due_total):
            intended = win.begin + k / rate
            conns[k % n].add(intended)
            if start <= intended < end:
                self.window_sent += 1
                lags.append(now - intended)
        self.scheduled = due_total
        for k in range(first, min(due_total, first + n)):
            conns[k % n].flush()


class _Conn(asyncio.Protocol):
    __slots__ = ("_out", "next_id", "parser", "sent", "transport", "w")

    def __init__(self, worker: _Worker) -> None:
        self.w = worker
        self.parser = FrameParser()
        self.next_id = 1
        self.sent: dict[int, float] = {}  # request id -> send time (closed) or intended time (open)
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.w.sending:
            self.w.failures.append(f"connection lost during the run: {exc or 'closed by the peer'}")
        self.transport = None

    def add(self, t: float) -> None:
        """Queue one request stamped ``t``; ``flush`` writes what was queued."""
        rid = self.next_id
        self.next_id = rid + 1
        self.sent[rid] = t
        self._out += (self.w.pre, ID.pack(rid), self.w.post)

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if self.transport is not None:
                self.transport.write(b"".join(out))

    def send(self, n: int, t: float) -> None:
        for _ in range(n):
            self.add(t)
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        w = self.w
        try:
            frames = self.parser.feed(data)
        except ProtocolError as exc:
            w.failures.append(f"protocol error: {exc}")
            frames = exc.frames
            if self.transport is not None:
                self.transport.abort()
        sent = self.sent
        pop = sent.pop
        win = w.win
        answered = 0
        if w.spec.closed_loop:
            counting = win.start <= now < win.end
            for f in frames:
                t = pop(f.request_id, None)
                if t is None:
                    self._peer_request(f)
                    continue
                answered += 1
                if counting:
                    w.completed += 1
                    w.latencies.append(now - t)
                    if f.status != _OK:
                        w.errors += 1
            if answered and w.sending:
                self.send(answered, now)
        else:
            start, end = win.start, win.end
            for f in frames:
                t = pop(f.request_id, None)
                if t is None:
                    self._peer_request(f)
                    continue
                if start <= t < end:
                    w.completed += 1
                    w.latencies.append(now - t)
                    if f.status != _OK:
                        w.errors += 1
            w.pump(now)

    def _peer_request(self, frame: Any) -> None:
        # A proxy may probe an idle client with a heartbeat; anything else unknown is ignored.
        if frame.is_request and frame.is_event and frame.two_way and self.transport is not None:
            self.transport.write(heartbeat_reply(frame.request_id))


async def _worker_run(spec: LoadSpec, pipe: Connection) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    # The window is not known before every worker is connected: a placeholder until "go".
    worker = _Worker(spec, _Window(0.0, 0.0, 0.0))

    def factory() -> _Conn:
        conn = _Conn(worker)
        conns.append(conn)
        return conn

    try:
        await asyncio.gather(
            *(loop.create_connection(factory, spec.host, spec.port) for _ in range(spec.connections))
        )
    except OSError as exc:
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        return {"error": f"cannot connect to {spec.host}:{spec.port}: {exc}"}
    worker.conns = conns
    pipe.send(("ready",))
    # Blocking here is fine: the connections are open and idle until the common start time.
    msg = pipe.recv()
    win = _Window(*msg[1])
    worker.set_window(win)
    await asyncio.sleep(max(0.0, win.begin - time.monotonic()))

    def stop_sending() -> None:
        worker.sending = False

    # loop.call_at takes the loop's clock; convert from CLOCK_MONOTONIC, which all processes share.
    loop.call_later(max(0.0, win.end - time.monotonic()), stop_sending)
    now = time.monotonic()
    if spec.closed_loop:
        for c in conns:
            c.send(spec.depth, now)
        await asyncio.sleep(max(0.0, win.end - time.monotonic()) + 0.01)
    else:
        worker.pacer = Pacer(loop, worker.on_timer, win.begin, worker.pacing_period())
        await asyncio.sleep(max(0.0, win.end - time.monotonic()) + 0.01)
        deadline = win.end + spec.drain
        while worker.completed < worker.window_sent and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        worker.pacer.close()
    worker.sending = False
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0)
    return {
        "completed": worker.completed,
        "errors": worker.errors,
        "window_sent": worker.window_sent,
        "latencies": worker.latencies.tobytes(),
        "lags": worker.lags.tobytes(),
        "failures": worker.failures[:10],
        "precise_pacing": worker.pacer is None or worker.pacer.precise,
    }


def _worker_main(pipe: Connection) -> None:
    while True:
        spec = pipe.recv()
        if spec is None:
            return
        try:
            result = aio.run(_worker_run(spec, pipe))
        except Exception as exc:  # reported to the parent, which fails the run with it
            result = {"error": f"{type(exc).__name__}: {exc}"}
        pipe.send(("done", result))


# --------------------------------------------------------------------------------------------------
# The parent side


class LoadGeneratorError(RuntimeError):
    pass


class LoadGenerator:
    """N worker processes, kept for every run. Use as a context manager."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), name=f"loadgen-{i}", daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs.clear()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _split(self, spec: LoadSpec) -> list[LoadSpec]:
        n = min(self.workers, spec.connections)
        base, extra = divmod(spec.connections, n)
        parts = []
        for i in range(n):
            conns = base + (1 if i < extra else 0)
            rate = None if spec.rate is None else spec.rate * conns / spec.connections
            parts.append(replace(spec, connections=conns, rate=rate))
        return parts

    def _recv(self, pipe: Connection, timeout: float, what: str) -> tuple[Any, ...]:
        try:
            if not pipe.poll(timeout):
                raise LoadGeneratorError(f"load generator worker: no {what} within {timeout:.0f} s")
            msg = cast(tuple[Any, ...], pipe.recv())
        except (EOFError, OSError) as exc:
            raise LoadGeneratorError(f"load generator worker died waiting for its {what}: {exc}") from exc
        if msg[0] == "done" and "error" in msg[1]:
            raise LoadGeneratorError(msg[1]["error"])
        return msg

    def run(self, spec: LoadSpec, watch: Mapping[str, Sequence[int]] | None = None) -> LoadResult:
        """Run one load; ``watch`` names groups of pids whose CPU time in the window is reported."""
        parts = self._split(spec)
        pipes = self._pipes[: len(parts)]
        for pipe, part in zip(pipes, parts, strict=True):
            pipe.send(part)
        for pipe in pipes:
            self._recv(pipe, 30, "connection")
        groups = {"generator": [p.pid for p in self._procs[: len(parts)]], **(watch or {})}
        begin = time.monotonic() + 0.02
        win = _Window(begin, begin + spec.warmup, begin + spec.warmup + spec.duration)
        for pipe in pipes:
            pipe.send(("go", (win.begin, win.start, win.end)))
        time.sleep(max(0.0, win.start - time.monotonic()))
        # The samples land within a millisecond of the window's edges; the window (not the time
        # between samples) stays the divisor, so qps and CPU per request share one time base.
        cpu0, idle0, t0 = procstat.sample(groups), procstat.machine_idle(), time.monotonic()
        time.sleep(max(0.0, win.end - time.monotonic()))
        cpu1, idle1, t1 = procstat.sample(groups), procstat.machine_idle(), time.monotonic()
        results = [self._recv(p, spec.drain + 30, "result")[1] for p in pipes]
        latencies: list[float] = []
        lags: list[float] = []
        failures: list[str] = []
        for r in results:
            latencies += array("d", r["latencies"])
            lags += array("d", r["lags"])
            failures += r["failures"]
        completed = sum(r["completed"] for r in results)
        window = win.end - win.start
        cores = os.cpu_count() or 1
        busy = 1.0 - (idle1 - idle0) / max(1e-9, (t1 - t0) * cores)
        return LoadResult(
            spec=spec,
            window_s=window,
            completed=completed,
            errors=sum(r["errors"] for r in results),
            missing=0 if spec.closed_loop else sum(r["window_sent"] for r in results) - completed,
            qps=completed / window,
            latency_ms=percentiles(latencies),
            send_lag_ms=percentiles(lags) if lags else {},
            cpu_s={k: round(sum(cpu1[k]) - sum(cpu0[k]), 4) for k in groups},
            cpu_system_s={k: round(cpu1[k][1] - cpu0[k][1], 4) for k in groups},
            machine_busy=round(min(1.0, max(0.0, busy)), 3),
            workers=len(parts),
            failures=failures,
        )


def default_workers() -> int:
    """Half the cores (the rest is for what is measured), at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Dubbo load generator (see the module docstring)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1, help="closed loop: requests in flight per connection")
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args(argv)
    spec = LoadSpec(args.host, args.port, args.connections, args.depth, args.rate, args.duration, args.warmup)
    with LoadGenerator(args.workers) as gen:
        r = gen.run(spec)
    gen_util = r.utilisation("generator", r.workers)
    print(
        f"{r.qps:,.0f} req/s  p50 {r.latency_ms['p50']:.3f} ms  p99 {r.latency_ms['p99']:.3f} ms  "
        f"errors {r.errors}  missing {r.missing}  generator CPU {gen_util:.0%} of {r.workers} core(s)"
    )
    for failure in r.failures:
        print("  ", failure)


if __name__ == "__main__":
    main()
