"""The matchers the tag router and the configurators share (regproxy/governance/match.py), against
the tables of Dubbo 3.3's NetUtilsTest and the semantics of its StringMatch and AddressMatch."""

from __future__ import annotations

import pytest

from regproxy.governance.errors import RuleError
from regproxy.governance.match import (
    AddressMatch,
    ListStringMatch,
    ParamMatch,
    PatternError,
    StringMatch,
    UnknownHostError,
    match_ip_expression,
)
from regproxy.registry.url import is_match_glob_pattern

# --- NetUtils.matchIpRange / matchIpExpression (NetUtilsTest, Dubbo 3.3) ---------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "port", "expected"),
    [
        ("*.*.*.*", "192.168.1.63", 90, True),
        ("192.168.1.*", "192.168.1.63", 90, True),
        ("192.168.1.63", "192.168.1.63", 90, True),
        ("192.168.1.1-65", "192.168.1.63", 90, True),
        ("192.168.1.1-61", "192.168.1.63", 90, False),
        ("192.168.1.62", "192.168.1.63", 90, False),
        ("234e:0:4567:0:0:0:3d:*", "234e:0:4567::3d:ff", 90, True),
        ("234e:0:4567:0:0:0:3d:ee", "234e:0:4567::3d:ee", 90, True),
        ("234e:0:4567::3d:ee", "234e:0:4567::3d:ee", 90, True),
        ("234e:0:4567:0:0:0:3d:0-ff", "234e:0:4567::3d:ee", 90, True),
        ("234e:0:4567:0:0:0:3d:0-ee", "234e:0:4567::3d:ee", 90, True),
        ("234e:0:4567:0:0:0:3d:ff", "234e:0:4567::3d:ee", 90, False),
        ("234e:0:4567:0:0:0:3d:0-ea", "234e:0:4567::3d:ee", 90, False),
        ("192.168.1.192/26", "192.168.1.199", 90, True),
        ("[234e:0:4567::3d:ee]", "234e:0:4567::3d:ee", 8090, True),
        ("[234e:0:4567:0:0:0:3d:ee]", "234e:0:4567::3d:ee", 8090, True),
        ("[234e:0:4567:0:0:0:3d:ee]:8090", "234e:0:4567::3d:ee", 8090, True),
        ("[234e:0:4567:0:0:0:3d:0-ee]:8090", "234e:0:4567::3d:ee", 8090, True),
        ("[234e:0:4567:0:0:0:3d:ee-ff]:8090", "234e:0:4567::3d:ee", 8090, True),
        ("[234e:0:4567:0:0:0:3d:*]:90", "234e:0:4567::3d:ff", 90, True),
        ("[234e:0:4567:0:0:0:3d:ee]:7289", "234e:0:4567::3d:ee", 8090, False),
        ("[234e:0:4567:0:0:0:3d:ee-ff]:8090", "234e:0:4567::3d:ee", 9090, False),
        ("*.*.*.*:90", "192.168.1.63", 90, True),
        ("192.168.1.*:90", "192.168.1.63", 90, True),
        ("192.168.1.63:90", "192.168.1.63", 90, True),
        ("192.168.1.63-65:90", "192.168.1.63", 90, True),
        ("192.168.1.1-63:90", "192.168.1.63", 90, True),
        ("*.*.*.*:80", "192.168.1.63", 90, False),
        ("192.168.1.*:80", "192.168.1.63", 90, False),
        ("192.168.1.63:80", "192.168.1.63", 90, False),
        ("192.168.1.63-65:80", "192.168.1.63", 90, False),
        ("192.168.1.1-63:80", "192.168.1.63", 90, False),
        ("192.168.1.1-61:90", "192.168.1.62", 90, False),
        ("192.168.1.62:90", "192.168.1.63", 90, False),
        # "0" segments: "00" in the pattern equals "0" in the address
        ("10.00.0.*", "10.0.0.7", 1, True),
        # CIDR ranges
        ("10.0.0.0/8", "10.200.3.4", 1, True),
        ("10.0.0.0/8", "11.0.0.1", 1, False),
        ("fe80::/64", "fe80::1", 1, True),
    ],
)
def test_match_ip_expression_like_netutils(pattern: str, host: str, port: int, expected: bool) -> None:
    assert match_ip_expression(pattern, host, port) is expected


