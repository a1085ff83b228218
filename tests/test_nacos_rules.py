"""The Nacos adapter as Dubbo's config center: watching, reading, writing and deleting dynamic rules
(the rules half of regproxy/registry/base.py's interface, in regproxy/registry/nacos.py), against the
Nacos double and the official SDK's config client.

A rule is the config dataId = rule id, group ``dubbo``; its version is the md5 Nacos keeps for it
(the double's ``Config.md5``), "" for none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from regproxy.governance.keys import RULE_GROUP
from regproxy.registry.base import RegistryError, RegistryUnavailable
from regproxy.registry.nacos import NacosRegistry, close_config_service
from regproxy.registry.registry_url import RegistryURL
from tests.peers.nacos import NacosDouble
from tests.peers.nacos.configs import md5_of
from tests.wait import wait_for

RULE = "com.x.Svc::.condition-router"  # ServiceStateRouter's rule of a service without version or group
TAG_RULE = "app.tag-router"  # TagStateRouter's rule of application "app"
SOURCE = f"nacos dataId {RULE} group dubbo"
PUSH_S = 1.0  # a change reaches a watcher within this
RECONNECT_S = 20.0  # the adapter's probe notices a restarted server, and the clients reconnect


class Rules:
    """A RuleListener that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str, str]] = []

    def __call__(self, rule_id: str, text: str | None, source: str, version: str) -> None:
        self.calls.append((rule_id, text, source, version))

    def texts(self) -> list[str | None]:
        return [call[1] for call in self.calls]

    async def wait_for(self, *texts: str | None, timeout: float = PUSH_S) -> None:
        """Wait until the listener has been given exactly ``texts``, in that order: a text given
        twice fails the next wait too."""
        await wait_for(lambda: self.texts() == list(texts), timeout, f"rule deliveries {texts}")


def publish(double: NacosDouble, content: str, data_id: str = RULE, namespace: str = "") -> None:
    double.publish_config(data_id, content, group=RULE_GROUP, namespace=namespace)


def stored(double: NacosDouble, data_id: str = RULE, namespace: str = "") -> str | None:
    config = double.config(data_id, group=RULE_GROUP, namespace=namespace)
    return config.content if config is not None else None


async def connected(double: NacosDouble, query: str = "") -> NacosRegistry:
    registry = NacosRegistry(RegistryURL.parse(f"nacos://{double.address}{query}"), op_timeout_s=3.0)
    await registry.start()
    await wait_for(lambda: registry.connected, 10, "the registry connected")
    return registry


@pytest.fixture
async def registry(nacos: NacosDouble) -> AsyncIterator[NacosRegistry]:
    registry = await connected(nacos)
    try:
        yield registry
    finally:
        await registry.stop()


async def test_the_current_content_is_delivered_at_once(nacos: NacosDouble, registry: NacosRegistry) -> None:
    assert registry.config_center
    publish(nacos, "force: true\n")
    present, absent = Rules(), Rules()

    await registry.watch_rule(RULE, present)
    await registry.watch_rule(TAG_RULE, absent)

    assert present.calls == [(RULE, "force: true\n", SOURCE, md5_of("force: true\n"))]
    assert absent.calls == [(TAG_RULE, None, f"nacos dataId {TAG_RULE} group dubbo", "")]
    assert registry.describe()["rules"] == [TAG_RULE, RULE]


async def test_publish_modify_remove_each_delivered_once(nacos: NacosDouble, registry: NacosRegistry) -> None:
    rules = Rules()
    await registry.watch_rule(RULE, rules)
    await rules.wait_for(None)

    publish(nacos, "v1")
    await rules.wait_for(None, "v1")
    publish(nacos, "v2")
    await rules.wait_for(None, "v1", "v2")
    publish(nacos, "v2")  # the same content again: no change, nothing delivered
    assert nacos.remove_config(RULE, group=RULE_GROUP)
    await rules.wait_for(None, "v1", "v2", None)  # a deletion, as Dubbo's getChangeType: blank -> DELETED
    publish(nacos, "v3")
    await rules.wait_for(None, "v1", "v2", None, "v3")

    assert rules.calls == [
        (RULE, None, SOURCE, ""),
        (RULE, "v1", SOURCE, md5_of("v1")),
        (RULE, "v2", SOURCE, md5_of("v2")),
        (RULE, None, SOURCE, ""),
        (RULE, "v3", SOURCE, md5_of("v3")),
    ]
    assert rules.calls[-1][3] == nacos.config(RULE, group=RULE_GROUP).md5


