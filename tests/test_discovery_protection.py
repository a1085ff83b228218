"""Empty-provider protection as discovery applies it (regproxy/discovery/protection.py), over the
in-memory registry so every step can be staged; tests/test_registry_contract.py runs the same policy
against ZooKeeper, the Nacos double and memory:// through a whole sidecar.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regproxy.discovery import Discovery
from regproxy.discovery.protection import DEFAULT_HOLD_S, serves
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.url import Subscription
from tests.test_discovery import REG_A, _fresh_stores, new_discovery, remote, settle  # noqa: F401
from tests.wait import wait_for

HOLD_S = 0.3
SUB = Subscription("com.x.Svc", "1.0.0", "g")
CLUSTER = SUB.cluster_name
KEY = REG_A.to_url(redact=False)


@pytest.fixture
async def disc() -> AsyncIterator[tuple[Discovery, MemoryRegistry]]:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    d.protection.hold_s = HOLD_S
    await d.start()
    yield d, made["a"]
    await d.stop()


def hosts(d: Discovery) -> set[str]:
    cluster = d.egress.current.clusters.get(CLUSTER)
    return {h.address for h in cluster.hosts} if cluster else set()


def test_empty_means_no_provider_the_subscription_would_use() -> None:
    assert serves(SUB, [remote(1)])
    assert not serves(SUB, [])
    assert not serves(SUB, [remote(2, version="2.0.0"), remote(3, group="other")])


def test_the_default_hold_is_the_config_default() -> None:
    from regproxy.config import Config

    assert Config().discovery.empty_protection_s == DEFAULT_HOLD_S


async def test_a_list_left_with_other_versions_only_is_held_then_applied_as_last_reported(
    disc: tuple[Discovery, MemoryRegistry],
) -> None:
    """Empty in Dubbo's sense: no provider this subscription would use, though the interface still
    has some. The list applied when the hold runs out is the last one reported meanwhile."""
    d, reg = disc
    reg.set_provider(remote(1))
    reg.set_provider(remote(2, version="2.0.0"))
    await d.subscribe(SUB)
    st = d.subscriptions[CLUSTER]
    reg.remove_provider(remote(1))
    await wait_for(lambda: KEY in st.held, 2, "the hold to begin")
    assert hosts(d) == {"10.9.9.9:1"}
    reg.set_provider(remote(3, version="3.0.0"))  # still nothing for 1.0.0: the hold goes on
    await wait_for(lambda: len(st.held[KEY].pending) == 2, 2, "the newer list held back")
    assert hosts(d) == {"10.9.9.9:1"} and {u.port for u in st.providers[KEY]} == {1, 2}
    await wait_for(lambda: not hosts(d), 2, "the list applied once the hold ran out")
    assert {u.port for u in st.providers[KEY]} == {2, 3} and not st.held
    assert d.event_counts()["empty_holds"] == 1


async def test_unsubscribing_during_a_hold_ends_it(disc: tuple[Discovery, MemoryRegistry]) -> None:
    d, reg = disc
    reg.set_provider(remote(1))
    await d.subscribe(SUB)
    st = d.subscriptions[CLUSTER]
    reg.remove_provider(remote(1))
    await wait_for(lambda: KEY in st.held, 2, "the hold to begin")
    hold = st.held[KEY]
    await d.unsubscribe(SUB)
    assert hold.timer.cancelled() and not st.held
    assert CLUSTER not in d.egress.current.clusters


async def test_hold_zero_applies_the_empty_list_with_the_event(
    disc: tuple[Discovery, MemoryRegistry],
) -> None:
    d, reg = disc
    d.protection.hold_s = 0
    reg.set_provider(remote(1))
    await d.subscribe(SUB)
    reg.remove_provider(remote(1))
    await settle()  # the memory registry delivers on the next loop iterations
    assert hosts(d) == set() and not d.subscriptions[CLUSTER].held


async def test_cached_providers_are_held_when_the_registry_answers_empty_after_a_restart(
    tmp_path: Path,
) -> None:
    """A sidecar restarted with providers in its state file, against a registry whose providers have
    not re-registered yet: the cache keeps routing for the hold, as any list that went empty."""
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A], tmp_path)
    await d.start()
    made["a"].set_provider(remote(1))
    await d.subscribe(SUB)
    await d.stop()

    MemoryRegistry.reset_all()  # a registry that lost every provider meanwhile
    d2 = new_discovery({}, [REG_A], tmp_path)
    d2.protection.hold_s = HOLD_S
    await d2.start()
    try:
        st = d2.subscriptions[CLUSTER]
        assert KEY in st.held and CLUSTER not in d2.from_cache  # the registry answered: [], held
        assert hosts(d2) == {"10.9.9.9:1"}
        await wait_for(lambda: not hosts(d2), 2, "the empty list once the hold ran out")
    finally:
        await d2.stop()


async def test_stop_cancels_the_holds() -> None:
    made: dict[str, MemoryRegistry] = {}
    d = new_discovery(made, [REG_A])
    await d.start()
    made["a"].set_provider(remote(1))
    await d.subscribe(SUB)
    made["a"].remove_provider(remote(1))
    st = d.subscriptions[CLUSTER]
    await wait_for(lambda: KEY in st.held, 2, "the hold to begin")
    hold = st.held[KEY]
    await d.stop()
    assert hold.timer.cancelled() and not st.held
