"""Issue 18 item 6: setting attachments in a request (regproxy.dubbo.request.with_attachments) edits
the hessian2 attachments map where it stands, the arguments' bytes copied as they are, and the
result decodes to the original request with the attachments set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regproxy.dubbo.encode import encode_request, encode_response, heartbeat_request, readonly_event
from regproxy.dubbo.frame import FrameParser, pack_header
from regproxy.dubbo.hessian2 import Hessian2Error, Hessian2Reader, Hessian2Writer, JavaObject
from regproxy.dubbo.request import (
    VIA_KEY,
    RequestBody,
    count_descriptor,
    find_via,
    strip_via,
    via_entry,
    with_attachments,
)
from tests.test_frame import _head_text
from tests.test_hessian2 import VALUES, same, vector_bytes

SVC = "com.example.Svc"
GOLDEN = Path(__file__).parent / "vectors" / "dubbo-python-requests.json"
OWN = b"0a0b0c0d"  # a sidecar id, as the loop marker carries it


def map_start(frame: bytes) -> int:
    """Where the arguments of a request frame end: its attachments map, or the end of the frame."""
    reader = Hessian2Reader(frame, 16)
    head = [reader.read_string() for _ in range(5)]
    for _ in range(count_descriptor(head[4])):
        reader.skip_value()
    return reader.pos


def without_map(frame: bytes) -> bytes:
    """``frame`` cut after its arguments, as Dubbo 2.0.x consumers may send a request."""
    end = map_start(frame)
    return b"".join((frame[:12], (end - 16).to_bytes(4), frame[16:end]))


def marked(frame: bytes) -> bytes:
    """``frame`` as an egress forwards it (regproxy.proxy.forwarder): the loop marker last in its
    map, the header's body length left stale for the sending connection to write."""
    return b"".join((frame[:-1], via_entry(OWN), b"Z"))


def head_of(frame: bytes) -> tuple[str, str, str, str, str]:
    body = RequestBody(frame, 16)
    return (body.dubbo_version, body.path, body.version, body.method, body.param_types)


def check_frame(result: bytes, frame: bytes) -> None:
    """Magic, flags, status and id kept; the body length right, for a parser too."""
    assert result[:12] == frame[:12]
    assert int.from_bytes(result[12:16]) == len(result) - 16
    assert [bytes(f) for f in FrameParser().feed(result)] == [result]


def same_attachments(actual: Any, expected: dict[Any, Any]) -> bool:
    """Equal as maps (the order of entries is the wire's, which setting them changes)."""
    return set(actual) == set(expected) and all(same(actual[k], v) for k, v in expected.items())


# ------------------------------------------------------------------------------------ the property


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[Any], dict[str, str]]:
    """A request frame (sometimes without a map, sometimes one-way, sometimes carrying the loop marker
    with a stale length), its arguments, and attachments to set: new keys and keys it holds."""
    args = draw(st.lists(VALUES, max_size=4))
    existing = draw(st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), VALUES, max_size=5))
    frame = encode_request(
        draw(st.integers(-(2**63), 2**63 - 1)),
        draw(_head_text),
        draw(_head_text),
        args,
        version=draw(_head_text),
        group=draw(st.text(max_size=12)),
        attachments=existing,  # type: ignore[arg-type]  # int keys too: a map may hold any
        two_way=draw(st.booleans()),
    )
    form = draw(st.sampled_from(["map", "no map", "marked"]))
    if form == "no map":
        frame = without_map(frame)
    elif form == "marked":
        frame = marked(frame)
    held = RequestBody(frame, 16).attachments
    # A held entry whose value is a container or an object is refused (test below), not replaced.
    replaceable = sorted(
        k
        for k, v in held.items()
        if isinstance(k, str) and k != VIA_KEY and not isinstance(v, (list, dict, JavaObject))
    )
    new = st.text(max_size=8).filter(lambda k: k not in held)
    keys = st.sampled_from(replaceable) | new if replaceable else new
    extra = draw(st.dictionaries(keys, st.text(max_size=20), max_size=4))
    return frame, args, extra


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_result_is_the_original_request_with_the_attachments_set(
    case: tuple[bytes, list[Any], dict[str, str]],
) -> None:
    frame, args, extra = case
    result = with_attachments(frame, extra)
    check_frame(result, frame)
    # The arguments' bytes are the original's, where they were.
    end = map_start(frame)
    assert map_start(result) == end and result[16:end] == frame[16:end]
    body = RequestBody(result, 16)
    assert head_of(result) == head_of(frame)
    decoded = body.arguments()
    assert len(decoded) == len(args) and all(same(a, e) for a, e in zip(decoded, args, strict=True))
    expected = dict(RequestBody(frame, 16).attachments)
    expected.update(extra)
    assert same_attachments(body.attachments, expected)
    # The loop marker stays last, where the egress and the ingress look for it.
    if VIA_KEY in expected:
        assert find_via(result, 16) == (result.rfind(via_entry(OWN)), OWN)
        del expected[VIA_KEY]
        assert same_attachments(RequestBody(strip_via(result), 16).attachments, expected)


