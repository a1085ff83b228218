"""Health of upstream hosts and of the local application.

* ``HostHealth``: what the forwarder asks when it picks a host (``available``) and tells after each
  upstream outcome (``report``). ``NoHealth`` is the do-nothing default; ``hosts.Health`` is the real
  one: active heartbeat checks (``active.ActiveChecker``) and passive outlier detection
  (``outlier.OutlierDetector``) combined.
* ``app.AppWatch``: the provider side. It heartbeats the local application on every port a
  publication names and takes those publications out of the registries while it does not answer.

The settings are the config model's ``health:`` section (regproxy.config.health), used as they are.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["HostHealth", "NoHealth"]


class HostHealth(Protocol):
    def available(self, address: str) -> bool:
        """False while the host is ejected (outlier) or failing its active checks."""
        ...

    def any_unavailable(self) -> bool:
        """False when ``available`` is True for every address: the data path then asks no host."""
        ...

    def report(self, address: str, ok: bool) -> None:
        """One upstream outcome: ok = a response arrived; False = connect failure, reset with the
        request in flight, or timeout."""
        ...


class NoHealth:
    """Health checking off: every host is available, reports are dropped."""

    __slots__ = ()

    def available(self, address: str) -> bool:
        return True

    def any_unavailable(self) -> bool:
        return False

    def report(self, address: str, ok: bool) -> None:
        return None
