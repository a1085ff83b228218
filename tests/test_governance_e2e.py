"""Dubbo's dynamic rules end to end: rules written straight into the config center (kazoo on a real
ZooKeeper, the Nacos double's operator API), a consumer sidecar and two provider sidecars as
processes, each provider sidecar beside a demo provider app, and real Dubbo calls through the
consumer's egress.  For each rule kind: written → in force within 1 s on the sidecar that watches it
(measured), with the effect on traffic; edited → the new version; deleted → back to before.  A table
of malformed rules written over good ones in force changes nothing but the refusals shown.

The same behaviours at unit level, on memory://: tests/test_discovery_rules.py.

One set of sidecars serves the whole module (starting them is most of the cost); each test leaves
no rule behind (the ``fleet`` fixture deletes what a failed test left).  The measured figures
(rule-to-effect latency, splits, timeout errors) are logged: ``-o log_cli=true --log-cli-level=INFO``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError

from regproxy.demo.client import DubboCallError, DubboClient, DubboError
from regproxy.demo.provider import Provider
from regproxy.dubbo.frame import Status
from regproxy.governance.keys import (
    CONDITION_ROUTER,
    CONFIGURATORS,
    RULE_GROUP,
    TAG_ROUTER,
    ZK_CONFIG_ROOT,
    service_rule_key,
    zk_rule_path,
)
from tests.peers.nacos import NacosDouble
from tests.sidecars import SidecarProc, value
from tests.topology import (
    EXACT_SPLIT,
    GREET,
    VERSION,
    World,
    egress_cluster,
    egress_hosts,
    leaves,
    open_world,
    pub_body,
)
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer, emptied

pytestmark = [pytest.mark.process, pytest.mark.asyncio(loop_scope="module")]

log = logging.getLogger(__name__)

SERVICE = service_rule_key(GREET, VERSION)  # the rule ids' key: "<interface>:1.0.0:" (no group)
SERVICE_CONFIGURATORS = SERVICE + CONFIGURATORS
SERVICE_CONDITIONS = SERVICE + CONDITION_ROUTER
PROVIDER_APP = "demo-provider"  # what pub_body registers: the tag rule is keyed by it
PROVIDER_TAGS = PROVIDER_APP + TAG_ROUTER
RULE_KEY = f"{GREET}:{VERSION}"  # a configurators rule's own key: group/interface:version
CONSUMER_APP = "demo-consumer"
SLOW = "slowHi"  # a GreetingsService method the apps answer after SLOW_S
SLOW_S = 1.0
IN_FORCE_S = 1.0  # issue 17: a rule written is in force within this on every sidecar that watches it


# ---------------------------------------------------------------------------------------------------
# The config center, written as an operator (or Dubbo Admin) writes it


class ConfigCenter(Protocol):
    name: str

    async def write(self, rule_id: str, text: str) -> str:
        """Create or replace the rule; the version a sidecar shows for it."""

    async def delete(self, rule_id: str) -> None: ...

    async def clear(self) -> None:
        """Delete every rule (what a failed test may have left)."""


class ZooKeeperCenter:
    """Nodes under /dubbo/config/dubbo, written with kazoo (in a thread: its calls block)."""

    name = "zookeeper"

    def __init__(self, zk: KazooClient) -> None:
        self.zk = zk

    async def write(self, rule_id: str, text: str) -> str:
        def write() -> str:
            path = zk_rule_path(rule_id)
            try:
                _, stat = self.zk.create(path, text.encode(), makepath=True, include_data=True)
            except NodeExistsError:
                stat = self.zk.set(path, text.encode())
            return str(stat.mzxid)  # what the sidecar shows as the rule's version

        return await asyncio.to_thread(write)

    async def delete(self, rule_id: str) -> None:
        await asyncio.to_thread(self.zk.delete, zk_rule_path(rule_id))

    async def clear(self) -> None:
        def clear() -> None:
            folder = f"{ZK_CONFIG_ROOT}/{RULE_GROUP}"
            for child in self.zk.get_children(folder) if self.zk.exists(folder) else []:
                self.zk.delete(f"{folder}/{child}")

        await asyncio.to_thread(clear)


class NacosCenter:
    """Configs of group dubbo, written through the double's operator API (on its loop)."""

    name = "nacos"

    def __init__(self, double: NacosDouble) -> None:
        self.double = double
        self.written: set[str] = set()

    async def write(self, rule_id: str, text: str) -> str:
        self.written.add(rule_id)
        return self.double.publish_config(rule_id, text, group=RULE_GROUP).md5

    async def delete(self, rule_id: str) -> None:
        self.double.remove_config(rule_id, group=RULE_GROUP)

    async def clear(self) -> None:
        for rule_id in self.written:
            self.double.remove_config(rule_id, group=RULE_GROUP)
        self.written.clear()


