"""The matchers Dubbo's tag router and configurators share, with Dubbo's exact semantics.

* :class:`StringMatch` — ``org.apache.dubbo.rpc.cluster.router.mesh.rule.virtualservice.match.StringMatch``
  (``exact``, ``prefix``, ``regex``, ``wildcard``, ``empty``, ``noempty``);
* :class:`ListStringMatch` (``oneof``) and :class:`AddressMatch` (``cird``, ``wildcard``, ``exact``)
  from the same package;
* :func:`match_ip_expression` — ``NetUtils.matchIpExpression``/``matchIpRange`` and ``CIDRUtils``
  (``10.0.0.*``, ``10.0.0.1-9``, ``10.0.0.0/24``, ``[v6]:port``, ``host:port``), which the tag router
  uses for its ``addresses`` and ``AddressMatch`` for ``cird``;
* ``UrlUtils.isMatchGlobPattern`` is :func:`regproxy.registry.url.is_match_glob_pattern`.

Where Dubbo throws while matching, the address does not match (``TagStateRouter.checkAddressMatch``
catches every exception).  Two of Dubbo's surprises are kept because Java consumers behave so:

* ``NetUtils.isValidV4Address`` is false for loopback addresses (``127.x``) and ``0.0.0.0``, so
  ``matchIpRange`` treats such a host as IPv6, and an IPv4 pattern (``127.0.0.1:20880``,
  ``127.0.0.*``) then fails its format check: a provider on a loopback address matches only ``*``,
  ``*.*.*.*``, a CIDR pattern, or an eight-group IPv6 pattern whose groups after the first are all
  ``*`` (``[*:*:*:*:*:*:*:*]:20880`` matches a loopback provider on port 20880: its first group is
  compared with the whole ``127.0.0.1``, and any other group but ``*`` reads past the host's one);
* ``matchIpExpression(pattern, address)`` splits ``host:port`` only when the address *ends* with
  ``:``, so a CIDR never matches an address given with its port.

No name resolution: a host or pattern that is not an IP literal matches only itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from regproxy.registry.url import is_match_glob_pattern

from .errors import RuleError
from .fields import Fields, java_string

__all__ = [
    "ANYHOST_VALUE",
    "ANY_VALUE",
    "AddressMatch",
    "ListStringMatch",
    "ParamMatch",
    "PatternError",
    "StringMatch",
    "UnknownHostError",
    "check_cidr",
    "match_ip_expression",
]

ANY_VALUE = "*"  # CommonConstants.ANY_VALUE
ANYHOST_VALUE = "0.0.0.0"  # CommonConstants.ANYHOST_VALUE


class PatternError(ValueError):
    """Where Dubbo throws while matching an address (IllegalArgumentException, NumberFormatException)."""


class UnknownHostError(PatternError):
    """Where Dubbo throws ``UnknownHostException`` (``AddressMatch`` catches only this one)."""


# ---------------------------------------------------------------------------------------------------
# StringMatch and friends

_STRING_KINDS = ("exact", "prefix", "regex", "wildcard", "empty", "noempty")


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Dubbo's ``StringMatch``: the first kind that is set decides, in the order exact, prefix,
    regex, wildcard, empty, noempty — but exact, prefix, regex and wildcard are skipped when the
    input is missing (None), so ``{exact: a, empty: ""}`` matches a missing value.

    ``regex`` must match the whole input (Java's ``String.matches``); ``wildcard`` matches the input
    equal to it, or anything when it is ``*``; ``empty`` and ``noempty`` are switched on by any value.
    """

    exact: str | None = None
    prefix: str | None = None
    regex: re.Pattern[str] | None = None
    wildcard: str | None = None
    empty: str | None = None
    noempty: str | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> StringMatch:
        fields = Fields(data, where, frozenset(_STRING_KINDS))
        values = {k: java_string(fields.raw(k), fields.path(k)) for k in _STRING_KINDS if k in fields}
        if not values:
            raise RuleError(
                f"{where} sets no matcher (one of {', '.join(_STRING_KINDS)}; Dubbo's StringMatch "
                "without one never matches)",
                reason="value",
            )
        regex = None
        if "regex" in values:
            try:
                regex = re.compile(values["regex"])
            except re.error as exc:
                raise RuleError(
                    f"{where}.regex {values['regex']!r} is not a regular expression: {exc}", reason="regex"
                ) from exc
        return cls(
            exact=values.get("exact"),
            prefix=values.get("prefix"),
            regex=regex,
            wildcard=values.get("wildcard"),
            empty=values.get("empty"),
            noempty=values.get("noempty"),
        )

    def matches(self, value: str | None) -> bool:
        if self.exact is not None and value is not None:
            return value == self.exact
        if self.prefix is not None and value is not None:
            return value.startswith(self.prefix)
        if self.regex is not None and value is not None:
            return self.regex.fullmatch(value) is not None
        if self.wildcard is not None and value is not None:
            return value == self.wildcard or self.wildcard == ANY_VALUE  # "only supports *"
        if self.empty is not None:
            return not value
        if self.noempty is not None:
            return bool(value)
        return False


