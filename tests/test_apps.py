"""Application-level discovery for the subscriptions (regproxy.discovery.apps.AppDiscovery), in-process.

The registry is ``memory://`` (its test hooks play the Dubbo 3 provider application: instances, the
service-name mapping, the metadata report); only the MetadataService is a fake (:class:`Fetcher`).
The behaviour pinned is Dubbo 3.3's consumer side (dubbo-registry-api):

* mapping → applications → instances → ``MetadataInfo`` per revision → URLs:
  ``ServiceDiscoveryRegistry.subscribe`` with ``ServiceNameMapping.getMappingByUrl`` (``provided-by``
  read first, replacing the mapping), ``ServiceInstancesChangedListener.doOnEvent``;
* a ``MetadataInfo`` is fetched once per (application, revision) (``doOnEvent`` groups instances by
  revision and asks ``MetadataUtils.getRemoteMetadata`` once per revision), from the metadata report
  when the instance says ``dubbo.metadata.storage-type=remote`` (``MetadataUtils.getRemoteMetadata``),
  else from the instance's MetadataService;
* a revision without its ``MetadataInfo`` adds no address, and when no revision has one nothing is
  notified (``doOnEvent``: "Address refresh failed", retried); regproxy's departure, an instance that
  moved to such a revision keeping its previous revision's addresses, is the module's own (its docstring).

The end-to-end version of these, with real processes, is tests/test_app_discovery_e2e.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from regproxy.discovery import apps as apps_module
from regproxy.discovery.app_hosts import REMOTE_APPLICATION_KEY, FoundURL, Source
from regproxy.discovery.apps import AppDiscovery, provided_by
from regproxy.registry.instances import REMOTE, REVISION_KEY, AppInstance, instance_metadata
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from regproxy.registry.url import Subscription
from tests.memory import settle
from tests.metadata_fetcher import Fetcher
from tests.wait import wait_for

# Every memory:// store starts empty and is emptied after each test.
pytestmark = pytest.mark.usefixtures("memory_stores")

APP = "shop"
APP2 = "stock"
IFACE = "com.x.AppSvc"
KEY = "memory://a"  # the registry key AppDiscovery files what it watches under
SUB = Subscription(IFACE)
NAME = SUB.cluster_name


def info(app: str = APP, *methods: str) -> MetadataInfo:
    """A MetadataInfo exporting IFACE on dubbo (port from the instance), its revision calculated
    (``MetadataInfo.calAndGetRevision``): other methods, another revision."""
    params = {"interface": IFACE, "methods": ",".join(methods or ("m",)), "side": "provider"}
    return MetadataInfo.of(app, [ServiceInfo(IFACE, None, None, "dubbo", -1, IFACE, params)])


R1, R2, R3 = info(APP, "a"), info(APP, "a", "b"), info(APP, "a", "b", "c")
S1 = info(APP2, "s")


def instance(ip: str, meta: MetadataInfo = R1, *, app: str = APP, remote: bool = False) -> AppInstance:
    assert meta.revision
    metadata = instance_metadata(meta.revision, storage_type=REMOTE if remote else "local")
    return AppInstance(app=app, host=ip, port=20880, metadata=metadata)


class Found:
    """The ``on_found`` callback: every delivery."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[FoundURL, ...]]] = []

    def __call__(self, name: str, key: str, found: tuple[FoundURL, ...]) -> None:
        self.calls.append((name, key, found))

    @property
    def last(self) -> tuple[FoundURL, ...] | None:
        return self.calls[-1][2] if self.calls else None

    def addresses(self) -> list[str]:
        return sorted(f.url.address for f in self.last or ())

    def sources(self) -> dict[str, Source | None]:
        return {f.url.address: f.application for f in self.last or ()}


def watched_apps(reg: MemoryRegistry) -> set[str]:
    # The memory registry keeps no describe(): its listener tables are what a watch leaves behind.
    return {app for app, listeners in reg._instance_listeners.items() if listeners}


def watched_mappings(reg: MemoryRegistry) -> set[str]:
    return {interface for interface, listeners in reg._mapping_listeners.items() if listeners}


