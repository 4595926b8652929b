"""The alerts the use cases raise: how each problem is worded, and publishing them.

Dedup is the AlertSink's job (one open alert per subject, target version and type), so
callers may raise the same alert on every sweep. :func:`publish` never writes in a dry
run; it logs a structured ERROR line for every alert it publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from cmk.errors import CmkError
from cmk.keyid import KeyId
from cmk.planner import Finding, FindingKind, Move
from cmk.policy import KeyVersion
from cmk.ports import Alert, AlertType, RotationJob, Severity
from cmk.resource_id import AccountId
from cmk.usecases.context import Engine, gather_bounded

__all__ = [
    "account_failed",
    "binding_stale",
    "event_failed",
    "expired_bound",
    "finding_alert",
    "flush_pending",
    "identity_missing",
    "key_unreadable",
    "near_expiry_unrotated",
    "publish",
    "unsafe_move",
    "unsafe_moves",
    "update_failed",
    "vault_not_recoverable",
    "version_rejected",
]

log = logging.getLogger(__name__)

_BROKEN = frozenset({FindingKind.BOUND_VERSION_DISABLED, FindingKind.BOUND_VERSION_EXPIRED})
_GRANT = (
    "grant the account's managed identity (the user-assigned one named by identityClientId,"
    " else the system-assigned one) 'Key Vault Crypto Service Encryption User' on the key,"
    " or get/wrapKey/unwrapKey in the vault's access policy"
)


def account_failed(job: RotationJob, cause: str, *, identity: bool = False) -> Alert:
    """A job failed for good: the update failed, or the identity cannot use the key."""
    return Alert(
        type=AlertType.IDENTITY_MISSING if identity else AlertType.ACCOUNT_UPDATE_FAILED,
        severity=Severity.CRITICAL if job.urgent else Severity.ERROR,
        subject=str(job.account_id),
        key_id=job.target.versionless(),
        from_version=job.from_version,
        to_version=job.target.version,
        cause=cause,
        remediation=_GRANT
        if identity
        else "fix the cause; the next sweep (the timer's, or one started by hand) retries the"
        " account; 'cmk history --account <id>' shows each attempt",
    )


def version_rejected(version: KeyVersion, reasons: Iterable[str]) -> Alert:
    """The key's newest version fails the policy: no account is moved to it."""
    return Alert(
        type=AlertType.VERSION_REJECTED,
        severity=Severity.ERROR,
        subject=str(version.key_id.versionless()),
        key_id=version.key_id.versionless(),
        from_version=None,
        to_version=version.version,
        cause="; ".join(reasons),
        remediation="create a new version that meets the policy (RSA of an allowed size,"
        " wrapKey/unwrapKey, enabled, valid dates, purge-protected vault), e.g. 'az keyvault"
        " key create --kty RSA-HSM --size 2048 --ops wrapKey unwrapKey'; accounts follow it."
        " A rotation would copy the rejected version's shape",
    )


def near_expiry_unrotated(
    expiring: KeyId,
    cause: str,
    *,
    lifetime: timedelta | None = None,
    margin: timedelta | None = None,
) -> Alert:
    """The key nears expiry and no newer bindable version exists (and none was created).
    ``lifetime``: how long the expiring version is valid in all; no longer than ``margin``
    (CMK_EXPIRY_MARGIN_DAYS), a version made like it — a rotation — is rejected too, and
    the remediation says so."""
    remediation = (
        f"'cmk rotate {expiring.versionless()}' creates a version that passes the policy and"
        " moves every bound account (or set CMK_ROTATE_ON_NEAR_EXPIRY=true and the app"
        " rotates on the next notice)"
    )
    if lifetime is not None and margin is not None and lifetime <= margin:
        cause += (
            f"; its versions are valid for {_days(lifetime)}, not longer than"
            f" CMK_EXPIRY_MARGIN_DAYS ({_days(margin)}): a version made like it is rejected too"
        )
        remediation = (
            "give the key's new versions a lifetime beyond CMK_EXPIRY_MARGIN_DAYS: set its"
            " rotation policy's expiryTime ('az keyvault key rotation-policy update') and run"
            f" 'cmk rotate {expiring.versionless()}', or create a version with a later expiry"
            " ('az keyvault key create ... --expires'); or lower CMK_EXPIRY_MARGIN_DAYS"
        )
    return Alert(
        type=AlertType.KEY_NEAR_EXPIRY_UNROTATED,
        severity=Severity.ERROR,
        subject=str(expiring.versionless()),
        key_id=expiring.versionless(),
        from_version=expiring.version,
        to_version=expiring.version,  # one alert per expiring version
        cause=cause,
        remediation=remediation,
    )


