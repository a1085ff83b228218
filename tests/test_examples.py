"""examples/provider.py and examples/consumer.py as processes, each beside its own `regproxy run`,
the two sidecars sharing a real ZooKeeper: what examples/README.md tells people to run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import pytest
from kazoo.client import KazooClient

from regproxy.sdk import ERR_NOT_FOUND, AsyncRegproxyClient, RegproxyError
from tests.ports import free_port
from tests.sidecars import ROOT, SidecarProc
from tests.zkserver import ZooKeeperServer

pytestmark = pytest.mark.process

GREET = "org.apache.dubbo.samples.api.GreetingsService"
ECHO = "org.apache.dubbo.samples.api.EchoService"
EXAMPLES = ROOT / "examples"


def provider_nodes(zk: KazooClient, interface: str) -> list[str]:
    """host:port of every provider node of ``interface``, read straight from ZooKeeper."""
    path = f"/dubbo/{interface}/providers"
    if not zk.exists(path):
        return []
    return sorted(urlsplit(unquote_plus(leaf)).netloc for leaf in zk.get_children(path))


async def start_example(name: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), *args,
        cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def read_until(proc: asyncio.subprocess.Process, marker: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                err = (await proc.stderr.read()).decode() if proc.stderr else ""
                raise AssertionError(f"exited before {marker!r}: {lines}\n{err}")
            lines.append(line.rstrip("\n"))
            if marker in line:
                return lines


async def test_provider_and_consumer_examples(
    zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    registry = f"zookeeper://{zk_server.hosts}"
    app_port = free_port()
    b = SidecarProc("provider-side", tmp_path / "b", registries=[registry], app_port=app_port)
    a = SidecarProc("consumer-side", tmp_path / "a", registries=[registry], app_port=free_port())
    # The provider starts before its sidecar, as happens when both start together: the SDK retries.
    provider = await start_example("provider.py", "--api", b.api_url, "--port", str(app_port))
    try:
        await asyncio.sleep(0.5)
        await asyncio.gather(b.start(), a.start())
        lines = await read_until(provider, "ready;", 30)
        assert lines[0] == f"serving {GREET}, {ECHO} on 127.0.0.1:{app_port}"
        assert any(line.startswith(f"published {GREET} as dubbo://127.0.0.1:{b.ingress}/") for line in lines)
        # Registered with the sidecar's address and ingress port, not the application's.
        assert provider_nodes(zk, GREET) == provider_nodes(zk, ECHO) == [f"127.0.0.1:{b.ingress}"]

        consumer = await start_example(
            "consumer.py",
            "--api",
            a.api_url,
            "--egress",
            f"127.0.0.1:{a.egress}",
            "--count",
            "3",
            "--interval",
            "0.1",
        )
        out_b, err_b = await asyncio.wait_for(consumer.communicate(), 60)
        out, err = out_b.decode(), err_b.decode()
        assert consumer.returncode == 0, f"{out}\n{err}\n{a.log_tail()}"
        assert f"subscribed {GREET}:1.0.0: providers 127.0.0.1:{b.ingress}" in out
        for n in (1, 2, 3):
            assert f"[{n}] sayHi('bob') -> 'hi, bob'" in out
            assert f"[{n}] sum({n}, {n + 1}) -> {2 * n + 1}" in out
        assert "6 calls succeeded, 0 failed" in out
        assert f"unsubscribed {GREET}" in out and f"unsubscribed {ECHO}" in out
        # The consumer's sidecar no longer holds the subscriptions.
        async with AsyncRegproxyClient(a.api_url) as rp:
            for interface in (GREET, ECHO):
                with pytest.raises(RegproxyError) as e:
                    await rp.unsubscribe(interface, version="1.0.0")
                assert e.value.err_no == ERR_NOT_FOUND

        looked = await look_around(a, b)

        # On SIGTERM the provider unpublishes, then stops; the calls reached it through both sidecars.
        provider.send_signal(signal.SIGTERM)
        out_b, err_b = await asyncio.wait_for(provider.communicate(), 30)
        out, err = out_b.decode(), err_b.decode()
        assert provider.returncode == 0, f"{out}\n{err}"
        assert f"unpublished {GREET}" in out and f"unpublished {ECHO}" in out
        served = re.search(r"^stopped after (\d+) calls$", out, re.M)
        # Ctrl-C may have cut short a call the provider answered: one more than the consumer counted.
        assert served and 6 + looked <= int(served[1]) <= 6 + looked + 1, out
        assert provider_nodes(zk, GREET) == provider_nodes(zk, ECHO) == []
    finally:
        if provider.returncode is None:
            provider.kill()
            await provider.wait()
        for sc in (a, b):
            await sc.kill()


async def ctl(sc: SidecarProc, command: str) -> str:
    """`regproxy ctl --admin ADDRESS COMMAND` on ``sc``, as step 5 types it: what it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy", "ctl", "--admin", f"127.0.0.1:{sc.admin}", command,
        cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def table_row(text: str, *cells: str) -> list[str]:
    """The table line holding every one of ``cells`` as a column value, split into words."""
    rows = [line.split() for line in text.splitlines() if all(c in line.split() for c in cells)]
    assert len(rows) == 1, f"not one line with {cells} in:\n{text}"
    return rows[0]


