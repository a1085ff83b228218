"""Dubbo 3.3's load balancers, so that regproxy picks the provider a Java Dubbo consumer would pick.

Read from apache/dubbo 3.3, ``dubbo-cluster`` (package ``org.apache.dubbo.rpc.cluster.loadbalance``
unless named otherwise):

* ``AbstractLoadBalance``: ``select`` (no host: none; one host: that one, whatever its state) and
  ``getWeight`` (the ``weight`` parameter, method-level first, scaled down during ``warmup`` after
  the provider's ``timestamp``): :func:`dubbo_weight`, :func:`warmup_weight`;
* ``RandomLoadBalance`` (Dubbo's default): :class:`RandomBalancer`;
* ``RoundRobinLoadBalance`` (nginx's smooth weighted round robin): :class:`RoundRobinBalancer`;
* ``LeastActiveLoadBalance``: :class:`LeastActiveBalancer`;
* ``ShortestResponseLoadBalance``: :class:`ShortestResponseBalancer`;
* ``ConsistentHashLoadBalance`` (an MD5 ring): :class:`ConsistentHashBalancer`;
* ``support.AbstractClusterInvoker.doSelect`` / ``reselect``, which wrap every balancer in Dubbo's
  cluster invokers and give a retry its meaning of "another provider": :meth:`DubboBalancer.pick`.

Pure: no I/O; time comes from the ``clock`` each balancer is given (wall-clock milliseconds, the
scale of a provider URL's ``timestamp``), randomness from the ``random.Random`` it is given, in-flight
and response-time counts from the callables it is given.  Not thread-safe (the proxy runs on one
asyncio loop).

What a host tells a balancer (``routing.model.Host``):

* ``metadata`` stands for the invoker URL's parameters: the provider URL's, after whatever the
  parameter model layers over them (configurators, the consumer's own parameters), looked up as
  ``URLParam.getMethodParameter`` does (:func:`method_parameter`).
* ``weight`` is the value of the service-level ``weight`` when the metadata has no usable one (for
  a registry host it is that parameter already, parsed by ``registry.url.DubboURL.weight``).
* ``healthy`` is Dubbo's ``Invoker.isAvailable()``: only :meth:`DubboBalancer.pick` reads it, as
  only the cluster invoker does.  A host's weight never takes it out of the choice: Dubbo has no such
  rule, a weight of 0 only makes a weighted choice pass it by.
* ``address`` (``host:port``, the provider URL's ``URL.getAddress()``) keys per-provider state and is
  what the consistent-hash ring hashes.

A host sequence is recognised by identity between picks (its parsed weight parameters and its
consistent-hash ring are kept for it), so it must not be changed in place: the routing table's
tuples never are.  One balancer instance stands for Dubbo's ``LoadBalance`` extension for one
service: Dubbo keys the round-robin and consistent-hash state by ``serviceKey + "." + method``; here
it is per instance and method.

Where regproxy departs from Dubbo on purpose (everything else is meant to be exact):

* A parameter Java would fail to parse (``weight=abc``: ``Integer.parseInt`` throws and every call
  of the service fails) counts as absent and its default applies (for ``weight``, ``Host.weight``);
  numbers beyond a Java int or long are clamped.  Sums of weights are not wrapped at 2**31 as
  Java's ``int`` would.
* ``hash.nodes`` above :data:`MAX_HASH_NODES` counts as that many.
* State is bounded: at most :data:`MAX_METHODS` methods of round-robin state, the consistent-hash
  rings of the last few provider lists, and shortest-response windows only for providers seen in the
  last window (see :class:`ShortestResponseBalancer`).  Dubbo keeps all of these forever.
* Dubbo 3.3 consumers that discover providers through ZooKeeper at interface level never see a
  provider's ``timestamp`` (``CacheableFailbackRegistry.stripOffVariableKeys`` removes it;
  apache/dubbo#16033, merged in 2026, restores it), so neither warm-up nor ``RandomLoadBalance``'s
  "weights declared" test sees it there.  The balancers read ``timestamp`` when the metadata has
  it; whether it does is the parameter model's choice, not theirs.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import random as _random
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Mapping, Sequence
from typing import ClassVar, NamedTuple

from .model import Host

__all__ = [
    "DEFAULT_BALANCER",
    "DUBBO_BALANCERS",
    "MAX_HASH_NODES",
    "MAX_METHODS",
    "Arguments",
    "Clock",
    "ConsistentHashBalancer",
    "DubboBalancer",
    "LeastActiveBalancer",
    "MethodBalancer",
    "RandomBalancer",
    "RoundRobinBalancer",
    "RpcStats",
    "ShortestResponseBalancer",
    "UnsupportedHashArgument",
    "WeightSpec",
    "balancer_name",
    "dubbo_weight",
    "java_string",
    "make_dubbo_balancer",
    "method_parameter",
    "real_invocation",
    "service_parameter",
    "warmup_weight",
    "weight_at",
    "weight_spec",
    "weights_declared",
]

# Dubbo's constants (CommonConstants, rpc.cluster.Constants and the balancers' own).
DEFAULT_WEIGHT = 100  # CommonConstants.DEFAULT_WEIGHT
DEFAULT_WARMUP_MS = 10 * 60 * 1000  # Constants.DEFAULT_WARMUP
RECYCLE_PERIOD_MS = 60_000  # RoundRobinLoadBalance.RECYCLE_PERIOD
DEFAULT_SLIDE_PERIOD_MS = 30_000  # ShortestResponseLoadBalance.slidePeriod ("shortestResponseSlidePeriod")
DEFAULT_HASH_NODES = 160  # ConsistentHashLoadBalance: url.getMethodParameter(method, HASH_NODES, 160)
DEFAULT_HASH_ARGUMENTS = "0"
# Virtual nodes per provider at most: a provider URL (any registry writer) could ask for 2**31 and
# stall the event loop building the ring; real configurations use 160 or a few hundred.
MAX_HASH_NODES = 4096
DEFAULT_RESELECT_COUNT = 10  # CommonConstants.DEFAULT_RESELECT_COUNT ("dubbo.reselect.count")
DEFAULT_BALANCER = "random"  # LoadBalance is @SPI(RandomLoadBalance.NAME): DEFAULT_LOADBALANCE

DUBBO_BALANCERS = ("random", "roundrobin", "leastactive", "shortestresponse", "consistenthash")

# Per-method state is created by whatever method names requests carry; beyond this many methods the
# one used least recently is forgotten (it starts over as Dubbo's would on first use).
MAX_METHODS = 1024
# Consistent-hash rings kept: the current provider list's, and the sublists a reselect balances over.
_MAX_RINGS = 8

_INT_MAX = 2**31 - 1
_INT_MIN = -(2**31)
_LONG_MAX = 2**63 - 1
_LONG_MIN = -(2**63)
_JAVA_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)  # what Integer.parseInt / Long.parseLong accept
_COMMA_SPLIT = re.compile(r"\s*[,]+\s*")  # CommonConstants.COMMA_SPLIT_PATTERN
_F32 = struct.Struct("<f")
_DIGEST_WORDS = struct.Struct("<4I")

Clock = Callable[[], int]
"""Wall-clock time in milliseconds (``System.currentTimeMillis()``)."""
Arguments = Sequence[object] | None
"""A call's arguments as decoded (None: not decoded)."""


