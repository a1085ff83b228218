"""Passive outlier detection: hosts whose requests keep failing are ejected for a while.

The forwarder reports each upstream outcome. ``consecutive_failures`` failures in a row eject the
host for ``base_ejection_s`` × n, where n counts its ejections in a row (capped at
``max_ejection_s``): a host that fails again right after coming back stays out longer. A host that
stays in for ``max_ejection_s`` after its last ejection starts again from n = 1.

The max-ejection share needs cluster membership, which ``available(address)`` alone cannot know, so
the detector is given ``clusters_of(address)`` at construction: the host sets of every cluster the
address belongs to (one provider sidecar serves many services, so an address is often in several
clusters). An ejection happens only if, in every one of those clusters, the hosts ejected
afterwards are at most ``max_ejection_percent`` of the cluster: with 50 %, one of two hosts, one of
three, two of four; a cluster of one host is never emptied by ejection. Active check failures are
not bounded by this share (the forwarder falls back to unavailable hosts when none is left).

Per-request cost: ``report(ok=True)`` is one dict pop; ``available`` one dict lookup (plus a clock
read only for a host that is ejected).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from regproxy.config.health import OutlierSettings

log = logging.getLogger(__name__)

ClustersOf = Callable[[str], Iterable[Collection[str]]]


@dataclass(slots=True)
class _History:
    streak: int = 0  # ejections in a row: the next one lasts (streak + 1) × base
    total: int = 0
    returned_at: float | None = None


class OutlierDetector:
    def __init__(
        self,
        settings: OutlierSettings,
        clock: Callable[[], float] = time.monotonic,
        clusters_of: ClustersOf | None = None,
        on_eject: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._clusters_of = clusters_of
        self.on_eject = on_eject
        self.ejected: dict[str, float] = {}  # address -> monotonic time it comes back
        self._failures: dict[str, int] = {}  # consecutive failures, only for hosts with some
        self._history: dict[str, _History] = {}
        self.ejections = 0  # every ejection since start (for /metrics)
        self.refused = 0  # ejections not done because of the max-ejection share

    # --- the data path ------------------------------------------------------------------------

    def available(self, address: str) -> bool:
        until = self.ejected.get(address)
        if until is None:
            return True
        if until > self._clock():
            return False
        self._return(address)
        return True

    def report(self, address: str, ok: bool) -> None:
        if ok:
            self._failures.pop(address, None)
            return
        if not self.settings.enabled:
            return
        until = self.ejected.get(address)
        if until is not None:
            if until > self._clock():
                return  # requests the forwarder sent anyway (nothing else left) say nothing new
            self._return(address)
        n = self._failures.get(address, 0) + 1
        self._failures[address] = n
        if n >= self.settings.consecutive_failures:
            self._eject(address)

    # --- ejection -----------------------------------------------------------------------------

    def _return(self, address: str) -> None:
        self.ejected.pop(address, None)
        self._failures.pop(address, None)
        hist = self._history.get(address)
        if hist is not None:
            hist.returned_at = self._clock()
        log.info("outlier: %s is back after its ejection", address)

    def _eject(self, address: str) -> None:
        now = self._clock()
        for other, until in list(self.ejected.items()):
            if until <= now:
                self._return(other)
        if not self._share_allows(address):
            self.refused += 1
            log.debug("outlier: %s fails but ejecting it would exceed the max ejection share", address)
            return
        s = self.settings
        hist = self._history.get(address)
        if hist is None:
            hist = self._history[address] = _History()
        if hist.returned_at is not None and now - hist.returned_at >= s.max_ejection_s:
            hist.streak = 0  # it behaved for a long while: this failure streak is a new story
        hist.streak += 1
        hist.total += 1
        duration = min(s.base_ejection_s * hist.streak, s.max_ejection_s)
        self.ejected[address] = now + duration
        self._failures.pop(address, None)
        self.ejections += 1
        log.warning(
            "outlier: ejecting %s for %.1f s after %d consecutive failures (ejection %d in a row)",
            address, duration, s.consecutive_failures, hist.streak,
        )  # fmt: skip
        if self.on_eject is not None:
            self.on_eject(address)

    def _share_allows(self, address: str) -> bool:
        if self._clusters_of is None:
            return True
        limit = self.settings.max_ejection_percent
        ejected = self.ejected
        for members in self._clusters_of(address):
            out = sum(1 for a in members if a in ejected and a != address) + 1
            if out * 100 > limit * len(members):
                return False
        return True

    # --- housekeeping and views ---------------------------------------------------------------

    def retain(self, addresses: Collection[str]) -> None:
        """Forget hosts that are no longer in any cluster."""
        for table in (self.ejected, self._failures, self._history):
            for address in [a for a in table if a not in addresses]:
                del table[address]

    def describe(self, address: str) -> dict[str, Any]:
        until = self.ejected.get(address)
        now = self._clock()
        hist = self._history.get(address)
        left = until - now if until is not None and until > now else None
        return {
            "ejected": left is not None,
            # Wall-clock time (epoch seconds) for people; the detector itself runs on the monotonic clock.
            "ejected_until": round(time.time() + left, 3) if left is not None else None,
            "ejected_for_s": round(left, 3) if left is not None else None,
            "ejections": hist.total if hist is not None else 0,
            "consecutive_failures": self._failures.get(address, 0),
        }

    def known(self) -> set[str]:
        return set(self.ejected) | set(self._failures) | set(self._history)
