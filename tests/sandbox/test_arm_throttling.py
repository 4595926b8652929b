"""ARM token buckets and Resource Graph's per-user quota, on a fake monotonic clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmk.sandbox.platform.throttling import Throttle, TokenBucket, throttle_for
from cmk.sandbox.world import World


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestTokenBucket:
    def test_starts_full_and_empties(self) -> None:
        """A new bucket grants exactly its capacity, then refuses."""
        bucket = TokenBucket(3, 1, clock=FakeClock())
        assert [bucket.take() for _ in range(4)] == [True, True, True, False]

    def test_refills_at_rate_up_to_capacity(self) -> None:
        """Tokens come back at refill_per_second and never exceed capacity."""
        clock = FakeClock()
        bucket = TokenBucket(2, 10, clock=clock)
        bucket.take()
        bucket.take()
        clock.now += 0.1
        assert bucket.remaining == 1
        clock.now += 100
        assert bucket.remaining == 2

    def test_retry_after_is_whole_seconds_until_a_token(self) -> None:
        """Retry-After rounds the wait for one token up to whole seconds (at least 1)."""
        clock = FakeClock()
        bucket = TokenBucket(1, 0.25, clock=clock)
        bucket.take()
        assert bucket.retry_after() == 4
        clock.now += 3.5
        assert bucket.retry_after() == 1

    @given(
        capacity=st.integers(1, 50),
        rate=st.floats(0.5, 20),
        gaps=st.lists(st.floats(0, 2), max_size=40),
    )
    def test_never_grants_more_than_capacity_plus_refill(
        self, capacity: int, rate: float, gaps: list[float]
    ) -> None:
        """Over any schedule, grants <= capacity + rate * elapsed."""
        clock = FakeClock()
        bucket = TokenBucket(capacity, rate, clock=clock)
        granted = 0
        for gap in gaps:
            clock.now += gap
            granted += bucket.take()
        assert granted <= capacity + rate * clock.now + 1e-9


class TestThrottle:
    def test_defaults_match_arm(self) -> None:
        """Reads 250 (+25/s) and writes 200 (+10/s), as ARM's documented buckets."""
        throttle = Throttle(clock=FakeClock())
        read = throttle.arm("sub", write=False)
        write = throttle.arm("sub", write=True)
        assert read.headers == {"x-ms-ratelimit-remaining-subscription-reads": "249"}
        assert write.headers == {"x-ms-ratelimit-remaining-subscription-writes": "199"}

    def test_subscriptions_have_separate_buckets(self) -> None:
        """Exhausting one subscription does not throttle another."""
        throttle = Throttle(read_capacity=1, clock=FakeClock())
        assert throttle.arm("a", write=False).allowed
        assert not throttle.arm("A", write=False).allowed
        assert throttle.arm("b", write=False).allowed

    def test_regions_have_separate_buckets(self) -> None:
        """The same subscription gets a fresh bucket in another ARM region."""
        throttle = Throttle(read_capacity=1, clock=FakeClock())
        throttle.arm("a", write=False)
        throttle.region = "westeurope"
        assert throttle.arm("a", write=False).allowed

    def test_refusal_carries_retry_after(self) -> None:
        """An empty bucket refuses with Retry-After and zero remaining."""
        throttle = Throttle(write_capacity=1, write_refill_per_second=0.5, clock=FakeClock())
        throttle.arm("a", write=True)
        decision = throttle.arm("a", write=True)
        assert not decision.allowed
        assert decision.headers["Retry-After"] == "2"
        assert decision.headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"

    def test_disabled_allows_everything(self) -> None:
        """enabled=False lets every request through."""
        throttle = Throttle(enabled=False, read_capacity=1, read_refill_per_second=0)
        assert all(throttle.arm("a", write=False).allowed for _ in range(5))

    def test_configure_rejects_unknown_settings(self) -> None:
        """configure() names only real settings."""
        with pytest.raises(ValueError, match="unknown throttle setting"):
            Throttle().configure(reads=5)

    def test_graph_quota_window(self) -> None:
        """Resource Graph allows graph_quota queries per window, then 429 until it resets."""
        clock = FakeClock()
        throttle = Throttle(graph_quota=2, graph_window_seconds=5, clock=clock)
        first = throttle.graph("user")
        assert first.headers == {
            "x-ms-user-quota-remaining": "1",
            "x-ms-user-quota-resets-after": "00:00:05",
        }
        assert throttle.graph("user").allowed
        clock.now += 1
        refused = throttle.graph("user")
        assert not refused.allowed
        assert refused.headers["Retry-After"] == "4"
        assert throttle.graph("someone else").allowed
        clock.now += 4
        assert throttle.graph("user").allowed

    def test_one_throttle_per_world(self) -> None:
        """throttle_for returns the same object for a world, another for another world."""
        world = World()
        assert throttle_for(world) is throttle_for(world)
        assert throttle_for(world) is not throttle_for(World())
