"""regproxy.proxy.stats.Histogram: the bucket a latency falls in is bisect_left's (Prometheus's
``le``: the first upper bound at or above it; +Inf past the last), found by a scan from the smallest
bound that is cheaper once compiled (docs/performance.md)."""

from __future__ import annotations

import bisect
import math

from hypothesis import given
from hypothesis import strategies as st

from regproxy.proxy.stats import LATENCY_BUCKETS, Histogram


@given(st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.integers(1, 1000)), max_size=50))
def test_buckets_are_bisect_lefts_and_sum_and_count_add_up(observations: list[tuple[float, int]]) -> None:
    hist = Histogram()
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for seconds, times in observations:
        hist.observe(seconds, times)
        expected[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += times
    assert hist.counts == expected
    assert hist.count == sum(times for _, times in observations)
    total = sum(seconds * times for seconds, times in observations)
    assert hist.sum == total or (math.isnan(hist.sum) and math.isnan(total))


def test_each_bound_is_in_its_own_bucket_and_past_the_last_is_inf() -> None:
    hist = Histogram()
    for bound in LATENCY_BUCKETS:
        hist.observe(bound)  # le: a value equal to a bound is in that bound's bucket
    hist.observe(LATENCY_BUCKETS[-1] * 2)
    assert hist.counts == [1] * (len(LATENCY_BUCKETS) + 1)