# ---------------------------------------------------------------------------------------------------
# Parameters


def service_parameter(params: Mapping[str, str], key: str) -> str:
    """``URL.getParameter(key)`` ("" when unset): ``key``, else the 2.6-era ``default.<key>`` that
    ``URLParam.parse`` copies to ``key`` when ``key`` itself is absent."""
    value = params.get(key)
    if value is None:
        return params.get("default." + key, "")
    return value


def method_parameter(params: Mapping[str, str], method: str, key: str) -> str:
    """``URLParam.getMethodParameter(method, key)`` ("" when unset): ``<method>.<key>`` when set and
    not empty, else :func:`service_parameter`.

    As ``URLParam.getMethodParameterStrict`` has it, when the URL lists its ``methods`` the
    method-level value is only read for a method that list contains as a substring; so a provider
    published with ``methods=*`` has no method-level parameters.
    """
    methods = service_parameter(params, "methods")
    if not methods or method in methods:
        value = params.get(f"{method}.{key}")
        if value:
            return value
    return service_parameter(params, key)


def balancer_name(params: Mapping[str, str], method: str) -> str:
    """The balancer Dubbo uses for ``method``: ``loadbalance`` read from the first provider's URL
    (``AbstractClusterInvoker.initLoadBalance``), ``random`` when unset."""
    return method_parameter(params, method, "loadbalance") or DEFAULT_BALANCER


def _java_int(text: str, low: int = _INT_MIN, high: int = _INT_MAX) -> int | None:
    """``Integer.parseInt`` (``Long.parseLong`` with a long's bounds): an optional sign and ASCII
    digits, nothing around them; None where Java throws, except that a number out of range is
    clamped."""
    if not _JAVA_INTEGER.fullmatch(text):
        return None
    if len(text.lstrip("+-").lstrip("0")) > 19:  # beyond any long (and int() refuses ~4300 digits)
        return low if text[0] == "-" else high
    return min(max(int(text), low), high)


def real_invocation(method: str, arguments: Arguments) -> tuple[str, Arguments]:
    """The method and arguments a balancer sees: for a generic call (``$invoke`` / ``$invokeAsync``
    with the real method name, its parameter types and its arguments) the real ones, as
    ``RpcUtils.getMethodName`` and ``RpcUtils.getArguments`` give them."""
    if method in ("$invoke", "$invokeAsync") and arguments:
        real = arguments[0]
        if isinstance(real, str):
            method = real
        if len(arguments) > 2 and isinstance(arguments[2], list | tuple):
            return method, arguments[2]
    return method, arguments


# ---------------------------------------------------------------------------------------------------
# Weight (AbstractLoadBalance)


