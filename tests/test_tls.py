"""Mutual TLS between sidecars, with certificates made here: a CA, a peer certificate (IP SAN
127.0.0.1), one from another CA, an expired one, one for another IP.

* egress → ingress over mTLS carries real Dubbo calls (demo client → egress → TLS → ingress → demo
  provider), and both ends really hold a verified TLS session;
* the ingress refuses a plaintext client, a TLS client without a certificate, with a certificate
  of another CA or an expired one — none reaches the application — and keeps serving good peers;
* an egress that does not trust the ingress (or that the ingress does not trust) answers a Dubbo
  error naming the cause, quickly; verify_ip checks the IP SAN;
* two in-process sidecars: the TLS ingress publishes regproxy.tls=true, an ``auto`` egress dials it
  with TLS and a plaintext provider sidecar without, and its health checks use TLS where needed;
* config errors name their key; reload refuses TLS changes and says a restart is needed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from regproxy.api.models import check_param_key
from regproxy.config import Config, ConfigError, TLSConfig
from regproxy.demo.client import DubboCallError, DubboClient
from regproxy.demo.embedded import sidecar_config as embedded_sidecar_config
from regproxy.demo.provider import ServiceRegistry, default_services, serve
from regproxy.discovery import PublishSpec, ingress_table
from regproxy.dubbo.encode import encode_request
from regproxy.dubbo.frame import FrameParser
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.url import Subscription
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.sidecar import Sidecar
from regproxy.tls import TLS_PARAM, SidecarTLS
from tests.pki import Pair, Pki, make_pki
from tests.topology import EXACT_SPLIT
from tests.wait import wait_for

GREET = "org.apache.dubbo.samples.api.GreetingsService"
ECHO = "org.apache.dubbo.samples.api.EchoService"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pair: Pair, ca: str, **kw: Any) -> TLSConfig:
    return TLSConfig(enabled=True, cert_file=pair.cert, key_file=pair.key, ca_file=ca, **kw)


# --------------------------------------------------------------------------------------------------
# An egress and an ingress (engine listeners) with TLS between them


def settings(**kw: Any) -> ListenerSettings:
    base: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        max_body=8 * 1024 * 1024,
        default_timeout_ms=3000,
        connect_timeout_ms=1000,
        connections_per_host=1,
    )
    base.update(kw)
    return ListenerSettings(**base)


def egress_table(ingress: str, *, hosts: tuple[str, ...] = ()) -> RoutingTable:
    return RoutingTable(
        routes=[
            Route(name="greet", match=RouteMatch(service=GREET), cluster="demo"),
            Route(name="echo", match=RouteMatch(service=ECHO), cluster="demo"),
        ],
        clusters=[Cluster(name="demo", hosts=tuple(Host(address=a) for a in (ingress, *hosts)))],
    )


@dataclass
class Stack:
    services: ServiceRegistry
    provider: asyncio.AbstractServer
    ingress: Listener
    egress: Listener
    ingress_tls: SidecarTLS
    egress_tls: SidecarTLS

    @property
    def ingress_port(self) -> int:
        return self.ingress.address[1]

    async def client(self) -> DubboClient:
        return await DubboClient.connect("127.0.0.1", self.egress.address[1])


def published_table(app_port: int) -> RoutingTable:
    """The ingress table of a sidecar that published both demo services (it forwards nothing else)."""
    return ingress_table([PublishSpec(GREET, app_port), PublishSpec(ECHO, app_port)])


async def start_stack(ingress_cfg: TLSConfig, egress_cfg: TLSConfig) -> Stack:
    """demo provider <- ingress (serves mTLS) <- egress (dials every host with TLS)."""
    services = default_services()
    provider = await serve("127.0.0.1", 0, services=services)
    pport = provider.sockets[0].getsockname()[1]
    ingress_tls = SidecarTLS(ingress_cfg, None)
    ingress = Listener(
        "ingress", settings(server_ssl=ingress_tls.server_ssl), TableHolder(published_table(pport))
    )
    await ingress.start()
    egress_tls = SidecarTLS(egress_cfg.model_copy(update={"egress": "always", "ingress": False}), None)
    egress = Listener(
        "egress",
        settings(upstream_tls=egress_tls.upstream),
        TableHolder(egress_table(f"127.0.0.1:{ingress.address[1]}")),
    )
    await egress.start()
    return Stack(services, provider, ingress, egress, ingress_tls, egress_tls)


async def stop_stack(st: Stack) -> None:
    await st.egress.stop()
    await st.ingress.stop()
    st.provider.close()
    await st.provider.wait_closed()


@pytest.fixture
async def stack(pki: Pki) -> AsyncIterator[Stack]:
    st = await start_stack(tls_config(pki.peer, pki.ca), tls_config(pki.peer, pki.ca))
    yield st
    await stop_stack(st)


async def test_dubbo_calls_cross_mutual_tls(stack: Stack) -> None:
    client = await stack.client()
    try:
        assert await client.call(GREET, "sayHi", ["ann"]) == "hi, ann"
        assert await client.call(ECHO, "sum", [2, 40]) == 42
        value = {"k": ["a😀b", 1, 2.5, None, True], "long": "x" * 200_000}  # many TLS records
        assert await client.call(ECHO, "echo", [value]) == value
    finally:
        client.close()
    # Both ends of the egress → ingress hop hold a TLS session, each with the other's certificate.
    assert stack.egress.forwarder is not None and stack.ingress.forwarder is not None
    (conn,) = stack.egress.forwarder.pool._conns[f"127.0.0.1:{stack.ingress_port}"]
    assert conn.transport is not None
    sslobj = conn.transport.get_extra_info("ssl_object")
    assert sslobj is not None and sslobj.version() in ("TLSv1.2", "TLSv1.3")
    assert ("IP Address", "127.0.0.1") in conn.transport.get_extra_info("peercert")["subjectAltName"]
    (down,) = stack.ingress.forwarder.downstreams
    assert down.transport is not None
    client_cert = down.transport.get_extra_info("peercert")
    assert ("commonName", "sidecar peer") in [kv for rdn in client_cert["subject"] for kv in rdn]
    assert stack.services.total_calls == 3


async def _raw_call(port: int, ctx: ssl.SSLContext | None) -> str:
    """One Dubbo request on a fresh connection; how it ended: 'answered', 'closed' or 'refused: ...'."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None),
            5,
        )
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"
    try:
        writer.write(encode_request(7, GREET, "sayHi", ["mallory"]))
        parser = FrameParser()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except (ssl.SSLError, ConnectionError) as exc:
                return f"refused: {exc}"
            if not chunk:
                return "closed"
            if parser.feed(chunk):
                return "answered"
        return "hung"
    finally:
        writer.close()


