"""Tests for regproxy.dubbo.hessian2: the Caucho golden vectors, edge cases, and property tests."""

from __future__ import annotations

import contextlib
import json
import math
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regproxy.dubbo.hessian2 import (
    MAX_DEPTH,
    Hessian2Error,
    Hessian2Reader,
    Hessian2Writer,
    JavaObject,
    Long,
    decode_value,
    encode_value,
)

VECTORS_FILE = Path(__file__).parent / "vectors" / "hessian2-caucho-4.0.38.jsonl"
VECTORS: list[dict[str, Any]] = [json.loads(line) for line in VECTORS_FILE.read_text().splitlines() if line]
BY_NAME = {v["name"]: v for v in VECTORS}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Vectors holding several Java values written one after another (README: "listed in order").
MULTI = {"two User objects (class def reused)", "sequence: string, int, map (as in a Dubbo body)"}
# Typed Java containers: the type name is dropped on decoding, so re-encoding gives the untyped form.
NOT_ONE_TO_ONE = {"String[] {a,b}", "int[] {1,2}", "Object[] 9 ints", "TreeMap {a: 1, b: two}"}


def vector_bytes(name: str) -> bytes:
    return bytes.fromhex(BY_NAME[name]["hex"])


def value_count(vector: dict[str, Any]) -> int:
    return len(vector["value"]) if vector["name"] in MULTI else 1


def read_all(vector: dict[str, Any]) -> list[Any]:
    reader = Hessian2Reader(bytes.fromhex(vector["hex"]))
    values = [reader.read_value() for _ in range(value_count(vector))]
    assert reader.at_end()
    return values


def containers_in_read_order(values: list[Any]) -> list[Any]:
    """Lists, maps and objects in the order a reader numbers them (pre-order, first sighting)."""
    seen: dict[int, Any] = {}

    def walk(v: Any) -> None:
        if isinstance(v, (list, dict, JavaObject)):
            if id(v) in seen:
                return
            seen[id(v)] = v
            if isinstance(v, dict):
                children = [part for pair in v.items() for part in pair]
            else:
                children = list(v) if isinstance(v, list) else list(v.fields.values())
            for child in children:
                walk(child)

    for value in values:
        walk(value)
    return list(seen.values())


def check(actual: Any, spec: Any, refs: list[Any], *, long: bool = False) -> None:
    """Compares a decoded value with a README-convention ``value`` (types included)."""
    if isinstance(spec, dict):
        if set(spec) == {"ref"}:
            assert actual is refs[spec["ref"]]
        elif "repeat" in spec:
            assert actual == spec["repeat"] * spec["count"] + spec.get("then", "")
        elif "bytes_hex" in spec:
            assert type(actual) is bytes and actual == bytes.fromhex(spec["bytes_hex"])
        elif "bytes_mod256" in spec:
            assert type(actual) is bytes and actual == bytes(i % 256 for i in range(spec["bytes_mod256"]))
        elif "date_ms" in spec:
            assert actual == EPOCH + timedelta(milliseconds=spec["date_ms"])
            assert actual.tzinfo is not None
        elif "int_keys" in spec:
            assert type(actual) is dict and list(actual) == [int(k) for k in spec["int_keys"]]
            for key, item in spec["int_keys"].items():
                check(actual[int(key)], item, refs)
        elif "class" in spec:
            assert isinstance(actual, JavaObject) and actual.class_name == spec["class"]
            if "fields" in spec:
                assert list(actual.fields) == list(spec["fields"])
                for key, item in spec["fields"].items():
                    check(actual.fields[key], item, refs)
            if spec.get("self_ref"):
                assert actual.fields["friend"] is actual
        else:
            assert type(actual) is dict and list(actual) == list(spec)
            for key, item in spec.items():
                check(actual[key], item, refs)
    elif isinstance(spec, list):
        assert type(actual) is list and len(actual) == len(spec)
        for a, s in zip(actual, spec, strict=True):
            check(a, s, refs)
    elif isinstance(spec, bool) or spec is None:
        assert actual is spec
    elif isinstance(spec, int):
        assert type(actual) is (Long if long else int) and actual == spec
    elif isinstance(spec, float):
        assert type(actual) is float and actual == spec
    else:
        assert type(actual) is str and actual == spec


