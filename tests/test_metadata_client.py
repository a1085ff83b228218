"""regproxy.discovery.metadata_client: one getMetadataInfo call over a real loopback socket, against an
in-test server that answers with regproxy's own provider side (``answer_metadata_request``).

Loopback sockets only, no process and no registry: unit tests (tests/conftest.py gives the mark).
Where the behaviour comes from (apache/dubbo 3.3): one call per connection
(``MetadataUtils.getRemoteMetadata``: ``referMetadataService``, the call, ``destroyProxy``); a two-way
heartbeat answered with a heartbeat response of its id (``HeartbeatHandler.received``); null, an
error status or another revision is no MetadataInfo (``MetadataServiceDelegation.getMetadataInfo``,
``ServiceInstancesChangedListener.doOnEvent``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from regproxy.config.model import TLSConfig
from regproxy.discovery.app_publish import metadata_service_url_params
from regproxy.discovery.metadata_client import fetch_metadata, metadata_address, metadata_ssl
from regproxy.dubbo.encode import encode_response, heartbeat_request
from regproxy.dubbo.frame import FLAG_EVENT, FLAG_REQUEST, Frame, FrameParser, ProtocolError, pack_header
from regproxy.dubbo.metadata_service import MetadataServiceError, answer_metadata_request
from regproxy.dubbo.request import RequestBody
from regproxy.registry.instances import (
    METADATA_SERVICE_V2,
    AppInstance,
    instance_metadata,
    metadata_service_params,
)
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo, to_java_object
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder
from regproxy.tls import TLS_PARAM, SidecarTLS, server_context
from tests.pki import Pki, make_pki

APP = "demo-provider"
INFO = MetadataInfo.of(
    APP,
    [ServiceInfo("org.example.Greeter", protocol="dubbo", port=20880, path="org.example.Greeter")],
)
REVISION = INFO.revision or ""
OTHER = MetadataInfo.of(APP, [ServiceInfo("org.example.Other", protocol="dubbo", port=20880)])

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def instance(port: int, *, app: str = APP, **extra: str) -> AppInstance:
    """An instance whose MetadataService is on 127.0.0.1:``port``, as regproxy publishes one."""
    metadata = instance_metadata(REVISION, metadata_service=metadata_service_url_params("dubbo", port))
    metadata.update(extra)
    return AppInstance(app=app, host="127.0.0.1", port=port, metadata=metadata)


class Frames:
    """The frames a server reads from one connection, one at a time."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.parser = FrameParser()
        self.pending: list[bytes] = []

    async def next(self) -> bytes:
        while not self.pending:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.pending += self.parser.feed_raw(chunk)
        return self.pending.pop(0)


def answer(raw: bytes, app: str = APP, infos: dict[str, MetadataInfo] | None = None) -> bytes:
    """regproxy's own provider side answering the request ``raw``."""
    served = {REVISION: INFO} if infos is None else infos
    reply = answer_metadata_request(Frame.of(raw), RequestBody(raw, 16), app, served)
    assert reply is not None
    return reply


