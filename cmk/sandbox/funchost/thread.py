"""An asyncio loop on a daemon thread, so synchronous callers (the demo, sync tests) can
run the local Functions host and submit coroutines to it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
#: How long :meth:`LoopThread.close` waits for the loop's cancelled tasks to unwind.
CANCEL_GRACE_SECONDS = 10.0


async def _cancel_others() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LoopThread:
    """A running event loop in a thread of its own; :meth:`submit` waits for a result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the loop and wait (from another thread) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what still runs on the loop (work another thread or loop waits for, such
        as an Event Grid delivery, ends cancelled while this loop can still say so), then
        stop the loop, join the thread, close the loop."""
        if self.loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                self.submit(_cancel_others(), CANCEL_GRACE_SECONDS)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
