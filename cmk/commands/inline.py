"""Run rotation jobs in this process instead of on the app's queue.

The CLI's sweep and rotate plan exactly as the app does, but hand the jobs to
:class:`CollectedJobs` and run each account's step machine
(:func:`~cmk.usecases.rotate_account`) here, with at most CMK_MAX_CONCURRENCY at once *per
subscription* (ARM's budget is per subscription; the ARM clients also pace each
subscription's requests to it). As on the queue: a throttled job waits for its
``Retry-After`` without spending a delivery (for at most
:data:`~cmk.entrypoints.MAX_DEFERRED` in all); a job
whose account another job is writing waits for that job's write lease, backing off
towards its expiry, and never fails or alerts for it (after :data:`MAX_BUSY_WAITS` waits
it is reported skipped, unchanged); any
other transient error is retried (up to :data:`MAX_DELIVERIES` deliveries, then
:func:`~cmk.usecases.on_poison` records the failure and alerts), and an update still
running after CMK_UPDATE_TIMEOUT_SECONDS is verified again after a short delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from cmk.commands.output import Ticker
from cmk.entrypoints import MAX_DEFERRED
from cmk.errors import AccountBusy, ThrottledError, TransientError
from cmk.ports import RotationJob
from cmk.resource_id import AccountId
from cmk.usecases import JobReport, JobResult, PlannedMove, on_poison, rotate_account
from cmk.usecases.context import Engine, gather_bounded

__all__ = ["MAX_DELIVERIES", "CollectedJobs", "job_for_move", "run_jobs"]

log = logging.getLogger(__name__)

#: Deliveries of one job before it counts as poisoned (host.json maxDequeueCount).
MAX_DELIVERIES = 5
#: Waits of one job for another job's write lease (backing off to 34 minutes apart; the
#: lease's expiry ends a wait sooner), then it is left unchanged, not failed.
MAX_BUSY_WAITS = 30
#: How long a submitted update waits before it is verified again.
VERIFY_DELAY = timedelta(seconds=5)


class CollectedJobs:
    """A :class:`~cmk.ports.JobQueue` in memory: keeps what the use cases enqueue."""

    def __init__(self) -> None:
        self._jobs: list[tuple[RotationJob, timedelta]] = []
        #: messages of a newer release put back (none reach a CLI run: its jobs are its own)
        self.unread: list[str] = []

    async def requeue_text(self, text: str, *, delay: timedelta) -> None:
        self.unread.append(text)

    async def enqueue(self, job: RotationJob, *, delay: timedelta | None = None) -> None:
        self._jobs.append((job, delay or timedelta(0)))

    async def enqueue_many(self, jobs: Sequence[RotationJob]) -> int:
        self._jobs.extend((job, timedelta(0)) for job in jobs)
        return len(jobs)

    def take(self) -> tuple[list[RotationJob], timedelta]:
        """Every job collected so far (forgotten here) and the longest delay among them."""
        taken, self._jobs = self._jobs, []
        delay = max((delay for _, delay in taken), default=timedelta(0))
        return [job for job, _ in taken], delay


def job_for_move(move: PlannedMove, trigger: str) -> RotationJob:
    """The job that carries out a planned move."""
    return RotationJob(
        account_id=move.account_id,
        target=move.key_id.with_version(move.to_version),
        trigger=trigger,
        urgent=move.urgent,
        from_version=move.from_version,
    )


#: How a job waits (``asyncio.sleep``; a test's may move a clock instead).
Sleep = Callable[[float], Awaitable[None]]
#: Hears that a job waits for an account's write lease, and until when it is held.
OnWait = Callable[[AccountId, datetime | None], None]


class JobWatch(Protocol):
    """Hears how an inline run goes, so an interrupted command can say how far it got
    (:class:`cmk.commands.interrupt.Journal` is one)."""

    def job_done(self, report: JobReport) -> None:
        """A job ended (any result but ``submitted``, which is verified again)."""

    def lease_wait(self, account: AccountId, expires: datetime | None) -> None:
        """A job waits for the account's write lease, held by another job until then."""

    def submitted(self, account: AccountId, expires: datetime | None) -> None:
        """The account's update was still running when its job stopped waiting: the write
        lease went on to its VERIFY job, held until then unless that verify runs here."""


