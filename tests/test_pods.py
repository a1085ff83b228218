"""Pods as they really are: each pod a network namespace with its own address, on one bridge.

    zk        ZooKeeper on <zk-ip>:2181
    consumer  tests.pod_client (the application) -> 127.0.0.1:20881 egress of its sidecar
    pod-b     sidecar ingress <pod-b-ip>:20882 -> 127.0.0.1:20880 demo provider "pod-b"
    pod-c     sidecar ingress <pod-c-ip>:20882 -> 127.0.0.1:20880 demo provider "pod-c"

Every pod uses the standard ports (egress 127.0.0.1:20881, app 127.0.0.1:20880, API
127.0.0.1:22222, ingress <pod-ip>:20882); no sidecar is told its address: each detects it.  The
processes are started with ``ip netns exec`` and SIGKILLed at the end; the network (tests/netns.py)
is removed whatever happens, and leftovers of an earlier run that crashed are removed first.

The cut-off drill sets pod-b's veth down on the bridge side while the consumer calls: packets to
and from pod-b vanish (no reset, no FIN), so the consumer's sidecar has to notice by itself (active
heartbeats, outlier detection); the registry forgets pod-b only when its ZooKeeper session expires.

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q -s tests/test_pods.py     # prints the figures
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from tests.netns import (
    NetnsUnavailable,
    PodNetwork,
    check_available,
    clean_leftovers,
    link_names,
    netns_names,
)
from tests.topology import PROVIDERS, leaves
from tests.wait import wait_for
from tests.zkserver import ZooKeeperNotInstalled, ZooKeeperServer

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
VERSION = "1.0.0"
GREETING = "{provider} says hi, {name}"
PROVIDER_PODS = ("pod-b", "pod-c")
INGRESS_PORT = 20882

# A production health section: the defaults (5 s x 3 heartbeats) take 15 s to notice a host that
# vanished without a reset; a heartbeat every second, two missed in a row, takes it out in ~2-3 s.
# Outlier detection stays on for hosts that answer but fail.
SIDECAR_CONFIG = """\
egress: "127.0.0.1:20881"
api: "127.0.0.1:22222"
admin: "127.0.0.1:34901"
app_port: 20880
health:
  active: {enabled: true, interval_s: 1, timeout_s: 1, unhealthy_threshold: 2, healthy_threshold: 2}
  outlier: {enabled: true, consecutive_failures: 5, base_ejection_s: 10, max_ejection_s: 300,
            max_ejection_percent: 50}
  app_check: {enabled: true, interval_s: 2, timeout_s: 1, failures: 2}
