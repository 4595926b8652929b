"""Key Vault events: a new version, a version near expiry, an expired version.

Events are pointers, never truth: each handler checks the vault is in the allow-list
(nothing is read or written otherwise), re-reads the key, and only then plans. Handling
the same event twice, or events out of order, is harmless: the plan always targets the
newest bindable version read now, and the worker never moves an account backwards.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from cmk.errors import NotFound, PermanentError, ServiceUnavailable
from cmk.events import KeyVaultEvent
from cmk.keyid import KeyId
from cmk.planner import version_order
from cmk.policy import KeyVersion, evaluate
from cmk.ports import Alert, ClaimRecord
from cmk.usecases import alerting
from cmk.usecases.context import Engine
from cmk.usecases.fanout import FanOut, fan_out, key_in_use
from cmk.usecases.keyview import KeyVersions
from cmk.usecases.new_versions import create_version, reject_unbindable
from cmk.usecases.report import EventOutcome, EventReport

__all__ = ["notice_claim", "on_expired", "on_near_expiry", "on_new_version"]

log = logging.getLogger(__name__)


def _extra(event: KeyVaultEvent, step: str) -> dict[str, object]:
    return {
        "cmk_event_id": event.event_id,
        "cmk_key_id": str(event.key_id.versionless()),
        "cmk_to_version": event.key_id.version,
        "cmk_step": step,
    }


def _report(
    engine: Engine,
    event: KeyVaultEvent,
    outcome: EventOutcome,
    *,
    detail: str = "",
    alerts: tuple[Alert, ...] = (),
    created_version: str | None = None,
) -> EventReport:
    return EventReport(
        event_id=event.event_id,
        event_type=event.event_type.value,
        key_id=event.key_id,
        outcome=outcome,
        dry_run=engine.dry_run,
        created_version=created_version,
        alerts=alerts,
        detail=detail,
    )


async def _open(engine: Engine, event: KeyVaultEvent, *, full: bool) -> KeyVersions | EventReport:
    """Check the scope and re-read the key, or say why we stop here."""
    if not engine.settings.vault_in_scope(event.key_id):
        log.warning(
            "ignoring %s for %s: vault %s is not in CMK_VAULT_ALLOWLIST",
            event.event_type.value,
            event.key_id,
            event.key_id.vault_url,
            extra=_extra(event, "scope"),
        )
        detail = f"vault {event.key_id.vault_url} is not in the allow-list"
        return _report(engine, event, EventOutcome.OUT_OF_SCOPE, detail=detail)
    key = event.key_id.versionless()
    engine.keys.forget(key)  # the event says the key changed: nothing cached about it holds
    try:
        return await KeyVersions.load(
            engine.keys, key, engine.policy, engine.now(), list_if_unbindable=full
        )
    except NotFound as error:
        log.warning(
            "key of event %s not found: %s", event.event_id, error, extra=_extra(event, "read")
        )
        return _report(engine, event, EventOutcome.KEY_NOT_FOUND, detail=str(error))


async def _finish(
    engine: Engine,
    event: KeyVaultEvent,
    outcome: EventOutcome,
    fan: FanOut,
    alerts: list[Alert],
    *,
    target: KeyVersion | None,
    created: KeyVersion | None = None,
) -> EventReport:
    raised, _ = await alerting.publish(engine, alerts)
    return EventReport(
        event_id=event.event_id,
        event_type=event.event_type.value,
        key_id=event.key_id,
        outcome=outcome,
        dry_run=engine.dry_run,
        target_version=target.version if target else None,
        created_version=created.version if created else None,
        moves=fan.planned_moves(),
        findings=fan.finding_reports(),
        alerts=raised,
        enqueued=fan.enqueued,
    )


def _fan_alerts(fan: FanOut) -> list[Alert]:
    alerts = [alerting.finding_alert(finding) for finding in fan.findings]
    alerts += alerting.unsafe_moves(move for move in fan.moves if move.urgent)
    return alerts


async def _spread(
    engine: Engine,
    event: KeyVaultEvent,
    view: KeyVersions,
    outcome: EventOutcome,
    created: KeyVersion | None = None,
) -> EventReport:
    fan = await fan_out(engine, view, event.event_id)
    target = view.newest_bindable(engine.policy, engine.now())
    return await _finish(
        engine, event, outcome, fan, _fan_alerts(fan), target=target, created=created
    )


async def on_new_version(engine: Engine, event: KeyVaultEvent) -> EventReport:
    """A new key version: validate the key's latest version and move every bound account."""
    view = await _open(engine, event, full=False)
    if isinstance(view, EventReport):
        return view
    bindable = evaluate(view.latest, engine.policy, engine.now()).bindable
    if not bindable and not await key_in_use(engine, view.key):
        detail = f"{view.latest.version} fails the policy, but no account in scope uses the key"
        log.info("newest version rejected, not alerted: %s", detail, extra=_extra(event, "scope"))
        return _report(engine, event, EventOutcome.VERSION_REJECTED, detail=detail)
    rejected = await reject_unbindable(engine, view.latest)
    if rejected is not None:
        raised, reasons = rejected
        log.error(
            "newest version %s rejected: %s",
            view.latest.key_id,
            reasons,
            extra=_extra(event, "validate"),
        )
        return _report(engine, event, EventOutcome.VERSION_REJECTED, alerts=raised, detail=reasons)
    return await _spread(engine, event, view, EventOutcome.FANNED_OUT)


