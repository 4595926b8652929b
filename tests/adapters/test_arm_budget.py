"""ARM pacing: requests wait for the subscription's budget instead of meeting 429s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from adapter_world import RG, SUB, TEST_OPTIONS, Cloud, settings_for

from cmk.adapters.arm_budget import ArmBudget, BucketSize
from cmk.resource_id import AccountId
from cmk.sandbox.platform.throttling import throttle_for
from cmk.wiring import Services


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class TestArmBudget:
    async def test_waits_for_refill_once_the_bucket_is_empty(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Five requests fit a bucket of five; the sixth and seventh wait one refill each."""
        fake = FakeTime()
        monkeypatch.setattr("cmk.adapters.arm_budget.asyncio.sleep", fake.sleep)
        budget = ArmBudget(BucketSize(5, 10.0), BucketSize(2, 1.0), clock=fake.clock)
        budget.bucket(SUB, "reads").heard()  # ARM has answered: time refills the bucket
        for _ in range(7):
            await budget.take(SUB, "reads")
        assert fake.slept == pytest.approx([0.1, 0.1])
        assert budget.paced_requests == 2

    async def test_what_arm_says_is_left_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A header saying one is left caps the bucket: the second request waits."""
        fake = FakeTime()
        monkeypatch.setattr("cmk.adapters.arm_budget.asyncio.sleep", fake.sleep)
        budget = ArmBudget(BucketSize(100, 10.0), BucketSize(100, 10.0), clock=fake.clock)
        budget.bucket(SUB, "writes").left(1)
        await budget.take(SUB, "writes")
        await budget.take(SUB, "writes")
        assert fake.slept == pytest.approx([0.1])

    async def test_a_429_empties_the_bucket_for_its_retry_after(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After a 429 with Retry-After 2, the next request waits about two seconds."""
        fake = FakeTime()
        monkeypatch.setattr("cmk.adapters.arm_budget.asyncio.sleep", fake.sleep)
        budget = ArmBudget(BucketSize(100, 10.0), BucketSize(100, 10.0), clock=fake.clock)
        budget.bucket(SUB, "reads").throttled(2.0)
        await budget.take(SUB, "reads")
        assert sum(fake.slept) == pytest.approx(2.1)


@pytest.fixture
def tight_arm(cloud: Cloud) -> Iterator[None]:
    """The sandbox's read bucket shrunk to 10, refilled 50 per second; restored after."""
    throttle = throttle_for(cloud.world)
    throttle.configure(read_capacity=10, read_refill_per_second=50)
    try:
        yield
    finally:
        throttle.configure(read_capacity=250, read_refill_per_second=25)


class TestPacingAgainstArm:
    async def test_sixty_reads_at_once_meet_no_429(
        self, cloud: Cloud, azurite: str, tight_arm: None
    ) -> None:
        """Sixty concurrent account reads against a bucket of ten: the app waits for the
        budget (sized as ARM's, refilled no faster, and only from ARM's first answer) and
        the sandbox answers no 429."""
        version = cloud.add_version(cloud.vault).version
        names = [f"paced-{uuid.uuid4().hex[:6]}-{i}" for i in range(60)]
        for name in names:
            cloud.add_account(name, cloud.vault, version)
        options = replace(
            TEST_OPTIONS, arm_reads=BucketSize(10, 25.0), arm_writes=BucketSize(10, 5.0)
        )
        cloud.sandbox.counters.reset()
        async with Services.from_settings(settings_for(azurite), options=options) as services:
            records = await asyncio.gather(
                *(services.accounts.get(AccountId(SUB, RG, name)) for name in names)
            )
            # The eleventh request finds the budget spent before any answer came, so at
            # least it waits; how many of the other 49 still find it spent depends on the
            # machine's speed (the exact count, on a clock that moves only when a request
            # waits, is TestArmBudget's): what must hold whatever the speed is no 429.
            assert services.arm_budget.paced_requests >= 1
        assert len(records) == 60
        throttled = sum(
            n for (endpoint, status), n in cloud.sandbox.counters.by_status().items()
            if status == 429
        )  # fmt: skip
        assert throttled == 0


class TestBeforeArmAnswers:
    async def test_no_refill_is_counted_before_the_first_answer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Until ARM answers, an empty bucket does not refill by itself: time spent while the
        first requests travel is not budget ARM has granted yet."""
        fake = FakeTime()
        monkeypatch.setattr("cmk.adapters.arm_budget.asyncio.sleep", fake.sleep)
        budget = ArmBudget(BucketSize(1, 10.0), BucketSize(1, 10.0), clock=fake.clock)
        bucket = budget.bucket(SUB, "reads")
        await budget.take(SUB, "reads")
        fake.now += 5.0
        bucket._refill()
        assert bucket.tokens == 0
        bucket.heard()
        fake.now += 0.1
        bucket._refill()
        assert bucket.tokens == pytest.approx(1.0)


class TestWhose429:
    async def test_only_arms_own_429_stops_the_subscription(
        self, cloud: Cloud, azurite: str
    ) -> None:
        """A resource provider's 429 (no remaining header) holds back only its own request;
        the subscription's other requests go on unpaced."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("rp-throttled", cloud.vault, version)
        cloud.add_account("neighbour", cloud.vault, version)
        cloud.sandbox.faults.add(
            host="management.azure.com", path="rp-throttled", status=429, retry_after=30, count=1
        )
        options = replace(TEST_OPTIONS, arm_reads=BucketSize(100, 25.0))
        async with Services.from_settings(settings_for(azurite), options=options) as services:
            await services.accounts.get(AccountId(SUB, RG, "rp-throttled"))  # retried by the SDK
            await services.accounts.get(AccountId(SUB, RG, "neighbour"))
            assert services.arm_budget.paced_requests == 0
