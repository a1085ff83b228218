"""ZooKeeperRegistry's Dubbo 3 application-level discovery against a real ZooKeeper (tests/zkserver.py):
instances under ``/services/<app>``, the mapping ``/dubbo/mapping/<interface>``, the metadata report
``/dubbo/metadata/<app>/<revision>``.

The ``zk`` fixture is an independent kazoo client: it plays the other Dubbo 3 applications (their
instances, their mapping writes) and reads what our registry wrote.  Facts: apache/dubbo 3.3
``ZookeeperServiceDiscovery``, ``CuratorFrameworkUtils``, ``ZookeeperMetadataReport``,
``MetadataServiceNameMapping`` (regproxy/registry/zookeeper.py names them where they apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import ACL, Id, Permissions, make_digest_acl_credential

from regproxy.registry.base import CONNECTED, LOST, RegistryError, RegistryUnavailable
from regproxy.registry.instances import (
    AppInstance,
    instance_metadata,
    instance_path,
    instances_path,
    mapping_path,
    parse_curator,
    to_curator,
)
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo, dump_json
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.zookeeper import ZooKeeperRegistry, metadata_path
from tests.test_app_instances import JAVA_INSTANCE
from tests.test_zookeeper import make_registry
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

APP = "demo-provider"
IFACE = "com.x.AppSvc"


def instance(ip: str, revision: str = "r1", *, app: str = APP, port: int = 20880) -> AppInstance:
    return AppInstance(
        app=app, host=ip, port=port, metadata=instance_metadata(revision), registration_time_utc=1
    )


def create_other(zk: KazooClient, inst: AppInstance) -> str:
    """Register ``inst`` as another Dubbo 3 provider would (its own session, ephemeral, Curator JSON)."""
    return zk.create(instance_path(inst), to_curator(inst), ephemeral=True, makepath=True)


class Recorder:
    """A listener that keeps every value it is given (instance lists, mapping tuples)."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def __call__(self, value: object) -> None:
        assert asyncio.get_running_loop()  # delivered on the event loop, never on a kazoo thread
        self.values.append(value)

    @property
    def last(self) -> object:
        return self.values[-1] if self.values else None

    async def wait_for(self, predicate: Callable[[object], bool], timeout: float = 3.0) -> None:
        await wait_for(
            lambda: bool(self.values) and predicate(self.last), timeout, "a delivery", interval=0.01
        )


@pytest.fixture
def services(zk: KazooClient) -> KazooClient:
    """The independent reader and writer: ``zk`` (which empties /dubbo and /services first)."""
    return zk


@pytest.fixture
async def registry(services: KazooClient, zk_server: ZooKeeperServer) -> AsyncIterator[ZooKeeperRegistry]:
    reg = await started(zk_server)
    try:
        yield reg
    finally:
        await reg.stop()


async def started(zk_server: ZooKeeperServer) -> ZooKeeperRegistry:
    reg = make_registry(zk_server.hosts)
    await reg.start()
    await wait_for(lambda: reg.connected, 10, "registry connected")
    return reg


# ---------------------------------------------------------------------------------------------------
# instances


