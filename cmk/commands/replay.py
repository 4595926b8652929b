"""``cmk replay FILE [--dry-run] [--inline]``: feed Key Vault events from a file through
the same handlers as the Functions app — typically Event Grid dead-letter blobs. FILE is
a JSON array, one JSON object, or JSON lines; Event Grid schema or CloudEvents. Jobs go
to the app's queue as they would from Event Grid; ``--inline`` moves the accounts here
instead. One outcome per event; exit 1 when an event was malformed or failed."""

from __future__ import annotations

import argparse
import codecs
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cmk.commands.errors import UsageError
from cmk.commands.inline import CollectedJobs, job_for_move, run_jobs
from cmk.commands.interrupt import Journal
from cmk.commands.output import (
    EXIT_FINDINGS,
    EXIT_OK,
    common_options,
    plural,
    short_key,
    styled,
    table,
)
from cmk.commands.session import Session, run_command
from cmk.commands.tables import job_summary, jobs_failed, print_jobs
from cmk.errors import CmkError
from cmk.events import (
    IgnoredEvent,
    KeyVaultEvent,
    KeyVaultEventType,
    RejectedEvent,
    parse_events,
)
from cmk.keyid import KeyId
from cmk.ports import RotationJob
from cmk.usecases import EventOutcome, EventReport, on_expired, on_near_expiry, on_new_version
from cmk.usecases.context import Engine

__all__ = ["ReplayOutcome", "add_parser", "load_items"]

Handler = Callable[[Engine, KeyVaultEvent], Awaitable[EventReport]]
HANDLERS: dict[KeyVaultEventType, Handler] = {
    KeyVaultEventType.NEW_VERSION: on_new_version,
    KeyVaultEventType.NEAR_EXPIRY: on_near_expiry,
    KeyVaultEventType.EXPIRED: on_expired,
}
BAD = frozenset({"rejected", "error", EventOutcome.VERSION_REJECTED.value})


@dataclass(frozen=True)
class ReplayOutcome:
    """What became of one event of the file."""

    index: int
    event_id: str | None
    event_type: str | None
    key_id: str | None
    outcome: str  # an EventOutcome value, or ignored / rejected / error
    detail: str
    report: EventReport | None = None


def add_parser(subparsers: Any) -> None:
    """Register ``cmk replay``."""
    parser = subparsers.add_parser(
        "replay",
        parents=[common_options()],
        help="feed Event Grid events from a file (dead letters) through the handlers",
        description=__doc__,
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="JSON array, object or lines")
    parser.add_argument("--dry-run", action="store_true", help="plan only, write nothing")
    parser.add_argument("--inline", action="store_true", help="move the accounts here")
    parser.set_defaults(func=replay_command)


#: Byte-order marks and the encoding each announces (UTF-32's first: it starts as UTF-16's).
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: What an event file should be, for the fixes of the errors about one.
EVENTS_FIX = (
    "give the dead-letter blob as downloaded (`az storage blob download`), or a file of Event"
    " Grid events: a JSON array, one JSON object, or JSON lines"
)


def read_text(path: Path) -> str:
    """FILE's text: UTF-8 (with or without a byte-order mark), or UTF-16/UTF-32 with one
    (PowerShell's `>` and `Out-File` write UTF-16 with a BOM)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(
            f"cannot read {path}: {error.strerror or error}",
            fix="check the path and that you may read the file",
        ) from None
    encoding = next((name for bom, name in BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): not an event"
            " file, or one in another encoding without a byte-order mark",
            fix="convert it to UTF-8 (PowerShell: `Get-Content FILE | Set-Content -Encoding"
            " utf8 FILE.json`; iconv -f ENCODING -t UTF-8), or " + EVENTS_FIX,
        ) from None


def load_items(path: Path) -> list[object]:
    """The events in FILE: a JSON array, one object, or one JSON value per line."""
    text = read_text(path)
    if not text.strip():
        raise UsageError(f"{path} is empty", fix=EVENTS_FIX)
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        items = _lines(text)
        if items is not None:
            return items
        if isinstance(error, RecursionError):
            raise UsageError(
                f"{path} is not an event file: JSON nested too deeply", fix=EVENTS_FIX
            ) from None
        raise UsageError(
            f"{path} is not valid JSON: {_reason(error)} at line {error.lineno} column"
            f" {error.colno} (a truncated file?)",
            fix="download the blob again, or repair the file at that place; " + EVENTS_FIX,
        ) from None
    return list(document) if isinstance(document, list) else [document]


def _lines(text: str) -> list[object] | None:
    """The events of ``text`` read as JSON lines — a line that is not JSON becomes its
    error text, rejected in place (the other lines are still replayed) — or None when it
    does not read as JSON lines: fewer than two non-blank lines, or none of them JSON by
    itself (then it is one document, broken somewhere)."""
    items: list[object] = []
    lines = parsed = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError as bad:
            value = f"line {number} column {bad.colno}: {_reason(bad)}"
        except RecursionError:
            value = f"line {number}: JSON nested too deeply"
        else:
            parsed += 1
        items.extend(value if isinstance(value, list) else [value])
    return items if lines >= 2 and parsed else None


def _reason(error: json.JSONDecodeError) -> str:
    """The parser's reason, without the dangling "at" some of them end with ("Invalid
    control character at") that the position is written after."""
    return error.msg.removesuffix(" at")


