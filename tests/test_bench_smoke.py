"""The benchmark's pieces run and produce numbers (a second or so each).

Not a performance test: no figure is compared with a bound here. ``make bench`` measures.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks import run as bench
from benchmarks.loadgen import LoadGenerator, LoadSpec
from benchmarks.topologies import HOST, Direct, FloorChain, Provider, RegproxyChain

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def provider(workdir: Path):  # type: ignore[no-untyped-def]
    p = Provider(workdir, "fast")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def gen():  # type: ignore[no-untyped-def]
    with LoadGenerator(1) as g:
        yield g


@pytest.mark.slow
def test_loadgen_against_fast_provider(gen: LoadGenerator, provider: Provider) -> None:
    closed = gen.run(
        LoadSpec(HOST, provider.port, 4, 4, duration=0.4, warmup=0.1), {"provider": [provider.pid]}
    )
    assert closed.completed > 0 and closed.errors == 0 and not closed.failures
    assert closed.qps > 0 and closed.latency_ms["p50"] > 0
    assert set(closed.cpu_s) == {"generator", "provider"}

    fixed = gen.run(LoadSpec(HOST, provider.port, 4, rate=2000, duration=0.4, warmup=0.1))
    assert fixed.missing == 0 and fixed.errors == 0
    # 800 requests are due in the window; the schedule, not the responses, decides how many leave.
    assert abs(fixed.completed - 800) <= 2
    assert fixed.send_lag_ms["p50"] >= 0 and fixed.latency_ms["p99"] > 0


@pytest.mark.process
def test_regproxy_topology_quick_and_report(gen: LoadGenerator, provider: Provider, workdir: Path) -> None:
    s = bench.Settings(True, 1, 0.4, 0.1, 0.4, 1, demo_provider=False, scale=False)
    chain = RegproxyChain(workdir, provider.port, registry="memory://")
    floor = FloorChain(workdir, provider.port)
    try:
        topos = (("direct", Direct(provider)), ("regproxy", chain), (bench.FLOOR, floor))
        closed = {name: [bench.run_one(gen, t, provider, "rpc", None, s)] for name, t in topos}
        fixed = {name: [bench.run_one(gen, t, provider, "rpc", 500, s)] for name, t in topos}
    finally:
        chain.stop()
        floor.stop()
    fl = closed[bench.FLOOR][0]
    assert fl.result.completed > 0 and fl.result.errors == 0 and fixed[bench.FLOOR][0].result.missing == 0
    assert fl.proxies == ["pyfloor-front", "pyfloor-back"] and fl.proxy_cpu_us > 0
    rp = closed["regproxy"][0]
    assert rp.result.completed > 0 and rp.result.errors == 0
    assert rp.proxies == ["regproxy-egress", "regproxy-ingress"] and rp.proxy_cpu_us > 0
    assert rp.verdict

    # No HAProxy in the test environment: its place in the report is taken by the direct runs, which
    # is enough to check the report's shape.
    closed["haproxy"], fixed["haproxy"] = closed["direct"], fixed["direct"]
    measured = {load: {"closed": closed, "rate": 500, "fixed": fixed} for load in bench.LOADS}
    names = (*bench.TOPOLOGIES, bench.FLOOR)
    report = bench.build_report({"nproc": 1}, s, measured, {"registry": "memory://"}, names)
    for key in ("machine", "topologies", "ratios", "added_p50_ms_per_hop", "cpu_us_per_request_per_hop"):
        assert key in report
    assert set(report["ratios"]) == {
        "regproxy_vs_haproxy_qps",
        "regproxy_vs_direct_qps",
        "regproxy_vs_haproxy_qps_pipelined",
        "regproxy_vs_haproxy_cpu_per_request",
        "pyfloor_vs_haproxy_qps",
        "pyfloor_vs_haproxy_qps_pipelined",
    }
    for name in names:
        for load in bench.LOADS:
            assert set(report["topologies"][name][load]) == {
                "max_qps",
                "p50_ms",
                "p99_ms",
                "fixed_rate",
                "cpu_us_per_request",
            }
    assert report["topologies"]["regproxy"]["rpc"]["max_qps"] > 0
    out = io.StringIO()
    bench.print_report({**report, "machine": bench.machine_info()}, out)
    assert "regproxy" in out.getvalue() and "pyfloor / haproxy throughput, pipelined" in out.getvalue()


async def test_in_process_cost_benchmarks_run() -> None:
    from benchmarks import changecost, hotpath, statuspage

    cost = await changecost.measure(20, 10)
    assert cost["services"] == 20 and cost["change_ms"] > 0 and cost["save_ms"] > 0
    page = await statuspage.measure(20, 3)
    assert set(page["reads_ms"]) == set(statuspage.FAST + statuspage.SLOW + statuspage.OTHERS)
    assert page["every_s"] == 2.0
    assert page["fast_round_ms"] > 0 and 0 < page["core_percent"] < 1
    for hop in ("egress", "ingress"):
        for depth in (1, 16):  # it checks the responses on its own
            assert await hotpath.run(2000, hop, depth, profile=False, rows=0) > 0