async def test_two_listeners_and_unwatch(nacos: NacosDouble, registry: NacosRegistry) -> None:
    publish(nacos, "v1")
    first, second = Rules(), Rules()
    await registry.watch_rule(RULE, first)
    await registry.watch_rule(RULE, second)
    assert first.texts() == second.texts() == ["v1"]  # the second is given the current content too

    publish(nacos, "v2")
    await first.wait_for("v1", "v2")
    await second.wait_for("v1", "v2")

    await registry.unwatch_rule(RULE, first)
    publish(nacos, "v3")
    await second.wait_for("v1", "v2", "v3")
    await registry.unwatch_rule(RULE, second)
    assert registry.describe()["rules"] == []

    # Watched again by a new listener: the current content at once, then changes; the old ones hear
    # nothing more.
    again = Rules()
    publish(nacos, "v4")
    await registry.watch_rule(RULE, again)
    assert again.texts() == ["v4"]
    publish(nacos, "v5")
    await again.wait_for("v4", "v5")
    assert first.texts() == ["v1", "v2"] and second.texts() == ["v1", "v2", "v3"]


async def test_a_change_pushed_while_the_sdk_fetches_the_previous_one_is_not_lost(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    """The SDK drops a push that comes while it is fetching the previous content (its fetch then marks
    the config up to date) until its 5-minute full sync.  A watch wakes the SDK's listen, which fetches
    at once: a change right after the watch falls into that window about every other time."""
    for n in range(10):
        rule_id = f"com.x.Svc{n}::.condition-router"
        rules = Rules()
        publish(nacos, "v1", rule_id)
        await registry.watch_rule(rule_id, rules)
        publish(nacos, "v2", rule_id)
        await rules.wait_for("v1", "v2")


async def test_changes_during_a_quick_restart_are_delivered_after_reconnecting(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    """After a restart shorter than its health check the SDK's config client hears nothing by itself
    (tests/test_nacos_config_peer.py); the adapter reads its rules again once it has reconnected."""
    rules, gone = Rules(), Rules()
    publish(nacos, "v1")
    publish(nacos, "tags: []", TAG_RULE)
    await registry.watch_rule(RULE, rules)
    await registry.watch_rule(TAG_RULE, gone)

    await nacos.restart()
    publish(nacos, "v2")
    assert nacos.remove_config(TAG_RULE, group=RULE_GROUP)
    await rules.wait_for("v1", "v2", timeout=RECONNECT_S)
    await gone.wait_for("tags: []", None, timeout=PUSH_S)
    assert registry.connected

    publish(nacos, "v3")  # pushes reach the new connection
    await rules.wait_for("v1", "v2", "v3")


@pytest.mark.slow
async def test_a_change_while_down_is_delivered_after_reconnecting(
    nacos: NacosDouble, registry: NacosRegistry
) -> None:
    rules = Rules()
    publish(nacos, "v1")
    await registry.watch_rule(RULE, rules)

    await nacos.stop()
    await wait_for(lambda: not registry.connected, 10, "the registry noticing the outage")
    publish(nacos, "v2")  # as the database would have it when the server is back
    await nacos.start()
    await rules.wait_for("v1", "v2", timeout=RECONNECT_S)
    publish(nacos, "v3")
    await rules.wait_for("v1", "v2", "v3")


async def test_read_write_delete_round_trip(nacos: NacosDouble, registry: NacosRegistry) -> None:
    rules = Rules()
    await registry.watch_rule(RULE, rules)
    assert await registry.read_rule(RULE) == (None, SOURCE, "")

    text = "scope: service\nkey: com.x.Svc\nconditions:\n  - '=> host != 10.0.0.1'\n"
    assert await registry.write_rule(RULE, text) == SOURCE
    config = nacos.config(RULE, group=RULE_GROUP)
    assert config is not None and (config.content, config.type) == (text, "yaml")
    assert await registry.read_rule(RULE) == (text, SOURCE, config.md5)
    await rules.wait_for(None, text)

    assert await registry.write_rule(RULE, "enabled: false\n") == SOURCE  # replaced
    assert stored(nacos) == "enabled: false\n"
    await rules.wait_for(None, text, "enabled: false\n")

    assert await registry.delete_rule(RULE) is True
    assert stored(nacos) is None
    assert await registry.delete_rule(RULE) is False  # nothing left to delete
    assert await registry.read_rule(RULE) == (None, SOURCE, "")
    await rules.wait_for(None, text, "enabled: false\n", None)


async def test_rules_live_in_the_registry_namespace(nacos: NacosDouble) -> None:
    dev = await connected(nacos, "?namespace=dev")
    # Nacos 2.x reads and writes "public" as the default namespace but does not normalise a listen's:
    # the adapter gives the config client "" for it, or it would never hear a change.
    public = await connected(nacos, "?namespace=public")
    try:
        assert await dev.write_rule(RULE, "dev: 1") == f"{SOURCE} namespace dev"
        assert stored(nacos, namespace="dev") == "dev: 1" and stored(nacos) is None

        rules = Rules()
        await public.watch_rule(RULE, rules)
        assert rules.calls == [(RULE, None, SOURCE, "")]
        publish(nacos, "default: 1")
        await rules.wait_for(None, "default: 1")
    finally:
        await dev.stop()
        await public.stop()


async def test_the_config_client_logs_in_with_the_registry_credentials() -> None:
    async with NacosDouble(users={"nacos": "s3cret"}) as double:
        registry = await connected(double, "?username=nacos&password=s3cret")
        try:
            assert await registry.write_rule(RULE, "a: 1") == SOURCE
            assert stored(double) == "a: 1"
            rules = Rules()
            await registry.watch_rule(RULE, rules)
            publish(double, "a: 2")
            await rules.wait_for("a: 1", "a: 2")
        finally:
            await registry.stop()


async def test_errors_are_clear(nacos: NacosDouble, registry: NacosRegistry) -> None:
    # Refusals: RegistryError (502), not "unavailable", with Nacos's reason or ours.
    with pytest.raises(RegistryError, match="blank content") as blank:
        await registry.write_rule(RULE, "  \n")
    assert not isinstance(blank.value, RegistryUnavailable)
    with pytest.raises(RegistryError, match=r"read rule bad rule\.tag-router failed: .*'dataId' is illegal"):
        await registry.read_rule("bad rule.tag-router")  # not the SDK's local copy, silently

    await nacos.stop()
    await wait_for(lambda: not registry.connected, 10, "the registry noticing the outage")
    for what, call in (
        (f"read rule {RULE}", registry.read_rule(RULE)),
        (f"write rule {RULE}", registry.write_rule(RULE, "a: 1")),
        (f"delete rule {RULE}", registry.delete_rule(RULE)),
        (f"watch rule {RULE}", registry.watch_rule(RULE, Rules())),
    ):
        with pytest.raises(RegistryUnavailable) as caught:
            await call
        message = str(caught.value)
        assert message.startswith(f"registry {registry.name} is suspended (unreachable for ")
        assert message.endswith(f"cannot {what} now"), message
    assert registry.describe()["rules"] == []


class _SdkLike:
    """The parts of the SDK's config client close_config_service touches: a listen task that
    ends cancelled (the cancellation landed outside its wait), and a shutdown() awaiting it again."""

    def __init__(self) -> None:
        self.grpc_client_proxy = self
        self.stop_event = asyncio.Event()
        self.listen_task = asyncio.ensure_future(asyncio.sleep(3600))
        self.shut = False

    async def shutdown(self) -> None:
        await self.listen_task  # raises CancelledError: the task ended cancelled
        self.shut = True


async def test_closing_the_config_client_swallows_only_its_own_task_s_cancellation() -> None:
    """A listen task that ends cancelled must not surface as the caller's CancelledError (it broke
    a fixture's teardown once, and with it every later test of that worker)."""
    sdk = _SdkLike()
    await close_config_service(sdk, 1.0)
    assert sdk.stop_event.is_set() and sdk.listen_task.cancelled()
    # A caller that is cancelled itself still is.
    other = _SdkLike()
    closing = asyncio.ensure_future(close_config_service(other, 5.0))
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
