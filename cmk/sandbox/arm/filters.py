"""ARM's OData ``$filter`` on the generic resource list (``Resources_List``,
``Resources_ListByResourceGroup``) and the resource-group list (``ResourceGroups_List``), as
``resources.json`` in Azure/azure-rest-api-specs describes it:

* resources: ``eq`` and ``ne`` on ``location``, ``resourceType``, ``name`` and
  ``resourceGroup`` (case-insensitive, as ARM compares names); ``substringof('v', name)``
  and ``substringof('v', resourceGroup)``; clauses joined by ``and`` / ``or`` (``and``
  binds tighter) and grouped with parentheses;
* both lists: a tag filter, alone — ``tagName eq 'k'``, ``tagName eq 'k' and tagValue eq
  'v'`` (what ``az group list --tag k=v`` and ``az resource list --tag k=v`` send), or
  ``startswith(tagName, 'prefix')``. Tag names match case-insensitively, values exactly
  (ARM: "tag names are case-insensitive ... tag values are case-sensitive"). The spec says
  the resources a tag filter returns come without their ``tags``: :attr:`Filter.by_tag`
  tells the caller to drop them.

Anything else — ``identity``, ``identity/principalId`` and the ``plan`` fields (documented
by ARM, not evaluated by the sandbox: its resources have no plan), a tag filter combined
with another clause, ``tagValue`` without ``tagName eq``, or text that does not parse — is
ARM's 400 ``InvalidFilterInQueryString`` rather than a silently wrong list. ARM's own
message for each of these refusals is not documented; the sandbox's says what it supports.
A blank ``$filter`` (plain ``az resource list`` sends one) is no filter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cmk.sandbox.arm.cognitive.accounts import ArmError

#: What a filter reads of a resource or group: ``location``, ``resourcetype``, ``name``,
#: ``resourcegroup`` (lower-case keys) and its tags.
Fields = Mapping[str, str]
Predicate = Callable[[Fields, Mapping[str, str]], bool]

_FIELDS = frozenset({"location", "resourcetype", "name", "resourcegroup"})
_SUBSTRING_FIELDS = frozenset({"name", "resourcegroup"})
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<word>[A-Za-z_][\w/]*)|(?P<punct>[(),]))",
)
_RESOURCE_HELP = (
    "The sandbox supports 'eq'/'ne' on location, resourceType, name and resourceGroup, "
    "substringof('value', name|resourceGroup), joined by 'and'/'or', or a tag filter alone "
    "(tagName eq 'k' [and tagValue eq 'v'], startswith(tagName, 'prefix'))."
)
_GROUP_HELP = (
    "The sandbox supports a tag filter: tagName eq 'k' [and tagValue eq 'v'], "
    "startswith(tagName, 'prefix')."
)


@dataclass(frozen=True)
class Filter:
    """A parsed ``$filter``: ``matches`` a resource's fields and tags; ``by_tag`` when it is
    a tag filter (the results then carry no ``tags``)."""

    predicate: Predicate | None = None
    by_tag: bool = False

    def matches(self, fields: Fields, tags: Mapping[str, str]) -> bool:
        return self.predicate is None or self.predicate(fields, tags)


def _invalid(text: str, help_text: str) -> ArmError:
    return ArmError(
        400,
        "InvalidFilterInQueryString",
        f"Invalid $filter '{text}' specified in the query string. {help_text}",
    )


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(text)
        tokens.append(match.group(match.lastgroup or "punct"))
        position = match.end()
    return tokens


def _literal(token: str) -> str:
    if len(token) < 2 or not token.startswith("'"):
        raise ValueError(token)
    return token[1:-1].replace("''", "'")


@dataclass
class _Parser:
    """Recursive descent over the tokens; ``tag_clauses`` counts what a tag filter used."""

    tokens: list[str]
    position: int = 0
    tag_name: str | None = None
    tag_prefix: str | None = None
    tag_value: str | None = None
    tag_clauses: int = 0
    other_clauses: int = 0
    used_or: bool = False
    predicate: Predicate | None = None

    def peek(self) -> str:
        return self.tokens[self.position] if self.position < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if not token or (expected is not None and token.lower() != expected):
            raise ValueError(token)
        self.position += 1
        return token

    def expression(self) -> Predicate:
        terms = [self.conjunction()]
        while self.peek().lower() == "or":
            self.take()
            self.used_or = True
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else _any(terms)

    def conjunction(self) -> Predicate:
        terms = [self.atom()]
        while self.peek().lower() == "and":
            self.take()
            terms.append(self.atom())
        return terms[0] if len(terms) == 1 else _all(terms)

    def atom(self) -> Predicate:
        word = self.take()
        lower = word.lower()
        if word == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if lower == "substringof":
            self.take("(")
            needle = _literal(self.take()).lower()
            self.take(",")
            field = self.take().lower()
            self.take(")")
            if field not in _SUBSTRING_FIELDS:
                raise ValueError(field)
            self.other_clauses += 1
            return lambda fields, _tags: needle in fields[field].lower()
        if lower == "startswith":
            self.take("(")
            if self.take().lower() != "tagname":
                raise ValueError(word)
            self.take(",")
            self.tag_prefix = _literal(self.take()).lower()
            self.take(")")
            self.tag_clauses += 1
            return _always
        operator = self.take().lower()
        value = _literal(self.take())
        if operator not in ("eq", "ne"):
            raise ValueError(operator)
        if lower in ("tagname", "tagvalue"):
            if operator != "eq" or (lower == "tagname") == (self.tag_name is not None):
                raise ValueError(word)
            if lower == "tagname":
                self.tag_name = value.lower()
            else:
                self.tag_value = value
            self.tag_clauses += 1
            return _always
        if lower not in _FIELDS:
            raise ValueError(word)
        self.other_clauses += 1
        wanted = value.lower()
        if operator == "eq":
            return lambda fields, _tags: fields[lower].lower() == wanted
        return lambda fields, _tags: fields[lower].lower() != wanted

    def tag_predicate(self) -> Predicate:
        """The tag filter alone: a tag whose name matches (and whose value, if asked, too)."""
        if self.other_clauses or self.used_or:
            raise ValueError("a tag filter combined with other clauses")
        if self.tag_value is not None and self.tag_name is None:
            raise ValueError("tagValue without tagName")
        if self.tag_prefix is not None and (self.tag_name is not None or self.tag_value):
            raise ValueError("startswith(tagName) with another tag clause")
        name, prefix, value = self.tag_name, self.tag_prefix, self.tag_value

        def matches(_fields: Fields, tags: Mapping[str, str]) -> bool:
            for tag, tag_value in tags.items():
                if prefix is not None and tag.lower().startswith(prefix):
                    return True
                if tag.lower() == name and (value is None or tag_value == value):
                    return True
            return False

        return matches


def _always(_fields: Fields, _tags: Mapping[str, str]) -> bool:
    return True


def _all(terms: list[Predicate]) -> Predicate:
    return lambda fields, tags: all(term(fields, tags) for term in terms)


def _any(terms: list[Predicate]) -> Predicate:
    return lambda fields, tags: any(term(fields, tags) for term in terms)


def _parse(text: str, help_text: str) -> _Parser | None:
    if not text.strip():
        return None
    try:
        parser = _Parser(_tokens(text))
        parser.predicate = parser.expression()
        if parser.peek():
            raise ValueError(parser.peek())
        if parser.tag_clauses:
            parser.predicate = parser.tag_predicate()
    except ValueError:
        raise _invalid(text, help_text) from None
    return parser


def resource_filter(text: str) -> Filter:
    """The ``$filter`` of the generic resource list (400 ``InvalidFilterInQueryString`` for
    what the sandbox does not evaluate)."""
    parser = _parse(text, _RESOURCE_HELP)
    if parser is None:
        return Filter()
    return Filter(parser.predicate, by_tag=bool(parser.tag_clauses))


def group_filter(text: str) -> Filter:
    """The ``$filter`` of the resource-group list: a tag filter, or 400
    ``InvalidFilterInQueryString``."""
    parser = _parse(text, _GROUP_HELP)
    if parser is None:
        return Filter()
    if parser.other_clauses:
        raise _invalid(text, _GROUP_HELP)
    return Filter(parser.predicate, by_tag=True)