# ---------------------------------------------------------------------------------------------------
# The fleet: the sidecars, the apps, and what they see


async def config_center(sc: SidecarProc) -> dict[str, Any]:
    """A sidecar's ``/api/v1/rules`` for its one config center."""
    status, body = await sc.admin_get("/api/v1/rules")
    assert status == 200, body
    (center,) = body["centers"]
    return dict(center)


async def rules(sc: SidecarProc) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(rule id -> in force, rule id -> refused) on a sidecar."""
    center = await config_center(sc)
    return (
        {r["rule_id"]: r for r in center["in_force"]},
        {r["rule_id"]: r for r in center["refused"]},
    )


async def watches(sc: SidecarProc, *rule_ids: str) -> bool:
    return set(rule_ids) <= set((await config_center(sc))["watched"])


@dataclass
class Fleet:
    world: World
    center: ConfigCenter

    @property
    def a(self) -> SidecarProc:
        return self.world.consumer

    @property
    def b(self) -> SidecarProc:
        return self.world.provider_sidecars[0]

    @property
    def c(self) -> SidecarProc:
        return self.world.provider_sidecars[1]

    def at(self, sc: SidecarProc) -> str:
        """The provider address a sidecar registers: what rules name."""
        return f"127.0.0.1:{sc.ingress}"

    def weights(self, b: int, c: int) -> dict[str, int]:
        return {self.at(self.b): b, self.at(self.c): c}

    def counts(self, method: str) -> Counter[str]:
        return Counter({sc.name: app.services.count(method) for sc, app in self.pairs()})

    def pairs(self) -> Iterator[tuple[SidecarProc, Provider]]:
        return zip(self.world.provider_sidecars, self.world.apps, strict=True)

    async def write(
        self,
        rule_id: str,
        text: str,
        *,
        on: SidecarProc | None = None,
        effect: Callable[[], Awaitable[bool]] | None = None,
    ) -> float:
        """Write a good rule; the seconds until ``on`` (the consumer's sidecar unless given) has that
        version in force and ``effect`` holds, asserted within IN_FORCE_S."""
        sc = on or self.a
        started = time.monotonic()
        version = await self.center.write(rule_id, text)

        async def in_force() -> bool:
            found = (await rules(sc))[0].get(rule_id)
            return found is not None and found["version"] == version and (effect is None or await effect())

        return await self._within(started, in_force, f"{rule_id} version {version} in force on {sc.name}", sc)

    async def delete(
        self,
        rule_id: str,
        *,
        on: SidecarProc | None = None,
        effect: Callable[[], Awaitable[bool]] | None = None,
    ) -> float:
        sc = on or self.a
        started = time.monotonic()
        await self.center.delete(rule_id)

        async def gone() -> bool:
            return rule_id not in (await rules(sc))[0] and (effect is None or await effect())

        return await self._within(started, gone, f"{rule_id} out of force on {sc.name}", sc)

    async def _within(
        self, started: float, check: Callable[[], Awaitable[bool]], what: str, sc: SidecarProc
    ) -> float:
        await wait_for(check, 10, what, interval=0.01, detail=sc.log_tail)
        took = time.monotonic() - started
        log.info("%s: %s after %.0f ms", self.center.name, what, took * 1000)
        assert took <= IN_FORCE_S, f"{what} took {took:.3f} s"
        return took

    async def hosts_are(self, weights: Mapping[str, int]) -> bool:
        return await egress_hosts(self.a) == weights

    async def calls(self, n: int, method: str = "sayHi", **attachments: str) -> Counter[str]:
        """``n`` calls through the consumer's egress, none failing: how many each provider got."""
        before = self.counts(method)
        errors = await burst(self.a.egress, n, method, attachments)
        assert errors == [], errors[:3]
        got = self.counts(method)
        got.subtract(before)
        assert sum(got.values()) == n, got
        return got

    async def split(self, n: int, c_percent: float) -> None:
        """``n`` calls split between b and c with c's share within ±3 points of ``c_percent``."""
        got = await self.calls(n)
        share = 100 * got["c"] / n
        log.info(
            "%s: %d calls: b %d, c %d (c %.1f %%, expected %.1f %%)",
            *(self.center.name, n, got["b"], got["c"], share, c_percent),
        )
        assert abs(share - c_percent) <= 3, got


async def burst(
    port: int, n: int, method: str, attachments: Mapping[str, str] | None = None, *, concurrency: int = 32
) -> list[DubboError]:
    """``n`` calls of GREET ``method`` on one connection, ``concurrency`` at a time; the failures."""
    client = await DubboClient.connect("127.0.0.1", port)
    failures: list[DubboError] = []

    async def one() -> None:
        try:
            await client.call(GREET, method, ["t"], version=VERSION, attachments=attachments, timeout=5)
        except DubboError as exc:
            failures.append(exc)

    try:
        for start in range(0, n, concurrency):
            await asyncio.gather(*(one() for _ in range(min(concurrency, n - start))))
    finally:
        client.close()
    return failures


async def slow_call(fleet: Fleet) -> tuple[float, DubboError | None]:
    """One call of the slow method with a 5 s timeout of its own: (seconds, its failure)."""
    client = await DubboClient.connect("127.0.0.1", fleet.a.egress)
    started = time.monotonic()
    try:
        await client.call(GREET, SLOW, ["t"], version=VERSION, timeout=5)
        failure = None
    except DubboError as exc:
        failure = exc
    finally:
        client.close()
    return time.monotonic() - started, failure


async def _slow(name: object) -> str:
    await asyncio.sleep(SLOW_S)
    return f"slow {name}"


@contextlib.asynccontextmanager
async def open_fleet(registry: str, center: ConfigCenter, tmp_path: Path) -> AsyncIterator[Fleet]:
    """open_world's sidecars with both providers published (sayHi and the slow method) and the
    consumer subscribed as CONSUMER_APP, routing to both at the published weight."""
    async with open_world(registry, tmp_path) as world:
        fleet = Fleet(world, center)
        await fleet.c.start()
        for sc, app in fleet.pairs():
            app.services.add(GREET, {SLOW: _slow}, version=VERSION)
            status, body = await sc.post("/pub", pub_body(app.port, methods=["sayHi", SLOW]))
            assert status == 200, body
        service = {"interface": GREET, "version": VERSION, "application": CONSUMER_APP, "params": EXACT_SPLIT}
        sub = {"service": service}
        status, body = await fleet.a.post("/sub", sub)
        assert status == 200, body
        await wait_for(lambda: fleet.hosts_are(fleet.weights(100, 100)), 10, "both providers at the consumer")
        # Rules are timed from a sidecar that watches them: the consumer its subscription's, the
        # providers their publication's.
        ids = (SERVICE_CONFIGURATORS, SERVICE_CONDITIONS, PROVIDER_TAGS)
        await wait_for(lambda: watches(fleet.a, *ids), 10, "the consumer watching its rules")
        for sc in (fleet.b, fleet.c):
            await wait_for(
                lambda sc=sc: watches(sc, SERVICE_CONFIGURATORS), 10, f"{sc.name} watching its rules"
            )
        yield fleet


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def zk_fleet(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    zk = await emptied(zk_server, "/dubbo")  # the operator's client
    try:
        registry = f"zookeeper://{zk_server.hosts}"
        async with open_fleet(registry, ZooKeeperCenter(zk), tmp_path_factory.mktemp("governance")) as fleet:
            yield fleet
    finally:
        await asyncio.to_thread(zk.stop)
        zk.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fleet(zk_fleet: Fleet) -> AsyncIterator[Fleet]:
    """The module's ZooKeeper fleet; no rule is left after the test, whatever it did."""
    yield zk_fleet
    await clear(zk_fleet)


async def clear(fleet: Fleet) -> None:
    await fleet.center.clear()
    for sc in (fleet.a, fleet.b, fleet.c):
        await wait_for(lambda sc=sc: _no_rules(sc), 5, f"no rule in force on {sc.name}")
    await wait_for(lambda: fleet.hosts_are(fleet.weights(100, 100)), 5, "the published weights")


async def _no_rules(sc: SidecarProc) -> bool:
    return not (await rules(sc))[0]


def zk_of(fleet: Fleet) -> KazooClient:
    assert isinstance(fleet.center, ZooKeeperCenter)
    return fleet.center.zk


# ---------------------------------------------------------------------------------------------------
# Configurators


def consumer_configurator(provider: str | None, *, consumer: str = "0.0.0.0", **parameters: str) -> str:
    """A service configurator for the consumers at ``consumer`` (``0.0.0.0``: every one), about one
    provider or all."""
    providers = f"\n    providerAddresses: [{provider!r}]" if provider else ""
    params = ", ".join(f"{k}: {v!r}" for k, v in parameters.items())
    return f"""\
configVersion: v3.0
scope: service
key: {RULE_KEY}
enabled: true
configs:
  - side: consumer
    addresses: [{consumer!r}]{providers}
    parameters: {{{params}}}
"""


async def test_consumer_weight_configurator_splits_traffic(fleet: Fleet) -> None:
    b, c = fleet.at(fleet.b), fleet.at(fleet.c)
    await fleet.write(
        SERVICE_CONFIGURATORS,
        consumer_configurator(c, weight="300"),
        effect=lambda: fleet.hosts_are(fleet.weights(100, 300)),
    )
    await fleet.split(2000, 75.0)
    await fleet.write(
        SERVICE_CONFIGURATORS,
        consumer_configurator(b, weight="900"),  # edited: the other provider, another weight
        effect=lambda: fleet.hosts_are(fleet.weights(900, 100)),
    )
    await fleet.split(200, 10.0)
    await fleet.delete(SERVICE_CONFIGURATORS, effect=lambda: fleet.hosts_are(fleet.weights(100, 100)))
    await fleet.split(200, 50.0)


async def test_consumer_disabled_configurator_takes_a_provider_out(fleet: Fleet) -> None:
    b, c = fleet.at(fleet.b), fleet.at(fleet.c)

    def disable(address: str) -> str:
        # Addressed to this consumer by its own host (AbstractConfigurator.configure: a consumer-side
        # rule applies where its address is the consumer's own or 0.0.0.0).
        return consumer_configurator(address, consumer="127.0.0.1", disabled="true")

    await fleet.write(SERVICE_CONFIGURATORS, disable(c), effect=lambda: fleet.hosts_are({b: 100}))
    assert await fleet.calls(100) == {"b": 100, "c": 0}
    await fleet.write(SERVICE_CONFIGURATORS, disable(b), effect=lambda: fleet.hosts_are({c: 100}))
    assert await fleet.calls(100) == {"b": 0, "c": 100}
    await fleet.delete(SERVICE_CONFIGURATORS, effect=lambda: fleet.hosts_are(fleet.weights(100, 100)))
    assert await fleet.calls(100) == {"b": 50, "c": 50}


async def test_consumer_timeout_configurator_bounds_the_call(fleet: Fleet) -> None:
    # The providers' URLs after configurators are the hosts' metadata at the consumer.
    async def every_host_has(key: str, value: str | None) -> bool:
        hosts = (await egress_cluster(fleet.a)).values()
        return len(hosts) == 2 and all(h["metadata"].get(key) == value for h in hosts)

    for text, key, ms in [
        (consumer_configurator(None, **{f"{SLOW}.timeout": "300"}), f"{SLOW}.timeout", 300),
        (consumer_configurator(None, timeout="600"), "timeout", 600),  # edited: the service's timeout
    ]:
        await fleet.write(SERVICE_CONFIGURATORS, text, effect=lambda k=key, v=str(ms): every_host_has(k, v))
        took, failure = await slow_call(fleet)
        log.info(
            "%s: %s=%d ms: the slow call failed after %.0f ms: %s",
            *(fleet.center.name, key, ms, took * 1000, failure),
        )
        assert isinstance(failure, DubboCallError), failure
        assert failure.status in (Status.SERVER_TIMEOUT, Status.CLIENT_TIMEOUT), failure
        assert abs(took * 1000 - ms) <= 50, (took, ms)
        assert await fleet.calls(20) == {"b": 10, "c": 10}  # a quick method is not cut short
    await fleet.delete(SERVICE_CONFIGURATORS, effect=lambda: every_host_has("timeout", None))
    took, failure = await slow_call(fleet)
    assert failure is None and took >= SLOW_S, (took, failure)


def provider_configurator(provider: str, **parameters: str) -> str:
    params = ", ".join(f"{k}: {v!r}" for k, v in parameters.items())
    return f"""\
configVersion: v3.0
scope: service
key: {RULE_KEY}
enabled: true
configs:
  - side: provider
    addresses: [{provider!r}]
    parameters: {{{params}}}
"""


async def test_provider_configurator_re_registers_the_provider(fleet: Fleet) -> None:
    zk = zk_of(fleet)
    c = fleet.at(fleet.c)

    def registered() -> dict[str, list[str]] | None:
        """c's node in ZooKeeper (None while it has not exactly one: re-registering)."""
        found = [p for netloc, p in leaves(zk) if netloc == c]
        return found[0] if len(found) == 1 else None

    published = await asyncio.to_thread(registered)
    assert published is not None and "weight" not in published

    async def node_weight(weight: str) -> bool:
        now = await asyncio.to_thread(registered)
        return now is not None and now.get("weight") == [weight]

    async def node_and_consumer(weight: int) -> bool:
        return await node_weight(str(weight)) and await fleet.hosts_are(fleet.weights(100, weight))

    # In force on the provider's sidecar, which registers again: ZooKeeper's node, then the consumer.
    await fleet.write(
        SERVICE_CONFIGURATORS,
        provider_configurator(c, weight="300"),
        on=fleet.c,
        effect=lambda: node_and_consumer(300),
    )
    await fleet.split(400, 75.0)
    await fleet.write(
        SERVICE_CONFIGURATORS,
        provider_configurator(c, weight="50"),
        on=fleet.c,
        effect=lambda: node_and_consumer(50),
    )
    await fleet.split(300, 100 * 50 / 150)

    async def as_published() -> bool:
        now = await asyncio.to_thread(registered)
        return now == published and await fleet.hosts_are(fleet.weights(100, 100))

    await fleet.delete(SERVICE_CONFIGURATORS, on=fleet.c, effect=as_published)
    await fleet.split(200, 50.0)


# ---------------------------------------------------------------------------------------------------
# Routers


def condition_rule(*conditions: str) -> str:
    lines = "".join(f"\n  - {c!r}" for c in conditions)
    return f"""\
configVersion: v3.0
scope: service
key: {SERVICE!r}
force: true
runtime: true
enabled: true
conditions:{lines}
"""


async def test_condition_router_sends_calls_to_one_provider_and_blocks(fleet: Fleet) -> None:
    # On one machine every sidecar is 127.0.0.1: the rules tell providers apart by port or address.
    await fleet.write(SERVICE_CONDITIONS, condition_rule(f"method = sayHi => port = {fleet.b.ingress}"))
    assert await fleet.calls(100) == {"b": 100, "c": 0}
    await fleet.write(SERVICE_CONDITIONS, condition_rule(f"method = sayHi => address = {fleet.at(fleet.c)}"))
    assert await fleet.calls(100) == {"b": 0, "c": 100}
    assert await fleet.calls(10, SLOW) == {"b": 5, "c": 5}  # the rule names sayHi only

    await fleet.write(SERVICE_CONDITIONS, condition_rule("method = sayHi => "))
    errors = await burst(fleet.a.egress, 10, "sayHi")
    assert len(errors) == 10
    for error in errors:
        assert isinstance(error, DubboCallError) and error.status == Status.SERVICE_NOT_FOUND, error
        # Named by the rule's key and the condition.
        assert f"{SERVICE}: condition 'method = sayHi => ' blocks the request" in error.message, error
    log.info("%s: the blocking rule answers: %s", fleet.center.name, errors[0])

    await fleet.delete(SERVICE_CONDITIONS)
    assert await fleet.calls(100) == {"b": 50, "c": 50}


def tag_rule(port: int) -> str:
    """A tag rule putting the provider on ``port`` of this machine in tag gray.

    Not ``127.0.0.1:<port>``: Dubbo's ``NetUtils.isValidV4Address`` is false for a loopback host, so
    ``matchIpRange`` matches it as IPv6, and an IPv4 pattern fails its format check (a Java
    consumer would tag nothing; see regproxy/governance/match.py).  An eight-group IPv6 pattern of
    ``*`` with a port is what singles out one loopback provider, in Dubbo as here."""
    return f"""\
configVersion: v3.0
force: false
enabled: true
key: {PROVIDER_APP}
tags:
  - name: gray
    addresses: ["[*:*:*:*:*:*:*:*]:{port}"]
"""


async def test_tag_router_sends_tagged_calls_to_the_tagged_provider(fleet: Fleet) -> None:
    gray = {"dubbo.tag": "gray"}
    await fleet.write(PROVIDER_TAGS, tag_rule(fleet.c.ingress))
    assert await fleet.calls(50, **gray) == {"b": 0, "c": 50}
    # Dubbo's TagStateRouter: a call without a tag never goes to an address of the rule.
    assert await fleet.calls(50) == {"b": 50, "c": 0}
    await fleet.write(PROVIDER_TAGS, tag_rule(fleet.b.ingress))
    assert await fleet.calls(50, **gray) == {"b": 50, "c": 0}
    assert await fleet.calls(50) == {"b": 0, "c": 50}
    await fleet.delete(PROVIDER_TAGS)
    # No rule and no provider tagged gray: the call falls back to the untagged providers.
    assert await fleet.calls(100, **gray) == {"b": 50, "c": 50}


# ---------------------------------------------------------------------------------------------------
# Malformed rules: refused, shown, counted, and the good version stays in force


def condition(body: str) -> str:
    return f"key: {SERVICE!r}\n{body}"  # quoted: the key ends with ":" (no group)


def conditions(*items: str) -> str:
    return condition(f"conditions: [{', '.join(map(repr, items))}]\n")


def tag(body: str) -> str:
    return f"key: {PROVIDER_APP}\n{body}"


def configurators(body: str) -> str:
    return f"key: {RULE_KEY}\n{body}"


def item(fields: str) -> str:
    return configurators(f"configs: [{{side: consumer, {fields}}}]\n")


ONE = "conditions: ['method = sayHi => port = 1']\n"
GRAY = "tags: [{name: gray, addresses: ['127.0.0.1:1']}]\n"
WEIGHT = "configs: [{side: consumer, parameters: {weight: '300'}}]\n"

# (what, text, reason) per kind: from the refusal lists in the docstrings of
# regproxy/governance/condition.py, tag.py and configurator.py, and fields.py, which all three read with.
MALFORMED_BY_KIND: dict[str, list[tuple[str, str, str]]] = {
    CONDITION_ROUTER: [
        ("unclosed flow list", "conditions: ['method = sayHi => port = 1'\n", "yaml"),
        ("bad indentation", condition("conditions:\n  - 'a = 1 => b = 1'\n - 'a = 2 => b = 2'\n"), "yaml"),
        ("misspelt conditions", condition("conditons: ['method = sayHi => port = 1']\n"), "unknown-field"),
        ("v3.1 draft field ratio", condition(
            "configVersion: v3.1\nconditions:\n  - from: {match: 'method = sayHi'}\n"
            "    to: [{match: 'port = 1'}]\n    ratio: 20\n"), "unknown-field"),
        ("enabled not a boolean", condition("enabled: yes-please\n" + ONE), "type"),
        ("force not a boolean", condition("force: 'maybe'\n" + ONE), "type"),
        ("conditions not a list", condition("conditions: 'method = sayHi => port = 1'\n"), "type"),
        ("key a number", "key: 123\n" + ONE, "type"),
        ("unknown version", condition("configVersion: v4.0\n" + ONE), "version"),
        ("unknown scope", condition("scope: global\n" + ONE), "scope"),
        ("no =>", conditions("method = sayHi"), "condition"),
        ("two =>", conditions("method = sayHi => port = 1 => port = 2"), "condition"),
        ("key without value", conditions("host => port = 1"), "condition"),
        ("stray operator", conditions("method = = sayHi => port = 1"), "condition"),
        ("argument field", conditions("arguments[0].name = bob => port = 1"), "condition"),
        ("open range", conditions("method = sayHi => port = 101~"), "condition"),
        ("range low > high", conditions("method = sayHi => port = 200~100"), "condition"),
        ("attachment on the then side", conditions("method = sayHi => attachments[a] = 1"), "condition"),
        ("no conditions", conditions(), "condition"),
    ],
    TAG_ROUTER: [
        ("unclosed flow mapping", "tags: [{name: gray\n", "yaml"),
        ("misspelt tags", tag("tagz: [{name: gray, addresses: ['127.0.0.1:1']}]\n"), "unknown-field"),
        ("misspelt addresses", tag("tags: [{name: gray, adresses: ['127.0.0.1:1']}]\n"), "unknown-field"),
        ("version v3.1", tag("configVersion: v3.1\n" + GRAY), "version"),
        ("match before v3.0", tag(
            "configVersion: v2.7\ntags: [{name: gray, match: [{key: env, value: {exact: gray}}]}]\n"),
         "version"),
        ("tag without name", tag("tags: [{addresses: ['127.0.0.1:1']}]\n"), "missing-field"),
        ("v3.0 tag without addresses or match", tag("configVersion: v3.0\ntags: [{name: gray}]\n"),
         "missing-field"),
        ("empty address", tag("tags: [{name: gray, addresses: ['']}]\n"), "value"),
        ("CIDR prefix not a number", tag("tags: [{name: gray, addresses: ['10.0.0.0/x']}]\n"), "address"),
        ("force not a boolean", tag("force: sometimes\n" + GRAY), "type"),
        ("tags not a list", tag("tags: gray\n"), "type"),
        ("priority not an integer", tag("priority: high\n" + GRAY), "type"),
    ],
    CONFIGURATORS: [
        ("unclosed flow mapping", "configs: [{parameters: {weight: '300'}\n", "yaml"),
        ("emptied node", "", "type"),
        ("unknown item field", item("bogus: 1, parameters: {weight: '300'}"), "unknown-field"),
        ("misspelt configs", configurators("config: [{side: consumer}]\n"), "unknown-field"),
        ("version v3.1", configurators("configVersion: v3.1\n" + WEIGHT), "version"),
        ("match before v3.0", configurators(
            "configVersion: v2.7\n"
            "configs: [{side: consumer, match: {app: {exact: web}}, parameters: {weight: '3'}}]\n"),
         "version"),
        ("unknown scope", configurators("scope: global\n" + WEIGHT), "value"),
        ("no key", WEIGHT, "missing-field"),
        ("no configs", configurators(""), "missing-field"),
        ("empty configs", configurators("configs: []\n"), "value"),
        ("no parameters", configurators("configs: [{side: consumer}]\n"), "missing-field"),
        ("unknown side", configurators("configs: [{side: both, parameters: {weight: '300'}}]\n"), "value"),
        ("bad address", item("addresses: ['10.0.0.1:x:y'], parameters: {weight: '300'}"), "address"),
        ("float parameter", item("parameters: {weight: 1.5}"), "type"),
        ("priority not an integer", item("parameters: {weight: '300', priority: high}"), "value"),
        ("& in a parameter", item("parameters: {weight: '3&x=1'}"), "value"),
        ("not an override URL", '["dubbo://10.0.0.1/com.x.Svc?weight=300"]\n', "url"),
        ("enabled not a boolean", configurators("enabled: nah\n" + WEIGHT), "type"),
    ],
}  # fmt: skip
RULE_OF = {
    CONDITION_ROUTER: SERVICE_CONDITIONS,
    TAG_ROUTER: PROVIDER_TAGS,
    CONFIGURATORS: SERVICE_CONFIGURATORS,
}


def error_count(m: Any, origin: str, reason: str) -> float:
    try:
        return value(m, "regproxy_rule_errors_total", source=origin, reason=reason)
    except KeyError:
        return 0.0


async def test_malformed_rules_are_refused_and_change_nothing(fleet: Fleet) -> None:
    assert sum(map(len, MALFORMED_BY_KIND.values())) >= 30
    # A good rule of each kind in force: the split b 1 : c 3; sayHi is left to both by the condition
    # rule, and to both by the tag rule (its one address is nobody's).
    good = {
        SERVICE_CONFIGURATORS: consumer_configurator(fleet.at(fleet.c), weight="300"),
        SERVICE_CONDITIONS: condition_rule(f"method = {SLOW} => port = {fleet.b.ingress}"),
        PROVIDER_TAGS: tag_rule(1),
    }
    for rule_id, text in good.items():
        await fleet.write(rule_id, text)
    await wait_for(lambda: fleet.hosts_are(fleet.weights(100, 300)), 2, "the good weight")
    in_force = (await rules(fleet.a))[0]

    for suffix, what, text, reason in [
        (k, *case) for k, cases in MALFORMED_BY_KIND.items() for case in cases
    ]:
        rule_id = RULE_OF[suffix]
        before = error_count(await fleet.a.metrics(), fleet.center.name, reason)
        version = await fleet.center.write(rule_id, text)

        async def refused(rule_id: str = rule_id, version: str = version) -> dict[str, Any] | None:
            found = (await rules(fleet.a))[1].get(rule_id)
            return found if found is not None and found["version"] == version else None

        await wait_for(refused, 5, f"{what} ({suffix}) refused", detail=fleet.a.log_tail)
        shown = await refused()
        assert shown is not None and shown["reason"] == reason and shown["message"], (what, shown)
        after = error_count(await fleet.a.metrics(), fleet.center.name, reason)
        assert after == before + 1, (what, reason, before, after)
        assert (await rules(fleet.a))[0][rule_id] == in_force[rule_id], what  # the good one stays

    # Every kind's last malformed text is still in the config center: traffic is as the good rules say.
    assert await egress_hosts(fleet.a) == fleet.weights(100, 300)
    await fleet.split(400, 75.0)
    assert await fleet.calls(10, SLOW) == {"b": 10, "c": 0}
    assert (await rules(fleet.a))[0] == in_force


# ---------------------------------------------------------------------------------------------------
# Nacos: the same rules as dataIds in group "dubbo"


@pytest_asyncio.fixture(loop_scope="module")
async def nacos_fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with (
        NacosDouble() as double,
        open_fleet(f"nacos://{double.address}", NacosCenter(double), tmp_path) as fleet,
    ):
        yield fleet


async def test_nacos_weight_configurator_and_condition_router(nacos_fleet: Fleet) -> None:
    fleet = nacos_fleet
    c = fleet.at(fleet.c)
    await fleet.write(
        SERVICE_CONFIGURATORS,
        consumer_configurator(c, weight="300"),
        effect=lambda: fleet.hosts_are(fleet.weights(100, 300)),
    )
    await fleet.split(400, 75.0)
    await fleet.write(
        SERVICE_CONFIGURATORS,
        consumer_configurator(c, weight="100", disabled="true"),
        effect=lambda: fleet.hosts_are({fleet.at(fleet.b): 100}),
    )
    assert await fleet.calls(50) == {"b": 50, "c": 0}
    await fleet.delete(SERVICE_CONFIGURATORS, effect=lambda: fleet.hosts_are(fleet.weights(100, 100)))
    assert await fleet.calls(100) == {"b": 50, "c": 50}

    await fleet.write(SERVICE_CONDITIONS, condition_rule(f"method = sayHi => port = {fleet.c.ingress}"))
    assert await fleet.calls(100) == {"b": 0, "c": 100}
    await fleet.write(SERVICE_CONDITIONS, condition_rule(f"method = sayHi => port = {fleet.b.ingress}"))
    assert await fleet.calls(100) == {"b": 100, "c": 0}
    await fleet.delete(SERVICE_CONDITIONS)
    assert await fleet.calls(100) == {"b": 50, "c": 50}
