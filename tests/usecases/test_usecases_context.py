"""gather_bounded and task_scope: bounded, ordered, and no task outliving a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from cmk.errors import ServiceUnavailable
from cmk.usecases.context import gather_bounded, task_scope


class Boom(Exception):
    """The failure of one item."""


def _others() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def _let_orphans_run(release: asyncio.Event) -> None:
    """Release what only cancellation should end, then let any task left behind run to
    its end (a few loop turns: nothing here waits on a timer)."""
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)


class TestGatherBounded:
    async def test_results_in_order_never_more_than_limit_in_flight(self) -> None:
        """100 items of varying length come back in input order, at most 4 running at once."""
        running = peak = 0

        async def item(index: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep((index % 7) / 1000)
            running -= 1
            return index * 10

        results = await gather_bounded(4, (item(i) for i in range(100)))

        assert results == [i * 10 for i in range(100)]
        assert peak == 4
        assert not _others()

    async def test_pulls_a_lazy_source_only_as_workers_free_up(self) -> None:
        """A generator is never materialised: at most ``limit`` items exist ahead of the
        finished ones, so 100,000 items do not make 100,000 tasks."""
        created = finished = 0
        ahead = 0

        async def item() -> None:
            nonlocal finished
            await asyncio.sleep(0)
            finished += 1

        def source() -> Iterator[asyncio.Future[None] | object]:
            nonlocal created, ahead
            for _ in range(2000):
                created += 1
                ahead = max(ahead, created - finished)
                yield item()

        await gather_bounded(8, source())  # type: ignore[arg-type]

        assert created == finished == 2000
        assert ahead <= 8

    async def test_failure_cancels_the_rest_and_raises_the_item_error(self) -> None:
        """When one item fails, the others in flight are cancelled, none is started later,
        none completes after the error is raised, and the error itself (not a group)
        propagates."""
        started: list[int] = []
        completed: list[int] = []
        cancelled: list[int] = []
        siblings_running = asyncio.Event()  # 5 fails once items after it are in flight
        never = asyncio.Event()  # items after 5 end by cancellation only

        async def item(index: int) -> int:
            started.append(index)
            if len(started) == 9:  # 0-4 done and 5-8 in flight: the four workers are busy
                siblings_running.set()
            try:
                if index == 5:
                    await siblings_running.wait()
                    raise Boom(index)
                if index < 5:
                    await asyncio.sleep(0)
                else:
                    await never.wait()
            except asyncio.CancelledError:
                cancelled.append(index)
                raise
            completed.append(index)
            return index

        with pytest.raises(Boom):
            await gather_bounded(4, (item(i) for i in range(50)))
        done_at_error = list(completed)
        await _let_orphans_run(never)  # an orphan would now finish (and write)

        assert completed == done_at_error  # nothing completed after the error
        assert len(started) < 50  # the rest were never started
        assert sorted(cancelled) == [6, 7, 8]  # the siblings in flight were cancelled
        assert not _others()

    async def test_our_errors_keep_their_type_and_cause(self) -> None:
        """A TransientError from an item reaches the caller as itself, with its cause."""

        async def item() -> None:
            try:
                raise OSError("connection reset")
            except OSError as error:
                raise ServiceUnavailable("queue unavailable") from error

        with pytest.raises(ServiceUnavailable) as raised:
            await gather_bounded(2, [item()])

        assert isinstance(raised.value.__cause__, OSError)


class TestTaskScope:
    async def test_body_failure_cancels_started_tasks(self) -> None:
        """An error in the scope's body cancels its tasks before propagating unwrapped."""
        finished: list[str] = []
        never = asyncio.Event()

        async def slow() -> None:
            await never.wait()
            finished.append("slow")

        with pytest.raises(Boom):
            async with task_scope() as group:
                group.create_task(slow())
                await asyncio.sleep(0)
                raise Boom("inventory failed")
        await _let_orphans_run(never)  # an orphan would now finish

        assert finished == []
        assert not _others()