# ------------------------------------------------------------------------------------ each map form


def test_an_untyped_map_gets_the_new_entries_first_and_a_held_key_its_new_value() -> None:
    frame = encode_request(5, SVC, "f", ["x", 3], attachments={"token": "old", "timeout": "300"})
    result = with_attachments(frame, {"token": "new", "tag": "gray"})
    check_frame(result, frame)
    at = map_start(frame)
    # H, then the new entries; the old token's entry is gone, the others follow as they were.
    assert result[at:].startswith(b"H\x05token\x03new\x03tag\x04gray\x04path")
    assert result.count(b"\x05token") == 1
    assert dict(RequestBody(result, 16).attachments) == {
        "path": SVC,
        "interface": SVC,
        "timeout": "300",
        "token": "new",
        "tag": "gray",
    }
    assert RequestBody(result, 16).arguments() == ["x", 3]


def test_a_typed_map_as_caucho_writes_it_keeps_its_type() -> None:
    # Caucho Hessian 4.0.38's bytes for a TreeMap {a: 1, b: "two"} (tests/vectors): M, its type, Z.
    caucho = vector_bytes("TreeMap {a: 1, b: two}")
    assert caucho.startswith(b"M\x11java.util.TreeMap")
    head = Hessian2Writer()
    for text in ("2.0.2", SVC, "1.0.0", "f", "Ljava/lang/String;"):
        head.write_string(text)
    head.write_string("arg")
    body = b"".join((head.getvalue(), caucho))
    frame = b"".join((pack_header(0xC2, 0, 9, len(body)), body))
    result = with_attachments(frame, {"token": "t", "a": "one"})
    check_frame(result, frame)
    assert result[16:].endswith(b"M\x11java.util.TreeMap\x05token\x01t\x01a\x03one\x01b\x03twoZ")
    assert RequestBody(result, 16).attachments == {"token": "t", "a": "one", "b": "two"}


def test_a_typed_map_naming_an_arguments_type_by_number() -> None:
    # The argument is a TreeMap (its type is the reader's type 0); the map names that type by number.
    arg = vector_bytes("TreeMap {a: 1, b: two}")
    head = Hessian2Writer()
    for text in ("2.0.2", SVC, "1.0.0", "f", "Ljava/util/TreeMap;"):
        head.write_string(text)
    body = b"".join((head.getvalue(), arg, b"M\x90\x01k\x01vZ"))
    frame = b"".join((pack_header(0xC2, 0, 9, len(body)), body))
    result = with_attachments(frame, {"token": "t"})
    check_frame(result, frame)
    assert result.endswith(b"M\x90\x05token\x01t\x01k\x01vZ")
    request = RequestBody(result, 16)
    assert request.arguments() == [{"a": 1, "b": "two"}]
    assert request.attachments == {"token": "t", "k": "v"}


def test_a_request_without_a_map_gets_one() -> None:
    # What Dubbo 2.0.x consumers may send: the arguments end the body.
    frame = without_map(encode_request(3, SVC, "f", ["x"]))
    assert RequestBody(frame, 16).attachments == {}
    result = with_attachments(frame, {"token": "t"})
    check_frame(result, frame)
    size = len(frame) - 16 + 10
    assert result == b"".join((frame[:12], size.to_bytes(4), frame[16:], b"H\x05token\x01tZ"))
    assert RequestBody(result, 16).attachments == {"token": "t"}


def test_flags_status_and_id_are_kept_one_way_included() -> None:
    frame = encode_request(-2, SVC, "f", ["x"], two_way=False)
    result = with_attachments(frame, {"token": "t"})
    assert result[2] == frame[2] == 0x82 and result[:12] == frame[:12]


