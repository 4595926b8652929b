"""What one account's binding means: its state, what to enqueue and what to alert.

Shared by the sweep (which acts on it) and status/plan (which only show it), so all
three always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from cmk.planner import Decision, Finding, Move
from cmk.ports import BUSY_STATES, AccountRecord, Alert, LedgerEntry, LedgerState, RotationJob
from cmk.usecases import alerting
from cmk.usecases.context import Engine
from cmk.usecases.fanout import job_for
from cmk.usecases.report import BindingState, FindingReport

__all__ = ["Assessment", "arm_problem", "assess", "assess_unread"]


@dataclass
class Assessment:
    """One account: its state for status, and what a sweep does about it."""

    state: BindingState
    detail: str
    job: RotationJob | None = None
    alerts: list[Alert] = field(default_factory=list)
    findings: list[FindingReport] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Nothing to alert and no failed update on record: the sweep closes its open alerts."""
        return not self.alerts and self.state is not BindingState.FAILING

    def flag(self, state: BindingState, kind: str, detail: str, alert: Alert) -> None:
        """Record a problem: worsen the state, add a finding and its alert."""
        if state is BindingState.FAILING or self.state is BindingState.CURRENT:
            self.state = state
        self.detail = detail
        self.findings.append(
            FindingReport(alert.subject, kind, detail, alert.key_id, alert.from_version)
        )
        self.alerts.append(alert)


def _age(delta: timedelta) -> str:
    hours = delta / timedelta(hours=1)
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def assess(
    engine: Engine,
    record: AccountRecord,
    decision: Decision,
    entry: LedgerEntry | None,
    trigger: str,
) -> Assessment:
    """Judge one account; ``entry`` is the ledger row for its move target, if any."""
    assert record.binding is not None
    binding = record.binding
    result = Assessment(BindingState.CURRENT, "on the newest valid version")
    if isinstance(decision, Finding):
        alert = alerting.finding_alert(decision)
        result.flag(BindingState.UNSAFE, decision.kind.value, decision.detail, alert)
    elif isinstance(decision, Move):
        _assess_move(engine, record, decision, entry, trigger=trigger, result=result)
    # The worker already alerted the failure it recorded; the sweep must not say it again
    # under another cause (one alert per account, target and cause until resolved).
    alerted = entry if entry is not None and entry.state is LedgerState.FAILED else None
    target = decision.target.version if isinstance(decision, Move) else binding.key_id.version
    _arm_checks(record, target or "", result, alerted=alerted)
    return result


def arm_problem(record: AccountRecord) -> bool:
    """Whether ARM alone shows something wrong with the account (see :func:`_arm_checks`):
    only then does its judgement need the ledger's failed rows."""
    return record.provisioning_state.lower() == "failed" or not record.has_usable_identity


def _arm_checks(
    record: AccountRecord, target: str, result: Assessment, *, alerted: LedgerEntry | None
) -> None:
    """What ARM alone says is wrong: a Failed update, no identity that can use the key.
    ``alerted``: the account's failed move on record, which the worker alerted — the
    account is failing, and nothing is alerted again (whatever version it names)."""
    assert record.binding is not None
    binding = record.binding
    if alerted is not None:
        if arm_problem(record) and result.state is not BindingState.FAILING:
            result.state = BindingState.FAILING
            result.detail = alerted.cause or f"the move to {alerted.to_version} failed"
        if not record.has_usable_identity:
            result.job = None  # a move would fail for it: a human acts first
        return
    if record.provisioning_state.lower() == "failed" and result.job is not None:
        # The move this sweep queues retries the update: it repairs the account or the
        # worker alerts its failure (naming the version it really tried). Alerting here
        # would name a version nobody tried yet and alert what the same run repairs.
        result.detail += "; provisioningState is Failed (the queued move retries it)"
    elif record.provisioning_state.lower() == "failed":
        cause = f"provisioningState is Failed (target version {target})"
        alert = alerting.update_failed(binding.account_id, binding.key_id, target, cause)
        result.flag(BindingState.FAILING, "update_failed", cause, alert)
    if not record.has_usable_identity:
        cause = f"no identity can use the key (identity type {record.identity_type})"
        alert = alerting.identity_missing(binding.account_id, binding.key_id, cause, target)
        result.flag(BindingState.FAILING, "identity_missing", cause, alert)
        result.job = None  # a move would fail for it: alerted once, here


def assess_unread(record: AccountRecord, cause: str, failed: LedgerEntry | None) -> Assessment:
    """An account whose key could not be read: unsafe (nothing can be checked or moved;
    the key's own alert says why), plus whatever ARM alone shows is wrong with it that
    the worker did not alert already (``failed``: its failed move on record)."""
    assert record.binding is not None
    result = Assessment(BindingState.UNSAFE, f"key unreadable: {cause}")
    _arm_checks(record, record.binding.key_id.version or "", result, alerted=failed)
    return result


def _assess_move(
    engine: Engine,
    record: AccountRecord,
    move: Move,
    entry: LedgerEntry | None,
    *,
    trigger: str,
    result: Assessment,
) -> None:
    now, binding, target = engine.now(), move.binding, move.target.version
    result.state = BindingState.UNSAFE if move.urgent else BindingState.STALE
    result.detail = move.reason
    result.alerts += alerting.unsafe_moves([move] if move.urgent else [])
    # Stale past the grace period *and* the move has been tried for longer than that: a
    # binding this very run moves (first seen now) is repaired, not alerted; a move that
    # failed was alerted by the worker (account_update_failed), not again as stale.
    stale_for = now - move.target.created
    grace = engine.settings.stale_grace
    trying_for = now - entry.created if entry is not None else None
    failed = entry is not None and entry.state is LedgerState.FAILED
    if stale_for > grace and trying_for is not None and trying_for > grace and not failed:
        alert = alerting.binding_stale(move, _age(stale_for))
        result.flag(result.state, "binding_stale", f"stale for {_age(stale_for)}", alert)
    in_flight = entry is not None and entry.state is LedgerState.SUBMITTED
    if entry is not None and in_flight and now - entry.updated > engine.stuck_after:
        cause = f"update to {target} submitted at {entry.updated.isoformat()} and not done"
        alert = alerting.update_failed(binding.account_id, binding.key_id, target, cause)
        result.flag(BindingState.FAILING, "update_stuck", cause, alert)
        in_flight = False  # try again
    elif entry is not None and entry.state is LedgerState.FAILED:
        result.state, result.detail = BindingState.FAILING, entry.cause or "update failed"
    if not in_flight and record.provisioning_state.lower() not in BUSY_STATES:
        result.job = job_for(move, trigger)
