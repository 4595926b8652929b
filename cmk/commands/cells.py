"""How one value is shown: text from outside made safe for a terminal, table cells and
tsv fields, coloured states, and tables that fit the terminal."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import Enum

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

#: Columns a narrow terminal never cuts (up to MAX_WHOLE_WIDTH): what names the row.
WHOLE_COLUMNS = frozenset({"account", "state", "result", "outcome"})
MAX_WHOLE_WIDTH = 48
#: The narrowest a column is worth showing (``abcdefg…``).
MIN_READABLE = 10
#: Columns of free text (messages, reasons, fixes, lists): off a terminal these are cut
#: to fit the width; ids, versions and names stay whole (the line is longer instead).
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
#: fragments: it is left out instead (after the optional columns), and the table says so.
MIN_FREE_TEXT = 24
#: Columns left out, in this order, when a table does not fit the terminal.
OPTIONAL_COLUMNS = (
    "trigger",
    "attempts",
    "enqueued",
    "created",
    "age",
    "subscription",
    "newest",
    "bound",
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
    tsv_rows: list[list[str]]


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    tsv: Sequence[Sequence[object]] | None = None,
) -> DataTable:
    """A table; cells are rendered with :func:`cell` (plain text, never markup). Long
    words end with an ellipsis instead of being split; ``-o json`` has the full values.
    ``tsv`` are the rows of ``--output tsv`` when they differ from the table's (full ids
    and versions where the table shortens them, one value per field): each field is
    rendered with :func:`tsv_cell`."""
    cells = [[cell(value) for value in row] for row in rows]
    times = frozenset(
        name
        for index, name in enumerate(columns)
        if any(isinstance(row[index], datetime) for row in rows if index < len(row))
    )
    result = _rich_table(title, list(columns), cells, times)
    fields = rows if tsv is None else tsv
    result.tsv_rows = [[tsv_cell(value) for value in row] for row in fields]
    return result


def _widest(cells: list[list[Text]], index: int) -> int:
    """The longest text in column ``index`` (0 for none)."""
    return max((len(row[index].plain) for row in cells if index < len(row)), default=0)


def _rich_table(
    title: str,
    columns: list[str],
    cells: list[list[Text]],
    times: frozenset[str] = frozenset(),
    *,
    ids_whole: bool = False,
) -> DataTable:
    """The rich table of ``cells``. ``ids_whole`` (a terminal): every column that is not
    free text keeps its width (up to :data:`MAX_WHOLE_WIDTH`), so what the terminal lacks
    is taken from the free text, which wraps — names and ids are not cut first."""
    result = DataTable(show_lines=False)  # the title is a line of its own: never padded
    for index, column in enumerate(columns):
        widest = _widest(cells, index)
        if column in times and widest:  # a time is shown whole, on one line
            result.add_column(Text(clean(column)), no_wrap=True, width=widest, min_width=widest)
            continue
        keep = column in WHOLE_COLUMNS
        whole = min(widest, MAX_WHOLE_WIDTH)
        held = ids_whole and column not in FREE_TEXT_COLUMNS and widest
        result.add_column(
            Text(clean(column)),
            overflow="ellipsis",
            width=whole if keep and widest else None,
            min_width=max([whole, *(len(word) for word in column.split())]) if held else None,
        )
    for row_cells in cells:
        result.add_row(*row_cells)
    result.title_text, result.column_names, result.cells = title, columns, cells
    result.time_columns = times
    result.tsv_rows = []
    return result


def _needed(
    columns: list[str], cells: list[list[Text]], times: frozenset[str], *, ids_whole: bool = False
) -> int:
    """The width a table needs to stay readable: whole columns and times whole, the
    others at least :data:`MIN_READABLE` characters (and their header's longest word),
    plus borders and padding. ``ids_whole`` (a terminal): every column but free text is
    whole (up to :data:`MAX_WHOLE_WIDTH`), free text at least :data:`MIN_FREE_TEXT`."""
    total = 1
    for index, column in enumerate(columns):
        widest = _widest(cells, index)
        if column in times:
            wanted = widest
        elif ids_whole and column in FREE_TEXT_COLUMNS:
            wanted = min(widest, MIN_FREE_TEXT)
        else:
            whole = column in WHOLE_COLUMNS or ids_whole
            wanted = min(widest, MAX_WHOLE_WIDTH) if whole else MIN_READABLE
            wanted = min(wanted, widest)
        wanted = max([wanted, *(len(word) for word in column.split())])
        total += max(wanted, 1) + 3
    return total


def _dates_only(columns: list[str], cells: list[list[Text]], times: frozenset[str]) -> None:
    """Times shown as their date alone (``2027-12-01``), in place."""
    for index, column in enumerate(columns):
        if column not in times:
            continue
        for row in cells:
            text = row[index]
            if len(text.plain) > DATE_LENGTH:
                row[index] = Text(text.plain[:DATE_LENGTH], style=text.style)


def fit(console: Console, data: DataTable) -> DataTable:
    """``data`` without its optional columns, one by one, until it fits the console (the
    columns that name a row stay whole; ``-o json`` and ``-o tsv`` keep everything); if
    it is still too wide, its times are shown as their date alone. A time is never cut.
    Off a terminal no cell wraps: a row is one line (``grep`` finds it); free-text
    columns are cut to fit (ending with ``…``) while ids stay whole, so a line may be
    wider than the console (:attr:`DataTable.line_width`)."""
    columns, cells = list(data.column_names), [list(row) for row in data.cells]
    times, fitted, dated = data.time_columns, data, False
    terminal = console.is_terminal
    left_out: list[str] = []
    if terminal:
        fitted = _rich_table(data.title_text, columns, cells, times, ids_whole=True)
    while _needed(columns, cells, times, ids_whole=terminal) > console.width:
        optional = [name for name in OPTIONAL_COLUMNS if name in columns]
        free = [name for name in columns if name in FREE_TEXT_COLUMNS]
        if optional:
            _drop(columns, cells, optional[0])
        elif terminal and free and len(columns) > 1:
            # The names and ids of each row matter more than the words about it (which
            # would wrap into a tall column of fragments): -o json has them.
            widest = max(free, key=lambda name: _widest(cells, columns.index(name)))
            _drop(columns, cells, widest)
            left_out.append(widest)
        elif not dated and times & set(columns):
            _dates_only(columns, cells, times)
            dated = True
        else:
            break
        fitted = _rich_table(data.title_text, columns, cells, times, ids_whole=terminal)
    if terminal and _needed(columns, cells, times, ids_whole=True) > console.width:
        # Even the names alone are wider than the terminal: let them share its width.
        fitted = _rich_table(data.title_text, columns, cells, times)
    if left_out:
        names = " and ".join(left_out)
        fitted.caption = f"{names} left out to fit {console.width} columns: -o json shows it"
        fitted.caption_justify = "left"
    fitted.line_width = None
    if not console.is_terminal:
        fitted.line_width = _one_line_rows(fitted, console.width)
    return fitted


def _drop(columns: list[str], cells: list[list[Text]], name: str) -> None:
    """Column ``name`` left out, in place."""
    index = columns.index(name)
    del columns[index]
    for row in cells:
        del row[index]


def _one_line_rows(data: DataTable, width: int) -> int:
    """No cell of ``data`` wraps: the widest free-text columns are narrowed (to no less
    than :data:`MIN_READABLE`) until the table fits ``width``, and their cells end with
    ``…``; other columns (ids, versions, names) are kept whole up to :data:`MAX_ID_WIDTH`.
    Returns the width the table needs (``width`` or more)."""
    columns = list(data.column_names)
    widths = [
        min(MAX_ID_WIDTH, max(len(name), _widest(data.cells, i))) for i, name in enumerate(columns)
    ]
    borders = 3 * len(columns) + 1  # "│ " before each cell, " │" after the last
    budget = width - borders
    free = [i for i, name in enumerate(columns) if name in FREE_TEXT_COLUMNS]
    while (over := sum(widths) - budget) > 0:
        cut_able = [i for i in free if widths[i] > MIN_READABLE]
        if not cut_able:
            break
        top = max(widths[i] for i in cut_able)
        widest = [i for i in cut_able if widths[i] == top]
        below = max([widths[i] for i in cut_able if widths[i] < top], default=MIN_READABLE)
        step = min(top - below, -(-over // len(widest)))  # the widest down to the next
        for i in widest:
            widths[i] -= step
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
