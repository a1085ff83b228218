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
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from regproxy import yamlio
from regproxy.tls import problems as tls_problems

if TYPE_CHECKING:
    from regproxy.routing.rules import RuleSet
    from regproxy.routing.table import RoutingTable

__all__ = [
    "LB_NAMES",
    "LOG_LEVELS",
    "Address",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DrainConfig",
    "HostConfig",
    "LimitsConfig",
    "RegistryURL",
    "RouteConfig",
    "RouteMatchConfig",
    "TLSConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
    "is_loopback_host",
    "load_config",
    "parse_address",
]

# Kept in step with regproxy.routing.balancer.BALANCERS; repeated here so that loading a config does not
# import the routing package (tests/test_config.py checks the two agree).
LB_NAMES: tuple[str, ...] = ("round_robin", "random", "weighted_round_robin", "least_request")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")

KIB = 1024
MIB = 1024 * KIB
MAX_BODY_LIMIT = 2**31 - 1  # the Dubbo header's body length is a signed 32-bit int
MAX_WEIGHT = 10_000


class ConfigError(Exception):
    """The config cannot be used.  ``errors`` holds (key path, problem) pairs; ``str()`` lists them all.

    Not a ValueError on purpose: pydantic turns ValueErrors raised inside validators into its own errors,
    and the cross-field checks below need this one to pass through unchanged.
    """

    def __init__(self, errors: Iterable[tuple[str, str]] | str, source: str | None = None) -> None:
        self.errors: list[tuple[str, str]] = [("", errors)] if isinstance(errors, str) else list(errors)
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"{path}: {problem}" if path else problem for path, problem in self.errors]
        prefix = f"{self.source}: " if self.source else ""
        if len(lines) == 1:
            return prefix + lines[0]
        return f"{prefix}{len(lines)} errors\n" + "\n".join(f"  {line}" for line in lines)


# --------------------------------------------------------------------------------------------------
# HOST:PORT addresses

# RFC 1123 labels; "_" is tolerated because container runtimes resolve service names that contain it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_DOTTED_NUMBERS_RE = re.compile(r"^[0-9.]+$")


def _check_host(host: str) -> str | None:
    """Return why ``host`` (brackets already removed) is not an IP address or hostname, or None."""
    if not host:
        return "missing host"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"bad IPv6 address {host!r}"
        return None
    if _DOTTED_NUMBERS_RE.match(host):
        # Without this "999.1.1.1" would pass as a hostname made of digits.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"bad IPv4 address {host!r}"
        return None
    if len(host) > 253 or not _HOSTNAME_RE.match(host):
        return f"bad host name {host!r}"
    return None


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into (host, port); ValueError naming the problem.

    With ``default_port``, a bare host (``zk1``, ``[::1]``, ``10.0.0.1``) is accepted too.
    """

    def bad(reason: str) -> ValueError:
        return ValueError(f"{text!r} is not HOST:PORT ({reason})")

    text_s = text.strip()
    if not text_s:
        raise bad("empty")
    if text_s.startswith("["):
        close = text_s.find("]")
        if close < 0:
            raise bad("unbalanced '['")
        host, rest = text_s[1:close], text_s[close + 1 :]
        if ":" not in host:
            raise bad("brackets are only for IPv6 addresses")
        if rest and not rest.startswith(":"):
            raise bad(f"unexpected {rest!r} after ']'")
        port_text = rest[1:] if rest else None
    elif text_s.count(":") > 1:
        raise bad("an IPv6 address needs brackets, e.g. [::1]:20881")
    else:
        host, sep, port_text_s = text_s.partition(":")
        port_text = port_text_s if sep else None
    problem = _check_host(host)
    if problem:
        raise bad(problem)
    if ":" in host:
        # One spelling per address ("0::1" -> "::1"), so duplicates and collisions are found.
        host = str(ipaddress.IPv6Address(host))
    if port_text is None:
        if default_port is None:
            raise bad("missing port")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"port {port_text!r} is not a number" if port_text else "missing port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise bad("port must be 1-65535")
    return host, port


@dataclass(frozen=True, slots=True)
class Address:
    """A validated ``host:port``.  ``str()`` gives it back in the same form (IPv6 in brackets)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Address:
        host, port = parse_address(text, default_port)
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._pydantic_validate, serialization=core_schema.to_string_ser_schema()
        )

    @classmethod
    def _pydantic_validate(cls, value: Any) -> Address:
        if isinstance(value, Address):
            return value
        if not isinstance(value, str):
            raise PydanticCustomError("address", f"{value!r} is not HOST:PORT (expected a string)")
        try:
            return cls.parse(value)
        except ValueError as e:
            raise PydanticCustomError("address", str(e)) from None


