"""The naming state of the Nacos double: plain values and rules, no sockets, no event loop.

Ownership follows Nacos 2.x.  An ephemeral instance belongs to the connection ("client") that
published it, and a client publishes at most **one entry per service**: a single instance
(``InstanceRequest``) or a list (``BatchInstanceRequest``); a new registration for the same service
replaces the old entry, and a deregistration removes it whatever ip/port it names.  When the
connection goes, its entries go.  Persistent instances belong to no connection and stay until they
are deregistered by ip, port and cluster.

What the clients see is also Nacos's: a subscribe answer lists every instance (disabled ones too),
pushes and queries leave out disabled instances, unhealthy instances are always included with
``healthy: false``, and ``lastRefTime`` grows with every answer because the Python client drops a
service info whose ``lastRefTime`` is not newer than the one it holds.

Refusals follow Nacos's two layers: its parameter checker (names, ip, port, cluster, metadata size)
answers errorCode 400 in the request's own response type (``InvalidParam``); the naming handler's
own checks answer an ErrorResponse (``InvalidRequest``).  The config handlers refuse in their own
response type instead (``Failed``, Nacos's ``buildFailResponse``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_NAMESPACE = "public"
DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_CLUSTER = "DEFAULT"
# Nacos's default "push cache millis": how long a client may serve a service info before it asks again.
CACHE_MILLIS = 10_000

# Nacos error codes (com.alibaba.nacos.api.exception.NacosException) the double answers with.
INVALID_PARAM = 400
NO_RIGHT = 403
SERVER_ERROR = 500
BAD_GATEWAY = 502
UN_REGISTER = 301
NO_HANDLER = 302

# Nacos's parameter checker (nacos.core.param.check.enabled, on by default since 2.3): these rules
# reject a request before its handler runs, with errorCode 400 in the handler's own response type.
_SERVICE_NAME = re.compile(r"(?!@).((?!@@)[^\u4E00-\u9FA5\s])*")
GROUP_PATTERN = re.compile(r"[a-zA-Z0-9_:.\-]*")
_CLUSTER = re.compile(r"[0-9a-zA-Z_\-]+")
NAMESPACE_PATTERN = re.compile(r"[\w-]+")
_IP = re.compile(r"[^\u4E00-\u9FA5\s]*")
METADATA_LIMIT = 1024  # total characters of keys and values; nacos.naming.service.metadata.length
# What the naming handler itself then insists on (NamingUtils.checkInstanceIsLegal): no "_" here.
_INSTANCE_CLUSTER = re.compile(r"[0-9a-zA-Z-]+")

ServiceKey = tuple[str, str, str]
"""(namespace, group, service name); the namespace "" is stored as "public", as Nacos does."""


class InvalidRequest(Exception):
    """Refused by a request handler: answered with an ErrorResponse carrying ``code``."""

    def __init__(self, message: str, code: int = INVALID_PARAM) -> None:
        super().__init__(message)
        self.code = code


class Failed(InvalidRequest):
    """Refused in the handler's own response type: resultCode 500 and errorCode ``code``."""


class InvalidParam(Failed):
    """Refused by the parameter checker: answered in the handler's response type, errorCode 400."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Param check invalid:{message}")


def check_param(what: str, value: str, pattern: re.Pattern[str], limit: int) -> None:
    if len(value) > limit:
        raise InvalidParam(f"Param '{what}' is illegal, the param length should not exceed {limit}.")
    if not pattern.fullmatch(value):
        raise InvalidParam(f"Param '{what}' is illegal, illegal characters should not appear in the param.")


def service_key(service: str, group: str = DEFAULT_GROUP, namespace: str = "") -> ServiceKey:
    """Check names as Nacos's parameter checker does; blank namespace and group take the defaults."""
    if namespace:
        check_param("namespaceId/tenant", namespace, NAMESPACE_PATTERN, 64)
    if group:
        check_param("group", group, GROUP_PATTERN, 128)
    if not service or not service.strip():
        raise InvalidRequest("Param 'serviceName' is illegal, serviceName is blank")
    check_param("serviceName", service, _SERVICE_NAME, 512)
    return (namespace or DEFAULT_NAMESPACE, group or DEFAULT_GROUP, service)


