"""This sidecar's publications registered at application level (regproxy.discovery.app_registration).

In-process on ``memory://`` (a subclass that also records every write), with a fake ``Served`` in
place of the ingress's MetadataService.  What a Dubbo 3.3 provider does, and so what is pinned here
(apache/dubbo 3.3):

* ``register-mode`` (``RegistryProtocol`` registers interface-level unless ``instance``;
  ``ServiceDiscoveryRegistry`` registers the instance unless ``interface``);
* one instance per application, its revision ``MetadataInfo.calAndGetRevision`` of what it exports
  (regproxy.discovery.app_publish, compared with ``app_publications`` here);
* the metadata report written before the instance, and only with ``storage-type=remote``
  (``AbstractServiceDiscovery.register``: ``reportMetadata`` then ``doRegister``);
* the service-name mapping written once per interface (``ServiceNameMapping.map`` on export);
* a new revision replaces the instance's data (``AbstractServiceDiscovery.update``); the last service
  of an application gone, its instance goes (``unregister``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from regproxy.discovery.app_publish import app_publications
from regproxy.discovery.app_registration import SERVED_REVISIONS, AppRegistrar, RegisterMode
from regproxy.discovery.desired import PublishSpec
from regproxy.registry.base import RegistryUnavailable
from regproxy.registry.instances import REMOTE, AppInstance
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.metadata_info import MetadataInfo
from regproxy.registry.url import DubboURL, provider_url
from regproxy.tls import TLS_PARAM

# Every memory:// store starts empty and is emptied after each test.
pytestmark = pytest.mark.usefixtures("memory_stores")

KEY = "memory://a"
DEFAULT_APP = "regproxy"
IP, PORT = "10.1.2.3", 20882  # the sidecar's advertise IP and ingress port

Pub = tuple[PublishSpec, DubboURL]


def pub(interface: str, *, app: str = "shop", methods: Sequence[str] = ("m",)) -> Pub:
    """A publication and the URL the coordinator registers it with (Discovery._provider_url)."""
    spec = PublishSpec(interface=interface, port=20990, methods=tuple(methods), application=app)
    url = provider_url(
        interface=interface, ip=IP, port=PORT, methods=methods, application=app or DEFAULT_APP,
        pid=1, timestamp_ms=1,
    )  # fmt: skip
    return spec, url


class Recording(MemoryRegistry):
    """memory:// that records each write it is asked for (refused ones included)."""

    def __init__(self, name: str = "a") -> None:
        super().__init__(name=name)
        self.writes: list[tuple[str, str]] = []

    async def register_instance(self, instance: AppInstance) -> None:
        self.writes.append(("instance", f"{instance.app} {instance.revision}"))
        await super().register_instance(instance)

    async def unregister_instance(self, instance: AppInstance) -> None:
        self.writes.append(("unregister", instance.app))
        await super().unregister_instance(instance)

    async def add_mapping(self, interface: str, app: str) -> None:
        self.writes.append(("mapping", f"{interface} {app}"))
        await super().add_mapping(interface, app)

    async def write_metadata(self, info: MetadataInfo) -> None:
        self.writes.append(("report", f"{info.app} {info.revision}"))
        await super().write_metadata(info)


