"""`regproxy ctl`: every subcommand's tables and --json against a real sidecar (`regproxy run`,
memory://), its errors, and the formatting against a fake admin endpoint that answers what a sidecar
in trouble would, built from the admin API's reply models."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel

from regproxy import cli, ctl
from regproxy.api import admin_models as am
from regproxy.api.models import ErrorReply
from regproxy.sdk import AsyncRegproxyClient
from tests.ports import free_port
from tests.sidecars import ROOT, SidecarProc

GREET = "org.apache.dubbo.samples.api.GreetingsService"
ECHO = "org.apache.dubbo.samples.api.EchoService"
TOKEN = "t0ken-for-tests"

CONFIG = f"""
admin_token: "{TOKEN}"
drain: {{grace_s: 1.0, timeout_s: 2.0}}
clusters:
  - name: static-echo
    lb: round_robin
    hosts: [{{address: "127.0.0.1:1", weight: 7}}]
routes:
  - name: static-echo
    match: {{service: "{ECHO}"}}
    cluster: static-echo
    timeout_ms: 1500
    retries: 2
"""


async def regproxy_ctl(*args: str, token: str | None = None) -> tuple[int, str, str]:
    """`python -m regproxy ctl ARGS` as an operator runs it: (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != ctl.TOKEN_ENV}
    if token is not None:
        env[ctl.TOKEN_ENV] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy", "ctl", *args,
        cwd=str(ROOT), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def row(text: str, *cells: str) -> str:
    """The table line holding every one of ``cells`` as a whole column value."""
    for line in text.splitlines():
        words = line.split()
        if all(c in words for c in cells):
            return line
    raise AssertionError(f"no line with {cells} in:\n{text}")


def find(data: Any, key: str, value: Any) -> list[dict[str, Any]]:
    """Every object in ``data`` whose ``key`` is ``value``, however the JSON nests it."""
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        if data.get(key) == value:
            found.append(data)
        for v in data.values():
            found += find(v, key, value)
    elif isinstance(data, list):
        for v in data:
            found += find(v, key, value)
    return found


# -- against a real sidecar ------------------------------------------------------------------------


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[SidecarProc]:
    config = tmp_path / "regproxy.yaml"
    config.write_text(CONFIG)
    sc = SidecarProc(
        "ctl",
        tmp_path / "sc",
        registries=["memory://"],
        app_port=free_port(),
        extra=["--config", str(config)],
    )
    await sc.start()
    try:
        async with AsyncRegproxyClient(sc.api_url) as rp:
            await rp.publish(GREET, port=sc.app_port, methods=["sayHi"], version="1.0.0", application="app")
            await rp.subscribe(GREET, version="1.0.0")
        yield sc
    finally:
        await sc.kill()


def admin(sc: SidecarProc) -> list[str]:
    return ["--admin", f"127.0.0.1:{sc.admin}"]


@pytest.mark.process
async def test_status_shows_readiness_restore_registries_and_listeners_as_text_and_json(
    sidecar: SidecarProc,
) -> None:
    code, out, err = await regproxy_ctl("status", *admin(sidecar))
    assert code == 0, err
    assert out.splitlines()[0] == f"regproxy at http://127.0.0.1:{sidecar.admin}: READY"
    # A brand-new sidecar restored nothing (its publication and subscription came after the start).
    state_file = sidecar.data_dir / "regproxy-state.json"
    assert f"state restored: no (a new sidecar: no {state_file} yet)" in out
    assert "draining: no" in out and "serving from cache: nothing" in out
    row(out, "memory://", "connected")
    row(out, "LISTENER", "REQUESTS")
    row(out, "egress", "0")
    row(out, "ingress", "0")

    code, out, err = await regproxy_ctl("--json", "status", *admin(sidecar))  # flags before or after
    assert code == 0, err
    data = json.loads(out)
    assert data["ready"] is True and data["readyz"]["ready"] is True
    readyz = data["readyz"]
    assert readyz.get("detail", readyz)["registries"] == {"memory://": "connected"}
    assert data["stats"]["egress"]["requests"] == 0


