"""Pace ARM requests to the subscription's budget instead of spending requests on 429s.

ARM throttles each subscription with token buckets (reads: 250, refilled 25 per second;
writes: 200, refilled 10 per second) and tells every caller what is left in
``x-ms-ratelimit-remaining-subscription-reads`` / ``-writes`` (and their ``-global-``
forms). :class:`ArmBudget` keeps one bucket per subscription and kind in the process,
with ARM's sizes, and :class:`ArmPacingPolicy` — an azure-core policy placed after the
retry policy, so every attempt is paced — takes a token before each request and waits
for one when the bucket is empty. What ARM says is left corrects the bucket downwards (other
callers, other instances of the app spend the same budget), and ARM's own 429 (with its
remaining header at 0) empties it for the ``Retry-After``; a 429 without that header is a
resource provider's, about one request, and is left to the retry policy. Requests that
name no subscription (Resource Graph, the subscription list) are not paced here.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy

__all__ = ["ARM_READS", "ARM_WRITES", "ArmBudget", "ArmPacingPolicy", "BucketSize"]

_SUBSCRIPTION = re.compile(r"/subscriptions/([0-9a-fA-F-]{36})(?:/|$|\?)")
_READS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class BucketSize:
    """A token bucket: how many requests at once, and how many more per second."""

    capacity: float
    refill_per_second: float


#: ARM's documented per-subscription buckets (see docs/performance.md).
ARM_READS = BucketSize(250, 25.0)
ARM_WRITES = BucketSize(200, 10.0)


@dataclass
class _Bucket:
    size: BucketSize
    clock: Callable[[], float]
    tokens: float = field(init=False)
    stamp: float = field(init=False)
    answered: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.tokens = self.size.capacity
        self.stamp = self.clock()

    def _refill(self) -> None:
        """Add what refilled since the last look — counted only from ARM's first answer:
        requests still on their way may reach ARM later than we sent them, and ARM's
        bucket refills from when they arrive, not from when we sent them."""
        now = self.clock()
        if self.answered:
            gained = (now - self.stamp) * self.size.refill_per_second
            self.tokens = min(self.size.capacity, self.tokens + gained)
        self.stamp = now

    def heard(self) -> None:
        """ARM answered a request of this bucket: from now on, time refills it."""
        if not self.answered:
            self._refill()
            self.answered = True

    async def take(self) -> float:
        """Take one token, waiting for it if need be; returns how long it waited."""
        waited = 0.0
        async with self.lock:  # waiters are served in order
            while True:
                self._refill()
                if self.tokens >= 1:
                    self.tokens -= 1
                    return waited
                pause = (1 - self.tokens) / self.size.refill_per_second
                waited += pause
                await asyncio.sleep(pause)

    def left(self, remaining: int) -> None:
        """ARM says ``remaining`` are left: never believe in more than that."""
        self.heard()
        self._refill()
        self.tokens = min(self.tokens, float(remaining))

    def throttled(self, retry_after: float) -> None:
        """A 429: nothing is left until ``retry_after`` has passed."""
        self.heard()
        self._refill()
        self.tokens = min(self.tokens, -retry_after * self.size.refill_per_second)


class ArmBudget:
    """The per-subscription read and write buckets of one process."""

    def __init__(
        self,
        reads: BucketSize = ARM_READS,
        writes: BucketSize = ARM_WRITES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sizes = {"reads": reads, "writes": writes}
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.waited_seconds = 0.0
        self.paced_requests = 0

    def bucket(self, subscription_id: str, kind: str) -> _Bucket:
        slot = (subscription_id.lower(), kind)
        found = self._buckets.get(slot)
        if found is None:
            found = _Bucket(self._sizes[kind], self._clock)
            self._buckets[slot] = found
        return found

    async def take(self, subscription_id: str, kind: str) -> None:
        waited = await self.bucket(subscription_id, kind).take()
        if waited:
            self.paced_requests += 1
            self.waited_seconds += waited


def _remaining(headers: Any, kind: str) -> int | None:
    found = []
    for name in (
        f"x-ms-ratelimit-remaining-subscription-{kind}",
        f"x-ms-ratelimit-remaining-subscription-global-{kind}",
    ):
        value = headers.get(name)
        if value is not None and str(value).strip().isdigit():
            found.append(int(str(value).strip()))
    return min(found) if found else None


def _retry_after(headers: Any) -> float:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


class ArmPacingPolicy(AsyncHTTPPolicy):  # type: ignore[type-arg]
    """Take a token of the request's subscription before sending; learn from the answer."""

    def __init__(self, budget: ArmBudget) -> None:
        super().__init__()
        self._budget = budget

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        http = request.http_request
        match = _SUBSCRIPTION.search(http.url)
        if match is None:
            return await self.next.send(request)
        subscription = match.group(1)
        kind = "reads" if http.method.upper() in _READS else "writes"
        await self._budget.take(subscription, kind)
        response = await self.next.send(request)
        headers = response.http_response.headers
        bucket = self._budget.bucket(subscription, kind)
        remaining = _remaining(headers, kind)
        if response.http_response.status_code == 429 and remaining == 0:
            # ARM's own throttle (it says nothing is left): the whole subscription waits.
            # A 429 without that header is a resource provider's, about this one request:
            # the retry policy or the job's deferral waits for it, the others go on.
            bucket.throttled(_retry_after(headers))
        elif remaining is not None:
            bucket.left(remaining)
        else:
            bucket.heard()
        return response
