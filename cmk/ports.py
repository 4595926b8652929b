"""The ports between the rotation use cases and Azure: what the engine needs, in our types.

Each protocol is implemented by one thin adapter in :mod:`cmk.adapters` that takes an
async Azure SDK client and turns SDK models and ``azure.core.exceptions`` into the types
below and the errors of :mod:`cmk.errors` (transient errors propagate; permanent ones are
the caller's to record and alert). Use cases depend only on these protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from cmk.keyid import KeyId
from cmk.planner import Binding
from cmk.policy import KeyVersion
from cmk.resource_id import AccountId

# --- Key Vault ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """A key's rotation policy, as far as new versions go: Key Vault's rotate makes them,
    and they expire ``expiry`` after they are made (the policy's ``expiryTime``; None when
    it sets none, or in a form not understood: then not judged, never guessed)."""

    expiry: timedelta | None


class KeyStore(Protocol):
    """Key Vault / Managed HSM keys (``azure.keyvault.keys.aio.KeyClient`` per vault)."""

    async def latest(self, key: KeyId) -> KeyVersion:
        """The newest version of ``key`` (one GET). NotFound if the key does not exist."""
        ...

    async def get_version(self, key: KeyId) -> KeyVersion:
        """One named version (``key.version`` must be set); may come from a short-lived
        per-process cache (see :meth:`forget`)."""
        ...

    def forget(self, key: KeyId) -> None:
        """Drop what is cached about ``key`` (every version of it when versionless): after
        a key event, or a bind the resource provider refused."""
        ...

    async def list_versions(self, key: KeyId) -> list[KeyVersion]:
        """Every version of ``key`` with full properties, in no particular order."""
        ...

    async def has_rotation_policy(self, key: KeyId) -> bool:
        """Whether the key has a rotation policy with lifetime actions."""
        ...

    async def rotation_policy(self, key: KeyId) -> KeyRotation | None:
        """The key's rotation policy when it has one that does something (see
        :meth:`has_rotation_policy`), with the expiry it gives new versions; else None."""
        ...

    async def rotate(self, key: KeyId) -> KeyVersion:
        """Create a new version with Key Vault's rotate operation."""
        ...

    async def create_like(self, template: KeyVersion) -> KeyVersion:
        """Create a new version with the same type, size and operations as ``template``."""
        ...


# --- Cognitive Services accounts ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyVaultReference:
    """``encryption.keyVaultProperties`` exactly as ARM returned it (original letter case):
    what a PATCH must send back unchanged apart from ``keyVersion``."""

    key_vault_uri: str
    key_name: str
    key_version: str
    identity_client_id: str | None


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """What the engine knows of one account: its binding (None when it uses
    Microsoft-managed keys) and the state of its last update."""

    account_id: AccountId
    location: str
    binding: Binding | None
    provisioning_state: str  # Succeeded, Updating, Failed, ...
    identity_type: str  # None, SystemAssigned, UserAssigned, "SystemAssigned, UserAssigned"
    user_assigned_client_ids: frozenset[str] = frozenset()
    #: The binding as ARM spelled it, when this record comes from a GET of the account.
    key_vault_reference: KeyVaultReference | None = None

    @property
    def has_usable_identity(self) -> bool:
        """An identity exists that can unwrap the key: the named user-assigned one, or a
        system-assigned one when no client id is named."""
        if self.binding is not None and self.binding.identity_client_id:
            return self.binding.identity_client_id.lower() in self.user_assigned_client_ids
        return "systemassigned" in self.identity_type.lower().replace(" ", "")


#: ``provisioningState`` values (lower case) of an account with a change in flight.
BUSY_STATES = frozenset({"accepted", "creating", "updating", "moving", "deleting"})


class UpdateOutcome(StrEnum):
    SUCCEEDED = "succeeded"  # provisioningState Succeeded and the version in place
    IN_PROGRESS = "in_progress"  # still Updating after the wait bound: verify later


class AccountStore(Protocol):
    """ARM ``Microsoft.CognitiveServices/accounts`` (``CognitiveServicesManagementClient``)."""

    async def get(self, account_id: AccountId) -> AccountRecord:
        """Read the account now (NotFound if gone)."""
        ...

    async def update_key_version(
        self, record: AccountRecord, version: str, wait: timedelta
    ) -> UpdateOutcome:
        """PATCH only ``keyVersion`` (keeping keyVaultUri, keyName, identityClientId) and
        wait up to ``wait`` for the long-running operation. A Failed operation raises
        UpdateFailed / AccessDenied with the RP's code; 409/429/5xx raise TransientError."""
        ...