class Partial(Exception):
    """The README value describes only part of the Java value."""


def python_value(name: str, spec: Any) -> Any:
    """The Python value a user would pass to the writer for a fully specified vector."""
    if isinstance(spec, dict):
        if "ref" in spec or "self_ref" in spec or ("class" in spec and "fields" not in spec):
            raise Partial
        if "repeat" in spec:
            return spec["repeat"] * spec["count"] + spec.get("then", "")
        if "bytes_hex" in spec:
            return bytes.fromhex(spec["bytes_hex"])
        if "bytes_mod256" in spec:
            return bytes(i % 256 for i in range(spec["bytes_mod256"]))
        if "date_ms" in spec:
            return EPOCH + timedelta(milliseconds=spec["date_ms"])
        if "int_keys" in spec:
            return {int(k): python_value(name, v) for k, v in spec["int_keys"].items()}
        if "class" in spec:
            return JavaObject(spec["class"], {k: python_value(name, v) for k, v in spec["fields"].items()})
        return {k: python_value(name, v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [python_value(name, v) for v in spec]
    if name.startswith("long ") and isinstance(spec, int):
        return Long(spec)
    return spec


# ---------------------------------------------------------------------------- golden vectors


def test_vector_file_is_complete() -> None:
    assert len(VECTORS) == 80
    assert set(BY_NAME) >= MULTI | NOT_ONE_TO_ONE


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_decode_vector(vector: dict[str, Any]) -> None:
    values = read_all(vector)
    refs = containers_in_read_order(values)
    long = vector["name"].startswith("long ")
    if vector["name"] in MULTI:
        for actual, spec in zip(values, vector["value"], strict=True):
            check(actual, spec, refs, long=long)
    else:
        check(values[0], vector["value"], refs, long=long)


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["name"] not in NOT_ONE_TO_ONE], ids=lambda v: v["name"]
)
def test_reencode_vector(vector: dict[str, Any]) -> None:
    expected = bytes.fromhex(vector["hex"])
    writer = Hessian2Writer()
    for value in read_all(vector):
        writer.write_value(value)
    assert writer.getvalue() == expected
    # And from the README's description, as a caller would build the value.
    specs = vector["value"] if vector["name"] in MULTI else [vector["value"]]
    try:
        built = [python_value(vector["name"], spec) for spec in specs]
    except Partial:
        return
    writer = Hessian2Writer()
    for value in built:
        writer.write_value(value)
    assert writer.getvalue() == expected