def _f32(x: float) -> float:
    # Round to the nearest Java float.  A quotient of two floats computed in double and then rounded
    # to float is the correctly rounded float quotient (53 >= 2 * 24 + 2 bits), as Java computes it.
    return float(_F32.unpack(_F32.pack(x))[0])


def warmup_weight(uptime_ms: int, warmup_ms: int, weight: int) -> int:
    """``AbstractLoadBalance.calculateWarmupWeight``: ``(int) (uptime / ((float) warmup / weight))``
    in Java's float arithmetic, then kept within 1..weight.  (Dubbo 2.7 used a quadratic ramp; 3.x
    is linear.)"""
    step = _f32(_f32(float(warmup_ms)) / _f32(float(weight)))
    quotient = _f32(_f32(float(uptime_ms)) / step)
    # (int) of a float: truncation toward zero, saturating; NaN is 0.
    if quotient != quotient:
        ww = 0
    elif quotient >= _INT_MAX:
        ww = _INT_MAX
    elif quotient <= _INT_MIN:
        ww = _INT_MIN
    else:
        ww = int(quotient)
    return 1 if ww < 1 else min(ww, weight)


class WeightSpec(NamedTuple):
    """What ``AbstractLoadBalance.getWeight`` reads of one host's URL for one method."""

    weight: int  # <method>.weight, else weight (Host.weight when the metadata has no usable value)
    timestamp: int  # the provider's start, ms since the epoch; 0: unknown (no warm-up)
    warmup: int  # ms


def weight_spec(host: Host, method: str) -> WeightSpec:
    """The parameters :func:`weight_at` needs, read as ``AbstractLoadBalance.getWeight`` reads them:
    ``URL.getMethodParameter(method, "weight", 100)``, ``URL.getParameter("timestamp", 0L)`` and
    ``URL.getParameter("warmup", DEFAULT_WARMUP)`` (service-level only)."""
    params = host.metadata
    text = method_parameter(params, method, "weight")
    parsed = _java_int(text) if text else None
    stamp = service_parameter(params, "timestamp")
    timestamp = _java_int(stamp, _LONG_MIN, _LONG_MAX) if stamp else None
    warmup_text = service_parameter(params, "warmup")
    warmup = _java_int(warmup_text) if warmup_text else None
    return WeightSpec(
        host.weight if parsed is None else parsed,
        timestamp or 0,
        DEFAULT_WARMUP_MS if warmup is None else warmup,
    )


def weight_at(spec: WeightSpec, now_ms: int) -> int:
    """``AbstractLoadBalance.getWeight`` at ``now_ms``: a positive weight of a provider that started
    (``timestamp``) less than ``warmup`` ms ago is scaled by :func:`warmup_weight`; one whose start
    is in the future (clocks apart) weighs 1; an uptime of exactly 0 leaves the weight whole (Dubbo
    tests ``uptime > 0``).  Never below 0."""
    weight = spec.weight
    if weight > 0 and spec.timestamp > 0:
        uptime = now_ms - spec.timestamp
        if uptime < 0:
            return 1
        if 0 < uptime < spec.warmup:
            return warmup_weight(uptime, spec.warmup, weight)
    return max(weight, 0)


def dubbo_weight(host: Host, method: str, now_ms: int) -> int:
    """``AbstractLoadBalance.getWeight``: ``host``'s weight for ``method`` at ``now_ms``."""
    return weight_at(weight_spec(host, method), now_ms)


def weights_declared(host: Host, method: str) -> bool:
    """``RandomLoadBalance.needWeightLoadBalance``, asked of the first host only: its URL has a
    ``weight`` (method- or service-level) or a ``timestamp``."""
    params = host.metadata
    return bool(method_parameter(params, method, "weight") or service_parameter(params, "timestamp"))


class _Specs(NamedTuple):
    hosts: Sequence[Host]  # held so that identity tells the same list again
    specs: tuple[WeightSpec, ...]
    declared: bool  # weights_declared(hosts[0])
    # From this time on (ms) no host warms up any more and every weight is its steady one: the
    # weights and RandomLoadBalance's running totals are worked out once, not at every pick.
    steady_from: int
    steady: tuple[int, ...]
    running: tuple[int, ...]  # the steady weights' running totals
    same: bool  # every steady weight is the same


def _specs_of(hosts: Sequence[Host], method: str) -> _Specs:
    specs = tuple(weight_spec(h, method) for h in hosts)
    steady_from = 0
    for spec in specs:
        if spec.weight > 0 and spec.timestamp > 0:
            steady_from = max(steady_from, spec.timestamp + spec.warmup)
    steady = tuple(max(spec.weight, 0) for spec in specs)
    running: list[int] = []
    total = 0
    same = True
    for i, weight in enumerate(steady):
        total += weight
        running.append(total)
        if same and total != weight * (i + 1):
            same = False
    return _Specs(hosts, specs, weights_declared(hosts[0], method), steady_from, steady, tuple(running), same)


# ---------------------------------------------------------------------------------------------------
# The balancers