@dataclass(frozen=True, slots=True)
class ListStringMatch:
    """Dubbo's ``ListStringMatch``: any of ``oneof`` matches."""

    oneof: tuple[StringMatch, ...]

    @classmethod
    def parse(cls, data: object, where: str) -> ListStringMatch:
        fields = Fields(data, where, frozenset({"oneof"}))
        items = fields.raw("oneof")
        if not isinstance(items, list):
            # Dubbo's ListStringMatch.isMatch iterates oneof: without a list it throws.
            raise RuleError(f"{fields.path('oneof')} must be a list of string matchers", reason="type")
        return cls(
            tuple(StringMatch.parse(item, f"{fields.path('oneof')}[{i}]") for i, item in enumerate(items))
        )

    def matches(self, value: str | None) -> bool:
        return any(m.matches(value) for m in self.oneof)


@dataclass(frozen=True, slots=True)
class ParamMatch:
    """A ``{key, value: StringMatch}`` pair, matched against one parameter of a URL (absent: None)."""

    key: str
    value: StringMatch

    @classmethod
    def parse(cls, data: object, where: str) -> ParamMatch:
        fields = Fields(data, where, frozenset({"key", "value"}))
        key = fields.required("key")
        if "value" not in fields:
            # Dubbo's ParamMatch.isMatch: no value never matches.
            raise RuleError(f"{fields.path('value')} is missing", reason="missing-field")
        return cls(key, StringMatch.parse(fields.raw("value"), fields.path("value")))

    @classmethod
    def parse_list(cls, data: object, where: str) -> tuple[ParamMatch, ...]:
        if not isinstance(data, list):
            raise RuleError(f"{where} must be a list of {{key, value}} matchers", reason="type")
        return tuple(cls.parse(item, f"{where}[{i}]") for i, item in enumerate(data))

    def matches(self, params: Mapping[str, str]) -> bool:
        return self.value.matches(params.get(self.key))


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """Dubbo's ``AddressMatch``: ``cird`` (the input equal to it, or in it by ``matchIpExpression``),
    then ``wildcard`` (``0.0.0.0`` and ``*`` match anything, else ``isMatchGlobPattern``), then
    ``exact``.  A kind decides only when set and the input is present; a ``cird`` whose match throws
    ``UnknownHostException`` falls through to the next kind, any other failure is no match."""

    cird: str | None = None
    wildcard: str | None = None
    exact: str | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> AddressMatch:
        fields = Fields(data, where, frozenset({"cird", "wildcard", "exact"}))
        values = {k: fields.string(k) for k in ("cird", "wildcard", "exact")}
        if not any(v is not None for v in values.values()):
            raise RuleError(
                f"{where} sets none of cird, wildcard, exact (it would never match)", reason="value"
            )
        cird = values["cird"]
        if cird is not None and "/" in cird:
            check_cidr(cird, where + ".cird")
        return cls(cird=cird, wildcard=values["wildcard"], exact=values["exact"])

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.cird is not None:
            try:
                return value == self.cird or match_ip_expression(self.cird, value)
            except UnknownHostError:
                pass
            except PatternError:
                return False
        if self.wildcard is not None:
            if self.wildcard in (ANYHOST_VALUE, ANY_VALUE):
                return True
            return is_match_glob_pattern(self.wildcard, value)
        if self.exact is not None:
            return value == self.exact
        return False


# ---------------------------------------------------------------------------------------------------
# NetUtils.matchIpExpression


_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3,5}\Z")  # NetUtils.IP_PATTERN


