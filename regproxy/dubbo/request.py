"""A lazy view of a hessian2 Dubbo request body.

Routing on service, version and method needs only the five leading strings, which are read at
construction (a fast path for the short ASCII strings that real consumers send). The group and the
timeout live in the attachments, after every argument: reaching them means skipping each
argument structurally, so that is done only when ``attachments`` is first asked for.
"""

from __future__ import annotations

from typing import Any

from regproxy.dubbo.hessian2 import Hessian2Error, Hessian2Reader

_PRIMITIVES = frozenset(b"ZBCSIJFD")


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


class RequestBody:
    """The fields of a request body; raises Hessian2Error when the head cannot be read."""

    __slots__ = (
        "_args_end",
        "_attachments",
        "_reader",
        "body",
        "dubbo_version",
        "method",
        "param_types",
        "path",
        "version",
    )

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.dubbo_version, pos = _read_head_string(body, 0)
        self.path, pos = _read_head_string(body, pos)
        self.version, pos = _read_head_string(body, pos)
        self.method, pos = _read_head_string(body, pos)
        self.param_types, pos = _read_head_string(body, pos)
        self._args_end = pos  # becomes the end of the arguments once they are skipped or read
        self._attachments: dict[str, Any] | None = None
        self._reader: Hessian2Reader | None = None

    @property
    def argument_count(self) -> int:
        return count_descriptor(self.param_types)

    def _args_reader(self) -> Hessian2Reader:
        return Hessian2Reader(self.body, self._args_end)

    def arguments(self) -> list[Any]:
        """Decode every argument (the demo provider uses this; the proxy never does)."""
        reader = self._args_reader()
        args = [reader.read_value() for _ in range(self.argument_count)]
        self._reader = reader
        return args

    @property
    def attachments(self) -> dict[str, Any]:
        if self._attachments is None:
            reader = self._reader
            if reader is None:
                reader = self._args_reader()
                for _ in range(self.argument_count):
                    reader.skip_value()
            if reader.at_end():
                self._attachments = {}  # Dubbo 2.0.x consumers may send none
            else:
                value = reader.read_value()
                if not isinstance(value, dict):
                    raise Hessian2Error(f"attachments: expected a map, got {type(value).__name__}")
                self._attachments = value
        return self._attachments

    @property
    def attachments_read(self) -> bool:
        return self._attachments is not None

    @property
    def group(self) -> str:
        group = self.attachments.get("group")
        return group if isinstance(group, str) else ""

    def timeout_ms(self) -> int | None:
        """The consumer's timeout: `timeout` (ms as a string in 3.x, an int in some clients) or `_TO`."""
        att = self.attachments
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

    def __repr__(self) -> str:
        return f"<RequestBody {self.path}:{self.version} {self.method}({self.param_types})>"
