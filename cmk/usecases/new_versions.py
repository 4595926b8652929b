"""Creating a key version and refusing one the policy rejects: shared by the near-expiry
handler, the new-version handler and on-demand rotation; and predicting the version a
rotation would create, for its dry run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cmk.keyid import KeyId
from cmk.policy import KeyVersion, ReasonCode, Verdict, evaluate
from cmk.ports import Alert
from cmk.usecases import alerting
from cmk.usecases.context import Engine

__all__ = [
    "PREDICTED",
    "Prediction",
    "create_version",
    "predict_rotation",
    "predict_version",
    "reject_unbindable",
]


async def create_version(
    engine: Engine,
    key: KeyId,
    template: KeyVersion,
    *,
    fence: Callable[[], Awaitable[None]] | None = None,
) -> KeyVersion:
    """Rotate ``key`` when it has a rotation policy, else create a version with the same
    type, size and operations as ``template``. ``fence`` runs right before the one
    creating request (which is never retried): it raises to stop the creation — a claim
    that must still be held at that moment, say."""
    rotate = await engine.keys.has_rotation_policy(key)
    if fence is not None:
        await fence()
    if rotate:
        return await engine.keys.rotate(key)
    return await engine.keys.create_like(template)


async def reject_unbindable(
    engine: Engine, version: KeyVersion
) -> tuple[tuple[Alert, ...], str] | None:
    """None when the policy accepts ``version``; else raise its VERSION_REJECTED alert
    (once: the sink deduplicates) and return the alerts raised and the reasons.

    A version that fails only for being disabled is rejected without an alert: someone
    disabled it on purpose (an event about it can arrive after that), and there is
    nothing to fix — accounts stay where they are, and any bound to it are alerted as
    ``binding_unsafe`` by the sweep. Nor is one that is only not valid yet (its
    not-before is ahead): it becomes valid by itself, and the sweep after that moves the
    accounts to it."""
    verdict = evaluate(version, engine.policy, engine.now())
    if verdict.bindable:
        return None
    reasons = [str(reason) for reason in verdict.reasons]
    if verdict.codes <= {ReasonCode.DISABLED, ReasonCode.NOT_YET_VALID}:
        return (), "; ".join(reasons)
    rejected = alerting.version_rejected(version, reasons)
    raised, _ = await alerting.publish(engine, [rejected], durable=True)
    return raised, "; ".join(reasons)


#: The version string of a predicted version, which has none yet.
PREDICTED = "0" * 32


@dataclass(frozen=True)
class Prediction:
    """The version a rotate would create, and the policy's verdict on it.

    ``by_rotation`` is True when the key has a rotation policy (Key Vault's rotate makes
    the version), False for a create like the newest version. ``expiry_known`` is False
    when the rotation policy's expiryTime sets the expiry and it was not given: the
    expiry checks were then not evaluated."""

    template: KeyVersion
    version: KeyVersion
    by_rotation: bool
    expiry_known: bool
    verdict: Verdict

    @property
    def bindable(self) -> bool:
        """True when the real run's new version would pass the policy."""
        return self.verdict.bindable


def predict_version(
    template: KeyVersion,
    now: datetime,
    *,
    by_rotation: bool,
    rotation_expiry: timedelta | None = None,
) -> KeyVersion:
    """The version :func:`create_version` would make from ``template`` at ``now``: the
    same type, size and operations, enabled, valid from now, in the same vault. Its
    expiry: ``rotation_expiry`` after now for Key Vault's rotate (None: none known);
    for a create, the template's validity period counted from now (none if it has none).
    """
    if by_rotation:
        expires = now + rotation_expiry if rotation_expiry is not None else None
    elif template.expires is not None:
        expires = now + (template.expires - (template.not_before or template.created))
    else:
        expires = None
    return replace(
        template,
        key_id=template.key_id.with_version(PREDICTED),
        enabled=True,
        not_before=None,
        expires=expires,
        created=now,
    )


async def predict_rotation(engine: Engine, key: KeyId) -> Prediction:
    """What :func:`~cmk.usecases.rotate.rotate_key` would create for ``key`` now, judged
    by the version policy; reads the key and its rotation policy, writes nothing.

    A version made by Key Vault's rotate expires after the rotation policy's
    ``expiryTime``; a policy without one (or in a form not understood) leaves its expiry
    unknown, and then not judged."""
    template = await engine.keys.latest(key.versionless())
    rotation = await engine.keys.rotation_policy(key)
    by_rotation = rotation is not None
    expiry = rotation.expiry if rotation is not None else None
    now = engine.now()
    version = predict_version(template, now, by_rotation=by_rotation, rotation_expiry=expiry)
    return Prediction(
        template=template,
        version=version,
        by_rotation=by_rotation,
        expiry_known=not by_rotation or expiry is not None,
        verdict=evaluate(version, engine.policy, now),
    )
