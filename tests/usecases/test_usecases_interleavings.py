"""Invariants of the per-account step machine under every interleaving and fault.

Two or three jobs for one account, with different targets, run concurrently under the
deterministic scheduler of :mod:`interleave`: every port call is a scheduling point.
The tests enumerate schedules systematically — one job preempted at each of its calls
while the other runs, with a fault (429, 5xx, a response lost after the service applied
the call, the process killed) injected at that very call — and seeded random schedules
of three jobs. A fault on the PATCH raises what the real adapter raises: a lost answer is
UpdateUnanswered, and its job keeps the write lease. A PATCH cut off from its client
(LATE) lands at every point of the other jobs' runs while that lease holds, at the end
of the round, or never (:class:`TestLatePatch`). An update that outlasts its job's
wait takes the path ROTATE -> SUBMITTED -> VERIFY, with a fault at every call of each
step (:class:`TestUpdateOutlastsTheWait`). After each schedule settles (a run that
raised is redelivered, and what the worker queued — a VERIFY carrying its write lease, a
ROTATE handed back — is taken from the real queue as it was sent; between deliveries an
update still running ends and a dead or cut-off job's lease runs out on the sandbox
clock) they check:

- the account never visited an older version than one it had, and ends on the newest;
  it never moved to a version the product's policy rejected at the time of the move;
- the ledger agrees with ARM: the newest SUCCEEDED row is the version ARM has, no row
  is left PLANNED/SUBMITTED, no row FAILED;
- nothing alerted (every fault here is transient: a human has nothing to do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from interleave import (
    ANY_CALL_FAULTS,
    UPDATE,
    Fault,
    Killed,
    Network,
    Outbox,
    Plan,
    Scheduler,
    gated,
)
from usecase_rig import Rig, take_queued, take_verify

from cmk.adapters.accounts import CognitiveAccounts
from cmk.errors import (
    AccountBusy,
    ServiceUnavailable,
    ThrottledError,
    TransientError,
    UpdateUnanswered,
)
from cmk.keyid import KeyId
from cmk.ports import JobStep, LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import rp_for
from cmk.sandbox.platform.faults import FaultRule
from cmk.sandbox.world import AccountState, KeyVersionState
from cmk.usecases import Engine, JobReport, on_poison, rotate_account
from cmk.usecases.report import JobResult

MAX_DELIVERIES = 5


@dataclass
class Outcome:
    """What one schedule did."""

    trace: list[str] = field(default_factory=list)
    reports: list[JobReport] = field(default_factory=list)
    rounds: int = 0
    #: (round, job, what it raised) for every run that ended with an exception.
    raised: list[tuple[int, str, BaseException]] = field(default_factory=list)
    #: Where the first round's LATE PATCH landed (see Scheduler.landed).
    landed: str | None = None
    #: Per round, the port calls in the order granted (the Scheduler's trace).
    traces: list[list[str]] = field(default_factory=list)
    #: Per round, the jobs the worker put on the queue: (sender, job as it was received).
    queued: list[list[tuple[str, RotationJob]]] = field(default_factory=list)

    def calls(self, name: str, round_: int = 1) -> list[str]:
        """Job ``name``'s port calls in round ``round_`` (1-based), as traced."""
        if round_ > len(self.traces):
            return []
        return [step for step in self.traces[round_ - 1] if step.startswith(f"{name}:")]

    def fired(self, fault: tuple[str, int, Fault], round_: int = 1) -> bool:
        """Whether ``fault`` was injected at its call in round ``round_``."""
        name, index, kind = fault
        calls = self.calls(name, round_)
        return index < len(calls) and calls[index].endswith(f"!{kind.value}")


def _job(rig: Rig, account: AccountState, version: KeyVersionState) -> RotationJob:
    key = KeyId(rig.estate.kv.url, "cmk", version.version)
    return RotationJob(AccountId.parse(account.resource_id), key, trigger="test")


def network(rig: Rig) -> Network:
    """The sandbox's fault rules in front of the engine's own accounts adapter."""
    sandbox = rig.estate.sandbox
    accounts = rig.services.accounts
    return Network(sandbox.faults, sandbox.counters, accounts)


async def _received(rig: Rig, outbox: Outbox) -> list[tuple[str, RotationJob]]:
    """Empty the job queue; each message it held, with the job that sent it. Every message
    must be one this round's runs sent, and every one they sent must be there."""
    received = await take_queued(rig)
    sent = list(outbox.sent)
    named: list[tuple[str, RotationJob]] = []
    for job in received:
        sender = next((who for who, one in sent if one == job), None)
        assert sender is not None, f"a message nobody in this schedule sent: {job}"
        sent.remove((sender, job))
        named.append((sender, job))
    assert not sent, f"sent but not in the queue: {sent}"
    return named


def _name(taken: Collection[str], sender: str) -> str:
    """A name for a job ``sender`` queued: the sender's own, else with primes (A', A'')."""
    name = sender
    while name in taken:
        name += "'"
    return name


