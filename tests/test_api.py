"""The pub/sub HTTP API, served for real by aiohttp, against a fake Discovery that records calls."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regproxy.api.http import build_app, start_api, stop_api
from regproxy.api.models import (
    MOSN_FIELDS,
    ErrNo,
    PubRequest,
    PubService,
    RegistryRef,
    SubRequest,
    SubService,
    check_group,
    check_interface,
    check_version,
)
from regproxy.discovery import NotFound, PublishSpec
from regproxy.registry.base import RegistryError, RegistryUnavailable
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import Subscription

APP_PORT = 20999  # not Dubbo's default, so a test can tell the default port from an explicit one
LIMIT = 64 * 1024
PROVIDER_URL = "dubbo://10.0.0.5:20882/com.x.Svc?anyhost=true&interface=com.x.Svc&side=provider"
PROVIDERS = [{"address": "10.0.0.7:20882", "weight": 100, "metadata": {"side": "provider"}}]
CONFIGURED = [
    RegistryURL.parse("zookeeper://zk1:2181,zk2:2181"),
    RegistryURL.parse("nacos://nacos1:8848?namespace=ns1&username=u&password=secret-pw"),
    RegistryURL.parse("zookeeper://127.0.0.1:2181"),  # the one SDK_PUB names
    RegistryURL.parse("memory://"),
]

# The body from issue 3, as SDKs send it.
SDK_PUB = {
    "registry": {"type": "zookeeper", "addr": "127.0.0.1:2181"},
    "service": {
        "interface": "com.x.Svc",
        "methods": ["a", "b"],
        "version": "1.0.0",
        "group": "g",
        "port": 20880,
        "application": "app",
        "params": {"weight": "100"},
    },
}
SDK_SUB = {"service": {"interface": "com.x.Svc", "version": "1.0.0", "group": "g"}}


class FakeDiscovery:
    """Records every call; ``fail`` makes the next calls raise it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, RegistryURL | None]] = []
        self.consumers: list[tuple[str, dict[str, str]]] = []  # (application, params) of each subscribe
        self.migrations: list[str] = []  # the migration setting of each subscribe
        self.fail: BaseException | None = None

    def _record(self, op: str, arg: Any, registry: RegistryURL | None) -> None:
        self.calls.append((op, arg, registry))
        if self.fail is not None:
            raise self.fail

    async def publish(self, spec: PublishSpec, registry: RegistryURL | None = None) -> str:
        self._record("publish", spec, registry)
        return PROVIDER_URL

    async def unpublish(self, spec: PublishSpec, registry: RegistryURL | None = None) -> None:
        self._record("unpublish", spec, registry)

    async def subscribe(
        self,
        sub: Subscription,
        registry: RegistryURL | None = None,
        *,
        application: str = "",
        params: Mapping[str, str] | None = None,
        migration: str = "",
    ) -> tuple[str, list[dict[str, Any]]]:
        self._record("subscribe", sub, registry)
        self.consumers.append((application, dict(params or {})))
        self.migrations.append(migration)
        return sub.cluster_name, PROVIDERS

    async def unsubscribe(self, sub: Subscription, registry: RegistryURL | None = None) -> None:
        self._record("unsubscribe", sub, registry)


class Api:
    def __init__(self, client: TestClient, fake: FakeDiscovery) -> None:
        self.client = client
        self.fake = fake

    @property
    def port(self) -> int:
        assert self.client.port is not None
        return self.client.port

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.client.post(path, data=data, **kwargs) as resp:
            return resp.status, orjson.loads(await resp.read())

    @property
    def last(self) -> tuple[str, Any, RegistryURL | None]:
        return self.fake.calls[-1]


async def _serve(allow_body_registries: bool) -> AsyncIterator[Api]:
    fake = FakeDiscovery()
    app = build_app(
        fake,
        app_port=APP_PORT,
        registries=CONFIGURED,
        max_body=LIMIT,
        allow_body_registries=allow_body_registries,
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, fake)
    finally:
        await client.close()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async for served in _serve(False):
        yield served


@pytest.fixture
async def open_api() -> AsyncIterator[Api]:
    """The API of a sidecar with api_allow_body_registries: true."""
    async for served in _serve(True):
        yield served


@pytest.fixture(params=[False, True], ids=["configured-only", "allow-body-registries"])
async def either_api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    async for served in _serve(request.param):
        yield served


