"""What each use case did (or, in a dry run, would do): plain data for the CLI, HTTP and JSON.

Every report is a frozen dataclass; :func:`to_jsonable` turns one (or a list of them)
into JSON-ready dicts, writing ids as strings, times in ISO 8601 and durations in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum

from cmk.keyid import KeyId
from cmk.planner import Finding, Move
from cmk.ports import Alert, JobStep, RotationJob
from cmk.resource_id import AccountId

__all__ = [
    "AccountStatus",
    "BindingState",
    "EventOutcome",
    "EventReport",
    "FindingReport",
    "JobReport",
    "JobResult",
    "PlannedMove",
    "SweepReport",
    "to_jsonable",
]


@dataclass(frozen=True)
class PlannedMove:
    """One account to move to a newer key version (one queue job)."""

    account_id: AccountId
    key_id: KeyId  # versionless
    from_version: str | None
    to_version: str
    urgent: bool
    reason: str

    @classmethod
    def from_move(cls, move: Move) -> PlannedMove:
        """The report line of a planner :class:`~cmk.planner.Move`."""
        return cls(
            account_id=move.binding.account_id,
            key_id=move.binding.key_id.versionless(),
            from_version=move.binding.key_id.version,
            to_version=move.target.version,
            urgent=move.urgent,
            reason=move.reason,
        )


@dataclass(frozen=True)
class FindingReport:
    """Something a human must look at: a binding we will not change, or a key or vault problem."""

    subject: str  # account id, key id or vault url
    kind: str  # a FindingKind value or a use-case finding such as "identity_missing"
    detail: str
    key_id: KeyId | None = None
    version: str | None = None

    @classmethod
    def from_finding(cls, finding: Finding) -> FindingReport:
        """The report line of a planner :class:`~cmk.planner.Finding`."""
        return cls(
            subject=str(finding.binding.account_id),
            kind=finding.kind.value,
            detail=finding.detail,
            key_id=finding.binding.key_id.versionless(),
            version=finding.binding.key_id.version,
        )


class EventOutcome(StrEnum):
    """What an event handler decided."""

    OUT_OF_SCOPE = "out_of_scope"  # vault not in the allow-list: nothing read or written
    KEY_NOT_FOUND = "key_not_found"  # the key no longer exists
    VERSION_REJECTED = "version_rejected"  # newest version fails the policy: nobody moved
    FANNED_OUT = "fanned_out"  # jobs planned (and enqueued unless dry run)
    ROTATED = "rotated"  # a new version was created (or would be), then fanned out
    WOULD_ROTATE = "would_rotate"  # dry run of cmk rotate: the new version would pass
    WOULD_BE_REJECTED = "would_be_rejected"  # dry run of cmk rotate: it would be rejected
    NOT_ROTATED = "not_rotated"  # near expiry, no successor, rotating is off: alerted
    NO_SUCCESSOR = "no_successor"  # no bindable version to move to
    STALE_EVENT = "stale_event"  # Key Vault disagrees with the event (replayed, forged, old)


@dataclass(frozen=True)
class EventReport:
    """The result of one Key Vault event."""

    event_id: str
    event_type: str
    key_id: KeyId
    outcome: EventOutcome
    dry_run: bool
    target_version: str | None = None
    created_version: str | None = None
    moves: tuple[PlannedMove, ...] = ()
    findings: tuple[FindingReport, ...] = ()
    alerts: tuple[Alert, ...] = ()
    enqueued: int = 0
    detail: str = ""


class JobResult(StrEnum):
    """How one run of the per-account step machine ended."""

    SUCCEEDED = "succeeded"  # verified on the target version
    SKIPPED = "skipped"  # already on a newer version (or the job was already done)
    SUBMITTED = "submitted"  # update still running: a verify job is queued
    FAILED = "failed"  # permanent failure: ledger row and one alert
    WOULD_UPDATE = "would_update"  # dry run: the PATCH that would be sent


@dataclass(frozen=True)
class JobReport:
    """The result of one queue job."""

    account_id: AccountId
    target: KeyId
    step: JobStep
    result: JobResult
    attempts: int
    cause: str | None = None
    alert: Alert | None = None
    #: ``submitted`` with a VERIFY queued: when the account's write lease, handed on to
    #: that verify, runs out (nothing else writes the account until then). None otherwise
    #: — a verify that hands the move back to a ROTATE job keeps no lease.
    lease_until: datetime | None = None

    @classmethod
    def skipped(cls, job: RotationJob, cause: str) -> JobReport:
        """``job`` not run at all (no attempt), and why."""
        return cls(job.account_id, job.target, job.step, JobResult.SKIPPED, 0, cause)


class BindingState(StrEnum):
    """How one account's binding looks to status and plan."""

    CURRENT = "current"  # on the newest bindable version
    STALE = "stale"  # a newer bindable version exists: will be moved
    UNSAFE = "unsafe"  # bound version fails the policy and cannot be fixed by a move
    FAILING = "failing"  # the last update failed or is stuck, or the account cannot use the key
    OUT_OF_SCOPE = "out_of_scope"  # the key's vault is not in the allow-list


@dataclass(frozen=True)
class AccountStatus:
    """One CMK-enabled account: what it uses, what it should use, and since when."""

    account_id: AccountId
    subscription_id: str
    key_id: KeyId | None  # versionless
    bound_version: str | None
    newest_version: str | None  # newest bindable version of the key, if known
    state: BindingState
    bound_since: datetime | None = None  # from the ledger, when we moved it
    age: timedelta | None = None
    detail: str = ""


@dataclass(frozen=True)
class SweepReport:
    """The result of a sweep (or, with ``dry_run``, of a plan)."""

    run_id: str
    dry_run: bool
    accounts: int
    keys_read: int
    out_of_scope: int = 0
    moves: tuple[PlannedMove, ...] = ()
    findings: tuple[FindingReport, ...] = ()
    alerts: tuple[Alert, ...] = ()
    alerts_published: int = 0
    enqueued: int = 0
    errors: tuple[str, ...] = ()


def to_jsonable(value: object) -> object:
    """Reports (and what they contain) as JSON-ready values."""
    if isinstance(value, AccountId | KeyId):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple | frozenset | set):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    return value
