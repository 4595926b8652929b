"""A KQL query over the ``Resources`` table: its tabular operators, parsed into stages
that each turn a list of rows into the next, with the output columns and their types.

The schema starts as ARG's ``Resources`` columns and follows the operators (``extend``
adds, ``project`` replaces, ``project-away`` removes, ``count`` leaves ``Count``), so
later expressions see exactly the columns the query has at that point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from cmk.sandbox.resourcegraph.kql.expressions import Evaluator, Expr
from cmk.sandbox.resourcegraph.kql.summarize import GroupingParser
from cmk.sandbox.resourcegraph.kql.values import Row, sort_key

# The ``Resources`` table's columns and their Kusto types, in ARG's column order.
RESOURCES_SCHEMA: Final[dict[str, str]] = {
    "id": "string",
    "name": "string",
    "type": "string",
    "tenantId": "string",
    "kind": "string",
    "location": "string",
    "resourceGroup": "string",
    "subscriptionId": "string",
    "managedBy": "string",
    "sku": "dynamic",
    "plan": "dynamic",
    "properties": "dynamic",
    "tags": "dynamic",
    "identity": "dynamic",
    "zones": "dynamic",
    "extendedLocation": "dynamic",
}

TABLES: Final = frozenset({"resources"})

KNOWN_UNSUPPORTED_OPERATORS: Final = frozenset(
    {
        "join", "union", "mvexpand", "parse", "sample", "make-series", "lookup",
        "let", "render", "serialize", "evaluate",
        "project-keep", "project-rename", "project-reorder", "mv-apply", "as", "invoke",
        "search", "find", "getschema", "range", "print", "datatable",
    }
)  # fmt: skip

Stage = Callable[[list[Row]], list[Row]]


@dataclass(frozen=True)
class Query:
    """A parsed query: run it with :meth:`run` over the table's rows."""

    stages: tuple[Stage, ...]
    columns: tuple[tuple[str, str], ...]  # output (name, kind), in order
    limited: bool  # contains limit/take (ARG then never pages)

    def run(self, rows: Iterable[Row]) -> list[Row]:
        current = list(rows)
        for stage in self.stages:
            current = stage(current)
        return current

    @property
    def all_dynamic(self) -> bool:
        """Whether every output column is dynamic (ARG cannot page such results)."""
        return all(kind == "dynamic" for _, kind in self.columns)


