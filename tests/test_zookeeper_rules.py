"""ZooKeeperRegistry as Dubbo's config center, against a real ZooKeeper (tests/zkserver.py): dynamic
rules under ``/dubbo/config/dubbo`` (watched, read, written, deleted) and the 2.6-era override URLs
under ``/dubbo/<interface>/configurators``.

The ``zk`` fixture plays Dubbo Admin (or an operator with zkCli) changing nodes behind our back.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from kazoo.client import KazooClient

from regproxy.governance.keys import legacy_configurators_path, zk_rule_path
from regproxy.registry.base import LOST, SUSPENDED, RegistryUnavailable
from regproxy.registry.url import Subscription
from regproxy.registry.zookeeper import ZooKeeperRegistry

# zk_admin and registry are those modules' fixtures: a test naming one as a parameter says F811.
from tests.test_security import MINE, WORLD_READ, started, zk_admin, zk_url  # noqa: F401
from tests.test_zookeeper import SVC, Recorder, registry  # noqa: F401
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

RULE = f"{SVC}::.condition-router"
PATH = zk_rule_path(RULE)
CONFIGURATORS = legacy_configurators_path(SVC)
# What Dubbo 2.6's ZookeeperRegistry.toUrlPath writes for an override: URL.encode of the whole
# override URL, written out here by hand rather than with our encoder.
OVERRIDE_LEAF = "override%3A%2F%2F10.0.0.1%3A20880%2Fcom.x.Svc%3Fweight%3D200%26category%3Dconfigurators"

Delivery = tuple[str, str | None, str, str]  # (rule id, text, source, version), as RuleListener gets it


class Rules:
    """A rule listener that keeps every delivery."""

    def __init__(self) -> None:
        self.calls: list[Delivery] = []

    def __call__(self, rule_id: str, text: str | None, source: str, version: str) -> None:
        assert asyncio.get_running_loop()  # delivered on the event loop, never on a kazoo thread
        self.calls.append((rule_id, text, source, version))

    async def wait_calls(self, n: int, timeout: float = 2.0) -> None:
        await wait_for(
            lambda: len(self.calls) >= n, timeout, f"{n} rule deliveries", detail=lambda: repr(self.calls)
        )


def mzxid(zk: KazooClient, path: str = PATH) -> str:
    return str(zk.exists(path).mzxid)


# ---------------------------------------------------------------------------------------------------
# watching a rule


async def test_rule_created_modified_emptied_deleted_each_delivered_once(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
) -> None:
    rules = Rules()
    await registry.watch_rule(RULE, rules)
    assert rules.calls == [(RULE, None, PATH, "")]  # no node yet: delivered at once as "none"

    expected: list[Delivery] = [(RULE, None, PATH, "")]
    zk.create(PATH, "scope: service\n# priorité".encode(), makepath=True)  # an exists watch saw it
    expected.append((RULE, "scope: service\n# priorité", PATH, mzxid(zk)))
    await rules.wait_calls(2)

    zk.set(PATH, b"scope: application")
    expected.append((RULE, "scope: application", PATH, mzxid(zk)))
    await rules.wait_calls(3)

    # Emptied: a modification (Dubbo's ZookeeperDataListener), delivered as "" with its version.
    zk.set(PATH, b"")
    expected.append((RULE, "", PATH, mzxid(zk)))
    await rules.wait_calls(4)

    zk.delete(PATH)
    expected.append((RULE, None, PATH, ""))
    await rules.wait_calls(5)

    zk.create(PATH, b"scope: service")  # the watch set by the read that found it gone
    expected.append((RULE, "scope: service", PATH, mzxid(zk)))
    await rules.wait_calls(6)
    assert rules.calls == expected
    assert registry.describe()["rules"] == {RULE: {"listeners": 1, "exists": True, "version": mzxid(zk)}}


async def test_rule_shared_by_two_listeners_until_unwatched(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
) -> None:
    zk.create(PATH, b"v1", makepath=True)
    v1 = mzxid(zk)
    first, second = Rules(), Rules()
    await registry.watch_rule(RULE, first)
    await registry.watch_rule(RULE, second)
    # Each is given the current content once; the second watch changes nothing for the first.
    assert first.calls == second.calls == [(RULE, "v1", PATH, v1)]
    assert registry.describe()["rules"][RULE]["listeners"] == 2

    zk.set(PATH, b"v2")
    await first.wait_calls(2)
    await second.wait_calls(2)
    assert first.calls[1] == second.calls[1] == (RULE, "v2", PATH, mzxid(zk))

    await registry.unwatch_rule(RULE, first)
    zk.set(PATH, b"v3")
    await second.wait_calls(3)
    assert second.calls[2][1] == "v3"
    assert len(first.calls) == 2

    await registry.unwatch_rule(RULE, second)
    assert registry.describe()["rules"] == {}
    # The watch that ZooKeeper still holds fires once more and is ignored: a change made before
    # one to another watched rule is delivered to nobody by the time that one is.
    other, sentinel = f"{SVC}::.tag-router", Rules()
    await registry.watch_rule(other, sentinel)
    zk.set(PATH, b"v4")
    zk.create(zk_rule_path(other), b"tags: []")
    await sentinel.wait_calls(2)
    assert len(second.calls) == 3 and len(first.calls) == 2


@pytest.mark.timeout(60)
async def test_rule_changed_while_cut_off_is_delivered_after_reconnect(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
    zk_server: ZooKeeperServer,
) -> None:
    changed, created, kept = RULE, f"{SVC}::.tag-router", f"{SVC}::.configurators"
    zk.create(zk_rule_path(changed), b"before", makepath=True)
    zk.create(zk_rule_path(kept), b"same")
    rules = {rule_id: Rules() for rule_id in (changed, created, kept)}
    for rule_id, listener in rules.items():
        await registry.watch_rule(rule_id, listener)
    session = registry.session_id

    with zk_server.cut_off() as inside:
        await wait_for(lambda: registry.state == SUSPENDED, 5, "suspended")
        inside.set(zk_rule_path(changed), b"after")
        inside.create(zk_rule_path(created), b"new")
        versions = {rule_id: str(inside.exists(zk_rule_path(rule_id)).mzxid) for rule_id in rules}
        assert [len(r.calls) for r in rules.values()] == [1, 1, 1]  # nothing while away
    await wait_for(lambda: registry.connected, 5, "connected again")
    assert registry.session_id == session  # the same session: only the watches were lost
    await wait_for(lambda: zk.connected, 5, "the reader reconnected")

    await rules[changed].wait_calls(2)
    await rules[created].wait_calls(2)
    assert rules[changed].calls[1] == (changed, "after", zk_rule_path(changed), versions[changed])
    assert rules[created].calls[1] == (created, "new", zk_rule_path(created), versions[created])
    assert len(rules[kept].calls) == 1  # unchanged: not delivered again

    zk.set(zk_rule_path(kept), b"edited")  # the watches are armed again
    await rules[kept].wait_calls(2)
    assert rules[kept].calls[1][1] == "edited"


@pytest.mark.timeout(60)
async def test_rule_requests_are_refused_at_once_while_disconnected(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk_server: ZooKeeperServer,
) -> None:
    with zk_server.cut_off():
        await wait_for(lambda: registry.state == SUSPENDED, 5, "suspended")
        t0 = time.monotonic()
        with pytest.raises(
            RegistryUnavailable,
            match=rf"registry zookeeper://\S+ is suspended.*: cannot write rule {RULE} now",
        ):
            await registry.write_rule(RULE, "scope: service")
        with pytest.raises(RegistryUnavailable, match=f"cannot read rule {RULE}"):
            await registry.read_rule(RULE)
        with pytest.raises(RegistryUnavailable, match=f"cannot delete rule {RULE}"):
            await registry.delete_rule(RULE)
        with pytest.raises(RegistryUnavailable, match=f"cannot watch rule {RULE}"):
            await registry.watch_rule(RULE, Rules())
        assert time.monotonic() - t0 < 0.5  # no request waits behind the dead connection
    await wait_for(lambda: registry.connected, 5, "connected again")
    assert await registry.write_rule(RULE, "scope: service") == PATH


@pytest.mark.timeout(60)
async def test_watches_fire_after_a_session_expiry(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
    zk_server: ZooKeeperServer,
) -> None:
    states: list[str] = []
    registry.add_state_listener(states.append)
    zk.create(PATH, b"v1", makepath=True)
    rules, overrides = Rules(), Recorder()
    await registry.watch_rule(RULE, rules)
    assert await registry.watch_overrides(SVC, overrides) == []
    old = registry.session_credentials
    assert old is not None

    await asyncio.to_thread(zk_server.expire_session, *old)
    await wait_for(lambda: LOST in states and registry.connected, 5, "lost, then connected")
    assert registry.session_id not in (None, old[0])
    assert rules.calls == [(RULE, "v1", PATH, mzxid(zk))]  # read again, unchanged: not delivered

    zk.set(PATH, b"v2")
    await rules.wait_calls(2)
    assert rules.calls[1] == (RULE, "v2", PATH, mzxid(zk))
    zk.create(f"{CONFIGURATORS}/{OVERRIDE_LEAF}")
    await overrides.wait_for(lambda urls: len(urls) == 1)


# ---------------------------------------------------------------------------------------------------
# reading and writing rules (regproxy ctl rules)


async def test_read_write_delete_round_trip(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
) -> None:
    assert await registry.read_rule(RULE) == (None, PATH, "")
    assert await registry.delete_rule(RULE) is False

    assert await registry.write_rule(RULE, "scope: service\nkey: é") == PATH  # parents created
    data, stat = zk.get(PATH)
    assert data == "scope: service\nkey: é".encode() and stat.ephemeralOwner == 0  # persistent
    assert await registry.read_rule(RULE) == ("scope: service\nkey: é", PATH, str(stat.mzxid))

    assert await registry.write_rule(RULE, "scope: application") == PATH  # replaced in place
    assert await registry.read_rule(RULE) == ("scope: application", PATH, mzxid(zk))
    assert zk.get(PATH)[1].version == 1

    assert await registry.delete_rule(RULE) is True
    assert zk.exists(PATH) is None
    assert await registry.read_rule(RULE) == (None, PATH, "")
    assert await registry.delete_rule(RULE) is False


async def test_written_rule_carries_the_acl_of_our_persistent_nodes(
    zk_admin: KazooClient,  # noqa: F811
    zk_server: ZooKeeperServer,
) -> None:
    reg = await started(zk_url(zk_server))  # acl world-read, the default
    try:
        await reg.write_rule(RULE, "scope: service")
        for path in ("/dubbo", "/dubbo/config", "/dubbo/config/dubbo", PATH):
            assert zk_admin.get_acls(path)[0] == [MINE, WORLD_READ], path
    finally:
        await reg.stop()


# ---------------------------------------------------------------------------------------------------
# 2.6-era override URLs


async def test_override_urls_delivered_parsed_and_bad_leaves_skipped(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    assert await registry.watch_overrides(SVC, rec) == []
    assert zk.exists(CONFIGURATORS) is not None  # created, as Dubbo does, so the watch can be set

    zk.create(f"{CONFIGURATORS}/{OVERRIDE_LEAF}")
    await rec.wait_for(lambda urls: len(urls) == 1)
    url = (rec.last or [])[0]
    assert (url.protocol, url.address, url.path) == ("override", "10.0.0.1:20880", SVC)
    assert dict(url.params) == {"weight": "200", "category": "configurators"}

    provider = "dubbo%3A%2F%2F10.0.0.2%3A20880%2Fcom.x.Svc"  # a URL, but not a configurator
    with caplog.at_level(logging.WARNING, logger="regproxy.registry.zookeeper"):
        for bad in ("not-a-url", provider):
            zk.create(f"{CONFIGURATORS}/{bad}")
            n = len(rec.lists)
            await rec.wait_for(lambda _urls, n=n: len(rec.lists) > n)
            assert rec.last == [url]
        zk.delete(f"{CONFIGURATORS}/{OVERRIDE_LEAF}")
        await rec.wait_for(lambda urls: urls == [])  # the bad leaves are still there, skipped
    for bad in ("not-a-url", provider):  # logged once each, though listed again
        assert sum(bad in r.getMessage() for r in caplog.records) == 1, bad
    assert registry.unparseable == 0  # discovery's invalid providers count providers only

    assert registry.describe()["overrides"] == {SVC: {"listeners": 1, "urls": 0}}
    await registry.unwatch_overrides(SVC, rec)
    assert registry.describe()["overrides"] == {}


async def test_overrides_and_providers_of_one_interface_are_two_watches(
    registry: ZooKeeperRegistry,  # noqa: F811
    zk: KazooClient,
) -> None:
    providers, overrides = Recorder(), Recorder()
    await registry.subscribe(Subscription(SVC, "1.0.0"), providers)
    await registry.watch_overrides(SVC, overrides)
    zk.create(f"{CONFIGURATORS}/{OVERRIDE_LEAF}")
    await overrides.wait_for(lambda urls: len(urls) == 1)
    assert providers.lists == []  # an override is not a provider
    described = registry.describe()
    assert described["watched"] == {SVC: {"subscriptions": 1, "providers": 0}}
    assert described["overrides"] == {SVC: {"listeners": 1, "urls": 1}}
    await registry.unsubscribe(Subscription(SVC, "1.0.0"), providers)
    assert registry.describe()["overrides"] == {SVC: {"listeners": 1, "urls": 1}}
