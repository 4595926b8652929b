"""The queue worker: move one account to one key version, as a resumable step machine.

ROTATE: read the account; stop if it is already on the target (or a newer version);
re-validate the target; PATCH only ``keyVersion`` and wait up to CMK_UPDATE_TIMEOUT;
record SUCCEEDED, or SUBMITTED and queue a VERIFY job. VERIFY: read the account again
and record the end state. Every step reads Azure first, so running a job twice, at the
same time, or again after a crash between the PATCH and the ledger write, ends the same.

One writer per account: every step runs under the account's write lease (a ledger row,
ETag-conditional, one owner token per run, an expiry), taken before the deciding read and
released after the verify, and renewed right before the PATCH — a run whose lease was
taken over (it stalled past the expiry) stops before writing. A run whose update is still
running when it stops hands its lease on to the VERIFY job it queues (the job carries the
owner token; the lease is renewed to outlast the verify's delay), so nothing else writes
the account until the verify has settled what that update did. A job that finds the lease
held raises :class:`~cmk.errors.AccountBusy` and is deferred like a 429. The PATCH itself
is never retried blindly (see :mod:`cmk.adapters.accounts`): a 429, 5xx or timeout on it
comes back here as a transient error, and the next delivery re-reads before any PATCH.
A PATCH that got no answer at all (:class:`~cmk.errors.UpdateUnanswered`) may still be
applied: its job keeps the lease until it expires instead of releasing it, so no other
job writes before a late arrival could land. A PATCH that was accepted but whose status
polls fail is verified later under the handed-on lease, like one that outlives the wait.
A job that finds the account Updating without a PATCH of its own known to be accepted
(a PLANNED row) waits for that update as an *adopted* one: its Failed end is not this
job's failure, and the move is decided again.

Transient errors propagate (the queue retries, then :func:`on_poison`, whose alert
carries the last error); permanent ones become a FAILED ledger row and one alert, and
the job completes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from cmk.errors import (
    AccessDenied,
    AccountBusy,
    CmkError,
    KeyAccessDenied,
    NotFound,
    PermanentError,
    ServiceUnavailable,
    TransientError,
    UpdateFailed,
    UpdateUnanswered,
)
from cmk.keyid import KeyId
from cmk.planner import version_order
from cmk.policy import KeyVersion, evaluate
from cmk.ports import (
    AccountRecord,
    Alert,
    AlertType,
    JobStep,
    LedgerEntry,
    LedgerState,
    RotationJob,
    UpdateOutcome,
    alert_group,
)
from cmk.usecases import alerting
from cmk.usecases.context import Engine
from cmk.usecases.report import JobReport, JobResult

__all__ = ["KEY_UNREADABLE_CAUSE", "account_lease_name", "on_poison", "rotate_account"]

log = logging.getLogger(__name__)

_DONE = frozenset({LedgerState.SUCCEEDED, LedgerState.SKIPPED})
_IN_FLIGHT = frozenset({LedgerState.PLANNED, LedgerState.SUBMITTED})
#: How long a job first waits for another job's write lease before it looks again; each
#: further deferral of the same job doubles it (a live holder is usually done within one
#: update, a dead one holds the lease until it expires).
BUSY_RETRY_SECONDS = 2.0
#: How the cause of a move stopped by its unreadable key begins (its ledger row's, and
#: its key's key_unreadable alert's).
KEY_UNREADABLE_CAUSE = "key unreadable"


def account_lease_name(account_id: object) -> str:
    """The name of an account's write lease (one writer per account: jobs, lifecycle)."""
    return f"account|{str(account_id).lower()}"


class _IdentityDenied(PermanentError):
    """The account's identity may not use the key (the update ended Failed for access)."""


class _KeyUnreadable(PermanentError):
    """The app may not read a key the job must judge, or the key is gone (Key Vault's 403
    or 404 to the app itself): a condition of the key, alerted once for the key — not once
    for each of its accounts' jobs that meets it."""

    def __init__(self, key: KeyId, cause: str) -> None:
        super().__init__(cause)
        self.key = key.versionless()


