"""``regproxy demo``: the whole picture in one process, for the first five minutes with regproxy.

One event loop runs two demo provider applications, a sidecar beside each, and a consumer sidecar
with a consumer calling through it::

    consumer ──▶ consumer sidecar (egress) ──▶ provider sidecar 1 (ingress) ──▶ provider-1
                                           └─▶ provider sidecar 2 (ingress) ──▶ provider-2

Nothing is wired by hand: each provider publishes itself through its sidecar's ``/pub`` and the
consumer subscribes through its sidecar's ``/sub``, with regproxy.sdk as applications do (the same
code as ``regproxy demo-provider --publish`` and ``demo-consumer --subscribe``), so the registry
— ``memory://`` by default (every sidecar in this process shares it), or ``--registry
zookeeper://...`` — is what connects them. The providers sign their answers, which is how the
live line knows who answered.

With ``--triple PYTHON`` (``make demo`` gives it), a Triple provider and consumer on Apache's Python
SDK (apache-dubbo, run by ``PYTHON``: regproxy/demo/triple_app.py) join them, with a sidecar of
their own for the provider, through the same consumer sidecar and on the same ports::

    triple consumer ──▶ consumer sidecar (egress) ──▶ triple provider's sidecar (ingress) ──▶ triple provider

Every listener binds a free loopback port and the sidecars keep their state in a temporary
directory, so the demo runs beside anything else and leaves nothing behind. It stops on Ctrl-C
(SIGINT), SIGTERM, after ``--duration`` seconds, or when the reader of its output goes away
(``regproxy demo | head``; see regproxy.demo.output), and exits 0 once everything is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from regproxy.config import Config, ConfigError
from regproxy.demo.client import DubboClient, DubboError
from regproxy.demo.consumer import subscribe
from regproxy.demo.output import Output
from regproxy.demo.provider import GREETINGS_SERVICE, Provider, default_services, publish
from regproxy.demo.runner import run
from regproxy.registry.base import RegistryError
from regproxy.registry.registry_url import RegistryURL
from regproxy.sdk import AsyncRegproxyClient, RegproxyError

log = logging.getLogger("regproxy.demo")

VERSION = "1.0.0"
PROVIDERS = 2
GREETING = "hi, {name}, from {provider}"
CALLER = "demo"
CALL_TIMEOUT_S = 3.0
STARTUP_TIMEOUT_S = 30.0  # publishing and subscribing, e.g. while ZooKeeper is still connecting


def regproxy_command() -> str:
    """How to type the regproxy command that runs this process, from the working directory: a hint
    naming a bare ``regproxy`` fails after ``make demo``, which runs ``.venv/bin/regproxy``."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "regproxy" and argv0.exists():
        on_path = shutil.which("regproxy")
        if on_path is not None and Path(on_path).resolve() == argv0.resolve():
            return "regproxy"
        with contextlib.suppress(ValueError):
            return str(argv0.resolve().relative_to(Path.cwd().resolve()))
        return str(argv0.resolve())
    return f"{sys.executable} -m regproxy"  # python -m regproxy, or embedded in a test


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open at once, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def sidecar_config(
    registry: str, data_dir: Path, app_port: int, log_level: str = "info", **settings: Any
) -> Config:
    """A sidecar on free loopback ports, advertising 127.0.0.1 (everything runs on this host);
    ``settings`` are further config keys (tests add ``tls``, ``health``)."""
    egress, ingress, api, admin = free_ports(4)
    data_dir.mkdir(parents=True, exist_ok=True)
    return Config.from_dict(
        {
            "egress": f"127.0.0.1:{egress}",
            "ingress": f"127.0.0.1:{ingress}",
            "api": f"127.0.0.1:{api}",
            "admin": f"127.0.0.1:{admin}",
            "app_port": app_port,
            "advertise_ip": "127.0.0.1",
            "data_dir": str(data_dir),
            "registries": [registry],
            "log_level": log_level,
            **settings,
        }
    )


# -- the numbers behind the live line -----------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in 0..100)."""
    rank = max(1, math.ceil(len(sorted_values) * q / 100))
    return sorted_values[min(len(sorted_values), rank) - 1]


