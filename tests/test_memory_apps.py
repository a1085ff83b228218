"""memory://'s Dubbo 3 application-level discovery: instances, the service-name mapping, the metadata
report, with the semantics of the ZooKeeper adapter (tests/test_zookeeper_apps.py) and the test hooks
other tests use to play a Dubbo 3 application (``set_instance``, ``set_mapping``, ``set_metadata``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from regproxy.registry import LOST, STOPPED, SUSPENDED, MemoryRegistry, RegistryError, RegistryUnavailable
from regproxy.registry.instances import AppInstance, instance_metadata
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from tests.memory import settle

# Every memory:// store starts empty and is emptied after each test.
pytestmark = pytest.mark.usefixtures("memory_stores")

APP = "demo-provider"
IFACE = "com.x.AppSvc"


def instance(ip: str, revision: str = "r1", *, app: str = APP) -> AppInstance:
    return AppInstance(app=app, host=ip, port=20880, metadata=instance_metadata(revision))


class Recorder:
    """A listener that keeps every value it is given (instance lists, mapping tuples)."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def __call__(self, value: object) -> None:
        self.values.append(value)

    @property
    def last(self) -> object:
        return self.values[-1] if self.values else None


async def started(make_memory: Callable[..., MemoryRegistry]) -> MemoryRegistry:
    reg = make_memory()
    await reg.start()
    return reg


# ---------------------------------------------------------------------------------------------------
# instances


