"""One JSON schema per answer, shared by the CLI (``-o json``) and the HTTP endpoints.

Each builder returns the document both print; :func:`~cmk.usecases.report.to_jsonable`
turns the reports inside into JSON. Every answer carries ``exit_code``: what ``cmk``
exits with for it (0 all good, 1 something needs a human, 2 usage or configuration).
Over HTTP the status code keeps its meaning and ``exit_code`` says the same as in a
script. The schemas are documented in docs/cli.md (and referred to by docs/functions.md):

- status: ``{accounts, summary, scope, warnings, exit_code}``
- plan: ``{plan, scope, warnings, exit_code}``
- sweep: ``{sweep, jobs, summary, scope, warnings, exit_code}``
- rotate: ``{rotation, jobs, summary, exit_code}`` (``checks`` and ``prediction`` too in
  the CLI's dry run)
- any error: ``{error: {kind, message, fix, exit_code}}`` (plus fields of that error)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from cmk.settings import Settings
from cmk.usecases.report import (
    AccountStatus,
    BindingState,
    EventOutcome,
    EventReport,
    JobReport,
    JobResult,
    SweepReport,
)
from cmk.usecases.subscriptions import FROM_SETTING, SubscriptionScope

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_OK",
    "EXIT_USAGE",
    "Answer",
    "error_answer",
    "job_summary",
    "jobs_failed",
    "plan_answer",
    "plan_exit_code",
    "rotation_answer",
    "rotation_exit_code",
    "scope_answer",
    "scope_source",
    "scope_warnings",
    "status_answer",
    "status_exit_code",
    "status_summary",
    "sweep_answer",
]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

_NOT_GOOD = (BindingState.STALE, BindingState.UNSAFE, BindingState.FAILING)


@dataclass(frozen=True)
class Answer:
    """One answer: the document to print or send (reports still inside), its exit code."""

    document: dict[str, object]

    @property
    def exit_code(self) -> int:
        return cast(int, self.document["exit_code"])

    @property
    def warnings(self) -> list[str]:
        """The scope warnings of the answer (printed on stderr by the CLI)."""
        return cast(list[str], self.document.get("warnings", []))


# --- what decides the exit code --------------------------------------------------------


def status_summary(accounts: Sequence[AccountStatus]) -> dict[str, int]:
    """How many accounts are in each state (every state present)."""
    counts = Counter(a.state.value for a in accounts)
    return {state.value: counts.get(state.value, 0) for state in BindingState}


def status_exit_code(accounts: Sequence[AccountStatus]) -> int:
    """1 when any account in scope is stale, unsafe or failing."""
    counts = status_summary(accounts)
    return EXIT_FINDINGS if any(counts[s.value] for s in _NOT_GOOD) else EXIT_OK


def plan_exit_code(report: SweepReport) -> int:
    """1 when a human must look at something: findings or unreadable keys."""
    return EXIT_FINDINGS if report.findings or report.errors else EXIT_OK


def job_summary(reports: Sequence[JobReport]) -> dict[str, int]:
    """How many jobs ended with each result (every result present, zero if none)."""
    counts = Counter(report.result.value for report in reports)
    return {result.value: counts.get(result.value, 0) for result in JobResult}


def jobs_failed(reports: Sequence[JobReport]) -> bool:
    """True when any job failed for good or is still not verified."""
    return any(r.result in (JobResult.FAILED, JobResult.SUBMITTED) for r in reports)


def rotation_exit_code(report: EventReport, jobs: Sequence[JobReport]) -> int:
    """1 when the new version was (or, in a dry run, would be) rejected, a job failed or
    there are findings."""
    rejected = report.outcome in (EventOutcome.VERSION_REJECTED, EventOutcome.WOULD_BE_REJECTED)
    return EXIT_FINDINGS if rejected or jobs_failed(jobs) or report.findings else EXIT_OK


# --- the scope -------------------------------------------------------------------------


def scope_source(scope: SubscriptionScope) -> str:
    """Where the subscriptions came from, for a sentence."""
    if scope.source == FROM_SETTING:
        return "of CMK_SUBSCRIPTIONS" + ("" if scope.checked else " (visibility not checked)")
    return "the identity can read (CMK_SUBSCRIPTIONS unset)"


def scope_warnings(
    settings: Settings, in_scope: int, scope: SubscriptionScope, out_of_scope: int = 0
) -> list[str]:
    """What is wrong with the scope of a run that found ``in_scope`` accounts in scope
    (and ``out_of_scope`` CMK accounts on vaults outside CMK_VAULT_ALLOWLIST): a
    configured subscription the identity cannot see, an empty CMK_VAULT_ALLOWLIST, no
    CMK account at all (Resource Graph answers nothing, not an error, for what it cannot
    see). Each one makes the exit code at least 1."""
    warnings = scope.warnings()
    if not settings.vault_allowlist:
        warnings.append(
            "CMK_VAULT_ALLOWLIST is empty: no vault is in scope, so nothing is ever"
            " rotated; set it to the URLs of the vaults to manage (docs/configuration.md)"
        )
    if in_scope == 0 and out_of_scope:
        vaults = len(settings.vault_allowlist)
        allowed = f"it lists {vaults} other vault(s)" if vaults else "it is empty"
        warnings.append(
            f"no CMK account in scope: the {out_of_scope} CMK account(s) found in the"
            f" {len(scope.subscriptions)} subscription(s) {scope_source(scope)} all use"
            f" vaults outside CMK_VAULT_ALLOWLIST ({allowed}); add their vaults to it"
            " (`cmk status` lists them as out_of_scope)"
        )
    elif in_scope == 0:
        subscriptions = ", ".join(scope.subscriptions) or "none"
        warnings.append(
            f"no CMK account in scope in the {len(scope.subscriptions)} subscription(s)"
            f" {scope_source(scope)} ({subscriptions}): check the ids, and that the"
            " identity can read the accounts (Resource Graph returns nothing for what it"
            " cannot see, rather than an error)"
        )
    return warnings


def scope_answer(settings: Settings, scope: SubscriptionScope) -> dict[str, object]:
    """The ``scope`` member of an answer: what was inventoried and from where."""
    names = dict(scope.names)
    return {
        "source": scope.source,
        "subscriptions": [
            {"id": subscription, "name": names.get(subscription)}
            for subscription in scope.subscriptions
        ],
        "not_visible": list(scope.not_visible),
        "vaults": sorted(settings.vault_allowlist),
    }


def _with_warnings(code: int, warnings: Sequence[str]) -> int:
    return max(code, EXIT_FINDINGS) if warnings else code


# --- the answers -----------------------------------------------------------------------


def status_answer(
    settings: Settings, accounts: Sequence[AccountStatus], scope: SubscriptionScope
) -> Answer:
    """``cmk status`` / ``GET /api/status``."""
    counts = status_summary(accounts)
    in_scope = len(accounts) - counts[BindingState.OUT_OF_SCOPE.value]
    out_of_scope = counts[BindingState.OUT_OF_SCOPE.value]
    warnings = scope_warnings(settings, in_scope, scope, out_of_scope)
    return Answer(
        {
            "accounts": list(accounts),
            "summary": counts,
            "scope": scope_answer(settings, scope),
            "warnings": warnings,
            "exit_code": _with_warnings(status_exit_code(accounts), warnings),
        }
    )


def plan_answer(settings: Settings, report: SweepReport, scope: SubscriptionScope) -> Answer:
    """``cmk plan`` / ``GET /api/plan``."""
    in_scope = report.accounts - report.out_of_scope
    warnings = scope_warnings(settings, in_scope, scope, report.out_of_scope)
    return Answer(
        {
            "plan": report,
            "scope": scope_answer(settings, scope),
            "warnings": warnings,
            "exit_code": _with_warnings(plan_exit_code(report), warnings),
        }
    )


def sweep_answer(
    settings: Settings,
    report: SweepReport,
    jobs: Sequence[JobReport],
    scope: SubscriptionScope,
) -> Answer:
    """``cmk sweep`` (jobs run in the CLI) / ``POST /api/sweep`` (jobs enqueued: none here)."""
    in_scope = report.accounts - report.out_of_scope
    warnings = scope_warnings(settings, in_scope, scope, report.out_of_scope)
    failed = jobs_failed(jobs) or report.findings or report.errors
    return Answer(
        {
            "sweep": report,
            "jobs": list(jobs),
            "summary": job_summary(jobs),
            "scope": scope_answer(settings, scope),
            "warnings": warnings,
            "exit_code": _with_warnings(EXIT_FINDINGS if failed else EXIT_OK, warnings),
        }
    )


def rotation_answer(
    report: EventReport,
    jobs: Sequence[JobReport],
    *,
    checks: Sequence[str] | None = None,
    prediction: Mapping[str, object] | None = None,
) -> Answer:
    """``cmk rotate`` / ``POST /api/rotate``. A dry run counts its moves as
    ``summary.would_update``; the CLI's adds the ``checks`` the new version must pass and
    the ``prediction`` (the version a real run would create, and the checks it fails). A
    dry run exits 1 only when the real run's version would be rejected."""
    summary = job_summary(jobs)
    if report.dry_run and not jobs:
        summary[JobResult.WOULD_UPDATE.value] = len(report.moves)
    answer: dict[str, object] = {"rotation": report, "jobs": list(jobs), "summary": summary}
    if checks is not None:
        answer["checks"] = list(checks)
    if prediction is not None:
        answer["prediction"] = dict(prediction)
    rejected = report.outcome is EventOutcome.WOULD_BE_REJECTED
    if report.dry_run:
        answer["exit_code"] = EXIT_FINDINGS if rejected else EXIT_OK
    else:
        answer["exit_code"] = rotation_exit_code(report, jobs)
    return Answer(answer)


def error_answer(kind: str, message: str, fix: str, exit_code: int, **details: object) -> Answer:
    """Any error: ``{error: {kind, message, fix, exit_code}}``; ``details`` (such as the
    version a cool-down names) go beside ``error``."""
    return Answer(
        {
            "error": {"kind": kind, "message": message, "fix": fix, "exit_code": exit_code},
            **details,
        }
    )