def check_clusters(clusters: str) -> str:
    for cluster in filter(None, clusters.split(",")):
        check_param("cluster", cluster, _CLUSTER, 64)
    return clusters


@dataclass(frozen=True)
class Instance:
    """One instance as the server stores it (cluster "" is already "DEFAULT")."""

    ip: str
    port: int
    weight: float = 1.0
    healthy: bool = True
    enabled: bool = True
    ephemeral: bool = True
    cluster: str = DEFAULT_CLUSTER
    metadata: Mapping[str, str] = field(default_factory=dict)
    instance_id: str = ""

    @classmethod
    def from_wire(
        cls, data: Any, key: ServiceKey, *, ephemeral: bool, metadata_limit: int | None = METADATA_LIMIT
    ) -> Instance:
        """Parse the ``instance`` JSON object of a register request (camelCase, as the SDKs send it)."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("Param 'instance' is illegal, instance is missing")
        ip, port = data.get("ip"), data.get("port")
        if not isinstance(ip, str) or not ip.strip():
            raise InvalidRequest("Param 'ip' is illegal, ip is blank")
        check_param("ip", ip, _IP, 128)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidParam("Param 'port' is illegal, the value should be between 0 and 65535.")
        cluster = data.get("clusterName") or ""
        if cluster:
            check_param("cluster", cluster, _CLUSTER, 64)
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise InvalidRequest("Param 'metadata' is illegal, metadata is not an object")
        metadata = {str(k): "" if v is None else str(v) for k, v in metadata.items()}
        size = sum(len(k) + len(v) for k, v in metadata.items())
        if metadata_limit is not None and size > metadata_limit:
            raise InvalidParam(
                f"Param 'Metadata' is illegal, the param length should not exceed {metadata_limit}."
            )
        if cluster and not _INSTANCE_CLUSTER.fullmatch(cluster):
            raise InvalidRequest("Instance 'clusterName' should be characters with only 0-9a-zA-Z-.")
        weight = data.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise InvalidRequest(f"Param 'weight' is illegal: {weight!r}")
        # Nacos fills an empty id from its default generator *before* it defaults the cluster, so
        # an instance registered without a cluster gets "ip#port##group@@service".
        instance_id = data.get("instanceId") or f"{ip}#{port}#{cluster}#{key[1]}@@{key[2]}"
        return cls(
            ip=ip,
            port=port,
            weight=float(weight),
            healthy=bool(data.get("healthy", True)),
            enabled=bool(data.get("enabled", True)),
            ephemeral=ephemeral,
            cluster=cluster or DEFAULT_CLUSTER,
            metadata=metadata,
            instance_id=instance_id,
        )

    def to_wire(self, key: ServiceKey) -> dict[str, Any]:
        """The JSON shape of com.alibaba.nacos.api.naming.pojo.Instance (serviceName is grouped)."""
        return {
            "instanceId": self.instance_id,
            "ip": self.ip,
            "port": self.port,
            "weight": self.weight,
            "healthy": self.healthy,
            "enabled": self.enabled,
            "ephemeral": self.ephemeral,
            "clusterName": self.cluster,
            "serviceName": f"{key[1]}@@{key[2]}",
            "metadata": dict(self.metadata),
        }


class Registry:
    """Services, who publishes what, and who subscribes to what."""

    def __init__(self) -> None:
        # owner (a connection id, or a synthetic id for instances the test injects) -> service -> entry
        self._ephemeral: dict[str, dict[ServiceKey, tuple[Instance, ...]]] = {}
        self._persistent: dict[ServiceKey, dict[tuple[str, int, str], Instance]] = {}
        # service -> connection id -> the clusters it subscribed with ("" = all)
        self._subscribers: dict[ServiceKey, dict[str, str]] = {}
        self._last_ref_time = 0

    # -- ephemeral entries ------------------------------------------------------------------------

    def publish(self, owner: str, key: ServiceKey, instances: Iterable[Instance]) -> None:
        """Replace ``owner``'s entry for ``key``; an empty list leaves it publishing nothing there."""
        entry = tuple(instances)
        services = self._ephemeral.setdefault(owner, {})
        if entry:
            services[key] = entry
        else:
            services.pop(key, None)

    def unpublish(self, owner: str, key: ServiceKey) -> bool:
        return self._ephemeral.get(owner, {}).pop(key, None) is not None

    def drop_owner(self, owner: str) -> set[ServiceKey]:
        """Forget a connection: its entries and subscriptions.  Returns the services that changed."""
        for subscribers in self._subscribers.values():
            subscribers.pop(owner, None)
        return set(self._ephemeral.pop(owner, {}))

    def owners(self, key: ServiceKey) -> list[str]:
        return [owner for owner, services in self._ephemeral.items() if key in services]

    def entry(self, owner: str, key: ServiceKey) -> tuple[Instance, ...]:
        return self._ephemeral.get(owner, {}).get(key, ())

    # -- persistent instances ---------------------------------------------------------------------

    def put_persistent(self, key: ServiceKey, instance: Instance) -> None:
        self._persistent.setdefault(key, {})[(instance.ip, instance.port, instance.cluster)] = instance

    def remove_persistent(self, key: ServiceKey, ip: str, port: int, cluster: str) -> bool:
        return self._persistent.get(key, {}).pop((ip, port, cluster or DEFAULT_CLUSTER), None) is not None

    # -- reading and editing ------------------------------------------------------------------------

    def instances(self, key: ServiceKey) -> list[Instance]:
        """Every instance of a service, disabled and unhealthy ones included, sorted by address."""
        found: list[Instance] = []
        for services in self._ephemeral.values():
            for instance in services.get(key, ()):
                if instance not in found:  # Nacos keeps them in a set: identical duplicates show once
                    found.append(instance)
        found.extend(self._persistent.get(key, {}).values())
        return sorted(found, key=lambda i: (i.ip, i.port, i.cluster))

    def update(self, key: ServiceKey, ip: str, port: int, **changes: Any) -> int:
        """Change fields of every instance at ip:port (what an operator does in the console)."""
        count = 0
        for services in self._ephemeral.values():
            entry = services.get(key)
            if entry and any(i.ip == ip and i.port == port for i in entry):
                services[key] = tuple(
                    replace(i, **changes) if i.ip == ip and i.port == port else i for i in entry
                )
                count += sum(1 for i in entry if i.ip == ip and i.port == port)
        stored = self._persistent.get(key, {})
        for address, instance in list(stored.items()):
            if instance.ip == ip and instance.port == port:
                stored[address] = replace(instance, **changes)
                count += 1
        return count

    def service_names(self, namespace: str, group: str) -> list[str]:
        """Services of a namespace and group that have instances, sorted."""
        keys = {key for services in self._ephemeral.values() for key in services}
        keys.update(key for key, stored in self._persistent.items() if stored)
        return sorted(name for ns, grp, name in keys if ns == namespace and grp == group)

    # -- subscriptions ----------------------------------------------------------------------------

    def subscribe(self, owner: str, key: ServiceKey, clusters: str) -> None:
        self._subscribers.setdefault(key, {})[owner] = clusters

    def unsubscribe(self, owner: str, key: ServiceKey) -> None:
        self._subscribers.get(key, {}).pop(owner, None)

    def subscribers(self, key: ServiceKey) -> dict[str, str]:
        return dict(self._subscribers.get(key, {}))

    # -- what clients are sent ----------------------------------------------------------------------

    def next_ref_time(self) -> int:
        """Wall-clock milliseconds, but strictly increasing (two changes can share a millisecond)."""
        self._last_ref_time = max(int(time.time() * 1000), self._last_ref_time + 1)
        return self._last_ref_time

    def service_info(
        self, key: ServiceKey, clusters: str = "", *, healthy_only: bool = False, enabled_only: bool = True
    ) -> dict[str, Any]:
        """The JSON shape of com.alibaba.nacos.api.naming.pojo.ServiceInfo (name without the group)."""
        wanted = {c for c in clusters.split(",") if c}
        hosts = [
            instance.to_wire(key)
            for instance in self.instances(key)
            if (not wanted or instance.cluster in wanted)
            and (instance.enabled or not enabled_only)
            and (instance.healthy or not healthy_only)
        ]
        return {
            "name": key[2],
            "groupName": key[1],
            "clusters": clusters,
            "cacheMillis": CACHE_MILLIS,
            "hosts": hosts,
            "lastRefTime": self.next_ref_time(),
            "checksum": "",
            "allIPs": False,
            "reachProtectionThreshold": False,
            "valid": True,
        }