def test_reencoded_vector_count() -> None:
    assert len([v for v in VECTORS if v["name"] not in NOT_ONE_TO_ONE]) == 76


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_skip_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    reader = Hessian2Reader(data)
    for _ in range(value_count(vector)):
        reader.skip_value()
    assert reader.pos == len(data) and reader.at_end()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_truncated_vector_is_an_error(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    if len(data) <= 600:
        cuts = range(len(data))
    else:  # every chunk header neighbourhood and a few arbitrary points, without going quadratic
        near_chunks = {c + d for c in range(0, len(data), 8192) for d in (-1, 0, 1, 2, 3)}
        cuts = sorted(
            c for c in {0, 1, 2, 3, 4, 5, len(data) // 2, len(data) - 1} | near_chunks if 0 <= c < len(data)
        )
    for cut in cuts:
        for op in ("read_value", "skip_value"):
            reader = Hessian2Reader(data[:cut])
            with pytest.raises(Hessian2Error):
                for _ in range(value_count(vector)):
                    getattr(reader, op)()


def test_skipped_class_definition_is_remembered() -> None:
    reader = Hessian2Reader(vector_bytes("two User objects (class def reused)"))
    reader.skip_value()
    bob = reader.read_value()
    assert bob == JavaObject("com.example.User", {"name": "bob", "age": 31, "friend": None})
    assert reader.at_end()


def test_sequence_mixes_read_and_skip() -> None:
    reader = Hessian2Reader(vector_bytes("sequence: string, int, map (as in a Dubbo body)"))
    assert reader.read_string() == "2.0.2"
    reader.skip_value()
    assert reader.read_map_as_dict() == {"k": "v"}
    assert reader.at_end()


def test_back_reference_to_skipped_value_is_an_error() -> None:
    data = encode_value([["s"], None]) + bytes([0x51, 0x91])  # a second top-level value: Q 1
    reader = Hessian2Reader(data)
    reader.skip_value()
    with pytest.raises(Hessian2Error, match="skipped"):
        reader.read_value()
    reader = Hessian2Reader(data)
    first = reader.read_value()
    assert reader.read_value() is first[0]


def test_self_reference_and_shared_list() -> None:
    user = decode_value(vector_bytes("User referencing itself (back-reference)"))
    assert user.fields["friend"] is user and user.fields["name"] == "self" and user.fields["age"] == 1
    outer = decode_value(vector_bytes("list containing the same list twice (ref)"))
    assert outer[0] is outer[1] and outer[0] == ["s"]


def test_long_values_keep_their_java_type() -> None:
    value = decode_value(vector_bytes("long 0"))
    assert type(value) is Long and value == 0 and repr(value) == "Long(0)"
    assert encode_value(value) == vector_bytes("long 0")
    assert encode_value(0) == vector_bytes("int 0")
    assert encode_value(2**31) == vector_bytes("long 2147483648")  # a plain int too big for a Java int


# ---------------------------------------------------------------------------- extra Caucho outputs

# Produced by Caucho Hessian 4.0.38 (Hessian2Output.writeObject, OpenJDK 17) for these values.
CAUCHO_DOUBLES = [
    (math.nan, "447ff8000000000000"),
    (math.inf, "447ff0000000000000"),
    (-0.0, "5b"),
    (1e10, "444202a05f20000000"),
    (65536.0, "5f03e80000"),
    (2147483.647, "5f7fffffff"),
    (0.001, "5f00000001"),
    (-0.001, "5fffffffff"),
    (2147483647.0, "4441dfffffffc00000"),
    (-2147483648.0, "44c1e0000000000000"),
    (2147483648.0, "4441e0000000000000"),
    (1.5, "5f000005dc"),
    (0.3, "5f0000012c"),
    (123456.789, "5f075bcd15"),
]
CAUCHO_DATES = [
    (-60000, "4bffffffff"),
    (-1, "4affffffffffffffff"),
    (2**31 * 60000, "4a0000753000000000"),
    ((2**31 - 1) * 60000, "4b7fffffff"),
]


@pytest.mark.parametrize(("value", "hex_"), CAUCHO_DOUBLES)
def test_double_forms_match_caucho(value: float, hex_: str) -> None:
    assert encode_value(value) == bytes.fromhex(hex_)
    back = decode_value(bytes.fromhex(hex_))
    assert (math.isnan(back) and math.isnan(value)) or back == value


@pytest.mark.parametrize(("millis", "hex_"), CAUCHO_DATES)
def test_date_forms_match_caucho(millis: int, hex_: str) -> None:
    date = EPOCH + timedelta(milliseconds=millis)
    assert encode_value(date) == bytes.fromhex(hex_)
    assert decode_value(bytes.fromhex(hex_)) == date


def test_naive_datetime_is_utc() -> None:
    assert encode_value(datetime(2020, 1, 1)) == vector_bytes("date 2020-01-01T00:00:00Z")


def test_binary_chunks_match_caucho() -> None:
    # Caucho wrote 8194 bytes as one 8189-byte 'A' chunk and a compact 5-byte final part.
    data = encode_value(bytes(8189 + 5))
    assert data[:3] == bytes.fromhex("411ffd") and data[3 + 8189] == 0x25 and len(data) == 3 + 8189 + 1 + 5
    assert encode_value(bytes(8189))[:3] == bytes.fromhex("421ffd")
    assert decode_value(data) == bytes(8194)
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


# ---------------------------------------------------------------------------- long strings


def string_parts(data: bytes) -> list[tuple[str, int]]:
    """(kind, units) of each string chunk, walking the UTF-8 with the Java rules."""
    parts: list[tuple[str, int]] = []
    pos = 0
    while True:
        tag = data[pos]
        if tag in (0x52, 0x53):
            units, pos, kind = (data[pos + 1] << 8) | data[pos + 2], pos + 3, chr(tag)
        elif tag < 0x20:
            units, pos, kind = tag, pos + 1, "short"
        else:
            units, pos, kind = ((tag - 0x30) << 8) | data[pos + 1], pos + 2, "medium"
        parts.append((kind, units))
        for _ in range(units):
            lead = data[pos]
            pos += 1 if lead < 0x80 else 2 if lead < 0xE0 else 3
        if kind != "R":
            assert pos == len(data)
            return parts


def caucho_parts(text: str) -> list[tuple[str, int]]:
    """Caucho's chunking rule over UTF-16 units: 0x8000 per 'R' chunk, one less when the chunk would end
    on a high surrogate; the final part in its most compact form."""
    raw = text.encode("utf-16-be", "surrogatepass")
    units = [int.from_bytes(raw[i : i + 2]) for i in range(0, len(raw), 2)]
    parts = []
    while len(units) > 0x8000:
        size = 0x7FFF if 0xD800 <= units[0x7FFF] <= 0xDBFF else 0x8000
        parts.append(("R", size))
        units = units[size:]
    n = len(units)
    parts.append(("short" if n <= 31 else "medium" if n <= 1023 else "S", n))
    return parts


@pytest.mark.parametrize("count", [31, 32, 1023, 1024, 32767, 32768, 65536, 70000])
def test_long_ascii_strings(count: int) -> None:
    text = "x" * count
    data = encode_value(text)
    assert data == vector_bytes(f"string x*{count}")
    assert decode_value(data) == text
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


def test_emoji_after_40000_units_matches_caucho() -> None:
    text = "x" * 40000 + "\U0001f600"
    data = vector_bytes("string 40000 x + emoji")
    assert string_parts(data) == [("R", 32768), ("S", 7234)]
    assert encode_value(text) == data and decode_value(data) == text


@pytest.mark.parametrize("prefix", [32765, 32766, 32767, 32768, 65534, 65535, 65536, 98302, 98303])
def test_surrogate_pair_near_chunk_boundary(prefix: int) -> None:
    # Caucho (checked against 4.0.38 for prefixes 32766, 32767, 32768 and 65535) shortens the chunk to
    # 0x7fff units when it would end on a high surrogate, so a pair never straddles its chunks.
    text = "x" * prefix + "\U0001f600" + "yz"
    data = encode_value(text)
    assert string_parts(data) == caucho_parts(text)
    assert decode_value(data) == text
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


def test_caucho_output_for_pair_at_first_boundary() -> None:
    # The exact Caucho 4.0.38 bytes for "x"*32767 + U+1F600 + "yz": R 0x7fff, then a compact 4-unit part.
    data = encode_value("x" * 32767 + "\U0001f600yz")
    assert data[:3] == bytes.fromhex("527fff")
    assert data[3 + 32767 :] == bytes.fromhex("04eda0bdedb880797a")


def test_reader_joins_pair_split_across_chunks() -> None:
    # Other writers may cut between the surrogates; the pair must still come out as one character.
    data = bytes.fromhex("520001eda0bd") + bytes.fromhex("01edb880")
    assert decode_value(data) == "\U0001f600"
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


def test_four_byte_utf8_is_accepted() -> None:
    assert decode_value(bytes.fromhex("0461f09f988062")) == "a\U0001f600b"
    with pytest.raises(Hessian2Error):  # 4 bytes for one unit: the pair would be split by the length
        decode_value(bytes.fromhex("01f09f9880"))
    with pytest.raises(Hessian2Error):
        Hessian2Reader(bytes.fromhex("01f09f9880")).skip_value()


def test_lone_surrogates_round_trip() -> None:
    for text in ["\ud800", "a\udc00b", "\udc00\ud800", "x" * 40000 + "\ud83d"]:
        assert decode_value(encode_value(text)) == text


def test_non_ascii_long_strings() -> None:
    for text in ["é" * 40000, "中" * 70000 + "a", "\U0001f600" * 40000, "aé中\U0001f600" * 30000]:
        data = encode_value(text)
        assert string_parts(data) == caucho_parts(text)
        assert decode_value(data) == text
        reader = Hessian2Reader(data)
        reader.skip_value()
        assert reader.at_end()


def chunked(units: list[int], cuts: list[int]) -> bytes:
    """A string encoded with 'R' chunks cut at arbitrary unit offsets (surrogate pairs may be split)."""
    out = bytearray()
    bounds = sorted({c for c in cuts if 0 < c < len(units)})
    start = 0
    for stop in bounds:
        out += bytes((0x52, (stop - start) >> 8, (stop - start) & 0xFF))
        out += "".join(map(chr, units[start:stop])).encode("utf-8", "surrogatepass")
        start = stop
    rest = len(units) - start
    out += bytes((0x53, rest >> 8, rest & 0xFF)) if rest > 31 else bytes((rest,))
    out += "".join(map(chr, units[start:])).encode("utf-8", "surrogatepass")
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.lists(st.integers(0, 400), max_size=6))
def test_reader_accepts_any_chunking(text: str, cuts: list[int]) -> None:
    raw = text.encode("utf-16-be")
    units = [int.from_bytes(raw[i : i + 2]) for i in range(0, len(raw), 2)]
    data = chunked(units, cuts)
    assert decode_value(data) == text
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


# ---------------------------------------------------------------------------- other grammar corners


def test_typed_lists_and_type_references() -> None:
    # V "[string" 2 "a" "b", then 0x70 with type-ref 0 (same type) 1 "c", then M type-ref 0 ... Z
    data = bytes.fromhex("56075b737472696e67920161016271900163") + bytes.fromhex("4d90017801635a")
    reader = Hessian2Reader(data)
    assert reader.read_value() == ["a", "b"]
    assert reader.read_value() == ["c"]
    assert reader.read_value() == {"x": "c"}
    assert reader.at_end()
    reader = Hessian2Reader(data)
    for _ in range(3):
        reader.skip_value()
    assert reader.at_end()
    with pytest.raises(Hessian2Error, match="type"):
        decode_value(bytes.fromhex("7191016301"))
    with pytest.raises(Hessian2Error, match="type"):
        Hessian2Reader(bytes.fromhex("7191016301")).skip_value()


def test_variable_length_lists() -> None:
    data = bytes.fromhex("55036c737491925a57935a")  # U "lst" 1 2 Z, W 3 Z
    reader = Hessian2Reader(data)
    assert reader.read_value() == [1, 2]
    assert reader.read_value() == [3]
    reader = Hessian2Reader(data)
    reader.skip_value()
    reader.skip_value()
    assert reader.at_end()


def test_many_class_definitions_use_long_object_form() -> None:
    objects = [JavaObject(f"c.C{i}", {"v": i}) for i in range(20)]
    data = encode_value(objects)
    assert data.count(b"O") >= 4  # definitions 16..19 need 'O' int
    assert decode_value(data) == objects
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


def test_writer_reuses_definitions_and_writes_back_references() -> None:
    shared = {"k": 1}
    user = JavaObject("com.example.User", {"name": "ann", "age": 30, "friend": None})
    user.fields["friend"] = user
    loop: list[Any] = [1]
    loop.append(loop)
    writer = Hessian2Writer()
    for value in ([shared, shared], user, loop):
        writer.write_value(value)
    reader = Hessian2Reader(writer.getvalue())
    pair = reader.read_value()
    assert pair[0] is pair[1] and pair[0] == shared
    back = reader.read_value()
    assert back.fields["friend"] is back and back.fields["name"] == "ann"
    again = reader.read_value()
    assert again[1] is again and again[0] == 1
    assert reader.at_end()
    assert encode_value(user) == vector_bytes("User referencing itself (back-reference)").replace(
        b"\x04self\x91", b"\x03ann\xae"
    )


def test_enum_and_int_keyed_map() -> None:
    green = JavaObject("com.example.Color", {"name": "GREEN"})
    assert encode_value(green) == vector_bytes("enum Color.GREEN")
    assert encode_value({1: "one"}) == vector_bytes("HashMap {1: one}")
    assert encode_value(("a", "b")) == bytes.fromhex("7a01610162")  # tuples are lists


def test_reader_window_and_helpers() -> None:
    body = encode_value("hello") + encode_value(-5) + encode_value(Long(2**40)) + encode_value({"a": 1})
    data = b"junk" + body + b"\x90tail"
    reader = Hessian2Reader(memoryview(data), 4, 4 + len(body))
    assert reader.read_string() == "hello"
    assert reader.read_int() == -5
    value = reader.read_int()
    assert value == 2**40 and type(value) is int
    assert reader.read_map_as_dict() == {"a": 1}
    assert reader.at_end() and reader.pos == 4 + len(body)
    # The window's end is a hard end even though the buffer goes on.
    with pytest.raises(Hessian2Error):
        Hessian2Reader(data, 4, 7).read_string()
    with pytest.raises(Hessian2Error):
        Hessian2Reader(data, 4, 7).skip_value()
    with pytest.raises(ValueError):
        Hessian2Reader(data, 5, 2)


def test_read_string_null_and_type_errors() -> None:
    assert Hessian2Reader(b"N").read_string(allow_null=True) is None
    with pytest.raises(Hessian2Error, match="string"):
        Hessian2Reader(b"N").read_string()
    with pytest.raises(Hessian2Error, match="int"):
        Hessian2Reader(b"\x01a").read_int()
    assert Hessian2Reader(b"N").read_map_as_dict() == {}
    with pytest.raises(Hessian2Error, match="map"):
        Hessian2Reader(b"\x90").read_map_as_dict()
    with pytest.raises(Hessian2Error):
        Hessian2Reader(b"").read_value()


def test_subclasses_of_supported_types() -> None:
    class Code(IntEnum):
        OK = 20

    class Name(str):
        pass

    assert encode_value(Code.OK) == encode_value(20)
    assert encode_value(OrderedDict(a=[Name("x")])) == encode_value({"a": ["x"]})
    with pytest.raises(TypeError):
        Hessian2Reader("text")  # type: ignore[arg-type]
    with pytest.raises(Hessian2Error):
        Hessian2Reader(b"").read_map_as_dict()


def test_decode_value_refuses_trailing_bytes() -> None:
    with pytest.raises(Hessian2Error, match="trailing"):
        decode_value(b"\x90\x90")


def test_writer_errors() -> None:
    with pytest.raises(Hessian2Error):
        encode_value(2**63)
    with pytest.raises(Hessian2Error):
        encode_value(Long(-(2**63) - 1))
    with pytest.raises(Hessian2Error):
        Hessian2Writer().write_int(2**31)
    with pytest.raises(TypeError):
        encode_value({1, 2})
    with pytest.raises(TypeError):
        encode_value(JavaObject("c", {1: 2}))  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- malformed input

MALFORMED = [
    "58497fffffff",  # fixed list of 2^31-1 elements in 6 bytes
    "5600497fffffff",  # typed fixed list, same
    "53ffff787878",  # string longer than the input
    "52800078",  # chunk longer than the input
    "1f616263",
    "33ff616263",
    "42ffff0102",
    "41000261624e",  # binary chunk followed by a non-binary part
    "3701",
    "520001619090",  # string chunk followed by an int
    "430161497fffffff",  # class definition with 2^31-1 fields
    "43016190",  # class definition followed by nothing
    "430161905a",  # class definition followed by Z
    "4f90",  # object using an undefined definition
    "60",
    "5190",  # back-reference with nothing to refer to
    "4900",
    "4c0000",
    "4400",
    "4a00",
    "4b00",
    "5f00",
    "5e00",
    "5d",
    "c8",
    "d400",
    "3800",
    "f8",
    "5900",
    "5a",
    "40",
    "45",
    "47",
    "50",
    "4890",  # map with a key and no value
    "48905a",  # Z where the value should be
    "5790",  # variable list without Z
    "5591",  # type reference into an empty type table
    "01e4",  # truncated 3-byte character
    "01f09f9880",  # 4-byte character for one unit
    "02c3",
]


@pytest.mark.parametrize("hex_", MALFORMED)
def test_malformed_input_raises_hessian2_error(hex_: str) -> None:
    data = bytes.fromhex(hex_)
    with pytest.raises(Hessian2Error):
        decode_value(data)
    reader = Hessian2Reader(data)
    with pytest.raises(Hessian2Error):
        reader.skip_value()
        assert reader.at_end(), "a fully skipped value would have made decode_value succeed"


@pytest.mark.parametrize(
    "hex_",
    [
        "02c341",  # invalid UTF-8: the structure is fine, the text is not
        "4a7fffffffffffffff",  # a date Python's datetime cannot hold
        "4878905a",  # a list used as a map key
    ],
)
def test_values_python_cannot_represent(hex_: str) -> None:
    data = bytes.fromhex(hex_)
    with pytest.raises(Hessian2Error):
        decode_value(data)
    reader = Hessian2Reader(data)
    reader.skip_value()  # skipping does not build values, so it goes through
    assert reader.at_end()


def nested_lists(depth: int) -> bytes:
    return bytes([0x79]) * depth + b"\x90"


@pytest.mark.parametrize(
    "make",
    [
        nested_lists,
        lambda d: b"W" * d + b"\x90" + b"Z" * d,
        lambda d: b"H\x90" * d + b"\x90" + b"Z" * d,
        lambda d: bytes.fromhex("4310636f6d2e6578616d706c652e5573657291046e616d65") + b"\x60" * d + b"N",
    ],
    ids=["fixed-list", "variable-list", "map", "object"],
)
def test_depth_limit(make: Any) -> None:
    ok = make(MAX_DEPTH)
    decode_value(ok)
    reader = Hessian2Reader(ok)
    reader.skip_value()
    assert reader.at_end()
    too_deep = make(MAX_DEPTH + 1)
    with pytest.raises(Hessian2Error, match="deeper"):
        decode_value(too_deep)
    with pytest.raises(Hessian2Error, match="deeper"):
        Hessian2Reader(too_deep).skip_value()


def test_very_deep_input_is_refused_without_recursion_error() -> None:
    with pytest.raises(Hessian2Error):
        decode_value(nested_lists(200_000))
    with pytest.raises(Hessian2Error):
        Hessian2Reader(nested_lists(200_000)).skip_value()
    with pytest.raises(Hessian2Error):  # a long run of class definitions is a loop, not recursion
        decode_value(b"C\x01a\x90" * 100_000 + b"N" + b"Z")


def test_writer_depth_limit() -> None:
    value: list[Any] = []
    for _ in range(MAX_DEPTH - 1):
        value = [value]
    assert decode_value(encode_value(value)) == value
    with pytest.raises(Hessian2Error, match="deeper"):
        encode_value([value])


def test_long_run_of_class_definitions() -> None:
    data = b"C\x01a\x90" * 50_000 + b"\x90"
    assert decode_value(data) == 0
    reader = Hessian2Reader(data)
    reader.skip_value()
    assert reader.at_end()


# ---------------------------------------------------------------------------- property tests

INT64 = st.integers(-(2**63), 2**63 - 1)
DATES = st.datetimes(timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
)
LONG_TEXT = st.builds(
    lambda c, n, tail: c * n + tail, st.characters(codec="utf-8"), st.integers(0, 70_000), st.text(max_size=3)
)
LONG_BINARY = st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=3), st.integers(0, 9000))
SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | INT64.map(Long)
    | st.floats()
    | st.text()
    | LONG_TEXT
    | st.binary()
    | LONG_BINARY
    | DATES
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(max_size=5) | st.integers(-(2**40), 2**40)
    return (
        st.lists(children, max_size=10)
        | st.dictionaries(keys, children, max_size=5)
        | st.builds(
            JavaObject,
            st.sampled_from(["a.B", "com.example.User", "c"]),
            st.dictionaries(st.text(max_size=5), children, max_size=4),
        )
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=20)


