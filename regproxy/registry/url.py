"""Dubbo URLs as they appear in a registry, the rules Dubbo uses to match them, and subscriptions.

Pure values, no I/O.  Facts followed (from Dubbo 2.7/3.x):

* ``URL.toFullString()`` writes ``protocol://host[:port][/path][?k=v&...]`` with parameters sorted by
  key and values *not* percent-encoded; the port is left out when it is 0; empty keys are skipped.
* ``URL.valueOf()`` splits the query on ``&`` and each part on its *first* ``=`` (so values may hold
  ``=``); a part without ``=`` becomes ``key=key``; empty parts are skipped; a later key wins.
* ZooKeeper leaf names are the full string encoded by ``java.net.URLEncoder`` (UTF-8).
* ``UrlUtils.isMatch`` and ``RegistryDirectory.toInvokers`` decide which providers a consumer uses
  (see :func:`matches`).

One deliberate extension: a value that holds ``&`` or ``%`` cannot be written raw and parsed back
unambiguously, so ``str()`` writes *such values only* through :func:`java_url_encode`, and
:meth:`DubboURL.parse` decodes values that contain ``%``.  Values Dubbo itself writes (``a,b``,
``x=y``, ``1.0.0``) are written raw, exactly as Dubbo does, so Dubbo consumers read the same value.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol
from urllib.parse import unquote_plus

from regproxy.routing import RouteMatch, ServiceKey, normalize_version, service_label, split_address

__all__ = [
    "ANY",
    "CONSUMERS",
    "DEFAULT_WEIGHT",
    "DUBBO_PROTOCOL_VERSION",
    "FORBIDDEN_PROVIDER_PARAMS",
    "PROVIDERS",
    "DubboURL",
    "Subscription",
    "SubscriptionLike",
    "consumer_url",
    "is_match_glob_pattern",
    "java_url_decode",
    "java_url_encode",
    "matches",
    "provider_problem",
    "provider_url",
    "regproxy_release",
]

ANY = "*"  # Dubbo's ANY_VALUE
DUBBO_PROTOCOL_VERSION = "2.0.2"  # the "dubbo" parameter every Dubbo 2.7/3.x URL carries
DEFAULT_WEIGHT = 100  # Dubbo's default provider weight
# Dubbo reads weight (and every numeric parameter) into a Java int.  A registry may hold any digits
# (weight=99999999999999999999): read as a Python int it would be unbounded, and orjson refuses ints
# beyond 64 bits, which turned every admin view of the providers into a 500.  Java Dubbo's
# Integer.parseInt throws on such a value and that provider cannot be weighed at all; regproxy clamps
# instead, so one foreign value costs no routing.  Below zero is 0, as AbstractLoadBalance.getWeight
# ends with Math.max(weight, 0).
MAX_DUBBO_INT = 2**31 - 1
PROVIDERS = "providers"
CONSUMERS = "consumers"

# ---------------------------------------------------------------------------------------------------
# java.net.URLEncoder / URLDecoder (UTF-8)

# URLEncoder keeps exactly these; note "~" is encoded (unlike Python's quote) and "*" is kept.
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")
_ENCODE_TABLE: tuple[str, ...] = tuple(
    chr(b) if b in _UNRESERVED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)
)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def java_url_encode(s: str) -> str:
    """``URLEncoder.encode(s, UTF_8)``: letters, digits and ``.-*_`` kept, space -> ``+``, the rest ``%XX``.

    Lone surrogates (which Java strings can hold) become ``?`` as in Java's UTF-8 encoder.
    """
    table = _ENCODE_TABLE
    return "".join([table[b] for b in s.encode("utf-8", errors="replace")])


def java_url_decode(s: str) -> str:
    """``URLDecoder.decode(s, UTF_8)``: ``+`` -> space, ``%XX`` runs decoded as UTF-8.

    Invalid UTF-8 becomes U+FFFD (as in Java); a ``%`` not followed by two hex digits raises
    ValueError (Java throws IllegalArgumentException).
    """
    bad = _BAD_ESCAPE.search(s)
    if bad:
        raise ValueError(f"bad percent escape at offset {bad.start()}: {s[bad.start() : bad.start() + 3]!r}")
    return unquote_plus(s, encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------
# DubboURL

_PROTOCOL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOST_FORBIDDEN = frozenset("/?#@[]& \t\r\n")
# A key holding one of these could not be parsed back (it would split the pair or the query).
_KEY_FORBIDDEN = frozenset("&=%")


def _value_needs_encoding(value: str) -> bool:
    # "&" would end the pair; "%" would make decoding ambiguous.  Everything else (",", "=", "+",
    # spaces, non-ASCII) survives raw: the whole string is URLEncoded again for ZooKeeper anyway.
    return "&" in value or "%" in value


def _decode_value(value: str) -> str:
    if "%" not in value:
        return value
    try:
        return java_url_decode(value)
    except ValueError:
        return value  # a raw "%" written by someone else: keep it as it is rather than fail the URL


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class DubboURL:
    """A Dubbo URL: ``protocol://host[:port]/path?params``.

    ``host`` is stored without IPv6 brackets; ``port`` 0 means none (consumer URLs have none).
    ``params`` is a read-only mapping (excluded from the hash; equality compares it).
    """

    protocol: str
    host: str
    port: int
    path: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _PROTOCOL_RE.match(self.protocol):
            raise ValueError(f"invalid protocol {self.protocol!r}")
        if not self.host:
            raise ValueError("missing host")
        if _HOST_FORBIDDEN.intersection(self.host):
            raise ValueError(f"invalid host {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port!r}: must be 0..65535")
        if "?" in self.path:
            raise ValueError(f"invalid path {self.path!r}: must not contain '?'")
        params: dict[str, str] = {}
        for key, value in self.params.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"parameter {key!r}: keys and values must be strings")
            if not key or _KEY_FORBIDDEN.intersection(key):
                raise ValueError(f"invalid parameter name {key!r}: must be non-empty without '&', '=', '%'")
            params[key] = value
        _set(self, "params", MappingProxyType(params))

    def __reduce__(self) -> tuple[type[DubboURL], tuple[str, str, int, str, dict[str, str]]]:
        # mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict instead.
        return (DubboURL, (self.protocol, self.host, self.port, self.path, dict(self.params)))

    # -- text forms ---------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> DubboURL:
        """Parse what Dubbo's ``toFullString()`` writes (after one ``java_url_decode`` of a ZooKeeper leaf).

        Raises ValueError naming the reason when ``text`` is not a Dubbo URL.
        """
        # Leading blanks only: a trailing one may belong to the last value (or a path) and the
        # round trip parse(str(u)) == u must hold for every value.
        text = text.lstrip()
        if not text:
            raise ValueError("empty URL")
        rest, qmark, query = text.partition("?")
        params: dict[str, str] = {}
        if qmark:
            for part in query.split("&"):
                if not part:
                    continue
                key, eq, value = part.partition("=")
                if not eq:
                    value = key  # Dubbo's URL.valueOf: "k" alone means k=k
                if not key:
                    continue  # Dubbo skips empty keys when writing; do the same when reading
                if "%" in key:
                    raise ValueError(f"invalid parameter name {key!r}")
                params[key] = _decode_value(value)
        protocol, sep, rest = rest.partition("://")
        if not sep:
            raise ValueError("missing '://' after the protocol")
        if not protocol:
            raise ValueError("missing protocol")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            raise ValueError("user info ('user:password@') is not supported in a provider URL")
        host, port = _split_authority(authority)
        return cls(protocol, host, port, path if slash else "", params)

    def __str__(self) -> str:
        """Dubbo's ``toFullString()`` form: params sorted by key; values raw unless they hold ``&``/``%``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        out = [self.protocol, "://", host]
        if self.port:
            out += [":", str(self.port)]
        if self.path:
            out += ["/", self.path]
        if self.params:
            pairs = [
                f"{k}={java_url_encode(v) if _value_needs_encoding(v) else v}"
                for k, v in sorted(self.params.items())
            ]
            out += ["?", "&".join(pairs)]
        return "".join(out)

    def encoded(self) -> str:
        """The ZooKeeper leaf name: ``java_url_encode(str(self))``."""
        return java_url_encode(str(self))

    # -- Dubbo's view of the parameters -----------------------------------------------------------

    @property
    def interface(self) -> str:
        # apache-dubbo (the Python SDK, 3.0.0b1) registers ``tri://host:port?service=<interface>``,
        # with neither a path nor an ``interface`` parameter.
        return self.params.get("interface") or self.path or self.params.get("service", "")

    @property
    def version(self) -> str:
        """Normalized: "", "0.0.0" and "*" all read as ""."""
        return normalize_version(self.params.get("version"))

    @property
    def group(self) -> str:
        return self.params.get("group", "")

    @property
    def category(self) -> str:
        return self.params.get("category") or PROVIDERS

    @property
    def side(self) -> str:
        return self.params.get("side", "")

    @property
    def weight(self) -> int:
        """``weight`` as an int; 100 when missing or not a number, clamped to 0..MAX_DUBBO_INT."""
        text = self.params.get("weight", "").strip()
        if len(text) > 4300 and text.lstrip("+-").isdigit():
            # int() refuses this many digits (the CVE-2020-10735 limit): clamp it like any other.
            return 0 if text.startswith("-") else MAX_DUBBO_INT
        try:
            value = int(text)
        except ValueError:
            return DEFAULT_WEIGHT
        return min(max(value, 0), MAX_DUBBO_INT)

    @property
    def enabled(self) -> bool:
        """Dubbo's RegistryDirectory rule: ``disabled``, when present, wins over ``enabled``.

        Both are read like Java's ``Boolean.parseBoolean`` with a default for an empty value:
        ``enabled`` is true only when empty or "true" (any case); ``disabled`` only when "true".
        """
        disabled = self.params.get("disabled")
        if disabled is not None:
            return disabled.lower() != "true"
        enabled = self.params.get("enabled", "")
        return not enabled or enabled.lower() == "true"

    @property
    def address(self) -> str:
        """``host:port``, IPv6 in brackets (the form routing.Host takes)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def service_key(self) -> ServiceKey:
        """The provider's service key; ValueError when the interface is not a legal name."""
        return ServiceKey(self.interface, self.version, self.group)


