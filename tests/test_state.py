"""StateWriter: state saves run off the event loop and concurrent requests share one write."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from regproxy.state import SavedState, StateStore, StateWriter


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
    await asyncio.sleep(0.2)
    assert writer.writes == 1 and store.load().subscriptions == [{"n": 49}]
    state.n = 99
    writer.save_later(60)
    await writer.flush()  # shutdown does not wait for the timer
    assert store.load().subscriptions == [{"n": 99}]


async def test_a_failed_write_is_logged_and_does_not_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = StateWriter(SlowStore(tmp_path, fail=True), Counter().snapshot)
    await asyncio.wait_for(writer.save(), 5)
    assert writer.failures == 1 and not writer.pending
    assert "cannot save state" in caplog.text and "No space left" in caplog.text
