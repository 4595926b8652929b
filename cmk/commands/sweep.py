"""``cmk sweep [--dry-run]``: the timer's sweep, run here. It plans exactly as the app's
sweep does (inventory, read each key once, assess every binding, raise the alerts), but
runs each stale account's step machine in this process (at most CMK_MAX_CONCURRENCY at
once per subscription, with a progress bar) instead of enqueueing it. ``--dry-run``
writes nothing and shows the PATCH each account would get. Exit 1 on failed accounts,
findings or errors, or when nothing is in scope (a warning on stderr says why); 130 when
interrupted (it says how far it got; run it again to finish)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from cmk.commands.inline import CollectedJobs, job_for_move, run_jobs
from cmk.commands.output import common_options, plural
from cmk.commands.scope import resolve, scope_line, warn
from cmk.commands.session import Session, run_command
from cmk.commands.tables import job_summary, print_jobs, print_sweep, retry_note
from cmk.ports import LedgerEntry, LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.usecases import PlannedMove, sweep
from cmk.usecases.answers import sweep_answer

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Register ``cmk sweep``."""
    parser = subparsers.add_parser(
        "sweep",
        parents=[common_options()],
        help="sweep now, moving stale accounts in this process",
        description=__doc__,
    )
    parser.add_argument("--dry-run", action="store_true", help="plan and check, write nothing")
    parser.set_defaults(func=sweep_command)


async def _sweep(session: Session) -> int:
    engine, output, journal = session.engine(), session.output, session.journal
    if engine.dry_run and not session.args.dry_run:
        output.note("dry run: CMK_DRY_RUN=true is set")
    if not engine.dry_run:
        await session.runtime.prepare_storage()
    collector = CollectedJobs()
    journal.now(
        "taking the inventory and planning",
        not_done="no account was moved",
        finish="cmk sweep",
    )
    with output.working("taking the inventory, reading the keys, planning"):
        report = await sweep(replace(engine, jobs=collector))
    jobs, _ = collector.take()
    report = replace(report, enqueued=0)  # run here, not enqueued
    if engine.dry_run:
        jobs = [job_for_move(move, report.run_id) for move in report.moves]
    else:
        journal.did(
            f"inventory of {report.accounts} account(s), {report.alerts_published} new alert(s)"
        )
    if engine.dry_run:  # nothing moves: each job only works out the PATCH it would send
        label = "planning the updates (dry run)"
        journal.now(f"{label} of {len(jobs)} account(s)", not_done="nothing is written", finish="")
    else:
        label = "moving accounts"
        reasons = {str(move.account_id).lower(): move.reason for move in report.moves}
        journal.moving(jobs, finish="cmk sweep", reasons=reasons)
    with output.progress(label, len(jobs)) as ticker:
        results = await run_jobs(engine, jobs, ticker, watch=journal)
        retries, waits = ticker.retries, ticker.waits
    scope = await resolve(engine)
    answer = sweep_answer(session.settings, report, results, scope)
    warn(output, answer.warnings)
    counts = job_summary(results)
    if output.json_mode:
        output.emit_json(answer.document)
        return answer.exit_code
    print_sweep(output, report)
    print_jobs(output, results)
    sent = _sent(jobs)
    unsent = [m for m in report.moves if _slot(m.account_id, m.to_version) not in sent]
    in_flight = await _in_flight(session, unsent)
    done = ", ".join(f"{n} {result}" for result, n in counts.items() if n)
    if in_flight:
        done = ", ".join(filter(None, [done, _in_flight_text(in_flight)]))
    if len(unsent) > len(in_flight):
        held = len(unsent) - len(in_flight)
        done = ", ".join(
            filter(None, [done, f"{held} not sent (account busy, or see the findings)"])
        )
    output.print(
        f"sweep{' (dry run)' if engine.dry_run else ''}: {plural(report.accounts, 'account')},"
        f" {plural(report.keys_read, 'key')}, {plural(len(jobs), 'job')} run here:"
        f" {done or 'nothing to move'}; {plural(len(report.findings), 'finding')},"
        f" {plural(report.alerts_published, 'new alert')}" + retry_note(retries, waits)
    )
    output.print(scope_line(session.settings, scope))
    return answer.exit_code


def _slot(account: AccountId, version: str | None) -> tuple[str, str]:
    return str(account).lower(), (version or "").lower()


def _sent(jobs: list[RotationJob]) -> set[tuple[str, str]]:
    return {_slot(job.account_id, job.target.version) for job in jobs}


async def _in_flight(session: Session, moves: list[PlannedMove]) -> list[LedgerEntry]:
    """The submitted ledger rows of ``moves`` (moves the sweep did not send again: their
    update is already in flight), from one filtered query of the ledger."""
    if not moves:
        return []
    wanted = {_slot(m.account_id, m.to_version) for m in moves}
    ledger = session.runtime.services.ledger
    return [
        entry
        async for entry in ledger.iter_history(states={LedgerState.SUBMITTED})
        if _slot(entry.account_id, entry.to_version) in wanted
    ]


def _in_flight_text(entries: list[LedgerEntry]) -> str:
    """``N already in flight (submitted at …), not re-sent``."""
    times = sorted({entry.updated.isoformat(timespec="seconds") for entry in entries})
    when = f"at {times[0]}" if len(times) == 1 else f"between {times[0]} and {times[-1]}"
    return f"{len(entries)} already in flight (submitted {when}), not re-sent"


def sweep_command(args: argparse.Namespace) -> int:
    return run_command(args, _sweep)
