"""The Nacos double's config service against the official nacos-sdk-python 2.0.11 config client, unpatched.

As tests/test_nacos_peer.py does for naming, these pin down both that the double speaks the protocol
the client expects and how the client behaves, which the config-center side of the sidecar (Dubbo's
dynamic rules, issue 17) builds on:

* ``get_config`` of a config that does not exist returns "" (the server's errorCode 300), no error;
* a listener is called as ``listener(namespace, group, data_id, content)`` whenever the content the
  client holds changes md5; a deleted config reaches it as content "";
* ``add_listener`` sends nothing: the SDK's listen task sends the listen within 5 s (tests wake it
  with tests/nacos_sdk.py's ``listen``).  The listen carries the md5 of what the client has in its
  local cache, so the listener is first called with the current content only if the client had not
  read it before;
* after a restart of the server the client listens again, with the md5s it holds, once it notices:
  at its next config request, at its next listen (sent every 5 s while some listened config does not
  exist), or when its health check fails (an outage of more than 5-10 s).  A client whose listened
  configs all exist and that makes no request does not notice a quick restart and hears nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.error
import urllib.request

import pytest
from v2.nacos import ConfigParam, NacosConfigService, NacosException

from tests.nacos_sdk import ConfigClients, connection_id, listen
from tests.peers.nacos import DEFAULT_GROUP as GROUP
from tests.peers.nacos import Failed, NacosDouble
from tests.wait import wait_for

# A Dubbo condition rule's dataId: the service's interface:version:group and ServiceStateRouter's
# RULE_SUFFIX; a tag rule's is the application name and TagStateRouter's.
RULE = "com.x.Svc::.condition-router"
TAG_RULE = "app.tag-router"
PUSH_S = 1.0  # a change reaches a listening client within this


def md5(content: str) -> str:
    return hashlib.md5(content.encode()).hexdigest()


class Listener:
    """A config listener (the SDK awaits it) that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    async def __call__(self, namespace: str, group: str, data_id: str, content: str) -> None:
        self.calls.append((namespace, group, data_id, content))

    def contents(self) -> list[str]:
        return [call[3] for call in self.calls]

    async def wait_for(self, *contents: str, timeout: float = PUSH_S) -> None:
        """Wait until the listener has been called with exactly ``contents``, in that order."""
        await wait_for(lambda: self.contents() == list(contents), timeout, f"listener calls {contents}")


def param(data_id: str = RULE, content: str = "", **kw: str) -> ConfigParam:
    return ConfigParam(data_id=data_id, content=content, **kw)


async def get(client: NacosConfigService, data_id: str = RULE, group: str = GROUP) -> str:
    return await client.get_config(param(data_id, group=group))


def http_get(double: NacosDouble, query: str) -> tuple[int, str]:
    url = f"http://{double.address}/nacos/v1/cs/configs?{query}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ---------------------------------------------------------------------------------------------------
# publish, get, remove


async def test_publish_then_get(nacos: NacosDouble, config_clients: ConfigClients) -> None:
    writer, reader = await config_clients(nacos), await config_clients(nacos)
    assert await writer.publish_config(param(content="force: false\n", type="yaml"))

    stored = nacos.config(RULE)
    assert stored is not None
    assert (stored.content, stored.md5, stored.type) == ("force: false\n", md5("force: false\n"), "yaml")
    assert stored.last_modified > 0
    assert await get(reader) == "force: false\n"
    assert list(nacos.configs.all()) == [("", GROUP, RULE)]  # tenant "" is the default namespace
    status, body = await asyncio.to_thread(http_get, nacos, f"dataId={RULE}&group={GROUP}")
    assert (status, body) == (200, "force: false\n")

    # A publish replaces the content; the SDK's type "" is stored as Nacos's default, text.
    assert await writer.publish_config(param(content="force: true\n"))
    assert (nacos.config(RULE).content, nacos.config(RULE).type) == ("force: true\n", "text")
    assert await get(reader) == "force: true\n"

    # Compare-and-set: refused unless the md5 given is the stored one.
    with pytest.raises(NacosException, match="Cas publish fail") as refused:
        await writer.publish_config(param(content="x: 1", cas_md5=md5("force: false\n")))
    assert refused.value.error_code == 500
    assert await writer.publish_config(param(content="x: 1", cas_md5=md5("force: true\n")))
    assert nacos.config(RULE).content == "x: 1"


