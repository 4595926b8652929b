"""``--query``: a JMESPath expression applied to a command's JSON document, as the Azure
CLI applies it, then shown as ``-o json`` (the default with a query), ``tsv`` or
``table``.

- json: the result, indented;
- tsv: one line per item of a list result (a single value is one line, no result no
  line); an object's values in the order of its sorted keys, a nested list as its length
  and a nested object as an empty field (the Azure CLI's rules), none as an empty field;
- table: as the Azure CLI's (knack's ``_auto_table``): a list of objects as columns
  (their keys, leaving out list- and object-valued ones), a list of lists as columns
  Column1, Column2, ..., values as one column Result; a single value or object is a
  table of one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jmespath
from jmespath import functions
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from cmk.commands.cells import DataTable, table, tsv_cell

__all__ = ["INVALID", "InvalidQueryError", "Query"]


#: The Azure CLI's words for a query it refuses.
INVALID = "Invalid jmespath query supplied for `--query`"
#: JMESPath's built-in functions, by name: their signatures (no others are registered).
_FUNCTIONS: dict[str, Any] = functions.Functions().FUNCTION_TABLE


class InvalidQueryError(ValueError):
    """``--query`` is not a valid JMESPath expression, or calls a function JMESPath does not
    have (or with the wrong number of arguments): found when it is parsed, before any
    work, so that a command never runs for a query that cannot be applied."""


class Query:
    """A compiled ``--query``."""

    def __init__(self, expression: str) -> None:
        try:
            self._parsed: ParsedResult = jmespath.compile(expression)
        except JMESPathError as error:
            raise InvalidQueryError(f"{INVALID}: {_parse_reason(error)}") from error
        _check_functions(self._parsed.parsed)
        self.expression = expression

    def search(self, document: object) -> object:
        """The query's result on ``document`` (a JSON-able value). Raises JMESPathError
        when the document's values do not fit it (``floor`` of a string): only known once
        the document is there."""
        return self._parsed.search(document)


def _parse_reason(error: JMESPathError) -> str:
    """jmespath's reason on one line (its message draws a caret under the expression)."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(": ")
    column = getattr(error, "lex_position", None)
    if isinstance(column, int) and "column" not in reason:
        reason += f" (at column {column})"
    return reason


def _check_functions(node: object) -> None:
    """Refuse a call of a function JMESPath does not have, or with a number of arguments
    its signature does not take (jmespath itself finds both only while evaluating)."""
    if not isinstance(node, dict):
        return  # a slice's bounds, a literal's value
    if node.get("type") == "function_expression":
        name, arguments = str(node.get("value")), len(node.get("children") or ())
        entry = _FUNCTIONS.get(name)
        if entry is None:
            raise InvalidQueryError(f"{INVALID}: Unknown function: {name}()")
        signature = entry["signature"]
        variadic = bool(signature) and bool(signature[-1].get("variadic"))
        wanted = len(signature)
        if (arguments < wanted) if variadic else (arguments != wanted):
            how = "at least" if variadic else "exactly"
            raise InvalidQueryError(
                f"{INVALID}: {name}() takes {how} {wanted} argument(s), {arguments} given"
            )
    for child in node.get("children") or ():
        _check_functions(child)


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


def result_table(result: object) -> DataTable | None:
    """``result`` as the Azure CLI's ``-o table`` shows it (knack's ``_auto_table``): one
    row per item of a list (a single value is one row); an object's row has a column per
    key whose value is not a list or an object (those are left out), a list's row the
    columns Column1, Column2, ..., any other value the one column Result. None for an
    empty list (nothing printed)."""
    items = result if isinstance(result, list) else [result]
    entries = [_auto_table_item(item) for item in items]
    columns: list[str] = []
    for entry in entries:
        columns.extend(key for key in entry if key not in columns)
    if not columns:
        return None
    rows = [[_table_cell(entry.get(column)) for column in columns] for entry in entries]
    return table("", columns, rows)


def _auto_table_item(item: object) -> dict[str, object]:
    if isinstance(item, dict):
        return {
            str(key): value
            for key, value in item.items()
            if not isinstance(value, list | dict) and value is not None
        }
    if isinstance(item, list):
        return {f"Column{index}": value for index, value in enumerate(item, start=1)}
    return {"Result": item}


def _table_cell(value: object) -> object:
    """A list or object inside a list's row (as Column*) shown by its size, not spelled."""
    if isinstance(value, list):
        return f"[{len(value)}]"
    if isinstance(value, dict):
        return "{…}"
    return value