def with_service(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = dict(base)
    body["service"] = {**base["service"], **changes}
    return body


def without(base: dict[str, Any], key: str) -> dict[str, Any]:
    body = dict(base)
    body["service"] = {k: v for k, v in base["service"].items() if k != key}
    return body


# --------------------------------------------------------------------------------------------------
# Success paths


async def test_sdk_pub_body_reaches_discovery_exactly(api: Api) -> None:
    status, reply = await api.post("/pub", SDK_PUB)
    assert status == 200
    assert reply == {"err_no": 0, "err_msg": "publish success", "url": PROVIDER_URL, "app_port": 20880}
    op, spec, registry = api.last
    assert op == "publish"
    assert spec == PublishSpec(
        interface="com.x.Svc",
        port=20880,
        methods=("a", "b"),
        version="1.0.0",
        group="g",
        application="app",
        params={"weight": "100"},
    )
    assert registry == RegistryURL.parse("zookeeper://127.0.0.1:2181")


async def test_pub_of_just_an_interface_publishes_on_the_app_port_to_the_default_registry(api: Api) -> None:
    status, reply = await api.post("/pub", {"service": {"interface": "com.x.Svc"}})
    assert status == 200
    _, spec, registry = api.last
    assert spec == PublishSpec(interface="com.x.Svc", port=APP_PORT)
    assert registry is None
    assert reply["app_port"] == APP_PORT  # the reply says which port the calls go to


@pytest.mark.parametrize("port", [None, ""])
async def test_pub_port_unset_means_app_port(api: Api, port: Any) -> None:
    status, reply = await api.post("/pub", with_service(SDK_PUB, port=port))
    assert status == 200
    assert api.last[1].port == APP_PORT
    assert reply["app_port"] == APP_PORT


async def test_pub_port_as_string_and_methods_normalised(api: Api) -> None:
    # The reference SDK sends the port as a string and [""] for "no methods".
    status, _ = await api.post("/pub", with_service(SDK_PUB, port="20880", methods=[""]))
    assert status == 200
    assert api.last[1].port == 20880
    assert api.last[1].methods == ()
    await api.post("/pub", with_service(SDK_PUB, methods=["b", "a", "b"]))
    assert api.last[1].methods == ("a", "b")
    await api.post("/pub", with_service(SDK_PUB, methods="sayHello,bye"))
    assert api.last[1].methods == ("bye", "sayHello")
    await api.post("/pub", with_service(SDK_PUB, methods=["*"]))
    assert api.last[1].methods == ("*",)
    await api.post("/pub", with_service(SDK_PUB, methods=["*", "*", ""]))
    assert api.last[1].methods == ("*",)
    # 20880.0 is the integer 20880 to JSON (and to the OpenAPI document's "integer").
    await api.post("/pub", with_service(SDK_PUB, port=20880.0))
    assert api.last[1].port == 20880 and isinstance(api.last[1].port, int)


async def test_pub_params_coerced_to_strings(api: Api) -> None:
    params = {"weight": 200, "timeout": 3000.0, "retries": 0, "ratio": 1.5, "dubbo.tag": "gray", "x": True}
    status, _ = await api.post("/pub", with_service(SDK_PUB, params=params))
    assert status == 200
    assert api.last[1].params == {
        "weight": "200",
        "timeout": "3000",  # not "3000.0": Java reads it with parseInt
        "retries": "0",
        "ratio": "1.5",
        "dubbo.tag": "gray",
        "x": "true",
    }


@pytest.mark.parametrize(
    ("protocol", "expected"), [("tri", "tri"), ("dubbo", "dubbo"), (None, "dubbo"), ("", "dubbo")]
)
async def test_pub_protocol_is_dubbo_or_tri(api: Api, protocol: Any, expected: str) -> None:
    # Triple publications (docs/triple.md): the spec carries the protocol, and so does its key.
    status, _ = await api.post("/pub", with_service(SDK_PUB, protocol=protocol))
    assert status == 200
    assert api.last[1].protocol == expected
    assert api.last[1].key.endswith("@tri") is (expected == "tri")


@pytest.mark.parametrize("protocol", ["grpc", "TRI", 1, ["tri"]])
async def test_an_unknown_pub_protocol_is_refused_by_name(api: Api, protocol: Any) -> None:
    status, reply = await api.post("/pub", with_service(SDK_PUB, protocol=protocol))
    assert (status, reply["err_no"]) == (400, ErrNo.BAD_REQUEST), reply
    assert reply["err_msg"].startswith("service.protocol: "), reply["err_msg"]
    assert "'dubbo' or 'tri'" in reply["err_msg"], reply["err_msg"]
    assert api.fake.calls == []


async def test_null_fields_mean_empty(api: Api) -> None:
    body = {"service": {"interface": "com.x.Svc", "version": None, "group": None, "methods": None}}
    status, _ = await api.post("/pub", {**body, "registry": None})
    assert status == 200
    assert api.last[1] == PublishSpec(interface="com.x.Svc", port=APP_PORT)
    assert api.last[2] is None


@pytest.mark.parametrize("path", ["/pub", "/unpub", "/sub", "/unsub"])
async def test_a_misspelt_key_is_refused_by_name(api: Api, path: str) -> None:
    # Issue 14: {"interface": "com.t.Svc", "versoin": "1.0.0"} published com.t.Svc with no version.
    status, reply = await api.post(path, {"service": {"interface": "com.t.Svc", "versoin": "1.0.0"}})
    assert (status, reply["err_no"]) == (400, ErrNo.BAD_REQUEST), reply
    assert reply["err_msg"] == "service.versoin: unknown field (did you mean 'version'?)"
    assert api.fake.calls == []


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/pub", {**SDK_PUB, "sdk_version": "1.2"}, "sdk_version: unknown field (known: registry, service)"),
        ("/sub", {**SDK_SUB, "registy": None}, "registy: unknown field (did you mean 'registry'?)"),
        ("/pub", with_service(SDK_PUB, weight_hint=5), "service.weight_hint: unknown field (known: "),
        (
            "/pub",
            with_service(SDK_PUB, param={"a": "b"}),
            "service.param: unknown field (did you mean 'params'?)",
        ),
        ("/pub", with_service(SDK_PUB, Port=20880), "service.Port: unknown field (did you mean 'port'?)"),
        (
            "/sub",
            with_service(SDK_SUB, port=20880),
            "service.port: unknown field (known: interface, version, ",
        ),
        ("/pub", {**SDK_PUB, "registry": {**SDK_PUB["registry"], "timeout": 3}}, "registry.timeout: unknown"),
        (
            "/sub",
            {**SDK_SUB, "registry": {"type": "zookeeper", "adr": "h:1"}},
            "registry.adr: unknown field (did",
        ),
        # Not the empty registry of a typed SDK: a key it does not have.
        ("/sub", {**SDK_SUB, "registry": {"type": "", "addr": "", "x": 1}}, "registry.type: "),
    ],
)
async def test_unknown_keys_are_refused_by_name(
    api: Api, path: str, body: dict[str, Any], message: str
) -> None:
    status, reply = await api.post(path, body)
    assert status == 400, reply
    assert reply["err_msg"].startswith(message), reply["err_msg"]
    assert api.fake.calls == []


