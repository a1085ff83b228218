"""Hostile and broken provider data from a registry or the state file (issue 15, section 1 and the
first item of section 3): one bad provider URL is skipped (said once, counted), never frozen into a
service's routing, never saved; the state file cannot stop a start; numbers are clamped to Dubbo's
range so the admin views always answer.

The in-process tests use the memory registry (faults staged exactly); the table-driven one runs a
real sidecar process on a real ZooKeeper, as users run it.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from regproxy.discovery import Discovery, ingress_table
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.url import MAX_DUBBO_INT, DubboURL, Subscription, java_url_encode, provider_problem
from regproxy.routing import RoutingTable, TableHolder
from regproxy.state import StateStore
from tests.ports import free_port
from tests.sidecars import SidecarProc
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

IFACE = "com.h.HostileSvc"
REG = RegistryURL.parse("zookeeper://a:1")  # served by a memory store: the factory maps it
PORT0 = f"dubbo://127.0.0.5:0/{IFACE}?interface={IFACE}&methods=sayHi"
GOOD = f"dubbo://10.9.9.9:20880/{IFACE}?interface={IFACE}&methods=sayHi"


@pytest.fixture(autouse=True)
def _fresh_stores() -> None:
    MemoryRegistry.reset_all()


def new_discovery(data_dir: Path | None = None) -> tuple[Discovery, dict[str, MemoryRegistry]]:
    made: dict[str, MemoryRegistry] = {}

    def make(url: RegistryURL) -> MemoryRegistry:
        made[url.hosts[0].host] = reg = MemoryRegistry(name=url.hosts[0].host)
        return reg

    static = RoutingTable()
    disc = Discovery(
        registry_urls=[REG], factory=make, egress=TableHolder(static),
        ingress=TableHolder(ingress_table()), static_table=static, advertise_ip="10.1.2.3",
        ingress_port=20882, store=StateStore(data_dir) if data_dir else None,
    )  # fmt: skip
    return disc, made


def hosts(disc: Discovery, cluster: str = IFACE) -> set[str]:
    return {h.address for h in disc.egress.current.clusters[cluster].hosts}


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        ("99999999999999999999", MAX_DUBBO_INT),
        ("9" * 5000, MAX_DUBBO_INT),  # beyond what int() parses at all
        ("-5", 0),
        ("-" + "9" * 5000, 0),
        ("2147483647", MAX_DUBBO_INT),
        ("250", 250),
        ("x", 100),
    ],
)
def test_weight_is_clamped_to_dubbos_int(weight: str, expected: int) -> None:
    """0..2**31-1: Java's int, what Dubbo's URL parses weight into; negative is 0 as in
    AbstractLoadBalance.getWeight (Math.max(weight, 0)); not a number is Dubbo's default 100."""
    assert DubboURL.parse(f"{GOOD}&weight={weight}").weight == expected


def test_provider_problem_names_the_port() -> None:
    assert provider_problem(DubboURL.parse(PORT0)) == "port 0 is not 1..65535"
    assert provider_problem(DubboURL.parse(f"dubbo://127.0.0.7/{IFACE}")) == "port 0 is not 1..65535"
    assert provider_problem(DubboURL.parse(GOOD)) is None
    assert provider_problem(DubboURL.parse(f"dubbo://[::1]:20880/{IFACE}")) is None


# --- registry events ------------------------------------------------------------------------------


async def test_a_port_0_provider_is_skipped_once_and_never_freezes_the_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disc, made = new_discovery(tmp_path)
    await disc.start()
    try:
        reg = made["a"]
        good, bad = DubboURL.parse(GOOD), DubboURL.parse(PORT0)
        reg.set_provider(good)
        reg.set_provider(bad)
        with caplog.at_level(logging.WARNING, logger="regproxy.discovery"):
            await disc.subscribe(Subscription(IFACE))
            assert hosts(disc) == {"10.9.9.9:20880"}
            # Later events still apply: one added, then the good one removed.
            second = DubboURL.parse(GOOD.replace(":20880", ":20881"))
            reg.set_provider(second)
            await wait_for(lambda: "10.9.9.9:20881" in hosts(disc), 5, "the second provider")
            reg.remove_provider(good)
            await wait_for(lambda: hosts(disc) == {"10.9.9.9:20881"}, 5, "the removal")
        said = [r for r in caplog.records if "127.0.0.5/" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]  # once, not at every event
        assert said[0].levelno == logging.WARNING and "port 0 is not 1..65535" in said[0].getMessage()
        assert disc.events["invalid_providers"] == 1
        await disc.stop()
        saved = json.loads((tmp_path / "regproxy-state.json").read_text())
        assert "127.0.0.5" not in json.dumps(saved["providers"])  # never saved
    finally:
        await disc.stop()


