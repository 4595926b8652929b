"""KQL values as the sandbox holds them: rows are dicts of JSON-like values, ``None`` is
Kusto's null. How they print (``tostring``), compare and sort."""

from __future__ import annotations

import json

Row = dict[str, object]


def to_text(value: object) -> str:
    """Kusto ``tostring``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(left: object, right: object) -> bool:
    """``==``: false when either side is null; numbers by value, booleans by identity,
    everything else by its text."""
    if left is None or right is None:
        return False
    if is_number(left) and is_number(right):
        return left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return to_text(left) == to_text(right)


def sign(left: object, right: object) -> int | None:
    """-1, 0 or 1 comparing two numbers or two strings; None for anything else."""
    if isinstance(left, bool) or isinstance(right, bool):
        return None
    if isinstance(left, int | float) and isinstance(right, int | float):
        return (left > right) - (left < right)
    if isinstance(left, str) and isinstance(right, str):
        return (left > right) - (left < right)
    return None


def sort_key(value: object) -> tuple[int, object]:
    """Numbers first, then booleans, then everything else by its text."""
    if is_number(value):
        return (0, value)
    if isinstance(value, bool):
        return (1, value)
    return (2, to_text(value))