def test_every_mosn_dubbod_field_is_a_field() -> None:
    # MOSN_FIELDS is copied from mosn/mosn's dubbod structs (see the comment there); a field of it
    # that the models did not have would make a body of those SDKs a 400.
    assert MOSN_FIELDS[""] <= set(PubRequest.model_fields) & set(SubRequest.model_fields)
    assert MOSN_FIELDS["registry"] <= set(RegistryRef.model_fields)
    assert MOSN_FIELDS["pub.service"] <= set(PubService.model_fields)
    assert MOSN_FIELDS["sub.service"] <= set(SubService.model_fields)


async def test_a_mosn_dubbod_body_is_accepted(api: Api) -> None:
    # Every key those SDKs send, with the zero values Go sends for the ones they leave unset.
    registry = {"username": "", "password": "", "type": "zookeeper", "addr": "127.0.0.1:2181"}
    service = {"interface": "com.x.Svc", "methods": ["a"], "port": "20880", "group": "", "version": "1.0.0"}
    status, reply = await api.post("/pub", {"registry": registry, "service": service})
    assert status == 200, reply
    assert api.last[1] == PublishSpec(interface="com.x.Svc", port=20880, methods=("a",), version="1.0.0")
    assert api.last[2] is CONFIGURED[2]
    sub = {"interface": "com.x.Svc", "methods": ["a"], "group": ""}
    status, reply = await api.post("/sub", {"registry": registry, "service": sub})
    assert status == 200, reply
    assert api.last[1] == Subscription("com.x.Svc")


@pytest.mark.parametrize(
    "registry",
    [{"type": "", "addr": ""}, {}, None, {"type": None, "addr": None}],
)
async def test_empty_registry_means_configured(api: Api, registry: Any) -> None:
    status, _ = await api.post("/pub", {**SDK_PUB, "registry": registry})
    assert status == 200
    assert api.last[2] is None


async def test_registry_naming_a_configured_one_reuses_its_settings(either_api: Api) -> None:
    api = either_api
    # Same scheme and hosts (any order, default port, spaces, case, localhost for a loopback
    # address) -> the configured URL with its credentials, allowed or not.
    for path, registry, configured in [
        ("/pub", {"type": "nacos", "addr": "nacos1"}, CONFIGURED[1]),
        (
            "/pub",
            {"type": "nacos", "addr": "NACOS1:8848", "namespace": "ns1", "group": "DEFAULT_GROUP"},
            CONFIGURED[1],
        ),
        ("/sub", {"type": "ZooKeeper", "addr": "zk2:2181,zk1"}, CONFIGURED[0]),
        ("/sub", {"type": "zookeeper", "addr": " zk2 , zk1:2181 "}, CONFIGURED[0]),
        ("/unsub", {"type": "zookeeper", "addr": "localhost"}, CONFIGURED[2]),
        (
            "/unpub",
            {"type": "zookeeper", "addr": "127.0.0.1:2181", "username": "", "password": ""},
            CONFIGURED[2],
        ),
        ("/pub", {"type": "memory"}, CONFIGURED[3]),
    ]:
        base = SDK_PUB if path in ("/pub", "/unpub") else SDK_SUB
        status, reply = await api.post(path, {**base, "registry": registry})
        assert status == 200, (registry, reply)
        assert api.last[2] is configured, registry


OTHERS = [
    # Another host, part of a host list, another port, another namespace or credentials: not configured.
    ({"type": "zookeeper", "addr": "127.0.0.1:1"}, "zookeeper://127.0.0.1:1"),
    ({"type": "zookeeper", "addr": "zk1:2181"}, "zookeeper://zk1:2181"),
    ({"type": "zookeeper", "addr": "zk1,zk2,zk3"}, "zookeeper://zk1:2181,zk2:2181,zk3:2181"),
    ({"type": "nacos", "addr": "nacos1", "namespace": "other"}, "nacos://nacos1:8848?namespace=other"),
    (
        {"type": "nacos", "addr": "nacos1", "namespace": "ns1", "username": "u", "password": "guess"},
        "nacos://nacos1:8848?namespace=ns1&password=guess&username=u",
    ),
]


