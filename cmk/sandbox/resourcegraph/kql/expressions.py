"""Compiled KQL scalar expressions: a function of a row and its Kusto type.

The parser (:mod:`~cmk.sandbox.resourcegraph.kql.expression_parser`) builds :class:`Expr`
values from these pieces: property paths, comparisons, ``in`` lists, ``and``/``or`` and the
supported functions. Any comparison with null is false, including ``!=`` and ``!~``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cmk.sandbox.resourcegraph.kql.values import Row, equal, sign, to_text

Evaluator = Callable[[Row], object]


@dataclass(frozen=True)
class Expr:
    """A compiled scalar expression: how to evaluate it on a row, and its Kusto type."""

    evaluate: Evaluator
    kind: str  # string, bool, long, real, dynamic
    default_name: str | None = None  # the column name an unnamed projection gets


FUNCTIONS: Final[dict[str, tuple[str, Callable[[object], object]]]] = {
    "tostring": ("string", to_text),
    "tolower": ("string", lambda v: None if v is None else to_text(v).lower()),
    "toupper": ("string", lambda v: None if v is None else to_text(v).upper()),
    "isempty": ("bool", lambda v: v is None or v == ""),
    "isnotempty": ("bool", lambda v: not (v is None or v == "")),
    "isnull": ("bool", lambda v: v is None),
    "isnotnull": ("bool", lambda v: v is not None),
    "strlen": ("long", lambda v: None if v is None else len(to_text(v))),
    "array_length": ("long", lambda v: len(v) if isinstance(v, list) else None),
    "toint": ("int", lambda v: _to_number(v, int)),
    "tolong": ("long", lambda v: _to_number(v, int)),
    "todouble": ("real", lambda v: _to_number(v, float)),
    "toreal": ("real", lambda v: _to_number(v, float)),
}


def _to_number(value: object, kind: type[int] | type[float]) -> object:
    """``tolong``/``todouble``: a number or numeric text converted, anything else null
    (``tolong`` truncates a decimal, as Kusto does)."""
    if isinstance(value, bool):
        return int(value) if kind is int else float(value)
    try:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, int | float):
            return None
        return int(number) if kind is int else float(number)
    except (ValueError, OverflowError):
        return None


def call(name: str, arguments: Sequence[Expr]) -> Expr | None:
    """The functions of more than one argument: ``iff``/``iif(predicate, then, else)``,
    ``case(predicate, then, [predicate, then, ...] else)``, ``strcat(a, b, ...)`` and
    ``split(text, delimiter)``; None when ``name`` is not one of them, ValueError for the
    wrong number of arguments."""
    if name in ("iff", "iif"):
        if len(arguments) != 3:
            raise ValueError(name)
        return _choose([(arguments[0], arguments[1])], arguments[2])
    if name == "case":
        if len(arguments) < 3 or len(arguments) % 2 == 0:
            raise ValueError(name)
        pairs = list(zip(arguments[:-1:2], arguments[1:-1:2], strict=True))
        return _choose(pairs, arguments[-1])
    if name == "strcat":
        if not 1 <= len(arguments) <= 64:
            raise ValueError(name)
        getters = [a.evaluate for a in arguments]
        return Expr(lambda row: "".join(to_text(get(row)) for get in getters), "string")
    if name == "split":
        if len(arguments) != 2:
            raise ValueError(name)
        text, delimiter = arguments[0].evaluate, arguments[1].evaluate

        def split(row: Row) -> object:
            value, by = text(row), to_text(delimiter(row))
            if value is None:
                return None
            return to_text(value).split(by) if by else [to_text(value)]

        return Expr(split, "dynamic")
    return None


def _choose(pairs: list[tuple[Expr, Expr]], otherwise: Expr) -> Expr:
    """The value of the first pair whose predicate is true, else ``otherwise``; typed as
    the first value (Kusto requires every branch to have one type)."""
    tests = [(p.evaluate, v.evaluate) for p, v in pairs]
    fallback = otherwise.evaluate

    def choose(row: Row) -> object:
        for predicate, value in tests:
            if predicate(row) is True:
                return value(row)
        return fallback(row)

    return Expr(choose, pairs[0][1].kind)


COMPARISONS: Final = frozenset(
    {
        "==", "!=", "=~", "!~", "<", "<=", ">", ">=",
        "contains", "!contains", "has", "!has", "startswith", "!startswith",
        "endswith", "!endswith",
    }
)  # fmt: skip
MEMBERSHIP: Final = frozenset({"in", "in~", "!in", "!in~"})


def path_getter(column: str, steps: Sequence[str | int]) -> Evaluator:
    """``column.step[0]['step']``: null as soon as a step finds nothing."""

    def get(row: Row) -> object:
        value = row.get(column)
        for step in steps:
            if isinstance(step, int):
                value = (
                    value[step]
                    if isinstance(value, list) and -len(value) <= step < len(value)
                    else None
                )
            elif isinstance(value, dict):
                value = value.get(step)
            else:
                return None
            if value is None:
                return None
        return value

    return get


def _text_op(name: str) -> Callable[[str, str], bool]:
    if name == "contains":
        return lambda a, b: b.lower() in a.lower()
    if name == "startswith":
        return lambda a, b: a.lower().startswith(b.lower())
    if name == "endswith":
        return lambda a, b: a.lower().endswith(b.lower())

    def has(a: str, b: str) -> bool:
        pattern = rf"(?<![A-Za-z0-9]){re.escape(b)}(?![A-Za-z0-9])"
        return re.search(pattern, a, re.IGNORECASE) is not None

    return has


def compare(op: str, left: Evaluator, right: Evaluator) -> Evaluator:
    """A binary comparison, one of :data:`COMPARISONS`."""
    if op == "==":
        return lambda row: equal(left(row), right(row))
    if op == "!=":

        def not_equal(row: Row) -> bool:
            a, b = left(row), right(row)
            return a is not None and b is not None and not equal(a, b)

        return not_equal
    if op in ("=~", "!~"):
        negate = op == "!~"

        def equal_ci(row: Row) -> bool:
            a, b = left(row), right(row)
            if a is None or b is None:
                return False
            return (to_text(a).lower() == to_text(b).lower()) != negate

        return equal_ci
    if op.lstrip("!") in ("contains", "has", "startswith", "endswith"):
        test = _text_op(op.lstrip("!"))
        negate = op.startswith("!")

        def text(row: Row) -> bool:
            a, b = left(row), right(row)
            if a is None or b is None:
                return False
            return test(to_text(a), to_text(b)) != negate

        return text

    def ordered(row: Row) -> bool:
        outcome = sign(left(row), right(row))
        if outcome is None:
            return False
        return {"<": outcome < 0, "<=": outcome <= 0, ">": outcome > 0}.get(op, outcome >= 0)

    return ordered


def membership(op: str, left: Evaluator, items: list[object]) -> Evaluator:
    """``in`` / ``!in`` (by equality) or ``in~`` / ``!in~`` (case-insensitive text)."""
    negate = op.startswith("!")
    if op.endswith("~"):
        lowered = {to_text(i).lower() for i in items if i is not None}

        def member_ci(row: Row) -> bool:
            value = left(row)
            if value is None:
                return False
            return (to_text(value).lower() in lowered) != negate

        return member_ci

    def member(row: Row) -> bool:
        value = left(row)
        if value is None:
            return False
        return any(equal(value, i) for i in items) != negate

    return member


def either(a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda row: a(row) is True or b(row) is True


def both(a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda row: a(row) is True and b(row) is True
