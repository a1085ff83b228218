"""Hessian 2.0 serialization, sans-IO: a reader that decodes or structurally skips values, and a writer
that emits the same compact bytes as Caucho Hessian 4.0.38 (the library Dubbo's hessian-lite forks).

Operations, goals and worst-case cost (n = bytes of input examined):

* ``Hessian2Reader.read_value`` decodes one value: O(n). Chunked strings and binaries are joined once;
  every declared length or count is checked against the bytes that remain before any loop runs, so a
  short hostile input cannot make the reader spin or allocate beyond its own size.
* ``Hessian2Reader.skip_value`` moves past one value without building it: O(n), iterative (no recursion),
  strings are measured in UTF-16 units with C-speed byte scans and never decoded.  Class definitions and
  type names are still recorded, because a later value may refer to a definition that sat inside a
  skipped one (Dubbo: an object argument, then the attachments map).
* ``Hessian2Writer`` encodes Python values: O(size of the output).

Malformed or truncated input raises ``Hessian2Error`` (a ValueError naming the tag and the offset) and
nothing else; after it the reader's state is unspecified.  Nesting deeper than ``MAX_DEPTH`` containers
is refused, by reader and writer alike.

Python mapping: null -> None, boolean -> bool, int -> int, long -> ``Long`` (an int that remembers it was
a Java long, so it is written back as one), double -> float, date -> aware UTC datetime, string -> str,
binary -> bytes, every list form -> list, every map form -> dict, object -> ``JavaObject``.  Back
references resolve to the very same Python object, cycles included.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

__all__ = [
    "MAX_DEPTH",
    "Hessian2Error",
    "Hessian2Reader",
    "Hessian2Writer",
    "JavaObject",
    "Long",
    "decode_value",
    "encode_value",
]

MAX_DEPTH = 256
# Caucho starts a new 'R' chunk every 0x8000 UTF-16 units (one less when the chunk would end on a
# high surrogate).
STRING_CHUNK = 0x8000
# Caucho cuts binaries at the free space of its 8192-byte buffer minus a 3-byte chunk header; for a value
# that starts a buffer that is 8189.  (Mid-stream its cut points depend on how full that buffer happens to
# be; readers accept any cut, so only the fresh-buffer size is reproduced.)
BINARY_CHUNK = 8189

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

_CONTINUATION = bytes(range(0x80, 0xC0))
_FOUR_BYTE_LEADS = bytes(range(0xF0, 0xF8))
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")

# skip_value's per-level state: a count of values still to skip (>= 0) or one of these.
_UNTIL_Z = -1
_MAP_KEY = -2
_MAP_VALUE = -3

# Stands in the reference table for a container that skip_value passed over.
_SKIPPED: Any = object()


class Hessian2Error(ValueError):
    """Malformed, truncated or unrepresentable hessian2 data."""


class Long(int):
    """An int that is (or must be written as) a Java long; a plain int is written as a Java int when it
    fits in 32 bits."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Long({int(self)})"


@dataclass(eq=True)
class JavaObject:
    """A Java object by class name and fields, in declaration order.  An enum constant is an object whose
    only field is ``name``."""

    class_name: str
    fields: dict[str, Any] = field(default_factory=dict)


def _tag_error(message: str, tag: int, pos: int) -> Hessian2Error:
    return Hessian2Error(f"{message} (tag 0x{tag:02x} at offset {pos})")


def _truncated(pos: int) -> Hessian2Error:
    return Hessian2Error(f"unexpected end of input at offset {pos}")


# A string or a binary is a run of chunks, each behind a header in one of three forms that differ
# between the two only in their tags: short (the length is the tag's low bits), medium (2 bits of it in
# the tag, 8 in the next byte) and long (a 16-bit length after the tag, which says whether more chunks
# follow).  Strings count UTF-16 units, binaries bytes.  Per tag: (header size, the length's part in
# the tag, last chunk?), None for a tag of neither kind.
_ChunkHead = tuple[int, int, bool] | None
_ChunkHeads = tuple[_ChunkHead, ...]


def _chunk_heads(short: int, shorts: int, medium: int, last: int, more: int) -> _ChunkHeads:
    heads: list[_ChunkHead] = [None] * 256
    for n in range(shorts):
        heads[short + n] = (1, n, True)
    for n in range(4):
        heads[medium + n] = (2, n << 8, True)
    heads[last] = (3, 0, True)
    heads[more] = (3, 0, False)
    return tuple(heads)


_STRING_HEADS = _chunk_heads(0x00, 32, 0x30, 0x53, 0x52)  # 0x00-0x1f, 0x30-0x33, 'S', 'R'
_BINARY_HEADS = _chunk_heads(0x20, 16, 0x34, 0x42, 0x41)  # 0x20-0x2f, 0x34-0x37, 'B', 'A'


# Errors that can only come from input the explicit checks did not foresee; they are reported as
# Hessian2Error so callers have exactly one exception to handle.
_STRAY = (IndexError, ValueError, OverflowError, RecursionError, TypeError, struct.error)