class Inventory(Protocol):
    """Every CMK-enabled account in the subscription scope (Resource Graph, ARM fallback)."""

    def cmk_accounts(
        self, subscriptions: Sequence[str], key: KeyId | None = None
    ) -> AsyncIterator[AccountRecord]:
        """Stream the accounts whose keySource is Microsoft.KeyVault, page by page; with
        ``key``, only the accounts bound to that key (any version), filtered at the source."""
        ...


@dataclass(frozen=True)
class Subscription:
    """A subscription the identity can read (ARM ``GET /subscriptions``)."""

    subscription_id: str  # lowercase
    display_name: str
    state: str  # Enabled, Warned, PastDue, Disabled, Deleted


class SubscriptionDirectory(Protocol):
    """The subscriptions the identity can read: the default scope when CMK_SUBSCRIPTIONS
    is unset, and the check that each configured one is visible."""

    async def readable(self) -> list[Subscription]:
        """Every subscription ARM lists for the caller, in ARM's order."""
        ...


# --- jobs, ledger, alerts -------------------------------------------------------------


class JobStep(StrEnum):
    ROTATE = "rotate"  # check, PATCH, wait
    VERIFY = "verify"  # an update was submitted earlier: check it finished


@dataclass(frozen=True)
class RotationJob:
    """Move one account to one key version. Serialized as JSON in a queue message."""

    account_id: AccountId
    target: KeyId  # versioned
    trigger: str  # event id, "sweep:<run id>", "cli:<user>"
    step: JobStep = JobStep.ROTATE
    urgent: bool = False
    from_version: str | None = None
    deferrals: int = 0  # times re-enqueued after a 429 (see cmk.entrypoints)
    #: Seconds this job has spent deferred so far (the sum of its deferrals' delays):
    #: a job stops deferring after MAX_DEFERRED in all, however many deferrals that took.
    deferred_seconds: int = 0
    #: A VERIFY's write lease: the owner token of the run that submitted the update, which
    #: handed its lease on, so no other job writes the account until the verify settles.
    lease_owner: str | None = None
    #: A VERIFY waiting on an update its job did not send: the job found the account
    #: Updating with no PATCH of its own known to be accepted (a PLANNED row: its PATCH was
    #: answered 429, or never went out). It holds the lease while that update runs, but the
    #: update's end is not this job's outcome: the move is decided again after it.
    adopted: bool = False


class JobQueue(Protocol):
    async def enqueue(self, job: RotationJob, *, delay: timedelta | None = None) -> None: ...

    async def enqueue_many(self, jobs: Sequence[RotationJob]) -> int:
        """Enqueue concurrently; returns how many were sent."""
        ...

    async def requeue_text(self, text: str, *, delay: timedelta) -> None:
        """Put a message this release cannot read (a newer release's job) back on the
        queue as it came, invisible for ``delay``."""
        ...


class LedgerState(StrEnum):
    PLANNED = "planned"
    SUBMITTED = "submitted"  # PATCH accepted, not yet verified
    SUCCEEDED = "succeeded"  # verified on the target version
    SKIPPED = "skipped"  # already on the target or a newer version
    FAILED = "failed"  # permanent failure (cause set)


@dataclass(frozen=True)
class LedgerEntry:
    """One row per account and target version."""

    account_id: AccountId
    key_id: KeyId  # versionless key
    to_version: str
    from_version: str | None
    state: LedgerState
    attempts: int
    cause: str | None
    trigger: str
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class LeaseGrant:
    """The answer to a lease request: granted, or who holds it until when."""

    granted: bool
    holder: str
    expires: datetime
    purpose: str = ""  # what the holder said it is doing


@dataclass(frozen=True)
class ClaimRecord:
    """A claim as recorded: who took it, when, and the version its work created."""

    owner: str
    claimed: datetime
    created_version: str | None


class OperationKind(StrEnum):
    """What an HTTP operation runs: the work of ``GET /api/status``, ``GET /api/plan`` or
    ``POST /api/sweep``."""

    STATUS = "status"
    PLAN = "plan"
    SWEEP = "sweep"


