"""The processes a benchmark runs against, on loopback: a provider and the paths to it.

* ``direct``: the generator dials the provider;
* ``haproxy``: generator → HAProxy → HAProxy → provider, two L4 relays in C (``mode tcp``, one
  thread each, so that each hop has one core's worth of event loop like a regproxy process); for
  Triple (``benchmarks.triple``), two HTTP/2 proxies instead (``mode http``, ``proto h2``);
* ``regproxy``: generator → egress of a consumer-side ``regproxy run`` → ingress of a
  provider-side ``regproxy run`` → provider. Routes come from a real ZooKeeper (the provider
  sidecar publishes the provider with ``/pub``, the consumer sidecar subscribes with ``/sub``), or,
  with ``memory://``, from a static cluster in the consumer sidecar's config file.

Every process is started as users run it (a command line, its own log file in the work folder)
and exposes its pid, so that CPU time is read from /proc for exactly the processes of a hop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import yaml

from benchmarks.payload import METHOD, SERVICE

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class TopologyError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Proc:
    """One child process with its output in ``log``; stopped by ``stop``."""

    def __init__(self, name: str, args: list[str], log: Path, *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise TopologyError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _tails(procs: list[Proc]) -> str:
    return "\n".join(f"--- {p.name} ({p.log}) ---\n{p.log_tail()}" for p in procs)


def wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TopologyError(f"{proc.name} does not listen on {HOST}:{port} after {timeout} s:\n{proc.log_tail()}")


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# --------------------------------------------------------------------------------------------------
# Providers


class Provider:
    """The application every topology ends at: the fast provider, the demo provider, or the Triple
    echo provider (``benchmarks.triprovider``, which also counts its answers on ``stats_port``)."""

    def __init__(self, workdir: Path, kind: str = "fast") -> None:
        self.kind = kind
        self.port = free_port()
        self.stats_port: int | None = None
        if kind == "triple":
            self.stats_port = free_port()
            args = [sys.executable, "-m", "benchmarks.triprovider", "--port", str(self.port),
                    "--stats-port", str(self.stats_port)]  # fmt: skip
        elif kind == "fast":
            args = [sys.executable, "-m", "benchmarks.fastprovider", "--port", str(self.port)]
        elif kind == "demo":
            args = [sys.executable, "-m", "regproxy", "demo-provider", "--port", str(self.port),
                    "--log-level", "warning"]  # fmt: skip
        else:
            raise ValueError(f"unknown provider kind {kind!r}")
        self.proc = Proc(f"{kind} provider", args, workdir / f"provider-{kind}.log")
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.proc.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


# --------------------------------------------------------------------------------------------------
# Topologies


class Topology(Protocol):
    name: str

    @property
    def port(self) -> int: ...  # where the generator connects

    @property
    def proxies(self) -> dict[str, int]: ...  # name -> pid, in the order requests pass them

    @property
    def proxy_pids(self) -> list[int]: ...

    def check_alive(self) -> None: ...

    def log_tails(self) -> str: ...  # the end of each process's log, to explain a failed run

    def stop(self) -> None: ...


class Direct:
    name = "direct"

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @property
    def port(self) -> int:
        return self.provider.port

    @property
    def proxies(self) -> dict[str, int]:
        return {}

    @property
    def proxy_pids(self) -> list[int]:
        return []

    def check_alive(self) -> None:
        self.provider.proc.check_alive()

    def log_tails(self) -> str:
        return _tails([self.provider.proc])

    def stop(self) -> None:
        pass


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )
    if found is None:
        raise TopologyError("haproxy is not installed: run benchmarks/setup.sh (as root)")
    return found


def haproxy_config(listen_port: int, server_port: int, *, http2: bool = False) -> str:
    """One hop. TCP (the default): an L4 relay, every connection to ``listen_port`` gets its own
    connection to ``server_port``. ``http2``: an HTTP/2 proxy, cleartext HTTP/2 with prior knowledge
    on both sides (``proto h2`` on the bind and the server line); HAProxy 2.6's defaults otherwise
    (``http-reuse safe``: with 16 client connections it keeps 16 upstream)."""
    kind, mode, proto = ("HTTP/2", "http", " proto h2") if http2 else ("TCP", "tcp", "")
    return f"""\
