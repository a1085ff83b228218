"""The Nacos double and the official nacos-sdk-python 2.0.11 clients that the Nacos tests drive against it.

Fixtures (tests/conftest.py makes them every test's): ``nacos``, a running double; ``clients``, which
connects naming clients; ``config_clients``, which connects config clients.  Clients get their own log
and cache directories under tmp_path (by default the SDK writes to ~/logs/nacos and ~/nacos/cache and
reloads that cache at start), and are shut down after the test.

``listen`` adds a config listener and waits until the double holds the listen.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from v2.nacos import ClientConfig, ClientConfigBuilder, NacosConfigService, NacosNamingService

from regproxy.registry.nacos import close_config_service
from tests.peers.nacos import DEFAULT_GROUP, NacosDouble
from tests.wait import wait_for

Clients = Callable[..., Awaitable[NacosNamingService]]
ConfigClients = Callable[..., Awaitable[NacosConfigService]]


@pytest.fixture
async def nacos() -> AsyncIterator[NacosDouble]:
    async with NacosDouble() as double:
        yield double


def client_config(double: NacosDouble, directory: Path, namespace: str = "", **options: str) -> ClientConfig:
    """A client configuration for ``double``; ``options`` name ClientConfigBuilder methods
    (``username="nacos"`` calls ``.username("nacos")``)."""
    builder = (
        ClientConfigBuilder()
        .server_address(double.address)
        .namespace_id(namespace)
        .log_dir(str(directory / "logs"))
        .cache_dir(str(directory / "cache"))
        .load_cache_at_start(False)
    )
    for name, value in options.items():
        getattr(builder, name)(value)
    return builder.build()


@contextlib.contextmanager
def _sdk_log_handlers(module: str) -> Iterator[None]:
    """The SDK adds a file handler to the logger named for its module on every client: remove them."""
    sdk_log = logging.getLogger(module)
    before = list(sdk_log.handlers)
    try:
        yield
    finally:
        for handler in sdk_log.handlers[:]:
            if handler not in before:
                sdk_log.removeHandler(handler)
                handler.close()


async def close(client: NacosNamingService) -> None:
    # 2.0.11's shutdown() closes the connection, then awaits ServiceInfoUpdater.stop(), which is not
    # a coroutine: the TypeError comes after the work is done.
    with contextlib.suppress(TypeError):
        await client.shutdown()


async def close_config(client: NacosConfigService) -> None:
    await close_config_service(client, 5.0)


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    """``await clients(double, namespace=..., username=..., ...)`` -> a connected naming client."""
    made: list[NacosNamingService] = []

    async def connect(double: NacosDouble, namespace: str = "", **options: str) -> NacosNamingService:
        config = client_config(double, tmp_path / f"naming-{len(made)}", namespace, **options)
        # Without this the SDK never tells a subscriber that the last instance went away.
        config.update_cache_when_empty = True
        client = await NacosNamingService.create_naming_service(config)
        made.append(client)
        return client

    with _sdk_log_handlers("naming"):
        try:
            yield connect
        finally:
            for client in made:
                await close(client)


@pytest.fixture
async def config_clients(tmp_path: Path) -> AsyncIterator[ConfigClients]:
    """``await config_clients(double, namespace=..., username=..., ...)`` -> a connected config client."""
    made: list[NacosConfigService] = []

    async def connect(double: NacosDouble, namespace: str = "", **options: str) -> NacosConfigService:
        config = client_config(double, tmp_path / f"config-{len(made)}", namespace, **options)
        client = await NacosConfigService.create_config_service(config)
        made.append(client)
        return client

    with _sdk_log_handlers("config"):
        try:
            yield connect
        finally:
            for client in made:
                await close_config(client)


def connection_id(client: NacosConfigService) -> str:
    """The id the server gave the config client's connection (its one "task": under 3000 listens)."""
    [rpc_client] = client.grpc_client_proxy.rpc_client_manager.get_all_client_entries().values()
    return str(rpc_client.current_connection.get_connection_id())


async def listen(
    double: NacosDouble,
    client: NacosConfigService,
    data_id: str,
    listener: Callable[[str, str, str, str], Awaitable[None]],
    group: str = DEFAULT_GROUP,
) -> str:
    """``client.add_listener`` and wait until ``double`` holds the listen; the md5 the client sent.

    add_listener itself sends nothing: the SDK's listen task sends every listen not yet in sync with
    the server when it wakes, which is every 5 s, on connect, and after a push.  This wakes it now, as
    the SDK's own connect does, instead of the test waiting out the rest of those 5 s.
    """
    await client.add_listener(data_id, group, listener)
    client.grpc_client_proxy.execute_config_listen_channel.put_nowait(None)
    me = connection_id(client)

    def listens() -> dict[str, str]:
        return double.config_listeners(data_id, group=group, namespace=client.namespace_id)

    await wait_for(lambda: me in listens(), 3, f"the listen to {data_id}")
    return listens()[me]