async def settle(
    rig: Rig,
    jobs: dict[str, RotationJob],
    plan: Plan | Sequence[Plan],
    later: Plan | None = None,
    *,
    engine: Engine | None = None,
) -> Outcome:
    """Run ``jobs`` under ``plan`` (a list: the plans of the first rounds in turn), then
    deliver what the queue would deliver next — a run that raised is redelivered; what the
    worker put on the job queue (a VERIFY carrying the write lease, a ROTATE handed back)
    is taken from the real queue, as it was sent — each round after the planned ones
    ordered by ``later`` (fault-free, else by name), until nothing is left. Between rounds
    time passes: an update still running ends (it outlasted its job's wait, not the next
    delivery), then a lease left by a dead or cut-off run runs out. ``engine`` is the one
    the jobs run on (default: the rig's)."""
    outcome = Outcome()
    wire = network(rig)
    base = engine or rig.engine
    plans = [plan] if isinstance(plan, Plan) else list(plan)
    pending = dict(jobs)
    deliveries: dict[str, int] = dict.fromkeys(jobs, 0)
    accounts = {str(job.account_id) for job in jobs.values()}
    lease = base.settings.write_lease_ttl
    while pending:
        outcome.rounds += 1
        assert outcome.rounds < 40, f"did not settle: {outcome.trace}"
        if outcome.rounds <= len(plans):
            scheduler = Scheduler(plans[outcome.rounds - 1])
        else:
            scheduler = Scheduler(replace(later or Plan(), fault=None))
        outbox = Outbox(base.jobs)
        gate = gated(replace(base, jobs=outbox), scheduler, wire)  # type: ignore[arg-type]
        made = {name: partial(rotate_account, gate, job) for name, job in pending.items()}
        results = await scheduler.run(made)
        outcome.trace += scheduler.trace
        outcome.traces.append(list(scheduler.trace))
        if outcome.rounds == 1:
            outcome.landed = scheduler.landed
        again: dict[str, RotationJob] = {}
        for name, job in pending.items():
            result: Any = results[name]
            if isinstance(result, BaseException):
                outcome.raised.append((outcome.rounds, name, result))
            if isinstance(result, JobReport):
                outcome.reports.append(result)
            elif isinstance(result, Killed | ThrottledError):
                again[name] = job  # redelivered after its visibility timeout / deferred
            elif isinstance(result, TransientError):
                deliveries[name] += 1
                if deliveries[name] >= MAX_DELIVERIES:
                    outcome.reports.append(await on_poison(base, job))
                else:
                    again[name] = job
            else:
                raise AssertionError(f"{name} raised {result!r}; trace {scheduler.trace}")
        queued = await _received(rig, outbox)
        outcome.queued.append(queued)
        for sender, job in queued:
            name = _name(again, sender)
            again[name] = job
            deliveries[name] = 0
        # Time passes before the next delivery: the updates end, the leases run out.
        for account in accounts:
            with contextlib.suppress(KeyError):  # no update running
                rp_for(rig.world).finish_now(account)
        rig.world.clock.advance(lease + timedelta(seconds=1))
        pending = again
    return outcome


async def check(
    rig: Rig, account: AccountState, newest: str, outcome: Outcome, where: str = ""
) -> None:
    """The invariants of the module docstring, with the trace (after ``where``: what
    schedule it was, e.g. its seed) in every failure message."""
    trace = f"{where}: {' '.join(outcome.trace)}" if where else " ".join(outcome.trace)
    history = [version for _, version in account.binding_history]
    assert account.encryption.key_version == newest, f"ended on {history[-1]}: {trace}"
    assert account.provisioning_state == "Succeeded", trace
    rig.check_invariants()  # never backwards, never a rejected version, no double alert
    entries = await rig.engine.ledger.history(AccountId.parse(account.resource_id))
    states = {entry.to_version: entry.state for entry in entries}
    assert states.get(newest) is LedgerState.SUCCEEDED, f"{states}: {trace}"
    assert not {s for s in states.values() if s not in _SETTLED}, f"{states}: {trace}"
    mine = [e for e in rig.alerts() if e["subject"].lower() == account.resource_id.lower()]
    assert mine == [], f"alerted for transient faults: {mine}: {trace}"


_SETTLED = frozenset({LedgerState.SUCCEEDED, LedgerState.SKIPPED})


def _impatient(engine: Engine) -> Engine:
    """``engine`` with a wait too short for any update still running: its job records
    SUBMITTED and queues a VERIFY."""
    settings = replace(engine.settings, update_timeout=timedelta(seconds=0.1))
    return replace(engine, settings=settings)


class _World:
    """One key with versions v1 < v2 < v3 and a fresh account on v1 per schedule.

    ``slow``: every update outlasts its job's wait (the account's update runs until
    :func:`settle` ends it between two deliveries, and the engine waits 0.1 s), so each
    move goes ROTATE -> SUBMITTED -> VERIFY. ``denied``: the accounts' identities cannot
    use the key, so every move fails for good."""

    def __init__(self, rig: Rig, *, slow: bool = False, denied: bool = False) -> None:
        self.rig = rig
        self.slow = slow
        self.denied = denied
        self.engine = _impatient(rig.engine) if slow else rig.engine
        self.versions = []
        for _ in range(3):
            self.versions.append(rig.estate.version(rig.estate.kv))
            rig.world.clock.advance(timedelta(minutes=1))  # versions dated apart, as in Azure
        self.count = 0

    def account(self) -> AccountState:
        self.count += 1
        return self.rig.estate.account(
            f"{'denied' if self.denied else 'acct'}{self.count}",
            self.rig.estate.kv,
            self.v1,
            grant=not self.denied,
            lro_seconds=math.inf if self.slow else 0.0,
        )

    @property
    def v1(self) -> str:
        return self.versions[0].version

    def order(self, version: str) -> int:
        """Where ``version`` is in v1 < v2 < v3."""
        return [v.version for v in self.versions].index(version)

    def jobs(self, account: AccountState, *targets: int) -> dict[str, RotationJob]:
        names = "ABC"
        return {names[i]: _job(self.rig, account, self.versions[t]) for i, t in enumerate(targets)}


