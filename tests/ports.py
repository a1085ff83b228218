"""Free loopback ports for tests: the one place the suite picks them.

A port is free when picked and closed again at once, so a test that picks several, one at a time,
could be handed the same one twice (CI once got a sidecar whose app port was its API port, and once
posted to a sidecar's API port that another sidecar's ingress had been given too).  Every port
handed out is remembered, and never handed out again in this process.

A listener a test opens itself should bind port 0 and read its port back instead (no race at all);
these are for ports another process, or a config, must be told before anything listens on them.
"""

from __future__ import annotations

import collections
import socket

# Ports handed out lately in this process: 4096 is far more than one session uses.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4096)


def free_port() -> int:
    """A free loopback port, not one this process was handed lately."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, none handed out lately in this process."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            ports.append(port)
    return ports
