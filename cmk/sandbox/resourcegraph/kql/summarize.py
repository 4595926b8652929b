"""KQL's grouping operators for the sandbox's Resource Graph: ``summarize`` and ``distinct``.

``summarize [Name =] Aggregate(...)[, ...] [by [Name =] Expr[, ...]]`` with the aggregates
``count()``, ``countif(predicate)``, ``dcount(expr[, accuracy])``,
``make_set(expr[, maxSize])``, ``max(expr)``, ``min(expr)``, ``sum(expr)`` and
``arg_max(expr, * | col[, ...])`` / ``arg_min(expr, * | col[, ...])``:

* output columns are the ``by`` keys, then the aggregates, in the order written;
* default names as Kusto gives them: ``count_``, ``countif_``, ``dcount_<column>``,
  ``set_<column>``, ``max_<column>``, ``min_<column>``, ``sum_<column>``; a key that is not
  a column takes the name of the column it reads (``tostring(properties.x)`` ->
  ``properties_x``), else ``Column1``, ``Column2``, ...;
* ``arg_max``/``arg_min`` give several columns: the expression (a column keeps its name,
  anything else is ``max_<column>`` / ``min_<column>``, as ``max()`` names it), then the
  columns asked for — with ``*`` every input column but the ``by`` keys and the expression's,
  in input order — taken from the row of the group where the expression is greatest
  (least); rows where it is null are skipped (all null: every column null); of equal rows
  the first wins (Kusto picks any one). ``Name =`` is not accepted before them (Kusto names
  only the first column that way; the sandbox rejects it as unsupported);
* ``dcount``'s accuracy level (0-4) is accepted and changes nothing: the count is exact;
* without ``by`` the result is one row, also over no rows (``count_`` 0); with ``by`` each
  distinct key tuple is one row, in order of first appearance (Kusto does not promise an
  order either); null is a key value of its own;
* ``max``/``min`` skip nulls (none: null) and compare numbers, then booleans, then text;
  ``sum`` adds the numbers (``long`` for a ``long``/``int`` argument, else ``real``), 0 over
  none, as Kusto's default for an empty input;
* ``dcount`` and ``make_set`` ignore nulls, as Kusto does; ``dcount`` is exact here where
  Kusto's is an estimate (they agree on small sets).

``distinct col[, ...]`` keeps the first row of each distinct tuple of those columns;
``distinct *`` of all of them.

A ``dynamic`` key (``by identity.type``, ``distinct identity``) is refused with Kusto's
semantic error (:func:`dynamic_key_message`); cast it (``by tostring(identity.type)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from cmk.sandbox.resourcegraph.kql.expression_parser import ExpressionParser
from cmk.sandbox.resourcegraph.kql.expressions import Evaluator, Expr
from cmk.sandbox.resourcegraph.kql.tokens import Token
from cmk.sandbox.resourcegraph.kql.values import Row, is_number, sort_key

Stage = Callable[[list[Row]], list[Row]]
# Folds the rows of one group into the aggregate's value.
Fold = Callable[[list[Row]], object]

AGGREGATES = (
    "count", "countif", "dcount", "make_set", "arg_max", "arg_min", "max", "min", "sum",
)  # fmt: skip
#: Kusto's accuracy levels of ``dcount`` (0 fastest ... 4 most accurate).
DCOUNT_ACCURACY = range(5)


def dynamic_key_message(key: str) -> str:
    """Kusto's refusal of a ``dynamic`` grouping key (microsoft/Kusto-Query-Language#61)."""
    return (
        f"Summarize group key '{key}' is of a 'dynamic' type. Please use an explicit cast "
        f"(for example, 'summarize ... by tostring({key})') as grouping by a 'dynamic' type "
        "is not supported."
    )


def group_key(value: object) -> tuple[str, str]:
    """A hashable stand-in for a value: its type and its canonical JSON text."""
    return type(value).__name__, json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Aggregate:
    """One aggregate: its output columns (name, kind) and what fills them from a group."""

    columns: tuple[tuple[str, str], ...]
    fold: Callable[[list[Row]], dict[str, object]]

    @staticmethod
    def single(name: str, kind: str, fold: Fold) -> Aggregate:
        return Aggregate(((name, kind),), lambda rows: {name: fold(rows)})


def _count(_rows: list[Row]) -> object:
    return len(_rows)


def _countif(predicate: Evaluator) -> Fold:
    return lambda rows: sum(1 for r in rows if predicate(r) is True)


def _dcount(get: Evaluator) -> Fold:
    return lambda rows: len({group_key(v) for r in rows if (v := get(r)) is not None})


