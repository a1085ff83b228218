"""``Health``: the HostHealth the forwarder uses, active checks and outlier detection combined.

A host is available when its heartbeats are answered (or not checked yet) and it is not ejected.
Reports go to the outlier detector. ``egress_view`` derives the two things both need from the
egress routing table: every host address, and the clusters an address is in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from regproxy.config.health import HealthSettings
from regproxy.health.active import ActiveChecker, HostsProvider
from regproxy.health.h2ping import Pinger
from regproxy.health.outlier import ClustersOf, OutlierDetector
from regproxy.health.rounds import Rounds
from regproxy.routing import RoutingTable, TableHolder
from regproxy.routing.model import SPEAKS_ANY

if TYPE_CHECKING:
    from regproxy.tls import UpstreamTLS

__all__ = ["Health", "egress_view"]


def egress_view(holder: TableHolder) -> tuple[HostsProvider, ClustersOf]:
    """``(hosts, clusters_of)`` over a TableHolder's current table, indexed once per table snapshot
    (tables are immutable and swapped whole, so the index of the last one seen stays valid)."""
    cache: dict[str, Any] = {"table": None, "index": {}}

    def index() -> dict[str, list[frozenset[str]]]:
        table: RoutingTable = holder.current
        if cache["table"] is not table:
            by_address: dict[str, list[frozenset[str]]] = {}
            for cluster in table.clusters.values():
                members = frozenset(h.address for h in cluster.hosts)
                for address in members:
                    by_address.setdefault(address, []).append(members)
            cache["table"], cache["index"] = table, by_address
        result: dict[str, list[frozenset[str]]] = cache["index"]
        return result

    def hosts() -> Iterable[str]:
        return list(index())

    def clusters_of(address: str) -> Iterable[Collection[str]]:
        return index().get(address, ())

    return hosts, clusters_of


def speaks_view(holder: TableHolder) -> Callable[[str], int]:
    """What each host address of a TableHolder's current table speaks (``Host.speaks`` bits, over
    every cluster it is in), indexed once per table snapshot: the active checks heartbeat a Dubbo
    host and PING a Triple-only one."""
    cache: dict[str, Any] = {"table": None, "index": {}}

    def speaks(address: str) -> int:
        table: RoutingTable = holder.current
        if cache["table"] is not table:
            bits: dict[str, int] = {}
            for cluster in table.clusters.values():
                for host in cluster.hosts:
                    bits[host.address] = bits.get(host.address, 0) | host.speaks
            cache["table"], cache["index"] = table, bits
        return int(cache["index"].get(address, SPEAKS_ANY))

    return speaks


class Health:
    """HostHealth with active heartbeat checks and passive outlier detection.

    ``start()`` begins the checks (and a sweep that forgets outlier state of hosts that left the
    table); ``stop()`` ends them. ``ejections`` counts outlier ejections for /metrics; ``on_eject``
    is called with the address on each one, ``on_unreachable`` when active checks fail a host.
    """

    def __init__(
        self,
        settings: HealthSettings,
        hosts_provider: HostsProvider,
        clusters_of: ClustersOf | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_eject: Callable[[str], None] | None = None,
        tls: UpstreamTLS | None = None,
        on_unreachable: Callable[[str], None] | None = None,
        speaks_of: Callable[[str], int] | None = None,
        pinger: Pinger | None = None,
    ) -> None:
        self.settings = settings
        self.hosts_provider = hosts_provider
        self.active = ActiveChecker(
            settings.active,
            hosts_provider,
            tls=tls,
            on_unreachable=on_unreachable,
            speaks_of=speaks_of,
            pinger=pinger,
        )
        self.outlier = OutlierDetector(settings.outlier, clock, clusters_of, on_eject)
        # Bound once: the data path calls these per request.
        self._unhealthy = self.active.unhealthy
        self._ejected = self.outlier.ejected
        self._outlier_available = self.outlier.available
        # The detector's own method, so a report costs one call, not two.
        self.report = self.outlier.report  # type: ignore[method-assign]
        # Forgets the outlier state of hosts that left the table.
        sweep_s = max(settings.active.interval_s, 1.0)
        self._sweeper = Rounds("health-sweep", "outlier sweep", self._sweep, sweep_s)

    @property
    def ejections(self) -> int:
        return self.outlier.ejections

    # --- HostHealth ---------------------------------------------------------------------------

    def any_unavailable(self) -> bool:
        # An ejection that has run out still counts until ``available`` returns the host: at
        # worst one more request checks each host, as it always did.
        return bool(self._unhealthy) or bool(self._ejected)

    def available(self, address: str) -> bool:
        if address in self._unhealthy:
            return False
        return address not in self._ejected or self._outlier_available(address)

    def report(self, address: str, ok: bool) -> None:  # replaced by the detector's in __init__
        self.outlier.report(address, ok)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.active.start()
        self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()
        await self.active.stop()

    async def _sweep(self) -> None:
        self.outlier.retain(set(self.hosts_provider()))

    # --- views --------------------------------------------------------------------------------

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per host: active check state and outlier state (for the admin endpoint)."""
        try:
            addresses = set(self.hosts_provider())
        except Exception:
            addresses = set()
        addresses |= self.active.known() | self.outlier.known()
        out: dict[str, dict[str, Any]] = {}
        for address in sorted(addresses):
            entry = self.active.describe(address)
            entry.update(self.outlier.describe(address))
            entry["available"] = self.available(address)
            out[address] = entry
        return out
