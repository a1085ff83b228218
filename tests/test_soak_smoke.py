"""The soak's machinery for a few seconds (``make soak`` runs it for 10 minutes): steady traffic
through two sidecar processes with routes from the real ZooKeeper, RSS sampled, a report written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from benchmarks import soak
from tests.zkserver import ZooKeeperServer

pytestmark = pytest.mark.timeout(60)


@pytest.mark.process
def test_soak_smoke(zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path) -> None:
    s = soak.SoakSettings.for_duration(4.0, rate=300.0, connections=4)
    report = soak.run(s, tmp_path, registry=f"zookeeper://{zk_server.hosts}")
    out = tmp_path / "soak.json"
    out.write_text(json.dumps(report))
    soak.print_summary(json.loads(out.read_text()))
    r = report["requests"]
    # 4 s at 300 req/s: 1200 requests due in the window, every one answered OK through both hops.
    assert abs(r["answered"] - 1200) <= 3 and r["errors"] == 0 and r["unanswered"] == 0, report["problems"]
    assert report["consumer_egress_statuses"].get("20", 0) >= 1200
    assert set(report["sidecars"]) == {"consumer-sidecar", "provider-sidecar"}
    assert len(report["rss_samples"]) >= 10
    for t in report["sidecars"].values():
        assert 10 < t["rss_end_mib"] < 500 and t["rss_max_mib"] >= t["rss_end_mib"]
    assert report["passed"] == (not report["problems"])


def test_rss_trend_ignores_warmup_and_noise_and_sees_a_leak() -> None:
    mib = 2**20
    # 100 samples: start-up growth before t=10 (the warm-up), then flat with +-1 MiB spikes...
    flat = [
        soak.Sample(t, {"x": (50 if t < 10 else 60) * mib + (mib if t % 7 == 0 else 0)}) for t in range(100)
    ]
    assert soak.rss_trend(flat, ["x"], 10)["x"]["rss_growth_pct"] == 0
    # ...or leaking 50 KiB a sample after it: 60 MiB -> ~64.4 MiB, 7 % over the run.
    leak = [soak.Sample(t, {"x": 60 * mib + max(0, t - 10) * 50 * 1024}) for t in range(100)]
    trend = soak.rss_trend(leak, ["x"], 10)["x"]
    assert 6 < trend["rss_growth_pct"] < 8 and trend["rss_start_mib"] == 60
