"""The safety cases of one notice, one failure, one sweep: each once broke, each now holds.

- A near-expiry notice creates at most one version, whatever follows: the new version is
  rejected by policy, a transient failure after the creation, redeliveries.
- One failure of one account's move alerts once, whichever step sees it, naming the
  target version.
- A sweep alerts an allow-listed key it cannot read (once, naming its accounts), and does
  not alert a stale binding it moves itself.
- Alerts are independent: one that cannot be published stays pending, the others go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from interleave import Fault, Plan, Scheduler, gated
from usecase_rig import Estate, Rig, handed_verify

from cmk.adapters.keyvault import CREATE_TIMEOUT
from cmk.errors import CmkError, ServiceUnavailable, TransientError
from cmk.events import KeyVaultEvent
from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.world import KeyEventType
from cmk.usecases import (
    EventOutcome,
    EventReport,
    alerting,
    on_near_expiry,
    on_new_version,
    rotate_account,
    sweep,
)
from cmk.usecases.events import creation_lease
from cmk.usecases.report import JobResult
from cmk.usecases.sweep import UNREADABLE_GRACE
from cmk.usecases.versions import key_versions
from cmk.usecases.worker import KEY_UNREADABLE_CAUSE


def _near_expiry_notice(estate: Estate, key: str) -> KeyVaultEvent:
    """The KeyNearExpiry notice of a new key ``key``: its one version, 355 days old,
    expires in 10 days, and an account is bound to it."""
    now = estate.world.clock.now()
    expiring = estate.version(
        estate.kv, key, created=now - timedelta(days=355), expires=now + timedelta(days=10)
    )
    estate.account(f"acct-{key}", estate.kv, expiring.version, key=key)
    return estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring, key=key)


async def _notice_calls(rig: Rig, event: KeyVaultEvent) -> list[str]:
    """The port calls handling ``event`` makes, in order (one run, alone, of a probe
    notice: the points the schedules below stop at or fault)."""
    probe = Scheduler(Plan(order=[("A", None)]))
    await probe.run({"A": partial(on_near_expiry, gated(rig.engine, probe), event)})
    return [t.split(":", 1)[1] for t in probe.trace if t.startswith("A:")]


class TestOneNoticeOneVersion:
    """A KeyNearExpiry notice (key + expiring version) creates at most one version."""

    async def test_rejected_new_version_is_not_recreated_on_redelivery(self, rig: Rig) -> None:
        """The version created for the notice fails the policy (4096-bit, like its
        template): three deliveries make one version and one version_rejected alert."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(estate.kv, size=4096, expires=now + timedelta(days=10))
        estate.account("acct-r", estate.kv, expiring.version)
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)

        reports = [await on_near_expiry(rig.engine, event) for _ in range(3)]

        assert [r.outcome for r in reports] == [EventOutcome.VERSION_REJECTED] * 3
        assert len(estate.kv.keys["cmk"].versions) == 2
        assert {r.created_version for r in reports} == {estate.kv.keys["cmk"].versions[-1].version}
        assert len(rig.alerts("version_rejected")) == 1
        rig.check_invariants()

    async def test_short_lived_key_is_alerted_once_with_the_real_cause(self, rig: Rig) -> None:
        """Versions that live 20 days, a 30-day margin: the notice's new version is
        rejected (version_rejected, one alert; the account's binding_unsafe); the sweeps
        that follow do not alert the same version again as near expiry without a
        successor. Where no notice came (no version_rejected open), the sweep's near-expiry
        alert names the short lifetime and does not advise a rotation, which would copy
        it."""
        estate = rig.estate
        now = estate.world.clock.now()
        lifetime = {"created": now - timedelta(days=10), "expires": now + timedelta(days=10)}
        expiring = estate.version(estate.kv, **lifetime)
        estate.account("acct-short", estate.kv, expiring.version)
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)

        report = await on_near_expiry(rig.engine, event)
        await sweep(rig.engine)
        await sweep(rig.engine)

        assert report.outcome is EventOutcome.VERSION_REJECTED
        assert len(rig.alerts("version_rejected")) == 1
        assert rig.alerts("key_near_expiry_unrotated") == []
        assert len(rig.alerts("binding_unsafe")) == 1  # the account's own: it is at risk
        rig.check_invariants()

        # exactly as long as the margin (a rotation policy's P30D with a 30-day margin)
        lifetime = {"created": now - timedelta(days=20), "expires": now + timedelta(days=10)}
        other = estate.version(estate.kv, key="brief", **lifetime)
        estate.account("acct-brief", estate.kv, other.version, key="brief")
        await sweep(rig.engine)

        [alert] = rig.alerts("key_near_expiry_unrotated")
        assert (
            "valid for 30 days, not longer than CMK_EXPIRY_MARGIN_DAYS (30 days)"
            in (alert["data"]["cause"])
        )
        assert "rotation-policy update" in alert["data"]["remediation"]

    async def test_transient_failure_after_creation_creates_nothing_more(self, rig: Rig) -> None:
        """The handler fails after creating the version (Resource Graph answers 503): the
        redelivery finds the notice's version and fans out to it, creating no other."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(
            estate.kv, created=now - timedelta(days=355), expires=now + timedelta(days=10)
        )
        account = estate.account("acct-t", estate.kv, expiring.version)
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)
        faults, rules = estate.sandbox.faults, []
        keys = rig.engine.keys

        class _ThenArmDown:
            """The Key Vault port; once a version is created, ARM answers 503."""

            def __getattr__(self, name: str) -> Any:
                return getattr(keys, name)

            async def create_like(self, template: Any) -> Any:
                created = await keys.create_like(template)
                rules.append(faults.add(host="management.azure.com", status=503))
                return created

            async def rotate(self, key: Any) -> Any:
                created = await keys.rotate(key)
                rules.append(faults.add(host="management.azure.com", status=503))
                return created

        try:
            got = await on_near_expiry(replace(rig.engine, keys=_ThenArmDown()), event)
            raise AssertionError(f"the fan-out should have failed: {got}")
        except ServiceUnavailable:
            pass
        finally:
            for rule in rules:
                faults.remove(rule)
        assert len(estate.kv.keys["cmk"].versions) == 2

        report = await on_near_expiry(rig.engine, event)
        await rig.drain()

        assert report.outcome is EventOutcome.FANNED_OUT
        assert len(estate.kv.keys["cmk"].versions) == 2
        assert account.encryption.key_version == estate.kv.keys["cmk"].versions[-1].version
        rig.check_invariants()

    async def test_a_claimer_stalled_past_its_lease_never_creates_a_second(self, rig: Rig) -> None:
        """A (a delivery) stops before each of its calls in turn — a stall longer than the
        claim's lease — while B (a redelivery, past that lease) runs to its end; then A
        goes on. Wherever A stalled, the notice created exactly one version: a run that
        lost its claim never creates (the claim is checked and restarted right before
        the creating request), and one that created before losing it keeps to the
        version the claim records.

        The one point not explored is the creating request itself: a stall there is that
        request's own duration, which its timeouts bound far inside the lease (asserted
        here); Key Vault's create takes no precondition a lease could fence."""
        estate = rig.estate
        past_lease = rig.engine.claim_lease + timedelta(minutes=1)
        later = replace(rig.engine, now=lambda: estate.world.clock.now() + past_lease)
        assert rig.engine.claim_lease > CREATE_TIMEOUT * 2

        labels = await _notice_calls(rig, _near_expiry_notice(estate, "probe"))
        creating = labels.index("keys.create_like")
        # checked right before: the notice's claim, then the key's creation lease
        assert labels[creating - 2 : creating] == ["ledger.refresh_claim", "ledger.renew_lease"]

        for stall in [k for k in range(len(labels) + 1) if k != creating]:
            key = f"stall{stall}"
            event = _near_expiry_notice(estate, key)
            throttle_for(rig.world).reset()  # each schedule starts with a fresh Graph quota
            scheduler = Scheduler(Plan(order=[("A", stall), ("B", None), ("A", None)]))
            results = await scheduler.run(
                {
                    "A": partial(on_near_expiry, gated(rig.engine, scheduler), event),
                    "B": partial(on_near_expiry, gated(later, scheduler), event),
                }
            )
            created = len(estate.kv.keys[key].versions) - 1
            assert created == 1, (stall, created, scheduler.trace, results)
        await rig.drain()
        rig.check_invariants()

    async def test_two_notices_of_one_key_create_one_version(self, rig: Rig) -> None:
        """Two versions of one key near expiry, their notices handled at once (two
        instances): A is stopped before each of its port calls in turn while B runs to
        its end, then A finishes; whoever was told to retry is delivered again. Whatever
        the point, the key gains one version — the second notice finds the first's (the
        key's creation lease, held from the last look for a successor to the create). The
        same with B running after A stalled past its leases (B takes them over): A's fence
        finds the creation lease lost and creates nothing — at every point but the creating
        request itself."""
        estate = rig.estate

        def notices(key: str) -> tuple[Any, Any]:
            now = estate.world.clock.now()
            older, newer = (
                estate.version(
                    estate.kv, key, created=now - timedelta(days=days), expires=now + left
                )
                for days, left in ((360, timedelta(days=5)), (340, timedelta(days=25)))
            )
            estate.account(f"acct-{key}", estate.kv, newer.version, key=key)
            return tuple(
                estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, version, key=key)
                for version in (older, newer)
            )  # type: ignore[return-value]

        labels = await _notice_calls(rig, notices("probe")[0])
        calls, creating = len(labels), labels.index("keys.create_like")

        past_lease = rig.engine.claim_lease + timedelta(minutes=1)
        later = replace(rig.engine, now=lambda: estate.world.clock.now() + past_lease)
        # B at once (A's lease held), or B after A stalled past its lease (B takes it over)
        for b_engine, stall in itertools.product((rig.engine, later), range(calls + 1)):
            if b_engine is later and stall == creating:
                # A frozen for 11 minutes between its fence and its creating request: the
                # request's own duration, bounded far inside the lease (see the test above)
                continue
            key = f"two{stall}{'l' if b_engine is later else ''}"
            events = dict(zip("AB", notices(key), strict=True))
            throttle_for(rig.world).reset()  # each schedule starts with a fresh Graph quota
            scheduler = Scheduler(Plan(order=[("A", stall), ("B", None), ("A", None)]))
            engines = {"A": rig.engine, "B": b_engine}
            results = await scheduler.run(
                {
                    name: partial(on_near_expiry, gated(engines[name], scheduler), event)
                    for name, event in events.items()
                }
            )
            for name, result in results.items():
                if isinstance(result, TransientError):  # Event Grid delivers it again, at once
                    results[name] = await on_near_expiry(b_engine, events[name])
            created = len(estate.kv.keys[key].versions) - 2
            assert created == 1, (stall, created, scheduler.trace, results)
            assert all(isinstance(r, EventReport) for r in results.values()), results
        await rig.drain()
        rig.check_invariants()

    async def test_a_failure_before_the_create_holds_nothing(self, rig: Rig) -> None:
        """Key Vault or the ledger fails at a call after the notice took its claim — taking
        the key's creation lease, or after — but before its creating request: nothing was
        created, so both are given back and the redelivery, at once, creates the one
        version — rather than waiting out a 10-minute lease."""
        estate = rig.estate
        labels = await _notice_calls(rig, _near_expiry_notice(estate, "p"))
        taken, creating = labels.index("ledger.acquire_lease"), labels.index("keys.create_like")
        # from taking the lease (its insert answered 503, or applied and its answer lost)
        # up to the fence's refresh_claim
        points = itertools.product(range(taken, creating - 2), (Fault.UNAVAILABLE, Fault.LOST))
        for call, fault in points:
            key = f"early{call}{fault.value}"
            event = _near_expiry_notice(estate, key)
            throttle_for(rig.world).reset()
            scheduler = Scheduler(Plan(fault=("A", call, fault)))
            first = await scheduler.run(
                {"A": partial(on_near_expiry, gated(rig.engine, scheduler), event)}
            )
            assert isinstance(first["A"], TransientError), (labels[call], first)
            again = await on_near_expiry(rig.engine, event)
            assert again.outcome is EventOutcome.ROTATED, (labels[call], again)
            assert len(estate.kv.keys[key].versions) == 2, labels[call]

    @pytest.mark.parametrize("fault", [Fault.UNAVAILABLE, Fault.LOST])
    async def test_a_create_that_may_have_landed_holds_both(self, rig: Rig, fault: Fault) -> None:
        """The creating request itself fails for a transient reason (not sent, or sent and
        its answer lost): it may have landed, so the notice keeps its claim and the key's
        creation lease — a redelivery at once creates nothing (it binds the version that
        landed, or is told to retry) — and once they have run out, the redelivery binds
        the version that landed or creates the one that did not: one new version."""
        estate = rig.estate
        creating = (await _notice_calls(rig, _near_expiry_notice(estate, "lp"))).index(
            "keys.create_like"
        )
        key = f"late{fault.value}"
        event = _near_expiry_notice(estate, key)

        scheduler = Scheduler(Plan(fault=("A", creating, fault)))
        first = await scheduler.run(
            {"A": partial(on_near_expiry, gated(rig.engine, scheduler), event)}
        )
        assert isinstance(first["A"], TransientError), first
        landed = len(estate.kv.keys[key].versions) - 1
        assert landed == (1 if fault is Fault.LOST else 0)
        if landed:  # at once: the version that landed is the successor, bound as such
            at_once = await on_near_expiry(rig.engine, event)
            assert at_once.outcome is EventOutcome.FANNED_OUT, at_once
        else:  # at once: held, nothing created
            with pytest.raises(TransientError):
                await on_near_expiry(rig.engine, event)
        assert len(estate.kv.keys[key].versions) - 1 == landed

        later = replace(
            rig.engine, now=lambda: estate.world.clock.now() + rig.engine.claim_lease * 2
        )
        again = await on_near_expiry(later, event)
        assert again.outcome in (EventOutcome.ROTATED, EventOutcome.FANNED_OUT), again
        assert len(estate.kv.keys[key].versions) - 1 == 1

    async def test_a_notice_refused_the_creation_lease_gives_its_claim_back(self, rig: Rig) -> None:
        """Another notice of the key holds its creation lease: this one is told to retry
        (503) and keeps nothing — once that lease is given back (its holder created
        nothing), the redelivery creates at once instead of waiting out its own claim."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(
            estate.kv, "busy", created=now - timedelta(days=355), expires=now + timedelta(days=10)
        )
        estate.account("acct-busy", estate.kv, expiring.version, key="busy")
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring, key="busy")
        lease = creation_lease(KeyId(estate.kv.url, "busy"))
        held = await rig.engine.ledger.acquire_lease(
            lease, "other-notice", rig.engine.now(), rig.engine.claim_lease, purpose="another"
        )
        assert held.granted

        with pytest.raises(ServiceUnavailable, match="another"):
            await on_near_expiry(rig.engine, event)
        await rig.engine.ledger.release_lease(lease, "other-notice")  # it created nothing
        again = await on_near_expiry(rig.engine, event)

        assert again.outcome is EventOutcome.ROTATED, again
        assert len(estate.kv.keys["busy"].versions) == 2

    async def test_a_create_answered_with_an_error_holds_nothing(self, rig: Rig) -> None:
        """Key Vault refuses the creating request (400): nothing was created, so the claim
        and the creation lease are given back and the redelivery, at once, creates."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(
            estate.kv,
            "refused",
            created=now - timedelta(days=355),
            expires=now + timedelta(days=10),
        )
        estate.account("acct-refused", estate.kv, expiring.version, key="refused")
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring, key="refused")
        estate.sandbox.faults.add(
            host=f"{estate.kv.name}.vault.azure.net", path="/keys/refused/create",
            method="POST", status=400, count=1,
        )  # fmt: skip

        with pytest.raises(CmkError) as refused:
            await on_near_expiry(rig.engine, event)
        assert not isinstance(refused.value, TransientError), refused.value
        assert len(estate.kv.keys["refused"].versions) == 1

        again = await on_near_expiry(rig.engine, event)
        assert again.outcome is EventOutcome.ROTATED, again
        assert len(estate.kv.keys["refused"].versions) == 2


