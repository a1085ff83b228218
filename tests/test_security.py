"""Security: who may reach the APIs, what a caller can write, what the ingress forwards, registry auth.

In-process sidecars (fast to start) against the real ZooKeeper of tests/zkserver.py and the Nacos
double; an independent kazoo client checks what lands in ZooKeeper and which ACLs guard it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import ACL, Id, Permissions, make_digest_acl_credential

from regproxy.cli import main as cli_main
from regproxy.config import Config, ConfigError
from regproxy.ctl import main as ctl_main
from regproxy.demo.client import DubboClient
from regproxy.demo.provider import ECHO_SERVICE, GREETINGS_SERVICE, Provider, default_services
from regproxy.dubbo.frame import Status
from regproxy.registry.base import AUTH_FAILED, RegistryError
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.nacos import service_name
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import DubboURL, java_url_decode, provider_url
from regproxy.registry.zookeeper import ZooKeeperRegistry
from regproxy.sdk import AsyncRegproxyClient, RegproxyError
from regproxy.sidecar import Sidecar
from tests.peers.nacos import NacosDouble
from tests.ports import free_port
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

TOKEN = "api-token-0123456789"
IFACE = "com.example.SecureService"
USER, PASSWORD = "regproxy", "zk-s3cret-pw"


def config(tmp: Path, registries: list[str], **extra: Any) -> Config:
    data: dict[str, Any] = {
        "egress": f"127.0.0.1:{free_port()}",
        "ingress": f"127.0.0.1:{free_port()}",
        "api": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "app_port": free_port(),
        "advertise_ip": "127.0.0.1",
        "data_dir": str(tmp),
        "registries": registries,
        "drain": {"grace_s": 0.2, "timeout_s": 2.0},
        **extra,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    return Config.from_dict(data)


@contextlib.asynccontextmanager
async def sidecar(tmp: Path, registries: list[str], **extra: Any) -> AsyncIterator[Sidecar]:
    sc = Sidecar(config(tmp, registries, **extra))
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop()


def api_url(sc: Sidecar, path: str) -> str:
    return f"http://{sc.config.api}{path}"


def admin_url(sc: Sidecar, path: str) -> str:
    return f"http://{sc.config.admin}{path}"


async def request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------------------
# Listeners: loopback unless allowed, and the token


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "[::]", "api.example.com"])
@pytest.mark.parametrize("which", ["api", "admin"])
def test_non_loopback_api_or_admin_needs_the_flag(which: str, host: str) -> None:
    address = f"{host}:{free_port()}"
    with pytest.raises(ConfigError) as info:
        Config.from_dict({which: address})
    ((key, problem),) = info.value.errors
    assert key == which
    assert "not a loopback address" in problem and f"{which}_allow_remote" in problem
    assert f"--{which}-allow-remote" in problem
    assert str(getattr(Config.from_dict({which: address, f"{which}_allow_remote": True}), which))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "[::1]", "localhost"])
def test_loopback_binds_need_no_flag(host: str) -> None:
    Config.from_dict({"api": f"{host}:{free_port()}", "admin": f"{host}:{free_port()}"})


def test_cli_refuses_a_remote_api_and_accepts_it_with_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "--api", "0.0.0.0:22299", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "api: 0.0.0.0:22299 is not a loopback address" in err and "--api-allow-remote" in err
    assert cli_main(["run", "--api", "0.0.0.0:22299", "--api-allow-remote", "--print-config"]) == 0
    assert "api_allow_remote: true" in capsys.readouterr().out


async def test_remote_bind_is_served_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    MemoryRegistry.reset_all()
    port = free_port()
    caplog.set_level(logging.WARNING)
    async with sidecar(tmp_path, ["memory://"], api=f"0.0.0.0:{port}", api_allow_remote=True):
        status, body, _ = await request("GET", f"http://127.0.0.1:{port}/")
        assert status == 200 and body["err_no"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("api listens on 0.0.0.0" in w and "no auth_token" in w for w in warnings), warnings


async def test_auth_token_guards_both_apis(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    MemoryRegistry.reset_all()
    pub = {"service": {"interface": IFACE, "port": 20999, "version": "1.0.0"}}
    async with sidecar(tmp_path, ["memory://"], auth_token=TOKEN) as sc:
        # pub/sub API: 401 without a token (with a challenge), 403 with a wrong one, 200 with it.
        status, body, headers = await request("POST", api_url(sc, "/pub"), pub)
        assert (status, body["err_no"]) == (401, 8) and "auth_token" in body["err_msg"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        status, body, _ = await request("POST", api_url(sc, "/pub"), pub, {"Authorization": "Basic eDp5"})
        assert (status, body["err_no"]) == (401, 8)
        status, body, _ = await request("POST", api_url(sc, "/sub"), pub, bearer("wrong"))
        assert (status, body["err_no"]) == (403, 9) and body["err_msg"] == "wrong auth token"
        assert sc.discovery is not None and sc.discovery.publications == {}
        status, body, _ = await request("POST", api_url(sc, "/pub"), pub, bearer(TOKEN))
        assert status == 200 and body["err_no"] == 0
        # The API's self-description stays open (it says nothing about this host).
        assert (await request("GET", api_url(sc, "/openapi.json")))[0] == 200

        # The SDK sends it (argument or $REGPROXY_AUTH_TOKEN).
        async with AsyncRegproxyClient(f"http://{sc.config.api}", token=TOKEN) as rp:
            found = await rp.subscribe(IFACE, version="1.0.0")
            assert [p.address for p in found.providers] == [f"127.0.0.1:{sc.ingress.address[1]}"]
        async with AsyncRegproxyClient(f"http://{sc.config.api}", token="") as rp:
            with pytest.raises(RegproxyError) as info:
                await rp.unsubscribe(IFACE, version="1.0.0")
            assert (info.value.err_no, info.value.http_status) == (8, 401)

        # Admin API: every path but the probes needs it, reading ones included.
        for path in ("/api/v1/config_dump", "/api/v1/publications", "/metrics"):
            async with aiohttp.ClientSession() as http, http.get(admin_url(sc, path)) as r:
                assert r.status == 401, path
                assert (await r.json(content_type=None))["err_no"] == 8
        for path in ("/healthz", "/readyz"):
            assert (await request("GET", admin_url(sc, path)))[0] == 200, path
        status, dump, _ = await request("GET", admin_url(sc, "/api/v1/config_dump"), None, bearer(TOKEN))
        assert status == 200 and dump["config"]["auth_token"] == "***"
        status, body, _ = await request(
            "POST", admin_url(sc, "/api/v1/loglevel?level=info"), None, bearer("x")
        )
        assert (status, body["err_no"]) == (403, 9)
        status, body, _ = await request(
            "POST", admin_url(sc, "/api/v1/loglevel?level=info"), None, bearer(TOKEN)
        )
        assert status == 200 and body["level"] == "info"

        # regproxy ctl sends it on every request (blocking urllib: off the loop serving the sidecar).
        ctl = ["--admin", str(sc.config.admin), "--json", "publications"]
        assert await asyncio.to_thread(ctl_main, ctl) == 1
        assert await asyncio.to_thread(ctl_main, ["--token", TOKEN, *ctl]) == 0
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


async def test_admin_token_still_guards_admin_changes(tmp_path: Path) -> None:
    MemoryRegistry.reset_all()
    async with sidecar(tmp_path, ["memory://"], admin_token=TOKEN) as sc:
        assert (await request("GET", admin_url(sc, "/api/v1/config_dump")))[0] == 200
        status, body, _ = await request("POST", admin_url(sc, "/api/v1/loglevel?level=info"))
        assert (status, body["err_no"]) == (401, 8) and "admin_token" in body["err_msg"]
        status, _, _ = await request(
            "POST", admin_url(sc, "/api/v1/loglevel?level=info"), None, bearer(TOKEN)
        )
        assert status == 200
        # No auth_token: the pub/sub API is open to local programs but not to web pages.
        sub = {"service": {"interface": IFACE}}
        status, body, _ = await request("POST", api_url(sc, "/sub"), sub, {"Origin": "http://evil.example"})
        assert (status, body["err_no"]) == (403, 9)
        assert (await request("POST", api_url(sc, "/sub"), sub))[0] == 200


# ---------------------------------------------------------------------------------------------------
# Nothing a caller sends escapes its place (real ZooKeeper, through the HTTP API)

BAD_INTERFACES = [
    "../x", "a/../../b", "/abs", "a/b", "%2F", "a%2Fb", "", "a" * 256, "com.例.Svc", "a\x00b", "a\nb",
    "a\tb", "..", ".", "a..b", "a b", "a;b", "a?b=c", "a&b", "a#b", "a\\b", "1a.b",
]  # fmt: skip
BAD_TOKENS = ["1&x=y", "1=2", "1?x", "1#x", "1/2", "../1", "1,2", "1 2", "1\n2", "1\x00", "%26", "é"]
BAD_PARAM_KEYS = ["&x=y", "a=b", "%26", "a\nb", "", "a/b", "side", "category", "interface", "é"]
GOOD_PARAM_VALUES = ["&x=y", "a=b", "%26", "x&side=consumer&category=consumers", "a?b#c", "é/ü", "1,2"]
BAD_PARAM_VALUES = ["a\nb", "a\rb", "a\x00b", "x\u2028y"]


@pytest.fixture
async def zk_sidecar(zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with sidecar(tmp_path, [f"zookeeper://{zk_server.hosts}"]) as sc:
        assert sc.discovery is not None
        await wait_for(lambda: all(r.connected for r in sc.discovery.registries.values()), 10, "zk connected")
        yield sc


def tree(zk: KazooClient, path: str = "/") -> list[str]:
    """Every node below ``path`` (ZooKeeper's own /zookeeper excluded)."""
    out = []
    for child in zk.get_children(path):
        full = f"{path.rstrip('/')}/{child}"
        if full == "/zookeeper":
            continue
        out.append(full)
        out += tree(zk, full)
    return out


async def test_hostile_names_never_leave_their_place(zk_sidecar: Sidecar, zk: KazooClient) -> None:
    sc = zk_sidecar
    base = {"interface": IFACE, "port": 20999, "version": "1.0.0", "group": "g"}

    async def pub(field: str, **service: Any) -> tuple[int, dict[str, Any]]:
        status, body, _ = await request("POST", api_url(sc, "/pub"), {"service": {**base, **service}})
        if status != 200:
            assert status == 400 and body["err_no"] == 1 and field in body["err_msg"], (service, body)
        return status, body

    for iface in BAD_INTERFACES:
        assert (await pub("service.interface", interface=iface))[0] == 400, iface
        status, body, _ = await request("POST", api_url(sc, "/sub"), {"service": {"interface": iface}})
        assert status == 400 and "service.interface" in body["err_msg"], (iface, body)
    for value in BAD_TOKENS:
        assert (await pub("service.version", version=value))[0] == 400, value
        assert (await pub("service.group", group=value))[0] == 400, value
        if value == "1,2":
            continue  # a comma list of groups is a legal /sub (any of them)
        status, body, _ = await request(
            "POST", api_url(sc, "/sub"), {"service": {"interface": IFACE, "group": value}}
        )
        assert status == 400 and "service.group" in body["err_msg"], (value, body)
    for key in BAD_PARAM_KEYS:
        assert (await pub("service.params", params={key: "v"}))[0] == 400, key
    for value in BAD_PARAM_VALUES:
        assert (await pub("service.params", params={"k": value}))[0] == 400, value
    assert tree(zk) == []  # nothing at all was written

    # Values that look like URL syntax are accepted and stay one value of one parameter.
    await pub("", params={})
    (leaf,) = zk.get_children(f"/dubbo/{IFACE}/providers")
    plain_keys = set(DubboURL.parse(java_url_decode(leaf)).params) - {"timestamp"}
    for value in GOOD_PARAM_VALUES:
        assert (await pub("", params={"k": value}))[0] == 200, value
        (leaf,) = zk.get_children(f"/dubbo/{IFACE}/providers")  # one node, replaced
        url = DubboURL.parse(java_url_decode(leaf))
        assert url.params["k"] == value and url.params["side"] == "provider"
        assert set(url.params) - {"timestamp"} == plain_keys | {"k"}, (value, sorted(url.params))
        assert (url.interface, url.version, url.group) == (IFACE, "1.0.0", "g")
    assert tree(zk) == [
        "/dubbo",
        f"/dubbo/{IFACE}",
        # Watched for 2.6-era override URLs; a Dubbo provider creates it too (it subscribes to the
        # configurators category of what it exports).
        f"/dubbo/{IFACE}/configurators",
        f"/dubbo/{IFACE}/providers",
        f"/dubbo/{IFACE}/providers/{leaf}",
        # Dubbo 3's application level (discovery.register_mode all): the service-name mapping and the
        # sidecar's instance of its own application (the publication names none).
        "/dubbo/mapping",
        f"/dubbo/mapping/{IFACE}",
        "/services",
        "/services/regproxy",
        f"/services/regproxy/{url.host}:{url.port}",
    ]


async def test_registry_named_in_a_request_cannot_smuggle_settings(
    zk_sidecar: Sidecar, zk: KazooClient
) -> None:
    service = {"interface": IFACE, "port": 20999}
    for registry, field in [
        ({"type": "zookeeper", "addr": "127.0.0.1:1?username=u&password=p"}, "registry.addr"),
        ({"type": "zookeeper", "addr": "u:p@127.0.0.1:1"}, "registry.addr"),
        ({"type": "zookeeper", "addr": "127.0.0.1:1/x"}, "registry.addr"),
        ({"type": "zookeeper", "addr": "127.0.0.1:1", "password": "p"}, "registry.password"),
        ({"type": "redis", "addr": "127.0.0.1:6379"}, "registry.type"),
    ]:
        status, body, _ = await request(
            "POST", api_url(zk_sidecar, "/pub"), {"registry": registry, "service": service}
        )
        assert status == 400 and field in body["err_msg"], (registry, body)
    assert tree(zk) == []


async def test_nacos_names_and_metadata_stay_in_place(tmp_path: Path) -> None:
    async with NacosDouble() as nacos, sidecar(tmp_path, [f"nacos://{nacos.address}"]) as sc:
        assert sc.discovery is not None
        await wait_for(lambda: all(r.connected for r in sc.discovery.registries.values()), 10, "nacos")
        for version in BAD_TOKENS:
            body = {"service": {"interface": IFACE, "port": 20999, "version": version}}
            assert (await request("POST", api_url(sc, "/pub"), body))[0] == 400, version
        params = {"k": "&x=y", "j": "a:b:c"}
        body = {
            "service": {"interface": IFACE, "port": 20999, "version": "1.0", "group": "g", "params": params}
        }
        assert (await request("POST", api_url(sc, "/pub"), body))[0] == 200
        (inst,) = nacos.instances(service_name("providers", IFACE, "1.0", "g"))
        assert inst.metadata["k"] == "&x=y" and inst.metadata["j"] == "a:b:c"
        assert inst.metadata["side"] == "provider" and inst.metadata["interface"] == IFACE


# ---------------------------------------------------------------------------------------------------
# The ingress forwards only what was published here


async def test_ingress_forwards_only_published_services(tmp_path: Path) -> None:
    MemoryRegistry.reset_all()
    app = Provider(default_services(greetings_version="1.0.0"), name="app")
    other = Provider(default_services(), name="other")  # another local port, never published
    await app.start("127.0.0.1", 0)
    await other.start("127.0.0.1", 0)
    try:
        async with sidecar(tmp_path, ["memory://"], app_port=app.port) as sc:
            client = await DubboClient.connect("127.0.0.1", sc.ingress.address[1])

            async def status(service: str, method: str, args: list[Any], **kw: Any) -> int:
                return (await client.invoke(service, method, args, **kw)).status

            # Nothing published: the application's own port is not reachable either.
            assert (
                await status(GREETINGS_SERVICE, "sayHi", ["x"], version="1.0.0") == Status.SERVICE_NOT_FOUND
            )
            pub = {"service": {"interface": GREETINGS_SERVICE, "version": "1.0.0", "methods": ["sayHi"]}}
            assert (await request("POST", api_url(sc, "/pub"), pub))[0] == 200
            assert await client.call(GREETINGS_SERVICE, "sayHi", ["x"], version="1.0.0") == "hi, x"
            for service, kw in [
                (GREETINGS_SERVICE, {"version": "2.0.0"}),  # another version
                (GREETINGS_SERVICE, {"version": "1.0.0", "group": "other"}),  # another group
                (ECHO_SERVICE, {}),  # served by the same app, not published
            ]:
                resp = await client.invoke(
                    service, "echo" if service == ECHO_SERVICE else "sayHi", ["x"], **kw
                )
                assert resp.status == Status.SERVICE_NOT_FOUND and "no route" in (resp.error or ""), kw
            # A service published on another port, in a group: reachable with that group only.
            echo = {"service": {"interface": ECHO_SERVICE, "port": other.port, "group": "g"}}
            assert (await request("POST", api_url(sc, "/pub"), echo))[0] == 200
            assert await client.call(ECHO_SERVICE, "echo", ["e"], group="g") == "e"
            assert await status(ECHO_SERVICE, "echo", ["e"]) == Status.SERVICE_NOT_FOUND
            assert app.services.count("echo") == 0 and other.services.count("echo") == 1
            assert other.services.count("sayHi") == 0

            # Unpublished: served for drain.grace_s (consumers learn of it a moment later), then 60.
            assert (await request("POST", api_url(sc, "/unpub"), pub))[0] == 200
            assert await client.call(GREETINGS_SERVICE, "sayHi", ["y"], version="1.0.0") == "hi, y"
            await asyncio.sleep(sc.config.drain.grace_s + 0.1)
            assert (
                await status(GREETINGS_SERVICE, "sayHi", ["z"], version="1.0.0") == Status.SERVICE_NOT_FOUND
            )
            assert app.services.count("sayHi") == 2
            client.close()
    finally:
        await app.close(grace=0.1)
        await other.close(grace=0.1)


# ---------------------------------------------------------------------------------------------------
# ZooKeeper digest auth and ACLs


def zk_url(server: ZooKeeperServer, password: str = PASSWORD, acl: str | None = None) -> str:
    return f"zookeeper://{server.hosts}?username={USER}&password={password}" + (f"&acl={acl}" if acl else "")


@pytest.fixture
def zk_admin(zk: KazooClient, zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A kazoo client with the right credentials; removes what the tests created (the plain ``zk``
    fixture cannot once the nodes carry our ACL)."""
    client = KazooClient(hosts=zk_server.hosts, timeout=10.0, auth_data=[("digest", f"{USER}:{PASSWORD}")])
    client.start(timeout=15)
    try:
        yield client
    finally:
        with contextlib.suppress(NoNodeError):
            client.delete("/dubbo", recursive=True)
        client.stop()
        client.close()


async def started(url: str) -> ZooKeeperRegistry:
    reg = ZooKeeperRegistry(RegistryURL.parse(url), session_timeout_s=10.0, op_timeout_s=2.0)
    await reg.start()
    await wait_for(lambda: reg.state in ("connected", AUTH_FAILED), 10, "registry connected")
    return reg


MINE = ACL(Permissions.ALL, Id("digest", make_digest_acl_credential(USER, PASSWORD)))
WORLD_READ = ACL(Permissions.READ, Id("world", "anyone"))


@pytest.mark.parametrize(
    ("acl", "leaf", "parent"),
    [
        (None, [MINE, WORLD_READ], [MINE, WORLD_READ]),  # world-read, the default
        (
            "shared",
            [MINE, WORLD_READ],
            [MINE, ACL(Permissions.READ | Permissions.CREATE, Id("world", "anyone"))],
        ),
        ("private", [MINE], [MINE]),
    ],
)
async def test_nodes_carry_the_acl_and_strangers_cannot_touch_them(
    zk: KazooClient,
    zk_admin: KazooClient,
    zk_server: ZooKeeperServer,
    acl: str | None,
    leaf: list[ACL],
    parent: list[ACL],
) -> None:
    reg = await started(zk_url(zk_server, acl=acl))
    try:
        assert reg.connected
        url = provider_url(interface=IFACE, ip="10.0.0.1", port=20882, version="1.0.0")
        await reg.register(url)
        providers = f"/dubbo/{IFACE}/providers"
        node = f"{providers}/{url.encoded()}"
        assert zk_admin.get_acls(node)[0] == leaf
        for path in ("/dubbo", f"/dubbo/{IFACE}", providers):
            assert zk_admin.get_acls(path)[0] == parent, path

        # A client without credentials (a stranger, or a Java consumer without them).
        if acl == "private":
            with pytest.raises(NoAuthError):
                zk.get_children(providers)
        else:
            assert zk.get_children(providers) == [url.encoded()]  # consumers still discover
        with pytest.raises(NoAuthError):
            zk.delete(node)
        with pytest.raises(NoAuthError):
            zk.set(node, b"x")
        with pytest.raises(NoAuthError):
            zk.set_acls(node, [ACL(Permissions.ALL, Id("world", "anyone"))])
        fake = f"{providers}/{provider_url(interface=IFACE, ip='6.6.6.6', port=1).encoded()}"
        if acl == "shared":
            zk.create(fake, ephemeral=True)  # others may register beside us...
            with pytest.raises(NoAuthError):
                zk.delete(fake)  # ...but not delete anything: DELETE on the parent stays ours
        else:
            with pytest.raises(NoAuthError):
                zk.create(fake, ephemeral=True)
        # The sidecar itself can: unregister deletes its node.
        await reg.unregister(url)
        assert not zk_admin.exists(node)
    finally:
        await reg.stop()


async def test_wrong_zookeeper_password_is_a_clear_error(
    zk: KazooClient,
    zk_admin: KazooClient,
    zk_server: ZooKeeperServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = await started(zk_url(zk_server))
    try:
        await good.register(provider_url(interface=IFACE, ip="10.0.0.1", port=20882))
        wrong = "not-the-password"
        caplog.set_level(logging.INFO)
        async with sidecar(tmp_path, [zk_url(zk_server, password=wrong)]) as sc:
            assert sc.discovery is not None
            (reg,) = sc.discovery.registries.values()
            await wait_for(lambda: reg.state == AUTH_FAILED, 10, "auth_failed")
            status, ready, _ = await request("GET", admin_url(sc, "/readyz"))
            assert status == 503 and not ready["ready"]
            (reason,) = ready["reasons"]
            assert "auth_failed" in reason and "digest auth failed" in reason and repr(USER) in reason
            body = {"service": {"interface": IFACE, "port": 20999}}
            status, reply, _ = await request("POST", api_url(sc, "/pub"), body)
            assert status == 502 and "digest auth failed" in reply["err_msg"], reply
            status, dump, _ = await request("GET", admin_url(sc, "/api/v1/config_dump"))
            assert "password=***" in dump["config"]["registries"][0]
            assert len(zk_admin.get_children(f"/dubbo/{IFACE}/providers")) == 1  # only the good one's
            with pytest.raises(RegistryError, match="digest auth failed"):
                await reg.register(provider_url(interface=IFACE, ip="10.0.0.2", port=20882))
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "digest auth failed" in text
        assert wrong not in text and PASSWORD not in text
    finally:
        await good.stop()


async def test_wrong_password_on_a_private_tree(zk_admin: KazooClient, zk_server: ZooKeeperServer) -> None:
    good = await started(zk_url(zk_server, acl="private"))
    try:
        await good.register(provider_url(interface=IFACE, ip="10.0.0.1", port=20882))
        # The wrong user may not even read the ACL that would show the mismatch: that is the sign.
        wrong = await started(zk_url(zk_server, password="nope", acl="private"))
        try:
            assert wrong.state == AUTH_FAILED
            assert "may not read /dubbo" in wrong.auth_error and "nope" not in wrong.auth_error
        finally:
            await wrong.stop()
    finally:
        await good.stop()


# ---------------------------------------------------------------------------------------------------
# Nacos username/password


async def test_nacos_credentials_right_and_wrong(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    users = {"nacos-user": "n4cos-pw"}
    body = {"service": {"interface": IFACE, "port": 20999, "version": "1.0"}}
    svc = service_name("providers", IFACE, "1.0", "")
    async with NacosDouble(users=users) as nacos:
        good = f"nacos://{nacos.address}?username=nacos-user&password=n4cos-pw"
        async with sidecar(tmp_path / "good", [good]) as sc:
            assert sc.discovery is not None
            await wait_for(lambda: all(r.connected for r in sc.discovery.registries.values()), 10, "nacos")
            assert (await request("POST", api_url(sc, "/pub"), body))[0] == 200
            status, sub, _ = await request(
                "POST", api_url(sc, "/sub"), {"service": {"interface": IFACE, "version": "1.0"}}
            )
            assert status == 200 and [p["address"] for p in sub["providers"]] == [
                f"127.0.0.1:{sc.ingress.address[1]}"
            ]
            assert len(nacos.instances(svc)) == 1
        await wait_for(lambda: not nacos.instances(svc), 5, "instance gone")

        caplog.set_level(logging.INFO)
        bad = f"nacos://{nacos.address}?username=nacos-user&password=wrong-pw"
        async with sidecar(tmp_path / "bad", [bad]) as sc:
            assert sc.discovery is not None
            (reg,) = sc.discovery.registries.values()
            await wait_for(lambda: reg.state == AUTH_FAILED, 10, "auth_failed")
            status, ready, _ = await request("GET", admin_url(sc, "/readyz"))
            assert status == 503 and "Nacos login refused for user 'nacos-user'" in ready["reasons"][0]
            status, reply, _ = await request("POST", api_url(sc, "/pub"), body)
            assert status == 502 and "login refused" in reply["err_msg"], reply
            assert nacos.instances(svc) == []
        assert "wrong-pw" not in "\n".join(r.getMessage() for r in caplog.records)
