"""Where a regproxy hop spends its CPU under benchmark load: py-spy on both sidecars of the
``regproxy`` topology, and a text summary of the hottest frames.

    .venv/bin/pip install py-spy      # not a dependency of regproxy; only this script uses it
    python -m benchmarks.profile [--load rpc|pipelined] [--duration 20] [--out DIR] [--native]
    python -m benchmarks.profile --syscalls [--load rpc|pipelined]     # needs perf

The topology is the benchmark's (fast provider, two ``regproxy run`` processes, memory:// routes)
under the closed-loop load. py-spy samples each sidecar without pausing it (``--nonblocking``)
and writes collapsed stacks (``DIR/{egress,ingress}-LOAD.txt``), which speedscope and
flamegraph.pl both read. The summary lists, per sidecar, the functions with the most samples
on top of the stack (self) and anywhere in it (total), as shares of all samples. Time spent in C
(uvloop's loop: epoll and reads; a transport's ``write``: the send system call) is counted to the
Python frame that called it: ``Runner.run`` for the loop, the caller of ``write`` for writes.

``--syscalls`` counts instead, with ``perf stat`` on the kernel's syscall tracepoints, the system
calls each proxy process of the ``haproxy`` and ``regproxy`` topologies makes per request.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TextIO

from benchmarks.loadgen import LoadGenerator, LoadSpec, default_workers
from benchmarks.run import LOADS
from benchmarks.topologies import HOST, HAProxyChain, Provider, RegproxyChain, Topology, TopologyError

RATE_HZ = 250
# What a relay's data path calls: plain and vectored reads and writes, socket calls, the poller.
SYSCALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "splice", "epoll_wait", "epoll_pwait")  # fmt: skip


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise TopologyError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def _frame_name(frame: str) -> str:
    # py-spy writes "function (path/to/file.py:line)"; the line is dropped so a function is one row.
    name, _, where = frame.partition(" (")
    path = where.removesuffix(")").rsplit(":", 1)[0]
    for marker in ("/regproxy/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def summarize(collapsed: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The ``top`` functions by self and by total samples, as fractions of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[2:]]  # skip the process and thread frames
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    if not samples:
        return {"self": [], "total": []}
    # The entry chain (``<module>`` down to the event loop's ``run``) is in every sample: leave it out.
    inner = [(n, c) for n, c in total.most_common() if c < 0.95 * samples]
    return {
        "self": [(n, c / samples) for n, c in own.most_common(top)],
        "total": [(n, c / samples) for n, c in inner[:top]],
    }


def print_summary(name: str, summary: dict[str, list[tuple[str, float]]], out: TextIO = sys.stdout) -> None:
    out.write(f"\n{name}: hottest functions (share of samples)\n")
    for kind in ("self", "total"):
        out.write(f"  {kind}:\n")
        for fn, share in summary[kind]:
            out.write(f"    {share:6.1%}  {fn}\n")


def record(spy: str, pid: int, path: Path, duration: float, native: bool) -> subprocess.Popen[str]:
    """py-spy sampling ``pid`` for ``duration`` s into ``path`` (collapsed stacks)."""
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", str(RATE_HZ),
           "--format", "raw", "--output", str(path)]  # fmt: skip
    # Native unwinding needs the process stopped while its stack is read; Python frames alone do not.
    cmd.append("--native" if native else "--nonblocking")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def count_syscalls(
    gen: LoadGenerator, topo: Topology, load: str, seconds: float
) -> dict[str, dict[str, float]]:
    """System calls per request of each proxy process of ``topo``, counted over ``seconds`` of load."""
    perf = shutil.which("perf")
    if perf is None:
        raise TopologyError("perf is not installed (Debian: linux-perf)")
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    delay_ms = 1500  # connections made and warm-up over before counting starts
    counters = {}
    for name, pid in topo.proxies.items():
        cmd = [perf, "stat", "-x", ",", "-D", str(delay_ms), "-e", events, "-p", str(pid),
               "--", "sleep", str(delay_ms / 1000 + seconds)]  # fmt: skip
        counters[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    conns, depth = LOADS[load]
    result = gen.run(LoadSpec(HOST, topo.port, conns, depth, duration=seconds + 1.5, warmup=1.0))
    requests = result.qps * seconds
    out: dict[str, dict[str, float]] = {}
    for name, proc in counters.items():
        _stdout, err = proc.communicate(timeout=60)
        counts: dict[str, float] = {}
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and "sys_enter_" in fields[2] and fields[0].isdigit():
                counts[fields[2].split("sys_enter_")[1]] = int(fields[0]) / requests
        if not counts:
            raise TopologyError(f"perf stat counted nothing (tracepoints unavailable?): {err.strip()[-300:]}")
        out[name] = {k: round(v, 2) for k, v in counts.items() if v}
    return out


def syscalls_main(load: str, seconds: float = 4.0) -> None:
    with tempfile.TemporaryDirectory(prefix="regproxy-syscalls-") as tmp:
        workdir = Path(tmp)
        provider = Provider(workdir, "fast")
        topos: list[Topology] = []
        try:
            topos = [HAProxyChain(workdir, provider.port), RegproxyChain(workdir, provider.port)]
            with LoadGenerator(default_workers()) as gen:
                for topo in topos:
                    for name, per in count_syscalls(gen, topo, load, seconds).items():
                        calls = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
                        print(
                            f"{load:9} {name:18} {sum(per.values()):5.2f} system calls per request: {calls}"
                        )
        finally:
            for topo in topos:
                topo.stop()
            provider.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=list(LOADS), default="rpc")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"))
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (slower)")
    parser.add_argument("--syscalls", action="store_true", help="count system calls per request (perf)")
    args = parser.parse_args(argv)
    if args.syscalls:
        syscalls_main(args.load)
        return 0
    spy = py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    conns, depth = LOADS[args.load]
    with tempfile.TemporaryDirectory(prefix="regproxy-profile-") as tmp:
        workdir = Path(tmp)
        provider = Provider(workdir, "fast")
        try:
            chain = RegproxyChain(workdir, provider.port, registry="memory://")
            try:
                outputs = {
                    "egress": (chain.consumer_side.proc.pid, args.out / f"egress-{args.load}.txt"),
                    "ingress": (chain.provider_side.proc.pid, args.out / f"ingress-{args.load}.txt"),
                }
                with LoadGenerator(default_workers()) as gen:
                    spies = [
                        record(spy, pid, path, args.duration, args.native) for pid, path in outputs.values()
                    ]
                    spec = LoadSpec(HOST, chain.port, conns, depth, duration=args.duration, warmup=0.5)
                    result = gen.run(spec, {"proxies": chain.proxy_pids})
                    for spy_proc in spies:
                        _out, err = spy_proc.communicate(timeout=args.duration + 60)
                        if spy_proc.returncode != 0:
                            raise TopologyError(f"py-spy failed: {err.strip()}")
            finally:
                chain.stop()
        finally:
            provider.stop()
    print(
        f"{args.load} load on the regproxy topology while profiling: {result.qps:,.0f} req/s, "
        f"{result.cpu_us_per_request('proxies') or 0:.1f} µs of proxy CPU per request (sampling costs some)"
    )
    for name, (_pid, path) in outputs.items():
        print_summary(f"{name} sidecar ({path})", summarize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
