"""The sidecar's configuration: a typed, validated model of the YAML file plus command-line overrides.

Everything a human can get wrong is caught here, at load time, and reported all at once as
``key.path: problem`` lines (``clusters[0].hosts[1].address: ...``), so nobody has to fix a config one
error per restart.  Unknown keys are errors: a misspelt limit silently falling back to its default is
worse than refusing to start.

The model is frozen; a reload builds a new ``Config``.  Nothing here opens sockets or talks to a
registry: registry URLs are only parsed and checked.  The ``tls`` section's certificate files are
read (regproxy/tls.py), so an unusable one is a config error naming its key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from regproxy.address import Address, is_loopback_host
from regproxy.config.errors import ConfigError, describe, with_origins
from regproxy.config.fields import KIB, MIB, Float, Int, Model, non_blank
from regproxy.config.health import HealthSettings
from regproxy.config.routes import ACTION_KEYS, ClusterConfig, RouteConfig, cross_check, raw_cross_check
from regproxy.registry.registry_url import REDACTED, RegistryURL
from regproxy.tls import problems as tls_problems

__all__ = [
    "LOG_LEVELS",
    "Config",
    "DiscoveryConfig",
    "DrainConfig",
    "LimitsConfig",
    "TLSConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
]

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
MAX_BODY_LIMIT = 2**31 - 1  # the Dubbo header's body length is a signed 32-bit int


class LimitsConfig(Model):
    max_body_bytes: Int = Field(8 * MIB, ge=KIB, le=MAX_BODY_LIMIT, description="largest Dubbo body accepted")
    max_connections: Int = Field(10_000, ge=1, description="most client connections open at once")
    idle_timeout_s: Float = Field(300.0, gt=0, description="close client connections idle this long")
    # Flow control (regproxy/proxy/flow.py): what one connection may make a listener hold.
    max_in_flight_per_connection: Int = Field(
        4096, ge=1, description="stop reading a client connection with this many requests unanswered"
    )
    max_in_flight_bytes_per_connection: Int = Field(
        32 * MIB, ge=KIB, description="... or with unanswered requests of this many bytes"
    )
    max_unsent_bytes_per_connection: Int = Field(
        64 * MIB,
        ge=64 * KIB,
        description="close a client leaving this many bytes of answers unread; write nothing more "
        "to an upstream connection with this many bytes unsent",
    )

    @model_validator(mode="after")
    def _unsent_above_in_flight(self) -> LimitsConfig:
        # A client that reads slowly but reads must never be closed: the answers to what it had
        # in flight when reading stopped (same-sized answers) have to fit below the close.
        if self.max_unsent_bytes_per_connection < self.max_in_flight_bytes_per_connection:
            raise ValueError(
                f"max_unsent_bytes_per_connection ({self.max_unsent_bytes_per_connection}) must be at least "
                f"max_in_flight_bytes_per_connection ({self.max_in_flight_bytes_per_connection})"
            )
        return self


class TimeoutsConfig(Model):
    default_ms: Int = Field(3000, gt=0, description="request timeout when neither route nor request sets one")
    connect_ms: Int = Field(1000, gt=0, description="upstream connect timeout")
    ingress_ms: Int = Field(
        60000,
        gt=0,
        description="longest the ingress waits for the local application (consumers' egress enforces theirs)",
    )


class UpstreamConfig(Model):
    connections_per_host: Int = Field(1, ge=1, le=1024)
    # TCP_USER_TIMEOUT and keepalive on the egress's upstream connections (regproxy.proxy.upstream):
    # a host that vanished without a reset is given up on after this long, not TCP's ~15 minutes.
    user_timeout_ms: Int = Field(
        10_000,
        ge=0,
        le=3_600_000,
        description="close an upstream connection whose peer acknowledged nothing for this long (0 = off)",
    )

    @field_validator("user_timeout_ms")
    @classmethod
    def _user_timeout(cls, v: int) -> int:
        # Keepalive probes go out at whole seconds: below a second the bound could not be kept, and
        # a bound that short would cut connections over an ordinary retransmission.
        if 0 < v < 1000:
            raise PydanticCustomError("user_timeout", "must be 0 (off) or at least 1000 ms")
        return v


class DiscoveryConfig(Model):
    """How provider lists from the registries are applied (regproxy/discovery)."""

    # Empty-provider protection (regproxy/discovery/protection.py), the same for every registry: a
    # list that lost every provider of a subscription is applied only if still empty this long after.
    empty_protection_s: Float = Field(
        5.0, ge=0, le=300, description="keep the last providers this long when a list goes empty (0 = off)"
    )
    # Dubbo 3 application-level discovery (regproxy/discovery/apps.py, app_registration.py).
    register_mode: Literal["interface", "instance", "all"] = Field(
        "all",
        description="how publications are registered: interface-level nodes, the application instance "
        "(Dubbo 3), or both (Dubbo 3's default register-mode)",
    )
    migration: Literal["interface", "application", "both"] = Field(
        "both",
        description="where subscriptions find providers unless the /sub says: interface-level nodes, "
        "application instances (Dubbo 3), or both (one host per address)",
    )
    metadata_storage: Literal["local", "remote"] = Field(
        "local",
        description="where this sidecar's Dubbo 3 metadata is read: its ingress's MetadataService "
        "(local) or also the registry's metadata report (remote)",
    )
    metadata_timeout_ms: Int = Field(
        5000, ge=100, le=60_000, description="longest wait for another instance's MetadataService to answer"
    )


class DrainConfig(Model):
    grace_s: Float = Field(
        3.0, ge=0, le=300, description="keep serving this long after unpublishing, so consumers see it"
    )
    timeout_s: Float = Field(15.0, ge=0.1, le=600, description="longest wait for requests in flight")


class TLSConfig(Model):
    """Mutual TLS between sidecars (regproxy/tls.py; docs/operations.md, "TLS between sidecars")."""

    enabled: bool = False
    cert_file: str | None = Field(None, description="this sidecar's certificate (PEM), shown to peers")
    key_file: str | None = Field(None, description="its private key (PEM, unencrypted)")
    ca_file: str | None = Field(None, description="the CA(s) peer certificates must chain to (PEM)")
    ingress: bool = Field(True, description="serve the ingress over TLS only, client certificate required")
    egress: Literal["auto", "always"] = Field(
        "auto", description="auto: TLS to hosts publishing regproxy.tls=true; always: to every host"
    )
    verify_ip: bool = Field(False, description="also check the ingress certificate's IP SAN")
    handshake_timeout_s: Float = Field(5.0, gt=0, le=60)


def _check_token(value: Any) -> Any:
    """An admin bearer token: visible ASCII, no spaces.  Messages never echo the value."""
    if value is None:
        return value
    if not isinstance(value, str):
        # YAML reads `admin_token: 12345` as a number; say so without showing it.
        raise PydanticCustomError(
            "token", f"expected a string, not {type(value).__name__} (quote the token in YAML)"
        )
    if not value:
        raise PydanticCustomError("token", "must not be empty (null = no token)")
    if not all("!" <= ch <= "~" for ch in value):
        # It travels in an Authorization header: spaces and control characters cannot.
        raise PydanticCustomError("token", "must be visible ASCII characters without spaces")
    return value


def _listeners_collide(a: Address, b: Address) -> bool:
    if a.port != b.port:
        return False
    wildcard = {"0.0.0.0", "::", ""}
    return a.host == b.host or a.host in wildcard or b.host in wildcard


def _access_log(value: Any) -> Any:
    if not isinstance(value, bool | str):  # one message instead of one per union member
        raise PydanticCustomError("access_log", f"expected true, false or a file path, not {value!r}")
    return value


class Config(Model):
    """The whole config file.  Field order is the order of the example file (conf/regproxy.yaml)."""

    egress: Address = Field(default_factory=lambda: Address("127.0.0.1", 20881))
    ingress: Address = Field(default_factory=lambda: Address("0.0.0.0", 20882))
    api: Address = Field(default_factory=lambda: Address("127.0.0.1", 22222))
    admin: Address = Field(default_factory=lambda: Address("127.0.0.1", 34901))
    # Hidden from repr() and every dump, like registry passwords (see _redact_token).
    # auth_token: required by the pub/sub API and the admin API (all but /healthz, /readyz);
    # admin_token: only for admin changes (POST), and wins over auth_token there.
    auth_token: Annotated[str | None, BeforeValidator(_check_token)] = Field(None, repr=False)
    admin_token: Annotated[str | None, BeforeValidator(_check_token)] = Field(None, repr=False)
    # The APIs change what this host publishes and how the sidecar runs: loopback only unless asked.
    api_allow_remote: bool = False
    admin_allow_remote: bool = False
    # A pub/sub request may name only a configured registry unless true (regproxy/api/http.py).
    api_allow_body_registries: bool = False
    app_port: Int = Field(20880, ge=1, le=65535)
    advertise_ip: str | None = None
    data_dir: str = "."
    registries: list[RegistryURL] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    drain: DrainConfig = Field(default_factory=DrainConfig)
    log_level: str = "info"
    clusters: list[ClusterConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    # Off by default; true = the process log ("regproxy.access" logger), a string = a file to append to.
    access_log: Annotated[bool | str, BeforeValidator(_access_log)] = False
    # Heartbeat checks of upstream hosts, outlier ejection, and the local app (regproxy/health).
    health: HealthSettings = Field(default_factory=HealthSettings)
    tls: TLSConfig = Field(default_factory=TLSConfig)

    LISTENERS: ClassVar[tuple[str, ...]] = ("egress", "ingress", "api", "admin")

    @field_validator("advertise_ip")
    @classmethod
    def _advertise_ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ip = ipaddress.ip_address(v.strip("[]"))
        except ValueError:
            raise PydanticCustomError("ip", f"{v!r} is not an IP address") from None
        if ip.is_unspecified:
            raise PydanticCustomError("ip", f"{v!r} cannot be advertised to other hosts (null = detect)")
        return str(ip)

    @field_serializer("auth_token", "admin_token")
    def _redact_token(self, value: str | None, info: SerializationInfo) -> str | None:
        ctx = info.context if isinstance(info.context, dict) else {}
        if value is None or ctx.get("reveal_secrets", False):
            return value
        return REDACTED

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: str) -> str:
        return non_blank(v, "data_dir")

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            if v not in LOG_LEVELS:
                raise PydanticCustomError(
                    "log_level", f"{v!r} is not a log level (one of {', '.join(LOG_LEVELS)})"
                )
        return v

    @model_validator(mode="after")
    def _cross_fields(self) -> Config:
        errors = cross_check(
            [(i, c.name) for i, c in enumerate(self.clusters)],
            [
                (i, r.name, r.cluster, any(getattr(r, k) is not None for k in ACTION_KEYS))
                for i, r in enumerate(self.routes)
            ],
        )
        for i, c in enumerate(self.clusters):
            seen: dict[Address, int] = {}
            for j, h in enumerate(c.hosts):
                if h.address in seen:
                    errors.append(
                        (
                            f"clusters[{i}].hosts[{j}].address",
                            f"duplicate of clusters[{i}].hosts[{seen[h.address]}]",
                        )
                    )
                else:
                    seen[h.address] = j
        for i, a in enumerate(self.LISTENERS):
            for b in self.LISTENERS[i + 1 :]:
                if _listeners_collide(getattr(self, a), getattr(self, b)):
                    errors.append((b, f"{getattr(self, b)} collides with {a} ({getattr(self, a)})"))
        for name in ("api", "admin"):
            address = getattr(self, name)
            if not getattr(self, f"{name}_allow_remote") and not is_loopback_host(address.host):
                errors.append(
                    (
                        name,
                        f"{address} is not a loopback address; set {name}_allow_remote: true "
                        f"(--{name}-allow-remote) to serve other hosts, preferably with auth_token",
                    )
                )
        if (
            self.advertise_ip is not None
            and is_loopback_host(self.ingress.host)
            and not ipaddress.ip_address(self.advertise_ip).is_loopback
        ):
            # Registered as advertise_ip:port, the ingress would be unreachable at that address: every
            # call from another host would fail.  (advertise_ip null advertises the loopback address.)
            errors.append(
                (
                    "advertise_ip",
                    f"{self.advertise_ip} is registered for the ingress, but ingress ({self.ingress}) "
                    "listens on loopback only, so nobody could reach it there; give ingress an address "
                    f"other hosts reach (e.g. 0.0.0.0:{self.ingress.port}), or set advertise_ip to null",
                )
            )
        for name in self.LISTENERS:
            # The application listens on app_port on this host too; ingress would even forward to itself.
            if getattr(self, name).port == self.app_port:
                errors.append(("app_port", f"{self.app_port} is also the {name} port"))
        errors += tls_problems(self.tls)  # the files are read here so that a bad one is a config error
        if errors:
            raise ConfigError(errors)
        return self

    # ----------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Any, *, source: str | None = None, origins: Mapping[str, str] | None = None
    ) -> Config:
        """Validate plain data (parsed YAML); ConfigError listing every problem.

        ``origins`` maps a top-level key to where its value came from (``{"egress": "--egress"}``),
        shown after the problem.
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                [("", f"the top level must be a mapping of keys, not {type(data).__name__}")], source
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            errors = [describe(err) for err in e.errors()] + raw_cross_check(data)
            raise ConfigError(with_origins(errors, origins), source) from None
        except ConfigError as e:
            raise ConfigError(with_origins(e.errors, origins), source) from None

    def redacted_dict(self) -> dict[str, Any]:
        """JSON-ready dict for dumps and the admin API; registry passwords and admin_token replaced by ***."""
        return self.model_dump(mode="json")