@dataclass
class Window:
    """Calls completed in one reporting interval (and, in another instance, since the start)."""

    calls: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    answered_by: Counter[str] = field(default_factory=Counter)
    last_error: str = ""

    def ok(self, latency: float, provider: str) -> None:
        self.calls += 1
        self.latencies.append(latency)
        self.answered_by[provider] += 1

    def failed(self, error: str) -> None:
        self.calls += 1
        self.errors += 1
        self.last_error = error

    def spread(self) -> str:
        return ", ".join(f"{name}: {n}" for name, n in sorted(self.answered_by.items())) or "-"

    def line(self, elapsed: float) -> str:
        if self.latencies:
            lat = sorted(self.latencies)
            p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            latency = f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
        else:
            latency = "p50      - ms  p99      - ms"
        text = f"{elapsed:5.0f}s  calls {self.calls:4d}  errors {self.errors:3d}  {latency}  "
        text += f"answered by {self.spread()}"
        if self.last_error:
            text += f"  (last error: {self.last_error[:120]})"
        return text


def who_answered(value: Any) -> str:
    """The provider name a signed greeting ends with (``hi, demo, from provider-1``)."""
    if isinstance(value, str) and ", from " in value:
        return value.rsplit(", from ", 1)[1]
    return f"unexpected answer {value!r:.40}"


# -- the parts ----------------------------------------------------------------------------------------


TRIPLE_SERVICE = "org.apache.dubbo.samples.Greeter"
TRIPLE_PROVIDER = "triple-provider"
TRIPLE_APP = Path(__file__).with_name("triple_app.py")


