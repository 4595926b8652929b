"""The alert lifecycle around a sweep and the key events: an alert closes when what it
reports is over, never while it still holds — not because a sweep that ran beside it
judged from an older read — and nothing is alerted for keys no account in scope uses."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from usecase_rig import Rig

from cmk import entrypoints
from cmk.errors import ServiceUnavailable
from cmk.events import KeyVaultEventType
from cmk.keyid import KeyId
from cmk.ports import RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.keyvault.model import key_event
from cmk.sandbox.world import KeyEventType, KeyVersionState, VaultState
from cmk.usecases import (
    EventOutcome,
    alerting,
    on_near_expiry,
    on_new_version,
    rotate_account,
    sweep,
)
from cmk.usecases.report import JobResult


def _raw(rig: Rig, kind: KeyEventType, vault: VaultState, version: KeyVersionState) -> Any:
    """The event as Event Grid delivers it (Event Grid schema)."""
    with rig.world.lock:
        raw = key_event(rig.world, kind, vault, vault.keys["cmk"], version)
    return shape_event(raw, "EventGridSchema")


class _Beside:
    """The Key Vault port, with ``during`` run once right after the sweep read a key's
    latest version: work running beside the sweep, after what it read."""

    def __init__(self, keys: Any, during: Any) -> None:
        self._keys, self._during, self._done = keys, during, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keys, name)

    async def latest(self, *args: Any, **kwargs: Any) -> Any:
        found = await self._keys.latest(*args, **kwargs)
        if not self._done:
            self._done = True
            await self._during()
        return found


class TestClosedWhenOver:
    async def test_a_failed_event_closes_once_a_sweep_reads_its_key(self, rig: Rig) -> None:
        """KeyNewVersionCreated for v2 fails for good (403): one event_failed. Access comes
        back and a sweep reads the key (and moves the accounts): the alert closes. A later
        event for v2 that fails the same way is a new failure, and alerted again."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=300))
        estate.account("acct-e", estate.kv, v1.version)
        v2 = estate.version(estate.kv, expires=now + timedelta(days=40))
        faults = estate.sandbox.faults
        rule = faults.add(host=estate.kv.host, path="/keys/cmk", status=403)
        raw = _raw(rig, KeyEventType.NEW_VERSION, estate.kv, v2)
        await entrypoints.handle_key_event(rig.engine, raw, KeyVaultEventType.NEW_VERSION)
        assert len(rig.alerts("event_failed")) == 1
        faults.remove(rule)
        key = str(KeyId(estate.kv.url, "cmk")).lower()

        await sweep(rig.engine)

        assert key not in await rig.engine.alerts.open_subjects()
        estate.world.clock.advance(timedelta(days=15))
        rule = faults.add(host=estate.kv.host, path="/keys/cmk", status=403)
        raw = _raw(rig, KeyEventType.NEAR_EXPIRY, estate.kv, v2)
        await entrypoints.handle_key_event(rig.engine, raw, KeyVaultEventType.NEAR_EXPIRY)
        assert len(rig.alerts("event_failed")) == 2

    async def test_a_failed_near_expiry_stays_open_until_a_lasting_successor(
        self, rig: Rig
    ) -> None:
        """KeyNearExpiry cannot create the version (the vault answers 403 to the create):
        one event_failed. A sweep reads the key fine, but that does not fix the event —
        no version was made — so the alert stays open until a valid successor that no
        near-expiry notice concerns exists; then a sweep closes it."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(
            estate.kv, created=now - timedelta(days=340), expires=now + timedelta(days=25)
        )
        estate.account("acct-x", estate.kv, v1.version)
        settings = replace(rig.engine.settings, expiry_margin=timedelta(days=14))
        engine = replace(rig.engine, settings=settings)
        faults = estate.sandbox.faults
        refused = faults.add(host=estate.kv.host, path="/keys/cmk/(create|rotate)", status=403)
        raw = _raw(rig, KeyEventType.NEAR_EXPIRY, estate.kv, v1)
        await entrypoints.handle_key_event(engine, raw, KeyVaultEventType.NEAR_EXPIRY)
        assert len(rig.alerts("event_failed")) == 1
        key = str(KeyId(estate.kv.url, "cmk")).lower()

        await sweep(engine)

        assert key in await engine.alerts.open_subjects()  # nothing was fixed
        faults.remove(refused)
        estate.version(estate.kv)  # someone rotates: a lasting successor
        await sweep(engine)
        assert key not in await engine.alerts.open_subjects()

    async def test_a_version_rejected_while_the_sweep_ran_stays_open(self, rig: Rig) -> None:
        """The sweep reads the key (newest version valid); meanwhile v3, 4096-bit, is
        created and its event alerts version_rejected. The sweep does not close that
        alert (it did not see v3), so the event's redelivery does not alert it again."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=2))
        estate.account("acct-r", estate.kv, v1.version)
        estate.world.clock.advance(timedelta(minutes=1))
        estate.version(estate.kv)
        made: list[KeyVersionState] = []

        async def during() -> None:
            estate.world.clock.advance(timedelta(minutes=1))
            made.append(estate.version(estate.kv, size=4096))
            await on_new_version(
                rig.engine, estate.event(KeyEventType.NEW_VERSION, estate.kv, made[0])
            )

        await sweep(replace(rig.engine, keys=_Beside(rig.engine.keys, during)))

        assert len(rig.alerts("version_rejected")) == 1
        assert str(KeyId(estate.kv.url, "cmk")).lower() in await rig.engine.alerts.open_subjects()
        await on_new_version(rig.engine, estate.event(KeyEventType.NEW_VERSION, estate.kv, made[0]))
        assert len(rig.alerts("version_rejected")) == 1

    async def test_a_failure_raised_while_the_sweep_ran_stays_open(self, rig: Rig) -> None:
        """The sweep judges an account healthy (an old alert of it, fixed by hand, is to be
        closed); meanwhile its move to v2 fails for good and alerts. The sweep closes the
        old alert, not the new one: the failure is alerted once, and stays open."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=2))
        account = estate.account("acct-h", estate.kv, v1.version)
        account_id = AccountId.parse(account.resource_id)
        old = alerting.identity_missing(
            account_id, KeyId(estate.kv.url, "cmk", v1.version), "old", v1.version
        )
        await alerting.publish(rig.engine, [old])
        made: list[KeyVersionState] = []

        async def during() -> None:
            estate.world.clock.advance(timedelta(minutes=1))
            made.append(estate.version(estate.kv))
            assert account.identity.system is not None
            estate.world.revoke(account.identity.system.object_id)
            job = RotationJob(account_id, KeyId(estate.kv.url, "cmk", made[0].version), "ev")
            assert (await rotate_account(rig.engine, job)).result is JobResult.FAILED

        await sweep(replace(rig.engine, keys=_Beside(rig.engine.keys, during)))

        assert account.resource_id.lower() in await rig.engine.alerts.open_subjects()
        await sweep(rig.engine)
        await rig.drain()
        failures = [a for a in rig.alerts() if a["data"]["toVersion"] == made[0].version]
        assert len(failures) == 1, failures


class TestNothingToAct:
    async def test_a_version_not_valid_yet_is_not_alerted_and_moved_once_it_is(
        self, rig: Rig
    ) -> None:
        """A new version whose not-before is a day ahead: nobody is moved to it, and
        nobody is alerted (it becomes valid by itself); the first sweep after that moves
        the accounts."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=2))
        account = estate.account("acct-f", estate.kv, v1.version)
        later = estate.version(estate.kv, not_before=now + timedelta(days=1))

        report = await on_new_version(
            rig.engine, estate.event(KeyEventType.NEW_VERSION, estate.kv, later)
        )

        assert report.outcome is EventOutcome.VERSION_REJECTED
        assert rig.alerts() == [] and account.encryption.key_version == v1.version
        estate.world.clock.advance(timedelta(days=1, minutes=1))
        await sweep(rig.engine)
        await rig.drain()
        assert account.encryption.key_version == later.version
        assert rig.alerts() == []


