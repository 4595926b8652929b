"""The verify of a slow update, and alerts that one problem must raise only once.

A job whose update outlasts its wait records SUBMITTED and queues a VERIFY job. These
tests pin down what that verify may conclude: a Failed state or another version is only
its own update's outcome when nobody else wrote in between (the write lease passes to the
VERIFY job), and an update that never landed is tried again, not alerted as a failure.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from datetime import timedelta

import pytest
from usecase_rig import Rig, take_queued, take_verify, verify_job

from cmk.errors import AccountBusy, ServiceUnavailable, ThrottledError, TransientError
from cmk.keyid import KeyId
from cmk.ports import AlertType, JobStep, LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import rp_for
from cmk.sandbox.world import AccountState, KeyEventType, KeyVersionState
from cmk.usecases import JobResult, on_expired, rotate_account, sweep
from cmk.usecases.context import Engine
from cmk.usecases.worker import account_lease_name


def _job(rig: Rig, account: AccountState, version: KeyVersionState) -> RotationJob:
    return RotationJob(
        account_id=AccountId.parse(account.resource_id),
        target=KeyId(rig.estate.kv.url, "cmk", version.version),
        trigger="test",
        from_version=account.encryption.key_version,
    )


def _three(rig: Rig) -> tuple[KeyVersionState, KeyVersionState, KeyVersionState]:
    estate, now = rig.estate, rig.estate.world.clock.now()
    return (
        estate.version(estate.kv, created=now - timedelta(days=2)),
        estate.version(estate.kv, created=now - timedelta(days=1)),
        estate.version(estate.kv),
    )


def _impatient(rig: Rig) -> Engine:
    """The engine with a wait too short for any held update: it records SUBMITTED."""
    settings = replace(rig.engine.settings, update_timeout=timedelta(seconds=0.1))
    return replace(rig.engine, settings=settings)


def _mine(rig: Rig, account: AccountState) -> list[dict[str, object]]:
    return [e for e in rig.alerts() if e["subject"].lower() == account.resource_id.lower()]


async def _throttled_once(rig: Rig, account: AccountState, job: RotationJob) -> None:
    """``job`` runs and ARM answers its PATCH 429 (nothing applied): its row stays
    PLANNED."""
    faults = rig.estate.sandbox.faults
    rule = faults.add(
        host="management.azure.com",
        path=f"/accounts/{account.name}$",
        method="PATCH",
        count=1,
        status=429,
        retry_after=1,
    )
    try:
        with pytest.raises(ThrottledError):
            await rotate_account(rig.engine, job)
    finally:
        faults.remove(rule)


async def _foreign_update(rig: Rig, account: AccountState, version: KeyVersionState) -> None:
    """An update of the account that no job of ours holds a lease for (a person in the
    portal, or a job whose lease ran out): it runs until ``finish_now``."""
    record = await rig.engine.accounts.get(AccountId.parse(account.resource_id))
    await rig.engine.accounts.update_key_version(record, version.version, wait=timedelta(0))
    assert account.provisioning_state == "Updating"


class TestVerifyOwnsTheAccount:
    async def test_later_failure_is_not_blamed_on_a_finished_update(self, rig: Rig) -> None:
        """A's update to v2 lands while A's VERIFY waits in the queue; B (v3) would meet
        an identity that lost access. B waits for A's verify (the lease went on to it), so
        A's move is recorded succeeded and the one real failure — B's — alerts once,
        naming v3. Before, B ran first and A's verify took B's Failed for its own: two
        alerts, and a FAILED row for a move that had succeeded."""
        v1, v2, v3 = _three(rig)
        account = rig.estate.account("acct-v", rig.estate.kv, v1.version, lro_seconds=math.inf)
        assert (await rotate_account(_impatient(rig), _job(rig, account, v2))).result is (
            JobResult.SUBMITTED
        )
        rp_for(rig.world).finish_now(account.resource_id)
        account.lro_seconds = 0.0
        assert account.identity.system is not None
        rig.world.revoke(account.identity.system.object_id)  # the one real problem

        with pytest.raises(AccountBusy):
            await rotate_account(rig.engine, _job(rig, account, v3))
        [verify] = await rig.drain()
        assert (verify.step, verify.result) == (JobStep.VERIFY, JobResult.SUCCEEDED)
        failed = await rotate_account(rig.engine, _job(rig, account, v3))

        assert failed.result is JobResult.FAILED
        alerts = _mine(rig, account)
        assert [a["data"]["toVersion"] for a in alerts] == [v3.version]  # type: ignore[index]
        states = {e.to_version: e.state for e in await rig.ledger(account)}
        assert states == {v2.version: LedgerState.SUCCEEDED, v3.version: LedgerState.FAILED}
        assert (account.encryption.key_version, account.provisioning_state) == (
            v2.version,
            "Failed",
        )
        rig.check_invariants()


class TestVerifyWithoutTheLease:
    """A VERIFY that did not inherit its update's write lease (redelivered after the lease
    ran out, or sent by a producer that hands none on) cannot tell whose update the
    account shows: another writer may have come in between. A Failed end is then not its
    move's failure — no FAILED row, no alert (invariant 4) — and the move is decided
    again by a ROTATE job under a lease of its own."""

    async def test_someone_elses_failed_update_is_not_blamed_on_the_verify(self, rig: Rig) -> None:
        """A's update to v2 outlasts its wait and lands while A's VERIFY is lost; A's lease
        runs out; a portal user's update to v3 then ends Failed. A's verify, redelivered
        late without the lease, records nothing FAILED and alerts nobody: it queues a
        ROTATE (no lease carried), which decides the move again — and alerts nobody
        either, since v2 is in place and valid."""
        v1, v2, v3 = _three(rig)
        account = rig.estate.account("acct-u", rig.estate.kv, v1.version, lro_seconds=math.inf)
        job = _job(rig, account, v2)
        assert (await rotate_account(_impatient(rig), job)).result is JobResult.SUBMITTED
        handed = await take_verify(rig, account)  # the verify that carried the lease: lost
        assert handed.lease_owner is not None
        rp_for(rig.world).finish_now(account.resource_id)  # A's update to v2 lands ...
        assert account.encryption.key_version == v2.version
        rig.world.clock.advance(rig.engine.verify_delay + rig.engine.settings.write_lease_ttl * 3)
        await _foreign_update(rig, account, v3)  # ... a portal user's update to v3 ...
        v3.enabled = False
        rp_for(rig.world).finish_now(account.resource_id)  # ... ends Failed
        assert (account.encryption.key_version, account.provisioning_state) == (
            v2.version,
            "Failed",
        )
        account.lro_seconds = 0.0

        report = await rotate_account(rig.engine, verify_job(job))  # no lease handed on

        assert (report.step, report.result) == (JobStep.VERIFY, JobResult.SUBMITTED), report
        assert _mine(rig, account) == []
        [again] = await take_queued(rig)
        assert (again.step, again.target, again.lease_owner) == (JobStep.ROTATE, job.target, None)
        states = {e.to_version: e.state for e in await rig.ledger(account)}
        assert states == {v2.version: LedgerState.SUBMITTED}  # not FAILED
        decided = await rotate_account(rig.engine, again)
        assert decided.result is not JobResult.FAILED, decided
        assert account.encryption.key_version == v2.version
        assert _mine(rig, account) == []
        states = {e.to_version: e.state for e in await rig.ledger(account)}
        assert LedgerState.FAILED not in states.values(), states
        rig.check_invariants()
        await rig.check_ledger()


class TestUpdateStuck:
    """An update still Updating longer than an update may take (Engine.stuck_after) since
    its job recorded it SUBMITTED needs a human: its verify fails the move once, with an
    alert, instead of queueing itself again forever."""

    async def test_verify_of_an_update_stuck_past_stuck_after_fails_once(self, rig: Rig) -> None:
        """The verify finds the account still Updating past stuck_after: FAILED, the cause
        says stuck, one account_update_failed alert naming v2, nothing queued; the same
        verify redelivered adds nothing."""
        v1, v2, _ = _three(rig)
        account = rig.estate.account("acct-k", rig.estate.kv, v1.version, lro_seconds=math.inf)
        job = _job(rig, account, v2)
        assert (await rotate_account(_impatient(rig), job)).result is JobResult.SUBMITTED
        verify = await take_verify(rig, account)
        rig.world.clock.advance(rig.engine.stuck_after + timedelta(minutes=1))
        assert account.provisioning_state == "Updating"

        report = await rotate_account(rig.engine, verify)

        assert report.result is JobResult.FAILED, report
        assert "stuck" in (report.cause or ""), report
        alerts = _mine(rig, account)
        assert [a["type"] for a in alerts] == [f"CmkRotator.{AlertType.ACCOUNT_UPDATE_FAILED}"]
        assert [a["data"]["toVersion"] for a in alerts] == [v2.version]  # type: ignore[index]
        states = {e.to_version: e.state for e in await rig.ledger(account)}
        assert states == {v2.version: LedgerState.FAILED}
        assert await take_queued(rig) == []  # no verify queued again
        again = await rotate_account(rig.engine, verify)
        assert again.result is JobResult.SKIPPED, again
        assert len(_mine(rig, account)) == 1
        await rig.check_ledger()


class TestUpdateThatNeverLanded:
    """A row can look like an update in flight when no PATCH of this job is running: a
    429 answered the PATCH, or the account was busy with someone else's update. When
    that other update ends on an older version, the verify moves the account on."""

    @pytest.mark.parametrize("why", ["throttled", "busy"])
    async def test_verify_moves_the_account_instead_of_alerting(self, rig: Rig, why: str) -> None:
        v1, v2, v3 = _three(rig)
        account = rig.estate.account("acct-s", rig.estate.kv, v1.version, lro_seconds=math.inf)
        job = _job(rig, account, v3)
        if why == "throttled":  # answered 429: nothing applied, the row stays PLANNED
            await _throttled_once(rig, account, job)
            await _foreign_update(rig, account, v2)
        else:  # the account is Updating (not ours): a transient error, noted on the row
            await _foreign_update(rig, account, v2)
            with pytest.raises(ServiceUnavailable):
                await rotate_account(rig.engine, job)
        [row] = await rig.ledger(account)
        assert row.state is LedgerState.PLANNED

        # Redelivered while the other update runs: the row looks like our own update.
        submitted = await rotate_account(rig.engine, job)
        assert submitted.result is JobResult.SUBMITTED
        now, name = rig.world.clock.now(), account_lease_name(job.account_id)
        probe = await rig.engine.ledger.acquire_lease(name, "probe", now, timedelta(seconds=1))
        assert not probe.granted and submitted.lease_until == probe.expires  # the verify's
        rp_for(rig.world).finish_now(account.resource_id)  # it ends on v2
        account.lro_seconds = 0.0
        reports = await rig.drain()

        # The verify finds the account on v2, which its update never reached: it hands the
        # move back (keeping no lease), and the new job moves the account under a lease of
        # its own.
        assert [(r.step, r.result, r.lease_until) for r in reports] == [
            (JobStep.VERIFY, JobResult.SUBMITTED, None),
            (JobStep.ROTATE, JobResult.SUCCEEDED, None),
        ]
        assert account.encryption.key_version == v3.version
        assert _mine(rig, account) == []
        rig.check_invariants()
        await rig.check_ledger()

    async def test_an_update_that_never_lands_fails_once_after_the_stuck_time(
        self, rig: Rig
    ) -> None:
        """Tried for longer than an update may take (Engine.stuck_after) and still on the
        old version: one alert, naming the target, and no further PATCH."""
        v1, v2, v3 = _three(rig)
        account = rig.estate.account("acct-n", rig.estate.kv, v1.version, lro_seconds=math.inf)
        await _foreign_update(rig, account, v2)
        job = _job(rig, account, v3)
        with pytest.raises(TransientError):
            await rotate_account(rig.engine, job)  # busy: a PLANNED row with the error
        assert (await rotate_account(rig.engine, job)).result is JobResult.SUBMITTED
        rp_for(rig.world).finish_now(account.resource_id)
        rig.world.clock.advance(rig.engine.stuck_after + timedelta(minutes=1))
        patches = len(rig.estate.sandbox.counters.matching(method="PATCH"))

        [report] = await rig.drain()

        assert report.result is JobResult.FAILED
        assert "did not take effect" in (report.cause or "")
        assert len(rig.estate.sandbox.counters.matching(method="PATCH")) == patches
        assert [a["data"]["toVersion"] for a in _mine(rig, account)] == [v3.version]  # type: ignore[index]
        await rig.check_ledger()


class TestAnUpdateNotKnownToBeOurs:
    """A job whose row is PLANNED (its PATCH answered 429, or a crash before the answer)
    finds the account Updating: it waits for that update under its lease, but the
    update's end is not its outcome — a Failed end makes the move decided again, and
    only a failure of this job's own PATCH alerts."""

    async def test_someone_elses_failed_update_is_not_blamed_on_the_job(self, rig: Rig) -> None:
        v1, v2, v3 = _three(rig)
        account = rig.estate.account("acct-a", rig.estate.kv, v1.version, lro_seconds=math.inf)
        job = _job(rig, account, v3)
        await _throttled_once(rig, account, job)  # PLANNED, nothing applied
        await _foreign_update(rig, account, v2)  # a portal user's update to v2 starts
        adopting = await rotate_account(rig.engine, job)
        assert adopting.result is JobResult.SUBMITTED  # waits for it, under its lease
        v2.enabled = False  # that update fails: its version was disabled meanwhile
        rp_for(rig.world).finish_now(account.resource_id)
        account.lro_seconds = 0.0

        reports = await rig.drain()

        assert [(r.step, r.result) for r in reports] == [
            (JobStep.VERIFY, JobResult.SUBMITTED),  # the move is decided again
            (JobStep.ROTATE, JobResult.SUCCEEDED),
        ]
        assert (account.encryption.key_version, account.provisioning_state) == (
            v3.version,
            "Succeeded",
        )
        assert _mine(rig, account) == []
        rig.check_invariants()
        await rig.check_ledger()

    async def test_status_polls_that_fail_keep_the_lease_while_the_update_runs(
        self, rig: Rig
    ) -> None:
        """A's PATCH (v2) is accepted, then every status poll fails: A keeps the lease for
        its verify (it used to give it back while its update ran), so B (v3) waits; A's
        update ends Failed and alerts as A's, naming v2; B then moves the account to v3,
        which closes A's alert. No alert ever names v3."""
        v1, v2, v3 = _three(rig)
        account = rig.estate.account("acct-p", rig.estate.kv, v1.version, lro_seconds=math.inf)
        faults = rig.estate.sandbox.faults
        polls = faults.add(
            host="management.azure.com", path="operationStatuses", method="GET", status=503
        )
        try:
            submitted = await rotate_account(rig.engine, _job(rig, account, v2))
        finally:
            faults.remove(polls)
        assert submitted.result is JobResult.SUBMITTED and submitted.lease_until is not None
        assert account.provisioning_state == "Updating"
        with pytest.raises(AccountBusy):
            await rotate_account(rig.engine, _job(rig, account, v3))
        v2.enabled = False
        rp_for(rig.world).finish_now(account.resource_id)
        account.lro_seconds = 0.0
        [verify] = await rig.drain()
        assert (verify.step, verify.result) == (JobStep.VERIFY, JobResult.FAILED)

        moved = await rotate_account(rig.engine, _job(rig, account, v3))

        assert moved.result is JobResult.SUCCEEDED
        alerts = _mine(rig, account)
        assert [a["data"]["toVersion"] for a in alerts] == [v2.version]  # type: ignore[index]
        assert account.encryption.key_version == v3.version
        rig.check_invariants()
        await rig.check_ledger()