class Hessian2Reader:
    """Reads hessian2 values from ``data[pos:end]``.  ``pos`` is the public cursor.  One reader holds the
    reference, class-definition and type tables of one stream, so read every value of a Dubbo body with
    the same reader."""

    __slots__ = ("_data", "_defs", "_refs", "_types", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None) -> None:
        if isinstance(data, memoryview):
            data = data.tobytes()
        elif not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"expected bytes, bytearray or memoryview, not {type(data).__name__}")
        size = len(data)
        if end is None:
            end = size
        if not 0 <= pos <= end <= size:
            raise ValueError(f"bad window pos={pos} end={end} for {size} bytes")
        self._data = data
        self.pos = pos
        self.end = end
        self._refs: list[Any] = []
        self._defs: list[tuple[str, tuple[str, ...]]] = []
        self._types: list[str] = []

    # ------------------------------------------------------------------ public API

    def at_end(self) -> bool:
        return self.pos >= self.end

    def read_value(self) -> Any:
        try:
            return self._read(0)
        except Hessian2Error:
            raise
        except _STRAY as exc:
            raise self._stray(exc) from exc

    @overload
    def read_string(self) -> str: ...
    @overload
    def read_string(self, allow_null: Literal[False]) -> str: ...
    @overload
    def read_string(self, allow_null: bool) -> str | None: ...

    def read_string(self, allow_null: bool = False) -> str | None:
        """A string value; null is refused unless ``allow_null`` (then None)."""
        try:
            pos = self.pos
            if allow_null and pos < self.end and self._data[pos] == 0x4E:
                self.pos = pos + 1
                return None
            text, self.pos = self._string_at(pos)
            return text
        except Hessian2Error:
            raise
        except _STRAY as exc:
            raise self._stray(exc) from exc

    def read_int(self) -> int:
        """An int or long value, as a plain int."""
        try:
            value, self.pos = self._int_at(self.pos)
            return value
        except Hessian2Error:
            raise
        except _STRAY as exc:
            raise self._stray(exc) from exc

    def read_map_as_dict(self) -> dict[Any, Any]:
        """A map value (``H``/``M`` ... ``Z``), as a dict; null reads as an empty dict because Dubbo
        writes null attachments that way."""
        try:
            pos = self.pos
            if pos >= self.end:
                raise _truncated(pos)
            tag = self._data[pos]
            if tag == 0x4E:
                self.pos = pos + 1
                return {}
            if tag != 0x48 and tag != 0x4D:
                raise _tag_error("expected a map", tag, pos)
            result: dict[Any, Any] = self._r_map(tag, pos + 1, 0)
            return result
        except Hessian2Error:
            raise
        except _STRAY as exc:
            raise self._stray(exc) from exc

    def enter_map(self) -> None:
        """Move past the opening of a map (``H``, or ``M`` and its type) to its first key, recording the
        map and its type as skipping it would.  The caller then goes through the entries (reading or
        skipping each key and value) up to the closing ``Z``: how a map is edited without decoding its
        values (regproxy.dubbo.request.with_attachments)."""
        try:
            pos = self.pos
            if pos >= self.end:
                raise _truncated(pos)
            tag = self._data[pos]
            if tag == 0x48:
                pos += 1
            elif tag == 0x4D:
                pos = self._type_at(pos + 1)
            else:
                raise _tag_error("expected a map", tag, pos)
            self._refs.append(_SKIPPED)
            self.pos = pos
        except Hessian2Error:
            raise
        except _STRAY as exc:
            raise self._stray(exc) from exc

    def skip_value(self) -> None:
        try:
            self._skip()
        except Hessian2Error:
            raise
        except _STRAY as exc:
            raise self._stray(exc) from exc

    # ------------------------------------------------------------------ shared low-level pieces

    def _stray(self, exc: BaseException) -> Hessian2Error:
        return Hessian2Error(f"malformed hessian2 data near offset {self.pos}: {exc!r}")

    def _int_at(self, pos: int) -> tuple[int, int]:
        """An int or long at ``pos`` (any encoding); returns (value, position after it)."""
        data = self._data
        end = self.end
        if pos >= end:
            raise _truncated(pos)
        tag = data[pos]
        if 0x80 <= tag <= 0xBF:
            return tag - 0x90, pos + 1
        if 0xC0 <= tag <= 0xCF or tag >= 0xF0:
            if pos + 2 > end:
                raise _tag_error("truncated int", tag, pos)
            return ((tag - (0xC8 if tag <= 0xCF else 0xF8)) << 8) + data[pos + 1], pos + 2
        if 0xD0 <= tag <= 0xD7 or 0x38 <= tag <= 0x3F:
            if pos + 3 > end:
                raise _tag_error("truncated int", tag, pos)
            base = 0xD4 if tag >= 0xD0 else 0x3C
            return ((tag - base) << 16) + (data[pos + 1] << 8) + data[pos + 2], pos + 3
        if 0xD8 <= tag <= 0xEF:
            return tag - 0xE0, pos + 1
        if tag == 0x49 or tag == 0x59:
            if pos + 5 > end:
                raise _tag_error("truncated int", tag, pos)
            return _I32.unpack_from(data, pos + 1)[0], pos + 5
        if tag == 0x4C:
            if pos + 9 > end:
                raise _tag_error("truncated long", tag, pos)
            return _I64.unpack_from(data, pos + 1)[0], pos + 9
        raise _tag_error("expected an int", tag, pos)

    def _count_at(self, pos: int) -> tuple[int, int]:
        """A length or field count; each counted item takes at least one byte, so anything larger than
        what remains is refused before a loop runs."""
        n, after = self._int_at(pos)
        if n < 0 or n > self.end - after:
            raise Hessian2Error(f"count {n} at offset {pos} does not fit the {self.end - after} bytes left")
        return n, after

    def _utf8_span(self, pos: int, units: int) -> int:
        """End offset of ``units`` UTF-16 units of UTF-8 starting at ``pos``.

        Counts lead bytes (every byte that is not 10xxxxxx) window by window at C speed: a window of
        ``need`` bytes holds at most ``need`` leads, so no window overshoots and every byte is scanned
        once.  A 4-byte sequence (non-BMP written as real UTF-8, which Java never sends but some
        writers do) counts two units.  Validity of the text itself is left to the decoder."""
        data = self._data
        end = self.end
        p = pos
        need = units
        while need > 0:
            q = p + need
            if q > end:
                raise Hessian2Error(f"string of {units} units at offset {pos} runs past the end")
            window = data[p:q]
            if window.isascii():
                return q
            leads = window.translate(None, _CONTINUATION)
            need -= 2 * len(leads) - len(leads.translate(None, _FOUR_BYTE_LEADS))
            p = q
        if need < 0:
            raise Hessian2Error(f"string at offset {pos}: a 4-byte UTF-8 sequence crosses its length")
        if units == 0:
            return pos
        # The last lead of the last window starts the final character: include its continuation bytes.
        k = p - 1
        while 0x80 <= data[k] < 0xC0:
            k -= 1
        lead = data[k]
        stop = k + (1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4 if lead < 0xF8 else 1)
        if stop > end:
            raise Hessian2Error(f"string of {units} units at offset {pos} runs past the end")
        if stop < p:
            raise Hessian2Error(f"string at offset {pos}: stray UTF-8 continuation bytes at offset {stop}")
        return stop

    def _string_at(self, pos: int) -> tuple[str, int]:
        """A string (all chunks) at ``pos``; returns (text, position after it)."""
        data = self._data
        end = self.end
        if pos >= end:
            raise _truncated(pos)
        tag = data[pos]
        if tag < 0x20:  # the common case: short ASCII
            q = pos + 1 + tag
            if q <= end:
                chunk = data[pos + 1 : q]
                if chunk.isascii():
                    return chunk.decode("ascii"), q
        parts: list[bytes | bytearray] = []
        pos = self._chunks_end(pos, _STRING_HEADS, parts)
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            text: str = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise Hessian2Error(f"invalid UTF-8 in string ending at offset {pos}: {exc.reason}") from None
        if 0xED in raw:
            # Java writes a non-BMP character as two 3-byte surrogates (possibly in different chunks);
            # a UTF-16 round trip joins every valid pair and keeps lone surrogates as they are.
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return text, pos

    def _binary_at(self, pos: int) -> tuple[bytes, int]:
        parts: list[bytes | bytearray] = []
        pos = self._chunks_end(pos, _BINARY_HEADS, parts)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts), pos

    def _chunks_end(self, pos: int, heads: _ChunkHeads, parts: list[bytes | bytearray] | None) -> int:
        """Where the string (``heads`` is _STRING_HEADS) or binary (_BINARY_HEADS) at ``pos`` ends, all
        its chunks; each chunk's content is appended to ``parts`` unless that is None (a skip).

        The one reader of chunk headers.  Only the short forms, whose tag alone gives the length, are
        also read inline where most values are one (``_string_at``, ``_class_defs_at``, ``_skip``).
        Header and content are read in one loop, not by a function per chunk, and the headers are
        looked up, not compared tag by tag: either made skipping medium and long strings and
        binaries 15-25 % slower."""
        data = self._data
        end = self.end
        string = heads is _STRING_HEADS
        start = pos
        while True:
            if pos >= end:
                raise _truncated(pos)
            tag = data[pos]
            head = heads[tag]
            if head is None:
                what = f"expected a {'string' if string else 'binary'}"
                raise _tag_error(what if pos == start else f"{what} chunk", tag, pos)
            size, n, final = head
            if size != 1:
                if pos + size > end:
                    raise _tag_error(f"truncated {'string' if string else 'binary'} length", tag, pos)
                n = n + data[pos + 1] if size == 2 else (data[pos + 1] << 8) + data[pos + 2]
            pos += size
            q = pos + n
            if string:
                chunk = data[pos:q]
                if q > end or not chunk.isascii():
                    q = self._utf8_span(pos, n)
                    if parts is not None:
                        parts.append(data[pos:q])
                elif parts is not None:
                    parts.append(chunk)
            elif q > end:
                raise Hessian2Error(f"binary of {n} bytes at offset {pos} runs past the end")
            elif parts is not None:
                parts.append(data[pos:q])
            pos = q
            if final:
                return pos

    def _type_at(self, pos: int) -> int:
        """A list/map type: a string (added to the type table) or an int index into that table."""
        if pos >= self.end:
            raise _truncated(pos)
        if _STRING_HEADS[self._data[pos]] is not None:
            name, pos = self._string_at(pos)
            self._types.append(name)
            return pos
        index, after = self._int_at(pos)
        if not 0 <= index < len(self._types):
            raise Hessian2Error(f"type reference {index} at offset {pos} is not in the type table")
        return after

    def _class_defs_at(self, pos: int) -> int:
        """One or more class definitions ('C' name count field-name*) starting with the 'C' at ``pos``;
        returns the position of the value that follows them."""
        data = self._data
        end = self.end
        while pos < end and data[pos] == 0x43:
            name, pos = self._string_at(pos + 1)
            count, pos = self._count_at(pos)
            names = []
            for _ in range(count):
                # Field names are short ASCII in practice; decoding them inline keeps a definition cheap
                # on skip_value's hot path.
                tag = data[pos] if pos < end else 0xFF
                q = pos + 1 + tag
                if tag < 0x20 and q <= end:
                    chunk = data[pos + 1 : q]
                    if chunk.isascii():
                        names.append(chunk.decode("ascii"))
                        pos = q
                        continue
                field_name, pos = self._string_at(pos)
                names.append(field_name)
            self._defs.append((name, tuple(names)))
        if pos >= end:
            raise Hessian2Error(f"class definition at offset {pos} is not followed by a value")
        return pos

    def _object_def(self, tag: int, pos: int) -> tuple[tuple[str, tuple[str, ...]], int]:
        """Definition used by the object whose tag is at ``pos - 1``; returns (def, position after)."""
        if tag == 0x4F:
            index, after = self._int_at(pos)
        else:
            index, after = tag - 0x60, pos
        if not 0 <= index < len(self._defs):
            raise _tag_error(f"object uses undefined class definition {index}", tag, pos - 1)
        return self._defs[index], after

    def _ref_at(self, pos: int) -> tuple[int, int]:
        index, after = self._int_at(pos)
        if not 0 <= index < len(self._refs):
            raise Hessian2Error(
                f"back-reference {index} at offset {pos - 1} points past the "
                f"{len(self._refs)} values read so far"
            )
        return index, after

    # ------------------------------------------------------------------ read_value

    def _read(self, depth: int) -> Any:
        pos = self.pos
        if pos >= self.end:
            raise _truncated(pos)
        tag = self._data[pos]
        return _READERS[tag](self, tag, pos + 1, depth)

    # Every _r_* handler gets the tag and the position just after it, and leaves self.pos after the value.

    def _r_null(self, tag: int, pos: int, depth: int) -> None:
        self.pos = pos

    def _r_true(self, tag: int, pos: int, depth: int) -> bool:
        self.pos = pos
        return True

    def _r_false(self, tag: int, pos: int, depth: int) -> bool:
        self.pos = pos
        return False

    def _r_tiny_int(self, tag: int, pos: int, depth: int) -> int:
        self.pos = pos
        return tag - 0x90

    def _r_int(self, tag: int, pos: int, depth: int) -> int:
        value, self.pos = self._int_at(pos - 1)
        return value

    def _r_long(self, tag: int, pos: int, depth: int) -> Long:
        value, self.pos = self._int_at(pos - 1)
        return Long(value)

    def _r_double(self, tag: int, pos: int, depth: int) -> float:
        data = self._data
        size = _DOUBLE_SIZES[tag - 0x5B] if tag != 0x44 else 8
        if pos + size > self.end:
            raise _tag_error("truncated double", tag, pos - 1)
        self.pos = pos + size
        if tag == 0x44:
            return float(_F64.unpack_from(data, pos)[0])
        if tag == 0x5B:
            return 0.0
        if tag == 0x5C:
            return 1.0
        if tag == 0x5D:
            return float(data[pos] - 256 if data[pos] >= 0x80 else data[pos])
        if tag == 0x5E:
            return float(_I16.unpack_from(data, pos)[0])
        # 0x5f: an int of thousandths, scaled the way Caucho does it
        return 0.001 * _I32.unpack_from(data, pos)[0]

    def _r_date(self, tag: int, pos: int, depth: int) -> datetime:
        if tag == 0x4A:
            if pos + 8 > self.end:
                raise _tag_error("truncated date", tag, pos - 1)
            millis = _I64.unpack_from(self._data, pos)[0]
            self.pos = pos + 8
        else:
            if pos + 4 > self.end:
                raise _tag_error("truncated date", tag, pos - 1)
            millis = _I32.unpack_from(self._data, pos)[0] * 60000
            self.pos = pos + 4
        try:
            return _EPOCH + timedelta(milliseconds=millis)
        except OverflowError:
            raise _tag_error(
                f"date {millis} ms from the epoch is outside Python's datetime range", tag, pos - 1
            ) from None

    def _r_string(self, tag: int, pos: int, depth: int) -> str:
        text, self.pos = self._string_at(pos - 1)
        return text

    def _r_binary(self, tag: int, pos: int, depth: int) -> bytes:
        value, self.pos = self._binary_at(pos - 1)
        return value

    def _r_list(self, tag: int, pos: int, depth: int) -> list[Any]:
        if depth >= MAX_DEPTH:
            raise _tag_error(f"nesting deeper than {MAX_DEPTH}", tag, pos - 1)
        if tag >= 0x70:
            count = tag & 7
            if tag < 0x78:
                pos = self._type_at(pos)
        elif tag == 0x55:
            pos = self._type_at(pos)
            count = -1
        elif tag == 0x56:
            count, pos = self._count_at(self._type_at(pos))
        elif tag == 0x57:
            count = -1
        else:  # 0x58
            count, pos = self._count_at(pos)
        items: list[Any] = []
        self._refs.append(items)
        self.pos = pos
        depth += 1
        if count >= 0:
            for _ in range(count):
                items.append(self._read(depth))
            return items
        data = self._data
        while True:
            p = self.pos
            if p >= self.end:
                raise _truncated(p)
            if data[p] == 0x5A:
                self.pos = p + 1
                return items
            items.append(self._read(depth))

    def _r_map(self, tag: int, pos: int, depth: int) -> dict[Any, Any]:
        if depth >= MAX_DEPTH:
            raise _tag_error(f"nesting deeper than {MAX_DEPTH}", tag, pos - 1)
        if tag == 0x4D:
            pos = self._type_at(pos)
        result: dict[Any, Any] = {}
        self._refs.append(result)
        self.pos = pos
        depth += 1
        data = self._data
        while True:
            p = self.pos
            if p >= self.end:
                raise _truncated(p)
            if data[p] == 0x5A:
                self.pos = p + 1
                return result
            key = self._read(depth)
            value = self._read(depth)
            try:
                result[key] = value
            except TypeError:
                raise Hessian2Error(
                    f"map key at offset {p} is a {type(key).__name__}, which Python cannot use as a dict key"
                ) from None

    def _r_object(self, tag: int, pos: int, depth: int) -> JavaObject:
        if depth >= MAX_DEPTH:
            raise _tag_error(f"nesting deeper than {MAX_DEPTH}", tag, pos - 1)
        (class_name, names), pos = self._object_def(tag, pos)
        obj = JavaObject(class_name, {})
        # Registered before the fields are read, so a field that refers back gets this very object.
        self._refs.append(obj)
        self.pos = pos
        fields = obj.fields
        depth += 1
        for name in names:
            fields[name] = self._read(depth)
        return obj

    def _r_class_def(self, tag: int, pos: int, depth: int) -> Any:
        # A definition is a prefix of the value that follows it; loop rather than recurse so a long run
        # of definitions costs no stack.
        pos = self._class_defs_at(pos - 1)
        tag = self._data[pos]
        return _READERS[tag](self, tag, pos + 1, depth)

    def _r_ref(self, tag: int, pos: int, depth: int) -> Any:
        index, self.pos = self._ref_at(pos)
        value = self._refs[index]
        if value is _SKIPPED:
            raise _tag_error(
                f"back-reference {index} points to a value that was skipped, not read", tag, pos - 1
            )
        return value

    def _r_end(self, tag: int, pos: int, depth: int) -> Any:
        raise _tag_error("'Z' (end of list/map) where a value was expected", tag, pos - 1)

    def _r_reserved(self, tag: int, pos: int, depth: int) -> Any:
        raise _tag_error("unknown hessian2 tag", tag, pos - 1)

    # ------------------------------------------------------------------ skip_value

    def _skip(self) -> None:
        """Iterative structural skip.  ``left`` is what remains of the innermost open container: a count
        of values, or _UNTIL_Z (list) / _MAP_KEY / _MAP_VALUE (map); ``stack`` holds the outer ones."""
        data = self._data
        end = self.end
        pos = self.pos
        refs = self._refs
        stack: list[int] = []
        left = 1
        while True:
            if left == 0:
                if not stack:
                    break
                left = stack.pop()
                continue
            if pos >= end:
                raise _truncated(pos)
            tag = data[pos]
            if tag == 0x43:
                pos = self._class_defs_at(pos)
                tag = data[pos]
                if tag == 0x5A:
                    raise _tag_error("class definition followed by 'Z' instead of a value", tag, pos)
            elif tag == 0x5A:
                if left in (_UNTIL_Z, _MAP_KEY):
                    pos += 1
                    left = stack.pop()
                    continue
                raise _tag_error("'Z' (end of list/map) where a value was expected", tag, pos)
            # A value of the current level starts here.
            if left > 0:
                left -= 1
            elif left == _MAP_KEY:
                left = _MAP_VALUE
            elif left == _MAP_VALUE:
                left = _MAP_KEY
            start = pos
            pos += 1
            if tag < 0x20:  # short string
                q = pos + tag
                if q > end or not data[pos:q].isascii():
                    q = self._utf8_span(pos, tag)
                pos = q
            elif tag >= 0x80:  # ints and longs
                if tag < 0xC0 or 0xD8 <= tag < 0xF0:
                    pass
                elif tag < 0xD0 or tag >= 0xF0:
                    pos += 1
                else:
                    pos += 2
            elif tag < 0x30:  # short binary
                pos += tag - 0x20
            elif tag < 0x34:
                pos = self._chunks_end(start, _STRING_HEADS, None)
            elif tag < 0x38:
                pos = self._chunks_end(start, _BINARY_HEADS, None)
            elif tag < 0x40:  # 3-byte long
                pos += 2
            elif tag >= 0x60:
                if tag < 0x70:
                    count = len(self._object_def(tag, pos)[0][1])
                else:
                    if tag < 0x78:
                        pos = self._type_at(pos)
                    count = tag & 7
                if len(stack) >= MAX_DEPTH:
                    raise _tag_error(f"nesting deeper than {MAX_DEPTH}", tag, start)
                stack.append(left)
                left = count
                refs.append(_SKIPPED)
            else:
                size = _SKIP_FIXED[tag - 0x40]
                if size >= 0:
                    pos += size
                elif tag == 0x53 or tag == 0x52:
                    pos = self._chunks_end(start, _STRING_HEADS, None)
                elif tag == 0x42 or tag == 0x41:
                    pos = self._chunks_end(start, _BINARY_HEADS, None)
                elif tag == 0x51:
                    pos = self._ref_at(pos)[1]
                else:
                    if tag == 0x48:
                        count = _MAP_KEY
                    elif tag == 0x4D:
                        pos = self._type_at(pos)
                        count = _MAP_KEY
                    elif tag == 0x57:
                        count = _UNTIL_Z
                    elif tag == 0x55:
                        pos = self._type_at(pos)
                        count = _UNTIL_Z
                    elif tag == 0x56:
                        count, pos = self._count_at(self._type_at(pos))
                    elif tag == 0x58:
                        count, pos = self._count_at(pos)
                    elif tag == 0x4F:
                        definition, pos = self._object_def(tag, pos)
                        count = len(definition[1])
                    else:
                        raise _tag_error("unknown hessian2 tag", tag, start)
                    if len(stack) >= MAX_DEPTH:
                        raise _tag_error(f"nesting deeper than {MAX_DEPTH}", tag, start)
                    stack.append(left)
                    left = count
                    refs.append(_SKIPPED)
            if pos > end:
                raise _tag_error("value runs past the end of input", tag, start)
        self.pos = pos


