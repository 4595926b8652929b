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
  ``limit n`` / ``take n``; ``count``.
* Expressions: string literals ('...' or "..."), integers and decimals, ``true``/``false``,
  ``null``; columns and property paths (``properties.encryption.keySource``,
  ``properties['encryption']``, ``tags['env']``, ``zones[0]``); parentheses;
  ``not(...)``; ``and`` / ``or``; ``==`` ``!=`` (case-sensitive), ``=~`` ``!~``
  (case-insensitive), ``in`` ``!in`` ``in~`` ``!in~`` with a parenthesised literal list,
  ``contains`` ``!contains`` ``has`` ``!has`` ``startswith`` ``!startswith`` ``endswith``
  ``!endswith`` (case-insensitive), ``<`` ``<=`` ``>`` ``>=`` on numbers or strings.
* Functions: ``tostring``, ``tolower``, ``toupper``, ``isempty``, ``isnotempty``,
  ``isnull``, ``isnotnull``, ``strlen``.

Semantics and known differences
-------------------------------
* A missing property is ``null``. Any comparison with ``null`` is false — including
  ``!=`` and ``!~`` (Kusto yields null there, which ``where`` also drops);
  ``tostring(null)`` is ``""``, so ``tostring(x) != 'a'`` keeps rows where ``x`` is missing.
* ``tostring`` of an object or array is its compact JSON text.
* ``has`` is approximated as a case-insensitive whole-term match.
* Column types are tracked so Resource Graph can tell whether every output column is
  ``dynamic`` (paging then is impossible, see ``resourcegraph``): the string columns of
  ``Resources`` and the results of ``tostring``/``tolower``/... are ``string``; property
  paths and the ``properties``/``identity``/``tags``/``sku`` columns are ``dynamic``.
* Not supported (rejected): ``summarize``, ``join``, ``union``, ``mv-expand``, ``parse``,
  ``extend`` without a name, ``let``, datetime functions, ``iff``/``case``, regex
  operators, arithmetic, and every other function or operator not listed above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Row = dict[str, object]

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


class KqlError(Exception):
    """A query the sandbox rejects. ``unsupported`` marks valid KQL outside the subset."""

    def __init__(
        self, message: str, *, token: str, line: int, position: int, unsupported: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.token = token
        self.line = line
        self.position = position
        self.unsupported = unsupported


# --- tokens --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op>!in~|!in(?![A-Za-z0-9_])|in~|!contains|!has|!startswith|!endswith
         |==|!=|=~|!~|<=|>=|[<>|,()\[\].=])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:-(?:away|keep|rename|reorder|expand|apply))?)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # string, number, op, ident, eof
    text: str
    line: int
    position: int

    @property
    def value(self) -> str:
        """A string literal's value (quotes removed, escapes resolved)."""
        body = self.text[1:-1]
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), body)


def tokenize(query: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    line, line_start = 1, 0
    while pos < len(query):
        match = _TOKEN_RE.match(query, pos)
        if match is None:
            raise KqlError("ParserFailure", token=query[pos], line=line, position=pos - line_start)
        kind = match.lastgroup or ""
        text = match.group()
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, text, line, pos - line_start))
        newlines = text.count("\n")
        if newlines:
            line += newlines
            line_start = pos + text.rindex("\n") + 1
        pos = match.end()
    tokens.append(Token("eof", "", line, pos - line_start))
    return tokens


# --- values --------------------------------------------------------------------------


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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: object, right: object) -> bool:
    if left is None or right is None:
        return False
    if _is_number(left) and _is_number(right):
        return left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return to_text(left) == to_text(right)


def _sign(left: object, right: object) -> int | None:
    """-1, 0 or 1 comparing two numbers or two strings; None for anything else."""
    if isinstance(left, bool) or isinstance(right, bool):
        return None
    if isinstance(left, int | float) and isinstance(right, int | float):
        return (left > right) - (left < right)
    if isinstance(left, str) and isinstance(right, str):
        return (left > right) - (left < right)
    return None


# --- expressions ---------------------------------------------------------------------

Evaluator = Callable[[Row], object]


@dataclass(frozen=True)
class Expr:
    """A compiled scalar expression: how to evaluate it on a row, and its Kusto type."""

    evaluate: Evaluator
    kind: str  # string, bool, long, real, dynamic
    default_name: str | None = None  # the column name an unnamed projection gets