def provider_problem(url: DubboURL) -> str | None:
    """Why a provider URL from a registry (or the state file) cannot be routed to; None when it can.

    A provider needs a port a connection can be made to (a URL without one reads as port 0) and an
    address the routing table accepts; anything else would be refused later, inside the code that
    builds the table, where it stopped every later update of the service.
    """
    if not 1 <= url.port <= 65535:
        return f"port {url.port} is not 1..65535"
    try:
        split_address(url.address)
    except ValueError as exc:
        return str(exc)
    return None


def _split_authority(authority: str) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unbalanced '[' in host {authority!r}")
        host, after = authority[1:end], authority[end + 1 :]
        if not host:
            raise ValueError("empty IPv6 host '[]'")
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after the IPv6 host")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_raw = authority.rpartition(":")
        if not colon:
            host, port_text = authority, None
        else:
            port_text = port_text_raw
            if ":" in host:
                raise ValueError(f"IPv6 host in {authority!r} must be written in brackets")
    if not host:
        raise ValueError("missing host")
    if port_text is None:
        return host, 0  # Dubbo: no port -> 0
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port {port_text!r} is not a number" if port_text else "empty port after ':'")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


# ---------------------------------------------------------------------------------------------------
# Building the URLs regproxy registers


@functools.cache
def regproxy_release() -> str:
    """regproxy's package version: the ``release`` parameter of the URLs it writes.  Cached: reading
    package metadata parses files, and every subscribe builds a consumer URL."""
    try:
        return importlib.metadata.version("regproxy")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


