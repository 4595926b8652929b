"""A deterministic scheduler for concurrent jobs: one port call at a time, in a chosen order.

Each job runs as an asyncio task against an Engine whose ports are wrapped by
:class:`Gate`. Before every port call the task parks; the scheduler lets exactly one
parked task proceed, and waits until it parks again or ends, so the order of every call
to Azure (the sandbox) and to the ledger (Azurite) is the order the scheduler picked —
a function of the schedule alone. The calls themselves are real: the adapters talk to
the sandbox and Azurite through the real SDKs.

A :class:`Plan` picks the order (run one job until its k-th call, then another ...) and
may inject a fault at one call of one job. Each fault raises what the real adapter
raises for it:

=============  =============================================  =============================
fault          any port call                                  the account update (PATCH)
=============  =============================================  =============================
THROTTLED      ThrottledError (retry_after 1 s), not sent     ARM answers 429 Retry-After 1:
                                                              the adapter's ThrottledError
UNAVAILABLE    ServiceUnavailable, not sent                   ARM answers 503: the adapter's
                                                              ServiceUnavailable (answered:
                                                              not UpdateUnanswered)
LOST           applied, then ServiceUnavailable (the SDK's    the connection drops after
               retries of a lost answer ran out)              the PATCH went out: the
                                                              adapter's UpdateUnanswered,
                                                              and the PATCH lands at once
LATE           (the account update only)                      the PATCH is held in the
                                                              network, then its connection
                                                              drops: UpdateUnanswered; it
                                                              lands where ``Plan.land`` says
KILLED         the process dies before the call (:class:`Killed`: the job makes no
               further call, not even in ``finally``)
=============  =============================================  =============================

The update's faults are made by the sandbox's fault rules on that account's PATCH
(:class:`Network`), so the exception, its message and cause are the adapter's own. The
sandbox never hands a request its client gave up on to ARM (it dies in the network), so
a PATCH that lands after its client was cut off is the same PATCH — same body, same
account — sent to ARM at that later point, its answer going nowhere: at once for LOST,
at the point the scheduler picks for LATE (before the ``Plan.land``-th call granted after
the faulted one; at the end of the round if fewer follow — still under the write lease
the job kept, whose expiry bounds how late a PATCH can land; never if ``land`` is None).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

from cmk.adapters.accounts import CognitiveAccounts, encryption_patch
from cmk.errors import CmkError, ServiceUnavailable, ThrottledError, UpdateUnanswered
from cmk.ports import AccountRecord, JobQueue, RotationJob, UpdateOutcome
from cmk.sandbox.platform.faults import Counters, FaultRule, Faults
from cmk.usecases import Engine

CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("job", default=None)


class Killed(BaseException):
    """The process running the job died at this call: nothing after it happens."""


class Fault(StrEnum):
    THROTTLED = "throttled"  # 429 with Retry-After before the call reached the service
    UNAVAILABLE = "unavailable"  # 5xx before the call reached the service
    LOST = "lost"  # the call was applied, its response lost (a dropped connection)
    KILLED = "killed"  # the process died before the call
    LATE = "late"  # the account update only: its PATCH lands later, where the plan says


#: The faults that make sense at any port call (LATE is the account update's only).
ANY_CALL_FAULTS = (Fault.THROTTLED, Fault.UNAVAILABLE, Fault.LOST, Fault.KILLED)

#: The port call whose faults go through the sandbox (:class:`Network`).
UPDATE = "accounts.update_key_version"


@dataclass
class Plan:
    """Which job runs when, and which call fails how.

    ``order`` lists (job, calls) pairs: run ``job`` for ``calls`` port calls (None: until
    it ends), then the next pair; jobs not listed, or once the list is used up, run in
    name order. ``fault`` is (job, call index, Fault) or None. ``land`` places a LATE
    PATCH: it lands right before the ``land``-th call granted after the faulted one (0:
    before any other), or at the end of the round if fewer calls follow; None: never (it
    died in the network).
    """

    order: list[tuple[str, int | None]] = field(default_factory=list)
    fault: tuple[str, int, Fault] | None = None
    land: int | None = 0


Landing = Callable[[], Awaitable[str]]


class Scheduler:
    """Runs tasks one port call at a time, in the order of a :class:`Plan`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.parked: dict[str, asyncio.Future[Fault | None]] = {}
        self.calls: dict[str, int] = {}
        self.dead: set[str] = set()
        self.trace: list[str] = []
        #: Where a LATE PATCH landed: "call N" (before the N-th call granted after the
        #: faulted one), "end" (when the round ended), "never"; None without one.
        self.landed: str | None = None
        self._changed = asyncio.Event()
        self._order = list(plan.order)
        self._landing: tuple[str, Landing] | None = None
        self._granted_since = 0

    async def point(self, label: str) -> Fault | None:
        """Park the current job before a port call; returns the fault to apply, if any."""
        name = CURRENT.get()
        if name is None:
            return None
        if name in self.dead:
            raise Killed
        future: asyncio.Future[Fault | None] = asyncio.get_running_loop().create_future()
        self.parked[name] = future
        self._changed.set()
        fault = await future
        self.trace.append(f"{name}:{label}{'!' + fault.value if fault else ''}")
        if fault is Fault.KILLED:
            self.dead.add(name)
            raise Killed
        return fault

    def late(self, landing: Landing) -> None:
        """The current job's PATCH is out in the network: land it where the plan says."""
        name = CURRENT.get()
        assert name is not None and self._landing is None, "one LATE PATCH per round"
        self._landing = (name, landing)
        self._granted_since = 0

    def _landing_due(self) -> bool:
        land = self.plan.land
        return self._landing is not None and land is not None and self._granted_since >= land

    async def _land(self, where: str) -> None:
        """Land the LATE PATCH now, while every job is parked (nothing else runs)."""
        assert self._landing is not None
        name, landing = self._landing
        self._landing = None
        self.landed = where
        self.trace.append(f"~{name}:PATCH lands ({await landing()})")

    def _pick(self, ready: list[str]) -> str:
        """The next job to run: the plan's, else the first by name."""
        while self._order:
            job, calls = self._order[0]
            if job not in ready or calls == 0:
                self._order.pop(0)  # that job has ended, or its turn is used up
                continue
            if calls is not None:
                self._order[0] = (job, calls - 1)
            return job
        return sorted(ready)[0]

    async def run(self, jobs: dict[str, Callable[[], Awaitable[Any]]]) -> dict[str, Any]:
        """Run the jobs to their end; returns each job's result or the exception it raised."""
        results: dict[str, Any] = {}

        async def one(name: str, make: Callable[[], Awaitable[Any]]) -> None:
            CURRENT.set(name)
            try:
                results[name] = await make()
            except (Exception, Killed) as error:
                results[name] = error
            finally:
                self._changed.set()

        tasks = {name: asyncio.create_task(one(name, make)) for name, make in jobs.items()}
        running = set(tasks)
        while running:
            self._changed.clear()
            running = {n for n in running if not tasks[n].done()}
            if any(n not in self.parked for n in running):
                await self._changed.wait()  # a job is between two calls: let it reach one
                continue
            if not running:
                break
            if self._landing_due():
                await self._land(f"call {self._granted_since}")
            name = self._pick(sorted(running))
            index = self.calls.get(name, 0)
            self.calls[name] = index + 1
            fault = None
            if self.plan.fault is not None and self.plan.fault[:2] == (name, index):
                fault = self.plan.fault[2]
            if self._landing is not None:
                self._granted_since += 1
            self.parked.pop(name).set_result(fault)
        if self._landing is not None:
            if self.plan.land is None:
                self.landed = "never"
                self.trace.append(f"~{self._landing[0]}:PATCH never lands")
                self._landing = None
            else:
                await self._land("end")
        return results


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition()``; the ceiling only bounds a hang, it decides nothing."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Network:
    """The network between the engine and ARM, for the faults of the account update: a
    sandbox fault rule on that account's next PATCH, so the real adapter meets the
    fault and raises its own error. ``accounts`` (the engine's adapter, unwrapped) sends
    the PATCH that lands after its client was cut off."""

    def __init__(self, faults: Faults, counters: Counters, accounts: CognitiveAccounts) -> None:
        self._faults = faults
        self._counters = counters
        self._accounts = accounts

    async def update(
        self,
        scheduler: Scheduler,
        call: Callable[..., Awaitable[UpdateOutcome]],
        fault: Fault,
        record: AccountRecord,
        version: str,
        wait: timedelta,
    ) -> UpdateOutcome:
        """``call(record, version, wait=wait)`` with ``fault`` on its PATCH."""
        answers: dict[Fault, dict[str, Any]] = {
            Fault.THROTTLED: {"status": 429, "retry_after": 1},
            Fault.UNAVAILABLE: {"status": 503},
        }
        held = threading.Event() if fault is Fault.LATE else None
        rule = self._faults.add(
            host="management.azure.com",
            path=f"/accounts/{re.escape(record.account_id.name)}$",
            method="PATCH",
            count=1,
            hold=held,
            **answers.get(fault, {"drop": True}),
        )
        try:
            attempt = asyncio.ensure_future(call(record, version, wait=wait))
            if held is not None:
                try:  # held in the network until it surely got there ...
                    await until(lambda: rule.hits == 1 or attempt.done(), "the PATCH to be held")
                finally:
                    held.set()  # ... then its connection drops: the client is cut off
            try:
                return await attempt
            except UpdateUnanswered:
                await self._dropped(rule)
                landing = self._landing(record, version)
                if fault is Fault.LATE:
                    scheduler.late(landing)
                else:
                    scheduler.trace.append(f"~{CURRENT.get()}:PATCH lands ({await landing()})")
                raise
        finally:
            self._faults.remove(rule)

    async def _dropped(self, rule: FaultRule) -> None:
        """The cut-off PATCH died in the network: logged unanswered, never handled."""
        assert rule.hits == 1, "the PATCH never reached the network"

        def logged() -> bool:
            patches = self._counters.matching(host="management.azure.com", method="PATCH")
            return any(r.fault == rule.id and r.status == 0 for r in patches)

        await until(logged, "the cut-off PATCH to be dropped")

    def _landing(self, record: AccountRecord, version: str) -> Landing:
        """The cut-off PATCH, sent again to land: same account, same body, no one waiting
        for its answer."""
        reference = record.key_vault_reference
        assert reference is not None, "the worker PATCHes from a GET of the account"
        account_id = record.account_id

        async def land() -> str:
            body = encryption_patch(reference, version)
            action = f"late PATCH of {account_id.name} to {version}"
            try:
                await self._accounts.send_patch(account_id, body, action)
            except CmkError as error:
                return f"refused: {type(error).__name__}"
            return f"to {version}"

        return land


