"""The sans-IO frame parser, request body view and encoders, with plain byte strings."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regproxy.dubbo.encode import (
    decode_response,
    encode_error,
    encode_request,
    encode_response,
    heartbeat_reply,
    heartbeat_request,
    java_exception,
    readonly_event,
    supports_response_attachments,
    with_request_id,
)
from regproxy.dubbo.frame import Frame, FrameParser, ProtocolError, Status, frame_request_id, pack_header
from regproxy.dubbo.hessian2 import Hessian2Error, JavaObject, Long, decode_value
from regproxy.dubbo.request import RequestBody, count_descriptor

SVC = "com.example.DemoService"


def frames_of(data: bytes, chunks: list[int] | None = None, max_body: int = 8 * 1024 * 1024) -> list[Frame]:
    parser = FrameParser(max_body)
    out: list[Frame] = []
    if chunks is None:
        return parser.feed(data)
    pos = 0
    for size in chunks:
        out += parser.feed(data[pos : pos + size])
        pos += size
    out += parser.feed(data[pos:])
    assert parser.buffered == 0
    return out


def test_header_fields() -> None:
    req = encode_request(-5, SVC, "hello", ["x"], version="1.0.0", group="g")
    (frame,) = frames_of(req)
    assert frame.is_request and frame.two_way and not frame.is_event
    assert frame.serialization == 2 and frame.request_id == -5 and frame.body_len == len(req) - 16
    assert bytes(frame) == req
    hb = frames_of(heartbeat_request(9))[0]
    assert hb.is_event and hb.is_heartbeat and hb.two_way and hb.flag == 0xE2
    reply = frames_of(heartbeat_reply(9))[0]
    assert reply.flag == 0x22 and reply.status == 20 and reply.request_id == 9 and reply.body == b"N"
    ro = frames_of(readonly_event(3))[0]
    assert ro.is_event and not ro.two_way and decode_value(ro.body) == "R"


def test_one_byte_at_a_time_and_many_per_chunk() -> None:
    stream = b"".join(encode_request(i, SVC, "m", [i, "s" * i]) for i in range(50))
    whole = frames_of(stream)
    assert [f.request_id for f in whole] == list(range(50))
    one_by_one = frames_of(stream, [1] * len(stream))
    assert [bytes(f) for f in one_by_one] == [bytes(f) for f in whole]


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=40))
def test_any_chunking_gives_same_frames(cuts: list[int]) -> None:
    stream = b"".join(encode_request(i, SVC, "m", ["v" * (i * 7)]) for i in range(12))
    got = frames_of(stream, cuts)
    assert [f.request_id for f in got] == list(range(12))


def test_oversize_refused_from_header_alone() -> None:
    parser = FrameParser(max_body=1024)
    head = pack_header(0xC2, 0, 42, 1025)
    with pytest.raises(ProtocolError) as err:
        parser.feed(head)
    assert err.value.request_id == 42 and "1025 bytes exceeds the limit of 1024" in str(err.value)
    assert parser.buffered == 0
    with pytest.raises(ProtocolError):  # the stream stays failed
        parser.feed(encode_request(1, SVC, "m"))


def test_two_gib_announcement() -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(pack_header(0xC2, 0, 1, 2**31))
    assert "2147483648 bytes exceeds" in str(err.value)


def test_bad_magic_fails_fast_and_keeps_earlier_frames() -> None:
    good = encode_request(1, SVC, "m")
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(good + b"GE")
    assert "bad magic 0x4745" in str(err.value)
    assert [f.request_id for f in err.value.frames] == [1]
    with pytest.raises(ProtocolError):
        FrameParser().feed(b"\x00")


def test_linear_in_many_small_frames() -> None:
    # 20,000 heartbeats in one chunk: taking frames must not shift the buffer each time.
    stream = heartbeat_request(1) * 20000
    parser = FrameParser()
    assert len(parser.feed(stream[:7]) + parser.feed(stream[7:])) == 20000


def test_request_body_head_and_lazy_attachments() -> None:
    obj = JavaObject("com.example.User", {"name": "ann", "age": 30})
    raw = encode_request(
        1,
        SVC,
        "save",
        [obj, "x" * 40000, Long(7), [1, 2]],
        version="1.2.3",
        group="grp",
        attachments={"timeout": "250", "dubbo.tag": "gray"},
    )
    body = RequestBody(frames_of(raw)[0].body)
    assert (body.dubbo_version, body.path, body.version, body.method) == ("2.0.2", SVC, "1.2.3", "save")
    assert body.param_types == "Lcom/example/User;Ljava/lang/String;JLjava/util/List;"
    assert not body.attachments_read
    assert body.group == "grp" and body.timeout_ms() == 250
    assert body.attachments["dubbo.tag"] == "gray" and body.attachments["interface"] == SVC
    assert RequestBody(frames_of(raw)[0].body).arguments() == [obj, "x" * 40000, 7, [1, 2]]


def test_timeout_attachment_forms() -> None:
    for att, want in [
        ({"timeout": "100"}, 100),
        ({"timeout": 90}, 90),
        ({"_TO": 80}, 80),
        ({"timeout": "junk"}, None),
        ({}, None),
    ]:
        body = RequestBody(frames_of(encode_request(1, SVC, "m", [], attachments=att))[0].body)
        assert body.timeout_ms() == want, att


def test_descriptor_counting() -> None:
    assert count_descriptor("") == 0
    assert count_descriptor("Ljava/lang/String;I[J[[Lcom/x/Foo;Z") == 5
    for bad in ("L", "Ljava/lang/String", "[", "Q", "I["):
        with pytest.raises(Hessian2Error):
            count_descriptor(bad)


def test_non_ascii_head_strings() -> None:
    raw = encode_request(1, "com.例子.Svc", "方法", ["é"])
    body = RequestBody(frames_of(raw)[0].body)
    assert body.path == "com.例子.Svc" and body.method == "方法" and body.arguments() == ["é"]


def test_a_truncated_body_is_a_hessian_error_unless_cut_right_after_its_arguments() -> None:
    """Cut anywhere, a request body fails with Hessian2Error, never another exception; the one cut that
    parses ends right after the arguments: a body without attachments, as Dubbo 2.0.x consumers send."""
    body = frames_of(encode_request(1, SVC, "m", ["abc"], attachments={"group": "g"}))[0].body
    parsed: list[tuple[int, dict[str, object]]] = []
    for cut in range(len(body)):
        try:
            attachments = RequestBody(body[:cut]).attachments
        except Hessian2Error:
            continue
        parsed.append((cut, dict(attachments)))
    assert [attachments for _cut, attachments in parsed] == [{}], parsed
    ((cut, _),) = parsed
    assert RequestBody(body[:cut]).arguments() == ["abc"]


def test_id_rewrite_keeps_body() -> None:
    frame = frames_of(encode_request(1, SVC, "m", ["v"]))[0]
    rewritten = frames_of(with_request_id(frame.head, 2**62) + frame.body)[0]
    assert rewritten.request_id == 2**62 and rewritten.body is not frame.body and rewritten.body == frame.body
    assert rewritten.flag == frame.flag


def test_responses_round_trip() -> None:
    ok = decode_response(frames_of(encode_response(3, {"a": 1}))[0])
    assert ok.ok and ok.value == {"a": 1} and ok.request_id == 3
    null = decode_response(frames_of(encode_response(3, None))[0])
    assert null.ok and null.value is None
    with_att = decode_response(frames_of(encode_response(3, "v", attachments={"k": "v"}))[0])
    assert with_att.value == "v" and with_att.attachments == {"k": "v"}
    exc = decode_response(frames_of(encode_response(3, exception=java_exception("boom")))[0])
    assert not exc.ok and exc.exception.fields["detailMessage"] == "boom"
    err = decode_response(frames_of(encode_error(4, Status.SERVICE_NOT_FOUND, "no provider"))[0])
    assert err.status == 60 and err.error == "no provider" and not err.ok


def test_response_attachment_versions() -> None:
    assert supports_response_attachments("2.0.2") and supports_response_attachments("2.0.99")
    assert not supports_response_attachments("2.4.10") and not supports_response_attachments("2.0.1")
    assert not supports_response_attachments("3.0.0") and not supports_response_attachments("x")


# --- fuzzing: random and mutated streams give frames or ProtocolError, bodies Hessian2Error ---

_SEED_STREAM = b"".join(
    [
        encode_request(1, SVC, "m", ["a", 1, 2.5, None, [1, "x"], {"k": "v"}], group="g"),
        heartbeat_request(2),
        encode_response(1, "ok"),
        encode_error(3, 60, "no"),
        encode_request(4, SVC, "obj", [JavaObject("a.B", {"x": 1}), JavaObject("a.B", {"x": 2})]),
    ]
)


def _exercise(stream: bytes, cuts: list[int]) -> None:
    parser = FrameParser(max_body=4096)
    pos = 0
    try:
        for size in [*cuts, len(stream)]:
            for frame in parser.feed(stream[pos : pos + size]):
                if frame.is_request and not frame.is_event:
                    try:
                        body = RequestBody(frame.body)
                        body.attachments  # noqa: B018
                        body.arguments()
                    except Hessian2Error:
                        pass
                elif not frame.is_request:
                    with contextlib.suppress(Hessian2Error):
                        decode_response(frame)
            pos += size
    except ProtocolError:
        pass


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=8))
def test_fuzz_random_bytes(data: bytes, cuts: list[int]) -> None:
    _exercise(b"\xda\xbb" + data if data[:1] == b"\x00" else data, cuts)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_SEED_STREAM) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    st.lists(st.integers(1, 64), max_size=8),
)
def test_fuzz_mutated_frames(mutations: list[tuple[int, int]], cuts: list[int]) -> None:
    stream = bytearray(_SEED_STREAM)
    for pos, value in mutations:
        stream[pos] = value
    _exercise(bytes(stream), cuts)


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
    st.text(max_size=40), st.text(alphabet=st.characters(max_codepoint=127), max_size=1100),
)  # fmt: skip


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(
    st.lists(st.one_of(_scalar, st.lists(_scalar, max_size=3)), max_size=4),
    st.dictionaries(
        st.text(max_size=12), st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1)), max_size=6
    ),
)
def test_fast_attachments_agree_with_the_reader(args: list[object], att: dict[str, object]) -> None:
    """The fast path answers only where it can, and then exactly as the general reader does."""
    from regproxy.dubbo.hessian2 import Hessian2Reader
    from regproxy.dubbo.request import fast_attachments

    raw = encode_request(1, SVC, "m", args, attachments=att)
    body = RequestBody(frames_of(raw)[0].body)
    reader = Hessian2Reader(body.body, body._args_end)
    for _ in range(body.argument_count):
        reader.skip_value()
    expected = reader.read_value()
    fast = fast_attachments(body.body, body._args_end, body.argument_count)
    assert fast is None or fast == expected
    assert body.attachments == expected


_head_text = st.one_of(st.text(max_size=20), st.text(alphabet=st.characters(max_codepoint=127), max_size=40))


@pytest.mark.slow
@settings(max_examples=800, deadline=None)
@given(
    st.lists(
        st.tuples(
            _head_text,
            _head_text,
            st.lists(_scalar, max_size=3),
            st.dictionaries(
                st.sampled_from(["timeout", "_TO", "group", "k"]), st.text(max_size=8), max_size=3
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_memoised_heads_and_attachments_equal_a_fresh_decode(
    calls: list[tuple[str, str, list[object], dict[str, str]]],
) -> None:
    """Requests decoded after others (memo hits, near-misses, non-ASCII heads whose compact-string
    guess is wrong) give exactly what decoding each with empty memos gives."""
    from regproxy.dubbo import request

    bodies = [
        frames_of(encode_request(1, path or SVC, method or "m", args, attachments=att))[0].body
        for path, method, args, att in calls
    ]

    def decode(body: bytes) -> tuple[object, ...]:
        rb = RequestBody(body)
        return (rb.dubbo_version, rb.path, rb.version, rb.method, rb.param_types,
                dict(rb.attachments), rb.timeout_ms(), rb.group)  # fmt: skip

    fresh = []
    for body in bodies:
        request._HEADS.clear()
        request._TAILS.clear()
        fresh.append(decode(body))
    for _ in range(2):  # the second pass hits the memos the first filled
        assert [decode(body) for body in bodies] == fresh


def test_memos_are_bounded_and_attachments_read_only() -> None:
    from regproxy.dubbo import request

    for i in range(request._MEMO_MAX + 10):
        body = frames_of(encode_request(1, f"com.x.S{i}", "m", [], attachments={"k": str(i)}))[0].body
        assert RequestBody(body).attachments["k"] == str(i)
        assert len(request._HEADS) <= request._MEMO_MAX and len(request._TAILS) <= request._MEMO_MAX
    att = RequestBody(body).attachments
    with pytest.raises(TypeError):
        att["timeout"] = "1"  # type: ignore[index]  # shared between requests: must not change


def test_frame_request_id_reads_every_signed_long() -> None:
    """The data path reads ids byte by byte when compiled and with struct when not (both run in the
    suite: tests/test_native.py repeats this file on the pure path); each must agree with the header."""
    for value in (0, 1, 255, 256, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -1, -2, -(2**31), -(2**63)):
        frame = pack_header(0xC2, 0, value, 1) + b"N"
        assert frame_request_id(frame) == value == Frame.of(frame).request_id, value
