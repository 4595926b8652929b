"""ARM pacing: requests wait for the subscription's budget instead of meeting 429s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from adapter_world import RG, SUB, TEST_OPTIONS, Cloud, settings_for

from bench.pacing import simulate_sharing
from cmk.adapters.arm_budget import ArmBudget, BucketSize
from cmk.errors import ThrottledError
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
        """After a 429 with Retry-After 2, the next request waits the two seconds, then
        one token at the halved share of the refill (10/s → 5/s: 0.2 s)."""
        fake = FakeTime()
        monkeypatch.setattr("cmk.adapters.arm_budget.asyncio.sleep", fake.sleep)
        budget = ArmBudget(BucketSize(100, 10.0), BucketSize(100, 10.0), clock=fake.clock)
        budget.bucket(SUB, "reads").throttled(2.0)
        await budget.take(SUB, "reads")
        assert sum(fake.slept) == pytest.approx(2.2)

    async def test_a_wait_longer_than_allowed_is_a_429_of_our_own(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """take(within=...) gives up when the budget is not back in time: ThrottledError
        with a Retry-After, and no token taken."""
        budget = ArmBudget(BucketSize(100, 10.0), BucketSize(100, 10.0))
        bucket = budget.bucket(SUB, "writes")
        bucket.throttled(60.0)
        with pytest.raises(ThrottledError, match="not sent") as raised:
            await budget.take(SUB, "writes", within=0.05)
        assert raised.value.retry_after is not None and raised.value.retry_after >= 59
        assert bucket.tokens == 0


class TestSharingTheBudget:
    """Processes that do not know of each other settle on ARM's rate between them."""

    def test_the_share_halves_once_per_burst_and_grows_per_answer(self) -> None:
        """Ten 429s of one burst halve the share once; a second later another halves it
        again; each answer that leaves something gives back 1/100 of the refill; the share
        never falls below 1/64."""
        fake = FakeTime()
        bucket = ArmBudget(clock=fake.clock).bucket(SUB, "writes")
        for _ in range(10):
            bucket.throttled(1.0)
        assert bucket.rate == pytest.approx(5.0)
        fake.now += 1.0
        bucket.left(0)
        assert bucket.rate == pytest.approx(2.5)
        bucket.left(50)
        assert bucket.rate == pytest.approx(2.6)
        for _ in range(20):
            fake.now += 1.0
            bucket.throttled(1.0)
        assert bucket.rate == pytest.approx(10.0 / 64)

    @pytest.mark.parametrize("processes", [2, 8, 40])
    def test_instances_spend_few_requests_on_429s(self, processes: int) -> None:
        """Processes sharing one subscription's write bucket (the sandbox's ARM model, on
        a clock of its own) for two simulated minutes: ARM's whole budget is used, and
        far fewer requests meet a 429 than with every process counting on the whole
        refill (MIN_SHARE 1: the share never moves)."""
        shared = simulate_sharing(processes, seconds=120)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("cmk.adapters.arm_budget.MIN_SHARE", 1.0)
            alone = simulate_sharing(processes, seconds=120)
        budget = 200 + 10 * 120
        assert shared.accepted >= 0.99 * budget and alone.accepted >= 0.99 * budget
        assert shared.refused_share <= {2: 0.01, 8: 0.05, 40: 0.3}[processes]
        assert shared.refused_share <= alone.refused_share / 2


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


class TestPatchHeldBack:
    async def test_a_patch_the_budget_holds_back_is_throttled_not_unanswered(
        self, cloud: Cloud, azurite: str
    ) -> None:
        """ARM's write budget is spent for a minute and the PATCH may wait only its own
        timeout: a ThrottledError (the job is deferred, its lease given back) — not
        UpdateUnanswered ("may still be applied") — and no PATCH reached ARM."""
        first = cloud.add_version(cloud.vault).version
        newer = cloud.add_version(cloud.vault).version
        cloud.add_account("held-back", cloud.vault, first)
        settings = replace(settings_for(azurite), patch_timeout=timedelta(seconds=0.2))
        async with Services.from_settings(settings, options=TEST_OPTIONS) as services:
            record = await services.accounts.get(AccountId(SUB, RG, "held-back"))
            services.arm_budget.bucket(SUB, "writes").throttled(60.0)
            cloud.sandbox.counters.reset()
            with pytest.raises(ThrottledError, match="not sent"):
                await services.accounts.update_key_version(record, newer, wait=timedelta(0))
        assert cloud.sandbox.counters.matching(method="PATCH") == []


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
