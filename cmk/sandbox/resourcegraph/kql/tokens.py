"""The words of a KQL query: tokens with their line and position, and a cursor over them.

Anything that is not a token of the subset (a stray ``$``, an unterminated string) is a
``ParserFailure`` :class:`KqlError` at that character; :class:`TokenStream` is the
cursor both parsers (:mod:`~cmk.sandbox.resourcegraph.kql.expression_parser`,
:mod:`~cmk.sandbox.resourcegraph.kql.query`) read with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class KqlError(Exception):
    """A query the sandbox rejects. ``unsupported`` marks valid KQL outside the subset;
    ``semantic`` a query Kusto parses and then refuses (its message is Kusto's)."""

    def __init__(
        self,
        message: str,
        *,
        token: str,
        line: int,
        position: int,
        unsupported: bool = False,
        semantic: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.token = token
        self.line = line
        self.position = position
        self.unsupported = unsupported
        self.semantic = semantic


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op>!in~|!in(?![A-Za-z0-9_])|in~|!contains|!has|!startswith|!endswith
         |==|!=|=~|!~|<=|>=|[<>|,()\[\].=*])
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


class TokenStream:
    """A cursor over a query's tokens, failing with the token it stands on."""

    def __init__(self, query: str) -> None:
        self.tokens = tokenize(query)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, token: Token | None = None, *, unsupported: bool = False) -> KqlError:
        t = token or self.tok
        message = "InvalidQueryLanguage" if unsupported else "ParserFailure"
        return KqlError(
            message, token=t.text, line=t.line, position=t.position, unsupported=unsupported
        )

    def refuse(self, token: Token, message: str) -> KqlError:
        """Kusto's semantic error ``message`` at ``token`` (valid syntax, refused)."""
        return KqlError(
            message, token=token.text, line=token.line, position=token.position, semantic=True
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

    def comma_separated(self, item: Callable[[], T]) -> list[T]:
        """One or more ``item`` separated by commas."""
        items = [item()]
        while self.at(","):
            self.next()
            items.append(item())
        return items