@pytest.mark.parametrize(("registry", "url"), OTHERS)
@pytest.mark.parametrize("path", ["/pub", "/unpub", "/sub", "/unsub"])
async def test_a_registry_that_is_not_configured_is_refused(
    api: Api, path: str, registry: dict[str, Any], url: str
) -> None:
    base = SDK_PUB if path in ("/pub", "/unpub") else SDK_SUB
    status, reply = await api.post(path, {**base, "registry": registry})
    assert (status, reply["err_no"]) == (400, ErrNo.BAD_REQUEST), reply
    msg = reply["err_msg"]
    assert msg.startswith("registry: ") and "not a registry this sidecar is configured with" in msg, msg
    # It lists the configured ones (passwords hidden) and says how to allow others.
    for configured in CONFIGURED:
        assert str(configured) in msg, msg
    assert "secret-pw" not in msg and "guess" not in msg
    assert "api_allow_body_registries" in msg
    assert api.fake.calls == []  # nothing reached Discovery: no connection was opened


@pytest.mark.parametrize(("registry", "url"), OTHERS)
async def test_allowed_body_registries_are_used_as_named(
    open_api: Api, registry: dict[str, Any], url: str
) -> None:
    status, reply = await open_api.post("/sub", {**SDK_SUB, "registry": registry})
    assert status == 200, reply
    assert open_api.last[2] == RegistryURL.parse(url)
    assert open_api.last[2] not in CONFIGURED


async def test_nacos_and_memory_registries(open_api: Api) -> None:
    api = open_api
    registry = {
        "type": "nacos",
        "addr": "10.0.0.1:8848,10.0.0.2",
        "namespace": "dev",
        "group": "G1",
        "username": "nacos",
        "password": "p&w=d",
    }
    status, _ = await api.post("/pub", {**SDK_PUB, "registry": registry})
    assert status == 200
    url = api.last[2]
    assert url is not None
    assert url.scheme == "nacos" and url.hosts_string == "10.0.0.1:8848,10.0.0.2:8848"
    assert dict(url.params) == {"namespace": "dev", "group": "G1", "username": "nacos", "password": "p&w=d"}
    status, _ = await api.post("/sub", {**SDK_SUB, "registry": {"type": "memory"}})
    assert status == 200
    assert api.last[2] == RegistryURL.parse("memory://")


async def test_unpub_of_the_sdk_body_unpublishes_it_from_its_registry(api: Api) -> None:
    status, reply = await api.post("/unpub", SDK_PUB)
    assert (status, reply) == (200, {"err_no": 0, "err_msg": "unpub success"})
    op, spec, registry = api.last
    assert op == "unpublish"
    assert spec.interface == "com.x.Svc" and spec.version == "1.0.0" and spec.group == "g"
    assert registry == RegistryURL.parse("zookeeper://127.0.0.1:2181")


async def test_sdk_sub_body(api: Api) -> None:
    status, reply = await api.post("/sub", SDK_SUB)
    assert status == 200
    assert reply == {
        "err_no": 0,
        "err_msg": "subscribe success",
        "cluster": "g/com.x.Svc:1.0.0",
        "providers": PROVIDERS,
    }
    assert api.last == ("subscribe", Subscription("com.x.Svc", "1.0.0", "g"), None)


async def test_sub_takes_the_consumer_application_and_params(api: Api) -> None:
    """Governance rules match the consumer by application and parameters (issue 17, item 5)."""
    body = with_service(SDK_SUB, application="shop-web", params={"env": "gray", "retries": 2})
    status, _ = await api.post("/sub", body)
    assert status == 200
    assert api.fake.consumers[-1] == ("shop-web", {"env": "gray", "retries": "2"})
    status, _ = await api.post("/sub", SDK_SUB)
    assert status == 200
    assert api.fake.consumers[-1] == ("", {})  # the sidecar's own application name then
    for bad, field in (({"side": "provider"}, "params"), ({"bad key": "x"}, "params")):
        status, reply = await api.post("/sub", with_service(SDK_SUB, params=bad))
        assert status == 400, bad
        assert field in reply["err_msg"], reply
    status, reply = await api.post("/sub", with_service(SDK_SUB, application="no spaces allowed"))
    assert status == 400
    assert "application" in reply["err_msg"], reply


async def test_sub_takes_a_migration_setting_and_refuses_others(api: Api) -> None:
    """Where a subscription finds its providers (docs/discovery.md): interface, application, both;
    absent, null or "" leave it to the consumer's migration.step, then discovery.migration."""
    for value, passed in (("application", "application"), ("both", "both"), (None, ""), ("", "")):
        status, _ = await api.post("/sub", with_service(SDK_SUB, migration=value))
        assert status == 200, value
        assert api.fake.migrations[-1] == passed
    status, reply = await api.post("/sub", with_service(SDK_SUB, migration="APPLICATION_FIRST"))
    assert status == 400
    assert "service.migration" in reply["err_msg"], reply


async def test_sub_ignores_methods(api: Api) -> None:
    for methods in (["a", "b"], ["not a/method"], 42, {"x": 1}, None):
        status, _ = await api.post("/sub", with_service(SDK_SUB, methods=methods))
        assert status == 200, methods
        assert api.last[1] == Subscription("com.x.Svc", "1.0.0", "g")


@pytest.mark.parametrize(
    ("version", "group", "expected"),
    [
        ("*", "*", Subscription("com.x.Svc", "*", "*")),
        ("0.0.0", "a,b", Subscription("com.x.Svc", "", "a,b")),
        ("", "", Subscription("com.x.Svc")),
        (None, None, Subscription("com.x.Svc")),
        ("1.0.0-SNAPSHOT", "blue_1", Subscription("com.x.Svc", "1.0.0-SNAPSHOT", "blue_1")),
    ],
)
async def test_sub_version_and_group_forms_become_the_subscription(
    api: Api, version: Any, group: Any, expected: Subscription
) -> None:
    status, _ = await api.post(
        "/sub", {"service": {"interface": "com.x.Svc", "version": version, "group": group}}
    )
    assert status == 200
    assert api.last[1] == expected