def same(actual: Any, expected: Any) -> bool:
    """Round-trip equality: NaN equals NaN, tuples come back as lists, ints keep int/long typing."""
    if isinstance(expected, float):
        return type(actual) is float and (actual == expected or (math.isnan(actual) and math.isnan(expected)))
    if isinstance(expected, bool) or expected is None:
        return actual is expected
    if isinstance(expected, int):
        is_long = isinstance(expected, Long) or not -(2**31) <= expected < 2**31
        return type(actual) is (Long if is_long else int) and actual == expected
    if isinstance(expected, (list, tuple)):
        return (
            type(actual) is list
            and len(actual) == len(expected)
            and all(same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            type(actual) is dict
            and list(actual) == list(expected)
            and all(same(actual[k], v) for k, v in expected.items())
        )
    if isinstance(expected, JavaObject):
        return (
            type(actual) is JavaObject
            and actual.class_name == expected.class_name
            and same(actual.fields, expected.fields)
        )
    return type(actual) is type(expected) and actual == expected


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(VALUES, min_size=1, max_size=4))
def test_round_trip(values: list[Any]) -> None:
    writer = Hessian2Writer()
    for value in values:
        writer.write_value(value)
    data = writer.getvalue()
    reader = Hessian2Reader(data)
    for value in values:
        assert same(reader.read_value(), value)
    assert reader.at_end()
    skipper = Hessian2Reader(data)
    for _ in values:
        skipper.skip_value()
    assert skipper.pos == len(data)