class Gate:
    """A port whose every coroutine method first waits for the scheduler's turn."""

    def __init__(
        self, inner: object, port: str, scheduler: Scheduler, network: Network | None = None
    ) -> None:
        self._inner = inner
        self._port = port
        self._scheduler = scheduler
        self._network = network

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._inner, attribute)
        if not inspect.iscoroutinefunction(value):
            return value
        label = f"{self._port}.{attribute}"

        async def call(*args: Any, **kwargs: Any) -> Any:
            fault = await self._scheduler.point(label)
            if fault is not None and label == UPDATE:
                if self._network is None:
                    raise ValueError(f"a fault on {UPDATE} needs a Network")
                return await self._network.update(self._scheduler, value, fault, *args, **kwargs)
            if fault is Fault.LATE:
                raise ValueError(f"LATE applies to {UPDATE} only, not {label}")
            if fault is Fault.THROTTLED:
                raise ThrottledError(f"{attribute}: 429 (injected)", retry_after=1.0)
            if fault is Fault.UNAVAILABLE:
                raise ServiceUnavailable(f"{attribute}: 503 (injected)")
            result = await value(*args, **kwargs)
            if fault is Fault.LOST:
                raise ServiceUnavailable(f"{attribute}: response lost (injected)")
            return result

        return call


