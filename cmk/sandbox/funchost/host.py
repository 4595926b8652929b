"""A local Azure Functions host for the Python v2 app, since Core Tools cannot be
installed here. It loads ``function_app.py`` the way the Python worker does, resolves
``%SETTING%`` references, reads host.json, and drives every function through the
``azure-functions`` library's own converters:

- Event Grid: :meth:`FunctionsHost.deliver_event_grid`, :meth:`FunctionsHost.event_grid_target`
  (a callable for :meth:`cmk.sandbox.eventgrid.service.EventGrid.subscribe`), and the extension's
  webhook on the HTTP port;
- queues: Azurite polled by ``instances`` workers with host.json's batch, polling,
  visibility, dequeue-count and poison-queue rules (:mod:`cmk.sandbox.funchost.queues`);
- timers: :meth:`FunctionsHost.fire_timer` and an optional NCRONTAB scheduler;
- HTTP: aiohttp on loopback with function/host/master keys.

When the host stops it closes what the app keeps for its process: every module-level
object of ``function_app.py`` with an async ``aclose()`` (an engine provider, a client),
as a worker process ending would, so no session or connector outlives the host. The
queue pollers' jitter is drawn from ``random_seed``: pass one to replay a run (the tests
pass their session's seed); without one the host draws a fresh seed. Either way it is
``host.random_seed`` and logged (INFO) when the pollers start.

Use ``async with FunctionsHost(app_dir, settings=...) as host:`` on the caller's loop,
or ``with FunctionsHost(...) as host:`` to run it on a loop thread of its own (sync
callers such as the demo; :meth:`FunctionsHost.run` submits coroutines there).
docs/functions.md lists how it differs from the real host.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, TypeVar

from aiohttp import web

from cmk.sandbox.funchost.config import HostConfig
from cmk.sandbox.funchost.http import HostKeys, build_http_app
from cmk.sandbox.funchost.index import (
    SCRIPT_FILE,
    AppSettings,
    FunctionIndexError,
    IndexedFunction,
    find_function_app,
    index_app,
    load_app_module,
    storage_connection,
)
from cmk.sandbox.funchost.invoke import (
    HttpResult,
    InvocationContext,
    TriggerInput,
    call,
    check_signature,
    event_grid_input,
    http_result,
)
from cmk.sandbox.funchost.queues import QueueListener
from cmk.sandbox.funchost.schedule import Schedule
from cmk.sandbox.funchost.thread import LoopThread
from cmk.sandbox.funchost.timers import TimerScheduler, fire_with_retry

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["FunctionInvocationError", "FunctionsHost", "Invocation"]


class FunctionInvocationError(RuntimeError):
    """A function invocation failed; the function's exception is the ``__cause__``."""


@dataclass(frozen=True)
class Invocation:
    """One invocation in the host's log."""

    id: str
    function: str
    trigger: str
    instance: int
    started: datetime
    seconds: float
    succeeded: bool
    error: str | None = None
    dequeue_count: int | None = None


