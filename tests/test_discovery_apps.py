"""Dubbo 3 application-level discovery through the Discovery coordinator, in-process (docs/discovery.md).

Registries are ``memory://`` stores (as in tests/test_discovery.py); the MetadataService is a fake
fetcher.  What is pinned: a subscription finds a provider registered at application level only (a
dubbo-go 3.1+ provider); the migration setting and where it is read from (the /sub's ``migration``,
then the consumer's ``migration.step``, read by Dubbo's ``MigrationRule.getStep`` before any rule,
then ``discovery.migration``); an address found both ways is one host, "both"; a restart keeps the
application-level providers of the state file routable until discovery says otherwise; and the
``/pub`` side of ``register_mode`` (Dubbo's ``dubbo.registry.register-mode``).  The same through real
processes: tests/test_app_discovery_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from regproxy.discovery import Discovery, PublishSpec, ingress_table
from regproxy.discovery.app_hosts import Source
from regproxy.discovery.app_publish import app_publications
from regproxy.discovery.app_registration import RegisterMode
from regproxy.discovery.views import found_counts, found_how
from regproxy.governance.migration import MigrationSetting
from regproxy.registry.instances import AppInstance, instance_metadata
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, Subscription, provider_url
from regproxy.routing import RoutingTable, TableHolder
from regproxy.state import STATE_FILE, StateStore
from tests.metadata_fetcher import Fetcher
from tests.wait import wait_for

# Every memory:// store starts empty and is emptied after each test.
pytestmark = pytest.mark.usefixtures("memory_stores")

IFACE = "com.x.Svc"
APP = "shop"
REG_A = RegistryURL.parse("zookeeper://a:1")  # served by the memory store "a": the factory maps it
KEY = REG_A.to_url(redact=False)
SUB = Subscription(IFACE, "1.0.0", "g")
NAME = SUB.cluster_name
INTERFACE_ONLY = "10.9.9.9:20880"  # registered at interface level only (a Dubbo 2 provider)
APP_ONLY = "10.0.0.1:20880"  # registered at application level only (a dubbo-go 3.1+ provider)

PARAMS = {"interface": IFACE, "methods": "m", "version": "1.0.0", "group": "g", "side": "provider"}
META = MetadataInfo.of(APP, [ServiceInfo(IFACE, "g", "1.0.0", "dubbo", -1, IFACE, PARAMS)])
REV = META.revision or ""


def instance(ip: str) -> AppInstance:
    return AppInstance(app=APP, host=ip, port=20880, metadata=instance_metadata(REV))


def interface_provider(ip: str) -> DubboURL:
    return provider_url(
        interface=IFACE, ip=ip, port=20880, version="1.0.0", group="g", methods=("m",), pid=1, timestamp_ms=1
    )


def new_discovery(
    made: dict[str, MemoryRegistry],
    fetcher: Fetcher,
    *,
    data_dir: Path | None = None,
    down: bool = False,
    **kw: object,
) -> Discovery:
    def factory(url: RegistryURL) -> MemoryRegistry:
        reg = MemoryRegistry(name=url.hosts[0].host)
        if down:
            reg.simulate_down()  # start() leaves it unconnected until simulate_up
        made[url.hosts[0].host] = reg
        return reg

    kw.setdefault("metadata_fetcher", fetcher)
    static = RoutingTable()
    return Discovery(
        registry_urls=[REG_A],
        factory=factory,
        egress=TableHolder(static),
        ingress=TableHolder(ingress_table()),
        static_table=static,
        advertise_ip="10.1.2.3",
        ingress_port=20882,
        store=StateStore(data_dir) if data_dir else None,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(META)  # the providers' MetadataService


@pytest.fixture
async def make(fetcher: Fetcher) -> AsyncIterator[Callable[..., Discovery]]:
    started: list[Discovery] = []
    made: dict[str, MemoryRegistry] = {}

    def build(**kw: object) -> Discovery:
        d = new_discovery(made, fetcher, **kw)  # type: ignore[arg-type]
        started.append(d)
        return d

    build.made = made  # type: ignore[attr-defined]
    yield build
    for d in started:
        await d.stop()


async def started(make: Callable[..., Discovery], **kw: object) -> tuple[Discovery, MemoryRegistry]:
    d = make(**kw)
    await d.start()
    return d, make.made["a"]  # type: ignore[attr-defined]


def host_addresses(d: Discovery, name: str = NAME) -> list[str]:
    return sorted(h.address for h in d.hosts_of(d.subscriptions[name]))


def routed_addresses(d: Discovery) -> list[str]:
    table = d.egress.current
    route = table.match(IFACE, "1.0.0", "m", "g")
    assert route is not None
    return sorted(h.address for h in table.clusters[route.cluster].hosts)


# ---------------------------------------------------------------------------------------------------
# consuming


async def test_a_provider_found_at_application_level_only_is_routed(make: Callable[..., Discovery]) -> None:
    d, reg = await started(make)
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    cluster, providers = await d.subscribe(SUB)
    assert cluster == NAME and [p["address"] for p in providers] == [APP_ONLY]
    assert routed_addresses(d) == [APP_ONLY]
    assert found_how(d, NAME, APP_ONLY) == {"how": "application", "application": APP, "revision": REV}
    assert found_counts(d, NAME, KEY) == {"interface": 0, "application": 1, "both": 0}
    assert d.migration_of(d.subscriptions[NAME]) == MigrationSetting.BOTH  # the default

    # Instances that come and go after the subscription apply as registry events do.
    reg.set_instance(instance("10.0.0.2"))
    await wait_for(lambda: routed_addresses(d) == [APP_ONLY, "10.0.0.2:20880"], 2, "the second instance")
    reg.remove_instance(APP, APP_ONLY)
    await wait_for(lambda: routed_addresses(d) == ["10.0.0.2:20880"], 2, "the first instance to go")
    assert d.event_counts()["app_instance_events"] == 2


MIGRATIONS = [
    # (discovery.migration, the /sub's migration, the consumer's migration.step) -> setting in force
    pytest.param("interface", "", "", MigrationSetting.INTERFACE, id="global-interface"),
    pytest.param("application", "", "", MigrationSetting.APPLICATION, id="global-application"),
    pytest.param("both", "", "", MigrationSetting.BOTH, id="global-both"),
    pytest.param("both", "interface", "", MigrationSetting.INTERFACE, id="sub-beats-global"),
    pytest.param("interface", "", "FORCE_APPLICATION", MigrationSetting.APPLICATION, id="step-beats-global"),
    pytest.param("interface", "", "APPLICATION_FIRST", MigrationSetting.BOTH, id="step-application-first"),
    pytest.param("both", "", "FORCE_INTERFACE", MigrationSetting.INTERFACE, id="step-force-interface"),
    pytest.param("interface", "", "NO_SUCH_STEP", MigrationSetting.INTERFACE, id="unknown-step-ignored"),
    pytest.param("both", "application", "FORCE_INTERFACE", MigrationSetting.APPLICATION, id="sub-beats-step"),
]
SELECTED = {
    MigrationSetting.INTERFACE: [INTERFACE_ONLY],
    MigrationSetting.APPLICATION: [APP_ONLY],
    MigrationSetting.BOTH: [APP_ONLY, INTERFACE_ONLY],
}


@pytest.mark.parametrize(("configured", "migration", "step", "setting"), MIGRATIONS)
async def test_the_migration_setting_selects_the_providers(
    make: Callable[..., Discovery], configured: str, migration: str, step: str, setting: MigrationSetting
) -> None:
    d, reg = await started(make, migration=MigrationSetting(configured))
    reg.set_provider(interface_provider("10.9.9.9"))
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    params = {"migration.step": step} if step else None
    await d.subscribe(SUB, params=params, migration=migration)
    assert d.migration_of(d.subscriptions[NAME]) == setting
    assert host_addresses(d) == SELECTED[setting]
    # interface: nothing is looked up at application level.
    assert (d.apps.view(KEY, NAME) is None) == (setting == MigrationSetting.INTERFACE)


async def test_a_new_migration_on_the_sub_applies(make: Callable[..., Discovery]) -> None:
    d, reg = await started(make)
    reg.set_provider(interface_provider("10.9.9.9"))
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    await d.subscribe(SUB, migration="interface")
    assert routed_addresses(d) == [INTERFACE_ONLY]
    # A changed setting does not wait for the application-level addresses (Discovery._change_migration
    # tracks with wait=False): they apply when found.
    await d.subscribe(SUB, migration="application")
    await wait_for(lambda: routed_addresses(d) == [APP_ONLY], 2, "application-level providers only")
    await d.subscribe(SUB, migration="both")
    assert routed_addresses(d) == [APP_ONLY, INTERFACE_ONLY]  # the metadata is cached by now
    await d.subscribe(SUB, migration="interface")
    assert routed_addresses(d) == [INTERFACE_ONLY]
    assert d.apps.view(KEY, NAME) is None


async def test_an_address_found_both_ways_is_one_host(make: Callable[..., Discovery]) -> None:
    d, reg = await started(make)
    reg.set_provider(interface_provider("10.0.0.1"))
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    _, providers = await d.subscribe(SUB)
    assert [p["address"] for p in providers] == [APP_ONLY]
    assert found_how(d, NAME, APP_ONLY) == {"how": "both", "application": APP, "revision": REV}
    assert found_counts(d, NAME, KEY) == {"interface": 0, "application": 0, "both": 1}
    # Its application-level URL is the one used (Dubbo's preference), so it carries the application.
    (url,) = d.subscriptions[NAME].providers[KEY]
    assert url.params["remote.application"] == APP


async def test_a_restart_keeps_application_level_providers_routable(
    make: Callable[..., Discovery], fetcher: Fetcher, tmp_path: Path, fast_retries: None
) -> None:
    first, reg = await started(make, data_dir=tmp_path)
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    await first.subscribe(SUB)
    assert routed_addresses(first) == [APP_ONLY]
    await first.stop()  # the state file has the provider, found at application level

    # Restarted with the registry unreachable, and its MetadataService not answering yet. No empty-
    # provider hold: what keeps the host is the restore alone.
    fetcher.failing[REV] = "connection refused"
    d, reg = await started(make, data_dir=tmp_path, down=True, empty_protection_s=0)
    assert not reg.connected
    assert NAME in d.from_cache and routed_addresses(d) == [APP_ONLY]  # before the registry says anything
    st = d.subscriptions[NAME]
    assert [f.application for f in st.app_found[KEY]] == [Source(APP, REV)]

    # The registry is back: its interface-level list is empty and the metadata cannot be fetched;
    # the host stays, as found at application level.
    reg.simulate_up()
    await wait_for(lambda: KEY in st.watching, 2, "the subscription to be watched again")
    await wait_for(lambda: fetcher.count(REV) >= 2, 2, "the metadata to be asked for again")
    assert routed_addresses(d) == [APP_ONLY]
    assert found_how(d, NAME, APP_ONLY) == {"how": "application", "application": APP, "revision": REV}

    del fetcher.failing[REV]
    await wait_for(lambda: (APP, REV) in d.apps.metadata, 2, "the metadata")
    assert routed_addresses(d) == [APP_ONLY]
    assert d.apps.failures == {}


async def test_a_mapping_naming_an_unusable_application_does_not_fail_the_sub(
    make: Callable[..., Discovery],
) -> None:
    d, reg = await started(make)
    reg.set_provider(interface_provider("10.9.9.9"))
    reg.set_mapping(IFACE, f"{APP},bad/name")  # another writer's text
    reg.set_instance(instance("10.0.0.1"))
    _, providers = await d.subscribe(SUB)
    assert sorted(p["address"] for p in providers) == [APP_ONLY, INTERFACE_ONLY]


# ---------------------------------------------------------------------------------------------------
# publishing

SPEC = PublishSpec(interface=IFACE, port=20990, methods=("m",), version="1.0.0", group="g", application=APP)
OWN = "10.1.2.3:20882"  # the advertise IP and ingress port


@pytest.mark.parametrize("mode", ["interface", "instance", "all"])
async def test_register_mode_says_what_a_pub_writes(
    make: Callable[..., Discovery], mode: RegisterMode
) -> None:
    d, reg = await started(make, register_mode=mode)
    url = await d.publish(SPEC)
    nodes = reg.nodes(IFACE)
    assert [str(n) for n in nodes] == ([url] if mode != "instance" else [])
    if mode == "interface":
        assert reg.instances(APP) == [] and reg.mapping(IFACE) is None
        return
    pub = d.publications[SPEC.key]
    ((info, expected),) = app_publications([(SPEC, pub.url)], d.application).values()
    (inst,) = reg.instances(APP)
    assert inst == expected and inst.id == OWN and inst.revision == info.revision
    assert reg.mapping(IFACE) == APP
    assert d.event_counts()["app_registrations"] == 1


async def test_unpublish_removes_the_instance(make: Callable[..., Discovery]) -> None:
    d, reg = await started(make, register_mode="instance")
    d.unpublish_grace_s = 0
    await d.publish(SPEC)
    assert len(reg.instances(APP)) == 1
    await d.unpublish(SPEC)
    assert reg.instances(APP) == [] and reg.nodes(IFACE) == []
    assert reg.mapping(IFACE) == APP  # never removed, as in Dubbo


async def test_withdraw_all_removes_the_instances(make: Callable[..., Discovery]) -> None:
    d, reg = await started(make)  # register_mode all: the node and the instance
    await d.publish(SPEC)
    other = PublishSpec(interface="com.x.Other", port=20991, methods=("m",), application="stock")
    await d.publish(other)
    assert len(reg.instances(APP)) == 1 and len(reg.instances("stock")) == 1
    await d.withdraw_all()
    assert reg.instances(APP) == [] and reg.instances("stock") == []
    assert reg.nodes(IFACE) == [] and reg.nodes("com.x.Other") == []
    assert set(d.publications) == {SPEC.key, other.key}  # kept: a restart publishes them again


async def test_a_subscription_finds_a_sidecar_that_registers_instances_only(
    make: Callable[..., Discovery], fetcher: Fetcher
) -> None:
    """Two sidecars on one registry: the provider side registers its instance only (register_mode
    instance), the consumer side finds it at application level; the fake fetcher stands in for the
    provider's ingress answering MetadataService.getMetadataInfo."""
    provider, reg = await started(make, register_mode="instance")
    await provider.publish(SPEC)
    pub = provider.publications[SPEC.key]
    ((info, _),) = app_publications([(SPEC, pub.url)], provider.application).values()

    async def ingress(inst: AppInstance, revision: str) -> MetadataInfo:
        assert (inst.id, revision) == (OWN, info.revision)
        return info

    consumer = make(metadata_fetcher=ingress)
    consumer.advertise_ip = "10.7.7.7"
    await consumer.start()
    _, providers = await consumer.subscribe(SUB)
    assert [p["address"] for p in providers] == [OWN]
    assert found_how(consumer, NAME, OWN) == {
        "how": "application",
        "application": APP,
        "revision": info.revision,
    }
    assert reg.nodes(IFACE) == []  # found at application level alone


async def test_a_state_file_migration_that_is_no_setting_is_dropped_not_the_subscription(
    make: Callable[..., Discovery], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = await started(make, data_dir=tmp_path)
    await first.subscribe(SUB, migration="application")
    await first.stop()
    path = tmp_path / STATE_FILE
    saved = json.loads(path.read_text())
    assert [s["migration"] for s in saved["subscriptions"]] == ["application"]
    saved["subscriptions"][0]["migration"] = "sideways"  # edited by hand, say
    path.write_text(json.dumps(saved))

    d, _ = await started(make, data_dir=tmp_path)
    st = d.subscriptions[NAME]  # kept
    assert st.migration == "" and d.migration_of(st) == "both"
    assert "migration 'sideways' is none of interface, application, both" in caplog.text
