"""Dubbo's cluster layer through real sidecars: a consumer sidecar and three provider sidecars as
processes on a real ZooKeeper, each provider sidecar beside a demo provider app, the parameters
declared the way a Dubbo provider declares them — in the provider URL it registers (``/pub``'s
``params``) — and real Dubbo calls through the consumer's egress (regproxy.governance.params,
regproxy.proxy.cluster).

What each test pins, and the Dubbo 3.3 class it comes from:

* the provider's ``timeout`` / ``<method>.timeout`` bound a call that carries no timeout of its own
  (``DubboInvoker.calculateTimeout``; Java 2.7.7-3.0.5 consumers send none), ``timeout`` and ``_TO``
  attachments beat them;
* ``retries`` (``FailoverClusterInvoker``): 0 is one attempt, 2 is three on distinct providers;
  nothing declared keeps regproxy's default of no retry once written; ``failfast`` one attempt;
  ``failsafe`` an empty result (``FailsafeClusterInvoker``);
* weighted ``random`` (``RandomLoadBalance``), ``leastactive`` (``LeastActiveLoadBalance``, which
  counts calls only where ``actives`` is declared, as ``ActiveLimitFilter`` does), ``consistenthash``
  (``ConsistentHashLoadBalance``: checked against the ring computed here from Dubbo's algorithm),
  warm-up (``AbstractLoadBalance.getWeight``);
* ``forking`` and ``broadcast`` (``ForkingClusterInvoker``, ``BroadcastClusterInvoker``);
* ``token`` (``TokenFilter``), ``executes`` (``ExecuteLimitFilter``) and ``actives``
  (``ActiveLimitFilter``), each answered with Dubbo's message.

One set of sidecars serves the module; each test publishes the three providers with its own
parameters (a re-publication replaces the registered URL) and waits until the consumer routes by them.
Figures are logged: ``-o log_cli=true --log-cli-level=INFO``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from regproxy.demo.client import DubboClient, DubboError, RemoteException
from regproxy.demo.provider import Provider, default_services
from regproxy.dubbo.frame import Status
from regproxy.registry.url import DubboURL
from tests.sidecars import SidecarProc
from tests.topology import GREET, VERSION, egress_cluster, pub_body
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer, emptied

pytestmark = [pytest.mark.process, pytest.mark.asyncio(loop_scope="module")]

log = logging.getLogger(__name__)

NAMES = ("b", "c", "d")
SLOW_S = 1.0  # slowHi and slowHello answer after this
WORK_S = 0.3  # how long provider b takes for work(); c and d answer at once
METHODS = ["sayHi", "slowHi", "slowHello", "whoAmI", "work", "flaky"]
TOLERANCE_MS = 50  # the issue's ± for a timeout


def services(name: str) -> dict[str, Any]:
    """The methods each provider app exports besides sayHi: ``whoAmI`` says which app answered."""

    async def slow(_: object) -> str:
        await asyncio.sleep(SLOW_S)
        return f"slow {name}"

    async def work(_: object) -> str:
        if name == "b":
            await asyncio.sleep(WORK_S)
        return name

    def flaky(_: object) -> str:
        if name == "b":
            raise ValueError(f"flaky fails on {name}")
        return name

    return {"slowHi": slow, "slowHello": slow, "whoAmI": lambda _: name, "work": work, "flaky": flaky}


@dataclass
class Fleet:
    a: SidecarProc  # the consumer's sidecar
    providers: list[SidecarProc]
    apps: list[Provider]
    urls: dict[str, DubboURL] = field(default_factory=dict)  # address -> the URL its /pub registered

    def at(self, sc: SidecarProc) -> str:
        return f"127.0.0.1:{sc.ingress}"

    def counts(self, method: str) -> Counter[str]:
        return Counter({n: app.services.count(method) for n, app in zip(NAMES, self.apps, strict=True)})

    async def publish(self, *each: Mapping[str, str]) -> None:
        """Publish b, c and d with these parameters (one mapping for all, or one each) and wait until
        the consumer's egress has every provider with them."""
        params = list(each) * len(NAMES) if len(each) == 1 else list(each)
        for sc, app, p in zip(self.providers, self.apps, params, strict=True):
            status, body = await sc.post("/pub", pub_body(app.port, methods=METHODS, params=dict(p)))
            assert status == 200, body
            self.urls[self.at(sc)] = DubboURL.parse(body["url"])

        async def routed() -> bool:
            hosts = await egress_cluster(self.a)
            for sc, p in zip(self.providers, params, strict=True):
                metadata = hosts.get(self.at(sc), {}).get("metadata", {})
                if any(metadata.get(k) != v for k, v in p.items() if k != "token"):
                    return False
                if "token" in p and not metadata.get("token"):
                    return False
            return len(hosts) == len(NAMES)

        await wait_for(routed, 10, f"the consumer routing by {params}", detail=self.a.log_tail)


