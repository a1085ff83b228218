"""The data-path benchmark: regproxy two-hop against HAProxy two-hop and against no proxy.

    python -m benchmarks.run [--quick] [--out FILE]

For each load (``rpc``: 16 connections × 1 request in flight; ``pipelined``: 8 × 16) and each
topology (``direct``, ``haproxy``, ``regproxy``; see ``benchmarks.topologies``):

1. maximum throughput, closed loop, with the CPU time the proxy processes used per request;
2. latency p50/p99 at a fixed rate — half the slowest topology's maximum for that load — open
   loop, measured from each request's intended send time.

Topologies take turns (A B C A B C ...) so that drift on the machine hits all of them alike, and
each figure is the median of the rounds. Every run says what limited it (the generator, a proxy,
the provider, or the machine's cores) from the CPU time each process used in the window; a
proxied topology limited by the generator is flagged, since then its figure understates it.

The full run also measures the demo provider (a realistic application, which decodes requests)
behind each topology at the ``rpc`` load, and the control side (``benchmarks.scale``).

Results: a table on stdout and ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadGenerator, LoadResult, LoadSpec, default_workers
from benchmarks.topologies import (
    HOST,
    ROOT,
    Direct,
    FloorChain,
    HAProxyChain,
    Provider,
    RegproxyChain,
    Topology,
    haproxy_binary,
)

LOADS: dict[str, tuple[int, int]] = {"rpc": (16, 1), "pipelined": (8, 16)}  # connections, in flight each
TOPOLOGIES = ("direct", "haproxy", "regproxy")
FLOOR = "pyfloor"  # with --floor: the least a frame-aware Python hop does (benchmarks/floorrelay.py)
HOPS = 2
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latest.json"

# The issue's targets, as (ratio key, comparison, bound).
TARGETS = {
    "regproxy_vs_haproxy_qps": (">=", 0.8),
    "regproxy_vs_haproxy_qps_pipelined": (">=", 0.5),
    "regproxy_vs_haproxy_cpu_per_request": ("<=", 1.5),
    "added_p50_ms_per_hop": ("<=", 0.2),
}

SATURATED = 0.9  # a process at or above this share of a core is treated as the limit
NOISY_CORES = 0.25  # CPU used by other processes in a window above which the window counts as noisy


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    duration: float  # closed-loop window, s
    warmup: float
    fixed_duration: float  # open-loop window, s
    workers: int
    demo_provider: bool
    scale: bool

    @classmethod
    def make(cls, quick: bool, workers: int | None) -> Settings:
        w = workers or default_workers()
        if quick:
            return cls(True, 1, 1.5, 0.5, 1.5, w, demo_provider=False, scale=False)
        return cls(False, 3, 5.0, 1.0, 5.0, w, demo_provider=True, scale=True)


# --------------------------------------------------------------------------------------------------
# One run and what limited it


@dataclass
class Run:
    topology: str
    load: str
    result: LoadResult
    proxies: list[str]  # watch-group names of the proxy processes
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    foreign_cores: float = 0.0  # CPU used during the window by processes that are not part of the run

    @property
    def proxy_cpu_us(self) -> float:
        r = self.result
        if not r.completed:
            return 0.0
        return sum(r.cpu_s[p] for p in self.proxies) / r.completed * 1e6

    @property
    def proxy_kernel_us(self) -> float:
        """The part of ``proxy_cpu_us`` spent in the kernel: system calls and the TCP stack."""
        r = self.result
        if not r.completed:
            return 0.0
        return sum(r.cpu_system_s[p] for p in self.proxies) / r.completed * 1e6

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "qps": round(r.qps, 1),
            "completed": r.completed,
            "errors": r.errors,
            "missing": r.missing,
            "latency_ms": r.latency_ms,
            "send_lag_ms": r.send_lag_ms,
            "cpu_us_per_request": round(self.proxy_cpu_us, 3),
            "cpu_us_per_request_kernel": round(self.proxy_kernel_us, 3),
            "utilisation": {
                k: round(r.utilisation(k, r.workers if k == "generator" else 1), 3) for k in r.cpu_s
            },
            "machine_busy": r.machine_busy,
            "limited_by": self.verdict,
            "other_processes_cores": round(self.foreign_cores, 2),
            "notes": self.notes,
        }


def judge(run: Run, nproc: int) -> None:
    """Name what limited a run, from the CPU each process used in its window."""
    r = run.result
    gen = r.utilisation("generator", r.workers)
    procs = {k: r.utilisation(k) for k in r.cpu_s if k != "generator"}
    busiest = max(procs, key=lambda k: procs[k], default=None)
    ours = sum(r.cpu_s.values()) / r.window_s
    foreign = r.machine_busy * nproc - ours
    if busiest is not None and procs[busiest] >= SATURATED:
        run.verdict = f"{busiest} ({procs[busiest]:.0%} of a core)"
    elif gen >= SATURATED:
        run.verdict = f"generator ({gen:.0%} of {r.workers} core(s))"
        if run.proxies:
            run.notes.append(
                f"the generator was the bottleneck (its CPU {gen:.0%}, busiest proxy "
                f"{max((procs[p] for p in run.proxies), default=0):.0%}): this figure understates the proxy"
            )
    elif r.machine_busy >= 0.95:
        run.verdict = f"cpu (all {nproc} cores busy)"
    else:
        # Requests in flight bound the rate (each waits a whole round trip), not a CPU.
        top = f", busiest {busiest} {procs[busiest]:.0%}" if busiest is not None else ""
        run.verdict = f"round trips (none saturated: generator {gen:.0%}{top})"
    run.foreign_cores = max(0.0, foreign)
    if r.errors or r.missing or r.failures:
        run.notes.append(f"{r.errors} error responses, {r.missing} unanswered, failures: {r.failures[:3]}")
    lag = r.send_lag_ms.get("p99", 0.0)
    if lag > 1.0:
        run.notes.append(
            f"the generator fell behind its schedule (send lag p99 {lag:.2f} ms); latency includes it"
        )


# --------------------------------------------------------------------------------------------------
# The measurement plan


def watch_groups(topo: Topology, provider: Provider) -> tuple[dict[str, list[int]], list[str]]:
    groups: dict[str, list[int]] = {"provider": [provider.pid]}
    for name, pid in topo.proxies.items():
        groups[name] = [pid]
    return groups, list(topo.proxies)


def run_one(
    gen: LoadGenerator, topo: Topology, provider: Provider, load: str, rate: float | None, s: Settings
) -> Run:
    conns, depth = LOADS[load]
    spec = LoadSpec(
        HOST, topo.port, conns, depth, rate,
        duration=s.duration if rate is None else s.fixed_duration, warmup=s.warmup,
    )  # fmt: skip
    groups, proxies = watch_groups(topo, provider)
    result = gen.run(spec, groups)
    topo.check_alive()
    run = Run(topo.name, load, result, proxies)
    judge(run, os.cpu_count() or 1)
    if not result.completed:
        raise RuntimeError(
            f"{topo.name} {load}: no request completed; failures: {result.failures[:3]}\n{topo.log_tails()}"
        )
    time.sleep(0.2)  # let sockets of the finished run close before the next one starts
    return run


def interleaved(
    topos: Mapping[str, Topology], rounds: int, each: Callable[[Topology], Run], log: Callable[[Run], None]
) -> dict[str, list[Run]]:
    """A B C A B C ...: every round runs every topology once."""
    out: dict[str, list[Run]] = {name: [] for name in topos}
    for _ in range(rounds):
        for name, topo in topos.items():
            run = each(topo)
            out[name].append(run)
            log(run)
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def progress(kind: str) -> Callable[[Run], None]:
    def log(run: Run) -> None:
        r = run.result
        lat = r.latency_ms
        line = (
            f"  {run.load:9} {kind:6} {run.topology:9} {r.qps:>10,.0f} req/s  p50 {lat['p50']:7.3f} ms  "
            f"p99 {lat['p99']:7.3f} ms  proxies {run.proxy_cpu_us:6.1f} µs/req  limited by {run.verdict}"
        )
        print(line, file=sys.stderr, flush=True)
        notes = list(run.notes)
        if run.foreign_cores > NOISY_CORES:
            notes.append(f"other processes used {run.foreign_cores:.2f} cores during the window")
        for note in notes:
            print(f"      note: {note}", file=sys.stderr, flush=True)

    return log


def measure(
    gen: LoadGenerator, topos: Mapping[str, Topology], provider: Provider, s: Settings, loads: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per load: the closed-loop runs, the fixed rate, and the open-loop runs."""
    out: dict[str, dict[str, Any]] = {}
    for load in loads:
        closed = interleaved(
            topos, s.rounds, lambda t, load=load: run_one(gen, t, provider, load, None, s), progress("max")
        )
        slowest = min(median([r.result.qps for r in runs]) for runs in closed.values())
        rate = round(slowest / 2)
        fixed = interleaved(
            topos, s.rounds, lambda t, load=load, rate=rate: run_one(gen, t, provider, load, rate, s),
            progress("fixed"),
        )  # fmt: skip
        out[load] = {"closed": closed, "rate": rate, "fixed": fixed}
    return out