@pytest.mark.process
async def test_status_after_a_restart_says_what_was_restored(sidecar: SidecarProc) -> None:
    await sidecar.kill()
    again = SidecarProc(
        "ctl-again", sidecar.data_dir,
        registries=["memory://"], app_port=sidecar.app_port, extra=sidecar.extra,
    )  # fmt: skip
    await again.start()
    try:
        code, out, err = await regproxy_ctl("status", *admin(again))
        assert code == 0, err
        assert "state restored: yes (1 publication, 1 subscription)" in out, out
        code, out, err = await regproxy_ctl("--json", "status", *admin(again))
        saved = json.loads(out)["readyz"]["detail"]["saved_state"]
        assert saved["found"] is True and (saved["publications"], saved["subscriptions"]) == (1, 1)
    finally:
        await again.kill()


@pytest.mark.process
async def test_clusters_lists_static_registry_and_local_clusters_with_their_hosts(
    sidecar: SidecarProc,
) -> None:
    code, out, err = await regproxy_ctl("clusters", *admin(sidecar))
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:4] == ["LISTENER", "SOURCE", "CLUSTER", "LB"] and "STATE" in header
    line = row(out, "egress", "config", "static-echo", "round_robin", "127.0.0.1:1")
    assert " 7 " in line and "available" in line
    line = row(out, "egress", "registry", f"{GREET}:1.0.0", f"127.0.0.1:{sidecar.ingress}")
    assert "application=app version=1.0.0" in line
    row(out, "ingress", "local", f"127.0.0.1:{sidecar.app_port}")

    code, out, err = await regproxy_ctl("clusters", "--json", *admin(sidecar))
    assert code == 0, err
    (static,) = find(json.loads(out), "name", "static-echo")
    assert static["hosts"][0]["address"] == "127.0.0.1:1" and static["hosts"][0]["weight"] == 7