# Parameters the caller of provider_url() may not set through ``params``: they define what the URL
# is (changing them would register a different or broken provider); version and group have
# arguments of their own, validated by the caller.
FORBIDDEN_PROVIDER_PARAMS = frozenset(
    {"interface", "side", "anyhost", "dubbo", "methods", "version", "group", "category"}
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def provider_url(
    *,
    interface: str,
    ip: str,
    port: int,
    methods: Sequence[str] = (),
    version: str = "",
    group: str = "",
    application: str = "",
    params: Mapping[str, str] | None = None,
    pid: int | None = None,
    timestamp_ms: int | None = None,
    protocol: str = "dubbo",
) -> DubboURL:
    """The URL of a provider as a Dubbo 2.7/3.x ``ServiceConfig`` would register it.

    ``protocol`` is the URL's scheme: ``dubbo``, or ``tri`` for a Triple service (Dubbo 3 registers
    ``tri://`` with the same parameters: ``ServiceConfig.doExportUrlsFor1Protocol``).

    ``methods`` are sorted and joined with ","; none gives ``*`` (Dubbo's value for an interface
    without methods).  ``version`` ("0.0.0" = none), ``group`` and ``application`` are left out when
    empty.  ``params`` are merged last (``weight`` and the like); a key in
    :data:`FORBIDDEN_PROVIDER_PARAMS` raises ValueError naming it.
    """
    if not interface:
        raise ValueError("interface must not be empty")
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port}: must be 1..65535")
    extra = dict(params or {})
    forbidden = sorted(FORBIDDEN_PROVIDER_PARAMS.intersection(extra))
    if forbidden:
        raise ValueError(f"parameter {forbidden[0]!r} cannot be set through params")
    names = sorted(set(methods))
    for name in names:
        if not name or "," in name:
            raise ValueError(f"invalid method name {name!r}")
    p: dict[str, str] = {
        "anyhost": "true",
        "deprecated": "false",
        "dubbo": DUBBO_PROTOCOL_VERSION,
        "dynamic": "true",
        "generic": "false",
        "interface": interface,
        "methods": ",".join(names) or ANY,
        "pid": str(os.getpid() if pid is None else pid),
        "release": regproxy_release(),
        "side": "provider",
        "timestamp": str(_now_ms() if timestamp_ms is None else timestamp_ms),
    }
    if application:
        p["application"] = application
    version = normalize_version(version)
    if version:
        p["version"] = version
    if group:
        p["group"] = group
    p.update(extra)
    return DubboURL(protocol, ip, port, interface, p)


