"""What every use case runs against: the ports, the settings and a clock, in one bundle."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cmk.policy import VersionPolicy
from cmk.ports import (
    AccountStore,
    AlertSink,
    Inventory,
    JobQueue,
    KeyStore,
    Ledger,
    OperationStore,
    SubscriptionDirectory,
)
from cmk.settings import Settings

__all__ = ["Engine", "gather_bounded", "task_scope", "utc_now"]

T = TypeVar("T")


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Engine:
    """The ports a use case talks to, the settings it obeys and the clock it reads.

    ``owner`` names this process in ledger claims. ``verify_delay`` is how long a
    submitted update waits before its verify job runs; ``stuck_after`` is how long an
    update may stay submitted (or Updating) before it counts as stuck. ``claim_lease``
    is how long a near-expiry rotation claim holds before another worker may take over.
    ``subscriptions`` lists what the identity can read: the scope when CMK_SUBSCRIPTIONS
    is unset (see :mod:`cmk.usecases.subscriptions`); None uses CMK_SUBSCRIPTIONS as is.
    ``operations`` keeps the HTTP operations of :mod:`cmk.operations` (None: not wired).
    """

    keys: KeyStore
    accounts: AccountStore
    inventory: Inventory
    jobs: JobQueue
    ledger: Ledger
    alerts: AlertSink
    settings: Settings
    now: Callable[[], datetime] = utc_now
    owner: str = field(default_factory=_owner)
    verify_delay: timedelta = timedelta(seconds=30)
    stuck_after: timedelta = timedelta(hours=1)
    claim_lease: timedelta = timedelta(minutes=10)
    subscriptions: SubscriptionDirectory | None = None
    operations: OperationStore | None = None

    @property
    def policy(self) -> VersionPolicy:
        """The version policy configured by the settings."""
        return VersionPolicy.from_settings(self.settings)

    @property
    def dry_run(self) -> bool:
        """True when nothing may be written anywhere (CMK_DRY_RUN)."""
        return self.settings.dry_run


def _first_error(error: BaseException) -> BaseException:
    """The first leaf of a (possibly nested) exception group, or ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


@asynccontextmanager
async def task_scope() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` that raises the first failure itself, not a group.

    Every task started in the scope is finished when the scope exits: when one fails (or
    the body raises), the others are cancelled and awaited before the error propagates,
    so no orphan keeps enqueuing or writing after the invocation failed. Callers keep
    catching our own errors (TransientError, ...) as before.
    """
    failure: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as errors:
        failure = _first_error(errors)
    if failure is not None:
        raise failure  # outside the handler: its own cause and context stay as they were


async def gather_bounded(limit: int, awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all of ``awaitables`` with at most ``limit`` running at once; results in order.

    At most ``limit`` workers pull from the iterable, so a lazy one (a generator) is
    never materialised: 100,000 items make ``limit`` tasks, not 100,000. On the first
    failure the other workers are cancelled (and awaited), no further item is started,
    and that failure is raised.
    """
    source = enumerate(awaitables)
    results: dict[int, T] = {}

    async def worker() -> None:
        for index, awaitable in source:
            results[index] = await awaitable

    async with task_scope() as group:
        for _ in range(max(1, limit)):
            group.create_task(worker())
    return [results[index] for index in range(len(results))]
