"""`regproxy run` as a user runs it: a real process, real sockets, stopped by a signal."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from regproxy.config import Config, ConfigError
from regproxy.demo.client import DubboClient
from regproxy.demo.provider import serve
from regproxy.netutil import detect_advertise_ip
from regproxy.sidecar import DUBBO_QOS_PORT, Sidecar, data_dir_problem, listen_error
from tests.ports import free_port
from tests.sidecars import SidecarProc, loopback_listeners
from tests.test_proxy_e2e import GREET
from tests.wait import wait_for


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, seconds: float = 10) -> None:
    async def listening() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"regproxy exited early with {proc.returncode}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        return True

    await wait_for(listening, seconds, f"a listener on {port}", interval=0.1)


@pytest.mark.process
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_and_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    provider = await serve("127.0.0.1", 0)
    app_port = provider.sockets[0].getsockname()[1]
    egress, ingress, api = free_port(), free_port(), free_port()
    config = tmp_path / "regproxy.yaml"
    config.write_text(
        f"""
clusters:
  - name: greetings
    hosts: [{{address: "127.0.0.1:{ingress}"}}]
routes:
  - name: greetings
    match: {{service: "{GREET}"}}
    cluster: greetings
"""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "regproxy",
        "run",
        "--config",
        str(config),
        "--egress",
        f"127.0.0.1:{egress}",
        "--ingress",
        f"127.0.0.1:{ingress}",
        "--api",
        f"127.0.0.1:{api}",
        "--registry",
        "memory://",
        "--data-dir",
        str(tmp_path),
        "--app-port",
        str(app_port),
        "--log-level",
        "info",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_listening(api, proc)
        # The ingress forwards only what was published through it.
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{api}/pub", json={"service": {"interface": GREET}}) as r,
        ):
            assert r.status == 200, await r.text()
        client = await DubboClient.connect("127.0.0.1", egress)
        assert await client.call(GREET, "sayHi", ["cli"]) == "hi, cli"
        client.close()
        proc.send_signal(sig)
        code = await asyncio.wait_for(proc.wait(), 10)
        stderr = (await proc.stderr.read()).decode()
        assert code == 0, stderr
        assert "egress listening" in stderr and "stopping" in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        provider.close()


@pytest.mark.process
async def test_run_reports_busy_port(tmp_path: Path) -> None:
    busy = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = busy.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "regproxy",
            "run",
            "--egress",
            f"127.0.0.1:{port}",
            "--ingress",
            f"127.0.0.1:{free_port()}",
            stderr=asyncio.subprocess.PIPE,
        )
        code = await asyncio.wait_for(proc.wait(), 10)
        stderr = (await proc.stderr.read()).decode()
        assert code == 1
        assert f"egress: cannot listen on 127.0.0.1:{port}" in stderr
    finally:
        busy.close()


@pytest.mark.process
async def test_unreachable_registry_does_not_block_start(tmp_path: Path) -> None:
    """A registry that cannot be reached: the sidecar starts, says so, and /pub answers 503."""
    sidecar = SidecarProc("x", tmp_path / "x", registries=[f"nacos://127.0.0.1:{free_port()}"], app_port=1)
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{sidecar.admin_url}/readyz") as resp:
            assert resp.status == 503
            assert list((await resp.json())["detail"]["registries"].values()) == ["connecting"]
        status, body = await sidecar.post("/pub", {"service": {"interface": "com.x.Svc", "port": 20880}})
        assert status == 503 and "nacos://127.0.0.1" in body["err_msg"] and "connecting" in body["err_msg"]
    finally:
        assert await sidecar.stop(signal.SIGINT) == 0


async def _run_until_exit(*args: str, seconds: float = 15) -> tuple[int, str]:
    """`regproxy run ARGS` that is expected to exit by itself: (exit code, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy", "run", *args, stderr=asyncio.subprocess.PIPE
    )
    try:
        code = await asyncio.wait_for(proc.wait(), seconds)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    return code, (await proc.stderr.read()).decode()