async def test_register_instance_writes_the_curator_json_a_java_provider_writes(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    assert registry.app_discovery
    java = parse_curator(JAVA_INSTANCE, app="demo-provider")
    await registry.register_instance(java)

    path = "/services/demo-provider/192.168.1.9:20880"  # ZookeeperServiceDiscovery.DEFAULT_GROUP, host:port
    assert instance_path(java) == path
    data, stat = services.get(path)
    assert data == JAVA_INSTANCE  # byte for byte what Curator's JsonInstanceSerializer wrote for Dubbo
    assert stat.ephemeralOwner == registry.session_id  # ephemeral (Curator: ServiceType.DYNAMIC)
    assert services.exists("/services/demo-provider").ephemeralOwner == 0  # parents persistent
    assert registry.describe()["registered_instances"] == [path]
    assert registry.describe()["registered"] == []  # provider URLs only

    # The same address again with a new revision: the same node, its data rewritten (Curator's
    # updateService is a setData), still ours.
    newer = AppInstance(app=java.app, host=java.host, port=java.port, metadata=instance_metadata("r2"))
    await registry.register_instance(newer)
    data, stat2 = services.get(path)
    assert data == to_curator(newer)
    assert stat2.czxid == stat.czxid and stat2.version == stat.version + 1
    assert stat2.ephemeralOwner == registry.session_id
    await registry.register_instance(newer)  # unchanged: nothing written
    assert services.get(path)[1].version == stat2.version

    await registry.unregister_instance(newer)
    assert services.get_children("/services/demo-provider") == []
    assert registry.describe()["registered_instances"] == []
    await registry.unregister_instance(newer)  # already gone: fine


async def test_register_instance_replaces_a_leftover_node_of_another_session(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    mine = instance("10.0.0.5", "r2")
    create_other(services, instance("10.0.0.5", "r1"))  # e.g. our previous session's, not reaped yet
    await registry.register_instance(mine)
    data, stat = services.get(instance_path(mine))
    assert (data, stat.ephemeralOwner) == (to_curator(mine), registry.session_id)


async def test_stop_removes_own_instances(services: KazooClient, zk_server: ZooKeeperServer) -> None:
    reg = await started(zk_server)
    await reg.register_instance(instance("10.0.0.1"))
    theirs = instance("10.0.0.2")
    create_other(services, theirs)
    await reg.stop()
    assert services.get_children(instances_path(APP)) == ["10.0.0.2:20880"]


async def test_watch_instances_delivers_additions_data_changes_and_removals(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    a = instance("10.0.0.1")
    create_other(services, a)
    rec = Recorder()
    assert await registry.watch_instances(APP, rec) == [a]
    assert registry.describe()["instances"] == {APP: {"listeners": 1, "instances": 1}}

    b = instance("10.0.0.2")
    create_other(services, b)
    await rec.wait_for(lambda v: v == [a, b])

    # A new revision of b: setData on the same node (Curator's updateService), no child event.
    b2 = instance("10.0.0.2", "r2")
    services.set(instance_path(b2), to_curator(b2))
    await rec.wait_for(lambda v: v == [a, b2])
    # ...and again: the data watch was set again by the re-read.
    b3 = instance("10.0.0.2", "r3")
    services.set(instance_path(b3), to_curator(b3))
    await rec.wait_for(lambda v: v == [a, b3])

    services.delete(instance_path(a))
    await rec.wait_for(lambda v: v == [b3])
    n = len(rec.values)
    services.set(instance_path(b3), to_curator(b3))  # rewritten as it was: no change, nothing delivered
    await asyncio.sleep(0.3)
    assert len(rec.values) == n

    await registry.unwatch_instances(APP, rec)
    assert registry.describe()["instances"] == {}
    services.delete(instance_path(b3))
    await asyncio.sleep(0.3)
    assert len(rec.values) == n


async def test_watch_instances_of_an_application_with_none_yet(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    rec = Recorder()
    assert await registry.watch_instances("later", rec) == []
    late = instance("10.0.0.3", app="later")
    create_other(services, late)
    await rec.wait_for(lambda v: v == [late])


async def test_unparseable_instance_is_skipped_warned_and_counted_once(
    registry: ZooKeeperRegistry, services: KazooClient, caplog: pytest.LogCaptureFixture
) -> None:
    good = instance("10.0.0.1")
    create_other(services, good)
    bad_path = f"{instances_path(APP)}/10.0.0.9:20880"
    services.create(bad_path, b'{"name":"demo-provider","address":"10.0.0.9"}', ephemeral=True)  # no port
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="regproxy.registry.zookeeper"):
        assert await registry.watch_instances(APP, rec) == [good]
        assert registry.unparseable == 1
        assert caplog.text.count("10.0.0.9:20880") == 1 and "port: missing" in caplog.text

        # Other changes re-read the folder: the bad node is neither warned about nor counted again.
        other = instance("10.0.0.2")
        create_other(services, other)
        await rec.wait_for(lambda v: v == [good, other])
        services.set(bad_path, b"not json")  # still bad (its data watch fired): still once
        await asyncio.sleep(0.3)
        assert registry.unparseable == 1 and caplog.text.count("10.0.0.9:20880") == 1

    # Fixed by its writer: delivered.
    fixed = instance("10.0.0.9")
    services.set(bad_path, to_curator(fixed))
    await rec.wait_for(lambda v: v == [good, other, fixed])
    assert registry.unparseable == 1


@pytest.mark.timeout(60)
async def test_session_expiry_recreates_the_instance_and_rearms_the_watches(
    registry: ZooKeeperRegistry, services: KazooClient, zk_server: ZooKeeperServer
) -> None:
    states: list[str] = []
    registry.add_state_listener(states.append)
    await registry.register_instance(instance("10.0.0.1", "r1"))
    mine = instance("10.0.0.1", "r2")
    await registry.register_instance(mine)  # what is re-created is the latest registration
    other = instance("10.0.0.2")
    create_other(services, other)
    rec = Recorder()
    assert await registry.watch_instances(APP, rec) == [mine, other]
    old = registry.session_credentials
    assert old is not None

    t0 = time.monotonic()
    await asyncio.to_thread(zk_server.expire_session, *old)
    await wait_for(lambda: LOST in states and registry.connected, 5, "lost, then connected")
    await wait_for(lambda: services.exists(instance_path(mine)) is not None, 5, "instance re-created")
    assert time.monotonic() - t0 < 5
    assert states[states.index(LOST) :] == [LOST, CONNECTED]
    data, stat = services.get(instance_path(mine))
    assert (data, stat.ephemeralOwner) == (to_curator(mine), registry.session_id)
    await rec.wait_for(lambda v: v == [mine, other])  # delivered again on the new session

    # The children watch and every data watch work on the new session.
    other2 = instance("10.0.0.2", "r9")
    services.set(instance_path(other2), to_curator(other2))
    await rec.wait_for(lambda v: v == [mine, other2])
    third = instance("10.0.0.3")
    create_other(services, third)
    await rec.wait_for(lambda v: v == [mine, other2, third])


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_zookeeper_restart_rearms_the_data_watches(
    registry: ZooKeeperRegistry, services: KazooClient, zk_server: ZooKeeperServer
) -> None:
    """kazoo drops every watch on a disconnect: after the reconnect each instance node is read again,
    so a later revision change is still seen; while down, nothing is delivered or registered."""
    other = instance("10.0.0.2")
    create_other(services, other)
    rec = Recorder()
    await registry.watch_instances(APP, rec)
    session = registry.session_id

    await asyncio.to_thread(zk_server.stop)
    await wait_for(lambda: not registry.connected, 5, "suspended")
    with pytest.raises(RegistryUnavailable):
        await registry.register_instance(instance("10.0.0.1"))
    with pytest.raises(RegistryUnavailable):
        await registry.watch_instances("another", Recorder())
    await asyncio.to_thread(zk_server.start)
    await wait_for(lambda: registry.connected, 10, "connected again")
    assert registry.session_id == session
    await wait_for(lambda: services.connected, 10, "the reader reconnected")

    n = len(rec.values)
    other2 = instance("10.0.0.2", "r2")
    services.set(instance_path(other2), to_curator(other2))
    await rec.wait_for(lambda v: v == [other2])
    assert len(rec.values) == n + 1  # the reconnect itself delivered nothing: nothing had changed


# ---------------------------------------------------------------------------------------------------
# the service-name mapping


async def test_add_mapping_creates_appends_and_leaves_what_is_there(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    path = mapping_path(IFACE)
    assert path == f"/dubbo/mapping/{IFACE}"
    await registry.add_mapping(IFACE, "app-a")
    data, stat = services.get(path)
    assert data == b"app-a" and stat.ephemeralOwner == 0  # persistent
    await registry.add_mapping(IFACE, "app-a")  # there already: nothing written
    assert services.get(path)[1].version == stat.version

    services.set(path, b"app-a, other ")  # another writer's text, blanks and all
    await registry.add_mapping(IFACE, "other")  # a trimmed name equals it: there already
    await registry.add_mapping(IFACE, "app-b")
    assert services.get(path)[0] == b"app-a, other ,app-b"  # appended, the rest kept as it was

    services.set(path, b"")  # empty content is no application (Curator5ZookeeperClient.doGetContent)
    await registry.add_mapping(IFACE, "app-c")
    assert services.get(path)[0] == b"app-c"

    with pytest.raises(ValueError):
        await registry.add_mapping(IFACE, "a,b")


async def test_add_mapping_concurrent_writers_all_end_up_in_it(
    registry: ZooKeeperRegistry,
    services: KazooClient,
    zk_server: ZooKeeperServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two sidecars (two sessions) adding applications at once: the compare-and-set on the node's
    version makes each one that loses read again and retry, so nobody's name is lost."""
    second = await started(zk_server)
    try:
        apps = [f"app-{i}" for i in range(8)]
        # Rounds of eight writers on a fresh node each, until one round really raced (some writes
        # lost and were retried): how the writes interleave is the scheduler's, and a loaded machine
        # can run a whole round one write after another.
        for round_ in range(10):
            interface = f"{IFACE}{round_}"
            with caplog.at_level(logging.DEBUG, logger="regproxy.registry.zookeeper"):
                await asyncio.gather(
                    *(
                        reg.add_mapping(interface, app)
                        for reg, app in zip([registry, second] * 4, apps, strict=True)
                    )
                )
            names = services.get(mapping_path(interface))[0].decode().split(",")
            assert sorted(names) == apps  # each once, in every round
            if "trying again" in caplog.text:
                break
        assert "trying again" in caplog.text, "no round raced: the compare-and-set was never exercised"
    finally:
        await second.stop()


async def test_watch_mapping_sees_creation_and_changes(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    path = mapping_path(IFACE)
    rec = Recorder()
    assert await registry.watch_mapping(IFACE, rec) == ()  # no node yet: an exists watch
    services.create(path, b"app-a", makepath=True)
    await rec.wait_for(lambda v: v == ("app-a",))
    services.set(path, b"app-a,app-b")
    await rec.wait_for(lambda v: v == ("app-a", "app-b"))
    await registry.add_mapping(IFACE, "app-c")  # our own write is seen too
    await rec.wait_for(lambda v: v == ("app-a", "app-b", "app-c"))
    assert registry.describe()["mappings"] == {IFACE: {"listeners": 1, "apps": ["app-a", "app-b", "app-c"]}}

    # Deleted: not a change (ZookeeperMetadataReport.MappingDataListener hears NodeCreated and
    # NodeDataChanged only); created again with other names: delivered.
    n = len(rec.values)
    services.delete(path)
    await asyncio.sleep(0.3)
    assert len(rec.values) == n
    services.create(path, b"app-d")
    await rec.wait_for(lambda v: v == ("app-d",))

    second = Recorder()
    assert await registry.watch_mapping(IFACE, second) == ("app-d",)
    await registry.unwatch_mapping(IFACE, rec)
    services.set(path, b"app-d,app-e")
    await second.wait_for(lambda v: v == ("app-d", "app-e"))
    assert rec.last == ("app-d",)
    await registry.unwatch_mapping(IFACE, second)
    assert registry.describe()["mappings"] == {}


# ---------------------------------------------------------------------------------------------------
# the metadata report


INFO = MetadataInfo.of(
    APP,
    [
        ServiceInfo(
            name=IFACE, version="1.0.0", protocol="dubbo", port=20880, path=IFACE, params={"side": "provider"}
        )
    ],
)


async def test_metadata_round_trip_and_absent(registry: ZooKeeperRegistry, services: KazooClient) -> None:
    assert INFO.revision
    assert await registry.read_metadata(APP, INFO.revision) is None
    await registry.write_metadata(INFO)
    path = metadata_path(APP, INFO.revision)
    assert path == f"/dubbo/metadata/{APP}/{INFO.revision}"
    data, stat = services.get(path)
    assert data == dump_json(INFO).encode() and stat.ephemeralOwner == 0  # persistent
    assert await registry.read_metadata(APP, INFO.revision) == INFO

    # A revision already there is left as it is (ZookeeperMetadataReport.publishAppMetadata).
    await registry.write_metadata(INFO)
    assert services.get(path)[1].version == stat.version
    # An empty node is no content: written over; read as none meanwhile.
    services.set(path, b"")
    assert await registry.read_metadata(APP, INFO.revision) is None
    await registry.write_metadata(INFO)
    assert services.get(path)[0] == dump_json(INFO).encode()

    assert await registry.read_metadata(APP, "other-revision") is None
    assert await registry.read_metadata("nobody", INFO.revision) is None


async def test_metadata_that_does_not_parse_is_an_error_naming_the_node(
    registry: ZooKeeperRegistry, services: KazooClient
) -> None:
    path = metadata_path(APP, "bad")
    services.create(path, json.dumps({"app": APP, "services": []}).encode(), makepath=True)
    with pytest.raises(RegistryError, match=f"{path}.*services") as info:
        await registry.read_metadata(APP, "bad")
    assert not isinstance(info.value, RegistryUnavailable)


# ---------------------------------------------------------------------------------------------------
# ACLs: the new nodes carry the profile's ACLs, as provider nodes and their parents do


USER, PASSWORD = "regproxy", "s3cret"
MINE = ACL(Permissions.ALL, Id("digest", make_digest_acl_credential(USER, PASSWORD)))
WORLD_READ = ACL(Permissions.READ, Id("world", "anyone"))


@pytest.fixture
def zk_admin(services: KazooClient, zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A client with our credentials: it can remove what the test created under our ACL."""
    client = KazooClient(hosts=zk_server.hosts, timeout=10.0, auth_data=[("digest", f"{USER}:{PASSWORD}")])
    client.start(timeout=15)
    try:
        yield client
    finally:
        for path in ("/dubbo", "/services"):
            with contextlib.suppress(NoNodeError):
                client.delete(path, recursive=True)
        client.stop()
        client.close()


async def test_instance_mapping_and_metadata_nodes_carry_the_acl(
    services: KazooClient, zk_admin: KazooClient, zk_server: ZooKeeperServer
) -> None:
    url = RegistryURL.parse(f"zookeeper://{zk_server.hosts}?username={USER}&password={PASSWORD}")
    reg = ZooKeeperRegistry(url, session_timeout_s=10.0, op_timeout_s=2.0)
    await reg.start()
    await wait_for(lambda: reg.connected, 10, "registry connected")
    try:
        mine = instance("10.0.0.1")
        await reg.register_instance(mine)
        await reg.add_mapping(IFACE, APP)
        await reg.write_metadata(INFO)
        assert INFO.revision
        assert zk_admin.get_acls(instance_path(mine))[0] == [MINE, WORLD_READ]  # as our provider nodes
        for path in (
            "/services",
            instances_path(APP),
            mapping_path(IFACE),
            "/dubbo/mapping",
            metadata_path(APP, INFO.revision),
            f"/dubbo/metadata/{APP}",
        ):
            assert zk_admin.get_acls(path)[0] == [MINE, WORLD_READ], path  # as our persistent nodes
        # Strangers read (Dubbo consumers without credentials still discover), but change nothing.
        assert parse_curator(services.get(instance_path(mine))[0], app=APP) == mine
        with pytest.raises(NoAuthError):
            services.set(instance_path(mine), b"x")
        with pytest.raises(NoAuthError):
            services.set(mapping_path(IFACE), b"evil")
    finally:
        await reg.stop()