def _path_getter(column: str, steps: Sequence[str | int]) -> Evaluator:
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


def _compare(op: str, left: Evaluator, right: Evaluator) -> Evaluator:
    if op == "==":
        return lambda row: _equal(left(row), right(row))
    if op == "!=":

        def not_equal(row: Row) -> bool:
            a, b = left(row), right(row)
            return a is not None and b is not None and not _equal(a, b)

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
        sign = _sign(left(row), right(row))
        if sign is None:
            return False
        return {"<": sign < 0, "<=": sign <= 0, ">": sign > 0}.get(op, sign >= 0)

    return ordered


def _membership(op: str, left: Evaluator, items: list[object]) -> Evaluator:
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
        return any(_equal(value, i) for i in items) != negate

    return member


_FUNCTIONS: Final[dict[str, tuple[str, Callable[[object], object]]]] = {
    "tostring": ("string", to_text),
    "tolower": ("string", lambda v: None if v is None else to_text(v).lower()),
    "toupper": ("string", lambda v: None if v is None else to_text(v).upper()),
    "isempty": ("bool", lambda v: v is None or v == ""),
    "isnotempty": ("bool", lambda v: not (v is None or v == "")),
    "isnull": ("bool", lambda v: v is None),
    "isnotnull": ("bool", lambda v: v is not None),
    "strlen": ("long", lambda v: None if v is None else len(to_text(v))),
}

_COMPARISONS: Final = frozenset(
    {
        "==", "!=", "=~", "!~", "<", "<=", ">", ">=",
        "contains", "!contains", "has", "!has", "startswith", "!startswith",
        "endswith", "!endswith",
    }
)  # fmt: skip
_MEMBERSHIP: Final = frozenset({"in", "in~", "!in", "!in~"})
_KNOWN_UNSUPPORTED_OPERATORS: Final = frozenset(
    {
        "summarize", "join", "union", "mv-expand", "mvexpand", "parse", "distinct", "top",
        "sample", "make-series", "lookup", "let", "render", "serialize", "evaluate",
        "project-keep", "project-rename", "project-reorder", "mv-apply", "as", "invoke",
        "search", "find", "getschema", "range", "print", "datatable",
    }
)  # fmt: skip


# --- operators -----------------------------------------------------------------------

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


