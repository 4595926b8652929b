"""``cmk rotate KEY_ID [--dry-run] [--enqueue]``: create a new version of a key now
(Key Vault's rotate when the key has a rotation policy, else a same-parameter create)
and move every bound account to it. By default the accounts are moved here, each shown
as it converges; ``--enqueue`` hands the jobs to the deployed app's queue instead.
``--dry-run`` creates nothing and shows which accounts would move. Exit 1 when the new
version is rejected, an account fails, or there are findings."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from cmk.commands.inline import CollectedJobs, job_for_move, run_jobs
from cmk.commands.output import EXIT_FINDINGS, EXIT_OK, common_options, short_version
from cmk.commands.session import Session, run_command
from cmk.commands.tables import (
    job_summary,
    jobs_failed,
    print_alerts,
    print_findings,
    print_jobs,
    print_moves,
)
from cmk.keyid import KeyId
from cmk.usecases import EventOutcome
from cmk.usecases.rotate import rotate_key

__all__ = ["add_parser"]

TRIGGER = "cli:rotate"


def add_parser(subparsers: Any) -> None:
    """Register ``cmk rotate``."""
    parser = subparsers.add_parser(
        "rotate",
        parents=[common_options()],
        help="create a new key version now and move every bound account",
        description=__doc__,
    )
    parser.add_argument("key_id", metavar="KEY_ID", help="https://VAULT/keys/NAME")
    parser.add_argument("--dry-run", action="store_true", help="create nothing, show the moves")
    parser.add_argument(
        "--enqueue", action="store_true", help="hand the jobs to the app's queue, do not wait"
    )
    parser.set_defaults(func=rotate_command)


async def _rotate(session: Session) -> int:
    args, output = session.args, session.output
    key = KeyId.parse(args.key_id).versionless()
    engine = session.engine()
    if not engine.dry_run:
        await session.runtime.prepare_storage()
    inline = not args.enqueue
    collector = CollectedJobs()
    report = await rotate_key(
        replace(engine, jobs=collector) if inline else engine, key, trigger=TRIGGER
    )
    jobs, _ = collector.take()
    if engine.dry_run and inline:
        jobs = [job_for_move(move, TRIGGER) for move in report.moves]
    with output.progress(
        f"moving accounts to {short_version(report.target_version)}", len(jobs)
    ) as ticker:
        results = await run_jobs(engine, jobs, ticker)
    rejected = report.outcome is EventOutcome.VERSION_REJECTED
    failed = rejected or jobs_failed(results) or bool(report.findings)
    code = EXIT_FINDINGS if failed else EXIT_OK
    if inline:
        report = replace(report, enqueued=0)
    if output.json_mode:
        output.emit_json(
            {
                "rotation": report,
                "jobs": results,
                "summary": job_summary(results),
                "exit_code": code,
            }
        )
        return code
    print_moves(output, report.moves, "Accounts to move")
    print_findings(output, report.findings)
    print_alerts(output, report.alerts)
    print_jobs(output, results)
    created = report.created_version or "none (dry run)"
    where = (
        f"{report.enqueued} jobs enqueued for the app"
        if not inline
        else (
            ", ".join(f"{n} {r}" for r, n in job_summary(results).items() if n) or "nothing to move"
        )
    )
    output.print(
        f"rotate {key}: {report.outcome.value}; new version {created}; {where}"
        + (f"; {report.detail}" if report.detail else "")
    )
    return code


def rotate_command(args: argparse.Namespace) -> int:
    return run_command(args, _rotate)