async def _calls_of(world: _World, *targets: int) -> int:
    """How many port calls job A makes when it runs alone first (the points to preempt);
    the schedule itself is checked, unless every move fails (``denied``)."""
    account = world.account()
    plan = Plan(order=[("A", None)])
    outcome = await settle(world.rig, world.jobs(account, *targets), plan, engine=world.engine)
    if not world.denied:
        await check(world.rig, account, world.versions[max(targets)].version, outcome)
    return len(outcome.calls("A"))


class TestTwoJobsOneAccount:
    """A targets v2, B targets v3: whatever the order and the fault, never backwards."""

    async def test_b_runs_at_every_point_of_a(self, rig: Rig) -> None:
        """B runs to its end at each of A's calls (A preempted there); then A finishes."""
        world = _World(rig)
        calls = await _calls_of(world, 1, 2)
        assert calls >= 8  # lease, ledger, account and key reads, the PATCH, release
        for k in range(calls + 1):
            account = world.account()
            plan = Plan(order=[("A", k), ("B", None), ("A", None)])
            outcome = await settle(rig, world.jobs(account, 1, 2), plan)
            await check(rig, account, world.versions[2].version, outcome)

    @pytest.mark.parametrize("fault", ANY_CALL_FAULTS)
    async def test_fault_at_every_point_of_a_with_b_in_between(
        self, rig: Rig, fault: Fault
    ) -> None:
        """A fault at each of A's calls, B running right after it, then redeliveries."""
        world = _World(rig)
        calls = await _calls_of(world, 1, 2)
        for k in range(calls):
            account = world.account()
            plan = Plan(order=[("A", k + 1), ("B", None), ("A", None)], fault=("A", k, fault))
            outcome = await settle(rig, world.jobs(account, 1, 2), plan)
            assert outcome.fired(("A", k, fault)), outcome.trace
            await check(rig, account, world.versions[2].version, outcome)

    async def test_older_target_last_is_skipped(self, rig: Rig) -> None:
        """B (v3) first, then A (v2): A finds the account newer and skips, no PATCH."""
        world = _World(rig)
        account = world.account()
        outcome = await settle(rig, world.jobs(account, 1, 2), Plan(order=[("B", None)]))
        await check(rig, account, world.versions[2].version, outcome)
        skipped = [r for r in outcome.reports if r.result is JobResult.SKIPPED]
        assert len(skipped) == 1 and skipped[0].target.version == world.versions[1].version
        assert [v for _, v in account.binding_history] == [world.v1, world.versions[2].version]


class TestTargetNoLongerValid:
    """v2 expires within the policy's margin after its job was planned: still valid for
    ARM (the resource provider would bind it), no longer for the product."""

    async def test_b_runs_at_every_point_of_a(self, rig: Rig) -> None:
        """B (v3) runs to its end at each of A's calls; A (v2) never binds v2 — it skips,
        v3 superseding it — and the account goes v1 -> v3. The check judges every move
        by the product's policy at the time of the move (:meth:`Rig.check_invariants`)."""
        world = _World(rig)
        world.versions[1].expires = rig.world.clock.now() + rig.engine.policy.expiry_margin / 2
        calls = await _calls_of(world, 1, 2)
        for k in range(calls + 1):
            account = world.account()
            plan = Plan(order=[("A", k), ("B", None), ("A", None)])
            outcome = await settle(rig, world.jobs(account, 1, 2), plan)
            await check(rig, account, world.versions[2].version, outcome)
            skipped = [r.target.version for r in outcome.reports if r.result is JobResult.SKIPPED]
            assert skipped == [world.versions[1].version], outcome.trace
            assert [v for _, v in account.binding_history] == [
                world.v1,
                world.versions[2].version,
            ], outcome.trace


class TestStalledPastTheLease:
    """A stalls before each of its calls in turn for longer than its write lease; B takes
    the lease over and finishes — the same move redelivered (the queue gave up on A), or
    a move to a newer version; then A goes on. A never writes after losing the lease: not
    the account (it renews the lease right before the PATCH, after its last write, however
    long that took: otherwise A's v2 would land over B's v3) and not the ledger (B's
    SUCCEEDED row stands as B left it, not put back to PLANNED: that write is conditional
    on the row A read).

    The one point not explored is between A's last renewal and its PATCH going out: a
    process frozen right there for longer than the lease sends a PATCH nothing can fence
    (ARM's PATCH takes no precondition) — the residual risk docs/operations.md states."""

    @pytest.mark.parametrize("b_target", [1, 2], ids=["same move", "newer version"])
    async def test_a_stalled_run_writes_nothing_after_losing_its_lease(
        self, rig: Rig, b_target: int
    ) -> None:
        world = _World(rig)
        probe = await settle(rig, world.jobs(world.account(), 1), Plan(order=[("A", None)]))
        labels = [step.split(":", 1)[1] for step in probe.trace if step.startswith("A:")]
        sending = labels.index("accounts.update_key_version")
        assert labels[sending - 1] == "ledger.renew_lease"  # renewed right before it
        past_lease = rig.engine.settings.write_lease_ttl + timedelta(seconds=1)
        later = replace(rig.engine, now=lambda: rig.world.clock.now() + past_lease)
        newest = world.versions[b_target].version
        for k in [k for k in range(len(labels) + 1) if k != sending]:
            account = world.account()
            jobs = world.jobs(account, 1, b_target)
            scheduler = Scheduler(Plan(order=[("A", k), ("B", None), ("A", None)]))
            results = await scheduler.run(
                {
                    "A": partial(rotate_account, gated(rig.engine, scheduler), jobs["A"]),
                    "B": partial(rotate_account, gated(later, scheduler), jobs["B"]),
                }
            )
            trace = " ".join(scheduler.trace)
            b = results["B"]
            if isinstance(b, JobReport) and b.result is JobResult.SUCCEEDED:
                entries = await rig.engine.ledger.history(AccountId.parse(account.resource_id))
                states = {entry.to_version: entry.state for entry in entries}
                assert states.get(newest) is LedgerState.SUCCEEDED, f"{k}: {states}: {trace}"
            history = [version for _, version in account.binding_history]
            assert history == sorted(history, key=world.order), f"{k}: {history}: {trace}"
            rig.world.clock.advance(past_lease * 2)  # what was left to redeliver, is
            for name, result in results.items():
                if isinstance(result, BaseException):
                    await rotate_account(rig.engine, jobs[name])
            await rig.drain()
            await check(rig, account, newest, Outcome(trace=scheduler.trace))