async def test_unsub_of_the_sdk_body_unsubscribes_it(api: Api) -> None:
    status, reply = await api.post("/unsub", SDK_SUB)
    assert (status, reply) == (200, {"err_no": 0, "err_msg": "unsub success"})
    assert api.last == ("unsubscribe", Subscription("com.x.Svc", "1.0.0", "g"), None)


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}],
)
async def test_any_content_type_is_parsed_as_json(api: Api, headers: dict[str, str]) -> None:
    skip = () if headers else ("Content-Type",)
    status, _ = await api.post("/pub", SDK_PUB, headers=headers, skip_auto_headers=skip)
    assert status == 200


async def test_chunked_body_under_limit(api: Api) -> None:
    payload = orjson.dumps(SDK_PUB)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 7):
            yield payload[i : i + 7]

    async with api.client.post("/pub", data=gen()) as resp:
        assert resp.status == 200
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"


async def test_body_of_exactly_the_limit_is_accepted(api: Api) -> None:
    payload = orjson.dumps(SDK_PUB)
    body = payload + b" " * (LIMIT - len(payload))
    assert len(body) == LIMIT
    status, _ = await api.post("/pub", body)
    assert status == 200


# --------------------------------------------------------------------------------------------------
# Error mapping


@pytest.mark.parametrize(
    ("exc", "status", "err_no"),
    [
        (RegistryUnavailable("registry zookeeper://zk:2181 is lost: cannot register now"), 503, 3),
        (RegistryError("registry zookeeper://zk:2181: NoAuth"), 502, 4),
        (ValueError("registry: no registry is configured"), 400, 1),
    ],
)
@pytest.mark.parametrize(("path", "body"), [("/pub", SDK_PUB), ("/unpub", SDK_PUB), ("/sub", SDK_SUB)])
async def test_registry_errors_map_to_status_and_err_no_with_the_reason(
    api: Api, exc: Exception, status: int, err_no: int, path: str, body: dict[str, Any]
) -> None:
    api.fake.fail = exc
    got, reply = await api.post(path, body)
    assert got == status
    assert reply["err_no"] == err_no
    assert str(exc) in reply["err_msg"]  # the registry's reason reaches the caller


@pytest.mark.parametrize(("path", "body"), [("/unpub", SDK_PUB), ("/unsub", SDK_SUB)])
async def test_unpub_or_unsub_of_what_is_not_there_is_404_err_no_2(
    api: Api, path: str, body: dict[str, Any]
) -> None:
    api.fake.fail = NotFound("service g/com.x.Svc:1.0.0 is not published by this sidecar")
    status, reply = await api.post(path, body)
    assert status == 404
    assert reply == {"err_no": 2, "err_msg": "service g/com.x.Svc:1.0.0 is not published by this sidecar"}