async def test_a_failure_applying_one_event_does_not_stop_the_next(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disc, made = new_discovery()
    await disc.start()
    try:
        made["a"].set_provider(DubboURL.parse(GOOD))
        await disc.subscribe(Subscription(IFACE))
        listener = disc.subscriptions[IFACE].listeners[REG.to_url(redact=False)]
        original = Discovery._update_cluster
        calls = 0

        def fail_once(self: Discovery, st: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected")
            original(self, st)

        monkeypatch.setattr(Discovery, "_update_cluster", fail_once)
        second = DubboURL.parse(GOOD.replace(":20880", ":20881"))
        # Called as every registry adapter calls it: an exception here would reach the adapter.
        with caplog.at_level(logging.ERROR, logger="regproxy.discovery"):
            listener([DubboURL.parse(GOOD), second])
        assert any(IFACE in r.getMessage() and r.exc_info for r in caplog.records)
        assert disc.events["provider_event_failures"] == 1
        listener([second])
        assert hosts(disc) == {"10.9.9.9:20881"}
    finally:
        await disc.stop()


# --- the state file -------------------------------------------------------------------------------


def state_file(providers: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "publications": [],
        "subscriptions": [
            {"interface": IFACE, "version": "", "group": "", "registries": [REG.to_url(redact=False)]},
            {"interface": "com.a.B", "version": "", "group": "", "registries": [REG.to_url(redact=False)]},
            7,  # not an object
        ],
        "providers": providers,
    }


@pytest.mark.parametrize(
    "providers",
    [
        pytest.param({"com.a.B": 5, IFACE: {REG.to_url(redact=False): [GOOD]}}, id="cluster-not-an-object"),
        pytest.param({IFACE: {REG.to_url(redact=False): [GOOD, 7]}}, id="url-list-holding-7"),
        pytest.param({IFACE: {REG.to_url(redact=False): [GOOD, PORT0]}}, id="port-0-url"),
        pytest.param(
            {IFACE: {REG.to_url(redact=False): [GOOD]}, "com.a.B": {REG.to_url(redact=False): 7}},
            id="list-not-a-list",
        ),
    ],
)
async def test_bad_state_file_parts_are_dropped_the_rest_restored(
    tmp_path: Path, providers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "regproxy-state.json").write_text(json.dumps(state_file(providers)))
    disc, _ = new_discovery(tmp_path)
    orig_start = MemoryRegistry.start

    async def start_down(self: MemoryRegistry) -> None:  # serve from the cache alone
        await orig_start(self)
        self.simulate_down()

    MemoryRegistry.start = start_down  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR):
            await disc.start()
    finally:
        MemoryRegistry.start = orig_start  # type: ignore[method-assign]
    try:
        assert disc.restored and set(disc.subscriptions) == {IFACE, "com.a.B"}
        assert hosts(disc) == {"10.9.9.9:20880"}
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and "state file" in r.getMessage()]
        assert len(errors) == 2, [r.getMessage() for r in errors]  # the `7` subscription and the bad part
    finally:
        await disc.stop()


# --- hostile nodes through a real ZooKeeper -----------------------------------------------------------

LONG = "x" * 100_000


def url(authority: str, query: str = "") -> str:
    return f"dubbo://{authority}/{IFACE}?interface={IFACE}{query}"


# (provider URL text as Dubbo would write it, or a raw leaf prefixed "raw:"; the address used or None)
HOSTILE: list[tuple[str, str, str | None]] = [
    ("port-0", PORT0, None),
    ("no-port", url("127.0.0.7"), None),
    ("huge-weight", url("127.0.0.8:20880", "&weight=99999999999999999999"), "127.0.0.8:20880"),
    ("negative-weight", url("127.0.0.9:20880", "&weight=-7"), "127.0.0.9:20880"),
    ("100kB-interface", f"dubbo://127.0.0.10:20880/{LONG}?interface={LONG}", None),
    ("100kB-value", url("127.0.0.11:20880", f"&note={LONG}"), "127.0.0.11:20880"),
    ("percent-garbage-value", url("127.0.0.12:20880", "&note=%ZZ%%"), "127.0.0.12:20880"),
    ("percent-garbage-leaf", "raw:dubbo%3A%2F%2F%ZZ%%", None),
    ("ipv6", url("[::1]:20883"), "[::1]:20883"),
    ("ipv6-zone", url("[fe80::1%eth0]:20884"), "[fe80::1%eth0]:20884"),
    ("ipv6-no-brackets", url("::1:20885"), None),
    ("ipv6-empty", url("[]:20886"), None),
    ("empty-host", url(":20887"), None),
    ("port-65536", url("127.0.0.13:65536"), None),
]  # fmt: skip
ENDPOINTS = ("/api/v1/clusters", "/api/v1/config_dump", "/api/v1/subscriptions")


