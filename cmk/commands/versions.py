"""``cmk versions KEY_ID``: each version of a key — enabled, created, expiry, whether it
may be bound, which accounts use it — and whether it is safe to disable. Exit 1 when an
account is bound to a version that fails the policy (disabled, expired or expiring)."""

from __future__ import annotations

import argparse
from typing import Any

from cmk.commands.output import EXIT_FINDINGS, EXIT_OK, common_options, short_account, table
from cmk.commands.session import Session, run_command
from cmk.keyid import KeyId
from cmk.usecases.versions import VersionUse, key_versions

__all__ = ["add_parser"]

MAX_LISTED = 3


def add_parser(subparsers: Any) -> None:
    """Register ``cmk versions``."""
    parser = subparsers.add_parser(
        "versions",
        parents=[common_options()],
        help="each version of a key, who uses it, and whether it is safe to disable",
        description=__doc__,
    )
    parser.add_argument("key_id", metavar="KEY_ID", help="https://VAULT/keys/NAME")
    parser.set_defaults(func=versions_command)


def _users(use: VersionUse) -> str:
    names = [short_account(a) for a in use.accounts[:MAX_LISTED]]
    more = len(use.accounts) - len(names)
    return ", ".join(names) + (f" (+{more} more)" if more > 0 else "") if names else "-"


def _tags(use: VersionUse) -> str:
    tags = ["latest"] if use.latest else []
    return ", ".join([*tags, "newest valid"] if use.newest_valid else tags)


async def _versions(session: Session) -> int:
    report = await key_versions(session.engine(), KeyId.parse(session.args.key_id))
    code = EXIT_FINDINGS if report.unsafe_bindings else EXIT_OK
    output = session.output
    if output.json_mode:
        output.emit_json({"key": report, "exit_code": code})
        return code
    rows = [
        (
            use.version,
            _tags(use),
            use.enabled,
            use.created,
            use.expires,
            "yes" if use.bindable else f"[red]no[/]: {'; '.join(use.reasons)}",
            f"{len(use.accounts)}: {_users(use)}" if use.accounts else "0",
            "[green]yes[/]" if use.safe_to_disable else "[red]no[/]",
            use.verdict,
        )
        for use in report.versions
    ]
    columns = (
        "version",
        "",
        "enabled",
        "created",
        "expires",
        "bindable",
        "accounts",
        "safe to disable",
        "why",
    )
    output.print(table(f"{report.key_id}", columns, rows))
    scope = "" if report.in_scope else " (vault NOT in CMK_VAULT_ALLOWLIST: the app ignores it)"
    output.print(
        f"accounts searched in {len(report.subscriptions)} subscription(s) of"
        f" CMK_SUBSCRIPTIONS{scope}"
    )
    return code


def versions_command(args: argparse.Namespace) -> int:
    return run_command(args, _versions, storage=False)
