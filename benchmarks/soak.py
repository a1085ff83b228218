"""The soak: steady traffic through regproxy for a long time, watching the sidecars' memory.

    consumer's load generator -> consumer sidecar's egress -> provider sidecar's ingress -> fast provider

with routes learnt from a real ZooKeeper (the provider sidecar publishes with ``/pub``, the consumer
sidecar subscribes with ``/sub``), an open-loop rate (500 req/s by default) for ``SOAK_S`` seconds
(600 by default).  Every ``--sample`` seconds it reads both sidecars' RSS from /proc.

Pass: no request failed or went unanswered, both sidecars alive, and each sidecar's RSS grew by
less than 5 % from after the warm-up (the median of the samples in the first tenth after it) to
the end (the median of the samples in the last tenth): a leak of a few bytes per request shows
there, allocator noise does not.  A summary goes to stdout, the figures to a JSON file.

    make soak                                   # 10 minutes, figures in benchmarks/results/soak.json
    SOAK_S=30 make soak                          # a quick one
    python -m benchmarks.soak --duration 60 --rate 1000 --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.loadgen import LoadGenerator, LoadResult, LoadSpec
from benchmarks.payload import SERVICE
from benchmarks.topologies import HOST, ROOT, Provider, RegproxyChain, http_json

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "soak.json"
MAX_RSS_GROWTH = 0.05


@dataclass(frozen=True, slots=True)
class SoakSettings:
    duration_s: float = 600.0
    rate: float = 500.0  # requests per second, open loop
    connections: int = 8
    sample_s: float = 5.0  # RSS sampling period
    # RSS before this is start-up (imports done, buffers and caches filling), not a trend.
    warmup_s: float = 60.0
    max_rss_growth: float = MAX_RSS_GROWTH

    @classmethod
    def for_duration(cls, duration_s: float, **kw: Any) -> SoakSettings:
        """Warm-up and sampling scaled down for short (smoke) runs: 10 % warm-up, >= 20 samples."""
        warmup = min(60.0, duration_s * 0.1)
        sample = min(5.0, max(0.2, duration_s / 40))
        return cls(duration_s=duration_s, warmup_s=warmup, sample_s=sample, **kw)


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the traffic started
    rss: dict[str, int]  # sidecar name -> bytes


def _median_rss(samples: list[Sample], name: str) -> int:
    return int(statistics.median(s.rss[name] for s in samples))


def rss_trend(samples: list[Sample], names: list[str], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per sidecar: RSS after the warm-up and at the end (medians of a tenth of the run each)."""
    steady = [s for s in samples if s.t >= warmup_s] or samples[-1:]
    tenth = max(1, len(steady) // 10)
    head, tail = steady[:tenth], steady[-tenth:]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        base, end = _median_rss(head, name), _median_rss(tail, name)
        out[name] = {
            "rss_start_mib": round(samples[0].rss[name] / 2**20, 2),
            "rss_after_warmup_mib": round(base / 2**20, 2),
            "rss_end_mib": round(end / 2**20, 2),
            "rss_max_mib": round(max(s.rss[name] for s in samples) / 2**20, 2),
            "rss_growth_pct": round((end / base - 1) * 100, 2),
        }
    return out


def _egress_answers(admin_url: str) -> dict[str, int]:
    status, stats = http_json("GET", admin_url + "/api/v1/stats")
    if status != 200:
        return {"error": status}
    return {str(k): int(v) for k, v in stats["egress"]["responses"].items()}


def _loadavg() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/loadavg") as f:
        return float(f.read().split()[0])
    return None


def machine() -> dict[str, Any]:
    """Where and on what the soak ran: the figures mean little without the machine's load."""
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT, timeout=5).stdout.strip() or None  # fmt: skip
    return {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": _loadavg(),
        "python": sys.version.split()[0],
    }


