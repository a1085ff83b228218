"""What a sidecar needs to recognise its own traffic coming back to it, and to say so.

Two guards, both free on the common path:

* Every egress appends the sidecar's id (``LoopGuard.id``, 8 random hex digits made at start) to the
  request's ``regproxy.via`` attachment (see regproxy.dubbo.request); a request that reaches an
  egress whose id it already carries went round a loop of sidecars and is answered with an error
  there. The forwarder does that per request with a bounded search of the body's tail.
* The pools remember the local address of every upstream connection they open; a listener that
  accepts a connection from one of them looks at it once, at its first bytes, and answers every
  request on it with the loop error when it is the sidecar talking to itself: the ingress's
  connection to its application arriving at one of the sidecar's own listeners (a publication whose
  port is the sidecar's), or the egress's connection to a provider arriving at its own egress.
  The egress dialling its own ingress is legitimate (a consumer and a provider in one pod).

This module holds the bookkeeping and the rate-limited log; it is not compiled (nothing in it runs
per request).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from regproxy.dubbo.request import VIA_ID_LEN, via_entry

log = logging.getLogger("regproxy.proxy.loops")

# One log line per service (or connection kind) and listener this often at most: a loop answered at
# once can bring thousands of requests a second, and one line says what is wrong.
REPORT_EVERY_S = 60.0
_MAX_REPORT_KEYS = 4096


def _address(sockname: object) -> str | None:
    """``ip:port`` of a socket address tuple, as DownstreamConnection writes its peer."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"{sockname[0]}:{sockname[1]}"
    return None


class LoopGuard:
    """One per sidecar, shared by its egress and ingress (their forwarders and pools)."""

    def __init__(self, sidecar_id: str | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = sidecar_id or secrets.token_hex(VIA_ID_LEN // 2)
        if len(self.id) != VIA_ID_LEN or not self.id.isascii() or " " in self.id:
            raise ValueError(f"sidecar id {self.id!r}: {VIA_ID_LEN} ASCII characters without spaces")
        self.id_bytes = self.id.encode("ascii")
        # What an egress writes before a request's final Z when the request carries no marker yet.
        self.via_suffix = via_entry(self.id_bytes) + b"Z"
        # Local "ip:port" of each open upstream connection -> (listener whose pool opened it, address,
        # the "ip:port" it is connected to).
        self._ends: dict[str, tuple[str, str, str]] = {}
        self._reported: dict[str, tuple[float, int]] = {}  # key -> (last line, requests since)
        self._clock = clock

    # --- connections ---------------------------------------------------------------------------

    def opened(self, sockname: object, listener: str, address: str, peername: object = None) -> str | None:
        """An upstream connection of ``listener``'s pool to ``address`` is open with local address
        ``sockname`` and remote ``peername``; the key to pass to ``closed`` (None: not an IP socket)."""
        key = _address(sockname)
        if key is not None:
            self._ends[key] = (listener, address, _address(peername) or address)
        return key

    def closed(self, key: str) -> None:
        self._ends.pop(key, None)

    def vet(self, peer: str, listener: str, local: object = None) -> str | None:
        """Why a connection ``listener`` accepted from ``peer`` ("ip:port") on its local address
        ``local`` (a socket address) is this sidecar talking to itself in a loop; None when it is not
        (almost always: one dict lookup).

        Both ends must match: the kernel gives connections to different destinations the same local
        port, so a client may connect from the very ip:port of one of this sidecar's upstream
        connections to somewhere else."""
        end = self._ends.get(peer)
        if end is None:
            return None
        opener, address, remote = end
        here = _address(local)
        if here is not None and here != remote:
            return None
        if opener == "ingress":
            return (
                f"the ingress's connection to the application at {address} arrived at this sidecar's "
                f"({self.id}) own {listener} listener: a service is published with the {listener} port "
                "as its application port"
            )
        if listener == "egress":
            return (
                f"the egress's connection to provider {address} arrived at this sidecar's ({self.id}) "
                "own egress: a static cluster or a provider address names the egress"
            )
        return None  # egress -> own ingress: a consumer and a provider behind one sidecar

    # --- the log -------------------------------------------------------------------------------

    def report(self, key: str, message: str) -> None:
        """Log ``message`` as a warning unless a line for ``key`` was logged in the last minute; the
        next line says how many more there were."""
        now = self._clock()
        last = self._reported.get(key)
        if last is not None and now - last[0] < REPORT_EVERY_S:
            self._reported[key] = (last[0], last[1] + 1)
            return
        if len(self._reported) >= _MAX_REPORT_KEYS:
            self._reported.clear()
        self._reported[key] = (now, 0)
        more = f" ({last[1]} more since the last report)" if last is not None and last[1] else ""
        log.warning("%s%s", message, more)
