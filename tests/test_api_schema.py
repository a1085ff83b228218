"""The HTTP API and the admin API of a running sidecar against their own OpenAPI documents.

schemathesis (its CLI, as an operator would run it) generates requests from each document, valid
and invalid, and checks every reply: no 5xx, status codes, content types and bodies as documented,
valid requests accepted, invalid ones refused. A fixed seed keeps `make test` reproducible; the
example count bounds its time.

And bodies over the limit are refused before they are read whole, checked over a raw socket: a
huge Content-Length with a few bytes sent, and a chunked body that never ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.ports import free_port
from tests.sidecars import SidecarProc

pytestmark = pytest.mark.process

EXAMPLES = 75  # per operation; ~17 s for both documents on 2 cores (150 took 34 s on 2026-12-04)


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[SidecarProc]:
    sc = SidecarProc("schema", tmp_path / "sc", registries=["memory://"], app_port=free_port(),
                     extra=["--log-level", "warning"])  # fmt: skip
    await sc.start()
    try:
        yield sc
    finally:
        await sc.stop(signal.SIGINT)  # at once: no drain grace


async def fetch_json(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        return await resp.json()


async def schemathesis(schema: Path, base_url: str, *extra: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", str(schema), "--url", base_url,
        "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "20261128",
        "--generation-database", "none", "--no-color", "--request-timeout", "10", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=schema.parent,  # it keeps a cache directory in the working directory
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    # It ran: every operation tested, with requests generated (a run that tested nothing passes too).
    assert "No issues found" in text and " generated, " in text, text[-3000:]
    print(text[text.rfind("API Operations:") :])


async def test_pubsub_api_conforms_to_its_openapi(sidecar: SidecarProc, tmp_path: Path) -> None:
    doc = await fetch_json(sidecar.api_url + "/openapi.json")
    # A request may name a registry; generated ones must not dial ZooKeeper or Nacos at random
    # addresses (it would be slow, and reach out of the machine). memory:// is the one registry that
    # needs no server; the rules for the others are checked in tests/test_api.py.
    doc["components"]["schemas"]["RegistryRef"]["properties"]["type"]["enum"] = ["memory"]
    schema = tmp_path / "api.json"
    schema.write_text(json.dumps(doc))
    await schemathesis(schema, sidecar.api_url)
    assert sidecar.proc is not None and sidecar.proc.returncode is None  # still running


async def test_admin_api_conforms_to_its_openapi(sidecar: SidecarProc, tmp_path: Path) -> None:
    doc = await fetch_json(sidecar.admin_url + "/openapi.json")
    assert {"/healthz", "/readyz", "/api/v1/config_dump", "/api/v1/loglevel", "/metrics"} <= set(doc["paths"])
    schema = tmp_path / "admin.json"
    schema.write_text(json.dumps(doc))
    # Drain would end the sidecar under test; tests/test_drain.py covers it.
    await schemathesis(schema, sidecar.admin_url, "--exclude-path", "/api/v1/drain")
    assert sidecar.proc is not None and sidecar.proc.returncode is None


async def _raw(port: int, head: bytes, body: bytes) -> tuple[int, dict, float]:
    """Send a request head and part of a body, then wait: the reply must come without the rest."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start = loop.time()
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(
            next(h.split(b":")[1] for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length"))
        )
        reply = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
        return int(status_line.split()[1]), reply, loop.time() - start
    finally:
        writer.close()


@pytest.mark.parametrize("target", ["api", "admin"])
async def test_bodies_over_the_limit_refused_before_read(sidecar: SidecarProc, target: str) -> None:
    port, path = (sidecar.api, "/pub") if target == "api" else (sidecar.admin, "/api/v1/loglevel")
    # 10 GB announced, 20 bytes sent: the answer comes from the header alone.
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n".encode()
    status, reply, took = await _raw(port, head, b'{"level": "debug", "')
    assert status == 413 and reply["err_no"] == 6 and "limit" in reply["err_msg"], reply
    assert took < 2.0
    # Chunked, no length to judge: 96 KiB sent in 8 KiB chunks and never finished. It is cut off
    # once past the limit (64 KiB API, 16 KiB admin), not after waiting for the end.
    chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    status, reply, took = await _raw(port, head, b"1\r\n{\r\n" + chunk * 12)
    assert status == 413 and reply["err_no"] == 6, reply
    assert took < 2.0
    # And the sidecar serves the next caller.
    async with aiohttp.ClientSession() as http, http.get(sidecar.admin_url + "/healthz") as resp:
        assert resp.status == 200
