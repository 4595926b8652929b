"""How every command speaks: tables on stdout, one JSON document with ``-o json``
(``--json``) or tab-separated rows with ``-o tsv``, or what ``--query`` (JMESPath) picks
from the JSON document; progress and messages on stderr; exit
codes 0 (all good), 1 (failures or findings), 2 (usage or configuration error), 130
(interrupted). Text from outside (errors, Azure's messages, resource names) is never
parsed as markup and its control characters are shown escaped."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

from jmespath.exceptions import JMESPathError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.text import Text

from cmk.commands.cells import (
    DataTable,
    age,
    cell,
    clean,
    fit,
    plural,
    short_account,
    short_key,
    short_version,
    styled,
    table,
    tsv_cell,
)
from cmk.commands.query import InvalidQueryError, Query, result_table, tsv_lines
from cmk.usecases.report import to_jsonable

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_OK",
    "EXIT_USAGE",
    "OUTPUT_FORMATS",
    "DataTable",
    "LineTicker",
    "Output",
    "OutputFailed",
    "Query",
    "Ticker",
    "age",
    "cell",
    "clean",
    "common_options",
    "output_format",
    "plural",
    "query_type",
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
#: How often work of unknown length says it is still going, when not on a terminal.
STILL_WORKING_SECONDS = 10.0
#: How often progress off a terminal checks whether such a line is due.
REMIND_CHECK_SECONDS = 1.0

#: Width of tables when stdout is not a terminal (pipes, CI logs, tests).
PIPE_WIDTH = 200


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
        "--query",
        metavar="JMESPATH",
        type=query_type,
        default=None,
        help="a JMESPath expression applied to the JSON document, as in the Azure CLI;"
        " the result is shown as json unless --output says tsv or table",
    )
    parent.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens (INFO) on stderr"
    )
    return parent


def query_type(text: str) -> Query:
    """The ``type`` of ``--query``: the compiled query, or argparse's error (exit 2)."""
    try:
        return Query(text)
    except InvalidQueryError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def output_format(args: argparse.Namespace) -> str:
    """The output format of a run: ``--output``, with ``--json`` as its alias."""
    chosen = getattr(args, "output", None)
    return "json" if getattr(args, "json", False) else str(chosen or "table")


class Ticker(Protocol):
    """What long work reports progress to: jobs done, transient errors retried, and waits
    for an account's write lease that another job holds (not errors: the job is deferred
    until the lease is free)."""

    def advance(self, amount: int = 1) -> None: ...

    def retried(self) -> None: ...

    def waited(self, until: datetime | None = None) -> None:
        """A job waits for a write lease another job holds (``until``: its expiry)."""
        ...

    @property
    def retries(self) -> int: ...

    @property
    def waits(self) -> int: ...


class _NoTicker:
    retries = 0
    waits = 0

    def advance(self, amount: int = 1) -> None:
        return None

    def retried(self) -> None:
        return None

    def waited(self, until: datetime | None = None) -> None:
        return None


def _counts(retries: int, waits: int, until: datetime | None = None) -> str:
    """The retries and lease waits of a ticker, for its line or bar ("" for none); with
    ``until``, when the last lease waited for runs out (so a long wait is not a hang)."""
    parts = [f"{retries} retries"] if retries else []
    if waits:
        held = f", the latest held until {until:%H:%M:%S} UTC" if until is not None else ""
        parts.append(f"{waits} waits for a write lease{held}")
    return ", ".join(parts)


def _later(known: datetime | None, until: datetime | None) -> datetime | None:
    return until if known is None or (until is not None and until > known) else known


class _ProgressTicker:
    """A live bar on a terminal; retries and lease waits are counted in its description."""

    def __init__(self, progress: Progress, task: int, description: str) -> None:
        self._progress, self._task, self._description = progress, task, description
        self.retries = self.waits = 0
        self.until: datetime | None = None

    def advance(self, amount: int = 1) -> None:
        self._progress.advance(self._task, amount)  # type: ignore[arg-type]

    def retried(self) -> None:
        self.retries += 1
        self._describe()

    def waited(self, until: datetime | None = None) -> None:
        self.waits += 1
        self.until = _later(self.until, until)
        self._describe()

    def _describe(self) -> None:
        text = f"{self._description} ({_counts(self.retries, self.waits, self.until)})"
        self._progress.update(self._task, description=text)  # type: ignore[arg-type]


class LineTicker:
    """Progress as lines on stderr when it is not a terminal: one at every tenth of the
    work, and one at least every :data:`STILL_WORKING_SECONDS` while work goes on
    (:meth:`remind` is called periodically; ``clock`` is injected for tests)."""

    def __init__(
        self,
        err: Console,
        description: str,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        every: float = STILL_WORKING_SECONDS,
    ) -> None:
        self._err, self._description, self._total = err, description, total
        self._clock, self._every = clock, every
        self._done = self._shown = 0
        self._started = self._last = clock()
        self._lock = threading.Lock()
        self.retries = self.waits = 0
        self.until: datetime | None = None

    def advance(self, amount: int = 1) -> None:
        with self._lock:
            self._done += amount
            tenth = self._done * 10 // self._total
            if tenth > self._shown:
                self._shown = tenth
                self._line()
                return
        self.remind()

    def retried(self) -> None:
        self.retries += 1
        self.remind()

    def waited(self, until: datetime | None = None) -> None:
        self.waits += 1
        self.until = _later(self.until, until)
        self.remind()

    def remind(self) -> None:
        """A line if none was printed for :data:`STILL_WORKING_SECONDS`."""
        with self._lock:
            if self._clock() - self._last >= self._every:
                self._line()

    def _line(self) -> None:
        now = self._clock()
        self._last = now
        counts = _counts(self.retries, self.waits, self.until)
        line = (
            f"{self._description}: {self._done}/{self._total}"
            + (f", {counts}" if counts else "")
            + f" ({now - self._started:.0f}s)"
        )
        self._err.print(Text(clean(line)), soft_wrap=True)