def _make_set(get: Evaluator, limit: int) -> Fold:
    def fold(rows: list[Row]) -> object:
        seen: dict[tuple[str, str], object] = {}
        for row in rows:
            value = get(row)
            if value is None or len(seen) >= limit:
                continue
            seen.setdefault(group_key(value), value)
        return list(seen.values())

    return fold


def _extreme(get: Evaluator, largest: bool) -> Fold:
    """``max``/``min``: the greatest (least) non-null value, null when there is none."""

    def fold(rows: list[Row]) -> object:
        values = [v for r in rows if (v := get(r)) is not None]
        if not values:
            return None
        return (max if largest else min)(values, key=sort_key)

    return fold


def _sum(get: Evaluator, real: bool) -> Fold:
    """``sum``: the numbers added, nulls and non-numbers skipped; 0 over none (Kusto's
    default for ``sum`` over an empty input)."""

    def fold(rows: list[Row]) -> object:
        total = sum(v for r in rows if is_number(v := get(r)) and isinstance(v, int | float))
        return float(total) if real else total

    return fold


def _arg_extreme(
    get: Evaluator, largest: bool, columns: dict[str, Evaluator]
) -> Callable[[list[Row]], dict[str, object]]:
    def fold(rows: list[Row]) -> dict[str, object]:
        best: Row | None = None
        best_key: tuple[int, object] | None = None
        for row in rows:
            value = get(row)
            if value is None:
                continue
            key = sort_key(value)
            if best_key is None or (key > best_key if largest else key < best_key):
                best, best_key = row, key
        return {name: (read(best) if best is not None else None) for name, read in columns.items()}

    return fold