"""

STATUS_RE = re.compile(r"status \d+ \(\w+\)")
WORKERS = 4  # the consumer's concurrent call loops
CALL_TIMEOUT_S = 2.0  # the consumer's per-call timeout (Dubbo's own default is 1 s)
ROUTE_AROUND_BOUND_S = 10.0


@pytest.fixture
def netns_ready() -> None:
    """Root and iproute2 present (never skipped: missing is a failure), leftovers removed."""
    try:
        check_available()
        ZooKeeperServer.check_installed()
    except (NetnsUnavailable, ZooKeeperNotInstalled) as exc:
        pytest.fail(str(exc), pytrace=False)
    removed = clean_leftovers()
    if removed:
        log.warning("removed leftovers of an earlier pod test run: %s", ", ".join(removed))


@dataclass
class PodProc:
    """A process inside a pod; its output in ``log_path`` (stdout piped instead when asked)."""

    name: str
    args: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self, *, pipe_stdout: bool = False) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipe_stdout else out,
                stderr=out,
                cwd=str(ROOT),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Call:
    start: float
    end: float
    ok: bool
    value: str | None
    error: str | None


@dataclass
class ConsumerApp:
    """tests.pod_client in the consumer pod: its JSON lines, parsed as they come."""

    proc: PodProc
    providers: list[str] | None = None
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.proc.start(pipe_stdout=True)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.proc is not None and self.proc.proc.stdout is not None
        while line := await self.proc.proc.stdout.readline():
            event: dict[str, Any] = json.loads(line)
            kind = event.pop("event")
            if kind == "call":
                self.calls.append(Call(event["start"], event["end"], event["ok"], event.get("value"),
                                       event.get("error")))  # fmt: skip
            elif kind == "subscribed":
                self.providers = event["providers"]
            else:
                self.errors.append(event.get("error", repr(event)))

    async def stop(self) -> None:
        await self.proc.kill()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def answered_by(value: str | None) -> str:
    return (value or "").split(" says hi", 1)[0]


def test_advertise_ip_detected_inside_a_pod(netns_ready: None) -> None:
    """The address a sidecar detects inside a pod is the pod's own, not 127.0.0.1 nor the host's."""
    code = "from regproxy.netutil import detect_advertise_ip; print(detect_advertise_ip())"
    with PodNetwork(["alone"]) as net:
        pod = net.pods["alone"]
        done = subprocess.run(pod.exec_args(sys.executable, "-c", code), capture_output=True, text=True,
                              cwd=ROOT, timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == pod.ip


CRASHING_RUN = """
import os, subprocess
from tests.netns import PodNetwork
net = PodNetwork(["crash"])
net.create()
pod = net.pods["crash"]
sleeper = subprocess.Popen(pod.exec_args("sleep", "300"), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
print(pod.netns, pod.host_veth, net.bridge, sleeper.pid, flush=True)
os._exit(3)  # no cleanup: as a test run killed by CI
"""


def test_leftovers_of_a_crashed_run_are_removed(netns_ready: None) -> None:
    done = subprocess.run([sys.executable, "-c", CRASHING_RUN], capture_output=True, text=True, cwd=ROOT,
                          timeout=30, check=False)  # fmt: skip
    assert done.returncode == 3, done.stderr
    netns, veth, bridge, sleeper = done.stdout.split()
    try:
        assert netns in netns_names() and {veth, bridge} <= set(link_names())
        removed = clean_leftovers()
        assert {netns, veth, bridge} <= set(removed)
        assert netns not in netns_names() and not {veth, bridge} & set(link_names())
        # What ran in the namespace was killed (a zombie at most, until its new parent reaps it).
        status = Path(f"/proc/{sleeper}/status")
        assert not status.exists() or "\nState:\tZ" in status.read_text()
    finally:
        clean_leftovers()


@pytest.fixture
async def world(
    netns_ready: None, tmp_path: Path
) -> AsyncIterator[tuple[PodNetwork, ZooKeeperServer, dict[str, PodProc]]]:
    procs: dict[str, PodProc] = {}
    with PodNetwork(["zk", "consumer", *PROVIDER_PODS]) as net:
        zk_pod = net.pods["zk"]
        zk = ZooKeeperServer(tmp_path / "zk", netns=zk_pod.netns, ip=zk_pod.ip)
        try:
            yield net, zk, procs
        finally:
            for p in procs.values():
                await p.kill()
            await asyncio.to_thread(zk.stop, kill=True)


def pod_processes(net: PodNetwork, zk: ZooKeeperServer, tmp_path: Path) -> dict[str, PodProc]:
    """The sidecars and applications of every pod (not started yet)."""
    config = tmp_path / "sidecar.yaml"
    config.write_text(SIDECAR_CONFIG)
    procs: dict[str, PodProc] = {}
    for role in ("consumer", *PROVIDER_PODS):
        pod = net.pods[role]
        data = tmp_path / role
        data.mkdir()
        procs[f"{role}-sidecar"] = PodProc(f"{role} sidecar", pod.exec_args(
            sys.executable, "-m", "regproxy", "run", "--config", str(config), "--data-dir", str(data),
            "--registry", f"zookeeper://{zk.hosts}", "--ingress", f"{pod.ip}:{INGRESS_PORT}",
        ), data / "sidecar.log")  # fmt: skip
        if role != "consumer":
            procs[f"{role}-app"] = PodProc(f"{role} app", pod.exec_args(
                sys.executable, "-m", "regproxy", "demo-provider", "--name", role,
                "--greetings-version", VERSION, "--greeting", GREETING,
                "--publish", "http://127.0.0.1:22222", "--publish-timeout", "60",
            ), data / "app.log")  # fmt: skip
    procs["consumer-app"] = PodProc("consumer app", net.pods["consumer"].exec_args(
        sys.executable, "-m", "tests.pod_client", "--providers", str(len(PROVIDER_PODS)),
        "--workers", str(WORKERS), "--pause", "0.02", "--timeout", str(CALL_TIMEOUT_S),
        "--subscribe-timeout", "80",
    ), tmp_path / "consumer" / "app.log")  # fmt: skip
    return procs


async def wait_calls(
    app: ConsumerApp, procs: dict[str, PodProc], pred: Any, timeout: float, what: str
) -> None:
    """wait_for ``pred``, failing at once when a pod process exits or the consumer app reports errors."""

    def check() -> bool:
        if pred():
            return True
        for p in procs.values():
            p.check_running()
        if app.errors:
            raise AssertionError(f"consumer app: {app.errors}")
        return False

    await wait_for(check, timeout, what, interval=0.1, detail=lambda: pod_logs(procs))


def pod_logs(procs: dict[str, PodProc], lines: int = 15) -> str:
    """The last lines of every pod process's log, for a failure message."""
    return "\n".join(f"--- {p.name}\n{p.log_tail(lines)}" for p in procs.values())


def registered(reader: KazooClient) -> set[str]:
    """host:port of every provider node of GreetingsService, as an independent reader sees them."""
    return {host for host, _params in leaves(reader)}


@pytest.mark.timeout(150)
async def test_consumer_pod_calls_two_provider_pods_and_routes_around_a_cut_off_one(
    world: tuple[PodNetwork, ZooKeeperServer, dict[str, PodProc]], tmp_path: Path
) -> None:
    net, zk, procs = world
    await asyncio.to_thread(zk.start)
    procs.update(pod_processes(net, zk, tmp_path))
    consumer = ConsumerApp(procs["consumer-app"])
    await asyncio.gather(
        *(p.start() for name, p in procs.items() if name != "consumer-app"), consumer.start()
    )
    reader = KazooClient(hosts=zk.hosts, timeout=10.0)  # from the host, through the bridge
    gone: asyncio.Future[float] | None = None
    started = time.monotonic()
    try:
        await asyncio.to_thread(reader.start, 15)
        # --- registration: each provider sidecar registered its own pod address and the ingress port.
        expected = {f"{net.pods[r].ip}:{INGRESS_PORT}" for r in PROVIDER_PODS}
        await wait_for(
            lambda: registered(reader) == expected, 60, f"{PROVIDERS} = {expected}", in_thread=True
        )
        registered_after = time.monotonic() - started

        # --- consumer pod -> both provider pods, through its egress and each pod's ingress.
        await wait_calls(
            consumer, procs, lambda: consumer.providers is not None, 90, "the consumer's subscription"
        )
        assert set(consumer.providers or []) == expected, (
            f"the consumer's sidecar answered {consumer.providers} "
            f"{time.monotonic() - started:.1f} s after the start, although both providers were "
            f"registered after {registered_after:.1f} s\n{pod_logs(procs, 40)}"
        )

        def both_answered() -> bool:
            by = [answered_by(c.value) for c in consumer.calls if c.ok]
            return all(by.count(r) >= 20 for r in PROVIDER_PODS)

        await wait_calls(consumer, procs, both_answered, 30, "20 answers from each provider pod")
        before = list(consumer.calls)
        failed_before = [c.error for c in before if not c.ok]
        assert not failed_before, (
            f"{len(failed_before)} of {len(before)} calls failed before the cut: {failed_before[:5]}"
        )
        assert {answered_by(c.value) for c in before} == set(PROVIDER_PODS)

        # --- pod-b cut off under traffic.
        pod_c = {f"{net.pods['pod-c'].ip}:{INGRESS_PORT}"}
        cut_at = time.monotonic()
        await asyncio.to_thread(net.cut, "pod-b")

        async def registration_gone() -> float:
            # pod-b cannot close its session: its node goes when ZooKeeper expires the session.
            await wait_for(lambda: registered(reader) == pod_c, 30, f"{PROVIDERS} = {pod_c}",
                           interval=0.1, in_thread=True)  # fmt: skip
            return time.monotonic() - cut_at

        gone = asyncio.ensure_future(registration_gone())
        quiet_s = 3.0  # calls all succeed for this long: the switch is over

        def settled() -> bool:
            after = [c for c in consumer.calls if c.end > cut_at]
            last_failure = max((c.end for c in after if not c.ok), default=cut_at)
            return bool(after) and after[-1].end - last_failure >= quiet_s

        await wait_calls(
            consumer, procs, settled, ROUTE_AROUND_BOUND_S + quiet_s + 5, "the calls to settle after the cut"
        )
        gone_s = await gone
        after = [c for c in consumer.calls if c.end > cut_at]
        failed = [c for c in after if not c.ok]
        last_failure_end = max((c.end for c in failed), default=cut_at)
        recovered_s = last_failure_end - cut_at
        out_s = max((c.start for c in failed), default=cut_at) - cut_at  # the last call sent to pod-b
        tail = [c for c in after if c.start > last_failure_end]
        pod_b = f"{net.pods['pod-b'].ip}:{INGRESS_PORT}"
        taken_out_by = [
            line.split(" ", 3)[3]
            for line in procs["consumer-sidecar"].log_path.read_text(errors="replace").splitlines()
            if pod_b in line and ("is unhealthy" in line or "ejecting" in line or "dropped" in line)
        ]
        statuses = Counter(m.group(0) if (m := STATUS_RE.search(c.error or "")) else c.error for c in failed)
        print(
            f"\npods: {len(before)} calls before the cut, all ok, answered by "
            f"{sorted({answered_by(c.value) for c in before})}; after cutting pod-b: {len(after)} calls, "
            f"{len(failed)} failed {dict(statuses)}; the last failing call was sent {out_s:.2f} s after "
            f"the cut and ended {recovered_s:.2f} s after it; then {len(tail)} calls, all ok, answered by "
            f"{sorted({answered_by(c.value) for c in tail})}; pod-b's registration gone {gone_s:.2f} s "
            f"after the cut; the consumer's sidecar logged: {taken_out_by}"
        )
        common = Counter((c.error or "")[:200] for c in failed).most_common(3)
        print("pods: the most common failures:", common)
        assert recovered_s <= ROUTE_AROUND_BOUND_S, f"calls failed until {recovered_s:.2f} s after the cut"
        assert len(tail) >= 20 and all(c.ok and answered_by(c.value) == "pod-c" for c in tail)
        # Only calls sent to pod-b before it was taken out fail, and each holds its worker for the call
        # timeout: at most one per worker in flight at the cut plus one per worker per timeout until then.
        bound = WORKERS * (1 + math.ceil(ROUTE_AROUND_BOUND_S / CALL_TIMEOUT_S))
        assert len(failed) <= bound, f"{len(failed)} calls failed: {[c.error for c in failed[:5]]}"
        # The health checks took pod-b out, not the registry: without them, calls go to pod-b until
        # its session expires (ZooKeeper's 10 s at most here), which only just fits the bound above.
        assert taken_out_by, "the consumer's sidecar logged neither a failed health check nor an ejection"
        assert out_s + 3 <= gone_s, (
            f"pod-b was still sent calls {out_s:.2f} s after the cut, its registration went at {gone_s:.2f} s"
        )

        # --- pod-b reconnected: it registers again (a new session) and gets calls again, no call fails.
        back_at = time.monotonic()
        n_before_back = len(consumer.calls)
        await asyncio.to_thread(net.reconnect, "pod-b")
        await wait_for(
            lambda: registered(reader) == expected, 30, f"{PROVIDERS} = {expected} again", in_thread=True
        )
        registered_s = time.monotonic() - back_at

        def pod_b_answers() -> bool:
            return sum(answered_by(c.value) == "pod-b" for c in consumer.calls[n_before_back:]) >= 20

        await wait_calls(consumer, procs, pod_b_answers, 30, "20 answers from pod-b after it came back")
        answering_s = time.monotonic() - back_at
        since_back = consumer.calls[n_before_back:]
        failed_back = [c.error for c in since_back if not c.ok]
        print(
            f"pods: pod-b reconnected: registered again after {registered_s:.2f} s, 20 answers from it "
            f"after {answering_s:.2f} s; {len(since_back)} calls meanwhile, {len(failed_back)} failed"
        )
        assert not failed_back, f"{len(failed_back)} calls failed after pod-b came back: {failed_back[:5]}"
    finally:
        if gone is not None:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
        await consumer.stop()
        await asyncio.to_thread(reader.stop)
        reader.close()