def _successor(engine: Engine, view: KeyVersions, expiring: str) -> KeyVersion | None:
    """The newest bindable version, if it is newer than ``expiring``."""
    best = view.newest_bindable(engine.policy, engine.now())
    if best is None or best.version == expiring:
        return None
    known = view.get(expiring)
    current = view.latest.version
    return (
        best
        if known is None or version_order(best, current) > version_order(known, current)
        else None
    )


#: How far Key Vault's clock and ours may disagree when dating a dead claimer's version.
CLAIM_CLOCK_SLACK = timedelta(minutes=5)

#: Key Vault's default KeyNearExpiry notice (a rotation policy's Notify action may differ).
DEFAULT_NOTICE = timedelta(days=30)


async def _confirmed(
    engine: Engine, event: KeyVaultEvent, view: KeyVersions, *, expired: bool
) -> KeyVersion | None:
    """The event's version as Key Vault has it, if Key Vault confirms what the event says:
    expired, or expiring soon (within the margin or the default notice, or exactly when the
    event says). None for a replayed, outdated or forged event: nothing is done then."""
    known = view.get(event.key_id.version or "") or await engine.keys.get_version(event.key_id)
    if known.expires is None:
        return None
    now = engine.now()
    if expired:
        return known if known.expires <= now else None
    window = max(engine.settings.expiry_margin, DEFAULT_NOTICE)
    as_announced = event.expires is not None and abs(event.expires - known.expires) <= timedelta(
        seconds=1
    )
    return known if known.expires <= now + window or as_announced else None


def _stale(engine: Engine, event: KeyVaultEvent) -> EventReport:
    detail = f"Key Vault does not confirm that {event.key_id} is {event.event_type.value}"
    log.warning("ignoring event %s: %s", event.event_id, detail, extra=_extra(event, "confirm"))
    return _report(engine, event, EventOutcome.STALE_EVENT, detail=detail)