# --------------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = None
    haproxy = None
    with contextlib.suppress(Exception):
        first = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True).stdout.splitlines()[
            0
        ]
        haproxy = first.split(" - ")[0].replace("HAProxy version ", "")
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "regproxy"], capture_output=True, text=True, cwd=ROOT
        )
        if dirty.stdout.strip():
            commit += " + uncommitted changes in regproxy/"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "haproxy": haproxy,
        "regproxy_commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def build_report(
    machine: dict[str, Any],
    s: Settings,
    measured: dict[str, dict[str, Any]],
    extra: dict[str, Any],
    names: Sequence[str] = TOPOLOGIES,
) -> dict[str, Any]:
    topologies: dict[str, dict[str, Any]] = {name: {} for name in names}
    rounds: dict[str, Any] = {}
    cpu_fixed: dict[str, dict[str, float]] = {name: {} for name in names}
    cpu_kernel: dict[str, dict[str, float]] = {name: {} for name in names}
    for load, m in measured.items():
        rounds[load] = {"fixed_rate": m["rate"], "max": {}, "fixed": {}}
        for name in names:
            closed: list[Run] = m["closed"].get(name, [])
            fixed: list[Run] = m["fixed"].get(name, [])
            topologies[name][load] = {
                "max_qps": round(median([r.result.qps for r in closed]), 1),
                "p50_ms": round(median([r.result.latency_ms["p50"] for r in fixed]), 4),
                "p99_ms": round(median([r.result.latency_ms["p99"] for r in fixed]), 4),
                "fixed_rate": m["rate"],
                "cpu_us_per_request": round(median([r.proxy_cpu_us for r in closed]), 3),
            }
            cpu_fixed[name][load] = round(median([r.proxy_cpu_us for r in fixed]), 3)
            cpu_kernel[name][load] = round(median([r.proxy_kernel_us for r in closed]), 3)
            rounds[load]["max"][name] = [r.summary() for r in closed]
            rounds[load]["fixed"][name] = [r.summary() for r in fixed]
    t = topologies
    rpc = "rpc"
    ratios = {
        "regproxy_vs_haproxy_qps": _ratio(t["regproxy"][rpc]["max_qps"], t["haproxy"][rpc]["max_qps"]),
        "regproxy_vs_direct_qps": _ratio(t["regproxy"][rpc]["max_qps"], t["direct"][rpc]["max_qps"]),
        "regproxy_vs_haproxy_qps_pipelined": _ratio(
            t["regproxy"]["pipelined"]["max_qps"], t["haproxy"]["pipelined"]["max_qps"]
        ),
        "regproxy_vs_haproxy_cpu_per_request": _ratio(
            t["regproxy"][rpc]["cpu_us_per_request"], t["haproxy"][rpc]["cpu_us_per_request"]
        ),
    }
    if FLOOR in t:
        ratios[f"{FLOOR}_vs_haproxy_qps"] = _ratio(t[FLOOR][rpc]["max_qps"], t["haproxy"][rpc]["max_qps"])
        ratios[f"{FLOOR}_vs_haproxy_qps_pipelined"] = _ratio(
            t[FLOOR]["pipelined"]["max_qps"], t["haproxy"]["pipelined"]["max_qps"]
        )
    added = round((t["regproxy"][rpc]["p50_ms"] - t["direct"][rpc]["p50_ms"]) / HOPS, 4)
    per_hop = round(t["regproxy"][rpc]["cpu_us_per_request"] / HOPS, 3)
    every = [
        r
        for m in measured.values()
        for kind in ("closed", "fixed")
        for runs in m[kind].values()
        for r in runs
    ]
    checks = [
        f"{r.load} {'max' if r.result.spec.closed_loop else 'fixed'} {r.topology}: {n}"
        for r in every
        for n in r.notes
    ]
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
    return {
        "machine": machine,
        "topologies": topologies,
        "ratios": ratios,
        "added_p50_ms_per_hop": added,
        "cpu_us_per_request_per_hop": per_hop,
        "run": {
            "command": "python -m benchmarks.run"
            + (" --quick" if s.quick else "")
            + (" --floor" if FLOOR in t else ""),
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": {
                "rounds": s.rounds,
                "duration_s": s.duration,
                "warmup_s": s.warmup,
                "fixed_rate_duration_s": s.fixed_duration,
                "generator_processes": s.workers,
                "loads": {
                    k: {"connections": c, "in_flight_per_connection": d} for k, (c, d) in LOADS.items()
                },
                "regproxy_routes_from": extra.get("registry"),
            },
        },
        "checks": checks,
        "details": {
            "per_hop": {
                "added_p50_ms_pipelined": round(
                    (t["regproxy"]["pipelined"]["p50_ms"] - t["direct"]["pipelined"]["p50_ms"]) / HOPS, 4
                ),
                "haproxy_cpu_us_per_request_per_hop": round(
                    t["haproxy"][rpc]["cpu_us_per_request"] / HOPS, 3
                ),
                "haproxy_added_p50_ms_per_hop": round(
                    (t["haproxy"][rpc]["p50_ms"] - t["direct"][rpc]["p50_ms"]) / HOPS, 4
                ),
                "regproxy_cpu_us_per_request_per_hop_pipelined": round(
                    t["regproxy"]["pipelined"]["cpu_us_per_request"] / HOPS, 3
                ),
            },
            "cpu_us_per_request_at_fixed_rate": cpu_fixed,
            "cpu_us_per_request_in_kernel": cpu_kernel,
            "rounds": rounds,
            **{k: v for k, v in extra.items() if k != "registry"},
        },
    }