class FunctionsHost:
    """A local Functions host for one app directory (see the module docstring)."""

    def __init__(
        self,
        app_dir: Path | str,
        *,
        settings: Mapping[str, str] | None = None,
        instances: int = 1,
        serve_http: bool = True,
        poll_queues: bool = True,
        run_schedules: bool = False,
        apply_environment: bool = True,
        script_file: str = SCRIPT_FILE,
        random_seed: int | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError("instances must be at least 1")
        self.app_dir = Path(app_dir).resolve()
        self.app_settings = AppSettings(settings, apply_to_environment=apply_environment)
        self.config = HostConfig.load(self.app_dir, self.app_settings.merged())
        self.instances = instances
        self.serve_http, self.poll_queues, self.run_schedules = (
            serve_http,
            poll_queues,
            run_schedules,
        )
        self._script_file = script_file
        self.random_seed = secrets.randbelow(2**32) if random_seed is None else random_seed
        self._module: ModuleType | None = None
        self._functions: dict[str, IndexedFunction] | None = None
        self._keys: HostKeys | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: LoopThread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._listeners: list[QueueListener] = []
        self._scheduler: TimerScheduler | None = None
        self._round_robin = 0
        self._timer_last: dict[str, datetime] = {}
        self.port = 0
        self.invocations: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.poisoned: Counter[str] = Counter()  # per source queue
        self.log: list[Invocation] = []

    # --- indexing ------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, str]:
        """The app settings: the process environment overlaid with ``settings=``."""
        return self.app_settings.merged()

    def index(self) -> dict[str, IndexedFunction]:
        """Import the app (once) and index its functions; raises FunctionIndexError."""
        if self._functions is None:
            with self.app_settings.applied():
                module = load_app_module(self.app_dir, self._script_file)
            functions = index_app(find_function_app(module), self.settings)
            for function in functions.values():
                check_signature(function)
                TimerScheduler.check(function)
            self._module, self._functions = module, functions
            self._keys = HostKeys.generate(list(functions))
        return self._functions

    @property
    def functions(self) -> dict[str, IndexedFunction]:
        """The indexed functions by name."""
        return self.index()

    @property
    def module(self) -> ModuleType:
        """This host's own instance of the imported ``function_app`` module."""
        self.index()
        assert self._module is not None
        return self._module

    def function(self, name: str, trigger_type: str | None = None) -> IndexedFunction:
        function = self.functions.get(name)
        if function is None:
            raise KeyError(f"no function {name!r}; indexed: {sorted(self.functions)}")
        if trigger_type is not None and function.trigger_type != trigger_type:
            raise FunctionIndexError(
                f"function {name!r} has a {function.trigger_type}, not a {trigger_type}"
            )
        return function

    @property
    def keys(self) -> HostKeys:
        self.index()
        assert self._keys is not None
        return self._keys

    @property
    def master_key(self) -> str:
        return self.keys.master

    @property
    def function_key(self) -> str:
        """The ``default`` host key: opens every ``function``-level function."""
        return self.keys.host

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the HTTP front is not running (start the host)")
        return f"http://127.0.0.1:{self.port}"

    def url(self, route: str) -> str:
        """The URL of ``route`` under the route prefix (``/api`` by default)."""
        prefix = f"/{self.config.route_prefix}" if self.config.route_prefix else ""
        return f"{self.base_url}{prefix}/{route.lstrip('/')}"

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> FunctionsHost:
        """Index, then start queue listeners, the scheduler and the HTTP front."""
        functions = self.index()
        self.app_settings.apply()
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(thread_name_prefix="funchost")
        try:
            if self.poll_queues:
                settings = self.settings
                for function in functions.values():
                    if function.trigger_type != "queueTrigger":
                        continue
                    connection = storage_connection(function.trigger, settings)
                    for instance in range(self.instances):
                        listener = QueueListener(
                            function,
                            connection,
                            self.config.queues,
                            self._invoke_queue,
                            instance=instance,
                            on_poison=self._count_poison,
                            function_timeout=self.config.function_timeout,
                            random_seed=f"{self.random_seed}:{function.name}:{instance}",
                        )
                        listener.start()
                        self._listeners.append(listener)
                if self._listeners:
                    logger.info(
                        "queue polling jitter seeded with random_seed=%s",
                        self.random_seed,
                        extra={"random_seed": self.random_seed},
                    )
            if self.run_schedules:
                self._scheduler = TimerScheduler(list(functions.values()), self.fire_timer)
                self._scheduler.start()
            if self.serve_http:
                app = build_http_app(
                    functions,
                    self.keys,
                    self.config.route_prefix,
                    self._invoke_http,
                    self.deliver_event_grid,
                )
                self._runner = web.AppRunner(app, access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                self.port = int(self._runner.addresses[0][1])
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """Stop everything started (idempotent); in-flight queue messages may finish."""
        if self._scheduler is not None:
            await self._scheduler.stop()
            self._scheduler = None
        listeners, self._listeners = self._listeners, []
        await asyncio.gather(*(listener.stop() for listener in listeners))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.port = 0
        if self._loop is not None:
            await self._close_app_resources()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.app_settings.restore()
        self._loop = None

    async def _close_app_resources(self) -> None:
        """Await ``aclose()`` of each module-level object of the app that has one (in
        definition order); a failure is logged, the others still close."""
        if self._module is None:
            return
        for name, value in list(vars(self._module).items()):
            if isinstance(value, type | ModuleType):
                continue
            close = getattr(value, "aclose", None)
            if close is None or not inspect.iscoroutinefunction(close):
                continue
            try:
                await close()
            except Exception:
                logger.exception("closing the app's %s failed", name, extra={"app_object": name})

    async def kill(self) -> int:
        """Stop as a worker process dies: every in-flight queue invocation is cancelled at
        once (before anything else can run), its message left to reappear when its lease
        ends; then stop. Returns how many invocations were cancelled."""
        killed = sum(listener.abandon() for listener in self._listeners)
        await self.stop()
        return killed

    async def __aenter__(self) -> FunctionsHost:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> FunctionsHost:
        """Run the host on a loop thread of its own (for synchronous callers)."""
        self._thread = LoopThread("funchost")
        try:
            self._thread.submit(self.start())
        except BaseException:
            self._thread.close()
            self._thread = None
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.submit(self.stop())
            finally:
                thread.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the host's loop thread (``with FunctionsHost(...)``) and wait."""
        if self._thread is None:
            raise RuntimeError("run() needs the host started with `with FunctionsHost(...)`")
        return self._thread.submit(coro, timeout)

    # --- invoking ------------------------------------------------------------------------

    def _next_instance(self) -> int:
        self._round_robin = (self._round_robin + 1) % self.instances
        return self._round_robin

    async def invoke(
        self,
        function: IndexedFunction,
        trigger: TriggerInput,
        *,
        instance: int = 0,
        retry_count: int = 0,
        max_retry_count: int = 0,
    ) -> Any:
        """Invoke once, record it; raise FunctionInvocationError from the function's error."""
        if self._executor is None:
            raise RuntimeError("the host is not running: use `async with FunctionsHost(...)`")
        invocation_id = str(uuid.uuid4())
        context = InvocationContext(
            invocation_id, function.name, str(self.app_dir), retry_count, max_retry_count
        )
        started, clock = datetime.now(UTC), time.perf_counter()
        timeout = self.config.function_timeout
        dequeue = trigger.metadata.get("DequeueCount")

        def record(error: str | None) -> None:
            self.log.append(
                Invocation(
                    id=invocation_id,
                    function=function.name,
                    trigger=function.trigger_type,
                    instance=instance,
                    started=started,
                    seconds=time.perf_counter() - clock,
                    succeeded=error is None,
                    error=error,
                    dequeue_count=int(dequeue.python_value) if dequeue is not None else None,
                )
            )

        self.invocations[function.name] += 1
        try:
            result = await call(
                function,
                trigger,
                context=context,
                executor=self._executor,
                timeout_seconds=timeout.total_seconds() if timeout else None,
            )
        except Exception as exc:
            self.failures[function.name] += 1
            error = f"{type(exc).__name__}: {exc}"
            record(error)
            logger.warning(  # what failed and why in the text: `cmk sandbox up` prints no extras
                "function %s invocation %s failed: %s",
                function.name,
                invocation_id,
                error,
                extra={"function": function.name, "invocation_id": invocation_id, "error": error},
            )
            raise FunctionInvocationError(f"{function.name}: {error}") from exc
        record(None)
        return result

    async def _invoke_queue(
        self, function: IndexedFunction, trigger: TriggerInput, instance: int
    ) -> None:
        await self.invoke(function, trigger, instance=instance)

    async def _invoke_http(self, function: IndexedFunction, trigger: TriggerInput) -> HttpResult:
        return http_result(await self.invoke(function, trigger, instance=self._next_instance()))

    def _count_poison(self, function: IndexedFunction, message_id: str, dequeue_count: int) -> None:
        self.poisoned[str(function.trigger["queueName"])] += 1

    async def deliver_event_grid(self, function_name: str, event: Mapping[str, Any]) -> None:
        """Invoke an Event Grid function with one event (Event Grid schema or CloudEvents)."""
        function = self.function(function_name, "eventGridTrigger")
        await self.invoke(function, event_grid_input(event), instance=self._next_instance())

    def event_grid_target(self, function_name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """A coroutine function for ``EventGrid.subscribe(handler)``: delivers on this host's
        loop from any loop or thread, and raises when the function fails (so Event Grid
        retries)."""
        self.function(function_name, "eventGridTrigger")

        async def deliver(event: dict[str, Any]) -> None:
            loop = self._loop
            if loop is None:
                raise RuntimeError("the Functions host is not running")
            coro = self.deliver_event_grid(function_name, event)
            if asyncio.get_running_loop() is loop:
                await coro
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

        return deliver

    async def fire_timer(self, function_name: str, *, past_due: bool = False) -> None:
        """Fire a timer function now (with its ``@app.retry`` policy, as the host applies it
        to timers); raises FunctionInvocationError when the last attempt fails."""
        function = self.function(function_name, "timerTrigger")
        now = datetime.now(UTC)
        last = self._timer_last.get(function_name)
        self._timer_last[function_name] = now
        next_run = Schedule.parse(str(function.trigger["schedule"])).next_after(now)
        await fire_with_retry(self, function, past_due=past_due, last=last, next_run=next_run)

    # --- observing -----------------------------------------------------------------------

    def invocations_of(self, function_name: str) -> list[Invocation]:
        return [i for i in self.log if i.function == function_name]

    async def wait_for(
        self, condition: Callable[[], bool], *, within: float = 60.0, interval: float = 0.02
    ) -> None:
        """Wait until ``condition()`` is true; TimeoutError with the invocation counts if not
        (``within`` bounds a hang: generous, so a loaded machine is not a failure)."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"condition not met within {within} s; invocations={dict(self.invocations)}"
                    f" failures={dict(self.failures)} poisoned={dict(self.poisoned)}"
                )
            await asyncio.sleep(interval)

    async def wait_idle(self, *, within: float = 120.0, settle: float = 0.3) -> None:
        """Wait until every trigger queue is empty (invisible messages count) and nothing is
        in flight, twice in a row ``settle`` seconds apart; TimeoutError otherwise."""
        deadline = time.monotonic() + within
        quiet = 0
        while quiet < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"queues not idle within {within} s; invocations={dict(self.invocations)}"
                )
            first_per_queue = {listener.queue_name: listener for listener in self._listeners}
            queued = [await listener.queued() for listener in first_per_queue.values()]
            busy = sum(queued) + sum(listener.in_flight for listener in self._listeners)
            quiet = quiet + 1 if busy == 0 else 0
            await asyncio.sleep(settle)
