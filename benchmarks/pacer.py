"""Periodic wake-ups on exact CLOCK_MONOTONIC instants, for the open-loop schedule.

Event-loop timers (uvloop's and asyncio's) have millisecond resolution: requests released by them
leave in bursts once a millisecond, up to 1 ms after their intended time, which would add about
0.5 ms to every latency measured from the intended time and hit the proxy with bursts no real
client sends. A Linux ``timerfd`` wakes the loop within microseconds of the instant instead
(Python has ``os.timerfd_create`` only from 3.13, hence ctypes). It is armed once, periodic, in
phase with the schedule: re-arming it per request costs a system call that is slow in a VM. The
process's timer slack is lowered too: by default the kernel may postpone a wake-up by 50 µs to
merge it with others.

Where timerfd is not available the pacer falls back to a 1 ms loop timer, and says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29
_FALLBACK_TICK_S = 0.001


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create  # noqa: B018 - raises AttributeError where there is no timerfd
        return libc
    except (OSError, AttributeError):
        return None


class Pacer:
    """Calls ``callback`` at ``first``, ``first + period``, ... until closed."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None], first: float, period: float
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None
        libc = _libc()
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC) if libc is not None else -1
        if libc is None or fd < 0:
            self._handle = loop.call_later(max(0.0, first - time.monotonic()), self._ticked)
            return
        self._fd = fd
        libc.prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)  # 1 µs; a failure only costs precision
        spec = _Itimerspec()
        sec = int(first)
        spec.it_value.tv_sec, spec.it_value.tv_nsec = sec, max(1, int((first - sec) * 1e9))  # 0 disarms
        psec = int(period)
        spec.it_interval.tv_sec, spec.it_interval.tv_nsec = psec, max(1, int((period - psec) * 1e9))
        if libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the number of expiries since the last read: one callback is enough
        except BlockingIOError:
            return
        self._callback()

    def _ticked(self) -> None:
        self._handle = self._loop.call_later(_FALLBACK_TICK_S, self._ticked)
        self._callback()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