def _fmt_num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_report(report: dict[str, Any], out: Any = sys.stdout) -> None:
    m = report["machine"]
    st = report["run"]["settings"]
    w = out.write
    w(
        f"\nregproxy benchmark: {m['nproc']} × {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"uvloop {m['uvloop']}, HAProxy {m['haproxy']}\n"
        f"{st['rounds']} round(s), {st['duration_s']:g} s windows, median of rounds; "
        f"regproxy routes from {st['regproxy_routes_from']}\n\n"
    )
    header = (
        f"{'load':10}{'topology':10}{'max req/s':>11}{'at req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'proxy µs/req':>14}{'kernel':>8}{'per hop':>9}  limited by (last round)\n"
    )
    w(header)
    w("-" * (len(header) + 10) + "\n")
    rounds = report["details"]["rounds"]
    for load in LOADS:
        for name in report["topologies"]:
            f = report["topologies"][name][load]
            cpu = f["cpu_us_per_request"] if name != "direct" else None
            last = rounds[load]["max"][name][-1]["limited_by"] if rounds[load]["max"][name] else ""
            hop = None if cpu is None else cpu / HOPS
            kernel = (
                report["details"]["cpu_us_per_request_in_kernel"][name][load] if cpu is not None else None
            )
            w(
                f"{load:10}{name:10}{f['max_qps']:>11,.0f}{f['fixed_rate']:>10,}{f['p50_ms']:>9.3f}"
                f"{f['p99_ms']:>9.3f}{_fmt_num(cpu, '.1f'):>14}{_fmt_num(kernel, '.1f'):>8}"
                f"{_fmt_num(hop, '.1f'):>9}  {last}\n"
            )
    r = report["ratios"]
    w("\nagainst the issue's targets:\n")
    rows = [
        ("regproxy / haproxy throughput, rpc", r["regproxy_vs_haproxy_qps"], "regproxy_vs_haproxy_qps", ""),
        ("regproxy / haproxy throughput, pipelined", r["regproxy_vs_haproxy_qps_pipelined"],
         "regproxy_vs_haproxy_qps_pipelined", ""),
        ("regproxy / haproxy CPU per request, rpc", r["regproxy_vs_haproxy_cpu_per_request"],
         "regproxy_vs_haproxy_cpu_per_request", ""),
        ("added p50 per hop at the fixed rate, rpc", report["added_p50_ms_per_hop"],
         "added_p50_ms_per_hop", " ms"),
        ("regproxy / direct throughput, rpc", r["regproxy_vs_direct_qps"], None, ""),
        ("regproxy CPU per request per hop, rpc", report["cpu_us_per_request_per_hop"], None, " µs"),
    ]  # fmt: skip
    if f"{FLOOR}_vs_haproxy_qps" in r:
        rows += [
            (f"{FLOOR} / haproxy throughput, rpc", r[f"{FLOOR}_vs_haproxy_qps"], None, ""),
            (f"{FLOOR} / haproxy throughput, pipelined", r[f"{FLOOR}_vs_haproxy_qps_pipelined"], None, ""),
        ]
    for label, value, key, unit in rows:
        target = ""
        if key is not None and value is not None:
            op, bound = TARGETS[key]
            ok = value >= bound if op == ">=" else value <= bound
            target = f"target {op} {bound:g}{unit}  {'met' if ok else 'NOT MET'}"
        w(f"  {label:44}{_fmt_num(value, '.3f'):>8}{unit:4} {target}\n")
    demo = report["details"].get("demo_provider")
    if demo and "topologies" in demo:
        w("\ndemo provider (decodes every request), rpc load, max req/s and proxy µs/req:\n")
        for name, f in demo["topologies"].items():
            cpu = f["cpu_us_per_request"] if name != "direct" else None
            w(f"  {name:10}{f['max_qps']:>11,.0f}{_fmt_num(cpu, '.1f'):>10}   limited by {f['limited_by']}\n")
    scale = report.get("scale")
    if scale and "error" not in scale:
        from benchmarks.scale import print_summary

        print_summary(scale, out)
    if report["checks"]:
        w("\nchecks:\n")
        for line in report["checks"]:
            w(f"  {line}\n")
    w("\n")


# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def topologies_for(
    workdir: Path, provider: Provider, registry: str, names: Sequence[str]
) -> Iterator[dict[str, Topology]]:
    topos: dict[str, Topology] = {}
    try:
        for name in names:
            if name == "direct":
                topos[name] = Direct(provider)
            elif name == "haproxy":
                topos[name] = HAProxyChain(workdir, provider.port)
            elif name == "regproxy":
                topos[name] = RegproxyChain(workdir, provider.port, registry=registry)
            elif name == FLOOR:
                topos[name] = FloorChain(workdir, provider.port)
        yield topos
    finally:
        for topo in topos.values():
            topo.stop()


def demo_provider_case(gen: LoadGenerator, workdir: Path, s: Settings) -> dict[str, Any]:
    """The rpc load's maximum against the demo provider, which decodes requests like an application."""
    sub = workdir / "demo"
    sub.mkdir()
    provider = Provider(sub, "demo")
    try:
        # memory:// here: publishing this provider in the ZooKeeper of the main case would add it to
        # the main case's cluster. Routes are not what this case measures.
        with topologies_for(sub, provider, "memory://", TOPOLOGIES) as topos:
            runs = interleaved(
                topos, s.rounds, lambda t: run_one(gen, t, provider, "rpc", None, s), progress("demo")
            )
    finally:
        provider.stop()
    return {
        "load": "rpc",
        "topologies": {
            name: {
                "max_qps": round(median([r.result.qps for r in rs]), 1),
                "cpu_us_per_request": round(median([r.proxy_cpu_us for r in rs]), 3),
                "limited_by": rs[-1].verdict,
            }
            for name, rs in runs.items()
        },
    }