class TestPermanentFailures:
    """The account's identity cannot use the key: every move fails for good. Whatever the
    interleaving and the fault, the account stays where it was, and each failed move (one
    per target version) is alerted exactly once — never twice, never by another step."""

    @pytest.mark.parametrize("fault", [None, *ANY_CALL_FAULTS])
    async def test_each_failed_move_alerts_once(
        self, rig: Rig, fault: Fault | None, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.ERROR, logger="cmk.alerts")
        world = _World(rig, denied=True)
        calls = await _calls_of(world, 1, 2)
        assert calls >= 8  # lease, ledger, account and key reads, the PATCH, the alert
        for k in range(calls):
            account = world.account()
            jobs = world.jobs(account, 1, 2)
            faulted = None if fault is None else ("A", k, fault)
            plan = Plan(order=[("A", k + 1), ("B", None), ("A", None)], fault=faulted)
            outcome = await settle(rig, jobs, plan)
            trace = " ".join(outcome.trace)
            assert faulted is None or outcome.fired(faulted), trace
            assert [v for _, v in account.binding_history] == [world.v1], trace
            rig.check_invariants()
            await rig.check_ledger()  # each FAILED row: exactly one alert
            entries = await rig.engine.ledger.history(AccountId.parse(account.resource_id))
            failed = {e.to_version for e in entries if e.state is LedgerState.FAILED}
            mine = [a for a in rig.alerts() if a["subject"].lower() == account.resource_id.lower()]
            assert {a["data"]["toVersion"] for a in mine} == failed, trace
            assert len(mine) == len(failed) >= 1, trace
            # ... and each has its one ERROR line (the Azure Monitor rules' channel).
            lines = [
                r
                for r in caplog.records
                if r.getMessage().startswith("cmk alert ")
                and getattr(r, "cmk_subject", "").lower() == account.resource_id.lower()
            ]
            assert len(lines) == len(mine), trace


#: The seeds of the three-job schedules: fixed, so every run explores the same ones.
SEEDS = range(12)


class TestThreeJobsSeeded:
    """Three jobs (v2, v3 and a duplicate v2) in seeded random orders with random faults."""

    @pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed={seed}")
    async def test_random_schedule(self, rig: Rig, seed: int) -> None:
        """The seed decides the order, the fault and the call it hits: one of the calls the
        jobs make in the schedule's first round — counted by a run of the same schedule
        without the fault, whose calls up to the faulted one the faulted run repeats — so
        the fault fires in every schedule. A failure names the seed, the schedule and its
        trace."""
        rng = random.Random(seed)
        world = _World(rig)
        newest = world.versions[2].version
        order = [(rng.choice("ABC"), rng.randint(1, 6)) for _ in range(8)]
        kind = rng.choice(ANY_CALL_FAULTS)
        account = world.account()
        probe = await settle(rig, world.jobs(account, 1, 2, 1), Plan(order=order))
        await check(rig, account, newest, probe, f"seed {seed} without the fault")
        points = [(name, k) for name in "ABC" for k in range(len(probe.calls(name)))]
        name, index = rng.choice(points)
        fault = (name, index, kind)
        where = f"seed {seed}, order {order}, fault {fault}"
        account = world.account()
        outcome = await settle(rig, world.jobs(account, 1, 2, 1), Plan(order=order, fault=fault))
        assert outcome.fired(fault), f"{where}: the fault did not fire: {outcome.trace}"
        await check(rig, account, newest, outcome, where)


async def _until(condition: Any, what: str) -> None:
    """Wait for ``condition()``; the ceiling only bounds a hang, it decides nothing."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _hold_patch(rig: Rig, account: AccountState) -> tuple[threading.Event, FaultRule]:
    """Hold the account's next PATCH in the network until the event is set."""
    hold = threading.Event()
    rule = rig.estate.sandbox.faults.add(
        host="management.azure.com", path=account.name, method="PATCH", hold=hold, count=1
    )
    return hold, rule


