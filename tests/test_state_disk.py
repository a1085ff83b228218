"""An acknowledged change is on disk, or the caller is told (issue 15, section 4).

A real `regproxy run` with its data directory on a 64 kB tmpfs that the test fills up: changes made
while the disk is full are answered 503 (err_no 10) naming the state file and the OS error, /readyz
answers 503 naming the data directory, the failures are counted in /metrics; after kill -9 and a
restart exactly the acknowledged changes are back; and once the disk has room the sidecar saves its
whole state by itself and is ready again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.ports import free_port
from tests.sidecars import SidecarProc, value

pytestmark = [pytest.mark.timeout(60), pytest.mark.process]

STATE_NOT_SAVED = 10  # regproxy.api.models.ErrNo.STATE_NOT_SAVED


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs: room for the state file, and quickly full."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        # Never skipped, as ZooKeeper is never skipped (conftest.zk_server): make test runs as root
        # in CI, and a skip would hide that the full-disk promise went untested.
        pytest.fail(
            f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}", pytrace=False
        )
    try:
        yield mnt
    finally:
        # Lazy: a sidecar left running by a failed test must not keep the mount (and tmp_path) busy.
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Take every free block of ``disk`` with one file (removed to give the room back)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def service(name: str, **extra: Any) -> dict[str, Any]:
    return {"service": {"interface": f"com.example.disk.{name}", **extra}}


def saved(disk: Path) -> dict[str, set[str]]:
    """The interfaces the state file on ``disk`` holds, by section."""
    data = orjson.loads((disk / "regproxy-state.json").read_bytes())
    return {
        "subscriptions": {s["interface"] for s in data["subscriptions"]},
        "publications": {p["spec"]["interface"] for p in data["publications"]},
    }


async def live(sc: SidecarProc) -> dict[str, set[str]]:
    """The interfaces the sidecar subscribes to and publishes now (admin API)."""
    _, subs = await sc.admin_get("/api/v1/subscriptions")
    _, pubs = await sc.admin_get("/api/v1/publications")
    return {
        "subscriptions": {s["interface"] for r in subs["registries"] for s in r["subscriptions"]},
        "publications": {p["interface"] for r in pubs["registries"] for p in r["publications"]},
    }


def sidecar(name: str, disk: Path, tmp_path: Path, app_port: int) -> SidecarProc:
    sc = SidecarProc(name, disk, registries=["memory://"], app_port=app_port)
    sc.log_path = tmp_path / f"{name}.log"  # not on the small disk: the log would fill it
    return sc


async def test_acknowledged_changes_survive_kill_9_and_refused_ones_are_reported(
    small_disk: Path, tmp_path: Path
) -> None:
    state_file = small_disk / "regproxy-state.json"
    app_port = free_port()
    first = sidecar("first", small_disk, tmp_path, app_port)
    second = sidecar("second", small_disk, tmp_path, app_port)
    try:
        await first.start()
        await first.until_ready()
        for name in ("S0", "S1", "S2"):
            assert (await first.post("/sub", service(name)))[0] == 200
        status, reply = await first.post("/pub", service("P0", port=app_port, methods=["hi"]))
        assert status == 200, reply
        acknowledged = {
            "subscriptions": {f"com.example.disk.S{i}" for i in range(3)},
            "publications": {"com.example.disk.P0"},
        }
        assert saved(small_disk) == acknowledged  # a 200 means on disk

        filler = fill(small_disk)
        refused = [
            await first.post("/sub", service("S3")),
            await first.post("/pub", service("P1", port=app_port, methods=["hi"])),
            await first.post("/unsub", service("S0")),
            await first.post("/unpub", service("P0")),
        ]
        for status, reply in refused:
            assert status == 503 and reply["err_no"] == STATE_NOT_SAVED, reply
            assert f"state not saved to {state_file}: [Errno 28] No space left on device" in reply["err_msg"]
            assert "the change is in effect" in reply["err_msg"]
        # Kept, not undone: the refused changes are in effect (and documented so).
        assert await live(first) == {
            "subscriptions": {"com.example.disk.S1", "com.example.disk.S2", "com.example.disk.S3"},
            "publications": {"com.example.disk.P1"},
        }
        assert saved(small_disk) == acknowledged  # the failed writes left the last good file

        status, ready = await first.admin_get("/readyz")
        assert status == 503, ready
        assert ready["detail"]["state_save"]["ok"] is False
        assert any(
            r.startswith(f"data_dir {small_disk}: state not saved to {state_file}") and "No space left" in r
            for r in ready["reasons"]
        ), ready["reasons"]
        m = await first.metrics()
        assert value(m, "regproxy_state_save_failures_total") >= 4
        assert value(m, "regproxy_state_save_failing") == 1 and value(m, "regproxy_ready") == 0
        assert value(m, "regproxy_state_saves_total") >= 4

        await first.kill()  # kill -9 while the disk is still full: the refused changes die with it
        filler.unlink()
        await second.start()
        await second.until_ready()
        assert await live(second) == acknowledged  # every acknowledged change, none that was refused

        # The disk fills up again, and empties: the sidecar saves its whole state on its own, and
        # is ready again, without another API call.
        filler = fill(small_disk)
        status, reply = await second.post("/sub", service("S4"))
        assert status == 503 and reply["err_no"] == STATE_NOT_SAVED, reply
        assert (await second.admin_get("/readyz"))[0] == 503
        filler.unlink()
        await second.until_ready(timeout=5)
        everything = {
            **acknowledged,
            "subscriptions": acknowledged["subscriptions"] | {"com.example.disk.S4"},
        }
        assert saved(small_disk) == everything == await live(second)
        m = await second.metrics()
        assert value(m, "regproxy_state_save_failing") == 0 and value(m, "regproxy_ready") == 1
        assert (await second.post("/sub", service("S5")))[0] == 200
        assert "com.example.disk.S5" in saved(small_disk)["subscriptions"]
    finally:
        for sc in (first, second):
            with contextlib.suppress(Exception):
                await sc.kill()
