"""The Nacos adapter's Dubbo 3 application-level discovery (the ``app_discovery`` half of
regproxy/registry/base.py, in regproxy/registry/nacos.py), against the Nacos double and the official SDK.

Where Dubbo 3.3 keeps each thing in Nacos:

* an application instance: a Nacos instance of service ``<app>`` in the registry URL's group, ip/port =
  the address, metadata as it is, ephemeral, healthy, enabled, default weight, no instance id
  (``NacosServiceDiscovery.doRegister`` with ``NacosNamingServiceUtils.toInstance``); several of one
  application from one client go as one batch (``NacosNamingServiceWrapper.registerInstance``); read
  back through ``selectInstances(healthy=true)`` (``NacosServiceDiscovery.getInstances``);
* the service-name mapping: config dataId ``<interface>``, group ``mapping``, app names joined by ","
  and added by compare-and-set (``NacosMetadataReport.registerServiceAppMapping``, ``getConfigItem``,
  ``MetadataServiceNameMapping.map``);
* an application's MetadataInfo: config dataId ``<app>``, group ``<revision>``
  (``NacosMetadataReport.publishAppMetadata``/``getAppMetadata``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from regproxy.registry.base import RegistryError
from regproxy.registry.instances import (
    ENDPOINTS_KEY,
    MAPPING_GROUP,
    URL_PARAMS_KEY,
    AppInstance,
    instance_metadata,
    metadata_service_params,
)
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo, dump_json
from regproxy.registry.nacos import NacosRegistry, service_name
from regproxy.registry.url import provider_url
from tests.peers.nacos import Failed, NacosDouble
from tests.peers.nacos.configs import md5_of
from tests.test_nacos_rules import PUSH_S, RECONNECT_S, connected
from tests.test_nacos_rules import registry as registry  # the fixture, shared
from tests.wait import wait_for

APP = "greetings-provider"
IFACE = "com.x.Greeter"
REVISION = "2f1c1b7c1c7e4f8e9e6b2c3d4e5f6a7b"


def metadata(revision: str = REVISION, port: int = 20880) -> dict[str, str]:
    """What a Dubbo 3.3 provider puts on its instance, JSON-valued keys included."""
    service = metadata_service_params("dubbo", port, {"version": "1.0.0", "timeout": "3000"})
    return instance_metadata(revision, endpoints={"dubbo": port, "tri": 50051}, metadata_service=service)


def instance(host: str = "10.1.0.1", port: int = 20880, revision: str = REVISION) -> AppInstance:
    return AppInstance(APP, host, port, metadata(revision, port))


def addresses(double: NacosDouble, app: str = APP, **where: str) -> list[str]:
    return [f"{i.ip}:{i.port}" for i in double.instances(app, **where)]


class Seen:
    """A MappingListener or InstancesListener that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, value: Any) -> None:
        self.calls.append(value)

    async def wait_for(self, check: Callable[[list[Any]], bool], what: str, timeout: float = PUSH_S) -> None:
        await wait_for(lambda: check(self.calls), timeout, what)


def hosts(instances: list[AppInstance]) -> list[str]:
    return [f"{i.host}:{i.port}" for i in instances]


# ---------------------------------------------------------------------------------------------------
# instances