def answering(app: str = APP, infos: dict[str, MetadataInfo] | None = None) -> Handler:
    """A MetadataService provider for ``app`` serving ``infos`` (INFO by default)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(await Frames(reader).next(), app, infos))
        await writer.drain()

    return handle


@asynccontextmanager
async def serving(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A loopback server running ``handler`` per connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, ProtocolError):  # a client that went away, or spoke TLS to us
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=ssl_ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def where(port: int, revision: str = REVISION) -> str:
    """The start every message has: the call, the application and the dialled address."""
    return re.escape(f"MetadataService.getMetadataInfo({revision!r}) on {APP} 127.0.0.1:{port}")


# --- answers --------------------------------------------------------------------------------------


async def test_fetches_the_metadata_of_the_revision() -> None:
    async with serving(answering()) as port:
        info = await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert info == INFO


async def test_the_request_carries_the_given_id_group_version_and_timeout() -> None:
    seen: list[tuple[int, RequestBody]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await Frames(reader).next()
        frame, body = Frame.of(raw), RequestBody(raw, 16)
        seen.append((frame.request_id, body))
        writer.write(answer(raw))

    async with serving(handle) as port:
        await fetch_metadata(instance(port), REVISION, timeout_s=2.5, request_id=4242)
    (rid, body), *_ = seen
    assert rid == 4242
    assert (body.version, body.group, body.attachments["timeout"]) == ("1.0.0", APP, "2500")
    assert body.arguments() == [REVISION]


async def test_null_answer_names_the_revision() -> None:
    async with serving(answering(infos={})) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert "no metadata for that revision (null)" in str(caught.value)


async def test_metadata_of_another_revision_is_refused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await Frames(reader).next()
        writer.write(encode_response(Frame.of(raw).request_id, to_java_object(OTHER)))

    async with serving(handle) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert f"answered the metadata of revision {OTHER.revision!r}" in str(caught.value)


async def test_error_status_is_reported_with_its_message() -> None:
    # A provider of another application: Java's (and regproxy's) "Not found exported service".
    async with serving(answering(app="someone-else")) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert "failed with status SERVICE_ERROR: Not found exported service" in str(caught.value)


async def test_a_heartbeat_from_the_peer_is_answered_then_the_answer_taken() -> None:
    replies: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = Frames(reader)
        request = await frames.next()
        writer.write(heartbeat_request(77))  # HeartbeatTimerTask on a Java provider
        replies.append(await frames.next())
        writer.write(answer(request))

    async with serving(handle) as port:
        assert await fetch_metadata(instance(port), REVISION, timeout_s=5) == INFO
    reply = Frame.of(replies[0])
    assert (reply.is_request, reply.is_event, reply.request_id, reply.status) == (False, True, 77, 20)


async def test_events_and_answers_to_other_ids_are_skipped() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await Frames(reader).next()
        rid = Frame.of(raw).request_id
        readonly = pack_header(FLAG_REQUEST | FLAG_EVENT | 2, 0, 5, 2) + b"\x01R"  # one-way: no reply due
        writer.write(readonly + encode_response(rid + 1, to_java_object(OTHER)))
        writer.write(answer(raw))

    async with serving(handle) as port:
        assert await fetch_metadata(instance(port), REVISION, timeout_s=5, request_id=9) == INFO


# --- failures of the connection -----------------------------------------------------------------------


async def test_a_peer_that_never_answers_times_out_in_time() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with serving(handle) as port:
        started = time.monotonic()
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=0.3)
        elapsed = time.monotonic() - started
    assert "timed out after 0.3 s waiting for the answer" in str(caught.value)
    assert 0.25 < elapsed < 2


async def test_connection_refused() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert "cannot connect: " in str(caught.value)
    assert "refused" in str(caught.value).lower()


async def test_peer_closing_in_the_middle_of_a_frame() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await Frames(reader).next()
        writer.write(answer(raw)[:30])
        await writer.drain()

    async with serving(handle) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert "closed the connection in the middle of a frame (30 bytes of it read)" in str(caught.value)


async def test_peer_closing_without_answering() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Frames(reader).next()

    async with serving(handle) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert "closed the connection without answering" in str(caught.value)


async def test_an_answer_above_the_body_limit_is_refused_from_its_header() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await Frames(reader).next()
        writer.write(pack_header(2, 20, Frame.of(raw).request_id, 1 << 30))  # claims a 1 GiB body
        await asyncio.sleep(30)

    async with serving(handle) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5, max_body=64 * 1024)
    assert "exceeds the limit of 65536 bytes" in str(caught.value)


async def test_a_peer_that_does_not_speak_dubbo() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await asyncio.sleep(30)

    async with serving(handle) as port:
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5)
    assert "not a usable Dubbo answer: bad magic" in str(caught.value)


async def test_a_metadata_service_over_triple_is_refused_before_connecting() -> None:
    port = 50051
    metadata = instance_metadata(
        REVISION,
        metadata_service=metadata_service_params("tri", port, {"version": "2.0.0"}),
        metadata_service_version=METADATA_SERVICE_V2,
    )
    inst = AppInstance(app=APP, host="127.0.0.1", port=20880, metadata=metadata)
    with pytest.raises(MetadataServiceError, match=where(port)) as caught:
        await fetch_metadata(inst, REVISION, timeout_s=5)
    assert "exported over 'tri', not dubbo (meta-v 2.0.0" in str(caught.value)


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki: Pki, *, egress: str = "auto", other: bool = False) -> TLSConfig:
    pair = pki.other_peer if other else pki.peer
    return TLSConfig(enabled=True, cert_file=pair.cert, key_file=pair.key, ca_file=pki.ca, egress=egress)  # type: ignore[arg-type]


def test_which_instances_are_dialled_with_tls(pki: Pki) -> None:
    plain = instance(20880)
    marked = instance(20880, **{TLS_PARAM: "true"})
    auto = SidecarTLS(tls_config(pki), None).upstream
    assert metadata_ssl(plain, None) is None  # tls off
    assert metadata_ssl(marked, None) is None
    assert metadata_ssl(plain, auto) is None
    assert metadata_ssl(marked, auto) is auto.context
    assert metadata_ssl(plain, SidecarTLS(tls_config(pki, egress="always"), None).upstream) is not None
    # auto: an address the egress table already dials with TLS (regproxy.tls=true on its host).
    table = RoutingTable(
        routes=[Route(name="r", match=RouteMatch(service="*"), cluster="c")],
        clusters=[Cluster(name="c", hosts=(Host(address="127.0.0.1:20880", metadata={TLS_PARAM: "true"}),))],
    )
    with_table = SidecarTLS(tls_config(pki), TableHolder(table)).upstream
    assert metadata_ssl(plain, with_table) is with_table.context
    assert metadata_ssl(instance(20881), with_table) is None


def test_metadata_address_brackets_an_ipv6_host() -> None:
    inst = AppInstance(app=APP, host="::1", port=20880)
    assert metadata_address(inst) == "[::1]:20880"


async def test_fetch_over_mutual_tls(pki: Pki) -> None:
    cfg = tls_config(pki)
    async with serving(answering(), server_context(cfg)) as port:
        inst = instance(port, **{TLS_PARAM: "true"})
        ctx = metadata_ssl(inst, SidecarTLS(cfg, None).upstream)
        assert ctx is not None
        assert await fetch_metadata(inst, REVISION, timeout_s=5, ssl=ctx) == INFO
        # The same TLS-only server dialled in plaintext: an error, not a hang.
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(inst, REVISION, timeout_s=5)
    assert "is it a TLS-only ingress?" in str(caught.value)


async def test_tls_to_a_plaintext_peer_is_named(pki: Pki) -> None:
    async with serving(answering()) as port:
        ctx = SidecarTLS(tls_config(pki), None).upstream.context
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5, ssl=ctx)
    assert "does not speak TLS on this port" in str(caught.value)


async def test_a_peer_refusing_our_certificate_is_named(pki: Pki) -> None:
    async with serving(answering(), server_context(tls_config(pki))) as port:
        ctx = SidecarTLS(tls_config(pki, other=True), None).upstream.context
        ctx.load_verify_locations(cafile=pki.ca)  # we trust the server; it does not trust us
        with pytest.raises(MetadataServiceError, match=where(port)) as caught:
            await fetch_metadata(instance(port), REVISION, timeout_s=5, ssl=ctx)
    assert "the peer refused this sidecar's TLS certificate" in str(caught.value)