class TestRequestsInFlight:
    """Interleavings inside one job's update, at the HTTP level: the sandbox holds A's PATCH
    (or answers it 429) while B runs, so only the write lease keeps B out."""

    async def test_patch_held_in_flight_keeps_other_jobs_out(self, rig: Rig) -> None:
        """While A's PATCH to v2 is in flight, B (v3) is deferred by A's lease; after A
        lands, B moves the account on. Without the lease B would land first and A's late
        PATCH would take the account back to v2."""
        world = _World(rig)
        account = world.account()
        jobs = world.jobs(account, 1, 2)
        hold, rule = _hold_patch(rig, account)
        first = asyncio.create_task(rotate_account(rig.engine, jobs["A"]))
        try:
            await _until(lambda: rule.hits == 1 or first.done(), "A's PATCH to reach the sandbox")
            assert not first.done(), first.result()
            with pytest.raises(AccountBusy):
                await rotate_account(rig.engine, jobs["B"])
        finally:
            hold.set()
        assert (await first).result is JobResult.SUCCEEDED
        assert (await rotate_account(rig.engine, jobs["B"])).result is JobResult.SUCCEEDED
        versions = [v.version for v in world.versions]
        assert [v for _, v in account.binding_history] == versions
        await check(rig, account, versions[2], Outcome())

    async def test_unanswered_patch_keeps_the_lease_until_it_cannot_land(self, rig: Rig) -> None:
        """A's PATCH to v2 gets no answer (held in the network past its timeout): A keeps
        the lease instead of releasing it, so B (v3) is deferred until the lease expires,
        and A's request, abandoned by its client, never reaches ARM. Released at once, B
        would move the account to v3 and A's PATCH, landing late, take it back to v2."""
        world = _World(rig)
        account = world.account()
        jobs = world.jobs(account, 1, 2)
        accounts = CognitiveAccounts(rig.services.accounts.client, patch_timeout=0.3)
        impatient = replace(rig.engine, accounts=accounts)
        hold, rule = _hold_patch(rig, account)
        sandbox = rig.estate.sandbox

        def dropped() -> bool:
            patches = sandbox.counters.matching(host="management.azure.com", method="PATCH")
            return any(record.fault == rule.id and record.status == 0 for record in patches)

        try:
            with pytest.raises(UpdateUnanswered):
                await rotate_account(impatient, jobs["A"])
            with pytest.raises(AccountBusy):
                await rotate_account(rig.engine, jobs["B"])
            await _until(dropped, "the abandoned PATCH to be dropped in the network")
        finally:
            hold.set()
        rig.world.clock.advance(rig.engine.settings.write_lease_ttl + timedelta(seconds=1))
        assert (await rotate_account(rig.engine, jobs["B"])).result is JobResult.SUCCEEDED
        assert (await rotate_account(rig.engine, jobs["A"])).result is JobResult.SKIPPED
        versions = [v.version for v in world.versions]
        assert [v for _, v in account.binding_history] == [versions[0], versions[2]]
        await check(rig, account, versions[2], Outcome())

    async def test_run_cancelled_while_its_patch_is_out_keeps_the_lease(self, rig: Rig) -> None:
        """A's run is cancelled (Ctrl-C, a host stopping) after its PATCH went out and
        before an answer: the PATCH may still land, so A keeps the lease and B is deferred
        until it expires; then B moves the account on."""
        world = _World(rig)
        account = world.account()
        jobs = world.jobs(account, 1, 2)
        hold, rule = _hold_patch(rig, account)
        first = asyncio.create_task(rotate_account(rig.engine, jobs["A"]))
        try:
            await _until(lambda: rule.hits == 1 or first.done(), "A's PATCH to reach the sandbox")
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            with pytest.raises(AccountBusy):
                await rotate_account(rig.engine, jobs["B"])
        finally:
            hold.set()
        rig.world.clock.advance(rig.engine.settings.write_lease_ttl + timedelta(seconds=1))
        assert (await rotate_account(rig.engine, jobs["B"])).result is JobResult.SUCCEEDED
        assert account.encryption.key_version == world.versions[2].version

    async def test_throttled_patch_is_never_resent_over_a_newer_move(self, rig: Rig) -> None:
        """A's PATCH to v2 is answered 429 Retry-After 1 s; B (v3) runs meanwhile. A is
        deferred (the SDK does not re-send the old body), and its redelivery skips."""
        world = _World(rig)
        account = world.account()
        jobs = world.jobs(account, 1, 2)
        rig.estate.sandbox.faults.add(
            host="management.azure.com",
            path=account.name,
            method="PATCH",
            status=429,
            retry_after=1,
            count=1,
        )
        with pytest.raises(ThrottledError):
            await rotate_account(rig.engine, jobs["A"])
        assert (await rotate_account(rig.engine, jobs["B"])).result is JobResult.SUCCEEDED
        assert (await rotate_account(rig.engine, jobs["A"])).result is JobResult.SKIPPED
        versions = [v.version for v in world.versions]
        assert [v for _, v in account.binding_history] == [versions[0], versions[2]]
        await check(rig, account, versions[2], Outcome())

    async def test_duplicate_job_waits_for_the_original(self, rig: Rig) -> None:
        """A second job for the same account and version (a duplicated event) while the
        first one's PATCH is in flight is deferred, not dropped — the first could be dead
        and this its own message redelivered; once the first has landed it ends at once."""
        world = _World(rig)
        account = world.account()
        job = world.jobs(account, 1)["A"]
        hold, rule = _hold_patch(rig, account)
        first = asyncio.create_task(rotate_account(rig.engine, job))
        try:
            await _until(lambda: rule.hits == 1 or first.done(), "the PATCH to reach the sandbox")
            with pytest.raises(AccountBusy, match="move to"):
                await rotate_account(rig.engine, job)
        finally:
            hold.set()
        assert (await first).result is JobResult.SUCCEEDED
        again = await rotate_account(rig.engine, job)
        assert again.result is JobResult.SUCCEEDED and again.cause == "already on target"
        assert [v for _, v in account.binding_history] == [world.v1, world.versions[1].version]


async def _patch_call(world: _World, job: str, *targets: int, checked: bool = True) -> int:
    """The index, among ``job``'s port calls, of its PATCH when it runs alone first."""
    account = world.account()
    outcome = await settle(world.rig, world.jobs(account, *targets), Plan(order=[(job, None)]))
    if checked:
        await check(world.rig, account, world.versions[max(targets)].version, outcome)
    calls = [step for step in outcome.trace if step.startswith(f"{job}:")]
    return calls.index(f"{job}:{UPDATE}")