async def _version(step: _Step, key: KeyId) -> KeyVersion:
    """A version of a key (cached or read); :class:`_KeyUnreadable` when the key is. A
    version that is not found in a key that is readable stays :class:`NotFound`: it is
    the job's (a version that never existed), not the key's."""
    try:
        return await step.engine.keys.get_version(key)
    except NotFound as error:
        await _latest(step, key)  # the key itself unreadable? then that is the cause
        raise error from None
    except AccessDenied as error:
        raise _KeyUnreadable(key, str(error)) from error


async def _latest(step: _Step, key: KeyId) -> KeyVersion:
    """The key's current version; :class:`_KeyUnreadable` when the key is unreadable."""
    try:
        return await step.engine.keys.latest(key.versionless())
    except (AccessDenied, NotFound) as error:
        raise _KeyUnreadable(key, str(error)) from error


class _Step:
    """One run of one job: the ledger row it started from and what it has learnt."""

    def __init__(self, engine: Engine, job: RotationJob, previous: LedgerEntry | None) -> None:
        self.engine = engine
        self.job = job
        self.previous = previous
        self.version = job.target.version or ""
        #: Where the move starts: the job's word, else its row's (a verify, a retry).
        self.from_version = job.from_version or (previous.from_version if previous else None)
        bump = 1 if job.step is JobStep.ROTATE else 0
        self.attempts = (previous.attempts if previous else 0) + bump
        self.lease = account_lease_name(job.account_id)
        self.token = job.lease_owner or f"{engine.owner}:{uuid.uuid4().hex[:12]}"
        #: The lease was handed on to the queued VERIFY job: this run must not release it.
        self.lease_stays = False
        #: This VERIFY continues the lease its update's run handed on: nobody else wrote
        #: the account since that PATCH, so what the account shows is that update's doing.
        self.continued = False
        #: A PATCH went out and its fate is unknown (no answer yet, none coming, or the
        #: run cancelled meanwhile): the lease is kept until it expires.
        self.patch_unsettled = False
        #: When the write lease this step holds runs out (set when taken or renewed).
        self.lease_expires: datetime | None = None

    @property
    def lease_ttl(self) -> timedelta:
        """Long enough to cover the wait for the update (see Settings.write_lease_ttl)."""
        return self.engine.settings.write_lease_ttl

    @property
    def purpose(self) -> str:
        return f"move to {self.version}"

    async def take_lease(self) -> None:
        """Become the account's one writer, or raise AccountBusy (deferred, not failed).

        A job that finds the lease held waits even when the holder makes the very same
        move (a duplicated event): the holder may be dead, and this may be its own message
        redelivered — the only one left to do the work once the lease runs out."""
        engine = self.engine
        now = engine.now()
        if self.job.lease_owner and await engine.ledger.renew_lease(
            self.lease, self.token, now, self.lease_ttl
        ):
            self.lease_expires = now + self.lease_ttl  # the lease the submitting run handed on
            self.continued = self.job.step is JobStep.VERIFY
            return
        grant = await engine.ledger.acquire_lease(
            self.lease, self.token, now, self.lease_ttl, purpose=self.purpose
        )
        if grant.granted:
            self.lease_expires = grant.expires
            return
        wait = (grant.expires - engine.now()).total_seconds()
        doing = f" ({grant.purpose})" if grant.purpose else ""
        backoff = BUSY_RETRY_SECONDS * 2 ** min(self.job.deferrals, 10)
        raise AccountBusy(
            f"account {self.job.account_id} is being changed by another job{doing}, lease"
            f" until {grant.expires:%H:%M:%S} UTC; deferred",
            retry_after=min(max(wait, 1.0), backoff),
            expires=grant.expires,
        )

    async def keep_lease(self, ttl: timedelta | None = None) -> None:
        """Right before a write: renew the lease (for ``ttl``, else the lease's own), or
        stop if it was taken over."""
        engine = self.engine
        now, ttl = engine.now(), ttl or self.lease_ttl
        if await engine.ledger.renew_lease(self.lease, self.token, now, ttl):
            self.lease_expires = now + ttl
        else:
            raise AccountBusy(
                f"lost the write lease of {self.job.account_id} before the update; deferred",
                retry_after=1.0,
            )

    async def drop_lease(self) -> None:
        """Give the lease back; if that fails, it simply expires (the job's outcome stands)."""
        try:
            await self.engine.ledger.release_lease(self.lease, self.token)
        except TransientError as error:
            log.warning(
                "write lease not released (it expires): %s", error, extra=self.log_fields("lease")
            )

    async def note_error(self, error: TransientError) -> None:
        """Keep the last transient error on the ledger row: a poison alert names it."""
        state = self.previous.state if self.previous else LedgerState.PLANNED
        if state in _DONE or state is LedgerState.FAILED:
            return
        self.attempts = max(self.attempts, 1)
        await self.record(state, f"last error: {error}")

    def log_fields(self, step: str) -> dict[str, object]:
        return {
            "cmk_account_id": str(self.job.account_id),
            "cmk_key_id": str(self.job.target.versionless()),
            "cmk_from_version": self.from_version,
            "cmk_to_version": self.version,
            "cmk_step": step,
        }

    def entry(self, state: LedgerState, cause: str | None = None) -> LedgerEntry:
        """The ledger row of this move in ``state``, written now."""
        now = self.engine.now()
        return LedgerEntry(
            account_id=self.job.account_id,
            key_id=self.job.target.versionless(),
            to_version=self.version,
            from_version=self.from_version,
            state=state,
            attempts=self.attempts,
            cause=cause,
            trigger=self.job.trigger,
            created=self.previous.created if self.previous else now,
            updated=now,
        )

    async def record(self, state: LedgerState, cause: str | None = None) -> None:
        if self.engine.dry_run:
            return
        await self.engine.ledger.record(self.entry(state, cause))

    async def record_planned(self) -> None:
        """Record the move PLANNED, only over the row this run read: a run that stalled
        past its lease and was taken over must not put a row its successor settled back
        to PLANNED (it stops here, deferred, and its next delivery reads the row anew)."""
        if self.engine.dry_run:
            return
        entry = self.entry(LedgerState.PLANNED)
        if not await self.engine.ledger.record_unchanged(self.previous, entry):
            raise AccountBusy(
                f"the ledger row of {self.job.account_id} -> {self.version} changed since"
                " this run read it (another run wrote it); deferred",
                retry_after=1.0,
            )
        self.previous = entry

    async def finish(
        self, state: LedgerState, result: JobResult, cause: str | None = None
    ) -> JobReport:
        await self.record(state, cause)
        if state is LedgerState.SUCCEEDED and not self.engine.dry_run:
            await self.engine.alerts.resolve(str(self.job.account_id), still_open=self.beyond)
        log.info("%s: %s", result.value, cause or self.version, extra=self.log_fields(result.value))
        return self.report(result, cause)

    async def beyond(self, version: str, group: str) -> bool:
        """Whether an open alert is a failed move past the one that just succeeded (a newer
        version's failure stays open: the account is not there yet). Read only for such
        alerts, from the key cache; a version gone is closed, one unreadable for now kept."""
        if group != alert_group(AlertType.ACCOUNT_UPDATE_FAILED):
            return False
        if not version or version.lower() == self.version.lower():
            return False
        keys = self.engine.keys
        try:
            other = await keys.get_version(self.job.target.with_version(version))
            reached = await keys.get_version(self.job.target)
            current = None
            if other.created == reached.created:
                # Dated to the same second: the key's current version is the newer one.
                current = (await keys.latest(self.job.target.versionless())).version
        except NotFound:
            return False  # that version is gone: nothing to move to
        except CmkError:
            return True  # cannot tell now: keep it open rather than alert it again later
        return version_order(other, current) > version_order(reached, current)

    async def fail(
        self, cause: str, *, identity: bool = False, unreadable: KeyId | None = None
    ) -> JobReport:
        """Alert, then record FAILED. No later run raises this alert again (a sweep defers
        to the worker's), so an alert that cannot be recorded raises its error: the job
        is retried rather than completed without its alert. ``unreadable``: the key that
        stopped the job, whose one alert stands for every account it stops."""
        if unreadable is not None:
            cause = f"{KEY_UNREADABLE_CAUSE}: {cause}"
            alert = alerting.key_unreadable_moving(self.job, unreadable, cause)
        else:
            alert = alerting.account_failed(self.job, cause, identity=identity)
        await alerting.publish(self.engine, [alert], durable=True)
        await self.record(LedgerState.FAILED, cause)
        log.error("rotation failed: %s", cause, extra=self.log_fields("failed"))
        return self.report(JobResult.FAILED, cause, alert)

    def report(
        self, result: JobResult, cause: str | None = None, alert: Alert | None = None
    ) -> JobReport:
        return JobReport(
            account_id=self.job.account_id,
            target=self.job.target,
            step=self.job.step,
            result=result,
            attempts=self.attempts,
            cause=cause,
            alert=alert,
            lease_until=self.lease_expires if self.lease_stays else None,
        )

    async def verify_later(self, record_submitted: bool, *, adopted: bool = False) -> JobReport:
        """The update is still running: record SUBMITTED and queue a VERIFY job that
        continues this run's write lease (renewed to outlast the verify's delay): until the
        verify settles, no other job's update can land and be taken for this one's.
        ``adopted``: the update may not be this job's (see RotationJob.adopted); a verify
        of an adopted update stays adopted."""
        if record_submitted:
            await self.record(LedgerState.SUBMITTED)
        if not self.engine.dry_run:
            await self.keep_lease(self.engine.verify_delay + self.lease_ttl)
            verify = replace(
                self.job,
                step=JobStep.VERIFY,
                lease_owner=self.token,
                adopted=adopted or self.job.adopted,
                deferrals=0,  # a new step: its throttling budget starts afresh
                deferred_seconds=0,
            )
            await self.engine.jobs.enqueue(verify, delay=self.engine.verify_delay)
            self.lease_stays = True
        log.info("update running; verify queued", extra=self.log_fields("submitted"))
        return self.report(JobResult.SUBMITTED)

    async def rotate_again(self, why: str) -> JobReport:
        """The verify cannot settle the move as its update's outcome: hand it back as a
        ROTATE job, which decides again under a lease of its own (a verify never PATCHes,
        so a redelivered verify can never renew a lease kept for an unanswered PATCH)."""
        again = replace(
            self.job,
            step=JobStep.ROTATE,
            lease_owner=None,
            adopted=False,
            deferrals=0,
            deferred_seconds=0,
        )
        await self.engine.jobs.enqueue(again)
        log.info("%s; rotate queued", why, extra=self.log_fields("rotate_again"))
        return self.report(JobResult.SUBMITTED, why)


