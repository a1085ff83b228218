"""A lazy view of a hessian2 Dubbo request body.

Routing on service, version and method needs only the five leading strings, which are read at
construction (a fast path for the short ASCII strings that real consumers send). The group and the
timeout live in the attachments, after every argument: reaching them means skipping each
argument structurally, so that is done only when ``attachments`` is first asked for.

Both are memoised by their bytes: a consumer sends the same head for every call of a method, and
usually the same attachments (path, interface, version, timeout) after the arguments. A request
whose head or attachment bytes were seen before costs a slice and a dict lookup instead of a
decode. Keys are exact byte strings of input that was decoded once, so a hit gives exactly what
decoding would have.

After the view come the two edits the proxy makes to a request's attachments without re-encoding
its arguments: the loop marker (``find_via``, ``strip_via``) and setting entries
(``with_attachments``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from regproxy.dubbo.frame import (
    FLAG_EVENT,
    FLAG_REQUEST,
    HEADER_LEN,
    HESSIAN2,
    MAGIC_BYTES,
    SERIALIZATION_MASK,
)
from regproxy.dubbo.hessian2 import Hessian2Error, Hessian2Reader, Hessian2Writer

_PRIMITIVES = frozenset(b"ZBCSIJFD")
_COUNTS: dict[str, int] = {}  # parameter descriptor -> argument count
_MEMO_MAX = 4096  # entries per memo; a peer sending endless new heads only makes it start over
# Head bytes -> (dubbo version, path, version, method, parameter types).
_HEADS: Final[dict[bytes, tuple[str, str, str, str, str]]] = {}
# Attachment bytes -> (read-only attachments, their timeout, their group).  Shared between requests.
_TAILS: Final[dict[bytes, tuple[Mapping[str, Any], int | None, str]]] = {}
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def count_descriptor(desc: str) -> int:
    """Number of entries in a JVM parameter descriptor such as ``Ljava/lang/String;I[J``."""
    count = 0
    i = 0
    n = len(desc)
    while i < n:
        c = desc[i]
        while c == "[":
            i += 1
            if i == n:
                raise Hessian2Error(f"parameter types {desc!r}: array marker '[' without an element type")
            c = desc[i]
        if c == "L":
            semi = desc.find(";", i)
            if semi < 0:
                raise Hessian2Error(f"parameter types {desc!r}: class name at {i} is missing its ';'")
            i = semi + 1
        elif ord(c) < 128 and ord(c) in _PRIMITIVES:
            i += 1
        else:
            raise Hessian2Error(f"parameter types {desc!r}: unexpected {c!r} at {i}")
        count += 1
    return count


def _read_head_string(body: bytes, pos: int) -> tuple[str, int]:
    """Read one string at ``pos``; short ASCII strings avoid the general reader."""
    if pos < len(body):
        tag = body[pos]
        if tag < 0x20:
            start, n = pos + 1, tag
        elif 0x30 <= tag <= 0x33 and pos + 1 < len(body):
            start, n = pos + 2, ((tag - 0x30) << 8) | body[pos + 1]
        else:
            start = n = -1
        if start >= 0:
            raw = body[start : start + n]
            # For ASCII the byte count equals the UTF-16 unit count, so the slice is exact.
            if len(raw) == n and raw.isascii():
                return raw.decode("ascii"), start + n
    reader = Hessian2Reader(body, pos)
    value = reader.read_string()
    return value, reader.pos


# Bytes a scalar takes after its tag, for the tags the fast path below skips without the reader:
# null/true/false, compact ints and longs, and the short double forms.
_FIXED: Final[dict[int, int]] = {0x4E: 0, 0x54: 0, 0x46: 0, 0x5B: 0, 0x5C: 0, 0x5D: 1, 0x5E: 2, 0x5F: 4,
                          0x49: 4, 0x59: 4, 0x4C: 8, 0x44: 8}  # fmt: skip
for _t in range(0x80, 0xC0):
    _FIXED[_t] = 0
for _t in range(0xD8, 0xF0):
    _FIXED[_t] = 0
for _t in range(0xC0, 0xD0):
    _FIXED[_t] = 1
for _t in range(0xF0, 0x100):
    _FIXED[_t] = 1
for _t in range(0xD0, 0xD8):
    _FIXED[_t] = 2
for _t in range(0x38, 0x40):
    _FIXED[_t] = 2


def _short_ascii(body: bytes, pos: int) -> tuple[str, int] | None:
    """A compact string of ASCII at ``pos`` (its bytes are its UTF-16 units), else None."""
    tag = body[pos]
    if tag < 0x20:
        start, n = pos + 1, tag
    elif 0x30 <= tag <= 0x33 and pos + 1 < len(body):
        start, n = pos + 2, ((tag - 0x30) << 8) | body[pos + 1]
    else:
        return None
    raw = body[start : start + n]
    if len(raw) != n or not raw.isascii():
        return None
    return raw.decode("ascii"), start + n


def compact_head_end(body: bytes, start: int = 0) -> int:
    """Where the five head strings from ``start`` end if each is a compact string of one byte per
    character; -1 when a tag is not a compact string.  Only a memo key: a non-ASCII head gives a
    wrong end, whose bytes then match no memoised head (those are all ASCII heads that ended there).
    Hessian strings carry their length, so bytes that parse as five whole strings are exactly the
    head of whatever follows them."""
    try:
        pos = start
        for _ in (0, 0, 0, 0, 0):  # a constant tuple: a fifth cheaper than range() here
            tag = body[pos]
            if tag < 0x20:
                pos += 1 + tag
            elif 0x30 <= tag <= 0x33:
                pos += 2 + (((tag - 0x30) << 8) | body[pos + 1])
            else:
                return -1
        return pos
    except IndexError:
        return -1


def skip_scalar_args(body: bytes, pos: int, nargs: int) -> int:
    """End of ``nargs`` arguments that are scalars or short ASCII strings; -1 for anything else."""
    try:
        for _ in range(nargs):
            tag = body[pos]
            size = _FIXED.get(tag)
            if size is not None:
                pos += 1 + size
                continue
            # A compact string (as _short_ascii reads it, without decoding): ASCII, so that its
            # length in UTF-16 units is its length in bytes.
            if tag < 0x20:
                start, stop = pos + 1, pos + 1 + tag
            elif 0x30 <= tag <= 0x33:
                start = pos + 2
                stop = start + (((tag - 0x30) << 8) | body[pos + 1])
            else:
                return -1
            if stop > len(body) or not body[start:stop].isascii():
                return -1
            pos = stop
    except IndexError:
        return -1
    return pos


def _timeout_of(att: Mapping[str, Any]) -> int | None:
    """The consumer's timeout: `timeout` (ms as a string in 3.x, an int in some clients) or `_TO`."""
    for key in ("timeout", "_TO"):
        raw = att.get(key)
        if raw is None or isinstance(raw, bool):
            continue
        try:
            value = int(raw)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


def _remember(memo: dict[bytes, Any], key: bytes, value: Any) -> None:
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value


def fast_attachments(body: bytes, pos: int, nargs: int) -> dict[str, Any] | None:
    """The attachments map when every argument is a scalar or a short ASCII string and the map
    holds only short ASCII strings: what most calls carry. None means "use the general reader",
    which gives the same answer for these bytes (a test checks that), just more slowly."""
    pos = skip_scalar_args(body, pos, nargs)
    if pos < 0:
        return None
    return _fast_map(body, pos)


class _LastTail:
    """The attachment bytes ``memoised_group`` or ``memoised_attachments`` found last, and what
    they decode to: consecutive requests mostly carry the same attachments, which a compare finds
    without slicing and hashing them."""

    __slots__ = ("attachments", "group", "tail")

    def __init__(self) -> None:
        self.tail: bytes | None = None
        self.attachments: Mapping[str, Any] = _EMPTY
        self.group = ""


_LAST_TAIL: Final = _LastTail()


def _memoised_tail(body: bytes, args_start: int, nargs: int) -> _LastTail | None:
    """``_LAST_TAIL`` holding the attachments of a request whose ``nargs`` arguments from
    ``args_start`` are scalars or short ASCII strings and whose attachment bytes were decoded
    before; None means "decode it"."""
    pos = skip_scalar_args(body, args_start, nargs)
    if pos < 0:
        return None
    last = _LAST_TAIL.tail
    # The same bytes decode the same, whatever the memo holds since.
    if last is not None and len(body) - pos == len(last) and body.endswith(last):
        return _LAST_TAIL
    tail = body[pos:]
    known = _TAILS.get(tail)
    if known is None:
        return None
    _LAST_TAIL.tail, _LAST_TAIL.attachments, _LAST_TAIL.group = tail, known[0], known[2]
    return _LAST_TAIL


def memoised_group(body: bytes, args_start: int, nargs: int) -> str | None:
    """The group of a request with memoised attachment bytes (``_memoised_tail``); None: decode it."""
    found = _memoised_tail(body, args_start, nargs)
    return found.group if found is not None else None


def memoised_attachments(body: bytes, args_start: int, nargs: int) -> Mapping[str, Any] | None:
    """The attachments of a request with memoised attachment bytes (``_memoised_tail``); None:
    decode it."""
    found = _memoised_tail(body, args_start, nargs)
    return found.attachments if found is not None else None


def group_of(att: Mapping[str, Any]) -> str:
    """The ``group`` attachment ("" when absent or not a string)."""
    group = att.get("group")
    return group if isinstance(group, str) else ""


def _fast_map(body: bytes, pos: int) -> dict[str, Any] | None:
    """The attachments map at ``pos`` when it holds only short ASCII strings, else None."""
    n = len(body)
    try:
        if pos == n:
            return None  # no map (Dubbo 2.0.x): the reader says so (RequestBody.ends_with_map)
        if pos > n or body[pos] != 0x48:  # 'H': an untyped map
            return None
        pos += 1
        out: dict[str, Any] = {}
        while body[pos] != 0x5A:  # 'Z'
            key = _short_ascii(body, pos)
            if key is None:
                return None
            value = _short_ascii(body, key[1])
            if value is None:
                return None
            out[key[0]] = value[0]
            pos = value[1]
        return out if pos + 1 == n else None
    except IndexError:
        return None  # truncated: let the reader name the problem


class RequestBody:
    """The fields of a request body; raises Hessian2Error when the head cannot be read."""

    __slots__ = (
        "_args_end",
        "_attachments",
        "_reader",
        "_timeout",
        "body",
        "dubbo_version",
        "head_end",
        "method",
        "param_types",
        "path",
        "version",
    )

    def __init__(self, body: bytes, start: int = 0) -> None:
        """``body`` from ``start``: a frame's body, or a whole frame with ``start=16``."""
        self.body = body
        end = compact_head_end(body, start)
        known = _HEADS.get(body[start:end]) if end > 0 else None
        self.head_end = -1  # where the head ends when its bytes are a memo key (see head_key)
        if known is None:
            self.dubbo_version, pos = _read_head_string(body, start)
            self.path, pos = _read_head_string(body, pos)
            self.version, pos = _read_head_string(body, pos)
            self.method, pos = _read_head_string(body, pos)
            self.param_types, pos = _read_head_string(body, pos)
            if pos == end and body[start:end].isascii():
                _remember(
                    _HEADS,
                    body[start:end],
                    (self.dubbo_version, self.path, self.version, self.method, self.param_types),
                )
                self.head_end = end
        else:
            self.dubbo_version, self.path, self.version, self.method, self.param_types = known
            pos = self.head_end = end
        self._args_end = pos  # becomes the end of the arguments once they are skipped or read
        self._attachments: Mapping[str, Any] | None = None
        self._reader: Hessian2Reader | None = None
        self._timeout: int | None = 0  # 0: not read yet

    @property
    def argument_count(self) -> int:
        count = _COUNTS.get(self.param_types)
        if count is None:
            count = count_descriptor(self.param_types)
            if len(_COUNTS) < 4096:  # a consumer uses a handful of signatures; bound what a peer can add
                _COUNTS[self.param_types] = count
        return count

    def _args_reader(self) -> Hessian2Reader:
        return Hessian2Reader(self.body, self._args_end)

    def arguments(self) -> list[Any]:
        """Decode every argument (the demo provider uses this; the proxy never does)."""
        reader = self._args_reader()
        args = [reader.read_value() for _ in range(self.argument_count)]
        self._reader = reader
        return args

    @property
    def attachments(self) -> Mapping[str, Any]:
        """The attachments, read-only (the same mapping may serve many requests)."""
        if self._attachments is None and self._reader is None:
            self._fast_attachments()
        if self._attachments is None:
            reader = self._reader
            if reader is None:
                reader = self._args_reader()
                for _ in range(self.argument_count):
                    reader.skip_value()
            if reader.at_end():
                self._attachments = _EMPTY  # Dubbo 2.0.x consumers may send none
            else:
                value = reader.read_value()
                if not isinstance(value, dict):
                    raise Hessian2Error(f"attachments: expected a map, got {type(value).__name__}")
                self._attachments = MappingProxyType(value)
        return self._attachments

    def _fast_attachments(self) -> None:
        body = self.body
        pos = skip_scalar_args(body, self._args_end, self.argument_count)
        if pos < 0:
            return
        tail = body[pos:]
        known = _TAILS.get(tail)
        if known is None:
            att = _fast_map(body, pos)
            if att is None:
                return
            known = (MappingProxyType(att), _timeout_of(att), group_of(att))
            if len(tail) <= 1024:
                _remember(_TAILS, tail, known)
        self._attachments, self._timeout, _group = known

    @property
    def attachments_read(self) -> bool:
        return self._attachments is not None

    @property
    def ends_with_map(self) -> bool:
        """Whether an attachments map follows the arguments (Dubbo 2.0.x consumers may send none):
        only then is the body's last byte the map's ``Z``, where the egress's loop marker goes."""
        return self.attachments is not _EMPTY

    @property
    def group(self) -> str:
        return group_of(self.attachments)

    def timeout_ms(self) -> int | None:
        """The consumer's timeout: `timeout` (ms as a string in 3.x, an int in some clients) or `_TO`."""
        if self._timeout == 0:
            self._timeout = _timeout_of(self.attachments)
        return self._timeout

    def __repr__(self) -> str:
        return f"<RequestBody {self.path}:{self.version} {self.method}({self.param_types})>"


# --- the loop marker ------------------------------------------------------------------------------
#
# An egress appends its sidecar's id to the ``regproxy.via`` attachment of every hessian2 request it
# forwards; a request that arrives at an egress whose id it already carries went round in a loop
# (through static clusters or provider addresses that lead back to a sidecar's egress) and is
# answered there with an error instead of being forwarded again.  The entry is always written last,
# right before the ``Z`` that ends the attachments map (the last value of a request body), so it is
# found by searching a bounded tail of the body: nothing is decoded.  The ingress takes it out
# before the application sees the request: Dubbo 2.7 copies the attachments a provider received
# into the calls it makes (RpcContext), and a marker passed on that way would make a legitimate
# nested call (A → B → A) look like a loop.

VIA_KEY: Final = "regproxy.via"
VIA_ID_LEN: Final = 8  # a sidecar's id: 8 hex digits, made at start (regproxy.proxy.loops)
# Egresses a request may pass without an ingress between them. Only chains of egresses (a static
# cluster naming another sidecar's egress) add to the marker; 16 is far beyond any real topology.
VIA_MAX_IDS: Final = 16
# The key as hessian2 writes it: a compact string (its length byte, then its ASCII).
VIA_KEY_BYTES: Final = b"\x0cregproxy.via"
_VIA_MAX_VALUE: Final = VIA_MAX_IDS * (VIA_ID_LEN + 1) - 1  # the ids, separated by spaces
# The bytes at the end of a body that can hold the marker: key, value tag, value, and the final Z.
VIA_WINDOW: Final = len(VIA_KEY_BYTES) + 2 + _VIA_MAX_VALUE + 1


def via_entry(chain: bytes) -> bytes:
    """The marker's key and value in hessian2, the value ``chain`` (ids separated by spaces, ASCII,
    at most 1023 bytes): a compact string up to 31 bytes, the two-byte-length form above."""
    n = len(chain)
    tag = bytes((n,)) if n < 32 else bytes((0x30 | (n >> 8), n & 0xFF))
    return b"".join((VIA_KEY_BYTES, tag, chain))  # not +: regproxy.dubbo.frame's note


def find_via(body: bytes, start: int = 0) -> tuple[int, bytes] | None:
    """The marker at the end of a request body (of a whole frame with ``start=16``): where its key
    starts and its value (the ids of the egresses passed, separated by spaces). None when the body
    does not end with one: no ``Z`` last, no key in the tail, or bytes there that only look like it
    (the value must reach the final ``Z`` and have the shape of ids)."""
    n = len(body)
    if n == 0 or body[n - 1] != 0x5A:
        return None
    lo = n - VIA_WINDOW
    at = body.rfind(VIA_KEY_BYTES, lo if lo > start else start)
    if at < 0:
        return None
    pos = at + len(VIA_KEY_BYTES)
    tag = body[pos]  # at most n - 1: the key ends before the final Z
    if tag < 0x20:
        first, size = pos + 1, tag
    elif 0x30 <= tag <= 0x33:
        first, size = pos + 2, ((tag - 0x30) << 8) | body[pos + 1]
    else:
        return None
    if first + size != n - 1 or size % (VIA_ID_LEN + 1) != VIA_ID_LEN:
        return None
    return at, body[first : n - 1]


def strip_via(raw: bytes, start: int = 16) -> bytes:
    """``raw`` without its marker (the same object when it has none). The header's body length is
    left as it was: the connection that sends the frame on writes it (UpstreamConnection)."""
    found = find_via(raw, start)
    return raw if found is None else b"".join((raw[: found[0]], b"Z"))


# --- setting attachments --------------------------------------------------------------------------
#
# What the proxy tells a provider on the consumer's behalf (the ``token`` of a provider URL, issue
# 18) is written into the request's attachments map as the bytes stand: the arguments before the
# map are skipped, not decoded, and copied as they are. A key the map holds already gets the new
# value, as Dubbo's RpcInvocation.setAttachment (a HashMap put) gives it. The new entries go first
# in the map, so that what was last stays last: the loop marker must end the map (find_via).

_BODY_LEN: Final = struct.Struct(">I")  # the header's last four bytes
# First bytes of the values that take a place in a hessian2 reader's tables (back-references, class
# definitions, types): maps, lists, objects and class definitions. Values after one may refer to it
# by its place, so an entry holding one cannot be taken out of the map.
_NUMBERED: Final = frozenset(b"CHMOUVWX") | frozenset(range(0x60, 0x80))


def _string_tag(tag: int) -> bool:
    return tag < 0x20 or 0x30 <= tag <= 0x33 or tag == 0x52 or tag == 0x53


def _entries(extra: Mapping[str, str]) -> bytes:
    """``extra``'s keys and values as hessian2 strings, one after another: map entries."""
    writer = Hessian2Writer()
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"attachment {key!r}: {value!r}: keys and values are strings")
        if key == VIA_KEY:
            raise ValueError(f"{VIA_KEY} is the loop marker's, written last by the egress (find_via)")
        writer.write_string(key)
        writer.write_string(value)
    return writer.getvalue()


