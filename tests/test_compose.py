"""The docker-compose demo: the file is valid for Debian's docker-compose, its wiring is consistent
(Dubbo Admin included: pointed at the sidecars' ZooKeeper), and its topology works — the `command:`
lines of docker-compose.yml, with the config files it mounts from conf/compose/, run here as local
processes against a real ZooKeeper.  Only addresses and ports change (every process of the compose
file has its own network namespace; here they share one), and only through flags, which override
the files.  No container runs here (no Docker daemon): the images are not tried."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from regproxy.config import Config, load_config
from regproxy.demo.provider import GREETINGS_SERVICE
from regproxy.registry.registry_url import RegistryURL
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "regproxy:demo"
APP_COMMANDS = ("demo-provider", "demo-consumer")
# Dubbo Admin 0.5.0's address keys (its application.properties, read by
# org.apache.dubbo.admin.config.ConfigCenter), each given as an environment variable of that name.
ADMIN_ADDRESS_KEYS = ("admin.registry.address", "admin.config-center", "admin.metadata-report.address")


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the `<<: *anchor` merges
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def option(command: list[str], flag: str) -> str:
    """The value of ``flag`` in an argv list (the last one wins, as with argparse)."""
    values = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == flag]
    assert values, f"{flag} missing from {command}"
    return values[-1]


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file of this checkout that the compose file mounts at ``container_path``."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / container_path[len(target.rstrip("/")) + 1 :]).resolve()
    raise AssertionError(f"{container_path} is not under any volume of {service}")


@dataclass
class Pair:
    """An application and the sidecar sharing its network namespace."""

    app: str
    app_command: list[str]
    sidecar: str
    sidecar_command: list[str]
    config_file: Path
    config: Config = field(init=False)

    def __post_init__(self) -> None:
        self.config = load_config(self.config_file)


def pairs() -> list[Pair]:
    services = compose()["services"]
    found = []
    for name, svc in services.items():
        mode = svc.get("network_mode", "")
        if not mode.startswith("service:"):
            continue
        app = mode.removeprefix("service:")
        command = [str(a) for a in svc["command"]]
        config_file = host_path(svc, option(command, "--config"))
        found.append(Pair(app, [str(a) for a in services[app]["command"]], name, command, config_file))
    return found


# -- the file ----------------------------------------------------------------------------------------


@pytest.mark.process
def test_docker_compose_config_validates() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is missing: run scripts/test-deps.sh (as root), it installs Debian's package",
            pytrace=False,
        )
    r = subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_wiring_is_consistent() -> None:
    doc = compose()
    services = doc["services"]
    assert services["zookeeper"]["image"] == "zookeeper:3.8"
    assert services["nacos"]["image"] == "nacos/nacos-server:v2.3.2"
    assert services["nacos"]["environment"]["MODE"] == "standalone"
    ours = {n: s for n, s in services.items() if s.get("image") == IMAGE}
    for name, svc in ours.items():
        assert svc.get("build") == ".", name  # every one can build the image (Dockerfile)
        assert str(svc["command"][0]) in (*APP_COMMANDS, "run"), name
    the_pairs = pairs()
    assert sorted(p.app for p in the_pairs) == ["consumer", "provider-v1", "provider-v2"]
    assert len(ours) == 2 * len(the_pairs)  # every application has its sidecar
    versions = set()
    for p in the_pairs:
        c = p.config
        assert p.config_file.parent == ROOT / "conf" / "compose"
        assert c.registries == [RegistryURL.parse("zookeeper://zookeeper:2181")], p.sidecar
        assert "zookeeper" in services[p.sidecar]["depends_on"]
        api = f"http://{c.api}"
        if p.app_command[0] == "demo-provider":
            # The application listens where its sidecar's ingress delivers and publishes through its API.
            assert int(option(p.app_command, "--port")) == c.app_port
            assert option(p.app_command, "--host") == "127.0.0.1"
            assert option(p.app_command, "--publish") == api
            assert c.ingress.host == "0.0.0.0"  # reachable from the other containers
            versions.add(option(p.app_command, "--greetings-version"))
        else:
            assert option(p.app_command, "--subscribe") == api
            assert option(p.app_command, "--target") == str(c.egress)
            assert option(p.app_command, "--greetings-version") == "1.0.0,2.0.0"
            assert option(p.app_command, "--count") == "0"  # calls until stopped
    assert versions == {"1.0.0", "2.0.0"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["regproxy"]' in dockerfile
    # Nothing of the demo is published beyond this host.
    published = {n: [str(p) for p in s.get("ports", [])] for n, s in services.items()}
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports), published


def test_dubbo_admin_is_pointed_at_the_demo_zookeeper() -> None:
    """The console writes its rules where the sidecars read them: the one ZooKeeper they all use."""
    services = compose()["services"]
    admin = services["dubbo-admin"]
    image, _, tag = admin["image"].partition(":")
    assert image == "apache/dubbo-admin"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), admin["image"]  # a release, never `latest`
    assert admin["ports"] == ["127.0.0.1:8080:8080"]  # the UI (0.5.0 serves on 8080), loopback only
    (zookeeper,) = {url for p in pairs() for url in p.config.registries}
    (zk_host,) = zookeeper.hosts
    assert services[zk_host.host]["image"].startswith("zookeeper:")
    assert zk_host.host in admin["depends_on"]
    env = admin["environment"]
    assert isinstance(env, dict) and set(ADMIN_ADDRESS_KEYS) <= set(env), env
    for key in ADMIN_ADDRESS_KEYS:
        assert RegistryURL.parse(env[key]) == zookeeper, key


# -- the topology, as local processes ----------------------------------------------------------------


class Proc:
    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, stdout_pipe: bool = False) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "regproxy", *self.argv,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else log, stderr=log, cwd=str(ROOT),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        finally:
            log.close()

    async def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.log()}") from None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def log(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return "(no log)"


ANSWER = re.compile(
    r"sayHi:([\d.]+)\('bob'\) -> 'hi, bob, from (greetings-v\d) \(GreetingsService ([\d.]+)\)'"
)


@pytest.mark.process
@pytest.mark.timeout(120)
async def test_compose_topology_as_local_processes(zk: Any, zk_server: Any, tmp_path: Path) -> None:
    sidecars: list[Proc] = []
    providers: list[Proc] = []
    consumer: Proc | None = None
    for p in pairs():
        # Each pair gets its own loopback ports, as each compose pair has its own network namespace.
        egress, ingress, api, admin, app_port = (free_port() for _ in range(5))
        data_dir = tmp_path / p.sidecar
        data_dir.mkdir()
        sidecar_argv = [str(p.config_file) if a == option(p.sidecar_command, "--config") else a
                        for a in p.sidecar_command]  # fmt: skip
        sidecar_argv += [
            "--registry", f"zookeeper://{zk_server.hosts}",
            "--egress", f"127.0.0.1:{egress}", "--ingress", f"127.0.0.1:{ingress}",
            "--api", f"127.0.0.1:{api}", "--admin", f"127.0.0.1:{admin}",
            "--app-port", str(app_port), "--advertise-ip", "127.0.0.1", "--data-dir", str(data_dir),
        ]  # fmt: skip
        sidecars.append(Proc(p.sidecar, sidecar_argv, tmp_path))
        api_url = f"http://127.0.0.1:{api}"
        if p.app_command[0] == "demo-provider":
            providers.append(
                Proc(p.app, [*p.app_command, "--port", str(app_port), "--publish", api_url], tmp_path)
            )
        else:
            consumer = Proc(
                p.app, [*p.app_command, "--target", f"127.0.0.1:{egress}", "--subscribe", api_url], tmp_path
            )
    assert consumer is not None and len(providers) == 2
    everyone = [*sidecars, *providers, consumer]
    try:
        # All at once, as `docker-compose up` starts them: the applications wait for their sidecars.
        for proc in [*sidecars, *providers]:
            await proc.start()
        await consumer.start(stdout_pipe=True)
        seen = await _answers_from_both_versions(consumer, everyone)
        assert seen == {"1.0.0": {"greetings-v1"}, "2.0.0": {"greetings-v2"}}

        # The providers' sidecars registered their ingress in the real ZooKeeper.
        registered = zk.get_children(f"/dubbo/{GREETINGS_SERVICE}/providers")
        assert len(registered) == 2, registered

        assert await consumer.stop() == 0, consumer.log()
        assert consumer.proc is not None and consumer.proc.stdout is not None
        rest = (await consumer.proc.stdout.read()).decode()
        assert re.search(r"^\d+ calls succeeded, 0 failed$", rest, re.M), rest
        for proc in providers:
            assert await proc.stop() == 0, proc.log()
        # A provider application takes itself out of the registry (/unpub) before it goes away.
        assert zk.get_children(f"/dubbo/{GREETINGS_SERVICE}/providers") == []
        for proc in sidecars:
            assert await proc.stop() == 0, proc.log()
    finally:
        for proc in everyone:
            await proc.kill()


async def _answers_from_both_versions(consumer: Proc, everyone: list[Proc]) -> dict[str, set[str]]:
    """Read the consumer's output until both versions answered; version called -> who answered."""
    assert consumer.proc is not None and consumer.proc.stdout is not None
    seen: dict[str, set[str]] = {}
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while set(seen) != {"1.0.0", "2.0.0"}:
        try:
            raw = await asyncio.wait_for(consumer.proc.stdout.readline(), max(deadline - loop.time(), 0.01))
        except TimeoutError:
            raw = None
        if not raw:
            logs = "\n\n".join(f"== {p.name}\n{p.log()}" for p in everyone)
            raise AssertionError("no answers from both versions:\n" + "\n".join(lines) + "\n" + logs)
        line = raw.decode().rstrip("\n")
        lines.append(line)
        assert "failed" not in line, "\n".join(lines) + "\n" + consumer.log()
        m = ANSWER.search(line)
        if m:
            called, who, answered = m.groups()
            assert called == answered, line  # a version's calls reach that version's provider only
            seen.setdefault(called, set()).add(who)
    return seen