def _bound_version(step: _Step, record: AccountRecord) -> str:
    """The account's bound version; permanent errors when it left the target's key."""
    binding = record.binding
    if binding is None:
        raise UpdateFailed("the account no longer uses a customer-managed key; not changing it")
    if not binding.key_id.same_key(step.job.target):
        raise UpdateFailed(
            f"the account is bound to {binding.key_id.versionless()}, not"
            f" {step.job.target.versionless()}; only keyVersion is ever changed"
        )
    bound = binding.key_id.version or ""
    if bound.lower() != step.version.lower():  # on the target, it says nothing of the start
        step.from_version = bound
    return bound


async def _skip_cause(step: _Step, record: AccountRecord) -> str | None:
    """Why this job must not move the account, or None. Re-validates the target: an
    account never goes back to an older version; a target the policy now rejects (disabled
    or edited since the job was planned) is skipped when a newer valid version supersedes
    it (that version's job moves the account) or when the account's own version is still
    valid (nothing is wrong with the account: no alert; the key's newest version is the
    sweep's business) — and fails the job only when the account is left on a version that
    is not valid either, which needs a human."""
    assert record.binding is not None
    policy = step.engine.policy
    target = await _version(step, step.job.target)
    bound = await _version(step, record.binding.key_id)
    current = None
    if bound.created == target.created:
        # Dated to the same second: the key's current version is the newer one.
        current = (await _latest(step, step.job.target)).version
    if version_order(bound, current) >= version_order(target, current):
        return f"already on {bound.version}, not older than {target.version}"
    now = step.engine.now()
    verdict = evaluate(target, policy, now, bound_vault=record.binding.key_id)
    if not verdict.bindable:
        newer = await _successor(step, target)
        if newer is not None:
            return f"superseded: {target.version} is no longer valid and {newer} replaces it"
        if evaluate(bound, policy, now, bound_vault=record.binding.key_id).bindable:
            reasons = "; ".join(str(reason) for reason in verdict.reasons)
            return (
                f"{target.version} is no longer valid ({reasons}); the account stays on"
                f" {bound.version}, which is still valid"
            )
    verdict.require_bindable()
    return None