@pytest.fixture
async def reg() -> AsyncIterator[MemoryRegistry]:
    r = MemoryRegistry(name="a")
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(R1, R2, R3, S1)


@pytest.fixture
def found() -> Found:
    return Found()


@pytest.fixture
async def disc(fetcher: Fetcher, found: Found) -> AsyncIterator[AppDiscovery]:
    d = AppDiscovery(found, fetcher)
    yield d
    await d.stop()


# ---------------------------------------------------------------------------------------------------
# tracking


async def test_track_follows_mapping_instances_and_metadata_to_urls(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    result = await disc.track(KEY, reg, NAME, SUB)
    assert result is not None and [f.url.address for f in result] == ["10.0.0.1:20880"]
    assert found.calls == [(NAME, KEY, result)]  # delivered once, and returned
    (f,) = result
    assert f.application == Source(APP, R1.revision) and not f.interface
    # InstanceAddressURL's view: the instance metadata under the service's params.
    assert f.url.params[REMOTE_APPLICATION_KEY] == APP and f.url.params[REVISION_KEY] == R1.revision
    assert f.url.params["methods"] == "a" and f.url.interface == IFACE
    assert fetcher.calls == [(APP, R1.revision, "10.0.0.1:20880")]
    assert disc.events["metadata_fetches"] == 1
    assert disc.view(KEY, NAME) == {
        "from": "mapping",
        "applications": {
            APP: {
                "instances": 1,
                "revisions": {R1.revision: {"instances": ["10.0.0.1:20880"], "metadata": "cached"}},
            }
        },
    }
    # Tracking again with the same subscription changes nothing and answers at once.
    assert await disc.track(KEY, reg, NAME, SUB) == result
    assert len(found.calls) == 1 and len(fetcher.calls) == 1


async def test_track_without_wait_returns_at_once_and_delivers_later(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    fetcher.gate = asyncio.Event()
    assert await disc.track(KEY, reg, NAME, SUB, wait=False) is None
    assert found.calls == []
    assert disc.view(KEY, NAME)["applications"][APP]["revisions"][R1.revision]["metadata"] == "fetching"
    fetcher.gate.set()
    await wait_for(lambda: found.calls, 2, "the addresses to be delivered")
    assert found.addresses() == ["10.0.0.1:20880"]


async def test_track_with_wait_gives_up_after_the_initial_wait(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps_module, "INITIAL_WAIT_S", 0.05)
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    fetcher.gate = asyncio.Event()
    assert await disc.track(KEY, reg, NAME, SUB) is None  # waited, then answered without
    fetcher.gate.set()
    await wait_for(lambda: found.calls, 2, "the addresses to be delivered")


async def test_no_application_or_no_instance_is_an_empty_answer_not_a_wait(
    reg: MemoryRegistry, disc: AppDiscovery, found: Found
) -> None:
    assert await disc.track(KEY, reg, NAME, SUB) == ()  # no mapping: nothing, at once
    reg.set_mapping("com.x.Other", APP)
    other = Subscription("com.x.Other")
    assert await disc.track(KEY, reg, other.cluster_name, other) == ()  # an application, no instance
    assert [c[2] for c in found.calls] == [(), ()]


def test_provided_by_reads_the_consumer_parameter() -> None:
    assert provided_by({"provided-by": " b, a ,, b"}) == ("b", "a")  # trimmed, in order, once each
    assert provided_by({}) == () and provided_by(None) == ()


async def test_provided_by_replaces_the_mapping(
    reg: MemoryRegistry, disc: AppDiscovery, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2", S1, app=APP2))
    result = await disc.track(KEY, reg, NAME, SUB, named=(APP2,))
    assert result is not None and [f.url.address for f in result] == ["10.0.0.2:20880"]
    assert watched_mappings(reg) == set()  # the mapping is not even read
    assert watched_apps(reg) == {APP2}
    assert disc.view(KEY, NAME)["from"] == "provided-by"
    # A change of provided-by applies when tracked again.
    result = await disc.track(KEY, reg, NAME, SUB, named=(APP,))
    assert result is not None and [f.url.address for f in result] == ["10.0.0.1:20880"]
    assert watched_apps(reg) == {APP}


async def test_switching_to_provided_by_drops_the_mapping_watch(
    reg: MemoryRegistry, disc: AppDiscovery
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2", S1, app=APP2))
    await disc.track(KEY, reg, NAME, SUB)
    assert watched_mappings(reg) == {IFACE}
    await disc.track(KEY, reg, NAME, SUB, named=(APP2,))
    assert watched_apps(reg) == {APP2}
    assert watched_mappings(reg) == set()


async def test_named_may_be_any_iterable(reg: MemoryRegistry, disc: AppDiscovery) -> None:
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2", S1, app=APP2))
    await disc.track(KEY, reg, NAME, SUB, named=iter([APP]))
    result = await disc.track(KEY, reg, NAME, SUB, named=iter([APP2]))
    assert result is not None and [f.url.address for f in result] == ["10.0.0.2:20880"]


# ---------------------------------------------------------------------------------------------------
# registry events


async def test_mapping_change_adds_and_drops_applications(
    reg: MemoryRegistry, disc: AppDiscovery, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2", S1, app=APP2))
    await disc.track(KEY, reg, NAME, SUB)
    assert watched_apps(reg) == {APP}

    reg.set_mapping(IFACE, f"{APP},{APP2}")
    await wait_for(lambda: found.addresses() == ["10.0.0.1:20880", "10.0.0.2:20880"], 2, "both apps")
    assert watched_apps(reg) == {APP, APP2}
    assert disc.events["app_mapping_events"] == 1

    # APP leaves the mapping (another writer rewrote it): its hosts go and nothing watches it.
    reg.set_mapping(IFACE, APP2)
    await wait_for(lambda: found.addresses() == ["10.0.0.2:20880"], 2, "APP's hosts to go")
    assert watched_apps(reg) == {APP2}
    assert set(disc.view(KEY, NAME)["applications"]) == {APP2}
    n = disc.events["app_instance_events"]
    reg.set_instance(instance("10.0.0.3"))  # not watched: no event
    await settle()
    assert disc.events["app_instance_events"] == n


async def test_an_application_stays_watched_while_another_subscription_needs_it(
    reg: MemoryRegistry, disc: AppDiscovery, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2", S1, app=APP2))
    other = Subscription(IFACE, "", "g")  # another subscription naming APP itself
    await disc.track(KEY, reg, NAME, SUB)
    await disc.track(KEY, reg, other.cluster_name, other, named=(APP,))
    reg.set_mapping(IFACE, APP2)
    await wait_for(lambda: watched_apps(reg) == {APP, APP2}, 2, "APP2 watched, APP kept")
    await settle()
    assert watched_apps(reg) == {APP, APP2}
    await disc.untrack(KEY, other.cluster_name)
    assert watched_apps(reg) == {APP2}


async def test_instances_added_removed_and_moved_to_a_revision_are_delivered(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    await disc.track(KEY, reg, NAME, SUB)

    reg.set_instance(instance("10.0.0.2"))
    await wait_for(lambda: found.addresses() == ["10.0.0.1:20880", "10.0.0.2:20880"], 2, "the added one")
    assert fetcher.count(R1.revision) == 1  # its revision was known already

    reg.remove_instance(APP, "10.0.0.1:20880")
    await wait_for(lambda: found.addresses() == ["10.0.0.2:20880"], 2, "the removed one to go")

    reg.set_instance(instance("10.0.0.2", R2))
    await wait_for(
        lambda: found.sources() == {"10.0.0.2:20880": Source(APP, R2.revision)}, 2, "the new revision"
    )
    assert found.last is not None and found.last[0].url.params["methods"] == "a,b"
    assert disc.events["app_instance_events"] == 3


# ---------------------------------------------------------------------------------------------------
# the metadata cache


async def test_one_fetch_per_revision_and_none_for_a_revision_seen_before(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2"))
    result = await disc.track(KEY, reg, NAME, SUB)
    assert result is not None and len(result) == 2
    assert fetcher.count(R1.revision) == 1  # two instances, one revision: asked once

    for ip in ("10.0.0.1", "10.0.0.2"):
        reg.set_instance(instance(ip, R2))
    await wait_for(lambda: {s.revision for s in found.sources().values() if s} == {R2.revision}, 2, "R2")
    for ip in ("10.0.0.1", "10.0.0.2"):  # rolled back
        reg.set_instance(instance(ip, R1))
    await wait_for(lambda: {s.revision for s in found.sources().values() if s} == {R1.revision}, 2, "R1")
    assert [c[1] for c in fetcher.calls] == [R1.revision, R2.revision]  # R1 from the cache

    # A second subscription, on another interface of the same application, shares the cache.
    reg.set_mapping("com.x.Other", APP)
    other = Subscription("com.x.Other")
    assert await disc.track(KEY, reg, other.cluster_name, other) == ()  # R1 exports IFACE only
    assert len(fetcher.calls) == 2


async def test_unused_metadata_is_kept_within_bounds(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps_module, "UNUSED_KEPT", 1)
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1", R1))
    await disc.track(KEY, reg, NAME, SUB)
    for meta in (R2, R3):
        reg.set_instance(instance("10.0.0.1", meta))
        await wait_for(lambda meta=meta: (APP, meta.revision) in disc.metadata, 2, "the next revision")
    # R3 in use; R1 and R2 unused, the oldest (R1) dropped beyond UNUSED_KEPT.
    assert set(disc.metadata) == {(APP, R2.revision), (APP, R3.revision)}
    disc.drop_registry(KEY)  # nothing in use any more: the newest unused one kept
    assert set(disc.metadata) == {(APP, R3.revision)}


# ---------------------------------------------------------------------------------------------------
# fetch failures


class _RecordingSleeps:
    """apps' ``asyncio`` with ``sleep`` recording the delay asked for and waiting a moment only: the
    backoff is read exactly, without waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.001)


async def test_a_failing_fetch_is_retried_with_backoff_and_shown(
    reg: MemoryRegistry,
    disc: AppDiscovery,
    fetcher: Fetcher,
    found: Found,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps = _RecordingSleeps()
    monkeypatch.setattr(apps_module, "asyncio", sleeps)
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    fetcher.failing[R1.revision] = "connection refused"
    assert await disc.track(KEY, reg, NAME, SUB, wait=False) is None
    await wait_for(lambda: fetcher.count(R1.revision) >= 8, 2, "eight attempts")
    # docs/discovery.md: 0.5 s, doubling up to 30 s (RETRY_FIRST_S, RETRY_MAX_S).
    assert sleeps.delays[:8] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert found.calls == []  # the only revision lacks its metadata: nothing delivered
    failure = disc.failures[(APP, R1.revision)]
    assert failure.error == "connection refused"
    # Every failed attempt counts (one instance: one call per attempt).
    assert disc.events["metadata_fetch_failures"] == failure.attempts == fetcher.count(R1.revision)
    state = disc.view(KEY, NAME)["applications"][APP]["revisions"][R1.revision]["metadata"]
    assert state == f"failing ({failure.attempts} attempt(s)): connection refused"

    caplog.set_level(logging.INFO, logger=apps_module.__name__)
    del fetcher.failing[R1.revision]
    await wait_for(lambda: found.calls, 2, "the addresses once the fetch succeeds")
    assert found.addresses() == ["10.0.0.1:20880"]
    assert disc.failures == {}
    assert disc.view(KEY, NAME)["applications"][APP]["revisions"][R1.revision]["metadata"] == "cached"
    assert any("fetched after" in r.getMessage() for r in caplog.records)
    assert disc.events["metadata_fetches"] == 1


async def test_the_error_of_every_instance_asked_is_reported(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2"))
    fetcher.failing[R1.revision] = "timed out"
    await disc.track(KEY, reg, NAME, SUB, wait=False)
    await wait_for(lambda: (APP, R1.revision) in disc.failures, 2, "the failure")
    # Each instance of the revision is asked in turn before the attempt counts as failed.
    assert {c[2] for c in fetcher.calls} == {"10.0.0.1:20880", "10.0.0.2:20880"}
    assert disc.failures[(APP, R1.revision)].error == "timed out; timed out"


async def test_a_fetch_stops_when_no_instance_has_its_revision(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    fetcher.failing[R2.revision] = "no answer"
    await disc.track(KEY, reg, NAME, SUB)
    reg.set_instance(instance("10.0.0.1", R2))
    await wait_for(lambda: fetcher.count(R2.revision) >= 2, 2, "R2 retried")
    reg.set_instance(instance("10.0.0.1", R3))  # moved on before R2 was ever fetched
    await wait_for(lambda: found.sources() == {"10.0.0.1:20880": Source(APP, R3.revision)}, 2, "R3")
    await wait_for(lambda: (APP, R2.revision) not in disc.failures, 2, "R2's fetch to stop")
    n = fetcher.count(R2.revision)
    await asyncio.sleep(0.06)  # three retry periods (RETRY_MAX_S is 0.02 here)
    assert fetcher.count(R2.revision) == n
    assert disc._fetching == {}  # its task ended (private: nothing public shows a fetch that stopped)


async def test_remote_storage_reads_the_metadata_report(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_metadata(APP, R1.revision or "", R1)
    reg.set_instance(instance("10.0.0.1", remote=True))
    result = await disc.track(KEY, reg, NAME, SUB)
    assert result is not None and [f.url.address for f in result] == ["10.0.0.1:20880"]
    assert fetcher.calls == []  # the MetadataService is not asked


async def test_a_missing_or_wrong_report_is_a_failure_naming_the_registry(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1", remote=True))
    await disc.track(KEY, reg, NAME, SUB, wait=False)
    await wait_for(lambda: (APP, R1.revision) in disc.failures, 2, "the failure")
    error = disc.failures[(APP, R1.revision)].error
    assert f"registry {reg.name}" in error and "no metadata" in error and str(R1.revision) in error
    assert fetcher.calls == [] and found.calls == []

    reg.set_metadata(APP, R1.revision or "", R2)  # another revision's document under R1
    await wait_for(lambda: "holds revision" in disc.failures[(APP, R1.revision)].error, 2, "the mismatch")
    assert str(R2.revision) in disc.failures[(APP, R1.revision)].error

    reg.set_metadata(APP, R1.revision or "", R1)
    await wait_for(lambda: found.calls, 2, "the addresses")
    assert disc.failures == {}


# ---------------------------------------------------------------------------------------------------
# faults never remove hosts


async def test_an_instance_keeps_its_previous_revision_while_the_new_one_fails(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2"))
    await disc.track(KEY, reg, NAME, SUB)
    delivered = len(found.calls)
    fetcher.failing[R2.revision] = "refused"

    reg.set_instance(instance("10.0.0.1", R2))  # moves to a revision that cannot be fetched
    reg.set_instance(instance("10.0.0.3", R2))  # a new instance at that revision
    await wait_for(lambda: fetcher.count(R2.revision) >= 2, 2, "R2 retried")
    # 10.0.0.2's revision is fine, 10.0.0.1 stands at R1 still, 10.0.0.3 adds nothing.
    assert len(found.calls) == delivered  # nothing changed, nothing delivered
    assert found.sources() == {
        "10.0.0.1:20880": Source(APP, R1.revision),
        "10.0.0.2:20880": Source(APP, R1.revision),
    }

    del fetcher.failing[R2.revision]
    await wait_for(lambda: len(found.sources()) == 3, 2, "R2 fetched")
    assert found.sources() == {
        "10.0.0.1:20880": Source(APP, R2.revision),
        "10.0.0.2:20880": Source(APP, R1.revision),
        "10.0.0.3:20880": Source(APP, R2.revision),
    }


async def test_nothing_is_delivered_while_every_revision_lacks_metadata(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    await disc.track(KEY, reg, NAME, SUB)
    before = found.last
    # Every instance gone to revisions that cannot be fetched (and one had none before): no delivery.
    for rev in (R2, R3):
        fetcher.failing[rev.revision] = "down"
    reg.set_instance(instance("10.0.0.1", R2))
    reg.set_instance(instance("10.0.0.9", R3))
    await wait_for(lambda: fetcher.count(R3.revision) >= 2, 2, "R3 retried")
    assert found.last == before


async def test_a_new_subscription_whose_revisions_all_fail_gets_nothing(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    fetcher.failing[R1.revision] = "down"
    await disc.track(KEY, reg, NAME, SUB, wait=False)
    await wait_for(lambda: fetcher.count(R1.revision) >= 2, 2, "R1 retried")
    assert found.calls == []  # not an empty list: nothing at all


async def test_a_mapping_naming_an_unusable_application_does_not_stop_the_others(
    reg: MemoryRegistry, disc: AppDiscovery, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    reg.set_instance(instance("10.0.0.2", S1, app=APP2))
    await disc.track(KEY, reg, NAME, SUB)
    reg.set_mapping(IFACE, f"{APP},{APP2},bad/name")  # another writer's text
    await wait_for(lambda: len(found.addresses()) == 2, 0.5, "APP2's host")


async def test_tracking_with_an_unusable_application_in_the_mapping_finds_the_others(
    reg: MemoryRegistry, disc: AppDiscovery
) -> None:
    reg.set_mapping(IFACE, f"{APP},bad/name")
    reg.set_instance(instance("10.0.0.1"))
    result = await disc.track(KEY, reg, NAME, SUB)
    assert result is not None and [f.url.address for f in result] == ["10.0.0.1:20880"]


# ---------------------------------------------------------------------------------------------------
# ending


async def test_untrack_drops_the_watches_nothing_needs(
    reg: MemoryRegistry, disc: AppDiscovery, found: Found
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    g = Subscription(IFACE, "", "g")
    await disc.track(KEY, reg, NAME, SUB)
    await disc.track(KEY, reg, g.cluster_name, g)
    await disc.untrack(KEY, NAME)
    assert watched_mappings(reg) == {IFACE} and watched_apps(reg) == {APP}  # g still needs them
    await disc.untrack(KEY, g.cluster_name)
    assert watched_mappings(reg) == set() and watched_apps(reg) == set()
    assert disc.view(KEY, NAME) is None and disc.view(KEY, g.cluster_name) is None
    await disc.untrack(KEY, NAME)  # again: nothing to do
    n = len(found.calls)
    reg.set_instance(instance("10.0.0.2"))
    reg.set_mapping(IFACE, f"{APP},{APP2}")
    await settle()
    assert len(found.calls) == n


async def test_drop_registry_forgets_it(reg: MemoryRegistry, disc: AppDiscovery, found: Found) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    await disc.track(KEY, reg, NAME, SUB)
    disc.drop_registry(KEY)
    assert disc.view(KEY, NAME) is None
    n, events = len(found.calls), disc.events["app_instance_events"]
    reg.set_instance(instance("10.0.0.2"))  # its watches went with it: ignored if they fire
    await settle()
    assert len(found.calls) == n and disc.events["app_instance_events"] == events
    # Tracked again, it starts afresh.
    result = await disc.track(KEY, reg, NAME, SUB)
    assert result is not None and len(result) == 2


async def test_stop_cancels_the_fetches(
    reg: MemoryRegistry, disc: AppDiscovery, fetcher: Fetcher, found: Found, fast_retries: None
) -> None:
    reg.set_mapping(IFACE, APP)
    reg.set_instance(instance("10.0.0.1"))
    fetcher.failing[R1.revision] = "down"
    await disc.track(KEY, reg, NAME, SUB, wait=False)
    await wait_for(lambda: fetcher.calls, 2, "a fetch")
    await disc.stop()
    await wait_for(lambda: not disc._fetching, 2, "the fetch task to end")
    n = len(fetcher.calls)
    await asyncio.sleep(0.06)  # three retry periods (RETRY_MAX_S is 0.02 here)
    assert len(fetcher.calls) == n and found.calls == []