class TripleApps:
    """The apache-dubbo provider and consumer (regproxy/demo/triple_app.py), as processes of
    ``python``: the consumer's per-second JSON lines become the demo's ``triple`` lines."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.procs: list[subprocess.Popen[str]] = []
        self._reader: asyncio.Task[None] | None = None

    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [self.python, str(TRIPLE_APP), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def start_provider(self) -> int:
        (port,) = free_ports(1)
        proc = self._spawn("provider", "--port", str(port), "--name", TRIPLE_PROVIDER)
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), STARTUP_TIMEOUT_S)
        if not line.startswith("READY"):
            raise OSError(f"the Triple provider ({self.python} {TRIPLE_APP}) did not start: {line!r}")
        return port

    async def start_consumer(self, target: str, rate: float) -> None:
        proc = self._spawn("consumer", "--target", target, "--rate", f"{rate:g}")
        self._reader = asyncio.get_running_loop().create_task(self._relay(proc))

    async def _relay(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        while True:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                return
            try:
                w = json.loads(line)
            except ValueError:
                continue
            by = ", ".join(f"{k}: {v}" for k, v in sorted(w["by"].items())) or "nobody"
            error = f"  last error: {w['error']}" if w.get("error") else ""
            say(
                f"  triple  calls {w['calls']:4d}  errors {w['errors']:3d}  p50 {w['p50_ms']:7.2f} ms  "
                f"p99 {w['p99_ms']:7.2f} ms  answered by {by}{error}"
            )

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class Demo:
    def __init__(self, args: argparse.Namespace, stop: asyncio.Event, data_root: Path) -> None:
        self.args = args
        self.stop = stop
        self.data_root = data_root
        self.providers: list[Provider] = []
        self.sidecars: list[Any] = []  # regproxy.sidecar.Sidecar, imported lazily (heavy)
        self.consumer_sidecar: Any = None
        self.total = Window()
        self.window = Window()
        self._client: DubboClient | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.triple = TripleApps(args.triple) if args.triple else None

    async def start(self) -> bool:
        """Start everything and connect it through the registry; False when stopped meanwhile."""
        from regproxy.sidecar import Sidecar

        args = self.args
        provider_sidecars = []
        for i in range(1, PROVIDERS + 1):
            name = f"provider-{i}"
            services = default_services(greetings_version=VERSION, greeting=GREETING, provider_name=name)
            provider = Provider(services, name=name)
            await provider.start("127.0.0.1", 0)
            self.providers.append(provider)
            config = sidecar_config(args.registry, self.data_root / name, provider.port, args.log_level)
            sidecar = Sidecar(config)
            await sidecar.start()
            self.sidecars.append(sidecar)
            provider_sidecars.append(sidecar)
        # The consumer application listens nowhere; its sidecar's app_port only has to be valid.
        (unused,) = free_ports(1)
        consumer_config = sidecar_config(args.registry, self.data_root / "consumer", unused, args.log_level)
        self.consumer_sidecar = Sidecar(consumer_config)
        await self.consumer_sidecar.start()
        self.sidecars.append(self.consumer_sidecar)
        self._print_banner(provider_sidecars)

        for provider, sidecar in zip(self.providers, provider_sidecars, strict=True):
            urls = await publish(
                _url(sidecar.config.api),
                provider.services,
                port=provider.port,
                application=provider.name,
                timeout=STARTUP_TIMEOUT_S,
                stop=self.stop,
            )
            if urls is None:
                return False
            # The registered address is the sidecar's ingress, not the application's own port.
            say(f"{provider.name} published through its sidecar as {urlsplit(urls[0]).netloc}")
        clusters = await subscribe(
            _url(self.consumer_sidecar.config.api),
            [(GREETINGS_SERVICE, VERSION, "")],
            min_providers=PROVIDERS,
            timeout=STARTUP_TIMEOUT_S,
            stop=self.stop,
        )
        if clusters is None:
            return False
        for cluster, found in clusters.items():
            hosts = ", ".join(p.address for p in found) or "none yet"
            say(f"consumer subscribed to {cluster} through its sidecar: providers {hosts}")
        if self.triple is not None:
            return await self._start_triple(Sidecar)
        return True

    async def _start_triple(self, sidecar_class: Any) -> bool:
        """The Triple provider beside its own sidecar, published ``"protocol": "tri"``; the consumer
        sidecar subscribes to it as to any service."""
        assert self.triple is not None
        args = self.args
        port = await self.triple.start_provider()
        config = sidecar_config(args.registry, self.data_root / TRIPLE_PROVIDER, port, args.log_level)
        sidecar = sidecar_class(config)
        await sidecar.start()
        self.sidecars.insert(0, sidecar)  # stopped after the consumer's
        async with AsyncRegproxyClient(_url(config.api)) as api:
            url = await api.publish(TRIPLE_SERVICE, port=port, application=TRIPLE_PROVIDER, protocol="tri")
        say(f"{TRIPLE_PROVIDER} (apache-dubbo, Triple) published through its sidecar as {url.split('?')[0]}")
        clusters = await subscribe(
            _url(self.consumer_sidecar.config.api),
            [(TRIPLE_SERVICE, "", "")],
            min_providers=1,
            timeout=STARTUP_TIMEOUT_S,
            stop=self.stop,
        )
        if clusters is None:
            return False
        egress = self.consumer_sidecar.config.egress
        await self.triple.start_consumer(f"tri://{egress.host}:{egress.port}", args.rate)
        say(f"triple consumer (apache-dubbo) calling {TRIPLE_SERVICE}.greet through the same egress {egress}")
        return True

    def _print_banner(self, provider_sidecars: list[Any]) -> None:
        c = self.consumer_sidecar.config
        say(f"regproxy demo: registry {self.args.registry}")
        for provider, sidecar in zip(self.providers, provider_sidecars, strict=True):
            pc = sidecar.config
            say(
                f"  {provider.name}  app 127.0.0.1:{provider.port}  its sidecar: ingress {pc.ingress}  "
                f"api {_url(pc.api)}  admin {_url(pc.admin)}"
            )
        say(f"  consumer    its sidecar: egress {c.egress}  api {_url(c.api)}  admin {_url(c.admin)}")
        admin = _url(c.admin)
        say("Look inside the consumer's sidecar while it runs:")
        say(f"  {admin}/                     the status page: open it in a web browser")
        say(f"  {admin}/api/v1/clusters      clusters and their hosts (the two providers)")
        say(f"  {admin}/api/v1/config_dump   effective config and live routing table")
        say(f"  {admin}/metrics              Prometheus metrics")
        say(f"  {regproxy_command()} ctl clusters --admin {c.admin}")
        say(f"  the pub/sub API it serves: {_url(c.api)}/openapi.json")

    async def traffic(self) -> None:
        """Start one sayHi every 1/rate s through the consumer sidecar's egress (calls overlap)."""
        loop = asyncio.get_running_loop()
        egress = self.consumer_sidecar.config.egress
        interval = 1.0 / self.args.rate
        next_at = loop.time()
        while not self.stop.is_set():
            if self._client is None or self._client.is_closed:
                try:
                    self._client = await DubboClient.connect(egress.host, egress.port, timeout=CALL_TIMEOUT_S)
                except (OSError, TimeoutError) as e:
                    self._record_error(f"connecting to the egress {egress}: {type(e).__name__}: {e}")
            if self._client is not None and not self._client.is_closed:
                task = asyncio.create_task(self._call(self._client))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
            next_at += interval
            delay = next_at - loop.time()
            if delay < -1.0:  # fell behind (a stalled connect): carry on at the rate, no burst
                next_at, delay = loop.time(), 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(delay, 0.0))

    async def _call(self, client: DubboClient) -> None:
        start = time.perf_counter()
        try:
            value = await client.call(
                GREETINGS_SERVICE, "sayHi", [CALLER], version=VERSION, timeout=CALL_TIMEOUT_S
            )
        except DubboError as e:
            self._record_error(f"{type(e).__name__}: {e}")
            return
        latency = time.perf_counter() - start
        provider = who_answered(value)
        self.window.ok(latency, provider)
        self.total.ok(latency, provider)

    def _record_error(self, message: str) -> None:
        self.window.failed(message)
        self.total.failed(message)

    async def report(self, started: float) -> None:
        """Print the live line once a second."""
        loop = asyncio.get_running_loop()
        tick = started
        while not self.stop.is_set():
            tick += 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(tick - loop.time(), 0.0))
            if self.stop.is_set():
                break
            window, self.window = self.window, Window()
            say(window.line(loop.time() - started))

    async def close(self) -> None:
        """Stop the calls, then the consumer's sidecar, the providers' sidecars, the providers."""
        if self.triple is not None:
            await self.triple.stop()
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._client.wait_closed(), 1.0)
        for sidecar in reversed(self.sidecars):
            try:
                await sidecar.stop()
            except Exception:  # one sidecar failing to stop must not leave the others running
                log.exception("stopping a sidecar")
        for provider in self.providers:
            await provider.close(grace=1.0)


