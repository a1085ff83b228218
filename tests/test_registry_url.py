from __future__ import annotations

import copy
import os
import pickle
import time
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.registry.url import (
    FORBIDDEN_PROVIDER_PARAMS,
    DubboURL,
    Subscription,
    consumer_url,
    java_url_decode,
    java_url_encode,
    matches,
    provider_url,
    regproxy_release,
)
from regproxy.routing import RouteMatch, ServiceKey

SVC = "com.x.Svc"

# The provider URL from DESIGN.md, as a Dubbo 3 provider writes it (toFullString).
DUBBO3_PROVIDER = (
    "dubbo://10.0.0.5:20880/com.x.Svc?anyhost=true&application=app&deprecated=false&dubbo=2.0.2"
    "&dynamic=true&generic=false&group=g&interface=com.x.Svc&methods=a,b&pid=123&release=3.2.0"
    "&side=provider&timestamp=1700000000000&version=1.0.0"
)
# The same URL as the ZooKeeper leaf name Java's URLEncoder produces (encoded by hand: ":" %3A,
# "/" %2F, "?" %3F, "=" %3D, "&" %26, "," %2C; letters, digits and "." kept).
DUBBO3_LEAF = (
    "dubbo%3A%2F%2F10.0.0.5%3A20880%2Fcom.x.Svc%3Fanyhost%3Dtrue%26application%3Dapp"
    "%26deprecated%3Dfalse%26dubbo%3D2.0.2%26dynamic%3Dtrue%26generic%3Dfalse%26group%3Dg"
    "%26interface%3Dcom.x.Svc%26methods%3Da%2Cb%26pid%3D123%26release%3D3.2.0%26side%3Dprovider"
    "%26timestamp%3D1700000000000%26version%3D1.0.0"
)


def _prov(**params: str) -> DubboURL:
    return DubboURL("dubbo", "10.0.0.5", 20880, SVC, {"interface": SVC, "side": "provider", **params})


# --- java URLEncoder / URLDecoder ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("", ""),
        ("abcXYZ019", "abcXYZ019"),
        (".-*_", ".-*_"),  # the only punctuation URLEncoder keeps
        ("a b", "a+b"),
        ("~", "%7E"),  # unlike Python's quote()
        ("/:?&=,", "%2F%3A%3F%26%3D%2C"),
        ("+%#@!'()", "%2B%25%23%40%21%27%28%29"),
        ("中", "%E4%B8%AD"),
        ("é", "%C3%A9"),
        ("😀", "%F0%9F%98%80"),  # 4-byte UTF-8 (Java encodes the surrogate pair as one code point)
        ("\n\t", "%0A%09"),
    ],
)
def test_java_url_encode_vectors(raw: str, encoded: str) -> None:
    assert java_url_encode(raw) == encoded
    assert java_url_decode(encoded) == raw


def test_java_url_encode_lone_surrogate_like_java() -> None:
    assert java_url_encode("\ud800") == "%3F"  # Java's UTF-8 encoder replaces it with '?'


def test_java_url_decode_rules() -> None:
    assert java_url_decode("a+b%2Bc") == "a b+c"
    assert java_url_decode("%e4%b8%ad") == "中"  # lowercase hex accepted, as in Java
    assert java_url_decode("中+x") == "中 x"  # characters that need no decoding pass through
    assert java_url_decode("%FF") == "\ufffd"  # invalid UTF-8 -> replacement character
    for bad in ("%", "%4", "%zz", "abc%2"):
        with pytest.raises(ValueError, match="bad percent escape"):
            java_url_decode(bad)


@given(st.text())
def test_java_url_codec_round_trip(s: str) -> None:
    s = s.encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot round-trip (nor in Java)
    enc = java_url_encode(s)
    assert java_url_decode(enc) == s
    assert unquote_plus(enc) == s  # any form decoder reads it too
    assert set(enc) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_+%")


# --- parsing ---------------------------------------------------------------------------------------