class Outbox:
    """The job queue as the engine sees it, noting which job (the scheduler's name) sent
    each message: what the real queue (beneath, Azurite) received, and from whom. A send
    is noted once the queue took it — a fault after it (LOST) leaves it sent."""

    def __init__(self, inner: JobQueue) -> None:
        self._inner = inner
        self.sent: list[tuple[str | None, RotationJob]] = []

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    async def enqueue(self, job: RotationJob, *, delay: timedelta | None = None) -> None:
        await self._inner.enqueue(job, delay=delay)
        self.sent.append((CURRENT.get(), job))

    async def enqueue_many(self, jobs: Sequence[RotationJob]) -> int:
        raise AssertionError("the worker sends one job at a time")


def gated(engine: Engine, scheduler: Scheduler, network: Network | None = None) -> Engine:
    """``engine`` with every port behind a :class:`Gate` of ``scheduler``; the account
    update's faults go through ``network``."""
    return replace(
        engine,
        keys=Gate(engine.keys, "keys", scheduler),  # type: ignore[arg-type]
        accounts=Gate(engine.accounts, "accounts", scheduler, network),  # type: ignore[arg-type]
        ledger=Gate(engine.ledger, "ledger", scheduler),  # type: ignore[arg-type]
        alerts=Gate(engine.alerts, "alerts", scheduler),  # type: ignore[arg-type]
        jobs=Gate(engine.jobs, "jobs", scheduler),  # type: ignore[arg-type]
    )