class DubboBalancer(ABC):
    """What every Dubbo balancer shares: ``AbstractLoadBalance.select`` and the cluster invoker's
    ``doSelect`` / ``reselect`` around it.  A subclass supplies ``_do_select`` (the balancer's own
    ``doSelect``, given two or more hosts)."""

    name: ClassVar[str]
    needs_arguments: ClassVar[bool] = False

    __slots__ = ("_reselect_count", "_rng")

    def __init__(
        self, rng: _random.Random | None = None, reselect_count: int = DEFAULT_RESELECT_COUNT
    ) -> None:
        self._rng = rng if rng is not None else _random.Random()
        self._reselect_count = reselect_count

    def _below(self, n: int) -> int:
        """``ThreadLocalRandom.nextInt(n)``: uniform in [0, n)."""
        return int(self._rng.random() * n)

    def select(self, hosts: Sequence[Host], method: str, arguments: Arguments = None) -> Host | None:
        """``AbstractLoadBalance.select``: the balancer alone, over ``hosts`` as given."""
        if not hosts:
            return None
        if len(hosts) == 1:
            return hosts[0]
        return self._do_select(hosts, method, arguments)

    @abstractmethod
    def _do_select(self, hosts: Sequence[Host], method: str, arguments: Arguments) -> Host | None:
        """The balancer's ``doSelect`` over two or more hosts."""

    def pick(
        self,
        hosts: Sequence[Host],
        method: str,
        arguments: Arguments = None,
        exclude: Sequence[str] = (),
    ) -> Host | None:
        """``AbstractClusterInvoker.doSelect`` (with ``cluster.availablecheck`` on, its default).

        The balancer chooses among all ``hosts``; when its choice was tried already (in
        ``exclude``) or is unhealthy, ``reselect`` balances again over the healthy hosts not tried,
        failing that over the healthy ones tried (in the order tried), failing that the host after
        the first choice is taken.  So a lone host is taken whatever its state, and a host may be
        revisited when nothing else is left.

        With more hosts than ``reselect_count`` (10), ``reselect`` draws that many at random
        instead of taking them all, and Dubbo's de-duplication test there (``!selected.contains ||
        !reselectInvokers.contains``) lets a tried host in once and an untried one in as often as it
        is drawn; that is kept, so a retry can come back to a host among many, as in Dubbo.
        """
        n = len(hosts)
        if n == 0:
            return None
        if n == 1:
            return hosts[0]
        chosen = self.select(hosts, method, arguments)
        if chosen is None:
            return None
        if chosen.address in exclude or not chosen.healthy:
            again = self._reselect(hosts, method, arguments, exclude)
            if again is not None:
                return again
            index = next(i for i, h in enumerate(hosts) if h is chosen)
            return hosts[(index + 1) % n]
        return chosen

    def _reselect(
        self, hosts: Sequence[Host], method: str, arguments: Arguments, exclude: Sequence[str]
    ) -> Host | None:
        """``AbstractClusterInvoker.reselect`` (steps 1-5 of its comments)."""
        candidates: list[Host] = []
        if self._reselect_count >= len(hosts):
            candidates = [h for h in hosts if h.healthy and h.address not in exclude]
        else:
            for _ in range(self._reselect_count):
                h = hosts[self._below(len(hosts))]
                if not h.healthy:
                    continue
                if h.address not in exclude or all(c is not h for c in candidates):
                    candidates.append(h)
        if candidates:
            return self.select(candidates, method, arguments)
        by_address = {h.address: h for h in hosts}
        for address in exclude:
            tried = by_address.get(address)
            if tried is not None and tried.healthy and all(c is not tried for c in candidates):
                candidates.append(tried)
        if candidates:
            return self.select(candidates, method, arguments)
        return None


_MAX_SPEC_LISTS = 64  # host lists whose weight parameters a balancer keeps parsed (one per method)


class _WeighingBalancer(DubboBalancer):
    """A balancer that weighs hosts (all but consistent hash): the clock warm-up is measured with,
    and each method's weight parameters parsed once per host list rather than once per pick (the
    list is recognised by identity: a routing table's host tuple stands until the providers
    change)."""

    __slots__ = ("_clock", "_specs")

    def __init__(
        self, clock: Clock, rng: _random.Random | None = None, reselect_count: int = DEFAULT_RESELECT_COUNT
    ) -> None:
        super().__init__(rng, reselect_count)
        self._clock = clock
        self._specs: dict[str, _Specs] = {}

    def _weight_specs(self, hosts: Sequence[Host], method: str) -> _Specs:
        cached = self._specs.get(method)
        if cached is not None and cached.hosts is hosts:
            return cached
        specs = _specs_of(hosts, method)
        self._specs.pop(method, None)
        self._specs[method] = specs
        while len(self._specs) > _MAX_SPEC_LISTS:
            del self._specs[next(iter(self._specs))]
        return specs

    def _weights(self, hosts: Sequence[Host], method: str, now: int) -> Sequence[int]:
        """Every host's ``getWeight`` at ``now``."""
        specs = self._weight_specs(hosts, method)
        if now >= specs.steady_from:
            return specs.steady
        return [weight_at(spec, now) for spec in specs.specs]

    def _weighted(
        self, hosts: Sequence[Host], indexes: Sequence[int], weights: Sequence[int], total: int
    ) -> Host:
        """The weighted draw ``LeastActiveLoadBalance`` and ``ShortestResponseLoadBalance`` end with:
        ``nextInt(total)`` minus each candidate's weight in turn until below zero."""
        offset = self._below(total)
        for i in indexes:
            offset -= weights[i]
            if offset < 0:
                return hosts[i]
        return hosts[indexes[-1]]  # not reached: the weights add up to total, more than offset


