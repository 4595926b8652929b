"""Parsing KQL scalar expressions into :class:`~cmk.sandbox.resourcegraph.kql.expressions.Expr`.

Precedence, loosest first: ``or``, ``and``, one comparison or ``in`` list, then a primary
(literal, parenthesised expression, function call or column path). Columns resolve
against the schema of the query so far; an unknown column or function fails where it
stands.
"""

from __future__ import annotations

from collections.abc import Callable

from cmk.sandbox.resourcegraph.kql.expressions import (
    COMPARISONS,
    FUNCTIONS,
    MEMBERSHIP,
    Evaluator,
    Expr,
    both,
    call,
    compare,
    either,
    membership,
    path_getter,
)
from cmk.sandbox.resourcegraph.kql.tokens import TokenStream

#: Valid KQL comparison words outside the subset.
UNSUPPORTED_COMPARISONS = ("matches", "contains_cs", "has_cs", "between")


class ExpressionParser(TokenStream):
    """Scalar expressions over the columns of ``schema`` (name -> Kusto type)."""

    def __init__(self, query: str, schema: dict[str, str]) -> None:
        super().__init__(query)
        self.schema = schema

    def expression(self) -> Expr:
        return self._chain("or", self._conjunction, either)

    def _conjunction(self) -> Expr:
        return self._chain("and", self._comparison, both)

    def _chain(
        self,
        word: str,
        operand: Callable[[], Expr],
        combine: Callable[[Evaluator, Evaluator], Evaluator],
    ) -> Expr:
        """``operand (word operand)*``, combined left to right into a bool."""
        left = operand()
        while self.at(word):
            self.next()
            right = operand()
            left = Expr(combine(left.evaluate, right.evaluate), "bool")
        return left

    def _comparison(self) -> Expr:
        left = self._primary()
        token = self.tok
        if token.kind in ("op", "ident") and token.text in COMPARISONS:
            self.next()
            right = self._primary()
            return Expr(compare(token.text, left.evaluate, right.evaluate), "bool")
        if token.kind in ("op", "ident") and token.text in MEMBERSHIP:
            self.next()
            return Expr(membership(token.text, left.evaluate, self._literal_list()), "bool")
        if token.kind == "ident" and token.text in UNSUPPORTED_COMPARISONS:
            raise self.fail(token, unsupported=True)
        return left

    def _literal_list(self) -> list[object]:
        self.expect("(")
        items = self.comma_separated(self._literal)
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
        arguments = [] if self.at(")") else self.comma_separated(self.expression)
        self.expect(")")
        if name in FUNCTIONS:
            if len(arguments) != 1:
                raise self.fail(token)
            kind, function = FUNCTIONS[name]
            argument = arguments[0].evaluate
            return Expr(lambda r: function(argument(r)), kind)
        try:
            called = call(name, arguments)
        except ValueError:
            raise self.fail(token) from None
        if called is None:
            raise self.fail(token, unsupported=True)
        return called

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
        return Expr(path_getter(column, steps), "dynamic", name)