# --------------------------------------------------------------------------------------------------
# Registry URLs

_REDACTED = "***"


@dataclass(frozen=True)
class _Scheme:
    default_port: int | None  # None: the scheme takes no hosts
    params: frozenset[str]


# One place to add a registry kind or a parameter; the registry adapters read the parsed model.
_SCHEMES: dict[str, _Scheme] = {
    "zookeeper": _Scheme(2181, frozenset({"username", "password", "acl"})),
    "nacos": _Scheme(8848, frozenset({"namespace", "group", "username", "password"})),
    "memory": _Scheme(None, frozenset()),
}
NACOS_DEFAULT_GROUP = "DEFAULT_GROUP"
# ACLs regproxy puts on the ZooKeeper nodes it creates when it has digest credentials; the
# registry adapter turns the name into ACL entries (regproxy/registry/zookeeper.py).
ZK_ACLS: tuple[str, ...] = ("world-read", "shared", "private", "open")
ZK_DEFAULT_ACL = "world-read"


@dataclass(frozen=True, repr=False, eq=True)
class RegistryURL:
    """A parsed registry URL.

    * ``zookeeper://h1:2181,h2:2181?username=u&password=p&acl=world-read`` (port defaults to 2181;
      credentials optional: digest auth, and ACLs on the nodes regproxy creates)
    * ``nacos://h:8848?namespace=ns&group=G&username=u&password=p`` (port 8848; group DEFAULT_GROUP)
    * ``memory://`` (in-process registry, for tests and single-host demos)

    ``str()``/``repr()`` and serialization hide the password; ``to_url(redact=False)`` gives it back.
    """

    scheme: str
    hosts: tuple[Address, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, text: str) -> RegistryURL:
        scheme, sep, rest = text.strip().partition("://")
        if not sep:
            raise ValueError(f"not a registry URL (expected scheme://..., one of {', '.join(_SCHEMES)})")
        scheme = scheme.lower()
        spec = _SCHEMES.get(scheme)
        if spec is None:
            raise ValueError(f"unknown registry scheme {scheme!r} (one of {', '.join(_SCHEMES)})")
        if "#" in rest:
            raise ValueError("fragments ('#') are not allowed in a registry URL")
        authority, _, query = rest.partition("?")
        authority, slash, path = authority.partition("/")
        if slash and path:
            raise ValueError(f"a {scheme} registry URL takes no path (got '/{path}')")
        if "@" in authority:
            raise ValueError("credentials go in ?username=...&password=..., not before '@'")
        hosts: list[Address] = []
        if spec.default_port is None:
            if authority:
                raise ValueError(f"a {scheme}:// registry takes no hosts (got {authority!r})")
        else:
            if not authority:
                raise ValueError(f"a {scheme}:// registry needs at least one HOST[:PORT]")
            for part in authority.split(","):
                hosts.append(Address.parse(part, default_port=spec.default_port))
        params: dict[str, str] = {}
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise ValueError("malformed query string (expected key=value&...)") from None
        for key, value in pairs:
            if key not in spec.params:
                known = ", ".join(sorted(spec.params)) or "none"
                raise ValueError(f"unknown parameter {key!r} for {scheme} (known: {known})")
            if key in params:
                raise ValueError(f"parameter {key!r} given twice")
            params[key] = value
        if "password" in params and not params.get("username"):
            raise ValueError(f"{scheme} password given without username")
        if scheme == "zookeeper":
            if params.get("username") and not params.get("password"):
                raise ValueError("zookeeper username given without password (digest auth needs both)")
            if ":" in params.get("username", ""):
                raise ValueError("zookeeper username must not contain ':' (digest auth is user:password)")
            if "acl" in params:
                if params["acl"] not in ZK_ACLS:
                    raise ValueError(f"unknown zookeeper acl {params['acl']!r} (one of {', '.join(ZK_ACLS)})")
                if not params.get("username"):
                    raise ValueError("zookeeper acl needs username and password (the digest user it grants)")
        if scheme == "nacos" and "group" in params and not params["group"]:
            raise ValueError("nacos group must not be empty (omit it for DEFAULT_GROUP)")
        return cls(scheme, tuple(hosts), params)

    # nacos settings, with their defaults; None/"" for other schemes
    @property
    def namespace(self) -> str:
        """Nacos namespace id; "" means the public namespace."""
        return self.params.get("namespace", "")

    @property
    def group(self) -> str | None:
        """Nacos group (not the Dubbo group)."""
        return self.params.get("group", NACOS_DEFAULT_GROUP) if self.scheme == "nacos" else None

    @property
    def username(self) -> str | None:
        return self.params.get("username")

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    @property
    def acl(self) -> str | None:
        """ZooKeeper: the ACL profile of the nodes regproxy creates (None: no credentials, open)."""
        if self.scheme != "zookeeper" or not self.username:
            return None
        return self.params.get("acl", ZK_DEFAULT_ACL)

    @property
    def hosts_string(self) -> str:
        """``h1:p1,h2:p2`` as ZooKeeper and Nacos clients take it."""
        return ",".join(str(h) for h in self.hosts)

    def to_url(self, redact: bool = True) -> str:
        params = {k: (_REDACTED if redact and k == "password" else v) for k, v in sorted(self.params.items())}
        query = urlencode(params, safe="*")
        return f"{self.scheme}://{self.hosts_string}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.to_url(redact=True)

    def __repr__(self) -> str:
        return f"RegistryURL({self.to_url(redact=True)!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._pydantic_validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls._pydantic_serialize, info_arg=True
            ),
        )

    @classmethod
    def _pydantic_validate(cls, value: Any) -> RegistryURL:
        if isinstance(value, RegistryURL):
            return value
        if not isinstance(value, str):
            raise PydanticCustomError("registry_url", "expected a registry URL string")
        try:
            return cls.parse(value)
        except ValueError as e:
            # The message never echoes the URL: it may hold a password.
            raise PydanticCustomError("registry_url", str(e)) from None

    @staticmethod
    def _pydantic_serialize(value: RegistryURL, info: SerializationInfo) -> str:
        ctx = info.context if isinstance(info.context, dict) else {}
        return value.to_url(redact=not ctx.get("reveal_secrets", False))