async def call(
    port: int,
    method: str,
    arg: object = "t",
    *,
    timeout_ms: int | None = None,
    attachments: Mapping[str, Any] | None = None,
) -> tuple[float, Any]:
    """One call (no ``timeout`` attachment unless ``timeout_ms``; the client itself waits a second
    longer, so that it is the sidecar's answer that ends the call): (ms taken, value or DubboError)."""
    client = await DubboClient.connect("127.0.0.1", port)
    sent = dict(attachments or {})
    if timeout_ms:
        sent["timeout"] = str(timeout_ms)
    started = time.monotonic()
    try:
        result: Any = await asyncio.wait_for(
            client.call(GREET, method, [arg], version=VERSION, timeout=None, attachments=sent), 10
        )
    except (DubboError, RemoteException) as exc:
        result = exc
    finally:
        client.close()
    return (time.monotonic() - started) * 1000, result


async def burst(
    port: int, n: int, method: str, args: Sequence[object] | None = None, concurrency: int = 32
) -> list[Any]:
    """``n`` calls on one connection, ``concurrency`` at a time: the values, in order."""
    client = await DubboClient.connect("127.0.0.1", port)
    out: list[Any] = [None] * n

    async def one(i: int) -> None:
        arg = args[i] if args is not None else "t"
        out[i] = await client.call(GREET, method, [arg], version=VERSION, timeout=5)

    try:
        for start in range(0, n, concurrency):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
    finally:
        client.close()
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    zk = await emptied(zk_server, "/dubbo")
    await asyncio.to_thread(zk.stop)
    zk.close()
    registry = f"zookeeper://{zk_server.hosts}"
    root = tmp_path_factory.mktemp("dubbo-cluster")
    apps: list[Provider] = []
    providers: list[SidecarProc] = []
    for name in NAMES:
        registry_of_app = default_services(greetings_version=VERSION, provider_name=name)
        registry_of_app.add(GREET, services(name), version=VERSION)
        app = Provider(registry_of_app, name=f"app-{name}")
        await app.start("127.0.0.1", 0)
        apps.append(app)
        providers.append(SidecarProc(name, root / name, registries=[registry], app_port=app.port))
    # The tests time calls out on purpose; regproxy's own outlier detection (not Dubbo's) would eject
    # the providers that answered slowly and skew the next test's counts.
    config = root / "consumer.yaml"
    config.write_text("health:\n  outlier: {enabled: false}\n")
    consumer = SidecarProc(
        "a", root / "a", registries=[registry], app_port=1, extra=["--config", str(config)]
    )
    try:
        await asyncio.gather(consumer.start(), *(sc.start() for sc in providers))
        fleet = Fleet(consumer, providers, apps)
        status, body = await consumer.post(
            "/sub", {"service": {"interface": GREET, "version": VERSION, "application": "cluster-consumer"}}
        )
        assert status == 200, body
        yield fleet
    finally:
        for sc in [consumer, *providers]:
            await sc.kill()
        for app in apps:
            await app.close(grace=0.1)


# ---------------------------------------------------------------------------------------------------
# Timeouts (DubboInvoker.calculateTimeout; regproxy.governance.params)


