"""Loading the config: the YAML file (YAML 1.2 scalars, duplicate keys refused with their line), the
command-line overrides on top, then the model's validation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from regproxy import yamlio
from regproxy.config.errors import ConfigError
from regproxy.config.model import Config

__all__ = ["load_config"]


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        return yamlio.load(text)  # YAML 1.2 scalars: `on: [...]` is the key "on", not True
    except yamlio.DuplicateKeyError as e:
        raise ConfigError(
            f"line {e.line}: duplicate key {e.key!r} (first given on line {e.first_line})", str(path)
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{context}; {problem}" if context else problem
        raise ConfigError(f"{path}: YAML syntax error at {where}: {detail}") from None


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[key]``; a dotted key (``limits.max_body_bytes``) sets a nested value."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Read the YAML file at ``path`` (None: built-in defaults), apply ``overrides``, validate.

    Override keys are top-level keys or dotted paths; values replace the file's (lists are replaced,
    not merged).  ``origins`` labels where overrides came from, for error messages.  Raises ConfigError.
    """
    source: str | None = None
    data: Any = {}
    if path is not None:
        source = str(path)
        data = _read_yaml(Path(path))
        if data is None:  # an empty file means "all defaults"
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                [("", f"the top level must be a mapping of keys, not {type(data).__name__}")], source
            )
    data = dict(data)
    for key, value in (overrides or {}).items():
        _apply_override(data, key, value)
    # Only a key an override actually set is labelled with it: the file's `registries:` is not
    # "(from --registry)" because the flag exists.
    given = {key.split(".")[0] for key in overrides or {}}
    origins = {key: origin for key, origin in (origins or {}).items() if key in given}
    return Config.from_dict(data, source=source, origins=origins)