# --------------------------------------------------------------------------------------------------
# The model


def _reject_bool(value: Any) -> Any:
    # Pydantic's lax mode reads true as 1; a YAML `port: yes` is a mistake, not a port.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_number", f"expected a number, not {str(value).lower()}")
    return value


def _nested(sub: str, problem: str) -> PydanticCustomError:
    """A problem with ``sub`` inside the value being validated: listed under the key path + sub."""
    return PydanticCustomError("nested", "{sub}: {problem}", {"sub": sub, "problem": problem})


# Numbers also accept numeric strings, because command-line overrides arrive as text.
Int = Annotated[int, BeforeValidator(_reject_bool)]
Float = Annotated[float, BeforeValidator(_reject_bool)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LimitsConfig(_Model):
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


class TimeoutsConfig(_Model):
    default_ms: Int = Field(3000, gt=0, description="request timeout when neither route nor request sets one")
    connect_ms: Int = Field(1000, gt=0, description="upstream connect timeout")
    ingress_ms: Int = Field(
        60000,
        gt=0,
        description="longest the ingress waits for the local application (consumers' egress enforces theirs)",
    )


class UpstreamConfig(_Model):
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


class DiscoveryConfig(_Model):
    """How provider lists from the registries are applied (regproxy/discovery)."""

    # Empty-provider protection (regproxy/discovery/protection.py), the same for every registry: a
    # list that lost every provider of a subscription is applied only if still empty this long after.
    empty_protection_s: Float = Field(
        5.0, ge=0, le=300, description="keep the last providers this long when a list goes empty (0 = off)"
    )


class DrainConfig(_Model):
    grace_s: Float = Field(
        3.0, ge=0, le=300, description="keep serving this long after unpublishing, so consumers see it"
    )
    timeout_s: Float = Field(15.0, ge=0.1, le=600, description="longest wait for requests in flight")


class TLSConfig(_Model):
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


class HostConfig(_Model):
    address: Address
    weight: Int = Field(100, ge=0, le=MAX_WEIGHT)
    metadata: dict[str, str] = Field(default_factory=dict)


def _non_blank(value: str, what: str, hint: str = "") -> str:
    if not value.strip():
        raise PydanticCustomError("empty", f"{what} must not be empty{hint}")
    return value


class ClusterConfig(_Model):
    name: str
    lb: str = "round_robin"
    hosts: list[HostConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _non_blank(v, "cluster name")

    @field_validator("lb")
    @classmethod
    def _lb(cls, v: str) -> str:
        if v not in LB_NAMES:
            raise PydanticCustomError("lb", f"{v!r} is not a load balancer (one of {', '.join(LB_NAMES)})")
        return v


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, None: 1.0}


def _duration_ms(value: Any) -> Any:
    """``"3s"``, ``"250ms"``, ``"1.5s"``, ``"2m"`` or a number of milliseconds -> int ms (> 0)."""
    if value is None:
        return value
    if isinstance(value, bool):
        raise PydanticCustomError(
            "duration", f"expected a duration like '3s' or '250ms', not {str(value).lower()}"
        )
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise PydanticCustomError(
                "duration", f"{value!r} is not a duration (use e.g. '3s', '250ms' or a number of ms)"
            )
        ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        raise PydanticCustomError("duration", "expected a duration like '3s' or '250ms'")
    if ms <= 0:
        raise PydanticCustomError("duration", f"a duration must be positive (got {value!r})")
    return max(1, round(ms))


DurationMs = Annotated[int, BeforeValidator(_duration_ms)]
Percent = Annotated[float, BeforeValidator(_reject_bool), Field(ge=0, le=100)]


def _one_of(model: BaseModel, kinds: tuple[str, ...]) -> tuple[str, Any]:
    given = [(k, getattr(model, k)) for k in kinds if getattr(model, k) is not None]
    if len(given) != 1:
        raise PydanticCustomError("match", f"give exactly one of {', '.join(kinds)}")
    kind, value = given[0]
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as e:
            raise PydanticCustomError("match", f"bad regex {value!r}: {e}") from None
    return kind, value


class StringMatchConfig(_Model):
    """``{exact: ..}``, ``{prefix: ..}`` or ``{regex: ..}`` (a full match)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StringMatchConfig:
        _one_of(self, ("exact", "prefix", "regex"))
        return self

    def kind_value(self) -> tuple[str, str]:
        return _one_of(self, ("exact", "prefix", "regex"))


def _string_match(value: Any) -> Any:
    # Validated here rather than as a union member, so a mistake gets one message, not one per member.
    if isinstance(value, Mapping):
        try:
            return StringMatchConfig.model_validate(value)
        except ValidationError as e:
            path, problem = _describe(e.errors()[0])
            raise (_nested(path, problem) if path else PydanticCustomError("match", problem)) from None
    if not isinstance(value, str | StringMatchConfig):
        # Else pydantic reports one error per union member, under member names as keys.
        raise PydanticCustomError("match", f"expected a name or {{exact|prefix|regex: ...}}, not {value!r}")
    return value


StringOrMatch = Annotated[str | StringMatchConfig, BeforeValidator(_string_match)]


class AttachmentMatchConfig(_Model):
    """An attachment value: ``exact``, ``prefix``, ``regex`` (full match), or ``present: true``."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AttachmentMatchConfig:
        kind, value = _one_of(self, ("exact", "prefix", "regex", "present"))
        if kind == "present" and value is not True:
            raise PydanticCustomError("match", "present must be true (leave the key out to match anything)")
        return self

    def kind_value(self) -> tuple[str, str]:
        kind, value = _one_of(self, ("exact", "prefix", "regex", "present"))
        return kind, "" if kind == "present" else value


class RouteMatchConfig(_Model):
    """None matches anything; "" for version/group matches only requests that carry none."""

    service: StringOrMatch = "*"
    version: str | None = None
    group: str | None = None
    method: StringOrMatch | None = None
    attachments: dict[str, AttachmentMatchConfig] = Field(default_factory=dict)

    @field_validator("service")
    @classmethod
    def _service(cls, v: str | StringMatchConfig) -> str | StringMatchConfig:
        if isinstance(v, str):
            return _non_blank(v, "service", " (use '*' for any service)")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | StringMatchConfig | None) -> str | StringMatchConfig | None:
        if isinstance(v, str):
            _non_blank(v, "method", " (use null for any method)")
        return v

    @property
    def plain(self) -> bool:
        """Expressible by the routing table: exact (or '*') service and method, no attachments."""
        return (
            isinstance(self.service, str)
            and not isinstance(self.method, StringMatchConfig)
            and not self.attachments
        )


