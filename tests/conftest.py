"""Shared test setup: the async tests run on uvloop, the loop regproxy uses in production; every test
is marked with what it needs (below), and a ``unit`` test is held to needing nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

# Before gRPC is imported (the Nacos SDK and its double load it): gRPC's fork handlers off.  Its core
# registers pthread_atfork handlers that run in every forked child, and uvloop starts children with
# libuv's fork; with the double's gRPC threads up, such a child died of SIGSEGV before exec in two
# clean-clone runs.  Nothing here forks a process that goes on to use gRPC.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

from tests.memory import make_memory, memory_stores  # noqa: F401  (the memory:// tests' fixtures)
from tests.metadata_fetcher import fast_retries  # noqa: F401  (application-level discovery's tests)
from tests.nacos_sdk import clients, config_clients, nacos  # noqa: F401  (the Nacos tests' fixtures)
from tests.topology import world  # noqa: F401  (a fixture, shared by the end-to-end tests)
from tests.zkserver import MAIN_CLASS as ZK_MAIN_CLASS
from tests.zkserver import ZooKeeperNotInstalled, ZooKeeperServer, delete_trees


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
    """A plain kazoo client (the "independent reader") on a running server whose /dubbo and /services
    (Dubbo 3's application instances) are empty."""
    if not zk_server.running:  # a previous test stopped it and failed before starting it again
        zk_server.start()
    # Reconnects quickly after the restart drills (kazoo's default backoff grows to a minute).
    client = KazooClient(
        hosts=zk_server.hosts, timeout=10.0, connection_retry=KazooRetry(max_tries=-1, max_delay=0.5)
    )
    client.start(timeout=15)
    delete_trees(client)
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


# ---------------------------------------------------------------------------------------------------
# Markers: what a test needs to run.  pyproject.toml registers them (--strict-markers: a typo fails).
#
#   zookeeper  a real ZooKeeper: given here to every test that uses the zk or zk_server fixture
#   process    starts processes (`regproxy run`, apps, scripts, make, docker-compose, ip): declared in
#              the test module (``pytestmark``) or on the test, or given here to every test using a
#              fixture that requests ``needs_process`` (tests/topology.py's world does).  ZooKeeper's
#              own server is the zookeeper mark's, not this one's.
#   netns      builds network namespaces (root and iproute2): declared in the test module; given
#              process here too (`ip`, and what runs in the namespaces)
#   browser    drives a web browser (headless Chromium through chromedriver): given here to every
#              test using tests/browser.py's browser fixture; implies process (the browser and its
#              driver are processes)
#   slow       takes a second or more on its own (2 cores): declared on the test; every process test
#              gets it here (a Python process importing regproxy takes about a second)
#   unit       none of zookeeper, process, netns, browser: given here to every test that has none of
#              them, so a new test is a unit test until it says otherwise.  `make test-fast` runs the
#              unit tests that are not slow.
#
# A test without the process mark that starts a process fails at once, naming the mark
# (_processes_only_where_marked): the marks stay true as tests change.

NEEDS = ("zookeeper", "process", "netns", "browser")
# By fixture: a test gets the marks of every fixture it uses, directly or through other fixtures.
FIXTURE_NEEDS = {
    "zk_server": ("zookeeper",),
    "zk": ("zookeeper",),
    "needs_process": ("process",),
    "browser": ("browser",),  # tests/browser.py
}


@pytest.fixture
def needs_process() -> None:
    """Requested by a fixture that starts processes: every test using that fixture is marked process."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, needs in FIXTURE_NEEDS.items():
            if fixture in fixtures:
                for need in needs:
                    item.add_marker(need)
        if item.get_closest_marker("netns") or item.get_closest_marker("browser"):
            item.add_marker("process")  # `ip` and what runs in the namespaces; chromium and its driver
        if item.get_closest_marker("process"):
            item.add_marker("slow")  # starting a Python process that imports regproxy takes a second
        if not any(item.get_closest_marker(need) for need in NEEDS):
            item.add_marker("unit")


@pytest.fixture(autouse=True)
def _processes_only_where_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("process") is not None:
        return
    popen_init = subprocess.Popen.__init__

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(
            f"{request.node.nodeid} starts a process but is not marked process: mark it "
            "(pytestmark = pytest.mark.process in its module, or @pytest.mark.process on the test)"
        )

    def popen_zookeeper_only(self: subprocess.Popen[Any], args: Any, *more: Any, **kwargs: Any) -> None:
        if ZK_MAIN_CLASS not in args:  # a restart of the session's ZooKeeper is the zookeeper mark's
            refuse()
        popen_init(self, args, *more, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_zookeeper_only)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", refuse)