def test_parse_dubbo3_provider_url() -> None:
    u = DubboURL.parse(DUBBO3_PROVIDER)
    assert (u.protocol, u.host, u.port, u.path) == ("dubbo", "10.0.0.5", 20880, SVC)
    assert dict(u.params) == {
        "anyhost": "true",
        "application": "app",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "group": "g",
        "interface": SVC,
        "methods": "a,b",
        "pid": "123",
        "release": "3.2.0",
        "side": "provider",
        "timestamp": "1700000000000",
        "version": "1.0.0",
    }
    assert u.interface == SVC and u.version == "1.0.0" and u.group == "g"
    assert u.category == "providers" and u.side == "provider"
    assert u.weight == 100 and u.enabled
    assert u.address == "10.0.0.5:20880"
    assert u.service_key == ServiceKey(SVC, "1.0.0", "g")
    assert str(u) == DUBBO3_PROVIDER  # already sorted, nothing to encode: written back byte for byte
    assert u.encoded() == DUBBO3_LEAF


def test_java_written_leaf_decodes() -> None:
    u = DubboURL.parse(java_url_decode(DUBBO3_LEAF))
    assert u == DubboURL.parse(DUBBO3_PROVIDER)


def test_java_written_leaf_with_non_ascii_and_space() -> None:
    # application "支付 app" (UTF-8 %E6%94%AF %E4%BB%98, space '+'), as URLEncoder writes it
    leaf = (
        "dubbo%3A%2F%2F10.0.0.6%3A20880%2Fcom.x.Svc%3Fapplication%3D%E6%94%AF%E4%BB%98+app"
        "%26interface%3Dcom.x.Svc%26weight%3D50"
    )
    u = DubboURL.parse(java_url_decode(leaf))
    assert u.params["application"] == "支付 app" and u.weight == 50
    assert u.encoded() == leaf


def test_parse_ipv6_missing_port_empty_params() -> None:
    u = DubboURL.parse("dubbo://[fe80::1]:20880/com.x.Svc?interface=com.x.Svc")
    assert u.host == "fe80::1" and u.port == 20880 and u.address == "[fe80::1]:20880"
    assert str(u) == "dubbo://[fe80::1]:20880/com.x.Svc?interface=com.x.Svc"
    u = DubboURL.parse("consumer://10.0.0.9/com.x.Svc?category=consumers")
    assert u.port == 0 and str(u) == "consumer://10.0.0.9/com.x.Svc?category=consumers"
    u = DubboURL.parse("dubbo://[::1]/com.x.Svc")
    assert (u.host, u.port, dict(u.params)) == ("::1", 0, {})
    assert DubboURL.parse("dubbo://h:1/p?").params == {}
    assert DubboURL.parse("dubbo://h:1?a=b").path == ""
    assert DubboURL.parse("  dubbo://h:1/p").host == "h"
    assert DubboURL.parse("dubbo://h:1/p ").path == "p "  # a trailing blank may be part of the URL


def test_parse_values_with_equals_and_commas() -> None:
    u = DubboURL.parse("dubbo://h:1/p?methods=a,b,c&k=x=y&e=&&flag&k2==")
    assert u.params == {"methods": "a,b,c", "k": "x=y", "e": "", "flag": "flag", "k2": "="}
    # Dubbo's URL.valueOf: a part without '=' becomes key=key; empty parts are skipped


def test_parse_later_duplicate_wins_and_empty_key_skipped() -> None:
    assert DubboURL.parse("dubbo://h:1/p?a=1&a=2&=x").params == {"a": "2"}


def test_parse_decodes_values_with_percent() -> None:
    u = DubboURL.parse("dubbo://h:1/p?a=x%26y&b=100%25&c=50%&d=a+b")
    # c: not a valid escape -> kept raw; d: no '%' -> not decoded, so '+' stays '+'
    assert u.params == {"a": "x&y", "b": "100%", "c": "50%", "d": "a+b"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty URL"),
        ("   ", "empty URL"),
        ("10.0.0.5:20880/com.x.Svc", "missing '://'"),
        ("://h:1/p", "missing protocol"),
        ("1dubbo://h:1/p", "invalid protocol"),
        ("dubbo:///p", "missing host"),
        ("dubbo://:20880/p", "missing host"),
        ("dubbo://h:port/p", "not a number"),
        ("dubbo://h:/p", "empty port"),
        ("dubbo://h:-1/p", "not a number"),
        ("dubbo://h:70000/p", "out of range"),
        ("dubbo://[::1/p", "unbalanced"),
        ("dubbo://[]:1/p", "empty IPv6"),
        ("dubbo://[::1]x/p", "after the IPv6 host"),
        ("dubbo://fe80::1:20880/p", "brackets"),
        ("dubbo://u:pw@h:1/p", "user info"),
        ("dubbo://h:1/p?a%26=1", "invalid parameter name"),
        ("dubbo://h h:1/p", "invalid host"),
    ],
)
def test_parse_refuses_malformed_text_naming_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        DubboURL.parse(text)