class RandomBalancer(_WeighingBalancer):
    """``RandomLoadBalance``: a draw weighted by :func:`dubbo_weight`.

    Uniform (``nextInt(length)``) when the first host's URL declares neither a ``weight`` (for the
    method or the service) nor a ``timestamp`` (:func:`weights_declared`), when every weight is the
    same, or when they add up to 0.  Otherwise ``nextInt(total)`` falls in the first host whose
    running total exceeds it (Dubbo's linear scan of up to 4 hosts and its binary search beyond
    choose the same host).
    """

    name = "random"
    __slots__ = ()

    def _do_select(self, hosts: Sequence[Host], method: str, arguments: Arguments) -> Host | None:
        specs = self._weight_specs(hosts, method)
        if not specs.declared:
            return hosts[self._below(len(hosts))]
        now = self._clock()
        if now >= specs.steady_from:  # no warm-up under way: the totals are known
            total = specs.running[-1]
            if total > 0 and not specs.same:
                return hosts[bisect.bisect_right(specs.running, self._below(total))]
            return hosts[self._below(len(hosts))]
        same = True
        total = 0
        running: list[int] = []
        for i, weight in enumerate(self._weights(hosts, method, now)):
            total += weight
            running.append(total)
            if same and total != weight * (i + 1):
                same = False
        if total > 0 and not same:
            return hosts[bisect.bisect_right(running, self._below(total))]
        return hosts[self._below(len(hosts))]


