"""Free loopback ports for tests: the one place the suite picks them.

A port is free when picked and closed again at once, so a test that picks several, one at a time,
could be handed the same one twice (CI once got a sidecar whose app port was its API port, and once
posted to a sidecar's API port that another sidecar's ingress had been given too).  Every port
handed out is remembered, and never handed out again in this process.

They are taken below the kernel's ephemeral range (``ip_local_port_range``) and above the ports tests
name themselves, from a share of that band of this pytest-xdist worker's own.  A port taken from the
ephemeral range could be given meanwhile to an outgoing connection as its source port (a sidecar
dialling ZooKeeper or another sidecar's ingress: CI once saw a sidecar's egress port taken that way),
and two workers could pick the same one.  Where the band leaves too little room, the kernel picks.

A listener a test opens itself should bind port 0 and read its port back instead (no race at all);
these are for ports another process, or a config, must be told before anything listens on them.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
from collections.abc import Iterator

# Ports handed out lately in this process: 4096 is far more than one session uses.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4096)
# Between the ports the suite names itself (Dubbo's 20880-20999, the API's 22222-22299; configs that are
# only printed name 30000) and the ephemeral range.
_LOWEST = 23_000
_HIGHEST = 30_000
_ROOM = 2_048  # the least share worth taking; with less, the kernel picks


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _candidates() -> Iterator[int] | None:
    """This worker's ports, from a start of its own, round and round; None: let the kernel pick."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    share = (min(_ephemeral_start(), _HIGHEST) - _LOWEST) // count
    if share < _ROOM:
        return None
    first = _LOWEST + index * share
    offset = os.getpid() % share  # runs one after another start apart
    return itertools.cycle([*range(first + offset, first + share), *range(first, first + offset)])


_CANDIDATES = _candidates()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _next_port() -> int:
    if _CANDIDATES is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for port in _CANDIDATES:
        if _bindable(port):
            return port
    raise AssertionError("unreachable: the candidates cycle for ever")


def free_port() -> int:
    """A free loopback port, not one this process was handed lately."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, none handed out lately in this process."""
    ports: list[int] = []
    while len(ports) < n:
        port = _next_port()
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            ports.append(port)
    return ports