def _as_flags(settings: dict[str, Any]) -> list[str]:
    return [x for key, value in settings.items() for x in (f"--{key.replace('_', '-')}", str(value))]


# --- data_dir is checked at start ------------------------------------------------------------------


def test_data_dir_problem_says_what_is_wrong_with_the_path(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert data_dir_problem(str(a_file)) == f"{a_file} is not a directory"
    under_a_file = a_file / "sub"
    assert (
        data_dir_problem(str(under_a_file))
        == f"{under_a_file} cannot be created: {a_file} is not a directory"
    )
    # Uncreatable and unwritable even for root (these tests run as root, whom permission bits do not
    # stop): /proc takes no new directories or files, though os.access() calls it writable.
    assert (
        data_dir_problem("/proc/regproxy-nope")
        == "/proc/regproxy-nope cannot be created (No such file or directory)"
    )
    problem = data_dir_problem("/proc")
    assert problem is not None and problem.startswith("/proc is not writable: cannot create a file in it (")
    if os.geteuid() == 0:
        assert os.access("/proc", os.W_OK)  # why the check writes a file rather than asking access()
    # Missing directories are created; nothing is left behind in them.
    fresh = tmp_path / "a" / "b"
    assert data_dir_problem(str(fresh)) is None
    assert fresh.is_dir() and list(fresh.iterdir()) == []
    assert data_dir_problem(str(tmp_path)) is None


def test_relative_data_dir_problem_names_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "state").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert data_dir_problem("state") == f"state ({tmp_path / 'state'}) is not a directory"


@pytest.mark.process
@pytest.mark.parametrize("kind", ["file", "uncreatable", "unwritable"])
async def test_run_refuses_a_bad_data_dir_flag(tmp_path: Path, kind: str) -> None:
    # Was: "ERROR regproxy: Not a directory" with no key or path, or (/proc/nope) a start and a
    # failure at the first save.
    path = {"file": str(tmp_path / "f"), "uncreatable": "/proc/regproxy-nope", "unwritable": "/proc"}[kind]
    (tmp_path / "f").write_text("x")
    flags = _as_flags(loopback_listeners())
    code, stderr = await _run_until_exit(*flags, "--registry", "memory://", "--data-dir", path)
    assert code == 2, stderr
    assert f"config error: data_dir: {path} " in stderr and "(from --data-dir)" in stderr
    assert not Path("/proc/regproxy-nope").exists()


@pytest.mark.process
async def test_run_names_the_config_file_for_its_data_dir(tmp_path: Path) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text("data_dir: /proc/regproxy-nope\n")
    code, stderr = await _run_until_exit("--config", str(config), "--ingress", f"127.0.0.1:{free_port()}")
    assert code == 2, stderr
    assert f"config error: {config}: data_dir: /proc/regproxy-nope cannot be created" in stderr
    assert "(from" not in stderr


async def test_sidecar_start_refuses_the_default_data_dir_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/proc")  # data_dir "." (the default) is then unwritable
    sidecar = Sidecar(
        Config.from_dict(loopback_listeners(registries=["memory://"], advertise_ip="127.0.0.1"))
    )
    with pytest.raises(ConfigError) as info:
        await sidecar.start()
    ((key, problem),) = info.value.errors
    assert (
        key == "data_dir"
        and problem.startswith(". (/proc) is not writable")
        and problem.endswith("(the default)")
    )
    assert sidecar.ingress.server is None  # refused before anything was bound


# --- loopback ingress, no advertise_ip: the loopback address is registered --------------------------


