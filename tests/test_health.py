"""Health checking: outlier ejection, active heartbeat checks of upstream hosts, and the provider
side's app check that unpublishes a dead application and publishes it again when it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

import pytest

from regproxy.config import Config, ConfigError
from regproxy.config.health import ActiveSettings, AppCheckSettings, HealthSettings, OutlierSettings
from regproxy.demo.provider import ECHO_SERVICE, GREETINGS_SERVICE, Provider
from regproxy.discovery import Discovery, PublishSpec, ingress_table
from regproxy.dubbo.encode import readonly_event
from regproxy.health import HostHealth, NoHealth
from regproxy.health.active import ActiveChecker
from regproxy.health.app import AppChecker, AppWatch
from regproxy.health.hosts import Health, egress_view
from regproxy.health.outlier import OutlierDetector
from regproxy.health.rounds import Rounds
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL
from regproxy.routing import Cluster, Host, RoutingTable, TableHolder
from tests.ports import free_port
from tests.wait import wait_for

# ---------------------------------------------------------------------------------------------------
# settings


def test_settings_defaults_and_config_section() -> None:
    s = HealthSettings()
    assert (s.active.interval_s, s.active.timeout_s, s.active.unhealthy_threshold) == (5, 1, 3)
    assert (s.active.healthy_threshold, s.active.enabled) == (2, True)
    assert (s.outlier.consecutive_failures, s.outlier.base_ejection_s) == (5, 10)
    assert (s.outlier.max_ejection_s, s.outlier.max_ejection_percent) == (300, 50)
    assert (s.app_check.interval_s, s.app_check.timeout_s, s.app_check.failures) == (2, 1, 2)
    parsed = Config.from_dict({"health": {"active": {"interval_s": 0.5, "enabled": False}, "app_check": {}}})
    assert parsed.health.active == ActiveSettings(interval_s=0.5, enabled=False)
    assert parsed.health.outlier == OutlierSettings()
    assert Config.from_dict({}).health == s
    for bad, where in [
        ({"activ": {}}, "health.activ"),
        ({"active": {"intervall_s": 1}}, "health.active.intervall_s"),
        ({"outlier": {"consecutive_failures": 2.5}}, "health.outlier.consecutive_failures"),
        ({"outlier": {"max_ejection_percent": 150}}, "health.outlier.max_ejection_percent"),
        ({"app_check": {"timeout_s": -1}}, "health.app_check.timeout_s"),
        ({"app_check": {"enabled": "yes"}}, "health.app_check.enabled"),
    ]:
        # One validator, the config model's: the key path names the bad key.
        with pytest.raises(ConfigError, match=where.replace(".", r"\.") + ": "):
            Config.from_dict({"health": bad})


def test_no_health_is_a_host_health() -> None:
    h: HostHealth = NoHealth()
    h.report("a:1", False)
    assert h.available("a:1")


# ---------------------------------------------------------------------------------------------------
# outlier detection (a fake clock: every period is exact)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detector(
    clock: Clock, clusters: Iterable[Iterable[str]] | None = None, **kw: float
) -> tuple[OutlierDetector, list[str]]:
    ejected: list[str] = []
    sets = [frozenset(c) for c in clusters] if clusters is not None else None

    def clusters_of(address: str) -> list[frozenset[str]]:
        return [c for c in sets or () if address in c]

    settings = OutlierSettings(
        **{"consecutive_failures": 3, "base_ejection_s": 10, "max_ejection_s": 25, **kw}  # type: ignore[arg-type]
    )
    return OutlierDetector(
        settings, clock, clusters_of if sets is not None else None, ejected.append
    ), ejected


def fail(d: OutlierDetector, address: str, n: int) -> None:
    for _ in range(n):
        d.report(address, False)


def test_outlier_ejects_after_consecutive_failures_and_returns_after_the_period() -> None:
    clock = Clock()
    d, ejected = detector(clock)
    fail(d, "a:1", 2)
    d.report("a:1", True)  # a success breaks the streak
    fail(d, "a:1", 2)
    assert d.available("a:1") and not ejected
    fail(d, "a:1", 1)
    assert not d.available("a:1") and ejected == ["a:1"] and d.ejections == 1
    assert d.describe("a:1")["ejected"] and d.describe("a:1")["ejections"] == 1
    fail(d, "a:1", 10)  # requests sent anyway while ejected do not extend it
    clock.now += 9.9
    assert not d.available("a:1")
    clock.now += 0.1
    assert d.available("a:1")
    assert d.describe("a:1") | {"ejected_until": None} == {
        "ejected": False, "ejected_until": None, "ejected_for_s": None, "ejections": 1,
        "consecutive_failures": 0,
    }  # fmt: skip
    assert d.available("b:2")  # never reported: available


def test_outlier_period_grows_and_is_capped() -> None:
    clock = Clock()
    d, _ = detector(clock)
    periods = []
    for _ in range(4):
        fail(d, "a:1", 3)
        start = clock.now
        while not d.available("a:1"):
            clock.now += 0.5
        periods.append(clock.now - start)
        clock.now += 1  # fails again soon after coming back
    assert periods == [10, 20, 25, 25]  # base × n, capped at max_ejection_s
    assert d.ejections == 4
    # In for max_ejection_s after coming back: the next ejection starts from the base period again.
    clock.now += 25
    fail(d, "a:1", 3)
    assert not d.available("a:1")
    clock.now += 10
    assert d.available("a:1")


def test_outlier_respects_max_ejection_percent_per_cluster() -> None:
    clock = Clock()
    hosts = [f"h:{i}" for i in range(4)]
    d, ejected = detector(clock, clusters=[hosts, ["h:0", "solo:1"], ["alone:1"]])
    for h in hosts:
        fail(d, h, 3)
    # h:0 is also in a two-host cluster: 1 of 2 is 50 %; then h:1 makes 2 of 4; h:2, h:3 would exceed.
    assert ejected == ["h:0", "h:1"]
    assert d.refused == 2 and d.available("h:2") and d.available("h:3")
    fail(d, "solo:1", 3)  # h:0 is already out of that cluster
    fail(d, "alone:1", 5)  # a one-host cluster is never emptied
    assert d.available("solo:1") and d.available("alone:1")
    # After the ejections end, the next failure of a host at the threshold can eject it.
    clock.now += 10
    d.report("h:2", False)
    assert ejected[-1] == "h:2" and not d.available("h:2")
    # Unknown hosts (not in any cluster) are not limited.
    fail(d, "x:1", 3)
    assert not d.available("x:1")


def test_outlier_forgets_hosts_that_left() -> None:
    clock = Clock()
    d, _ = detector(clock)
    fail(d, "a:1", 3)
    fail(d, "b:1", 1)
    d.retain({"c:1"})
    assert d.known() == set() and d.available("a:1")


# ---------------------------------------------------------------------------------------------------
# active checks, against real sockets

# A timeout within the interval, as in production (5 s / 1 s): rounds then start every interval.
FAST = ActiveSettings(interval_s=0.15, timeout_s=0.1, unhealthy_threshold=3, healthy_threshold=2)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider(name="p1")
    await p.start("127.0.0.1", 0)
    yield p
    await p.close(grace=0)


async def kill(p: Provider) -> None:
    """A crashed provider, as its peers see it: the port refuses, the connections reset."""
    assert p.server is not None
    p.server.close()
    p.abort_connections()
    await p.server.wait_closed()


@pytest.mark.slow
async def test_active_check_follows_the_demo_provider_down_and_up(provider: Provider) -> None:
    port = provider.port
    address = f"127.0.0.1:{port}"
    changes: list[tuple[str, bool]] = []
    flipped_in: list[int] = []  # the round (counted from the checker's start) of each change

    def changed(a: str, ok: bool) -> None:
        changes.append((a, ok))
        flipped_in.append(checker.rounds + 1)  # called in the round, which is counted once done

    checker = ActiveChecker(FAST, lambda: [address], on_change=changed)
    checker.start()
    try:
        await wait_for(lambda: checker.rounds >= 3, 2, "three check rounds", interval=0.01)
        assert checker.available(address) and checker.describe(address)["connected"]
        assert changes == []
        # Counted in rounds, not seconds (a loaded machine stretches those): down at the threshold's
        # failed check, the round under way at the kill having seen it or not.
        killed_after = checker.rounds
        await kill(provider)
        await wait_for(lambda: not checker.available(address), 5, "the host down", interval=0.01)
        assert changes == [(address, False)]
        assert flipped_in[0] - killed_after in (FAST.unhealthy_threshold, FAST.unhealthy_threshold + 1)
        assert checker.describe(address)["last_error"]
        restarted_after = checker.rounds
        await provider.start("127.0.0.1", port)
        await wait_for(lambda: checker.available(address), 5, "the host up", interval=0.01)
        assert changes == [(address, False), (address, True)]
        assert flipped_in[1] - restarted_after in (FAST.healthy_threshold, FAST.healthy_threshold + 1)
    finally:
        await checker.stop()


async def test_active_check_closed_port_and_silent_server() -> None:
    closed = f"127.0.0.1:{free_port()}"
    accepted: list[asyncio.Transport] = []

    class Silent(asyncio.Protocol):  # accepts, reads, never answers
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)  # type: ignore[arg-type]

    server = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
    silent = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    checker = ActiveChecker(FAST, lambda: [closed, silent])
    try:
        for i in range(3):
            assert checker.available(closed) and checker.available(silent), i
            await checker.check_once()
        assert not checker.available(closed) and not checker.available(silent)
        assert checker.describe(silent)["last_error"] == "timed out"
        assert "refused" in checker.describe(closed)["last_error"].lower()
        # Each failed check drops its connection: the silent server saw one per check.
        assert len(accepted) == 3
        # With the checker's own loop: down in its third round, the third timeout.
        flipped_in: list[int] = []
        fresh = ActiveChecker(
            FAST, lambda: [silent], on_change=lambda a, ok: flipped_in.append(fresh.rounds + 1)
        )
        fresh.start()
        await wait_for(lambda: not fresh.available(silent), 5, "the silent host down", interval=0.01)
        await fresh.stop()
        assert flipped_in == [FAST.unhealthy_threshold]
    finally:
        await checker.stop()
        server.close()
        for t in accepted:
            t.abort()
        await server.wait_closed()


async def test_active_check_readonly_event_and_hosts_that_leave(provider: Provider) -> None:
    address = f"127.0.0.1:{provider.port}"
    hosts = [address, "127.0.0.1:1"]
    checker = ActiveChecker(FAST, lambda: hosts)
    try:
        await checker.check_once()
        assert checker.available(address)
        (conn,) = provider.connections
        conn.send(readonly_event(0))  # the provider says it is shutting down
        await wait_for(lambda: not checker.available(address), 1, "the read-only host down")
        hosts[:] = [address]  # 127.0.0.1:1 left the table
        await checker.check_once()
        assert checker.known() == {address}
        hosts[:] = []
        await checker.check_once()
        assert checker.known() == set() and checker.available(address)  # forgotten
    finally:
        await checker.stop()


# ---------------------------------------------------------------------------------------------------
# the combined HostHealth over an egress table


def table(*clusters: tuple[str, list[str]]) -> RoutingTable:
    return RoutingTable(
        clusters=[Cluster(name=n, hosts=tuple(Host(address=a) for a in hs)) for n, hs in clusters]
    )


async def test_health_combines_active_and_outlier_over_the_egress_table(provider: Provider) -> None:
    good = f"127.0.0.1:{provider.port}"
    dead = f"127.0.0.1:{free_port()}"
    holder = TableHolder(table(("svc", [good, dead]), ("other", [good])))
    hosts, clusters_of = egress_view(holder)
    assert sorted(hosts()) == sorted([good, dead])
    assert sorted(len(c) for c in clusters_of(good)) == [1, 2]
    settings = HealthSettings(
        active=FAST, outlier=OutlierSettings(consecutive_failures=2, base_ejection_s=0.3, max_ejection_s=1)
    )
    ejected: list[str] = []
    health = Health(settings, hosts, clusters_of, on_eject=ejected.append)
    h: HostHealth = health
    health.start()
    try:
        await wait_for(lambda: not h.available(dead), 2, "the dead host down")  # failed its heartbeats
        assert h.available(good)
        # `good` is the only host of "other": the max-ejection share keeps it in.
        h.report(good, False)
        h.report(good, False)
        assert h.available(good) and health.ejections == 0
        holder.swap(table(("svc", [good, dead]), ("other", [good, dead])))
        h.report(good, False)
        h.report(good, False)
        assert not h.available(good) and health.ejections == 1 and ejected == [good]
        view = health.describe()
        assert view[good]["healthy"] and view[good]["ejected"] and view[good]["ejections"] == 1
        assert not view[dead]["healthy"] and not view[dead]["available"]
        assert set(view[good]) >= {
            "healthy",
            "ejected_until",
            "ejections",
            "consecutive_failures",
            "available",
        }
        await wait_for(lambda: h.available(good), 1, "the ejected host back")  # after the ejection period
        holder.swap(table(("svc", [good])))  # dead left the table
        await wait_for(lambda: dead not in health.describe(), 2, "the dead host forgotten")
    finally:
        await health.stop()


# ---------------------------------------------------------------------------------------------------
# the provider side: app check + Discovery on the memory registry

APP_FAST = AppCheckSettings(interval_s=0.1, timeout_s=0.2, failures=2)
REG = RegistryURL.parse("zookeeper://a:1")


@pytest.fixture
async def disc() -> AsyncIterator[tuple[Discovery, MemoryRegistry]]:
    MemoryRegistry.reset_all()
    made: dict[str, MemoryRegistry] = {}

    def make(url: RegistryURL) -> MemoryRegistry:
        made["a"] = MemoryRegistry(name="a")
        return made["a"]

    static = RoutingTable()
    d = Discovery(
        registry_urls=[REG], factory=make, egress=TableHolder(static),
        ingress=TableHolder(ingress_table()), static_table=static, advertise_ip="10.1.2.3",
        ingress_port=20882,
    )  # fmt: skip
    await d.start()
    yield d, made["a"]
    await d.stop()


def spec(interface: str, port: int) -> PublishSpec:
    return PublishSpec(interface=interface, port=port, methods=("m",), application="app")


async def test_app_checker_calls_down_and_up_once(provider: Provider) -> None:
    port = provider.port
    calls: list[str] = []

    async def down() -> None:
        calls.append("down")

    async def up() -> None:
        calls.append("up")

    checker = AppChecker(APP_FAST, f"127.0.0.1:{port}", down, up)
    try:
        await checker.check_once()
        await kill(provider)
        for _ in range(5):
            await checker.check_once()
        assert calls == ["down"] and not checker.up
        await provider.start("127.0.0.1", port)
        for _ in range(3):
            await checker.check_once()
        assert calls == ["down", "up"] and checker.up
    finally:
        await checker.stop()


async def test_killed_provider_is_unpublished_and_republished(
    provider: Provider, disc: tuple[Discovery, MemoryRegistry]
) -> None:
    d, reg = disc
    port = provider.port
    other = Provider(name="p2")
    await other.start("127.0.0.1", 0)
    await d.publish(spec(GREETINGS_SERVICE, port))
    await d.publish(spec(ECHO_SERVICE, other.port))  # the same app, another port
    watch = AppWatch(APP_FAST, d)
    watch.start()
    try:
        await wait_for(lambda: len(watch.checkers) == 2, 2, "a checker per port")
        await kill(provider)
        took = await wait_for(lambda: not reg.nodes(GREETINGS_SERVICE), 5, "the dead app unpublished")
        assert took < 5
        assert d.suspended.keys() == {port}
        assert len(reg.nodes(ECHO_SERVICE)) == 1  # its port still answers: it stays published
        assert GREETINGS_SERVICE in {p.spec.interface for p in d.publications.values()}  # desired state kept
        # A registry reconnect must not bring it back while the app is down.
        reg.simulate_down()
        reg.simulate_up()
        await asyncio.sleep(0.05)
        assert not reg.nodes(GREETINGS_SERVICE)
        await provider.start("127.0.0.1", port)
        await wait_for(lambda: len(reg.nodes(GREETINGS_SERVICE)) == 1, 5, "the app published again")
        assert not d.suspended
        assert watch.describe()[str(port)]["up"]
    finally:
        await watch.stop()
        await other.close(grace=0)


async def test_drain_wins_over_resume_and_pub_while_suspended(
    provider: Provider, disc: tuple[Discovery, MemoryRegistry]
) -> None:
    d, reg = disc
    port = provider.port
    await d.publish(spec(GREETINGS_SERVICE, port))
    assert await d.suspend_publications("test", port=port) == 1
    assert not reg.nodes(GREETINGS_SERVICE)
    # A /pub for a suspended port is kept, not registered; resuming registers both.
    await d.publish(spec(ECHO_SERVICE, port))
    assert not reg.nodes(ECHO_SERVICE)
    assert await d.resume_publications(port=port) == 2
    assert len(reg.nodes(GREETINGS_SERVICE)) == 1 and len(reg.nodes(ECHO_SERVICE)) == 1
    # Draining: a resume afterwards publishes nothing.
    await d.suspend_publications("test")
    await d.withdraw_all()
    assert await d.resume_publications() == 0
    assert not reg.nodes(GREETINGS_SERVICE) and not reg.nodes(ECHO_SERVICE) and not d.suspended


# ---------------------------------------------------------------------------------------------------
# the rounds every health task runs on: a failing round is logged once, not every interval


async def test_rounds_log_each_distinct_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "regproxy.health.rounds")
    a, b = ValueError("a"), KeyError("b")
    outcomes: list[Exception | None] = [a, a, b, a, None, a, a]
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls <= len(outcomes) and (exc := outcomes[calls - 1]) is not None:
            raise exc

    rounds = Rounds("test-rounds", "test", work, 0.001)
    rounds.start()
    rounds.start()  # already running: no second task
    try:
        await wait_for(lambda: calls > len(outcomes), 2, "every outcome played")
    finally:
        await rounds.stop()
        await rounds.stop()
    assert not rounds.running
    logged = [r.exc_info[1] for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    # "a" again is news only after a good round; each logged with its traceback.
    assert [repr(e) for e in logged] == [repr(ValueError("a")), repr(KeyError("b")), repr(ValueError("a"))]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 3  # the repeats, still there


async def test_outlier_sweep_logs_what_it_swallows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "regproxy.health")
    reads = 0

    def broken_hosts() -> list[str]:
        nonlocal reads
        reads += 1
        raise RuntimeError("the table is broken")

    health = Health(HealthSettings(active=ActiveSettings(enabled=False)), broken_hosts)
    health._sweeper.interval_s = 0.01  # every 1 s at the least, for real
    health.start()
    try:
        await wait_for(lambda: reads >= 5, 2, "five sweeps")
    finally:
        await health.stop()
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "outlier sweep" in record.getMessage() and "the table is broken" in caplog.text