#: The order of the runs after the first round (the redeliveries, once the lease expired).
THEN = {"A-first": Plan(), "B-first": Plan(order=[("B", None)])}
#: Landing points tried at most (the exploration ends where the round does).
MAX_LANDINGS = 12


def _lease_kept(outcome: Outcome, late: str) -> None:
    """In the first round the late job's PATCH went unanswered and every other job was
    deferred by the write lease it kept: nobody else wrote while the PATCH could land."""
    trace = " ".join(outcome.trace)
    assert f"{late}:{UPDATE}!late" in outcome.trace, trace
    first = {name: type(error) for round_, name, error in outcome.raised if round_ == 1}
    assert first.pop(late) is UpdateUnanswered, trace
    assert set(first.values()) <= {AccountBusy}, f"{first}: {trace}"


async def _explore_landings(
    rig: Rig,
    world: _World,
    targets: tuple[int, ...],
    order: list[tuple[str, int | None]],
    fault: tuple[str, int, Fault],
    then: Plan,
    expect: Any,
) -> int:
    """Run the schedule with the LATE PATCH landing at every point of the first round
    after it (and at its end, and never); ``expect(account, outcome, land)`` checks
    what is particular to each. Returns how many schedules ran."""
    for runs, land in enumerate([None, *range(MAX_LANDINGS)], start=1):
        account = world.account()
        plan = Plan(order=order, fault=fault, land=land)
        outcome = await settle(rig, world.jobs(account, *targets), plan, later=then)
        await expect(account, outcome, land)
        if outcome.landed == "end":
            return runs
        assert outcome.landed == ("never" if land is None else f"call {land}"), outcome.trace
    raise AssertionError(f"the round did not end within {MAX_LANDINGS} calls")


class TestLatePatch:
    """A PATCH whose answer never comes (UpdateUnanswered, raised by the real adapter: the
    request was held in the network, then its connection dropped) lands late — at every
    point of the other jobs' runs while its job's write lease still holds, at the end of
    that round, or never — whatever order the redeliveries then take. Besides the
    invariants of :func:`check`: the late job kept its write lease, so every other job was
    deferred while the PATCH could land, and the account's history shows where it landed.
    """

    @pytest.mark.parametrize("then", THEN)
    @pytest.mark.parametrize("b_runs", ["right-after-the-patch", "after-a-ends"])
    async def test_a_patch_lands_at_every_point(self, rig: Rig, b_runs: str, then: str) -> None:
        """A (v2) is cut off from its PATCH; B (v3) runs right after the PATCH or after A's
        run ends; the PATCH lands at each point, at the end, or never. The account goes
        v1 -> v2 -> v3 when it landed (B moves on from there), and without it v1 -> v2 -> v3
        (A redelivered first) or v1 -> v3 (B first: A's redelivery skips)."""
        world = _World(rig)
        patch = await _patch_call(world, "A", 1, 2)
        order: list[tuple[str, int | None]] = [("A", None), ("B", None)]
        if b_runs == "right-after-the-patch":
            order = [("A", patch + 1), ("B", None), ("A", None)]
        versions = [v.version for v in world.versions]

        async def expect(account: AccountState, outcome: Outcome, land: int | None) -> None:
            await check(rig, account, versions[2], outcome)
            _lease_kept(outcome, "A")
            history = [v for _, v in account.binding_history]
            skipped = land is None and then == "B-first"
            assert history == (versions[::2] if skipped else versions), outcome.trace

        runs = await _explore_landings(
            rig, world, (1, 2), order, ("A", patch, Fault.LATE), THEN[then], expect
        )
        assert runs >= 3  # never, before B's first call, ..., at the end

    @pytest.mark.parametrize("then", THEN)
    async def test_newer_patch_lands_late(self, rig: Rig, then: str) -> None:
        """B's PATCH (v3) is the one cut off, A (v2) runs right after it: when B's PATCH
        lands, A's redelivery skips and the account goes v1 -> v3; when it never does, A
        (redelivered first) moves it to v2 and B's redelivery on to v3."""
        world = _World(rig)
        patch = await _patch_call(world, "B", 1, 2)
        order: list[tuple[str, int | None]] = [("B", patch + 1), ("A", None), ("B", None)]
        versions = [v.version for v in world.versions]

        async def expect(account: AccountState, outcome: Outcome, land: int | None) -> None:
            await check(rig, account, versions[2], outcome)
            _lease_kept(outcome, "B")
            history = [v for _, v in account.binding_history]
            through_v2 = land is None and then == "A-first"
            assert history == (versions if through_v2 else versions[::2]), outcome.trace

        await _explore_landings(
            rig, world, (1, 2), order, ("B", patch, Fault.LATE), THEN[then], expect
        )

    async def test_three_jobs(self, rig: Rig) -> None:
        """A (v2) cut off from its PATCH, B (v3) and C (a duplicate of A) running after it:
        the PATCH lands at each point of B's and C's runs."""
        world = _World(rig)
        patch = await _patch_call(world, "A", 1, 2)
        order: list[tuple[str, int | None]] = [
            ("A", patch + 1),
            ("B", None),
            ("C", None),
            ("A", None),
        ]
        newest = world.versions[2].version

        async def expect(account: AccountState, outcome: Outcome, land: int | None) -> None:
            await check(rig, account, newest, outcome)
            _lease_kept(outcome, "A")

        runs = await _explore_landings(
            rig, world, (1, 2, 1), order, ("A", patch, Fault.LATE), Plan(), expect
        )
        assert runs >= 4

    @pytest.mark.parametrize("then", THEN)
    async def test_failed_move_lands_late(self, rig: Rig, then: str) -> None:
        """The account's identity cannot use the key: A's late PATCH (v2) lands as a Failed
        update, wherever it lands; the account stays on v1, and each failed move (v2, v3)
        is alerted exactly once — by the job that saw it fail, never twice."""
        world = _World(rig, denied=True)
        patch = await _patch_call(world, "A", 1, 2, checked=False)
        order: list[tuple[str, int | None]] = [("A", patch + 1), ("B", None), ("A", None)]

        async def expect(account: AccountState, outcome: Outcome, land: int | None) -> None:
            trace = " ".join(outcome.trace)
            _lease_kept(outcome, "A")
            assert [v for _, v in account.binding_history] == [world.v1], trace
            rig.check_invariants()
            await rig.check_ledger()  # each FAILED row: exactly one alert
            entries = await rig.engine.ledger.history(AccountId.parse(account.resource_id))
            failed = {e.to_version for e in entries if e.state is LedgerState.FAILED}
            assert failed == {v.version for v in world.versions[1:]}, trace
            mine = [a for a in rig.alerts() if a["subject"].lower() == account.resource_id.lower()]
            got = sorted(a["data"]["toVersion"] for a in mine)
            assert got == sorted(failed), f"{got} {failed} {trace}"

        await _explore_landings(
            rig, world, (1, 2), order, ("A", patch, Fault.LATE), THEN[then], expect
        )


