"""YAML as regproxy reads and writes it (regproxy/yamlio.py): YAML 1.2 core-schema scalars, duplicate
keys refused, and dumps that read back as the same data."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from regproxy import yamlio

# (plain scalar, what YAML 1.2's core schema makes of it).  PyYAML's YAML 1.1 differs on every
# string and leading-zero/underscore/colon number here.
SCALARS: list[tuple[str, Any]] = [
    # only true/false are booleans
    *[(word, word) for word in ("on", "off", "yes", "no", "y", "n", "On", "OFF", "Yes", "NO", "Y", "N")],
    *[(word, True) for word in ("true", "True", "TRUE")],
    *[(word, False) for word in ("false", "False", "FALSE")],
    ("tRUE", "tRUE"),
    # null
    *[(word, None) for word in ("null", "Null", "NULL", "~", "")],
    ("nil", "nil"),
    # integers: decimal (leading zeros too), 0o octal, 0x hex; nothing else
    ("10", 10),
    ("010", 10),  # YAML 1.1: octal 8
    ("-010", -10),
    ("+12", 12),
    ("0", 0),
    ("0o17", 15),
    ("0o0", 0),
    ("0x1F", 31),
    ("0x1f", 31),
    ("0o18", "0o18"),
    ("0xG", "0xG"),
    ("-0x1F", "-0x1F"),  # the core schema's hex and octal have no sign
    ("0b101", "0b101"),  # YAML 1.1: 5
    ("1_000", "1_000"),  # YAML 1.1: 1000
    ("1:20", "1:20"),  # YAML 1.1: 80 (sexagesimal)
    ("190:20:30", "190:20:30"),
    # floats
    ("1.5", 1.5),
    ("-2.5e3", -2500.0),
    ("1e3", 1000.0),  # YAML 1.1: the string "1e3"
    (".5", 0.5),
    ("1.", 1.0),
    (".inf", math.inf),
    ("-.Inf", -math.inf),
    ("+.INF", math.inf),
    ("1_000.5", "1_000.5"),
    ("1:20.5", "1:20.5"),
    # strings YAML 1.1 reads as something else
    ("2024-01-01", "2024-01-01"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    ("=", "="),
    ("<<", "<<"),
]


@pytest.mark.parametrize(("text", "expected"), SCALARS, ids=[repr(t) for t, _ in SCALARS])
def test_core_schema_scalars(text: str, expected: Any) -> None:
    value = yamlio.load(f"key: {text}\n")["key"]
    assert value == expected and type(value) is type(expected), (text, value)
    # ... and the same as a list item and as a key (but `<<`, which as a key merges)
    if text != "<<":
        assert yamlio.load(f"{text or '~'}: v\n") == {expected if text else None: "v"}
    assert yamlio.load(f"- {text}\n") == [expected]


def test_dot_nan_in_each_of_its_spellings_is_nan() -> None:
    for text in (".nan", ".NaN", ".NAN"):
        assert math.isnan(yamlio.load(f"v: {text}")["v"])


@pytest.mark.parametrize(("text", "expected"), [("'on'", "on"), ('"010"', "010"), ("!!str 0o17", "0o17")])
def test_quoted_and_tagged_scalars_are_strings(text: str, expected: str) -> None:
    assert yamlio.load(f"v: {text}") == {"v": expected}


def test_route_retry_example_keeps_its_on_key() -> None:
    # The README's example: YAML 1.1 reads `on` as the key True.
    assert yamlio.load("retry: {attempts: 2, on: [connect-failure, reset, unavailable]}") == {
        "retry": {"attempts": 2, "on": ["connect-failure", "reset", "unavailable"]}
    }
    assert yaml.safe_load("on: x") == {True: "x"}  # what PyYAML alone does


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("a: 1\nb: 2\na: 3\n", "a", 3, 1),
        ("outer:\n  x: 1\n  y: 2\n  x: 3\n", "x", 4, 2),
        ("list:\n  - {k: 1, k: 2}\n", "k", 2, 2),
        ("on: 1\n'on': 2\n", "on", 2, 1),  # the same key, quoted or not
        ("010: a\n10: b\n", 10, 2, 1),  # the same integer spelt twice
    ],
)
def test_duplicate_keys_are_refused_with_their_line(text: str, key: Any, line: int, first: int) -> None:
    with pytest.raises(yamlio.DuplicateKeyError) as info:
        yamlio.load(text)
    assert (info.value.key, info.value.line, info.value.first_line) == (key, line, first)
    assert f"duplicate key {key!r} (first given on line {first})" in str(info.value)
    assert yaml.safe_load(text)  # PyYAML alone takes it silently


def test_merge_keys_still_work_and_an_override_is_not_a_duplicate() -> None:
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n"
    assert yamlio.load(text)["derived"] == {"x": 1, "y": 3}


@pytest.mark.parametrize("text", ["v: !!bool yes", "v: !!int 1_000", "v: !!int 0b1"])
def test_explicit_tags_follow_the_core_schema_too(text: str) -> None:
    with pytest.raises(yaml.YAMLError, match="not a"):
        yamlio.load(text)


# Strings that some YAML reader would take for something else when written plain.
TRICKY_STRINGS = [
    *[s for s, v in SCALARS if not isinstance(v, str) or v != s],
    *["on", "off", "yes", "no", "y", "n", "Yes", "NO", "0o17", "0x1F", "010", "1_000", "1:20", "1e3"],
    *["2024-01-01", "=", "<<", "null", "~", "", "true", "1.5", ".inf", ".nan", "0b101", "-0x1F"],
]


@pytest.mark.parametrize("s", TRICKY_STRINGS)
def test_dump_reads_back_as_the_same_string_in_yaml_1_2_and_1_1(s: str) -> None:
    text = yamlio.dump({"k": s, s: [s]})
    assert yamlio.load(text) == {"k": s, s: [s]}, text
    assert yaml.safe_load(text) == {"k": s, s: [s]}, text  # a YAML 1.1 reader gets strings too


def test_dump_round_trips_other_values() -> None:
    data = {"i": 10, "neg": -3, "f": 1.5, "big": 1e17, "inf": math.inf, "t": True, "f2": False, "n": None,
            "nested": {"list": [1, "2", {"on": "off"}]}, "unicode": "héllo", "multi": "a\nb"}  # fmt: skip
    assert yamlio.load(yamlio.dump(data)) == data
    assert list(yamlio.load(yamlio.dump(data))) == list(data)  # key order kept