class TestKeysNoAccountUses:
    """A vault may hold keys of other services (Storage, SQL, disks): not ours."""

    async def test_a_rejected_version_of_an_unused_key_is_not_alerted(self, rig: Rig) -> None:
        estate = rig.estate
        v1 = estate.version(estate.kv)
        estate.account("acct-ok", estate.kv, v1.version)
        other = estate.version(estate.kv, key="storage-cmk", size=4096)
        event = estate.event(KeyEventType.NEW_VERSION, estate.kv, other, key="storage-cmk")

        report = await on_new_version(rig.engine, event)

        assert report.outcome is EventOutcome.VERSION_REJECTED
        assert "no account in scope uses the key" in (report.detail or "")
        assert rig.alerts() == []

    async def test_a_near_expiry_of_an_unused_key_creates_nothing(self, rig: Rig) -> None:
        estate, now = rig.estate, rig.estate.world.clock.now()
        other = estate.version(estate.kv, key="storage-cmk", expires=now + timedelta(days=10))
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, other, key="storage-cmk")

        report = await on_near_expiry(rig.engine, event)

        assert report.outcome is EventOutcome.NOT_ROTATED
        assert len(estate.kv.keys["storage-cmk"].versions) == 1
        assert rig.alerts() == []


class TestNearExpiryAlertIsDurable:
    async def test_an_unrecorded_alert_fails_the_event_for_its_retry(self, rig: Rig) -> None:
        """Rotation off: KeyNearExpiry with no successor alerts key_near_expiry_unrotated.
        When the alert cannot be recorded (the Table answers 503), the event fails, so
        Event Grid delivers it again — it is not completed without its alert."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, expires=now + timedelta(days=20))
        estate.account("acct-n", estate.kv, v1.version)
        settings = replace(rig.engine.settings, rotate_on_near_expiry=False)
        engine = replace(rig.engine, settings=settings)
        sink = engine.alerts

        class TableDown:
            def __getattr__(self, name: str) -> Any:
                return getattr(sink, name)

            async def raise_alert(self, alert: Any) -> bool:
                raise ServiceUnavailable("recording the alert: 503 (injected)")

        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, v1)
        with pytest.raises(ServiceUnavailable):
            await on_near_expiry(replace(engine, alerts=TableDown()), event)

        report = await on_near_expiry(engine, event)  # Event Grid's next delivery
        assert report.outcome is EventOutcome.NOT_ROTATED
        assert len(rig.alerts("key_near_expiry_unrotated")) == 1
