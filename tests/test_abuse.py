"""Abuse of a running sidecar (a `regproxy run` process): each attack leaves it serving others.

Every test runs a normal client through the same sidecar while the attack goes on, and asserts that
all of its calls succeed; the attacker gets what the design promises (an error naming the cause
and a close, or a close by the idle sweep). The world: a demo provider in this process, one sidecar
whose egress routes GreetingsService to its own ingress, which hands it to the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from regproxy.demo.client import DubboClient
from regproxy.demo.provider import serve
from regproxy.dubbo.encode import decode_response, encode_request
from regproxy.dubbo.frame import Frame, FrameParser, pack_header
from regproxy.dubbo.hessian2 import decode_value
from tests.sidecars import SidecarProc

pytestmark = pytest.mark.process

GREET = "org.apache.dubbo.samples.api.GreetingsService"


@dataclass
class World:
    sidecar: SidecarProc
    provider: asyncio.AbstractServer

    @property
    def egress(self) -> int:
        return self.sidecar.egress

    @property
    def ingress(self) -> int:
        return self.sidecar.ingress

    def rss_kib(self) -> int:
        assert self.sidecar.proc is not None
        status = Path(f"/proc/{self.sidecar.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    async def metric(self, name: str, listener: str) -> float:
        async with aiohttp.ClientSession() as http, http.get(self.sidecar.admin_url + "/metrics") as resp:
            text = await resp.text()
        m = re.search(rf'^{name}\{{listener="{listener}",protocol="dubbo"\}} (\S+)$', text, re.M)
        assert m, f"{name} for {listener} not in /metrics"
        return float(m.group(1))


@contextlib.asynccontextmanager
async def world(tmp_path: Path, **limits: Any) -> AsyncIterator[World]:
    provider = await serve("127.0.0.1", 0)
    app_port = provider.sockets[0].getsockname()[1]
    config = tmp_path / "regproxy.yaml"
    sc = SidecarProc("abuse", tmp_path / "sc", registries=["memory://"], app_port=app_port,
                     extra=["--config", str(config), "--log-level", "info"])  # fmt: skip
    config.write_text(
        yaml.safe_dump(
            {
                "limits": limits,
                "drain": {"grace_s": 0, "timeout_s": 1},  # stop at once: the tests do not drain
                "clusters": [{"name": "self", "hosts": [{"address": f"127.0.0.1:{sc.ingress}"}]}],
                "routes": [{"name": "greet", "match": {"service": GREET}, "cluster": "self"}],
            }
        )
    )
    await sc.start()
    try:
        # Published through the sidecar, so its ingress forwards the service to the provider.
        status, reply = await sc.post("/pub", {"service": {"interface": GREET, "port": app_port}})
        assert status == 200, reply
        yield World(sc, provider)
    finally:
        await sc.stop()
        provider.close()
        await provider.wait_closed()


@dataclass
class SteadyClient:
    """A normal consumer calling through the egress every few milliseconds; every call must succeed."""

    port: int
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, of the calls that succeeded
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self) -> None:
        client = await DubboClient.connect("127.0.0.1", self.port)
        try:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    started = time.perf_counter()
                    value = await client.call(GREET, "sayHi", [f"n{i}"], timeout=5)
                    if value == f"hi, n{i}":
                        self.ok += 1
                        self.latencies.append(time.perf_counter() - started)
                    else:
                        self.failures.append(f"call {i}: {value!r}")
                except Exception as exc:  # every failure is reported by the test
                    self.failures.append(f"call {i}: {exc!r}")
                    if client.is_closed:
                        client = await DubboClient.connect("127.0.0.1", self.port)
                await asyncio.sleep(0.02)
        finally:
            client.close()

    def __enter__(self) -> SteadyClient:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def finish(self, at_least: int) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)
        assert not self.failures, self.failures[:5]
        assert self.ok >= at_least, f"only {self.ok} calls while under attack"

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)] * 1000


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[list[Frame], float]:
    """Frames the sidecar sent until it closed the connection, and when (loop time) it did."""
    parser = FrameParser()
    frames: list[Frame] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - loop.time()))
        except ConnectionError:
            chunk = b""
        except TimeoutError:
            raise AssertionError(f"not closed within {timeout} s") from None
        if not chunk:
            return frames, loop.time()
        frames += parser.feed(chunk)


async def test_garbage_streams_refused_others_served(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        with SteadyClient(w.egress) as steady:
            await asyncio.sleep(0.3)

            async def attack(port: int) -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                junk = bytearray(os.urandom(256 * 1024))
                junk[0] = 0x47 if junk[0] == 0xDA else junk[0]
                try:
                    for i in range(0, len(junk), 4096):
                        writer.write(junk[i : i + 4096])
                        await writer.drain()
                except ConnectionError:
                    pass  # closed by the sidecar while we were still sending: the point
                frames, _ = await read_until_closed(reader)
                writer.close()
                assert len(frames) == 1 and frames[0].status == 40, frames
                # First bytes that are neither Dubbo nor HTTP/2 (regproxy.triple.detect).
                assert "expected Dubbo (magic 0xdabb) or HTTP/2" in decode_value(frames[0].body)

            await asyncio.gather(*(attack(port) for port in (w.egress, w.ingress) for _ in range(3)))
            await asyncio.sleep(0.3)
            await steady.finish(at_least=10)
        assert await w.metric("regproxy_protocol_errors_total", "egress") == 3
        assert await w.metric("regproxy_protocol_errors_total", "ingress") == 3


async def test_2gib_frame_refused_from_header(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        rss_before = w.rss_kib()
        with SteadyClient(w.egress) as steady:
            for port in (w.egress, w.ingress):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                # Announces 2 GiB and sends 1 MiB of it: the answer comes from the header alone.
                writer.write(pack_header(0xC2, 0, 4242, 2**31) + b"\x00" * (1 << 20))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                frames, _ = await read_until_closed(reader)
                writer.close()
                assert len(frames) == 1 and frames[0].request_id == 4242 and frames[0].status == 40
                message = decode_value(frames[0].body)
                assert "frame body of 2147483648 bytes exceeds the limit of 8388608 bytes" in message, message
            await asyncio.sleep(0.3)
            await steady.finish(at_least=5)
        growth = w.rss_kib() - rss_before
        assert growth < 16 * 1024, f"RSS grew {growth} KiB: a body was buffered"


async def test_request_in_one_byte_writes_works(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        with SteadyClient(w.egress) as steady:
            reader, writer = await asyncio.open_connection("127.0.0.1", w.egress)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = b"".join(encode_request(i, GREET, "sayHi", [f"byte{i}"]) for i in (71, 72))
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.005)  # separate segments, separate reads on the sidecar side
            parser = FrameParser()
            frames: list[Frame] = []
            while len(frames) < 2:
                frames += parser.feed(await asyncio.wait_for(reader.read(4096), 5))
            writer.close()
            assert {(f.request_id, f.status) for f in frames} == {(71, 20), (72, 20)}
            await steady.finish(at_least=5)


def _raise_nofile(minimum: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= minimum, (
        f"this test needs {minimum} open files; the hard limit is {hard} (raise it: ulimit -Hn)"
    )
    if soft < minimum:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _open_idle(port: int, count: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def one() -> None:
        s = socket.socket()
        s.setblocking(False)
        socks.append(s)
        await loop.sock_connect(s, ("127.0.0.1", port))

    for start in range(0, count, 500):  # the sidecar's listen backlog is 1024
        await asyncio.gather(*(one() for _ in range(min(500, count - start))))
    return socks


def _open_count(socks: list[socket.socket]) -> int:
    """Sockets the sidecar has not closed yet (no EOF or reset seen)."""
    still = 0
    for s in socks:
        try:
            if s.recv(1) != b"":
                still += 1  # the sidecar never sends idle clients anything; count it as open
        except BlockingIOError:
            still += 1
        except OSError:
            pass  # reset: closed
    return still


@pytest.mark.timeout(180)
async def test_10000_idle_connections_closed_by_idle_timeout(tmp_path: Path) -> None:
    idle_s = 4.0
    _raise_nofile(10_000 + 1_000)
    # The sidecar starts with a soft limit of 1024, as many systems give a process: it must raise it
    # itself to reach limits.max_connections (10,000).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        ctx = world(tmp_path, idle_timeout_s=idle_s, max_connections=10_000)
        w = await ctx.__aenter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    socks: list[socket.socket] = []
    try:
        assert re.search(
            r"raised the open-files limit \(RLIMIT_NOFILE\) from 1024 to \d+", w.sidecar.log_tail(200)
        )
        with SteadyClient(w.egress) as steady:  # connection number 1, active throughout
            await asyncio.sleep(0.2)
            started = time.monotonic()
            socks = await _open_idle(w.egress, 9_999)
            opened_s = time.monotonic() - started
            # 10,000 connections open: the next one is refused (closed at once) by limits.max_connections.
            extra = await _open_idle(w.egress, 1)
            loop = asyncio.get_running_loop()
            assert await asyncio.wait_for(loop.sock_recv(extra[0], 1), 5) == b""
            extra[0].close()
            assert await w.metric("regproxy_rejected_connections_total", "egress") == 1
            assert opened_s < idle_s, f"opening took {opened_s:.1f} s, longer than the idle timeout"
            # The sweep closes every idle one; the steady client, busy, keeps its connection.
            deadline = time.monotonic() + idle_s + 20
            while (still := _open_count(socks)) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert still == 0, f"{still} idle connections still open {idle_s + 20:.0f} s after opening"
            closed_after = time.monotonic() - started
            await steady.finish(at_least=20)
        client = await DubboClient.connect("127.0.0.1", w.egress)  # and a new client is served
        try:
            assert await client.call(GREET, "sayHi", ["after"]) == "hi, after"
        finally:
            client.close()
        assert closed_after >= idle_s  # closed by the idle timeout, not by anything earlier
        print(
            f"10,000 connections: opened in {opened_s:.1f} s, all idle ones closed {closed_after:.1f} s after"
        )
    finally:
        for s in socks:
            s.close()
        await ctx.__aexit__(None, None, None)


async def test_slowloris_closed_by_idle_timeout(tmp_path: Path) -> None:
    idle_s = 2.0
    async with world(tmp_path, idle_timeout_s=idle_s) as w:
        with SteadyClient(w.egress) as steady:

            async def slowloris(port: int) -> tuple[float, int]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                request = encode_request(9, GREET, "sayHi", ["slow"])
                loop = asyncio.get_running_loop()
                start = loop.time()
                writer.write(request[:16])  # the header, then one body byte per second
                sent = 0
                closed = asyncio.ensure_future(read_until_closed(reader, timeout=30))
                try:
                    for b in request[16:-1]:
                        done, _ = await asyncio.wait([closed], timeout=1.0)
                        if done:
                            break
                        writer.write(bytes([b]))
                        sent += 1
                    frames, when = await closed
                finally:
                    writer.close()
                assert frames == []  # nothing was whole, nothing to answer
                return when - start, sent

            results = await asyncio.gather(slowloris(w.egress), slowloris(w.ingress))
            await steady.finish(at_least=20)
        for took, sent in results:
            # Closed by the idle timeout (plus one sweep, a quarter of it, plus slack), while bytes
            # were still arriving every second.
            assert idle_s <= took < idle_s * 1.25 + 1.5, took
            assert sent >= 1
        assert "no whole frame in 2 s (limits.idle_timeout_s)" in w.sidecar.log_tail(400)


# --- flow control (regproxy/proxy/flow.py) ----------------------------------------------------------

# Small limits, so the bounds show in seconds: reading a client stops at 2 MiB of its requests
# unanswered, and a client leaving 8 MiB of answers unread is closed.
FLOW_LIMITS = {"max_in_flight_bytes_per_connection": 2 << 20, "max_unsent_bytes_per_connection": 8 << 20}
MIB_KIB = 1024


async def _flood(port: int, seconds: float, payload: str) -> int:
    """Send sayHi(payload) requests on one connection for ``seconds``, never reading an answer, with
    a 4 KiB receive buffer; how many requests the kernel took. The connection is left open."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    _FLOODERS.append(sock)
    end = loop.time() + seconds
    sent = 0
    while loop.time() < end:
        frame = encode_request(sent + 1, GREET, "sayHi", [payload])
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, frame), end - loop.time())
        except TimeoutError:
            break  # the sidecar stopped reading: the kernel's buffers are full, as they should be
        sent += 1
    return sent


