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

The instances of the app do not talk to each other, so none knows how many spend the
subscription's budget. Each counts on a *share* of ARM's refill, as TCP senders share a
link: the share halves when ARM says nothing is left (a 429, or a remaining header of 0)
— once per :data:`HALVING_SECONDS`, however many answers of one burst said so — and grows
by :data:`SHARE_GROWTH` of the refill with every answer that leaves something, never below
:data:`MIN_SHARE` of it. Alone, a process keeps (almost) the whole refill; with others,
the shares settle near ARM's rate between them (``python -m bench.pacing`` measures it).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy

from cmk.errors import ThrottledError

__all__ = ["ARM_READS", "ARM_WRITES", "PACED", "ArmBudget", "ArmPacingPolicy", "BucketSize"]

#: The request option (``**{PACED: True}``) of a request whose token its caller already
#: took (:meth:`ArmBudget.take`): the policy sends it without taking another.
PACED = "cmk_arm_paced"

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


#: How a process's share of ARM's refill moves (additive increase, multiplicative
#: decrease): it halves at most once per HALVING_SECONDS, grows by SHARE_GROWTH of the
#: refill per answer that leaves something, and never falls below MIN_SHARE of it.
SHARE_GROWTH = 1 / 100
HALVING_SECONDS = 1.0
MIN_SHARE = 1 / 64


@dataclass
class _Bucket:
    size: BucketSize
    clock: Callable[[], float]
    tokens: float = field(init=False)
    stamp: float = field(init=False)
    #: The refill this process counts on: ARM's, until a 429 says others spend it too.
    rate: float = field(init=False)
    #: Nothing is sent before this (a 429's Retry-After), and when the share last halved.
    resume_at: float = float("-inf")
    halved_at: float = float("-inf")
    answered: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.tokens = self.size.capacity
        self.stamp = self.clock()
        self.rate = self.size.refill_per_second

    def _refill(self) -> None:
        """Add what refilled since the last look at this process's share of the refill —
        counted only from ARM's first answer: requests still on their way may reach ARM
        later than we sent them, and ARM's bucket refills from when they arrive, not
        from when we sent them — nor before a 429's Retry-After has passed (ARM names the
        moment its bucket holds a request again). The share grows back towards the whole
        refill."""
        now = self.clock()
        if self.answered:
            refilling = max(0.0, now - max(self.stamp, self.resume_at))
            self.tokens = min(self.size.capacity, self.tokens + refilling * self.rate)
        self.stamp = now

    def heard(self) -> None:
        """ARM answered a request of this bucket: from now on, time refills it."""
        if not self.answered:
            self._refill()
            self.answered = True

    def wait_needed(self) -> float:
        """0 with one token taken, or the seconds until one may be (nothing taken)."""
        self._refill()
        blocked = self.resume_at - self.stamp
        if blocked <= 0 and self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return max(blocked, (1 - self.tokens) / self.rate)

    async def take(self) -> float:
        """Take one token, waiting for it if need be; returns how long it waited."""
        waited = 0.0
        async with self.lock:  # waiters are served in order
            while pause := self.wait_needed():
                waited += pause
                await asyncio.sleep(pause)
        return waited

    def left(self, remaining: int) -> None:
        """ARM says ``remaining`` are left: never believe in more than this process's
        share of that."""
        self.heard()
        self._refill()
        full = self.size.refill_per_second
        if remaining == 0:  # the next request would meet the 429: others spend it too
            self._halve()
        else:  # one more answer without a sign of others: a little more of the refill
            self.rate = min(full, self.rate + full * SHARE_GROWTH)
        self.tokens = min(self.tokens, remaining * self.rate / full)

    def _halve(self) -> None:
        if self.stamp - self.halved_at < HALVING_SECONDS:
            return  # the answers of one burst are one signal, not many
        self.halved_at = self.stamp
        full = self.size.refill_per_second
        self.rate = max(full * MIN_SHARE, self.rate / 2)

    def throttled(self, retry_after: float) -> None:
        """ARM's 429: nothing is sent until ``retry_after`` has passed, nothing is left
        then, and others spend this budget too — count on half the refill from now on."""
        self.heard()
        self._refill()
        self._halve()
        self.resume_at = max(self.resume_at, self.stamp + retry_after)
        self.tokens = min(self.tokens, 0.0)


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

    async def take(self, subscription_id: str, kind: str, *, within: float | None = None) -> None:
        """Take a token of the subscription's bucket, waiting for it — at most ``within``
        seconds, else :class:`~cmk.errors.ThrottledError` (nothing taken, nothing sent)."""
        bucket = self.bucket(subscription_id, kind)
        try:
            async with asyncio.timeout(within):
                waited = await bucket.take()
        except TimeoutError:
            self.paced_requests += 1
            raise ThrottledError(
                f"ARM's {kind} budget of subscription {subscription_id} is spent (waited"
                f" {within:g} s in this process); the request was not sent",
                retry_after=max(1.0, bucket.resume_at - bucket.clock(), within or 0.0),
            ) from None
        if waited:
            self.paced_requests += 1
            self.waited_seconds += waited

    def learn(self, subscription_id: str, kind: str, status: int, headers: Any) -> None:
        """What an answer of ARM says about the subscription's budget."""
        bucket = self.bucket(subscription_id, kind)
        remaining = _remaining(headers, kind)
        if status == 429 and remaining == 0:
            # ARM's own throttle (it says nothing is left): the whole subscription waits.
            # A 429 without that header is a resource provider's, about this one request:
            # the retry policy or the job's deferral waits for it, the others go on.
            bucket.throttled(_retry_after(headers))
        elif remaining is not None:
            bucket.left(remaining)
        else:
            bucket.heard()


def _remaining(headers: Any, kind: str) -> int | None:
    found = []
    for name in (
        f"x-ms-ratelimit-remaining-subscription-{kind}",
        f"x-ms-ratelimit-remaining-subscription-global-{kind}",
    ):
        text = str(headers.get(name) or "").strip()
        if text.isascii() and text.isdigit():  # not "²", which isdigit() takes
            found.append(int(text))
    return min(found) if found else None


#: The longest a subscription's requests wait on one 429's Retry-After: a longer (or
#: garbled) one costs at most one more 429, never a process that stops for hours.
MAX_RETRY_AFTER = 60.0


def _retry_after(headers: Any) -> float:
    value = headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else 1.0


class ArmPacingPolicy(AsyncHTTPPolicy):  # type: ignore[type-arg]
    """Take a token of the request's subscription before sending; learn from the answer."""

    def __init__(self, budget: ArmBudget) -> None:
        super().__init__()
        self._budget = budget

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        http = request.http_request
        paced = request.context.options.pop(PACED, False)  # never passed to the transport
        match = _SUBSCRIPTION.search(http.url)
        if match is None:
            return await self.next.send(request)
        subscription = match.group(1)
        kind = "reads" if http.method.upper() in _READS else "writes"
        if not paced:
            await self._budget.take(subscription, kind)
        response = await self.next.send(request)
        answer = response.http_response
        self._budget.learn(subscription, kind, answer.status_code, answer.headers)
        return response