class TestOneAlertPerProblem:
    async def test_expired_binding_alerts_once_between_handler_and_sweep(self, rig: Rig) -> None:
        """KeyExpired alerts key_expired_bound and queues the urgent move; a sweep that
        runs before the move finished sees the same binding (binding_unsafe): one alert
        between them, and the move then succeeds."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        expired = estate.version(
            estate.kv, created=now - timedelta(days=400), expires=now - timedelta(hours=1)
        )
        account = estate.account("acct-x", estate.kv, expired.version)
        newer = estate.version(estate.kv, created=now - timedelta(days=2))

        await on_expired(rig.engine, estate.event(KeyEventType.EXPIRED, estate.kv, expired))
        await sweep(rig.engine)
        await rig.drain()

        assert account.encryption.key_version == newer.version
        assert [a["type"] for a in _mine(rig, account)] == ["CmkRotator.key_expired_bound"]
        rig.check_invariants()

    async def test_expired_binding_without_successor_alerts_once(self, rig: Rig) -> None:
        estate, now = rig.estate, rig.estate.world.clock.now()
        expired = estate.version(
            estate.kv, created=now - timedelta(days=400), expires=now - timedelta(hours=1)
        )
        account = estate.account("acct-y", estate.kv, expired.version)

        await on_expired(rig.engine, estate.event(KeyEventType.EXPIRED, estate.kv, expired))
        await sweep(rig.engine)

        assert len(_mine(rig, account)) == 1
        rig.check_invariants()

    @pytest.mark.parametrize("dated", ["a day apart", "the same second"])
    async def test_an_older_success_leaves_a_newer_failure_open(self, rig: Rig, dated: str) -> None:
        """The move to v3 fails for good (alerted once); a late job then moves the account
        to v2. That success settles v2, not v3: v3's alert stays open, so the sweep's
        retry of v3, failing the same way, does not alert it a second time. Versions dated
        to the same second are ordered as Key Vault does (the current one is the newer),
        not by their version strings."""
        if dated == "a day apart":
            v1, v2, v3 = _three(rig)
        else:
            estate, second = rig.estate, rig.estate.world.clock.now()
            v1 = estate.version(estate.kv, created=second - timedelta(days=2))
            v2 = estate.version(estate.kv, created=second)
            v3 = estate.version(estate.kv, created=second)
            while v3.version > v2.version:  # the case where a string order gets it wrong
                v2, v3 = v3, estate.version(estate.kv, created=second)
        account = rig.estate.account("acct-o", rig.estate.kv, v1.version)
        faults = rig.estate.sandbox.faults

        async def refused(version: KeyVersionState) -> JobResult:
            """The job to ``version``, its PATCH refused by the resource provider."""
            rule = faults.add(
                host="management.azure.com",
                path=f"/accounts/{account.name}$",
                method="PATCH",
                status=400,
                body={"error": {"code": "InvalidKeyVersion", "message": "refused (injected)"}},
                count=1,
            )
            try:
                return (await rotate_account(rig.engine, _job(rig, account, version))).result
            finally:
                faults.remove(rule)
                assert rule.hits == 1

        assert await refused(v3) is JobResult.FAILED
        assert (await rotate_account(rig.engine, _job(rig, account, v2))).result is (
            JobResult.SUCCEEDED
        )
        assert await refused(v3) is JobResult.FAILED
        assert [a["data"]["toVersion"] for a in _mine(rig, account)] == [v3.version]  # type: ignore[index]
        rig.check_invariants()

    async def test_error_line_written_once_when_the_recording_answer_was_lost(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The outbox insert of a failure alert is applied but its answer lost (the
        SDK's retries then fail): the job is redelivered, and the run that delivers the
        pending alert writes its ERROR line — the one the Azure Monitor rules fire on."""
        estate, now = rig.estate, rig.estate.world.clock.now()
        old = estate.version(estate.kv, created=now - timedelta(days=1))
        account = estate.account("acct-l", estate.kv, old.version)
        new = estate.version(estate.kv)
        assert account.identity.system is not None
        estate.world.revoke(account.identity.system.object_id)  # the move fails for good
        ledger = rig.services.ledger
        record_alert = ledger.record_alert
        lost = [True]

        async def answer_lost(*args: object, **kwargs: object) -> object:
            recorded = await record_alert(*args, **kwargs)  # type: ignore[arg-type]
            if lost and lost.pop():
                raise ServiceUnavailable("recording alert: response lost (injected)")
            return recorded

        ledger.record_alert = answer_lost  # type: ignore[method-assign]
        caplog.set_level(logging.INFO, logger="cmk.alerts")
        try:
            with pytest.raises(TransientError):
                await rotate_account(rig.engine, _job(rig, account, new))
            assert (await rotate_account(rig.engine, _job(rig, account, new))).result is (
                JobResult.FAILED
            )
        finally:
            ledger.record_alert = record_alert  # type: ignore[method-assign]

        lines = [r for r in caplog.records if r.getMessage().startswith("cmk alert ")]
        assert len(rig.alerts()) == 1
        assert [r.levelno for r in lines] == [logging.ERROR]