def _inet(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``InetAddress.getByName`` for literals; IPv4-mapped IPv6 becomes IPv4 as in Java."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise UnknownHostError(f"{host!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``InetAddress.getHostAddress``: IPv6 as eight hex groups without leading zeros."""
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    groups = ip.packed
    return ":".join(f"{(groups[i] << 8) | groups[i + 1]:x}" for i in range(0, 16, 2))


def _is_valid_v4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """``NetUtils.isValidV4Address``: false for loopback, ``0.0.0.0`` and every IPv6 address."""
    if ip.is_loopback:
        return False
    name = _host_address(ip)
    return bool(_IPV4_RE.match(name)) and name not in (ANYHOST_VALUE, "127.0.0.1")


def _java_split(text: str, sep: str) -> list[str]:
    # Java's String.split drops trailing empty strings ("1.2.3." -> 3 parts).
    if not text:
        return [""]
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _has_expression(pattern: str) -> bool:
    return "*" in pattern or "-" in pattern


def _pattern_host_and_port(pattern: str, is_v4: bool) -> tuple[str, str | None]:
    if pattern.startswith("[") and "]:" in pattern:
        end = pattern.index("]:")
        return pattern[1:end], pattern[end + 2 :]
    if pattern.startswith("[") and pattern.endswith("]"):
        return pattern[1:-1], None
    if is_v4 and ":" in pattern:
        end = pattern.index(":")
        return pattern[:end], pattern[end + 1 :]
    return pattern, None


def _segment(text: str, is_v4: bool) -> int:
    # Integer.parseInt(s) / parseInt(s, 16): an optional sign, then digits only.
    digits = text[1:] if text[:1] in "+-" else text
    ok = digits.isascii() and (
        digits.isdigit() if is_v4 else all(c in "0123456789abcdefABCDEF" for c in digits)
    )
    if not digits or not ok:
        raise PatternError(f"{text!r} is not a number")
    return int(text, 10 if is_v4 else 16)


def _match_ip_range(pattern: str, host: str, port: int) -> bool:
    """``NetUtils.matchIpRange``."""
    pattern = pattern.strip("".join(chr(c) for c in range(33)))  # Java's trim()
    if pattern in ("*.*.*.*", "*"):
        return True
    ip = _inet(host)
    is_v4 = _is_valid_v4(ip)
    p_host, p_port = _pattern_host_and_port(pattern, is_v4)
    if p_port is not None and p_port != str(port):
        return False
    sep = "." if is_v4 else ":"
    mask = _java_split(p_host, sep)
    if not is_v4:
        if len(mask) != 8 and _has_expression(p_host):
            raise PatternError(f"IPv6 pattern {p_host!r} with '*' or '-' must have eight groups")
        if len(mask) != 8 and "::" not in p_host:
            raise PatternError(f"the host is IPv6, but {p_host!r} is not an IPv6 pattern")
    elif len(mask) != 4:
        raise PatternError(f"the host is IPv4, but {p_host!r} is not an IPv4 pattern")
    address = _host_address(ip)
    if p_host == address:
        return True
    if not _has_expression(p_host):
        return _host_address(_inet(p_host)) == address
    segments = address.split(sep)
    for i, m in enumerate(mask):
        if m == "*":
            continue
        if i >= len(segments):
            # A loopback host is matched as IPv6 but written as IPv4: one segment against eight.
            # Dubbo reads ipAddress[i] past its end here (ArrayIndexOutOfBoundsException).
            raise PatternError(f"{p_host!r} has more groups than the host {address!r}")
        seg = segments[i]
        if m == seg:
            continue
        if "-" in m:
            bounds = m.split("-")
            if len(bounds) != 2:
                raise PatternError(f"bad range {m!r} in {p_host!r}")
            low, high, value = (_segment(b, is_v4) for b in (*bounds, seg))
            if value < low or value > high:
                return False
        elif seg == "0" and m in ("0", "00", "000", "0000"):
            continue
        else:
            return False
    return True


def check_cidr(pattern: str, where: str) -> None:
    """What ``new CIDRUtils(pattern)`` refuses, checked when the rule is read."""
    address, _, prefix = pattern.partition("/")
    try:
        _inet(address)
    except UnknownHostError:
        raise RuleError(f"{where} {pattern!r}: {address!r} is not an IP address", reason="address") from None
    if not prefix.lstrip("+-").isdigit():
        raise RuleError(f"{where} {pattern!r}: the prefix length is not a number", reason="address")


def _in_cidr(pattern: str, host: str) -> bool:
    """``CIDRUtils(pattern).isInRange(host)``: compares the numbers, whatever their families."""
    address, _, prefix_text = pattern.partition("/")
    network = _inet(address)
    try:
        prefix = int(prefix_text)
    except ValueError:
        raise PatternError(f"{pattern!r}: the prefix length is not a number") from None
    bits = network.max_prefixlen
    full = (1 << bits) - 1
    mask = ~full >> prefix if prefix >= 0 else ~full << -prefix  # BigInteger(-1).not().shiftRight(prefix)
    start = int(network) & mask
    end = (start + ~mask) & full  # toBytes keeps the low bytes
    target = int(_inet(host))
    return start <= target <= end


def match_ip_expression(pattern: str, host: str, port: int | None = None) -> bool:
    """``NetUtils.matchIpExpression``.  With ``port`` it is the (pattern, host, port) form the tag
    router uses; without, the (pattern, address) form ``AddressMatch`` uses, where the address is a
    host (an address ending in ``:`` throws in Dubbo: PatternError here).

    Raises PatternError where Dubbo throws (UnknownHostError for what is not an IP address).
    """
    if port is None:
        if host.endswith(":"):
            raise PatternError(f"{host!r}: Dubbo's split of 'host:' has no port part")
        port = 0
    if "/" in pattern:
        return _in_cidr(pattern, host)
    return _match_ip_range(pattern, host, port)
