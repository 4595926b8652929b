"""Timer triggers on the local Functions host: firing with the library's TimerRequest,
the function's retry policy, the NCRONTAB scheduler and host.json functionTimeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cmk.sandbox.funchost.host import FunctionInvocationError, FunctionsHost

SAMPLE_APP = Path(__file__).parent / "sample_app"
SETTINGS = {"SAMPLE_JOB_QUEUE": "timer-jobs", "SAMPLE_SCHEDULE": "0 0 * * * *"}


def _host(**options: Any) -> FunctionsHost:
    settings = {**SETTINGS, **options.pop("settings", {})}
    return FunctionsHost(
        SAMPLE_APP, settings=settings, poll_queues=False, serve_http=False, **options
    )


class TestTimerTrigger:
    async def test_fire_timer(self):
        """fire_timer invokes with a TimerRequest carrying past_due."""
        async with _host() as host:
            await host.fire_timer("tick")
            await host.fire_timer("tick", past_due=True)
        assert [r["past_due"] for r in host.module.RECEIVED["tick"]] == [False, True]

    async def test_retry_policy_applies_to_timers(self):
        """One failure is retried once (max_retry_count 1), with the retry count in context."""
        async with _host() as host:
            host.module.FAIL["tick"] = 1
            await host.fire_timer("tick")
        assert [r["retry_count"] for r in host.module.RECEIVED["tick"]] == [0, 1]
        assert host.failures["tick"] == 1 and host.log[-1].succeeded

    async def test_exhausted_retries_raise(self):
        """When every attempt fails, fire_timer raises after 1 + max_retry_count tries."""
        async with _host() as host:
            host.module.FAIL["tick"] = -1
            with pytest.raises(FunctionInvocationError, match="failed on purpose"):
                await host.fire_timer("tick")
        assert host.invocations["tick"] == 2

    async def test_scheduler_fires_on_schedule(self):
        """With run_schedules the '* * * * * *' schedule fires about every second."""
        async with _host(run_schedules=True, settings={"SAMPLE_SCHEDULE": "* * * * * *"}) as host:
            await host.wait_for(lambda: host.invocations["tick"] >= 2, within=60)
        assert all(i.instance == 0 for i in host.invocations_of("tick"))

    async def test_function_timeout(self, tmp_path: Path):
        """An invocation past host.json functionTimeout fails with FunctionTimeout."""
        (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "00:00:00.2"}')
        (tmp_path / "function_app.py").write_text(
            "import asyncio\n"
            "import azure.functions as func\n"
            "app = func.FunctionApp()\n\n"
            "@app.timer_trigger(schedule='0 0 * * * *', arg_name='timer')\n"
            "async def slow(timer: func.TimerRequest) -> None:\n"
            "    await asyncio.sleep(5)\n"
        )
        async with FunctionsHost(tmp_path, serve_http=False) as host:
            with pytest.raises(FunctionInvocationError, match="FunctionTimeout"):
                await host.fire_timer("slow")