class TestOneFailureOneAlert:
    """A failed update alerts once, whichever step (VERIFY, a later ROTATE) sees it."""

    async def test_failed_verify_then_rotate_alerts_once_naming_the_target(self, rig: Rig) -> None:
        """The account's update ends Failed and its identity lost access: VERIFY alerts
        account_update_failed naming the target; the next ROTATE of the same target, which
        finds no usable identity, does not alert again."""
        estate = rig.estate
        old = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        new = estate.version(estate.kv)
        account = estate.account("acct-f", estate.kv, old.version)
        account.provisioning_state = "Failed"
        job = RotationJob(
            AccountId.parse(account.resource_id),
            KeyId(estate.kv.url, "cmk", new.version),
            trigger="test",
        )
        verify = await rotate_account(rig.engine, await handed_verify(rig, job))
        assert verify.result is JobResult.FAILED
        assert new.version in (verify.cause or "") and old.version in (verify.cause or "")
        account.identity.system = None  # the identity is gone too
        again = await rotate_account(rig.engine, job)
        assert again.result is JobResult.FAILED
        alerts = [a for a in rig.alerts() if a["subject"].lower() == account.resource_id.lower()]
        assert len(alerts) == 1, alerts
        assert alerts[0]["type"] == "CmkRotator.account_update_failed"
        assert alerts[0]["data"]["toVersion"] == new.version

    @pytest.mark.parametrize("then", ["key unavailable", "key forbidden", "target disabled"])
    async def test_a_failed_move_is_not_alerted_again_by_a_sweep_that_sees_only_arm(
        self, rig: Rig, then: str
    ) -> None:
        """The move to v2 fails for good (its identity lost access: one alert, naming v2;
        the account is left Failed on v1). Then a sweep judges the account on what ARM
        alone shows — its key unreadable (503 or 403), or v2 disabled by someone, so v1 is
        the newest valid version and there is no move — and sees provisioningState
        Failed: that is the failure already alerted, not a second one naming v1."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=2))
        account = estate.account("acct-a", estate.kv, v1.version)
        v2 = estate.version(estate.kv)
        assert account.identity.system is not None
        estate.world.revoke(account.identity.system.object_id)
        job = RotationJob(
            AccountId.parse(account.resource_id),
            KeyId(estate.kv.url, "cmk", v2.version),
            trigger="test",
            from_version=v1.version,
        )
        assert (await rotate_account(rig.engine, job)).result is JobResult.FAILED
        assert account.provisioning_state == "Failed"
        rig.engine.keys.forget(KeyId(estate.kv.url, "cmk"))
        faults = estate.sandbox.faults
        if then == "target disabled":
            v2.enabled = False
            report = await sweep(rig.engine)
        else:
            status = 503 if then == "key unavailable" else 403
            rule = faults.add(host=estate.kv.host, status=status)
            try:
                report = await sweep(rig.engine)
            finally:
                faults.remove(rule)

        mine = [a for a in rig.alerts() if a["subject"].lower() == account.resource_id.lower()]
        assert [a["data"]["toVersion"] for a in mine] == [v2.version], mine
        assert report.enqueued == 0  # a move would fail for the same reason: a human acts
        # ... and the account is not taken for healthy: its alert stays open
        assert account.resource_id.lower() in {
            subject.lower() for subject in await rig.engine.alerts.open_subjects()
        }
        rig.check_invariants()

    async def test_a_failure_the_account_moved_on_from_does_not_hide_a_new_one(
        self, rig: Rig
    ) -> None:
        """The move to v2 failed long ago (alerted; its row stays failed), and the account
        moved on to v3 since. Now an update nobody here made leaves it Failed on v3: that
        is a new problem, and the sweep alerts it — the old failure explains nothing."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=3))
        v2 = estate.version(estate.kv, created=now - timedelta(days=2))
        account = estate.account("acct-m", estate.kv, v1.version)
        ledger = rig.engine.ledger
        await ledger.record(
            LedgerEntry(
                account_id=AccountId.parse(account.resource_id),
                key_id=KeyId(estate.kv.url, "cmk"),
                to_version=v2.version,
                from_version=v1.version,
                state=LedgerState.FAILED,
                attempts=1,
                cause="the update to v2 ended Failed",
                trigger="test",
                created=now - timedelta(days=2),
                updated=now - timedelta(days=2),
            )
        )
        v3 = estate.version(estate.kv, created=now - timedelta(days=1))
        account.encryption.key_version = v3.version  # moved on since (by a later sweep)
        account.provisioning_state = "Failed"  # someone else's update failed just now

        await sweep(rig.engine)

        mine = [a for a in rig.alerts() if a["subject"].lower() == account.resource_id.lower()]
        assert [a["data"]["alertType"] for a in mine] == ["account_update_failed"], mine
        assert "provisioningState is Failed" in mine[0]["data"]["cause"]

    async def test_failed_update_then_a_newer_version_alerts_once(self, rig: Rig) -> None:
        """The update to v2 ended Failed (alerted, naming v2); then v3 is created. The
        sweep moves the Failed account to v3 and does not alert again — not for v3, which
        nobody had tried, and not for what its own move repairs."""
        estate = rig.estate
        old = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        failed = estate.version(estate.kv)
        account = estate.account("acct-f", estate.kv, old.version)
        account.provisioning_state = "Failed"
        job = RotationJob(
            AccountId.parse(account.resource_id),
            KeyId(estate.kv.url, "cmk", failed.version),
            trigger="test",
        )
        verify = await rotate_account(rig.engine, await handed_verify(rig, job))
        assert verify.result is JobResult.FAILED
        estate.world.clock.advance(timedelta(minutes=1))
        newest = estate.version(estate.kv)

        await sweep(rig.engine)
        await rig.drain()

        assert account.encryption.key_version == newest.version
        alerts = [a for a in rig.alerts() if a["subject"].lower() == account.resource_id.lower()]
        assert [(a["type"], a["data"]["toVersion"]) for a in alerts] == [
            ("CmkRotator.account_update_failed", failed.version)
        ]