# The consumer URL parameters regproxy writes itself (consumer_url); the rest are the consumer's own.
CONSUMER_KEYS = frozenset(
    {
        "application",
        "category",
        "check",
        "dubbo",
        "interface",
        "pid",
        "release",
        "side",
        "timestamp",
        "version",
        "group",
    }
)


def consumer_url(
    *,
    interface: str,
    ip: str,
    version: str = "",
    group: str = "",
    application: str = "",
    pid: int | None = None,
    timestamp_ms: int | None = None,
    params: Mapping[str, str] | None = None,
) -> DubboURL:
    """The consumer node a Dubbo consumer writes under ``consumers/`` (informational for operators,
    and what condition rules match a consumer on).  ``params``: the consumer's own parameters (its
    reference config); the keys above are regproxy's and win.

    ``version`` is kept as subscribed ("*" stays "*", "0.0.0" is left out, like ""); ``group`` may
    be "*" or a comma list, as Dubbo writes it.
    """
    if not interface:
        raise ValueError("interface must not be empty")
    p: dict[str, str] = {
        "category": CONSUMERS,
        "check": "false",
        "dubbo": DUBBO_PROTOCOL_VERSION,
        "interface": interface,
        "pid": str(os.getpid() if pid is None else pid),
        "release": regproxy_release(),
        "side": "consumer",
        "timestamp": str(_now_ms() if timestamp_ms is None else timestamp_ms),
    }
    if application:
        p["application"] = application
    if version and version != "0.0.0":
        p["version"] = version
    if group:
        p["group"] = group
    if params:
        p = {**params, **p}
    return DubboURL("consumer", ip, 0, interface, p)