async def _successor(step: _Step, target: KeyVersion) -> str | None:
    """The key's current version if it is newer than ``target`` and bindable."""
    latest = await _latest(step, target.key_id)
    now, current = step.engine.now(), latest.version
    if version_order(latest, current) <= version_order(target, current):
        return None
    return current if evaluate(latest, step.engine.policy, now).bindable else None


async def _rotate(step: _Step) -> JobReport:
    engine = step.engine
    record = await engine.accounts.get(step.job.account_id)
    bound = _bound_version(step, record)
    state = record.provisioning_state.lower()
    if bound == step.version and state == "succeeded":
        if step.previous is not None and step.previous.state is LedgerState.SUCCEEDED:
            # Settled already (a duplicate job, another producer's): the row that recorded
            # the move — its trigger, where it started — stays as it is.
            return step.report(JobResult.SUCCEEDED, "already on target")
        return await step.finish(LedgerState.SUCCEEDED, JobResult.SUCCEEDED, "already on target")
    if bound == step.version and state == "updating":
        return await step.verify_later(record_submitted=True)
    cause = await _skip_cause(step, record) if bound != step.version else None
    if cause is not None:
        return await step.finish(LedgerState.SKIPPED, JobResult.SKIPPED, cause)
    if state not in ("succeeded", "failed"):
        in_flight = step.previous is not None and step.previous.state in _IN_FLIGHT
        if in_flight:
            # Our own update to this target may still be running (a duplicate job, or a
            # retry after a crash): check on it later instead of spending a delivery. Only
            # a SUBMITTED row proves ARM accepted our PATCH; after a PLANNED one (a 429, or
            # a crash before the answer) the update may be anyone's, so its end is not
            # taken for this job's (adopted).
            assert step.previous is not None
            adopted = step.previous.state is not LedgerState.SUBMITTED
            return await step.verify_later(record_submitted=False, adopted=adopted)
        raise ServiceUnavailable(f"account {step.job.account_id} is {record.provisioning_state}")
    if not record.has_usable_identity:
        return await step.fail("the account has no identity that can use the key", identity=True)
    if bound == step.version:
        # On the target but not Succeeded (a failed update): validate before trying again.
        assert record.binding is not None
        target = await _version(step, step.job.target)
        evaluate(
            target, engine.policy, engine.now(), bound_vault=record.binding.key_id
        ).require_bindable()
    if engine.dry_run:
        return step.report(JobResult.WOULD_UPDATE, f"would PATCH keyVersion {step.version}")
    await step.record_planned()
    await step.keep_lease()
    step.patch_unsettled = True  # until the PATCH is answered: a cancel now keeps the lease
    try:
        outcome = await engine.accounts.update_key_version(
            record, step.version, wait=engine.settings.update_timeout
        )
    except UpdateUnanswered:
        raise
    except KeyAccessDenied as error:
        step.patch_unsettled = False
        step.engine.keys.forget(step.job.target.versionless())  # what we knew may be stale
        raise _IdentityDenied(str(error)) from error
    except UpdateFailed as error:
        step.patch_unsettled = False
        return await _refused(step, record, error)
    except Exception:
        step.patch_unsettled = False  # answered (429, 409, 5xx) or never sent
        raise
    step.patch_unsettled = False
    if outcome is UpdateOutcome.SUCCEEDED:
        return await step.finish(LedgerState.SUCCEEDED, JobResult.SUCCEEDED)
    return await step.verify_later(record_submitted=True)