async def test_registered_instances_reach_the_watchers_of_the_application(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    provider, consumer = await started(make_memory), await started(make_memory)
    assert provider.app_discovery
    a = instance("10.0.0.1")
    await provider.register_instance(a)
    rec = Recorder()
    assert await consumer.watch_instances(APP, rec) == [a]
    await settle()
    assert rec.values == []  # watch_instances returns the current ones; no extra call

    b = instance("10.0.0.2")
    await provider.register_instance(b)
    assert rec.values == []  # scheduled on the loop, never called from inside the change
    await settle()
    assert rec.last == [a, b]

    a2 = instance("10.0.0.1", "r2")  # the same address, a new revision: replaced
    await provider.register_instance(a2)
    await settle()
    assert rec.last == [a2, b] and consumer.instances(APP) == [a2, b]

    await provider.unregister_instance(a2)
    await settle()
    assert rec.last == [b]
    await provider.unregister_instance(a2)  # already gone: fine

    await consumer.unwatch_instances(APP, rec)
    n = len(rec.values)
    await provider.unregister_instance(b)
    await settle()
    assert len(rec.values) == n
    assert consumer.instances(APP) == []


async def test_test_hooks_play_another_application(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg = await started(make_memory)
    rec, other_app = Recorder(), Recorder()
    await reg.watch_instances(APP, rec)
    await reg.watch_instances("other", other_app)
    theirs = instance("10.0.0.7")
    reg.set_instance(theirs)
    await settle()
    assert rec.last == [theirs] and other_app.values == []  # per application
    assert reg.remove_instance(APP, "10.0.0.7:20880")
    assert not reg.remove_instance(APP, "10.0.0.7:20880")
    await settle()
    assert rec.last == []


async def test_stop_removes_own_instances_only(make_memory: Callable[..., MemoryRegistry]) -> None:
    provider, consumer = await started(make_memory), await started(make_memory)
    mine, theirs = instance("10.0.0.1"), instance("10.0.0.2")
    await provider.register_instance(mine)
    consumer.set_instance(theirs)
    rec = Recorder()
    await consumer.watch_instances(APP, rec)
    await provider.stop()
    await settle()
    assert rec.last == [theirs]
    with pytest.raises(RegistryUnavailable, match="stopped"):
        await provider.register_instance(mine)


async def test_lost_session_drops_own_instances_and_reconnect_recreates_them(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    provider, consumer = await started(make_memory), await started(make_memory)
    mine = instance("10.0.0.1")
    await provider.register_instance(mine)
    theirs = instance("10.0.0.2")
    consumer.set_instance(theirs)
    seen_by_provider, seen_by_consumer = Recorder(), Recorder()
    await provider.watch_instances(APP, seen_by_provider)
    await consumer.watch_instances(APP, seen_by_consumer)

    provider.simulate_down(lose_session=True)
    assert provider.state == LOST
    await settle()
    assert seen_by_consumer.last == [theirs]  # gone with the session, as ephemeral nodes go
    assert seen_by_provider.values == []  # nothing is delivered while down
    with pytest.raises(RegistryUnavailable):
        await provider.register_instance(instance("10.0.0.3"))
    with pytest.raises(RegistryUnavailable):
        await provider.watch_instances("another", Recorder())
    late = instance("10.0.0.4")
    consumer.set_instance(late)
    await settle()
    assert seen_by_provider.values == []

    provider.simulate_up()
    await settle()
    assert seen_by_consumer.last == [mine, theirs, late]  # re-created
    assert seen_by_provider.last == [mine, theirs, late]  # what changed meanwhile is delivered


async def test_unregistered_while_suspended_is_deleted_on_reconnect(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    provider, consumer = await started(make_memory), await started(make_memory)
    mine = instance("10.0.0.1")
    await provider.register_instance(mine)
    provider.simulate_down()
    assert provider.state == SUSPENDED
    await provider.unregister_instance(mine)
    assert consumer.instances(APP) == [mine]  # the session lives on: its node too, until reconnected
    provider.simulate_up()
    assert consumer.instances(APP) == []


# ---------------------------------------------------------------------------------------------------
# the service-name mapping


async def test_mapping_add_watch_and_hooks(make_memory: Callable[..., MemoryRegistry]) -> None:
    one, two = await started(make_memory), await started(make_memory)
    rec = Recorder()
    assert await two.watch_mapping(IFACE, rec) == ()
    await one.add_mapping(IFACE, "app-a")
    await settle()
    assert rec.values == [("app-a",)]
    await one.add_mapping(IFACE, "app-a")  # there already: no change, nothing delivered
    await settle()
    assert rec.values == [("app-a",)]
    assert one.mapping(IFACE) == "app-a"

    two.set_mapping(IFACE, "app-a, other ")  # another writer's text
    await two.add_mapping(IFACE, "app-b")
    await settle()
    assert one.mapping(IFACE) == "app-a, other ,app-b"  # appended, the rest kept as it was
    assert rec.last == ("app-a", "app-b", "other")  # sorted, trimmed (ServiceNameMapping.getAppNames)
    with pytest.raises(ValueError):
        await one.add_mapping(IFACE, "a,b")

    await two.unwatch_mapping(IFACE, rec)
    n = len(rec.values)
    await one.add_mapping(IFACE, "app-c")
    await settle()
    assert len(rec.values) == n


async def test_mapping_change_while_down_is_delivered_once_on_reconnect(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    reg = await started(make_memory)
    rec, unchanged = Recorder(), Recorder()
    reg.set_mapping("com.x.Same", "x")
    await reg.watch_mapping(IFACE, rec)
    await reg.watch_mapping("com.x.Same", unchanged)
    reg.simulate_down()
    with pytest.raises(RegistryUnavailable):
        await reg.add_mapping(IFACE, "app-a")
    reg.set_mapping(IFACE, "app-a")
    reg.set_mapping(IFACE, "app-a,app-b")
    await settle()
    assert rec.values == []
    reg.simulate_up()
    await settle()
    assert rec.values == [("app-a", "app-b")]
    assert unchanged.values == []  # nothing changed there: nothing delivered


async def test_second_mapping_listener_does_not_hide_a_pending_change(
    make_memory: Callable[..., MemoryRegistry],
) -> None:
    reg = await started(make_memory)
    first, second = Recorder(), Recorder()
    await reg.watch_mapping(IFACE, first)
    reg.set_mapping(IFACE, "app-a")  # scheduled for `first`
    assert await reg.watch_mapping(IFACE, second) == ("app-a",)
    await settle()
    assert first.values == [("app-a",)]


# ---------------------------------------------------------------------------------------------------
# the metadata report


INFO = MetadataInfo.of(APP, [ServiceInfo(name=IFACE, protocol="dubbo", port=20880, path=IFACE)])


async def test_metadata_round_trip_absent_and_unparseable(make_memory: Callable[..., MemoryRegistry]) -> None:
    writer, reader = await started(make_memory), await started(make_memory)
    assert INFO.revision
    assert await reader.read_metadata(APP, INFO.revision) is None
    await writer.write_metadata(INFO)
    assert await reader.read_metadata(APP, INFO.revision) == INFO

    # A revision already there is left as it is (ZookeeperMetadataReport.publishAppMetadata).
    other = MetadataInfo(APP, INFO.revision, {})
    await writer.write_metadata(other)
    assert await reader.read_metadata(APP, INFO.revision) == INFO

    reader.set_metadata(APP, "bad", '{"services": []}')
    with pytest.raises(RegistryError, match="bad") as info:
        await reader.read_metadata(APP, "bad")
    assert not isinstance(info.value, RegistryUnavailable)
    reader.set_metadata(APP, "empty", "")
    assert await reader.read_metadata(APP, "empty") is None
    reader.set_metadata(APP, "hooked", INFO)
    assert await reader.read_metadata(APP, "hooked") == INFO

    with pytest.raises(ValueError):
        await writer.write_metadata(MetadataInfo(APP, None, {}))
    reader.simulate_down()
    with pytest.raises(RegistryUnavailable):
        await reader.read_metadata(APP, INFO.revision)


async def test_stop_forgets_every_listener(make_memory: Callable[..., MemoryRegistry]) -> None:
    reg, other = await started(make_memory), await started(make_memory)
    instances, mapping = Recorder(), Recorder()
    await reg.watch_instances(APP, instances)
    await reg.watch_mapping(IFACE, mapping)
    await reg.stop()
    assert reg.state == STOPPED
    other.set_instance(instance("10.0.0.1"))
    await other.add_mapping(IFACE, "app-a")
    await settle()
    assert instances.values == [] and mapping.values == []


async def test_names_the_zookeeper_paths_would_refuse_are_refused_here_too(
    make_memory: Callable[..., MemoryRegistry],
) -> None:

    reg = await started(make_memory)
    with pytest.raises(ValueError, match="application"):
        await reg.watch_instances("a/b", Recorder())
    with pytest.raises(ValueError, match="interface"):
        await reg.watch_mapping("..", Recorder())
    with pytest.raises(ValueError, match="revision"):
        await reg.read_metadata(APP, "x/y")
    with pytest.raises(ValueError, match="instance id"):
        await reg.register_instance(AppInstance(app=APP, host="10.0.0.1", port=1, id="a/b"))