def _days(span: timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:g} days" if days == int(days) else f"{days:.1f} days"


def expired_bound(account_id: AccountId, expired: KeyId, target: KeyVersion | None) -> Alert:
    """An account is still bound to an expired version: its data may be inaccessible."""
    moving = f"; moving it to {target.version}" if target else "; no bindable version exists"
    return Alert(
        type=AlertType.KEY_EXPIRED_BOUND,
        severity=Severity.CRITICAL,
        subject=str(account_id),
        key_id=expired.versionless(),
        from_version=expired.version,
        to_version=target.version if target else None,
        cause=f"bound to expired key version {expired.version}{moving}",
        remediation="check the account can still decrypt; create a valid version if none"
        " exists, and confirm the move succeeded",
    )


def finding_alert(finding: Finding) -> Alert:
    """A binding the planner will not change."""
    binding = finding.binding
    return Alert(
        type=AlertType.BINDING_UNSAFE,
        severity=Severity.CRITICAL if finding.kind in _BROKEN else Severity.ERROR,
        subject=str(binding.account_id),
        key_id=binding.key_id.versionless(),
        from_version=binding.key_id.version,
        to_version=finding.target.version if finding.target else None,
        cause=f"{finding.kind.value}: {finding.detail}",
        remediation="create a valid newer key version, or fix the binding by hand",
    )


def unsafe_moves(moves: Iterable[Move]) -> list[Alert]:
    """The alerts of urgent moves: only those whose bound version is broken (disabled or
    expired: the account may be failing to decrypt now, and someone made it so). A bound
    version that is merely expiring or fails the policy is repaired by the move itself:
    no alert, unless the move fails (the worker alerts that)."""
    return [unsafe_move(move) for move in moves if move.finding in _BROKEN]


def unsafe_move(move: Move) -> Alert:
    """An account bound to a broken version; a move to a valid version is on its way."""
    binding = move.binding
    kind = move.finding or FindingKind.BOUND_VERSION_REJECTED
    return Alert(
        type=AlertType.BINDING_UNSAFE,
        severity=Severity.CRITICAL if kind in _BROKEN else Severity.ERROR,
        subject=str(binding.account_id),
        key_id=binding.key_id.versionless(),
        from_version=binding.key_id.version,
        to_version=move.target.version,
        cause=f"{kind.value}: {move.reason}",
        remediation="the account is being moved; watch for the update to succeed",
    )


def binding_stale(move: Move, stale_for: str) -> Alert:
    """An account still bound to an older version after the grace period."""
    binding = move.binding
    return Alert(
        type=AlertType.BINDING_STALE,
        severity=Severity.WARNING,
        subject=str(binding.account_id),
        key_id=binding.key_id.versionless(),
        from_version=binding.key_id.version,
        to_version=move.target.version,
        cause=f"bound to {binding.key_id.version}, newer version {move.target.version}"
        f" exists for {stale_for}",
        remediation="check the rotation jobs and ledger for this account ('cmk history')",
    )


def update_failed(account_id: AccountId, key: KeyId, to_version: str, cause: str) -> Alert:
    """An account's last update failed or is stuck (seen by the sweep)."""
    return Alert(
        type=AlertType.ACCOUNT_UPDATE_FAILED,
        severity=Severity.ERROR,
        subject=str(account_id),
        key_id=key.versionless(),
        from_version=key.version,
        to_version=to_version,
        cause=cause,
        remediation="check the account's provisioningState and activity log and fix the"
        " cause; the next sweep (the timer's, or one started by hand) retries the account",
    )


def identity_missing(
    account_id: AccountId, key: KeyId, cause: str, to_version: str | None = None
) -> Alert:
    """The account has no identity that can use its key. ``to_version`` is the version a
    move would bind (the same alert the worker raises when that move fails for it)."""
    return Alert(
        type=AlertType.IDENTITY_MISSING,
        severity=Severity.ERROR,
        subject=str(account_id),
        key_id=key.versionless(),
        from_version=key.version,
        to_version=to_version,
        cause=cause,
        remediation=_GRANT,
    )


def key_unreadable(key: KeyId, accounts: Iterable[AccountId], cause: str) -> Alert:
    """An allow-listed key the sweep could not read: its accounts cannot be checked or
    moved until access is restored."""
    names = sorted(str(account) for account in accounts)
    listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return _key_unreadable(key, f"{cause}; {len(names)} account(s) bound to it: {listed}")


def key_unreadable_moving(job: RotationJob, key: KeyId, cause: str) -> Alert:
    """The key a job had to read turned out unreadable (the app's own 403, or the key is
    gone): the same alert as the sweep's — one for the key, however many of its accounts'
    jobs find it so (the sweep's, deduplicated against it, lists them all)."""
    return _key_unreadable(
        key,
        f"{cause}; found moving {job.account_id} to {job.target.version}: every account"
        " bound to the key waits for it ('cmk status' lists them)",
    )