_FLOODERS: list[socket.socket] = []


@pytest.mark.timeout(90)
async def test_never_reading_clients_hold_bounded_memory(tmp_path: Path) -> None:
    """A client sending 256 KB requests and never reading, on the egress and on the ingress at once,
    for 30 s: the sidecar's RSS stays within the limits' bound, a normal client's p99 stays low, and
    the memory comes back once they go. Before flow control: 1.8 GB (egress) and 4.2 GB (ingress)."""
    seconds = 30.0
    async with world(tmp_path, **FLOW_LIMITS) as w:
        warm = await DubboClient.connect("127.0.0.1", w.egress)
        try:  # allocate what normal traffic needs, so the baseline is the steady state
            big = "w" * 256 * 1024
            for _ in range(50):
                assert await warm.call(GREET, "sayHi", [big], timeout=5) == f"hi, {big}"
        finally:
            warm.close()
        base_kib = w.rss_kib()
        peak_kib = base_kib
        with SteadyClient(w.egress) as steady:
            flooding = asyncio.gather(
                _flood(w.egress, seconds, "x" * 256 * 1024), _flood(w.ingress, seconds, "y" * 256 * 1024)
            )
            while not flooding.done():
                peak_kib = max(peak_kib, w.rss_kib())
                await asyncio.wait([flooding], timeout=0.25)
            sent = flooding.result()
            peak_kib = max(peak_kib, w.rss_kib())
            await steady.finish(at_least=int(seconds * 20))
        _, stats = await w.sidecar.admin_get("/api/v1/stats")
        for sock in _FLOODERS:
            sock.close()
        _FLOODERS.clear()
        await asyncio.sleep(1.0)  # the sidecar sees both connections go and frees their buffers
        after_kib = w.rss_kib()
        growth_mib = (peak_kib - base_kib) / MIB_KIB
        print(
            f"flow: sent {sent} requests; RSS base {base_kib / MIB_KIB:.0f} MiB, peak +{growth_mib:.1f} MiB, "
            f"after disconnect +{(after_kib - base_kib) / MIB_KIB:.1f} MiB; steady client {steady.ok} calls, "
            f"p99 {steady.p99_ms():.1f} ms"
        )
        # Each hop holds per flooder at most 2 MiB of requests and 1 MiB of unsent answers (reading
        # stops there), plus the answers to what was in flight then: ~6 MiB a flooder and hop.
        assert growth_mib < 48, f"RSS grew {growth_mib:.1f} MiB under two never-reading clients"
        assert (after_kib - base_kib) / MIB_KIB < 24, "memory not given back after the clients left"
        assert steady.p99_ms() < 50, f"a normal client's p99 was {steady.p99_ms():.1f} ms"
        assert stats["egress"]["paused_reads"] >= 1 and stats["ingress"]["paused_reads"] >= 1, stats
        assert stats["egress"]["unsent_closes"] == 0 and stats["ingress"]["unsent_closes"] == 0
        assert all(n < 200 for n in sent), sent  # the sidecar stopped reading them early