class OutputFailed(Exception):
    """Writing the command's output to stdout failed for another reason than its reader
    going away (a full disk, a quota, an I/O error): nothing more can be written there,
    so :mod:`cmk.cli` says so on stderr and exits 1 (a closed pipe stays BrokenPipeError:
    exit 141, quietly)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.reason = error.strerror or str(error)


@contextmanager
def _writing() -> Iterator[None]:
    """Around every write to stdout: its OSError becomes :class:`OutputFailed`."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputFailed(error) from error


class _Stdout(Console):
    """stdout's console: a reader that went away ends the command as a closed pipe does
    anywhere else in `cmk` (exit 141, see :mod:`cmk.cli`), not with rich's exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class Output:
    """The console of one command run. Strings given to it are printed as they are: never
    parsed as markup, emoji codes or highlighting; styles come only from :class:`Text`."""

    def __init__(
        self, json_mode: bool, output_format: str | None = None, query: Query | None = None
    ) -> None:
        self.format = output_format or ("json" if json_mode else "table")
        self.query = query
        # with a query, every command builds its JSON document; the query's result is
        # then shown in ``format``
        self.json_mode = self.format == "json" or query is not None
        self.console = _Stdout(highlight=False, markup=False, emoji=False)
        if not self.console.is_terminal:
            self.console.width = PIPE_WIDTH
        self.err = Console(stderr=True, highlight=False, markup=False, emoji=False)

    def emit_json(self, document: object) -> None:
        """Print ``document`` (reports are converted) as the one JSON document on stdout,
        or what ``--query`` picks from it, in the chosen format."""
        with _writing():
            self._emit_json(document)

    def _emit_json(self, document: object) -> None:
        data = to_jsonable(document)
        if self.query is None:
            self._write_json(data)
            return
        try:
            result = self.query.search(data)
        except JMESPathError as error:
            # the work is done: never lose its result for a query that does not fit it
            reason = " ".join(str(error).split()) or type(error).__name__
            self.note(
                f"cmk: warning: --query could not be applied: {reason}; the whole JSON"
                " document follows, unfiltered (the exit code is the command's own)"
            )
            self._write_json(data)
            return
        if result is None:  # nothing matched: nothing printed, as the Azure CLI does
            return
        if self.format == "tsv":
            sys.stdout.write("".join(f"{line}\n" for line in tsv_lines(result)))
            sys.stdout.flush()
        elif self.format == "table":
            shown = result_table(result)
            if shown is not None:
                self._print_table(shown)
        else:
            self._write_json(result)

    def emit_error(self, document: object) -> None:
        """An error's JSON document on stdout with ``-o json``; with ``--query`` nothing
        (the message is on stderr, as the Azure CLI does: a script sees no result)."""
        if self.format == "json" and self.query is None:
            with _writing():
                self._write_json(to_jsonable(document))

    @staticmethod
    def _write_json(data: object) -> None:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        sys.stdout.flush()

    def print(self, *renderables: object) -> None:
        """Print for humans on stdout: tables and lines in table mode, only the rows of
        tables with ``--output tsv``, nothing with ``--output json`` or ``--query``."""
        with _writing():
            self._print(*renderables)

    def _print(self, *renderables: object) -> None:
        if self.query is not None:
            return
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
                self._print_table(renderable)
            elif isinstance(renderable, Rule) and not self.console.is_terminal:
                # a heading, not a line drawn across the pipe's width
                title = renderable.title
                title = title if isinstance(title, str) else title.plain
                heading = f"{title} ──" if renderable.align == "left" else f"── {title} ──"
                self.console.print(Text(clean(heading)), soft_wrap=True)
            else:
                self.console.print(renderable)

    def _print_table(self, data: DataTable) -> None:
        """``data`` fitted to the console; off a terminal a table whose ids need more than
        the width is printed wider (a pipe has no width to wrap at)."""
        fitted = fit(self.console, data)
        width = self.console.width
        if fitted.line_width is not None and fitted.line_width > width:
            self.console.width = fitted.line_width
            try:
                self.console.print(fitted)
            finally:
                self.console.width = width
            return
        self.console.print(fitted)

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
        """Progress on stderr while the block runs: a live bar on a terminal; otherwise a
        line at every tenth of the work and at least every :data:`STILL_WORKING_SECONDS`."""
        if total <= 0:
            yield _NoTicker()
            return
        if not self.err.is_terminal:
            ticker = LineTicker(self.err, description, total)
            done = threading.Event()

            def remind() -> None:
                while not done.wait(REMIND_CHECK_SECONDS):
                    ticker.remind()

            reminder = threading.Thread(target=remind, name="cmk-progress", daemon=True)
            reminder.start()
            try:
                yield ticker
            finally:
                done.set()
                reminder.join()
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