# ---------------------------------------------------------------------------------------------------
# Subscriptions and matching


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a consumer asked for.  Unlike routing.ServiceKey, ``version="*"`` means *any* version.

    ``version`` is kept as given except "0.0.0" -> "" (both mean "no version"); ``group`` may be
    "" (only providers without a group), "*" (any) or a comma list (any of them).
    """

    interface: str
    version: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        if not self.interface:
            raise ValueError("interface must not be empty")
        if self.version == "0.0.0":
            _set(self, "version", "")

    @property
    def cluster_name(self) -> str:
        """``group/interface:version``, empty parts left out (version "*" shown as "*")."""
        return service_label(self.interface, self.version, self.group, any_version=True)

    @property
    def key(self) -> str:
        """Same as :attr:`cluster_name`: one subscription per key."""
        return self.cluster_name

    def route_match(self) -> RouteMatch:
        """The egress route match for this subscription.

        version "*" -> any version (None).  group "*" -> any group (None); a comma list also gives
        None, because a route cannot express "one of": the route takes every group of the interface
        and :func:`matches` keeps only the providers of the listed groups in the cluster.
        """
        version = None if self.version == ANY else self.version
        group = None if self.group == ANY or "," in self.group else self.group
        return RouteMatch(service=self.interface, version=version, group=group)


class SubscriptionLike(Protocol):
    """Anything with interface/version/group: a Subscription, or a routing.ServiceKey."""

    @property
    def interface(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def group(self) -> str: ...


_COMMA_SPLIT = re.compile(r"\s*,+\s*")  # Dubbo's COMMA_SPLIT_PATTERN


def _group_matches(wanted: str, group: str) -> bool:
    # UrlUtils.isMatch: "*" | equal | wanted is a comma list containing the (non-empty) group.
    if wanted in (ANY, group):
        return True
    return bool(group) and group in _COMMA_SPLIT.split(wanted)


# The provider URL protocols a subscription routes to (see matches).
ROUTED_PROTOCOLS: Final = frozenset({"dubbo", "tri"})


def matches(sub: SubscriptionLike, url: DubboURL) -> bool:
    """Whether a consumer subscribed as ``sub`` would use provider ``url`` (Dubbo's rules).

    * protocol ``dubbo`` or ``tri`` (rest, grpc, ... are for other clients; the caller logs them).
      A Dubbo reference without a ``protocol`` setting takes every protocol it can speak
      (``RegistryDirectory.toInvokers``); regproxy carries both, and each call goes to the hosts
      that speak the caller's protocol (``Host.speaks``, regproxy.proxy.plan);
    * category ``providers`` (a missing category means providers); configurators/routers never match;
    * enabled: ``disabled=true`` or ``enabled`` other than "true" drops it (RegistryDirectory);
    * same interface;
    * version: "*" any, else equal after normalizing ("" == "0.0.0");
    * group: "*" any; "" only providers without a group; a comma list any of its groups.
    """
    if url.protocol not in ROUTED_PROTOCOLS or url.category != PROVIDERS or not url.enabled:
        return False
    if url.interface != sub.interface:
        return False
    if sub.version != ANY and normalize_version(sub.version) != url.version:
        return False
    return _group_matches(sub.group, url.group)


def is_match_glob_pattern(pattern: str | None, value: str | None) -> bool:
    """Dubbo's ``UrlUtils.isMatchGlobPattern(pattern, value)``: ``*`` matches any value; otherwise only
    the *last* ``*`` is a wildcard (``a*b*c`` is the prefix ``a*b`` and the suffix ``c``, and the two may
    overlap); a pattern without ``*`` must equal the value.  An empty (or None) pattern matches only an
    empty value, and an empty value only an empty pattern."""
    if pattern == ANY:
        return True
    if not pattern or not value:
        return not pattern and not value
    star = pattern.rfind("*")
    if star < 0:
        return value == pattern
    prefix, suffix = pattern[:star], pattern[star + 1 :]
    return value.startswith(prefix) and value.endswith(suffix)
