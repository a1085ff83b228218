"""Issue 14 item 1: a sidecar never forwards to itself forever.

* ``/pub`` refuses an application port that is one of the sidecar's own listeners;
* a provider URL at the sidecar's own egress, API or admin address is ignored, with one warning;
* the data path: every egress writes its id into the ``regproxy.via`` attachment, a request that
  comes back to an egress it passed is answered with a loop error at once; the ingress takes the
  marker out before the application sees it;
* a connection the sidecar opened to itself (its ingress's to the application landing on one of
  its listeners, its egress's to a provider landing on its own egress) is answered with the loop
  error, request by request.

The scenarios are the issue's, on real sidecar processes and a real ZooKeeper (where a registry is
involved); the marker's byte handling is tested on byte strings and on a forwarder with stand-in
transports.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import orjson
import pytest
from kazoo.client import KazooClient

from benchmarks.hotpath import Transport
from regproxy.demo.client import DubboClient
from regproxy.discovery import own_addresses
from regproxy.dubbo.encode import Response, encode_request, encode_response, heartbeat_reply
from regproxy.dubbo.frame import Frame, FrameParser, Status
from regproxy.dubbo.hessian2 import Hessian2Reader
from regproxy.dubbo.request import VIA_KEY, VIA_MAX_IDS, RequestBody, find_via, strip_via, via_entry
from regproxy.proxy.batch import Batcher
from regproxy.proxy.forwarder import Forwarder
from regproxy.proxy.listener import DownstreamConnection
from regproxy.proxy.loops import LoopGuard
from regproxy.proxy.upstream import UpstreamConnection, UpstreamEvents, UpstreamPool
from regproxy.registry.registry_url import RegistryURL
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.state import STATE_FILE
from tests.sidecars import SidecarProc
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

SVC = "com.loop.Svc"
OWN, OTHER = "0a0b0c0d", "11112222"
APP = "10.0.0.1:20880"  # where the stand-in forwarder sends SVC (no socket is opened)


def request(request_id: int = 1, *, two_way: bool = True, **attachments: str) -> bytes:
    frame = encode_request(request_id, SVC, "f", ["x"], attachments={"timeout": "3000", **attachments})
    return frame if two_way else frame[:2] + bytes((frame[2] & ~0x40,)) + frame[3:]


def with_body(frame: bytes, body: bytes) -> bytes:
    """``frame``'s header with ``body`` and the body length that goes with it."""
    return frame[:12] + len(body).to_bytes(4, "big") + body


def marked(frame: bytes, chain: str) -> bytes:
    """``frame`` as an egress forwards it: the marker ``chain`` last in its attachments."""
    return with_body(frame, frame[16:-1] + via_entry(chain.encode()) + b"Z")


def ids(n: int) -> str:
    return " ".join(f"{i:08x}" for i in range(1, n + 1))


# --------------------------------------------------------------------------------------------------
# The marker on byte strings


def test_marker_found_appended_and_stripped_on_bytes() -> None:
    plain = request()
    assert plain[-1] == ord("Z")
    assert find_via(plain, 16) is None
    assert strip_via(plain) is plain  # nothing to take out: the same object, no copy

    one = marked(plain, OWN)
    at, chain = find_via(one, 16) or (0, b"")
    assert chain == OWN.encode() and one[at:].startswith(b"\x0cregproxy.via")
    # A hessian2 decoder reads it as the last attachment, a string, the arguments untouched.
    body = RequestBody(one, 16)
    assert body.arguments() == ["x"]
    assert body.attachments[VIA_KEY] == OWN and list(body.attachments)[-1] == VIA_KEY
    # The ingress takes it out: the body is the consumer's again (the header is fixed when sent).
    assert strip_via(one)[16:] == plain[16:]

    # A chain longer than 31 bytes takes hessian2's two-byte length form.
    long = marked(plain, ids(VIA_MAX_IDS))
    assert RequestBody(long, 16).attachments[VIA_KEY] == ids(VIA_MAX_IDS)
    assert find_via(long, 16) == (len(plain) - 1, ids(VIA_MAX_IDS).encode())
    assert strip_via(long)[16:] == plain[16:]
    entry = via_entry(ids(4).encode())
    assert Hessian2Reader(entry).read_string() == VIA_KEY
    assert entry[13] == 0x30 and entry[14] == len(ids(4))


