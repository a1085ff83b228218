"""Config errors: every problem as a ``key.path: problem`` line, all of them at once, with the file
(and the flag, where one set the key) they came from."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic_core import PydanticCustomError

__all__ = ["ConfigError", "describe", "nested", "with_origins"]


class ConfigError(Exception):
    """The config cannot be used.  ``errors`` holds (key path, problem) pairs; ``str()`` lists them all.

    Not a ValueError on purpose: pydantic turns ValueErrors raised inside validators into its own errors,
    and the cross-field checks below need this one to pass through unchanged.
    """

    def __init__(self, errors: Iterable[tuple[str, str]] | str, source: str | None = None) -> None:
        self.errors: list[tuple[str, str]] = [("", errors)] if isinstance(errors, str) else list(errors)
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"{path}: {problem}" if path else problem for path, problem in self.errors]
        prefix = f"{self.source}: " if self.source else ""
        if len(lines) == 1:
            return prefix + lines[0]
        return f"{prefix}{len(lines)} errors\n" + "\n".join(f"  {line}" for line in lines)


def nested(sub: str, problem: str) -> PydanticCustomError:
    """A problem with ``sub`` inside the value being validated: listed under the key path + sub."""
    return PydanticCustomError("nested", "{sub}: {problem}", {"sub": sub, "problem": problem})


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Our own validators raise PydanticCustomError with complete messages; these built-in types get
# friendlier wording.
_CUSTOM_TYPES = {
    "bool_number",
    "address",
    "registry_url",
    "empty",
    "lb",
    "ip",
    "log_level",
    "token",
    "duration",
    "match",
    "route",
    "subsets",
    "access_log",
    "bool",
}


def describe(err: Mapping[str, Any]) -> tuple[str, str]:
    kind = err["type"]
    path = _path(tuple(err["loc"]))
    if kind == "nested":
        sub = err["ctx"]["sub"]
        return (f"{path}{sub}" if sub.startswith("[") or not path else f"{path}.{sub}"), err["ctx"]["problem"]
    if kind == "extra_forbidden":
        return path, "unknown key"
    if kind == "missing":
        return path, "required key is missing"
    msg = str(err["msg"])
    if kind in _CUSTOM_TYPES:
        return path, msg
    if kind == "value_error" and "error" in err.get("ctx", {}):
        return path, str(err["ctx"]["error"])
    value = err.get("input")
    if isinstance(value, Mapping | list):
        return path, msg
    return path, f"{msg} (got {_short(value)})"


def with_origins(errors: list[tuple[str, str]], origins: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if not origins:
        return errors
    out = []
    for path, problem in errors:
        top = re.split(r"[.\[]", path, maxsplit=1)[0]
        origin = origins.get(top)
        out.append((path, f"{problem} (from {origin})" if origin else problem))
    return out