async def _refused(step: _Step, record: AccountRecord, error: UpdateFailed) -> JobReport:
    """The resource provider refused the PATCH. What we knew of the key may be stale (the
    version was disabled or edited since it was cached): forget it, and decide again from
    Key Vault's answer — a version superseded meanwhile is skipped, one the policy now
    rejects fails with the policy's reason, anything else with the provider's."""
    step.engine.keys.forget(step.job.target.versionless())
    cause = await _skip_cause(step, record)
    if cause is not None:
        return await step.finish(LedgerState.SKIPPED, JobResult.SKIPPED, cause)
    raise error


async def _verify(step: _Step) -> JobReport:
    engine = step.engine
    record = await engine.accounts.get(step.job.account_id)
    bound = _bound_version(step, record)
    state = record.provisioning_state.lower()
    if bound == step.version and state == "succeeded":
        return await step.finish(LedgerState.SUCCEEDED, JobResult.SUCCEEDED)
    settled = step.previous.state if step.previous else None
    if settled in _DONE or settled is LedgerState.FAILED:
        # A duplicate or stale verify of a move already settled: nothing to add.
        assert settled is not None
        return step.report(JobResult.SKIPPED, f"the move is already recorded {settled.value}")
    if state == "failed":
        if step.job.adopted:
            # The update this verify waited on may not have been this job's (its PATCH was
            # never known to be accepted): its end decides nothing about this move.
            return await step.rotate_again(
                "the update this job waited on ended Failed, and it may not have been this"
                " job's (its own PATCH was never known to be accepted)"
            )
        if not step.continued:
            # The lease ran out before this verify ran (a queue backlog), or it came from
            # a producer that hands no lease on: another job may have written meanwhile,
            # so this Failed may not be this update's. The move is decided again.
            return await step.rotate_again(
                "the account's update ended Failed, and this verify cannot tell whose it"
                " was (its write lease was not kept for it)"
            )
        on = "it" if bound == step.version else f"the account is still on {bound}"
        return await step.fail(
            f"the update to {step.version} ended with provisioningState Failed ({on});"
            " see the account's activity log for the resource provider's error"
        )
    cause = await _skip_cause(step, record) if bound != step.version else None
    if cause is not None:
        return await step.finish(LedgerState.SKIPPED, JobResult.SKIPPED, cause)
    if state != "succeeded":
        submitted = step.previous.updated if step.previous else engine.now()
        if engine.now() - submitted > engine.stuck_after:
            return await step.fail(f"update stuck: {record.provisioning_state} since {submitted}")
        return await step.verify_later(record_submitted=False)
    # Succeeded on an older version that is still valid to leave (the skip checks above):
    # the update this job waited for never landed — its PATCH was refused, or never went
    # out and a stale row made it look in flight. Nothing failed yet: the move is decided
    # and sent again, until it has been tried for longer than an update may take (then it
    # needs a human).
    since = step.previous.created if step.previous else engine.now()
    if engine.now() - since > engine.stuck_after:
        return await step.fail(
            f"the update did not take effect: still on {bound}, moves to {step.version}"
            f" tried since {since:%Y-%m-%d %H:%M} UTC"
        )
    return await step.rotate_again(f"the update never landed (the account is on {bound})")


