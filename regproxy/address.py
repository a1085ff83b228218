"""``host:port`` addresses as every part of regproxy reads them: config listeners, registry hosts,
static cluster hosts.  One parser, so an address means the same wherever it is written."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

__all__ = ["Address", "is_loopback_host", "parse_address"]

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