def leaf(text: str) -> str:
    return text.removeprefix("raw:") if text.startswith("raw:") else java_url_encode(text)


async def cluster_hosts(sc: SidecarProc) -> dict[str, int]:
    status, body = await sc.admin_get("/api/v1/clusters")
    assert status == 200, body
    found = [c for c in body["clusters"] if c["name"] == IFACE]
    return {h["address"]: h["weight"] for c in found for h in c["hosts"]}


async def all_answer(sc: SidecarProc) -> None:
    for path in ENDPOINTS:
        status, body = await sc.admin_get(path)
        assert status == 200, (path, body, sc.log_tail())


@pytest.mark.process
async def test_hostile_provider_nodes_through_zookeeper(
    zk_server: ZooKeeperServer, zk: Any, tmp_path: Path
) -> None:
    base = f"/dubbo/{IFACE}/providers"
    zk.ensure_path(base)
    sc = SidecarProc(
        "hostile", tmp_path / "sc", registries=[f"zookeeper://{zk_server.hosts}"], app_port=free_port()
    )
    await sc.start()
    await sc.until_ready()
    try:
        status, body = await sc.post("/sub", {"service": {"interface": IFACE}})
        assert status == 200, body
        expected: set[str] = set()
        for i, (name, text, used) in enumerate(HOSTILE):
            zk.create(f"{base}/{leaf(text)}")
            # A good provider written beside it: once it is in the cluster, the event that carried
            # the hostile node has been applied.
            canary = f"127.0.0.1:{30000 + i}"
            zk.create(f"{base}/{java_url_encode(f'dubbo://{canary}/{IFACE}?interface={IFACE}')}")
            expected.add(canary)
            if used:
                expected.add(used)

            async def applied(canary: str = canary) -> bool:
                return canary in await cluster_hosts(sc)

            what = f"{name}: the canary {canary} (else the service froze)"
            await wait_for(applied, 10, what, interval=0.05, detail=sc.log_tail)
            assert set(await cluster_hosts(sc)) == expected, name
            await all_answer(sc)
        assert (await cluster_hosts(sc))["127.0.0.8:20880"] == MAX_DUBBO_INT
        # Said once per URL and counted once, across the dozen events that listed it again.
        assert sc.log_path.read_text().count("skipping provider dubbo://127.0.0.5/") == 1
        _, stats = await sc.admin_get("/api/v1/stats")
        # Every skipped one, whether its node name did not parse or the URL cannot be routed to;
        # not the 100 kB interface: a valid URL of another service, which no consumer of this one
        # matches (UrlUtils.isMatch), so nothing invalid.
        skipped = sum(1 for name, _, used in HOSTILE if used is None and name != "100kB-interface")
        assert stats["registry"]["events"]["invalid_providers"] == skipped

        assert await sc.stop(signal.SIGTERM) == 0
        saved = (sc.data_dir / "regproxy-state.json").read_text()
        assert "127.0.0.5" not in saved and "127.0.0.7" not in saved
        await sc.start()  # on the same data directory, the hostile nodes still there
        await sc.until_ready()
        await all_answer(sc)
        assert set(await cluster_hosts(sc)) == expected
    finally:
        await sc.stop()


async def test_state_file_fields_of_the_wrong_type_do_not_stop_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = REG.to_url(redact=False)
    state = {
        "version": 1,
        "publications": [
            {"spec": {"interface": "com.p.Q", "port": 20990}, "url": 5, "registries": [reg]},
            {"spec": {"interface": "com.p.R", "port": 20991}, "url": GOOD, "registries": [reg]},
        ],
        "subscriptions": [
            {"interface": 5, "registries": [reg]},
            {"interface": "com.c.D", "registries": [5]},
            {"interface": IFACE, "registries": [reg]},
        ],
        "providers": [GOOD],  # not an object at all
    }
    (tmp_path / "regproxy-state.json").write_text(json.dumps(state))
    disc, _ = new_discovery(tmp_path)
    with caplog.at_level(logging.ERROR):
        await disc.start()
    try:
        assert set(disc.subscriptions) == {IFACE} and set(disc.publications) == {"com.p.R"}
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 4, errors  # one per part dropped, each naming it
        assert any("com.p.Q" in e for e in errors) and any("com.c.D" in e for e in errors)
    finally:
        await disc.stop()