async def test_provider_timeout_bounds_a_call_that_carries_none(fleet: Fleet) -> None:
    await fleet.publish({"timeout": "300", "slowHi.timeout": "150"})
    taken, result = await call(fleet.a.egress, "slowHello")
    log.info("provider timeout=300: a 1 s call failed after %.0f ms: %s", taken, result)
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    assert abs(taken - 300) <= TOLERANCE_MS, taken
    assert "timeout after 300 ms" in str(result)
    # The method-level value beats the service's for that method.
    taken, result = await call(fleet.a.egress, "slowHi")
    log.info("provider slowHi.timeout=150: failed after %.0f ms", taken)
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    assert abs(taken - 150) <= TOLERANCE_MS, taken
    # A consumer that says its own timeout (Dubbo 3.0.6+, dubbo-go) gets it, as does the countdown.
    taken, result = await call(fleet.a.egress, "slowHello", timeout_ms=600)
    assert isinstance(result, DubboError) and abs(taken - 600) <= TOLERANCE_MS, (taken, result)
    taken, result = await call(fleet.a.egress, "slowHello", attachments={"_TO": 450})
    assert isinstance(result, DubboError) and abs(taken - 450) <= TOLERANCE_MS, (taken, result)
    # Nothing declared about retries: one attempt, however many providers.
    assert sum(fleet.counts("slowHello").values()) == 3


# ---------------------------------------------------------------------------------------------------
# Cluster modes


async def test_retries_zero_is_one_attempt_and_two_is_three_on_distinct_providers(fleet: Fleet) -> None:
    await fleet.publish({"timeout": "200", "retries": "0"})
    before = fleet.counts("slowHi")
    taken, result = await call(fleet.a.egress, "slowHi")
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    got = fleet.counts("slowHi")
    got.subtract(before)
    assert sum(got.values()) == 1, got

    await fleet.publish({"timeout": "200", "retries": "2"})
    before = fleet.counts("slowHi")
    taken, result = await call(fleet.a.egress, "slowHi")
    log.info("retries=2, timeout=200: failed after %.0f ms: %s", taken, result)
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    await wait_for(lambda: sum(fleet.counts("slowHi").values()) - sum(before.values()) == 3, 5, "3 attempts")
    got = fleet.counts("slowHi")
    got.subtract(before)
    assert got == Counter(b=1, c=1, d=1), got  # Dubbo's reselect: each retry on a provider not tried
    assert 3 * 200 - TOLERANCE_MS <= taken <= 3 * 200 + 3 * TOLERANCE_MS, taken


async def test_failfast_tries_once_and_failsafe_answers_an_empty_result(fleet: Fleet) -> None:
    await fleet.publish({"timeout": "200", "cluster": "failfast", "retries": "2"})
    before = sum(fleet.counts("slowHi").values())
    _, result = await call(fleet.a.egress, "slowHi")
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    assert sum(fleet.counts("slowHi").values()) - before == 1

    await fleet.publish({"timeout": "200", "cluster": "failsafe"})
    taken, result = await call(fleet.a.egress, "slowHi")
    log.info("failsafe: a timed-out call answered %r after %.0f ms", result, taken)
    assert result is None and abs(taken - 200) <= TOLERANCE_MS, (taken, result)
    # A business exception is a result, not a failure: it reaches the consumer as it is.
    values = [(await call(fleet.a.egress, "flaky"))[1] for _ in range(40)]  # b is drawn a third of the time
    assert any(isinstance(v, RemoteException) for v in values), values


async def test_forking_calls_two_providers_and_broadcast_all_three(fleet: Fleet) -> None:
    await fleet.publish({"cluster": "forking", "forks": "2"})
    before = sum(fleet.counts("whoAmI").values())
    answers = await burst(fleet.a.egress, 60, "whoAmI")
    await wait_for(lambda: sum(fleet.counts("whoAmI").values()) - before == 120, 5, "two calls each")
    assert set(answers) <= set(NAMES) and len(set(answers)) > 1, Counter(answers)

    await fleet.publish({"cluster": "broadcast"})
    before_each = fleet.counts("whoAmI")
    answers = await burst(fleet.a.egress, 30, "whoAmI")
    got = fleet.counts("whoAmI")
    got.subtract(before_each)
    assert got == Counter(b=30, c=30, d=30), got
    # One provider's failure is the call's failure (BroadcastClusterInvoker).
    _, result = await call(fleet.a.egress, "flaky")
    assert isinstance(result, RemoteException) and "flaky fails on b" in str(result), result


