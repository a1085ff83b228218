"""The ingress's own MetadataService: regproxy.discovery.metadata_served, alone and installed in a real
ingress Forwarder (``Forwarder.local_services``) in front of the demo provider.

Facts (apache/dubbo 3.3): group = the application (``StandardMetadataServiceURLBuilder``), version
``1.0.0`` (``MetadataService.VERSION``); null for a revision not served
(``MetadataServiceDelegation.getMetadataInfo``); a group or version not exported → SERVICE_ERROR
"Not found exported service: ... in [<exported keys>]" (``DubboProtocol.getInvoker``).

Loopback sockets only: unit tests (tests/conftest.py gives the mark).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from regproxy.demo.client import DubboClient
from regproxy.demo.provider import GREETINGS_SERVICE, serve
from regproxy.discovery.metadata_served import MetadataServed
from regproxy.dubbo.encode import decode_response, encode_request
from regproxy.dubbo.frame import Frame, Status
from regproxy.dubbo.hessian2 import Hessian2Error
from regproxy.dubbo.metadata_service import (
    GET_METADATA_INFOS,
    METADATA_SERVICE,
    MetadataServiceError,
    decode_metadata_response,
    encode_metadata_request,
)
from regproxy.dubbo.request import RequestBody
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo, from_java_object
from regproxy.routing import Cluster, Host, Route, RouteMatch, RoutingTable, TableHolder

APP = "demo-provider"
APP2 = "billing"
INFO = MetadataInfo.of(
    APP, [ServiceInfo(GREETINGS_SERVICE, protocol="dubbo", port=20882, path=GREETINGS_SERVICE)]
)
OLD = MetadataInfo.of(APP, [ServiceInfo("org.example.Old", protocol="dubbo", port=20882)])
BILLING = MetadataInfo.of(APP2, [ServiceInfo("org.example.Billing", protocol="dubbo", port=20882)])
REVISION = INFO.revision or ""
WHERE = "127.0.0.1:20882"


def ask(served: MetadataServed, request: bytes) -> bytes | None:
    return served(request, RequestBody(request, 16))


def fetched(served: MetadataServed, app: str, revision: str) -> MetadataInfo:
    answer = ask(served, encode_metadata_request(7, app, revision))
    assert answer is not None
    return decode_metadata_response(Frame.of(answer), instance=WHERE, revision=revision)


def served_both() -> MetadataServed:
    served = MetadataServed()
    served.set(APP, {REVISION: INFO, OLD.revision or "": OLD})
    served.set(APP2, {BILLING.revision or "": BILLING})
    return served


# --- the handler alone --------------------------------------------------------------------------------


def test_each_application_is_served_under_its_group() -> None:
    served = served_both()
    assert fetched(served, APP, REVISION) == INFO
    assert fetched(served, APP, OLD.revision or "") == OLD
    assert fetched(served, APP2, BILLING.revision or "") == BILLING
    assert served.apps == {APP, APP2}


def test_a_revision_not_served_is_null() -> None:
    served = served_both()
    with pytest.raises(MetadataServiceError, match=r"no metadata for that revision \(null\)"):
        fetched(served, APP2, REVISION)  # APP's revision asked of APP2


def test_a_group_not_served_is_not_exported_listing_every_served_one() -> None:
    answer = ask(served_both(), encode_metadata_request(8, "nobody", REVISION))
    assert answer is not None
    response = decode_response(Frame.of(answer))
    assert (response.request_id, response.status) == (8, Status.SERVICE_ERROR)
    assert response.error == (
        f"Not found exported service: nobody/{METADATA_SERVICE}:1.0.0 in "
        f"[{APP2}/{METADATA_SERVICE}:1.0.0, {APP}/{METADATA_SERVICE}:1.0.0], may be version or group mismatch"
    )


def test_a_version_not_served_is_not_exported_even_in_a_served_group() -> None:
    request = encode_metadata_request(
        9, APP, REVISION, url_params={"version": "2.0.0", "port": "1", "protocol": "dubbo"}
    )
    answer = ask(served_both(), request)
    assert answer is not None
    response = decode_response(Frame.of(answer))
    assert response.status == Status.SERVICE_ERROR
    assert response.error is not None
    assert response.error.startswith(f"Not found exported service: {APP}/{METADATA_SERVICE}:2.0.0 in [")


def test_drop_and_set_replace_what_is_served() -> None:
    served = served_both()
    mine = {REVISION: INFO}
    served.set(APP, mine)
    mine.clear()  # the caller's map is copied
    assert fetched(served, APP, REVISION) == INFO
    with pytest.raises(MetadataServiceError, match="null"):
        fetched(served, APP, OLD.revision or "")  # replaced, not merged
    served.drop(APP)
    served.drop(APP)  # dropping what is not served is nothing
    assert served.apps == {APP2}
    with pytest.raises(MetadataServiceError, match="SERVICE_ERROR: Not found exported service"):
        fetched(served, APP, REVISION)
    served.set(APP, {})  # served, but every revision is null
    with pytest.raises(MetadataServiceError, match="null"):
        fetched(served, APP, REVISION)
    with pytest.raises(ValueError, match="must not be empty"):
        served.set("", {})


def test_nothing_served_still_answers_not_exported() -> None:
    answer = ask(MetadataServed(), encode_metadata_request(3, APP, REVISION))
    assert answer is not None
    response = decode_response(Frame.of(answer))
    assert response.status == Status.SERVICE_ERROR
    assert "in [], may be version or group mismatch" in (response.error or "")


def test_one_way_gets_no_answer_and_get_metadata_infos_lists_the_group() -> None:
    served = served_both()
    one_way = encode_request(
        4, METADATA_SERVICE, "getMetadataInfo", [REVISION], version="1.0.0", group=APP, two_way=False
    )
    assert ask(served, one_way) is None
    infos = encode_request(5, METADATA_SERVICE, GET_METADATA_INFOS, [], version="1.0.0", group=APP2)
    answer = ask(served, infos)
    assert answer is not None
    assert [from_java_object(v) for v in decode_response(Frame.of(answer)).value] == [BILLING]


def test_other_serialization_is_refused_before_the_body_is_read() -> None:
    request = bytearray(encode_metadata_request(6, APP, REVISION))
    request[2] = (request[2] & 0xE0) | 3  # java serialization
    answer = ask(served_both(), bytes(request))
    assert answer is not None
    assert Frame.of(answer).status == Status.BAD_REQUEST


def test_malformed_attachments_raise_hessian2_error() -> None:
    request = encode_metadata_request(6, APP, REVISION)
    broken = request[:-3] + b"\xff\xff"  # the attachments map cut short, then garbage
    broken = broken[:12] + (len(broken) - 16).to_bytes(4, "big") + broken[16:]
    with pytest.raises(Hessian2Error):
        ask(served_both(), broken)


# --- in a real ingress Forwarder ------------------------------------------------------------------------


def settings() -> ListenerSettings:
    return ListenerSettings(
        host="127.0.0.1",
        port=0,
        max_body=8 * 1024 * 1024,
        default_timeout_ms=3000,
        connect_timeout_ms=500,
        connections_per_host=1,
        timeout_from_attachment=False,  # as the sidecar's ingress
    )


def to(address: str, service: str = "*") -> RoutingTable:
    cluster = Cluster(name="c", hosts=(Host(address=address),))
    return RoutingTable(
        routes=[Route(name="r", match=RouteMatch(service=service), cluster="c", retries=0)],
        clusters=[cluster],
    )


@dataclass
class Ingress:
    provider: asyncio.AbstractServer
    listener: Listener
    served: MetadataServed

    @property
    def port(self) -> int:
        return self.listener.address[1]

    async def client(self) -> DubboClient:
        return await DubboClient.connect("127.0.0.1", self.port)


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    provider = await serve("127.0.0.1", 0)
    # Every service to the demo app, MetadataService included: only local_services keeps it here (the
    # demo provider would answer "service not found").
    listener = Listener(
        "ingress", settings(), TableHolder(to(f"127.0.0.1:{provider.sockets[0].getsockname()[1]}"))
    )
    await listener.start()
    assert listener.forwarder is not None
    served = served_both()
    listener.forwarder.local_services[METADATA_SERVICE] = served  # what the sidecar does
    yield Ingress(provider, listener, served)
    await listener.stop()
    provider.close()
    await provider.wait_closed()


async def metadata_call(client: DubboClient, app: str, revision: str) -> MetadataInfo:
    rid = client.new_request_id()
    frame = await client.exchange(rid, encode_metadata_request(rid, app, revision))
    return decode_metadata_response(frame, instance=WHERE, revision=revision)


async def test_the_ingress_answers_metadata_itself_and_still_routes_the_rest(ingress: Ingress) -> None:
    client = await ingress.client()
    try:
        for _ in range(3):  # again and again: no plan is ever made for it, so no fast path takes it
            assert await metadata_call(client, APP, REVISION) == INFO
            assert await client.call(GREETINGS_SERVICE, "sayHi", ["ann"]) == "hi, ann"
        assert await metadata_call(client, APP2, BILLING.revision or "") == BILLING
        ingress.served.drop(APP2)
        with pytest.raises(MetadataServiceError, match="Not found exported service"):
            await metadata_call(client, APP2, BILLING.revision or "")
    finally:
        client.close()
    fwd = ingress.listener.forwarder
    assert fwd is not None
    stats = fwd.stats
    assert stats.requests == 8
    assert stats.responses.get(Status.OK) == 4 + 3  # four metadata answers here, three from the app
    assert stats.responses.get(Status.SERVICE_ERROR) == 1
    assert stats.upstream_requests == {f"127.0.0.1:{ingress.provider.sockets[0].getsockname()[1]}": 3}


async def test_metadata_through_an_egress_has_its_loop_marker_taken_out(ingress: Ingress) -> None:
    # The egress marks what it forwards (regproxy.via); the ingress strips it before the handler reads
    # the request, as it does before the application does.
    egress = Listener("egress", settings(), TableHolder(to(f"127.0.0.1:{ingress.port}", METADATA_SERVICE)))
    await egress.start()
    seen: list[RequestBody] = []
    served = ingress.served

    def spy(raw: bytes, body: RequestBody) -> bytes | None:
        seen.append(body)
        return served(raw, body)

    assert ingress.listener.forwarder is not None
    ingress.listener.forwarder.local_services[METADATA_SERVICE] = spy
    try:
        client = await DubboClient.connect("127.0.0.1", egress.address[1])
        try:
            assert await metadata_call(client, APP, REVISION) == INFO
        finally:
            client.close()
    finally:
        await egress.stop()
    assert "regproxy.via" not in seen[0].attachments


async def test_a_failing_handler_is_an_error_reply_and_the_connection_goes_on(ingress: Ingress) -> None:
    def malformed(raw: bytes, body: RequestBody) -> bytes | None:
        raise Hessian2Error("string truncated at 40")

    def broken(raw: bytes, body: RequestBody) -> bytes | None:
        raise RuntimeError("boom")

    def silent(raw: bytes, body: RequestBody) -> bytes | None:
        return None

    fwd = ingress.listener.forwarder
    assert fwd is not None
    fwd.local_services.update({"x.Malformed": malformed, "x.Broken": broken, "x.Silent": silent})
    client = await ingress.client()
    try:
        bad = await client.invoke("x.Malformed", "m")
        assert (bad.status, bad.error) == (
            Status.BAD_REQUEST,
            "regproxy ingress: malformed request body: string truncated at 40",
        )
        failed = await client.invoke("x.Broken", "m")
        assert (failed.status, failed.error) == (
            Status.SERVER_ERROR,
            "regproxy ingress: answering x.Broken.m failed: RuntimeError: boom",
        )
        nothing = await client.invoke("x.Silent", "m")
        assert (nothing.status, nothing.error) == (
            Status.SERVER_ERROR,
            "regproxy ingress: x.Silent answered nothing",
        )
        client.call_oneway("x.Silent", "m")  # one-way: silence is the answer
        client.call_oneway(METADATA_SERVICE, "getMetadataInfo", [REVISION], version="1.0.0", group=APP)
        assert await client.call(GREETINGS_SERVICE, "sayHi", ["bob"]) == "hi, bob"
    finally:
        client.close()
    assert fwd.stats.oneway == 2
    assert fwd.stats.responses == {Status.BAD_REQUEST: 1, Status.SERVER_ERROR: 2, Status.OK: 1}
