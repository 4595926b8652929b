"""Tables and summaries shared by several commands: moves, findings, alerts, job results."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from cmk.commands.output import Output, clean, short_version, styled, table
from cmk.errors import InvalidInput
from cmk.keyid import KeyId
from cmk.ports import Alert
from cmk.resource_id import AccountId
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
    "retry_note",
    "subject_cell",
]

# What a narrow terminal leaves out of each table, least important first (the account or
# subject, and the result, are never left out): see docs/cli.md.
MOVES_OPTIONAL = ("reason", "key", "priority")
FINDINGS_OPTIONAL = ("detail", "key")
ALERTS_OPTIONAL = ("cause", "severity")
JOBS_OPTIONAL = ("attempts", "key", "cause")


def print_moves(output: Output, moves: Sequence[PlannedMove], title: str = "Moves") -> None:
    """One row per move. ``-o tsv``: account id, key id, from version, to version,
    priority, reason (full ids and versions)."""
    rows = [
        (
            m.account_id,
            m.key_id,
            f"{short_version(m.from_version)} -> {short_version(m.to_version)}",
            _priority(m.urgent),
            m.reason,
        )
        for m in moves
    ]
    tsv = [
        (m.account_id, m.key_id, m.from_version, m.to_version, _priority(m.urgent), m.reason)
        for m in moves
    ]
    if rows:
        columns = ("account", "key", "version", "priority", "reason")
        output.print(table(title, columns, rows, tsv=tsv, optional=MOVES_OPTIONAL))


def _priority(urgent: bool) -> str:
    """Whether a move jumps the queue: the bound version is unsafe (disabled, expiring)."""
    return "urgent" if urgent else "normal"


def subject_cell(subject: str) -> object:
    """A finding's or alert's subject as the tables show it: an account as
    ``resource-group/name``, a key as ``vault/key``, anything else as it is."""
    try:
        return AccountId.parse(subject)
    except InvalidInput:
        pass
    try:
        return KeyId.parse(subject)
    except InvalidInput:
        return subject


def print_findings(output: Output, findings: Sequence[FindingReport]) -> None:
    """One row per finding. ``-o tsv``: kind, subject (full id), key id, detail."""
    rows = [(f.kind, subject_cell(f.subject), f.key_id, f.detail) for f in findings]
    tsv = [(f.kind, f.subject, f.key_id, f.detail) for f in findings]
    if rows:
        columns = ("kind", "subject", "key", "detail")
        output.print(table("Findings", columns, rows, tsv=tsv, optional=FINDINGS_OPTIONAL))


def print_alerts(output: Output, alerts: Sequence[Alert]) -> None:
    """One row per alert. ``-o tsv``: severity, type, subject (full id), cause."""
    rows = [(a.severity.value, a.type.value, subject_cell(a.subject), a.cause) for a in alerts]
    tsv = [(a.severity.value, a.type.value, a.subject, a.cause) for a in alerts]
    if rows:
        columns = ("severity", "type", "subject", "cause")
        output.print(table("Alerts", columns, rows, tsv=tsv, optional=ALERTS_OPTIONAL))


def print_sweep(output: Output, report: SweepReport) -> None:
    """Moves, findings, alerts and errors of a sweep or plan."""
    print_moves(output, report.moves)
    print_findings(output, report.findings)
    if not report.dry_run:
        print_alerts(output, report.alerts)
    for error in report.errors:
        output.print(Text.assemble(("error:", "red"), " ", clean(error)))


def retry_note(retries: int, waits: int) -> str:
    """The end of a summary: transient errors retried, and waits for an account's write
    lease that another job held (deferred, not errors); "" for none."""
    note = f"; {retries} transient errors retried (-v shows each)" if retries else ""
    if waits:
        note += (
            f"; waited {waits} time(s) for an account's write lease, held by another job"
            " (deferred, not an error)"
        )
    return note


def print_jobs(output: Output, reports: Sequence[JobReport]) -> None:
    """One row per job. ``-o tsv``: account id, key id, to version, result, attempts,
    cause (full ids and versions)."""
    ordered = sorted(reports, key=lambda r: str(r.account_id))
    rows = [
        (
            r.account_id,
            r.target.versionless(),
            short_version(r.target.version),
            styled(r.result.value),
            r.attempts,
            r.cause,
        )
        for r in ordered
    ]
    tsv = [
        (
            r.account_id,
            r.target.versionless(),
            r.target.version,
            r.result.value,
            r.attempts,
            r.cause,
        )
        for r in ordered
    ]
    if rows:
        columns = ("account", "key", "to", "result", "attempts", "cause")
        output.print(table("Accounts", columns, rows, tsv=tsv, optional=JOBS_OPTIONAL))