# --- construction, str(), round trips -------------------------------------------------------------


def test_constructor_refuses_bad_port_host_path_and_parameters() -> None:
    with pytest.raises(ValueError, match="invalid port"):
        DubboURL("dubbo", "h", 65536, "p")
    with pytest.raises(ValueError, match="invalid port"):
        DubboURL("dubbo", "h", True, "p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid host"):
        DubboURL("dubbo", "[::1]", 1, "p")  # brackets belong to the text form only
    with pytest.raises(ValueError, match="invalid path"):
        DubboURL("dubbo", "h", 1, "p?x")
    for key in ("", "a&b", "a=b", "a%b"):
        with pytest.raises(ValueError, match="invalid parameter name"):
            DubboURL("dubbo", "h", 1, "p", {key: "v"})
    with pytest.raises(ValueError, match="must be strings"):
        DubboURL("dubbo", "h", 1, "p", {"weight": 5})  # type: ignore[dict-item]


def test_params_read_only_hash_eq_pickle() -> None:
    src = {"b": "2", "a": "1"}
    u = DubboURL("dubbo", "h", 1, "p", src)
    src["c"] = "3"  # the URL keeps its own copy
    assert dict(u.params) == {"a": "1", "b": "2"}
    with pytest.raises(TypeError):
        u.params["a"] = "x"  # type: ignore[index]
    v = DubboURL("dubbo", "h", 1, "p", {"a": "1", "b": "2"})
    assert u == v and hash(u) == hash(v) and len({u, v}) == 1
    assert u != DubboURL("dubbo", "h", 1, "p", {"a": "1"})
    assert pickle.loads(pickle.dumps(u)) == u and copy.deepcopy(u) == u


def test_str_sorts_and_encodes_only_unsafe_values() -> None:
    u = DubboURL("dubbo", "h", 1, "p", {"z": "a b", "m": "x&y", "a": "1,2", "e": "k=v", "p": "9%", "u": "中"})
    assert str(u) == "dubbo://h:1/p?a=1,2&e=k=v&m=x%26y&p=9%25&u=中&z=a b"
    assert DubboURL.parse(str(u)) == u
    assert DubboURL.parse(java_url_decode(u.encoded())) == u


_hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.\-]{0,20}[a-z0-9])?", fullmatch=True),
    st.ip_addresses().map(str),
)
# No lone surrogates: Java strings may hold them, but UTF-8 cannot (both sides turn them into "?").
_chars = st.characters(exclude_categories=("Cs",))
_keys = st.text(_chars, min_size=1, max_size=12).filter(lambda k: not set(k) & set("&=%"))
_values = st.text(_chars, max_size=20)


@given(
    protocol=st.sampled_from(["dubbo", "tri", "consumer", "rest"]),
    host=_hosts,
    port=st.integers(0, 65535),
    path=st.text(_chars, max_size=30).filter(lambda p: "?" not in p),
    params=st.dictionaries(_keys, _values, max_size=6),
)
def test_a_url_reads_back_from_its_encoded_and_text_forms(
    protocol: str, host: str, port: int, path: str, params: dict[str, str]
) -> None:
    u = DubboURL(protocol, host, port, path, params)
    assert DubboURL.parse(java_url_decode(u.encoded())) == u
    assert DubboURL.parse(str(u)) == u


# --- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "expected"), [(None, 100), ("0", 0), ("250", 250), ("-5", 0), ("x", 100), ("", 100)]
)
def test_weight_defaults_to_100_and_clamps_negatives_to_0(weight: str | None, expected: int) -> None:
    u = _prov() if weight is None else _prov(weight=weight)
    assert u.weight == expected


@pytest.mark.parametrize(
    ("params", "enabled"),
    [
        ({}, True),
        ({"enabled": "true"}, True),
        ({"enabled": "TRUE"}, True),
        ({"enabled": ""}, True),
        ({"enabled": "false"}, False),
        ({"enabled": "no"}, False),  # Java Boolean.parseBoolean: only "true" is true
        ({"disabled": "true"}, False),
        ({"disabled": "false"}, True),
        ({"disabled": "false", "enabled": "false"}, True),  # disabled wins (RegistryDirectory)
        ({"disabled": "true", "enabled": "true"}, False),
    ],
)
def test_enabled_only_for_true_or_unset_and_disabled_wins(params: dict[str, str], enabled: bool) -> None:
    assert _prov(**params).enabled is enabled


