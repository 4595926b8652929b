"""``cmk status``: every CMK-bound account in scope, its bound and newest valid version,
its state (current, stale, unsafe, failing, out of scope) and the age of its binding.
Exit 1 when any account in scope is not current, or when nothing is in scope (an empty
CMK_VAULT_ALLOWLIST, no CMK account in CMK_SUBSCRIPTIONS): a warning on stderr says which."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from rich.text import Text

from cmk.commands.output import (
    EXIT_FINDINGS,
    EXIT_OK,
    common_options,
    short_version,
    styled,
    table,
)
from cmk.commands.scope import scope_line, scope_warnings, warn
from cmk.commands.session import Session, run_command
from cmk.usecases import AccountStatus, BindingState, status

__all__ = ["add_parser"]

_NOT_GOOD = (BindingState.STALE, BindingState.UNSAFE, BindingState.FAILING)


def add_parser(subparsers: Any) -> None:
    """Register ``cmk status``."""
    parser = subparsers.add_parser(
        "status",
        parents=[common_options()],
        help="every CMK-bound account in scope and its state",
        description=__doc__,
    )
    parser.set_defaults(func=status_command)


def summary(accounts: list[AccountStatus]) -> dict[str, int]:
    """How many accounts are in each state (every state present)."""
    counts = Counter(a.state.value for a in accounts)
    return {state.value: counts.get(state.value, 0) for state in BindingState}


async def _status(session: Session) -> int:
    with session.output.working("reading the inventory and the keys"):
        accounts = await status(session.engine())
    counts = summary(accounts)
    code = EXIT_FINDINGS if any(counts[s.value] for s in _NOT_GOOD) else EXIT_OK
    output = session.output
    in_scope = len(accounts) - counts[BindingState.OUT_OF_SCOPE.value]
    warnings = scope_warnings(session.settings, in_scope)
    code = warn(output, warnings, code)
    if output.json_mode:
        output.emit_json(
            {"accounts": accounts, "summary": counts, "warnings": warnings, "exit_code": code}
        )
        return code
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
    columns = ("account", "subscription", "key", "bound", "newest", "state", "age", "detail")
    output.print(table(f"{len(accounts)} CMK accounts", columns, rows))
    parts = [Text.assemble(styled(state), f": {n}") for state, n in counts.items() if n]
    output.print(Text("  ").join(parts))
    output.print(scope_line(session.settings))
    return code


def status_command(args: argparse.Namespace) -> int:
    return run_command(args, _status)