# ---------------------------------------------------------------------------------------------------
# Load balancers


async def test_weighted_random_splits_by_weight(fleet: Fleet) -> None:
    # warmup=0: these providers registered moments ago; Dubbo's warm-up would even them out.
    await fleet.publish(
        {"weight": "100", "warmup": "0"}, {"weight": "200", "warmup": "0"}, {"weight": "300", "warmup": "0"}
    )
    n = 5000
    got = Counter(await burst(fleet.a.egress, n, "whoAmI", concurrency=64))
    shares = {k: 100 * v / n for k, v in got.items()}
    log.info("weighted random 100:200:300 over %d calls: %s", n, shares)
    for name, expected in (("b", 100 / 6), ("c", 200 / 6), ("d", 300 / 6)):
        assert abs(shares.get(name, 0) - expected) <= 3, shares


async def workers(port: int, n: int, calls_each: int, method: str) -> Counter[str]:
    """``n`` callers on one connection, each making ``calls_each`` calls one after the other: which
    provider answered how many."""
    client = await DubboClient.connect("127.0.0.1", port)
    got: Counter[str] = Counter()

    async def caller() -> None:
        for _ in range(calls_each):
            got[await client.call(GREET, method, ["t"], version=VERSION, timeout=5)] += 1

    try:
        await asyncio.gather(*(caller() for _ in range(n)))
    finally:
        client.close()
    return got


async def test_leastactive_prefers_the_idle_providers(fleet: Fleet) -> None:
    # Dubbo counts calls in flight only where ActiveLimitFilter runs, i.e. with `actives` declared.
    await fleet.publish({"loadbalance": "leastactive", "actives": "1000"})
    got = await workers(fleet.a.egress, 8, 40, "work")
    log.info("leastactive, b busy %.1f s per call, 8 callers: %s", WORK_S, dict(got))
    assert got["b"] < 0.15 * 320, got  # weighted random would give it a third (measured: 7 %)


def dubbo_ring(addresses: Sequence[str], replicas: int = 160) -> tuple[list[int], list[str]]:
    """ConsistentHashLoadBalance.ConsistentHashSelector, written out from Dubbo's source: for each
    invoker address and i in 0..replicas/4-1, MD5(address + i) gives four points (the digest's
    little-endian 32-bit words), all kept in a TreeMap (a later put of a point replaces it)."""
    points: dict[int, str] = {}
    for address in addresses:
        for i in range(replicas // 4):
            digest = hashlib.md5(f"{address}{i}".encode()).digest()
            for h in range(4):
                points[int.from_bytes(digest[4 * h : 4 * h + 4], "little")] = address
    keys = sorted(points)
    return keys, [points[k] for k in keys]


def dubbo_pick(ring: tuple[list[int], list[str]], key: str) -> str:
    """select(): the first point at or after MD5(key)'s first word (ceilingEntry), else the first."""
    keys, owners = ring
    at = bisect_left(keys, int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "little"))
    return owners[at if at < len(keys) else 0]


async def test_consistenthash_sends_each_key_to_the_provider_dubbo_would(fleet: Fleet) -> None:
    await fleet.publish({"loadbalance": "consistenthash"})
    keys = [f"user-{i}" for i in range(1000)]
    first = await burst(fleet.a.egress, len(keys), "whoAmI", keys)
    again = await burst(fleet.a.egress, len(keys), "whoAmI", keys)
    assert first == again  # each key always to one provider
    name_of = {fleet.at(sc): name for sc, name in zip(fleet.providers, NAMES, strict=True)}
    ring = dubbo_ring(list(name_of))
    expected = [name_of[dubbo_pick(ring, k)] for k in keys]
    assert first == expected
    assert set(Counter(first)) == set(NAMES), Counter(first)


