"""`regproxy run` as a user runs it: a real process, real sockets, stopped by a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from regproxy.demo.client import DubboClient
from regproxy.demo.provider import serve
from tests.sidecars import SidecarProc
from tests.test_proxy_e2e import GREET, free_port


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, seconds: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"regproxy exited early with {proc.returncode}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listening on {port}")


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