def run(s: SoakSettings, workdir: Path, registry: str | None = None) -> dict[str, Any]:
    """Run one soak; the report (``passed`` and the reasons it did not).  ``registry``: a running
    ZooKeeper to use (``zookeeper://host:port``); by default one is started in ``workdir``."""
    where = machine()
    with contextlib.ExitStack() as stack:
        if registry is None:
            from tests.zkserver import ZooKeeperServer

            zk = ZooKeeperServer(workdir / "zookeeper")
            zk.start()
            stack.callback(zk.stop)
            registry = f"zookeeper://{zk.hosts}"
        provider = Provider(workdir, "fast")
        stack.callback(provider.stop)
        chain = RegproxyChain(workdir, provider.port, registry=registry)
        stack.callback(chain.stop)
        gen = stack.enter_context(LoadGenerator(1))
        pids = {
            "consumer-sidecar": chain.consumer_side.proc.pid,
            "provider-sidecar": chain.provider_side.proc.pid,
        }
        spec = LoadSpec(HOST, chain.port, s.connections, rate=s.rate, duration=s.duration_s, warmup=0.5,
                        drain=3.0)  # fmt: skip

        outcome: dict[str, Any] = {}

        def load() -> None:
            try:
                outcome["result"] = gen.run(spec, {"sidecars": list(pids.values())})
            except Exception as exc:  # reported as the soak's failure
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        loader = threading.Thread(target=load, name="soak-load", daemon=True)
        started = time.monotonic()
        loader.start()
        samples: list[Sample] = []
        alive_error = None
        while loader.is_alive():
            try:
                chain.check_alive()
                samples.append(Sample(round(time.monotonic() - started, 2),
                                      {n: procstat.rss_bytes(p) for n, p in pids.items()}))  # fmt: skip
            except Exception as exc:
                alive_error = str(exc)
                break
            loader.join(s.sample_s)
        loader.join()
        elapsed = time.monotonic() - started
        hosts = chain.consumer_side.cluster_hosts(SERVICE)
        answers = _egress_answers(chain.consumer_side.admin_url)
        log_tails = chain.log_tails()

    result: LoadResult | None = outcome.get("result")
    problems: list[str] = []
    if "error" in outcome:
        problems.append(f"load generator: {outcome['error']}")
    if alive_error:
        problems.append(alive_error)
    trend = rss_trend(samples, list(pids), s.warmup_s) if samples else {}
    if result is not None:
        if result.errors or result.missing or result.failures:
            problems.append(f"{result.errors} error responses, {result.missing} unanswered, "
                            f"failures: {result.failures[:3]}")  # fmt: skip
        if result.completed == 0:
            problems.append("no request was answered")
    if set(answers) - {"20"}:
        problems.append(f"the consumer sidecar answered non-OK statuses: {answers}")
    if not hosts:
        problems.append("the consumer sidecar lost its route to the provider during the soak")
    for name, t in trend.items():
        if t["rss_growth_pct"] >= s.max_rss_growth * 100:
            problems.append(f"{name}: RSS grew {t['rss_growth_pct']} % after the warm-up")
    where["loadavg_1m_at_end"] = _loadavg()
    report: dict[str, Any] = {
        "machine": where,
        "settings": asdict(s),
        "registry": "ZooKeeper (/pub and /sub)",
        "elapsed_s": round(elapsed, 1),
        "requests": {
            "answered": result.completed if result else 0,
            "errors": result.errors if result else None,
            "unanswered": result.missing if result else None,
            "achieved_rate": round(result.qps, 1) if result else None,
            "latency_ms": result.latency_ms if result else None,
            "send_lag_ms": result.send_lag_ms if result else None,
            # CPU seconds of both sidecars together per second of the window (1.0 = one core).
            "sidecars_cpu_cores": round(result.utilisation("sidecars"), 3) if result else None,
        },
        "consumer_egress_statuses": answers,
        "sidecars": trend,
        "rss_samples": [{"t": x.t, **{k: round(v / 2**20, 2) for k, v in x.rss.items()}} for x in samples],
        "passed": not problems,
        "problems": problems,
    }
    if problems:
        report["log_tails"] = log_tails
    return report


def print_summary(report: dict[str, Any]) -> None:
    r = report["requests"]
    s = report["settings"]
    print(f"soak: {report['elapsed_s']} s at {s['rate']:g} req/s over {s['connections']} connections, "
          f"ZooKeeper routes: {r['answered']} answered, {r['errors']} errors, {r['unanswered']} unanswered, "
          f"p50 {r['latency_ms']['p50'] if r['latency_ms'] else '-'} ms, "
          f"p99 {r['latency_ms']['p99'] if r['latency_ms'] else '-'} ms, "
          f"both sidecars {r['sidecars_cpu_cores']} of a core")  # fmt: skip
    for name, t in report["sidecars"].items():
        print(f"  {name}: RSS {t['rss_start_mib']} MiB at start, {t['rss_after_warmup_mib']} MiB after the "
              f"warm-up, {t['rss_end_mib']} MiB at the end (max {t['rss_max_mib']}): "
              f"{t['rss_growth_pct']:+.2f} % (bound {s['max_rss_growth'] * 100:g} %)")  # fmt: skip
    print("soak: PASSED" if report["passed"] else "soak: FAILED: " + "; ".join(report["problems"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=float(os.environ.get("SOAK_S") or 600),
                        help="seconds of traffic (default: $SOAK_S, else 600)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0:
        parser.error("--duration and --rate must be positive")
    s = SoakSettings.for_duration(args.duration, rate=args.rate, connections=args.connections)
    print(f"soak: {s.duration_s:g} s at {s.rate:g} req/s, RSS every {s.sample_s:g} s, "
          f"warm-up {s.warmup_s:g} s", file=sys.stderr, flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="regproxy-soak-") as tmp:
        report = run(s, Path(tmp))
    print_summary(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.out}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