async def look_around(a: SidecarProc, b: SidecarProc) -> int:
    """examples/README.md's step 5: the consumer again with --count 0 and, meanwhile, `regproxy ctl`
    on both sidecars says what the comments there say; once it stops, A holds nothing. The number
    of calls it made."""
    consumer = await start_example(
        "consumer.py", "--api", a.api_url, "--egress", f"127.0.0.1:{a.egress}", "--count", "0",
        "--interval", "0.1",
    )  # fmt: skip
    try:
        await read_until(consumer, "[2] sum(2, 3) -> 5", 30)
        # B: both services, app port 20880, registered as 127.0.0.1:20882 (its ingress).
        publications = await ctl(b, "publications")
        for interface in (GREET, ECHO):
            words = table_row(publications, f"{interface}:1.0.0")
            assert str(b.app_port) in words and f"127.0.0.1:{b.ingress}" in words, publications
        # A: both services, 1 provider each; one host per service (B's ingress).
        subscriptions = await ctl(a, "subscriptions")
        clusters = await ctl(a, "clusters")
        for interface in (GREET, ECHO):
            assert table_row(subscriptions, f"{interface}:1.0.0")[-2:] == ["1", "no"], subscriptions
            assert f"127.0.0.1:{b.ingress}" in table_row(clusters, f"{interface}:1.0.0"), clusters
        # A: READY, the registry connected, egress requests by method.
        status = await ctl(a, "status")
        assert status.splitlines()[0].endswith(": READY"), status
        assert "connected" in table_row(status, a.registries[0]), status
        for method in (f"{GREET}:1.0.0.sayHi", f"{ECHO}:1.0.0.sum"):
            assert int(table_row(status, "egress", method)[2]) >= 2, status
    finally:
        consumer.send_signal(signal.SIGINT)  # Ctrl-C: it unsubscribes, then exits
        out_b, err_b = await asyncio.wait_for(consumer.communicate(), 30)
    out = out_b.decode()
    assert consumer.returncode == 0, f"{out}\n{err_b.decode()}"
    assert f"unsubscribed {GREET}" in out and f"unsubscribed {ECHO}" in out
    # Once the consumer has stopped, A's subscriptions and clusters say so.
    assert (await ctl(a, "subscriptions")).strip() == "no subscriptions"
    assert (await ctl(a, "clusters")).strip() == "no clusters"
    made = re.search(r"^(\d+) calls succeeded, 0 failed$", out, re.M)
    assert made, out
    return int(made[1])
