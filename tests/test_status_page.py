"""The status page at ``GET /`` on the admin port (regproxy/api/status_page.py, regproxy/api/ui/),
checked in a real browser (headless Chromium, tests/browser.py) against real sidecars with traffic:
what a person would see, read from the page as text.

* memory://: a provider sidecar and a consumer sidecar in this process (tests/test_admin.py's pair),
  the demo provider behind the first, calls through the second;
* ZooKeeper: the end-to-end world (tests/topology.py), sidecars as processes, one of them killed;
* the tokens: the page asks for one, and its buttons work with it.

Each test saves a screenshot in build/test-artifacts/.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kazoo.client import KazooClient
from selenium import webdriver
from selenium.webdriver.common.by import By

from regproxy.api.status_page import ASSET_PATHS, wants_html
from regproxy.governance.keys import CONDITION_ROUTER, service_rule_key
from regproxy.registry.memory import MemoryRegistry
from tests.browser import browser, click_and_answer, cluster_hosts, screenshot, until  # noqa: F401  (browser: the fixture)
from tests.test_admin import CLUSTER, GREET, TOKEN, VERSION, Pair, pair, start_node  # noqa: F401  (pair: the fixture)
from tests.topology import EXACT_SPLIT, Traffic, World, pub_body
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
UI = ROOT / "regproxy" / "api" / "ui"
# What Chromium sends when it navigates to a page, and what programs send.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture
async def calls() -> AsyncIterator[list[Traffic]]:
    """Steady calls started by the test (start_calls), stopped at its end."""
    started: list[Traffic] = []
    try:
        yield started
    finally:
        for traffic in started:
            await traffic.stop()


def start_calls(calls: list[Traffic], port: int) -> Traffic:
    traffic = Traffic(port)
    traffic.start()
    calls.append(traffic)
    return traffic


async def open_page(driver: webdriver.Chrome, url: str) -> None:
    await asyncio.to_thread(driver.get, url)


def series(view: dict[str, Any], listener: str, service: str) -> dict[str, Any] | None:
    for s in view["charts"]:
        if s["listener"] == listener and s["service"] == service:
            return s
    return None


# --- served, without a browser ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("*/*", False),  # curl
        ("application/json", False),  # regproxy ctl
        (None, False),
        ("", False),
        ("application/json, text/html", False),  # a tie: the first listed
        ("text/html;q=0.5, application/json", False),
        ("application/json;q=0.4, text/html", True),
        ("text/html;q=0", False),
        ("text/html;q=oops", False),
    ],
)
def test_a_browser_gets_the_page_and_a_program_the_index(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


async def test_page_files_are_served_with_a_strict_policy_and_without_the_token(tmp_path: Path) -> None:
    """With auth_token set, the page's files are served without it (they hold no data) and the API
    still asks for it; the page and the index share ``/`` by ``Accept``."""
    node = await start_node(tmp_path, "solo", 1, auth_token=TOKEN)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(node.admin + "/", headers={"Accept": BROWSER_ACCEPT}) as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert r.headers["Vary"] == "Accept"
                policy = r.headers["Content-Security-Policy"]
                assert "default-src 'none'" in policy and "script-src 'self'" in policy
                assert "frame-ancestors 'none'" in policy
                page = await r.text()
            # Everything the page loads is served here, nothing from elsewhere.
            loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
            assert loaded and all(u.startswith("/") and not u.startswith("//") for u in loaded), loaded
            for path in ASSET_PATHS:
                assert path in loaded
                async with http.get(node.admin + path) as r:
                    assert r.status == 200, path
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
                    assert (await r.read()) == (UI / path.rsplit("/", 1)[1]).read_bytes()
            # Nothing else is served under /ui/, and its files are read-only: JSON errors, as elsewhere.
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(node.admin + "/ui/other.js", headers=auth) as r:
                assert r.status == 404 and (await r.json())["err_msg"] == "no such endpoint (see GET /)"
            async with http.post(node.admin + "/ui/status.js", headers=auth) as r:
                assert r.status == 405 and r.headers["Allow"] == "GET, HEAD", await r.text()
            async with http.get(node.admin + "/", headers={"Accept": "application/json"}) as r:
                assert r.status == 401  # the index is the API's: the token is needed
            async with http.get(node.admin + "/api/v1/stats", headers={"Accept": BROWSER_ACCEPT}) as r:
                assert r.status == 401
            async with http.get(node.admin + "/", headers=auth) as r:
                assert r.status == 200 and (await r.json())["name"] == "regproxy admin API"
    finally:
        await node.sidecar.stop()


def test_the_page_writes_text_never_markup() -> None:
    """Service names, URLs and rule messages come from registries and config centres: the script
    writes them as text.  None of the DOM's HTML parsers is used (the page would still not run a
    script it wrote: the Content-Security-Policy allows only /ui/status.js)."""
    script = (UI / "status.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "http://" not in script and "https://" not in script  # nothing fetched from elsewhere


# --- in a browser: memory:// --------------------------------------------------------------------------


async def test_page_shows_hosts_traffic_rules_and_controls(
    pair: Pair,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
    calls: list[Traffic],
) -> None:
    consumer, provider = pair.consumer, pair.provider
    upstream = f"127.0.0.1:{provider.sidecar.ingress.address[1]}"
    await open_page(browser, consumer.admin + "/")

    # The sidecar, and the cluster with its one host, before any traffic.
    view = await until(
        browser,
        lambda v: v["ready"] == "true" and upstream in cluster_hosts(v, CLUSTER),
        "the consumer's cluster and its host",
    )
    assert view["readiness"] == "ready" and view["reasons"] == []
    assert view["registries"] == {"memory://": "connected"}
    facts = view["facts"]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", facts["version"]), facts
    assert facts["data path"] and facts["advertised IP"] == "127.0.0.1" and facts["draining"] == "no"
    host = cluster_hosts(view, CLUSTER)[upstream]
    assert host["state"] == "available" and host["shown"] == "available" and host["reason"] is None
    assert host["weight"] == "100" and host["found"].startswith(("interface", "both", "application"))
    assert series(view, "egress", CLUSTER) is None  # no call yet: nothing drawn
    assert not view["token_form"] and view["message"] is None

    # Traffic: the rate rises on the chart and on the host's row.
    traffic = start_calls(calls, consumer.sidecar.egress.address[1])
    first = await until(
        browser, lambda v: (s := series(v, "egress", CLUSTER)) is not None and s["rps"] > 0, "a first rate"
    )
    low = series(first, "egress", CLUSTER)
    assert low is not None
    view = await until(
        browser,
        lambda v: (s := series(v, "egress", CLUSTER)) is not None and s["rps"] >= 15 and s["painted"] > 0,
        "the request rate rising to the calls' pace",
    )
    high = series(view, "egress", CLUSTER)
    assert high is not None and high["latency_painted"] > 0
    assert re.match(r"[\d.]+ req/s · 0\.00 err/s · p50 [\d.]+ ms · p99 [\d.]+ ms", high["now"]), high["now"]
    view = await until(
        browser,
        lambda v: float(cluster_hosts(v, CLUSTER)[upstream]["rps"].replace("–", "0")) >= 10,
        "host req/s",
    )
    assert int(cluster_hosts(view, CLUSTER)[upstream]["requests"]) > 0
    assert traffic.ok > 0 and not traffic.failures, traffic.failures[:3]

    # A condition rule from the config centre is shown in force, with where it was read; a next
    # version that does not parse is shown refused with its reason, the previous one still in force,
    # and traffic goes on unchanged.
    disc = consumer.sidecar.discovery
    assert disc is not None
    (registry,) = disc.registries.values()
    assert isinstance(registry, MemoryRegistry)
    key = service_rule_key(GREET, VERSION)
    rule_id = key + CONDITION_ROUTER
    await registry.write_rule(rule_id, f"scope: service\nkey: '{key}'\nconditions: ['=> host != 10.9.9.9']\n")
    view = await until(
        browser, lambda v: any(r["rule"] == rule_id for r in v["in_force"]), "the rule in force"
    )
    (in_force,) = view["in_force"]
    assert in_force["source"].startswith("memory://") and in_force["state"] == "in force", in_force
    await registry.write_rule(rule_id, "conditions: [\n")
    view = await until(browser, lambda v: any(r["rule"] == rule_id for r in v["refused"]), "the refused rule")
    (refused,) = [r for r in view["refused"] if r["rule"] == rule_id]
    assert refused["reason"] == "yaml" and "not valid YAML" in refused["message"], refused
    assert refused["source"] == in_force["source"]
    (in_force,) = view["in_force"]
    assert in_force["state"] == "in force; a newer version was refused"
    (route,) = view["routes"]
    assert route["from"] == "subscription" and route["cluster"] == CLUSTER
    assert not traffic.failures, traffic.failures[:3]
    assert screenshot(browser, "status-page-memory").stat().st_size > 10_000

    # Log level: the button asks first; dismissed, nothing changes; accepted, it is set (the page
    # was opened at 127.0.0.1 and sends its Origin: allowed without a token from loopback).
    assert consumer.sidecar.log_level != "debug"
    await asyncio.to_thread(
        lambda: browser.find_element(By.CSS_SELECTOR, "#loglevel option[value=debug]").click()
    )
    question = await asyncio.to_thread(click_and_answer, browser, "set-loglevel", accept=False)
    assert "debug" in question
    await asyncio.sleep(0.5)
    assert consumer.sidecar.log_level != "debug"
    await asyncio.to_thread(click_and_answer, browser, "set-loglevel")
    await wait_for(lambda: consumer.sidecar.log_level == "debug", 5, "the log level set from the page")
    view = await until(browser, lambda v: v["message"] is not None, "the answer shown")
    assert "log level set" in view["message"]

    # The provider's page: its publication, registered, its application checked.
    await open_page(browser, provider.admin + "/")
    view = await until(browser, lambda v: len(v["publications"]) == 1, "the provider's publication")
    (pub,) = view["publications"]
    assert pub["service"] == CLUSTER and pub["registered"] == "yes" and pub["app"] == "up", pub
    assert pub["app_port"] == str(pair.app.port) and "token=***" in pub["url"], pub
    assert upstream in pub["url"]
    ingress = await until(
        browser, lambda v: cluster_hosts(v, f"app:{pair.app.port}") != {}, "the ingress cluster"
    )
    assert list(cluster_hosts(ingress, f"app:{pair.app.port}")) == [f"127.0.0.1:{pair.app.port}"]

    # The application goes away: its check fails and its publication is withdrawn, and the page says
    # why (health.app_check: two failed heartbeats, two seconds apart).
    await calls[0].stop()
    await pair.app.close(grace=0.1)
    view = await until(
        browser,
        lambda v: v["publications"] and v["publications"][0]["app"].startswith("suspended"),
        "the application's publication suspended",
    )
    (pub,) = view["publications"]
    assert pub["registered"] == "no" and "does not answer" in pub["app"], pub


async def test_page_asks_for_the_token_and_its_buttons_use_it(
    tmp_path: Path,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    """auth_token guards reading, admin_token the buttons: the page asks for the token, reads with
    auth_token, and asks again for admin_token when a button is refused."""
    static = {
        "clusters": [{"name": "greetings", "hosts": [{"address": "127.0.0.1:1", "weight": 100}]}],
        "routes": [{"name": "greet", "match": {"service": GREET}, "cluster": "greetings"}],
    }
    node = await start_node(tmp_path, "guarded", 1, auth_token="reader-token", admin_token=TOKEN, **static)
    try:
        await open_page(browser, node.admin + "/")
        await asyncio.to_thread(browser.execute_script, "sessionStorage.clear(); location.reload()")
        view = await until(browser, lambda v: v["token_form"], "the page asking for the token")
        assert view["facts"] == {}  # nothing shown without it

        def enter(token: str) -> None:
            field = browser.find_element(By.ID, "token")
            field.clear()
            field.send_keys(token)
            browser.find_element(By.ID, "token-save").click()

        await asyncio.to_thread(enter, "reader-token")
        view = await until(
            browser, lambda v: v["ready"] == "true" and "version" in v["facts"], "the page read"
        )
        assert not view["token_form"]
        assert view["routes"] == [{"name": "greet", "from": "config file", "cluster": "greetings"}]
        assert set(cluster_hosts(view, "greetings")) == {"127.0.0.1:1"}

        # The reader token may not drain: the page says so and asks for another.
        await asyncio.to_thread(click_and_answer, browser, "drain")
        view = await until(browser, lambda v: v["token_form"], "the page asking for the admin token")
        assert not node.sidecar.draining
        await asyncio.to_thread(enter, TOKEN)
        await until(browser, lambda v: v["ready"] == "true" and not v["token_form"], "the page read again")

        # Reload: the config file changed; the page shows what was applied.
        node.rewrite(timeouts={"default_ms": 1234})
        question = await asyncio.to_thread(click_and_answer, browser, "reload")
        assert "config" in question.lower()
        view = await until(
            browser, lambda v: v["message"] is not None and "reload" in v["message"], "reloaded"
        )
        assert "timeouts.default_ms" in view["message"], view["message"]
        assert node.sidecar.config.timeouts.default_ms == 1234

        # Drain, with the admin token: the sidecar drains and the page shows why it is not ready.
        question = await asyncio.to_thread(click_and_answer, browser, "drain")
        assert "cannot be undone" in question
        await wait_for(lambda: node.sidecar.draining, 5, "the drain started from the page")
        view = await until(browser, lambda v: v["ready"] == "false", "not ready: draining")
        assert "draining" in view["reasons"] and view["facts"]["draining"] == "yes"
        screenshot(browser, "status-page-draining")

        # The sidecar gone: the page says it cannot read the API, and keeps what it last showed.
        await node.sidecar.stop()
        view = await until(
            browser, lambda v: (v["message"] or "").startswith("could not read the admin API"), "a stale page"
        )
        assert view["facts"]["draining"] == "yes"
    finally:
        await asyncio.to_thread(browser.execute_script, "sessionStorage.clear()")
        await node.sidecar.stop()


# --- in a browser: ZooKeeper, sidecars as processes -------------------------------------------------


async def test_page_shows_a_killed_provider_ejected(
    world: World,
    zk: KazooClient,
    browser: webdriver.Chrome,  # noqa: F811
    calls: list[Traffic],
) -> None:
    """Two providers found in ZooKeeper; one provider's sidecar is killed (SIGKILL: its node stays
    until its session expires), the consumer's outlier detection ejects it, and the page says so."""
    b, c = world.provider_sidecars
    a = world.consumer
    await c.start()
    for sidecar, app in zip((b, c), world.apps, strict=True):
        status, body = await sidecar.post("/pub", pub_body(app.port))
        assert status == 200, body
    sub = {"service": {"interface": GREET, "version": VERSION, "methods": ["sayHi"], "params": EXACT_SPLIT}}
    status, body = await a.post("/sub", sub)
    assert status == 200, body
    hosts = {f"127.0.0.1:{b.ingress}", f"127.0.0.1:{c.ingress}"}

    await open_page(browser, a.admin_url + "/")
    view = await until(
        browser, lambda v: set(cluster_hosts(v, CLUSTER)) == hosts, "both providers on the page"
    )
    assert view["registries"] and all(st == "connected" for st in view["registries"].values())
    start_calls(calls, a.egress)
    await until(
        browser,
        lambda v: all(h["rps"] not in ("–", "0.00") for h in cluster_hosts(v, CLUSTER).values()),
        "traffic to both hosts",
    )

    await b.kill()
    killed = f"127.0.0.1:{b.ingress}"
    view = await until(
        browser,
        lambda v: cluster_hosts(v, CLUSTER).get(killed, {}).get("state") == "ejected",
        "the killed one ejected",
    )
    host = cluster_hosts(view, CLUSTER)[killed]
    assert host["shown"] == "ejected" and "consecutive failures" in (host["reason"] or ""), host
    assert cluster_hosts(view, CLUSTER)[f"127.0.0.1:{c.ingress}"]["state"] == "available"
    screenshot(browser, "status-page-zookeeper-ejected")