def _key_unreadable(key: KeyId, cause: str) -> Alert:
    return Alert(
        type=AlertType.KEY_UNREADABLE,
        severity=Severity.ERROR,
        subject=str(key.versionless()),
        key_id=key.versionless(),
        from_version=None,
        to_version=None,
        cause=cause,
        remediation="give the app's identity the key role back on the vault ('CMK rotator key"
        " rotator': rerun the deployment's step 2, e.g. `azd provision`; in an access-policy"
        " vault get, list, create, rotate, getrotationpolicy), or restore the deleted key or"
        " vault; the next sweep then checks and moves its accounts",
    )


def vault_not_recoverable(version: KeyVersion) -> Alert:
    """The key's vault lacks soft delete or purge protection."""
    return Alert(
        type=AlertType.VAULT_NOT_RECOVERABLE,
        severity=Severity.ERROR,
        subject=version.key_id.vault_url,
        key_id=version.key_id.versionless(),
        from_version=None,
        to_version=None,
        cause=f"recoveryLevel {version.recovery_level!r} allows purging the key",
        remediation="enable purge protection on the vault (it cannot be turned off again)",
    )


def event_failed(key_id: KeyId, event_id: str, cause: str) -> Alert:
    """A Key Vault event could not be handled for good (our identity may not read the key,
    the key is gone, ...): the event is completed, so without this alert nobody would know
    its accounts were not moved."""
    return Alert(
        type=AlertType.EVENT_FAILED,
        severity=Severity.ERROR,
        subject=str(key_id.versionless()),
        key_id=key_id.versionless(),
        from_version=None,
        to_version=key_id.version,  # one alert per key version, however often delivered
        cause=f"event {event_id}: {cause}",
        remediation="fix the cause (e.g. give the app's identity the key role on the vault"
        " again, 'CMK rotator key rotator': rerun the deployment's step 2, e.g. `azd"
        " provision`; or restore the key); the next sweep then reads the key and moves the"
        " accounts (a KeyNearExpiry or KeyExpired that failed also needs a valid new"
        " version: `cmk rotate <key>`, or replay a saved copy of the event); the alert"
        " closes once the key is readable and has a valid version not near expiry",
    )


async def publish(
    engine: Engine, alerts: Iterable[Alert], *, durable: bool = False
) -> tuple[tuple[Alert, ...], int]:
    """Raise each alert (not in a dry run); returns the alerts and how many were published.

    Each alert is recorded in the outbox before it is published, and the sink writes its
    structured ERROR log line once. Publishes are independent: one that fails (or cannot
    even be recorded) never cancels another; what was recorded stays pending for the next
    run. Once the topic has taken one alert, alerts left pending by earlier runs are
    delivered too.

    An alert that cannot even be recorded is logged and dropped — a sweep computes its
    alerts again — unless ``durable``: alerts no later run would raise again (a job's own
    failure, a failed event, a rejected version) then make this raise that error once
    every other alert was tried, so the work that raised them is retried instead of
    completing without its alert.
    """
    raised = tuple(alerts)
    if engine.dry_run or not raised:
        return raised, 0
    limit = engine.settings.max_concurrency
    outcomes = await gather_bounded(
        limit, (_raise(engine, alert, durable=durable) for alert in raised)
    )
    delivered = sum(1 for outcome in outcomes if outcome is True)
    if delivered:
        await _flush(engine)
    unrecorded = [outcome for outcome in outcomes if isinstance(outcome, CmkError)]
    if unrecorded:
        raise unrecorded[0]
    return raised, delivered


async def _raise(engine: Engine, alert: Alert, *, durable: bool) -> bool | CmkError:
    try:
        return await engine.alerts.raise_alert(alert)
    except CmkError as error:
        then = "the work that raised it is retried" if durable else "the next sweep raises it again"
        log.log(
            logging.WARNING if durable else logging.ERROR,
            "could not record alert %s for %s (%s): %s",
            alert.type.value,
            alert.subject,
            then,
            error,
            extra={"cmk_subject": alert.subject, "cmk_alert_type": alert.type.value},
        )
        return error if durable else False


async def _flush(engine: Engine) -> int:
    """Deliver the alerts earlier runs left pending; never raises (they stay pending)."""
    try:
        return await engine.alerts.flush_pending()
    except CmkError as error:
        log.warning("pending alerts not delivered yet: %s", error)
        return 0


async def flush_pending(engine: Engine) -> int:
    """Deliver the alerts left pending by earlier runs (not in a dry run)."""
    return 0 if engine.dry_run else await _flush(engine)
