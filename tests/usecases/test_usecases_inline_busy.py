"""The CLI's inline jobs and another job's write lease: a wait, never a failure.

A job that finds its account's write lease held (another job's update, an interrupted
``cmk rotate`` whose PATCH may still land) waits for it — backing off towards the lease's
expiry, as the queue does — and neither spends deliveries nor alerts. The waits move the
sandbox clock instead of sleeping, so the test is a function of the code alone.
"""

from __future__ import annotations

from datetime import timedelta

from usecase_rig import Rig

from cmk.commands.inline import MAX_BUSY_WAITS, run_jobs
from cmk.keyid import KeyId
from cmk.ports import LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.usecases import JobResult
from cmk.usecases.worker import account_lease_name


class _Count:
    def __init__(self) -> None:
        self.done = self.retries = self.waits = 0

    def advance(self, amount: int = 1) -> None:
        self.done += amount

    def retried(self) -> None:
        self.retries += 1

    def waited(self, until: object = None) -> None:
        self.waits += 1


async def _held_by_another(rig: Rig, account_id: AccountId, ttl: timedelta) -> None:
    grant = await rig.engine.ledger.acquire_lease(
        account_lease_name(account_id), "another-job", rig.world.clock.now(), ttl, purpose="t"
    )
    assert grant.granted


def _setup(rig: Rig) -> tuple[RotationJob, str]:  # the job and its target version
    estate = rig.estate
    old = estate.version(estate.kv)
    estate.world.clock.advance(timedelta(minutes=1))
    new = estate.version(estate.kv)
    account = estate.account("acct-busy", estate.kv, old.version)
    job = RotationJob(
        AccountId.parse(account.resource_id), KeyId(estate.kv.url, "cmk", new.version), "cli"
    )
    return job, new.version


class TestBusyAccount:
    async def test_a_long_lease_is_waited_out_then_the_move_succeeds(self, rig: Rig) -> None:
        """A lease held 400 s (longer than five deliveries' worth of short waits): the job
        waits, backing off, until it expires, then moves the account; no delivery spent,
        no failure, no alert."""
        job, _ = _setup(rig)
        await _held_by_another(rig, job.account_id, timedelta(seconds=400))
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            rig.world.clock.advance(timedelta(seconds=seconds))

        ticker = _Count()
        [report] = await run_jobs(rig.engine, [job], ticker, sleep=sleep)

        assert report.result is JobResult.SUCCEEDED
        assert (ticker.retries, rig.alerts()) == (0, [])
        assert sum(slept) < 400 + max(slept)  # waited until the lease ran out, no longer
        assert len(slept) < 10  # not 2 s at a time
        assert (await rig.engine.ledger.history(job.account_id))[0].state is LedgerState.SUCCEEDED

    async def test_an_account_that_stays_busy_is_left_unchanged_not_failed(self, rig: Rig) -> None:
        """A lease that never frees (renewed by its holder for ever): after the waits the
        job is reported skipped, with the holder's lease in its cause — not failed, no
        ledger failure, no alert."""
        job, _ = _setup(rig)
        await _held_by_another(rig, job.account_id, timedelta(days=365))

        async def sleep(seconds: float) -> None:
            rig.world.clock.advance(timedelta(seconds=seconds))

        ticker = _Count()
        [report] = await run_jobs(rig.engine, [job], ticker, sleep=sleep)

        assert report.result is JobResult.SKIPPED
        assert "being changed by another job" in (report.cause or "")
        assert ticker.waits == MAX_BUSY_WAITS
        assert rig.alerts() == []
        assert all(
            e.state is not LedgerState.FAILED
            for e in await rig.engine.ledger.history(job.account_id)
        )
