"""On-demand rotation of one key (``cmk rotate``, ``POST /api/rotate``).

Create a new version now — Key Vault's rotate when the key has a rotation policy, else a
create with the same type, size and operations — validate it, and move every bound
account to it. A dry run reads the key and plans the fan-out against its current newest
valid version, creating nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from cmk.errors import CmkError, OutOfScope, TransientError
from cmk.keyid import KeyId
from cmk.planner import version_order
from cmk.policy import KeyVersion
from cmk.usecases import alerting
from cmk.usecases.context import Engine
from cmk.usecases.fanout import fan_out
from cmk.usecases.keyview import KeyVersions
from cmk.usecases.new_versions import create_version, reject_unbindable
from cmk.usecases.report import EventOutcome, EventReport

__all__ = ["ROTATE_EVENT_TYPE", "rotate_key"]

log = logging.getLogger(__name__)

#: The ``event_type`` of reports of on-demand rotations.
ROTATE_EVENT_TYPE = "cmk.rotate"


#: How far Key Vault's clock may be behind ours when a lost create is looked for.
CREATE_CLOCK_SLACK = timedelta(minutes=5)

#: Awaited with the version a rotation created, before anything else happens to it.
OnCreated = Callable[[KeyVersion], Awaitable[None]]


async def rotate_key(
    engine: Engine, key: KeyId, *, trigger: str, on_created: OnCreated | None = None
) -> EventReport:
    """Create a new version of ``key`` (versionless) and fan out to every bound account.

    Raises OutOfScope for a vault outside CMK_VAULT_ALLOWLIST and NotFound for a key
    that does not exist; both before anything is written. ``on_created`` is awaited as
    soon as the version exists (the HTTP endpoint records it on its claim, so an error
    later in the fan-out never lets a retry create another). A create whose answer was
    a 5xx or lost may have been carried out: a version newer than the key's latest and
    created since the rotation began is adopted instead of reporting a failure.
    """
    key = key.versionless()
    if not engine.settings.vault_in_scope(key):
        raise OutOfScope(
            f"vault {key.vault_url} is not in CMK_VAULT_ALLOWLIST; add it there to rotate {key}"
        )
    view = await KeyVersions.load(engine.keys, key, engine.policy, engine.now())
    extra = {"cmk_key_id": str(key), "cmk_step": "rotate", "cmk_trigger": trigger}
    created: KeyVersion | None = None
    if not engine.dry_run:
        began = engine.now()
        try:
            created = await create_version(engine, view.key, view.latest)
        except TransientError:
            landed = await _created_anyway(engine, view, began)
            if landed is None:
                raise
            created = landed
        if on_created is not None:
            await on_created(created)
        log.info("created %s on demand", created.key_id, extra=extra)
        rejected = await reject_unbindable(engine, created)
        if rejected is not None:
            raised, reasons = rejected
            return EventReport(
                event_id=trigger,
                event_type=ROTATE_EVENT_TYPE,
                key_id=key,
                outcome=EventOutcome.VERSION_REJECTED,
                dry_run=False,
                created_version=created.version,
                alerts=raised,
                detail=reasons,
            )
        view = view.with_latest(created)
    fan = await fan_out(engine, view, trigger)
    alerts = [alerting.finding_alert(finding) for finding in fan.findings]
    raised, _ = await alerting.publish(engine, alerts)
    target = view.newest_bindable(engine.policy, engine.now())
    return EventReport(
        event_id=trigger,
        event_type=ROTATE_EVENT_TYPE,
        key_id=key,
        outcome=EventOutcome.WOULD_ROTATE if engine.dry_run else EventOutcome.ROTATED,
        dry_run=engine.dry_run,
        target_version=target.version if target else None,
        created_version=created.version if created else None,
        moves=fan.planned_moves(),
        findings=fan.finding_reports(),
        alerts=raised,
        enqueued=fan.enqueued,
        detail="" if created else "dry run: would create a new version and move these accounts",
    )


async def _created_anyway(engine: Engine, view: KeyVersions, began: datetime) -> KeyVersion | None:
    """After a create that failed transiently: the key's latest version if it is newer
    than the one the rotation started from and was created since it began (the create
    was carried out, its answer lost); None if not, or if Key Vault cannot say."""
    try:
        fresh = await KeyVersions.load(engine.keys, view.key, engine.policy, engine.now())
    except CmkError:
        return None
    latest, before = fresh.latest, view.latest
    if latest.version == before.version or latest.created is None:
        return None
    newer = version_order(latest, latest.version) > version_order(before, latest.version)
    # Key Vault's clock, not ours, dates the version: allow the claims' clock slack.
    return latest if newer and latest.created >= began - CREATE_CLOCK_SLACK else None
