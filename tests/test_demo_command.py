"""``regproxy demo`` (and ``make demo``) as a user runs them: a process whose live lines show calls
answered by both providers, that stops cleanly on Ctrl-C or after --duration and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from regproxy.demo.embedded import GREETING, Window, percentile, who_answered
from regproxy.demo.provider import GREETINGS_SERVICE, default_services

ROOT = Path(__file__).resolve().parent.parent
LIVE = re.compile(r"^\s*\d+s\s+calls\s+(\d+)\s+errors\s+(\d+)\s.*answered by (.*)$")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def live_lines(text: str) -> list[tuple[int, int, str]]:
    """(calls, errors, "answered by" part) of every live line in ``text``."""
    found = []
    for line in text.splitlines():
        m = LIVE.match(line)
        if m:
            found.append((int(m[1]), int(m[2]), m[3]))
    return found


def _both_answered(by: str) -> bool:
    """True for an "answered by" part naming calls answered by each of the two providers."""
    counts = dict(re.findall(r"(provider-\d): (\d+)", by))
    return all(int(counts.get(name, 0)) > 0 for name in ("provider-1", "provider-2"))


async def _read_until_calls(
    proc: asyncio.subprocess.Process, timeout: float, answered: Callable[[str], bool] | None = None
) -> list[str]:
    """Lines of stdout up to the first live line with calls and no errors, and whose "answered by" part
    ``answered`` accepts when given (AssertionError if none)."""
    assert proc.stdout is not None
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), max(left, 0.01))
        except TimeoutError:
            raise AssertionError("no successful live line in time:\n" + "\n".join(lines)) from None
        if not raw:
            raise AssertionError(f"demo exited ({await proc.wait()}) before any call:\n" + "\n".join(lines))
        line = raw.decode().rstrip("\n")
        lines.append(line)
        for calls, errors, by in live_lines(line):
            assert errors == 0, "\n".join(lines)
            if calls > 0 and (answered is None or answered(by)):
                return lines


@pytest.mark.process
@pytest.mark.timeout(90)
async def test_demo_shows_calls_from_both_providers_and_stops_on_sigint(tmp_path: Path) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    stderr = open(tmp_path / "stderr.log", "wb")  # noqa: SIM115 - the child's, closed below
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "regproxy", "demo", "--rate", "20",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=workdir, env=_env(),
        )  # fmt: skip
    finally:
        stderr.close()
    try:
        head = await _read_until_calls(proc, timeout=45)
        banner = "\n".join(head)
        # The URLs to look at are printed up front.
        assert re.search(r"admin http://127\.0\.0\.1:\d+", banner), banner
        assert re.search(r"http://127\.0\.0\.1:\d+/api/v1/clusters", banner), banner
        assert re.search(r"api http://127\.0\.0\.1:\d+", banner), banner
        assert "provider-1 published" in banner and "provider-2 published" in banner
        # Live lines until one shows calls answered by both providers (round robin over their sidecars).
        spread = await _read_until_calls(proc, timeout=15, answered=_both_answered)
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        rest, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "\n".join([*head, *spread, rest.decode()])
    lines = live_lines(text)
    assert lines and all(errors == 0 for _calls, errors, _by in lines), text
    summary = text.strip().splitlines()[-1]
    m = re.match(
        r"stopped after \d+ s: (\d+) calls, 0 errors, answered by provider-1: (\d+), provider-2: (\d+)$",
        summary,
    )
    assert m, text
    assert int(m[2]) > 0 and int(m[3]) > 0  # round robin over the two provider sidecars
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()
    assert list(workdir.iterdir()) == []  # state went to a temporary directory


@pytest.mark.process
@pytest.mark.timeout(90)
async def test_demo_against_real_zookeeper(zk: Any, zk_server: Any, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "regproxy", "demo", "--registry", f"zookeeper://{zk_server.hosts}",
        "--duration", "3", "--rate", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert f"registry zookeeper://{zk_server.hosts}" in text
    lines = live_lines(text)
    assert lines and any(calls > 0 for calls, _e, _by in lines), text
    assert all(errors == 0 for _calls, errors, _by in lines), text
    assert re.search(r"answered by provider-1: [1-9]\d*, provider-2: [1-9]\d*$", text.strip()), text
    # The providers really went through ZooKeeper, and their ephemeral nodes left with the demo.
    assert zk.exists(f"/dubbo/{GREETINGS_SERVICE}/providers")
    assert zk.get_children(f"/dubbo/{GREETINGS_SERVICE}/providers") == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
@pytest.mark.timeout(90)
def test_make_demo_runs_the_demo(tmp_path: Path) -> None:
    regproxy = ROOT / ".venv" / "bin" / "regproxy"
    assert regproxy.exists(), f"{regproxy} is missing: run `make venv` first"
    # -o: take the venv as it is (CI's `make test` has just built it); only the demo recipe runs.
    r = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.stamp", "demo", "DEMO_ARGS=--duration 2 --rate 20"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    command = ".venv/bin/regproxy demo --triple .venv-peers/apache-dubbo/bin/python --duration 2 --rate 20"
    assert command in r.stdout
    lines = live_lines(r.stdout)
    assert lines and lines[0][0] > 0 and all(errors == 0 for _c, errors, _by in lines), r.stdout
    # The Triple provider and consumer (apache-dubbo) beside the Dubbo ones, through the same egress.
    published = "triple-provider (apache-dubbo, Triple) published through its sidecar as tri://127.0.0.1:"
    assert published in r.stdout
    triple = re.findall(r"^  triple  calls +(\d+)  errors +(\d+) .* answered by (.*)$", r.stdout, re.M)
    assert triple and all(int(errors) == 0 for _c, errors, _by in triple), r.stdout
    assert any(int(calls) > 0 and by.startswith("triple-provider: ") for calls, _e, by in triple), r.stdout


@pytest.mark.process
def test_demo_rejects_bad_options() -> None:
    for args, message in (
        (["--registry", "zk://h"], "unknown registry scheme 'zk'"),
        (["--rate", "0"], "--rate must be more than 0"),
        (["--duration", "-1"], "--duration must be 0"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "regproxy", "demo", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=_env(),
        )  # fmt: skip
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_live_line_numbers() -> None:
    assert percentile([1.0], 50) == 1.0 and percentile([1.0], 99) == 1.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    w = Window()
    w.ok(0.001, "provider-2")
    w.ok(0.003, "provider-1")
    w.failed("status 31 (SERVER_ERROR): nope")
    line = w.line(7)
    assert LIVE.match(line), line
    assert "calls    3  errors   1" in line and "answered by provider-1: 1, provider-2: 1" in line
    assert "p50   1.00 ms  p99   3.00 ms" in line and "last error: status 31" in line
    assert LIVE.match(Window().line(1))
    assert who_answered("hi, demo, from provider-2") == "provider-2"
    assert who_answered(3).startswith("unexpected answer")


@pytest.mark.process
def test_demo_provider_checks_its_greeting() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "regproxy", "demo-provider", "--greeting", "hi {nobody}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=_env(),
    )  # fmt: skip
    assert r.returncode == 2 and "greeting 'hi {nobody}': KeyError" in r.stderr, r.stderr
    services = default_services(greetings_version="2.0.0", greeting=GREETING, provider_name="p-9")
    assert services.lookup(GREETINGS_SERVICE, "2.0.0", "sayHi")("ann") == "hi, ann, from p-9"
    assert (
        default_services().lookup(GREETINGS_SERVICE, "", "sayHi")("ann") == "hi, ann"
    )  # the samples' answer


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``regproxy demo ARGS`` with stdout a pipe the test reads (and closes), stderr in a file."""
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "regproxy", "demo", "--rate", "20", *args],
            stdout=subprocess.PIPE, stderr=stderr, cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return proc, err_path


