from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.routing import (
    BALANCERS,
    Host,
    LeastRequest,
    LoadBalancer,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    make_balancer,
)
from regproxy.routing.balancer import DUBBO_LB


def hosts(*weights: int) -> tuple[Host, ...]:
    return tuple(Host(f"10.0.0.{i + 1}:20880", weight=w) for i, w in enumerate(weights))


def names(picked: list[Host | None], pool: tuple[Host, ...]) -> str:
    letters = {h.address: chr(ord("a") + i) for i, h in enumerate(pool)}
    return "".join(letters[h.address] if h else "-" for h in picked)


def idle(_: str) -> int:
    return 0


FACTORIES: dict[str, Callable[[], LoadBalancer]] = {
    "round_robin": RoundRobin,
    "random": lambda: Random(random.Random(1)),
    "weighted_round_robin": WeightedRoundRobin,
    "least_request": lambda: LeastRequest(idle, random.Random(1)),
}


def test_factories_cover_every_balancer() -> None:
    # "dubbo" is Dubbo's cluster layer, made per method by the planner (tests/test_dubbo_cluster.py).
    assert set(FACTORIES) == BALANCERS - {DUBBO_LB}


# --- behaviour shared by every balancer -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_empty_host_list_gives_none(name: str) -> None:
    assert FACTORIES[name]().pick(()) is None


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_never_picks_unhealthy_zero_weight_or_excluded(name: str) -> None:
    pool = (
        Host("10.0.0.1:1", healthy=False),
        Host("10.0.0.2:1", weight=0),
        Host("10.0.0.3:1", weight=-5),
        Host("10.0.0.4:1"),
        Host("10.0.0.5:1"),
    )
    lb = FACTORIES[name]()
    picked = {lb.pick(pool, exclude={"10.0.0.5:1"}) for _ in range(50)}
    assert picked == {pool[3]}
    picked = {lb.pick(pool) for _ in range(200)}
    assert picked == {pool[3], pool[4]}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_eligible_host_gives_none(name: str) -> None:
    pool = (Host("10.0.0.1:1", healthy=False), Host("10.0.0.2:1", weight=0), Host("10.0.0.3:1"))
    lb = FACTORIES[name]()
    assert lb.pick(pool, exclude=("10.0.0.3:1",)) is None
    assert lb.pick(pool[:2]) is None


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_single_eligible_host_is_always_picked(name: str) -> None:
    pool = hosts(3)
    lb = FACTORIES[name]()
    assert all(lb.pick(pool) is pool[0] for _ in range(10))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_retry_exclusion_walks_every_host_once(name: str) -> None:
    pool = hosts(1, 2, 3, 4)
    lb = FACTORIES[name]()
    tried: set[str] = set()
    while (h := lb.pick(pool, exclude=tried)) is not None:
        assert h.address not in tried
        tried.add(h.address)
    assert tried == {h.address for h in pool}


# --- make_balancer -----------------------------------------------------------------------------


def test_each_balancer_name_makes_a_fresh_balancer_of_its_kind() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobin)
    assert isinstance(make_balancer("random"), Random)
    assert isinstance(make_balancer("weighted_round_robin"), WeightedRoundRobin)
    assert isinstance(make_balancer("least_request", active=idle), LeastRequest)
    assert make_balancer("round_robin") is not make_balancer("round_robin")  # state is per cluster


def test_make_balancer_unknown_name() -> None:
    with pytest.raises(
        ValueError, match=r"unknown load balancer 'fastest' \(choose one of dubbo, least_request, random"
    ):
        make_balancer("fastest")


def test_the_dubbo_name_is_not_made_by_make_balancer() -> None:
    with pytest.raises(ValueError, match="Dubbo's cluster layer: the planner makes it per method"):
        make_balancer(DUBBO_LB)


def test_least_request_needs_a_counter() -> None:
    with pytest.raises(ValueError, match="least_request"):
        make_balancer("least_request")


# --- round robin -------------------------------------------------------------------------------


def test_round_robin_cycles_ignoring_weights() -> None:
    pool = hosts(100, 1, 50)
    lb = RoundRobin()
    assert names([lb.pick(pool) for _ in range(7)], pool) == "abcabca"


def test_round_robin_skips_unhealthy_and_excluded_without_bias() -> None:
    pool = (Host("10.0.0.1:1"), Host("10.0.0.2:1", healthy=False), Host("10.0.0.3:1"), Host("10.0.0.4:1"))
    lb = RoundRobin()
    assert names([lb.pick(pool) for _ in range(6)], pool) == "acdacd"
    assert names([lb.pick(pool, exclude={"10.0.0.3:1"}) for _ in range(4)], pool) == "adad"


def test_round_robin_survives_host_list_shrinking() -> None:
    lb = RoundRobin()
    pool = hosts(1, 1, 1, 1)
    for _ in range(3):
        lb.pick(pool)
    smaller = pool[:2]
    assert {lb.pick(smaller) for _ in range(4)} == set(smaller)


# --- random ------------------------------------------------------------------------------------


def test_random_is_weighted() -> None:
    pool = hosts(70, 20, 10)
    lb = Random(random.Random(42))
    counts = Counter(lb.pick(pool).address for _ in range(20_000))  # type: ignore[union-attr]
    for h in pool:
        assert counts[h.address] / 20_000 == pytest.approx(h.weight / 100, abs=0.015)


def test_random_with_seed_is_reproducible() -> None:
    pool = hosts(1, 2, 3)
    a, b = Random(random.Random(7)), Random(random.Random(7))
    assert [a.pick(pool) for _ in range(50)] == [b.pick(pool) for _ in range(50)]