class WeightedSubsetConfig(_Model):
    subset: dict[str, str]
    weight: Int = Field(1, ge=0, le=MAX_WEIGHT)


class RetryConfig(_Model):
    """``attempts``: extra attempts after the first.  Connect failures (nothing written) are always
    retried; ``reset`` (connection lost with the request written) and ``unavailable`` (the upstream
    answered 35, 60 or 100: it did not run the call) only when listed."""

    attempts: Int = Field(1, ge=0, le=10)
    on: list[Literal["connect-failure", "reset", "unavailable"]] = Field(
        default_factory=lambda: ["connect-failure"]
    )


class RouteActionConfig(_Model):
    cluster: str | None = None
    weighted_subsets: list[WeightedSubsetConfig] = Field(default_factory=list)
    timeout: DurationMs | None = None
    retry: RetryConfig | None = None

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str | None) -> str | None:
        return v if v is None else _non_blank(v, "cluster name")

    @model_validator(mode="after")
    def _weights(self) -> RouteActionConfig:
        if self.weighted_subsets and sum(s.weight for s in self.weighted_subsets) <= 0:
            raise _nested("weighted_subsets", "the weights must not all be 0")
        return self


class FaultDelayConfig(_Model):
    fixed: DurationMs
    percentage: Percent = 100.0