# Bytes after the tag for fixed-size values among tags 0x40-0x5f; -1 = not fixed-size (handled apart).
_SKIP_FIXED = [-1] * 0x20
for _tag, _size in (
    (0x44, 8),
    (0x46, 0),
    (0x49, 4),
    (0x4A, 8),
    (0x4B, 4),
    (0x4C, 8),
    (0x4E, 0),
    (0x54, 0),
    (0x59, 4),
    (0x5B, 0),
    (0x5C, 0),
    (0x5D, 1),
    (0x5E, 2),
    (0x5F, 4),
):
    _SKIP_FIXED[_tag - 0x40] = _size
_DOUBLE_SIZES = (0, 0, 1, 2, 4)  # tags 0x5b..0x5f

_Handler = Callable[[Hessian2Reader, int, int, int], Any]


def _build_readers() -> tuple[_Handler, ...]:
    r = Hessian2Reader
    table: list[_Handler] = [r._r_reserved] * 256
    spans: list[tuple[int, int, _Handler]] = [
        (0x00, 0x1F, r._r_string),
        (0x20, 0x2F, r._r_binary),
        (0x30, 0x33, r._r_string),
        (0x34, 0x37, r._r_binary),
        (0x38, 0x3F, r._r_long),
        (0x60, 0x6F, r._r_object),
        (0x70, 0x7F, r._r_list),
        (0x80, 0xBF, r._r_tiny_int),
        (0xC0, 0xD7, r._r_int),
        (0xD8, 0xFF, r._r_long),
        (0x5B, 0x5F, r._r_double),
    ]
    for low, high, handler in spans:
        for t in range(low, high + 1):
            table[t] = handler
    singles: dict[int, _Handler] = {
        0x41: r._r_binary,
        0x42: r._r_binary,
        0x43: r._r_class_def,
        0x44: r._r_double,
        0x46: r._r_false,
        0x48: r._r_map,
        0x49: r._r_int,
        0x4A: r._r_date,
        0x4B: r._r_date,
        0x4C: r._r_long,
        0x4D: r._r_map,
        0x4E: r._r_null,
        0x4F: r._r_object,
        0x51: r._r_ref,
        0x52: r._r_string,
        0x53: r._r_string,
        0x54: r._r_true,
        0x55: r._r_list,
        0x56: r._r_list,
        0x57: r._r_list,
        0x58: r._r_list,
        0x59: r._r_long,
        0x5A: r._r_end,
    }
    for t, handler in singles.items():
        table[t] = handler
    return tuple(table)


