"""One command run: logging, settings read once from the environment, the runtime and the
engine, and the mapping of whatever the command raises to an exit code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from cmk.commands.console_log import ConsoleLog
from cmk.commands.errors import Failure, explain
from cmk.commands.interrupt import EXIT_INTERRUPTED, Journal
from cmk.commands.output import Output, OutputFailed, output_format
from cmk.commands.unreachable import sandbox_gone, sandbox_unreachable
from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.usecases.answers import error_answer
from cmk.usecases.context import Engine

__all__ = ["Session", "configure_logging", "fail", "interrupted", "run_command"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream(): it flushes the old, maybe closed, stream
        super().emit(record)


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
#: Per-account records (one line per account) are counted, not printed, without -v.
_CONSOLE = ConsoleLog()
_HANDLER.addFilter(_CONSOLE)


def configure_logging(verbose: bool, *, quiet: bool = False) -> None:
    """INFO with ``-v``; else warnings only. Alerts are shown by the commands themselves,
    so their ERROR log lines (for Azure Monitor) are hidden unless verbose; so are the
    per-account lines (a failed rotation, a write lease taken over or kept), counted
    instead and told once at the end (:mod:`cmk.commands.console_log`)."""
    _CONSOLE.start(verbose=verbose)
    cmk, azure = logging.getLogger("cmk"), logging.getLogger("azure")
    if _HANDLER not in cmk.handlers:
        cmk.addHandler(_HANDLER)
        azure.addHandler(_HANDLER)
    if verbose:
        cmk.setLevel(logging.INFO)
        azure.setLevel(logging.WARNING)
    else:
        cmk.setLevel(logging.CRITICAL if quiet else logging.WARNING)
        azure.setLevel(logging.CRITICAL if quiet else logging.ERROR)
    logging.getLogger("cmk.alerts").setLevel(logging.NOTSET if verbose else logging.CRITICAL)
    # the scope's warnings are the command's own (cmk: warning: ...); logged for the app
    logging.getLogger("cmk.usecases.subscriptions").setLevel(
        logging.NOTSET if verbose else logging.ERROR
    )


@dataclass
class Session:
    """What a command body gets: the output, the settings and the runtime."""

    args: argparse.Namespace
    output: Output
    settings: Settings
    runtime: Runtime
    journal: Journal = field(default_factory=lambda: Journal("cmk"))

    def engine(self) -> Engine:
        """The engine, honouring ``--dry-run`` when the command has it."""
        dry_run = getattr(self.args, "dry_run", False)
        return self.runtime.engine(dry_run=True if dry_run else None)


Body = Callable[[Session], Awaitable[int]]


def fail(args: argparse.Namespace, output: Output, error: BaseException) -> int:
    """Report ``error`` on stderr (and as the JSON document with ``--json``)."""
    return report(args, output, sandbox_gone(error, os.environ) or explain(error))


def report(args: argparse.Namespace, output: Output, failure: Failure) -> int:
    """Report ``failure`` on stderr (and as the JSON document with ``--json``)."""
    if not failure.fix and failure.kind == "usage":  # every usage error says what to do
        failure = replace(failure, fix=f"see `cmk {getattr(args, 'command', '')} --help`")
    output.note(failure.text())
    if output.json_mode:
        output.emit_error(
            {
                "error": {
                    "kind": failure.kind,
                    "message": failure.message,
                    "fix": failure.fix,
                    "exit_code": failure.code,
                }
            }
        )
    return failure.code


def interrupted(args: argparse.Namespace, output: Output, journal: Journal) -> int:
    """Report an interruption (Ctrl-C): what was done, what was not, what finishes it."""
    output.note(journal.message())
    if output.json_mode:
        fix = journal.fix()
        answer = error_answer("interrupted", journal.message(), fix, EXIT_INTERRUPTED)
        output.emit_error(answer.document)
    return EXIT_INTERRUPTED


async def _run(
    args: argparse.Namespace, output: Output, settings: Settings, body: Body, journal: Journal
) -> int:
    async with Runtime(settings) as runtime:
        session = Session(args, output, settings, runtime, journal)
        code = await body(session)
    for line in _CONSOLE.summary():
        output.note(f"cmk: {line}")
    return code


def run_command(args: argparse.Namespace, body: Body, *, storage: bool = True) -> int:
    """Read the settings, run ``body`` on a fresh event loop, map errors to exit codes.
    With ``storage``, AzureWebJobsStorage must be configured (queue, ledger, alerts)."""
    output = Output(
        bool(getattr(args, "json", False)), output_format(args), getattr(args, "query", None)
    )
    configure_logging(bool(getattr(args, "verbose", False)))
    journal = Journal(str(getattr(args, "command", "") or "cmk"))
    gone = sandbox_unreachable(os.environ)
    if gone is not None:  # at once, not after the SDK's retries of every refused request
        return report(args, output, gone)
    try:
        settings = Settings.from_environ(os.environ, require_storage=storage)
        _CONSOLE.lease_ttl = settings.write_lease_ttl
        journal.leases = _CONSOLE.leases
        return asyncio.run(_run(args, output, settings, body, journal))
    except KeyboardInterrupt:
        return interrupted(args, output, journal)
    except (BrokenPipeError, OutputFailed):
        raise  # the reader of stdout is gone: nothing to tell it (cmk.cli ends quietly)
    except Exception as error:
        logging.getLogger(__name__).debug("command failed", exc_info=True)
        return fail(args, output, error)