def _client_ctx(pki: Pki, pair: Pair | None, trust: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The client trusts the ingress: only its own credentials differ.
    ctx.load_verify_locations(trust or pki.ca)
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


async def test_ingress_refuses_bad_peers_and_keeps_serving(stack: Stack, pki: Pki) -> None:
    good = await stack.client()
    try:
        assert await good.call(GREET, "sayHi", ["ann"]) == "hi, ann"
        outcomes = {}
        for name, ctx in [
            ("plaintext", None),
            ("no certificate", _client_ctx(pki, None)),
            ("another CA", _client_ctx(pki, pki.other_peer)),
            ("expired", _client_ctx(pki, pki.expired)),
        ]:
            outcomes[name] = await _raw_call(stack.ingress_port, ctx)
            # The good peer's kept connection and new good connections both still work.
            assert await good.call(GREET, "sayHi", [name]) == f"hi, {name}"
            assert await _raw_call(stack.ingress_port, _client_ctx(pki, pki.peer)) == "answered"
        print("refused:", outcomes)
        assert all(o == "closed" or o.startswith("refused") for o in outcomes.values()), outcomes
        # None of the refused requests reached the application; the good ones all did.
        assert stack.services.count("sayHi") == 1 + 2 * len(outcomes)
        assert all(a != ("sayHi", "mallory") for a in stack.services.calls)
    finally:
        good.close()


async def test_stalled_handshake_is_dropped_after_the_timeout(pki: Pki) -> None:
    """A client that connects and never sends a ClientHello (a slowloris on the handshake) is closed
    after handshake_timeout_s; connections in their handshake never reach the forwarder."""
    tls = SidecarTLS(tls_config(pki.peer, pki.ca), None)
    ingress = Listener(
        "ingress",
        settings(server_ssl=tls.server_ssl, handshake_timeout_s=0.5),
        TableHolder(ingress_table()),
    )
    await ingress.start()
    try:
        reader, writer = await asyncio.open_connection(*ingress.address)
        started = time.monotonic()
        # Closed by the server (EOF), not left open: within ten times the timeout, however loaded
        # the machine; and not before the timeout (a load only makes that later).
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        elapsed = time.monotonic() - started
        writer.close()
        print(f"stalled handshake closed after {elapsed * 1000:.0f} ms")
        assert elapsed >= 0.4
        assert ingress.forwarder is not None and not ingress.forwarder.downstreams
    finally:
        await ingress.stop()


async def failed_call(st: Stack, what: str) -> tuple[str, float]:
    """A call through the stack that must fail: its error and how long it took."""
    client = await st.client()
    started = time.monotonic()
    with pytest.raises(DubboCallError) as err:
        await client.call(GREET, "sayHi", ["ann"], timeout=10)
    elapsed = time.monotonic() - started
    client.close()
    print(f"{what}: {err.value} after {elapsed * 1000:.0f} ms")
    return str(err.value), elapsed


async def test_egress_that_does_not_trust_the_ingress_answers_an_error(pki: Pki) -> None:
    # The egress trusts only the other CA: the ingress's certificate fails verification.
    st = await start_stack(tls_config(pki.peer, pki.ca), tls_config(pki.other_peer, pki.other_ca))
    try:
        error, elapsed = await failed_call(st, "untrusted ingress")
        assert "CERTIFICATE_VERIFY_FAILED" in error.upper()
        assert elapsed < 2.5  # an answer, not the 3 s request timeout
        assert st.services.total_calls == 0
    finally:
        await stop_stack(st)


@pytest.mark.parametrize("egress_cert", ["other_peer", "expired"])
async def test_ingress_that_does_not_trust_the_egress_answers_an_error(
    pki: Pki, egress_cert: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The egress trusts the ingress but shows a certificate of another CA, or an expired one: the
    ingress refuses it. Under TLS 1.3 that happens after the egress's handshake is done, and the
    ingress (an asyncio server) closes without sending the alert: the egress tells the refusal by
    the session tickets that never came, and says so, in the Dubbo error and in its log, as a
    connect failure (nothing reached the ingress), not as a connection lost with the request."""
    st = await start_stack(tls_config(pki.peer, pki.ca), tls_config(getattr(pki, egress_cert), pki.ca))
    try:
        with caplog.at_level(logging.WARNING, logger="regproxy.proxy.upstream"):
            error, elapsed = await failed_call(st, f"untrusted egress ({egress_cert})")
        assert (
            f"cannot connect to 127.0.0.1:{st.ingress_port}: the peer refused this sidecar's TLS certificate"
            in error
        )
        assert "tls.ca_file" in error and "in flight" not in error
        logged = [
            r.getMessage()
            for r in caplog.records
            if "refused this sidecar's TLS certificate" in r.getMessage()
        ]
        assert logged and f"127.0.0.1:{st.ingress_port}" in logged[0]
        assert elapsed < 2.5
        assert st.services.total_calls == 0
        assert st.egress.forwarder is not None and st.egress.forwarder.stats.connect_failures >= 1
    finally:
        await stop_stack(st)


async def test_a_refusal_under_tls12_fails_fast_and_leaves_the_pool_usable(pki: Pki) -> None:
    """The same refusal with an ingress limited to TLS 1.2: there the egress's own handshake fails,
    with a bare ConnectionResetError (no alert, no errno, no strerror; uvloop raises the same for
    any peer that hangs up in the handshake). Reading its strerror as a str raised TypeError in the
    compiled connect task: the connection stayed "connecting" for good, and every request to that
    host waited for its deadline (here the call's 10 s)."""
    st = await start_stack(tls_config(pki.peer, pki.ca), tls_config(pki.other_peer, pki.ca))
    assert st.ingress_tls.server_ssl is not None
    st.ingress_tls.server_ssl.maximum_version = ssl.TLSVersion.TLSv1_2  # for the next handshakes
    try:
        for attempt in range(2):
            error, elapsed = await failed_call(st, f"TLS 1.2 refusal, call {attempt + 1}")
            assert "closed the connection in the TLS handshake without an alert" in error
            assert elapsed < 2.5
        assert st.egress.forwarder is not None and not st.egress.forwarder.pool.describe()
        assert st.services.total_calls == 0
    finally:
        await stop_stack(st)


async def test_an_accepted_session_closed_by_the_ingress_is_not_taken_for_a_refusal(stack: Stack) -> None:
    """The ingress accepted the egress's certificate (and sent its session tickets), then closes the
    connection with a request in flight: that request may have run, so it is a lost connection
    (retried only where the route allows `reset`), not a refusal retried as a connect failure."""
    client = await stack.client()
    try:
        assert await client.call(GREET, "sayHi", ["ann"]) == "hi, ann"
        call = asyncio.ensure_future(client.call(ECHO, "sleep", [5000], timeout=10))
        fwd = stack.ingress.forwarder
        assert fwd is not None
        await wait_for(lambda: fwd.in_flight == 1, 5, "the request in the ingress")
        for down in list(fwd.downstreams):
            assert down.transport is not None
            down.transport.close()  # TLS close_notify, then FIN: a clean close, as a refusal looks
        with pytest.raises(DubboCallError) as err:
            await call
        assert "closed with the request in flight" in str(err.value)
        assert "refused" not in str(err.value)
    finally:
        client.close()


async def test_verify_ip_checks_the_ip_san(pki: Pki) -> None:
    # The ingress's certificate is for 127.0.0.2; it is dialled at 127.0.0.1.
    for verify_ip, works in ((False, True), (True, False)):
        st = await start_stack(
            tls_config(pki.wrong_ip, pki.ca), tls_config(pki.peer, pki.ca, verify_ip=verify_ip)
        )
        try:
            client = await st.client()
            if works:
                assert await client.call(GREET, "sayHi", ["ann"]) == "hi, ann"
            else:
                with pytest.raises(DubboCallError) as err:
                    await client.call(GREET, "sayHi", ["ann"])
                assert "IP address mismatch" in str(err.value)
            client.close()
        finally:
            await stop_stack(st)


async def test_one_side_without_tls_fails_fast_with_an_error(pki: Pki) -> None:
    """A half-migrated hop: TLS egress → plaintext ingress, plaintext egress → TLS ingress."""
    cfg = tls_config(pki.peer, pki.ca, egress="always")
    expected = {
        (False, True): "WRONG_VERSION_NUMBER",  # the TLS ClientHello is not a Dubbo frame
        (True, False): "closed with the request in flight",  # the ingress refused a non-TLS stream
    }
    for (ingress_on, egress_on), message in expected.items():
        services = default_services()
        provider = await serve("127.0.0.1", 0, services=services)
        tls = SidecarTLS(cfg, None)
        ingress = Listener(
            "ingress",
            settings(server_ssl=tls.server_ssl if ingress_on else None),
            TableHolder(published_table(provider.sockets[0].getsockname()[1])),
        )
        await ingress.start()
        egress = Listener(
            "egress",
            settings(upstream_tls=tls.upstream if egress_on else None),
            TableHolder(egress_table(f"127.0.0.1:{ingress.address[1]}")),
        )
        await egress.start()
        try:
            client = await DubboClient.connect("127.0.0.1", egress.address[1])
            started = time.monotonic()
            with pytest.raises(DubboCallError, match=message):
                await client.call(GREET, "sayHi", ["ann"], timeout=10)
            assert time.monotonic() - started < 2.5
            assert services.total_calls == 0
            client.close()
        finally:
            await egress.stop()
            await ingress.stop()
            provider.close()


# --------------------------------------------------------------------------------------------------
# Sidecars: the published parameter, a mixed fleet, health checks over TLS


def sidecar_config(tmp: Path, name: str, app_port: int, tls: dict[str, Any] | None) -> Config:
    return embedded_sidecar_config(
        "memory://",
        tmp / name,
        app_port,
        health={"active": {"interval_s": 0.2, "timeout_s": 1}},
        **({"tls": tls} if tls else {}),
    )


@pytest.fixture
def fresh_memory() -> Iterator[None]:
    MemoryRegistry.reset_all()
    yield
    MemoryRegistry.reset_all()


@pytest.mark.slow
async def test_mixed_fleet_auto_egress_and_health_checks(
    pki: Pki, tmp_path: Path, fresh_memory: None
) -> None:
    tls = {"enabled": True, "cert_file": pki.peer.cert, "key_file": pki.peer.key, "ca_file": pki.ca}
    apps = [default_services(provider_name=n) for n in ("tls-app", "plain-app")]
    servers = [
        await serve("127.0.0.1", 0, services=s, name=n)
        for s, n in zip(apps, ("tls-app", "plain-app"), strict=True)
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    sidecars = [
        Sidecar(sidecar_config(tmp_path, "tls-provider", ports[0], tls)),
        Sidecar(sidecar_config(tmp_path, "plain-provider", ports[1], None)),  # not migrated yet
        Sidecar(sidecar_config(tmp_path, "consumer", 1, {**tls, "ingress": True, "egress": "auto"})),
    ]
    try:
        for s in sidecars:
            await s.start()
        tls_side, plain_side, consumer = sidecars
        for s, port in zip((tls_side, plain_side), ports, strict=True):
            assert s.discovery is not None
            await s.discovery.publish(PublishSpec(interface=GREET, port=port, methods=("sayHi",)))
        tls_addr = f"127.0.0.1:{tls_side.ingress.address[1]}"
        plain_addr = f"127.0.0.1:{plain_side.ingress.address[1]}"
        assert consumer.discovery is not None
        _, providers = await consumer.discovery.subscribe(Subscription(GREET), params=EXACT_SPLIT)
        params = {p["address"]: p["metadata"].get(TLS_PARAM) for p in providers}
        assert params == {tls_addr: "true", plain_addr: None}

        client = await DubboClient.connect("127.0.0.1", consumer.egress.address[1])
        try:
            for i in range(6):
                assert await client.call(GREET, "sayHi", [f"c{i}"]) == f"hi, c{i}"
        finally:
            client.close()
        assert apps[0].count("sayHi") == 3 and apps[1].count("sayHi") == 3  # Dubbo's round robin over both
        assert consumer.egress.forwarder is not None
        pool = consumer.egress.forwarder.pool._conns
        assert pool[tls_addr][0].transport.get_extra_info("ssl_object") is not None
        assert pool[plain_addr][0].transport.get_extra_info("ssl_object") is None

        # Health checks: the TLS ingress refuses plaintext, so a check that did not use TLS would
        # fail and mark it unhealthy after three rounds of 0.2 s.
        assert consumer.health is not None
        rounds = consumer.health.active.rounds
        deadline = time.monotonic() + 10
        while consumer.health.active.rounds < rounds + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        view = consumer.health.describe()
        for addr in (tls_addr, plain_addr):
            assert view[addr]["healthy"] and view[addr]["checked"] and view[addr]["last_error"] is None, view
            assert view[addr]["consecutive_check_failures"] == 0, view
    finally:
        for s in reversed(sidecars):
            await s.stop()
        for srv in servers:
            srv.close()


async def test_restart_with_tls_switched_republishes_the_parameter(
    pki: Pki, tmp_path: Path, fresh_memory: None
) -> None:
    """Publications restored from the state file follow the running tls.ingress, both ways, even
    when the advertised address is unchanged."""
    app = await serve("127.0.0.1", 0, services=default_services())
    port = app.sockets[0].getsockname()[1]
    plain = sidecar_config(tmp_path, "provider", port, None)
    on = plain.model_copy(update={"tls": tls_config(pki.peer, pki.ca)})
    spec = PublishSpec(interface=GREET, port=port, methods=("sayHi",))
    try:
        first = Sidecar(plain)
        await first.start()
        assert first.discovery is not None
        url = await first.discovery.publish(spec)
        assert TLS_PARAM not in url
        await first.stop()
        for cfg, want in ((on, "true"), (plain, None)):
            sidecar = Sidecar(cfg)
            await sidecar.start()
            try:
                assert sidecar.discovery is not None
                (pub,) = sidecar.discovery.publications.values()
                assert pub.url.params.get(TLS_PARAM) == want and pub.registered
                assert (pub.url.host, pub.url.port) == ("127.0.0.1", plain.ingress.port)
            finally:
                await sidecar.stop()
    finally:
        app.close()


def test_callers_cannot_set_the_tls_parameter() -> None:
    with pytest.raises(ValueError, match="regproxy sets it"):
        check_param_key(TLS_PARAM)


# --------------------------------------------------------------------------------------------------
# Config and reload


def _errors(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        Config.from_dict(data)
    return dict(err.value.errors)


def test_config_errors_name_the_key(pki: Pki, tmp_path: Path) -> None:
    ok = {"enabled": True, "cert_file": pki.peer.cert, "key_file": pki.peer.key, "ca_file": pki.ca}
    assert Config.from_dict({"tls": ok}).tls.enabled
    assert Config.from_dict({"tls": {"enabled": False}}).tls.enabled is False  # no files needed when off

    e = _errors({"tls": {"enabled": True}})
    assert set(e) == {"tls.cert_file", "tls.key_file", "tls.ca_file"} and "required" in e["tls.cert_file"]
    e = _errors({"tls": {**ok, "cert_file": str(tmp_path / "missing.crt")}})
    assert "cannot read" in e["tls.cert_file"] and "missing.crt" in e["tls.cert_file"]
    e = _errors({"tls": {**ok, "key_file": pki.other_peer.key}})
    assert set(e) == {"tls.key_file"} and "does not match the certificate" in e["tls.key_file"]
    e = _errors({"tls": {**ok, "ca_file": pki.peer.key}})
    assert set(e) == {"tls.ca_file"} and "no PEM certificate" in e["tls.ca_file"]
    e = _errors({"tls": {**ok, "key_file": pki.peer.cert}})
    assert "no PEM private key" in e["tls.key_file"]
    key = serialization.load_pem_private_key(Path(pki.peer.key).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    e = _errors({"tls": {**ok, "key_file": str(encrypted)}})
    assert set(e) == {"tls.key_file"} and "is encrypted" in e["tls.key_file"]  # and no prompt
    garbled = tmp_path / "garbled.crt"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    e = _errors({"tls": {**ok, "ca_file": str(garbled)}})
    assert "cannot load CA certificates" in e["tls.ca_file"]
    assert _errors({"tls": {**ok, "verify_hostname": True}}) == {"tls.verify_hostname": "unknown key"}
    assert "tls.egress" in _errors({"tls": {**ok, "egress": "sometimes"}})
    assert "tls.handshake_timeout_s" in _errors({"tls": {**ok, "handshake_timeout_s": 0}})


async def test_reload_rereads_files_and_refuses_restart_only_changes(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "sidecar.crt", tmp_path / "sidecar.key"

    def install(pair: Pair) -> None:  # what a certificate rotation does: new contents, same paths
        cert.write_bytes(Path(pair.cert).read_bytes())
        key.write_bytes(Path(pair.key).read_bytes())

    install(pki.peer)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key), "ca_file": pki.ca}
    current: dict[str, Any] = {"tls": tls, "advertise_ip": "127.0.0.1"}
    sidecar = Sidecar(Config.from_dict(current), loader=lambda: Config.from_dict(current))
    assert sidecar.tls is not None and sidecar.upstream_tls is not None
    first = sidecar.upstream_tls.context
    result = await sidecar.reload()
    assert result["needs_restart"] == [] and "tls (files re-read)" not in result["changes"]

    install(pki.wrong_ip)  # rotated on disk: taken by the reload
    result = await sidecar.reload()
    assert result["needs_restart"] == [] and "tls (files re-read)" in result["changes"]
    assert sidecar.upstream_tls.context is not first

    current = {**current, "tls": {**tls, "verify_ip": True, "egress": "always"}}
    result = await sidecar.reload()
    assert "tls (files re-read)" in result["changes"] and sidecar.config.tls.verify_ip is True
    assert sidecar.upstream_tls.context.check_hostname is True and sidecar.upstream_tls.always is True

    current = {**current, "tls": {**tls, "ingress": False, "handshake_timeout_s": 2}}
    result = await sidecar.reload()
    assert result["needs_restart"] == ["tls.ingress", "tls.handshake_timeout_s"]
    assert sidecar.config.tls.ingress is True and sidecar.config.tls.verify_ip is True  # all kept

    current = {**current, "tls": tls}
    cert.write_bytes(Path(pki.peer.cert).read_bytes())  # half a rotation: key and cert disagree
    before = sidecar.upstream_tls.context
    with pytest.raises(ConfigError, match=r"tls\.key_file: does not match"):
        await sidecar.reload()
    assert sidecar.upstream_tls.context is before  # refused whole


async def test_rotation_to_a_new_ca_without_restart(pki: Pki, tmp_path: Path) -> None:
    """Both sides rotate to another CA in place: connections open before keep working, new peers
    must show the new CA's certificates, peers with the old one are refused."""
    paths = {s: tmp_path / f"{s}.pem" for s in ("cert", "key", "ca")}

    def install(pair: Pair, ca: str) -> TLSConfig:
        for name, src in (("cert", pair.cert), ("key", pair.key), ("ca", ca)):
            paths[name].write_bytes(Path(src).read_bytes())
        return TLSConfig(
            enabled=True, cert_file=str(paths["cert"]), key_file=str(paths["key"]), ca_file=str(paths["ca"])
        )

    cfg = install(pki.peer, pki.ca)
    st = await start_stack(cfg, cfg)
    try:
        client = await st.client()
        assert await client.call(GREET, "sayHi", ["before"]) == "hi, before"
        cfg = install(pki.other_peer, pki.other_ca)
        for side in (st.ingress_tls, st.egress_tls):
            new = cfg.model_copy(update={"egress": side.cfg.egress, "ingress": side.cfg.ingress})
            assert side.apply(new, side.prepare(new)) is True
        assert await client.call(GREET, "sayHi", ["kept"]) == "hi, kept"  # the open session stays
        # A new peer with a certificate of the old CA is refused; one of the new CA is served.
        assert await _raw_call(st.ingress_port, _client_ctx(pki, pki.peer, trust=pki.other_ca)) == "closed"
        assert await _raw_call(st.ingress_port, _client_ctx(pki, pki.other_peer, pki.other_ca)) == "answered"
        # The egress's next connection uses the new context too.
        assert st.egress.forwarder is not None
        pool = st.egress.forwarder.pool
        for conn in list(pool._conns[f"127.0.0.1:{st.ingress_port}"]):
            conn.close()
        t0 = time.monotonic()
        while pool._conns and time.monotonic() - t0 < 5:  # TLS close: close_notify both ways
            await asyncio.sleep(0.01)
        assert await client.call(GREET, "sayHi", ["after"]) == "hi, after"
        (conn,) = st.egress.forwarder.pool._conns[f"127.0.0.1:{st.ingress_port}"]
        peer = conn.transport.get_extra_info("peercert")
        assert ("commonName", "sidecar other-peer") in [kv for rdn in peer["subject"] for kv in rdn]
        client.close()
    finally:
        await stop_stack(st)
