"""A deterministic scheduler for concurrent jobs: one port call at a time, in a chosen order.

Each job runs as an asyncio task against an Engine whose ports are wrapped by
:class:`Gate`. Before every port call the task parks; the scheduler lets exactly one
parked task proceed, and waits until it parks again or ends, so the order of every call
to Azure (the sandbox) and to the ledger (Azurite) is the order the scheduler picked —
a function of the schedule alone. The calls themselves are real: the adapters talk to
the sandbox and Azurite through the real SDKs.

A :class:`Plan` picks the order (run one job until its k-th call, then another ...) and
may inject a fault at one call of one job: the call fails before it is made (a 429 with
Retry-After, a 5xx), fails after it was applied (a lost response), or the process dies
there (:class:`Killed`: the job makes no further call, not even in ``finally``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cmk.errors import ServiceUnavailable, ThrottledError
from cmk.usecases import Engine

CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("job", default=None)


class Killed(BaseException):
    """The process running the job died at this call: nothing after it happens."""


class Fault(StrEnum):
    THROTTLED = "throttled"  # 429 with Retry-After before the call reached the service
    UNAVAILABLE = "unavailable"  # 5xx before the call reached the service
    LOST = "lost"  # the call was applied, its response lost (a dropped connection)
    KILLED = "killed"  # the process died before the call


@dataclass
class Plan:
    """Which job runs when, and which call fails how.

    ``order`` lists (job, calls) pairs: run ``job`` for ``calls`` port calls (None: until
    it ends), then the next pair; jobs not listed, or once the list is used up, run in
    name order. ``fault`` is (job, call index, Fault) or None.
    """

    order: list[tuple[str, int | None]] = field(default_factory=list)
    fault: tuple[str, int, Fault] | None = None


class Scheduler:
    """Runs tasks one port call at a time, in the order of a :class:`Plan`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.parked: dict[str, asyncio.Future[Fault | None]] = {}
        self.calls: dict[str, int] = {}
        self.dead: set[str] = set()
        self.trace: list[str] = []
        self._changed = asyncio.Event()
        self._order = list(plan.order)

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
            name = self._pick(sorted(running))
            index = self.calls.get(name, 0)
            self.calls[name] = index + 1
            fault = None
            if self.plan.fault is not None and self.plan.fault[:2] == (name, index):
                fault = self.plan.fault[2]
            self.parked.pop(name).set_result(fault)
        return results


class Gate:
    """A port whose every coroutine method first waits for the scheduler's turn."""

    def __init__(self, inner: object, port: str, scheduler: Scheduler) -> None:
        self._inner = inner
        self._port = port
        self._scheduler = scheduler

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._inner, attribute)
        if not inspect.iscoroutinefunction(value):
            return value

        async def call(*args: Any, **kwargs: Any) -> Any:
            fault = await self._scheduler.point(f"{self._port}.{attribute}")
            if fault is Fault.THROTTLED:
                raise ThrottledError(f"{attribute}: 429 (injected)", retry_after=1.0)
            if fault is Fault.UNAVAILABLE:
                raise ServiceUnavailable(f"{attribute}: 503 (injected)")
            result = await value(*args, **kwargs)
            if fault is Fault.LOST:
                raise ServiceUnavailable(f"{attribute}: response lost (injected)")
            return result

        return call


def gated(engine: Engine, scheduler: Scheduler) -> Engine:
    """``engine`` with every port behind a :class:`Gate` of ``scheduler``."""
    return replace(
        engine,
        keys=Gate(engine.keys, "keys", scheduler),  # type: ignore[arg-type]
        accounts=Gate(engine.accounts, "accounts", scheduler),  # type: ignore[arg-type]
        ledger=Gate(engine.ledger, "ledger", scheduler),  # type: ignore[arg-type]
        alerts=Gate(engine.alerts, "alerts", scheduler),  # type: ignore[arg-type]
        jobs=Gate(engine.jobs, "jobs", scheduler),  # type: ignore[arg-type]
    )