def with_attachments(frame: bytes, extra: Mapping[str, str]) -> bytes:
    """A whole hessian2 request frame, header and body, with ``extra`` set in its attachments map.

    The arguments' bytes are copied, not decoded; the map's entries are copied too, but for those
    whose key ``extra`` sets, which are replaced (Dubbo's RpcInvocation.setAttachment overwrites).
    The new entries open the map (``H``, or ``M`` and its type, as the consumer wrote it), so a loop
    marker that ended it still does. A request without a map (Dubbo 2.0.x consumers may send
    none) gets one. Flags, status and request id are kept; the header's body length is written
    for the new body, which is everything after the header: the loop marker's edits leave that
    length to the connection that sends the frame, so the one in the header may be stale. Costs
    one pass over the body.

    Raises ValueError for a frame that is not a hessian2 request invocation (a response, an event
    such as a heartbeat, another serialization), for a malformed body (Hessian2Error, a ValueError)
    or a replaced entry whose value is a container or an object (later values may refer back to
    it), and TypeError for an attachment that is not a string.
    """
    n = len(frame)
    if n < HEADER_LEN or frame[:2] != MAGIC_BYTES:
        raise ValueError(f"not a Dubbo frame: {n} bytes starting {frame[:2].hex()}")
    flag = frame[2]
    if not flag & FLAG_REQUEST:
        raise ValueError("a response has no attachments to set")
    if flag & FLAG_EVENT:
        raise ValueError(
            "an event (a heartbeat or a readonly notice) is no invocation: it has no attachments"
        )
    if flag & SERIALIZATION_MASK != HESSIAN2:
        raise ValueError(
            f"serialization id {flag & SERIALIZATION_MASK}: only hessian2 (2) bodies are edited here"
        )
    added = _entries(extra)
    request = RequestBody(frame, HEADER_LEN)
    start = request._args_end
    nargs = request.argument_count
    # One reader for the arguments and the map: the map's type and values may refer back to the
    # arguments' types, classes and containers. Scalars and strings take no place in its tables,
    # so the fast skip leaves it as reading them would.
    reader = Hessian2Reader(frame, start)
    pos = skip_scalar_args(frame, start, nargs)
    if pos < 0:
        for _ in range(nargs):
            reader.skip_value()
        pos = reader.pos
    # The header's first 12 bytes, its body length (written last), then the body's parts.
    if pos == n:
        parts = [frame[:12], b"", frame[HEADER_LEN:], b"H", added, b"Z"]
    else:
        reader.pos = pos
        reader.enter_map()
        first = reader.pos
        parts = [frame[:12], b"", frame[HEADER_LEN:first], added]
        kept = first  # where the entries not yet copied start
        while True:
            at = reader.pos
            if at >= n:
                raise Hessian2Error(f"attachments: the map ends before its 'Z' (offset {n})")
            tag = frame[at]
            if tag == 0x5A:
                break
            key: str | None = None
            if _string_tag(tag):
                short = _short_ascii(frame, at)
                if short is None:
                    key = reader.read_string()
                else:
                    key, reader.pos = short
            else:
                reader.skip_value()  # not a string: no key of ``extra``
            value_at = reader.pos
            value_end = skip_scalar_args(frame, value_at, 1)
            if value_end < 0:
                reader.skip_value()
            else:
                reader.pos = value_end
            if key is not None and key in extra:
                if frame[value_at] in _NUMBERED:
                    raise ValueError(
                        f"attachment {key!r} holds a container or an object (tag 0x{frame[value_at]:02x}), "
                        "which later values may refer back to: it is not replaced"
                    )
                parts.append(frame[kept:at])
                kept = reader.pos
        if at + 1 != n:
            raise Hessian2Error(f"attachments: {n - at - 1} bytes after the map's 'Z'")
        parts.append(frame[kept:])
    size = 0
    for i in range(2, len(parts)):
        size += len(parts[i])
    parts[1] = _BODY_LEN.pack(size)
    return b"".join(parts)