class Served:
    """The ingress's MetadataService as the registrar sees it: every set and drop."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str]] = []
        self.apps: dict[str, dict[str, MetadataInfo]] = {}

    def set(self, app: str, infos: dict[str, MetadataInfo]) -> None:
        self.ops.append(("set", app))
        self.apps[app] = dict(infos)

    def drop(self, app: str) -> None:
        self.ops.append(("drop", app))
        self.apps.pop(app, None)


@pytest.fixture
async def reg() -> AsyncIterator[Recording]:
    r = Recording()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def served() -> Served:
    return Served()


GREETER, CART, STOCK = pub("com.x.Greeter"), pub("com.x.Cart"), pub("com.x.Stock", app="stock")


async def test_interface_mode_registers_no_instance(reg: Recording, served: Served) -> None:
    registrar = AppRegistrar(served, mode="interface")
    assert registrar.registers_interfaces and not registrar.registers_instances
    assert await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
    assert reg.writes == [] and served.ops == [] and registrar.instances == {}


@pytest.mark.parametrize("mode", ["instance", "all"])
async def test_one_instance_per_application_with_its_revision(
    reg: Recording, served: Served, mode: RegisterMode
) -> None:
    registrar = AppRegistrar(served, mode=mode)
    assert registrar.registers_instances and registrar.registers_interfaces == (mode == "all")
    default = pub("com.x.Plain", app="")  # no application: the sidecar's own name
    pubs = [GREETER, CART, STOCK, default]
    assert await registrar.sync(KEY, reg, pubs, DEFAULT_APP)

    expected = app_publications(pubs, DEFAULT_APP)
    assert set(expected) == {"shop", "stock", DEFAULT_APP}
    for app, (info, inst) in expected.items():
        (registered,) = reg.instances(app)
        assert registered == inst and registered.revision == info.revision
        assert (registered.host, registered.port) == (IP, PORT)
        assert served.apps[app] == {info.revision: info}
    assert reg.mapping("com.x.Greeter") == "shop" and reg.mapping("com.x.Cart") == "shop"
    assert reg.mapping("com.x.Stock") == "stock" and reg.mapping("com.x.Plain") == DEFAULT_APP
    assert not [w for w in reg.writes if w[0] == "report"]  # storage local: no metadata report
    assert registrar.events == {"app_registrations": 3, "app_registration_failures": 0}


async def test_remote_storage_writes_the_report_before_the_instance(reg: Recording, served: Served) -> None:
    registrar = AppRegistrar(served, storage_type=REMOTE)
    assert await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
    ((info, inst),) = app_publications([GREETER], DEFAULT_APP, storage_type=REMOTE).values()
    assert reg.writes == [
        ("report", f"shop {info.revision}"),
        ("instance", f"shop {info.revision}"),
        ("mapping", "com.x.Greeter shop"),
    ]
    assert await reg.read_metadata("shop", info.revision or "") == info
    assert reg.instances("shop") == [inst] and inst.storage_type == REMOTE


async def test_the_same_publications_again_write_nothing(reg: Recording, served: Served) -> None:
    registrar = AppRegistrar(served, storage_type=REMOTE)
    assert await registrar.sync(KEY, reg, [GREETER, CART], DEFAULT_APP)
    writes = list(reg.writes)
    assert await registrar.sync(KEY, reg, [CART, GREETER], DEFAULT_APP)  # another order: same revision
    assert reg.writes == writes
    assert registrar.events["app_registrations"] == 1


async def test_a_new_publication_changes_the_revision_and_registers_again(
    reg: Recording, served: Served
) -> None:
    registrar = AppRegistrar(served, storage_type=REMOTE)
    await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
    ((old, _),) = app_publications([GREETER], DEFAULT_APP).values()
    reg.writes.clear()

    assert await registrar.sync(KEY, reg, [GREETER, CART], DEFAULT_APP)
    ((new, inst),) = app_publications([GREETER, CART], DEFAULT_APP, storage_type=REMOTE).values()
    assert new.revision != old.revision
    assert reg.instances("shop") == [inst]  # the same instance (address), its data replaced
    # The new revision's report, the instance, and the mapping of the new interface alone.
    assert reg.writes == [
        ("report", f"shop {new.revision}"),
        ("instance", f"shop {new.revision}"),
        ("mapping", "com.x.Cart shop"),
    ]
    # Both revisions served: a consumer that saw the old one a moment ago may still ask for it.
    assert list(served.apps["shop"]) == [old.revision, new.revision]
    assert registrar.events["app_registrations"] == 2


async def test_an_applications_last_publication_gone_takes_its_instance_and_service(
    reg: Recording, served: Served
) -> None:
    registrar = AppRegistrar(served)
    await registrar.sync(KEY, reg, [GREETER, STOCK], DEFAULT_APP)
    assert await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
    assert reg.instances("stock") == [] and len(reg.instances("shop")) == 1
    assert served.ops[-1] == ("drop", "stock") and set(served.apps) == {"shop"}
    assert reg.mapping("com.x.Stock") == "stock"  # a mapping is never removed, as in Dubbo

    assert await registrar.sync(KEY, reg, [], DEFAULT_APP)
    assert reg.instances("shop") == [] and served.apps == {}
    assert registrar.instances == {KEY: {}}


async def test_served_revisions_are_bounded(reg: Recording, served: Served) -> None:
    registrar = AppRegistrar(served)
    revisions = []
    for n in range(SERVED_REVISIONS + 2):
        greeter = pub("com.x.Greeter", methods=[f"m{i}" for i in range(n + 1)])
        await registrar.sync(KEY, reg, [greeter], DEFAULT_APP)
        ((info, _),) = app_publications([greeter], DEFAULT_APP).values()
        revisions.append(info.revision)
    assert list(served.apps["shop"]) == revisions[-SERVED_REVISIONS:]  # the newest last
    # Back to an old revision: it is the newest again, and still bounded.
    await registrar.sync(KEY, reg, [pub("com.x.Greeter", methods=["m0", "m1", "m2"])], DEFAULT_APP)
    again = revisions[2]  # among those served
    assert list(served.apps["shop"]) == [r for r in revisions[-SERVED_REVISIONS:] if r != again] + [again]


async def test_instance_metadata_lands_in_the_instance(reg: Recording, served: Served) -> None:
    registrar = AppRegistrar(served)
    registrar.instance_metadata[TLS_PARAM] = "true"
    await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
    ((info, plain),) = app_publications([GREETER], DEFAULT_APP).values()
    (registered,) = reg.instances("shop")
    assert registered.metadata[TLS_PARAM] == "true"
    assert registered.revision == info.revision  # not part of the revision
    assert {k: v for k, v in registered.metadata.items() if k != TLS_PARAM} == dict(plain.metadata)


async def test_an_unreachable_registry_fails_the_sync_and_the_next_one_succeeds(
    reg: Recording, served: Served
) -> None:
    registrar = AppRegistrar(served)
    reg.simulate_down()
    ((_, inst),) = app_publications([GREETER], DEFAULT_APP).values()
    with pytest.raises(RegistryUnavailable):  # what the registrar meets
        await reg.register_instance(inst)
    assert not await registrar.sync(KEY, reg, [GREETER, STOCK], DEFAULT_APP)
    assert registrar.events == {"app_registrations": 0, "app_registration_failures": 2}
    assert reg.instances("shop") == [] and registrar.instances == {KEY: {}}
    assert served.apps == {}  # registered nowhere: not served

    reg.simulate_up()
    assert await registrar.sync(KEY, reg, [GREETER, STOCK], DEFAULT_APP)
    assert len(reg.instances("shop")) == 1 and len(reg.instances("stock")) == 1
    assert registrar.events == {"app_registrations": 2, "app_registration_failures": 2}
    assert set(served.apps) == {"shop", "stock"}


async def test_a_new_revision_refused_keeps_the_old_instance_served(reg: Recording, served: Served) -> None:
    registrar = AppRegistrar(served)
    await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
    ((old, inst),) = app_publications([GREETER], DEFAULT_APP).values()
    reg.simulate_down()
    assert not await registrar.sync(KEY, reg, [GREETER, CART], DEFAULT_APP)
    assert reg.instances("shop") == [inst]  # still the old one
    assert old.revision in served.apps["shop"]
    reg.simulate_up()
    assert await registrar.sync(KEY, reg, [GREETER, CART], DEFAULT_APP)
    assert reg.instances("shop")[0].revision != old.revision


async def test_a_name_the_registry_refuses_is_logged_not_raised(
    reg: Recording, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    registrar = AppRegistrar(served)
    bad = pub("com.x.Bad", app="bad/name")  # no ZooKeeper path can hold it
    assert not await registrar.sync(KEY, reg, [GREETER, bad], DEFAULT_APP)
    assert registrar.events["app_registration_failures"] == 1
    assert len(reg.instances("shop")) == 1  # the others are registered all the same
    assert any(r.levelno == logging.WARNING and "bad/name" in r.getMessage() for r in caplog.records)
    assert "bad/name" not in served.apps


async def test_a_registry_without_application_level_discovery_is_left_alone(served: Served) -> None:
    class Plain(Recording):
        app_discovery = False

    reg = Plain()
    await reg.start()
    try:
        assert await AppRegistrar(served).sync(KEY, reg, [GREETER], DEFAULT_APP)
        assert reg.writes == [] and served.ops == []
    finally:
        await reg.stop()


async def test_forget_a_registry(reg: Recording, served: Served) -> None:
    other = Recording("b")
    await other.start()
    try:
        registrar = AppRegistrar(served)
        await registrar.sync(KEY, reg, [GREETER, STOCK], DEFAULT_APP)
        await registrar.sync("memory://b", other, [GREETER], DEFAULT_APP)
        registrar.forget(KEY)
        assert KEY not in registrar.instances
        assert set(served.apps) == {"shop"}  # stock was registered in KEY alone
        assert served.ops[-1] == ("drop", "stock")
        # Registered there again from scratch (its session, and what it held, are gone).
        reg.writes.clear()
        await registrar.sync(KEY, reg, [GREETER], DEFAULT_APP)
        assert [w[0] for w in reg.writes] == ["instance", "mapping"]
    finally:
        await other.stop()
