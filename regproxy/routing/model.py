"""Value types of the routing layer: service keys, hosts, clusters and routes.

Everything here is immutable so that a routing-table snapshot can be shared by every request
without copying or locking.  Validation happens at construction (config load, admin API,
registry event), never per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

# Dubbo consumers send "0.0.0" when no version is set; "" and "*" are also seen in the wild.
NO_VERSION: tuple[str, ...] = ("", "0.0.0", "*")
_NO_VERSION_SET = frozenset(NO_VERSION)


def normalize_version(v: str | None) -> str:
    """Map every spelling of "no version" (None, "", "0.0.0", "*") to ""."""
    if v is None or v in _NO_VERSION_SET:
        return ""
    return v


def service_label(
    interface: str, version: str | None = "", group: str | None = "", *, any_version: bool = False
) -> str:
    """Dubbo's service key form, ``group/interface:version``: regproxy's one name for a service in
    cluster names, metrics labels, logs and error messages.

    Empty parts are left out, and so is a version that means none (``normalize_version``), except
    that with ``any_version`` (a subscription's, where "*" asks for every version) "*" is shown."""
    label = interface
    if group:
        label = f"{group}/{label}"
    if version and (version not in _NO_VERSION_SET or (any_version and version == "*")):
        label = f"{label}:{version}"
    return label


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses only allow assignment through object.__setattr__ (used in __post_init__).
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A Dubbo service identity; ``str()`` gives Dubbo's ``group/interface:version`` form."""

    interface: str
    version: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        if not self.interface or "/" in self.interface or ":" in self.interface:
            raise ValueError(f"invalid interface name {self.interface!r}")
        if "/" in self.group:
            raise ValueError(f"invalid group {self.group!r}: must not contain '/'")
        _set(self, "version", normalize_version(self.version))

    def __str__(self) -> str:
        return service_label(self.interface, self.version, self.group)

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        """Inverse of ``str()``: ``[group/]interface[:version]``."""
        group, slash, rest = text.partition("/")
        if not slash:
            group, rest = "", text
        interface, _, version = rest.partition(":")
        return cls(interface, version, group)


def split_address(address: str) -> tuple[str, int]:
    """Split ``"ip:port"`` / ``"[v6]:port"`` into (host, port); ValueError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"invalid address {address!r}: unbalanced brackets")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {address!r}: IPv6 hosts must be written as [addr]:port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid address {address!r}: port must be 1..65535")
    return host, port


# The protocols a host takes calls in (``Host.speaks``, bits): Dubbo 2 frames, Triple (gRPC over
# HTTP/2), or both (a sidecar's ingress, whose port tells them apart by their first bytes, and a
# static cluster's host, which the operator vouches for).  A planner keeps only the hosts that speak
# the caller's protocol (regproxy.proxy.plan).
SPEAKS_DUBBO: Final = 1
SPEAKS_TRI: Final = 2
SPEAKS_ANY: Final = SPEAKS_DUBBO | SPEAKS_TRI
# The URL protocol a provider registers for each (``dubbo://``, ``tri://``).
PROTOCOL_BITS: Final = {"dubbo": SPEAKS_DUBBO, "tri": SPEAKS_TRI}


def speaks_names(speaks: int) -> list[str]:
    """The protocol names of a ``Host.speaks`` value, for views."""
    return [name for name, bit in PROTOCOL_BITS.items() if speaks & bit]


@dataclass(frozen=True, slots=True)
class Host:
    """One upstream endpoint.  ``weight <= 0`` or ``healthy=False`` keeps it out of load balancing.
    ``speaks``: the protocols it takes (SPEAKS_* bits)."""

    address: str
    weight: int = 100
    healthy: bool = True
    # Read-only view after construction; excluded from hashing because mappings are unhashable.
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    speaks: int = SPEAKS_ANY
    _host: str = field(init=False, repr=False, compare=False, hash=False)
    _port: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        host, port = split_address(self.address)
        _set(self, "_host", host)
        _set(self, "_port", port)
        _set(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __reduce__(self) -> tuple[type[Host], tuple[str, int, bool, dict[str, str], int]]:
        # mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict instead.
        return (Host, (self.address, self.weight, self.healthy, dict(self.metadata), self.speaks))

    @property
    def host(self) -> str:
        """IP or hostname, without IPv6 brackets."""
        return self._host

    @property
    def port(self) -> int:
        return self._port


class RequestView(Protocol):
    """What a cluster's policy may read of a request (``dubbo.request.RequestBody``)."""

    method: str

    @property
    def attachments(self) -> Mapping[str, Any]: ...

    def arguments(self) -> list[Any]: ...


class HostPolicy(Protocol):
    """A subscription's dynamic rules bound to its hosts (``governance.policy.ClusterPolicy``): the
    routers the planner runs between choosing the cluster and the local file's subsets, and the
    timeout the config center's overrides set."""

    routes: bool  # a router rule is in force
    routes_tags: bool  # it does Dubbo's tag routing itself: the planner's static tag stage steps aside

    def fixed_for(self, method: str) -> bool:
        """Every request for ``method`` gets the same hosts (a plan may be memoised)."""
        ...

    def request_key(self, request: RequestView) -> object | None:
        """What of a request besides its method decides the hosts, when that is little (a tag): a
        plan may be memoised under it; None: every request is routed."""
        ...

    def key_of(self, attachments: Mapping[str, Any]) -> object:
        """``request_key`` from a request's attachments alone, for a method whose requests have a
        key (the planner's undecoded path: the method is the head's)."""
        ...

    def route(self, hosts: tuple[Host, ...], request: RequestView) -> tuple[Host, ...] | str:
        """The hosts the routers leave for ``request``, or why there are none."""
        ...

    def timeout_ms(self, method: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Cluster:
    """A named set of hosts and the load balancer that chooses among them; ``policy``: the config
    center's rules for a subscription's cluster (None: none in force)."""

    name: str
    lb: str = "round_robin"
    hosts: tuple[Host, ...] = ()
    policy: HostPolicy | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("cluster name must not be empty")
        hosts = tuple(self.hosts)  # accept any iterable, store a tuple so the snapshot cannot change
        seen: set[str] = set()
        for h in hosts:
            # Balancer state (weighted round robin) and exclusion on retry are keyed by address.
            if h.address in seen:
                raise ValueError(f"cluster {self.name!r}: duplicate host address {h.address!r}")
            seen.add(h.address)
        _set(self, "hosts", hosts)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Which requests a route takes.  None = any value; "" for version/group = only requests without one."""

    service: str = "*"
    version: str | None = None
    group: str | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        if not self.service:
            raise ValueError("match.service must not be empty (use '*' for any service)")
        if self.method == "":
            raise ValueError("match.method must not be empty (use null for any method)")
        if self.version is not None:
            _set(self, "version", normalize_version(self.version))


@dataclass(frozen=True, slots=True)
class ProviderGuard:
    """A published service's own checks at the ingress, from the parameters it was published with
    (regproxy.governance.params.provider_guard): Dubbo's provider filters ``TokenFilter`` (``token``:
    a call must carry it) and ``ExecuteLimitFilter`` (``executes``: calls in flight per method at
    most; ``limits`` method -> limit, "" for the service's)."""

    service: str  # the interface, as TokenFilter names it
    token: str = ""
    limits: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _set(self, "limits", MappingProxyType(dict(self.limits)))

    def executes(self, method: str) -> int:
        return self.limits.get(method) or self.limits.get("", 0)


@dataclass(frozen=True, slots=True)
class Route:
    """Send matching requests to ``cluster``.

    ``retries`` = extra attempts on another host when connecting fails before the request is written.
    """

    name: str
    match: RouteMatch
    cluster: str
    timeout_ms: int | None = None
    retries: int = 1
    guard: ProviderGuard | None = field(default=None, compare=False)  # ingress routes of publications

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("route name must not be empty")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise ValueError(f"route {self.name!r}: timeout_ms must be positive")
        if self.retries < 0:
            raise ValueError(f"route {self.name!r}: retries must be >= 0")
