"""CPU time and memory of other processes, read from /proc (Linux only).

CPU is ``utime + stime`` of the whole process (every thread's, kazoo's included) in clock ticks:
10 ms on most kernels, which is why every measurement window lasts seconds and is divided by the
requests it served, never read for one request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process ``pid`` (all its threads).

    The kernel keeps the total exactly and splits it by the ratio of ticks that found the process
    in user or in kernel mode: over a window of seconds the split is good to a few percent.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: fields are counted after the last ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    user, system = cpu_times(pid)
    return user + system


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def sample(groups: Mapping[str, Iterable[int]]) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds so far, summed per group of pids (a process that is gone counts as 0)."""
    out: dict[str, tuple[float, float]] = {}
    for name, pids in groups.items():
        user = system = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                u, s = cpu_times(pid)
                user += u
                system += s
        out[name] = (user, system)
    return out


def machine_idle() -> float:
    """Idle CPU seconds of the whole machine so far (all cores), from /proc/stat's first line.

    Only idle time is read: the kernel measures it exactly, whereas the busy fields are sampled at
    each timer tick, which misses work that runs in step with the tick (the open-loop generator's
    periodic wake-ups do). Busy time is then wall time × cores − idle.
    """
    with open("/proc/stat", "rb") as f:
        values = f.readline().split()[1:]
    return (int(values[3]) + int(values[4])) * _TICK_S  # idle + iowait