async def test_compare_and_set_with_dubbos_ticket_for_no_config(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    """Dubbo's mapping writer passes casMd5 "0" when it read no mapping (NacosMetadataReport.getConfigItem).
    Nacos creates a missing config whatever the casMd5 (``insertOrUpdateCas``: ``addConfigInfo`` when
    ``findConfigInfoState`` finds none), and refuses "0" once the config exists: its md5 is not "0".
    So of two writers that both read nothing, the second is refused and reads again."""
    first, second = await config_clients(nacos), await config_clients(nacos)
    mapping = "com.x.Greeter"
    assert await first.publish_config(param(mapping, content="app-a", group="mapping", cas_md5="0"))
    assert nacos.config(mapping, group="mapping").content == "app-a"
    with pytest.raises(NacosException, match="Cas publish fail"):
        await second.publish_config(param(mapping, content="app-b", group="mapping", cas_md5="0"))
    assert await second.publish_config(
        param(mapping, content="app-a,app-b", group="mapping", cas_md5=md5("app-a"))
    )
    assert nacos.config(mapping, group="mapping").content == "app-a,app-b"


async def test_get_of_a_missing_config_is_empty(nacos: NacosDouble, config_clients: ConfigClients) -> None:
    client = await config_clients(nacos)
    assert await get(client, "nothing.here") == ""  # ConfigQueryResponse errorCode 300, not an error
    assert nacos.config("nothing.here") is None
    assert await asyncio.to_thread(http_get, nacos, f"dataId=nothing.here&group={GROUP}") == (
        404,
        "config data not exist",
    )

    nacos.publish_config(RULE, "a: 1")
    assert await get(client) == "a: 1"
    assert await client.remove_config(param())
    assert nacos.config(RULE) is None
    assert await get(client) == ""
    assert await client.remove_config(param())  # removing what is not there succeeds, as in Nacos


async def test_bad_input_is_refused_as_nacos_does(nacos: NacosDouble, config_clients: ConfigClients) -> None:
    client = await config_clients(nacos)
    # Nacos's parameter checker: errorCode 400 in the request's own response type.
    with pytest.raises(NacosException) as caught:
        await client.publish_config(param("has space", "a: 1"))
    assert caught.value.error_code == 400 and "'dataId' is illegal" in caught.value.message
    with pytest.raises(NacosException) as caught:
        await client.publish_config(param(content="a: 1", group="G/2"))
    assert caught.value.error_code == 400 and "'group' is illegal" in caught.value.message
    assert nacos.configs.all() == {}

    # The test-side API refuses what Nacos refuses too.
    with pytest.raises(Failed, match="content is blank"):
        nacos.publish_config(RULE, "  ")
    with pytest.raises(Failed, match="'dataId' is illegal"):
        nacos.publish_config("a/b", "x")


async def test_login_when_the_server_requires_it(config_clients: ConfigClients) -> None:
    async with NacosDouble(users={"nacos": "s3cret"}) as double:
        good = await config_clients(double, username="nacos", password="s3cret")
        assert await good.publish_config(param(content="a: 1"))
        assert await get(good) == "a: 1"

        bad = await config_clients(double, username="nacos", password="wrong")
        with pytest.raises(NacosException):
            await bad.publish_config(param(content="a: 2"))
        assert double.config(RULE).content == "a: 1"


# ---------------------------------------------------------------------------------------------------
# listeners


async def test_changes_reach_the_listener_within_a_second(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    watcher, writer = await config_clients(nacos), await config_clients(nacos)
    seen = Listener()
    assert await listen(nacos, watcher, RULE, seen) == ""  # nothing cached, nothing on the server
    assert seen.calls == []

    # Published by another client: pushed, then read by the watcher.
    assert await writer.publish_config(param(content="v1"))
    await seen.wait_for("v1")
    assert seen.calls == [("", GROUP, RULE, "v1")]
    # Written on the server itself (an operator, Dubbo Admin).
    started = time.monotonic()
    nacos.publish_config(RULE, "v2")
    await seen.wait_for("v1", "v2")
    assert time.monotonic() - started < PUSH_S
    # Every push is acked on the stream.
    await wait_for(lambda: nacos.stats["acks"] == nacos.stats["pushes"] == 2, PUSH_S, "acks")

    # The same content again is no change: nothing is pushed.
    nacos.publish_config(RULE, "v2")
    assert await writer.publish_config(param(content="v2"))
    assert nacos.stats["pushes"] == 2

    # A listener removed hears nothing more: the client drops the call (it still listens on the server).
    await watcher.remove_listener(RULE, GROUP, seen)
    assert connection_id(watcher) in nacos.config_listeners(RULE)
    other = Listener()
    await watcher.add_listener(RULE, GROUP, other)
    nacos.publish_config(RULE, "v3")
    await other.wait_for("v3")
    assert seen.contents() == ["v1", "v2"]


async def test_removal_reaches_the_listener_as_empty_content(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    watcher, writer = await config_clients(nacos), await config_clients(nacos)
    nacos.publish_config(RULE, "v1")
    seen = Listener()
    await listen(nacos, watcher, RULE, seen)
    await seen.wait_for("v1")  # the listen answered "changed": the client had nothing

    assert await writer.remove_config(param())
    await seen.wait_for("v1", "")
    nacos.publish_config(RULE, "v2")
    await seen.wait_for("v1", "", "v2")
    assert nacos.remove_config(RULE)
    await seen.wait_for("v1", "", "v2", "")
    assert not nacos.remove_config(RULE)  # nothing left to remove: no push
    assert nacos.stats["pushes"] == 3


async def test_the_listen_carries_the_md5_the_client_holds(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    """The client listens with the md5 of its local copy; the server answers at once whether that is
    current.  A client that read the config before does not get it again from its listener."""
    nacos.publish_config(RULE, "v1")
    fresh, primed = await config_clients(nacos), await config_clients(nacos)
    assert await get(primed) == "v1"  # the SDK keeps what it read in its cache directory

    fresh_seen, primed_seen = Listener(), Listener()
    assert await listen(nacos, fresh, RULE, fresh_seen) == ""
    assert await listen(nacos, primed, RULE, primed_seen) == md5("v1")
    await fresh_seen.wait_for("v1")
    assert nacos.config_listeners(RULE) == {connection_id(fresh): "", connection_id(primed): md5("v1")}

    nacos.publish_config(RULE, "v2")
    await fresh_seen.wait_for("v1", "v2")
    await primed_seen.wait_for("v2")


async def test_listeners_on_two_data_ids(nacos: NacosDouble, config_clients: ConfigClients) -> None:
    client = await config_clients(nacos)
    tags, conditions = Listener(), Listener()
    await listen(nacos, client, TAG_RULE, tags)
    await listen(nacos, client, RULE, conditions)

    nacos.publish_config(TAG_RULE, "tags: []")
    await tags.wait_for("tags: []")
    nacos.publish_config(RULE, "conditions: []")
    await conditions.wait_for("conditions: []")
    nacos.remove_config(TAG_RULE)
    await tags.wait_for("tags: []", "")
    assert conditions.contents() == ["conditions: []"]
    assert tags.calls[0][2] == TAG_RULE and conditions.calls[0][2] == RULE


async def test_groups_and_namespaces_are_separate(nacos: NacosDouble, config_clients: ConfigClients) -> None:
    default, dev = await config_clients(nacos), await config_clients(nacos, namespace="dev")
    seen_default, seen_dev, seen_g2 = Listener(), Listener(), Listener()
    await listen(nacos, default, RULE, seen_default)
    await listen(nacos, dev, RULE, seen_dev)
    await listen(nacos, dev, RULE, seen_g2, group="G2")

    assert await default.publish_config(param(content="default"))
    assert await dev.publish_config(param(content="dev"))
    assert await dev.publish_config(param(content="dev g2", group="G2"))
    await seen_default.wait_for("default")
    await seen_dev.wait_for("dev")
    await seen_g2.wait_for("dev g2")
    assert seen_dev.calls == [("dev", GROUP, RULE, "dev")]
    assert seen_g2.calls == [("dev", "G2", RULE, "dev g2")]
    assert sorted(nacos.configs.all()) == [("", GROUP, RULE), ("dev", GROUP, RULE), ("dev", "G2", RULE)]
    assert nacos.config(RULE, namespace="dev", group="G2").content == "dev g2"

    assert await get(default, group="G2") == ""
    nacos.publish_config(RULE, "dev again", namespace="dev")
    await seen_dev.wait_for("dev", "dev again")
    assert seen_default.contents() == ["default"] and seen_g2.contents() == ["dev g2"]

    # Nacos 2.x reads and writes namespace "public" as the default namespace ("").
    public = await config_clients(nacos, namespace="public")
    assert await get(public) == "default"
    assert nacos.config(RULE, namespace="public").content == "default"


# ---------------------------------------------------------------------------------------------------
# restarts and outages


async def test_after_a_quick_restart_the_next_request_listens_again(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    """A restart drops every connection and listen, and keeps the configs.  The client's next config
    request is answered 301 "Connection is unregistered": it reconnects, and its reconnect listens
    again to everything with the md5s it holds, so a change it missed comes at once."""
    client = await config_clients(nacos)
    nacos.publish_config(RULE, "v1")
    seen = Listener()
    await listen(nacos, client, RULE, seen)
    await seen.wait_for("v1")

    await nacos.restart()
    assert nacos.connections == 0 and nacos.config_listeners(RULE) == {}
    assert nacos.config(RULE).content == "v1"
    nacos.publish_config(RULE, "v2")  # no one listens: no push

    assert await get(client, "something.else") == ""
    await wait_for(lambda: nacos.config_listeners(RULE), 3, "the listen again")
    assert nacos.config_listeners(RULE) == {connection_id(client): md5("v1")}
    await seen.wait_for("v1", "v2")
    nacos.publish_config(RULE, "v3")
    await seen.wait_for("v1", "v2", "v3")


@pytest.mark.slow
async def test_after_a_quick_restart_only_a_pending_listen_notices(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    """The SDK sends listens every 5 s only for configs it has not yet read since a change: here the
    one that exists has been read, so after a quick restart nothing is sent and the client hears
    nothing (its health check takes 301 for "server starting").  A listen to a config that does not
    exist stays pending; once there is one, the next 5 s listen round gets 301 and the client
    reconnects and listens to everything again by itself."""
    client = await config_clients(nacos)
    nacos.publish_config(RULE, "v1")
    seen = Listener()
    await listen(nacos, client, RULE, seen)
    await seen.wait_for("v1")

    await nacos.restart()
    nacos.publish_config(RULE, "v2")
    await asyncio.sleep(6)  # more than one listen round
    assert nacos.connections == 0 and seen.contents() == ["v1"]

    await client.add_listener("absent.rule", GROUP, Listener())  # no wake-up: the SDK's own round
    await seen.wait_for("v1", "v2", timeout=6)
    assert nacos.config_listeners("absent.rule") == {connection_id(client): ""}


@pytest.mark.slow
async def test_after_an_outage_the_client_listens_again_by_itself(
    nacos: NacosDouble, config_clients: ConfigClients
) -> None:
    """A server gone for longer than the health check's 5-10 s is noticed; once it is back the client
    reconnects and listens again, and a change made meanwhile reaches the listener."""
    client = await config_clients(nacos)
    nacos.publish_config(RULE, "v1")
    seen = Listener()
    await listen(nacos, client, RULE, seen)
    await seen.wait_for("v1")

    async def noticed() -> bool:
        return not await client.server_health()

    await nacos.stop()
    await wait_for(noticed, 12, "the client to notice the outage")
    nacos.publish_config(RULE, "v2")  # as the database would have it when the server is back
    await nacos.start()
    await seen.wait_for("v1", "v2", timeout=10)
    nacos.publish_config(RULE, "v3")
    await seen.wait_for("v1", "v2", "v3")
