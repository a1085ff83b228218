"""Health of upstream hosts and of the local application.

* ``HostHealth``: what the forwarder asks when it picks a host (``available``) and tells after each
  upstream outcome (``report``). ``NoHealth`` is the do-nothing default; ``hosts.Health`` is the real
  one: active heartbeat checks (``active.ActiveChecker``) and passive outlier detection
  (``outlier.OutlierDetector``) combined.
* ``app.AppWatch``: the provider side. It heartbeats the local application on every port a
  publication names and takes those publications out of the registries while it does not answer.

Settings are plain dataclasses with the defaults the sidecar uses when the config says nothing;
``HealthSettings.from_dict`` reads the config file's ``health:`` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar

__all__ = [
    "ActiveSettings",
    "AppCheckSettings",
    "HealthSettings",
    "HostHealth",
    "NoHealth",
    "OutlierSettings",
]


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


@dataclass(frozen=True, slots=True)
class ActiveSettings:
    interval_s: float = 5.0
    timeout_s: float = 1.0
    unhealthy_threshold: int = 3  # consecutive failed heartbeats that make a healthy host unhealthy
    healthy_threshold: int = 2  # consecutive answered heartbeats that make an unhealthy host healthy
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    consecutive_failures: int = 5
    base_ejection_s: float = 10.0  # the n-th ejection in a row lasts n × this ...
    max_ejection_s: float = 300.0  # ... up to this
    max_ejection_percent: float = 50.0  # of a cluster's hosts, at most, ejected at once
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AppCheckSettings:
    interval_s: float = 2.0
    timeout_s: float = 1.0
    failures: int = 2  # consecutive failed heartbeats before the publications are withdrawn
    enabled: bool = True


_S = TypeVar("_S")


def _section(cls: type[_S], data: Mapping[str, Any] | None, where: str) -> _S:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key")
    values: dict[str, Any] = {}
    for key, value in data.items():
        default = known[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{key}: expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{where}.{key}: expected a positive number, got {value!r}")
        elif isinstance(default, int) and not isinstance(value, int):
            raise ValueError(f"{where}.{key}: expected a whole number, got {value!r}")
        values[key] = value
    return cls(**values)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    active: ActiveSettings = field(default_factory=ActiveSettings)
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    app_check: AppCheckSettings = field(default_factory=AppCheckSettings)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "health") -> HealthSettings:
        """The config file's ``health:`` section (every key optional); ValueError names a bad key."""
        data = data or {}
        unknown = sorted(set(data) - {"active", "outlier", "app_check"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key")
        settings = cls(
            active=_section(ActiveSettings, data.get("active"), f"{where}.active"),
            outlier=_section(OutlierSettings, data.get("outlier"), f"{where}.outlier"),
            app_check=_section(AppCheckSettings, data.get("app_check"), f"{where}.app_check"),
        )
        if settings.outlier.max_ejection_percent > 100:
            raise ValueError(f"{where}.outlier.max_ejection_percent: at most 100")
        return settings
