"""Where a registry is and how to log in: ``zookeeper://``, ``nacos://`` and ``memory://`` URLs as the
config file, the command line and API bodies give them.  Parsing only; the adapters connect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pydantic import GetCoreSchemaHandler, SerializationInfo
from pydantic_core import PydanticCustomError, core_schema

from regproxy.address import Address

__all__ = ["NACOS_DEFAULT_GROUP", "REDACTED", "ZK_ACLS", "ZK_DEFAULT_ACL", "RegistryURL"]

# What a dump shows instead of a secret (registry passwords here, tokens in the config).
REDACTED = "***"


@dataclass(frozen=True)
class _Scheme:
    default_port: int | None  # None: the scheme takes no hosts
    params: frozenset[str]


# One place to add a registry kind or a parameter; the registry adapters read the parsed model.
_SCHEMES: dict[str, _Scheme] = {
    "zookeeper": _Scheme(2181, frozenset({"username", "password", "acl", "config_center"})),
    "nacos": _Scheme(8848, frozenset({"namespace", "group", "username", "password", "config_center"})),
    "memory": _Scheme(None, frozenset({"config_center"})),
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
    * any of them with ``config_center=false``: no dynamic rules read from it (default true)
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
        if params.get("config_center", "true") not in ("true", "false"):
            raise ValueError(f"config_center must be true or false (got {params['config_center']!r})")
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
    def config_center(self) -> bool:
        """Whether regproxy reads Dubbo's dynamic rules (regproxy.governance) from this registry:
        ``?config_center=false`` turns it off."""
        return self.params.get("config_center", "true") == "true"

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
        params = {k: (REDACTED if redact and k == "password" else v) for k, v in sorted(self.params.items())}
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