class OperationState(StrEnum):
    NOT_STARTED = "not_started"  # accepted, on the operations queue
    RUNNING = "running"  # a queue worker is on it
    SUCCEEDED = "succeeded"  # its answer is the 200 document
    FAILED = "failed"  # its answer is an error document

    @property
    def finished(self) -> bool:
        return self in (OperationState.SUCCEEDED, OperationState.FAILED)


@dataclass(frozen=True)
class Operation:
    """One accepted HTTP call whose work runs on the operations queue (the asynchronous
    request-reply pattern): its state, and when its status URL stops answering."""

    id: str  # 32 lowercase hex digits
    kind: OperationKind
    state: OperationState
    created: datetime
    deadline: datetime  # not finished by then: answered as failed
    expires: datetime  # the status URL answers 404 from then on
    started: datetime | None = None
    finished: datetime | None = None
    attempts: int = 0  # queue deliveries that started it
    http_status: int | None = None  # of the answer, once finished


@dataclass(frozen=True)
class OperationAnswer:
    """What the call would have answered directly: HTTP status and JSON document."""

    status: int
    document: object


class OperationStore(Protocol):
    async def accept(self, operation: Operation) -> None:
        """Record the operation, then put it on the operations queue."""
        ...

    async def get(self, operation_id: str) -> Operation | None: ...

    async def start(self, operation_id: str, now: datetime) -> Operation | None:
        """Mark it running (one attempt more); None if it is gone; a finished one as is."""
        ...

    async def finish(
        self, operation_id: str, answer: OperationAnswer, now: datetime, expires: datetime
    ) -> Operation | None:
        """Keep its answer, unless another finish came first (the first one stays);
        the finished operation, or None if it is gone."""
        ...

    async def answer(self, operation: Operation) -> OperationAnswer:
        """The answer kept by :meth:`finish` (the operation must be finished)."""
        ...

    async def forget(self, operation_id: str) -> None: ...

    async def forget_expired(self, now: datetime, limit: int) -> int:
        """Forget up to ``limit`` operations expired before ``now``; how many."""
        ...