class TestSweepAlerts:
    """A sweep alerts what needs a human, and only that."""

    async def test_unreadable_key_alerts_once_naming_its_accounts(self, rig: Rig) -> None:
        """The app lost access to an allow-listed key: one key_unreadable alert listing the
        accounts, on every sweep still one; an account's Failed state is still reported."""
        estate = rig.estate
        version = estate.version(estate.kv, key="lost")
        first = estate.account("acct-u1", estate.kv, version.version, key="lost")
        second = estate.account("acct-u2", estate.kv, version.version, key="lost")
        second.provisioning_state = "Failed"
        estate.sandbox.faults.add(
            host=f"{estate.kv.name}.vault.azure.net", path="/keys/lost", status=403
        )

        report = await sweep(rig.engine)
        await sweep(rig.engine)

        unreadable = rig.alerts("key_unreadable")
        assert len(unreadable) == 1
        cause = unreadable[0]["data"]["cause"]
        assert first.name in cause and second.name in cause
        kinds = {(f.subject.rsplit("/", 1)[-1], f.kind) for f in report.findings}
        assert ("acct-u2", "update_failed") in kinds
        assert rig.alerts("account_update_failed")

    @pytest.mark.parametrize("status", [403, 404])
    async def test_key_lost_after_fan_out_alerts_once_for_the_key(
        self, rig: Rig, status: int
    ) -> None:
        """The app loses the key (403: its role taken away; 404: the key deleted) after a
        new version fanned out, and the jobs run on another instance (nothing cached):
        one key_unreadable alert for the key — not one account_update_failed per account —
        which the sweeps that follow do not repeat; once the key is back, a sweep closes
        it and moves every account."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        accounts = [estate.account(f"acct-k{i}", estate.kv, old.version) for i in range(4)]
        new = estate.version(estate.kv)
        event = estate.event(KeyEventType.NEW_VERSION, estate.kv, new)
        assert (await on_new_version(rig.engine, event)).enqueued == len(accounts)
        rig.engine.keys.forget(KeyId(estate.kv.url, "cmk"))  # another instance's worker
        rule = estate.sandbox.faults.add(
            host=f"{estate.kv.name}.vault.azure.net", path="/keys/cmk", status=status
        )

        reports = await rig.drain()
        alerted_by_jobs = rig.alerts()  # before any sweep, which would raise it too
        rows = [row for a in accounts for row in await rig.ledger(a)]
        await sweep(rig.engine)
        await sweep(rig.engine)

        assert [a["type"] for a in alerted_by_jobs] == ["CmkRotator.key_unreadable"]
        assert [row.state for row in rows] == [LedgerState.FAILED] * len(accounts)
        assert all((row.cause or "").startswith(KEY_UNREADABLE_CAUSE) for row in rows), rows
        assert [report.result for report in reports] == [JobResult.FAILED] * len(accounts)
        assert [alert["type"] for alert in rig.alerts()] == ["CmkRotator.key_unreadable"]
        [alert] = rig.alerts()
        assert alert["subject"].endswith("/keys/cmk")
        assert f"HTTP {status}" in alert["data"]["cause"]
        rig.check_invariants()
        await rig.check_ledger()

        estate.sandbox.faults.remove(rule)
        await sweep(rig.engine)
        await rig.drain()

        assert [a.encryption.key_version for a in accounts] == [new.version] * len(accounts)
        assert await rig.engine.alerts.open_alerts() == set()
        assert len(rig.alerts()) == 1
        rig.check_invariants()
        await rig.check_ledger()

    async def test_stale_binding_moved_by_the_run_is_not_alerted(self, rig: Rig) -> None:
        """A binding stale for longer than the grace period, first seen by this sweep, is
        moved, not alerted; one whose move was planned and never finished (nor failed)
        for longer than the grace period is alerted (binding_stale) once."""
        estate = rig.estate
        now = estate.world.clock.now()
        old = estate.version(estate.kv, created=now - timedelta(days=10))
        new = estate.version(estate.kv, created=now - timedelta(days=5))
        moved = estate.account("acct-s1", estate.kv, old.version)
        stuck = estate.account("acct-s2", estate.kv, old.version)
        rule = estate.sandbox.faults.add(
            host="management.azure.com", path="acct-s2", method="PATCH", status=500
        )

        await sweep(rig.engine)
        await _run_each_once(rig)  # acct-s2's job fails once, then its message is lost

        assert moved.encryption.key_version == new.version
        assert stuck.encryption.key_version == old.version
        assert rig.alerts("binding_stale") == []
        estate.world.clock.advance(rig.engine.settings.stale_grace + timedelta(hours=1))
        await sweep(rig.engine)
        await sweep(rig.engine)
        stale = rig.alerts("binding_stale")
        assert [a["subject"].rsplit("/", 1)[-1] for a in stale] == ["acct-s2"]
        assert rig.alerts("account_update_failed") == []
        estate.sandbox.faults.remove(rule)

    async def test_failed_move_is_alerted_once_not_again_as_stale(self, rig: Rig) -> None:
        """A move that failed for good alerts account_update_failed (the worker); sweeps
        past the grace period do not add binding_stale for the same account and target."""
        estate = rig.estate
        now = estate.world.clock.now()
        old = estate.version(estate.kv, created=now - timedelta(days=10))
        estate.version(estate.kv, created=now - timedelta(days=5))
        estate.account("acct-f2", estate.kv, old.version)
        estate.sandbox.faults.add(
            host="management.azure.com", path="acct-f2", method="PATCH", status=500
        )

        await sweep(rig.engine)
        await rig.drain()  # five deliveries, then the poison alert
        estate.world.clock.advance(rig.engine.settings.stale_grace + timedelta(hours=1))
        await sweep(rig.engine)
        await rig.drain()

        assert [a["type"] for a in rig.alerts()] == ["CmkRotator.account_update_failed"]

    async def test_routine_urgent_move_alerts_nobody(self, rig: Rig) -> None:
        """An account on a version expiring within the margin, with a valid newer one: the
        sweep moves it and nobody is alerted (the move repairs it). One on a disabled
        version is alerted (critical: it may be failing now), and moved."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(estate.kv, expires=now + timedelta(days=5))
        disabled = estate.version(estate.kv, enabled=False)
        estate.world.clock.advance(timedelta(minutes=1))
        newest = estate.version(estate.kv)
        routine = estate.account("acct-e1", estate.kv, expiring.version)
        broken = estate.account("acct-e2", estate.kv, disabled.version)

        await sweep(rig.engine)
        await rig.drain()

        assert routine.encryption.key_version == newest.version
        assert broken.encryption.key_version == newest.version
        alerts = [(a["type"], a["subject"].rsplit("/", 1)[-1]) for a in rig.alerts()]
        assert alerts == [("CmkRotator.binding_unsafe", "acct-e2")]
        assert rig.alerts("binding_unsafe")[0]["data"]["severity"] == "critical"

    async def test_missing_identity_alerts_once_and_queues_nothing(self, rig: Rig) -> None:
        """A stale account with no identity that can use the key: the sweep alerts
        identity_missing naming the move's target and queues no job bound to fail; the
        worker's own failure of that move (a job already queued) does not alert again."""
        estate = rig.estate
        old = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        new = estate.version(estate.kv)
        account = estate.account("acct-i", estate.kv, old.version)
        account.identity.system = None
        job = RotationJob(
            AccountId.parse(account.resource_id),
            KeyId(estate.kv.url, "cmk", new.version),
            trigger="test",
        )

        report = await sweep(rig.engine)
        assert report.enqueued == 0
        assert (await rotate_account(rig.engine, job)).result is JobResult.FAILED

        alerts = rig.alerts()
        assert [a["type"] for a in alerts] == ["CmkRotator.identity_missing"]
        assert alerts[0]["data"]["toVersion"] == new.version