def _out_of_scope(engine: Engine, job: RotationJob) -> JobReport | None:
    """The skip of a job whose vault is not (or no longer) in CMK_VAULT_ALLOWLIST: it
    left after the job was queued, or the job never came from us. Nothing of that
    vault is read, moved or alerted."""
    if engine.settings.vault_in_scope(job.target):
        return None
    log.warning(
        "skipping job for %s: vault %s is not in CMK_VAULT_ALLOWLIST",
        job.account_id,
        job.target.vault_url,
        extra={"cmk_account_id": str(job.account_id), "cmk_step": "scope"},
    )
    return JobReport.skipped(job, f"vault {job.target.vault_url} is not in CMK_VAULT_ALLOWLIST")


async def rotate_account(engine: Engine, job: RotationJob) -> JobReport:
    """Run one job's step (ROTATE or VERIFY); permanent errors end as FAILED plus one alert."""
    skipped = _out_of_scope(engine, job)
    if skipped is not None:
        return skipped
    if engine.dry_run:
        return await _run(
            _Step(engine, job, await engine.ledger.get(job.account_id, job.target.version or ""))
        )
    lease = _Step(engine, job, None)
    try:
        await lease.take_lease()
    except AccountBusy:
        raise
    except BaseException:
        # Cancelled (or failed) while taking it: the insert may have landed all the same.
        # A verify's lease, handed on to it, stays for the verify's redelivery.
        if job.lease_owner is None:
            await lease.drop_lease()
        raise
    step: _Step | None = None
    unsettled_verify = False
    try:
        step = _Step(engine, job, await engine.ledger.get(job.account_id, job.target.version or ""))
        step.token, step.continued = lease.token, lease.continued
        try:
            return await _run(step)
        except TransientError as error:
            if not isinstance(error, AccountBusy):  # a 429 too: a poison alert names it
                await step.note_error(error)
            raise
    except BaseException as error:
        # A verify that could not settle keeps its lease for its redelivery: the update it
        # verifies may still be running, and nobody else may write meanwhile.
        unsettled_verify = job.lease_owner is not None and not isinstance(error, AccountBusy)
        raise
    finally:
        if unsettled_verify or (step is not None and step.lease_stays):
            pass  # a queued VERIFY job holds it now (it releases it, or it expires)
        elif step is not None and step.patch_unsettled:
            # The PATCH got no answer, or the run was cancelled while it was out: it may
            # still land, so nobody else may write until the lease runs out.
            expires = step.lease_expires or lease.lease_expires
            log.warning(
                "write lease kept until it expires: the update's PATCH is unsettled",
                extra={
                    **lease.log_fields("lease"),
                    "cmk_lease_expires": None if expires is None else expires.isoformat(),
                },
            )
        else:
            await lease.drop_lease()


