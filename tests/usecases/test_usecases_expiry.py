"""on_near_expiry and on_expired end to end against the sandbox and Azurite."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from usecase_rig import SUB_B, Rig

from cmk.errors import ServiceUnavailable
from cmk.sandbox.world import KeyEventType
from cmk.usecases import EventOutcome, on_expired, on_near_expiry


class TestOnNearExpiry:
    async def test_newer_valid_version_is_fanned_out(self, rig: Rig) -> None:
        """When a valid successor exists, near expiry moves accounts to it, creating nothing."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(
            estate.kv, created=now - timedelta(days=300), expires=now + timedelta(days=10)
        )
        account = estate.account("acct-n", estate.kv, expiring.version)
        newer = estate.version(estate.kv, created=now - timedelta(days=1))

        report = await on_near_expiry(
            rig.engine, estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)
        )
        await rig.drain()

        assert report.outcome is EventOutcome.FANNED_OUT and report.created_version is None
        assert len(estate.kv.keys["cmk"].versions) == 2
        assert account.encryption.key_version == newer.version
        rig.check_invariants()

    async def test_same_event_twice_at_once_creates_one_version(self, rig: Rig) -> None:
        """Two handlers of one near-expiry event race: one new version; every account moves."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(
            estate.hsm,
            kty="RSA-HSM",
            created=now - timedelta(days=355),
            expires=now + timedelta(days=10),
        )
        accounts = [
            estate.account(f"acct-x{i}", estate.hsm, expiring.version, sub=SUB_B) for i in range(3)
        ]
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.hsm, expiring)

        results = await asyncio.gather(
            on_near_expiry(rig.engine, event),
            on_near_expiry(rig.engine, event),
            return_exceptions=True,
        )
        # The loser either saw the new version, or raised a transient error so Event Grid
        # delivers the event again: that redelivery fans out.
        retried = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(error, ServiceUnavailable) for error in retried)
        for _ in retried:
            redelivered = await on_near_expiry(rig.engine, event)
            assert redelivered.outcome is EventOutcome.FANNED_OUT
        await rig.drain()

        versions = estate.hsm.keys["cmk"].versions
        assert len(versions) == 2
        outcomes = {r.outcome for r in results if not isinstance(r, BaseException)}
        assert EventOutcome.ROTATED in outcomes
        assert outcomes <= {EventOutcome.ROTATED, EventOutcome.FANNED_OUT}
        assert all(a.encryption.key_version == versions[-1].version for a in accounts)
        assert versions[-1].kty == "RSA-HSM" and versions[-1].size == 2048
        assert versions[-1].expires is not None and versions[-1].expires > now + timedelta(days=300)
        rig.check_invariants()
        await rig.check_ledger()

    async def test_rotation_off_alerts_instead(self, rig: Rig) -> None:
        """With rotation switched off, no version is created and one alert says so."""
        estate = rig.estate
        expiring = estate.version(estate.kv, expires=estate.world.clock.now() + timedelta(days=10))
        estate.account("acct-f", estate.kv, expiring.version)
        engine = replace(
            rig.engine, settings=replace(rig.engine.settings, rotate_on_near_expiry=False)
        )
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)

        report = await on_near_expiry(engine, event)
        await on_near_expiry(engine, event)

        assert report.outcome is EventOutcome.NOT_ROTATED
        assert len(estate.kv.keys["cmk"].versions) == 1
        assert len(rig.alerts("key_near_expiry_unrotated")) == 1
        assert await rig.queue_length() == 0


class TestOnExpired:
    async def test_bound_account_moves_urgently_with_critical_alert(self, rig: Rig) -> None:
        """An account on the expired version gets an urgent job and a CRITICAL alert."""
        estate = rig.estate
        now = estate.world.clock.now()
        expired = estate.version(
            estate.kv, created=now - timedelta(days=400), expires=now - timedelta(hours=1)
        )
        account = estate.account("acct-e", estate.kv, expired.version)
        newer = estate.version(estate.kv, created=now - timedelta(days=2))

        report = await on_expired(
            rig.engine, estate.event(KeyEventType.EXPIRED, estate.kv, expired)
        )

        assert [j.urgent for j in await rig.queued()] == [True]
        [alert] = rig.alerts("key_expired_bound")
        assert alert["data"]["severity"] == "critical"
        assert report.target_version == newer.version
        await rig.drain()
        assert account.encryption.key_version == newer.version
        rig.check_invariants()

    async def test_no_successor_alerts_critically_and_moves_nothing(self, rig: Rig) -> None:
        """Without any valid version the account stays put, and the alert is CRITICAL."""
        estate = rig.estate
        now = estate.world.clock.now()
        expired = estate.version(
            estate.kv, created=now - timedelta(days=400), expires=now - timedelta(hours=1)
        )
        account = estate.account("acct-z", estate.kv, expired.version)

        report = await on_expired(
            rig.engine, estate.event(KeyEventType.EXPIRED, estate.kv, expired)
        )

        assert report.outcome is EventOutcome.NO_SUCCESSOR
        assert await rig.queue_length() == 0
        assert [a["data"]["severity"] for a in rig.alerts("key_expired_bound")] == ["critical"]
        assert account.encryption.key_version == expired.version


class TestEventsAreConfirmedByKeyVault:
    async def test_near_expiry_for_a_far_expiry_is_ignored(self, rig: Rig) -> None:
        """A near-expiry event for a version Key Vault says expires in a year (replayed
        after the expiry was extended, or forged) creates nothing and moves nothing."""
        estate = rig.estate
        now = estate.world.clock.now()
        version = estate.version(estate.kv, expires=now + timedelta(days=365))
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, version)
        version.expires = now + timedelta(days=400)  # extended after the event

        report = await on_near_expiry(rig.engine, event)

        assert report.outcome is EventOutcome.STALE_EVENT
        assert len(estate.kv.keys["cmk"].versions) == 1
        assert await rig.queue_length() == 0

    async def test_expired_event_for_a_valid_version_is_ignored(self, rig: Rig) -> None:
        """A KeyExpired event for a version that has not expired raises no critical alert."""
        estate = rig.estate
        now = estate.world.clock.now()
        version = estate.version(estate.kv, expires=now + timedelta(days=100))
        estate.account("acct-c", estate.kv, version.version)

        report = await on_expired(
            rig.engine, estate.event(KeyEventType.EXPIRED, estate.kv, version)
        )

        assert report.outcome is EventOutcome.STALE_EVENT
        assert rig.alerts("key_expired_bound") == []
        assert await rig.queue_length() == 0
