"""How every command speaks: tables on stdout, one JSON document with ``-o json``
(``--json``) or tab-separated rows with ``-o tsv``; progress and messages on stderr; exit
codes 0 (all good), 1 (failures or findings), 2 (usage or configuration error), 130
(interrupted). Text from outside (errors, Azure's messages, resource names) is never
parsed as markup and its control characters are shown escaped."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cmk.keyid import KeyId
from cmk.resource_id import AccountId
from cmk.usecases.report import to_jsonable

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_OK",
    "EXIT_USAGE",
    "OUTPUT_FORMATS",
    "DataTable",
    "Output",
    "Ticker",
    "cell",
    "clean",
    "common_options",
    "output_format",
    "short_account",
    "short_key",
    "short_version",
    "styled",
    "table",
    "tsv_cell",
]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

#: The formats of ``-o/--output`` (as the Azure CLI's, without yaml).
OUTPUT_FORMATS = ("table", "json", "tsv")

#: Unicode categories shown escaped: controls, formats (bidi overrides), surrogates,
#: private use and unassigned.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

#: Columns a narrow terminal never cuts (up to MAX_WHOLE_WIDTH): what names the row.
WHOLE_COLUMNS = frozenset({"account", "state", "result", "outcome"})
MAX_WHOLE_WIDTH = 48
#: The narrowest a column is worth showing (``abcdefg…``).
MIN_READABLE = 10
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
)

#: How often work of unknown length says it is still going, when not on a terminal.
STILL_WORKING_SECONDS = 10.0

#: Width of tables when stdout is not a terminal (pipes, CI logs, tests).
PIPE_WIDTH = 200

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


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand takes (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default=None,
        help="table (default, for humans), json (one document, for scripts) or tsv"
        " (tab-separated rows without headers, for shell loops)",
    )
    parent.add_argument("--json", action="store_true", help="the same as --output json")
    parent.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens (INFO) on stderr"
    )
    return parent


def output_format(args: argparse.Namespace) -> str:
    """The output format of a run: ``--output``, with ``--json`` as its alias."""
    chosen = getattr(args, "output", None)
    return "json" if getattr(args, "json", False) else str(chosen or "table")


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


class Ticker(Protocol):
    """What long work reports progress to."""

    def advance(self, amount: int = 1) -> None: ...

    def retried(self) -> None: ...

    @property
    def retries(self) -> int: ...


class _NoTicker:
    retries = 0

    def advance(self, amount: int = 1) -> None:
        return None

    def retried(self) -> None:
        return None


class _ProgressTicker:
    """A live bar on a terminal; retries are counted in its description."""

    def __init__(self, progress: Progress, task: int, description: str) -> None:
        self._progress, self._task, self._description = progress, task, description
        self.retries = 0

    def advance(self, amount: int = 1) -> None:
        self._progress.advance(self._task, amount)  # type: ignore[arg-type]

    def retried(self) -> None:
        self.retries += 1
        text = f"{self._description} ({self.retries} retries)"
        self._progress.update(self._task, description=text)  # type: ignore[arg-type]


class _LineTicker:
    """Progress as a line on stderr at every tenth of the work (not on a terminal)."""

    def __init__(self, err: Console, description: str, total: int) -> None:
        self._err, self._description, self._total = err, description, total
        self._done = self._shown = 0
        self.retries = 0

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        tenth = self._done * 10 // self._total
        if tenth > self._shown:
            self._shown = tenth
            retries = f", {self.retries} retries" if self.retries else ""
            line = f"{self._description}: {self._done}/{self._total}{retries}"
            self._err.print(Text(clean(line)), soft_wrap=True)

    def retried(self) -> None:
        self.retries += 1


class DataTable(Table):
    """A rich table that also keeps its cells (to fit a narrow terminal) and its rows as
    plain text for ``--output tsv``."""

    title_text: str = ""
    column_names: list[str]
    cells: list[list[Text]]
    tsv_rows: list[list[str]]


class Output:
    """The console of one command run. Strings given to it are printed as they are: never
    parsed as markup, emoji codes or highlighting; styles come only from :class:`Text`."""

    def __init__(self, json_mode: bool, output_format: str | None = None) -> None:
        self.format = output_format or ("json" if json_mode else "table")
        self.json_mode = self.format == "json"
        self.console = Console(highlight=False, markup=False, emoji=False)
        if not self.console.is_terminal:
            self.console.width = PIPE_WIDTH
        self.err = Console(stderr=True, highlight=False, markup=False, emoji=False)

    def emit_json(self, document: object) -> None:
        """Print ``document`` (reports are converted) as the one JSON document on stdout."""
        sys.stdout.write(json.dumps(to_jsonable(document), indent=2) + "\n")
        sys.stdout.flush()

    def print(self, *renderables: object) -> None:
        """Print for humans on stdout: tables and lines in table mode, only the rows of
        tables with ``--output tsv``, nothing with ``--output json``."""
        if self.format == "tsv":
            for renderable in renderables:
                if isinstance(renderable, DataTable):
                    for row in renderable.tsv_rows:
                        sys.stdout.write("\t".join(row) + "\n")
            sys.stdout.flush()
            return
        if self.json_mode:
            return
        for renderable in renderables:
            if isinstance(renderable, str | Text):  # a line: never wrapped (grep-able)
                self.console.print(_safe(renderable), soft_wrap=True)
            elif isinstance(renderable, DataTable):
                if renderable.title_text:
                    self.console.print(Text(clean(renderable.title_text)), soft_wrap=True)
                self.console.print(fit(self.console, renderable))
            else:
                self.console.print(renderable)

    def note(self, message: str) -> None:
        """A message for humans on stderr (also in JSON mode), printed as plain text."""
        self.err.print(Text(clean(message)), soft_wrap=True)

    @contextmanager
    def working(self, description: str) -> Iterator[None]:
        """While work of unknown length runs: a spinner on stderr on a terminal, else a
        line every :data:`STILL_WORKING_SECONDS` (none when it is over sooner)."""
        if self.err.is_terminal:
            with self.err.status(Text(clean(description)), spinner="dots"):
                yield
            return
        done = threading.Event()
        started = time.monotonic()

        def remind() -> None:
            while not done.wait(STILL_WORKING_SECONDS):
                seconds = time.monotonic() - started
                self.err.print(Text(clean(f"{description}... ({seconds:.0f}s)")), soft_wrap=True)

        reminder = threading.Thread(target=remind, name="cmk-still-working", daemon=True)
        reminder.start()
        try:
            yield
        finally:
            done.set()
            reminder.join()

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Ticker]:
        """Progress on stderr while the block runs: a live bar on a terminal, a line at
        every tenth of the work otherwise."""
        if total <= 0:
            yield _NoTicker()
            return
        if not self.err.is_terminal:
            yield _LineTicker(self.err, description, total)
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield _ProgressTicker(progress, task, description)


def _safe(renderable: object) -> object:
    return Text(clean(renderable)) if isinstance(renderable, str) else renderable


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> DataTable:
    """A table; cells are rendered with :func:`cell` (plain text, never markup). Long
    words end with an ellipsis instead of being split; ``-o json`` has the full values."""
    cells = [[cell(value) for value in row] for row in rows]
    result = _rich_table(title, list(columns), cells)
    result.tsv_rows = [[tsv_cell(value) for value in row] for row in rows]
    return result


def _rich_table(title: str, columns: list[str], cells: list[list[Text]]) -> DataTable:
    result = DataTable(show_lines=False)  # the title is a line of its own: never padded
    for index, column in enumerate(columns):
        widest = max((len(row[index].plain) for row in cells if index < len(row)), default=0)
        keep = column in WHOLE_COLUMNS
        result.add_column(
            Text(clean(column)),
            overflow="ellipsis",
            width=min(widest, MAX_WHOLE_WIDTH) if keep and widest else None,
        )
    for row_cells in cells:
        result.add_row(*row_cells)
    result.title_text, result.column_names, result.cells = title, columns, cells
    result.tsv_rows = []
    return result


def _needed(columns: list[str], cells: list[list[Text]]) -> int:
    """The width a table needs to stay readable: whole columns whole, the others at least
    :data:`MIN_READABLE` characters, plus borders and padding."""
    total = 1
    for index, column in enumerate(columns):
        widest = max((len(row[index].plain) for row in cells if index < len(row)), default=0)
        wanted = min(widest, MAX_WHOLE_WIDTH) if column in WHOLE_COLUMNS else MIN_READABLE
        total += max(min(wanted, widest), 1) + 3
    return total


def fit(console: Console, data: DataTable) -> DataTable:
    """``data`` without its optional columns, one by one, until it fits the console (the
    columns that name a row stay whole; ``-o json`` and ``-o tsv`` keep everything)."""
    columns, cells = list(data.column_names), [list(row) for row in data.cells]
    fitted = data
    while _needed(columns, cells) > console.width:
        optional = [name for name in OPTIONAL_COLUMNS if name in columns]
        if not optional:
            break
        drop = columns.index(optional[0])
        del columns[drop]
        for row in cells:
            del row[drop]
        fitted = _rich_table(data.title_text, columns, cells)
    return fitted


def cell(value: object) -> Text:
    """One table cell (None as a dash, times short, states coloured by :func:`styled`)."""
    if isinstance(value, Text):
        return value
    if value is None or value == "":
        return Text("-")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, datetime):
        return Text(value.strftime("%Y-%m-%d %H:%M:%S"))
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
