"""Creating a key version and refusing one the policy rejects: shared by the near-expiry
handler, the new-version handler and on-demand rotation."""

from __future__ import annotations

from cmk.keyid import KeyId
from cmk.policy import KeyVersion, evaluate
from cmk.ports import Alert
from cmk.usecases import alerting
from cmk.usecases.context import Engine

__all__ = ["create_version", "reject_unbindable"]


async def create_version(engine: Engine, key: KeyId, template: KeyVersion) -> KeyVersion:
    """Rotate ``key`` when it has a rotation policy, else create a version with the same
    type, size and operations as ``template``."""
    if await engine.keys.has_rotation_policy(key):
        return await engine.keys.rotate(key)
    return await engine.keys.create_like(template)


async def reject_unbindable(
    engine: Engine, version: KeyVersion
) -> tuple[tuple[Alert, ...], str] | None:
    """None when the policy accepts ``version``; else raise its VERSION_REJECTED alert
    (once: the sink deduplicates) and return the alerts raised and the reasons."""
    verdict = evaluate(version, engine.policy, engine.now())
    if verdict.bindable:
        return None
    reasons = [str(reason) for reason in verdict.reasons]
    rejected = alerting.version_rejected(version, reasons)
    raised, _ = await alerting.publish(engine, [rejected], durable=True)
    return raised, "; ".join(reasons)