async def on_near_expiry(engine: Engine, event: KeyVaultEvent) -> EventReport:
    """A version nears expiry: move to a newer version, creating one (exactly once) if needed."""
    view = await _open(engine, event, full=True)
    if isinstance(view, EventReport):
        return view
    if await _confirmed(engine, event, view, expired=False) is None:
        return _stale(engine, event)
    expiring = event.key_id
    if _successor(engine, view, expiring.version or "") is not None:
        return await _spread(engine, event, view, EventOutcome.FANNED_OUT)
    if not await key_in_use(engine, view.key):
        # A key of another service in an allow-listed vault: not ours to rotate or alert.
        detail = f"version {expiring.version} nears expiry, but no account in scope uses the key"
        log.info("not rotated: %s", detail, extra=_extra(event, "scope"))
        return _report(engine, event, EventOutcome.NOT_ROTATED, detail=detail)
    if not engine.settings.rotate_on_near_expiry:
        cause = f"version {expiring.version} nears expiry, no newer valid version, rotation off"
        raised, _ = await alerting.publish(
            engine, [alerting.near_expiry_unrotated(expiring, cause)], durable=True
        )
        return _report(engine, event, EventOutcome.NOT_ROTATED, alerts=raised, detail=cause)
    if engine.dry_run:
        return _report(engine, event, EventOutcome.ROTATED, detail="would create a new version")
    claim = notice_claim(view.key, expiring.version or "")
    before = await engine.ledger.claim_record(claim)
    if before is not None and before.created_version:
        return await _noticed(engine, event, view, before.created_version)
    token = f"{engine.owner}:{uuid.uuid4().hex[:12]}"
    if not await engine.ledger.claim(claim, token, lease=engine.claim_lease, now=engine.now()):
        record = await engine.ledger.claim_record(claim)
        if record is not None and record.created_version:
            return await _noticed(engine, event, view, record.created_version)
        log.info("notice %s is being handled elsewhere", claim, extra=_extra(event, "claim"))
        # The claimer is still creating the version, or died doing it (its claim is
        # taken over once the lease ends): let Event Grid deliver this event again.
        raise ServiceUnavailable(
            f"the near-expiry notice for {expiring} is being handled by another worker; retry"
        )
    adopted = await _created_since(engine, view, expiring.version or "", before)
    if adopted is not None:
        # The claim's previous holder created a version and died before recording it.
        await engine.ledger.complete_claim(claim, token, adopted.version)
        return await _noticed(engine, event, view, adopted.version)

    created = await _create_once(engine, event, view, claim, token)
    if isinstance(created, EventReport):
        return created
    if not await engine.ledger.complete_claim(claim, token, created.version):
        record = await engine.ledger.claim_record(claim)
        if record is not None and record.created_version not in (None, created.version):
            log.error(
                "near-expiry notice for %s made two versions: %s by this run, which stalled"
                " past its claim, and %s by the claim's new holder; this run moves the"
                " accounts to %s as the claim records, and the key's newer version, %s,"
                " is where its event and the next sweep move them",
                expiring,
                created.version,
                record.created_version,
                record.created_version,
                created.version,
                extra=_extra(event, "claim"),
            )
            return await _noticed(engine, event, view, record.created_version or "")
    log.info(
        "created %s before %s expires", created.key_id, expiring, extra=_extra(event, "rotate")
    )
    return await _bind_created(engine, event, view.with_latest(created), created)


async def _create_once(
    engine: Engine, event: KeyVaultEvent, view: KeyVersions, claim: str, token: str
) -> KeyVersion | EventReport:
    """Create the notice's version under its claim — and under the key's creation lease,
    looking once more for a successor first: another notice of the key (another version
    expiring) may have created one since ``view`` was read. Its report if it did."""
    expiring = event.key_id
    creating = creation_lease(view.key)
    attempted = False

    async def still_ours() -> None:
        """Right before the creating request: this run must still hold the claim and the
        key's creation lease, and restarts both, so a run that stalled past either (and was
        taken over) never creates a second version; the request itself is bounded well
        inside them."""
        nonlocal attempted
        now = engine.now()
        if not await engine.ledger.refresh_claim(claim, token, now):
            raise ServiceUnavailable(
                f"lost the claim of the near-expiry notice for {expiring} (this run"
                " stalled past its lease and another took it over); retry"
            )
        if not await engine.ledger.renew_lease(creating, token, now, engine.claim_lease):
            raise ServiceUnavailable(
                f"lost the creation lease of {view.key} (this run stalled past it and another"
                " notice took it over); retry"
            )
        attempted = True

    try:
        held = await engine.ledger.acquire_lease(
            creating, token, engine.now(), engine.claim_lease, purpose=f"rotating before {expiring}"
        )
    except Exception:
        await _release(engine, claim, creating, token)  # the insert may have landed
        raise
    if not held.granted:
        # Its version may be this notice's successor too: look again once it is done.
        await engine.ledger.release_claim(claim, token)
        raise ServiceUnavailable(
            f"another near-expiry notice of {view.key} is creating a version"
            f" ({held.purpose}); retry"
        )
    try:
        engine.keys.forget(view.key)  # what this process cached may predate that version
        fresh = await KeyVersions.load(engine.keys, view.key, engine.policy, engine.now())
        successor = _successor(engine, fresh, expiring.version or "")
        if successor is not None:
            await _release(engine, claim, creating, token)  # this notice created nothing
            return await _spread(engine, event, fresh, EventOutcome.FANNED_OUT)
        template = view.get(expiring.version or "") or await engine.keys.get_version(expiring)
        created = await create_version(engine, view.key, template, fence=still_ours)
    except Exception as error:
        # Nothing was created unless the creating request went out and was not answered
        # with an error (a permanent one): then the claim and the lease stay until they
        # end, for the create may still land. Otherwise the next delivery may go on at once.
        if not attempted or isinstance(error, PermanentError):
            await _release(engine, claim, creating, token)
        raise
    await engine.ledger.release_lease(creating, token)
    return created