def test_back_references_into_the_arguments_stay_right() -> None:
    # The writer writes the attachment's list as a back-reference to the argument (Q 0), and the
    # class definition of the argument's object is reused by the attachment's.
    shared = [1, 2]
    user = JavaObject("com.example.User", {"name": "ann"})
    frame = encode_request(
        1,
        SVC,
        "f",
        [shared, user],
        attachments={"same": shared, "who": JavaObject("com.example.User", {"name": "bo"})},
    )
    assert b"\x51\x90" in frame[map_start(frame) :]
    # Kept, the reference still names the argument; replaced (a reference takes no place of its
    # own), the entry goes and the object after it still finds its class definition.
    kept = RequestBody(with_attachments(frame, {"token": "t"}), 16)
    assert kept.arguments() == [shared, user]
    assert kept.attachments["same"] == shared and kept.attachments["token"] == "t"
    replaced = RequestBody(with_attachments(frame, {"token": "t", "same": "new"}), 16).attachments
    assert replaced["same"] == "new" and replaced["who"] == JavaObject("com.example.User", {"name": "bo"})


def test_a_marker_and_a_stale_length_are_as_the_egress_leaves_them() -> None:
    frame = marked(encode_request(1, SVC, "f", ["x"], attachments={"timeout": "300"}))
    assert int.from_bytes(frame[12:16]) != len(frame) - 16  # stale: the connection writes it
    result = with_attachments(frame, {"token": "t"})
    check_frame(result, frame)
    assert result.endswith(b"".join((via_entry(OWN), b"Z")))
    assert find_via(result, 16) is not None
    stripped = strip_via(result)
    assert RequestBody(stripped, 16).attachments == {
        "path": SVC,
        "interface": SVC,
        "timeout": "300",
        "token": "t",
    }


# ------------------------------------------------------------------------ golden: dubbo-python 0.0.4


def golden() -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = json.loads(GOLDEN.read_text())["requests"]
    return requests


def test_golden_say_hi_with_a_token_byte_for_byte() -> None:
    frame = bytes.fromhex(golden()[0]["hex"])
    assert frame[12:16] == b"\x00\x00\x00\xd6"
    result = with_attachments(frame, {"token": "secret"})
    # 13 bytes more (0xd6 -> 0xe3), the entry right after the map's H.
    expected = b"".join(
        (
            frame[:12],
            b"\x00\x00\x00\xe3",
            frame[16:].replace(b"H\x04path", b"H\x05token\x06secret\x04path", 1),
        )
    )
    assert result == expected


@pytest.mark.parametrize("vector", golden(), ids=lambda v: v["name"])
def test_golden_requests_decode_with_the_token(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    result = with_attachments(frame, {"token": "secret", "version": "2.0.0"})
    check_frame(result, frame)
    assert head_of(result) == head_of(frame)
    assert RequestBody(result, 16).arguments() == RequestBody(frame, 16).arguments()
    assert RequestBody(result, 16).attachments == {
        **RequestBody(frame, 16).attachments,
        "token": "secret",
        "version": "2.0.0",
    }


# ---------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (heartbeat_request(1), "event"),
        (readonly_event(2), "event"),
        (encode_response(3, "v"), "response"),
        (b"".join((b"\xda\xbb\xc3", encode_request(4, SVC, "f")[3:])), "serialization id 3"),
        (b"GET / HTTP/1.1\r\n\r\n", "not a Dubbo frame"),
    ],
)
def test_frames_that_are_no_hessian2_invocation_are_refused(frame: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        with_attachments(frame, {"token": "t"})


def test_refused_attachments() -> None:
    frame = encode_request(1, SVC, "f", ["x"], attachments={"tags": ["a", "b"]})
    with pytest.raises(ValueError, match="'tags' holds a container"):
        with_attachments(frame, {"tags": "a"})
    with pytest.raises(ValueError, match="loop marker"):
        with_attachments(frame, {VIA_KEY: OWN.decode()})
    with pytest.raises(TypeError):
        with_attachments(frame, {"timeout": 300})  # type: ignore[dict-item]


def test_malformed_bodies_are_hessian_errors() -> None:
    frame = encode_request(1, SVC, "f", ["x"])
    at = map_start(frame)
    for bad in (
        b"".join((frame, b"\x90")),  # a byte after the map
        frame[:-1],  # no Z
        frame[: at + 3],  # cut inside an entry
        b"".join((frame[:at], b"\x91")),  # not a map
    ):
        with pytest.raises(Hessian2Error):
            with_attachments(bad, {"token": "t"})