class FaultAbortConfig(_Model):
    status: Int = Field(70, ge=21, le=255, description="the Dubbo status to answer with (not 20 = OK)")
    message: str = ""
    percentage: Percent = 100.0


class FaultConfig(_Model):
    delay: FaultDelayConfig | None = None
    abort: FaultAbortConfig | None = None


class RateLimitConfig(_Model):
    requests_per_second: Float = Field(gt=0)
    burst: Int | None = Field(None, ge=1, description="bucket size; default: requests_per_second rounded up")
    per: Literal["service", "method"] = "service"


class RouteConfig(_Model):
    name: str
    match: RouteMatchConfig = Field(default_factory=RouteMatchConfig)
    # None: the cluster of the service's subscription (the first table route that matches).
    cluster: str | None = None
    timeout_ms: Int | None = Field(None, gt=0)
    retries: Int = Field(1, ge=0, le=10)
    route: RouteActionConfig | None = None
    fault: FaultConfig | None = None
    rate_limit: RateLimitConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _non_blank(v, "route name")

    @model_validator(mode="after")
    def _one_cluster(self) -> RouteConfig:
        if self.route is not None:
            if self.cluster is not None and self.route.cluster is not None:
                raise PydanticCustomError("route", "give cluster or route.cluster, not both")
            if self.timeout_ms is not None and self.route.timeout is not None:
                raise PydanticCustomError("route", "give timeout_ms or route.timeout, not both")
        return self

    @property
    def target(self) -> str | None:
        return self.cluster if self.cluster is not None else (self.route.cluster if self.route else None)

    @property
    def timeout(self) -> int | None:
        if self.route is not None and self.route.timeout is not None:
            return self.route.timeout
        return self.timeout_ms

    @property
    def attempts(self) -> int:
        if self.route is not None and self.route.retry is not None:
            return self.route.retry.attempts
        return self.retries


