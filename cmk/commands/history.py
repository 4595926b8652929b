"""``cmk history [--account ID | --key KEY_ID] [--limit N]``: the ledger — one row per
account and target version: from, to, state, attempts, cause, trigger, when. ID is an
account's ARM resource id or RESOURCE_GROUP/NAME as the tables show it. Exit 1 when the
latest row of any account shown is a failure; 2 for a bad id or N below 1."""

from __future__ import annotations

import argparse
import re
from typing import Any

from cmk.commands.output import (
    EXIT_FINDINGS,
    EXIT_OK,
    common_options,
    short_account,
    short_version,
    styled,
    table,
)
from cmk.commands.session import Session, run_command
from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState
from cmk.resource_id import AccountId

__all__ = ["add_parser", "failing_now"]

#: ``resource-group/name``, the short form of an account in every table.
SHORT_ACCOUNT = re.compile(r"[^/\s]+/[^/\s]+")
#: The columns of the history table.
COLUMNS = ("updated", "account", "key", "version", "state", "attempts", "trigger", "cause")
#: What a narrow terminal leaves out, least important first: never when, which account,
#: from and to which version, and the state.
OPTIONAL = ("trigger", "attempts", "key", "cause")


def add_parser(subparsers: Any) -> None:
    """Register ``cmk history``."""
    parser = subparsers.add_parser(
        "history",
        parents=[common_options()],
        help="the rotation ledger",
        description=__doc__,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--account", metavar="ID", help="one account: ARM resource id, or RESOURCE_GROUP/NAME"
    )
    scope.add_argument("--key", metavar="KEY_ID", help="one key (any version)")
    parser.add_argument(
        "--limit", type=_positive, default=200, metavar="N", help="newest N rows (default 200)"
    )
    parser.set_defaults(func=history_command)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def failing_now(entries: list[LedgerEntry]) -> list[LedgerEntry]:
    """The latest row of each account, where it is a failure."""
    latest: dict[str, LedgerEntry] = {}
    for entry in sorted(entries, key=lambda e: e.updated):
        latest[str(entry.account_id)] = entry
    return [e for e in latest.values() if e.state is LedgerState.FAILED]


async def _history(session: Session) -> int:
    args, output = session.args, session.output
    short = args.account if args.account and SHORT_ACCOUNT.fullmatch(args.account) else None
    account = AccountId.parse(args.account) if args.account and not short else None
    key = KeyId.parse(args.key).versionless() if args.key else None
    entries = await session.runtime.services.ledger.history(account_id=account, key=key)
    if short:  # rg/name, as every table shows an account
        entries = [e for e in entries if short_account(e.account_id).lower() == short.lower()]
    entries = sorted(entries, key=lambda e: e.updated, reverse=True)[: max(0, args.limit)]
    code = EXIT_FINDINGS if failing_now(entries) else EXIT_OK
    if not entries:
        output.note(_nothing(args, session.settings.ledger_table))
    if output.json_mode:
        output.emit_json({"entries": entries, "exit_code": code})
        return code
    rows = [
        (
            e.updated,
            e.account_id,
            e.key_id,
            f"{short_version(e.from_version)} -> {short_version(e.to_version)}",
            styled(e.state.value),
            e.attempts,
            e.trigger,
            e.cause,
        )
        for e in entries
    ]
    tsv = [
        (
            e.updated,
            e.account_id,
            e.key_id,
            e.from_version,
            e.to_version,
            e.state.value,
            e.attempts,
            e.trigger,
            e.cause,
        )
        for e in entries
    ]
    if not entries:
        return code
    title = f"{len(entries)} ledger rows (newest first)"
    output.print(table(title, COLUMNS, rows, tsv=tsv, optional=OPTIONAL))
    return code


def _nothing(args: argparse.Namespace, ledger_table: str) -> str:
    """What an empty history says: for which account or key, and why that may be."""
    if args.account:
        return (
            f"cmk: no ledger rows for account {args.account}: cmk has not moved it yet, or the"
            " id is not one it knows (`cmk status` lists the accounts in scope as"
            " RESOURCE_GROUP/NAME)"
        )
    if args.key:
        return (
            f"cmk: no ledger rows for key {args.key}: no account was moved on it yet, or the"
            " key id is not one cmk knows (`cmk status` lists the keys in scope)"
        )
    return f"cmk: the ledger (table {ledger_table} of CMK_LEDGER_TABLE) has no rows yet"


def history_command(args: argparse.Namespace) -> int:
    return run_command(args, _history)