class TestUpdateFaults:
    """Each fault on the PATCH raises what the real adapter raises for it, and the worker
    treats it as such: after an answered PATCH (429, 503) A releases the write lease, so B,
    running once A's run has ended, moves the account at once; after an unanswered one
    (lost, late) A keeps it, so B is deferred until it expires."""

    @pytest.mark.parametrize(
        ("fault", "raised", "kept"),
        [
            (Fault.THROTTLED, ThrottledError, False),
            (Fault.UNAVAILABLE, ServiceUnavailable, False),
            (Fault.LOST, UpdateUnanswered, True),
            (Fault.LATE, UpdateUnanswered, True),
        ],
    )
    async def test_patch_fault(
        self, rig: Rig, fault: Fault, raised: type[Exception], kept: bool
    ) -> None:
        world = _World(rig)
        patch = await _patch_call(world, "A", 1, 2)
        account = world.account()
        plan = Plan(order=[("A", None), ("B", None)], fault=("A", patch, fault))
        outcome = await settle(rig, world.jobs(account, 1, 2), plan)
        await check(rig, account, world.versions[2].version, outcome)
        trace = " ".join(outcome.trace)
        first = {name: error for round_, name, error in outcome.raised if round_ == 1}
        assert type(first["A"]) is raised, f"{first['A']!r}: {trace}"
        if isinstance(first["A"], ThrottledError):
            assert first["A"].retry_after == 1
        assert isinstance(first.get("B"), AccountBusy) is kept, trace
        landed = [step for step in outcome.trace if step.startswith("~A:PATCH lands")]
        versions = [v.version for v in world.versions]
        if kept:  # the cut-off PATCH landed (at once, or when the round ended)
            assert landed == [f"~A:PATCH lands (to {versions[1]})"], trace
            assert [v for _, v in account.binding_history] == versions, trace
        else:  # answered: it never reached the resource provider
            assert landed == [] and [v for _, v in account.binding_history] == versions[::2]


async def _submitted(world: _World, target: int) -> tuple[AccountState, RotationJob]:
    """A fresh account whose job A (to ``target``) PATCHed and stopped waiting before
    the update ended: A recorded SUBMITTED and queued its VERIFY, which carries A's write
    lease. The update then lands; the account answers at once from here on."""
    rig = world.rig
    account = world.rig.estate.account(
        f"slow{world.count}", rig.estate.kv, world.v1, lro_seconds=math.inf
    )
    world.count += 1
    job = world.jobs(account, target)["A"]
    assert (await rotate_account(_impatient(rig.engine), job)).result is JobResult.SUBMITTED
    verify = await take_verify(rig, account)
    assert verify.lease_owner is not None
    rp_for(rig.world).finish_now(account.resource_id)
    account.lro_seconds = 0.0
    return account, verify


async def _verify_calls(world: _World) -> int:
    """How many port calls A's VERIFY makes when it runs alone (the points to preempt)."""
    _, verify = await _submitted(world, 1)
    alone = await settle(world.rig, {"A": verify}, Plan(order=[("A", None)]))
    calls = len(alone.calls("A"))
    assert calls >= 4  # lease, ledger, account read, ledger write, release
    return calls