@pytest.mark.parametrize("path", ["/pub", "/unpub", "/sub", "/unsub"])
async def test_unexpected_error_is_500_generic_and_logged(
    api: Api, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.fake.fail = RuntimeError("internal detail 0xdeadbeef")
    body = SDK_PUB if path in ("/pub", "/unpub") else SDK_SUB
    with caplog.at_level(logging.ERROR, logger="regproxy.api.http"):
        status, reply = await api.post(path, body)
    assert status == 500
    assert reply["err_no"] == ErrNo.INTERNAL
    assert "0xdeadbeef" not in reply["err_msg"]
    records = [r for r in caplog.records if r.name == "regproxy.api.http" and r.exc_info]
    assert records and "0xdeadbeef" in caplog.text
    # and the API keeps serving
    api.fake.fail = None
    assert (await api.post(path, body))[0] == 200


async def test_wrong_method_is_json_405(api: Api) -> None:
    for method, path in [("GET", "/pub"), ("PUT", "/sub"), ("DELETE", "/unpub"), ("POST", "/openapi.json")]:
        async with api.client.request(method, path) as resp:
            assert resp.status == 405, (method, path)
            assert resp.content_type == "application/json"
            reply = orjson.loads(await resp.read())
            assert reply["err_no"] == ErrNo.METHOD_NOT_ALLOWED
            assert method in reply["err_msg"]
            assert "POST" in resp.headers["Allow"] or "GET" in resp.headers["Allow"]


async def test_unknown_path_is_json_404(api: Api) -> None:
    async with api.client.post("/publish", data=b"{}") as resp:
        assert resp.status == 404
        assert orjson.loads(await resp.read())["err_no"] == ErrNo.NOT_FOUND


async def test_index_and_openapi(api: Api) -> None:
    async with api.client.get("/") as resp:
        assert resp.status == 200
        index = orjson.loads(await resp.read())
    assert [e["path"] for e in index["endpoints"]] == ["/pub", "/unpub", "/sub", "/unsub"]

    async with api.client.get("/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        doc = orjson.loads(await resp.read())
    assert doc["openapi"].startswith("3.1")
    assert {"/pub", "/unpub", "/sub", "/unsub"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    for path, request, reply in [
        ("/pub", "PubRequest", "PubReply"),
        ("/unpub", "PubRequest", "OkReply"),
        ("/sub", "SubRequest", "SubReply"),
        ("/unsub", "SubRequest", "OkReply"),
    ]:
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + request)
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + reply)
        assert {"400", "413", "502", "503"} <= set(op["responses"])
    assert schemas["PubService"]["required"] == ["interface"]
    assert set(schemas["PubService"]["properties"]) == {
        "interface",
        "methods",
        "version",
        "group",
        "port",
        "application",
        "params",
        "protocol",
    }
    assert schemas["ErrorReply"]["properties"]["err_no"]["enum"] == [int(c) for c in ErrNo if c]
    # Unknown keys are refused, and the document says so (clients generating requests from it,
    # and schemathesis in test_api_schema.py, see the same rule as the API).
    for name in ("PubRequest", "PubService", "SubRequest", "SubService", "RegistryRef"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "app_port" in schemas["PubReply"]["required"]
    assert "--app-port" in doc["paths"]["/pub"]["post"]["description"]
    for code in ErrNo:
        assert f"`{int(code)}` {code.name}" in doc["info"]["description"]


# --------------------------------------------------------------------------------------------------
# Bad input: every field, every forbidden character


BAD_NAMES = ["a/b", "a&b", "a=b", "a b", "a..b", "x\ny", "a\x00b", "a?b", "a#b", "a%2Fb", "a\\b", "é"]


def bad_field_cases() -> list[tuple[str, str, Any, str]]:
    """(path, field, value, err_msg prefix) for every field with every kind of bad value."""
    cases: list[tuple[str, str, Any, str]] = []
    for path in ("/pub", "/unpub", "/sub", "/unsub"):
        for value in [*BAD_NAMES, "", ".a", "a.", "1a", "a.1b", "x" * 256, 123, None, ["a"], {"a": 1}, True]:
            cases.append((path, "interface", value, "service.interface: "))
        for field, limit in (("version", 64), ("group", 128)):
            for value in [*BAD_NAMES, "v" * (limit + 1), 1, 1.0, ["1"], {"a": 1}, True, "1.0/../x"]:
                cases.append((path, field, value, f"service.{field}: "))
    for path in ("/pub", "/unpub"):
        cases += [
            (path, "version", "*", "service.version: "),
            (path, "group", "*", "service.group: "),
            (path, "group", "a,b", "service.group: "),
        ]
        for value in [
            0,
            65536,
            -1,
            "abc",
            "0",
            "65536",
            "20880 ",
            "1e3",
            1.5,
            65536.0,
            True,
            [20880],
            {"p": 1},
        ]:
            cases.append((path, "port", value, "service.port: "))
        for value in [*BAD_NAMES, "x" * 129, 7, ["a"]]:
            cases.append((path, "application", value, "service.application: "))
        for value in [["a/b"], ["a b"], ["1a"], ["a", 2], [None], "a,b c", ["*", "a"], ["a.b"], 5, {"a": 1}]:
            cases.append((path, "methods", value, "service.methods"))
        for value in [
            {"a&b": "1"},
            {"a=b": "1"},
            {"a b": "1"},
            {"a/b": "1"},
            {"a..b": "1"},
            {"": "1"},
            {"k" * 129: "1"},
            {"x": "line\nbreak"},
            {"x": "nul\x00"},
            {"x": "v" * 4097},
            {"x": {"nested": 1}},
            {"x": [1]},
            {"x": None},
            {"interface": "com.evil.Svc"},
            {"side": "consumer"},
            {"category": "consumers"},
            {"version": "2"},
            {"weight": "abc"},
            {"weight": -1},
            {"weight": 10001},
            # The Dubbo parameters regproxy acts on (governance.params.declaration_error).
            {"timeout": "3s"},
            {"sayHi.retries": "-1"},
            {"loadbalance": "fastest"},
            {"sayHi.cluster": "failback"},
            {"executes": "many"},
            {f"k{i}": "v" for i in range(129)},
            ["weight", "1"],
            "weight=1",
        ]:
            cases.append((path, "params", value, "service.params: "))
    for path in ("/sub", "/unsub"):
        for value in ["a,,b", ",a", "a,", "a,*", "a,b/c", "a, b"]:
            cases.append((path, "group", value, "service.group: "))
        for params in [{"loadbalance": "RoundRobin"}, {"forks": "two"}, {"sayHi.actives": "-5"}]:
            cases.append((path, "params", params, "service.params: "))
    return cases


@pytest.mark.parametrize(("path", "field", "value", "prefix"), bad_field_cases())
async def test_a_bad_field_is_400_naming_it_and_reaches_nothing(
    api: Api, path: str, field: str, value: Any, prefix: str
) -> None:
    base = SDK_PUB if path in ("/pub", "/unpub") else SDK_SUB
    status, reply = await api.post(path, with_service(base, **{field: value}))
    assert status == 400, reply
    assert reply["err_no"] == ErrNo.BAD_REQUEST
    assert reply["err_msg"].startswith(prefix), reply["err_msg"]
    assert api.fake.calls == []  # nothing reached Discovery


async def test_a_dubbo_parameter_regproxy_cannot_use_is_refused_naming_the_choices(api: Api) -> None:
    status, reply = await api.post("/sub", with_service(SDK_SUB, params={"sayHi.loadbalance": "fastest"}))
    assert status == 400, reply
    assert reply["err_msg"] == (
        "service.params: sayHi.loadbalance must be one of random, roundrobin, leastactive, "
        "shortestresponse, consistenthash (got 'fastest')"
    )
    status, reply = await api.post("/pub", with_service(SDK_PUB, params={"timeout": "3s"}))
    assert (status, reply["err_msg"]) == (
        400,
        "service.params: timeout must be a whole number, 0 or more (got '3s')",
    )
    status, reply = await api.post("/pub", with_service(SDK_PUB, params={"timeout": "3000", "forks": "-1"}))
    assert status == 200, reply  # forks <= 0 means every provider (ForkingClusterInvoker)


@pytest.mark.parametrize("path", ["/pub", "/unpub", "/sub", "/unsub"])
async def test_missing_interface_and_service(api: Api, path: str) -> None:
    base = SDK_PUB if path in ("/pub", "/unpub") else SDK_SUB
    status, reply = await api.post(path, without(base, "interface"))
    assert (status, reply) == (400, {"err_no": 1, "err_msg": "service.interface: required"})
    status, reply = await api.post(path, {"registry": None})
    assert (status, reply) == (400, {"err_no": 1, "err_msg": "service: required"})
    status, reply = await api.post(path, {"service": "com.x.Svc"})
    assert (status, reply) == (400, {"err_no": 1, "err_msg": "service: must be a JSON object"})


async def test_several_errors_are_all_named(api: Api) -> None:
    status, reply = await api.post(
        "/pub", {"service": {"interface": "a/b", "version": "1 0", "group": "g&", "port": 0}}
    )
    assert status == 400
    for field in ("service.interface", "service.version", "service.group", "service.port"):
        assert field in reply["err_msg"]


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b"{", b"nul", b"{'a': 1}", b"\xff\xfe", b"[]", b'"service"', b"42", b"null", b"[" * 5000],
)
@pytest.mark.parametrize("path", ["/pub", "/unpub", "/sub", "/unsub"])
async def test_not_json_or_not_an_object(api: Api, path: str, body: bytes) -> None:
    status, reply = await api.post(path, body)
    assert status == 400
    assert reply["err_no"] == ErrNo.BAD_REQUEST
    assert reply["err_msg"].startswith("request body: ")


