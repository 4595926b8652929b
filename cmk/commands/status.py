"""``cmk status``: every CMK-bound account in scope, its bound and newest valid version,
its state (current, stale, unsafe, failing, out of scope) and the age of its binding.
Exit 1 when any account in scope is not current, or when nothing is in scope (an empty
CMK_VAULT_ALLOWLIST, no CMK account in CMK_SUBSCRIPTIONS): a warning on stderr says which."""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from cmk.commands.output import (
    common_options,
    plural,
    short_version,
    styled,
    table,
)
from cmk.commands.scope import resolve, scope_line, warn
from cmk.commands.session import Session, run_command
from cmk.usecases import status
from cmk.usecases.answers import status_answer, status_summary

__all__ = ["add_parser"]

#: The columns of the status table.
COLUMNS = ("account", "subscription", "key", "bound", "newest", "state", "age", "detail")
#: What a narrow terminal leaves out, least important first: never the account, its key
#: and its state; the bound and newest versions after the words that explain them.
OPTIONAL = ("subscription", "age", "detail", "newest", "bound")


def add_parser(subparsers: Any) -> None:
    """Register ``cmk status``."""
    parser = subparsers.add_parser(
        "status",
        parents=[common_options()],
        help="every CMK-bound account in scope and its state",
        description=__doc__,
    )
    parser.set_defaults(func=status_command)


async def _status(session: Session) -> int:
    engine = session.engine()
    with session.output.working("reading the inventory and the keys"):
        accounts = await status(engine)
    output = session.output
    scope = await resolve(engine)
    answer = status_answer(session.settings, accounts, scope)
    warn(output, answer.warnings)
    if output.json_mode:
        output.emit_json(answer.document)
        return answer.exit_code
    rows = [
        (
            a.account_id,
            a.subscription_id,
            a.key_id,
            short_version(a.bound_version),
            short_version(a.newest_version),
            styled(a.state.value),
            a.age,
            a.detail,
        )
        for a in accounts
    ]
    tsv = [
        (
            a.account_id,
            a.subscription_id,
            a.key_id,
            a.bound_version,
            a.newest_version,
            a.state.value,
            a.age,
            a.detail,
        )
        for a in accounts
    ]
    title = plural(len(accounts), "CMK account")
    output.print(table(title, COLUMNS, rows, tsv=tsv, optional=OPTIONAL))
    counts = status_summary(accounts)
    parts = [Text.assemble(styled(state), f": {n}") for state, n in counts.items() if n]
    output.print(Text("  ").join(parts))
    output.print(scope_line(session.settings, scope))
    return answer.exit_code


def status_command(args: argparse.Namespace) -> int:
    return run_command(args, _status)
