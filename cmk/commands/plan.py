"""``cmk plan``: what a sweep would do now — the moves with their reasons, the findings
and the alerts it would raise — with nothing written anywhere. Exit 1 when there are
findings or keys that could not be read, or when nothing is in scope (a warning on stderr
says why)."""

from __future__ import annotations

import argparse
from typing import Any

from cmk.commands.output import common_options, plural
from cmk.commands.scope import resolve, scope_line, warn
from cmk.commands.session import Session, run_command
from cmk.commands.tables import print_alerts, print_sweep
from cmk.usecases import plan
from cmk.usecases.answers import plan_answer, plan_exit_code

__all__ = ["add_parser", "plan_exit_code"]


def add_parser(subparsers: Any) -> None:
    """Register ``cmk plan``."""
    parser = subparsers.add_parser(
        "plan",
        parents=[common_options()],
        help="what a sweep would do (writes nothing)",
        description=__doc__,
    )
    parser.set_defaults(func=plan_command)


async def _plan(session: Session) -> int:
    engine = session.engine()
    with session.output.working("reading the inventory and the keys"):
        report = await plan(engine)
    output = session.output
    scope = await resolve(engine)
    answer = plan_answer(session.settings, report, scope)
    warn(output, answer.warnings)
    if output.json_mode:
        output.emit_json(answer.document)
        return answer.exit_code
    print_sweep(output, report)
    print_alerts(output, report.alerts)
    output.print(
        f"plan: {plural(report.accounts, 'account')}, {plural(report.keys_read, 'key')} read,"
        f" {len(report.moves)} to move, {plural(len(report.findings), 'finding')},"
        f" {plural(len(report.alerts), 'alert')} a sweep would raise,"
        f" {report.out_of_scope} out of scope"
    )
    output.print(scope_line(session.settings, scope))
    return answer.exit_code


def plan_command(args: argparse.Namespace) -> int:
    return run_command(args, _plan)