@pytest.mark.parametrize(
    ("registry", "field"),
    [
        ({"type": "etcd", "addr": "h:1"}, "registry.type"),
        ({"addr": "h:1"}, "registry.type"),
        ({"type": 1, "addr": "h:1"}, "registry.type"),
        ({"type": "zookeeper"}, "registry"),
        ({"type": "zookeeper", "addr": "h:99999"}, "registry"),
        ({"type": "zookeeper", "addr": "h:1/dubbo"}, "registry.addr"),
        ({"type": "zookeeper", "addr": "h:1?x=1"}, "registry.addr"),
        ({"type": "zookeeper", "addr": "u:p@h:1"}, "registry.addr"),
        ({"type": "zookeeper", "addr": "h 1"}, "registry.addr"),
        ({"type": "zookeeper", "addr": 2181}, "registry.addr"),
        ({"type": "zookeeper", "addr": "h:1", "namespace": "x"}, "registry.namespace"),
        ({"type": "memory", "addr": "h:1"}, "registry"),
        ({"type": "nacos", "addr": "h:1", "password": "pw-leak"}, "registry"),
        ({"type": "nacos", "addr": "h:1", "namespace": "a\nb"}, "registry.namespace"),
        ({"type": "nacos", "addr": "h:1", "username": ["u"]}, "registry.username"),
        ("zookeeper://h:1", "registry"),
        (["zookeeper"], "registry"),
    ],
)
@pytest.mark.parametrize("path", ["/pub", "/sub"])
async def test_a_bad_registry_is_400_naming_the_field_never_the_password(
    api: Api, path: str, registry: Any, field: str
) -> None:
    base = SDK_PUB if path == "/pub" else SDK_SUB
    status, reply = await api.post(path, {**base, "registry": registry})
    assert status == 400, reply
    assert reply["err_msg"].startswith(field + ": "), reply["err_msg"]
    assert "pw-leak" not in reply["err_msg"]


def test_registry_password_is_not_shown() -> None:
    ref = RegistryRef.model_validate({"type": "nacos", "addr": "h", "username": "u", "password": "pw-leak"})
    assert "pw-leak" not in repr(ref)
    assert "pw-leak" not in str(ref.url)
    assert ref.url.password == "pw-leak"


# --------------------------------------------------------------------------------------------------
# Body limits


async def test_body_over_limit_is_413(api: Api) -> None:
    payload = orjson.dumps(SDK_PUB)
    body = payload + b" " * (LIMIT + 1 - len(payload))
    status, reply = await api.post("/pub", body)
    assert status == 413
    assert reply["err_no"] == ErrNo.TOO_LARGE
    assert api.fake.calls == []
    assert (await api.post("/pub", SDK_PUB))[0] == 200  # still serving