class _RoundRobinEntry:
    """``RoundRobinLoadBalance.WeightedRoundRobin``: one provider's weight and current weight."""

    __slots__ = ("current", "last_update", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.current = 0
        self.last_update = 0


class RoundRobinBalancer(_WeighingBalancer):
    """``RoundRobinLoadBalance``: smooth weighted round robin, per method.

    Each pick adds every host's weight to its current weight, takes the host with the largest current
    weight (the first on ties) and subtracts the total weight from it.  A host whose weight changed
    (warm-up, an override) starts again from a current weight of 0.  When the picked hosts are not
    as many as the method's entries, entries not updated for ``RECYCLE_PERIOD`` (60 s) are dropped.
    """

    name = "roundrobin"
    __slots__ = ("_methods",)

    def __init__(
        self, clock: Clock, rng: _random.Random | None = None, reselect_count: int = DEFAULT_RESELECT_COUNT
    ) -> None:
        super().__init__(clock, rng, reselect_count)
        self._methods: dict[str, dict[str, _RoundRobinEntry]] = {}

    def _do_select(self, hosts: Sequence[Host], method: str, arguments: Arguments) -> Host | None:
        # Re-inserted on every pick, so that beyond MAX_METHODS the least recently used goes.
        table = self._methods.pop(method, None)
        if table is None:
            table = {}
        self._methods[method] = table
        if len(self._methods) > MAX_METHODS:
            del self._methods[next(iter(self._methods))]
        now = self._clock()
        weights = self._weights(hosts, method, now)
        total = 0
        best = hosts[0]
        best_entry: _RoundRobinEntry | None = None
        best_current = 0
        for h, weight in zip(hosts, weights, strict=True):
            entry = table.get(h.address)
            if entry is None:
                entry = table[h.address] = _RoundRobinEntry(weight)
            elif entry.weight != weight:
                entry.weight = weight
                entry.current = 0
            entry.current += weight
            entry.last_update = now
            if best_entry is None or entry.current > best_current:
                best, best_entry, best_current = h, entry, entry.current
            total += weight
        if len(hosts) != len(table):
            for address in [a for a, e in table.items() if now - e.last_update > RECYCLE_PERIOD_MS]:
                del table[address]
        if best_entry is not None:  # always: there are two or more hosts
            best_entry.current -= total
        return best


class LeastActiveBalancer(_WeighingBalancer):
    """``LeastActiveLoadBalance``: the hosts with the fewest calls in flight for the method, then
    among them a draw weighted by :func:`dubbo_weight` (uniform when their weights are equal or add
    up to 0).

    ``active(address, method)`` is ``RpcStatus.getStatus(url, method).getActive()``.  Note that Dubbo
    3.3 counts calls there only in ``ActiveLimitFilter``, which runs only when the invoker URL has
    ``actives`` (or ``<method>.actives``) set to something other than empty, "0", "false", "null" or
    "N/A" (``ExtensionLoader.isActive`` with ``ConfigUtils.isNotEmpty``): without it a Java
    consumer's counts stay 0 and this reduces to the weighted draw.  What ``active`` reports is the
    caller's choice.
    """

    name = "leastactive"
    __slots__ = ("_active",)

    def __init__(
        self,
        active: Callable[[str, str], int],
        clock: Clock,
        rng: _random.Random | None = None,
        reselect_count: int = DEFAULT_RESELECT_COUNT,
    ) -> None:
        super().__init__(clock, rng, reselect_count)
        self._active = active

    def _do_select(self, hosts: Sequence[Host], method: str, arguments: Arguments) -> Host | None:
        weights = self._weights(hosts, method, self._clock())
        least = -1  # Dubbo's "none yet"
        least_indexes: list[int] = []
        total = 0
        first_weight = 0
        same = True
        for i, h in enumerate(hosts):
            active = self._active(h.address, method)
            weight = weights[i]
            if least == -1 or active < least:
                least = active
                least_indexes = [i]
                total = first_weight = weight
                same = True
            elif active == least:
                least_indexes.append(i)
                total += weight
                if same and weight != first_weight:
                    same = False
        if len(least_indexes) == 1:
            return hosts[least_indexes[0]]
        if not same and total > 0:
            return self._weighted(hosts, least_indexes, weights, total)
        return hosts[least_indexes[self._below(len(least_indexes))]]


class RpcStats(NamedTuple):
    """What ``ShortestResponseLoadBalance`` reads of ``RpcStatus`` for one (provider, method): totals
    since the counting began, which the balancer's window subtracts its offsets from."""

    active: int  # calls in flight (getActive)
    succeeded: int  # calls that succeeded (getSucceeded = total - failed)
    succeeded_elapsed_ms: int  # their summed elapsed time (getSucceededElapsed)


class _Window:
    """``ShortestResponseLoadBalance.SlideWindowData``: the totals at the window's start."""

    __slots__ = ("consulted", "elapsed_offset", "succeeded_offset")

    def __init__(self) -> None:
        self.succeeded_offset = 0
        self.elapsed_offset = 0
        self.consulted = True  # by a pick since the last reset


def _java_div(a: int, b: int) -> int:
    # Java's long division truncates toward zero.
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class ShortestResponseBalancer(_WeighingBalancer):
    """``ShortestResponseLoadBalance``: the hosts with the shortest estimated response, then among
    them a draw weighted by :func:`dubbo_weight` (uniform when their weights are equal or add up
    to 0).

    The estimate is the average elapsed time of the calls that succeeded in the current window times
    (active + 1).  A window (``SlideWindowData``) starts with offsets of 0, so a provider's first
    window counts all its calls so far; once ``slide_period_ms`` (30 s) has passed since the last
    reset, a pick moves every window's offsets to the current totals (Dubbo does this on an executor
    right after the pick, so the pick itself still uses the old windows).  ``stats(address, method)``
    is ``RpcStatus.getStatus(url, method)``, which Dubbo 3.3 only feeds when ``ActiveLimitFilter``
    runs (see :class:`LeastActiveBalancer`).

    Unlike Dubbo, which keeps a window for every provider it ever saw, a reset forgets the windows of
    providers no pick consulted since the previous reset; one that comes back starts with offsets of
    0 again.
    """

    name = "shortestresponse"
    __slots__ = ("_last_reset", "_slide_period_ms", "_stats", "_windows")

    def __init__(
        self,
        stats: Callable[[str, str], RpcStats],
        clock: Clock,
        rng: _random.Random | None = None,
        slide_period_ms: int = DEFAULT_SLIDE_PERIOD_MS,
        reselect_count: int = DEFAULT_RESELECT_COUNT,
    ) -> None:
        super().__init__(clock, rng, reselect_count)
        self._stats = stats
        self._slide_period_ms = slide_period_ms
        self._last_reset = clock()  # Dubbo: lastUpdateTime = System.currentTimeMillis() at construction
        self._windows: dict[tuple[str, str], _Window] = {}  # by (address, method)

    def _do_select(self, hosts: Sequence[Host], method: str, arguments: Arguments) -> Host | None:
        now = self._clock()
        weights = self._weights(hosts, method, now)
        shortest = _LONG_MAX
        shortest_indexes: list[int] = []
        total = 0
        first_weight = 0
        same = True
        for i, h in enumerate(hosts):
            key = (h.address, method)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window()
            window.consulted = True
            stats = self._stats(h.address, method)
            succeeded = stats.succeeded - window.succeeded_offset
            elapsed = stats.succeeded_elapsed_ms - window.elapsed_offset
            average = 0 if succeeded == 0 else _java_div(elapsed, succeeded)
            estimate = average * (stats.active + 1)
            weight = weights[i]
            if estimate < shortest:
                shortest = estimate
                shortest_indexes = [i]
                total = first_weight = weight
                same = True
            elif estimate == shortest:
                shortest_indexes.append(i)
                total += weight
                if same and i > 0 and weight != first_weight:
                    same = False
        if now - self._last_reset > self._slide_period_ms:
            self._reset(now)
        if len(shortest_indexes) == 1:
            return hosts[shortest_indexes[0]]
        if not same and total > 0:
            return self._weighted(hosts, shortest_indexes, weights, total)
        return hosts[shortest_indexes[self._below(len(shortest_indexes))]]

    def _reset(self, now: int) -> None:
        """``SlideWindowData.reset`` for every window; the ones nobody consulted are forgotten."""
        kept: dict[tuple[str, str], _Window] = {}
        for (address, method), window in self._windows.items():
            if window.consulted:
                stats = self._stats(address, method)
                window.succeeded_offset = stats.succeeded
                window.elapsed_offset = stats.succeeded_elapsed_ms
                window.consulted = False
                kept[address, method] = window
        self._windows = kept
        self._last_reset = now


class UnsupportedHashArgument(TypeError):
    """An argument ``consistenthash`` hashes whose Java ``toString()`` regproxy cannot reproduce."""


def java_string(value: object) -> str:
    """``String.valueOf(value)`` for the values a hessian2 argument decodes to, where regproxy knows
    it: a string as is (a Java ``char`` arrives as one), ``None`` "null", a bool "true" / "false", an
    int (Java int, long, short, byte, BigInteger) in decimal.

    Anything else raises :class:`UnsupportedHashArgument`: a float (Java's ``Double.toString`` and
    ``Float.toString`` differ from Python's and between JDKs, and hessian2 sends a Java float as a
    double, so its ``toString`` is lost), bytes (``[B@<identity hash>``), a date (formatted in the
    consumer's time zone), lists, maps and objects (their ``toString`` is the class's own, an enum's
    may be overridden).
    """
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))  # int(): a subclass (hessian2.Long) may print itself differently
    raise UnsupportedHashArgument(
        f"consistenthash cannot hash a {type(value).__name__} argument as Java Dubbo does "
        "(only strings, integers, booleans and null)"
    )


