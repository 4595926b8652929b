"""``--query``: a JMESPath expression applied to a command's JSON document, as the Azure
CLI applies it, then shown as ``-o json`` (the default with a query), ``tsv`` or
``table``.

- json: the result, indented;
- tsv: one line per item of a list result (a single value is one line, no result no
  line); an object's values in the order of its sorted keys, a nested list as its length
  and a nested object as an empty field (the Azure CLI's rules), none as an empty field;
- table: a list of objects as columns (the keys of the objects), a list of values
  as one column, an object as one row, a value as one line.
"""

from __future__ import annotations

from collections.abc import Sequence

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from cmk.commands.cells import DataTable, table, tsv_cell

__all__ = ["InvalidQueryError", "Query"]


class InvalidQueryError(ValueError):
    """``--query`` is not a valid JMESPath expression."""


class Query:
    """A compiled ``--query``."""

    def __init__(self, expression: str) -> None:
        try:
            self._parsed: ParsedResult = jmespath.compile(expression)
        except JMESPathError as error:
            raise InvalidQueryError(f"--query is not valid JMESPath: {error}") from error
        self.expression = expression

    def search(self, document: object) -> object:
        """The query's result on ``document`` (a JSON-able value)."""
        return self._parsed.search(document)


def tsv_lines(result: object) -> list[str]:
    """``result`` as the Azure CLI's ``-o tsv`` prints it."""
    if result is None:
        return []
    rows = result if isinstance(result, list) else [result]
    return ["\t".join(_tsv_fields(row)) for row in rows]


def _tsv_fields(row: object) -> list[str]:
    if isinstance(row, dict):
        values: Sequence[object] = [value for _, value in sorted(row.items())]
    elif isinstance(row, list):
        values = row
    else:
        return [tsv_cell(row)]
    return [_tsv_field(value) for value in values]


def _tsv_field(value: object) -> str:
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, dict):
        return ""
    return tsv_cell(value)


def result_table(result: object) -> DataTable | str:
    """``result`` as a table (or one line, for a single value)."""
    if isinstance(result, dict):
        return _objects_table([result])
    if isinstance(result, list):
        if result and all(isinstance(item, dict) for item in result):
            return _objects_table(result)
        return table("", ["Result"], [[_table_cell(item)] for item in result])
    return tsv_cell(result)


def _objects_table(items: list[dict[str, object]]) -> DataTable:
    columns: list[str] = []
    for item in items:
        columns.extend(key for key in item if key not in columns)
    rows = [[_table_cell(item.get(column)) for column in columns] for item in items]
    return table("", columns, rows)


def _table_cell(value: object) -> object:
    if isinstance(value, list):
        return f"[{len(value)}]"
    if isinstance(value, dict):
        return "{…}"
    return value