async def raw_exchange(port: int, head: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """Send a request by hand (so nothing completes or fixes the body) and read one reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(5):  # a server waiting for the rest of the body would hang here
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
        return int(status_line.split()[1]), orjson.loads(payload)
    finally:
        writer.close()


async def test_content_length_over_limit_refused_before_reading(api: Api) -> None:
    # Announce 10 MB, send 1 byte: the reply must come at once, without waiting for the body.
    head = (
        b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    )
    status, reply = await raw_exchange(api.port, head, b"{")
    assert status == 413
    assert reply["err_no"] == ErrNo.TOO_LARGE
    assert "10000000" in reply["err_msg"]
    head = f"POST /sub HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
    status, _ = await raw_exchange(api.port, head, b"")
    assert status == 413
    assert api.fake.calls == []


async def test_chunked_body_over_limit_is_cut_off(api: Api) -> None:
    # 9 chunks of 8 KiB and no final chunk: the server must stop at the limit, not wait for the end.
    chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
    head = b"POST /pub HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, reply = await raw_exchange(api.port, head, b"1\r\n{\r\n" + chunk * 9)
    assert status == 413
    assert reply["err_no"] == ErrNo.TOO_LARGE
    assert api.fake.calls == []
    assert (await api.post("/pub", SDK_PUB))[0] == 200


async def test_chunked_oversize_from_a_stalled_client_stream(api: Api) -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b"{"
        for _ in range(32):  # 128 KiB: over the limit
            yield b" " * 4096
        await asyncio.Event().wait()  # and never ends: a server waiting for the end would hang

    async with asyncio.timeout(5), api.client.post("/pub", data=stalled()) as resp:
        assert resp.status == 413
        assert orjson.loads(await resp.read())["err_no"] == ErrNo.TOO_LARGE
    assert api.fake.calls == []


# --------------------------------------------------------------------------------------------------
# start_api / stop_api


async def test_start_and_stop_on_a_free_port() -> None:
    fake = FakeDiscovery()
    runner = await start_api(build_app(fake, app_port=APP_PORT), "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/sub", data=orjson.dumps(SDK_SUB)) as resp,
        ):
            assert resp.status == 200
    finally:
        await stop_api(runner)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------------------------------
# Properties


@given(st.text(max_size=300))
def test_accepted_names_are_safe(text: str) -> None:
    forbidden = ("/", "&", "=", " ", "..", "?", "#", "%", "\\", ":")
    for check in (
        check_interface,
        lambda s: check_version(s, allow_any=True),
        lambda s: check_group(s, allow_many=True),
    ):
        try:
            ok = check(text)
        except ValueError as e:
            assert str(e)
            continue
        assert ok == text
        assert not any(f in text for f in forbidden)
        assert text.isascii() and text.isprintable()


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "*", "0.0.0", "1.0.0", "a,b", "com.x.Svc", "a..b", "20880", "zookeeper", "memory"])
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_service_keys = st.sampled_from(
    ["interface", "methods", "version", "group", "port", "application", "params", "extra"]
)
# Names built from legal and forbidden characters alike, so many bodies get past the JSON shape
# and reach the name rules (and some pass them: those are checked for safety below).
_names = st.text(alphabet="abcXYZ019._-$", max_size=12) | st.text(
    alphabet="abcXYZ019._-$*,/&= \n", max_size=12
)
_valid_ish = {
    "interface": _names | st.sampled_from(["com.x.Svc", "a", "a.b.C$D"]),
    "methods": st.lists(_names, max_size=3) | _names,
    "version": _names,
    "group": _names,
    "port": st.integers(min_value=-1, max_value=70000) | st.from_regex(r"\A[0-9]{0,6}\Z"),
    "application": _names,
    "params": st.dictionaries(
        _names, _names | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.booleans(), max_size=3
    ),
}
_registry = _json | st.dictionaries(
    st.sampled_from(["type", "addr", "namespace", "group", "username", "password"]),
    _json | st.sampled_from(["zookeeper", "nacos", "memory", "h:1", "h1,h2:2", "[::1]:2181"]),
    max_size=6,
)
_bodies = (
    _json
    | st.fixed_dictionaries({"service": st.dictionaries(_service_keys, _json, max_size=8)})
    | st.fixed_dictionaries(
        {
            "registry": _registry,
            "service": st.fixed_dictionaries(
                {"interface": st.sampled_from(["com.x.Svc", "a", "a.b.C$D"]) | _scalars},
                optional={k: _json for k in ("methods", "version", "group", "port", "application", "params")},
            ),
        }
    )
    | st.fixed_dictionaries(
        {
            "service": st.fixed_dictionaries(
                {"interface": _valid_ish["interface"]},
                optional={k: v for k, v in _valid_ish.items() if k != "interface"},
            )
        }
    )
)

_FORBIDDEN = ("/", "&", "=", " ", "..")


def _assert_safe(call: tuple[str, Any, RegistryURL | None]) -> None:
    _, arg, _ = call
    names = [arg.interface, arg.version, arg.group]
    if isinstance(arg, PublishSpec):
        names += [arg.application, *arg.methods, *arg.params]
        assert 1 <= arg.port <= 65535
        for value in arg.params.values():
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value), value
    for name in names:
        assert not any(f in name for f in _FORBIDDEN), name


@pytest.mark.slow
async def test_arbitrary_json_never_gives_5xx(api: Api) -> None:
    loop = asyncio.get_running_loop()

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/pub", "/unpub", "/sub", "/unsub"]), body=_bodies)
    def check(path: str, body: Any) -> None:
        before = len(api.fake.calls)
        status, reply = asyncio.run_coroutine_threadsafe(api.post(path, body), loop).result(10)
        assert status in (200, 400), (status, reply)
        assert (reply["err_no"] == 0) == (status == 200)
        if status == 200:
            _assert_safe(api.fake.calls[-1])
        else:
            assert len(api.fake.calls) == before
            assert isinstance(reply["err_msg"], str) and reply["err_msg"]

    # Hypothesis drives from a worker thread; the server and client stay on this test's loop.
    await asyncio.to_thread(check)