async def test_warmup_ramps_a_new_providers_share(fleet: Fleet) -> None:
    # b at full weight from the start (warmup=0), d out (weight 0), c just published warming up over
    # 8 s: its weight is 100 * uptime / 8000 (AbstractLoadBalance.calculateWarmupWeight), at least 1.
    await fleet.publish({"warmup": "0"}, {"warmup": "8000"}, {"weight": "0", "warmup": "0"})
    early = Counter(await burst(fleet.a.egress, 600, "whoAmI"))
    await asyncio.sleep(6)
    late = Counter(await burst(fleet.a.egress, 600, "whoAmI"))
    log.info("warm-up over 8 s: c's share %s early, %s 6 s later", early["c"] / 600, late["c"] / 600)
    assert early["d"] == late["d"] == 0
    assert early["c"] / 600 < 0.25 and late["c"] / 600 > 0.35, (early, late)


# ---------------------------------------------------------------------------------------------------
# Provider-side limits


async def test_token_protected_service_works_through_regproxy_and_refuses_a_wrong_token(
    fleet: Fleet,
) -> None:
    await fleet.publish({"token": "true"})
    tokens = {address: url.params["token"] for address, url in fleet.urls.items()}
    assert len(set(tokens.values())) == 3 and all(len(t) == 36 for t in tokens.values()), tokens  # UUIDs
    answers = await burst(fleet.a.egress, 30, "whoAmI")
    assert set(answers) <= set(NAMES)
    # A caller that goes around the consumer's sidecar straight to a provider's ingress.
    b = fleet.providers[0]
    for attachments in ({}, {"token": "guess"}):
        _, result = await call(b.ingress, "whoAmI", attachments=attachments)
        assert isinstance(result, DubboError) and result.status == Status.SERVICE_ERROR, result
        assert "Invalid token! Forbid invoke remote service interface " + GREET in str(result), result
        assert f"consumer incorrect token is {attachments.get('token', 'null')}" in str(result)
    _, result = await call(b.ingress, "whoAmI", attachments={"token": tokens[fleet.at(b)]})
    assert result == "b"
    # A retry carries the token of the provider it goes to: each of the three attempts reaches its app.
    await fleet.publish({"token": "true", "timeout": "200", "retries": "2"})
    before = fleet.counts("slowHi")
    _, result = await call(fleet.a.egress, "slowHi")
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    await wait_for(lambda: sum((fleet.counts("slowHi") - before).values()) == 3, 5, "three attempts")
    assert fleet.counts("slowHi") - before == Counter(b=1, c=1, d=1)


async def test_executes_and_actives_limits_answer_with_dubbos_messages(fleet: Fleet) -> None:
    await fleet.publish({"slowHi.executes": "1", "slowHi.actives": "1"}, {"weight": "0"}, {"weight": "0"})
    b = fleet.providers[0]
    # executes at b's ingress: a second call while one runs is refused at once (ExecuteLimitFilter).
    first = asyncio.ensure_future(call(b.ingress, "slowHi", timeout_ms=3000))
    await asyncio.sleep(0.2)
    taken, result = await call(b.ingress, "slowHi", timeout_ms=3000)
    assert isinstance(result, DubboError) and result.status == Status.SERVICE_ERROR, result
    assert 'The service using threads greater than <dubbo:service executes="1" /> limited.' in str(result)
    assert taken < 200, taken
    assert (await first)[1] == "slow b"
    # actives at the consumer's egress (only b has weight): a second call waits for the slot up to
    # its timeout (ActiveLimitFilter), a third with time enough gets it when the first is done.
    first = asyncio.ensure_future(call(fleet.a.egress, "slowHi", timeout_ms=3000))
    await asyncio.sleep(0.2)
    third = asyncio.ensure_future(call(fleet.a.egress, "slowHi", timeout_ms=3000))
    taken, result = await call(fleet.a.egress, "slowHi", timeout_ms=300)
    log.info("actives=1: a second call gave up after %.0f ms: %s", taken, result)
    assert isinstance(result, DubboError) and result.status == Status.CLIENT_TIMEOUT, result
    assert "Waiting concurrent invoke timeout in client-side for service" in str(result), result
    assert "max concurrent invoke limit: 1" in str(result)
    assert abs(taken - 300) <= TOLERANCE_MS
    assert (await first)[1] == "slow b"
    taken, value = await third
    assert value == "slow b" and taken >= 1.6 * SLOW_S * 1000, (taken, value)
