"""Timer triggers on the local host: firing one (with the function's ``@app.retry``
policy, which the host applies to timer triggers) and a scheduler that fires each timer
function at the occurrences of its NCRONTAB schedule (:mod:`cmk.sandbox.funchost.schedule`).

As on the real host a timer runs on one instance only (the singleton lock), here
instance 0. ``runOnStartup`` fires once when the scheduler starts. Not emulated: the
schedule monitor (``useMonitor``), so ``past_due`` is only what the caller passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cmk.sandbox.funchost.config import parse_timespan
from cmk.sandbox.funchost.index import FunctionIndexError, IndexedFunction
from cmk.sandbox.funchost.invoke import TriggerInput, timer_input
from cmk.sandbox.funchost.schedule import Schedule, ScheduleError

logger = logging.getLogger(__name__)

MAX_RETRIES = 100  # a retry count of -1 (forever) is capped here


class Invoker(Protocol):
    def invoke(
        self,
        function: IndexedFunction,
        trigger: TriggerInput,
        *,
        instance: int = 0,
        retry_count: int = 0,
        max_retry_count: int = 0,
    ) -> Awaitable[Any]: ...


def retry_delays(policy: Mapping[str, Any] | None) -> list[timedelta]:
    """The waits before each retry of a ``@app.retry`` policy (empty: no retry)."""
    if not policy:
        return []
    count = int(policy.get("max_retry_count", 0))
    count = MAX_RETRIES if count < 0 else min(count, MAX_RETRIES)
    strategy = str(policy.get("strategy", "")).lower()
    if strategy == "fixed_delay":
        delay = parse_timespan(policy.get("delay_interval", "00:00:00"), "retry.delay_interval")
        return [delay] * count
    if strategy == "exponential_backoff":
        low = parse_timespan(policy.get("minimum_interval", "00:00:00"), "retry.minimum_interval")
        high = parse_timespan(policy.get("maximum_interval", "00:00:00"), "retry.maximum_interval")
        return [min(low * (2**n), max(high, low)) for n in range(count)]
    raise FunctionIndexError(f"retry strategy {strategy!r}: fixed_delay or exponential_backoff")


async def fire_with_retry(
    host: Invoker,
    function: IndexedFunction,
    *,
    past_due: bool = False,
    last: datetime | None = None,
    next_run: datetime | None = None,
) -> None:
    """Invoke a timer function; on failure retry per its policy; raise the last failure."""
    delays = retry_delays(function.retry)
    for attempt in range(len(delays) + 1):
        trigger = timer_input(past_due=past_due, last=last, next_run=next_run)
        try:
            await host.invoke(
                function, trigger, instance=0, retry_count=attempt, max_retry_count=len(delays)
            )
            return
        except Exception:
            if attempt == len(delays):
                raise
            await asyncio.sleep(delays[attempt].total_seconds())


class TimerScheduler:
    """Fires every timer function at its schedule's occurrences (UTC wall clock)."""

    def __init__(
        self,
        functions: list[IndexedFunction],
        fire: Callable[..., Awaitable[None]],
    ) -> None:
        self._timers = [f for f in functions if f.trigger_type == "timerTrigger"]
        self._fire = fire
        self._tasks: list[asyncio.Task[None]] = []

    @staticmethod
    def check(function: IndexedFunction) -> None:
        """Refuse at indexing a schedule or retry policy this host cannot run."""
        if function.trigger_type != "timerTrigger":
            return
        try:
            Schedule.parse(str(function.trigger["schedule"]))
        except ScheduleError as exc:
            raise FunctionIndexError(f"function {function.name!r}: {exc}") from None
        retry_delays(function.retry)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for function in self._timers:
            self._tasks.append(loop.create_task(self._run(function), name=f"timer:{function.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(self, function: IndexedFunction) -> None:
        schedule = Schedule.parse(str(function.trigger["schedule"]))
        if function.trigger.get("runOnStartup"):
            await self._fire_logged(function)
        while True:
            now = datetime.now(UTC)
            due = schedule.next_after(now)
            await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
            await self._fire_logged(function)

    async def _fire_logged(self, function: IndexedFunction) -> None:
        try:
            await self._fire(function.name)
        except Exception:  # a failed run is logged by the host; the schedule goes on
            logger.debug("timer run failed", extra={"function": function.name})
