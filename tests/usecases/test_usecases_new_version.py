"""on_new_version end to end: sandbox ARM + Key Vault + Resource Graph, Azurite, Event Grid."""

from __future__ import annotations

import time
from datetime import timedelta

from usecase_rig import SUB_A, SUB_B, SUB_C, Rig

from cmk.keyid import KeyId
from cmk.sandbox.world import KeyEventType, RotationPolicy
from cmk.usecases import EventOutcome, JobResult, on_new_version
from cmk.usecases.new_versions import predict_rotation


class TestOnNewVersion:
    async def test_moves_every_bound_account_across_subscriptions_and_vault_kinds(
        self, rig: Rig
    ) -> None:
        """Accounts in two subscriptions, on a Key Vault and a Managed HSM, system- and
        user-assigned, all end on the new version with identityClientId preserved."""
        estate = rig.estate
        old_kv = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        old_hsm = estate.version(
            estate.hsm, kty="RSA-HSM", created=estate.world.clock.now() - timedelta(days=1)
        )
        a = estate.account("acct-a", estate.kv, old_kv.version, sub=SUB_A)
        b = estate.account("acct-b", estate.kv, old_kv.version, sub=SUB_B, user_assigned=True)
        c = estate.account("acct-c", estate.hsm, old_hsm.version, sub=SUB_B, user_assigned=True)
        client_id = b.encryption.identity_client_id
        new_kv = estate.version(estate.kv)

        report = await on_new_version(
            rig.engine, estate.event(KeyEventType.NEW_VERSION, estate.kv, new_kv)
        )

        assert report.outcome is EventOutcome.FANNED_OUT
        assert report.target_version == new_kv.version
        assert {str(m.account_id).rsplit("/", 1)[-1] for m in report.moves} == {"acct-a", "acct-b"}
        assert report.enqueued == 2
        results = await rig.drain()
        assert [r.result for r in results] == [JobResult.SUCCEEDED] * 2
        assert a.encryption.key_version == b.encryption.key_version == new_kv.version
        assert b.encryption.identity_client_id == client_id
        assert c.encryption.key_version == old_hsm.version

        new_hsm = estate.version(estate.hsm, kty="RSA-HSM")
        event = estate.event(KeyEventType.NEW_VERSION, estate.hsm, new_hsm)
        assert (await on_new_version(rig.engine, event)).enqueued == 1
        await rig.drain()
        assert c.encryption.key_version == new_hsm.version
        assert c.encryption.identity_client_id is not None
        rig.check_invariants()
        await rig.check_ledger()
        assert SUB_C  # the third subscription holds only the out-of-scope vault

    async def test_rejected_version_touches_no_account_and_alerts_once(self, rig: Rig) -> None:
        """A 4096-bit newest version is rejected: no job, no PATCH, one alert for two events."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        account = estate.account("acct-r", estate.kv, old.version)
        bad = estate.version(estate.kv, size=4096)
        event = estate.event(KeyEventType.NEW_VERSION, estate.kv, bad)

        first = await on_new_version(rig.engine, event)
        second = await on_new_version(rig.engine, event)

        assert first.outcome is second.outcome is EventOutcome.VERSION_REJECTED
        assert "key_size" in first.detail
        assert await rig.queue_length() == 0
        assert account.encryption.key_version == old.version
        assert estate.sandbox.counters.matching(host="management.azure.com", method="PATCH") == []
        assert [e["data"]["toVersion"] for e in rig.alerts("version_rejected")] == [bad.version]
        rig.check_invariants()

    async def test_a_version_disabled_before_its_event_is_not_alerted(self, rig: Rig) -> None:
        """The version an event names was disabled before the event arrived (someone did
        it on purpose): nothing moves to it, and nothing is alerted — there is nothing to
        fix (a chaos run met this when a delivery came late)."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        account = estate.account("acct-d", estate.kv, old.version)
        disabled = estate.version(estate.kv, enabled=False)
        event = estate.event(KeyEventType.NEW_VERSION, estate.kv, disabled)

        report = await on_new_version(rig.engine, event)

        assert report.outcome is EventOutcome.VERSION_REJECTED
        assert "disabled" in report.detail and report.alerts == ()
        assert account.encryption.key_version == old.version
        assert rig.alerts() == []

    async def test_forged_event_outside_allow_list_reads_and_writes_nothing(self, rig: Rig) -> None:
        """An event for a vault outside the allow-list makes no request at all."""
        estate = rig.estate
        version = estate.version(estate.outside)
        estate.account("acct-o", estate.outside, version.version, sub=SUB_C)
        event = estate.event(
            KeyEventType.NEW_VERSION, estate.outside, estate.version(estate.outside)
        )
        estate.sandbox.counters.reset()

        report = await on_new_version(rig.engine, event)

        assert report.outcome is EventOutcome.OUT_OF_SCOPE
        assert estate.sandbox.counters.total == 0
        assert await rig.queue_length() == 0
        assert rig.alerts() == []
        assert await rig.engine.ledger.history() == []

    async def test_duplicated_and_out_of_order_events_end_on_the_newest(self, rig: Rig) -> None:
        """Events for v3, v2, v3 (and v2 again after the move) leave every account on v3."""
        estate = rig.estate
        now = estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=3))
        v2 = estate.version(estate.kv, created=now - timedelta(days=2))
        v3 = estate.version(estate.kv, created=now - timedelta(days=1))
        accounts = [
            estate.account(f"acct-d{i}", estate.kv, v1.version, sub=SUB_A if i % 2 else SUB_B)
            for i in range(4)
        ]
        events = [estate.event(KeyEventType.NEW_VERSION, estate.kv, v) for v in (v3, v2, v3)]

        reports = [await on_new_version(rig.engine, event) for event in events]
        await rig.drain()
        late = await on_new_version(
            rig.engine, estate.event(KeyEventType.NEW_VERSION, estate.kv, v2)
        )

        assert {r.target_version for r in reports} == {v3.version}
        assert late.enqueued == 0
        assert all(a.encryption.key_version == v3.version for a in accounts)
        assert all([v for _, v in a.binding_history] == [v1.version, v3.version] for a in accounts)
        rig.check_invariants()
        await rig.check_ledger()

    async def test_dry_run_plans_but_writes_nothing(self, rig: Rig) -> None:
        """In dry-run mode the plan is reported, and no queue, ledger or alert is written."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        account = estate.account("acct-y", estate.kv, old.version)
        new = estate.version(estate.kv)

        report = await on_new_version(
            rig.dry(), estate.event(KeyEventType.NEW_VERSION, estate.kv, new)
        )

        assert report.dry_run and report.enqueued == 0
        assert [m.to_version for m in report.moves] == [new.version]
        assert await rig.queue_length() == 0
        assert account.encryption.key_version == old.version
        assert await rig.engine.ledger.history() == []
        assert rig.alerts() == []

    async def test_thousand_accounts_fan_out_concurrently(self, rig: Rig) -> None:
        """1,000 bound accounts are planned and enqueued well inside Event Grid's 30 s."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        for i in range(1000):
            estate.account(f"bulk{i:04d}", estate.kv, old.version, sub=(SUB_A, SUB_B)[i % 2])
        new = estate.version(estate.kv)
        event = estate.event(KeyEventType.NEW_VERSION, estate.kv, new)

        started = time.perf_counter()
        report = await on_new_version(rig.engine, event)
        elapsed = time.perf_counter() - started

        print(f"fan-out of 1,000 accounts: {elapsed:.2f} s")  # a figure, not a timed assertion
        assert report.enqueued == 1000
        assert await rig.queue_length() == 1000
        assert SUB_B


class TestPredictRotation:
    """What a rotation would create, judged before anything is created (rotate --dry-run)."""

    async def test_a_rotation_policy_expiry_inside_the_margin_is_judged(self, rig: Rig) -> None:
        """Key Vault's rotate gives the new version the policy's expiryTime: an expiry
        inside CMK_EXPIRY_MARGIN_DAYS is predicted, and rejected, before any version is
        made; a long enough expiryTime passes."""
        estate = rig.estate
        estate.version(estate.kv)
        key = KeyId(estate.kv.url, "cmk")
        rotate = [{"trigger": {"timeBeforeExpiry": "P7D"}, "action": {"type": "Rotate"}}]
        policy = RotationPolicy(expiry_time="P10D", lifetime_actions=rotate)
        estate.kv.keys["cmk"].rotation_policy = policy

        short = await predict_rotation(rig.engine, key)
        policy.expiry_time = "P400D"
        long = await predict_rotation(rig.engine, key)

        assert short.by_rotation and short.expiry_known and not short.bindable
        assert long.expiry_known and long.bindable
        assert len(estate.kv.keys["cmk"].versions) == 1
