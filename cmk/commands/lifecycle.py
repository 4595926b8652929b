"""``cmk check`` / ``enable`` / ``switch`` / ``disable``: the CMK lifecycle around rotation.

``check`` names every requirement of DESIGN §1 per account and key, each failure with its
fix, and which grants a revocation would cut accounts off by (exit 1 when anything fails).
``enable`` turns CMK on (refused, nothing written, while a requirement fails), ``switch``
moves to another key of the same vault, ``disable`` goes back to Microsoft-managed keys
(only with ``--yes``). Exit 0 done / unchanged / dry run, 1 refused or failing, 2 usage.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rich.text import Text

from cmk.commands.errors import UsageError
from cmk.commands.history import SHORT_ACCOUNT
from cmk.commands.interrupt import Journal
from cmk.commands.output import (
    EXIT_FINDINGS,
    EXIT_OK,
    Output,
    common_options,
    short_account,
    styled,
    table,
)
from cmk.commands.scope import resolve, warn
from cmk.commands.session import Session, run_command
from cmk.errors import AccessDenied, InvalidResourceId, NotFound
from cmk.keyid import KeyId, parse_vault_url
from cmk.lifecycle.changes import Change, ChangeOutcome, disable, enable, switch
from cmk.lifecycle.check import CheckReport, check_accounts
from cmk.lifecycle.context import Lifecycle
from cmk.lifecycle.model import Grant, GrantKind
from cmk.lifecycle.requirements import Requirement
from cmk.lifecycle.services import LifecycleClients
from cmk.resource_id import AccountId
from cmk.settings import Settings
from cmk.usecases.context import Engine, gather_bounded

__all__ = ["add_parser", "change_line", "key_from_args"]


CHECK_DOC = """`cmk check ACCOUNT_ID ... | --all [--key KEY_ID]`: every requirement of
customer-managed keys per account and key (docs/lifecycle.md) — key type and size, soft
delete and purge protection, region and tenant, the identity and its permissions on the
key — each failure with its fix, and which grants a revocation would cut accounts off by.
ACCOUNT_ID is an ARM resource id, or RESOURCE_GROUP/NAME of a CMK account in scope as the
tables show it. Writes nothing. Exit 0 every requirement holds, 1 something fails, 2 usage
(no ACCOUNT_ID and no --all, a bad id) or configuration error."""

ENABLE_DOC = """`cmk enable ACCOUNT_ID --key KEY_ID`: turn customer-managed keys on for an
account, after running every check of `cmk check` (including the permissions its identity
needs on the key). Refused, with nothing written, while a requirement fails. Exit 0 done,
unchanged or dry run; 1 refused; 2 usage or configuration error. ACCOUNT_ID is an ARM
resource id, or RESOURCE_GROUP/NAME of an account in a subscription in scope."""

SWITCH_DOC = """`cmk switch ACCOUNT_ID --key KEY_ID`: move an account to another key of the
same vault (Azure allows no other), after the checks of `cmk check`. ACCOUNT_ID is an ARM
resource id, or RESOURCE_GROUP/NAME as the tables show it. Exit 0 done, unchanged or dry
run; 1 refused; 2 usage or configuration error."""

DISABLE_DOC = """`cmk disable ACCOUNT_ID --yes`: take an account back to Microsoft-managed
keys. Without --yes nothing is written and it exits 2; with --dry-run it shows what it
would do. ACCOUNT_ID is an ARM resource id, or RESOURCE_GROUP/NAME as the tables show it.
Exit 0 done, unchanged or dry run; 1 failed; 2 usage (no --yes) or configuration error."""


def add_parser(subparsers: Any) -> None:
    """Register ``cmk check``, ``enable``, ``switch`` and ``disable``."""
    check = subparsers.add_parser(
        "check",
        parents=[common_options()],
        help="CMK preflight: every requirement per account",
        description=CHECK_DOC,
    )
    check.add_argument(
        "account_ids",
        nargs="*",
        metavar="ACCOUNT_ID",
        help="ARM resource id, or RESOURCE_GROUP/NAME of a CMK account in scope",
    )
    check.add_argument("--all", action="store_true", help="every CMK account in scope")
    check.add_argument("--key", metavar="KEY_ID", help="check this key instead of the bound one")
    check.set_defaults(func=lambda args: run_command(args, _check, storage=False))
    for name, help_text, doc in (
        ("enable", "turn on CMK with a key (preflight first)", ENABLE_DOC),
        ("switch", "use another key of the same vault", SWITCH_DOC),
    ):
        parser = subparsers.add_parser(
            name, parents=[common_options()], help=help_text, description=doc
        )
        parser.add_argument(
            "account_id", metavar="ACCOUNT_ID", help="ARM resource id, or RESOURCE_GROUP/NAME"
        )
        parser.add_argument("--key", metavar="KEY_ID", help="key id, versioned or versionless")
        parser.add_argument("--vault", help="vault name or URL (with --key-name)")
        parser.add_argument("--key-name", help="key name in --vault")
        parser.add_argument("--dry-run", action="store_true", help="check only, write nothing")
        if name == "enable":
            parser.add_argument(
                "--identity-client-id", help="use this user-assigned identity of the account"
            )
        parser.set_defaults(func=lambda args: run_command(args, _change, storage=not args.dry_run))
    off = subparsers.add_parser(
        "disable",
        parents=[common_options()],
        help="back to Microsoft-managed keys",
        description=DISABLE_DOC,
    )
    off.add_argument(
        "account_id", metavar="ACCOUNT_ID", help="ARM resource id, or RESOURCE_GROUP/NAME"
    )
    off.add_argument("--yes", action="store_true", help="confirm: leave customer-managed keys")
    off.add_argument("--dry-run", action="store_true", help="show what it would do, write nothing")
    off.set_defaults(func=lambda args: run_command(args, _change, storage=not args.dry_run))


def key_from_args(args: argparse.Namespace, settings: Settings) -> KeyId:
    """The key of ``--key``, or of ``--vault`` (name or URL) with ``--key-name``."""
    if args.key and (args.vault or args.key_name):
        raise UsageError(
            "cmk was given both --key and --vault/--key-name",
            fix="give either --key KEY_ID, or --vault NAME_OR_URL with --key-name NAME",
        )
    if args.key:
        return KeyId.parse(args.key)
    if not (args.vault and args.key_name):
        raise UsageError(
            "no key given",
            fix="give the key: --key KEY_ID, or --vault NAME_OR_URL --key-name NAME",
        )
    vault = str(args.vault)
    if "://" not in vault:
        vault = f"https://{vault}.{settings.cloud.endpoints.key_vault_suffix}"
    return KeyId(parse_vault_url(vault), args.key_name)


async def _with_lifecycle(session: Session, body: Callable[[Lifecycle], Awaitable[int]]) -> int:
    async with LifecycleClients(session.runtime.services) as clients:
        return await body(clients.lifecycle(session.engine()))


async def _check(session: Session) -> int:
    args = session.args
    if bool(args.account_ids) == bool(args.all):
        what = "both ACCOUNT_ID and --all" if args.all else "no ACCOUNT_ID and no --all"
        raise UsageError(
            f"check was given {what}",
            fix="give the accounts to check (ARM resource ids, or RESOURCE_GROUP/NAME), or"
            " --all for every CMK account in scope (CMK_SUBSCRIPTIONS, or every subscription"
            " the identity can read): `cmk check --all`",
        )
    key = KeyId.parse(args.key) if args.key else None
    # each account once, however often it is named (as a full id or RESOURCE_GROUP/NAME)
    named = await _accounts(session, list(dict.fromkeys(args.account_ids)))
    accounts = list({str(account).lower(): account for account in named}.values())
    warnings: list[str] = []
    if args.all:
        inventory = session.runtime.services.inventory
        scope = await resolve(session.engine())
        # as status does: a subscription it cannot see is not checked, so not a clean run
        warnings = scope.warnings()
        warn(session.output, warnings)
        found = inventory.cmk_accounts(scope.subscriptions)
        accounts = [r.account_id async for r in found]

    async def run(lc: Lifecycle) -> int:
        report = await check_accounts(lc, accounts, key)
        code = EXIT_OK if report.ok and not warnings else EXIT_FINDINGS
        _print_check(session.output, report, code, warnings)
        return code

    return await _with_lifecycle(session, run)


async def _accounts(session: Session, texts: list[str]) -> list[AccountId]:
    """The accounts named by ``texts``: ARM resource ids, or RESOURCE_GROUP/NAME as every
    table shows an account (as ``cmk history --account`` takes it), found among the CMK
    accounts of the subscriptions in scope — or, for an account without customer-managed
    keys (``enable``'s), read by its id in each subscription in scope."""
    if not any(SHORT_ACCOUNT.fullmatch(text) for text in texts):
        return [AccountId.parse(text) for text in texts]
    engine = session.engine()
    scope = await resolve(engine)
    warn(session.output, scope.warnings())
    by_short: dict[str, list[AccountId]] = {}
    async for record in session.runtime.services.inventory.cmk_accounts(scope.subscriptions):
        by_short.setdefault(short_account(record.account_id).lower(), []).append(record.account_id)
    accounts: list[AccountId] = []
    for text in texts:
        if not SHORT_ACCOUNT.fullmatch(text):
            accounts.append(AccountId.parse(text))
            continue
        found = by_short.get(text.lower()) or await _read_each(engine, scope.subscriptions, text)
        if not found:
            raise NotFound(
                f"no account {text} in the {len(scope.subscriptions)} subscription(s) in"
                " scope; give its ARM resource id if it is in another subscription"
            )
        if len(found) > 1:
            raise UsageError(
                f"{text} names {len(found)} accounts: " + ", ".join(str(a) for a in found),
                fix=f"give the ARM resource id of the account to {session.args.command}",
            )
        accounts.extend(found)
    return accounts


async def _read_each(engine: Engine, subscriptions: Sequence[str], short: str) -> list[AccountId]:
    """The accounts RESOURCE_GROUP/NAME (``short``) that exist in ``subscriptions``, read
    one by one (an account without customer-managed keys is not in the CMK inventory)."""
    group, name = short.split("/")
    try:
        candidates = [AccountId(subscription, group, name) for subscription in subscriptions]
    except InvalidResourceId:  # not the name of an account: none has it
        return []

    async def exists(account: AccountId) -> bool:
        try:
            await engine.accounts.get(account)
        except (NotFound, AccessDenied):
            return False
        return True

    found = await gather_bounded(engine.settings.max_concurrency, map(exists, candidates))
    return [account for account, there in zip(candidates, found, strict=True) if there]


@dataclass
class _Progress:
    """What an interrupted ``enable`` / ``switch`` / ``disable`` tells: the
    :class:`~cmk.lifecycle.changes.ChangeWatch` of the command's journal. ``again`` is the
    command line that finishes the change (or finds it made, and settles its ledger row)."""

    journal: Journal
    account: str
    again: str

    def start(self) -> None:
        self.journal.now(
            f"checking {self.account}",
            not_done=f"{self.account} was not changed",
            finish=self.again,
        )

    def did(self, what: str) -> None:
        self.journal.did(what)
        self.journal.not_done = f"{self.account}'s encryption was not changed"

    def sending(self, what: str) -> None:
        self.journal.did(f"sent {what}, no answer yet")
        self.journal.now(
            "waiting for the answer",
            not_done=f"whether the update lands is not known: `cmk check {self.account}` shows"
            " the key the account uses; the change's ledger row stays planned (`cmk history`)"
            " until the command below finds the change made",
            finish=self.again,
        )
        self.journal.early = "before, the account is busy and the command is refused"

    def settled(self, what: str) -> None:
        self.journal.done[-1:] = [what]  # instead of "sent …, no answer yet"
        self.journal.now("", not_done="", finish="")


def _again(args: argparse.Namespace, key: KeyId | None) -> str:
    """The command line that runs this change again."""
    words = ["cmk", str(args.command), str(args.account_id)]
    if key is not None:
        words += ["--key", str(key)]
    if getattr(args, "identity_client_id", None):
        words += ["--identity-client-id", str(args.identity_client_id)]
    if args.command == "disable":
        words.append("--yes")
    if args.dry_run:
        words.append("--dry-run")
    return shlex.join(words)


async def _change(session: Session) -> int:
    args = session.args
    dry_run = bool(args.dry_run) or session.settings.dry_run
    key = None if args.command == "disable" else key_from_args(args, session.settings)
    progress = _Progress(session.journal, str(args.account_id), _again(args, key))
    progress.start()

    async def run(lc: Lifecycle) -> int:
        change: Change
        [account_id] = accounts
        if args.command == "disable":
            change = await disable(
                lc, account_id, confirmed=args.yes, dry_run=dry_run, watch=progress
            )
            if dry_run and change.outcome is ChangeOutcome.REFUSED:
                detail = (
                    f"would take the account off {change.previous} and back to"
                    " Microsoft-managed keys"
                )
                change = replace(change, outcome=ChangeOutcome.DRY_RUN, detail=detail)
        else:
            assert key is not None
            if not dry_run:
                await session.runtime.prepare_storage()
            if args.command == "enable":
                client_id = args.identity_client_id
                change = await enable(
                    lc,
                    account_id,
                    key,
                    identity_client_id=client_id,
                    dry_run=dry_run,
                    watch=progress,
                )
            else:
                change = await switch(lc, account_id, key, dry_run=dry_run, watch=progress)
        code = EXIT_FINDINGS if change.outcome is ChangeOutcome.REFUSED else EXIT_OK
        _print_change(session.output, change, code, dry_run=dry_run)
        return code

    if args.command == "disable" and not (args.yes or dry_run):
        raise UsageError(
            "disable takes the account off customer-managed keys: it needs --yes",
            fix=f"pass --yes to confirm (`cmk disable {args.account_id} --yes`), or --dry-run"
            " to see what it would do",
        )
    accounts = await _accounts(session, [args.account_id])
    if args.command == "disable" and args.yes and not dry_run:
        await session.runtime.prepare_storage()
    return await _with_lifecycle(session, run)


def _holds(requirement: Requirement) -> Text:
    if requirement.holds is None:
        return Text("unverified", style="yellow")
    return styled("ok") if requirement.holds else styled("failed")


def _requirements_table(
    title: str, account_id: AccountId, key: KeyId | None, requirements: tuple[Requirement, ...]
) -> object:
    """One row per requirement. ``-o tsv``: account id, key id, result, requirement, found,
    fix (the table's title names the account; each tsv row does)."""
    rows = [(_holds(r), r.name, r.detail, r.fix) for r in requirements]
    tsv = [(account_id, key, _holds(r), r.name, r.detail, r.fix) for r in requirements]
    return table(title, ("result", "requirement", "found", "fix"), rows, tsv=tsv)


def _print_fixes(output: Output, requirements: tuple[Requirement, ...]) -> None:
    """The fix of each failed requirement in full, under its table (a cell may be cut to
    fit the terminal; the fix is what the operator needs whole)."""
    for requirement in requirements:
        if requirement.failed and requirement.fix:
            output.print(f"  {requirement.name} — fix: {requirement.fix}")


#: A grant that cuts off more accounts than this has them listed whole under the table.
_NAMED_IN_TABLE = 3


def grant_cell(grant: Grant) -> str:
    """A grant as a table cell: the assignment's own GUID, its role and where it applies
    (the whole id is in ``-o tsv`` and ``--json``)."""
    if grant.kind is GrantKind.ACCESS_POLICY:
        return f"access policy of {grant.principal_id} in {_scope_name(grant.scope)}"
    guid = grant.id.rstrip("/").rsplit("/", 1)[-1]  # first: a narrow cell keeps it
    return f"{guid}: {grant.role_name or 'role'} on {_scope_name(grant.scope)}"


def _short_account(account: AccountId) -> str:
    """``RESOURCE_GROUP/NAME``, as every table prints an account."""
    return f"{account.resource_group}/{account.name}"


def _scope_name(scope: str) -> str:
    """``vault kv1, key cmk`` for a key's scope, ``resource group rg``, ``subscription …``."""
    parts = scope.strip("/").split("/")
    pairs = dict(zip(parts[::2], parts[1::2], strict=False))
    lowered = {name.lower(): value for name, value in pairs.items()}
    if "vaults" in lowered or "managedhsms" in lowered:
        vault = lowered.get("vaults") or lowered.get("managedhsms")
        key = lowered.get("keys")
        return f"vault {vault}" + (f", key {key}" if key else "")
    if "resourcegroups" in lowered:
        return f"resource group {lowered['resourcegroups']}"
    if "subscriptions" in lowered:
        return f"subscription {lowered['subscriptions']}"
    return scope or "/"


def _print_check(output: Output, report: CheckReport, code: int, warnings: list[str]) -> None:
    revocations = report.revocations()
    if output.json_mode:
        output.emit_json(
            {
                "checks": report.checks,
                "revocations": revocations,
                "ok": report.ok,
                "warnings": warnings,
                "exit_code": code,
            }
        )
        return
    for check in report.checks:
        title = f"{check.account_id} — {check.key or 'no key'}"
        output.print(_requirements_table(title, check.account_id, check.key, check.requirements))
        _print_fixes(output, check.requirements)
    rows = [
        (grant_cell(r.grant), ", ".join(_short_account(a) for a in r.cut_off)) for r in revocations
    ]
    tsv = [(str(r.grant), ",".join(str(a) for a in r.cut_off)) for r in revocations]
    if rows:
        output.print(table("Revoking would cut off", ("grant", "accounts"), rows, tsv=tsv))
        for revocation in revocations:  # (lines: not in -o tsv, whose rows hold them all)
            if len(revocation.cut_off) > _NAMED_IN_TABLE:  # a cell may not hold them all
                names = ", ".join(_short_account(a) for a in revocation.cut_off)
                count = len(revocation.cut_off)
                output.print(f"  {grant_cell(revocation.grant)} cuts off all {count}: {names}")
    failed = sum(1 for check in report.checks if not check.ok)
    output.print(f"check: {len(report.checks)} account(s), {failed} with failed requirements")


def _print_change(output: Output, change: Change, code: int, *, dry_run: bool) -> None:
    if output.json_mode:
        output.emit_json({"change": change, "exit_code": code})
        return
    if change.requirements:
        title = f"{change.action} {change.account_id}"
        output.print(
            _requirements_table(title, change.account_id, change.target, change.requirements)
        )
        _print_fixes(output, change.requirements)
    if change.identity_enabled:
        output.print(f"enabled a system-assigned identity: principal {change.principal_id}")
    output.print(change_line(change, dry_run=dry_run))


def change_line(change: Change, *, dry_run: bool) -> str:
    """What a lifecycle command did, in one sentence: ``disable ID (dry run): would take
    the account off …``; a refusal names the failed requirements (their fixes are above)."""
    head = f"{change.action} {change.account_id}" + (" (dry run)" if dry_run else "")
    detail = change.detail.removeprefix(f"{change.action}: ")
    failed = [r.name for r in change.requirements if r.failed]
    if change.outcome is ChangeOutcome.REFUSED and failed:
        return (
            f"{head}: refused, nothing written: {len(failed)} requirement(s) failed"
            f" ({', '.join(failed)}); each fix is listed above"
        )
    if change.outcome is ChangeOutcome.DRY_RUN:
        return f"{head}: nothing written; {detail.removeprefix('dry run, nothing written: ')}"
    if change.outcome is ChangeOutcome.REFUSED:
        return (
            f"{head}: refused, nothing written: {detail.removeprefix('refused, nothing written: ')}"
        )
    outcome = change.outcome.value.replace("_", " ")
    if detail.startswith(outcome):
        return f"{head}: {detail}"
    return f"{head}: {outcome}; {detail}" if detail else f"{head}: {outcome}"
