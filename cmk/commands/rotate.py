"""``cmk rotate KEY_ID [--dry-run] [--enqueue]``: create a new version of a key now
(Key Vault's rotate when the key has a rotation policy, else a same-parameter create)
and move every bound account to it. By default the accounts are moved here, each shown
as it converges; ``--enqueue`` hands the jobs to the deployed app's queue instead.
``--dry-run`` creates and writes nothing: it lists the accounts that would move and the
checks the new version must pass first. Exit 1 when the new version is rejected, an
account fails, or there are findings; 2 for a bad key id or a vault outside
CMK_VAULT_ALLOWLIST; 130 when interrupted (it says what finishes the work)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from cmk.commands.inline import CollectedJobs, run_jobs
from cmk.commands.output import EXIT_OK, common_options, short_version
from cmk.commands.session import Session, run_command
from cmk.commands.tables import (
    job_summary,
    print_alerts,
    print_findings,
    print_jobs,
    print_moves,
    retry_note,
)
from cmk.commands.versions import require_in_scope
from cmk.keyid import KeyId
from cmk.settings import Settings
from cmk.usecases import EventOutcome, EventReport, PlannedMove
from cmk.usecases.answers import rotation_answer, rotation_exit_code
from cmk.usecases.rotate import ROTATE_EVENT_TYPE, rotate_key
from cmk.usecases.versions import key_versions

__all__ = ["add_parser"]

TRIGGER = "cli:rotate"
#: ``to_version`` of a dry run's moves: the version a real run would create.
NEW_VERSION = "new"


def add_parser(subparsers: Any) -> None:
    """Register ``cmk rotate``."""
    parser = subparsers.add_parser(
        "rotate",
        parents=[common_options()],
        help="create a new key version now and move every bound account",
        description=__doc__,
    )
    parser.add_argument("key_id", metavar="KEY_ID", help="https://VAULT/keys/NAME")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="create nothing: list the accounts that would move and the checks",
    )
    parser.add_argument(
        "--enqueue", action="store_true", help="hand the jobs to the app's queue, do not wait"
    )
    parser.set_defaults(func=rotate_command)


def _checks(settings: Settings) -> list[str]:
    """What the new version must pass before any account is moved to it (DESIGN §1)."""
    sizes = ", ".join(str(size) for size in sorted(settings.allowed_key_sizes))
    margin = settings.expiry_margin.days
    return [
        "key type RSA or RSA-HSM",
        f"key size in CMK_ALLOWED_KEY_SIZES ({sizes})",
        "enabled, and already valid (not before now)",
        f"expires more than {margin} days from now, or never",
        "key operations include wrapKey and unwrapKey",
        "the vault has soft delete and purge protection (recovery level not Purgeable)",
        "per account, before its PATCH: the account's identity may get, wrapKey and"
        " unwrapKey the key, and the account is not on a newer version already",
    ]


async def _dry_run(session: Session, key: KeyId) -> int:
    """Show what ``rotate`` would do: the accounts that would move, the checks."""
    output = session.output
    require_in_scope(session.settings, key)
    with output.working(f"reading the versions of {key} and who uses them"):
        report = await key_versions(session.engine(), key)
    reason = "bound to the key: would move to the new version once it passes the checks"
    moves = tuple(
        PlannedMove(account, key, use.version, NEW_VERSION, False, reason)
        for use in report.versions
        for account in use.accounts
    )
    checks = _checks(session.settings)
    rotation = EventReport(
        event_id=TRIGGER,
        event_type=ROTATE_EVENT_TYPE,
        key_id=key,
        outcome=EventOutcome.ROTATED,
        dry_run=True,
        moves=moves,
        detail=f"dry run: would create a new version and move {len(moves)} account(s)",
    )
    if output.json_mode:
        output.emit_json(rotation_answer(rotation, [], checks=checks).document)
        return EXIT_OK
    print_moves(output, moves, f"Accounts that would move to the new version of {key}")
    output.print("The new version must pass, or no account moves:")
    for check in checks:
        output.print(f"  - {check}")
    output.print(
        f"rotate {key} (dry run): nothing created or written; a real run would create a"
        f" new version and move {len(moves)} account(s)"
    )
    return EXIT_OK


async def _rotate(session: Session) -> int:
    args, output, journal = session.args, session.output, session.journal
    key = KeyId.parse(args.key_id).versionless()
    engine = session.engine()
    if engine.dry_run:
        return await _dry_run(session, key)
    await session.runtime.prepare_storage()
    inline = not args.enqueue
    collector = CollectedJobs()
    journal.now(
        f"creating a new version of {key}",
        not_done="no account was moved; the new version may or may not exist",
        finish=f"`cmk versions {key}` shows whether it does: if so, `cmk sweep` moves the"
        f" accounts; if not, run `cmk rotate {key}` again",
    )
    with output.working(f"creating a new version of {key}"):
        report = await rotate_key(
            replace(engine, jobs=collector) if inline else engine, key, trigger=TRIGGER
        )
    jobs, _ = collector.take()
    if report.created_version:
        journal.did(f"created version {report.created_version} of {key}")
    journal.moving(len(jobs), finish="cmk sweep")
    with output.progress(
        f"moving accounts to {short_version(report.target_version)}", len(jobs)
    ) as ticker:
        results = await run_jobs(engine, jobs, ticker, on_result=journal.job_done)
        retries, waits = ticker.retries, ticker.waits
    rejected = report.outcome is EventOutcome.VERSION_REJECTED
    code = rotation_exit_code(report, results)
    if inline:
        report = replace(report, enqueued=0)
    if output.json_mode:
        output.emit_json(rotation_answer(report, results).document)
        return code
    print_moves(output, report.moves, "Accounts to move")
    print_findings(output, report.findings)
    print_alerts(output, report.alerts)
    print_jobs(output, results)
    created = report.created_version or "none"
    where = (
        f"{report.enqueued} jobs enqueued for the app"
        if not inline
        else (
            ", ".join(f"{n} {r}" for r, n in job_summary(results).items() if n) or "nothing to move"
        )
    )
    outcome = "version rejected" if rejected else "new version created"
    output.print(
        f"rotate {key}: {outcome}; new version {created}; {where}"
        + (f"; {report.detail}" if report.detail else "")
        + retry_note(retries, waits)
    )
    return code


def rotate_command(args: argparse.Namespace) -> int:
    return run_command(args, _rotate, storage=not args.dry_run)
