"""What every use case runs against: the ports, the settings and a clock, in one bundle."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cmk.policy import VersionPolicy
from cmk.ports import AccountStore, AlertSink, Inventory, JobQueue, KeyStore, Ledger
from cmk.settings import Settings

__all__ = ["Deps", "Engine", "gather_bounded", "utc_now"]

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

    @property
    def policy(self) -> VersionPolicy:
        """The version policy configured by the settings."""
        return VersionPolicy.from_settings(self.settings)

    @property
    def dry_run(self) -> bool:
        """True when nothing may be written anywhere (CMK_DRY_RUN)."""
        return self.settings.dry_run


async def gather_bounded(limit: int, awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all of ``awaitables`` with at most ``limit`` running at once; results in order."""
    gate = asyncio.Semaphore(max(1, limit))

    async def run(awaitable: Awaitable[T]) -> T:
        async with gate:
            return await awaitable

    return await asyncio.gather(*(run(awaitable) for awaitable in awaitables))


#: The same bundle under the name some callers prefer.
Deps = Engine
