"""The Nacos double (tests/peers/nacos) against the official nacos-sdk-python 2.0.11 client, unpatched.

These tests pin down two things at once: that the double speaks the protocol the client expects, and
how the client behaves (callbacks, ownership of instances, reconnects), which the sidecar's Nacos
adapter builds on.  The ``nacos`` and ``clients`` fixtures are tests/nacos_sdk.py's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from v2.nacos import (
    BatchRegisterInstanceParam,
    DeregisterInstanceParam,
    Instance,
    ListInstanceParam,
    ListServiceParam,
    NacosException,
    NacosNamingService,
    RegisterInstanceParam,
    SubscribeServiceParam,
)

from tests.nacos_sdk import Clients, close
from tests.peers.nacos import NacosDouble
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
SVC = "providers:com.x.Svc:1.0.0:"


class Recorder:
    """An async subscribe callback (the SDK awaits it) that keeps every instance list it is given."""

    def __init__(self) -> None:
        self.lists: list[list[Instance]] = []

    async def __call__(self, instances: list[Instance]) -> None:
        self.lists.append(list(instances))

    def addresses(self) -> set[str]:
        return {f"{i.ip}:{i.port}" for i in self.lists[-1]} if self.lists else set()

    async def wait_for(self, addresses: set[str], timeout: float = 3.0) -> list[Instance]:
        await wait_for(lambda: self.lists and self.addresses() == addresses, timeout, f"callback {addresses}")
        return self.lists[-1]


async def negate(check: Awaitable[bool]) -> bool:
    return not await check


async def both_healthy(*clients: NacosNamingService) -> bool:
    return all([await client.server_health() for client in clients])


def register(service: str, ip: str, port: int, **kw: Any) -> RegisterInstanceParam:
    return RegisterInstanceParam(service_name=service, ip=ip, port=port, **kw)


# ---------------------------------------------------------------------------------------------------
# connect, register, read


async def test_client_connects_registers_and_lists(nacos: NacosDouble, clients: Clients) -> None:
    started = time.monotonic()
    provider = await clients(nacos)
    connect_s = time.monotonic() - started
    # The SDK sleeps 0.1 s after ConnectionSetupRequest; everything else is loopback round trips.
    assert connect_s < 1.0, f"connect took {connect_s:.3f} s"
    assert nacos.connections == 1
    assert nacos.port > 0 and nacos.grpc_port == nacos.port + 1000

    meta = {
        "side": "provider",
        "methods": "a,b",
        "category": "providers",
        "protocol": "dubbo",
        "path": "com.x.Svc",
    }
    assert await provider.register_instance(register(SVC, "10.0.0.5", 20882, weight=2.5, metadata=meta))

    [stored] = nacos.instances(SVC)
    assert (stored.ip, stored.port, stored.weight, stored.cluster) == ("10.0.0.5", 20882, 2.5, "DEFAULT")
    assert (stored.healthy, stored.enabled, stored.ephemeral) == (True, True, True)
    assert stored.metadata == meta
    assert stored.instance_id == f"10.0.0.5#20882##DEFAULT_GROUP@@{SVC}"

    reader = await clients(nacos)
    [seen] = await reader.list_instances(ListInstanceParam(service_name=SVC, healthy_only=None))
    assert (seen.ip, seen.port, seen.weight, seen.metadata) == ("10.0.0.5", 20882, 2.5, meta)
    assert (seen.clusterName, seen.serviceName, seen.ephemeral) == ("DEFAULT", f"DEFAULT_GROUP@@{SVC}", True)
    assert (await reader.list_services(ListServiceParam())).services == [SVC]


async def test_subscriber_gets_the_full_list_on_every_change(nacos: NacosDouble, clients: Clients) -> None:
    consumer, one, two = await clients(nacos), await clients(nacos), await clients(nacos)
    seen = Recorder()
    await consumer.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen))
    await seen.wait_for(set())  # the subscribe answer itself is delivered, empty or not
    assert nacos.subscribers(SVC) == 1

    await one.register_instance(register(SVC, "10.0.0.1", 20880))
    await seen.wait_for({"10.0.0.1:20880"})
    await two.register_instance(register(SVC, "10.0.0.2", 20880, metadata={"k": "v"}))
    both = await seen.wait_for({"10.0.0.1:20880", "10.0.0.2:20880"})
    assert {i.ip: i.metadata for i in both} == {"10.0.0.1": {}, "10.0.0.2": {"k": "v"}}

    # Re-registering is how a client changes its instance (Nacos has no partial update over gRPC).
    await two.register_instance(register(SVC, "10.0.0.2", 20880, weight=7.0, metadata={"k": "v"}))
    await wait_for(
        lambda: {i.ip: i.weight for i in seen.lists[-1]} == {"10.0.0.1": 1.0, "10.0.0.2": 7.0}, 3, "w"
    )

    await one.deregister_instance(DeregisterInstanceParam(service_name=SVC, ip="10.0.0.1", port=20880))
    await seen.wait_for({"10.0.0.2:20880"})
    await two.deregister_instance(DeregisterInstanceParam(service_name=SVC, ip="10.0.0.2", port=20880))
    await seen.wait_for(set())
    # Every push is acked (NotifySubscriberResponse), after the callback has run.
    await wait_for(lambda: nacos.stats["acks"] == nacos.stats["pushes"] >= 5, 3, "acks")

    # Unsubscribing stops the pushes.
    await consumer.unsubscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen))
    assert nacos.subscribers(SVC) == 0
    count = len(seen.lists)
    await one.register_instance(register(SVC, "10.0.0.1", 20880))
    await asyncio.sleep(0.2)
    assert len(seen.lists) == count


async def test_a_client_publishes_one_entry_per_service(nacos: NacosDouble, clients: Clients) -> None:
    """Nacos keys a connection's publications by service: a second register replaces the first, and a
    deregister removes the entry whatever address it names.  Several instances of one service from
    one client need batch registration."""
    client = await clients(nacos)
    await client.register_instance(register(SVC, "10.0.0.1", 20880))
    await client.register_instance(register(SVC, "10.0.0.1", 20881))
    assert [(i.ip, i.port) for i in nacos.instances(SVC)] == [("10.0.0.1", 20881)]
    await client.deregister_instance(DeregisterInstanceParam(service_name=SVC, ip="10.9.9.9", port=1))
    assert nacos.instances(SVC) == []

    batch = [register(SVC, "10.0.0.1", port, metadata={"n": str(port)}) for port in (20880, 20881, 20882)]
    assert await client.batch_register_instances(
        BatchRegisterInstanceParam(service_name=SVC, instances=batch)
    )
    assert [i.port for i in nacos.instances(SVC)] == [20880, 20881, 20882]
    assert nacos.instances(SVC)[1].metadata == {"n": "20881"}
    # The SDK's batch deregister re-sends the batch without the named instances.
    gone = BatchRegisterInstanceParam(service_name=SVC, instances=[register(SVC, "10.0.0.1", 20881)])
    assert await client.batch_deregister_instances(gone)
    assert [i.port for i in nacos.instances(SVC)] == [20880, 20882]


async def test_shutdown_takes_the_clients_instances_and_notifies(
    nacos: NacosDouble, clients: Clients
) -> None:
    consumer, provider = await clients(nacos), await clients(nacos)
    seen = Recorder()
    await consumer.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen))
    await provider.register_instance(register(SVC, "10.0.0.1", 20880))
    await provider.register_instance(register("other", "10.0.0.1", 20880))
    nacos.register_external(SVC, "10.0.0.7", 20880)  # another provider, which stays
    await seen.wait_for({"10.0.0.1:20880", "10.0.0.7:20880"})
    assert nacos.connections == 2

    await close(provider)
    await seen.wait_for({"10.0.0.7:20880"})
    assert nacos.instances("other") == []
    assert nacos.connections == 1


async def test_disabled_and_unhealthy_instances(nacos: NacosDouble, clients: Clients) -> None:
    """What Nacos sends: pushes and queries leave disabled instances out, the subscribe answer keeps
    them (enabled=false); unhealthy instances are always sent, with healthy=false."""
    consumer = await clients(nacos)
    nacos.register_external(SVC, "10.0.0.1", 20880)
    nacos.register_external(SVC, "10.0.0.2", 20880, enabled=False)
    seen = Recorder()
    await consumer.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen))
    first = await seen.wait_for({"10.0.0.1:20880", "10.0.0.2:20880"})
    assert {i.ip: i.enabled for i in first} == {"10.0.0.1": True, "10.0.0.2": False}

    assert nacos.set_unhealthy(SVC, "10.0.0.1", 20880) == 1
    [pushed] = await seen.wait_for({"10.0.0.1:20880"})
    assert pushed.healthy is False
    assert nacos.set_enabled(SVC, "10.0.0.2", 20880, True) == 1
    await seen.wait_for({"10.0.0.1:20880", "10.0.0.2:20880"})
    assert nacos.set_weight(SVC, "10.0.0.2", 20880, 0.5) == 1
    await wait_for(lambda: {i.ip: i.weight for i in seen.lists[-1]}.get("10.0.0.2") == 0.5, 3, "weight")

    healthy = await consumer.list_instances(
        ListInstanceParam(service_name=SVC, subscribe=False, healthy_only=True)
    )
    assert [i.ip for i in healthy] == ["10.0.0.2"]
    assert nacos.deregister_external(SVC, "10.0.0.2", 20880)
    await seen.wait_for({"10.0.0.1:20880"})


async def test_namespaces_and_groups_are_separate(nacos: NacosDouble, clients: Clients) -> None:
    public, dev = await clients(nacos), await clients(nacos, namespace="dev")
    seen_public, seen_dev, seen_g2 = Recorder(), Recorder(), Recorder()
    await public.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen_public))
    await dev.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen_dev))
    await dev.subscribe(SubscribeServiceParam(service_name=SVC, group_name="G2", subscribe_callback=seen_g2))

    await public.register_instance(register(SVC, "10.0.0.1", 1))
    await dev.register_instance(register(SVC, "10.0.0.2", 2))
    await dev.register_instance(register(SVC, "10.0.0.3", 3, group_name="G2"))

    await seen_public.wait_for({"10.0.0.1:1"})
    await seen_dev.wait_for({"10.0.0.2:2"})
    await seen_g2.wait_for({"10.0.0.3:3"})
    assert [i.ip for i in nacos.instances(SVC)] == ["10.0.0.1"]
    assert [i.ip for i in nacos.instances(SVC, namespace="public")] == ["10.0.0.1"]  # "" is "public"
    assert [i.ip for i in nacos.instances(SVC, namespace="dev")] == ["10.0.0.2"]
    assert [i.ip for i in nacos.instances(SVC, group="G2", namespace="dev")] == ["10.0.0.3"]
    listed = await public.list_instances(
        ListInstanceParam(service_name=SVC, group_name="G2", healthy_only=None)
    )
    assert listed == []


# ---------------------------------------------------------------------------------------------------
# refusals


async def test_bad_input_is_refused_as_nacos_does(nacos: NacosDouble, clients: Clients) -> None:
    client = await clients(nacos)

    async def refusal(param: RegisterInstanceParam) -> NacosException:
        with pytest.raises(NacosException) as caught:
            await client.register_instance(param)
        return caught.value

    # The parameter checker's refusals come back as errorCode 400 and the client raises at once.
    bad_name = await refusal(register("a@@b", "10.0.0.1", 1))
    assert bad_name.error_code == 400 and "'serviceName' is illegal" in bad_name.message
    bad_group = await refusal(register(SVC, "10.0.0.1", 1, group_name="has space"))
    assert bad_group.error_code == 400 and "'group' is illegal" in bad_group.message
    assert (await refusal(register(SVC, "10.0.0.1", 70000))).error_code == 400
    # Nacos 2.3+ caps instance metadata at 1024 characters of keys plus values: a Dubbo provider
    # with many methods hits this (alibaba/nacos#11475).
    big = await refusal(register(SVC, "10.0.0.1", 1, metadata={"methods": "m" * 1020}))
    assert big.error_code == 400 and "'Metadata' is illegal" in big.message
    assert nacos.instances(SVC) == []
    assert nacos.connections == 1

    unlimited = NacosDouble(max_metadata_length=None)
    async with unlimited:
        other = await clients(unlimited)
        assert await other.register_instance(register(SVC, "10.0.0.1", 1, metadata={"methods": "m" * 5000}))


async def test_login_when_the_server_requires_it(clients: Clients) -> None:
    async with NacosDouble(users={"nacos": "s3cret"}) as double:
        good = await clients(double, username="nacos", password="s3cret")
        assert await good.register_instance(register(SVC, "10.0.0.1", 1))

        # The client connects without credentials being checked; every naming call then fails.
        bad = await clients(double, username="nacos", password="wrong")
        with pytest.raises(NacosException, match="get access token failed"):
            await bad.register_instance(register(SVC, "10.0.0.2", 1))
        assert [i.ip for i in double.instances(SVC)] == ["10.0.0.1"]


# ---------------------------------------------------------------------------------------------------
# restarts and outages


async def test_restart_drops_ephemeral_keeps_persistent(nacos: NacosDouble, clients: Clients) -> None:
    client = await clients(nacos)
    await client.register_instance(register(SVC, "10.0.0.1", 1))
    await client.register_instance(register(SVC, "10.0.0.2", 2, ephemeral=False))
    nacos.register_external(SVC, "10.0.0.3", 3)
    port = nacos.port

    await nacos.restart()

    assert nacos.port == port and nacos.connections == 0
    assert [(i.ip, i.ephemeral) for i in nacos.instances(SVC)] == [("10.0.0.2", False)]
    await client.deregister_instance(
        DeregisterInstanceParam(service_name=SVC, ip="10.0.0.2", port=2, ephemeral=False)
    )
    assert nacos.instances(SVC) == []


async def test_after_a_quick_restart_the_next_request_reconnects(
    nacos: NacosDouble, clients: Clients
) -> None:
    """A restart shorter than the SDK's health-check period goes unnoticed by the SDK (its health check
    treats Nacos's 301 "Connection is unregistered" like "server starting" and keeps the dead
    connection), but any naming request answered 301 makes it reconnect and retry.  Its redo task
    then registers and subscribes again; it runs every 30 s, so the test triggers that same task now."""
    provider, consumer = await clients(nacos), await clients(nacos)
    seen = Recorder()
    await consumer.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen))
    await provider.register_instance(register(SVC, "10.0.0.1", 1))
    await seen.wait_for({"10.0.0.1:1"})

    await nacos.restart()
    assert nacos.instances(SVC) == [] and nacos.connections == 0
    assert await provider.server_health() and await consumer.server_health()  # nothing noticed yet

    for client in (provider, consumer):
        # gRPC's own reconnect backoff can make the first calls fail with UNAVAILABLE.
        deadline = time.monotonic() + 5
        while True:
            try:
                await client.list_services(ListServiceParam())
                break
            except NacosException:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    assert nacos.connections == 2

    for client in (provider, consumer):
        await client.grpc_client_proxy.redo_service.start_redo_task()
    await wait_for(lambda: nacos.instances(SVC) and nacos.subscribers(SVC) == 1, 3, "redo")
    nacos.register_external(SVC, "10.0.0.2", 2)  # pushes reach the consumer's new connection
    await seen.wait_for({"10.0.0.1:1", "10.0.0.2:2"})


@pytest.mark.slow
async def test_outage_is_noticed_by_the_health_check_and_the_client_reconnects(
    nacos: NacosDouble, clients: Clients
) -> None:
    """The SDK health-checks an idle connection every 5 s, so a dead server is noticed after 5-10 s;
    cached lists keep being served meanwhile (no callback), and it reconnects by itself."""
    provider, consumer = await clients(nacos), await clients(nacos)
    seen = Recorder()
    await consumer.subscribe(SubscribeServiceParam(service_name=SVC, subscribe_callback=seen))
    await provider.register_instance(register(SVC, "10.0.0.1", 1))
    await seen.wait_for({"10.0.0.1:1"})
    calls = len(seen.lists)

    await nacos.stop()
    started = time.monotonic()
    # Calls fail at once (a plain NacosException 500 wrapping gRPC's UNAVAILABLE), but that does not
    # tell the SDK its connection is gone: server_health() stays True until the next health check.
    with pytest.raises(NacosException):
        await provider.list_services(ListServiceParam())
    assert await provider.server_health()
    await wait_for(lambda: negate(provider.server_health()), 12, "provider notices the outage")
    noticed_s = time.monotonic() - started
    assert 4 < noticed_s < 12, noticed_s  # the first health check at least 5 s after the last request
    # Both must have noticed before the server is back: a health check that reaches the restarted
    # server gets 301, which this SDK counts as healthy, and that client would never reconnect.
    await wait_for(lambda: negate(consumer.server_health()), 6, "consumer notices the outage")

    await nacos.start()
    await wait_for(lambda: nacos.connections == 2, 10, "both clients reconnected")
    await wait_for(lambda: both_healthy(provider, consumer), 2, "both clients running")
    assert len(seen.lists) == calls  # the consumer's callback never saw the outage


# ---------------------------------------------------------------------------------------------------
# as a process


@pytest.mark.process
async def test_runs_as_a_module(clients: Clients) -> None:
    async with NacosDouble() as probe:  # finds a free pair (port, port + 1000) by binding both
        port = probe.port
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.nacos", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.strip() == f"nacos double ready http=127.0.0.1:{port} grpc=127.0.0.1:{port + 1000}"

        target = NacosDouble(port)  # not started: only its address is used
        client = await clients(target)
        await client.register_instance(register(SVC, "10.0.0.1", 20880, metadata={"k": "v"}))
        [seen] = await client.list_instances(
            ListInstanceParam(service_name=SVC, subscribe=False, healthy_only=None)
        )
        assert (seen.ip, seen.port, seen.metadata) == ("10.0.0.1", 20880, {"k": "v"})

        url = f"http://127.0.0.1:{port}/nacos/v1/ns/instance/list?serviceName={SVC}"
        body = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read()))
        assert [(h["ip"], h["port"]) for h in body["hosts"]] == [("10.0.0.1", 20880)]
    finally:
        proc.terminate()
        _, err = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 0, err
