"""``cmk versions KEY_ID``: each version of a key — enabled, created, expiry, whether it
may be bound, which accounts use it — and whether it is safe to disable. Exit 1 when an
account is bound to a version that fails the policy (disabled, expired or expiring); exit 2
for a key id that is not one, or a vault outside CMK_VAULT_ALLOWLIST."""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from cmk.commands.output import (
    EXIT_FINDINGS,
    EXIT_OK,
    clean,
    common_options,
    short_account,
    table,
)
from cmk.commands.scope import resolve, warn
from cmk.commands.session import Session, run_command
from cmk.errors import OutOfScope
from cmk.keyid import KeyId
from cmk.settings import Settings
from cmk.usecases.answers import scope_answer, scope_source
from cmk.usecases.versions import VersionUse, key_versions

__all__ = ["add_parser", "require_in_scope"]

MAX_LISTED = 3
#: The columns of the versions table.
COLUMNS = (
    "version",
    "tags",
    "enabled",
    "created",
    "expires",
    "bindable",
    "accounts",
    "safe to disable",
)
#: What a narrow terminal leaves out, least important first: never the version, its
#: expiry and whether it is safe to disable. Tags are repeated by the "why" lines,
#: enabled by bindable ("no: disabled"), the accounts' count by the "why" lines.
OPTIONAL = ("tags", "created", "enabled", "accounts", "bindable")


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


def _bindable(use: VersionUse) -> Text:
    if use.bindable:
        return Text("yes")
    return Text.assemble(("no", "red"), ": ", clean("; ".join(use.reasons)))


def require_in_scope(settings: Settings, key: KeyId) -> None:
    """Refuse a key whose vault is outside CMK_VAULT_ALLOWLIST, as every path of the app
    does: what the app will never touch is not what an operator should plan with."""
    if settings.vault_in_scope(key):
        return
    allowed = ", ".join(sorted(settings.vault_allowlist)) or "nothing: the setting is empty"
    raise OutOfScope(
        f"vault {key.vault_url} is not in CMK_VAULT_ALLOWLIST (allowed: {allowed});"
        " the app never reads or rotates its keys"
    )


async def _versions(session: Session) -> int:
    key = KeyId.parse(session.args.key_id)
    require_in_scope(session.settings, key)
    engine = session.engine()
    with session.output.working(f"reading the versions of {key} and who uses them"):
        report = await key_versions(engine, key)
    scope = await resolve(engine)
    warnings = scope.warnings()  # a subscription not searched: "safe" may be wrong
    code = EXIT_FINDINGS if report.unsafe_bindings or warnings else EXIT_OK
    output = session.output
    warn(output, warnings)
    if output.json_mode:
        document = {
            "key": report,
            "scope": scope_answer(session.settings, scope),
            "warnings": warnings,
            "exit_code": code,
        }
        output.emit_json(document)
        return code
    rows = [
        (
            use.version,
            _tags(use),
            use.enabled,
            use.created,
            use.expires,
            _bindable(use),
            f"{len(use.accounts)}: {_users(use)}" if use.accounts else "0",
            Text("yes", style="green") if use.safe_to_disable else Text("no", style="red"),
        )
        for use in report.versions
    ]
    tsv = [
        (
            use.version,
            _tags(use),
            use.enabled,
            use.created,
            use.expires,
            use.bindable,
            "; ".join(use.reasons),
            ",".join(str(account) for account in use.accounts),
            use.safe_to_disable,
            use.verdict,
        )
        for use in report.versions
    ]
    output.print(table(f"{report.key_id}", COLUMNS, rows, tsv=tsv, optional=OPTIONAL))
    # why each version is or is not safe to disable: whole, whatever the width
    output.print("why, per version:")
    for use in report.versions:
        tags = f" ({_tags(use)})" if _tags(use) else ""  # the column a narrow table drops
        output.print(f"  {use.version}{tags}: {use.verdict}")
    names = ", ".join(scope.label(s) for s in scope.subscriptions) or "none"
    output.print(
        f"accounts searched in {len(scope.subscriptions)} subscription(s)"
        f" {scope_source(scope)} ({names})"
    )
    return code


def versions_command(args: argparse.Namespace) -> int:
    return run_command(args, _versions, storage=False)