@pytest.mark.process
async def test_routes_lists_each_listeners_routes_in_config_order(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("routes", *admin(sidecar))
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["LISTENER", "#", "ROUTE"]
    assert row(out, "egress", "1", "static-echo", ECHO, "1500ms").split()[-1] == "2"  # in config order
    row(out, "egress", "2", f"{GREET}:1.0.0", GREET, "1.0.0", "default")
    row(out, "ingress", f"pub:{GREET}:1.0.0", f"app:{sidecar.app_port}")

    code, out, err = await regproxy_ctl("routes", "--json", *admin(sidecar))
    assert code == 0, err
    (route,) = find(json.loads(out), "name", "static-echo")
    assert route["timeout_ms"] == 1500 and route["cluster"] == "static-echo"


@pytest.mark.process
async def test_publications_lists_each_with_its_registry_state_and_url(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("publications", *admin(sidecar))
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["SERVICE", "APP", "PORT"]
    row(
        out,
        f"{GREET}:1.0.0",
        str(sidecar.app_port),
        "memory://",
        "connected",
        "yes",
        f"127.0.0.1:{sidecar.ingress}",
    )

    code, out, err = await regproxy_ctl("publications", "--json", *admin(sidecar))
    assert code == 0, err
    (pub,) = find(json.loads(out), "interface", GREET)
    assert pub["url"].startswith(f"dubbo://127.0.0.1:{sidecar.ingress}/{GREET}?")


@pytest.mark.process
async def test_subscriptions_lists_each_service_with_its_providers(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("subscriptions", *admin(sidecar))
    assert code == 0, err
    assert out.splitlines()[0].split() == [
        "SERVICE", "REGISTRY", "STATE", "PROVIDERS", "MIGRATION", "FOUND", "FROM", "CACHE"]  # fmt: skip
    row(out, f"{GREET}:1.0.0", "memory://", "connected", "1", "both", "no")

    code, out, err = await regproxy_ctl("subscriptions", "--json", *admin(sidecar))
    assert code == 0, err
    (sub,) = find(json.loads(out), "interface", GREET)
    assert [p["address"] for p in sub["providers"]] == [f"127.0.0.1:{sidecar.ingress}"]


@pytest.mark.process
async def test_loglevel_shows_and_sets_the_level_and_refuses_an_unknown_one(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("loglevel", *admin(sidecar))
    assert (code, out) == (0, "log level: debug\n"), err  # SidecarProc runs with --log-level debug
    code, out, err = await regproxy_ctl("loglevel", "WARNING", *admin(sidecar), token=TOKEN)
    assert (code, out) == (0, "log level: warning (was debug)\n"), err
    code, out, err = await regproxy_ctl("loglevel", "--json", *admin(sidecar))
    assert code == 0 and json.loads(out) == {"level": "warning"}
    code, out, err = await regproxy_ctl("loglevel", "info", "--json", *admin(sidecar), token=TOKEN)
    assert code == 0 and json.loads(out)["level"] == "info" and json.loads(out)["previous"] == "warning"
    code, out, err = await regproxy_ctl("loglevel", "loud", *admin(sidecar))
    assert code == 2 and "invalid choice" in err


@pytest.mark.process
async def test_reload_applies_the_file_and_refuses_a_broken_one_changing_nothing(
    sidecar: SidecarProc, tmp_path: Path
) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text(CONFIG.replace("timeout_ms: 1500", "timeout_ms: 2500"))
    code, out, err = await regproxy_ctl("reload", *admin(sidecar), token=TOKEN)
    assert (code, out) == (0, "reloaded: static routes and clusters\n"), err
    code, out, err = await regproxy_ctl("routes", *admin(sidecar))
    row(out, "static-echo", "2500ms")

    code, out, err = await regproxy_ctl("reload", "--json", *admin(sidecar), token=TOKEN)
    assert code == 0 and json.loads(out)["changes"] == [], err

    # A broken file is refused with the config error, and nothing changes.
    config.write_text(CONFIG + "limits: {max_bodyy: 5}\n")
    code, out, err = await regproxy_ctl("reload", *admin(sidecar), token=TOKEN)
    assert code == 1 and out == ""
    assert err.startswith("regproxy ctl: POST /api/v1/reload: HTTP 400: ")
    assert "limits.max_bodyy: unknown key" in err and "Traceback" not in err
    code, out, err = await regproxy_ctl("routes", *admin(sidecar))
    row(out, "static-echo", "2500ms")


@pytest.mark.process
async def test_changes_need_the_token(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("drain", *admin(sidecar))
    assert code == 1 and out == ""
    assert err == (
        "regproxy ctl: POST /api/v1/drain: HTTP 401: this admin API needs a token: "
        "send Authorization: Bearer TOKEN (admin_token)\n"
    )
    code, out, err = await regproxy_ctl("drain", "--token", "wrong", *admin(sidecar), token=TOKEN)
    assert code == 1 and err == "regproxy ctl: POST /api/v1/drain: HTTP 403: wrong admin token\n"
    code, out, err = await regproxy_ctl("status", *admin(sidecar))
    assert code == 0 and "READY" in out.splitlines()[0]  # still running, not draining


@pytest.mark.process
async def test_drain_then_unreachable(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("drain", "--json", *admin(sidecar), token=TOKEN)
    assert code == 0, err
    data = json.loads(out)
    assert data["draining"] is True and data["grace_s"] == 1.0
    code, out, err = await regproxy_ctl("drain", *admin(sidecar), token=TOKEN)
    assert (code, out) == (0, f"http://127.0.0.1:{sidecar.admin} is already draining\n"), err
    assert sidecar.proc is not None
    assert await asyncio.wait_for(sidecar.proc.wait(), 20) == 0, sidecar.log_tail()

    code, out, err = await regproxy_ctl("status", *admin(sidecar))
    assert code == 1 and out == ""
    assert err == (
        f"regproxy ctl: cannot connect to the admin endpoint at http://127.0.0.1:{sidecar.admin}: "
        "connection refused (is regproxy running, with this --admin?)\n"
    )


@pytest.mark.process
async def test_drain_says_what_happens_next_and_the_sidecar_exits_0(sidecar: SidecarProc) -> None:
    code, out, err = await regproxy_ctl("drain", *admin(sidecar), token=TOKEN)
    assert code == 0, err
    assert out == (
        f"draining http://127.0.0.1:{sidecar.admin}: publications withdrawn; it keeps serving 1 s so "
        "consumers see it, then finishes the requests in flight (at most 2 s) and exits\n"
    )
    assert sidecar.proc is not None
    assert await asyncio.wait_for(sidecar.proc.wait(), 20) == 0


@pytest.mark.process
async def test_default_admin_address_and_bad_address() -> None:
    code, out, err = await regproxy_ctl("--admin", f"127.0.0.1:{free_port()}", "clusters")
    assert code == 1 and out == "" and "connection refused" in err and len(err.splitlines()) == 1
    code, _out, err = await regproxy_ctl("status", "--admin", "nohostport")
    assert code == 2 and "--admin: 'nohostport' is not HOST:PORT" in err
    parser = ctl.build_parser()
    assert parser.parse_args(["status"]).admin == ctl.DEFAULT_ADMIN == "127.0.0.1:34901"


def test_cli_delegates_to_ctl(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(ctl, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["ctl", "--admin", "h:1", "status", "--json"]) == 0
    assert seen == [["--admin", "h:1", "status", "--json"]]


# -- formatting, against a fake admin endpoint -----------------------------------------------------

# What a sidecar in trouble would answer, built from the admin API's own reply models, so the fake
# cannot drift from the real endpoint: a registry suspended, hosts unhealthy and ejected, a
# publication on two registries, latencies past the largest bucket.
READYZ = am.Readiness(
    status="not ready",
    ready=False,
    reasons=["registry zookeeper://zk:2181 is suspended"],
    detail=am.ReadinessDetail(
        registries={"zookeeper://zk:2181": "suspended"},
        restored=True,
        saved_state=am.SavedStateSummary(
            file="/d/regproxy-state.json", found=True, publications=2, subscriptions=1, error=None
        ),
        draining=False,
        serving_from_cache=["g/com.x.A:1"],
        state_save=None,
        rules_refused=["/dubbo/config/dubbo/com.x.A:1:.condition-router: condition: 'host = ' has no value"],
    ),
)


def latency(count: int, p50: float, p99: float | None) -> am.Latency:
    return am.Latency(count=count, sum=0.0, p50=p50, p99=p99, buckets={})


STATS = am.Stats(
    uptime_s=3725.5,
    id="sc-1",
    draining=False,
    egress=am.ListenerCounters(
        requests=1200,
        oneway=3,
        responses={"20": 1190, "31": 4, "70": 6},
        timeouts=4,
        retries=2,
        connect_failures=1,
        downstream_connections=5,
        rejected_connections=0,
        latency={"g/com.x.A:1.m": latency(1200, 0.001, 0.025), "g/com.x.A:1.n": latency(3, 0.0005, None)},
    ),
    ingress=am.ListenerCounters(),
    registry=am.RegistryCounters(states={"zookeeper://zk:2181": "suspended"}, events={}),
    state_save=None,
    health=am.HealthView(hosts={}, app_check={}, suspended_app_ports={}),
)


EJECTED_WHY = "ejected after 5 consecutive failures, back in 9.5 s (ejection 1 of this host)"


def host(
    address: str, weight: int, healthy: bool, active: int, total: int, found: am.FoundView | None = None,
    **metadata: str,
) -> am.LiveHost:
    return am.LiveHost(
        address=address, weight=weight, healthy=healthy, ejected=not healthy,
        state="available" if healthy else "ejected",
        reason=None if healthy else EJECTED_WHY, effective_weight=weight // 2, active_requests=active,
        total_requests=total, errors=0 if healthy else 6,
        connections=[], metadata=metadata, found=found,
    )  # fmt: skip


BOTH = am.FoundView(how="both", application="a", revision="0123456789abcdef0123456789abcdef")


CLUSTERS = am.Clusters(
    clusters=[
        am.LiveCluster(
            name="g/com.x.A:1",
            listener="egress",
            source="registry",
            lb="least_request",
            hosts=[
                host("10.0.0.5:20882", 100, True, 2, 700, BOTH, application="a", side="provider"),
                host("10.0.0.6:20882", 50, False, 0, 500),
            ],
        ),
        am.LiveCluster(name="empty", listener="egress", source="config", lb="random", hosts=[]),
    ]
)


def route(
    name: str, service: str, cluster: str, timeout_ms: int | None, retries: int, **match: str
) -> am.RouteView:
    return am.RouteView(
        name=name,
        match=am.RouteMatchView(
            service=service, version=match.get("version"), group=match.get("group"), method=None
        ),
        cluster=cluster,
        timeout_ms=timeout_ms,
        retries=retries,
    )


ROUTERS = am.ConfigDump(
    routers={
        "egress": am.Router(
            version=7,
            routes=[
                route("r1", "com.x.A", "g/com.x.A:1", 800, 1, version="1", group="g"),
                route("fallback", "*", "c2", None, 0),
            ],
        ),
        "ingress": am.Router(version=1, routes=[]),
    }
)


def publication(registered: bool) -> am.PublicationView:
    return am.PublicationView(
        service="com.x.P:2", interface="com.x.P", version="2", group="", methods=["m"], application="p",
        app_port=20880, url="dubbo://10.0.0.9:20882/com.x.P?version=2", registered=registered,
    )  # fmt: skip


PUBLICATIONS = am.Publications(
    withdrawn=False,
    registries=[
        am.RegistryPublications(
            registry="nacos://n:8848", state="connecting", publications=[publication(False)]
        ),
        am.RegistryPublications(
            registry="zookeeper://zk:2181", state="connected", publications=[publication(True)]
        ),
    ],
)
SUBSCRIPTIONS = am.Subscriptions(
    registries=[
        am.RegistrySubscriptions(
            registry="zookeeper://zk:2181",
            state="suspended",
            subscriptions=[
                am.SubscriptionView(
                    cluster="g/com.x.A:1",
                    interface="com.x.A",
                    version="1",
                    group="g",
                    watching=True,
                    from_cache=True,
                    holding_empty=False,
                    providers=[
                        am.ProviderView(address="10.0.0.5:20882", weight=100, found=BOTH),
                        am.ProviderView(address="10.0.0.6:20882", weight=100),
                    ],
                )
            ],
        )
    ]
)

ZK_RULE = "/dubbo/config/dubbo/com.x.A:1:g.condition-router"
RULES = am.Rules(
    centers=[
        am.RuleCenter(
            registry="zookeeper://zk:2181",
            watched=["com.x.A:1:g.condition-router", "com.x.A:1:g.configurators", "a.tag-router"],
            in_force=[
                am.RuleInForceView(
                    rule_id="com.x.A:1:g.condition-router", source=ZK_RULE, version="4294967302", text="..."
                ),
                am.RuleInForceView(rule_id="a.tag-router", source="state file", version="", text="..."),
            ],
            refused=[
                am.RefusedRuleView(
                    rule_id="com.x.A:1:g.condition-router",
                    source=ZK_RULE,
                    version="4294967309",
                    reason="condition",
                    message="conditions[0] 'host = ': no '=>'",
                )
            ],
        ),
        am.RuleCenter(registry="nacos://n:8848", watched=[], in_force=[], refused=[]),
    ]
)

FAKE: dict[str, tuple[int, BaseModel | dict[str, Any]]] = {
    "/readyz": (503, READYZ),
    "/api/v1/stats": (200, STATS),
    "/api/v1/clusters": (200, CLUSTERS),
    "/api/v1/config_dump": (200, ROUTERS),
    "/api/v1/publications": (200, PUBLICATIONS),
    "/api/v1/subscriptions": (200, SUBSCRIPTIONS),
    "/api/v1/rules": (200, RULES),
    "/api/v1/loglevel": (200, am.LogLevelReply(level="info")),
    # What an older ctl would have taken for clusters (grouped by listener, keyed by name).
    "/odd": (200, {"egress": {"g/com.x.A:1": {"lb": "random", "hosts": []}}}),
}


def as_json(reply: BaseModel | dict[str, Any]) -> Any:
    return reply.model_dump(mode="json") if isinstance(reply, BaseModel) else reply


class FakeAdmin:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, request.headers.get("Authorization"), body))
        reply: BaseModel
        if request.method == "POST":
            if request.headers.get("Authorization") != "Bearer sekret":
                reply = ErrorReply(err_no=9, err_msg="wrong admin token")
                return web.json_response(as_json(reply), status=403)
            if request.path == "/api/v1/reload":
                why = "no config file to re-read"
                reply = am.Reloaded(err_msg=why, reloaded=False, changes=[], needs_restart=[], reason=why)
                return web.json_response(as_json(reply))
            if request.path == "/api/v1/loglevel":
                level = json.loads(body)["level"]
                reply = am.LogLevelSet(err_msg="log level set", level=level, previous="info")
                return web.json_response(as_json(reply))
            reply = ErrorReply(err_no=5, err_msg="internal error in regproxy")
            return web.json_response(as_json(reply), status=500)
        if request.path == "/broken":
            return web.Response(text="<html>oops</html>", status=200)
        status, payload = FAKE[request.path]
        return web.json_response(as_json(payload), status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAdmin]:
    f = FakeAdmin()
    await f.start()
    yield f
    assert f.runner is not None
    await f.runner.cleanup()


@pytest.fixture
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ctl.TOKEN_ENV, raising=False)
    yield


async def run_inproc(fake: FakeAdmin, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # ctl blocks (urllib): in a thread, so the fake admin on this loop can answer.
    code = await asyncio.to_thread(ctl.main, ["--admin", f"127.0.0.1:{fake.port}", *args])
    out, err = capsys.readouterr()
    return code, out, err


async def test_fake_status_not_ready(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], no_token_env: None
) -> None:
    code, out, err = await run_inproc(fake, capsys, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert (
        lines[0]
        == f"regproxy at http://127.0.0.1:{fake.port}: NOT READY (registry zookeeper://zk:2181 is suspended)"
    )
    assert lines[1] == (
        "uptime 1h2m5s, state restored: yes (2 publications, 1 subscription), draining: no, "
        "serving from cache: g/com.x.A:1"
    )
    # A refused rule is no reason to be unready, but something to say.
    assert lines[2:4] == [
        "1 dynamic rule refused (the previous good version of each stays in force; regproxy ctl rules "
        "shows them):",
        "  /dubbo/config/dubbo/com.x.A:1:.condition-router: condition: 'host = ' has no value",
    ]
    row(out, "zookeeper://zk:2181", "suspended")
    line = row(out, "egress", "1200")
    assert line.split()[1:] == ["1200", "3", "10", "4", "2", "1", "5", "0"]  # errors: every status but 20
    assert row(out, "egress", "g/com.x.A:1.m").split()[2:] == ["1200", "<=1ms", "<=25ms"]
    assert row(out, "egress", "g/com.x.A:1.n").split()[2:] == ["3", "<=0.5ms", ">", "max", "bucket"]
    code, out, err = await run_inproc(fake, capsys, "status", "--json")
    data = json.loads(out)
    assert data["ready"] is False and data["readyz"] == as_json(READYZ)


async def test_clusters_table_has_a_row_per_host_with_numbers_right_aligned(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], no_token_env: None
) -> None:
    code, out, err = await run_inproc(fake, capsys, "clusters")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["LISTENER", "SOURCE", "CLUSTER", "LB", "HOST", "WEIGHT", "EFFECTIVE", "STATE",
                                "ACTIVE", "TOTAL", "ERRORS", "FOUND", "METADATA"]  # fmt: skip
    # How a host was found (docs/discovery.md): both ways, its application and revision's first digits.
    assert row(out, "10.0.0.5:20882").split() == [
        "egress", "registry", "g/com.x.A:1", "least_request", "10.0.0.5:20882", "100", "50", "available", "2",
        "700", "0", "both", "a@01234567", "application=a", "+1",
    ]  # fmt: skip
    assert row(out, "10.0.0.6:20882", "least_request").split() == [
        "egress", "registry", "g/com.x.A:1", "least_request", "10.0.0.6:20882", "50", "25", "ejected", "0",
        "500", "6", "-", "-",
    ]  # fmt: skip
    # Why a host is out, under the table.
    assert out.splitlines()[-2:] == [
        "Out of load balancing:",
        f"  10.0.0.6:20882 (egress g/com.x.A:1): ejected: {EJECTED_WHY}",
    ]
    assert row(out, "empty").split()[:5] == ["egress", "config", "empty", "random", "(no"]
    # Numbers are right-aligned: the weight column ends where its header does.
    weight_end = lines[0].index("WEIGHT") + len("WEIGHT")
    assert lines[1][weight_end - 3 : weight_end] == "100" and lines[2][weight_end - 2 : weight_end] == "50"


async def test_routes_table_shows_every_router_from_config_dump(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], no_token_env: None
) -> None:
    code, out, err = await run_inproc(fake, capsys, "routes")
    assert code == 0, err
    assert ("GET", "/api/v1/config_dump?allrouters", None, b"") in fake.requests
    assert row(out, "r1").split() == [
        "egress",
        "1",
        "r1",
        "com.x.A",
        "1",
        "g",
        "-",
        "g/com.x.A:1",
        "800ms",
        "1",
    ]
    assert row(out, "fallback").split() == [
        "egress",
        "2",
        "fallback",
        "*",
        "-",
        "-",
        "-",
        "c2",
        "default",
        "0",
    ]


async def test_fake_publications_and_subscriptions(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], no_token_env: None
) -> None:
    code, out, err = await run_inproc(fake, capsys, "publications")
    assert code == 0, err
    assert row(out, "zookeeper://zk:2181").split() == [
        "com.x.P:2", "20880", "zookeeper://zk:2181", "connected", "yes", "10.0.0.9:20882"]  # fmt: skip
    assert row(out, "nacos://n:8848").split() == [
        "com.x.P:2", "20880", "nacos://n:8848", "connecting", "no", "10.0.0.9:20882"]  # fmt: skip
    code, out, err = await run_inproc(fake, capsys, "subscriptions")
    assert code == 0, err
    assert row(out, "g/com.x.A:1").split() == [
        "g/com.x.A:1", "zookeeper://zk:2181", "suspended", "2", "both", "interface", "1,", "both", "1", "yes",
    ]  # fmt: skip


async def test_fake_rules_in_force_and_refused_per_config_center(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], no_token_env: None
) -> None:
    for args in (["rules"], ["rules", "list"]):
        code, out, err = await run_inproc(fake, capsys, *args)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[:2] == [
            "zookeeper://zk:2181: 3 rules watched, 2 in force, 1 refused",
            "nacos://n:8848: 0 rules watched, 0 in force, 0 refused",
        ]
        assert lines[3].split() == ["REGISTRY", "RULE", "ID", "SOURCE", "VERSION"]
        assert row(out, ZK_RULE).split() == [
            "zookeeper://zk:2181", "com.x.A:1:g.condition-router", ZK_RULE, "4294967302"
        ]  # fmt: skip
        assert row(out, "a.tag-router").split() == [
            "zookeeper://zk:2181",
            "a.tag-router",
            "state",
            "file",
            "-",
        ]
        at = lines.index("refused (the previous good version of each, if any, stays in force):")
        assert lines[at + 1].split() == ["REGISTRY", "RULE", "ID", "REASON", "MESSAGE"]
        assert lines[at + 2].split() == [
            "zookeeper://zk:2181", "com.x.A:1:g.condition-router", "condition", "conditions[0]", "'host",
            "=", "':", "no", "'=>'",
        ]  # fmt: skip
    code, out, err = await run_inproc(fake, capsys, "rules", "--json")
    assert code == 0 and json.loads(out) == as_json(RULES)
    assert ctl.render_rules(am.Rules(centers=[])) == (
        "no config center: this sidecar has no registry, or each one says config_center=false"
    )
    only_watched = am.Rules(centers=[RULES.centers[1]])
    assert ctl.render_rules(only_watched) == "nacos://n:8848: 0 rules watched, 0 in force, 0 refused"


async def test_fake_token_from_env_and_flag(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ctl.TOKEN_ENV, "sekret")
    code, out, err = await run_inproc(fake, capsys, "loglevel", "debug")
    assert (code, out) == (0, "log level: debug (was info)\n"), err
    method, path, auth, body = fake.requests[-1]
    assert (method, path, auth, json.loads(body)) == ("POST", "/api/v1/loglevel", "Bearer sekret",
                                                      {"level": "debug"})  # fmt: skip
    code, out, err = await run_inproc(fake, capsys, "loglevel")
    assert (code, out) == (0, "log level: info\n")
    assert fake.requests[-1][2] == "Bearer sekret"  # sent on reads too: harmless, and a proxy may want it
    code, out, err = await run_inproc(fake, capsys, "reload", "--token", "wrong")  # the flag wins
    assert code == 1 and err == "regproxy ctl: POST /api/v1/reload: HTTP 403: wrong admin token\n"


async def test_admin_errors_exit_1_with_the_reason_in_one_line(
    fake: FakeAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ctl.TOKEN_ENV, "sekret")
    code, out, err = await run_inproc(fake, capsys, "drain")
    assert (code, out) == (1, "")
    assert err == "regproxy ctl: POST /api/v1/drain: HTTP 500: internal error in regproxy\n"
    code, out, err = await run_inproc(fake, capsys, "reload")
    assert (code, out) == (1, "not reloaded: no config file to re-read\n")
    client = ctl.AdminClient(f"http://127.0.0.1:{fake.port}")
    with pytest.raises(ctl.CtlError, match="reply is not JSON"):
        await asyncio.to_thread(client.request, "GET", "/broken")


async def test_a_reply_of_another_shape_is_an_error_naming_the_field(fake: FakeAdmin) -> None:
    client = ctl.AdminClient(f"http://127.0.0.1:{fake.port}")
    with pytest.raises(ctl.CtlError) as info:
        await asyncio.to_thread(client.call, "GET", "/odd", am.Clusters)
    assert str(info.value) == (
        "GET /odd: not the reply of a regproxy admin endpoint (clusters: Field required); "
        f"is http://127.0.0.1:{fake.port} one, of a version this ctl knows?"
    )


def test_format_table_aligns_numbers_right_and_shows_nothing_as_a_dash() -> None:
    text = ctl.format_table(
        ["NAME", "N", "OK", "TAGS"],
        [["a", 1, True, ["x", "y"]], ["longer", 100, False, None], ["c", None, None, ""]],
    )
    assert text.splitlines() == [
        "NAME      N  OK   TAGS",
        "a         1  yes  x,y",
        "longer  100  no   -",
        "c         -  -    -",
    ]
    assert ctl.format_table(["A", "B"], []) == "A  B"


def test_admin_address_forms() -> None:
    assert ctl.admin_base_url("127.0.0.1:34901") == "http://127.0.0.1:34901"
    assert ctl.admin_base_url("34901") == "http://127.0.0.1:34901"
    assert ctl.admin_base_url("[::1]:34901") == "http://[::1]:34901"
    assert ctl.admin_base_url("https://admin.example:8443/") == "https://admin.example:8443"
    for bad in ("host", "host:", "host:99999", "ftp://h:1"):
        with pytest.raises(ValueError):
            ctl.admin_base_url(bad)


def test_status_uses_the_reasons_the_endpoint_gives() -> None:
    detail = READYZ.detail.model_copy(
        update={"registries": {"zookeeper://zk:2181": "lost"}, "draining": True}
    )
    reasons = ["draining", "registry zookeeper://zk:2181 is lost"]
    body = READYZ.model_copy(update={"reasons": reasons, "detail": detail})
    text = ctl.render_status("http://a:1", body, STATS.model_copy(update={"uptime_s": 59.0}))
    assert text.splitlines()[:2] == [
        "regproxy at http://a:1: NOT READY (draining; registry zookeeper://zk:2181 is lost)",
        "uptime 59s, state restored: yes (2 publications, 1 subscription), draining: yes, "
        "serving from cache: g/com.x.A:1",
    ]
    row(text, "zookeeper://zk:2181", "lost")


def test_status_says_what_the_restore_found() -> None:
    def fact(restored: bool, saved: am.SavedStateSummary | None) -> str:
        detail = READYZ.detail.model_copy(update={"restored": restored, "saved_state": saved})
        line = ctl.render_status("http://a:1", READYZ.model_copy(update={"detail": detail}), STATS)
        facts = line.splitlines()[1]  # uptime U, state restored: ..., draining: D, serving from cache: C
        return facts.split(", ", 1)[1].rsplit(", draining", 1)[0]

    saved = am.SavedStateSummary(
        file="/d/regproxy-state.json", found=False, publications=0, subscriptions=0, error=None
    )
    assert fact(False, None) == "state restored: not yet"
    assert fact(True, saved) == "state restored: no (a new sidecar: no /d/regproxy-state.json yet)"
    found = saved.model_copy(update={"found": True})
    assert fact(True, found) == "state restored: no (the state file held nothing)"
    corrupt = found.model_copy(update={"error": "unreadable (bad json); moved to /d/regproxy-state.corrupt"})
    assert fact(True, corrupt) == (
        "state restored: no (state file unreadable (bad json); moved to /d/regproxy-state.corrupt)"
    )
    one = found.model_copy(update={"publications": 1})
    assert fact(True, one) == "state restored: yes (1 publication, 0 subscriptions)"
    assert fact(True, None) == "state restored: done"  # no state file to restore from
