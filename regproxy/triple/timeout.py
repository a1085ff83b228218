"""The ``grpc-timeout`` header: parse it to milliseconds and write one from milliseconds.

grpc/grpc doc/PROTOCOL-HTTP2.md, "Requests":

    Timeout      → "grpc-timeout" TimeoutValue TimeoutUnit
    TimeoutValue → {positive integer as ASCII string of at most 8 digits}
    TimeoutUnit  → Hour "H" / Minute "M" / Second "S" / Millisecond "m" / Microsecond "u" / Nanosecond "n"

A missing header means no deadline ("a server should assume an infinite timeout"). Parsing
rounds up to whole milliseconds, so a deadline read here never comes before the caller's. A
value of 0 is read (it is an already expired deadline), though the grammar says "positive".

Dubbo 3.3: ``GrpcUtils.parseTimeoutToMills`` reads the value with ``Long.parseLong`` (any number of
digits, a sign too) and rounds *down* (``TimeUnit.toMillis``); ``TripleInvoker`` sends its timeout
as ``timeout + "m"``, milliseconds however many digits that takes (9 from 10^8 ms, about 28
hours). ``max_digits`` lets a caller accept those; the default is the spec's 8. Dubbo ignores a
malformed value (``GrpcHttp2ServerTransportListener`` logs it); here it is a ValueError.
"""

from __future__ import annotations

from typing import Final

MAX_DIGITS: Final = 8
MAX_VALUE: Final = 99_999_999  # the largest TimeoutValue: 8 digits
# Dubbo's reading: a Java long, at most 19 digits; 18 keep every value below Long.MAX_VALUE.
DUBBO_MAX_DIGITS: Final = 18

_NS_PER_UNIT: Final = {
    "H": 3_600_000_000_000,
    "M": 60_000_000_000,
    "S": 1_000_000_000,
    "m": 1_000_000,
    "u": 1_000,
    "n": 1,
}
# The units a whole number of milliseconds can be written in exactly, largest first.
_MS_UNITS: Final = (("H", 3_600_000), ("M", 60_000), ("S", 1_000), ("m", 1))
_DIGITS: Final = frozenset("0123456789")


def parse_timeout(value: str | bytes, max_digits: int = MAX_DIGITS) -> int:
    """The timeout of a ``grpc-timeout`` value, in milliseconds rounded up.

    Raises ValueError naming the value when it is not 1 to ``max_digits`` ASCII digits followed
    by one of H M S m u n (case matters: M is minutes, m milliseconds).
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if len(text) < 2:
        raise ValueError(f"malformed grpc-timeout {text!r}: expected 1-{max_digits} digits and a unit")
    unit = _NS_PER_UNIT.get(text[-1])
    if unit is None:
        raise ValueError(f"malformed grpc-timeout {text!r}: unit {text[-1]!r} is not one of H M S m u n")
    digits = text[:-1]
    # Explicit digits: int() would also take '+', '_', spaces and non-ASCII digits.
    if len(digits) > max_digits or not _DIGITS.issuperset(digits):
        raise ValueError(f"malformed grpc-timeout {text!r}: expected 1-{max_digits} digits and a unit")
    nanos = int(digits) * unit
    return -(-nanos // 1_000_000)  # ceiling division: never earlier than asked


def format_timeout(ms: int) -> str:
    """The ``grpc-timeout`` value for ``ms`` milliseconds: the shortest exact one within 8 digits.

    The largest unit that divides ``ms`` exactly, with at most 8 digits (60000 -> "1M", 1500 ->
    "1500m", 90000 -> "90S"). When no unit is both exact and short enough (over 10^8 ms, not a
    whole number of seconds), the smallest unit that fits, rounded up so the deadline sent is
    never earlier than ours. Beyond 99999999 hours (about 11,400 years): "99999999H". Zero is
    "0m". Raises ValueError on a negative value.
    """
    if ms < 0:
        raise ValueError(f"a grpc-timeout cannot be negative: {ms} ms")
    if ms == 0:
        return "0m"
    for unit, size in _MS_UNITS:
        if ms % size == 0 and ms // size <= MAX_VALUE:
            return f"{ms // size}{unit}"
    for unit, size in reversed(_MS_UNITS):
        count = -(-ms // size)
        if count <= MAX_VALUE:
            return f"{count}{unit}"
    return f"{MAX_VALUE}H"
