"""The Triple benchmark: unary gRPC calls through regproxy two-hop, HAProxy two-hop (HTTP/2) and none.

    python -m benchmarks.triple [--quick] [--out FILE] [--rounds N] [--duration S]
                                [--topologies direct,haproxy,regproxy] [--loads rpc,single,channel]

The Dubbo benchmark's method (``benchmarks.run``) with Triple (gRPC over cleartext HTTP/2) on the
wire, every topology ending at the echo provider ``benchmarks.triprovider``:

* ``direct``: h2load → provider;
* ``haproxy``: h2load → HAProxy → HAProxy → provider, ``mode http`` with ``proto h2`` on the bind
  and server lines (an HTTP/2 proxy that passes gRPC trailers), one thread each;
* ``regproxy``: h2load → consumer sidecar's egress (the port Dubbo uses: the listener tells HTTP/2
  by its preface) → provider sidecar's ingress → provider, the provider published with ``/pub``
  and ``"protocol": "tri"`` (and, in a full run, found by the consumer sidecar through ``/sub`` and
  a real ZooKeeper; ``--quick``: a static route, as ``benchmarks.run --quick``).

The generator is h2load (Debian's ``nghttp2-client``, installed by ``benchmarks/setup.sh``), in C
on one thread, so that it is not what limits a run: each request is a POST of one gRPC message
(``sayHi("bench")`` as protobuf) with ``content-type: application/grpc``, ``te: trailers`` and
``grpc-timeout: 3S`` (regproxy reads it for its deadline, as the Dubbo benchmark's ``timeout``
attachment). Loads, each closed loop (a stream's answer starts the next request on its connection):

* ``rpc``: 16 connections × 1 stream in flight, the Dubbo benchmark's ``rpc`` load (16 callers,
  each waiting for its answer), so that the figures sit beside the Dubbo ones and every request
  crosses each hop on its own rather than in a batch;
* ``single``: 1 connection × 1 stream: one call at a time, the unloaded round trip, from which the
  latency a hop adds is read;
* ``channel`` (not run unless asked for): 1 connection × 16 streams, the way one gRPC channel
  multiplexes a caller's concurrent calls.

There is no fixed-rate (open-loop) latency as in the Dubbo benchmark: h2load's ``--rps`` fires one
100 Hz timer per connection, all in phase, so requests leave in bursts rather than on a schedule.
Latency is h2load's per-request time (``--log-file``: from the request's send to its stream's end)
in the closed-loop window: at ``rpc`` what a caller sees at the maximum, at ``single`` the round trip.

What counts as an answer: HTTP 200 in h2load's log (h2load's own "succeeded" takes any 2xx or 3xx).
A gRPC error comes with HTTP 200 too (its status is in the trailers, which h2load does not read),
so every run also checks that the provider answered at least as many streams as h2load counted —
a proxy's own error answer (no provider, timeout) is not counted by the provider, and a shortfall
counts as errors — and, before each run, a grpcio client makes three calls through the topology and
checks ``grpc-status`` 0 and the echoed message (one of 64 KiB: larger than a frame and than HTTP/2's
default window, so flow control is crossed at every hop).

Topologies take turns and each figure is the median of the rounds; what limited each run is
judged from the CPU time of every process in h2load's measured window, as ``benchmarks.run`` does.
A topology that cannot be set up or fails its check is reported with its error, and the others
are measured. Results: a table on stdout and ``benchmarks/results/triple.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.loadgen import LoadResult, LoadSpec, percentiles
from benchmarks.payload import METHOD, SERVICE
from benchmarks.run import NOISY_CORES, Run, _fmt_num, judge, machine_info, median, progress
from benchmarks.topologies import (
    HOST,
    ROOT,
    Direct,
    HAProxyChain,
    Provider,
    RegproxyChain,
    Topology,
    TopologyError,
)
from benchmarks.triprovider import read_answered
from regproxy.triple.messages import pack_message

LOADS: dict[str, tuple[int, int]] = {"rpc": (16, 1), "single": (1, 1), "channel": (1, 16)}
DEFAULT_LOADS = ("rpc", "single")
TOPOLOGIES = ("direct", "haproxy", "regproxy")
HOPS = 2
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "triple.json"

PATH = f"/{SERVICE}/{METHOD}"
# protobuf: field 1 (a string) = "bench", what sayHi("bench") sends with an IDL of HelloRequest{name}.
MESSAGE = b"\x0a\x05bench"
REQUEST_HEADERS = {"content-type": "application/grpc", "te": "trailers", "grpc-timeout": "3S"}
# Through every hop before a topology is measured: two small messages, and one larger than a frame
# (16 KiB) and than a stream's default window (64 KiB - 1).
CHECK_MESSAGES = (MESSAGE, b"\x0a\x03one", b"\x0a\x80\x80\x04" + b"x" * 65_536)


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    duration: float  # closed-loop window, s
    warmup: float  # a separate h2load run before each measured one, s

    @classmethod
    def make(cls, quick: bool) -> Settings:
        return cls(True, 1, 1.5, 0.5) if quick else cls(False, 3, 5.0, 1.0)


# --------------------------------------------------------------------------------------------------
# h2load


def h2load_binary() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise TopologyError("h2load is not installed: run benchmarks/setup.sh (as root)")
    return found


def h2load_version() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run([h2load_binary(), "--version"], capture_output=True, text=True).stdout
        return out.split()[-1].replace("nghttp2/", "")
    return None


@dataclass
class H2LoadRun:
    """One h2load process: its per-request log and the CPU of the watched processes in its window."""

    ok_latencies: list[float]  # seconds, HTTP 200 answers in the window
    not_ok: int  # answers with another status, and streams that failed (status -1 in the log)
    statuses: dict[str, int]
    cpu0: dict[str, tuple[float, float]]
    cpu1: dict[str, tuple[float, float]]
    busy: float  # the machine's busy share in the window
    output: str


def h2load_args(port: int, load: str, duration: float, workdir: Path, log: Path | None) -> list[str]:
    data = workdir / "triple-request.bin"
    if not data.exists():
        data.write_bytes(pack_message(MESSAGE))
    clients, streams = LOADS[load]
    args = [h2load_binary(), "-c", str(clients), "-m", str(streams), "-t", "1",
            "-D", f"{round(duration * 1000)}ms", "-d", str(data)]  # fmt: skip
    for name, value in REQUEST_HEADERS.items():
        args += ["-H", f"{name}: {value}"]
    if log is not None:
        args += ["--log-file", str(log)]
    return [*args, f"http://{HOST}:{port}{PATH}"]


def run_h2load(args: list[str], log: Path, watch: dict[str, list[int]], timeout: float) -> H2LoadRun:
    """Run h2load; sample CPU when it says its measured window starts and when it ends."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    killer = threading.Timer(timeout, proc.kill)  # h2load ends on its own after -D; this if it hangs
    killer.start()
    groups = {"generator": [proc.pid], **watch}
    lines: list[str] = []
    cpu0: dict[str, tuple[float, float]] = {}
    cpu1: dict[str, tuple[float, float]] = {}
    idle0 = idle1 = t0 = t1 = 0.0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # h2load flushes each of these lines (std::endl)
            lines.append(line)
            if not cpu0 and line.startswith("Main benchmark duration is started"):
                cpu0, idle0, t0 = procstat.sample(groups), procstat.machine_idle(), time.monotonic()
            elif cpu0 and not cpu1 and line.startswith("Main benchmark duration is over"):
                cpu1, idle1, t1 = procstat.sample(groups), procstat.machine_idle(), time.monotonic()
        rc = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    if rc != 0 or not cpu1:
        raise TopologyError(f"h2load exited with {rc} before its window ended:\n{output[-2000:]}")
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    for row in log.read_text().splitlines():
        _start, status, micros = row.split("\t")[:3]
        statuses[status] = statuses.get(status, 0) + 1
        if status == "200":
            latencies.append(int(micros) / 1e6)
    cores = os.cpu_count() or 1
    busy = 1.0 - (idle1 - idle0) / max(1e-9, (t1 - t0) * cores)
    return H2LoadRun(
        latencies, sum(n for s, n in statuses.items() if s != "200"), statuses,
        cpu0, cpu1, round(min(1.0, max(0.0, busy)), 3), output,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Checks with a real gRPC client


def check_calls(port: int, timeout: float = 5.0) -> None:
    """Unary calls through ``port`` with grpcio: each must end with grpc-status 0 and its echo."""
    import grpc

    with grpc.insecure_channel(f"{HOST}:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary(PATH)  # no serializers: bytes in, bytes out
        for message in CHECK_MESSAGES:
            try:
                reply, outcome = call.with_call(message, timeout=timeout)
            except grpc.RpcError as exc:
                raise TopologyError(
                    f"a grpcio call through port {port} failed: {exc.code()} {exc.details()!r}"  # type: ignore[attr-defined]
                ) from None
            if outcome.code() != grpc.StatusCode.OK or reply != message:
                raise TopologyError(
                    f"a grpcio call through port {port} answered {outcome.code()} with "
                    f"{len(reply)} bytes for {len(message)}"
                )


# --------------------------------------------------------------------------------------------------
# One run


def run_one(topo: Topology, provider: Provider, load: str, s: Settings, workdir: Path) -> Run:
    assert provider.stats_port is not None
    check_calls(topo.port)
    timeout = s.warmup + s.duration + 30
    if s.warmup > 0:  # its own process, so that the measured one counts every request it makes
        warm = h2load_args(topo.port, load, s.warmup, workdir, None)
        subprocess.run(warm, capture_output=True, timeout=timeout, check=False, cwd=ROOT)
    log = workdir / f"h2load-{topo.name}-{load}.log"
    log.unlink(missing_ok=True)
    watch: dict[str, list[int]] = {"provider": [provider.pid], **{k: [v] for k, v in topo.proxies.items()}}
    before = read_answered(HOST, provider.stats_port)
    h = run_h2load(h2load_args(topo.port, load, s.duration, workdir, log), log, watch, timeout)
    time.sleep(0.2)  # the streams h2load left in flight at its end are answered (and counted) by now
    answered = read_answered(HOST, provider.stats_port) - before
    topo.check_alive()
    ok = len(h.ok_latencies)
    clients, streams = LOADS[load]
    failures: list[str] = []
    # Answers h2load took as HTTP 200 that the provider never sent: a proxy's own, a gRPC error.
    foreign = max(0, ok - answered)
    if foreign:
        failures.append(f"{foreign} HTTP 200 answers did not come from the provider (gRPC errors)")
    # h2load counts no stream it opened before its window (the first request of each connection
    # may leave before the window's timer fires) nor one it left in flight at the end.
    if answered - ok > 2 * clients * streams:
        failures.append(
            f"the provider answered {answered - ok} streams more than h2load counted "
            f"(at most {clients * streams} were in flight at each end of the window)"
        )
    if h.not_ok:
        failures.append(f"answers other than HTTP 200 (status: count; -1 is a failed stream): {h.statuses}")
    result = LoadResult(
        spec=LoadSpec(HOST, topo.port, clients, streams, None, s.duration, s.warmup),
        window_s=s.duration,
        completed=ok,
        errors=h.not_ok + foreign,
        missing=0,
        qps=ok / s.duration,
        latency_ms=percentiles(h.ok_latencies),
        send_lag_ms={},
        cpu_s={k: round(sum(h.cpu1[k]) - sum(h.cpu0[k]), 4) for k in h.cpu0},
        cpu_system_s={k: round(h.cpu1[k][1] - h.cpu0[k][1], 4) for k in h.cpu0},
        machine_busy=h.busy,
        workers=1,
        failures=failures,
    )
    run = Run(topo.name, load, result, list(topo.proxies))
    judge(run, os.cpu_count() or 1)
    if not ok:
        raise TopologyError(f"{topo.name} {load}: no call answered; h2load said:\n{h.output[-1500:]}")
    return run


# --------------------------------------------------------------------------------------------------
# Plan and report


@contextlib.contextmanager
def topologies_for(
    workdir: Path, provider: Provider, registry: str, names: Sequence[str]
) -> Iterator[tuple[dict[str, Topology], dict[str, str]]]:
    """The topologies that could be set up and pass the grpcio check, and the errors of the others."""
    topos: dict[str, Topology] = {}
    errors: dict[str, str] = {}
    try:
        for name in names:
            try:
                if name == "direct":
                    topo: Topology = Direct(provider)
                elif name == "haproxy":
                    topo = HAProxyChain(workdir, provider.port, http2=True)
                elif name == "regproxy":
                    topo = RegproxyChain(workdir, provider.port, registry=registry, protocol="tri")
                else:
                    raise ValueError(f"unknown topology {name!r}")
                topos[name] = topo
                check_calls(topo.port)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                if name in topos:  # the processes' own account of it, for the JSON
                    errors[name] += "\n" + topos[name].log_tails()
                print(f"  {name}: not measured: {errors[name].splitlines()[0]}", file=sys.stderr, flush=True)
                if name in topos:
                    topos.pop(name).stop()
        yield topos, errors
    finally:
        for topo in topos.values():
            topo.stop()


def measure(
    topos: dict[str, Topology], errors: dict[str, str], provider: Provider, s: Settings,
    loads: Sequence[str], workdir: Path,
) -> dict[str, dict[str, list[Run]]]:  # fmt: skip
    """Per load, per topology, one run per round; topologies take turns. A topology whose run fails
    is reported with its error and left out of the rounds after."""
    out: dict[str, dict[str, list[Run]]] = {load: {name: [] for name in topos} for load in loads}
    for load in loads:
        for _ in range(s.rounds):
            for name, topo in list(topos.items()):
                if name in errors:
                    continue
                try:
                    run = run_one(topo, provider, load, s, workdir)
                except Exception as exc:
                    errors[name] = f"{load}: {type(exc).__name__}: {exc}\n{topo.log_tails()}"
                    print(f"  {name}: failed: {errors[name].splitlines()[0]}", file=sys.stderr, flush=True)
                    continue
                out[load][name].append(run)
                progress("max")(run)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def build_report(
    machine: dict[str, Any], s: Settings, measured: dict[str, dict[str, list[Run]]], errors: dict[str, str],
    names: Sequence[str], registry: str,
) -> dict[str, Any]:  # fmt: skip
    topologies: dict[str, dict[str, Any]] = {}
    rounds: dict[str, dict[str, Any]] = {}
    for name in names:
        figures: dict[str, Any] = {}
        for load, by_name in measured.items():
            runs = by_name.get(name, [])
            rounds.setdefault(load, {})[name] = [r.summary() for r in runs]
            if not runs:
                continue
            figures[load] = {
                "max_qps": round(median([r.result.qps for r in runs]), 1),
                "p50_ms": round(median([r.result.latency_ms["p50"] for r in runs]), 4),
                "p99_ms": round(median([r.result.latency_ms["p99"] for r in runs]), 4),
                "cpu_us_per_request": round(median([r.proxy_cpu_us for r in runs]), 3),
                "cpu_us_per_request_kernel": round(median([r.proxy_kernel_us for r in runs]), 3),
                "limited_by": runs[-1].verdict,
            }
        if name in errors:
            figures["error"] = errors[name]
        topologies[name] = figures

    def fig(name: str, load: str, key: str) -> float | None:
        value = topologies.get(name, {}).get(load, {}).get(key)
        return None if value is None else float(value)

    ratios = {
        "regproxy_vs_haproxy_qps": _ratio(
            fig("regproxy", "rpc", "max_qps"), fig("haproxy", "rpc", "max_qps")
        ),
        "regproxy_vs_direct_qps": _ratio(fig("regproxy", "rpc", "max_qps"), fig("direct", "rpc", "max_qps")),
        "haproxy_vs_direct_qps": _ratio(fig("haproxy", "rpc", "max_qps"), fig("direct", "rpc", "max_qps")),
        "regproxy_vs_haproxy_cpu_per_request": _ratio(
            fig("regproxy", "rpc", "cpu_us_per_request"), fig("haproxy", "rpc", "cpu_us_per_request")
        ),
    }
    added: dict[str, float | None] = {}
    for name in ("haproxy", "regproxy"):
        p50, base = fig(name, "single", "p50_ms"), fig("direct", "single", "p50_ms")
        added[name] = None if p50 is None or base is None else round((p50 - base) / HOPS, 4)
    every = [r for by_name in measured.values() for runs in by_name.values() for r in runs]
    checks = [f"{r.load} {r.topology}: {n}" for r in every for n in r.notes]
    noisy = [r.foreign_cores for r in every if r.foreign_cores > NOISY_CORES]
    if noisy:
        checks.append(
            f"other processes used more than {NOISY_CORES:g} cores in {len(noisy)} of {len(every)} windows "
            f"(at most {max(noisy):.2f}); the rounds are interleaved so that this falls on every topology"
        )
    generator_bound = [r for r in every if r.proxies and r.verdict.startswith("generator")]
    checks.append(
        f"the generator limited {len(generator_bound)} of the proxied topologies' windows"
        + ("" if generator_bound else ": the proxies' figures are theirs")
    )
    checks += [f"{name} not measured: {err.splitlines()[0]}" for name, err in errors.items()]
    clients = {k: {"connections": c, "streams_in_flight_per_connection": m} for k, (c, m) in LOADS.items()}
    return {
        "machine": {**machine, "h2load": h2load_version()},
        "topologies": topologies,
        "ratios": ratios,
        "added_p50_ms_per_hop_single": added,
        "run": {
            "command": "python -m benchmarks.triple" + (" --quick" if s.quick else ""),
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": {
                "rounds": s.rounds,
                "duration_s": s.duration,
                "warmup_s": s.warmup,
                "generator": "h2load, 1 thread",
                "loads": {k: v for k, v in clients.items() if k in measured},
                "request": {"path": PATH, "headers": REQUEST_HEADERS, "message_bytes": len(MESSAGE)},
                "regproxy_routes_from": registry,
            },
        },
        "checks": checks,
        "details": {"rounds": rounds},
    }


def print_report(report: dict[str, Any], out: Any = sys.stdout) -> None:
    m = report["machine"]
    st = report["run"]["settings"]
    w = out.write
    w(
        f"\nregproxy Triple benchmark: {m['nproc']} × {m['cpu_model']}, Python {m['python']}, "
        f"HAProxy {m['haproxy']}, h2load {m['h2load']}\n"
        f"{st['rounds']} round(s), {st['duration_s']:g} s windows, median of rounds, closed loop; "
        f"regproxy routes from {st['regproxy_routes_from']}\n\n"
    )
    header = (
        f"{'load':8}{'topology':10}{'max req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'proxy µs/req':>14}{'kernel':>8}{'per hop':>9}  limited by (last round)\n"
    )
    w(header)
    w("-" * (len(header) + 10) + "\n")
    loads = list(st["loads"])
    for load in loads:
        for name, figures in report["topologies"].items():
            f = figures.get(load)
            if f is None:
                continue
            cpu = f["cpu_us_per_request"] if name != "direct" else None
            kernel = f["cpu_us_per_request_kernel"] if name != "direct" else None
            hop = None if cpu is None else cpu / HOPS
            w(
                f"{load:8}{name:10}{f['max_qps']:>11,.0f}{f['p50_ms']:>9.3f}{f['p99_ms']:>9.3f}"
                f"{_fmt_num(cpu, '.1f'):>14}{_fmt_num(kernel, '.1f'):>8}{_fmt_num(hop, '.1f'):>9}"
                f"  {f['limited_by']}\n"
            )
    for name, figures in report["topologies"].items():
        if "error" in figures:
            w(f"{name}: not measured: {figures['error'].splitlines()[0]}\n")
    r = report["ratios"]
    added = report["added_p50_ms_per_hop_single"]
    w("\n")
    rows = [
        ("regproxy / haproxy throughput, rpc", r["regproxy_vs_haproxy_qps"], ""),
        ("regproxy / haproxy CPU per request, rpc", r["regproxy_vs_haproxy_cpu_per_request"], ""),
        ("regproxy / direct throughput, rpc", r["regproxy_vs_direct_qps"], ""),
        ("haproxy / direct throughput, rpc", r["haproxy_vs_direct_qps"], ""),
        ("added p50 per hop, one call at a time: haproxy", added.get("haproxy"), " ms"),
        ("added p50 per hop, one call at a time: regproxy", added.get("regproxy"), " ms"),
    ]
    for label, value, unit in rows:
        w(f"  {label:50}{_fmt_num(value, '.3f'):>8}{unit}\n")
    if report["checks"]:
        w("\nchecks:\n")
        for line in report["checks"]:
            w(f"  {line}\n")
    w("\n")


# --------------------------------------------------------------------------------------------------


def _names(value: str, known: Sequence[str]) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"choose among {', '.join(known)}; not {', '.join(unknown) or value!r}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one round of 1.5 s windows; regproxy routes from a static cluster",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument("--duration", type=float, default=None, help="override the window length, s")
    parser.add_argument(
        "--topologies", type=lambda v: _names(v, TOPOLOGIES), default=list(TOPOLOGIES),
        help=f"comma-separated, among {','.join(TOPOLOGIES)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--loads", type=lambda v: _names(v, tuple(LOADS)), default=list(DEFAULT_LOADS),
        help=f"comma-separated, among {','.join(LOADS)} (default: {','.join(DEFAULT_LOADS)})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    s = Settings.make(args.quick)
    s = dataclasses.replace(s, rounds=args.rounds or s.rounds, duration=args.duration or s.duration)
    h2load_binary()  # before anything starts: without it nothing can be measured
    started = time.monotonic()
    machine = machine_info()
    print(f"Triple benchmark: {'quick' if s.quick else 'full'} run", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="regproxy-triple-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        registry = "memory://"
        if not s.quick and "regproxy" in args.topologies:
            from tests.zkserver import ZooKeeperServer

            zk = ZooKeeperServer(workdir / "zookeeper")
            zk.start()
            stack.callback(zk.stop)
            registry = f"zookeeper://{zk.hosts}"
        described = "memory:// (static routes)" if registry == "memory://" else "ZooKeeper (/pub and /sub)"
        provider = Provider(workdir, "triple")
        stack.callback(provider.stop)
        with topologies_for(workdir, provider, registry, args.topologies) as (topos, errors):
            measured = measure(topos, errors, provider, s, args.loads, workdir)
    report = build_report(machine, s, measured, errors, args.topologies, described)
    report["run"]["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