@pytest.mark.parametrize(
    ("pattern", "host", "error"),
    [
        ("234e:0:4567::3d:*", "234e:0:4567::3d:ff", PatternError),  # an expression needs 8 groups
        ("234e:0:4567:3d", "234e:0:4567::3d:ff", PatternError),  # not an IPv6 pattern
        ("192.168.1.1-65-3", "192.168.1.63", PatternError),
        ("192.168.1.63", "192.168.1.ff", UnknownHostError),
        ("10.0.0.0/x", "10.0.0.1", PatternError),
    ],
)
def test_match_ip_expression_throws_where_netutils_does(
    pattern: str, host: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        match_ip_expression(pattern, host, 90)


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        # NetUtils.isValidV4Address is false for loopback: the host is treated as IPv6, and an IPv4
        # pattern fails the IPv6 format check.  Only "*", "*.*.*.*" and CIDR patterns match it.
        ("127.0.0.1:20880", None),
        ("127.0.0.1", None),
        ("127.0.0.*", None),
        ("*", True),
        ("*.*.*.*", True),
        ("127.0.0.1/32", True),
        # An eight-group IPv6 pattern: its first group is compared with the whole "127.0.0.1", and
        # every later one that is not "*" reads past the host's one group (Dubbo: an
        # ArrayIndexOutOfBoundsException, which the tag router catches as "no match").
        ("[*:*:*:*:*:*:*:*]:20880", True),
        ("[*:*:*:*:*:*:*:*]:20881", False),
        ("[127.0.0.1:*:*:*:*:*:*:*]:20880", True),
        ("[*:*:*:*:*:*:*:1]:20880", None),
        ("[*:0-ff:*:*:*:*:*:*]:20880", None),
    ],
)
def test_loopback_hosts_match_only_wildcards_and_cidr(pattern: str, matches: bool | None) -> None:
    if matches is None:
        with pytest.raises(PatternError):
            match_ip_expression(pattern, "127.0.0.1", 20880)
    else:
        assert match_ip_expression(pattern, "127.0.0.1", 20880) is matches


def test_the_address_form_splits_a_port_only_after_a_trailing_colon() -> None:
    # matchIpExpression(pattern, address): "host:port" is not split, so it is not an IP address.
    with pytest.raises(UnknownHostError):
        match_ip_expression("10.0.0.0/24", "10.0.0.1:20880")
    assert match_ip_expression("10.0.0.0/24", "10.0.0.1")
    with pytest.raises(PatternError):
        match_ip_expression("10.0.0.0/24", "10.0.0.1:")


# --- UrlUtils.isMatchGlobPattern ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "anything", True),
        ("*", None, True),
        ("", "", True),
        ("", None, True),
        ("", "x", False),
        ("x", None, False),
        ("10.0.0.*", "10.0.0.5", True),
        ("*.5", "10.0.0.5", True),
        ("10.*.5", "10.0.0.5", True),
        ("10.*.6", "10.0.0.5", False),
        ("10.0.0.5", "10.0.0.5", True),
        ("a*b*c", "a*b-c", True),  # only the last "*" splits: the prefix "a*b" is literal
        ("a*b*c", "axbyc", False),
    ],
)
def test_glob_pattern(pattern: str, value: str | None, expected: bool) -> None:
    assert is_match_glob_pattern(pattern, value) is expected