def _url(address: Any) -> str:
    return f"http://{address}"


# stdout of this process: the banner and the live lines.
OUTPUT = Output()


def say(line: str) -> None:
    OUTPUT.say(line)


# -- command line -------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="regproxy demo",
        description="Run the demo in one process: two GreetingsService providers, each publishing "
        "itself through its own regproxy sidecar, and a consumer subscribing and calling through a "
        "third sidecar. Prints a line a second (calls, errors, latency, which provider answered) and "
        "the admin URLs to look at; Ctrl-C stops it, and so does the end of its reader (`| head`).",
    )
    parser.add_argument(
        "--registry",
        metavar="URL",
        default="memory://",
        help="registry the sidecars share: memory:// (in-process, the default) or a real one, "
        "e.g. zookeeper://127.0.0.1:2181",
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    parser.add_argument("--rate", type=float, default=10.0, metavar="N", help="calls per second (default 10)")
    parser.add_argument(
        "--triple",
        metavar="PYTHON",
        help="also run a Triple provider and consumer on apache-dubbo (Apache's Python SDK), with the "
        "interpreter PYTHON that has it (make demo builds .venv-peers/apache-dubbo)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="the sidecars' log level, on stderr (default warning)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 10_000:
        parser.error("--rate must be more than 0 and at most 10000")
    if args.duration < 0:
        parser.error("--duration must be 0 (until Ctrl-C) or more")
    try:
        RegistryURL.parse(args.registry)
    except ValueError as e:
        parser.error(f"--registry: {e}")
    return args


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        # Stop first, print after: whatever printing does, the signal has stopped the demo.
        if not stop.is_set():
            stop.set()
            say("stopping (Ctrl-C again to quit at once)")
        # The default handler is back: a second Ctrl-C interrupts whatever is still closing.
        loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    # Nobody reads the live lines any more (`regproxy demo | head`): stop as on Ctrl-C.
    OUTPUT.on_closed = stop.set

    with tempfile.TemporaryDirectory(prefix="regproxy-demo-") as tmp:
        demo = Demo(args, stop, Path(tmp))
        try:
            try:
                ready = await demo.start()
            except ConfigError as e:
                print(f"regproxy demo: config error: {e}", file=sys.stderr)
                return 2
            except (OSError, RegistryError, RegproxyError) as e:
                print(f"regproxy demo: cannot start: {e}", file=sys.stderr)
                return 1
            if not ready:
                return 0
            rate = f"{args.rate:g} times a second"
            until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
            say(f"calling GreetingsService.sayHi {rate} through the consumer's sidecar, {until}")
            started = loop.time()
            if args.duration:
                loop.call_later(args.duration, stop.set)
            tasks = [asyncio.create_task(demo.traffic()), asyncio.create_task(demo.report(started))]
            try:
                await stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            total = demo.total
            say(
                f"stopped after {loop.time() - started:.0f} s: {total.calls} calls, {total.errors} errors, "
                f"answered by {total.spread()}"
            )
            return 0
        finally:
            await demo.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