async def _run(step: _Step) -> JobReport:
    try:
        if step.job.step is JobStep.VERIFY:
            return await _verify(step)
        return await _rotate(step)
    except _IdentityDenied as error:
        return await step.fail(str(error), identity=True)
    except _KeyUnreadable as error:
        return await step.fail(str(error), unreadable=error.key)
    except PermanentError as error:
        return await step.fail(str(error))


async def on_poison(engine: Engine, job: RotationJob) -> JobReport:
    """A job exhausted its retries: record it FAILED and alert — unless the account shows
    that nothing is left to do (the update landed after all, or the job's next run would
    skip it: the account is already on a version not older than the target, or a newer
    valid version superseded it). A human is alerted only for a move still owed — and
    never for a vault outside CMK_VAULT_ALLOWLIST."""
    skipped = _out_of_scope(engine, job)
    if skipped is not None:
        return skipped
    previous = await engine.ledger.get(job.account_id, job.target.version or "")
    step = _Step(engine, job, previous)
    step.attempts = previous.attempts if previous else 0
    if previous is not None and previous.state in _DONE:
        return step.report(JobResult.SKIPPED, f"already {previous.state.value}")
    settled = await _settled_meanwhile(step)
    if settled is not None:
        return settled
    last = f"; {previous.cause}" if previous is not None and previous.cause else ""
    return await step.fail(f"the job exhausted its retries{last}")


async def _settled_meanwhile(step: _Step) -> JobReport | None:
    """One last look, as the job's next run would take it: the account on the target,
    Succeeded (its PATCH was applied but no attempt could verify it: status polls or reads
    failed until the retries ran out), or a move the worker would now skip. None when
    there is still a move owed — or when ARM or Key Vault cannot say (the retries were
    spent on exactly that)."""
    if not step.version:
        return None
    try:
        record = await step.engine.accounts.get(step.job.account_id)
        bound = _bound_version(step, record)
        if bound.lower() == step.version.lower():
            landed = record.provisioning_state.lower() == "succeeded"
            cause = "verified after the job's last retry" if landed else None
            state = LedgerState.SUCCEEDED
        else:
            cause, state = await _skip_cause(step, record), LedgerState.SKIPPED
    except CmkError:
        return None  # ARM or Key Vault cannot say: the move is still owed
    if cause is None:
        return None
    # Decided: recording it may fail (a transient error: the poison delivery is retried),
    # never turn into an alert for a move that needs nothing.
    result = JobResult.SUCCEEDED if state is LedgerState.SUCCEEDED else JobResult.SKIPPED
    return await step.finish(state, result, cause)
