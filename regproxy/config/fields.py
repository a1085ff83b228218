"""The value types the config sections share: numbers that refuse booleans, durations, percentages,
names that must not be blank, and the base model that refuses unknown keys."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "KIB",
    "MAX_WEIGHT",
    "MIB",
    "DurationMs",
    "Float",
    "Int",
    "Model",
    "Percent",
    "StrictBool",
    "non_blank",
]

KIB = 1024
MIB = 1024 * KIB
MAX_WEIGHT = 10_000


def _reject_bool(value: Any) -> Any:
    # Pydantic's lax mode reads true as 1; a YAML `port: yes` is a mistake, not a port.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_number", f"expected a number, not {str(value).lower()}")
    return value


def _only_bool(value: Any) -> Any:
    # Pydantic's lax mode reads "yes", "on" and 1 as true; YAML 1.2 reads them as text and numbers.
    if not isinstance(value, bool):
        raise PydanticCustomError("bool", f"expected true or false, not {value!r}")
    return value


# Numbers also accept numeric strings, because command-line overrides arrive as text.
Int = Annotated[int, BeforeValidator(_reject_bool)]
Float = Annotated[float, BeforeValidator(_reject_bool)]
StrictBool = Annotated[bool, BeforeValidator(_only_bool)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def non_blank(value: str, what: str, hint: str = "") -> str:
    if not value.strip():
        raise PydanticCustomError("empty", f"{what} must not be empty{hint}")
    return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, None: 1.0}


def _duration_ms(value: Any) -> Any:
    """``"3s"``, ``"250ms"``, ``"1.5s"``, ``"2m"`` or a number of milliseconds -> int ms (> 0)."""
    if value is None:
        return value
    if isinstance(value, bool):
        raise PydanticCustomError(
            "duration", f"expected a duration like '3s' or '250ms', not {str(value).lower()}"
        )
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise PydanticCustomError(
                "duration", f"{value!r} is not a duration (use e.g. '3s', '250ms' or a number of ms)"
            )
        ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        raise PydanticCustomError("duration", "expected a duration like '3s' or '250ms'")
    if ms <= 0:
        raise PydanticCustomError("duration", f"a duration must be positive (got {value!r})")
    return max(1, round(ms))


DurationMs = Annotated[int, BeforeValidator(_duration_ms)]
Percent = Annotated[float, BeforeValidator(_reject_bool), Field(ge=0, le=100)]