def test_marker_lookalikes_are_not_markers() -> None:
    plain = request()
    # A body whose last value is not the attachments map (no Z last): never marked, never stripped.
    no_map = with_body(plain, plain[16 : RequestBody(plain, 16).head_end] + b"\x01x")
    assert find_via(no_map, 16) is None and strip_via(no_map) is no_map
    # The key's bytes inside an attachment value, not followed by a value that reaches the final Z.
    inside = request(note="\x0cregproxy.via")
    assert find_via(inside, 16) is None
    # A value of the wrong shape for ids.
    odd = with_body(plain, plain[16:-1] + via_entry(b"abc") + b"Z")
    assert find_via(odd, 16) is None and strip_via(odd) is odd


# --------------------------------------------------------------------------------------------------
# The marker on a forwarder with stand-in transports (as benchmarks/hotpath.py builds one)


class Hop:
    """One forwarder ("egress" or "ingress") routing SVC to APP over a stand-in open connection."""

    def __init__(self, name: str, guard: LoopGuard | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.batcher = Batcher(loop)
        table = RoutingTable(
            [Route("r", RouteMatch(service=SVC), "c", retries=0)], [Cluster("c", "round_robin", (Host(APP),))]
        )

        def make_pool(events: UpstreamEvents) -> UpstreamPool:
            return UpstreamPool(loop, self.batcher, events, max_body=1 << 20)

        self.fwd = Forwarder(
            name,
            loop,
            TableHolder(table),
            self.batcher,
            make_pool,
            default_timeout_ms=3000,
            timeout_from_attachment=name == "egress",
            guard=guard or LoopGuard(OWN),
        )
        conn = UpstreamConnection(self.fwd.pool, APP)
        self.fwd.pool._conns[APP] = [conn]  # an open connection: the pool never dials
        self.up = Transport()
        conn.connection_made(self.up)  # type: ignore[arg-type]
        self.down = DownstreamConnection(self.fwd, 1 << 20)
        self.down_t = Transport()
        self.down.connection_made(self.down_t)  # type: ignore[arg-type]

    def send(self, data: bytes) -> tuple[list[Frame], list[Frame]]:
        """Frames written upstream and answered downstream for ``data``."""
        up, down = self.up.writes, self.down_t.writes
        self.down.data_received(data)
        self.batcher.flush()
        sent = FrameParser().feed(self.up.last) if self.up.writes > up else []
        answered = FrameParser().feed(self.down_t.last) if self.down_t.writes > down else []
        return sent, answered


def via_of(frame: Frame) -> str | None:
    body = RequestBody(frame.body)
    assert body.arguments() == ["x"]  # the arguments as the consumer sent them
    value = body.attachments.get(VIA_KEY)
    return value if isinstance(value, str) else None


async def test_egress_marks_what_it_forwards() -> None:
    hop = Hop("egress")
    # The first request takes the general path, the next the memoised one: both are marked, with a
    # body length that fits (FrameParser would fail on the next frame otherwise).
    for rid in (1, 2):
        (sent,), answered = hop.send(request(rid))
        assert not answered and via_of(sent) == OWN
        assert find_via(bytes(sent), 16) is not None  # written last, where the next hop looks
    (sent,), _ = hop.send(request(3, two_way=False))  # one-way requests too
    assert via_of(sent) == OWN
    # Through a chain of egresses (a static cluster naming another sidecar's egress): appended.
    (sent,), _ = hop.send(marked(request(4), OTHER))
    assert via_of(sent) == f"{OTHER} {OWN}"
    # Two requests in one read, one marked by another egress: each gets what it needs.
    sent, _ = hop.send(request(5) + marked(request(6), OTHER))
    assert sorted(via_of(f) or "" for f in sent) == [OWN, f"{OTHER} {OWN}"]
    assert hop.fwd.stats.loops == 0


async def test_egress_answers_a_request_that_came_back(caplog: pytest.LogCaptureFixture) -> None:
    hop = Hop("egress")
    hop.send(request(1))  # memoise the head: the looped requests below take the fast path first
    with caplog.at_level(logging.WARNING, logger="regproxy.proxy.loops"):
        started = time.perf_counter()
        sent, (answer,) = hop.send(marked(request(7), f"{OTHER} {OWN}"))
        assert not sent, "a looped request must never be forwarded again"
        assert time.perf_counter() - started < 0.1
        assert answer.request_id == 7 and answer.status == Status.SERVER_ERROR
        message = Hessian2Reader(answer.body).read_string()
        assert "request loop" in message and f"{SVC}.f" in message
        assert f"sidecar {OWN}" in message and f"{OTHER} -> {OWN} -> {OWN}" in message
        # A flood: every request answered, counted, and one log line for all of them.
        for rid in range(100, 150):
            sent, (answer,) = hop.send(marked(request(rid), OWN))
            assert not sent and answer.status == Status.SERVER_ERROR
        hop.send(marked(request(9, two_way=False), OWN))  # one-way: dropped, counted, not logged again
    assert hop.fwd.stats.loops == 52
    assert hop.fwd.stats.responses[Status.SERVER_ERROR] == 51
    lines = [r for r in caplog.records if "request loop" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    # Other requests are still forwarded.
    (sent,), _ = hop.send(request(10))
    assert via_of(sent) == OWN


async def test_egress_refuses_a_request_that_passed_too_many_egresses() -> None:
    hop = Hop("egress")
    (sent,), _ = hop.send(marked(request(1), ids(VIA_MAX_IDS - 1)))  # one more fits
    assert via_of(sent) == f"{ids(VIA_MAX_IDS - 1)} {OWN}"
    sent, (answer,) = hop.send(marked(request(2), ids(VIA_MAX_IDS)))
    assert not sent and answer.status == Status.SERVER_ERROR
    message = Hessian2Reader(answer.body).read_string()
    assert f"already passed {VIA_MAX_IDS} sidecar egresses" in message and "loop" in message
    assert hop.fwd.stats.loops == 1


async def test_egress_forwards_a_body_without_attachments_unmarked() -> None:
    plain = request(1)
    head = plain[16 : RequestBody(plain, 16).head_end]
    # A Dubbo 2.0.x body ends with its last argument; one ending in the byte "Z" (the string "xZ")
    # must not be taken for a map's end, where the marker would go (it would land inside the string).
    for last in (b"\x01x", b"\x02xZ"):
        hop = Hop("egress")
        no_map = with_body(plain, head + last)
        for _ in range(3):  # general path, then the same head again
            (sent,), _ = hop.send(no_map)
            assert bytes(sent)[16:] == no_map[16:]
        assert RequestBody(bytes(sent), 16).arguments() == [last[1:].decode()]


async def test_ingress_takes_the_marker_out() -> None:
    hop = Hop("ingress")
    for data in (request(1), marked(request(2), OTHER), marked(request(3), f"{OTHER} {OWN}")):
        for _ in range(2):  # general path, then memoised
            (sent,), answered = hop.send(data)
            assert not answered
            assert via_of(sent) is None
            assert sent.body == request(1)[16:]  # exactly what the consumer sent
    (sent,), _ = hop.send(marked(request(4, two_way=False), OTHER))
    assert via_of(sent) is None
    # Its own id in the marker is no loop at the ingress: egress -> own ingress is one pod's path.
    (sent,), answered = hop.send(marked(request(5), OWN))
    assert not answered and via_of(sent) is None
    assert hop.fwd.stats.loops == 0


def test_guard_tells_loops_from_the_legitimate_path() -> None:
    guard = LoopGuard(OWN)
    to_app = guard.opened(("127.0.0.1", 40001), "ingress", "127.0.0.1:20881")
    to_provider = guard.opened(("127.0.0.1", 40002), "egress", "127.0.0.1:20881")
    assert to_app == "127.0.0.1:40001" and to_provider == "127.0.0.1:40002"
    assert guard.vet("127.0.0.1:40002", "ingress") is None  # egress -> own ingress: same pod
    assert f"({OWN}) own egress" in (guard.vet("127.0.0.1:40002", "egress") or "")
    for listener in ("ingress", "egress"):
        reason = guard.vet("127.0.0.1:40001", listener) or ""
        assert f"({OWN}) own {listener} listener" in reason and "127.0.0.1:20881" in reason
    assert guard.vet("10.0.0.9:40001", "ingress") is None  # another host's connection
    guard.closed(to_app)
    assert guard.vet("127.0.0.1:40001", "ingress") is None  # closed: the port may be anyone's now
    assert len(LoopGuard().id) == 8 and LoopGuard().id != LoopGuard().id


def test_own_addresses_are_every_address_a_provider_url_can_reach_a_listener_at() -> None:
    """The provider addresses a sidecar ignores: each listener at its bound host, at the loopback
    names when it listens on loopback or everywhere, and at the advertise IP when it listens
    everywhere; never at an address that is not its own (something else may listen there)."""
    own = own_addresses(
        [("egress", "127.0.0.1", 20881), ("api", "0.0.0.0", 22222), ("admin", "::", 34901),
         ("egress", "10.0.0.5", 20891), ("admin", "LocalHost", 34902)],
        "10.0.0.5",
    )  # fmt: skip
    assert own == {
        "127.0.0.1:20881": "egress listener 127.0.0.1:20881",
        "localhost:20881": "egress listener 127.0.0.1:20881",
        "[::1]:20881": "egress listener 127.0.0.1:20881",
        "0.0.0.0:22222": "api listener 0.0.0.0:22222",
        "127.0.0.1:22222": "api listener 0.0.0.0:22222",
        "localhost:22222": "api listener 0.0.0.0:22222",
        "[::1]:22222": "api listener 0.0.0.0:22222",
        "10.0.0.5:22222": "api listener 0.0.0.0:22222",
        "[::]:34901": "admin listener [::]:34901",
        "127.0.0.1:34901": "admin listener [::]:34901",
        "localhost:34901": "admin listener [::]:34901",
        "[::1]:34901": "admin listener [::]:34901",
        "10.0.0.5:34901": "admin listener [::]:34901",
        "10.0.0.5:20891": "egress listener 10.0.0.5:20891",
        "localhost:34902": "admin listener LocalHost:34902",
        "127.0.0.1:34902": "admin listener LocalHost:34902",
        "[::1]:34902": "admin listener LocalHost:34902",
    }
    # A listener on loopback is not reachable at the advertise IP: that port there is someone else's.
    assert "10.0.0.5:20881" not in own


# --------------------------------------------------------------------------------------------------
# Real sidecar processes


class RecordingApp:
    """An application that answers every request with "ok" and keeps the attachments it got."""

    def __init__(self) -> None:
        self.attachments: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: _AppProtocol(self), "127.0.0.1", 0
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _AppProtocol(asyncio.Protocol):
    def __init__(self, app: RecordingApp) -> None:
        self.app = app
        self.parser = FrameParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for frame in self.parser.feed(data):
            assert self.transport is not None
            if not frame.is_request:
                continue
            if frame.is_event:  # the sidecar's app check: an app that answers is up
                self.transport.write(heartbeat_reply(frame.request_id))
                continue
            body = RequestBody(frame.body)
            body.arguments()
            self.app.attachments.append(dict(body.attachments))
            self.transport.write(encode_response(frame.request_id, "ok"))


@pytest.fixture
async def app() -> AsyncIterator[RecordingApp]:
    recording = RecordingApp()
    yield recording
    recording.close()


@pytest.fixture
async def sidecars() -> AsyncIterator[list[SidecarProc]]:
    procs: list[SidecarProc] = []
    yield procs
    for sc in procs:
        await sc.kill()


def zk_url(zk_server: ZooKeeperServer) -> str:
    return f"zookeeper://{zk_server.hosts}"


async def start(procs: list[SidecarProc], sc: SidecarProc) -> SidecarProc:
    procs.append(sc)
    await sc.start()
    return sc


async def call(
    port: int, service: str = SVC, method: str = "f", *, timeout: float = 3.0
) -> tuple[Response, float]:
    """One call through a listener: the response and how long it took."""
    client = await DubboClient.connect("127.0.0.1", port)
    try:
        started = time.perf_counter()
        response = await client.invoke(service, method, ["x"], timeout=timeout)
        return response, time.perf_counter() - started
    finally:
        client.close()


async def stats(sc: SidecarProc) -> dict[str, Any]:
    status, body = await sc.admin_get("/api/v1/stats")
    assert status == 200, body
    return body


async def loops_metric(sc: SidecarProc) -> float:
    """The egress's regproxy_loops_total, as Prometheus reads it."""
    async with aiohttp.ClientSession() as http, http.get(sc.admin_url + "/metrics") as resp:
        text = await resp.text()
    m = re.search(r'^regproxy_loops_total\{listener="egress",protocol="dubbo"\} (\S+)$', text, re.M)
    assert m, "regproxy_loops_total for the egress is not in /metrics"
    return float(m[1])


def log_lines(sc: SidecarProc, text: str) -> list[str]:
    return [line for line in sc.log_path.read_text(errors="replace").splitlines() if text in line]


def pub(port: int | None, interface: str = SVC) -> dict[str, Any]:
    service: dict[str, Any] = {"interface": interface, "methods": ["f"]}
    if port is not None:
        service["port"] = port
    return {"service": service}


SUB = {"service": {"interface": SVC}}


@pytest.mark.process
async def test_pub_refuses_the_sidecars_own_listener_ports(
    tmp_path: Path,
    zk: KazooClient,
    zk_server: ZooKeeperServer,
    sidecars: list[SidecarProc],
    app: RecordingApp,
) -> None:
    app_port = await app.start()
    sc = await start(
        sidecars, SidecarProc("pub", tmp_path / "sc", registries=[zk_url(zk_server)], app_port=app_port)
    )
    for name in ("ingress", "egress", "api", "admin"):
        port = getattr(sc, name)
        status, body = await sc.post("/pub", pub(port))
        assert status == 400, (name, body)
        assert body["err_msg"].startswith(f"service.port: {port} is this sidecar's own {name} listener"), body
        assert "loop" in body["err_msg"]
    assert not zk.exists(f"/dubbo/{SVC}/providers") or not zk.get_children(f"/dubbo/{SVC}/providers")
    status, body = await sc.post("/pub", pub(app_port))  # the application's own port is fine
    assert status == 200, body


def state_with_publication(sc: SidecarProc, registry: str, port: int) -> None:
    """The state file of a sidecar that published SVC with application port ``port`` (as a sidecar
    from before this check could, or a hand-edited file): restored, it is served as it is."""
    key = RegistryURL.parse(registry).to_url(redact=False)
    spec = {"interface": SVC, "port": port, "methods": ["f"], "version": "", "group": "",
            "application": "loop", "params": {}}  # fmt: skip
    state = {
        "version": 1,
        "publications": [{"spec": spec, "url": f"dubbo://127.0.0.1:{sc.ingress}/{SVC}", "registries": [key]}],
        "subscriptions": [],
        "providers": {},
    }
    sc.data_dir.mkdir(parents=True, exist_ok=True)
    (sc.data_dir / STATE_FILE).write_bytes(orjson.dumps(state))


@pytest.mark.process
@pytest.mark.parametrize("listener", ["ingress", "egress"])
async def test_a_publication_on_an_own_listener_port_answers_a_loop_error(
    tmp_path: Path,
    zk: KazooClient,
    zk_server: ZooKeeperServer,
    sidecars: list[SidecarProc],
    app: RecordingApp,
    listener: str,
) -> None:
    """The issue's first scenarios (publication port = ingress, or = egress, and a subscription),
    with the publication coming from a state file, which /pub now refuses to make. Without the
    connection guard the request goes round until the caller's timeout (the ingress forwarding
    ~70,000 requests a second to itself)."""
    app_port = await app.start()
    reg = zk_url(zk_server)
    sc = SidecarProc(f"loop-{listener}", tmp_path / "sc", registries=[reg], app_port=app_port)
    state_with_publication(sc, reg, getattr(sc, listener))
    await start(sidecars, sc)
    # The restored publication is registered again in the background: wait for its node, so the
    # subscription below finds it (ready does not wait for re-registration).
    providers = f"/dubbo/{SVC}/providers"
    await wait_for(lambda: zk.exists(providers) and zk.get_children(providers), 10, "the restored node",
                   interval=0.05, detail=sc.log_tail)  # fmt: skip
    status, body = await sc.post("/sub", SUB)
    assert status == 200 and body["providers"], body  # this sidecar's own ingress: a legitimate provider

    response, took = await call(sc.egress)
    assert response.status == Status.SERVER_ERROR, response
    assert took < 1.0, f"the loop error took {took:.2f} s"
    error = response.error or ""
    assert (
        "request loop" in error and f"own {listener} listener" in error and (await stats(sc))["id"] in error
    )
    assert f"{SVC}.f" in error
    results = await asyncio.gather(*(call(sc.egress) for _ in range(30)))
    assert all(r.status == Status.SERVER_ERROR and "request loop" in (r.error or "") for r, _ in results)

    counted = await stats(sc)
    assert counted[listener]["loops"] >= 31, counted[listener]
    # Logged before the answer went out: once one line is in the file, a second one would be too.
    await wait_for(lambda: log_lines(sc, "request loop"), 5, "the warning in the log")
    lines = log_lines(sc, "request loop")
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and counted["id"] in lines[0]

    # Other traffic is still served: a service published on the application's port.
    status, body = await sc.post("/pub", pub(app_port, "com.ok.Svc"))
    assert status == 200, body
    status, body = await sc.post("/sub", {"service": {"interface": "com.ok.Svc"}})
    assert status == 200, body
    response, _ = await call(sc.egress, "com.ok.Svc")
    assert response.ok and response.value == "ok", response


def provider_node(address: str, interface: str = SVC) -> str:
    url = f"dubbo://{address}/{interface}?interface={interface}&methods=f&side=provider&application=x"
    return f"/dubbo/{interface}/providers/{quote_plus(url)}"


@pytest.mark.process
async def test_providers_at_the_own_egress_api_and_admin_are_ignored_with_one_warning_each(
    tmp_path: Path,
    zk: KazooClient,
    zk_server: ZooKeeperServer,
    sidecars: list[SidecarProc],
    app: RecordingApp,
) -> None:
    """The issue's provider URL in ZooKeeper naming the sidecar's own egress: without the check the
    egress forwards to itself (~600k requests in 12 s). The API and admin listeners are no Dubbo
    providers either."""
    app_port = await app.start()
    sc = await start(
        sidecars, SidecarProc("own", tmp_path / "sc", registries=[zk_url(zk_server)], app_port=app_port)
    )
    status, body = await sc.post("/sub", SUB)
    assert status == 200, body
    own = {"egress": sc.egress, "api": sc.api, "admin": sc.admin}
    for port in own.values():
        await asyncio.to_thread(zk.create, provider_node(f"127.0.0.1:{port}"), makepath=True)

    async def ignored() -> bool:
        return (await stats(sc))["registry"]["events"].get("own_providers_ignored", 0) == len(own)

    await wait_for(ignored, 10, "the providers at the sidecar's own listeners to be ignored", interval=0.1)
    response, took = await call(sc.egress)
    assert response.status == Status.SERVICE_NOT_FOUND and took < 1.0, response
    assert "no provider" in (response.error or "")

    # The sidecar's ingress is a legitimate provider of the same service (its app publishes it):
    # the cluster is rebuilt, its own other listeners stay out, and no warning is logged again.
    status, body = await sc.post("/pub", pub(app_port))
    assert status == 200, body

    async def only_ingress() -> bool:  # once ZooKeeper's watch has told the subscription
        _, body = await sc.post("/sub", SUB)
        return [p["address"] for p in body["providers"]] == [f"127.0.0.1:{sc.ingress}"]

    await wait_for(only_ingress, 10, "the sidecar's own ingress to be the only provider", interval=0.1)
    response, _ = await call(sc.egress)
    assert response.ok and response.value == "ok", response
    counted = await stats(sc)
    assert counted["registry"]["events"]["own_providers_ignored"] == len(own)
    assert counted["egress"]["loops"] == 0 and counted["ingress"]["loops"] == 0
    lines = log_lines(sc, "ignoring provider")
    assert len(lines) == len(own), lines
    for name, port in own.items():
        (line,) = [line for line in lines if f"dubbo://127.0.0.1:{port}/" in line]
        assert "WARNING" in line and f"is this sidecar's own {name} listener 127.0.0.1:{port}" in line


@pytest.mark.process
async def test_same_sidecar_egress_to_own_ingress_to_app_works_and_the_app_sees_no_marker(
    tmp_path: Path,
    zk: KazooClient,
    zk_server: ZooKeeperServer,
    sidecars: list[SidecarProc],
    app: RecordingApp,
) -> None:
    """A consumer app and a provider app behind one sidecar: egress -> own ingress -> app is not a
    loop. The application must not get the marker: Dubbo 2.7 passes the attachments a provider got
    on to the calls it makes, and a nested call A -> B -> A would then look like a loop."""
    app_port = await app.start()
    sc = await start(
        sidecars, SidecarProc("pod", tmp_path / "sc", registries=[zk_url(zk_server)], app_port=app_port)
    )
    assert (await sc.post("/pub", pub(app_port)))[0] == 200
    _, body = await sc.post("/sub", SUB)
    assert [p["address"] for p in body["providers"]] == [f"127.0.0.1:{sc.ingress}"], body
    for _ in range(3):
        response, _ = await call(sc.egress)
        assert response.ok and response.value == "ok", response
    assert len(app.attachments) == 3
    assert all(VIA_KEY not in att for att in app.attachments), app.attachments
    assert all(att.get("timeout") == "3000" for att in app.attachments)  # the rest arrives as sent
    counted = await stats(sc)
    assert counted["egress"]["loops"] == 0 and counted["ingress"]["loops"] == 0
    assert not log_lines(sc, "request loop")


@pytest.mark.process
async def test_two_sidecars_whose_static_clusters_point_at_each_other(
    tmp_path: Path, sidecars: list[SidecarProc], app: RecordingApp
) -> None:
    """A's egress sends SVC to B's egress, B's to A's: the request comes back to A, which answers
    it with the loop error naming the path. Without the marker it circles until the timeout."""
    app_port = await app.start()
    a = SidecarProc("a", tmp_path / "a", registries=[], app_port=app_port)
    b = SidecarProc("b", tmp_path / "b", registries=[], app_port=app_port)

    def config(sc: SidecarProc, to: int) -> list[str]:
        path = sc.data_dir / "regproxy.yaml"
        sc.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"""
clusters:
  - name: next
    hosts: [{{address: "127.0.0.1:{to}"}}]
  - name: app
    hosts: [{{address: "127.0.0.1:{app_port}"}}]
routes:
  - name: loop
    match: {{service: "{SVC}"}}
    cluster: next
  - name: other
    match: {{service: "com.ok.Svc"}}
    cluster: app
"""
        )
        return ["--config", str(path)]

    a.extra, b.extra = config(a, b.egress), config(b, a.egress)
    await start(sidecars, a)
    await start(sidecars, b)
    a_id, b_id = (await stats(a))["id"], (await stats(b))["id"]

    response, took = await call(a.egress)
    assert response.status == Status.SERVER_ERROR and took < 1.0, (response, took)
    error = response.error or ""
    assert "request loop" in error and f"sidecar {a_id}" in error and f"{a_id} -> {b_id} -> {a_id}" in error
    results = await asyncio.gather(*(call(a.egress) for _ in range(30)))
    assert all(r.status == Status.SERVER_ERROR for r, _ in results)
    assert (await stats(a))["egress"]["loops"] == 31
    assert (await stats(b))["egress"]["loops"] == 0
    assert await loops_metric(a) == 31  # the counter the log line names
    await wait_for(lambda: log_lines(a, "request loop"), 5, "the warning in a's log")
    assert len(log_lines(a, "request loop")) == 1, log_lines(a, "request loop")
    assert not log_lines(b, "request loop")

    for sc in (a, b):  # both still serve other traffic
        response, _ = await call(sc.egress, "com.ok.Svc")
        assert response.ok and response.value == "ok", response