def optional_case(name: str, case: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a secondary case; its failure is reported in the results instead of losing the main figures."""
    try:
        return case()
    except Exception as exc:
        print(f"{name} case failed: {exc}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one round of 1.5 s windows, memory:// routes, no demo-provider or scale case",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument(
        "--workers", type=int, default=None, help="load generator processes (default: nproc/2)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument("--duration", type=float, default=None, help="override the window length, s")
    parser.add_argument("--no-scale", action="store_true", help="skip the control-side scale benchmark")
    parser.add_argument("--no-demo-provider", action="store_true", help="skip the demo-provider case")
    parser.add_argument(
        "--floor",
        action="store_true",
        help=f"also run {FLOOR}: two minimal frame-aware Python relays (benchmarks/floorrelay.py)",
    )
    args = parser.parse_args(argv)
    names = (*TOPOLOGIES, FLOOR) if args.floor else TOPOLOGIES
    s = Settings.make(args.quick, args.workers)
    d = args.duration or s.duration
    s = dataclasses.replace(
        s,
        rounds=args.rounds or s.rounds,
        duration=d,
        fixed_duration=d,
        demo_provider=s.demo_provider and not args.no_demo_provider,
        scale=s.scale and not args.no_scale,
    )
    started = time.monotonic()
    machine = machine_info()
    print(
        f"benchmark: {'quick' if s.quick else 'full'} run, generator processes: {s.workers}", file=sys.stderr
    )
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="regproxy-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        registry = "memory://"
        if not s.quick:
            from tests.zkserver import ZooKeeperServer

            zk = ZooKeeperServer(workdir / "zookeeper")
            zk.start()
            stack.callback(zk.stop)
            registry = f"zookeeper://{zk.hosts}"
        extra["registry"] = "memory:// (static routes)" if s.quick else "ZooKeeper (/pub and /sub)"
        provider = Provider(workdir, "fast")
        stack.callback(provider.stop)
        gen = stack.enter_context(LoadGenerator(s.workers))
        with topologies_for(workdir, provider, registry, names) as topos:
            measured = measure(gen, topos, provider, s, list(LOADS))
        if s.demo_provider:
            extra["demo_provider"] = optional_case(
                "demo provider", lambda: demo_provider_case(gen, workdir, s)
            )
    report = build_report(machine, s, measured, extra, names)
    if s.scale:
        from benchmarks import scale

        print("control side: scale benchmark", file=sys.stderr, flush=True)
        report["scale"] = optional_case("scale", lambda: scale.run(scale.ScaleSettings()))
        if "error" in report["scale"]:
            report["checks"].append(f"the scale benchmark failed: {report['scale']['error'].splitlines()[0]}")
    if "error" in extra.get("demo_provider", {}):
        report["checks"].append(
            f"the demo-provider case failed: {extra['demo_provider']['error'].splitlines()[0]}"
        )
    report["run"]["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
