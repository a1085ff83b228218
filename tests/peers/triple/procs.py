"""The Triple peers as processes, for tests: start a server (returns once it prints ``READY``), run a
client scenario (returns its JSON), stop a server.

Kinds of peer (``Kind``):

* ``"ad"``: apache-dubbo, ad_server.py / ad_client.py, run by the apache-dubbo venv's python (venv.py);
* ``"grpc"``: grpcio, grpc_server.py / grpc_client.py, run by this interpreter;
* ``"capture"``: h2_capture.py (a server only), run by this interpreter.

Processes start with the standard library's subprocess (from a worker thread in the coroutines),
never with the loop's subprocess support: tests/sidecars.py ``Child`` says why (uvloop forks through
libuv, running gRPC's fork handlers in the child; _posixsubprocess uses vfork and runs none).  A
server's stdout is read by a thread of its own, so its JSON events (``events()``) can be awaited
(``wait_event``) while the test goes on; its stderr (apache-dubbo's log) is kept for failure messages.

Tests that use these must be marked ``process`` (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from tests.peers.triple import greeter
from tests.peers.triple.venv import ROOT, apache_dubbo_python
from tests.ports import free_port
from tests.sidecars import terminate

Kind = Literal["ad", "grpc", "capture"]
ClientKind = Literal["ad", "grpc"]

_SERVER_MODULE = {
    "ad": "tests.peers.triple.ad_server",
    "grpc": "tests.peers.triple.grpc_server",
    "capture": "tests.peers.triple.h2_capture",
}
_CLIENT_MODULE = {"ad": "tests.peers.triple.ad_client", "grpc": "tests.peers.triple.grpc_client"}


def python_for(kind: Kind) -> str:
    """The interpreter a peer of ``kind`` runs in (the apache-dubbo venv is built on first use)."""
    return str(apache_dubbo_python()) if kind == "ad" else sys.executable


def _env() -> dict[str, str]:
    # Unbuffered: a server's READY and events must reach the reader as they are printed.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_ENABLE_FORK_SUPPORT": "false"}


class _Lines:
    """A pipe read line by line by a daemon thread, the lines kept (the last ``keep`` of them)."""

    def __init__(self, pipe: Any, keep: int = 10_000) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        for raw in pipe:
            with self.changed:
                self.lines.append(raw.rstrip("\n"))
                self.changed.notify_all()
        pipe.close()

    def snapshot(self) -> list[str]:
        with self.changed:
            return list(self.lines)


class ServerProc:
    """One peer server process on ``port``; ``name`` starts its greetings."""

    def __init__(self, kind: Kind, name: str, port: int, popen: subprocess.Popen[str]) -> None:
        self.kind = kind
        self.name = name
        self.port = port
        self.pid = popen.pid
        self._popen = popen
        self._stdout = _Lines(popen.stdout)
        self._stderr = _Lines(popen.stderr, keep=400)

    @property
    def target(self) -> str:
        """Where a client reaches it: ``tri://127.0.0.1:<port>``."""
        return f"tri://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines it printed so far (``greeter.emit``), in order."""
        out = []
        for line in self._stdout.snapshot():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def output(self) -> str:
        """Its stdout and the end of its stderr, for an assertion's message."""
        return (
            f"--- {self.kind} server {self.name} (pid {self.pid}, exit {self.returncode}) stdout:\n"
            + "\n".join(self._stdout.snapshot()[-60:])
            + "\n--- stderr:\n"
            + "\n".join(self._stderr.snapshot()[-60:])
        )

    def mark(self) -> int:
        """How many events it printed so far: ``wait_event(..., since=mark)`` looks only at later ones."""
        return len(self.events())

    async def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0, since: int = 0
    ) -> dict[str, Any]:
        """The first event from index ``since`` on that ``match`` accepts, once printed; AssertionError
        after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events()[since:]:
                if match(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event within {timeout} s\n{self.output()}")
            await asyncio.sleep(0.02)

    def _wait_ready(self, timeout: float) -> None:
        want = greeter.ready_line(self.port)
        deadline = time.monotonic() + timeout
        while want not in self._stdout.snapshot():
            if self.returncode is not None:
                raise AssertionError(f"the server exited before it was ready\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop_now()
                raise AssertionError(f"the server was not ready within {timeout} s\n{self.output()}")
            time.sleep(0.02)

    def stop_now(self, timeout: float = 5.0) -> int:
        """SIGTERM (every peer server exits at once on it), SIGKILL after ``timeout``; the exit status.
        Blocks: for sync fixtures (``stop`` is the same for a coroutine)."""
        return terminate(self._popen, timeout)

    async def stop(self, timeout: float = 5.0) -> int:
        return await asyncio.to_thread(self.stop_now, timeout)

    @classmethod
    def start(
        cls,
        kind: Kind,
        *,
        name: str = "p1",
        port: int | None = None,
        registry: str | None = None,
        log_headers: bool = False,
        extra: list[str] | None = None,
        timeout: float = 30.0,
    ) -> ServerProc:
        """A peer server of ``kind`` on ``port`` (a free one when None), ready when this returns.
        ``registry`` (``zookeeper://host:port``, apache-dubbo only) makes it register itself there.
        Blocks: for sync fixtures (``start_server`` is the same for a coroutine)."""
        port = port or free_port()
        args = [python_for(kind), "-m", _SERVER_MODULE[kind], "--port", str(port)]
        if kind != "capture":
            args += ["--name", name]
            if log_headers:
                args.append("--log-headers")
        if registry:
            if kind != "ad":
                raise ValueError("only the apache-dubbo server registers itself")
            args += ["--registry", registry]
        args += extra or []
        popen = subprocess.Popen(
            args, cwd=str(ROOT), env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
        )  # fmt: skip
        proc = cls(kind, name, port, popen)
        proc._wait_ready(timeout)
        return proc


async def start_server(kind: Kind, **kwargs: Any) -> ServerProc:
    """``ServerProc.start`` from a worker thread: the loop runs on while the server starts."""
    return await asyncio.to_thread(functools.partial(ServerProc.start, kind, **kwargs))


@contextlib.asynccontextmanager
async def running_server(kind: Kind, **kwargs: Any) -> AsyncIterator[ServerProc]:
    """``start_server`` for the length of a block; stopped however the block ends."""
    proc = await start_server(kind, **kwargs)
    try:
        yield proc
    finally:
        await proc.stop()


class ClientError(AssertionError):
    """A client that printed no result line (a crash, a hang past its timeout)."""


async def run_client(
    kind: ClientKind,
    scenario: str,
    *args: str,
    target: str | None = None,
    registry: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Run one scenario of a peer client (ad_client.py / grpc_client.py: their docstrings list them)
    against ``target`` (``tri://host:port``) or, apache-dubbo only, ``registry``; its JSON result."""
    python = await asyncio.to_thread(python_for, kind)
    cmd = [python, "-m", _CLIENT_MODULE[kind]]
    if registry:
        if kind != "ad":
            raise ValueError("only the apache-dubbo client finds providers in a registry")
        cmd += ["--registry", registry]
    elif target:
        cmd += ["--target", target]
    else:
        raise ValueError("a target or a registry")
    cmd += [scenario, *args]
    try:
        done = await asyncio.to_thread(
            subprocess.run, cmd, cwd=str(ROOT), env=_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, errors="replace", timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"{' '.join(cmd[1:])} ran past {timeout} s\n{exc.stdout}\n{exc.stderr}") from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result: dict[str, Any] = json.loads(line)
                if result.get("scenario") == scenario:
                    return result
    raise ClientError(
        f"{' '.join(cmd[1:])} exited {done.returncode} with no result\n--- stdout:\n{done.stdout}"
        f"\n--- stderr:\n{done.stderr[-4000:]}"
    )


__all__ = [
    "ClientError",
    "ClientKind",
    "Kind",
    "ServerProc",
    "python_for",
    "run_client",
    "running_server",
    "start_server",
]
