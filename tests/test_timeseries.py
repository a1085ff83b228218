"""The status page's history (regproxy/api/timeseries.py): rates and latency quantiles from the
listeners' cumulative counters, bounded; and /api/v1/timeseries of a running sidecar."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from regproxy.api.timeseries import Counters, TimeSeries, by_service, quantile_ms
from tests.test_admin import GREET, VERSION, Pair, pair, send_calls  # noqa: F401 - the fixture

BOUNDS = (0.001, 0.005, 0.01, 0.05)


def test_quantiles_are_read_from_bucket_counts_as_prometheus_does() -> None:
    assert quantile_ms(BOUNDS, [0, 0, 0, 0, 0], 0.5) is None
    # 10 calls in (1, 5] ms: the median halfway through that bucket.
    assert quantile_ms(BOUNDS, [0, 10, 0, 0, 0], 0.5) == 3.0
    # 99 fast and 1 slow: p50 in the first bucket, p99 at its top, and a call past every bound is
    # reported at the highest bound (+Inf has no upper end).
    assert quantile_ms(BOUNDS, [99, 0, 0, 0, 1], 0.5) == pytest.approx(0.505, abs=0.001)
    assert quantile_ms(BOUNDS, [99, 0, 0, 0, 1], 0.99) == 1.0
    assert quantile_ms(BOUNDS, [0, 0, 0, 0, 5], 0.99) == 50.0


def test_a_point_per_interval_from_the_differences() -> None:
    ts = TimeSeries()
    key = ("egress", "dubbo", "com.x.Svc:1.0.0")
    ts.sample(100.0, {key: Counters(10, 1, BOUNDS, (5, 5, 0, 0, 0))})  # the base: no point yet
    assert ts.points() == [(key, [])]
    ts.sample(101.0, {key: Counters(30, 3, BOUNDS, (5, 25, 0, 0, 0))})
    ts.sample(103.0, {key: Counters(30, 3, BOUNDS, (5, 25, 0, 0, 0))})  # idle for two seconds
    (got,) = ts.points()
    p1, p2 = got[1]
    assert (p1.t, p1.rps, p1.eps, p1.p50_ms, p1.p99_ms) == (101.0, 20.0, 2.0, 3.0, 4.96)
    assert (p2.rps, p2.eps, p2.p50_ms, p2.p99_ms) == (0.0, 0.0, None, None)
    assert [p.t for p in ts.points(seconds=1.5)[0][1]] == [103.0]


def test_the_history_and_the_series_are_bounded() -> None:
    ts = TimeSeries(history=3, max_series=2)
    keys = [("egress", "dubbo", f"s{i}") for i in range(5)]
    for second in range(10):
        ts.sample(float(second), {k: Counters(second, 0) for k in keys})
    series = ts.points()
    assert [k for k, _ in series] == keys[:2]  # the first seen, no more
    assert all(len(points) == 3 for _, points in series)


def test_counters_are_summed_per_service_over_methods() -> None:
    per = by_service(
        {"g/com.x.A:1.0.0.sayHi": 3, "g/com.x.A:1.0.0.sayBye": 2, "com.y.B.m": 1},
        {"g/com.x.A:1.0.0.sayBye": 1},
        [("g/com.x.A:1.0.0", BOUNDS, (1, 2, 0, 0, 0)), ("g/com.x.A:1.0.0", BOUNDS, (0, 2, 0, 0, 0))],
    )
    assert per["g/com.x.A:1.0.0"] == Counters(5, 1, BOUNDS, (1, 4, 0, 0, 0))
    assert per["com.y.B"] == Counters(1, 0, (), ())


@pytest.mark.process
async def test_a_running_sidecar_serves_each_services_history(pair: Pair) -> None:  # noqa: F811
    client = await send_calls(pair.consumer)
    try:
        url = f"{pair.consumer.admin}/api/v1/timeseries"
        async with aiohttp.ClientSession() as http:
            for _ in range(50):  # a point needs two samples, a second apart
                async with http.get(url) as resp:
                    body = await resp.json()
                series = {(s["listener"], s["protocol"], s["service"]): s for s in body["series"]}
                greet = series.get(("egress", "dubbo", f"{GREET}:{VERSION}"))
                if greet is not None and greet["points"]:
                    break
                await client.call(GREET, "sayHi", ["more"], version=VERSION)
                await asyncio.sleep(0.1)
            assert body["interval_s"] == 1.0 and body["history_s"] == 900
            assert greet is not None and greet["points"], body
            _t, rps, eps, p50, p99 = greet["points"][-1]
            assert rps > 0 and eps == 0 and p50 is not None and 0 < p50 <= p99
            async with http.get(url, params={"seconds": "0"}) as resp:
                assert resp.status == 400
                assert "seconds: expected more than 0" in (await resp.json())["err_msg"]
    finally:
        client.close()
