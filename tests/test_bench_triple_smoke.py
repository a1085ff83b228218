"""The Triple benchmark's pieces run and produce numbers (a fraction of a second per run).

Not a performance test: no figure is compared with a bound here. ``python -m benchmarks.triple``
measures. The runs need h2load and HAProxy (scripts/test-deps.sh installs both for `make test`,
benchmarks/setup.sh for `make bench`).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks import triple
from benchmarks.topologies import Provider, haproxy_binary
from benchmarks.triprovider import RESPONSE_HEADERS, TRAILERS

pytestmark = pytest.mark.timeout(60)


def test_provider_header_blocks_decode_on_any_connection() -> None:
    hpack = pytest.importorskip("hpack")
    decoder = hpack.Decoder()
    for _ in range(2):  # literals without indexing: the second decode sees the same, nothing was added
        assert decoder.decode(RESPONSE_HEADERS) == [(":status", "200"), ("content-type", "application/grpc")]
        assert decoder.decode(TRAILERS) == [("grpc-status", "0")]
    assert len(decoder.header_table.dynamic_entries) == 0


def test_request_file_is_one_grpc_message() -> None:
    framed = triple.pack_message(triple.MESSAGE)
    assert framed[0] == 0 and int.from_bytes(framed[1:5], "big") == len(triple.MESSAGE) == len(framed) - 5


@pytest.mark.process
def test_every_topology_quick_and_report(tmp_path: Path) -> None:
    triple.h2load_binary()  # TopologyError naming what to install when missing: a failure, not a skip
    haproxy_binary()
    s = triple.Settings(True, 1, 0.4, 0.1)
    provider = Provider(tmp_path, "triple")
    names = ("direct", "haproxy", "regproxy")
    try:
        # Setting up includes grpcio calls through each topology (grpc-status 0, the echo, 64 KiB).
        with triple.topologies_for(tmp_path, provider, "memory://", names) as (topos, errors):
            assert not errors and set(topos) == set(names), errors
            measured = triple.measure(topos, errors, provider, s, ["rpc"], tmp_path)
    finally:
        provider.stop()
    assert not errors
    for name in names:
        (run,) = measured["rpc"][name]
        r = run.result
        assert r.completed > 0 and r.errors == 0 and not r.failures, r.failures
        assert r.qps > 0 and r.latency_ms["p50"] > 0 and run.verdict
        assert {"generator", "provider"} <= set(r.cpu_s)
    hap = measured["rpc"]["haproxy"][0]
    assert hap.proxies == ["haproxy-front", "haproxy-back"] and hap.proxy_cpu_us > 0
    assert measured["rpc"]["regproxy"][0].proxy_cpu_us > 0

    report = triple.build_report({"nproc": 1}, s, measured, errors, names, "memory://")
    assert report["ratios"]["regproxy_vs_haproxy_qps"] is not None

    # A topology that could not be set up is reported as such.
    errors = {"regproxy": "TopologyError: not set up in this test"}
    without = {load: {k: v for k, v in runs.items() if k != "regproxy"} for load, runs in measured.items()}
    report = triple.build_report({"nproc": 1}, s, without, errors, names, "memory://")
    assert set(report["topologies"]["direct"]["rpc"]) == {
        "max_qps",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_request",
        "cpu_us_per_request_kernel",
        "limited_by",
    }
    assert report["topologies"]["regproxy"] == {"error": errors["regproxy"]}
    assert report["ratios"]["haproxy_vs_direct_qps"] is not None
    assert report["ratios"]["regproxy_vs_haproxy_qps"] is None
    out = io.StringIO()
    triple.print_report({**report, "machine": {**triple.machine_info(), "h2load": "x"}}, out)
    assert "regproxy: not measured" in out.getvalue() and "haproxy" in out.getvalue()