class TestKeyAlerts:
    """A key-level alert means the key needs a human now: raised once, closed when it
    clears, raised again if it comes back; never for a vault that is only busy."""

    async def test_throttled_or_unavailable_vault_is_not_unreadable(self, rig: Rig) -> None:
        """A 429 or 503 on the key is reported by the sweep, not alerted; a 403 later is."""
        estate = rig.estate
        version = estate.version(estate.kv, key="busy")
        estate.account("acct-b", estate.kv, version.version, key="busy")
        host = f"{estate.kv.name}.vault.azure.net"
        for status in (429, 503):
            rule = estate.sandbox.faults.add(host=host, path="/keys/busy", status=status)
            report = await sweep(rig.engine)
            estate.sandbox.faults.remove(rule)
            assert report.errors and rig.alerts() == []
        rule = estate.sandbox.faults.add(host=host, path="/keys/busy", status=403)
        await sweep(rig.engine)
        assert len(rig.alerts("key_unreadable")) == 1

    async def test_a_vault_unreachable_for_an_hour_is_alerted_once(self, rig: Rig) -> None:
        """A deleted vault's host name stops resolving: every request fails to connect,
        as in an outage. Not alerted at once (the next sweep may read it); unreadable on
        every sweep for an hour, it is alerted once, naming since when and its accounts;
        read again, the alert closes and the count starts over."""
        estate = rig.estate
        version = estate.version(estate.kv, key="gone")
        account = estate.account("acct-g", estate.kv, version.version, key="gone")
        host = f"{estate.kv.name}.vault.azure.net"
        rule = estate.sandbox.faults.add(host=host, path="/keys/gone", drop=True)
        clock = estate.world.clock

        await sweep(rig.engine)
        clock.advance(UNREADABLE_GRACE / 2)
        await sweep(rig.engine)
        assert rig.alerts("key_unreadable") == []
        clock.advance(UNREADABLE_GRACE / 2)
        await sweep(rig.engine)
        await sweep(rig.engine)

        [alert] = rig.alerts("key_unreadable")
        assert "unreadable on every sweep since" in alert["data"]["cause"]
        assert account.name in alert["data"]["cause"]
        estate.sandbox.faults.remove(rule)
        await sweep(rig.engine)
        assert await rig.engine.ledger.unreadable_keys() == {}
        assert await rig.engine.alerts.open_subjects() == set()

    async def test_unreadable_key_is_closed_when_read_and_alerted_again(self, rig: Rig) -> None:
        """Access lost: one alert. Restored: the sweep reads the key and closes it. Lost
        again: alerted again (a second alert, not swallowed by the first)."""
        estate = rig.estate
        version = estate.version(estate.kv, key="flaky")
        estate.account("acct-k", estate.kv, version.version, key="flaky")
        host = f"{estate.kv.name}.vault.azure.net"

        rule = estate.sandbox.faults.add(host=host, path="/keys/flaky", status=403)
        await sweep(rig.engine)
        estate.sandbox.faults.remove(rule)
        await sweep(rig.engine)
        assert len(rig.alerts("key_unreadable")) == 1
        rule = estate.sandbox.faults.add(host=host, path="/keys/flaky", status=403)
        await sweep(rig.engine)
        await sweep(rig.engine)

        assert len(rig.alerts("key_unreadable")) == 2

    async def test_rejected_version_alert_closes_once_a_valid_version_is_newest(
        self, rig: Rig
    ) -> None:
        """version_rejected stays open while the newest version is rejected (sweeps do not
        close it); once a valid version is the newest, the next sweep closes it."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(estate.kv, size=4096, expires=now + timedelta(days=10))
        estate.account("acct-v", estate.kv, expiring.version)
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)
        await on_near_expiry(rig.engine, event)
        assert len(rig.alerts("version_rejected")) == 1
        key = str(KeyId(estate.kv.url, "cmk")).lower()

        await sweep(rig.engine)
        assert key in await rig.engine.alerts.open_subjects()
        estate.world.clock.advance(timedelta(minutes=1))
        estate.version(estate.kv)  # a human creates a valid version
        await sweep(rig.engine)

        open_now = await rig.engine.alerts.open_subjects()
        assert key not in open_now
        assert len(rig.alerts("version_rejected")) == 1

    async def test_near_expiry_alert_stays_until_a_lasting_successor(self, rig: Rig) -> None:
        """The event handler alerts a version expiring in 20 days with rotation off; a
        sweep with a 7-day margin does not raise it itself, and must not close it either:
        no successor exists. A valid version that outlives the notice window closes it."""
        estate = rig.estate
        now = estate.world.clock.now()
        expiring = estate.version(estate.kv, expires=now + timedelta(days=20))
        estate.account("acct-n", estate.kv, expiring.version)
        settings = replace(
            rig.engine.settings, rotate_on_near_expiry=False, expiry_margin=timedelta(days=7)
        )
        engine = replace(rig.engine, settings=settings)
        event = estate.event(KeyEventType.NEAR_EXPIRY, estate.kv, expiring)
        await on_near_expiry(engine, event)
        assert len(rig.alerts("key_near_expiry_unrotated")) == 1
        key = str(KeyId(estate.kv.url, "cmk")).lower()

        await sweep(engine)
        assert key in await engine.alerts.open_subjects()
        estate.world.clock.advance(timedelta(minutes=1))
        estate.version(estate.kv, expires=now + timedelta(days=365))
        await sweep(engine)
        assert key not in await engine.alerts.open_subjects()


async def _run_each_once(rig: Rig) -> None:
    """Run every queued job once, then lose the queue (as a host that died would leave
    it, with the messages' deliveries spent): a transient failure stays on the ledger."""
    for job in await rig.queued():
        with contextlib.suppress(TransientError):
            await rotate_account(rig.engine, job)
    await rig.services.jobs.client.clear_messages()


class TestIndependentAlerts:
    """One alert that cannot be published never cancels or loses another."""

    async def test_pending_alert_is_delivered_by_the_next_sweep(self, rig: Rig) -> None:
        """With the topic down, a sweep's alerts are recorded pending (none lost, no
        error); the next sweep delivers each exactly once."""
        estate = rig.estate
        version = estate.version(estate.kv, enabled=False)
        estate.account("acct-p1", estate.kv, version.version)
        estate.account("acct-p2", estate.kv, version.version)
        rule = estate.sandbox.faults.add(host=rig.topic.host, status=503)

        first = await sweep(rig.engine)

        assert first.alerts and rig.alerts() == []
        estate.sandbox.faults.remove(rule)
        await sweep(rig.engine)
        delivered = rig.alerts()
        assert len(delivered) == len(first.alerts)
        await sweep(rig.engine)
        assert len(rig.alerts()) == len(delivered)
        rig.check_invariants()

    async def test_a_repair_does_not_swallow_an_undelivered_failure(self, rig: Rig) -> None:
        """The move to v2 fails permanently while the topic is down (its alert pending);
        then the account moves to v3. The v2 failure still reaches the topic, once — a
        success closes sent alerts, never one still waiting for delivery."""
        estate = rig.estate
        old = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        failing = estate.version(estate.kv)
        account = estate.account("acct-s", estate.kv, old.version)
        account_id = AccountId.parse(account.resource_id)
        down = estate.sandbox.faults.add(host=rig.topic.host, status=503)
        account.provisioning_state = "Failed"
        job = RotationJob(account_id, KeyId(estate.kv.url, "cmk", failing.version), trigger="t")
        assert (await rotate_account(rig.engine, await handed_verify(rig, job))).result is (
            JobResult.FAILED
        )
        account.provisioning_state = "Succeeded"
        estate.world.clock.advance(timedelta(minutes=1))
        newest = estate.version(estate.kv)
        moved = RotationJob(account_id, KeyId(estate.kv.url, "cmk", newest.version), trigger="t")
        assert (await rotate_account(rig.engine, moved)).result is JobResult.SUCCEEDED
        estate.sandbox.faults.remove(down)

        await sweep(rig.engine)
        await sweep(rig.engine)

        delivered = [(a["type"], a["data"]["toVersion"]) for a in rig.alerts()]
        assert delivered == [("CmkRotator.account_update_failed", failing.version)]
        assert await rig.engine.alerts.open_subjects() == set()  # closed once it was sent


class TestLeftoverRows:
    """Rows an interrupted `cmk rotate` (or a lost job) leaves planned are closed by the
    next sweep from what ARM shows, so no version counts as in flight for ever."""

    async def test_sweep_closes_rows_whose_move_is_over(self, rig: Rig) -> None:
        estate = rig.estate
        old = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        newest = estate.version(estate.kv)
        on_newest = estate.account("acct-l1", estate.kv, newest.version)
        key = KeyId(estate.kv.url, "cmk")
        now = estate.world.clock.now()

        def planned(version: str) -> LedgerEntry:
            return LedgerEntry(
                AccountId.parse(on_newest.resource_id),
                key,
                version,
                None,
                LedgerState.PLANNED,
                1,
                None,
                "cli:rotate",
                now,
                now,
            )

        await rig.engine.ledger.record(planned(old.version))  # a move the account passed
        await rig.engine.ledger.record(planned(newest.version))  # landed, never recorded
        before = await key_versions(rig.engine, key)
        assert next(v for v in before.versions if v.version == old.version).in_flight

        await sweep(rig.engine)

        states = {e.to_version: e.state for e in await rig.ledger(on_newest)}
        assert states == {old.version: LedgerState.SKIPPED, newest.version: LedgerState.SUCCEEDED}
        after = await key_versions(rig.engine, key)
        assert all(v.in_flight == () for v in after.versions)
        rig.check_invariants()

    async def test_a_failed_row_of_an_update_that_landed_is_closed(self, rig: Rig) -> None:
        """A job gave up (FAILED, alerted) because ARM could not verify its update; the
        update landed. The next sweep records the row succeeded (ledger == ARM) and closes
        the alert; a failed row of a version the account is not on stays failed."""
        estate = rig.estate
        failed_elsewhere = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        newest = estate.version(estate.kv)
        account = estate.account("acct-l3", estate.kv, newest.version)
        account_id = AccountId.parse(account.resource_id)
        key = KeyId(estate.kv.url, "cmk")
        now = estate.world.clock.now()
        for version in (failed_elsewhere.version, newest.version):
            await rig.engine.ledger.record(
                LedgerEntry(
                    account_id,
                    key,
                    version,
                    None,
                    LedgerState.FAILED,
                    5,
                    "the job exhausted its retries",
                    "event",
                    now,
                    now,
                )
            )
        await rig.engine.alerts.raise_alert(
            alerting.update_failed(account_id, key, newest.version, "the job exhausted its retries")
        )

        await sweep(rig.engine)

        states = {e.to_version: e.state for e in await rig.ledger(account)}
        assert states == {
            failed_elsewhere.version: LedgerState.FAILED,
            newest.version: LedgerState.SUCCEEDED,
        }
        assert await rig.engine.alerts.open_subjects() == set()
        rig.check_invariants()

    async def test_rows_of_unknown_or_newer_versions_and_rows_written_meanwhile_stay(
        self, rig: Rig
    ) -> None:
        """A row for a version the sweep cannot place (not in Key Vault: created since it
        read the key, or gone) is left alone; a row a worker writes while the sweep runs
        keeps the worker's state (the sweep's write is conditional on what it read)."""
        estate = rig.estate
        newest = estate.version(estate.kv)
        account = estate.account("acct-l2", estate.kv, newest.version)
        key = KeyId(estate.kv.url, "cmk")
        account_id = AccountId.parse(account.resource_id)
        now = estate.world.clock.now()
        unknown, landed = "f" * 32, newest.version
        for version in (unknown, landed):
            await rig.engine.ledger.record(
                LedgerEntry(
                    account_id, key, version, None, LedgerState.PLANNED, 1, None, "event", now, now
                )
            )
        ledger = rig.engine.ledger

        class WorkerFinishesMeanwhile:
            def __getattr__(self, name: str) -> Any:
                return getattr(ledger, name)

            async def iter_history(self, *args: Any, **kwargs: Any) -> Any:
                async for entry in ledger.iter_history(*args, **kwargs):
                    yield entry
                row = await ledger.get(account_id, landed)
                assert row is not None
                await ledger.record(
                    replace(row, state=LedgerState.SUCCEEDED, cause="the worker's", updated=now)
                )

        await sweep(replace(rig.engine, ledger=WorkerFinishesMeanwhile()))

        rows = {e.to_version: e for e in await rig.ledger(account)}
        assert rows[unknown].state is LedgerState.PLANNED
        assert (rows[landed].state, rows[landed].cause) == (LedgerState.SUCCEEDED, "the worker's")


class TestCancelledJobs:
    """A job cancelled (Ctrl-C of `cmk sweep`, a host stopping) leaves no write lease."""

    async def test_cancelled_while_taking_the_lease_gives_it_back(self, rig: Rig) -> None:
        """The lease's insert landed, then the job was cancelled before it heard so: the
        lease is released, and the next job for the account runs at once."""
        estate = rig.estate
        old = estate.version(estate.kv)
        estate.world.clock.advance(timedelta(minutes=1))
        new = estate.version(estate.kv)
        account = estate.account("acct-c", estate.kv, old.version)
        job = RotationJob(
            AccountId.parse(account.resource_id),
            KeyId(estate.kv.url, "cmk", new.version),
            trigger="test",
        )
        ledger = rig.engine.ledger

        class CancelledAfterInsert:
            def __getattr__(self, name: str) -> Any:
                return getattr(ledger, name)

            async def acquire_lease(self, *args: Any, **kwargs: Any) -> Any:
                await ledger.acquire_lease(*args, **kwargs)
                raise asyncio.CancelledError

        cancelled = replace(rig.engine, ledger=CancelledAfterInsert())
        with pytest.raises(asyncio.CancelledError):
            await rotate_account(cancelled, job)

        assert (await rotate_account(rig.engine, job)).result is JobResult.SUCCEEDED
        assert account.encryption.key_version == new.version