async def _one(engine: Engine, index: int, item: object) -> ReplayOutcome:
    if isinstance(item, str):
        return ReplayOutcome(index, None, None, None, "rejected", f"not JSON: {item}")
    try:
        [parsed] = parse_events([item])
    except CmkError as error:
        return ReplayOutcome(index, None, None, None, "rejected", str(error))
    if isinstance(parsed, RejectedEvent):
        return ReplayOutcome(index, parsed.event_id, None, None, "rejected", parsed.reason)
    if isinstance(parsed, IgnoredEvent):
        return ReplayOutcome(
            index, parsed.event_id, parsed.event_type, None, "ignored", parsed.reason
        )
    kind, key = parsed.event_type.value, str(parsed.key_id)
    try:
        report = await HANDLERS[parsed.event_type](engine, parsed)
    except CmkError as error:
        return ReplayOutcome(index, parsed.event_id, kind, key, "error", str(error))
    detail = report.detail or f"{len(report.moves)} to move, {len(report.findings)} findings"
    return ReplayOutcome(index, parsed.event_id, kind, key, report.outcome.value, detail, report)


async def _handle(
    engine: Engine, items: list[object], journal: Journal, *, inline: bool
) -> list[ReplayOutcome]:
    """Handle each event in turn, noting in ``journal`` what each did: stopped part-way,
    the command says which events were handled (a handler may have created a version or
    queued jobs) and that the next sweep finishes the rest."""
    outcomes: list[ReplayOutcome] = []
    for index, item in enumerate(items):
        journal.now(
            f"handling event {index + 1} of {len(items)}",
            not_done=f"events {index + 1} to {len(items)} were not handled"
            + ("" if inline else "; jobs already queued run in the app"),
            finish="cmk sweep",
        )
        outcome = await _one(engine, index, item)
        outcomes.append(outcome)
        enqueued = outcome.report.enqueued if outcome.report and not inline else 0
        created = outcome.report.created_version if outcome.report else None
        if outcome.outcome not in ("rejected", "ignored"):
            journal.did(
                f"event {index + 1} ({outcome.event_id}): {outcome.outcome}"
                + (f", created version {created}" if created else "")
                + (f", {enqueued} job(s) queued" if enqueued else "")
            )
    return outcomes


def _unique(jobs: list[RotationJob]) -> list[RotationJob]:
    return list({(str(j.account_id), j.target.version, j.step): j for j in jobs}.values())


async def _replay(session: Session) -> int:
    args, output, journal = session.args, session.output, session.journal
    items = load_items(args.file)
    engine = session.engine()
    if not engine.dry_run:
        await session.runtime.prepare_storage()
    collector = CollectedJobs()
    handling = replace(engine, jobs=collector) if args.inline else engine
    outcomes = await _handle(handling, items, journal, inline=args.inline)
    jobs, _ = collector.take()
    if engine.dry_run and args.inline:
        jobs = [
            job_for_move(move, o.event_id or "replay")
            for o in outcomes
            if o.report is not None
            for move in o.report.moves
        ]
    jobs = _unique(jobs)
    if engine.dry_run:
        label = "planning the updates (dry run)"
        journal.now(f"{label} of {len(jobs)} account(s)", not_done="", finish="")
    else:
        label = "moving accounts"
        journal.moving(jobs, finish="cmk sweep")
    with output.progress(label, len(jobs)) as ticker:
        results = await run_jobs(engine, jobs, ticker, watch=journal)
    bad = any(o.outcome in BAD for o in outcomes) or jobs_failed(results)
    code = EXIT_FINDINGS if bad else EXIT_OK
    if output.json_mode:
        output.emit_json(
            {
                "events": outcomes,
                "jobs": results,
                "summary": job_summary(results),
                "exit_code": code,
            }
        )
        return code
    rows = [
        (
            o.index,
            o.event_id,
            (o.event_type or "").rsplit(".", 1)[-1],
            short_key(KeyId.parse(o.key_id)) if o.key_id else None,
            styled(o.outcome),
            o.report.enqueued if o.report else None,
            o.detail,
        )
        for o in outcomes
    ]
    tsv = [
        (
            o.index,
            o.event_id,
            o.event_type,
            o.key_id,
            o.outcome,
            o.report.enqueued if o.report else None,
            o.detail,
        )
        for o in outcomes
    ]
    columns = ("#", "event id", "type", "key", "outcome", "enqueued", "detail")
    title = f"{plural(len(outcomes), 'event')} from {args.file}"
    output.print(table(title, columns, rows, tsv=tsv))
    print_jobs(output, results)
    return code


def replay_command(args: argparse.Namespace) -> int:
    return run_command(args, _replay)
