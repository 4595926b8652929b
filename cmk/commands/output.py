"""How every command speaks: rich tables on stdout, or one JSON document with ``--json``;
progress bars and messages on stderr; exit codes 0 (all good), 1 (failures or findings),
2 (usage or configuration error)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cmk.keyid import KeyId
from cmk.resource_id import AccountId
from cmk.usecases.report import to_jsonable

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "Ticker",
    "common_options",
    "short_account",
    "short_key",
    "short_version",
]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

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
        "--json", action="store_true", help="print one JSON document on stdout (for scripts)"
    )
    parent.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens (INFO) on stderr"
    )
    return parent


class Ticker(Protocol):
    """What long work reports progress to."""

    def advance(self, amount: int = 1) -> None: ...


class _NoTicker:
    def advance(self, amount: int = 1) -> None:
        return None


class _ProgressTicker:
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1) -> None:
        self._progress.advance(self._task, amount)  # type: ignore[arg-type]


class Output:
    """The console of one command run."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.console = Console(highlight=False)
        if not self.console.is_terminal:
            self.console.width = PIPE_WIDTH
        self.err = Console(stderr=True, highlight=False)

    def emit_json(self, document: object) -> None:
        """Print ``document`` (reports are converted) as the one JSON document on stdout."""
        sys.stdout.write(json.dumps(to_jsonable(document), indent=2) + "\n")
        sys.stdout.flush()

    def print(self, *renderables: object) -> None:
        """Print for humans on stdout (nothing in JSON mode)."""
        if not self.json_mode:
            self.console.print(*renderables)

    def note(self, message: str) -> None:
        """A message for humans on stderr (also in JSON mode)."""
        self.err.print(message, soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Ticker]:
        """A progress bar on stderr while the block runs (only on a terminal)."""
        if total <= 0 or not self.err.is_terminal:
            yield _NoTicker()
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield _ProgressTicker(progress, task)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """A rich table; cells are rendered with :func:`cell`."""
    result = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(cell(value) for value in row))
    return result


def cell(value: object) -> str:
    """One table cell as text (None as a dash, times short, states coloured)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return age(value)
    if isinstance(value, AccountId):
        return short_account(value)
    if isinstance(value, KeyId):
        return short_key(value)
    return str(value)


def styled(state: str) -> str:
    """A state word in its colour."""
    style = STATE_STYLES.get(state)
    return f"[{style}]{state}[/]" if style else state


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
