"""Registries a request brought in (named in its body, not configured): kept while a publication or
subscription uses them, closed when nothing does or when they never connect, and counted for
readiness only once connected (issue 14, item 3). Over in-process registries, as test_discovery.py;
tests/test_body_registries.py does it with real processes and ZooKeeper.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import regproxy.discovery.coordinator
from regproxy.discovery import Discovery
from regproxy.registry.base import CONNECTED, CONNECTING, STOPPED, RegistryUnavailable
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import Subscription
from tests.test_discovery import IFACE, REG_A, REG_B, SPEC, _fresh_stores, new_discovery  # noqa: F401

SUB = Subscription(IFACE, "1.0.0", "g")


class Unreachable(MemoryRegistry):
    """A registry whose server never answers: it stays CONNECTING until stopped."""

    async def start(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _short_connect_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regproxy.discovery.coordinator, "CONNECT_WAIT_S", 0.05)


def with_unreachable(d: Discovery, host: str, made: dict[str, MemoryRegistry]) -> None:
    """Registries at ``host`` never connect; the others are the memory ones of new_discovery."""
    memory: Callable[[RegistryURL], object] = d._factory

    def make(url: RegistryURL) -> object:
        if url.hosts[0].host == host:
            reg = made[host] = Unreachable(name=host)
            return reg
        return memory(url)

    d._factory = make  # type: ignore[assignment]


@pytest.fixture
async def disc() -> AsyncIterator[tuple[Discovery, dict[str, MemoryRegistry]]]:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    with_unreachable(d, "b", made)
    await d.start()
    yield d, made
    await d.stop()


@pytest.mark.parametrize("op", ["publish", "subscribe"])
async def test_a_registry_that_never_connects_is_closed_and_not_counted(
    disc: tuple[Discovery, dict[str, MemoryRegistry]], op: str
) -> None:
    d, made = disc
    with pytest.raises(RegistryUnavailable):
        if op == "publish":
            await d.publish(SPEC, REG_B)
        else:
            await d.subscribe(SUB, REG_B)
    assert made["b"].state == STOPPED  # stopped: a ZooKeeper client would stop retrying
    assert list(d.registries) == [REG_A.to_url(redact=False)]
    assert d.ready_states() == {"memory://a": CONNECTED} and d.registry_states() == {"memory://a": CONNECTED}
    assert not d.publications and not d.subscriptions


async def test_a_configured_registry_that_never_connects_is_kept_and_counted(tmp_path: Path) -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A, REG_B])
    with_unreachable(d, "b", made)
    await d.start()
    try:
        with pytest.raises(RegistryUnavailable):
            await d.subscribe(SUB, REG_B)
        assert made["b"].state == CONNECTING  # the operator's registry: kept, and it keeps trying
        # ... and it makes the sidecar unready, as it should.
        assert d.ready_states() == {"memory://a": CONNECTED, "memory://b": CONNECTING}
    finally:
        await d.stop()


async def test_a_registry_a_request_brought_in_lives_while_used(tmp_path: Path) -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    try:
        await d.subscribe(SUB, REG_B)
        await d.publish(SPEC, REG_B)
        assert d.ready_states() == {"memory://a": CONNECTED, "memory://b": CONNECTED}
        # Connected once and used: it counts, down or not (like a configured one).
        made["b"].simulate_down()
        assert d.ready_states()["memory://b"] != CONNECTED
        made["b"].simulate_up()
        await d.unsubscribe(SUB, REG_B)
        assert "memory://b" in d.registry_states()  # the publication still uses it
        await d.unpublish(SPEC, REG_B)
        assert made["b"].state == STOPPED and d.registry_states() == {"memory://a": CONNECTED}
        # The configured one stays, used or not.
        await d.subscribe(SUB)
        await d.unsubscribe(SUB)
        assert d.registry_states() == {"memory://a": CONNECTED}
    finally:
        await d.stop()


async def test_a_restored_registry_counts_only_once_connected(tmp_path: Path) -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A], tmp_path)
    await d.start()
    await d.subscribe(SUB, REG_B)
    await d.stop()
    # Restarted, and b does not answer: it is there (the subscription waits for it), not counted.
    made2: dict[str, MemoryRegistry] = {}
    d2 = new_discovery(made2, [REG_A], tmp_path)
    with_unreachable(d2, "b", made2)
    await d2.start()
    try:
        assert d2.registry_states() == {"memory://a": CONNECTED, "memory://b": CONNECTING}
        assert d2.ready_states() == {"memory://a": CONNECTED}
        assert SUB.cluster_name in d2.subscriptions
    finally:
        await d2.stop()