# --- StringMatch, ListStringMatch, ParamMatch, AddressMatch ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"exact": "gray"}, "gray", True),
        ({"exact": "gray"}, "grey", False),
        ({"exact": "gray"}, None, False),
        ({"prefix": "gr"}, "gray", True),
        ({"prefix": "gr"}, "agr", False),
        ({"regex": "g.*y"}, "gray", True),
        ({"regex": "g.*"}, "a-gray", False),  # Java's String.matches: the whole input
        ({"wildcard": "*"}, "anything", True),
        ({"wildcard": "*"}, None, False),
        ({"wildcard": "gr*"}, "gray", False),  # "only supports *": otherwise equality
        ({"wildcard": "gr*"}, "gr*", True),
        ({"empty": "true"}, None, True),
        ({"empty": "true"}, "", True),
        ({"empty": "true"}, "x", False),
        ({"noempty": "true"}, "x", True),
        ({"noempty": "true"}, "", False),
        ({"noempty": "true"}, None, False),
        ({"exact": 7}, "7", True),  # YAML integers read as Java's toString() writes them
        # The first kind set decides, but exact/prefix/regex/wildcard step aside for a missing value.
        ({"exact": "a", "prefix": "b"}, "bx", False),
        ({"exact": "a", "empty": "true"}, None, True),
    ],
)
def test_string_match(spec: dict[str, object], value: str | None, expected: bool) -> None:
    assert StringMatch.parse(spec, "m").matches(value) is expected


def test_list_and_param_match() -> None:
    oneof = ListStringMatch.parse({"oneof": [{"exact": "a"}, {"prefix": "b"}]}, "s")
    assert oneof.matches("a") and oneof.matches("bb") and not oneof.matches("c")
    param = ParamMatch.parse({"key": "env", "value": {"exact": "gray"}}, "p")
    assert param.matches({"env": "gray"}) and not param.matches({"env": "blue"}) and not param.matches({})


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"cird": "10.0.0.0/24"}, "10.0.0.7", True),
        ({"cird": "10.0.0.0/24"}, "10.0.1.7", False),
        ({"cird": "10.0.0.7:20880"}, "10.0.0.7:20880", True),  # equal to the input
        ({"cird": "10.0.0.*"}, "10.0.0.7", True),
        # UnknownHostException falls through to the next kind; other failures do not match
        ({"cird": "10.0.0.0/24", "exact": "10.0.0.7:20880"}, "10.0.0.7:20880", True),
        ({"wildcard": "0.0.0.0"}, "anything", True),
        ({"wildcard": "*"}, "anything", True),
        ({"wildcard": "10.0.0.*"}, "10.0.0.9", True),
        ({"wildcard": "10.0.0.1:20880"}, "10.0.0.1", False),
        ({"exact": "10.0.0.1"}, "10.0.0.1", True),
        ({"exact": "10.0.0.1"}, None, False),
    ],
)
def test_address_match(spec: dict[str, str], value: str | None, expected: bool) -> None:
    assert AddressMatch.parse(spec, "a").matches(value) is expected


@pytest.mark.parametrize(
    ("cls", "spec", "reason"),
    [
        (StringMatch, {}, "value"),
        (StringMatch, {"empty": None}, "value"),  # null is "not set", as in Dubbo
        (StringMatch, {"exactly": "a"}, "unknown-field"),
        (StringMatch, {"regex": "("}, "regex"),
        (StringMatch, {"exact": 1.5}, "type"),
        (StringMatch, "gray", "type"),
        (ListStringMatch, {"oneof": {"exact": "a"}}, "type"),
        (ParamMatch, {"value": {"exact": "a"}}, "missing-field"),
        (ParamMatch, {"key": "env"}, "missing-field"),
        (AddressMatch, {}, "value"),
        (AddressMatch, {"cird": "10.0.0.0/abc"}, "address"),
        (AddressMatch, {"cird": "host.example/24"}, "address"),
    ],
)
def test_bad_matchers_are_refused(
    cls: type[StringMatch | ListStringMatch | ParamMatch | AddressMatch], spec: object, reason: str
) -> None:
    with pytest.raises(RuleError) as err:
        cls.parse(spec, "match")
    assert err.value.reason == reason
    assert "match" in err.value.message