def _read_to_first_live_line(proc: subprocess.Popen[bytes]) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not any(live_lines(line) for line in lines[-1:]):
        raw = proc.stdout.readline()
        assert raw, f"demo exited ({proc.wait()}) before its first live line:\n" + "\n".join(lines)
        lines.append(raw.decode().rstrip("\n"))
    return lines


def _assert_quiet_exit(proc: subprocess.Popen[bytes], err_path: Path, within: float) -> None:
    try:
        code = proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"demo still running {within} s later:\n{err_path.read_text()}") from None
    stderr = err_path.read_text()
    assert code == 0, stderr
    for noise in ("Traceback", "BrokenPipeError", "Broken pipe", "Exception ignored", "cannot start"):
        assert noise not in stderr, stderr


@pytest.mark.process
@pytest.mark.timeout(90)
@pytest.mark.parametrize("after_lines", [1, 12])
def test_demo_ends_quietly_when_its_reader_goes(tmp_path: Path, after_lines: int) -> None:
    # `regproxy demo --duration 60 | head`: the reader leaves during the banner (1) or once the calls
    # have started (12); the demo stops at its next line and exits 0, no traceback, long before 60 s.
    proc, err_path = _start_demo(tmp_path, "--duration", "60")
    assert proc.stdout is not None
    try:
        for _ in range(after_lines):
            assert proc.stdout.readline(), err_path.read_text()
    finally:
        proc.stdout.close()
    _assert_quiet_exit(proc, err_path, within=30)


@pytest.mark.process
@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_stops_on_a_signal_after_its_reader_went(tmp_path: Path, sig: signal.Signals) -> None:
    # `make demo | tee out` then Ctrl-C: tee is gone when the signal arrives, so the demo's "stopping"
    # line is its first write into the closed pipe. The signal must stop it anyway (it once raised
    # EPIPE before setting the stop flag, and only SIGKILL ended the demo).
    proc, err_path = _start_demo(tmp_path)  # no --duration: only the signal ends it
    assert proc.stdout is not None
    try:
        _read_to_first_live_line(proc)
    finally:
        proc.stdout.close()
    proc.send_signal(sig)  # well before the next live line, a second away
    _assert_quiet_exit(proc, err_path, within=10)


@pytest.mark.process
def test_the_ctl_hint_can_be_typed_as_printed() -> None:
    """After `make demo` (which runs .venv/bin/regproxy), a bare `regproxy ctl ...` is not on PATH:
    the hint names the command the way it was started, and that command runs."""
    script = Path(sys.executable).parent / "regproxy"
    done = subprocess.run(
        [str(script), "demo", "--duration", "1"], cwd=ROOT, env=_env(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    hint = next(line.split() for line in done.stdout.splitlines() if " ctl clusters --admin " in line)
    command = hint[0]
    assert command != "regproxy" or shutil.which("regproxy") == str(script), hint
    help_run = subprocess.run(
        [command, "ctl", "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, check=False
    )
    assert help_run.returncode == 0 and "clusters" in help_run.stdout, help_run.stderr
