"""rotate_account and on_poison: the per-account step machine against sandbox ARM."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from usecase_rig import SUB_B, Rig, verify_job

from cmk.adapters.jobqueue import decode_job
from cmk.errors import AccountBusy, ServiceUnavailable, TransientError
from cmk.keyid import KeyId
from cmk.ports import JobStep, LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import rp_for
from cmk.sandbox.world import AccountState, KeyVersionState, VaultState
from cmk.settings import Settings
from cmk.usecases import JobResult, on_poison, rotate_account


def _job(account: AccountState, vault: VaultState, version: KeyVersionState) -> RotationJob:
    return RotationJob(
        account_id=AccountId.parse(account.resource_id),
        target=KeyId(vault.url, "cmk", version.version),
        trigger="test",
        from_version=account.encryption.key_version,
    )


def _pair(
    rig: Rig, **account_options: object
) -> tuple[AccountState, KeyVersionState, KeyVersionState]:
    estate = rig.estate
    old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
    account = estate.account("acct-w", estate.kv, old.version, **account_options)  # type: ignore[arg-type]
    return account, old, estate.version(estate.kv)


def _timeout(settings: Settings, seconds: float) -> Settings:
    return replace(settings, update_timeout=timedelta(seconds=seconds))


async def _finish(rig: Rig, account: AccountState) -> None:
    """End the account's held update (seeded with ``lro_seconds=math.inf``) in ARM, and
    check through the SDK that ARM reports it finished."""
    rp_for(rig.world).finish_now(account.resource_id)
    record = await rig.engine.accounts.get(AccountId.parse(account.resource_id))
    assert record.provisioning_state == "Succeeded", record.provisioning_state


class TestRotateAccount:
    async def test_moves_the_account_and_records_success(self, rig: Rig) -> None:
        """A ROTATE job PATCHes keyVersion only and records SUCCEEDED with one attempt."""
        account, old, new = _pair(rig, user_assigned=True)
        client_id = account.encryption.identity_client_id

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.SUCCEEDED
        assert account.encryption.key_version == new.version
        assert account.encryption.identity_client_id == client_id
        [entry] = await rig.ledger(account)
        assert (entry.state, entry.attempts, entry.from_version) == (
            LedgerState.SUCCEEDED,
            1,
            old.version,
        )

    async def test_running_twice_is_harmless(self, rig: Rig) -> None:
        """The same job run again finds the account on target and PATCHes nothing."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        await rotate_account(rig.engine, job)
        patches = len(rig.estate.sandbox.counters.matching(method="PATCH"))

        again = await rotate_account(rig.engine, job)

        assert again.result is JobResult.SUCCEEDED
        assert len(rig.estate.sandbox.counters.matching(method="PATCH")) == patches
        assert len(account.binding_history) == 2

    async def test_two_workers_on_the_same_job_at_once(self, rig: Rig) -> None:
        """Two concurrent runs (a slow update) end with one move and a consistent ledger."""
        account, _, new = _pair(rig, lro_seconds=0.5)
        job = _job(account, rig.estate.kv, new)

        results = await asyncio.gather(
            rotate_account(rig.engine, job), rotate_account(rig.engine, job), return_exceptions=True
        )
        for result in results:  # a loser that met 409 is retried by the queue
            if isinstance(result, TransientError):
                await rig.engine.jobs.enqueue(job)
            else:
                assert not isinstance(result, BaseException), result
        await rig.drain()

        assert account.encryption.key_version == new.version
        assert len(account.binding_history) == 2
        [entry] = await rig.ledger(account)
        assert entry.state is LedgerState.SUCCEEDED
        rig.check_invariants()
        await rig.check_ledger()

    async def test_crash_between_patch_and_record_then_resume(self, rig: Rig) -> None:
        """A PATCH that was never recorded (the worker died) is finished by the rerun."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        record = await rig.engine.accounts.get(job.account_id)
        await rig.engine.accounts.update_key_version(record, new.version, wait=timedelta(0))
        assert await rig.ledger(account) == []

        report = await rotate_account(rig.engine, job)
        await rig.drain()

        assert report.result in (JobResult.SUCCEEDED, JobResult.SUBMITTED)
        [entry] = await rig.ledger(account)
        assert entry.state is LedgerState.SUCCEEDED
        assert [v for _, v in account.binding_history][-1] == new.version
        await rig.check_ledger()

    async def test_slow_update_is_submitted_and_verified_later(self, rig: Rig) -> None:
        """An update longer than the wait bound records SUBMITTED and queues a VERIFY job."""
        account, _, new = _pair(rig, lro_seconds=math.inf)  # runs until _finish ends it
        engine = rig.engine
        fast = replace(engine, settings=_timeout(engine.settings, 0.1))

        report = await rotate_account(fast, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.SUBMITTED
        assert [j.step for j in await rig.queued()] == [JobStep.VERIFY]
        assert (await rig.ledger(account))[0].state is LedgerState.SUBMITTED
        await _finish(rig, account)
        assert [r.result for r in await rig.drain()] == [JobResult.SUCCEEDED]
        assert account.encryption.key_version == new.version
        await rig.check_ledger()

    async def test_never_moves_backwards(self, rig: Rig) -> None:
        """A job for an older version than the bound one is SKIPPED without a PATCH."""
        account, old, new = _pair(rig)
        account.encryption.key_version = new.version

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, old))

        assert report.result is JobResult.SKIPPED
        assert account.encryption.key_version == new.version
        assert rig.estate.sandbox.counters.matching(method="PATCH") == []

    async def test_identity_without_access_fails_once_with_one_alert(self, rig: Rig) -> None:
        """No key access for the identity: FAILED, one IDENTITY_MISSING alert, even twice."""
        account, old, new = _pair(rig, grant=False, sub=SUB_B)
        job = _job(account, rig.estate.kv, new)

        first = await rotate_account(rig.engine, job)
        second = await rotate_account(rig.engine, job)

        assert first.result is second.result is JobResult.FAILED
        assert "KeyVaultAccessDenied" in (first.cause or "")
        assert len(rig.alerts("identity_missing")) == 1
        [entry] = await rig.ledger(account)
        assert (entry.state, entry.attempts) == (LedgerState.FAILED, 2)
        assert account.encryption.key_version == old.version
        rig.check_invariants()
        await rig.check_ledger()

    async def test_rejected_target_is_skipped_when_the_account_is_fine(self, rig: Rig) -> None:
        """A target disabled after planning is re-validated and not bound; the account's own
        version is still valid, so nothing needs a human: SKIPPED, no PATCH, no alert."""
        account, old, new = _pair(rig)
        new.enabled = False

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.SKIPPED and "disabled" in (report.cause or "")
        assert old.version in (report.cause or "")
        assert rig.estate.sandbox.counters.matching(method="PATCH") == []
        assert rig.alerts() == []

    async def test_rejected_target_fails_when_the_account_is_not_fine(self, rig: Rig) -> None:
        """A disabled target and an account on a version that is not valid either (here
        disabled too): FAILED with the policy's reason and alerted once, never bound."""
        account, old, new = _pair(rig)
        new.enabled = False
        old.enabled = False

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.FAILED and "disabled" in (report.cause or "")
        assert rig.estate.sandbox.counters.matching(method="PATCH") == []
        assert len(rig.alerts("account_update_failed")) == 1

    async def test_superseded_rejected_target_is_skipped_without_alert(self, rig: Rig) -> None:
        """A stale job whose target was disabled after a newer valid version appeared is
        SKIPPED as superseded: no PATCH, no alert (the newer version's job moves it)."""
        account, _, new = _pair(rig)
        newer = rig.estate.version(rig.estate.kv)
        new.enabled = False

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.SKIPPED
        assert "superseded" in (report.cause or "") and newer.version in (report.cause or "")
        assert rig.estate.sandbox.counters.matching(method="PATCH") == []
        assert rig.alerts("account_update_failed") == []

    async def test_duplicate_job_during_own_update_waits_for_its_verify(self, rig: Rig) -> None:
        """The run whose update is still running hands its write lease on to its VERIFY
        job: a second job for the same target is deferred (AccountBusy, not a failed
        delivery) until that verify settles, then finds the account on the target."""
        account, _, new = _pair(rig, lro_seconds=math.inf)  # runs until _finish ends it
        engine = rig.engine
        fast = replace(engine, settings=_timeout(engine.settings, 0.1))
        job = _job(account, rig.estate.kv, new)
        assert (await rotate_account(fast, job)).result is JobResult.SUBMITTED
        [verify] = await rig.queued()
        assert verify.step is JobStep.VERIFY and verify.lease_owner is not None

        with pytest.raises(AccountBusy):
            await rotate_account(fast, job)

        await _finish(rig, account)
        assert {r.result for r in await rig.drain()} == {JobResult.SUCCEEDED}
        duplicate = await rotate_account(fast, job)
        assert (duplicate.result, duplicate.cause) == (JobResult.SUCCEEDED, "already on target")
        assert account.encryption.key_version == new.version
        assert len(rig.estate.sandbox.counters.matching(method="PATCH")) == 1  # one update
        await rig.check_ledger()

    async def test_the_row_keeps_where_the_move_started_and_who_made_it(self, rig: Rig) -> None:
        """A move settled by its VERIFY keeps the version it started from (not the
        target, which the account shows by then), and a later job for the same target —
        another producer's, a duplicate — finds it done and leaves the row as it is: its
        trigger and start stay those of the run that moved the account."""
        account, old, new = _pair(rig, lro_seconds=math.inf)
        fast = replace(rig.engine, settings=_timeout(rig.engine.settings, 0.1))
        first = replace(_job(account, rig.estate.kv, new), trigger="cli:rotate")
        assert (await rotate_account(fast, first)).result is JobResult.SUBMITTED
        await _finish(rig, account)
        assert {r.result for r in await rig.drain()} == {JobResult.SUCCEEDED}
        later = replace(first, trigger="event:new-version", from_version=None)

        assert (await rotate_account(rig.engine, later)).result is JobResult.SUCCEEDED

        [entry] = await rig.ledger(account)
        assert (entry.state, entry.from_version, entry.trigger) == (
            LedgerState.SUCCEEDED,
            old.version,
            "cli:rotate",
        )

    async def test_failed_update_on_a_now_rejected_target_is_not_retried(self, rig: Rig) -> None:
        """An account left Failed on its target is re-validated before any new PATCH: a
        target disabled meanwhile fails the job instead of being sent again."""
        account, _, new = _pair(rig)
        account.encryption.key_version = new.version
        account.provisioning_state = "Failed"
        new.enabled = False

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.FAILED and "disabled" in (report.cause or "")
        assert rig.estate.sandbox.counters.matching(method="PATCH") == []

    async def test_vault_removed_from_the_allow_list_stops_queued_jobs(self, rig: Rig) -> None:
        """A job queued before its vault left CMK_VAULT_ALLOWLIST is skipped, untouched."""
        account, old, new = _pair(rig)
        engine = replace(
            rig.engine, settings=replace(rig.engine.settings, vault_allowlist=frozenset())
        )

        report = await rotate_account(engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.SKIPPED and "ALLOWLIST" in (report.cause or "")
        assert account.encryption.key_version == old.version
        assert rig.estate.sandbox.counters.matching(method="PATCH") == []

    async def test_account_gone_fails_with_alert(self, rig: Rig) -> None:
        """A deleted account is a permanent failure: ledger FAILED and one alert."""
        account, _, new = _pair(rig)
        del rig.world.accounts[account.resource_id.lower()]

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.FAILED
        assert len(rig.alerts("account_update_failed")) == 1

    async def test_server_errors_propagate_for_a_retry(self, rig: Rig) -> None:
        """A 503 on every PATCH try raises a TransientError; the retried job succeeds."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        rule = rig.estate.sandbox.faults.add(
            host="management.azure.com", method="PATCH", status=503
        )

        with pytest.raises(TransientError):
            await rotate_account(rig.engine, job)
        rig.estate.sandbox.faults.remove(rule)
        report = await rotate_account(rig.engine, job)

        assert report.result is JobResult.SUCCEEDED
        assert (await rig.ledger(account))[0].attempts == 2

    async def test_verify_of_finished_update_succeeds(self, rig: Rig) -> None:
        """A VERIFY job for an account already on target records SUCCEEDED."""
        account, _, new = _pair(rig)
        account.encryption.key_version = new.version

        report = await rotate_account(rig.engine, verify_job(_job(account, rig.estate.kv, new)))

        assert report.result is JobResult.SUCCEEDED


class TestOnPoison:
    async def test_exhausted_job_becomes_failure_and_alert(self, rig: Rig) -> None:
        """A poisoned job records FAILED 'exhausted its retries' and alerts once."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)

        report = await on_poison(rig.engine, job)
        await on_poison(rig.engine, job)

        assert report.result is JobResult.FAILED and (report.cause or "").startswith(
            "the job exhausted its retries"
        )
        assert len(rig.alerts("account_update_failed")) == 1
        await rig.check_ledger()

    async def test_poison_after_success_changes_nothing(self, rig: Rig) -> None:
        """A job poisoned after its update succeeded leaves the SUCCEEDED row alone."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        await rotate_account(rig.engine, job)

        report = await on_poison(rig.engine, job)

        assert report.result is JobResult.SKIPPED
        assert (await rig.ledger(account))[0].state is LedgerState.SUCCEEDED
        assert rig.alerts() == []

    async def test_poison_of_an_update_that_landed_records_success(self, rig: Rig) -> None:
        """The PATCH was applied, but every status poll and read failed until the job
        was poisoned; by then ARM answers: the account is on the target, Succeeded. The
        poison handler's last read records SUCCEEDED and alerts nothing."""
        account, _, new = _pair(rig, lro_seconds=math.inf)
        job = _job(account, rig.estate.kv, new)
        faults = rig.estate.sandbox.faults
        polls = faults.add(host="management.azure.com", path="/operationStatuses/", status=500)
        submitted = await rotate_account(rig.engine, job)  # PATCH accepted, its polls fail
        assert submitted.result is JobResult.SUBMITTED  # verified later, under the lease
        reads = faults.add(host="management.azure.com", path=account.name, method="GET", status=503)
        [queued] = [m async for m in rig.services.jobs.client.receive_messages()]
        verify = decode_job(queued.content)  # the VERIFY, carrying the lease
        assert verify.step is JobStep.VERIFY and verify.lease_owner is not None
        with pytest.raises(TransientError):
            await rotate_account(rig.engine, verify)  # and every read of the verify fails
        faults.remove(polls)
        faults.remove(reads)
        rp_for(rig.world).finish_now(account.resource_id)  # the update ends meanwhile

        report = await on_poison(rig.engine, verify)

        assert report.result is JobResult.SUCCEEDED
        assert (await rig.ledger(account))[0].state is LedgerState.SUCCEEDED
        assert rig.alerts() == []
        await rig.check_ledger()

    async def test_poison_of_a_move_superseded_meanwhile_alerts_nobody(self, rig: Rig) -> None:
        """The job for an older target ran out of retries while a newer version's job
        moved the account past it: nothing is owed, so the row is SKIPPED and nobody is
        alerted (the next run of that job would have skipped it the same way)."""
        estate = rig.estate
        account, _, middle = _pair(rig)
        estate.world.clock.advance(timedelta(minutes=5))
        newest = estate.version(estate.kv)
        job = _job(account, estate.kv, middle)
        await rotate_account(rig.engine, _job(account, estate.kv, newest))

        report = await on_poison(rig.engine, job)

        assert report.result is JobResult.SKIPPED
        assert f"already on {newest.version}" in (report.cause or "")
        assert {entry.to_version: entry.state for entry in await rig.ledger(account)} == {
            middle.version: LedgerState.SKIPPED,
            newest.version: LedgerState.SUCCEEDED,
        }
        assert rig.alerts() == []
        await rig.check_ledger()

    async def test_poison_of_a_move_still_owed_fails_and_alerts(self, rig: Rig) -> None:
        """The account is still on an older version than the poisoned job's target: the
        move is owed, so FAILED and one alert naming the job's last error."""
        account, old, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        rig.estate.sandbox.faults.add(
            host="management.azure.com", path=account.name, method="PATCH", status=503
        )
        for _ in range(2):
            with pytest.raises(TransientError):
                await rotate_account(rig.engine, job)

        report = await on_poison(rig.engine, job)

        assert report.result is JobResult.FAILED
        assert "exhausted its retries; last error:" in (report.cause or "")
        assert account.encryption.key_version == old.version
        assert len(rig.alerts("account_update_failed")) == 1

    async def test_poison_whose_settling_cannot_be_recorded_is_retried_not_alerted(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The account is on the target, but the SUCCEEDED row cannot be written this
        time (the Table answers 503): the poison delivery fails and is retried — never
        an alert for a move that landed."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        account.encryption.key_version = new.version  # it landed
        ledger = rig.services.ledger
        record = ledger.record
        failing = [True]

        async def unavailable(entry: Any) -> None:
            if failing and failing.pop():
                raise ServiceUnavailable("recording the ledger row: 503 (injected)")
            await record(entry)

        monkeypatch.setattr(ledger, "record", unavailable)
        with pytest.raises(ServiceUnavailable):
            await on_poison(rig.engine, job)
        assert rig.alerts() == []

        report = await on_poison(rig.engine, job)  # the poison queue's retry

        assert report.result is JobResult.SUCCEEDED
        assert rig.alerts() == []
        await rig.check_ledger()

    async def test_poison_while_arm_cannot_answer_fails_and_alerts(self, rig: Rig) -> None:
        """ARM still cannot answer the last read: FAILED and one alert, as before."""
        account, _, new = _pair(rig)
        job = _job(account, rig.estate.kv, new)
        rig.estate.sandbox.faults.add(
            host="management.azure.com", path=account.name, method="GET", status=503
        )

        report = await on_poison(rig.engine, job)

        assert report.result is JobResult.FAILED
        assert len(rig.alerts("account_update_failed")) == 1


class TestCachedVersions:
    """A version disabled after it was cached is never bound."""

    async def test_version_disabled_after_caching_is_refused_and_rechecked(self, rig: Rig) -> None:
        """The target is read (cached), then disabled in Key Vault; the job's PATCH is
        refused by the resource provider (KeyDisabled), the worker forgets the key, reads
        it again and skips the move with the policy's reason: the account never moves, and
        (its own version being valid) nobody is alerted."""
        account, old, new = _pair(rig)
        target = KeyId(rig.estate.kv.url, "cmk", new.version)
        assert (await rig.engine.keys.get_version(target)).enabled  # now cached
        new.enabled = False

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.SKIPPED
        assert "disabled" in (report.cause or "")
        assert account.encryption.key_version == old.version
        assert [v for _, v in account.binding_history] == [old.version]
        assert rig.alerts() == []
        assert len(rig.estate.sandbox.counters.matching(method="PATCH")) == 1  # then refused

    async def test_version_missing_from_a_readable_key_is_the_jobs_failure(self, rig: Rig) -> None:
        """A job for a version the key does not have (the key itself readable): the job's
        own failure (account_update_failed naming the 404), not the key's key_unreadable."""
        account, old, _ = _pair(rig)
        job = RotationJob(
            account_id=AccountId.parse(account.resource_id),
            target=KeyId(rig.estate.kv.url, "cmk", "0" * 32),
            trigger="test",
        )

        report = await rotate_account(rig.engine, job)

        assert report.result is JobResult.FAILED
        assert [a["type"] for a in rig.alerts()] == ["CmkRotator.account_update_failed"]
        assert account.encryption.key_version == old.version

    async def test_identity_denied_forgets_the_cached_key(self, rig: Rig) -> None:
        """The PATCH ends Failed for key access (the identity lost its grant after the
        target was cached): the job fails with one identity_missing alert, and what was
        cached of the key is forgotten — the next read of the target goes to Key Vault,
        so a version disabled or deleted meanwhile is not judged from stale memory."""
        account, old, new = _pair(rig, sub=SUB_B)
        target = KeyId(rig.estate.kv.url, "cmk", new.version)
        await rig.engine.keys.get_version(target)  # now cached
        rig.estate.world.revoke(account.identity.system.object_id)
        counters = rig.estate.sandbox.counters
        vault_host = f"*.{rig.estate.kv.url.split('.', 1)[1].rstrip('/')}"

        report = await rotate_account(rig.engine, _job(account, rig.estate.kv, new))

        assert report.result is JobResult.FAILED
        assert "KeyVaultAccessDenied" in (report.cause or "")
        assert len(rig.alerts("identity_missing")) == 1
        assert account.encryption.key_version == old.version
        before = counters.count(host=vault_host, method="GET")
        await rig.engine.keys.get_version(target)
        assert counters.count(host=vault_host, method="GET") > before  # read again
