"""StateWriter: state saves run off the event loop and concurrent requests share one write; a write
that fails is reported to every caller it covered and retried until one succeeds."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

import regproxy.state as state_module
from regproxy.state import SavedState, StateSaveError, StateStore, StateWriter
from tests.wait import wait_for


class SlowStore(StateStore):
    """A store whose writes take ``delay`` seconds and record the thread and state they saw."""

    def __init__(self, data_dir: Path, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__(data_dir)
        self.delay = delay
        self.fail = fail
        self.saved: list[SavedState] = []
        self.threads: set[int] = set()

    def save(self, state: SavedState) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail:
            raise OSError(28, "No space left on device")
        super().save(state)
        self.saved.append(state)


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def snapshot(self) -> SavedState:
        return SavedState(subscriptions=[{"n": self.n}])


async def test_save_returns_once_the_change_is_on_disk_and_concurrent_saves_share_writes(
    tmp_path: Path,
) -> None:
    store = SlowStore(tmp_path, delay=0.05)
    state = Counter()
    writer = StateWriter(store, state.snapshot)

    async def change_and_save(i: int) -> None:
        state.n = max(state.n, i)
        await writer.save()
        # Whatever write covered it, the file holds this change or a later one.
        assert store.load().subscriptions[0]["n"] >= i

    await asyncio.gather(*(change_and_save(i) for i in range(1, 21)))
    assert store.load().subscriptions == [{"n": 20}]
    assert 1 <= writer.writes <= 3  # group commit: 20 saves, a write or two, never 20
    assert threading.get_ident() not in store.threads  # written off the event loop
    assert not writer.pending


async def test_the_loop_keeps_running_during_a_slow_write(tmp_path: Path) -> None:
    store = SlowStore(tmp_path, delay=0.3)
    writer = StateWriter(store, Counter().snapshot)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(ticker())
    await writer.save()
    task.cancel()
    assert ticks >= 10  # a blocking write would have allowed one tick at most


async def test_save_later_coalesces_and_flush_writes_what_is_pending(tmp_path: Path) -> None:
    store = SlowStore(tmp_path)
    state = Counter()
    writer = StateWriter(store, state.snapshot)
    for i in range(50):
        state.n = i
        writer.save_later(0.05)
    assert writer.pending and store.saved == []
    await wait_for(lambda: writer.writes and not writer.pending, 5, "the coalesced write")
    assert writer.writes == 1 and store.load().subscriptions == [{"n": 49}]
    state.n = 99
    writer.save_later(60)
    await writer.flush()  # shutdown does not wait for the timer
    assert store.load().subscriptions == [{"n": 99}]


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(state_module, "SAVE_RETRY_S", 0.05)
    return 0.05


async def test_a_failed_write_tells_every_caller_it_covered_and_does_not_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SlowStore(tmp_path, delay=0.05, fail=True)
    writer = StateWriter(store, Counter().snapshot)
    results = await asyncio.wait_for(
        asyncio.gather(*(writer.save() for _ in range(5)), return_exceptions=True), 5
    )
    # Group commit still: five callers, one or two writes, and each caller hears that its change
    # is not on disk, with the file and the OS's reason.
    assert all(isinstance(r, StateSaveError) for r in results), results
    error = results[0]
    assert isinstance(error, StateSaveError)
    assert error.path == tmp_path / "regproxy-state.json"
    assert str(error) == f"state not saved to {error.path}: [Errno 28] No space left on device"
    assert 1 <= writer.failures <= 2 and not writer.pending
    assert writer.describe()["ok"] is False and writer.error == "[Errno 28] No space left on device"
    assert "cannot save state" in caplog.text and "No space left" in caplog.text
    writer.close()


async def test_a_failing_disk_is_retried_with_the_whole_state_until_a_write_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_retry: float
) -> None:
    store = SlowStore(tmp_path)
    state = Counter()
    writer = StateWriter(store, state.snapshot)
    state.n = 1
    await writer.save()  # acknowledged: on disk
    store.fail = True
    state.n = 2
    with pytest.raises(StateSaveError):
        await writer.save()  # refused: in effect in memory, not on disk
    assert store.load().subscriptions == [{"n": 1}]
    await wait_for(lambda: writer.failures >= 4, 5, "retries while the disk is full")
    # One ERROR for the whole run of failures, not one per retry.
    logged = [r.levelname for r in caplog.records if r.levelno > logging.DEBUG and "save state" in r.message]
    assert logged == ["ERROR"]
    assert store.load().subscriptions == [{"n": 1}]  # a failed write leaves the last good file
    store.fail = False  # the disk has room again: no new change needed for the state to be saved
    await wait_for(lambda: writer.error is None, 5, "a retry that succeeds")
    assert store.load().subscriptions == [{"n": 2}]
    assert writer.describe()["ok"] is True and writer.describe()["consecutive_failures"] == 0
    assert "state saved to" in caplog.text and "again" in caplog.text
    failures = writer.failures
    await asyncio.sleep(fast_retry * 4)
    assert writer.failures == failures and not writer.pending  # no retries once saved
    state.n = 3
    await writer.save()  # and saves succeed again
    assert store.load().subscriptions == [{"n": 3}]


async def test_a_bug_while_writing_is_a_failed_save_not_a_dead_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SlowStore(tmp_path)
    broken = True

    def snapshot() -> SavedState:
        if broken:
            raise TypeError("cannot encode")
        return SavedState(subscriptions=[{"n": 1}])

    writer = StateWriter(store, snapshot)
    with pytest.raises(StateSaveError, match="TypeError: cannot encode"):
        await asyncio.wait_for(writer.save(), 5)
    assert "Traceback" in caplog.text  # a bug: logged with its traceback
    broken = False
    await asyncio.wait_for(writer.save(), 5)
    assert store.load().subscriptions == [{"n": 1}] and writer.error is None
    writer.close()


async def test_flush_on_shutdown_reports_a_failure_and_close_stops_the_retries(
    tmp_path: Path, fast_retry: float
) -> None:
    store = SlowStore(tmp_path, fail=True)
    writer = StateWriter(store, Counter().snapshot)
    writer.save_later(0.01)
    await wait_for(lambda: writer.failures == 1, 5, "the first failed write")
    assert not writer.pending  # written (and failed): flush must still try, the state is not saved
    with pytest.raises(StateSaveError):
        await writer.flush()
    writer.close()
    failures = writer.failures
    await asyncio.sleep(fast_retry * 4)
    assert writer.failures == failures