_ACTION_KEYS = ("route", "fault", "rate_limit")


def _cross_check(
    clusters: list[tuple[int, Any]], routes: list[tuple[int, Any, Any, bool]]
) -> list[tuple[str, str]]:
    """Checks that span list items: unique cluster and route names, routes naming existing clusters.

    Takes (index, name) / (index, name, cluster) so it can run both on the validated model and, when
    other fields failed, on the raw data (so one run reports everything).
    """
    errors: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    for i, name in clusters:
        if not isinstance(name, str):
            continue
        if name in first:
            errors.append(
                (f"clusters[{i}].name", f"duplicate cluster name {name!r} (also clusters[{first[name]}])")
            )
        else:
            first[name] = i
    known = ", ".join(sorted(first)) or "none defined"
    seen_routes: dict[str, int] = {}
    for i, name, cluster, has_action in routes:
        if cluster is None and not has_action:
            errors.append(
                (
                    f"routes[{i}].cluster",
                    "required unless the route has route, fault or rate_limit "
                    "(a rule without a cluster uses the service's subscription)",
                )
            )
        if isinstance(name, str):
            if name in seen_routes:
                errors.append(
                    (f"routes[{i}].name", f"duplicate route name {name!r} (also routes[{seen_routes[name]}])")
                )
            else:
                seen_routes[name] = i
        if isinstance(cluster, str) and cluster not in first:
            errors.append((f"routes[{i}].cluster", f"no cluster named {cluster!r} (known: {known})"))
    return errors


def _raw_cross_check(data: Any) -> list[tuple[str, str]]:
    if not isinstance(data, Mapping):
        return []

    def items(key: str) -> list[tuple[int, Mapping[str, Any]]]:
        value = data.get(key)
        if not isinstance(value, list):
            return []
        return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]

    clusters = [(i, c.get("name")) for i, c in items("clusters")]
    routes = [
        (i, r.get("name"), r.get("cluster"), any(k in r for k in _ACTION_KEYS)) for i, r in items("routes")
    ]
    if not isinstance(data.get("clusters", []), list):
        # The cluster list itself is broken; "no cluster named" would only add noise.
        routes = [(i, name, None, True) for i, name, _, _ in routes]
    return _cross_check(clusters, routes)