class GroupingParser(ExpressionParser):
    """``summarize`` and ``distinct`` over the schema of the query so far."""

    #: The ``by`` keys of the summarize being parsed (``arg_max(x, *)`` leaves them out).
    _key_names: frozenset[str] = frozenset()

    def summarize(self) -> Stage:
        # Aggregates read the input's columns, but arg_max(x, *) leaves out the by keys, so
        # those are parsed first: remember where the aggregates start and come back.
        start = self.i
        if not self.at("by"):
            self._skip_to_by()
        keys: list[tuple[str, Expr]] = []
        end = self.i
        if self.at("by"):
            self.next()
            for index, (name, expr, token) in enumerate(self.comma_separated(self._key), 1):
                key = name or f"Column{index}"
                if expr.kind == "dynamic":
                    raise self.refuse(token, dynamic_key_message(key))
                keys.append((key, expr))
        after = self.i
        aggregates: list[Aggregate] = []
        if start != end:
            self.i = start
            self._key_names = frozenset(name for name, _ in keys)
            aggregates = self.comma_separated(self._aggregate)
            if self.i != end:
                raise self.fail()
            self.i = after
        if not aggregates and not keys:
            raise self.fail()
        names = [name for name, _ in keys] + [n for a in aggregates for n, _ in a.columns]
        if len(set(names)) != len(names):
            raise self.fail()
        self.schema = {name: expr.kind for name, expr in keys} | {
            name: kind for a in aggregates for name, kind in a.columns
        }
        getters = [(name, expr.evaluate) for name, expr in keys]

        def run(rows: list[Row]) -> list[Row]:
            groups: dict[tuple[tuple[str, str], ...], tuple[Row, list[Row]]] = {}
            for row in rows:
                values = {name: get(row) for name, get in getters}
                key = tuple(group_key(v) for v in values.values())
                groups.setdefault(key, (values, []))[1].append(row)
            if not getters and not groups:
                groups[()] = ({}, [])
            return [
                {**values, **{k: v for a in aggregates for k, v in a.fold(members).items()}}
                for values, members in groups.values()
            ]

        return run

    def _skip_to_by(self) -> None:
        """Move to the ``by`` of this summarize outside any parentheses (or to its end)."""
        depth = 0
        while self.tok.kind != "eof":
            if depth == 0 and (self.at("by") or self.at("|")):
                return
            if self.at("(", "["):
                depth += 1
            elif self.at(")", "]"):
                depth -= 1
            self.next()

    def distinct(self) -> Stage:
        start = self.tok
        star = self.at("*")
        if star:
            self.next()
            names = list(self.schema)
        else:
            names = self.comma_separated(self.ident)
        for name in names:
            if name not in self.schema:
                raise self.fail(start)
            if self.schema[name] == "dynamic" and not star:
                raise self.refuse(start, dynamic_key_message(name))
        self.schema = {name: self.schema[name] for name in names}

        def run(rows: list[Row]) -> list[Row]:
            seen: dict[tuple[tuple[str, str], ...], Row] = {}
            for row in rows:
                projected = {name: row.get(name) for name in names}
                seen.setdefault(tuple(group_key(v) for v in projected.values()), projected)
            return list(seen.values())

        return run

    def _key(self) -> tuple[str | None, Expr, Token]:
        token = self.tok
        if self.tok.kind == "ident" and self.tokens[self.i + 1].text == "=":
            name = self.next().text
            self.next()
            return name, self.expression(), token
        start = self.i
        expr = self.expression()
        return expr.default_name or self._column_read(start), expr, token

    def _column_read(self, start: int) -> str | None:
        """The path the tokens from ``start`` to here read first, named as Kusto names it
        (``tostring(properties.x)`` -> ``properties_x``); None if they read no column."""
        parts: list[str] = []
        for index in range(start, self.i):
            token = self.tokens[index]
            if not parts:
                following = self.tokens[index + 1].text
                if token.kind == "ident" and token.text in self.schema and following != "(":
                    parts.append(token.text)
                continue
            previous = self.tokens[index - 1].text
            if token.text in (".", "[", "]"):
                continue
            if previous in (".", "[") and token.kind in ("ident", "string", "number"):
                parts.append(token.value if token.kind == "string" else token.text)
                continue
            break
        return "_".join(parts) if parts else None

    def _aggregate(self) -> Aggregate:
        explicit: str | None = None
        if self.tok.kind == "ident" and self.tokens[self.i + 1].text == "=":
            explicit = self.next().text
            self.next()
        token = self.tok
        if token.kind != "ident" or self.tokens[self.i + 1].text != "(":
            raise self.fail(token)
        if token.text not in AGGREGATES:
            raise self.fail(token, unsupported=True)
        self.next()
        self.expect("(")
        if token.text == "count":
            self.expect(")")
            return Aggregate.single(explicit or "count_", "long", _count)
        start = self.i
        argument = self.expression()
        if token.text == "countif":
            self.expect(")")
            return Aggregate.single(explicit or "countif_", "long", _countif(argument.evaluate))
        suffix = argument.default_name or self._column_read(start) or ""
        if token.text in ("max", "min", "sum"):
            self.expect(")")
            name = explicit or f"{token.text}_{suffix}"
            if token.text == "sum":
                real = argument.kind not in ("long", "int")
                fold = _sum(argument.evaluate, real)
                return Aggregate.single(name, "real" if real else "long", fold)
            return Aggregate.single(
                name, argument.kind, _extreme(argument.evaluate, token.text == "max")
            )
        if token.text in ("arg_max", "arg_min"):
            if explicit is not None:
                raise self.fail(token, unsupported=True)
            return self._arg_extreme(token.text == "arg_max", argument, suffix)
        if token.text == "dcount":
            if self.at(","):
                self.next()
                level = self.next()
                if level.kind != "number" or "." in level.text:
                    raise self.fail(level)
                if int(level.text) not in DCOUNT_ACCURACY:
                    raise self.fail(level)
            self.expect(")")
            return Aggregate.single(
                explicit or f"dcount_{suffix}", "long", _dcount(argument.evaluate)
            )
        limit = 1_048_576  # Kusto's default maximum of make_set
        if self.at(","):
            self.next()
            size = self.next()
            if size.kind != "number" or "." in size.text:
                raise self.fail(size)
            limit = int(size.text)
        self.expect(")")
        return Aggregate.single(
            explicit or f"set_{suffix}", "dynamic", _make_set(argument.evaluate, limit)
        )

    def _arg_extreme(self, largest: bool, argument: Expr, suffix: str) -> Aggregate:
        """The rest of ``arg_max(expr, * | col[, ...])`` after ``expr``."""
        name = argument.default_name
        if name is None or name not in self.schema:
            name = f"{'max' if largest else 'min'}_{suffix}"
        columns: dict[str, tuple[str, Evaluator]] = {name: (argument.kind, argument.evaluate)}
        self.expect(",")
        if self.at("*"):
            self.next()
            for column, kind in self.schema.items():
                if column not in self._key_names and column not in columns:
                    columns[column] = (kind, _column(column))
        else:
            for column in self.comma_separated(self._returned_column):
                if column in columns:
                    raise self.fail()
                columns[column] = (self.schema[column], _column(column))
        self.expect(")")
        return Aggregate(
            tuple((column, kind) for column, (kind, _) in columns.items()),
            _arg_extreme(
                argument.evaluate, largest, {column: get for column, (_, get) in columns.items()}
            ),
        )

    def _returned_column(self) -> str:
        token = self.tok
        column = self.ident()
        if column not in self.schema or self.at(".", "["):
            raise self.fail(token, unsupported=column in self.schema)
        return column


def _column(name: str) -> Evaluator:
    return lambda row: row.get(name)
