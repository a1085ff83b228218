"""Reading a governance rule document: YAML text in, typed fields out, every mistake a RuleError.

Dubbo reads its rules with SnakeYAML into plain maps and then casts (``(String) map.get("key")``),
converts (``Boolean.parseBoolean(value.toString())``, ``Integer.parseInt(value.toString())``) or
ignores what it does not know (unknown keys, a list where a map was expected).  A cast that fails
makes Dubbo drop the whole rule; an ignored key silently changes what the rule means.  Here both
are errors that name the field, so an operator learns what Dubbo would have done with the rule:

* a field Dubbo casts to a string must be a string (``key: 123`` fails in Dubbo too);
* booleans are YAML booleans or the strings ``true``/``false`` in any case (``Boolean.parseBoolean``
  of anything else is false, which is never what ``enabled: yes`` meant);
* integers are YAML integers or decimal strings within Java's ``int``;
* a key Dubbo does not read is refused (``unknown-field``), naming the keys it does read.

The ``RuleError.reason`` labels the governance parsers use: ``yaml`` (not one YAML document),
``type`` (a field of the wrong type), ``unknown-field``, ``missing-field``, ``value`` (a value
Dubbo would misread), ``version`` (a ``configVersion`` regproxy does not take, or a field that
version ignores), ``regex``, ``address`` (an address or CIDR that can never match) and ``url``
(an override URL that is not one).
"""

from __future__ import annotations

from typing import Any

import yaml

from regproxy import yamlio

from .errors import RuleError

__all__ = ["JAVA_INT_MAX", "JAVA_INT_MIN", "Fields", "java_string", "load_document"]

JAVA_INT_MIN = -(2**31)
JAVA_INT_MAX = 2**31 - 1


def load_document(text: str) -> Any:
    """The one YAML (or JSON) document in ``text``; RuleError(reason="yaml") when it is not one."""
    try:
        return yamlio.load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"not YAML: {exc}", reason="yaml") from exc


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def java_string(value: Any, where: str) -> str:
    """A scalar as Dubbo's ``value.toString()`` writes it: strings as they are, integers in decimal,
    booleans ``true``/``false``.  Floats are refused: Java writes ``1.0E10`` where Python writes
    ``10000000000.0``, and no parameter Dubbo reads is a float."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise RuleError(f"{where} must be a string or an integer, not {_kind(value)}", reason="type")


class Fields:
    """One mapping of a rule document, with the path that names it in messages (``configs[1].match``)."""

    __slots__ = ("_data", "where")

    def __init__(self, data: Any, where: str, known: frozenset[str]) -> None:
        if not isinstance(data, dict):
            raise RuleError(f"{where or 'the rule'} must be a mapping, not {_kind(data)}", reason="type")
        for key in data:
            if not isinstance(key, str) or key not in known:
                names = ", ".join(sorted(known))
                raise RuleError(
                    f"unknown field {key!r} in {where or 'the rule'} (Dubbo reads {names})",
                    reason="unknown-field",
                )
        self._data: dict[str, Any] = data
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def __contains__(self, key: str) -> bool:
        return self._data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self._data.get(key)

    def string(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is not None and not isinstance(value, str):
            raise RuleError(f"{self.path(key)} must be a string, not {_kind(value)}", reason="type")
        return value

    def required(self, key: str) -> str:
        """A string that must be there and not blank."""
        value = self.string(key)
        if value is None:
            raise RuleError(f"{self.path(key)} is missing", reason="missing-field")
        if not value.strip():
            raise RuleError(f"{self.path(key)} must not be empty", reason="missing-field")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise RuleError(f"{self.path(key)} must be true or false, not {value!r}", reason="type")

    def integer(self, key: str, default: int) -> int:
        value = self._data.get(key)
        if value is None:
            return default
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.isascii():
            number = int(value.strip())
        if number is None or not JAVA_INT_MIN <= number <= JAVA_INT_MAX:
            raise RuleError(f"{self.path(key)} must be an integer (a Java int), not {value!r}", reason="type")
        return number

    def strings(self, key: str) -> tuple[str, ...] | None:
        """A list of strings (Dubbo: ``String.valueOf`` of each element of a ``List``); None when absent."""
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise RuleError(f"{self.path(key)} must be a list, not {_kind(value)}", reason="type")
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise RuleError(f"{self.path(key)}[{i}] must be a string, not {_kind(item)}", reason="type")
            out.append(item)
        return tuple(out)

    def mapping(self, key: str, known: frozenset[str]) -> Fields | None:
        value = self._data.get(key)
        return None if value is None else Fields(value, self.path(key), known)

    def mappings(self, key: str, known: frozenset[str]) -> list[Fields] | None:
        """A list of mappings; None when absent."""
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise RuleError(f"{self.path(key)} must be a list, not {_kind(value)}", reason="type")
        return [Fields(item, f"{self.path(key)}[{i}]", known) for i, item in enumerate(value)]

    def string_map(self, key: str) -> dict[str, str] | None:
        """A mapping of strings to scalars, the scalars as Java's ``toString()`` writes them."""
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise RuleError(f"{self.path(key)} must be a mapping, not {_kind(value)}", reason="type")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RuleError(f"{self.path(key)} has a key that is {_kind(k)}: {k!r}", reason="type")
            if v is None:
                raise RuleError(f"{self.path(key)}.{k} has no value", reason="type")
            out[k] = java_string(v, f"{self.path(key)}.{k}")
        return out