class Ledger(Protocol):
    async def get(self, account_id: AccountId, to_version: str) -> LedgerEntry | None: ...

    async def record(self, entry: LedgerEntry) -> None:
        """Insert or replace the row for (account, to_version)."""
        ...

    async def replace_unchanged(self, seen: LedgerEntry, entry: LedgerEntry) -> bool:
        """Replace the row ``seen`` was read from with ``entry`` only if nobody wrote it
        since (same state, same ``updated``): True if written."""
        ...

    async def record_unchanged(self, seen: LedgerEntry | None, entry: LedgerEntry) -> bool:
        """Write ``entry`` only if its row is still as ``seen`` (absent, for None): True if
        written, False if another writer got there first (nothing overwritten)."""
        ...

    async def history(
        self, account_id: AccountId | None = None, key: KeyId | None = None
    ) -> list[LedgerEntry]: ...

    def iter_history(
        self,
        account_id: AccountId | None = None,
        key: KeyId | None = None,
        *,
        states: Collection[LedgerState] | None = None,
    ) -> AsyncIterator[LedgerEntry]:
        """Rows streamed page by page; with ``states``, only rows in one of them."""
        ...

    async def claim(
        self,
        name: str,
        owner: str,
        *,
        lease: timedelta | None = None,
        now: datetime | None = None,
        done_after: timedelta | None = None,
    ) -> bool:
        """Atomically claim ``name`` (a Table insert): True for exactly one caller. A claim
        older than ``lease`` whose work is not recorded done may be taken over (atomically);
        with ``done_after``, so may one whose work is done, once older than that."""
        ...

    async def claim_record(self, name: str) -> ClaimRecord | None:
        """The claim ``name`` as recorded, or None."""
        ...

    async def refresh_claim(self, name: str, owner: str, now: datetime) -> bool:
        """Restart a claim still at work as of ``now`` (a takeover waits a whole lease from
        here); False if ``owner`` lost it or its work is recorded done."""
        ...

    async def complete_claim(self, name: str, owner: str, created_version: str) -> bool:
        """Record the version the claim's work created; False if ``owner`` lost the claim."""
        ...

    async def release_claim(self, name: str, owner: str | None = None) -> None:
        """Drop the claim ``name`` (its work failed before doing anything); with ``owner``,
        only while that owner still holds it."""
        ...

    async def unreadable_keys(self) -> dict[str, datetime]:
        """Keys a sweep could not read for a transient reason (versionless id, lowercase)
        and since when."""
        ...

    async def note_unreadable(self, key: str, since: datetime) -> None:
        """Record ``key`` unreadable since ``since``, unless it is recorded already."""
        ...

    async def clear_unreadable(self, key: str) -> None:
        """Forget that ``key`` was unreadable."""
        ...

    async def acquire_lease(
        self, name: str, owner: str, now: datetime, ttl: timedelta, *, purpose: str = ""
    ) -> LeaseGrant:
        """Take the write lease ``name`` for ``ttl`` unless another live holder has it;
        ``purpose`` is told to whoever finds it held."""
        ...

    async def renew_lease(self, name: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        """Extend our lease; False if it is no longer ours (taken over after expiry)."""
        ...

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease back if it is still ours."""
        ...


class AlertType(StrEnum):
    ACCOUNT_UPDATE_FAILED = "account_update_failed"
    BINDING_UNSAFE = "binding_unsafe"
    KEY_NEAR_EXPIRY_UNROTATED = "key_near_expiry_unrotated"
    BINDING_STALE = "binding_stale"
    KEY_EXPIRED_BOUND = "key_expired_bound"
    IDENTITY_MISSING = "identity_missing"
    VAULT_NOT_RECOVERABLE = "vault_not_recoverable"
    VERSION_REJECTED = "version_rejected"
    EVENT_FAILED = "event_failed"
    KEY_UNREADABLE = "key_unreadable"


#: Alert types that report one failure of one account's move, whichever step saw it:
#: they share one dedup group, so a failure alerts once, not once per code path.
ACCOUNT_FAILURE_TYPES = frozenset({AlertType.ACCOUNT_UPDATE_FAILED, AlertType.IDENTITY_MISSING})
#: Alert types that report one account bound to a broken (expired or disabled) version:
#: the KeyExpired handler's and the sweep's, one alert per account and target between them.
BROKEN_BINDING_TYPES = frozenset({AlertType.KEY_EXPIRED_BOUND, AlertType.BINDING_UNSAFE})


#: The dedup groups of the types of a shared group before they shared it: an alert still
#: open under one of those (recorded by an earlier version of the app) is the same problem.
EARLIER_GROUPS: dict[str, tuple[str, ...]] = {
    "account_failure": ("account_update_failed", "identity_missing"),
    "broken_binding": ("binding_unsafe", "key_expired_bound"),
}


def alert_group(kind: AlertType) -> str:
    """The dedup cause group of an alert type (see :data:`ACCOUNT_FAILURE_TYPES` and
    :data:`BROKEN_BINDING_TYPES`)."""
    if kind in ACCOUNT_FAILURE_TYPES:
        return "account_failure"
    return "broken_binding" if kind in BROKEN_BINDING_TYPES else kind.value


class Severity(StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Alert:
    """One problem an operator must act on; deduplicated by :attr:`dedup_key`."""

    type: AlertType
    severity: Severity
    subject: str  # the account id, or the key id for key-level alerts
    key_id: KeyId | None
    from_version: str | None
    to_version: str | None
    cause: str
    remediation: str

    @property
    def dedup_key(self) -> tuple[str, str, str]:
        """(subject, target version, cause group): one alert each until resolved. The
        failures of one account's move share a group (see :data:`ACCOUNT_FAILURE_TYPES`)."""
        return (self.subject.lower(), self.to_version or "", alert_group(self.type))


class AlertSink(Protocol):
    async def raise_alert(self, alert: Alert) -> bool:
        """Record the alert (outbox) unless one with the same dedup key is recorded, then
        deliver it; True if it was delivered by this call. Never raises for a failed
        publish: the alert stays pending for :meth:`flush_pending`."""
        ...

    async def flush_pending(self) -> int:
        """Deliver every alert recorded but not yet delivered; returns how many."""
        ...

    async def resolve(
        self,
        subject: str,
        to_version: str | None = None,
        groups: Collection[str] | None = None,
        *,
        still_open: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> int:
        """Close the open alerts of a subject (after a success); only those of ``groups``
        (:attr:`Alert.dedup_key`'s cause group) when given, and not those that
        ``still_open(to_version, group)`` says the success did not settle; returns how
        many."""
        ...

    async def open_alerts(self) -> set[tuple[str, str, str]]:
        """Every open (recorded) alert as (subject, to_version, cause group), lowercase;
        the group as :meth:`resolve`'s ``still_open`` is given it."""
        ...

    async def open_subjects(self) -> set[str]:
        """The subjects (lowercase) that have at least one open alert, read at once."""
        ...
