"""How one value is shown: text from outside made safe for a terminal, table cells and
tsv fields, coloured states, and tables that fit the terminal."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import Enum

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cmk.keyid import KeyId
from cmk.resource_id import AccountId

__all__ = [
    "DataTable",
    "age",
    "cell",
    "clean",
    "fit",
    "plural",
    "short_account",
    "short_key",
    "short_version",
    "styled",
    "table",
    "tsv_cell",
]

#: Unicode categories shown escaped: controls, formats (bidi overrides), surrogates,
#: private use and unassigned.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

#: Columns a terminal too narrow even for the columns it never leaves out shortens last
#: (up to MAX_WHOLE_WIDTH, they are never shortened before that): what names the row.
WHOLE_COLUMNS = frozenset({"account", "state", "result", "outcome"})
MAX_WHOLE_WIDTH = 48
#: The narrowest a column is worth showing (``abcdefg…``).
MIN_READABLE = 10
#: Columns of free text (messages, reasons, fixes, lists): on a terminal they wrap; off a
#: terminal they are cut to fit the width while ids, versions and names stay whole (the
#: line is longer instead). A grant is a role-assignment id with words around it: the
#: accounts it would cut off are the point of its table, not the grant's last words.
FREE_TEXT_COLUMNS = frozenset(
    {
        "accounts",
        "act",
        "bindable",
        "cause",
        "detail",
        "expected",
        "fix",
        "found",
        "grant",
        "message",
        "observed",
        "reason",
        "remediation",
        "tags",
        "verdict",
        "why",
    }
)
#: The widest an id column is shown off a terminal (longer is not an id).
MAX_ID_WIDTH = 300
#: On a terminal, a free-text column narrower than this wraps into a tall column of
#: fragments: it is left out instead, and the table says so.
MIN_FREE_TEXT = 24
#: The columns a terminal leaves out first, in this order, when the table names no order
#: of its own (``optional`` of :func:`table`); then free text, widest first.
OPTIONAL_COLUMNS = (
    "trigger",
    "attempts",
    "enqueued",
    "created",
    "age",
    "subscription",
    "tags",
)
#: How a time is shown in a table, and its date alone (when even without the optional
#: columns the table is too wide): a time is never cut, it is shortened whole.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_LENGTH = len("2027-12-01")

STATE_STYLES = {
    "current": "green",
    "succeeded": "green",
    "ok": "green",
    "stale": "yellow",
    "submitted": "yellow",
    "would_update": "cyan",
    "skipped": "dim",
    "out_of_scope": "dim",
    "unsafe": "bold red",
    "failing": "red",
    "failed": "red",
    "rejected": "red",
    "error": "red",
}


def clean(text: str, *, newlines: bool = True) -> str:
    """External text made safe for a terminal: control and format characters (escape
    sequences, carriage returns, bidi overrides) are shown escaped, never interpreted."""
    return "".join(_clean_char(char, newlines) for char in text)


def _clean_char(char: str, newlines: bool) -> str:
    if char == "\n" and newlines:
        return char
    if char == "\t":
        return " "
    if unicodedata.category(char) in _UNPRINTABLE:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


class DataTable(Table):
    """A rich table that also keeps its cells (to fit a narrow terminal) and its rows as
    plain text for ``--output tsv``."""

    title_text: str = ""
    #: The width the fitted table needs off a terminal (ids are never cut), or None.
    line_width: int | None = None
    column_names: list[str]
    cells: list[list[Text]]
    #: The columns holding times: never cut (see :func:`fit`).
    time_columns: frozenset[str] = frozenset()
    #: The columns a narrow terminal may leave out, least important first (None: the
    #: default order, see :data:`OPTIONAL_COLUMNS`).
    optional: tuple[str, ...] | None = None
    #: The columns :func:`fit` left out, in the table's order.
    left_out: tuple[str, ...] = ()
    tsv_rows: list[list[str]]


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    tsv: Sequence[Sequence[object]] | None = None,
    optional: Sequence[str] | None = None,
) -> DataTable:
    """A table; cells are rendered with :func:`cell` (plain text, never markup). Long
    words end with an ellipsis instead of being split; ``-o json`` has the full values.
    ``tsv`` are the rows of ``--output tsv`` when they differ from the table's (full ids
    and versions where the table shortens them, one value per field): each field is
    rendered with :func:`tsv_cell`. ``optional``: the columns a narrow terminal may leave
    out, least important first; the others are always shown (see :func:`fit`)."""
    cells = [[cell(value) for value in row] for row in rows]
    times = frozenset(
        name
        for index, name in enumerate(columns)
        if any(isinstance(row[index], datetime) for row in rows if index < len(row))
    )
    result = _rich_table(title, list(columns), cells, times)
    result.optional = None if optional is None else tuple(optional)
    fields = rows if tsv is None else tsv
    result.tsv_rows = [[tsv_cell(value) for value in row] for row in fields]
    return result


def _text_width(text: Text) -> int:
    """The terminal cells the longest line of ``text`` takes (wide characters count 2)."""
    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _widest(cells: list[list[Text]], index: int) -> int:
    """The widest text in column ``index`` (0 for none)."""
    return max((_text_width(row[index]) for row in cells if index < len(row)), default=0)


def _rich_table(
    title: str,
    columns: list[str],
    cells: list[list[Text]],
    times: frozenset[str] = frozenset(),
    widths: list[int] | None = None,
) -> DataTable:
    """The rich table of ``cells``: each column ``widths`` wide (rich's own layout for
    None), so that the table is as wide as they say. A time never wraps; a word too long
    for its column ends with ``…``."""
    result = DataTable(show_lines=False)  # the title is a line of its own: never padded
    for index, column in enumerate(columns):
        result.add_column(
            Text(clean(column)),
            overflow="ellipsis",
            no_wrap=column in times,
            width=None if widths is None else widths[index],
        )
    for row_cells in cells:
        result.add_row(*row_cells)
    result.title_text, result.column_names, result.cells = title, columns, cells
    result.time_columns = times
    result.tsv_rows = []
    return result


def _borders(count: int) -> int:
    """The width the borders and padding of ``count`` columns take: ``│ `` before each
    cell, `` │`` after the last."""
    return 3 * count + 1


def _dates_only(columns: list[str], cells: list[list[Text]], times: frozenset[str]) -> None:
    """Times shown as their date alone (``2027-12-01``), in place."""
    for index, column in enumerate(columns):
        if column not in times:
            continue
        for row in cells:
            text = row[index]
            if len(text.plain) > DATE_LENGTH:
                row[index] = Text(text.plain[:DATE_LENGTH], style=text.style)


class _Columns:
    """The columns of a table on a terminal: how wide each needs to be to stay readable
    (:meth:`need`) and how wide it would like to be (:meth:`want`)."""

    def __init__(self, data: DataTable) -> None:
        self.names = list(data.column_names)
        self.cells = [list(row) for row in data.cells]
        self.times = data.time_columns
        self.dated = False
        self._widest = [_widest(self.cells, index) for index in range(len(self.names))]

    def date_only(self) -> None:
        """Times shown as their date alone from now on."""
        _dates_only(self.names, self.cells, self.times)
        self._widest = [_widest(self.cells, index) for index in range(len(self.names))]
        self.dated = True

    def _header(self, index: int) -> int:
        """A header wraps at its spaces: its longest word (a time's header is one line)."""
        name = self.names[index]
        words = [name] if name in self.times else name.split()
        return max((cell_len(word) for word in words), default=0)

    def need(self, index: int) -> int:
        """Times, names, ids and versions whole (those up to :data:`MAX_WHOLE_WIDTH`), free
        text at least :data:`MIN_FREE_TEXT`, and the header's longest word."""
        name, widest = self.names[index], self._widest[index]
        if name in self.times:
            shown = widest
        elif name in FREE_TEXT_COLUMNS:
            shown = min(widest, MIN_FREE_TEXT)
        else:
            shown = min(widest, MAX_WHOLE_WIDTH)
        return max(shown, self._header(index), 1)

    def want(self, index: int) -> int:
        """Every cell on one line."""
        return max(self._widest[index], self._header(index), 1)

    def width(self, shown: list[int]) -> int:
        """The width the ``shown`` columns need, borders included."""
        return _borders(len(shown)) + sum(self.need(index) for index in shown)

    def droppable(self, optional: tuple[str, ...] | None) -> list[int]:
        """The columns that may be left out, least important first."""
        if optional is None:
            optional = (
                *(name for name in OPTIONAL_COLUMNS if name in self.names),
                *sorted(
                    (n for n in self.names if n in FREE_TEXT_COLUMNS and n not in OPTIONAL_COLUMNS),
                    key=lambda n: -self._widest[self.names.index(n)],
                ),
            )
        return [self.names.index(name) for name in optional if name in self.names]


def fit(console: Console, data: DataTable) -> DataTable:
    """``data`` as it fits the console. On a terminal the table is never wider than the
    console: columns are left out, least important first (the table's ``optional``),
    until the others fit whole (names, ids, versions and times; free text wraps, at least
    :data:`MIN_FREE_TEXT` wide); then times are shown as their date alone; a column left
    out is shown again if it fits after all, and a caption names every column left out
    (``-o json`` and ``-o tsv`` keep everything). Only when even the columns that stay are
    wider than the console are names shortened, ending with ``…``.
    Off a terminal no column is left out and no cell wraps: a row is one line (``grep``
    finds it); free-text columns are cut to fit (ending with ``…``) while ids stay whole,
    so a line may be wider than the console (:attr:`DataTable.line_width`)."""
    if not console.is_terminal:
        cells = [list(row) for row in data.cells]
        fitted = _rich_table(data.title_text, list(data.column_names), cells, data.time_columns)
        fitted.line_width = _one_line_rows(fitted, console.width)
        return fitted
    width = console.width
    columns = _Columns(data)
    shown = list(range(len(columns.names)))
    left_out: list[int] = []
    droppable = columns.droppable(data.optional)
    while columns.width(shown) > width:
        candidates = [index for index in droppable if index in shown]
        if candidates and len(shown) > 1:
            shown.remove(candidates[0])
            left_out.append(candidates[0])
        elif not columns.dated and columns.times & {columns.names[i] for i in shown}:
            columns.date_only()
        else:
            break
    for index in reversed(list(left_out)):  # the most important first: shown if it fits
        if columns.width(sorted([*shown, index])) <= width:
            shown = sorted([*shown, index])
            left_out.remove(index)
    widths = _terminal_widths(columns, shown, width)
    fitted = _rich_table(
        data.title_text,
        [columns.names[i] for i in shown],
        [[row[i] for i in shown] for row in columns.cells],
        columns.times,
        widths,
    )
    fitted.left_out = tuple(columns.names[i] for i in sorted(left_out))
    if fitted.left_out:
        names = ", ".join(fitted.left_out[:-1])
        names = f"{names} and {fitted.left_out[-1]}" if names else fitted.left_out[0]
        them = "them" if len(fitted.left_out) > 1 else "it"
        fitted.caption = (
            f"{names} left out to fit {width} columns:"
            f" a wider terminal, -o json or -o tsv shows {them}"
        )
        fitted.caption_justify = "left"
    return fitted


def _terminal_widths(columns: _Columns, shown: list[int], width: int) -> list[int]:
    """The width of each ``shown`` column, so that the table is never wider than
    ``width``: each what it needs, the room left shared out (narrowest first) up to what
    each wants; when even the needs do not fit, the widest columns are shortened: first
    all but names and times (to :data:`MIN_READABLE`), then names, then any."""
    widths = [columns.need(index) for index in shown]
    room = width - _borders(len(shown)) - sum(widths)
    if room < 0:
        names = [columns.names[index] for index in shown]
        times = [i for i, name in enumerate(names) if name in columns.times]
        whole = [i for i, name in enumerate(names) if name in WHOLE_COLUMNS]
        others = [i for i in range(len(names)) if i not in times and i not in whole]
        for tier, floor in ((others, MIN_READABLE), (whole, MIN_READABLE), (others, 1)):
            room += _narrow(widths, tier, -room, floor)
        room += _narrow(widths, list(range(len(names))), -room, 1)
        return widths
    wants = [columns.want(index) for index in shown]
    while room > 0:
        growing = [i for i, w in enumerate(widths) if w < wants[i]]
        if not growing:
            break
        narrowest = min(widths[i] for i in growing)
        for i in growing:
            if widths[i] == narrowest and room > 0:
                widths[i] += 1
                room -= 1
    return widths


def _narrow(widths: list[int], candidates: list[int], over: int, floor: int) -> int:
    """The widest of ``candidates`` narrowed, down to the next widest, until ``over``
    columns are saved or each is at ``floor``; in place. Returns the columns saved."""
    saved = 0
    while (left := over - saved) > 0:
        cut_able = [i for i in candidates if widths[i] > floor]
        if not cut_able:
            break
        top = max(widths[i] for i in cut_able)
        widest = [i for i in cut_able if widths[i] == top]
        below = max([widths[i] for i in cut_able if widths[i] < top], default=floor)
        step = min(top - below, -(-left // len(widest)))  # the widest down to the next
        for i in widest:
            widths[i] -= step
            saved += step
    return saved


def _one_line_rows(data: DataTable, width: int) -> int:
    """No cell of ``data`` wraps: the widest free-text columns are narrowed (to no less
    than :data:`MIN_READABLE`) until the table fits ``width``, and their cells end with
    ``…``; other columns (ids, versions, names) are kept whole up to :data:`MAX_ID_WIDTH`.
    Returns the width the table needs (``width`` or more)."""
    columns = list(data.column_names)
    widths = [
        min(MAX_ID_WIDTH, max(cell_len(name), _widest(data.cells, i)))
        for i, name in enumerate(columns)
    ]
    borders = _borders(len(columns))
    free = [i for i, name in enumerate(columns) if name in FREE_TEXT_COLUMNS]
    _narrow(widths, free, sum(widths) + borders - width, MIN_READABLE)
    for column, column_width in zip(data.columns, widths, strict=True):
        column.no_wrap = True
        column.width = column.max_width = column_width
    return max(width, sum(widths) + borders)


def cell(value: object) -> Text:
    """One table cell (None as a dash, times short, states coloured by :func:`styled`)."""
    if isinstance(value, Text):
        return value
    if value is None or value == "":
        return Text("-")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, datetime):
        return Text(value.strftime(TIME_FORMAT))
    if isinstance(value, timedelta):
        return Text(age(value))
    if isinstance(value, AccountId):
        return Text(clean(short_account(value)))
    if isinstance(value, KeyId):
        return Text(clean(short_key(value)))
    if isinstance(value, Enum):
        return Text(clean(str(value.value)))
    return Text(clean(str(value)))


def tsv_cell(value: object) -> str:
    """One ``--output tsv`` field: the full value, on one line, without tabs."""
    if isinstance(value, Text):
        value = value.plain
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds():.0f}"
    if isinstance(value, Enum):
        value = value.value
    return clean(str(value), newlines=False).replace("\n", " ")


def styled(state: str) -> Text:
    """A state word in its colour (no colour with NO_COLOR or when piped)."""
    return Text(clean(state), style=STATE_STYLES.get(state, ""))


def age(delta: timedelta) -> str:
    """A duration for humans: 45s, 12m, 5.2h, 3.0d."""
    seconds = delta.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 event``, ``2 events`` (``nouns`` when adding an s is wrong)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def short_account(account: AccountId) -> str:
    """``resource-group/name`` of an account."""
    return f"{account.resource_group}/{account.name}"


def short_key(key: KeyId) -> str:
    """``vault/key`` (and ``/version`` when versioned, shortened)."""
    text = f"{key.vault_name}/{key.name}"
    return f"{text}/{short_version(key.version)}" if key.version else text


def short_version(version: str | None) -> str:
    """The first 8 characters of a version (enough to tell versions apart)."""
    return version[:8] if version else "-"