async def _deliver(
    engine: Engine,
    job: RotationJob,
    retry_delay: float,
    ticker: Ticker,
    *,
    gate: asyncio.Semaphore,
    sleep: Sleep,
    on_wait: OnWait | None = None,
) -> JobReport:
    delivery, deferred, busy = 1, 0.0, 0
    while delivery <= MAX_DELIVERIES:
        try:
            async with gate:  # held while the job works, not while it waits
                return await rotate_account(engine, job)
        except AccountBusy as error:
            # Another job holds the account's write lease: wait for it, backing off
            # towards its expiry as the queue does (the job's deferrals grow), never
            # spending a delivery — a busy account is not a failure, and never alerts.
            busy += 1
            if busy > MAX_BUSY_WAITS:
                return _still_busy(job, error)
            job = replace(job, deferrals=job.deferrals + 1)
            log.info("%s waits for its write lease, held by another job", job.account_id)
            ticker.waited(error.expires)
            if on_wait is not None:
                on_wait(job.account_id, error.expires)
            await sleep(max(1.0, error.retry_after or 1.0))
        except ThrottledError as error:
            if deferred < MAX_DEFERRED.total_seconds():
                wait = max(1.0, error.retry_after or 1.0)
                deferred += wait
                ticker.retried()
                await sleep(wait)
                continue  # a deferral, not a delivery: as on the app's queue
            deferred = 0.0
            delivery = await _retry(job, error, delivery, retry_delay, ticker=ticker, sleep=sleep)
        except TransientError as error:
            delivery = await _retry(job, error, delivery, retry_delay, ticker=ticker, sleep=sleep)
    return await on_poison(engine, job)


def _still_busy(job: RotationJob, error: AccountBusy) -> JobReport:
    """The account stayed busy through every wait: not changed, not failed (the other
    writer, or the next sweep, moves it)."""
    cause = f"not changed: {error}; the next sweep moves it if it still needs to"
    log.warning("%s", cause, extra={"cmk_account_id": str(job.account_id), "cmk_step": "lease"})
    return JobReport.skipped(job, cause)


async def _retry(
    job: RotationJob,
    error: TransientError,
    delivery: int,
    retry_delay: float,
    *,
    ticker: Ticker,
    sleep: Sleep,
) -> int:
    """Count a failed delivery (wait before the next); returns the next delivery's number."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    log.info("retrying %s: %s (delivery %d)", job.account_id, first_line, delivery)
    ticker.retried()
    if delivery < MAX_DELIVERIES:
        await sleep(retry_delay * 2**delivery)
    return delivery + 1


async def run_jobs(
    engine: Engine,
    jobs: Sequence[RotationJob],
    ticker: Ticker,
    *,
    verify_delay: timedelta = VERIFY_DELAY,
    retry_delay: float = 1.0,
    watch: JobWatch | None = None,
    sleep: Sleep = asyncio.sleep,
) -> list[JobReport]:
    """Run ``jobs`` to the end (following VERIFY jobs); one report per account and target.
    ``watch`` hears of each job as it ends, of each wait for a write lease another job
    holds, and of each update still running when its job stopped waiting (see
    :class:`JobWatch`). Transient errors are counted on the ticker (waits for a write
    lease apart from them) and logged one line each at INFO (``-v``)."""
    collector = CollectedJobs()
    here = replace(engine, jobs=collector, verify_delay=verify_delay)
    reports: dict[tuple[str, str], JobReport] = {}
    gates: dict[str, asyncio.Semaphore] = {}  # CMK_MAX_CONCURRENCY per subscription

    async def one(job: RotationJob) -> JobReport:
        gate = gates.setdefault(
            job.account_id.subscription_id.lower(),
            asyncio.Semaphore(engine.settings.max_concurrency),
        )
        on_wait = None if watch is None else watch.lease_wait
        report = await _deliver(
            here, job, retry_delay, ticker, gate=gate, sleep=sleep, on_wait=on_wait
        )
        if report.result is not JobResult.SUBMITTED:
            ticker.advance()
            if watch is not None:
                watch.job_done(report)
        elif watch is not None and report.lease_until is not None:
            # The lease went on to the queued VERIFY (a verify that handed the move back
            # to a ROTATE job kept none: that job's own run is watched like any other).
            watch.submitted(job.account_id, report.lease_until)
        return report

    batch, delay = list(jobs), timedelta(0)
    while batch:
        if delay:
            await sleep(delay.total_seconds())
        subscriptions = {job.account_id.subscription_id.lower() for job in batch}
        limit = engine.settings.max_concurrency * max(1, len(subscriptions))
        for report in await gather_bounded(limit, map(one, batch)):
            reports[(str(report.account_id), report.target.version or "")] = report
        batch, delay = collector.take()
    return list(reports.values())