def check_robust(data: bytes) -> None:
    """Only values or Hessian2Error come out; where read_value succeeds, skip_value agrees on the end."""
    reader = Hessian2Reader(data)
    skipper = Hessian2Reader(data)
    for _ in range(64):
        if reader.at_end():
            return
        try:
            reader.read_value()
        except Hessian2Error:
            with contextlib.suppress(Hessian2Error):
                skipper.skip_value()
            return
        skipper.skip_value()
        assert skipper.pos == reader.pos


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_robust(data)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64).map(lambda b: bytes(x | 0x40 if x < 0x40 and x & 1 else x for x in b)))
def test_fuzz_random_structural_bytes(data: bytes) -> None:
    # Skews toward container and object tags, which random bytes seldom nest.
    check_robust(data)


SMALL_VECTORS = [bytes.fromhex(v["hex"]) for v in VECTORS if len(v["hex"]) <= 200]
SMALL_VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=40) | st.binary(max_size=40) | DATES,
    _containers,
    max_leaves=12,
)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        data = bytearray(draw(st.sampled_from(SMALL_VECTORS)))
    else:
        data = bytearray(encode_value(draw(SMALL_VALUES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data and kind != "insert":
            continue
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_encodings())
def test_fuzz_mutated_encodings(data: bytes) -> None:
    check_robust(data)
