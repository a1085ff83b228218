"""Dubbo 3.3's load balancers (regproxy.routing.dubbo_balancers), against Dubbo's own arithmetic.

Every expected value here was worked out from apache/dubbo 3.3's sources (the classes named in each
test) and, where marked, confirmed with Java 17: a throwaway program using
java.security.MessageDigest, java.util.TreeMap and Java's float arithmetic exactly as
ConsistentHashLoadBalance and AbstractLoadBalance.calculateWarmupWeight do printed the same values.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from regproxy.dubbo.hessian2 import JavaObject, Long
from regproxy.routing import Host
from regproxy.routing.dubbo_balancers import (
    DUBBO_BALANCERS,
    MAX_HASH_NODES,
    ConsistentHashBalancer,
    DubboBalancer,
    LeastActiveBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    RpcStats,
    ShortestResponseBalancer,
    UnsupportedHashArgument,
    balancer_name,
    dubbo_weight,
    java_string,
    make_dubbo_balancer,
    method_parameter,
    real_invocation,
    warmup_weight,
)

NOW = 1_700_000_000_000  # ms; every provider below "started" relative to this
LONG_AGO = str(NOW - 3_600_000)  # an hour before NOW: past any default warm-up


class Clock:
    """A settable wall clock in ms."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Scripted(random.Random):
    """random() returns the given values in turn, so a test chooses Dubbo's nextInt results."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def draw(k: int, n: int) -> float:
    """The random() value that makes nextInt(n) (int(random() * n)) give k."""
    return (k + 0.5) / n


def provider(address: str, weight: int = 100, /, **params: str) -> Host:
    """A registry host: its metadata is the provider URL's parameters, ``timestamp`` an hour old
    unless given (as every Dubbo provider URL carries one)."""
    params.setdefault("timestamp", LONG_AGO)
    if "weight" not in params and weight != 100:
        params["weight"] = str(weight)
    return Host(address, weight=weight, metadata=params)


def trio(*weights: int) -> tuple[Host, ...]:
    return tuple(provider(f"10.0.0.{i + 1}:20880", w) for i, w in enumerate(weights))


def letters(picked: Sequence[Host | None], pool: Sequence[Host]) -> str:
    names = {h.address: "ABCDEFGHIJKL"[i] for i, h in enumerate(pool)}
    return "".join(names[h.address] if h else "-" for h in picked)


def shares(balancer: DubboBalancer, hosts: tuple[Host, ...], n: int, method: str = "m") -> list[float]:
    counts = Counter(balancer.pick(hosts, method) for _ in range(n))
    return [counts[h] / n for h in hosts]


# ---------------------------------------------------------------------------------------------------
# URL parameters (URLParam.getMethodParameter, URL.getParameter)


def test_method_level_parameter_before_service_level() -> None:
    params = {"weight": "10", "sayHi.weight": "30"}
    assert method_parameter(params, "sayHi", "weight") == "30"
    assert method_parameter(params, "sayBye", "weight") == "10"
    assert method_parameter({"sayHi.weight": ""}, "sayHi", "weight") == ""  # empty: not set


def test_methods_list_limits_method_level_parameters() -> None:
    # URLParam.getMethodParameterStrict: with a `methods` list, only a method it contains (as a
    # substring, String.contains) has method-level values; methods=* has none.
    params = {"methods": "sayHi,sayBye", "weight": "10", "sayHi.weight": "30", "other.weight": "50"}
    assert method_parameter(params, "sayHi", "weight") == "30"
    assert method_parameter(params, "other", "weight") == "10"
    assert method_parameter({"methods": "*", "weight": "10", "sayHi.weight": "30"}, "sayHi", "weight") == "10"


def test_default_prefixed_key_stands_in_for_a_missing_one() -> None:
    # URLParam.parse copies 2.6-era "default.<key>" to "<key>" when "<key>" is absent.
    assert method_parameter({"default.weight": "7"}, "m", "weight") == "7"
    assert method_parameter({"default.weight": "7", "weight": "8"}, "m", "weight") == "8"


def test_balancer_name_is_the_first_providers_loadbalance_for_the_method() -> None:
    assert balancer_name({}, "m") == "random"
    params = {"loadbalance": "roundrobin", "find.loadbalance": "consistenthash"}
    assert balancer_name(params, "find") == "consistenthash"
    assert balancer_name(params, "list") == "roundrobin"


def test_generic_calls_are_balanced_by_the_real_method_and_arguments() -> None:
    # RpcUtils.getMethodName / getArguments: $invoke(name, types, args).
    assert real_invocation("$invoke", ["find", ["java.lang.String"], ["k1"]]) == ("find", ["k1"])
    assert real_invocation("$invokeAsync", ["find", [], []]) == ("find", [])
    assert real_invocation("find", ["k1"]) == ("find", ["k1"])


# ---------------------------------------------------------------------------------------------------
# Weight and warm-up (AbstractLoadBalance.getWeight / calculateWarmupWeight)


@pytest.mark.parametrize(
    ("uptime", "warmup", "weight", "expected"),
    [
        # Round cases: uptime / (warmup / weight), truncated, at least 1.
        (60_000, 600_000, 100, 10),  # 1 minute into the default 10: a tenth
        (300_000, 600_000, 100, 50),
        (599_999, 600_000, 100, 99),
        (5_999, 600_000, 100, 1),  # 0.99... truncates to 0, raised to 1
        (1, 600_000, 100, 1),
        (7_000, 10_000, 200, 140),
        (123_457, 600_000, 37, 7),  # 600000f/37 = 16216.216f; 123457/16216.216 = 7.61
        # Java's float arithmetic decides these (double arithmetic would give one more); confirmed
        # with Java 17.  64f/56 = 1.1428572f (rounded up), 32/1.1428572f = 27.999998f -> 27:
        (32, 64, 56, 27),
        (4_860, 14_580, 660, 219),  # 14580f/660 = 22.09091f, 4860/22.09091f = 219.99998f
        (8, 20, 1_120, 447),  # 20f/1120 = 0.017857144f, 8/that = 447.99997f
        # ... and this one the other way: (float) 44548525 is 44548524, the quotient rounds up to 810.
        (44_548_525, 95_806_835, 1_742, 810),
        (1, 3, 10, 3),  # 3f/10 = 0.3f, 1/0.3f = 3.3333333f: the cap at `weight` is not reached
    ],
)
def test_warmup_weight_matches_java(uptime: int, warmup: int, weight: int, expected: int) -> None:
    assert warmup_weight(uptime, warmup, weight) == expected


def test_weight_reads_the_method_level_weight_and_scales_it_by_warmup() -> None:
    started = str(NOW - 60_000)
    h = Host(
        "10.0.0.1:20880", weight=100, metadata={"timestamp": started, "weight": "100", "find.weight": "300"}
    )
    assert dubbo_weight(h, "find", NOW) == 30  # 300 * 60000 / 600000
    assert dubbo_weight(h, "list", NOW) == 10
    assert dubbo_weight(h, "list", NOW + 540_000) == 100  # warm-up over
    custom = Host("10.0.0.1:20880", metadata={"timestamp": started, "warmup": "120000"})
    assert dubbo_weight(custom, "list", NOW) == 50  # 100 * 60000 / 120000


def test_weight_edge_cases_as_dubbo_has_them() -> None:
    started = NOW - 60_000
    h = Host("10.0.0.1:20880", metadata={"timestamp": str(started)})
    assert dubbo_weight(h, "m", started) == 100  # uptime 0: Dubbo tests uptime > 0, weight whole
    assert dubbo_weight(h, "m", started - 5) == 1  # provider's clock ahead: 1
    zero = Host("10.0.0.1:20880", weight=0, metadata={"timestamp": str(started), "weight": "0"})
    assert dubbo_weight(zero, "m", NOW) == 0  # no warm-up for weight 0, not raised to 1
    assert dubbo_weight(Host("10.0.0.1:20880", metadata={"weight": "-5"}), "m", NOW) == 0


def test_weight_without_a_usable_parameter_is_the_hosts_weight() -> None:
    assert dubbo_weight(Host("10.0.0.1:20880", weight=40), "m", NOW) == 40  # local-file host
    # Java's Integer.parseInt throws here and fails the call; regproxy takes the host's weight.
    assert dubbo_weight(Host("10.0.0.1:20880", weight=40, metadata={"m.weight": "x"}), "m", NOW) == 40
    assert dubbo_weight(Host("10.0.0.1:20880", metadata={"weight": "9" * 30}), "m", NOW) == 2**31 - 1


# ---------------------------------------------------------------------------------------------------
# RandomLoadBalance


def test_random_honours_weights() -> None:
    hosts = trio(100, 200, 300)
    got = shares(RandomBalancer(Clock(), random.Random(5)), hosts, 30_000)
    for share, expected in zip(got, (1 / 6, 2 / 6, 3 / 6), strict=True):
        assert share == pytest.approx(expected, abs=0.015)


def test_random_offset_falls_in_the_first_host_whose_running_total_exceeds_it() -> None:
    # weights 1, 2, 3: nextInt(6) = 0 -> A, 1..2 -> B, 3..5 -> C (the linear scan of <= 4 hosts).
    hosts = trio(1, 2, 3)
    rng = Scripted([draw(k, 6) for k in range(6)])
    assert letters([RandomBalancer(Clock(), rng).pick(hosts, "m") for _ in range(6)], hosts) == "ABBCCC"
    # More than 4 hosts: Dubbo binary-searches the running totals [1, 1, 3, 3, 6, 7] and steps past
    # equal ones; the zero-weight hosts B and D are never drawn.
    six = tuple(provider(f"10.0.0.{i + 1}:20880", w) for i, w in enumerate((1, 0, 2, 0, 3, 1)))
    rng = Scripted([draw(k, 7) for k in range(7)])
    assert letters([RandomBalancer(Clock(), rng).pick(six, "m") for _ in range(7)], six) == "ACCEEEF"


def test_random_is_uniform_when_the_first_url_declares_no_weight_or_timestamp() -> None:
    # RandomLoadBalance.needWeightLoadBalance looks at the first provider only.
    hosts = (Host("10.0.0.1:20880"), provider("10.0.0.2:20880", 900), provider("10.0.0.3:20880", 900))
    got = shares(RandomBalancer(Clock(), random.Random(6)), hosts, 30_000)
    assert got == pytest.approx([1 / 3] * 3, abs=0.015)


def test_random_is_uniform_when_weights_are_equal_and_skips_zero_weights_otherwise() -> None:
    assert shares(RandomBalancer(Clock(), random.Random(7)), trio(50, 50, 50), 30_000) == pytest.approx(
        [1 / 3] * 3, abs=0.015
    )
    assert shares(RandomBalancer(Clock(), random.Random(7)), trio(0, 100, 100), 3_000)[0] == 0
    # All zero: the total is 0, so the draw is uniform over every host (Dubbo's fallback).
    assert min(shares(RandomBalancer(Clock(), random.Random(7)), trio(0, 0, 0), 3_000)) > 0.25


def test_random_share_of_a_warming_provider_grows_with_its_uptime() -> None:
    clock = Clock()
    fresh = provider("10.0.0.3:20880", timestamp=str(NOW - 60_000))  # 1 of 10 minutes: weight 10
    hosts = (*trio(100, 100), fresh)
    balancer = RandomBalancer(clock, random.Random(8))
    assert shares(balancer, hosts, 10_000)[2] == pytest.approx(10 / 210, abs=0.01)
    clock.now += 240_000  # 5 minutes up: weight 50
    assert shares(balancer, hosts, 10_000)[2] == pytest.approx(50 / 250, abs=0.015)
    clock.now += 600_000
    assert shares(balancer, hosts, 10_000)[2] == pytest.approx(1 / 3, abs=0.015)


# ---------------------------------------------------------------------------------------------------
# RoundRobinLoadBalance


def test_roundrobin_weights_5_1_1_give_the_smooth_sequence() -> None:
    # nginx's smooth weighted round robin, which Dubbo's RoundRobinLoadBalance adopted; current
    # weights before -> after each pick (total 7):
    #   [5,1,1] A -> [-2,1,1]; [3,2,2] A -> [-4,2,2]; [1,3,3] B -> [1,-4,3]; [6,-3,4] A -> [-1,-3,4];
    #   [4,-2,5] C -> [4,-2,-2]; [9,-1,-1] A -> [2,-1,-1]; [7,0,0] A -> [0,0,0]: AABACAA, again.
    hosts = trio(500, 100, 100)
    balancer = RoundRobinBalancer(Clock())
    assert letters([balancer.pick(hosts, "m") for _ in range(14)], hosts) == "AABACAA" * 2


def test_roundrobin_weights_3_2_1_give_dubbos_documented_sequence() -> None:
    # The table on dubbo.apache.org's load-balancing page: A(3) B(2) C(1) -> A B A C B A.
    hosts = trio(3, 2, 1)
    balancer = RoundRobinBalancer(Clock())
    assert letters([balancer.pick(hosts, "m") for _ in range(12)], hosts) == "ABACBA" * 2


def test_roundrobin_state_is_per_method() -> None:
    hosts = trio(500, 100, 100)
    balancer = RoundRobinBalancer(Clock())
    picks = [(balancer.pick(hosts, "find"), balancer.pick(hosts, "list")) for _ in range(7)]
    assert letters([f for f, _ in picks], hosts) == letters([lst for _, lst in picks], hosts) == "AABACAA"


def test_roundrobin_forgets_a_provider_gone_for_more_than_the_recycle_period() -> None:
    def after_return(gone_for: int) -> str:
        clock = Clock()
        hosts = trio(100, 100, 100)
        balancer = RoundRobinBalancer(clock)
        # [100,100,100] A -> [-200,100,100]; [-100,200,200] B -> [-100,-100,200]
        assert letters([balancer.pick(hosts, "m") for _ in range(2)], hosts) == "AB"
        clock.now += gone_for
        balancer.pick(hosts[:2], "m")  # C missing: entries idle > 60 s are dropped; A -> -200
        clock.now += 1
        return letters([balancer.pick(hosts, "m")], hosts)

    # Within RECYCLE_PERIOD C keeps its current weight (200 + 100 beats A's -100 and B's 100);
    # beyond it, it starts again from 0 (0 + 100 ties B's 100, and the first wins).
    assert after_return(60_000) == "C"
    assert after_return(60_001) == "B"


def test_roundrobin_restarts_a_host_whose_weight_changed() -> None:
    # WeightedRoundRobin.setWeight resets the current weight to 0.
    clock = Clock()
    warming = provider("10.0.0.2:20880", timestamp=str(NOW - 300_000))  # weight 50 now
    hosts = (provider("10.0.0.1:20880"), warming)
    balancer = RoundRobinBalancer(clock)
    # [100,50] A -> [-50,50]; [50,100] B -> [50,-50]
    assert letters([balancer.pick(hosts, "m") for _ in range(2)], hosts) == "AB"
    clock.now += 6_000  # B's weight becomes 51 and its current weight restarts at 0:
    # [150,51] A -> [-1,51]; [99,102] B.  (Kept at -50 it would be [150,1] A, [99,52] A.)
    assert letters([balancer.pick(hosts, "m") for _ in range(2)], hosts) == "AB"


# ---------------------------------------------------------------------------------------------------
# LeastActiveLoadBalance


def test_leastactive_picks_the_idle_provider() -> None:
    hosts = trio(100, 100, 100)
    active = {"10.0.0.1:20880": 3, "10.0.0.2:20880": 0, "10.0.0.3:20880": 2}
    balancer = LeastActiveBalancer(lambda a, m: active[a], Clock(), random.Random(1))
    assert {balancer.pick(hosts, "m") for _ in range(200)} == {hosts[1]}


def test_leastactive_draws_by_weight_among_the_least_active() -> None:
    hosts = trio(100, 300, 100)
    active = {"10.0.0.1:20880": 0, "10.0.0.2:20880": 0, "10.0.0.3:20880": 5}
    balancer = LeastActiveBalancer(lambda a, m: active[a], Clock(), random.Random(2))
    assert shares(balancer, hosts, 20_000) == pytest.approx([0.25, 0.75, 0.0], abs=0.015)


def test_leastactive_counts_are_per_method() -> None:
    hosts = trio(100, 100)
    busy = {("10.0.0.1:20880", "find"): 4, ("10.0.0.2:20880", "list"): 4}
    balancer = LeastActiveBalancer(lambda a, m: busy.get((a, m), 0), Clock(), random.Random(3))
    assert balancer.pick(hosts, "find") == hosts[1]
    assert balancer.pick(hosts, "list") == hosts[0]


# ---------------------------------------------------------------------------------------------------
# ShortestResponseLoadBalance


def test_shortestresponse_prefers_the_fastest_estimate() -> None:
    hosts = trio(100, 100)
    stats = {
        "10.0.0.1:20880": RpcStats(active=0, succeeded=10, succeeded_elapsed_ms=500),  # 50 ms * 1
        "10.0.0.2:20880": RpcStats(active=0, succeeded=10, succeeded_elapsed_ms=100),  # 10 ms * 1
    }
    balancer = ShortestResponseBalancer(lambda a, m: stats[a], Clock(), random.Random(1))
    assert balancer.pick(hosts, "m") == hosts[1]
    stats["10.0.0.2:20880"] = RpcStats(active=9, succeeded=10, succeeded_elapsed_ms=100)  # 10 ms * 10
    assert balancer.pick(hosts, "m") == hosts[0]


def test_shortestresponse_window_slides_after_the_period() -> None:
    clock = Clock()
    hosts = trio(100, 100)
    a, b = "10.0.0.1:20880", "10.0.0.2:20880"
    stats = {a: RpcStats(0, 10, 10_000), b: RpcStats(0, 10, 100)}  # A slow (1 s), B fast (10 ms)
    balancer = ShortestResponseBalancer(lambda addr, m: stats[addr], clock, random.Random(1))
    assert balancer.pick(hosts, "m") == hosts[1]
    clock.now += 30_001
    # This pick is past the 30 s period: it still sees the old window, then moves every window on.
    assert balancer.pick(hosts, "m") == hosts[1]
    stats = {a: RpcStats(0, 20, 10_050), b: RpcStats(0, 20, 200)}  # since: A 5 ms, B 10 ms a call
    assert balancer.pick(hosts, "m") == hosts[0]


def test_shortestresponse_ties_fall_back_to_a_weighted_draw() -> None:
    hosts = trio(100, 300)
    balancer = ShortestResponseBalancer(lambda a, m: RpcStats(0, 0, 0), Clock(), random.Random(4))
    assert shares(balancer, hosts, 20_000) == pytest.approx([0.25, 0.75], abs=0.015)


# ---------------------------------------------------------------------------------------------------
# ConsistentHashLoadBalance


def reference_selector(addresses: Sequence[str], nodes: int = 160) -> Callable[[str], str]:
    """ConsistentHashLoadBalance.ConsistentHashSelector written out plainly, independently of the
    module: a TreeMap of hash(md5(address + i), h) -> address; a key goes to the ceiling entry of
    hash(md5(key), 0), or else to the first."""

    def md5(text: str) -> bytes:
        return hashlib.md5(text.encode("utf-8")).digest()

    def dubbo_hash(digest: bytes, number: int) -> int:
        return (
            (digest[3 + number * 4] & 0xFF) << 24
            | (digest[2 + number * 4] & 0xFF) << 16
            | (digest[1 + number * 4] & 0xFF) << 8
            | (digest[number * 4] & 0xFF)
        ) & 0xFFFFFFFF

    tree: dict[int, str] = {}
    for address in addresses:
        for i in range(nodes // 4):
            digest = md5(address + str(i))
            for h in range(4):
                tree[dubbo_hash(digest, h)] = address
    positions = sorted(tree)

    def select(key: str) -> str:
        at = bisect.bisect_left(positions, dubbo_hash(md5(key), 0))
        return tree[positions[at % len(positions)]]

    return select


def reference_pick(addresses: Sequence[str], key: str, nodes: int = 160) -> str:
    return reference_selector(addresses, nodes)(key)


THREE = ("10.0.0.1:20880", "10.0.0.2:20880", "10.0.0.3:20880")
FOUR = ("192.168.1.10:20880", "192.168.1.11:20880", "192.168.1.12:20880", "192.168.1.13:20880")
MIXED = ("[::1]:20880", "127.0.0.1:20881")

# (providers in order, hash.nodes, key) -> the provider Java Dubbo picks.  Every row was printed by
# the Java 17 program (MessageDigest over the UTF-8 bytes, TreeMap.ceilingEntry) and is recomputed
# by reference_pick.  Two rows checked by hand:
#
# * "a" on THREE: MD5("a") = 0c c1 75 b9 c0 f1 ... so hash(digest, 0) = 0xb975c10c = 3111502092.
#   The ring's next position is 3117125183 = 0xb9cb8e3f, word 1 of MD5("10.0.0.2:2088020") =
#   be 06 81 97 | 3f 8e cb b9 | ...; the one before it is 3108446032, of 10.0.0.1 (i = 38, h = 3).
#   So 10.0.0.2.
# * "hello" on THREE: MD5("hello") = 5d 41 40 2a bc ... so 0x2a40415d = 708854109.  Next position:
#   711049366 = 0x2a61c096, word 2 of MD5("10.0.0.2:2088032") = 8c 26 60 33 | e1 4c 88 15 |
#   96 c0 61 2a | ...; the one before is 692856128, of 10.0.0.3 (i = 19, h = 1).  So 10.0.0.2.
CONSISTENT_HASH_TABLE: list[tuple[tuple[str, ...], int, str, str]] = [
    (THREE, 160, "a", "10.0.0.2:20880"),
    (THREE, 160, "b", "10.0.0.2:20880"),
    (THREE, 160, "hello", "10.0.0.2:20880"),
    (THREE, 160, "12345", "10.0.0.1:20880"),
    (THREE, 160, "", "10.0.0.1:20880"),
    (THREE, 160, "null", "10.0.0.2:20880"),
    (THREE, 160, "true", "10.0.0.1:20880"),
    (THREE, 160, "user42", "10.0.0.2:20880"),
    (THREE, 160, "héllo", "10.0.0.3:20880"),
    (THREE, 160, "中文", "10.0.0.2:20880"),
    (THREE, 160, "order-1001", "10.0.0.2:20880"),
    (THREE, 320, "b", "10.0.0.3:20880"),
    (THREE, 320, "", "10.0.0.3:20880"),
    (THREE, 320, "user42", "10.0.0.1:20880"),
    (THREE[::2], 160, "a", "10.0.0.1:20880"),  # 10.0.0.2 gone: its keys move, the others stay
    (THREE[::2], 160, "hello", "10.0.0.3:20880"),
    (THREE[::2], 160, "12345", "10.0.0.1:20880"),
    (THREE[::2], 160, "héllo", "10.0.0.3:20880"),
    (FOUR, 160, "a", "192.168.1.12:20880"),
    (FOUR, 160, "b", "192.168.1.10:20880"),
    (FOUR, 160, "null", "192.168.1.11:20880"),
    (FOUR, 160, "héllo", "192.168.1.13:20880"),
    (FOUR, 320, "true", "192.168.1.13:20880"),
    (FOUR, 320, "中文", "192.168.1.10:20880"),
    (MIXED, 160, "a", "[::1]:20880"),
    (MIXED, 160, "hello", "127.0.0.1:20881"),
    (MIXED, 320, "hello", "[::1]:20880"),
    (MIXED, 320, "null", "127.0.0.1:20881"),
]


@pytest.mark.parametrize(("addresses", "nodes", "key", "expected"), CONSISTENT_HASH_TABLE)
def test_consistenthash_picks_what_java_dubbo_picks(
    addresses: tuple[str, ...], nodes: int, key: str, expected: str
) -> None:
    assert reference_pick(addresses, key, nodes) == expected
    hosts = tuple(provider(a, **{"hash.nodes": str(nodes)}) for a in addresses)
    picked = ConsistentHashBalancer().pick(hosts, "find", [key])
    assert picked is not None and picked.address == expected


def test_consistenthash_a_shared_ring_position_belongs_to_the_later_provider() -> None:
    # Word 2 of MD5("10.0.145.1:2088022") and word 0 of MD5("10.0.206.1:208807") are both
    # 1668592229 (found by search), and "key-22" (1660557295) has that position as its ceiling.
    # TreeMap.put keeps the provider put last, so the list order decides (confirmed with Java 17).
    first, second = "10.0.145.1:20880", "10.0.206.1:20880"
    assert reference_pick((first, second), "key-22") == second
    assert reference_pick((second, first), "key-22") == first
    for order in ((first, second), (second, first)):
        picked = ConsistentHashBalancer().pick(tuple(provider(a) for a in order), "find", ["key-22"])
        assert picked is not None and picked.address == order[1]


def test_consistenthash_order_of_providers_does_not_matter_without_collisions() -> None:
    hosts = tuple(provider(a) for a in reversed(THREE))
    picked = ConsistentHashBalancer().pick(hosts, "find", ["hello"])
    assert picked is not None and picked.address == "10.0.0.2:20880"


def test_consistenthash_keys_are_javas_tostring_of_the_chosen_arguments() -> None:
    # Twenty providers, so that a wrong key lands on the expected provider only by a rare chance.
    many = tuple(f"10.1.0.{i}:20880" for i in range(1, 21))
    hosts = tuple(provider(a, **{"hash.arguments": "0,1"}) for a in many)
    balancer = ConsistentHashBalancer()

    def provider_for(*arguments: object) -> str:
        picked = balancer.pick(hosts, "find", list(arguments))
        assert picked is not None
        return picked.address

    assert provider_for("user", 42) == reference_pick(many, "user42")
    assert provider_for("user", Long(42)) == reference_pick(many, "user42")
    assert provider_for(True, None) == reference_pick(many, "truenull")
    assert provider_for(False, -3, "x") == reference_pick(many, "false-3")  # argument 2 not chosen
    assert provider_for("only") == reference_pick(many, "only")  # index 1 beyond the arguments
    assert provider_for() == reference_pick(many, "")
    assert provider_for(123, 45) == provider_for("12", "345")  # the concatenation is all that counts


def test_consistenthash_reads_method_level_hash_parameters() -> None:
    hosts = tuple(
        provider(a, **{"find.hash.arguments": "1", "find.hash.nodes": "320", "hash.arguments": "0"})
        for a in THREE
    )
    balancer = ConsistentHashBalancer()
    found = balancer.pick(hosts, "find", ["ignored", "user42"])
    listed = balancer.pick(hosts, "list", ["user42", "ignored"])
    assert found is not None and found.address == reference_pick(THREE, "user42", 320) == "10.0.0.1:20880"
    assert listed is not None and listed.address == reference_pick(THREE, "user42", 160) == "10.0.0.2:20880"


def test_consistenthash_sends_each_of_many_keys_always_to_one_provider() -> None:
    hosts = tuple(provider(a) for a in THREE)
    balancer = ConsistentHashBalancer()
    first = {k: balancer.pick(hosts, "find", [f"key-{k}"]) for k in range(1000)}
    rebuilt = tuple(provider(a) for a in THREE)  # a new list of the same providers: the same ring
    for k in range(1000):
        assert balancer.pick(hosts, "find", [f"key-{k}"]) is first[k]
        assert balancer.pick(rebuilt, "find", [f"key-{k}"]) == first[k]
    assert len(set(first.values())) == 3
    reference = reference_selector(THREE)
    assert [h.address for h in first.values() if h] == [reference(f"key-{k}") for k in range(1000)]


def test_consistenthash_removing_a_provider_moves_only_its_keys() -> None:
    hosts = tuple(provider(a) for a in THREE)
    balancer = ConsistentHashBalancer()
    before = {k: balancer.pick(hosts, "find", [k]) for k in map(str, range(500))}
    after = {k: balancer.pick(hosts[::2], "find", [k]) for k in before}
    for k, host in before.items():
        if host is not hosts[1]:
            assert after[k] is host


def test_consistenthash_hashes_strings_as_javas_utf8_bytes() -> None:
    hosts = tuple(provider(a) for a in THREE)
    balancer = ConsistentHashBalancer()
    # A lone surrogate (a Java String may hold one) encodes as "?"; a pair as the character.
    assert balancer.pick(hosts, "find", ["a\ud800b"]) == balancer.pick(hosts, "find", ["a?b"])
    assert balancer.pick(hosts, "find", ["\ud83d\ude00"]) == balancer.pick(hosts, "find", ["\U0001f600"])


def test_java_string_of_supported_and_unsupported_values() -> None:
    assert [java_string(v) for v in ("x", "", None, True, False, 42, -7, Long(2**40), 2**70)] == [
        "x",
        "",
        "null",
        "true",
        "false",
        "42",
        "-7",
        "1099511627776",
        "1180591620717411303424",
    ]
    for value in (1.5, b"\x01", [1], {"a": 1}, JavaObject("com.example.Color", {"name": "RED"})):
        with pytest.raises(UnsupportedHashArgument):
            java_string(value)


def test_consistenthash_refuses_what_it_cannot_hash_like_java() -> None:
    hosts = tuple(provider(a) for a in THREE)
    balancer = ConsistentHashBalancer()
    with pytest.raises(UnsupportedHashArgument):
        balancer.pick(hosts, "find", [2.5])
    assert balancer.pick(hosts, "find", ["k", 2.5]) is not None  # only argument 0 is hashed
    with pytest.raises(ValueError, match="arguments"):
        balancer.pick(hosts, "find", None)


def test_consistenthash_caps_the_virtual_nodes_a_provider_asks_for() -> None:
    hosts = tuple(provider(a, **{"hash.nodes": str(2**31 - 1)}) for a in THREE)
    picked = ConsistentHashBalancer().pick(hosts, "find", ["a"])  # at once, not 2**31 digests later
    assert picked is not None and picked.address == reference_pick(THREE, "a", MAX_HASH_NODES)


def test_consistenthash_with_too_few_nodes_has_no_ring() -> None:
    # hash.nodes / 4 == 0 digests: Dubbo's selectForKey fails on the empty TreeMap.
    hosts = tuple(provider(a, **{"hash.nodes": "3"}) for a in THREE)
    assert ConsistentHashBalancer().pick(hosts, "find", ["a"]) is None


# ---------------------------------------------------------------------------------------------------
# The cluster invoker's selection (AbstractClusterInvoker.doSelect / reselect)


def test_retries_go_to_providers_not_tried_yet() -> None:
    hosts = trio(100, 100, 100)
    balancer = RandomBalancer(Clock(), random.Random(9))
    for _ in range(50):
        tried: list[str] = []
        for _ in range(3):
            picked = balancer.pick(hosts, "m", exclude=tried)
            assert picked is not None
            tried.append(picked.address)
        assert sorted(tried) == sorted(h.address for h in hosts)


def test_reselect_balances_over_the_untried_hosts() -> None:
    hosts = trio(100, 100, 100)
    balancer = RoundRobinBalancer(Clock())
    # Round robin's own choice is A (excluded); reselect runs round robin over [B, C]: B.
    assert letters([balancer.pick(hosts, "m", exclude=[hosts[0].address])], hosts) == "B"


def test_a_lone_host_is_taken_whatever_its_state() -> None:
    lone = (Host("10.0.0.1:20880", healthy=False),)
    assert RandomBalancer(Clock()).pick(lone, "m", exclude=[lone[0].address]) is lone[0]
    assert RandomBalancer(Clock()).pick((), "m") is None


def test_an_unhealthy_choice_is_replaced_by_a_healthy_host() -> None:
    hosts = (Host("10.0.0.1:20880", healthy=False), *trio(100, 100, 100)[1:])
    balancer = RoundRobinBalancer(Clock())
    assert {balancer.pick(hosts, "m") for _ in range(20)} <= set(hosts[1:])


def test_when_every_host_was_tried_one_of_them_is_tried_again() -> None:
    hosts = trio(100, 100, 100)
    balancer = RoundRobinBalancer(Clock())
    # Round robin's choice A ([-200,100,100] after it) was tried, and so was everything else:
    # reselect balances over the tried ones in the order tried, [C, B, A]: [200, 200, -100] -> C.
    picked = balancer.pick(hosts, "m", exclude=[h.address for h in reversed(hosts)])
    assert letters([picked], hosts) == "C"


def test_when_nothing_is_healthy_the_host_after_the_choice_is_taken() -> None:
    hosts = tuple(Host(f"10.0.0.{i}:20880", healthy=False) for i in (1, 2, 3))
    balancer = RoundRobinBalancer(Clock())
    # Round robin chooses A; reselect finds no healthy host; doSelect takes the one after A.
    assert letters([balancer.pick(hosts, "m")], hosts) == "B"


def test_a_reselect_count_below_the_host_count_samples_hosts() -> None:
    hosts = trio(100, 100, 100)
    # dubbo.reselect.count=0: no host is sampled, so reselect goes straight to the tried ones.
    balancer = RoundRobinBalancer(Clock(), reselect_count=0)
    assert letters([balancer.pick(hosts, "m", exclude=[hosts[0].address])], hosts) == "A"


# ---------------------------------------------------------------------------------------------------
# By name


def test_balancers_by_dubbo_name() -> None:
    def idle(address: str, method: str) -> int:
        return 0

    def quiet(address: str, method: str) -> RpcStats:
        return RpcStats(0, 0, 0)

    made: dict[str, type[DubboBalancer]] = {
        name: type(make_dubbo_balancer(name, clock=Clock(), active=idle, stats=quiet))
        for name in DUBBO_BALANCERS
    }
    assert made == {
        "random": RandomBalancer,
        "roundrobin": RoundRobinBalancer,
        "leastactive": LeastActiveBalancer,
        "shortestresponse": ShortestResponseBalancer,
        "consistenthash": ConsistentHashBalancer,
    }
    balancer: DubboBalancer = make_dubbo_balancer("consistenthash", clock=Clock())
    assert balancer.needs_arguments and not make_dubbo_balancer("random", clock=Clock()).needs_arguments


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("adaptive", "random, roundrobin, leastactive, shortestresponse, consistenthash"),
        ("RoundRobin", "unknown Dubbo load balancer 'RoundRobin'"),
        ("leastactive", "needs the calls in flight"),
        ("shortestresponse", "needs the call statistics"),
    ],
)
def test_unknown_names_and_missing_inputs_are_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_dubbo_balancer(name, clock=Clock())


def test_every_balancer_picks_through_the_cluster_invokers_selection() -> None:
    factories: list[Callable[[], DubboBalancer]] = [
        lambda: RandomBalancer(Clock()),
        lambda: RoundRobinBalancer(Clock()),
        lambda: LeastActiveBalancer(lambda a, m: 0, Clock()),
        lambda: ShortestResponseBalancer(lambda a, m: RpcStats(0, 0, 0), Clock()),
        ConsistentHashBalancer,
    ]
    hosts = trio(100, 100, 100)
    for factory in factories:
        assert factory().pick(hosts, "m", ["k"]) in hosts