class TestVerifyHoldsTheLease:
    """A's update outlasted its wait: A recorded SUBMITTED and handed its write lease to
    its VERIFY job. Until that verify has settled what A's update did, no other job may
    write the account — else B's update could land first and A's verify would take B's
    outcome (a Failed update, another version) for its own."""

    @pytest.mark.parametrize("fault", [None, *ANY_CALL_FAULTS])
    async def test_b_at_every_point_of_a_verify(self, rig: Rig, fault: Fault | None) -> None:
        """B (v3) runs at each point of A's VERIFY (v2), with a fault at that very point:
        B is deferred until A's verify released the lease (or, A dead, until it expired);
        A's move is recorded as it happened, the account ends on v3, nothing alerted."""
        world = _World(rig)
        calls = await _verify_calls(world)
        for k in range(calls):
            account, verify = await _submitted(world, 1)
            jobs = {"A": verify, "B": world.jobs(account, 1, 2)["B"]}
            faulted = None if fault is None else ("A", k, fault)
            plan = Plan(order=[("A", k + 1), ("B", None), ("A", None)], fault=faulted)
            outcome = await settle(rig, jobs, plan)
            await check(rig, account, world.versions[2].version, outcome)
            trace = " ".join(outcome.trace)
            first = {name: error for round_, name, error in outcome.raised if round_ == 1}
            # B only runs once A's verify gave the lease back: A's last call (the release)
            # was made before B's turn, and it was applied.
            released = k == calls - 1 and fault in (None, Fault.LOST)
            assert isinstance(first.get("B"), AccountBusy) is not released, f"{first}: {trace}"
            states = {e.to_version: e.state for e in await rig.ledger(account)}
            assert states[world.versions[1].version] is LedgerState.SUCCEEDED, trace
            versions = [v.version for v in world.versions]
            assert [v for _, v in account.binding_history] == versions, trace

    @pytest.mark.parametrize("fault", ANY_CALL_FAULTS)
    async def test_a_verify_that_failed_keeps_the_lease(self, rig: Rig, fault: Fault) -> None:
        """A's VERIFY meets a fault at each of its calls and ends its run (B runs only
        then): unless it settled, it keeps the lease for its redelivery, so B is still
        deferred; the redelivered verify settles A's move, then B moves the account on."""
        world = _World(rig)
        calls = await _verify_calls(world)
        for k in range(calls):
            account, verify = await _submitted(world, 1)
            jobs = {"A": verify, "B": world.jobs(account, 1, 2)["B"]}
            plan = Plan(order=[("A", None), ("B", None)], fault=("A", k, fault))
            outcome = await settle(rig, jobs, plan, later=Plan(order=[("A", None)]))
            await check(rig, account, world.versions[2].version, outcome)
            trace = " ".join(outcome.trace)
            first = {name: error for round_, name, error in outcome.raised if round_ == 1}
            settled = k == calls - 1 and fault is Fault.LOST  # the release itself, applied
            assert isinstance(first.get("B"), AccountBusy) is not settled, f"{first}: {trace}"
            states = {e.to_version: e.state for e in await rig.ledger(account)}
            assert states[world.versions[1].version] is LedgerState.SUCCEEDED, trace


async def _slow_path(world: _World) -> tuple[int, int]:
    """How many port calls A's ROTATE and then its VERIFY make when A runs first in each
    round (B, v3, deferred by the lease A hands on), checking that the path is the one
    the worker takes for an update that outlasts its wait: A's ROTATE records SUBMITTED
    and queues a VERIFY carrying its write lease; that VERIFY, taken from the queue as it
    was sent, finds the update ended and records SUCCEEDED; then B moves the account on."""
    rig = world.rig
    account = world.account()
    first = Plan(order=[("A", None), ("B", None)])
    outcome = await settle(rig, world.jobs(account, 1, 2), first, engine=world.engine)
    await check(rig, account, world.versions[2].version, outcome)
    [(sender, verify)] = outcome.queued[0]
    assert (sender, verify.step) == ("A", JobStep.VERIFY) and verify.lease_owner is not None
    first_round = {name: type(error) for round_, name, error in outcome.raised if round_ == 1}
    assert first_round == {"B": AccountBusy}, outcome.trace
    a = world.versions[1].version
    path = [(r.step, r.result) for r in outcome.reports if r.target.version == a]
    assert path == [
        (JobStep.ROTATE, JobResult.SUBMITTED),
        (JobStep.VERIFY, JobResult.SUCCEEDED),
    ], outcome.trace
    return len(outcome.calls("A", 1)), len(outcome.calls("A", 2))


class TestUpdateOutlastsTheWait:
    """Every update outlasts its job's wait (it ends between two deliveries): each move
    goes ROTATE -> SUBMITTED -> VERIFY, the VERIFY being the message the worker queued.
    A (v2) meets a fault at each call of its ROTATE, or of its VERIFY, with B (v3)
    running right after that call; then redeliveries. The invariants of :func:`check`
    hold: the write lease A hands on keeps B out until A's move is settled."""

    @pytest.mark.parametrize("fault", ANY_CALL_FAULTS)
    @pytest.mark.parametrize("step", [JobStep.ROTATE, JobStep.VERIFY])
    async def test_fault_at_every_call_of_each_step(
        self, rig: Rig, step: JobStep, fault: Fault
    ) -> None:
        world = _World(rig, slow=True)
        rotate_calls, verify_calls = await _slow_path(world)
        assert rotate_calls >= 8 and verify_calls >= 4
        faulted_round = 1 if step is JobStep.ROTATE else 2
        calls = rotate_calls if step is JobStep.ROTATE else verify_calls
        for k in range(calls):
            account = world.account()
            faulted = ("A", k, fault)
            interleaved = Plan(order=[("A", k + 1), ("B", None), ("A", None)], fault=faulted)
            plans = [interleaved]
            if step is JobStep.VERIFY:  # A submits first, undisturbed
                plans.insert(0, Plan(order=[("A", None), ("B", None)]))
            jobs = world.jobs(account, 1, 2)
            outcome = await settle(rig, jobs, plans, engine=world.engine)
            where = f"{step.value} call {k}"
            assert outcome.fired(faulted, faulted_round), f"{where}: {outcome.trace}"
            if step is JobStep.VERIFY:
                queued = [(sender, job.step) for sender, job in outcome.queued[0]]
                assert queued == [("A", JobStep.VERIFY)], f"{where}: {outcome.trace}"
            await check(rig, account, world.versions[2].version, outcome, where)
