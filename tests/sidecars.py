"""Sidecars as separate processes, the way users run them: `regproxy run` with flags."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Prometheus text as (sample name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Samples, name: str, **labels: str) -> float:
    return m[(name, frozenset(labels.items()))]


def loopback_listeners(**extra: Any) -> dict[str, Any]:
    """Config keys for an in-process sidecar: its four listeners and its app port on loopback, all
    five picked together so they differ; ``extra`` adds or replaces keys."""
    egress, ingress, api, admin, app_port = free_ports(5)
    return {
        "egress": f"127.0.0.1:{egress}",
        "ingress": f"127.0.0.1:{ingress}",
        "api": f"127.0.0.1:{api}",
        "admin": f"127.0.0.1:{admin}",
        "app_port": app_port,
        **extra,
    }


def terminate(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM ``proc``, SIGKILL it if it has not exited ``timeout`` seconds later; its exit status.
    Blocks (a sync fixture's or a worker thread's)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class Child:
    """A child process started with the standard library's subprocess from a worker thread, with
    the part of asyncio.subprocess.Process the tests use (``pid``, ``returncode``, ``send_signal``,
    ``kill``, ``await wait()``).

    Not the loop's subprocess: uvloop forks with libuv, and a fork runs the pthread_atfork handlers
    of every library loaded, gRPC's among them once the Nacos double (tests/peers/nacos) has served
    in this process: in two clean-clone runs a sidecar so started died of SIGSEGV before exec
    (tests/conftest.py also turns gRPC's fork handlers off).  _posixsubprocess uses vfork and runs
    no handler between fork and exec."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @classmethod
    async def spawn(cls, args: list[str], **kwargs: Any) -> Child:
        return cls(await asyncio.to_thread(subprocess.Popen, args, **kwargs))

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """The exit status, once the process has exited (cancel-safe: it polls)."""
        while (code := self._popen.poll()) is None:
            await asyncio.sleep(0.02)
        return code


class SidecarProc:
    """One `regproxy run` process on free loopback ports, its log in ``data_dir/regproxy.log``."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        registries: list[str],
        app_port: int,
        advertise_ip: str = "127.0.0.1",
        extra: list[str] | None = None,
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.registries = registries
        self.app_port = app_port
        self.advertise_ip = advertise_ip
        self.extra = extra or []
        # Never handed out before in this process, so the four differ from each other, from the
        # app's (when the test picked it with the same helper) and from every other sidecar's.
        ports = free_ports(4)
        while app_port in ports:
            ports = free_ports(4)
        self.egress, self.ingress, self.api, self.admin = ports
        self.proc: Child | None = None
        self.log_path = data_dir / "regproxy.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    async def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "regproxy", "run", "--data-dir", str(self.data_dir),
                "--egress", f"127.0.0.1:{self.egress}", "--ingress", f"127.0.0.1:{self.ingress}",
                "--api", f"127.0.0.1:{self.api}", "--admin", f"127.0.0.1:{self.admin}",
                "--app-port", str(self.app_port), "--advertise-ip", self.advertise_ip,
                "--log-level", "debug"]  # fmt: skip
        for reg in self.registries:
            args += ["--registry", reg]
        args += self.extra
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = await Child.spawn(
                args, stdout=log, stderr=log, cwd=str(ROOT), env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"sidecar {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                # The admin listener binds last (Sidecar.start): once it answers, so do the others.
                _r, w = await asyncio.open_connection("127.0.0.1", self.admin)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"sidecar {self.name} did not start:\n{self.log_tail()}")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"sidecar {self.name} did not stop on {sig}:\n{self.log_tail()}") from None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def until_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for /readyz to answer 200; its body. AssertionError with the log after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status, body = await self.admin_get("/readyz")
            if status == 200:
                return body
            if loop.time() > deadline:
                raise AssertionError(f"not ready after {timeout} s: {body}\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(self.api_url + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def admin_get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(self.admin_url + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def metrics(self) -> Samples:
        """The admin port's ``/metrics``, parsed (``samples``)."""
        async with aiohttp.ClientSession() as http, http.get(self.admin_url + "/metrics") as resp:
            return samples(await resp.text())