_READERS = _build_readers()


# ---------------------------------------------------------------------- writer


def _java_d2i(x: float) -> int:
    """Java's (int) cast of a double: NaN -> 0, saturating, truncating toward zero."""
    if x != x:
        return 0
    if x >= 2147483647.0:
        return 2147483647
    if x <= -2147483648.0:
        return -2147483648
    return int(x)


def _split_pair(match: re.Match[str]) -> str:
    cp = ord(match.group()) - 0x10000
    return chr(0xD800 + (cp >> 10)) + chr(0xDC00 + (cp & 0x3FF))


class Hessian2Writer:
    """Encodes values into one hessian2 stream.  Class definitions are written once per writer and
    lists, maps and objects seen again (by identity) are written as back-references, like Caucho."""

    __slots__ = ("_buf", "_defs", "_depth", "_keep", "_refs")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._defs: dict[tuple[str, tuple[str, ...]], int] = {}
        self._refs: dict[int, int] = {}
        self._keep: list[Any] = []  # keeps referenced objects alive so their id() stays theirs
        self._depth = 0

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def write_value(self, value: Any) -> None:
        writer = _WRITERS.get(type(value))
        if writer is None:
            writer = _writer_for(value)
        writer(self, value)

    def write_null(self, value: None = None) -> None:
        self._buf.append(0x4E)

    def write_bool(self, value: bool) -> None:
        self._buf.append(0x54 if value else 0x46)

    def write_int(self, value: int) -> None:
        """A Java int (32-bit)."""
        buf = self._buf
        if -16 <= value <= 47:
            buf.append(0x90 + value)
        elif -2048 <= value <= 2047:
            buf += bytes((0xC8 + (value >> 8), value & 0xFF))
        elif -262144 <= value <= 262143:
            buf += bytes((0xD4 + (value >> 16), (value >> 8) & 0xFF, value & 0xFF))
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            buf.append(0x49)
            buf += _I32.pack(value)
        else:
            raise Hessian2Error(f"{value} does not fit a Java int")

    def write_long(self, value: int) -> None:
        """A Java long (64-bit)."""
        buf = self._buf
        if -8 <= value <= 15:
            buf.append(0xE0 + value)
        elif -2048 <= value <= 2047:
            buf += bytes((0xF8 + (value >> 8), value & 0xFF))
        elif -262144 <= value <= 262143:
            buf += bytes((0x3C + (value >> 16), (value >> 8) & 0xFF, value & 0xFF))
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            buf.append(0x59)
            buf += _I32.pack(value)
        elif -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
            buf.append(0x4C)
            buf += _I64.pack(value)
        else:
            raise Hessian2Error(f"{value} does not fit a Java long")

    def _write_number(self, value: int) -> None:
        if -0x80000000 <= value <= 0x7FFFFFFF:
            self.write_int(value)
        else:
            self.write_long(value)

    def write_double(self, value: float) -> None:
        # Caucho's choice of form, cast for cast: small integral values get 0x5b-0x5e, values whose
        # thousandths survive a round trip through a Java int get 0x5f, the rest 'D'.
        buf = self._buf
        as_int = _java_d2i(value)
        if as_int == value:
            if as_int == 0:
                buf.append(0x5B)
                return
            if as_int == 1:
                buf.append(0x5C)
                return
            if -0x80 <= as_int < 0x80:
                buf += bytes((0x5D, as_int & 0xFF))
                return
            if -0x8000 <= as_int < 0x8000:
                buf.append(0x5E)
                buf += _I16.pack(as_int)
                return
        mills = _java_d2i(value * 1000)
        if 0.001 * mills == value:
            buf.append(0x5F)
            buf += _I32.pack(mills)
            return
        buf.append(0x44)
        buf += _F64.pack(value)

    def write_date(self, value: datetime) -> None:
        """A java.util.Date; a naive datetime is taken as UTC."""
        epoch = _EPOCH if value.tzinfo is not None else _EPOCH_NAIVE
        millis = (value - epoch) // _ONE_MS
        if millis % 60000 == 0 and -0x80000000 <= millis // 60000 <= 0x7FFFFFFF:
            self._buf.append(0x4B)
            self._buf += _I32.pack(millis // 60000)
        else:
            self._buf.append(0x4A)
            self._buf += _I64.pack(millis)

    def write_string(self, value: str) -> None:
        if value.isascii():
            raw = value.encode("ascii")
            size = len(raw)
            if size <= STRING_CHUNK:
                self._string_part(raw, size, final=True)
                return
            start = 0
            while size - start > STRING_CHUNK:
                self._string_part(raw[start : start + STRING_CHUNK], STRING_CHUNK, final=False)
                start += STRING_CHUNK
            self._string_part(raw[start:], size - start, final=True)
            return
        if _NON_BMP.search(value):
            # Java strings are UTF-16: a non-BMP character is a surrogate pair, and each surrogate is
            # written as its own 3-byte sequence.  Splitting first makes one Python char one unit.
            value = _NON_BMP.sub(_split_pair, value)
        size = len(value)
        start = 0
        while size - start > STRING_CHUNK:
            count = STRING_CHUNK
            if "\ud800" <= value[start + count - 1] <= "\udbff":
                count -= 1  # Caucho never ends a chunk on a high surrogate
            raw = value[start : start + count].encode("utf-8", "surrogatepass")
            self._string_part(raw, count, final=False)
            start += count
        self._string_part(value[start:].encode("utf-8", "surrogatepass"), size - start, final=True)

    def _string_part(self, raw: bytes, units: int, *, final: bool) -> None:
        buf = self._buf
        if not final:
            buf += bytes((0x52, units >> 8, units & 0xFF))
        elif units <= 31:
            buf.append(units)
        elif units <= 1023:
            buf += bytes((0x30 + (units >> 8), units & 0xFF))
        else:
            buf += bytes((0x53, units >> 8, units & 0xFF))
        buf += raw

    def write_bytes(self, value: bytes | bytearray | memoryview) -> None:
        raw = bytes(value)
        buf = self._buf
        size = len(raw)
        start = 0
        while size - start > BINARY_CHUNK:
            buf += bytes((0x41, BINARY_CHUNK >> 8, BINARY_CHUNK & 0xFF))
            buf += raw[start : start + BINARY_CHUNK]
            start += BINARY_CHUNK
        rest = size - start
        if rest <= 15:
            buf.append(0x20 + rest)
        elif rest <= 1023:
            buf += bytes((0x34 + (rest >> 8), rest & 0xFF))
        else:
            buf += bytes((0x42, rest >> 8, rest & 0xFF))
        buf += raw[start:]

    def _seen(self, obj: Any) -> bool:
        """Writes a back-reference and returns True if ``obj`` was written before; else registers it."""
        index = self._refs.get(id(obj))
        if index is not None:
            self._buf.append(0x51)
            self.write_int(index)
            return True
        self._refs[id(obj)] = len(self._refs)
        self._keep.append(obj)
        return False

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise Hessian2Error(f"value nests deeper than {MAX_DEPTH} containers")

    def write_list(self, value: list[Any] | tuple[Any, ...]) -> None:
        """An untyped list (like a java.util.ArrayList)."""
        if self._seen(value):
            return
        size = len(value)
        if size <= 7:
            self._buf.append(0x78 + size)
        else:
            self._buf.append(0x58)
            self.write_int(size)
        self._enter()
        try:
            for item in value:
                self.write_value(item)
        finally:
            self._depth -= 1

    def write_map(self, value: Mapping[Any, Any]) -> None:
        """An untyped map (like a java.util.HashMap)."""
        if self._seen(value):
            return
        self._buf.append(0x48)
        self._enter()
        try:
            for key, item in value.items():
                self.write_value(key)
                self.write_value(item)
        finally:
            self._depth -= 1
        self._buf.append(0x5A)

    def write_object(self, value: JavaObject) -> None:
        if self._seen(value):
            return
        names = tuple(value.fields)
        key = (value.class_name, names)
        index = self._defs.get(key)
        if index is None:
            for name in names:
                if not isinstance(name, str):
                    raise TypeError(
                        f"field names of {value.class_name} must be str, not {type(name).__name__}"
                    )
            index = len(self._defs)
            self._defs[key] = index
            self._buf.append(0x43)
            self.write_string(value.class_name)
            self.write_int(len(names))
            for name in names:
                self.write_string(name)
        if index <= 15:
            self._buf.append(0x60 + index)
        else:
            self._buf.append(0x4F)
            self.write_int(index)
        self._enter()
        try:
            for item in value.fields.values():
                self.write_value(item)
        finally:
            self._depth -= 1


_Writer = Callable[[Hessian2Writer, Any], None]

_WRITERS: dict[type, _Writer] = {
    type(None): Hessian2Writer.write_null,
    bool: Hessian2Writer.write_bool,
    int: Hessian2Writer._write_number,
    Long: Hessian2Writer.write_long,
    float: Hessian2Writer.write_double,
    str: Hessian2Writer.write_string,
    bytes: Hessian2Writer.write_bytes,
    bytearray: Hessian2Writer.write_bytes,
    memoryview: Hessian2Writer.write_bytes,
    list: Hessian2Writer.write_list,
    tuple: Hessian2Writer.write_list,
    dict: Hessian2Writer.write_map,
    JavaObject: Hessian2Writer.write_object,
    datetime: Hessian2Writer.write_date,
}


def _writer_for(value: Any) -> _Writer:
    """Subclasses of the supported types (checked most specific first)."""
    checks: tuple[tuple[type | tuple[type, ...], _Writer], ...] = (
        (bool, Hessian2Writer.write_bool),
        (Long, Hessian2Writer.write_long),
        (int, Hessian2Writer._write_number),
        (float, Hessian2Writer.write_double),
        (str, Hessian2Writer.write_string),
        ((bytes, bytearray, memoryview), Hessian2Writer.write_bytes),
        (datetime, Hessian2Writer.write_date),
        (JavaObject, Hessian2Writer.write_object),
        (Mapping, Hessian2Writer.write_map),
        ((list, tuple), Hessian2Writer.write_list),
    )
    for kind, writer in checks:
        if isinstance(value, kind):
            return writer
    raise TypeError(f"cannot encode {type(value).__name__} as hessian2")


def encode_value(value: Any) -> bytes:
    """One value, encoded by a fresh writer."""
    writer = Hessian2Writer()
    writer.write_value(value)
    return writer.getvalue()


def decode_value(data: bytes | bytearray | memoryview) -> Any:
    """Exactly one value; trailing bytes are an error."""
    reader = Hessian2Reader(data)
    value = reader.read_value()
    if not reader.at_end():
        raise Hessian2Error(f"{reader.end - reader.pos} trailing bytes after the value at {reader.pos}")
    return value