class QueryParser(GroupingParser):
    """A whole query: the table, then ``|``-separated operators."""

    def __init__(self, query: str) -> None:
        super().__init__(query, dict(RESOURCES_SCHEMA))

    def parse(self) -> Query:
        table = self.tok
        if table.kind != "ident" or table.text.lower() not in TABLES:
            raise self.fail(table, unsupported=table.kind == "ident")
        self.next()
        stages: list[Stage] = []
        limited = False
        while self.at("|"):
            self.next()
            word = self.tok
            if word.kind != "ident":
                raise self.fail()
            self.next()
            name = word.text
            if name == "where":
                stages.append(self._where())
            elif name == "extend":
                stages.append(self._extend())
            elif name == "project":
                stages.append(self._project())
            elif name == "project-away":
                stages.append(self._project_away())
            elif name in ("order", "sort"):
                self.expect("by")
                stages.append(self._order_by())
            elif name in ("limit", "take"):
                stages.append(self._limit())
                limited = True
            elif name == "summarize":
                stages.append(self.summarize())
            elif name == "distinct":
                stages.append(self.distinct())
            elif name == "mv-expand":
                stages.append(self._mv_expand())
            elif name == "top":
                stages.append(self._top())
                limited = True
            elif name == "count":
                stages.append(lambda rows: [{"Count": len(rows)}])
                self.schema = {"Count": "long"}
            elif name in KNOWN_UNSUPPORTED_OPERATORS:
                raise self.fail(word, unsupported=True)
            else:
                raise self.fail(word)
        if self.tok.kind != "eof":
            raise self.fail()
        return Query(tuple(stages), tuple(self.schema.items()), limited)

    def _where(self) -> Stage:
        predicate = self.expression().evaluate
        return lambda rows: [r for r in rows if predicate(r) is True]

    def _named(self) -> tuple[str, Expr]:
        start = self.tok
        if start.kind == "ident" and self.tokens[self.i + 1].text == "=":
            name = self.next().text
            self.next()
            return name, self.expression()
        expr = self.expression()
        if expr.default_name is None:
            raise self.fail(start, unsupported=True)
        return expr.default_name, expr

    def _extend(self) -> Stage:
        items = self.comma_separated(self._named)
        for name, expr in items:
            self.schema[name] = expr.kind

        def extend(rows: list[Row]) -> list[Row]:
            out = []
            for row in rows:
                new = dict(row)
                for name, expr in items:
                    new[name] = expr.evaluate(row)
                out.append(new)
            return out

        return extend

    def _project(self) -> Stage:
        items = self.comma_separated(self._named)
        self.schema = {name: expr.kind for name, expr in items}
        pairs = [(name, expr.evaluate) for name, expr in items]
        return lambda rows: [{name: get(row) for name, get in pairs} for row in rows]

    def _project_away(self) -> Stage:
        names = self.comma_separated(self._column_name)
        for name in names:
            del self.schema[name]
        drop = frozenset(names)
        return lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]

    def _column_name(self) -> str:
        token = self.tok
        name = self.ident()
        if name not in self.schema:
            raise self.fail(token)
        return name

    def _order_by(self) -> Stage:
        return self._sorter(self.comma_separated(self._order_key))

    @staticmethod
    def _sorter(keys: list[tuple[Evaluator, bool, bool]]) -> Stage:
        def order(rows: list[Row]) -> list[Row]:
            result = list(rows)
            for get, descending, nulls_first in reversed(keys):  # stable multi-key sort
                present = [r for r in result if get(r) is not None]
                missing = [r for r in result if get(r) is None]
                present.sort(key=lambda r: sort_key(get(r)), reverse=descending)
                result = missing + present if nulls_first else present + missing
            return result

        return order

    def _order_key(self) -> tuple[Evaluator, bool, bool]:
        """``<expr> [asc|desc] [nulls first|last]``: (get, descending, nulls_first)."""
        get = self.expression().evaluate
        descending = True
        if self.at("asc", "desc"):
            descending = self.next().text == "desc"
        nulls_first = not descending
        if self.at("nulls"):
            self.next()
            if not self.at("first", "last"):
                raise self.fail()
            nulls_first = self.next().text == "first"
        return get, descending, nulls_first

    def _mv_expand(self) -> Stage:
        """``mv-expand [name =] <dynamic expr>`` (one column; no ``kind=``,
        ``with_itemindex``, ``to typeof`` or ``limit``): a row per array element, a
        single-entry bag per property; null keeps one row with null; an empty array or bag
        keeps none (Kusto's rules). A scalar stays one row (Kusto's answer is undocumented)."""
        if self.at("kind", "with_itemindex", "bagexpansion"):
            raise self.fail(unsupported=True)
        name, expr = self._named()
        if self.at(",", "to", "limit"):
            raise self.fail(unsupported=True)
        self.schema[name] = "dynamic"
        get = expr.evaluate

        def expand(rows: list[Row]) -> list[Row]:
            out: list[Row] = []
            for row in rows:
                value = get(row)
                if isinstance(value, list):
                    items: list[object] = list(value)
                elif isinstance(value, dict):
                    items = [{key: item} for key, item in value.items()]
                else:
                    items = [value]
                out.extend({**row, name: item} for item in items)
            return out

        return expand

    def _top(self) -> Stage:
        """``top n by <expr> [asc|desc] [nulls first|last]``: order by, then take n."""
        take = self._limit()
        self.expect("by")
        order = self._order_by_one()
        return lambda rows: take(order(rows))

    def _order_by_one(self) -> Stage:
        get, descending, nulls_first = self._order_key()
        return self._sorter([(get, descending, nulls_first)])

    def _limit(self) -> Stage:
        token = self.tok
        if token.kind != "number" or "." in token.text:
            raise self.fail()
        self.next()
        count = int(token.text)
        return lambda rows: rows[:count]
