"""ArmSubscriptions: ARM's GET /subscriptions through the wired ARM pipeline, against the
sandbox (which lists a subscription to whoever holds a role at, above or inside it)."""

from __future__ import annotations

import pytest
from adapter_world import SUB, SUB2, TEST_OPTIONS, Cloud, settings_for

from cmk.adapters.subscriptions import ArmSubscriptions
from cmk.errors import ServiceUnavailable
from cmk.sandbox.world import Subscription as ArmSubscription
from cmk.wiring import Services, WiringOptions

ARM = "management.azure.com"
NO_ROLE = "33333333-3333-4333-8333-333333333333"


def _unreadable(cloud: Cloud, subscription_id: str) -> None:
    """A subscription of the tenant where the app holds no role."""
    world = cloud.world
    with world.lock:
        world.subscriptions[subscription_id] = ArmSubscription(
            subscription_id, world.tenant_id, "no-role"
        )


class TestArmSubscriptions:
    async def test_lists_what_the_identity_can_read(self, cloud: Cloud, services: Services) -> None:
        """The app's subscriptions are listed (lowercase id, display name, state); one it
        holds no role in is not."""
        _unreadable(cloud, NO_ROLE)

        found = {s.subscription_id: s for s in await services.subscriptions.readable()}

        assert found[SUB].display_name == f"sub-{SUB[:4]}" and found[SUB].state == "Enabled"
        assert NO_ROLE not in found

    async def test_answer_is_reused_within_its_ttl(self, cloud: Cloud, services: Services) -> None:
        """A second call within the TTL asks ARM nothing: a new subscription shows only
        after the TTL (here, on a fresh adapter with TTL 0)."""
        before = await services.subscriptions.readable()
        cloud.add_subscription(SUB2)
        assert await services.subscriptions.readable() == before

        options = WiringOptions(retry=TEST_OPTIONS.retry, subscriptions_ttl=0)
        async with Services.from_settings(
            settings_for("UseDevelopmentStorage=true"), options=options
        ) as fresh:
            listed = {s.subscription_id for s in await fresh.subscriptions.readable()}
        assert SUB2 in listed

    async def test_outage_is_transient(self, cloud: Cloud, services: Services) -> None:
        """ARM answering 503 (after the pipeline's retries) is a ServiceUnavailable."""
        cloud.sandbox.faults.add(host=ARM, path="/subscriptions", status=503)
        with pytest.raises(ServiceUnavailable):
            await services.subscriptions.readable()

    def test_adapter_type(self, services: Services) -> None:
        """The wiring builds the ARM adapter (no azure-mgmt-resource needed)."""
        assert isinstance(services.subscriptions, ArmSubscriptions)
