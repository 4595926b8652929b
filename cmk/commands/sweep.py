"""``cmk sweep [--dry-run]``: the timer's sweep, run here. It plans exactly as the app's
sweep does (inventory, read each key once, assess every binding, raise the alerts), but
runs each stale account's step machine in this process (at most CMK_MAX_CONCURRENCY at
once, with a progress bar) instead of enqueueing it. ``--dry-run`` writes nothing and
shows the PATCH each account would get. Exit 1 on failed accounts, findings or errors."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from cmk.commands.inline import CollectedJobs, job_for_move, run_jobs
from cmk.commands.output import EXIT_FINDINGS, EXIT_OK, common_options
from cmk.commands.session import Session, run_command
from cmk.commands.tables import job_summary, jobs_failed, print_jobs, print_sweep
from cmk.usecases import sweep

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
    engine = session.engine()
    output = session.output
    if not engine.dry_run:
        await session.runtime.prepare_storage()
    collector = CollectedJobs()
    report = await sweep(replace(engine, jobs=collector))
    jobs, _ = collector.take()
    report = replace(report, enqueued=0)  # run here, not enqueued
    if engine.dry_run:
        jobs = [job_for_move(move, report.run_id) for move in report.moves]
    with output.progress("moving accounts", len(jobs)) as ticker:
        results = await run_jobs(engine, jobs, ticker)
    failed = jobs_failed(results)
    code = EXIT_FINDINGS if failed or report.findings or report.errors else EXIT_OK
    counts = job_summary(results)
    if output.json_mode:
        output.emit_json({"sweep": report, "jobs": results, "summary": counts, "exit_code": code})
        return code
    print_sweep(output, report)
    print_jobs(output, results)
    done = ", ".join(f"{n} {result}" for result, n in counts.items() if n) or "nothing to move"
    output.print(
        f"sweep{' (dry run)' if engine.dry_run else ''}: {report.accounts} accounts,"
        f" {report.keys_read} keys, {len(jobs)} jobs run here: {done};"
        f" {len(report.findings)} findings, {report.alerts_published} new alerts"
    )
    return code


def sweep_command(args: argparse.Namespace) -> int:
    return run_command(args, _sweep)
