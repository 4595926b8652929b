"""KQL's grouping operators for the sandbox's Resource Graph: ``summarize`` and ``distinct``.

``summarize [Name =] Aggregate(...)[, ...] [by [Name =] Expr[, ...]]`` with the aggregates
``count()``, ``countif(predicate)``, ``dcount(expr)`` and ``make_set(expr[, maxSize])``:

* output columns are the ``by`` keys, then the aggregates, in the order written;
* default names as Kusto gives them: ``count_``, ``countif_``, ``dcount_<column>``,
  ``set_<column>``; a key that is not a column takes the name of the column it reads
  (``tostring(properties.x)`` -> ``properties_x``), else ``Column1``, ``Column2``, ...;
* without ``by`` the result is one row, also over no rows (``count_`` 0); with ``by`` each
  distinct key tuple is one row, in order of first appearance (Kusto does not promise an
  order either); null is a key value of its own;
* ``dcount`` and ``make_set`` ignore nulls, as Kusto does; ``dcount`` is exact here where
  Kusto's is an estimate (they agree on small sets).

``distinct col[, ...]`` keeps the first row of each distinct tuple of those columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from cmk.sandbox.resourcegraph.kql.expression_parser import ExpressionParser
from cmk.sandbox.resourcegraph.kql.expressions import Evaluator, Expr
from cmk.sandbox.resourcegraph.kql.values import Row

Stage = Callable[[list[Row]], list[Row]]
# Folds the rows of one group into the aggregate's value.
Fold = Callable[[list[Row]], object]

AGGREGATES = ("count", "countif", "dcount", "make_set")


def group_key(value: object) -> tuple[str, str]:
    """A hashable stand-in for a value: its type and its canonical JSON text."""
    return type(value).__name__, json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Aggregate:
    name: str
    kind: str
    fold: Fold


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


class GroupingParser(ExpressionParser):
    """``summarize`` and ``distinct`` over the schema of the query so far."""

    def summarize(self) -> Stage:
        aggregates: list[Aggregate] = []
        if not self.at("by"):
            aggregates = self.comma_separated(self._aggregate)
        keys: list[tuple[str, Expr]] = []
        if self.at("by"):
            self.next()
            for index, (name, expr) in enumerate(self.comma_separated(self._key), start=1):
                keys.append((name or f"Column{index}", expr))
        if not aggregates and not keys:
            raise self.fail()
        names = [name for name, _ in keys] + [a.name for a in aggregates]
        if len(set(names)) != len(names):
            raise self.fail()
        self.schema = {name: expr.kind for name, expr in keys} | {
            a.name: a.kind for a in aggregates
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
                {**values, **{a.name: a.fold(members) for a in aggregates}}
                for values, members in groups.values()
            ]

        return run

    def distinct(self) -> Stage:
        start = self.tok
        names = self.comma_separated(self.ident)
        for name in names:
            if name not in self.schema:
                raise self.fail(start)
        self.schema = {name: self.schema[name] for name in names}

        def run(rows: list[Row]) -> list[Row]:
            seen: dict[tuple[tuple[str, str], ...], Row] = {}
            for row in rows:
                projected = {name: row.get(name) for name in names}
                seen.setdefault(tuple(group_key(v) for v in projected.values()), projected)
            return list(seen.values())

        return run

    def _key(self) -> tuple[str | None, Expr]:
        if self.tok.kind == "ident" and self.tokens[self.i + 1].text == "=":
            name = self.next().text
            self.next()
            return name, self.expression()
        start = self.i
        expr = self.expression()
        return expr.default_name or self._column_read(start), expr

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
            return Aggregate(explicit or "count_", "long", _count)
        start = self.i
        argument = self.expression()
        if token.text == "countif":
            self.expect(")")
            return Aggregate(explicit or "countif_", "long", _countif(argument.evaluate))
        suffix = argument.default_name or self._column_read(start) or ""
        if token.text == "dcount":
            self.expect(")")
            return Aggregate(explicit or f"dcount_{suffix}", "long", _dcount(argument.evaluate))
        limit = 1_048_576  # Kusto's default maximum of make_set
        if self.at(","):
            self.next()
            size = self.next()
            if size.kind != "number" or "." in size.text:
                raise self.fail(size)
            limit = int(size.text)
        self.expect(")")
        return Aggregate(
            explicit or f"set_{suffix}", "dynamic", _make_set(argument.evaluate, limit)
        )