def test_interface_version_group_defaults() -> None:
    u = DubboURL("dubbo", "h", 1, "com.x.Path")
    assert u.interface == "com.x.Path" and u.version == "" and u.group == "" and u.category == "providers"
    assert _prov(version="0.0.0").version == ""
    assert DubboURL("dubbo", "h", 1, "ctx/path", {"interface": SVC}).interface == SVC


# --- provider_url / consumer_url --------------------------------------------------------------------


def test_provider_url_fields() -> None:
    u = provider_url(
        interface=SVC,
        ip="10.0.0.5",
        port=20882,
        methods=["b", "a", "b"],
        version="1.0.0",
        group="g",
        application="app",
        params={"weight": "50", "timeout": "3000"},
        pid=123,
        timestamp_ms=1700000000000,
    )
    assert (u.protocol, u.host, u.port, u.path) == ("dubbo", "10.0.0.5", 20882, SVC)
    assert dict(u.params) == {
        "anyhost": "true",
        "application": "app",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "group": "g",
        "interface": SVC,
        "methods": "a,b",
        "pid": "123",
        "release": regproxy_release(),
        "side": "provider",
        "timeout": "3000",
        "timestamp": "1700000000000",
        "version": "1.0.0",
        "weight": "50",
    }
    # a plain urllib reader sees the same thing in the leaf name
    parts = urlsplit(unquote_plus(u.encoded()))
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("dubbo", "10.0.0.5", 20882, f"/{SVC}")
    qs = parse_qsl(parts.query)
    assert [k for k, _ in qs] == sorted(k for k, _ in qs)
    assert dict(qs) == dict(u.params)


def test_provider_url_omits_empty_and_defaults() -> None:
    before = int(time.time() * 1000)
    u = provider_url(interface=SVC, ip="::1", port=20882, version="0.0.0")
    assert "version" not in u.params and "group" not in u.params and "application" not in u.params
    assert u.params["methods"] == "*"  # Dubbo's value for an interface without methods
    assert u.params["pid"] == str(os.getpid())
    assert before <= int(u.params["timestamp"]) <= int(time.time() * 1000)
    assert str(u).startswith("dubbo://[::1]:20882/com.x.Svc?anyhost=true&")
    assert regproxy_release()  # installed package version, or the fallback


@pytest.mark.parametrize("key", sorted(FORBIDDEN_PROVIDER_PARAMS))
def test_provider_url_rejects_overrides(key: str) -> None:
    with pytest.raises(ValueError, match=repr(key)):
        provider_url(interface=SVC, ip="10.0.0.5", port=20882, params={key: "x"})


def test_provider_url_caller_may_set_other_params() -> None:
    u = provider_url(interface=SVC, ip="h", port=1, params={"application": "other", "weight": "7"}, pid=1)
    assert u.params["application"] == "other" and u.weight == 7


def test_provider_url_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="interface"):
        provider_url(interface="", ip="h", port=1)
    with pytest.raises(ValueError, match="port"):
        provider_url(interface=SVC, ip="h", port=0)
    with pytest.raises(ValueError, match="method"):
        provider_url(interface=SVC, ip="h", port=1, methods=["a,b"])
    with pytest.raises(ValueError, match="missing host"):
        provider_url(interface=SVC, ip="", port=1)


def test_consumer_url() -> None:
    u = consumer_url(
        interface=SVC, ip="10.0.0.9", version="1.0.0", group="g", application="c", pid=7, timestamp_ms=5
    )
    assert str(u) == (
        f"consumer://10.0.0.9/{SVC}?application=c&category=consumers&check=false&dubbo=2.0.2&group=g"
        f"&interface={SVC}&pid=7&release={regproxy_release()}&side=consumer&timestamp=5&version=1.0.0"
    )
    assert u.category == "consumers" and u.port == 0
    v = consumer_url(interface=SVC, ip="10.0.0.9", version="0.0.0")
    assert "version" not in v.params and "group" not in v.params
    assert consumer_url(interface=SVC, ip="h", version="*", group="a,b").params["version"] == "*"
    assert not matches(Subscription(SVC), u)  # consumer nodes are never providers