async def test_10000_requests_in_flight_from_one_connection(tmp_path: Path) -> None:
    """10,000 requests written at once on one connection: reading pauses at the in-flight limit and
    resumes as answers leave; every request is answered, in order."""
    async with world(tmp_path, max_in_flight_per_connection=1000) as w:
        reader, writer = await asyncio.open_connection("127.0.0.1", w.egress)
        requests = b"".join(encode_request(i, GREET, "sayHi", [f"r{i}"]) for i in range(1, 10_001))
        writer.write(requests)
        parser = FrameParser()
        frames: list[Frame] = []
        while len(frames) < 10_000:
            frames += parser.feed(await asyncio.wait_for(reader.read(1 << 20), 10))
        writer.close()
        assert [f.request_id for f in frames] == list(range(1, 10_001))
        assert all(f.status == 20 for f in frames)
        assert decode_response(frames[-1]).value == "hi, r10000"
        _, stats = await w.sidecar.admin_get("/api/v1/stats")
        assert stats["egress"]["paused_reads"] >= 1, stats["egress"]


async def test_slow_reader_gets_every_answer_in_order(tmp_path: Path) -> None:
    """A client that reads at most 64 KiB every 20 ms (~3 MB/s): reading it pauses while its answers
    wait, it is never closed, and it gets all 60 answers of 200 KB each, in the order it asked."""
    async with world(tmp_path, **FLOW_LIMITS) as w:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", w.egress))
        payloads = [f"{i:04d}" + "z" * 200_000 for i in range(60)]
        requests = b"".join(encode_request(i + 1, GREET, "sayHi", [p]) for i, p in enumerate(payloads))
        sending = asyncio.ensure_future(loop.sock_sendall(sock, requests))
        parser = FrameParser()
        frames: list[Frame] = []
        try:
            while len(frames) < 60:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                assert chunk, f"closed by the sidecar after {len(frames)} answers"
                frames += parser.feed(chunk)
                await asyncio.sleep(0.02)
            await sending
        finally:
            sock.close()
        assert [f.request_id for f in frames] == list(range(1, 61))
        assert [decode_response(f).value for f in frames] == [f"hi, {p}" for p in payloads]
        _, stats = await w.sidecar.admin_get("/api/v1/stats")
        assert stats["egress"]["paused_reads"] >= 1 and stats["egress"]["unsent_closes"] == 0, stats["egress"]
