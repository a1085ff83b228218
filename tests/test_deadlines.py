"""The deadline wheel: never early, at most a tick late, discarded entries never fire, and one
failing handler does not hold up the others."""

from __future__ import annotations

import asyncio
import logging

import pytest

from regproxy.proxy.deadlines import TICK_S, DeadlineWheel
from tests.wait import wait_for


class Entry:
    __slots__ = ("due", "name", "slot")

    def __init__(self, name: str, due: float) -> None:
        self.name = name
        self.due = due
        self.slot = 0


async def test_entries_fire_in_time_order_never_early_and_once() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    wheel = DeadlineWheel(loop, lambda e: fired.append((e.name, loop.time())))  # type: ignore[attr-defined]
    start = loop.time()
    # Added out of order: a later deadline first, then an earlier one re-arms the timer.
    delays = {"late": 0.12, "early": 0.02, "mid": 0.06, "mid2": 0.06}
    entries = {name: Entry(name, start + d) for name, d in delays.items()}
    for name, delay in delays.items():
        wheel.add(entries[name], delay)
    assert all(e.slot for e in entries.values())
    await wait_for(lambda: len(fired) == len(entries), 5, "every deadline to fire", interval=0.01)
    assert [name for name, _ in fired] in (["early", "mid", "mid2", "late"], ["early", "mid2", "mid", "late"])
    for name, when in fired:
        due = entries[name].due
        # loop.time() is cached per loop pass in whole ms under uvloop: allow that much early.
        assert when >= due - 0.002, f"{name} fired {due - when:.4f} s early"
        # Late by a tick at most, and by whatever a loaded machine holds the loop up: bounded only
        # against a wheel that forgets to fire until something else wakes it.
        assert when <= due + TICK_S + 0.5, f"{name} fired {when - due:.4f} s late"
    assert all(e.slot == 0 for e in entries.values())
    assert len(wheel) == 0


async def test_discarded_entries_never_fire_and_the_timer_stops() -> None:
    loop = asyncio.get_running_loop()
    fired: list[Entry] = []
    wheel = DeadlineWheel(loop, fired.append)  # type: ignore[arg-type]
    entries = [Entry(str(i), 0) for i in range(1000)]
    for i, e in enumerate(entries):
        wheel.add(e, 0.01 + (i % 10) * 0.005)
    keep = entries[::100]
    for e in entries:
        if e not in keep:
            wheel.discard(e)
            assert e.slot == 0
    assert len(wheel) == len(keep)
    # The timer stops once nothing is left: the kept entries (all due first) have fired, and a
    # discarded one still in the wheel would have kept it running until it fired too.
    await wait_for(lambda: wheel._timer is None, 5, "the wheel's timer to stop", interval=0.01)
    assert sorted(fired, key=id) == sorted(keep, key=id)
    assert wheel._timer is None and not wheel._heap and not wheel._buckets and not wheel._queued


async def test_a_failing_handler_does_not_hold_up_the_others(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []

    def handler(e: Entry) -> None:
        if e.name == "bad":
            raise RuntimeError("boom")
        fired.append(e.name)

    wheel = DeadlineWheel(loop, handler)  # type: ignore[arg-type]
    for name in ("a", "bad", "b"):
        wheel.add(Entry(name, 0), 0.01)
    with caplog.at_level(logging.ERROR):
        await asyncio.sleep(0.05)
    assert sorted(fired) == ["a", "b"]
    assert "deadline handler failed" in caplog.text


class FakeLoop:
    """Time that moves only when told to, and the one timer the wheel keeps armed."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, object]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback):  # type: ignore[no-untyped-def]
        loop = self

        class Handle:
            def cancel(self) -> None:
                loop.timers.remove(entry)

        entry = (when, callback)
        self.timers.append(entry)
        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self.timers and min(self.timers, key=lambda t: t[0])[0] <= self.now:
            when, callback = min(self.timers, key=lambda t: t[0])
            self.timers.remove((when, callback))
            callback()  # type: ignore[operator]


def test_long_delays_share_coarse_buckets_and_fire_within_one_percent() -> None:
    loop = FakeLoop()
    fired: list[tuple[Entry, float]] = []
    wheel = DeadlineWheel(loop, lambda e: fired.append((e, loop.now)))  # type: ignore[arg-type]
    # A minute of steady traffic with the ingress's 60 s bound, every request answered at once:
    # the queued bucket numbers stay about a hundred, not one per 5 ms tick (12,000).
    most = 0
    for _ in range(60_000):
        e = Entry("answered", 0)
        wheel.add(e, 60.0)
        wheel.discard(e)
        loop.advance(0.001)
        most = max(most, len(wheel._heap))
    assert most <= 110, most
    # Unanswered ones fire never early and at most 1 % of their delay (or a tick) late.
    waiting = [Entry(str(d), loop.now + d) for d in (0.003, 0.2, 2.0, 60.0)]
    for e in waiting:
        wheel.add(e, e.due - loop.now)
    for _ in range(62_000):
        loop.advance(0.001)
    assert sorted(e.name for e, _ in fired) == sorted(e.name for e in waiting)
    for e, when in fired:
        delay = float(e.name)
        assert e.due - 1e-9 <= when <= e.due + max(TICK_S, delay * 0.01) + 0.001, (e.name, when - e.due)


async def test_add_at_and_discard_all_are_add_and_discard_for_each() -> None:
    loop = asyncio.get_running_loop()
    fired: list[Entry] = []
    wheel = DeadlineWheel(loop, fired.append)  # type: ignore[arg-type]
    near = [Entry(f"n{i}", 0) for i in range(8)]
    far = [Entry(f"f{i}", 0) for i in range(8)]
    for entries, delay in ((near, 0.02), (far, 0.5)):
        slot = wheel.slot_for(delay)
        for e in entries:
            e.slot = slot
        wheel.add_at(entries, slot)  # type: ignore[arg-type]
    assert len(wheel) == 16 and len(wheel._buckets) == 2
    far_slot = far[0].slot
    # Answers of the two buckets interleaved: every far one and every other near one.
    answered: list[Entry] = []
    for i in range(8):
        answered.append(far[i])
        if i % 2 == 0:
            answered.append(near[i])
    wheel.discard_all(answered)  # type: ignore[arg-type]
    assert all(e.slot == 0 for e in answered)
    assert far_slot not in wheel._buckets, "a bucket emptied by answers is dropped"
    assert len(wheel) == 4
    await asyncio.sleep(0.06)
    assert sorted(fired, key=id) == sorted(near[1::2], key=id)
    assert len(wheel) == 0 and wheel._timer is None