class _Parser:
    def __init__(self, query: str) -> None:
        self.tokens = tokenize(query)
        self.i = 0
        self.schema: dict[str, str] = dict(RESOURCES_SCHEMA)

    # token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, token: Token | None = None, *, unsupported: bool = False) -> KqlError:
        t = token or self.tok
        message = "InvalidQueryLanguage" if unsupported else "ParserFailure"
        return KqlError(
            message, token=t.text, line=t.line, position=t.position, unsupported=unsupported
        )

    def next(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def at(self, *texts: str) -> bool:
        return self.tok.kind in ("op", "ident") and self.tok.text in texts

    def expect(self, text: str) -> Token:
        if not self.at(text):
            raise self.fail()
        return self.next()

    def ident(self) -> str:
        if self.tok.kind != "ident":
            raise self.fail()
        return self.next().text

    # query
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
            elif name == "count":
                stages.append(lambda rows: [{"Count": len(rows)}])
                self.schema = {"Count": "long"}
            elif name in _KNOWN_UNSUPPORTED_OPERATORS:
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
        items = [self._named()]
        while self.at(","):
            self.next()
            items.append(self._named())
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
        items = [self._named()]
        while self.at(","):
            self.next()
            items.append(self._named())
        self.schema = {name: expr.kind for name, expr in items}
        pairs = [(name, expr.evaluate) for name, expr in items]
        return lambda rows: [{name: get(row) for name, get in pairs} for row in rows]

    def _project_away(self) -> Stage:
        names = [self._column_name()]
        while self.at(","):
            self.next()
            names.append(self._column_name())
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
        keys: list[tuple[Evaluator, bool, bool]] = []  # (get, descending, nulls_first)
        while True:
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
            keys.append((get, descending, nulls_first))
            if not self.at(","):
                break
            self.next()

        def order(rows: list[Row]) -> list[Row]:
            result = list(rows)
            for get, descending, nulls_first in reversed(keys):  # stable multi-key sort
                present = [r for r in result if get(r) is not None]
                missing = [r for r in result if get(r) is None]
                present.sort(key=lambda r: _sort_key(get(r)), reverse=descending)
                result = missing + present if nulls_first else present + missing
            return result

        return order

    def _limit(self) -> Stage:
        token = self.tok
        if token.kind != "number" or "." in token.text:
            raise self.fail()
        self.next()
        count = int(token.text)
        return lambda rows: rows[:count]

    # expressions
    def expression(self) -> Expr:
        left = self._conjunction()
        while self.at("or"):
            self.next()
            right = self._conjunction()
            left = Expr(_either(left.evaluate, right.evaluate), "bool")
        return left

    def _conjunction(self) -> Expr:
        left = self._comparison()
        while self.at("and"):
            self.next()
            right = self._comparison()
            left = Expr(_both(left.evaluate, right.evaluate), "bool")
        return left

    def _comparison(self) -> Expr:
        left = self._primary()
        token = self.tok
        if token.kind in ("op", "ident") and token.text in _COMPARISONS:
            self.next()
            right = self._primary()
            return Expr(_compare(token.text, left.evaluate, right.evaluate), "bool")
        if token.kind in ("op", "ident") and token.text in _MEMBERSHIP:
            self.next()
            return Expr(_membership(token.text, left.evaluate, self._literal_list()), "bool")
        if token.kind == "ident" and token.text in ("matches", "contains_cs", "has_cs", "between"):
            raise self.fail(token, unsupported=True)
        return left

    def _literal_list(self) -> list[object]:
        self.expect("(")
        items = [self._literal()]
        while self.at(","):
            self.next()
            items.append(self._literal())
        self.expect(")")
        return items

    def _literal(self) -> object:
        token = self.next()
        if token.kind == "string":
            return token.value
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "ident" and token.text in ("true", "false"):
            return token.text == "true"
        raise self.fail(token)

    def _primary(self) -> Expr:
        token = self.tok
        if token.kind == "string":
            self.next()
            value = token.value
            return Expr(lambda _r: value, "string")
        if token.kind == "number":
            number = self._literal()
            return Expr(lambda _r: number, "real" if isinstance(number, float) else "long")
        if self.at("("):
            self.next()
            inner = self.expression()
            self.expect(")")
            return inner
        if token.kind != "ident":
            raise self.fail()
        if token.text in ("true", "false"):
            flag = self._literal()
            return Expr(lambda _r: flag, "bool")
        if token.text == "null":
            self.next()
            return Expr(lambda _r: None, "dynamic")
        if self.tokens[self.i + 1].text == "(" and self.tokens[self.i + 1].kind == "op":
            return self._call()
        return self._path()

    def _call(self) -> Expr:
        token = self.next()
        self.expect("(")
        name = token.text
        if name == "not":
            inner = self.expression().evaluate
            self.expect(")")
            return Expr(lambda r: inner(r) is not True, "bool")
        if name not in _FUNCTIONS:
            raise self.fail(token, unsupported=True)
        kind, function = _FUNCTIONS[name]
        argument = self.expression().evaluate
        self.expect(")")
        return Expr(lambda r: function(argument(r)), kind)

    def _path(self) -> Expr:
        token = self.tok
        column = self.ident()
        if column not in self.schema:
            raise self.fail(token)
        steps: list[str | int] = []
        while self.at(".", "["):
            if self.next().text == ".":
                steps.append(self.ident())
                continue
            inner = self.next()
            if inner.kind == "string":
                steps.append(inner.value)
            elif inner.kind == "number" and "." not in inner.text:
                steps.append(int(inner.text))
            else:
                raise self.fail(inner)
            self.expect("]")
        if not steps:
            kind = self.schema[column]
            return Expr(lambda r: r.get(column), kind, column)
        name = "_".join([column, *(str(s) for s in steps)])
        return Expr(_path_getter(column, steps), "dynamic", name)


def _either(a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda row: a(row) is True or b(row) is True


def _both(a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda row: a(row) is True and b(row) is True


def _sort_key(value: object) -> tuple[int, object]:
    if _is_number(value):
        return (0, value)
    if isinstance(value, bool):
        return (1, value)
    return (2, to_text(value))


def parse(query: str) -> Query:
    """Parse a Resource Graph query; raises :class:`KqlError` outside the subset."""
    return _Parser(query).parse()