# --- Subscription ---------------------------------------------------------------------------------


def test_subscription_names() -> None:
    assert Subscription(SVC).cluster_name == SVC
    assert Subscription(SVC, "0.0.0").version == ""
    assert Subscription(SVC, "0.0.0").cluster_name == SVC
    assert Subscription(SVC, "1.0", "g").cluster_name == f"g/{SVC}:1.0"
    assert Subscription(SVC, "*", "*").cluster_name == f"*/{SVC}:*"
    assert Subscription(SVC, "", "a,b").key == f"a,b/{SVC}"
    assert Subscription(SVC, "0.0.0") == Subscription(SVC)
    with pytest.raises(ValueError, match="interface"):
        Subscription("")


def test_subscription_route_match() -> None:
    assert Subscription(SVC, "1.0", "g").route_match() == RouteMatch(service=SVC, version="1.0", group="g")
    assert Subscription(SVC).route_match() == RouteMatch(service=SVC, version="", group="")
    assert Subscription(SVC, "*", "*").route_match() == RouteMatch(service=SVC, version=None, group=None)
    assert Subscription(SVC, "", "a,b").route_match() == RouteMatch(service=SVC, version="", group=None)


# --- matches(): Dubbo's UrlUtils.isMatch + RegistryDirectory ----------------------------------------


@pytest.mark.parametrize(
    ("sub", "params", "expected"),
    [
        # version
        (("", ""), {}, True),
        (("", ""), {"version": "0.0.0"}, True),
        (("0.0.0", ""), {}, True),
        (("", ""), {"version": "1.0"}, False),
        (("1.0", ""), {"version": "1.0"}, True),
        (("1.0", ""), {"version": "2.0"}, False),
        (("1.0", ""), {}, False),
        (("*", ""), {"version": "2.0"}, True),
        (("*", ""), {}, True),
        # group
        (("", ""), {"group": "g"}, False),
        (("", "g"), {}, False),
        (("", "g"), {"group": "g"}, True),
        (("", "g"), {"group": "h"}, False),
        (("", "*"), {"group": "h"}, True),
        (("", "*"), {}, True),
        (("", "a,b"), {"group": "b"}, True),
        (("", "a, b"), {"group": "b"}, True),  # Dubbo splits on \s*,+\s*
        (("", "a,b"), {"group": "c"}, False),
        (("", "a,b"), {}, False),
        (("", "a,b"), {"group": "a,b"}, True),  # plain equality comes first in Dubbo
        # both
        (("1.0", "g"), {"version": "1.0", "group": "g"}, True),
        (("*", "*"), {"version": "9", "group": "z"}, True),
        # enabled / category
        (("", ""), {"enabled": "false"}, False),
        (("", ""), {"disabled": "true"}, False),
        (("", ""), {"category": "providers"}, True),
        (("", ""), {"category": "configurators"}, False),
        (("", ""), {"category": "routers"}, False),
        (("", ""), {"category": "consumers"}, False),
    ],
)
def test_matches_truth_table(sub: tuple[str, str], params: dict[str, str], expected: bool) -> None:
    assert matches(Subscription(SVC, *sub), _prov(**params)) is expected


def test_matches_protocol_and_interface() -> None:
    sub = Subscription(SVC)
    for protocol in ("rest", "grpc", "empty", "override"):
        assert not matches(sub, DubboURL(protocol, "h", 1, SVC, {"interface": SVC}))
    # Triple providers are routed too: Triple calls go to them (Host.speaks).
    assert matches(sub, DubboURL("tri", "h", 1, SVC, {"interface": SVC}))
    # As apache-dubbo 3.0.0b1 (Python) registers one: no path, the interface in `service`
    # (tests/test_triple_peers.py reads such a node from a real ZooKeeper).
    apache = DubboURL.parse(f"tri://127.0.0.1:50051?service={SVC}")
    assert apache.interface == SVC and matches(sub, apache)
    assert not matches(sub, DubboURL("dubbo", "h", 1, "com.x.Other", {"interface": "com.x.Other"}))
    assert matches(sub, DubboURL("dubbo", "h", 1, SVC))  # interface from the path
    assert matches(ServiceKey(SVC, "1.0", "g"), _prov(version="1.0", group="g"))  # any key-like works