def test_random_weight_ignores_excluded_hosts() -> None:
    pool = hosts(1000, 1, 1)
    lb = Random(random.Random(3))
    counts = Counter(lb.pick(pool, exclude={pool[0].address}) for _ in range(2000))
    assert set(counts) == {pool[1], pool[2]}
    assert counts[pool[1]] == pytest.approx(1000, abs=150)


# --- weighted round robin ----------------------------------------------------------------------


def test_wrr_matches_nginx_smooth_sequence() -> None:
    pool = hosts(5, 1, 1)
    lb = WeightedRoundRobin()
    # The sequence from nginx's commit introducing smooth weighted round robin (5,1,1 -> a a b a c a a).
    assert names([lb.pick(pool) for _ in range(14)], pool) == "aabacaa" * 2


def test_wrr_state_survives_host_list_changes() -> None:
    pool = hosts(5, 1, 1)
    lb = WeightedRoundRobin()
    assert names([lb.pick(pool) for _ in range(3)], pool) == "aab"  # current weights now a=1 b=-4 c=3
    # c leaves for one pick (a=6 b=-3 -> a), then comes back with its current weight intact.
    assert lb.pick(pool[:2]) is pool[0]
    assert names([lb.pick(pool) for _ in range(3)], pool) == "aca"
    # Had the state been reset when the list changed, the cycle would have restarted instead.
    fresh = WeightedRoundRobin()
    assert names([fresh.pick(pool) for _ in range(3)], pool) == "aab"


def test_wrr_removed_addresses_are_forgotten() -> None:
    lb = WeightedRoundRobin()
    for i in range(200):
        lb.pick((Host(f"10.1.{i // 250}.{i % 250}:1"),))
    assert len(lb._current) <= 2 * 1 + 16  # pruned whenever it outgrows the live host list


def test_wrr_skips_unhealthy_and_keeps_proportions_of_the_rest() -> None:
    pool = (*hosts(3, 2), Host("10.0.0.3:20880", weight=5, healthy=False))
    lb = WeightedRoundRobin()
    counts = Counter(lb.pick(pool) for _ in range(50))
    assert counts == {pool[0]: 30, pool[1]: 20}


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=8), st.integers(1, 3))
def test_wrr_picks_each_host_weight_times_per_cycle(weights: list[int], cycles: int) -> None:
    pool = hosts(*weights)
    lb = WeightedRoundRobin()
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(lb.pick(pool) for _ in range(total))
        assert counts == {h: h.weight for h in pool}


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=2, max_size=8))
def test_wrr_is_smooth(weights: list[int]) -> None:
    # Smoothness: within a cycle, no host runs ahead of its share by more than one pick.
    pool = hosts(*weights)
    lb = WeightedRoundRobin()
    total = sum(weights)
    seen: Counter[Host] = Counter()
    for n in range(1, total + 1):
        seen[lb.pick(pool)] += 1  # type: ignore[index]
        for h in pool:
            assert seen[h] <= n * h.weight / total + 1


# --- least request -----------------------------------------------------------------------------


def test_least_request_prefers_less_loaded_host() -> None:
    pool = hosts(1, 1)
    load = {pool[0].address: 10, pool[1].address: 0}
    lb = LeastRequest(load.__getitem__, random.Random(0))
    assert all(lb.pick(pool) is pool[1] for _ in range(50))


def test_least_request_never_picks_the_most_loaded_of_several() -> None:
    pool = hosts(1, 1, 1, 1)
    load = dict(zip((h.address for h in pool), (9, 0, 4, 2), strict=True))
    lb = LeastRequest(load.__getitem__, random.Random(0))
    counts = Counter(lb.pick(pool) for _ in range(2000))
    assert pool[0] not in counts
    assert counts[pool[1]] > counts[pool[3]] > counts[pool[2]]


def test_least_request_compares_load_per_weight() -> None:
    pool = hosts(10, 1)
    load = {pool[0].address: 5, pool[1].address: 1}
    lb = LeastRequest(load.__getitem__, random.Random(0))
    # (5+1)/10 < (1+1)/1: the heavy host takes more concurrent requests before it counts as busier.
    assert all(lb.pick(pool) is pool[0] for _ in range(20))
    load[pool[0].address] = 25  # (25+1)/10 > (1+1)/1
    assert all(lb.pick(pool) is pool[1] for _ in range(20))


def test_least_request_tie_prefers_heavier_host() -> None:
    pool = hosts(1, 2)
    lb = LeastRequest({pool[0].address: 1, pool[1].address: 3}.__getitem__, random.Random(0))
    # (1+1)/1 == (3+1)/2
    assert all(lb.pick(pool) is pool[1] for _ in range(20))


def test_least_request_with_equal_load_spreads() -> None:
    pool = hosts(1, 1, 1)
    lb = LeastRequest(idle, random.Random(5))
    counts = Counter(lb.pick(pool) for _ in range(3000))
    assert all(c == pytest.approx(1000, abs=150) for c in counts.values())


def test_least_request_samples_only_eligible_hosts() -> None:
    pool = (Host("10.0.0.1:1", healthy=False), *hosts(1, 1, 1)[1:], Host("10.0.0.9:1"))
    lb = LeastRequest(idle, random.Random(2))
    counts = Counter(lb.pick(pool, exclude={"10.0.0.9:1"}) for _ in range(600))
    assert set(counts) == {pool[1], pool[2]}


def test_least_request_one_eligible_host_skips_the_counter() -> None:
    pool = (Host("10.0.0.1:1"), Host("10.0.0.2:1", healthy=False))

    def boom(_: str) -> int:
        raise AssertionError("counter consulted with a single candidate")

    assert LeastRequest(boom).pick(pool) is pool[0]
