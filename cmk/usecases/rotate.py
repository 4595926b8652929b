"""On-demand rotation of one key (``cmk rotate``, ``POST /api/rotate``).

Create a new version now — Key Vault's rotate when the key has a rotation policy, else a
create with the same type, size and operations — validate it, and move every bound
account to it. A dry run reads the key and plans the fan-out against its current newest
valid version, creating nothing.
"""

from __future__ import annotations

import logging

from cmk.errors import OutOfScope
from cmk.keyid import KeyId
from cmk.policy import KeyVersion, evaluate
from cmk.usecases import alerting
from cmk.usecases.context import Engine
from cmk.usecases.fanout import fan_out
from cmk.usecases.keyview import KeyVersions
from cmk.usecases.report import EventOutcome, EventReport, FindingReport, PlannedMove

__all__ = ["ROTATE_EVENT_TYPE", "rotate_key"]

log = logging.getLogger(__name__)

#: The ``event_type`` of reports of on-demand rotations.
ROTATE_EVENT_TYPE = "cmk.rotate"


async def _new_version(engine: Engine, view: KeyVersions) -> KeyVersion:
    if await engine.keys.has_rotation_policy(view.key):
        return await engine.keys.rotate(view.key)
    return await engine.keys.create_like(view.latest)


async def rotate_key(engine: Engine, key: KeyId, *, trigger: str) -> EventReport:
    """Create a new version of ``key`` (versionless) and fan out to every bound account.

    Raises OutOfScope for a vault outside CMK_VAULT_ALLOWLIST and NotFound for a key
    that does not exist; both before anything is written.
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
        created = await _new_version(engine, view)
        log.info("created %s on demand", created.key_id, extra=extra)
        verdict = evaluate(created, engine.policy, engine.now())
        if not verdict.bindable:
            reasons = [str(reason) for reason in verdict.reasons]
            raised, _ = await alerting.publish(
                engine, [alerting.version_rejected(created, reasons)]
            )
            return EventReport(
                event_id=trigger,
                event_type=ROTATE_EVENT_TYPE,
                key_id=key,
                outcome=EventOutcome.VERSION_REJECTED,
                dry_run=False,
                created_version=created.version,
                alerts=raised,
                detail="; ".join(reasons),
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
        outcome=EventOutcome.ROTATED,
        dry_run=engine.dry_run,
        target_version=target.version if target else None,
        created_version=created.version if created else None,
        moves=tuple(PlannedMove.from_move(move) for move in fan.moves),
        findings=tuple(FindingReport.from_finding(finding) for finding in fan.findings),
        alerts=raised,
        enqueued=fan.enqueued,
        detail="" if created else "dry run: would create a new version and move these accounts",
    )