async def _release(engine: Engine, claim: str, lease: str, token: str) -> None:
    """Give back a notice's claim and the key's creation lease (each only if still ours)."""
    await engine.ledger.release_claim(claim, token)
    await engine.ledger.release_lease(lease, token)


def creation_lease(key: KeyId) -> str:
    """The lease a near-expiry notice holds while it looks for a successor and creates
    one: two notices of one key (two versions expiring) never both create."""
    return f"create|{key.versionless()}"


def notice_claim(key: KeyId, expiring_version: str) -> str:
    """The claim of one near-expiry notice: the key and the version that expires. It is
    kept, with the version it created, so the notice never creates a second one."""
    return f"notice|{key.versionless()}|{expiring_version.lower()}"


async def _created_since(
    engine: Engine, view: KeyVersions, expiring: str, before: ClaimRecord | None
) -> KeyVersion | None:
    """The version a dead claimer created for this notice, if any: after a takeover, the
    key's latest version when it is newer than ``expiring`` and dated after that claim."""
    if before is None:
        return None
    fresh = await KeyVersions.load(engine.keys, view.key, engine.policy, engine.now())
    latest, known = fresh.latest, fresh.get(expiring)
    if latest.version == expiring or latest.created is None:
        return None
    newer = known is None or version_order(latest, latest.version) > version_order(
        known, latest.version
    )
    return latest if newer and latest.created >= before.claimed - CLAIM_CLOCK_SLACK else None


async def _noticed(
    engine: Engine, event: KeyVaultEvent, view: KeyVersions, created_version: str
) -> EventReport:
    """A notice handled before (redelivered, or handled by another worker): never create
    again; bind the version it created if the policy accepts it, else alert (once)."""
    created = view.get(created_version) or await engine.keys.get_version(
        view.key.with_version(created_version)
    )
    log.info(
        "notice for %s already created %s",
        event.key_id,
        created_version,
        extra=_extra(event, "claim"),
    )
    return await _bind_created(engine, event, view, created, EventOutcome.FANNED_OUT)


async def _bind_created(
    engine: Engine,
    event: KeyVaultEvent,
    view: KeyVersions,
    created: KeyVersion,
    outcome: EventOutcome = EventOutcome.ROTATED,
) -> EventReport:
    rejected = await reject_unbindable(engine, created)
    if rejected is not None:
        raised, reasons = rejected
        return _report(
            engine,
            event,
            EventOutcome.VERSION_REJECTED,
            created_version=created.version,
            alerts=raised,
            detail=reasons,
        )
    fresh = view if view.get(created.version) else view.with_latest(created)
    return await _spread(engine, event, fresh, outcome, created)


async def on_expired(engine: Engine, event: KeyVaultEvent) -> EventReport:
    """A version expired: move accounts still bound to it (urgently) and alert critically."""
    view = await _open(engine, event, full=True)
    if isinstance(view, EventReport):
        return view
    if await _confirmed(engine, event, view, expired=True) is None:
        return _stale(engine, event)
    expired = event.key_id
    fan = await fan_out(engine, view, event.event_id, only_version=expired.version, urgent=True)
    alerts = [alerting.expired_bound(m.binding.account_id, expired, m.target) for m in fan.moves]
    alerts += [alerting.expired_bound(f.binding.account_id, expired, None) for f in fan.findings]
    target = view.newest_bindable(engine.policy, engine.now())
    outcome = EventOutcome.FANNED_OUT if target is not None else EventOutcome.NO_SUCCESSOR
    return await _finish(engine, event, outcome, fan, alerts, target=target)
