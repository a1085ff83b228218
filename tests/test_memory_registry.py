from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from regproxy.registry import (
    CONNECTED,
    LOST,
    STOPPED,
    SUSPENDED,
    DubboURL,
    MemoryRegistry,
    RegistryError,
    RegistryUnavailable,
    Subscription,
    consumer_url,
    provider_url,
)
from regproxy.registry.registry_url import RegistryURL
from tests.memory import settle

# Every memory:// store starts empty and is emptied after each test.
pytestmark = pytest.mark.usefixtures("memory_stores")

SVC = "com.x.Svc"
SUB = Subscription(SVC)


def _prov(ip: str, *, weight: int | None = None, interface: str = SVC) -> DubboURL:
    params = {} if weight is None else {"weight": str(weight)}
    return provider_url(interface=interface, ip=ip, port=20882, params=params, pid=1, timestamp_ms=1)


class Recorder:
    """A providers listener that records every list it is given."""

    def __init__(self) -> None:
        self.calls: list[list[DubboURL]] = []

    def __call__(self, urls: list[DubboURL]) -> None:
        self.calls.append(urls)

    @property
    def last(self) -> set[str]:
        return {u.host for u in self.calls[-1]}


async def test_register_subscribe_and_full_lists_on_every_change(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    provider, consumer = make_memory(), make_memory()
    await provider.start()
    await consumer.start()
    await provider.register(_prov("10.0.0.1"))
    rec = Recorder()
    assert {u.host for u in await consumer.subscribe(SUB, rec)} == {"10.0.0.1"}
    await settle()
    assert rec.calls == []  # subscribe() returns the current list; no extra callback

    await provider.register(_prov("10.0.0.2"))  # added
    await settle()
    assert rec.last == {"10.0.0.1", "10.0.0.2"}

    await provider.unregister(_prov("10.0.0.1"))  # removed
    await settle()
    assert rec.last == {"10.0.0.2"}

    consumer.replace_provider(_prov("10.0.0.2"), _prov("10.0.0.2", weight=7))  # changed: one update
    await settle()
    assert len(rec.calls) == 3
    assert [u.weight for u in rec.calls[-1]] == [7]

    assert consumer.remove_provider(_prov("10.0.0.2", weight=7))
    assert not consumer.remove_provider(_prov("10.0.0.2", weight=7))
    await settle()
    assert rec.calls[-1] == []


async def test_listener_lists_are_unfiltered_and_per_interface(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    reg = make_memory()
    await reg.start()
    rec, other = Recorder(), Recorder()
    await reg.subscribe(Subscription(SVC, "1.0", "g"), rec)
    await reg.subscribe(Subscription("com.x.Other"), other)
    reg.set_provider(provider_url(interface=SVC, ip="10.0.0.1", port=1, version="2.0", group="h"))
    reg.set_provider(DubboURL("tri", "10.0.0.2", 1, SVC, {"interface": SVC}))
    await settle()
    assert rec.last == {"10.0.0.1", "10.0.0.2"}  # filtering is the caller's (matches())
    assert other.calls == []


async def test_consumer_nodes_are_not_providers(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = make_memory()
    await reg.start()
    rec = Recorder()
    await reg.subscribe(SUB, rec)
    c = consumer_url(interface=SVC, ip="10.0.0.9")
    await reg.register(c)
    await settle()
    assert rec.calls == []
    assert reg.nodes(SVC, "consumers") == [c] and reg.nodes(SVC) == []
    await reg.unregister(c)
    assert reg.nodes(SVC, "consumers") == []


async def test_instances_share_a_store_by_name(make_memory: Callable[..., MemoryRegistry]) -> None:
    a, b, other = make_memory(), make_memory(), make_memory("other")
    for r in (a, b, other):
        await r.start()
    await a.register(_prov("10.0.0.1"))
    assert [u.host for u in b.nodes(SVC)] == ["10.0.0.1"]
    assert other.nodes(SVC) == []
    assert (a.name, other.name) == ("memory://", "memory://other")
    MemoryRegistry.reset_all()
    fresh = make_memory()
    assert fresh.nodes(SVC) == []  # a new store after reset_all()


async def test_stop_removes_only_own_nodes_and_notifies_others(
    make_memory: Callable[..., MemoryRegistry],
) -> None:

    provider, consumer = make_memory(), make_memory()
    await provider.start()
    await consumer.start()
    await provider.register(_prov("10.0.0.1"))
    consumer.set_provider(_prov("10.0.0.2"))  # someone else's
    rec = Recorder()
    await consumer.subscribe(SUB, rec)
    await provider.stop()
    await settle()
    assert rec.last == {"10.0.0.2"}
    assert provider.state == STOPPED
    with pytest.raises(RegistryUnavailable, match="stopped"):
        await provider.register(_prov("10.0.0.1"))


async def test_unsubscribe_stops_updates(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = make_memory()
    await reg.start()
    rec, kept = Recorder(), Recorder()
    await reg.subscribe(SUB, rec)
    await reg.subscribe(Subscription(SVC, "1.0"), kept)
    reg.set_provider(_prov("10.0.0.1"))
    await reg.unsubscribe(SUB, rec)  # after the change was scheduled, before it ran
    await settle()
    assert rec.calls == [] and kept.last == {"10.0.0.1"}
    await reg.unsubscribe(SUB, rec)  # unknown: no-op
    await reg.unsubscribe(Subscription(SVC, "1.0"), kept)
    reg.set_provider(_prov("10.0.0.2"))
    await settle()
    assert len(kept.calls) == 1


async def test_late_subscriber_never_gets_an_older_list(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = make_memory()
    await reg.start()
    first, late = Recorder(), Recorder()
    await reg.subscribe(SUB, first)
    reg.set_provider(_prov("10.0.0.1"))  # scheduled for `first` only
    assert {u.host for u in await reg.subscribe(Subscription(SVC, "*"), late)} == {"10.0.0.1"}
    await settle()
    assert first.last == {"10.0.0.1"} and late.calls == []


async def test_failing_listener_does_not_stop_others(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = make_memory()
    await reg.start()

    def boom(urls: list[DubboURL]) -> None:
        raise RuntimeError("listener bug")

    rec = Recorder()
    await reg.subscribe(SUB, boom)
    await reg.subscribe(Subscription(SVC, "*"), rec)
    reg.set_provider(_prov("10.0.0.1"))
    await settle()
    assert rec.last == {"10.0.0.1"}


async def test_not_started_is_unavailable(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = make_memory()
    with pytest.raises(RegistryUnavailable, match="connecting"):
        await reg.subscribe(SUB, Recorder())
    await reg.start()
    await reg.subscribe(SUB, Recorder())


def test_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="memory://"):
        MemoryRegistry(RegistryURL.parse("zookeeper://127.0.0.1:2181"))


async def test_simulate_down_suspended(make_memory: Callable[..., MemoryRegistry]) -> None:
    provider, consumer = make_memory(), make_memory()
    states: list[str] = []
    consumer.add_state_listener(states.append)
    await provider.start()
    await consumer.start()
    rec = Recorder()
    await consumer.subscribe(SUB, rec)
    await consumer.register(_prov("10.0.0.9"))
    await settle()
    assert rec.last == {"10.0.0.9"}

    consumer.simulate_down()
    assert consumer.state == SUSPENDED and not consumer.connected
    with pytest.raises(RegistryUnavailable, match="suspended"):
        await consumer.register(_prov("10.0.0.8"))
    with pytest.raises(RegistryUnavailable):
        await consumer.subscribe(Subscription("com.x.Other"), Recorder())
    await provider.register(_prov("10.0.0.1"))
    await settle()
    assert len(rec.calls) == 1  # no events while disconnected
    await consumer.unregister(_prov("10.0.0.9"))  # accepted; the node goes when connected again
    assert {u.host for u in provider.nodes(SVC)} == {"10.0.0.1", "10.0.0.9"}

    consumer.simulate_up()
    await settle()
    assert consumer.state == CONNECTED
    assert rec.last == {"10.0.0.1"}  # re-read on reconnect
    assert states == [CONNECTED, SUSPENDED, CONNECTED]


async def test_simulate_down_lost_session_recreates_nodes(make_memory: Callable[..., MemoryRegistry]) -> None:
    provider, consumer = make_memory(), make_memory()
    states: list[str] = []
    provider.add_state_listener(states.append)
    await provider.start()
    await consumer.start()
    await provider.register(_prov("10.0.0.1"))
    await provider.register(_prov("10.0.0.2"))
    rec = Recorder()
    await consumer.subscribe(SUB, rec)

    provider.simulate_down(lose_session=True)
    await settle()
    assert provider.state == LOST
    assert rec.last == set()  # ephemeral nodes gone with the session
    await provider.unregister(_prov("10.0.0.2"))  # forgotten: not re-created

    provider.simulate_up()
    await settle()
    assert rec.last == {"10.0.0.1"}
    assert states == [CONNECTED, LOST, CONNECTED]
    provider.simulate_up()  # not down: no-op
    assert states == [CONNECTED, LOST, CONNECTED]


async def test_state_listener_sees_stop(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = make_memory()
    states: list[str] = []
    reg.add_state_listener(states.append)
    await reg.start()
    await reg.stop()
    reg.simulate_down()  # ignored once stopped
    assert states == [CONNECTED, STOPPED]


# --- the base class's request error mapping (every adapter's requests go through Registry._call) ---


class _Lossy(MemoryRegistry):
    """A client whose ConnectionError means "cannot reach the registry", as ZooKeeper's and Nacos's
    adapters say of their clients' errors."""

    def _unreachable(self, exc: Exception) -> str | None:
        return "connection lost" if isinstance(exc, ConnectionError) else None


async def test_request_errors_map_to_unavailable_or_error() -> None:
    reg = _Lossy(name="errors")
    reg._op_timeout_s = 0.05

    async def fails(exc: Exception) -> None:
        raise exc

    with pytest.raises(
        RegistryUnavailable, match=r"^registry memory://errors: list x: no answer within 0\.05 s$"
    ):
        await reg._call("list x", asyncio.Event().wait())
    with pytest.raises(RegistryUnavailable, match=r"^registry memory://errors: list x: connection lost$"):
        await reg._call("list x", fails(ConnectionResetError("peer gone")))
    with pytest.raises(
        RegistryError, match=r"^registry memory://errors: list x failed: ValueError: bad name$"
    ) as info:
        await reg._call("list x", fails(ValueError("bad\n   name")))
    assert not isinstance(info.value, RegistryUnavailable)  # a refusal: retrying will not help
    own = RegistryUnavailable("the adapter's own words")
    with pytest.raises(RegistryUnavailable) as passed:
        await reg._call("list x", fails(own))
    assert passed.value is own
    with pytest.raises(KeyError):  # what the adapter handles itself
        await reg._call("list x", fails(KeyError("node")), passthrough=(KeyError,))
    assert await reg._call("list x", asyncio.sleep(0, "done")) == "done"