def is_loopback_host(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this host only (127.0.0.0/8, ::1, localhost).

    Wildcards (0.0.0.0, ::) and other names are not: a name may resolve to anything.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listeners_collide(a: Address, b: Address) -> bool:
    if a.port != b.port:
        return False
    wildcard = {"0.0.0.0", "::", ""}
    return a.host == b.host or a.host in wildcard or b.host in wildcard


def _access_log(value: Any) -> Any:
    if not isinstance(value, bool | str):  # one message instead of one per union member
        raise PydanticCustomError("access_log", f"expected true, false or a file path, not {value!r}")
    return value


class Config(_Model):
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
    health: dict[str, Any] = Field(default_factory=dict)
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
        return _REDACTED

    @field_validator("health")
    @classmethod
    def _health(cls, v: dict[str, Any]) -> dict[str, Any]:
        from regproxy.health import HealthSettings

        try:
            HealthSettings.from_dict(v, where="")
        except ValueError as exc:
            sub, sep, problem = str(exc).lstrip(".").partition(": ")
            raise (_nested(sub, problem) if sep else PydanticCustomError("health", sub)) from None
        return v

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: str) -> str:
        return _non_blank(v, "data_dir")

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
        errors = _cross_check(
            [(i, c.name) for i, c in enumerate(self.clusters)],
            [
                (i, r.name, r.cluster, any(getattr(r, k) is not None for k in _ACTION_KEYS))
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
            errors = [_describe(err) for err in e.errors()] + _raw_cross_check(data)
            raise ConfigError(_with_origins(errors, origins), source) from None
        except ConfigError as e:
            raise ConfigError(_with_origins(e.errors, origins), source) from None

    def redacted_dict(self) -> dict[str, Any]:
        """JSON-ready dict for dumps and the admin API; registry passwords and admin_token replaced by ***."""
        return self.model_dump(mode="json")

    def to_routing_table(self) -> RoutingTable:
        """The static routes and clusters as a routing-table snapshot."""
        # Imported here so loading a config does not pull in the routing package.
        from regproxy.routing.model import Cluster, Host, Route, RouteMatch
        from regproxy.routing.table import RoutingTable

        clusters = [
            Cluster(
                name=c.name,
                lb=c.lb,
                hosts=tuple(
                    Host(address=str(h.address), weight=h.weight, metadata=dict(h.metadata)) for h in c.hosts
                ),
            )
            for c in self.clusters
        ]
        static = {c.name for c in self.clusters}
        routes = [
            Route(
                name=r.name,
                match=RouteMatch(
                    service=r.match.service,  # type: ignore[arg-type]  # plain: a str
                    version=r.match.version,
                    group=r.match.group,
                    method=r.match.method,  # type: ignore[arg-type]
                ),
                cluster=r.target,  # type: ignore[arg-type]
                timeout_ms=r.timeout,
                retries=r.attempts,
            )
            for r in self.routes
            if self._in_table(r, static)
        ]
        return RoutingTable(routes=routes, clusters=clusters)

    @staticmethod
    def _in_table(r: RouteConfig, static: set[str]) -> bool:
        # Routes the table can express go there too, so services without rule work keep the
        # table's fast path; the others exist only as rules.
        return r.match.plain and r.target in static

    def to_rule_set(self) -> RuleSet:
        """Every route as a compiled rule (regproxy.routing.rules), in order."""
        from regproxy.routing.rules import (
            RETRY_CONNECT,
            RETRY_NAMES,
            Fault,
            RateLimit,
            Rule,
            RuleSet,
            StringMatch,
            Subset,
        )

        static = {c.name for c in self.clusters}
        rules = []
        for r in self.routes:
            m = r.match
            service = (
                StringMatch("exact", m.service)
                if isinstance(m.service, str)
                else StringMatch(*m.service.kind_value())
            )
            method = None
            if m.method is not None:
                method = (
                    StringMatch("exact", m.method)
                    if isinstance(m.method, str)
                    else StringMatch(*m.method.kind_value())
                )
            action = r.route
            retry_on = RETRY_CONNECT
            subsets: tuple[Subset, ...] = ()
            if action is not None:
                if action.retry is not None:
                    for name in action.retry.on:
                        retry_on |= RETRY_NAMES[name]
                subsets = tuple(
                    Subset(tuple(sorted(ws.subset.items())), ws.weight) for ws in action.weighted_subsets
                )
            fault = None
            if r.fault is not None and (r.fault.delay or r.fault.abort):
                d, a = r.fault.delay, r.fault.abort
                fault = Fault(
                    delay_ms=d.fixed if d else 0,
                    delay_percent=d.percentage if d else 0.0,
                    abort_status=a.status if a else 0,
                    abort_message=a.message if a else "",
                    abort_percent=a.percentage if a else 0.0,
                )
            limit = None
            if r.rate_limit is not None:
                rl = r.rate_limit
                burst = rl.burst if rl.burst is not None else max(1, math.ceil(rl.requests_per_second))
                limit = RateLimit(rl.requests_per_second, burst, rl.per)
            rules.append(
                Rule(
                    name=r.name,
                    service=service,
                    version=m.version,
                    group=m.group,
                    method=method,
                    attachments=tuple((k, StringMatch(*v.kind_value())) for k, v in m.attachments.items()),
                    cluster=r.target,
                    subsets=subsets,
                    timeout_ms=r.timeout,
                    retries=r.attempts,
                    retry_on=retry_on,
                    fault=fault,
                    rate_limit=limit,
                    in_table=self._in_table(r, static),
                )
            )
        return RuleSet(rules)


# --------------------------------------------------------------------------------------------------
# Turning pydantic errors into "key.path: problem"


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Our own validators raise PydanticCustomError with complete messages; these built-in types get
# friendlier wording.
_CUSTOM_TYPES = {
    "bool_number",
    "address",
    "registry_url",
    "empty",
    "lb",
    "ip",
    "log_level",
    "token",
    "duration",
    "match",
    "route",
    "subsets",
    "access_log",
    "health",
}


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    kind = err["type"]
    path = _path(tuple(err["loc"]))
    if kind == "nested":
        sub = err["ctx"]["sub"]
        return (f"{path}{sub}" if sub.startswith("[") or not path else f"{path}.{sub}"), err["ctx"]["problem"]
    if kind == "extra_forbidden":
        return path, "unknown key"
    if kind == "missing":
        return path, "required key is missing"
    msg = str(err["msg"])
    if kind in _CUSTOM_TYPES:
        return path, msg
    if kind == "value_error" and "error" in err.get("ctx", {}):
        return path, str(err["ctx"]["error"])
    value = err.get("input")
    if isinstance(value, Mapping | list):
        return path, msg
    return path, f"{msg} (got {_short(value)})"


def _with_origins(errors: list[tuple[str, str]], origins: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if not origins:
        return errors
    out = []
    for path, problem in errors:
        top = re.split(r"[.\[]", path, maxsplit=1)[0]
        origin = origins.get(top)
        out.append((path, f"{problem} (from {origin})" if origin else problem))
    return out


# --------------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        return yamlio.load(text)  # YAML 1.2 scalars: `on: [...]` is the key "on", not True
    except yamlio.DuplicateKeyError as e:
        raise ConfigError(
            f"line {e.line}: duplicate key {e.key!r} (first given on line {e.first_line})", str(path)
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{context}; {problem}" if context else problem
        raise ConfigError(f"{path}: YAML syntax error at {where}: {detail}") from None


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[key]``; a dotted key (``limits.max_body_bytes``) sets a nested value."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Read the YAML file at ``path`` (None: built-in defaults), apply ``overrides``, validate.

    Override keys are top-level keys or dotted paths; values replace the file's (lists are replaced,
    not merged).  ``origins`` labels where overrides came from, for error messages.  Raises ConfigError.
    """
    source: str | None = None
    data: Any = {}
    if path is not None:
        source = str(path)
        data = _read_yaml(Path(path))
        if data is None:  # an empty file means "all defaults"
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                [("", f"the top level must be a mapping of keys, not {type(data).__name__}")], source
            )
    data = dict(data)
    for key, value in (overrides or {}).items():
        _apply_override(data, key, value)
    # Only a key an override actually set is labelled with it: the file's `registries:` is not
    # "(from --registry)" because the flag exists.
    given = {key.split(".")[0] for key in overrides or {}}
    origins = {key: origin for key, origin in (origins or {}).items() if key in given}
    return Config.from_dict(data, source=source, origins=origins)