async def test_an_instance_is_a_nacos_instance_of_the_application(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    assert registry.app_discovery
    mine = instance()
    await registry.register_instance(mine)

    [stored] = nacos.instances(APP)
    assert (stored.ip, stored.port) == ("10.1.0.1", 20880)
    assert dict(stored.metadata) == dict(mine.metadata)
    # JSON-valued metadata travels as the string Dubbo wrote, not as an object.
    assert (
        stored.metadata[ENDPOINTS_KEY]
        == '[{"port":20880,"protocol":"dubbo"},{"port":50051,"protocol":"tri"}]'
    )
    assert stored.metadata[URL_PARAMS_KEY].startswith('{"timeout":"3000","version":"1.0.0"')
    # NacosNamingServiceUtils.toInstance: healthy, enabled, no weight (Nacos's 1.0), no id of its own.
    assert (stored.weight, stored.healthy, stored.enabled, stored.ephemeral) == (1.0, True, True, True)
    assert stored.instance_id == f"10.1.0.1#20880##DEFAULT_GROUP@@{APP}"
    assert registry.describe()["instances"] == {APP: ["10.1.0.1:20880"]}

    # A new revision at the same address replaces the instance.
    await registry.register_instance(instance(revision="0" * 32))
    [stored] = nacos.instances(APP)
    assert stored.metadata["dubbo.metadata.revision"] == "0" * 32

    await registry.unregister_instance(mine)
    assert nacos.instances(APP) == []
    assert registry.describe()["instances"] == {}
    await registry.unregister_instance(mine)  # forgotten already: nothing happens


async def test_two_instances_of_one_application_are_registered_together(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    """Nacos keeps one entry per service and connection: a second registerInstance would replace the
    first, so NacosNamingServiceWrapper sends both in one batchRegisterInstance."""
    a, b = instance("10.1.0.1"), instance("10.1.0.2", 20881)
    await registry.register_instance(a)
    await registry.register_instance(b)
    assert addresses(nacos) == ["10.1.0.1:20880", "10.1.0.2:20881"]

    await registry.unregister_instance(a)
    assert addresses(nacos) == ["10.1.0.2:20881"]
    await registry.register_instance(a)
    assert addresses(nacos) == ["10.1.0.1:20880", "10.1.0.2:20881"]
    await registry.unregister_instance(b)
    await registry.unregister_instance(a)
    assert addresses(nacos) == []


async def test_instances_go_to_the_registry_url_group_and_an_inner_class_name_is_escaped(
    nacos: NacosDouble,
) -> None:
    registry = await connected(nacos, "?group=dubbo-apps")
    try:
        await registry.register_instance(AppInstance("outer$inner", "10.1.0.1", 20880))
        # NacosNamingServiceWrapper.handleInnerSymbol: Nacos service names have no "$".
        assert addresses(nacos, "outer___inner", group="dubbo-apps") == ["10.1.0.1:20880"]
        assert addresses(nacos, "outer___inner") == []
        seen = await registry.watch_instances("outer$inner", Seen())
        assert [(i.app, i.host, i.port) for i in seen] == [("outer$inner", "10.1.0.1", 20880)]
    finally:
        await registry.stop()
    assert addresses(nacos, "outer___inner", group="dubbo-apps") == []


async def test_a_refused_registration_is_not_kept(nacos: NacosDouble, registry: NacosRegistry) -> None:
    await registry.register_instance(instance("10.1.0.1"))
    huge = AppInstance(APP, "10.1.0.2", 20880, {"k": "v" * 2000})  # Nacos caps metadata at 1024
    with pytest.raises(RegistryError, match="Metadata"):
        await registry.register_instance(huge)
    assert addresses(nacos) == ["10.1.0.1:20880"]
    assert registry.describe()["instances"] == {APP: ["10.1.0.1:20880"]}
    # The client was told what stands again: after a reconnection it registers that, not the refused one.
    await nacos.restart()
    await wait_for(lambda: addresses(nacos) == ["10.1.0.1:20880"], RECONNECT_S, "the instance back")


async def test_the_current_instances_then_each_change(nacos: NacosDouble, registry: NacosRegistry) -> None:
    nacos.register_external(APP, "10.2.0.1", 20880, metadata=metadata())
    first, second = Seen(), Seen()

    now = await registry.watch_instances(APP, first)
    assert now == [AppInstance(APP, "10.2.0.1", 20880, metadata())]
    assert now[0].endpoints[1].port == 50051  # the JSON metadata read back as Dubbo reads it
    assert await registry.watch_instances(APP, second) == now
    assert nacos.subscribers(APP) == 1 and registry.describe()["apps"] == [APP]

    nacos.register_external(APP, "10.2.0.2", 20880, metadata=metadata())
    await first.wait_for(
        lambda c: len(c) == 1 and hosts(c[0]) == ["10.2.0.1:20880", "10.2.0.2:20880"], "added"
    )
    nacos.update_instance(APP, "10.2.0.1", 20880, metadata=metadata("1" * 32))
    await first.wait_for(lambda c: len(c) == 2 and c[1][0].revision == "1" * 32, "the new revision")
    assert second.calls == first.calls

    await registry.unwatch_instances(APP, first)
    nacos.deregister_external(APP, "10.2.0.2", 20880)
    await second.wait_for(lambda c: len(c) == 3 and hosts(c[2]) == ["10.2.0.1:20880"], "removed")
    assert len(first.calls) == 2  # listeners are called together: it would have been by now
    await registry.unwatch_instances(APP, second)
    assert nacos.subscribers(APP) == 0 and registry.describe()["apps"] == []


async def test_only_instances_dubbo_would_select_are_delivered(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    """NacosServiceDiscovery.getInstances: selectInstances(healthy=true) leaves out unhealthy and
    disabled instances, and those of weight 0."""
    for n in (1, 2, 3):
        nacos.register_external(APP, f"10.3.0.{n}", 20880, metadata=metadata())
    seen = Seen()
    assert len(await registry.watch_instances(APP, seen)) == 3

    nacos.set_unhealthy(APP, "10.3.0.1", 20880)
    await seen.wait_for(lambda c: c and hosts(c[-1]) == ["10.3.0.2:20880", "10.3.0.3:20880"], "unhealthy out")
    nacos.set_enabled(APP, "10.3.0.2", 20880, False)
    await seen.wait_for(lambda c: c and hosts(c[-1]) == ["10.3.0.3:20880"], "disabled out")
    nacos.set_weight(APP, "10.3.0.3", 20880, 0.0)
    await seen.wait_for(lambda c: c and c[-1] == [], "weight 0 out")
    nacos.set_unhealthy(APP, "10.3.0.1", 20880, False)
    await seen.wait_for(lambda c: c and hosts(c[-1]) == ["10.3.0.1:20880"], "healthy again")
    # A change to an instance left out is no change of what is delivered: only the next one is.
    calls, acks = len(seen.calls), nacos.stats["acks"]
    nacos.update_instance(APP, "10.3.0.3", 20880, metadata=metadata("2" * 32))
    # The client acknowledges a push after its callbacks ran.
    await wait_for(lambda: nacos.stats["acks"] > acks, PUSH_S, "the push of that change handled")
    nacos.register_external(APP, "10.3.0.4", 20880, metadata=metadata())
    await seen.wait_for(lambda c: hosts(c[-1]) == ["10.3.0.1:20880", "10.3.0.4:20880"], "10.3.0.4 in")
    assert len(seen.calls) == calls + 1


async def test_instances_dubbo_cannot_use_are_skipped_and_counted_once(
    nacos: NacosDouble, registry: NacosRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    nacos.register_external(APP, "10.4.0.1", 20880, metadata=metadata())
    nacos.register_external(APP, "10.4.0.2", 0, metadata=metadata())  # DefaultServiceInstance: port < 1
    nacos.register_external(APP, "10.4.0.3", 20880, metadata={ENDPOINTS_KEY: "not json"})
    seen = Seen()
    assert hosts(await registry.watch_instances(APP, seen)) == ["10.4.0.1:20880"]
    assert registry.unparseable == 2
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 2
    assert any("10.4.0.2:0 of application greetings-provider: port" in m for m in skipped)
    assert any(
        f"10.4.0.3:20880 of application greetings-provider: payload.metadata[{ENDPOINTS_KEY}]" in m
        for m in skipped
    )

    nacos.register_external(APP, "10.4.0.4", 20880, metadata=metadata())  # the same two again: not counted
    await seen.wait_for(lambda c: c and hosts(c[-1]) == ["10.4.0.1:20880", "10.4.0.4:20880"], "the new one")
    assert registry.unparseable == 2


async def test_instances_are_registered_again_after_a_restart_and_watches_resume(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    a, b = instance("10.5.0.1"), instance("10.5.0.2")
    await registry.register_instance(a)
    await registry.register_instance(b)
    other = await connected(nacos)
    try:
        seen = Seen()
        assert hosts(await other.watch_instances(APP, seen)) == ["10.5.0.1:20880", "10.5.0.2:20880"]

        await nacos.restart()
        await wait_for(
            lambda: addresses(nacos) == ["10.5.0.1:20880", "10.5.0.2:20880"], RECONNECT_S, "both back"
        )
        assert registry.connected
        # The watching client subscribed again: a change after the restart reaches it.
        await wait_for(lambda: nacos.subscribers(APP) == 1, RECONNECT_S, "the watch renewed")
        await registry.unregister_instance(a)
        await seen.wait_for(lambda c: c and hosts(c[-1]) == ["10.5.0.2:20880"], "a gone")
    finally:
        await other.stop()


@pytest.mark.slow
async def test_an_instance_unregistered_while_disconnected_stays_away(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    """The client registers what it holds again once connected: it is told of an unregistration made
    during an outage too."""
    a, b = instance("10.6.0.1"), instance("10.6.0.2")
    await registry.register_instance(a)
    await registry.register_instance(b)
    await registry.watch_instances("elsewhere", Seen())  # its renewal shows the client's redo ran
    await nacos.stop()
    await wait_for(lambda: not registry.connected, 10, "the registry noticing the outage")
    await registry.unregister_instance(a)
    assert registry.describe()["instances"] == {APP: ["10.6.0.2:20880"]}
    await nacos.start()
    await wait_for(lambda: addresses(nacos) == ["10.6.0.2:20880"], RECONNECT_S, "b back")
    await registry.unregister_instance(b)
    await nacos.restart()
    # The redo registers instances, then subscribes: once the watch is back, the instances were done.
    await wait_for(lambda: nacos.subscribers("elsewhere") == 1, RECONNECT_S, "the client's redo")
    assert addresses(nacos) == []


# ---------------------------------------------------------------------------------------------------
# the service-name mapping


def mapping(double: NacosDouble, interface: str = IFACE) -> str | None:
    config = double.config(interface, group=MAPPING_GROUP)
    return config.content if config is not None else None


async def test_add_mapping_creates_appends_and_leaves_a_present_app_alone(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    await registry.add_mapping(IFACE, "app-a")
    assert mapping(nacos) == "app-a"
    await registry.add_mapping(IFACE, "app-b")
    assert mapping(nacos) == "app-a,app-b"
    written = nacos.config(IFACE, group=MAPPING_GROUP)
    await registry.add_mapping(IFACE, "app-a")  # there already: Dubbo writes nothing
    assert nacos.config(IFACE, group=MAPPING_GROUP) == written
    # An operator's spacing is kept, and a trimmed name counts as present (ServiceNameMapping).
    nacos.publish_config(IFACE, " app-a , app-b", group=MAPPING_GROUP)
    await registry.add_mapping(IFACE, "app-b")
    await registry.add_mapping(IFACE, "app-c")
    assert mapping(nacos) == " app-a , app-b,app-c"
    with pytest.raises(RegistryError, match="invalid application name"):
        await registry.add_mapping(IFACE, "a,b")


Publish = tuple[dict[str, Any], bool]  # a ConfigPublishRequest's body, and whether it was accepted


def hook_publishes(
    double: NacosDouble, monkeypatch: pytest.MonkeyPatch, before: Callable[[dict[str, Any]], None]
) -> list[Publish]:
    """Every config publish the double is sent from now on, as it answers it; ``before(body)`` runs
    first (another writer's change, a refusal)."""
    handle = double._handlers["ConfigPublishRequest"]
    seen: list[Publish] = []

    def hooked(conn: Any, body: dict[str, Any]) -> Mapping[str, Any]:
        try:
            before(body)
            reply = handle(conn, body)
        except Failed:
            seen.append((body, False))
            raise
        seen.append((body, True))
        return reply

    monkeypatch.setitem(double._handlers, "ConfigPublishRequest", hooked)
    return seen


async def test_two_writers_at_once_both_end_up_in_the_mapping(
    nacos: NacosDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await connected(nacos), await connected(nacos)
    publishes = hook_publishes(nacos, monkeypatch, lambda _body: None)
    try:
        for n in range(5):
            interface = f"{IFACE}{n}"
            await asyncio.gather(
                first.add_mapping(interface, "app-a"), second.add_mapping(interface, "app-b")
            )
            content = mapping(nacos, interface)
            assert content in ("app-a,app-b", "app-b,app-a"), content
        # Where both read the mapping before either wrote, one lost the compare-and-set and tried again.
        # How the two interleave is the scheduler's; a loaded machine may serialise some rounds.
        assert [accepted for _body, accepted in publishes].count(False) >= 1
    finally:
        await first.stop()
        await second.stop()


async def test_a_lost_compare_and_set_is_tried_again(
    nacos: NacosDouble, registry: NacosRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer comes between the adapter's read and its publish: Nacos refuses the publish
    (its casMd5 is stale), and the adapter reads again and appends to what is there now."""

    def other_writer_first(body: dict[str, Any]) -> None:
        if mapping(nacos) is None:
            nacos.publish_config(IFACE, "other-app", group=MAPPING_GROUP)

    publishes = hook_publishes(nacos, monkeypatch, other_writer_first)
    await registry.add_mapping(IFACE, "app-a")
    assert mapping(nacos) == "other-app,app-a"
    # The ticket of a mapping that did not exist is "0" (NacosMetadataReport.getConfigItem), then
    # the md5 of what was read again.
    assert [(body["casMd5"], accepted) for body, accepted in publishes] == [
        ("0", False),
        (md5_of("other-app"), True),
    ]


async def test_a_refused_publish_is_not_retried(
    nacos: NacosDouble, registry: NacosRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_body: dict[str, Any]) -> None:
        raise Failed("permission denied", 403)

    publishes = hook_publishes(nacos, monkeypatch, refuse)
    with pytest.raises(
        RegistryError, match=f"add app-a to the mapping of {IFACE} failed: .*permission denied"
    ):
        await registry.add_mapping(IFACE, "app-a")
    assert len(publishes) == 1 and mapping(nacos) is None


async def test_a_mapping_watch_sees_creation_and_changes(nacos: NacosDouble, registry: NacosRegistry) -> None:
    seen = Seen()
    assert await registry.watch_mapping(IFACE, seen) == ()
    assert registry.describe()["mappings"] == [IFACE] and registry.describe()["rules"] == []

    await registry.add_mapping(IFACE, "app-b")
    await seen.wait_for(lambda c: c == [("app-b",)], "the mapping created")
    nacos.publish_config(IFACE, "app-b,app-a", group=MAPPING_GROUP)
    await seen.wait_for(lambda c: c == [("app-b",), ("app-a", "app-b")], "an app added")
    nacos.publish_config(IFACE, "app-a, app-b", group=MAPPING_GROUP)  # the same apps: no change
    # A deletion is ignored, as NacosMetadataReport.MappingDataListener ignores one.
    assert nacos.remove_config(IFACE, group=MAPPING_GROUP)
    watch = registry._configs[IFACE, MAPPING_GROUP]
    await wait_for(lambda: watch.delivered and watch.content is None, PUSH_S, "the watch seeing the deletion")
    nacos.publish_config(IFACE, "app-a,app-b", group=MAPPING_GROUP)
    nacos.publish_config(IFACE, "app-a,app-b,app-c", group=MAPPING_GROUP)
    await seen.wait_for(lambda c: len(c) == 3, "app-c added")
    assert seen.calls == [("app-b",), ("app-a", "app-b"), ("app-a", "app-b", "app-c")]

    # A second listener is given what is there now; unwatched, a listener hears nothing more.
    again = Seen()
    assert await registry.watch_mapping(IFACE, again) == ("app-a", "app-b", "app-c")
    await registry.unwatch_mapping(IFACE, seen)
    nacos.publish_config(IFACE, "app-d", group=MAPPING_GROUP)
    await again.wait_for(lambda c: c == [("app-d",)], "the change")
    assert len(seen.calls) == 3
    await registry.unwatch_mapping(IFACE, again)
    assert registry.describe()["mappings"] == []


async def test_a_mapping_change_during_a_restart_is_delivered_after_reconnecting(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    nacos.publish_config(IFACE, "app-a", group=MAPPING_GROUP)
    seen = Seen()
    assert await registry.watch_mapping(IFACE, seen) == ("app-a",)
    await nacos.restart()
    nacos.publish_config(IFACE, "app-a,app-b", group=MAPPING_GROUP)
    await seen.wait_for(lambda c: c == [("app-a", "app-b")], "the change", timeout=RECONNECT_S)


# ---------------------------------------------------------------------------------------------------
# the metadata report


async def test_metadata_round_trip(nacos: NacosDouble, registry: NacosRegistry) -> None:
    greeter = ServiceInfo(IFACE, version="1.0.0", protocol="tri", port=50051, path=IFACE, params={"a": "1"})
    info = MetadataInfo.of(APP, [greeter])
    assert await registry.read_metadata(APP, info.revision) is None

    await registry.write_metadata(info)
    stored = nacos.config(APP, group=info.revision)
    assert stored is not None and stored.content == dump_json(info)
    assert await registry.read_metadata(APP, info.revision) == info
    assert await registry.read_metadata(APP, "f" * 32) is None

    # What a Java provider wrote (fastjson2: getter-derived keys too) reads as well.
    java = '{"app":"a","revision":"r1","services":{"x":{"name":"x","port":1,"params":{}}},"content":"..."}'
    nacos.publish_config("a", java, group="r1")
    assert await registry.read_metadata("a", "r1") == MetadataInfo("a", "r1", {"x": ServiceInfo("x", port=1)})


async def test_metadata_that_does_not_parse_is_an_error(nacos: NacosDouble, registry: NacosRegistry) -> None:
    nacos.publish_config(APP, "not json", group=REVISION)
    with pytest.raises(RegistryError, match=f"nacos dataId {APP} group {REVISION}: metadata is not JSON"):
        await registry.read_metadata(APP, REVISION)
    with pytest.raises(RegistryError, match="needs an application and a revision"):
        await registry.write_metadata(MetadataInfo(APP, None))


@pytest.mark.slow
async def test_a_provider_unregistered_while_disconnected_stays_away(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    """As for instances: a provider unpublished during an outage is not registered again by the
    client's redo once connected (it would take traffic for a service nobody publishes any more)."""
    url = provider_url(interface=IFACE, ip="10.7.0.1", port=20882, version="1.0", group="g")
    service = service_name("providers", IFACE, "1.0", "g")
    await registry.register(url)
    assert [(i.ip, i.port) for i in nacos.instances(service)] == [("10.7.0.1", 20882)]
    await registry.watch_instances("elsewhere", Seen())  # its renewal shows the client's redo ran
    await nacos.stop()
    await wait_for(lambda: not registry.connected, 10, "the registry noticing the outage")
    await registry.unregister(url)
    await nacos.start()
    await wait_for(lambda: nacos.subscribers("elsewhere") == 1, RECONNECT_S, "the client's redo")
    assert nacos.instances(service) == []
