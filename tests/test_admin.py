"""The admin API against a running pair of in-process sidecars on the memory:// registry: a provider
sidecar in front of the demo provider, a consumer sidecar whose egress the demo client calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from pydantic import BaseModel

from regproxy.api import admin_models
from regproxy.api.admin import check_caller, is_loopback
from regproxy.config import load_config
from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.demo.provider import GREETINGS_SERVICE as GREET
from regproxy.demo.provider import Provider, default_services
from regproxy.discovery import PublishSpec
from regproxy.dubbo.frame import Status
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.url import Subscription
from regproxy.sidecar import Sidecar
from tests.ports import free_port
from tests.sidecars import samples, value
from tests.wait import wait_for

VERSION = "1.0.0"
CLUSTER = f"{GREET}:{VERSION}"
CALLS = 7
TOKEN = "s3cret-admin-token"
DUBBO_TOKEN = "dubbo-provider-token"


def write_config(path: Path, data_dir: Path, app_port: int, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "egress": f"127.0.0.1:{free_port()}",
        "ingress": f"127.0.0.1:{free_port()}",
        "api": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "app_port": app_port,
        "advertise_ip": "127.0.0.1",
        "data_dir": str(data_dir),
        "registries": ["memory://"],
        "drain": {"grace_s": 0.1, "timeout_s": 2.0},
        **extra,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return data


@dataclass
class Node:
    sidecar: Sidecar
    config_path: Path
    data: dict[str, Any]

    @property
    def admin(self) -> str:
        return f"http://{self.data['admin']}"

    def rewrite(self, **changes: Any) -> None:
        """Change the config file (for reload) keeping its ports."""
        self.data = {**self.data, **changes}
        self.config_path.write_text(yaml.safe_dump(self.data))


async def start_node(tmp_path: Path, name: str, app_port: int, **extra: Any) -> Node:
    path = tmp_path / f"{name}.yaml"
    data = write_config(path, tmp_path / name, app_port, **extra)
    sc = Sidecar(load_config(path), loader=lambda: load_config(path), config_path=str(path))
    await sc.start()
    return Node(sc, path, data)


@dataclass
class Pair:
    app: Provider
    provider: Node
    consumer: Node
    http: aiohttp.ClientSession

    async def get(self, url: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.get(url, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def post(self, url: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.post(url, **kw) as r:
            return r.status, await r.json(content_type=None), r

    async def text(self, url: str) -> str:
        async with self.http.get(url) as r:
            assert r.status == 200
            return await r.text()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    MemoryRegistry.reset_all()  # the default memory:// store is process-wide
    app = Provider(default_services(greetings_version=VERSION), name="app")
    await app.start("127.0.0.1", 0)
    nodes: list[Node] = []
    http = aiohttp.ClientSession()
    try:
        provider = await start_node(tmp_path, "provider", app.port)
        nodes.append(provider)
        # A short empty-provider hold: a test that drains the provider waits it out.
        consumer = await start_node(
            tmp_path, "consumer", 1, admin_token=None, discovery={"empty_protection_s": 0.5}
        )
        nodes.append(consumer)
        assert provider.sidecar.discovery is not None and consumer.sidecar.discovery is not None
        await provider.sidecar.discovery.publish(
            PublishSpec(
                GREET, app.port, ("sayHi",), VERSION, application="demo", params={"token": DUBBO_TOKEN}
            )
        )
        await consumer.sidecar.discovery.subscribe(Subscription(GREET, VERSION, ""))
        yield Pair(app, provider, consumer, http)
    finally:
        await http.close()
        for node in reversed(nodes):
            await node.sidecar.stop()
        await app.close(grace=0.1)


async def send_calls(node: Node, n: int = CALLS) -> DubboClient:
    """``n`` calls that succeed and one for an unknown service; the client stays connected."""
    client = await DubboClient.connect("127.0.0.1", node.sidecar.egress.address[1])
    for i in range(n):
        assert await client.call(GREET, "sayHi", [f"n{i}"], version=VERSION) == f"hi, n{i}"
    with pytest.raises(DubboCallError) as info:
        await client.call("com.example.Nope", "x", [])
    assert info.value.status == Status.SERVICE_NOT_FOUND
    return client


# --- health ----------------------------------------------------------------------------------------


async def test_healthz_readyz_index_and_errors(pair: Pair) -> None:
    for node in (pair.provider, pair.consumer):
        assert await pair.get(f"{node.admin}/healthz") == (
            200,
            {"status": "alive", "uptime_s": pytest.approx(0.5, abs=60)},
        )
        status, body = await pair.get(f"{node.admin}/readyz")
        assert status == 200, body
        assert body["ready"] is True and body["status"] == "ready" and body["reasons"] == []
        assert (
            body["detail"]["registries"] == {"memory://": "connected"} and body["detail"]["restored"] is True
        )
    status, index = await pair.get(f"{pair.consumer.admin}/")
    assert status == 200 and any(e["path"] == "/metrics" for e in index["endpoints"])
    # aiohttp's own errors come back in the API's JSON shape.
    status, body = await pair.get(f"{pair.consumer.admin}/api/v1/nope")
    assert status == 404 and body["err_no"] == 2 and "no such endpoint" in body["err_msg"]
    status, body, resp = await pair.post(f"{pair.consumer.admin}/api/v1/stats")
    assert status == 405 and body["err_no"] == 7 and resp.headers["Allow"] == "GET, HEAD"


async def test_readyz_503_when_registry_is_down(pair: Pair) -> None:
    disc = pair.consumer.sidecar.discovery
    assert disc is not None
    (reg,) = disc.registries.values()
    assert isinstance(reg, MemoryRegistry)
    reg.simulate_down()
    status, body = await pair.get(f"{pair.consumer.admin}/readyz")
    assert status == 503 and body["ready"] is False
    assert body["detail"]["registries"] == {"memory://": "suspended"} and body["reasons"] == [
        "registry memory:// is suspended"
    ]
    m = samples(await pair.text(f"{pair.consumer.admin}/metrics"))
    assert value(m, "regproxy_ready") == 0
    assert value(m, "regproxy_registry_state", registry="memory://", state="suspended") == 1
    assert value(m, "regproxy_registry_state", registry="memory://", state="connected") == 0
    reg.simulate_up()
    status, _ = await pair.get(f"{pair.consumer.admin}/readyz")
    assert status == 200


# --- config dump -----------------------------------------------------------------------------------


async def test_config_dump_and_query_variants(pair: Pair) -> None:
    base = f"{pair.consumer.admin}/api/v1/config_dump"
    status, dump = await pair.get(base)
    assert status == 200
    assert set(dump) == {
        "sidecar",
        "config",
        "routers",
        "clusters",
        "listeners",
        "publications",
        "subscriptions",
        "rules",
    }
    # memory:// is a config center: it is watched for the subscription's rules, none in force.
    (center,) = dump["rules"]["centers"]
    assert center["in_force"] == [] and center["refused"] == [] and center["watched"], center
    assert dump["config"]["egress"] == pair.consumer.data["egress"]
    assert dump["config"]["registries"] == ["memory://"]
    assert dump["sidecar"]["config_path"] == str(pair.consumer.config_path)
    assert set(dump["routers"]) == {"egress", "ingress"}
    assert [r["name"] for r in dump["routers"]["egress"]["routes"]] == [CLUSTER]
    assert dump["routers"]["ingress"]["routes"] == []  # the consumer publishes nothing
    assert {(c["listener"], c["name"], c["source"]) for c in dump["clusters"]} == {
        ("egress", CLUSTER, "registry"),
    }
    egress = pair.consumer.sidecar.egress.address
    assert dump["listeners"][0] == {
        "name": "egress", "address": f"127.0.0.1:{egress[1]}", "accepting": True, "connections": 0,
        "in_flight": 0, "table_version": pair.consumer.sidecar.egress_table.current.version,
    }  # fmt: skip
    assert dump["subscriptions"]["registries"][0]["subscriptions"][0]["cluster"] == CLUSTER

    assert await pair.get(f"{base}?allrouters") == (200, {"routers": dump["routers"]})
    assert await pair.get(f"{base}?router=ingress") == (
        200,
        {"routers": {"ingress": dump["routers"]["ingress"]}},
    )
    assert await pair.get(f"{base}?allclusters") == (200, {"clusters": dump["clusters"]})
    status, one = await pair.get(f"{base}", params={"cluster": CLUSTER})
    assert status == 200 and [c["name"] for c in one["clusters"]] == [CLUSTER]
    (host,) = one["clusters"][0]["hosts"]
    assert (
        host["address"] == f"127.0.0.1:{pair.provider.sidecar.ingress.address[1]}" and host["healthy"] is True
    )
    assert host["metadata"]["token"] == "***"
    status, lst = await pair.get(f"{base}?alllisteners")
    assert status == 200 and [entry["name"] for entry in lst["listeners"]] == ["egress", "ingress"]
    status, lst = await pair.get(f"{base}?listener=ingress")
    assert status == 200 and [entry["name"] for entry in lst["listeners"]] == ["ingress"]
    status, both = await pair.get(f"{base}?router=egress&alllisteners")
    assert status == 200 and set(both) == {"routers", "listeners"} and set(both["routers"]) == {"egress"}

    for query, what in (
        ("router=nope", "router"),
        ("cluster=nope", "cluster"),
        ("listener=nope", "listener"),
    ):
        status, err = await pair.get(f"{base}?{query}")
        assert status == 404 and err["err_no"] == 2 and f"no {what} named 'nope'" in err["err_msg"], err
    status, err = await pair.get(f"{base}?allroutes")
    assert status == 400 and err["err_no"] == 1 and "allroutes" in err["err_msg"]


async def test_credentials_are_redacted_everywhere(tmp_path: Path) -> None:
    MemoryRegistry.reset_all()
    node = await start_node(tmp_path, "solo", 1, admin_token=TOKEN)
    try:
        assert node.sidecar.discovery is not None
        await node.sidecar.discovery.publish(PublishSpec(GREET, 20999, params={"token": DUBBO_TOKEN}))
        await node.sidecar.discovery.subscribe(Subscription(GREET, "", ""))
        async with aiohttp.ClientSession() as http:
            paths = ["/api/v1/config_dump", "/api/v1/clusters", "/api/v1/publications",
                     "/api/v1/subscriptions", "/api/v1/stats", "/metrics", "/readyz"]  # fmt: skip
            for path in paths:
                async with http.get(node.admin + path) as r:
                    text = await r.text()
                assert r.status == 200, (path, text)
                assert TOKEN not in text and DUBBO_TOKEN not in text, path
            async with http.get(node.admin + "/api/v1/config_dump") as r:
                dump = await r.json()
        assert dump["config"]["admin_token"] == "***"
        (pub,) = dump["publications"]["registries"][0]["publications"]
        assert "token=***" in pub["url"]
    finally:
        await node.sidecar.stop()


# --- clusters, publications, subscriptions ---------------------------------------------------------


async def test_clusters_with_request_counts(pair: Pair) -> None:
    client = await send_calls(pair.consumer)
    try:
        status, body = await pair.get(f"{pair.consumer.admin}/api/v1/clusters")
        assert status == 200
        (cluster,) = [c for c in body["clusters"] if c["name"] == CLUSTER]
        assert cluster["listener"] == "egress" and cluster["lb"] == "dubbo"
        (host,) = cluster["hosts"]
        ingress = pair.provider.sidecar.ingress.address[1]
        assert host["address"] == f"127.0.0.1:{ingress}"
        assert (host["weight"], host["healthy"], host["ejected"]) == (100, True, False)
        assert (host["active_requests"], host["total_requests"]) == (0, CALLS)
        assert host["connections"] and all(c["state"] == "open" for c in host["connections"])
        assert host["metadata"]["interface"] == GREET and host["metadata"]["token"] == "***"
        # ?brief (the status page's read): the same without the metadata; anything else is refused.
        status, brief = await pair.get(f"{pair.consumer.admin}/api/v1/clusters?brief")
        assert status == 200
        (short,) = [c for c in brief["clusters"] if c["name"] == CLUSTER]
        assert short["hosts"][0]["metadata"] is None
        assert {**short["hosts"][0], "metadata": host["metadata"]} == host
        status, refused = await pair.get(f"{pair.consumer.admin}/api/v1/clusters?verbose")
        assert status == 400 and "unknown query parameter(s) verbose (known: brief)" in refused["err_msg"]
        # The provider side: its ingress cluster for the published app port.
        status, body = await pair.get(f"{pair.provider.admin}/api/v1/clusters")
        (app_cluster,) = [c for c in body["clusters"] if c["name"] == f"app:{pair.app.port}"]
        assert app_cluster["listener"] == "ingress" and app_cluster["hosts"][0]["total_requests"] == CALLS
    finally:
        client.close()


async def test_publications_and_subscriptions(pair: Pair) -> None:
    status, body = await pair.get(f"{pair.provider.admin}/api/v1/publications")
    assert status == 200 and body["withdrawn"] is False
    (reg,) = body["registries"]
    assert reg["registry"] == "memory://" and reg["state"] == "connected"
    (pub,) = reg["publications"]
    ingress = pair.provider.sidecar.ingress.address[1]
    assert pub["service"] == CLUSTER and pub["app_port"] == pair.app.port and pub["registered"] is True
    assert pub["url"].startswith(f"dubbo://127.0.0.1:{ingress}/{GREET}?") and "token=***" in pub["url"]
    assert pub["methods"] == ["sayHi"] and pub["version"] == VERSION

    status, body = await pair.get(f"{pair.consumer.admin}/api/v1/subscriptions")
    assert status == 200
    (reg,) = body["registries"]
    assert reg["registry"] == "memory://" and reg["state"] == "connected"
    (sub,) = reg["subscriptions"]
    assert sub["cluster"] == CLUSTER and sub["watching"] is True and sub["from_cache"] is False
    (provider,) = sub["providers"]
    assert (provider["address"], provider["weight"]) == (f"127.0.0.1:{ingress}", 100)
    # The provider's sidecar registers it both ways (discovery.register_mode all, docs/discovery.md).
    assert provider["found"]["how"] == "both" and len(provider["found"]["revision"]) == 32, provider
    assert sub["migration"] == "both" and sub["applications"]["from"] == "mapping", sub
    # A consumer publishes nothing; a provider subscribes to nothing.
    assert (await pair.get(f"{pair.consumer.admin}/api/v1/publications"))[1]["registries"][0][
        "publications"
    ] == []
    assert (await pair.get(f"{pair.provider.admin}/api/v1/subscriptions"))[1]["registries"][0][
        "subscriptions"
    ] == []


# --- stats and metrics -----------------------------------------------------------------------------


async def test_stats_and_metrics_count_the_requests(pair: Pair) -> None:
    client = await send_calls(pair.consumer)
    try:
        status, stats = await pair.get(f"{pair.consumer.admin}/api/v1/stats")
        assert status == 200
        assert stats["egress"]["requests"] == CALLS + 1
        assert stats["egress"]["responses"] == {"20": CALLS, "60": 1}

        m = samples(await pair.text(f"{pair.consumer.admin}/metrics"))
        assert value(m, "regproxy_requests_total", listener="egress", protocol="dubbo") == CALLS + 1
        assert (
            value(
                m,
                "regproxy_responses_total",
                listener="egress",
                protocol="dubbo",
                status="20",
                status_name="OK",
            )
            == CALLS
        )
        assert value(m, "regproxy_responses_total", listener="egress", protocol="dubbo", status="60",
                     status_name="SERVICE_NOT_FOUND") == 1  # fmt: skip
        hist = {"listener": "egress", "protocol": "dubbo", "service": f"{GREET}:{VERSION}", "method": "sayHi"}
        assert value(m, "regproxy_request_duration_seconds_count", **hist) == CALLS
        assert value(m, "regproxy_request_duration_seconds_bucket", le="+Inf", **hist) == CALLS
        # >= 0, not > 0: uvloop's loop.time() (what the forwarder times with) ticks in whole ms.
        assert 0 <= value(m, "regproxy_request_duration_seconds_sum", **hist) < 5
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in m.items()
            if name == "regproxy_request_duration_seconds_bucket" and dict(labels)["listener"] == "egress"
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert value(m, "regproxy_downstream_connections", listener="egress", protocol="dubbo") == 1
        assert value(m, "regproxy_requests_in_flight", listener="egress", protocol="dubbo") == 0
        upstream = f"127.0.0.1:{pair.provider.sidecar.ingress.address[1]}"
        assert (
            value(
                m, "regproxy_upstream_requests_total", listener="egress", protocol="dubbo", address=upstream
            )
            == CALLS
        )
        assert sum(v for k, v in m.items() if k[0] == "regproxy_upstream_connections") >= 1
        for name in ("timeouts", "retries", "ejections", "upstream_connect_failures", "protocol_errors"):
            assert value(m, f"regproxy_{name}_total", listener="egress", protocol="dubbo") == 0
        assert value(m, "regproxy_registry_state", registry="memory://", state="connected") == 1
        assert value(m, "regproxy_registry_state", registry="memory://", state="lost") == 0
        assert value(m, "regproxy_registry_events_total", event="provider_events") >= 0
        # The provider application's MetadataInfo, asked of the provider sidecar's ingress once
        # (Dubbo 3 application-level discovery, docs/discovery.md).
        assert value(m, "regproxy_registry_events_total", event="metadata_fetches") == 1
        assert value(m, "regproxy_registry_events_total", event="metadata_fetch_failures") == 0
        assert value(m, "regproxy_subscriptions") == 1 and value(m, "regproxy_publications") == 0
        assert value(m, "regproxy_ready") == 1 and value(m, "regproxy_draining") == 0

        # The provider sidecar counted the same calls on its ingress (the unknown one never left), and
        # the MetadataService request it answered itself.
        m = samples(await pair.text(f"{pair.provider.admin}/metrics"))
        assert value(m, "regproxy_requests_total", listener="ingress", protocol="dubbo") == CALLS + 1
        assert value(m, "regproxy_request_duration_seconds_count", listener="ingress", protocol="dubbo",
                     service=f"{GREET}:{VERSION}", method="sayHi") == CALLS  # fmt: skip
        assert value(m, "regproxy_publications") == 1
    finally:
        client.close()


# --- controls --------------------------------------------------------------------------------------


async def test_loglevel_get_and_set(pair: Pair) -> None:
    url = f"{pair.consumer.admin}/api/v1/loglevel"
    logging.getLogger().setLevel(logging.INFO)
    assert await pair.get(url) == (200, {"level": "info"})
    status, body, _ = await pair.post(url, json={"level": "debug"})
    assert status == 200 and body == {
        "err_no": 0,
        "err_msg": "log level set",
        "level": "debug",
        "previous": "info",
    }
    assert await pair.get(url) == (200, {"level": "debug"})
    assert logging.getLogger().level == logging.DEBUG
    status, body, _ = await pair.post(url, params={"level": "WARNING"})
    assert status == 200 and body["level"] == "warning"
    for kw in ({"json": {"level": "loud"}}, {}, {"data": b"{not json"}, {"json": ["debug"]}):
        status, body, _ = await pair.post(url, **kw)
        assert status == 400 and body["err_no"] == 1, (kw, body)
    assert await pair.get(url) == (200, {"level": "warning"})


async def test_reload_adds_a_static_route_and_refuses_a_broken_file(pair: Pair) -> None:
    url = f"{pair.consumer.admin}/api/v1/reload"
    node = pair.consumer
    ingress = pair.provider.sidecar.ingress.address[1]
    node.rewrite(
        clusters=[{"name": "static-echo", "hosts": [{"address": f"127.0.0.1:{ingress}", "weight": 7}]}],
        routes=[{"name": "echo", "match": {"service": "org.apache.dubbo.samples.api.EchoService"},
                 "cluster": "static-echo"}],
    )  # fmt: skip
    status, body, _ = await pair.post(url)
    assert status == 200, body
    assert body["err_no"] == 0 and body["reloaded"] is True
    assert "static routes and clusters" in body["changes"] and body["needs_restart"] == []
    status, dump = await pair.get(f"{node.admin}/api/v1/config_dump?router=egress&cluster=static-echo")
    assert status == 200
    assert [r["name"] for r in dump["routers"]["egress"]["routes"]] == ["echo", CLUSTER]
    (cluster,) = dump["clusters"]
    assert cluster["source"] == "config" and cluster["hosts"][0]["weight"] == 7

    before = node.sidecar.config
    node.rewrite(limits={"max_bodyy": 1}, routes=[{"name": "r", "cluster": "missing"}])
    status, body, _ = await pair.post(url)
    assert status == 400 and body["err_no"] == 1, body
    assert "limits.max_bodyy: unknown key" in body["err_msg"] and str(node.config_path) in body["err_msg"]
    assert {"key": "routes[0].cluster", "problem": "no cluster named 'missing' (known: static-echo)"} in body[
        "errors"
    ]
    assert node.sidecar.config is before  # nothing changed


async def test_reload_changes_the_empty_provider_hold(pair: Pair) -> None:
    node = pair.consumer
    node.rewrite(discovery={"empty_protection_s": 2.5})
    status, body, _ = await pair.post(f"{node.admin}/api/v1/reload")
    assert status == 200 and body["changes"] == ["discovery.empty_protection_s"], body
    assert node.sidecar.discovery is not None and node.sidecar.discovery.protection.hold_s == 2.5
    assert node.sidecar.config.discovery.empty_protection_s == 2.5


async def test_drain_reports_not_ready_then_stops(pair: Pair) -> None:
    node = pair.provider
    url = f"{node.admin}/api/v1/drain"
    status, body, _ = await pair.post(url)
    assert status == 202 and body["err_no"] == 0 and body["err_msg"] == "draining" and body["grace_s"] == 0.1
    status, ready = await pair.get(f"{node.admin}/readyz")
    assert status == 503 and ready["detail"]["draining"] is True and "draining" in ready["reasons"]
    status, body, _ = await pair.post(url)
    assert status == 202 and body["err_msg"] == "already draining"
    status, pubs = await pair.get(f"{node.admin}/api/v1/publications")
    assert pubs["withdrawn"] is True and pubs["registries"][0]["publications"][0]["registered"] is False
    m = samples(await pair.text(f"{node.admin}/metrics"))
    assert value(m, "regproxy_draining") == 1 and value(m, "regproxy_ready") == 0

    # The consumer sidecar sees the provider go (registry events are delivered on the loop), once
    # its empty-provider hold (0.5 s) is over.
    async def provider_gone() -> bool:
        _, subs = await pair.get(f"{pair.consumer.admin}/api/v1/subscriptions")
        (sub,) = subs["registries"][0]["subscriptions"]
        return sub["providers"] == [] and sub["holding_empty"] is False

    await wait_for(provider_gone, 3, "the provider gone from the consumer's subscription", interval=0.01)
    m = samples(await pair.text(f"{pair.consumer.admin}/metrics"))
    assert value(m, "regproxy_registry_events_total", event="empty_holds") == 1
    await asyncio.wait_for(node.sidecar.run_until_stopped(), 5)
    status, dump = await pair.get(f"{node.admin}/api/v1/config_dump?alllisteners")
    assert [entry["accepting"] for entry in dump["listeners"]] == [False, False]


# --- every reply is its model ----------------------------------------------------------------------

# By name, as the document refers to them (ErrorReply is imported there too).
REPLY_MODELS: dict[str, type[BaseModel]] = {
    m.__name__: m for m in vars(admin_models).values() if isinstance(m, type) and issubclass(m, BaseModel)
}
GETS = (
    "/", "/healthz", "/readyz", "/api/v1/config_dump", "/api/v1/clusters", "/api/v1/publications",
    "/api/v1/subscriptions", "/api/v1/rules", "/api/v1/stats", "/api/v1/timeseries", "/api/v1/loglevel",
    "/api/v1/config_dump?allrouters&alllisteners", f"/api/v1/config_dump?cluster={CLUSTER}",
)  # fmt: skip


async def test_every_reply_is_the_model_the_document_names(pair: Pair) -> None:
    """Each endpoint's live reply (a sidecar with traffic, a publication, a subscription, health
    checks) validates against the model its OpenAPI document names for that status, and that model
    serialised again gives back the very reply: no key the model lacks, none it adds."""
    client = await send_calls(pair.consumer)
    consumer, provider = pair.consumer.admin, pair.provider.admin
    _, doc = await pair.get(f"{consumer}/openapi.json")
    seen: set[tuple[str, str, str]] = set()

    async def check(method: str, url: str, **kw: Any) -> Any:
        async with pair.http.request(method, url, **kw) as r:
            status, body = r.status, await r.json()
        path = url.split("/", 3)[3].split("?")[0]
        ref = doc["paths"][f"/{path}"][method.lower()]["responses"][str(status)]["content"]
        name = ref["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        reply = REPLY_MODELS[name].model_validate(body)
        assert reply.model_dump(mode="json") == body, (method, url, name)
        seen.add((f"/{path}", method.lower(), str(status)))
        return body

    try:
        for base in (consumer, provider):
            for path in GETS:
                await check("GET", base + path)
        stats = await check("GET", f"{consumer}/api/v1/stats")
        assert stats["egress"]["latency"] and stats["health"]["hosts"]  # the deep parts were there to check
        await check("GET", f"{consumer}/api/v1/config_dump?router=nope")  # 404, an ErrorReply
        await check("POST", f"{consumer}/api/v1/loglevel", json={"level": "info"})
        await check("POST", f"{consumer}/api/v1/loglevel", json={"level": "loud"})  # 400
        await check("POST", f"{consumer}/api/v1/reload")
        pair.consumer.rewrite(routes=[{"name": "r", "cluster": "missing"}])
        refused = await check("POST", f"{consumer}/api/v1/reload")  # 400, the problems one by one
        assert refused["errors"][0]["key"] == "routes[0].cluster"
        await check("POST", f"{provider}/api/v1/drain")
        await check("GET", f"{provider}/readyz")  # 503 now
    finally:
        client.close()
    documented = {
        (path, method, status)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        for status, response in op["responses"].items()
        if int(status) < 400 and "application/json" in response.get("content", {}) and path != "/openapi.json"
    }
    assert documented <= seen, documented - seen


def lost(reported: Any, parsed: Any, at: str = "") -> list[str]:
    """Where ``parsed`` (a model's JSON) lost or changed what ``reported`` (the sidecar's) holds."""
    if isinstance(reported, dict) and isinstance(parsed, dict):
        return [p for k, v in reported.items() for p in lost(v, parsed.get(k, ...), f"{at}.{k}")]
    if isinstance(reported, list) and isinstance(parsed, list) and len(reported) == len(parsed):
        return [
            p for i, (a, b) in enumerate(zip(reported, parsed, strict=True)) for p in lost(a, b, f"{at}[{i}]")
        ]
    return [] if reported == parsed else [at]


async def test_the_models_keep_everything_the_sidecar_reports(pair: Pair) -> None:
    """The admin server turns the sidecar's own dicts (stats, readiness, the pools' connections)
    into models, which ignore keys they do not know: a key added there and not to the model would
    vanish from the reply. So every key they hold must come through the model unchanged."""
    client = await send_calls(pair.consumer)
    try:
        for node in (pair.consumer, pair.provider):
            sc = node.sidecar
            stats = orjson.loads(orjson.dumps(sc.stats()))  # as JSON has it (+Inf as null)
            assert lost(stats, admin_models.Stats.model_validate(stats).model_dump(mode="json")) == []
            detail = orjson.loads(orjson.dumps(sc.readiness()[1]))
            parsed = admin_models.ReadinessDetail.model_validate(detail).model_dump(mode="json")
            assert lost(detail, parsed) == []
        assert pair.consumer.sidecar.egress.forwarder is not None
        pools = pair.consumer.sidecar.egress.forwarder.pool.describe()
        conns = [c for cs in pools.values() for c in cs]
        assert conns and all(
            lost(c, admin_models.Connection.model_validate(c).model_dump()) == [] for c in conns
        )
    finally:
        client.close()


# --- who may change things -------------------------------------------------------------------------


async def test_token_required_when_configured(tmp_path: Path) -> None:
    MemoryRegistry.reset_all()
    node = await start_node(tmp_path, "solo", 1, admin_token=TOKEN)
    url = f"{node.admin}/api/v1/loglevel"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"level": "info"}) as r:
                assert r.status == 401 and (await r.json())["err_no"] == 8
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.post(url, json={"level": "info"}, headers={"Authorization": "Basic eDp5"}) as r:
                assert r.status == 401
            async with http.post(url, json={"level": "info"}, headers={"Authorization": "Bearer nope"}) as r:
                body = await r.json()
                assert r.status == 403 and body == {"err_no": 9, "err_msg": "wrong admin token"}
            async with http.post(
                url, json={"level": "info"}, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 200 and (await r.json())["level"] == "info"
            async with http.post(f"{node.admin}/api/v1/drain") as r:
                assert r.status == 401
            assert node.sidecar.draining is False
            async with http.get(url) as r:  # reading needs no token
                assert r.status == 200
    finally:
        await node.sidecar.stop()


async def test_browser_requests_refused_without_token(pair: Pair) -> None:
    url = f"{pair.consumer.admin}/api/v1/loglevel"
    status, body, _ = await pair.post(url, json={"level": "info"}, headers={"Origin": "http://evil.example"})
    assert status == 403 and body["err_no"] == 9 and "browser" in body["err_msg"]
    status, _, _ = await pair.post(url, json={"level": "info"})
    assert status == 200


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("::ffff:10.0.0.5", False),
        ("fe80::1%eth0", False),
        ("2001:db8::1", False),
        ("", False),
        (None, False),
        ("not-an-ip", False),
    ],
)
def test_is_loopback(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback


def test_check_caller_without_token() -> None:
    assert check_caller(remote="127.0.0.1", authorization=None, origin=None, token=None) is None
    assert check_caller(remote="::1", authorization="Bearer x", origin=None, token=None) is None
    refused = check_caller(remote="10.1.2.3", authorization=None, origin=None, token=None)
    assert refused is not None and refused.status == 403 and "10.1.2.3" in refused.message
    assert "admin_token" in refused.message
    refused = check_caller(remote="127.0.0.1", authorization=None, origin="http://127.0.0.1:1", token=None)
    assert refused is not None and refused.status == 403


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        # the status page, opened at a loopback address, posting to the port that served it
        ("http://127.0.0.1:34901", "127.0.0.1:34901", True),
        ("http://localhost:34901", "localhost:34901", True),
        ("http://LOCALHOST:34901", "localhost:34901", True),
        ("http://[::1]:34901", "[::1]:34901", True),
        ("http://127.0.0.1", "127.0.0.1", True),
        # another page: another port, another scheme, another name
        ("http://127.0.0.1:8080", "127.0.0.1:34901", False),
        ("https://127.0.0.1:34901", "127.0.0.1:34901", False),
        ("http://localhost:34901", "127.0.0.1:34901", False),
        ("null", "127.0.0.1:34901", False),
        # DNS rebinding: evil.example resolves to 127.0.0.1, and its page is same-origin with itself
        ("http://evil.example:34901", "evil.example:34901", False),
        ("http://10.0.0.5:34901", "10.0.0.5:34901", False),  # not a loopback address
        ("http://127.0.0.1:34901", None, False),
    ],
)
def test_check_caller_lets_the_status_page_change_only_from_loopback(
    origin: str, host: str | None, allowed: bool
) -> None:
    refused = check_caller(remote="127.0.0.1", authorization=None, origin=origin, token=None, host=host)
    assert (refused is None) is allowed
    if not allowed:
        assert refused is not None and refused.status == 403 and "Origin" in refused.message


@pytest.mark.parametrize("remote", ["127.0.0.1", "10.1.2.3", "2001:db8::1"])
def test_check_caller_with_token_applies_to_everyone(remote: str) -> None:
    def check(authorization: str | None) -> int | None:
        refused = check_caller(remote=remote, authorization=authorization, origin=None, token=TOKEN)
        return None if refused is None else refused.status

    assert check(None) == 401
    assert check("") == 401
    assert check("Bearer") == 401
    assert check(f"Basic {TOKEN}") == 401
    assert check("Bearer wrong") == 403
    assert check(f"Bearer {TOKEN}x") == 403
    assert check(f"Bearer {TOKEN[:-1]}") == 403
    assert check("Bearer \u00e9t\u00e9") == 403  # non-ASCII is compared, not crashed on
    assert check(f"Bearer {TOKEN}") is None
    assert check(f"bearer   {TOKEN} ") is None


async def test_ingress_bounds_the_app_with_ingress_ms_not_the_attachment(tmp_path: Path) -> None:
    """The sidecar wires its two listeners differently: the egress honours the request's timeout
    attachment (default timeouts.default_ms), the ingress only bounds the app (timeouts.ingress_ms)."""
    node = await start_node(tmp_path, "t", free_port(), timeouts={"default_ms": 4000, "ingress_ms": 250})
    try:
        egress, ingress = node.sidecar.egress.forwarder, node.sidecar.ingress.forwarder
        assert egress is not None and ingress is not None
        assert (egress.default_timeout_ms, egress.timeout_from_attachment) == (4000, True)
        assert (ingress.default_timeout_ms, ingress.timeout_from_attachment) == (250, False)
        assert ingress.timeout_status == 31  # SERVER_TIMEOUT: the app was too slow, not the consumer
    finally:
        await node.sidecar.stop()
