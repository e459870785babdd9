"""What every part of the plan package shares: ``PlanError``, the size limits, the grid's types and the
field checks, each of which raises ``PlanError`` with a message that names the field.

They sit below ``schema`` (the document) and ``io`` (the text) because both need them; the front end's
reader (``web/ditfa_plan.js``) mirrors the limits and ``BLANK``, which a test compares.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Sequence
from typing import Any

from ..strategies import Strategy

MAX_TEXT_BYTES = 8 * 1024 * 1024
"""Plans larger than this are refused before parsing (a 10,000-step plan of 100 layers fits)."""
MAX_DIM = 10_000
"""Upper bound on steps, layers and heads: beyond any real model, low enough to bound memory."""
MAX_INT = 2**31 - 1
"""Upper bound on every other integer (token counts, grid and latent sizes, radii)."""
MAX_CELLS = 250_000
"""Upper bound on grid cells, a head-wise cell counting one per head (1,000 steps x 250 layers): with
``MAX_ITEMS`` it keeps reading or refusing any plan text well under a second and a few tens of MB."""
MAX_ITEMS = MAX_CELLS + 256
"""Upper bound on JSON strings and on ``,`` outside strings in a plan text, checked before parsing."""
MAX_DEPTH = 16
"""Upper bound on nested arrays and objects (a plan needs 4), checked before parsing."""
MAX_QUOTE = 60
"""Characters of a plan's value quoted in an error message; the rest is elided."""
BLANK = " \t\n\r\f\v"
"""What counts as blank in a string field (an explicit set, so the front end applies the same rule)."""

Cell = Strategy | tuple[Strategy, ...]
"""One grid cell: a strategy for the whole layer, or one strategy per head (head-wise plans)."""
Grid = tuple[tuple[Cell, ...], ...]


class PlanError(ValueError):
    """A plan that cannot be read, is malformed, or does not fit the model; the message says where."""


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages a plan author understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(value: Any) -> str:
    """``repr(value)`` for an error message, at most ``MAX_QUOTE`` characters: a plan from a shared
    workflow may hold a 7 MB string or a 4,000-digit integer, which must not be copied (or, past
    Python's digit limit, converted) into the message."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (list, tuple, dict)):
        return f"an {_kind(value)} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= MAX_QUOTE else f"{text[:MAX_QUOTE]}... ({len(text)} characters)"


def _cell_name(step: int, layer: int, head: int | None = None) -> str:
    return f"grid step {step}, layer {layer}" + (f", head {head}" if head is not None else "")


def _int(value: Any, where: str, lo: int, hi: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{where}: expected an integer, got {_kind(value)}")
    if value < lo or value > hi:
        raise PlanError(f"{where}: must be between {lo} and {hi}, got {_quote(value)}")
    return value


def _num(value: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{where}: expected a number, got {_kind(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise PlanError(f"{where}: must be finite, got {_quote(value)}") from None
    if not math.isfinite(value):
        raise PlanError(f"{where}: must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise PlanError(f"{where}: must be {bound}, got {value}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PlanError(f"{where}: expected a string, got {_kind(value)}")
    if not value.strip(BLANK):
        raise PlanError(f"{where}: must not be empty")
    return value


def _ints(value: Any, where: str, length: int | None, lo: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise PlanError(f"{where}: expected an array of integers, got {_kind(value)}")
    if length is not None and len(value) != length:
        raise PlanError(f"{where}: expected {length} integers, got {len(value)}")
    if not value or len(value) > 8:
        raise PlanError(f"{where}: expected 1 to 8 integers, got {len(value)}")
    return tuple(_int(v, f"{where}[{i}]", lo) for i, v in enumerate(value))


def _set(obj: object, name: str, value: Any) -> None:
    """Store a normalised value on a frozen dataclass (lists from JSON become tuples, ints floats)."""
    object.__setattr__(obj, name, value)


def _keys(data: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    """``data`` as a dict holding exactly the keys ``allowed``: a typo must not pass silently."""
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected an object, got {_kind(data)}")
    missing = [k for k in allowed if k not in data]
    if missing:
        raise PlanError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    extra = sorted(k for k in data if k not in allowed)
    if extra:
        shown = ", ".join(_quote(k) for k in extra[:5])
        shown += f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise PlanError(f"{where}: unexpected key(s) {shown}; allowed: {', '.join(allowed)}")
    return data


_ISO_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{3}(?:[0-9]{3})?)?)?"
    r"(?:Z|[+-]([0-9]{2}):([0-9]{2}))?)?"
)


def _is_iso_time(text: str) -> bool:
    """``YYYY-MM-DD[(T| )HH:MM[:SS[.fff[fff]]][Z|+HH:MM|-HH:MM]]``, a real date and time: what Python's
    ``isoformat`` and JavaScript's ``toISOString`` write; the front end checks the same rule."""
    m = _ISO_TIME.fullmatch(text)
    if m is None:
        return False
    year, month, day, hour, minute, second, oh, om = (int(g) if g else 0 for g in m.groups())
    return (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour <= 23 and minute <= 59 and second <= 59 and oh <= 23 and om <= 59)