async def test_loopback_ingress_advertises_its_own_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Was: a detected interface address (e.g. 192.0.2.2:PORT), where nothing listens on that port.
    caplog.set_level(logging.INFO, "regproxy")
    config = Config.from_dict(loopback_listeners(registries=["memory://"], data_dir=str(tmp_path)))
    assert config.advertise_ip is None
    sidecar = Sidecar(config)
    assert sidecar.advertise_ip == "127.0.0.1"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"ingress {config.ingress} listens on loopback only: advertising 127.0.0.1" in m for m in warned
    )
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{config.api}/pub", json={"service": {"interface": GREET}}) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"http://{config.admin}/api/v1/publications") as r:
                (registry,) = (await r.json())["registries"]
        (publication,) = registry["publications"]
        assert publication["url"].startswith(f"dubbo://127.0.0.1:{config.ingress.port}/{GREET}?")
    finally:
        await sidecar.stop()
    # A registry is configured: no warning about that.
    assert not any("no registry is configured" in r.getMessage() for r in caplog.records)


def test_explicit_or_wildcard_ingress_keeps_the_advertise_ip(caplog: pytest.LogCaptureFixture) -> None:
    listeners = loopback_listeners()
    explicit = Sidecar(Config.from_dict({**listeners, "advertise_ip": "127.0.0.1"}))
    assert explicit.advertise_ip == "127.0.0.1"
    wildcard = Sidecar(Config.from_dict({**listeners, "ingress": f"0.0.0.0:{free_port()}"}))
    assert wildcard.advertise_ip == detect_advertise_ip()
    assert "loopback only" not in caplog.text


# --- no registry: said at start ---------------------------------------------------------------------


async def test_start_warns_when_no_registry_is_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config.from_dict(loopback_listeners(data_dir=str(tmp_path), advertise_ip="127.0.0.1"))
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        (warning,) = [r.getMessage() for r in caplog.records if "no registry" in r.getMessage()]
        assert "--registry" in warning and "registry: none is configured" in warning
        # ... which is what /pub then answers
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://{config.api}/pub", json={"service": {"interface": GREET}}) as r,
        ):
            assert "registry: none is configured" in (await r.json())["err_msg"]
    finally:
        await sidecar.stop()


# --- a busy API port, and Java Dubbo's QoS port --------------------------------------------------------


def test_listen_error_for_the_qos_port_says_what_to_do() -> None:
    in_use = OSError(errno.EADDRINUSE, "address already in use")
    message = listen_error("api", f"127.0.0.1:{DUBBO_QOS_PORT}", DUBBO_QOS_PORT, in_use)
    assert message.startswith("api: cannot listen on 127.0.0.1:22222: address already in use; ")
    assert "Java Dubbo's QoS server" in message and "dubbo.application.qos-enable=false" in message
    assert "--api HOST:PORT" in message
    assert "--admin HOST:PORT" in listen_error("admin", "127.0.0.1:22222", DUBBO_QOS_PORT, in_use)
    # Another port, or another error on 22222: the plain message.
    assert listen_error("api", "127.0.0.1:22223", 22223, in_use) == (
        "api: cannot listen on 127.0.0.1:22223: address already in use"
    )
    denied = OSError(errno.EACCES, "permission denied")
    assert "QoS" not in listen_error("api", "10.0.0.1:22222", DUBBO_QOS_PORT, denied)


@pytest.mark.process
@pytest.mark.parametrize("which", ["api", "admin"])
async def test_run_reports_a_busy_api_or_admin_port(tmp_path: Path, which: str) -> None:
    busy = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = busy.sockets[0].getsockname()[1]
    try:
        flags = _as_flags(loopback_listeners(**{which: f"127.0.0.1:{port}"}))
        code, stderr = await _run_until_exit(*flags, "--data-dir", str(tmp_path), "--registry", "memory://")
        assert code == 1, stderr
        assert (
            f"{which}: cannot listen on 127.0.0.1:{port}: " in stderr and "address already in use" in stderr
        )
        assert "QoS" not in stderr  # the hint is for 22222 only
    finally:
        busy.close()
