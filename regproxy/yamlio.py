"""Reading and writing YAML the way regproxy means it: YAML 1.2 core-schema scalars, no duplicate keys.

PyYAML implements YAML 1.1, where ``on``, ``off``, ``yes``, ``no``, ``y`` and ``n`` are booleans,
``010`` is octal 8, ``1_000`` is 1000 and ``1:20`` is 80.  So the README's route rule
``retry: {attempts: 2, on: [...]}`` read ``on`` as the key ``True``.  Every YAML file regproxy reads
goes through :func:`load`, which keeps PyYAML's parser and replaces only its implicit scalar
resolvers with the YAML 1.2 core schema:

* booleans: ``true``/``True``/``TRUE``, ``false``/``False``/``FALSE`` (nothing else)
* null: ``null``/``Null``/``NULL``, ``~`` and the empty value
* integers: ``[-+]?[0-9]+`` (decimal, also with leading zeros), ``0o17`` (octal), ``0x1F`` (hex)
* floats: ``1.5``, ``-2e3``, ``.5``, ``.inf``/``-.inf``, ``.nan``
* everything else is a string (``on``, ``yes``, ``1_000``, ``1:20``, ``2024-01-01``)

Merge keys (``<<: *anchor``) stay: they are not in YAML 1.2 but are how configs share sections.

A key given twice in one mapping is an error with its line (YAML forbids it; PyYAML silently keeps
the last one, so a second ``egress:`` further down would quietly win).

:func:`dump` writes YAML that :func:`load` reads back as the same data, and that YAML 1.1 readers
read the same way too: a string any of the two schemas would take for something else is quoted.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

__all__ = ["DuplicateKeyError", "dump", "load"]

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), in resolution order:
# an integer is tried before a float, since the float pattern matches "10" too.
_CORE_RESOLVERS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), "~nN"),
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
    ("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        "-+0123456789.",
    ),
)
_MERGE_RESOLVER = (_MERGE, re.compile(r"^(?:<<)$"), "<")


class DuplicateKeyError(ConstructorError):
    """A mapping names the same key twice.  ``line`` and ``first_line`` are 1-based."""

    def __init__(self, key: Any, line: int, first_line: int, mark: Any) -> None:
        self.key = key
        self.line = line
        self.first_line = first_line
        super().__init__(None, None, f"duplicate key {key!r} (first given on line {first_line})", mark)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's scalars and duplicate keys refused."""

    # Replaces (not extends) SafeLoader's YAML 1.1 resolvers: no yes/no/on/off, sexagesimal,
    # underscores in numbers, leading-zero octal or timestamps.
    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicates(self, node: MappingNode) -> None:
        # Checked before the merge keys are flattened in: a key given here that a merged mapping
        # also has is an override, which is what merging is for, not a duplicate.
        first: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                continue  # a non-scalar key is refused (unhashable) by PyYAML itself
            key = self.construct_object(key_node)
            if not isinstance(key, Hashable):
                continue
            line = key_node.start_mark.line + 1
            if key in first:
                raise DuplicateKeyError(key, line, first[key], key_node.start_mark)
            first[key] = line

    def construct_yaml_bool(self, node: Any) -> bool:
        value = self.construct_scalar(node)
        if value in ("true", "True", "TRUE"):
            return True
        if value in ("false", "False", "FALSE"):
            return False
        # Only an explicit `!!bool yes` gets here; YAML 1.2 has no such boolean.
        raise ConstructorError(None, None, f"{value!r} is not a boolean (true or false)", node.start_mark)

    def construct_yaml_int(self, node: Any) -> int:
        value = str(self.construct_scalar(node))
        try:
            if value.startswith("0o"):
                return int(value[2:], 8)
            if value.startswith("0x"):
                return int(value[2:], 16)
            if re.fullmatch(r"[-+]?[0-9]+", value):
                return int(value, 10)  # "010" is ten: YAML 1.2 has no leading-zero octal
        except ValueError:
            pass
        # Only an explicit `!!int 1_000` gets here.
        raise ConstructorError(None, None, f"{value!r} is not a YAML 1.2 integer", node.start_mark)


for _tag, _regexp, _first in (*_CORE_RESOLVERS, _MERGE_RESOLVER):
    _Loader.add_implicit_resolver(_tag, _regexp, list(_first) + ([""] if _regexp.match("") else []))
_Loader.add_constructor("tag:yaml.org,2002:bool", _Loader.construct_yaml_bool)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
# `<<` merges only as a mapping key (flattened away before construction); elsewhere it is a string.
_Loader.add_constructor(_MERGE, _Loader.construct_yaml_str)


class _Dumper(yaml.SafeDumper):
    """Quotes a string whenever a YAML 1.1 *or* 1.2 reader would take its plain form for something
    else: ``on`` (1.1 boolean) and ``0o17`` or ``1e3`` (1.2 numbers) alike."""


for _tag, _regexp, _first in _CORE_RESOLVERS:
    _Dumper.add_implicit_resolver(_tag, _regexp, list(_first) + ([""] if _regexp.match("") else []))


def load(text: str | bytes) -> Any:
    """Parse one YAML document with YAML 1.2 core-schema scalars.

    Raises yaml.YAMLError (with ``problem_mark``); DuplicateKeyError for a key given twice."""
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader


def dump(data: Any) -> str:
    """YAML text that :func:`load` reads back as ``data`` (keys in the order given)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
