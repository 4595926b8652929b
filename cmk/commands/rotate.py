"""``cmk rotate KEY_ID [--dry-run] [--enqueue]``: create a new version of a key now
(Key Vault's rotate when the key has a rotation policy, else a same-parameter create)
and move every bound account to it. By default the accounts are moved here, each shown
as it converges; ``--enqueue`` hands the jobs to the deployed app's queue instead.
``--dry-run`` creates and writes nothing: it predicts the new version (the newest version's
type, size and operations), judges it by the version policy, and lists the checks it
passes or fails and the accounts that would move. Exit 1 when the new version is (or, in a
dry run, would be) rejected, an account fails, or there are findings; 2 for a bad key id
or a vault outside CMK_VAULT_ALLOWLIST; 130 when interrupted (it says what finishes the work)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from cmk.commands.inline import CollectedJobs, run_jobs
from cmk.commands.output import common_options, plural, short_version
from cmk.commands.scope import refuse_hidden_subscriptions
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
from cmk.policy import ReasonCode
from cmk.settings import Settings
from cmk.usecases import EventOutcome, EventReport, PlannedMove
from cmk.usecases.answers import rotation_answer, rotation_exit_code
from cmk.usecases.new_versions import Prediction, predict_rotation
from cmk.usecases.rotate import ROTATE_EVENT_TYPE, rotate_key
from cmk.usecases.versions import VersionUse, key_versions

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


#: The checks of the new version (DESIGN §1), with the reason codes that fail each.
_CHECKS: tuple[tuple[str, frozenset[ReasonCode]], ...] = (
    ("key type RSA or RSA-HSM", frozenset({ReasonCode.KEY_TYPE})),
    ("key size in CMK_ALLOWED_KEY_SIZES ({sizes})", frozenset({ReasonCode.KEY_SIZE})),
    (
        "enabled, and already valid (not before now)",
        frozenset({ReasonCode.DISABLED, ReasonCode.NOT_YET_VALID}),
    ),
    (
        "expires more than {margin} days from now, or never",
        frozenset({ReasonCode.EXPIRED, ReasonCode.EXPIRING}),
    ),
    ("key operations include wrapKey and unwrapKey", frozenset({ReasonCode.KEY_OPS})),
    (
        "the vault has soft delete and purge protection (recovery level not Purgeable)",
        frozenset({ReasonCode.PURGEABLE}),
    ),
)
#: Checked by the real run only, account by account.
_PER_ACCOUNT = (
    "per account, before its PATCH: the account's identity may get, wrapKey and"
    " unwrapKey the key, and the account is not on a newer version already"
)
_EXPIRY = ReasonCode.EXPIRED, ReasonCode.EXPIRING


@dataclass(frozen=True)
class _Check:
    """One check of the predicted version: passed (True/False), or not judged (None)."""

    text: str
    passed: bool | None
    reason: str = ""

    def line(self) -> str:
        mark = {True: "pass", False: "FAIL", None: "----"}[self.passed]
        return f"  {mark}  {self.text}" + (f": {self.reason}" if self.reason else "")


def _checks(settings: Settings, prediction: Prediction) -> list[_Check]:
    """Each check of the new version, judged on the prediction (DESIGN §1)."""
    sizes = ", ".join(str(size) for size in sorted(settings.allowed_key_sizes))
    margin = settings.expiry_margin.days
    reasons = prediction.verdict.reasons
    checks = []
    for template, codes in _CHECKS:
        text = template.format(sizes=sizes, margin=margin)
        failed = [str(reason.message) for reason in reasons if reason.code in codes]
        if failed:
            checks.append(_Check(text, False, "; ".join(failed)))
        elif not prediction.expiry_known and codes & set(_EXPIRY):
            why = "not judged: the key's rotation policy (its expiryTime) sets the expiry"
            checks.append(_Check(text, None, why))
        else:
            checks.append(_Check(text, True))
    checks.append(_Check(_PER_ACCOUNT, None, "checked by the real run, account by account"))
    return checks


def _predicted(prediction: Prediction) -> str:
    """The new version in words: how it is made and what it is."""
    version, template = prediction.version, prediction.template
    how = (
        "Key Vault's rotate (the key has a rotation policy)"
        if prediction.by_rotation
        else f"a create like version {short_version(template.version)}"
    )
    if not prediction.expiry_known:
        expiry = "expiry set by the rotation policy"
    elif version.expires is None:
        expiry = "no expiry"
    else:
        expiry = f"expires {version.expires:%Y-%m-%d %H:%M} UTC"
    size = f"{version.size} bits" if version.size is not None else "size unknown"
    ops = ", ".join(sorted(version.key_ops)) or "none"
    return f"{how}: {version.kty}, {size}, key_ops {ops}, {expiry}"


def _prediction_json(prediction: Prediction, checks: list[_Check]) -> dict[str, object]:
    version = prediction.version
    return {
        "by": "rotate" if prediction.by_rotation else "create",
        "like_version": prediction.template.version,
        "kty": version.kty,
        "size": version.size,
        "key_ops": sorted(version.key_ops),
        "expires": version.expires.isoformat()
        if prediction.expiry_known and version.expires
        else None,
        "expiry_known": prediction.expiry_known,
        "bindable": prediction.bindable,
        "failed_checks": [str(reason) for reason in prediction.verdict.reasons],
        "unjudged_checks": [check.text for check in checks if check.passed is None],
    }


def _why(use: VersionUse) -> str:
    """Why an account on ``use`` would move; urgent (its version unsafe) says why."""
    if use.bindable:
        return "bound to the key: would move to the new version"
    return f"bound to an unsafe version ({'; '.join(use.reasons)}): would move to the new one"


async def _dry_run(session: Session, key: KeyId) -> int:
    """Show what ``rotate`` would do: the version it would create and the policy's verdict
    on it, and the accounts that would move. Exit 1 when that version would be rejected."""
    output = session.output
    require_in_scope(session.settings, key)
    engine = session.engine()
    with output.working(f"reading the versions of {key} and who uses them"):
        prediction = await predict_rotation(engine, key)
        report = await key_versions(engine, key)
    bound = [account for use in report.versions for account in use.accounts]
    moves: tuple[PlannedMove, ...] = ()
    if prediction.bindable:
        moves = tuple(
            PlannedMove(account, key, use.version, NEW_VERSION, not use.bindable, _why(use))
            for use in report.versions
            for account in use.accounts
        )
        detail = f"dry run: would create a new version and move {len(moves)} account(s)"
        outcome = EventOutcome.WOULD_ROTATE
    else:
        codes = ", ".join(sorted(prediction.verdict.codes))
        detail = f"dry run: the new version would be rejected ({codes}); no account would move"
        outcome = EventOutcome.WOULD_BE_REJECTED
    checks = _checks(session.settings, prediction)
    rotation = EventReport(
        event_id=TRIGGER,
        event_type=ROTATE_EVENT_TYPE,
        key_id=key,
        outcome=outcome,
        dry_run=True,
        moves=moves,
        detail=detail,
    )
    answer = rotation_answer(
        rotation,
        [],
        checks=[check.text for check in checks],
        prediction=_prediction_json(prediction, checks),
    )
    if output.json_mode:
        output.emit_json(answer.document)
        return answer.exit_code
    print_moves(output, moves, f"Accounts that would move to the new version of {key}")
    output.print(f"The new version would be made by {_predicted(prediction)}.")
    output.print("Its checks (it must pass all, or no account moves):")
    for check in checks:
        output.print(check.line())
    if prediction.bindable:
        output.print(
            f"rotate {key} (dry run): nothing created or written; a real run would create a"
            f" new version and move {len(moves)} account(s)"
        )
    else:
        failed = ", ".join(sorted(prediction.verdict.codes))
        output.print(
            f"rotate {key} (dry run): nothing created or written; a real run would create a"
            f" new version that fails {failed} and is rejected: no account would move"
            f" ({len(bound)} bound account(s) keep their versions) and it exits 1. Fix the"
            " key or the settings first (docs/configuration.md)"
        )
    return answer.exit_code


async def _rotate(session: Session) -> int:
    args, output, journal = session.args, session.output, session.journal
    key = KeyId.parse(args.key_id).versionless()
    engine = session.engine()
    if engine.dry_run and not args.dry_run:
        output.note("dry run: CMK_DRY_RUN=true is set")
    require_in_scope(session.settings, key)
    # before any version exists: a hidden subscription would leave its accounts stale
    again = f"cmk rotate {key}" + (" --dry-run" if engine.dry_run else "")
    await refuse_hidden_subscriptions(engine, output, "rotate", again)
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
    reasons = {str(move.account_id).lower(): move.reason for move in report.moves}
    journal.moving(jobs, finish="cmk sweep", reasons=reasons)
    with output.progress(
        f"moving accounts to {short_version(report.target_version)}", len(jobs)
    ) as ticker:
        results = await run_jobs(engine, jobs, ticker, watch=journal)
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
    where = (
        f"{plural(report.enqueued, 'job')} enqueued for the app"
        if not inline
        else (
            ", ".join(f"{n} {r}" for r, n in job_summary(results).items() if n) or "nothing to move"
        )
    )
    if rejected:
        outcome = f"created version {report.created_version}, rejected"
    elif report.created_version:
        outcome = f"created version {report.created_version}"
    else:
        outcome = "no version created"
    output.print(
        f"rotate {key}: {outcome}; {where}"
        + (f"; {report.detail}" if report.detail else "")
        + retry_note(retries, waits)
    )
    return code


def rotate_command(args: argparse.Namespace) -> int:
    return run_command(args, _rotate, storage=not args.dry_run)
