"""Tables and summaries shared by several commands: moves, findings, alerts, job results."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from cmk.commands.output import Output, clean, short_version, styled, table
from cmk.ports import Alert
from cmk.usecases import FindingReport, JobReport, PlannedMove, SweepReport
from cmk.usecases.answers import job_summary, jobs_failed

__all__ = [
    "job_summary",
    "jobs_failed",
    "print_alerts",
    "print_findings",
    "print_jobs",
    "print_moves",
    "print_sweep",
]


def print_moves(output: Output, moves: Sequence[PlannedMove], title: str = "Moves") -> None:
    rows = [
        (
            m.account_id,
            m.key_id,
            f"{short_version(m.from_version)} -> {short_version(m.to_version)}",
            "urgent" if m.urgent else "",
            m.reason,
        )
        for m in moves
    ]
    if rows:
        output.print(table(title, ("account", "key", "version", "", "reason"), rows))


def print_findings(output: Output, findings: Sequence[FindingReport]) -> None:
    rows = [(f.kind, f.subject.rsplit("/", 1)[-1], f.key_id, f.detail) for f in findings]
    if rows:
        output.print(table("Findings", ("kind", "subject", "key", "detail"), rows))


def print_alerts(output: Output, alerts: Sequence[Alert]) -> None:
    rows = [(a.severity.value, a.type.value, a.subject.rsplit("/", 1)[-1], a.cause) for a in alerts]
    if rows:
        output.print(table("Alerts", ("severity", "type", "subject", "cause"), rows))


def print_sweep(output: Output, report: SweepReport) -> None:
    """Moves, findings, alerts and errors of a sweep or plan."""
    print_moves(output, report.moves)
    print_findings(output, report.findings)
    if not report.dry_run:
        print_alerts(output, report.alerts)
    for error in report.errors:
        output.print(Text.assemble(("error:", "red"), " ", clean(error)))


def print_jobs(output: Output, reports: Sequence[JobReport]) -> None:
    rows = [
        (
            r.account_id,
            r.target.versionless(),
            short_version(r.target.version),
            styled(r.result.value),
            r.attempts,
            r.cause,
        )
        for r in sorted(reports, key=lambda r: str(r.account_id))
    ]
    if rows:
        columns = ("account", "key", "to", "result", "attempts", "cause")
        output.print(table("Accounts", columns, rows))