def _java_bytes(text: str) -> bytes:
    # String.getBytes() in UTF-8 (the default charset of JDK 18+, and of older JDKs under a UTF-8
    # locale): a surrogate pair is one character, an unpaired surrogate becomes "?".
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        paired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return paired.encode("utf-8", "replace")


def _ring_points(digest: bytes) -> tuple[int, int, int, int]:
    """``ConsistentHashSelector.hash(digest, 0..3)``: the digest's four little-endian 32-bit words."""
    return _DIGEST_WORDS.unpack(digest)


class _Ring(NamedTuple):
    points: list[int]  # sorted ring positions
    owners: list[int]  # the index, in the provider list, of each position's provider


def _build_ring(addresses: Sequence[str], replicas: int) -> _Ring:
    """``ConsistentHashSelector``'s TreeMap: for each provider and each i < replicas / 4, the MD5 of
    ``address + i`` gives four positions; a position taken twice keeps the later provider (TreeMap.put)."""
    owner_of: dict[int, int] = {}
    for index, address in enumerate(addresses):
        for i in range(max(replicas, 0) // 4):
            for point in _ring_points(hashlib.md5(_java_bytes(f"{address}{i}")).digest()):
                owner_of[point] = index
    points = sorted(owner_of)
    return _Ring(points, [owner_of[p] for p in points])


@functools.lru_cache(maxsize=64)
def _argument_indexes(spec: str) -> tuple[int, ...]:
    # COMMA_SPLIT_PATTERN.split(spec) (trailing empty parts dropped, as Java's split does), each
    # Integer.parseInt; a spec Java cannot parse counts as the default, "0".
    parts = _COMMA_SPLIT.split(spec)
    while parts and not parts[-1]:
        parts.pop()
    indexes = [_java_int(p) for p in parts]
    if any(i is None for i in indexes):
        return (0,)
    return tuple(i for i in indexes if i is not None)


class ConsistentHashBalancer(DubboBalancer):
    """``ConsistentHashLoadBalance``: the same arguments always go to the same provider, on the ring
    Java Dubbo builds for the same provider list.

    From the first host's URL, for the method: ``hash.nodes`` virtual nodes per provider (160), as
    ``hash.nodes / 4`` MD5 digests of ``address + i`` with four positions each; ``hash.arguments``
    (``"0"``): the indexes of the arguments whose Java ``toString`` (:func:`java_string`),
    concatenated, is the key (an index outside the arguments adds nothing).  The key's MD5 gives a
    position (the digest's first little-endian 32-bit word) and the first ring position at or after
    it, wrapping to the first, gives the provider.  Weights and warm-up play no part.  Strings are
    hashed as UTF-8, the ``getBytes()`` of a consumer on JDK 18+ or under a UTF-8 locale (the same
    bytes as any charset for ASCII).

    The ring is rebuilt when the provider list changes (Dubbo compares ``invokers.hashCode()``); it
    depends only on the addresses in order and ``hash.nodes``.  A reselect over a sublist balances
    over that sublist's own ring, as Dubbo's does.  With
    ``hash.nodes`` below 4 the ring is empty: Dubbo fails the call (a NullPointerException in
    ``selectForKey``) and ``pick`` returns None.

    ``arguments`` must be given (``needs_arguments``): None raises ValueError, and an argument
    :func:`java_string` does not support raises :class:`UnsupportedHashArgument`.
    """

    name = "consistenthash"
    needs_arguments = True
    __slots__ = ("_last", "_rings")

    def __init__(
        self, rng: _random.Random | None = None, reselect_count: int = DEFAULT_RESELECT_COUNT
    ) -> None:
        super().__init__(rng, reselect_count)
        self._rings: dict[tuple[tuple[str, ...], int], _Ring] = {}
        # The last host sequence seen, with its hash.nodes and ring: callers pass the same tuple for
        # as long as the provider list stands, so most picks skip building the key.
        self._last: tuple[Sequence[Host], int, _Ring] | None = None

    def _ring(self, hosts: Sequence[Host], replicas: int) -> _Ring:
        last = self._last
        if last is not None and last[0] is hosts and last[1] == replicas:
            return last[2]
        key = (tuple(h.address for h in hosts), replicas)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _build_ring(key[0], replicas)
            while len(self._rings) > _MAX_RINGS:
                del self._rings[next(iter(self._rings))]
        self._last = (hosts, replicas, ring)
        return ring

    def _do_select(self, hosts: Sequence[Host], method: str, arguments: Arguments) -> Host | None:
        if arguments is None:
            raise ValueError("consistenthash needs the request's arguments")
        params = hosts[0].metadata
        nodes = _java_int(method_parameter(params, method, "hash.nodes") or str(DEFAULT_HASH_NODES))
        replicas = DEFAULT_HASH_NODES if nodes is None else min(nodes, MAX_HASH_NODES)
        ring = self._ring(hosts, replicas)
        if not ring.points:
            return None
        spec = method_parameter(params, method, "hash.arguments") or DEFAULT_HASH_ARGUMENTS
        key = "".join(java_string(arguments[i]) for i in _argument_indexes(spec) if 0 <= i < len(arguments))
        position = _ring_points(hashlib.md5(_java_bytes(key)).digest())[0]
        at = bisect.bisect_left(ring.points, position)
        return hosts[ring.owners[at if at < len(ring.points) else 0]]


class MethodBalancer:
    """A Dubbo balancer for one method, as the forwarder calls a ``routing.balancer.LoadBalancer``
    (``pick(hosts, exclude)``); ``pick_with`` for a balancer that reads the arguments."""

    __slots__ = ("balancer", "method", "needs_arguments")

    def __init__(self, balancer: DubboBalancer, method: str) -> None:
        self.balancer = balancer
        self.method = method
        self.needs_arguments = balancer.needs_arguments

    def pick(self, hosts: Sequence[Host], exclude: Container[str] = ()) -> Host | None:
        return self.balancer.pick(hosts, self.method, None, _tried(exclude))

    def pick_with(self, hosts: Sequence[Host], exclude: Container[str], arguments: Arguments) -> Host | None:
        method, arguments = real_invocation(self.method, arguments)
        return self.balancer.pick(hosts, method, arguments, _tried(exclude))


def _tried(exclude: Container[str]) -> Sequence[str]:
    # The forwarder passes the addresses tried (a tuple, in order) or a set with the failing ones.
    if isinstance(exclude, tuple | list):
        return exclude
    if isinstance(exclude, set | frozenset):
        return tuple(exclude)
    return ()


def make_dubbo_balancer(
    name: str,
    *,
    clock: Clock,
    rng: _random.Random | None = None,
    active: Callable[[str, str], int] | None = None,
    stats: Callable[[str, str], RpcStats] | None = None,
    slide_period_ms: int = DEFAULT_SLIDE_PERIOD_MS,
    reselect_count: int = DEFAULT_RESELECT_COUNT,
) -> DubboBalancer:
    """A fresh balancer by its Dubbo name (``loadbalance``).  ``leastactive`` needs ``active``
    (calls in flight per address and method), ``shortestresponse`` needs ``stats``; Dubbo's
    ``adaptive`` is not provided."""
    if name == "random":
        return RandomBalancer(clock, rng, reselect_count)
    if name == "roundrobin":
        return RoundRobinBalancer(clock, rng, reselect_count)
    if name == "leastactive":
        if active is None:
            raise ValueError("load balancer 'leastactive' needs the calls in flight (active)")
        return LeastActiveBalancer(active, clock, rng, reselect_count)
    if name == "shortestresponse":
        if stats is None:
            raise ValueError("load balancer 'shortestresponse' needs the call statistics (stats)")
        return ShortestResponseBalancer(stats, clock, rng, slide_period_ms, reselect_count)
    if name == "consistenthash":
        return ConsistentHashBalancer(rng, reselect_count)
    raise ValueError(f"unknown Dubbo load balancer {name!r} (choose one of {', '.join(DUBBO_BALANCERS)})")
