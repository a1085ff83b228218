"""Shared test setup: the async tests run on uvloop, the loop regproxy uses in production."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry

from tests.topology import world  # noqa: F401  (a fixture, shared by the end-to-end tests)
from tests.zkserver import ZooKeeperNotInstalled, ZooKeeperServer


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


# ---------------------------------------------------------------------------------------------------
# A real ZooKeeper (Debian's zookeeper package; scripts/test-deps.sh installs it).  One server per
# test session; each test gets it running with an empty /dubbo.


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A ZooKeeper server on a free loopback port (``.hosts``); never skipped: missing -> fail."""
    try:
        ZooKeeperServer.check_installed()
    except ZooKeeperNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zk(zk_server: ZooKeeperServer) -> Any:
    """A plain kazoo client (the "independent reader") on a running server whose /dubbo is empty."""
    if not zk_server.running:  # a previous test stopped it and failed before starting it again
        zk_server.start()
    # Reconnects quickly after the restart drills (kazoo's default backoff grows to a minute).
    client = KazooClient(
        hosts=zk_server.hosts, timeout=10.0, connection_retry=KazooRetry(max_tries=-1, max_delay=0.5)
    )
    client.start(timeout=15)
    with contextlib.suppress(NoNodeError):
        client.delete("/dubbo", recursive=True)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@pytest.fixture(autouse=True)
def _restore_log_level() -> Iterator[None]:
    """Tests that reload the log level (the admin API, a sidecar's config) leave it as it was."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
