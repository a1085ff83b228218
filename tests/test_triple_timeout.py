"""grpc-timeout (regproxy.triple.timeout): grpc/grpc doc/PROTOCOL-HTTP2.md's Timeout production,
and what Dubbo 3.3 sends (TripleInvoker) and reads (GrpcUtils.parseTimeoutToMills)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regproxy.triple.timeout import DUBBO_MAX_DIGITS, MAX_VALUE, format_timeout, parse_timeout

HOUR = 3_600_000


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        # One of each unit: Hour "H", Minute "M", Second "S", Millisecond "m", Microsecond "u",
        # Nanosecond "n".
        ("1H", HOUR),
        ("1M", 60_000),
        ("1S", 1_000),  # the spec's example request
        ("1m", 1),
        ("1u", 1),  # rounded up: a deadline never comes early
        ("1n", 1),
        ("1000u", 1),
        ("1001u", 2),
        ("1000000n", 1),
        ("1000001n", 2),
        ("999999n", 1),
        ("0m", 0),  # an expired deadline (the grammar says positive; read anyway)
        ("0n", 0),
        ("00000001S", 1_000),  # 8 digits, leading zeros
        ("99999999H", 99_999_999 * HOUR),
        ("99999999n", 100),
        ("3000m", 3_000),  # TripleInvoker: timeout + "m"
        ("4999871u", 5_000),  # what grpc clients send for "5 s from now", a little later
        (b"100m", 100),  # a header value as bytes
    ],
)
def test_parse(value: str | bytes, ms: int) -> None:
    assert parse_timeout(value) == ms


@pytest.mark.parametrize(
    "value",
    [
        "",
        "m",  # no digits
        "1",  # no unit
        "1x",
        "1h",  # units are case-sensitive: h is none of them
        "1s",
        "1 m",
        " 1m",
        "1m ",
        "-1m",  # Long.parseLong (Dubbo) takes a sign; the grammar does not
        "+1m",
        "1_0m",  # int() would take it
        "1.5S",
        "1e3m",
        "\uff11m",  # a full-width digit: str.isdigit() says yes
        "123456789m",  # 9 digits
        "mm",
        "1mm",
    ],
)
def test_malformed_values_raise_naming_the_value(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_timeout(value)
    assert repr(value) in str(caught.value)
    assert "grpc-timeout" in str(caught.value)


def test_dubbos_long_millisecond_values_with_more_digits() -> None:
    # A Dubbo consumer with a two-day timeout sends TripleInvoker's timeout + "m": 9 digits.
    with pytest.raises(ValueError, match="1-8 digits"):
        parse_timeout("172800000m")
    assert parse_timeout("172800000m", DUBBO_MAX_DIGITS) == 172_800_000
    with pytest.raises(ValueError, match="1-18 digits"):
        parse_timeout("1" * 19 + "m", DUBBO_MAX_DIGITS)


@pytest.mark.parametrize(
    ("ms", "value"),
    [
        (0, "0m"),
        (1, "1m"),
        (999, "999m"),
        (1_000, "1S"),
        (1_500, "1500m"),
        (60_000, "1M"),
        (90_000, "90S"),
        (HOUR, "1H"),
        (5_400_000, "90M"),
        (86_400_000, "24H"),
        (MAX_VALUE, "99999999m"),
        (100_000_000, "100000S"),
        # Over 8 digits of milliseconds and not a whole second: rounded up, never early.
        (100_000_001, "100001S"),
        (172_800_000, "48H"),
        (MAX_VALUE * HOUR, "99999999H"),
        (MAX_VALUE * HOUR + 1, "99999999H"),  # beyond the largest value: the largest value
        (10**20, "99999999H"),
    ],
)
def test_format(ms: int, value: str) -> None:
    assert format_timeout(ms) == value


def test_format_refuses_negative() -> None:
    with pytest.raises(ValueError, match="-1 ms"):
        format_timeout(-1)


@given(st.integers(min_value=0, max_value=MAX_VALUE * HOUR))
def test_format_then_parse_is_never_earlier_and_exact_when_it_can_be(ms: int) -> None:
    value = format_timeout(ms)
    digits = value[:-1]
    assert 1 <= len(digits) <= 8 and digits.isdigit()
    back = parse_timeout(value)
    assert back >= ms
    exact = [size for size in (HOUR, 60_000, 1_000, 1) if ms % size == 0 and ms // size <= MAX_VALUE]
    if exact:
        assert back == ms
        # The shortest: no exact unit needs fewer digits.
        assert len(digits) == min(len(str(ms // size)) for size in exact)


@given(st.integers(min_value=0, max_value=MAX_VALUE), st.sampled_from("HMSmun"))
def test_every_valid_value_parses(count: int, unit: str) -> None:
    ns = {"H": 3_600 * 10**9, "M": 60 * 10**9, "S": 10**9, "m": 10**6, "u": 10**3, "n": 1}[unit]
    ms = parse_timeout(f"{count}{unit}")
    assert ms * 10**6 >= count * ns > (ms - 1) * 10**6


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_timeout(text) >= 0