# Generated by benchmarks/topologies.py: one {kind} hop of the haproxy topology.
global
    nbthread 1
    maxconn 4096
    # No log section: the other topologies log nothing per connection either.

defaults
    mode {mode}
    balance roundrobin
    timeout connect 1s
    timeout client 60s
    timeout server 60s

listen hop
    bind {HOST}:{listen_port}{proto}
    server next {HOST}:{server_port}{proto}
"""


class _TwoRelays:
    """generator → relay (front) → relay (back) → provider, each relay a process of its own."""

    name = ""

    def __init__(self, workdir: Path, provider_port: int) -> None:
        self.front_port = free_port()
        back_port = free_port()
        self.procs: list[Proc] = []
        try:
            for hop, listen, server in (
                ("back", back_port, provider_port),
                ("front", self.front_port, back_port),
            ):
                proc = self._start(workdir, hop, listen, server)
                self.procs.append(proc)  # before the wait, so that stop() ends it if the wait fails
                wait_port(listen, proc)
        except BaseException:
            self.stop()
            raise

    def _start(self, workdir: Path, hop: str, listen: int, server: int) -> Proc:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self.front_port

    @property
    def proxies(self) -> dict[str, int]:
        return {p.name.replace(" ", "-"): p.pid for p in reversed(self.procs)}  # started back first

    @property
    def proxy_pids(self) -> list[int]:
        return list(self.proxies.values())

    def check_alive(self) -> None:
        for p in self.procs:
            p.check_alive()

    def log_tails(self) -> str:
        return _tails(self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


class HAProxyChain(_TwoRelays):
    """generator → haproxy (front) → haproxy (back) → provider; ``http2``: HTTP/2 proxies (Triple)."""

    name = "haproxy"

    def __init__(self, workdir: Path, provider_port: int, *, http2: bool = False) -> None:
        self.http2 = http2
        super().__init__(workdir, provider_port)

    def _start(self, workdir: Path, hop: str, listen: int, server: int) -> Proc:
        binary = haproxy_binary()
        cfg = workdir / f"haproxy-{hop}.cfg"
        cfg.write_text(haproxy_config(listen, server, http2=self.http2))
        check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise TopologyError(f"haproxy rejects {cfg}:\n{check.stdout}{check.stderr}")
        # -db: stay in the foreground as one process (no master, no daemon), so its pid is the relay.
        return Proc(f"haproxy {hop}", [binary, "-db", "-f", str(cfg)], workdir / f"haproxy-{hop}.log")


class FloorChain(_TwoRelays):
    """generator → benchmarks.floorrelay (front) → benchmarks.floorrelay (back) → provider: the
    least per-request work of a frame-aware Python hop (see benchmarks/floorrelay.py)."""

    name = "pyfloor"

    def _start(self, workdir: Path, hop: str, listen: int, server: int) -> Proc:
        args = [
            sys.executable,
            "-m",
            "benchmarks.floorrelay",
            "--port",
            str(listen),
            "--upstream",
            str(server),
        ]
        return Proc(f"pyfloor {hop}", args, workdir / f"pyfloor-{hop}.log")


class Sidecar:
    """One ``regproxy run`` process configured by a file written here."""

    def __init__(self, name: str, workdir: Path, config: dict[str, Any]) -> None:
        self.name = name
        self.dir = workdir / f"sidecar-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.egress, self.ingress, self.api, self.admin = (free_port() for _ in range(4))
        cfg = {
            "egress": f"{HOST}:{self.egress}",
            "ingress": f"{HOST}:{self.ingress}",
            "api": f"{HOST}:{self.api}",
            "admin": f"{HOST}:{self.admin}",
            "advertise_ip": HOST,
            "data_dir": str(self.dir),
            **config,
        }
        path = self.dir / "regproxy.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.proc = Proc(
            f"regproxy {name}", [sys.executable, "-m", "regproxy", "run", "--config", str(path)],
            self.dir / "regproxy.log",
        )  # fmt: skip
        try:
            self._wait_up()
        except BaseException:
            self.stop()
            raise

    def _wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.check_alive()
            with contextlib.suppress(OSError):
                status, _ = http_json("GET", f"{self.admin_url}/healthz", timeout=1)
                if status == 200:
                    return
            time.sleep(0.05)
        raise TopologyError(f"{self.proc.name} did not start within {timeout} s:\n{self.proc.log_tail()}")

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin}"

    def post(self, path: str, body: Any) -> Any:
        status, reply = http_json("POST", self.api_url + path, body)
        if status != 200:
            raise TopologyError(f"{self.proc.name}: POST {path} answered {status}: {reply}")
        return reply

    def cluster_hosts(self, cluster: str) -> set[str] | None:
        """Host addresses of an egress cluster per the admin API's config dump; None: no such cluster."""
        query = urllib.parse.urlencode({"cluster": cluster})
        status, reply = http_json("GET", f"{self.admin_url}/api/v1/config_dump?{query}")
        if status == 404:
            return None
        if status != 200:
            raise TopologyError(f"{self.proc.name}: config_dump answered {status}: {reply}")
        return {h["address"] for c in reply["clusters"] if c["listener"] == "egress" for h in c["hosts"]}

    def wait_routable(self, cluster: str, address: str, timeout: float = 30.0) -> float:
        """Seconds until the egress cluster ``cluster`` holds ``address``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.proc.check_alive()
            if address in (self.cluster_hosts(cluster) or ()):
                return time.monotonic() - start
            time.sleep(0.02)
        raise TopologyError(f"{self.proc.name}: cluster {cluster} has no host {address} after {timeout} s")

    def stop(self) -> None:
        self.proc.stop(signal.SIGINT)  # SIGINT stops at once; SIGTERM would drain for drain.grace_s


class RegproxyChain:
    """generator → consumer sidecar's egress → provider sidecar's ingress → provider.

    ``protocol``: what the provider serves, published as such (``tri``: Triple); the generator
    dials the same egress port whatever it speaks (the listeners tell the protocols apart)."""

    name = "regproxy"

    def __init__(
        self, workdir: Path, provider_port: int, *, registry: str = "memory://", protocol: str = "dubbo"
    ) -> None:
        self.registry = registry
        self.protocol = protocol
        self.sidecars: list[Sidecar] = []
        try:
            self.provider_side = self._add(
                "provider-side", workdir, {"registries": [registry], "app_port": provider_port}
            )
            target = f"{HOST}:{self.provider_side.ingress}"
            consumer_cfg: dict[str, Any] = {
                "registries": [registry],
                "app_port": 1,
            }  # it has no app of its own
            if registry.startswith("memory://"):
                # Each process has its own memory:// registry: nothing to learn, so a static route.
                consumer_cfg["clusters"] = [
                    {"name": "bench", "lb": "round_robin", "hosts": [{"address": target}]}
                ]
                consumer_cfg["routes"] = [
                    {"name": "bench", "match": {"service": SERVICE}, "cluster": "bench"}
                ]
            self.consumer_side = self._add("consumer-side", workdir, consumer_cfg)
            # Published in every mode: the ingress forwards only services published through it.
            self.provider_side.post(
                "/pub",
                {"service": {"interface": SERVICE, "methods": [METHOD], "port": provider_port,
                             "application": "bench-provider",
                             **({} if protocol == "dubbo" else {"protocol": protocol})}},
            )  # fmt: skip
            if not registry.startswith("memory://"):
                self.consumer_side.post("/sub", {"service": {"interface": SERVICE}})
            # Dynamic clusters are named like Dubbo service keys: the interface alone here.
            cluster = "bench" if registry.startswith("memory://") else SERVICE
            self.consumer_side.wait_routable(cluster, target)
        except BaseException:
            self.stop()
            raise

    def _add(self, name: str, workdir: Path, config: dict[str, Any]) -> Sidecar:
        sidecar = Sidecar(name, workdir, config)
        self.sidecars.append(sidecar)
        return sidecar

    @property
    def port(self) -> int:
        return self.consumer_side.egress

    @property
    def proxies(self) -> dict[str, int]:
        return {
            "regproxy-egress": self.consumer_side.proc.pid,
            "regproxy-ingress": self.provider_side.proc.pid,
        }

    @property
    def proxy_pids(self) -> list[int]:
        return list(self.proxies.values())

    def check_alive(self) -> None:
        for s in self.sidecars:
            s.proc.check_alive()

    def log_tails(self) -> str:
        return _tails([s.proc for s in self.sidecars])

    def stop(self) -> None:
        for s in self.sidecars:
            s.stop()
