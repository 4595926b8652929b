"""A small, honest subset of KQL (Kusto Query Language) as Azure Resource Graph runs it.

The sandbox's Resource Graph evaluates queries over in-memory rows with this module. It
implements only what is listed here and rejects everything else with :class:`KqlError`,
which the service turns into Resource Graph's real 400 shape — a query the sandbox cannot
evaluate must fail loudly, never return a plausible wrong answer.

Supported
---------
* Tables: ``Resources`` / ``resources`` (the name is case-insensitive, as in ARG). Other
  tables (``ResourceContainers``, ``SecurityResources``, ...) are rejected.
* Operators, separated by ``|``:
  ``where <predicate>``;
  ``extend name = <expr>[, ...]``;
  ``project <col> | name = <expr>[, ...]`` (an unnamed path such as
  ``properties.provisioningState`` becomes column ``properties_provisioningState``);
  ``project-away col[, ...]``;
  ``order by`` / ``sort by <expr> [asc|desc] [nulls first|last][, ...]`` (default ``desc``,
  nulls last for ``desc`` and first for ``asc``, as in Kusto);
  ``limit n`` / ``take n``; ``count``;
  ``summarize [name =] agg(...)[, ...] [by [name =] expr[, ...]]`` with ``count()``,
  ``countif(predicate)``, ``dcount(expr[, accuracy])``, ``make_set(expr[, maxSize])``,
  ``arg_max(expr, * | col[, ...])``, ``arg_min(expr, * | col[, ...])``;
  ``distinct col[, ...]`` / ``distinct *``; ``top n by <expr> [asc|desc] [nulls first|last]``;
  ``mv-expand [name =] <expr>`` (one column, no options);
  (see :mod:`~cmk.sandbox.resourcegraph.kql.summarize` for names and null handling).
* Expressions: string literals ('...' or "..."), integers and decimals, ``true``/``false``,
  ``null``; columns and property paths (``properties.encryption.keySource``,
  ``properties['encryption']``, ``tags['env']``, ``zones[0]``); parentheses;
  ``not(...)``; ``and`` / ``or``; ``==`` ``!=`` (case-sensitive), ``=~`` ``!~``
  (case-insensitive), ``in`` ``!in`` ``in~`` ``!in~`` with a parenthesised literal list,
  ``contains`` ``!contains`` ``has`` ``!has`` ``startswith`` ``!startswith`` ``endswith``
  ``!endswith`` (case-insensitive), ``<`` ``<=`` ``>`` ``>=`` on numbers or strings.
* Functions: ``tostring``, ``tolower``, ``toupper``, ``isempty``, ``isnotempty``,
  ``isnull``, ``isnotnull``, ``strlen``, ``array_length``, ``toint``, ``tolong``,
  ``todouble``, ``toreal``, ``iff``/``iif(predicate, then, else)``,
  ``case(predicate, then, ..., else)``, ``strcat(a, ...)``, ``split(text, delimiter)``.
* Aggregates (``summarize``): ``max(expr)``, ``min(expr)`` and ``sum(expr)`` besides
  those above.

Semantics and known differences
-------------------------------
* A missing property is ``null``. Any comparison with ``null`` is false — including
  ``!=`` and ``!~`` (Kusto yields null there, which ``where`` also drops);
  ``tostring(null)`` is ``""``, so ``tostring(x) != 'a'`` keeps rows where ``x`` is missing.
* ``tostring`` of an object or array is its compact JSON text.
* ``has`` is approximated as a case-insensitive whole-term match.
* Grouping by a ``dynamic`` value — a ``summarize ... by`` key or a ``distinct`` column that
  is a property path, ``properties``/``identity``/``tags``/..., or an ``mv-expand`` result —
  is refused as Kusto refuses it: "Summarize group key 'k' is of a 'dynamic' type. Please
  use an explicit cast ..." (microsoft/Kusto-Query-Language#61), a semantic
  :class:`KqlError`; ``tostring(...)`` makes the key a string. That ``distinct`` fails with
  the same words is an assumption; ``distinct *`` is accepted (unverified on Kusto).
* Column types are tracked so Resource Graph can tell whether every output column is
  ``dynamic`` (paging then is impossible, see ``resourcegraph``): the string columns of
  ``Resources`` and the results of ``tostring``/``tolower``/... are ``string``; property
  paths and the ``properties``/``identity``/``tags``/``sku`` columns are ``dynamic``.
* Not supported (rejected): other aggregates (``avg``, ``percentile``, ...), ``join``,
  ``union``, other tables (``ResourceContainers``), ``mv-expand`` options and several
  columns, ``parse``, ``project-rename``, ``extend`` without a name, ``let``, datetime
  functions (``todatetime``, ``ago``, ``bin``), ``split``'s index argument, ``parse_json``,
  ``extract`` and regex operators, arithmetic, and every other function or operator not
  listed above. ``iff``/``case`` do not check that their branches share a type (Kusto does).

Modules
-------
:mod:`~cmk.sandbox.resourcegraph.kql.tokens` (tokens, :class:`KqlError`),
:mod:`~cmk.sandbox.resourcegraph.kql.values` (null, text, comparison and order of values),
:mod:`~cmk.sandbox.resourcegraph.kql.expressions` (compiled scalar expressions),
:mod:`~cmk.sandbox.resourcegraph.kql.expression_parser` (their grammar),
:mod:`~cmk.sandbox.resourcegraph.kql.summarize` (``summarize`` and ``distinct``) and
:mod:`~cmk.sandbox.resourcegraph.kql.query` (the table, its operators, :class:`Query`). Their
public names used outside the subset are importable from here.
"""

from __future__ import annotations

from cmk.sandbox.resourcegraph.kql.expressions import Evaluator, Expr
from cmk.sandbox.resourcegraph.kql.query import RESOURCES_SCHEMA, TABLES, Query, QueryParser, Stage
from cmk.sandbox.resourcegraph.kql.tokens import KqlError, Token, tokenize
from cmk.sandbox.resourcegraph.kql.values import Row, to_text

__all__ = [
    "RESOURCES_SCHEMA",
    "TABLES",
    "Evaluator",
    "Expr",
    "KqlError",
    "Query",
    "Row",
    "Stage",
    "Token",
    "parse",
    "to_text",
    "tokenize",
]


def parse(query: str) -> Query:
    """Parse a Resource Graph query; raises :class:`KqlError` outside the subset."""
    return QueryParser(query).parse()
