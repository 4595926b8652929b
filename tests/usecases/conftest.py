"""Fixtures of the use-case tests (see :mod:`usecase_rig`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from usecase_rig import REGION, SUB_A, SUB_B, SUB_C, TEST_OPTIONS, Estate, Rig

from cmk.sandbox.core import Sandbox
from cmk.settings import Settings, StorageSettings
from cmk.usecases import Engine
from cmk.wiring import Services


@pytest.fixture
def estate(sandbox: Sandbox) -> Estate:
    """Three subscriptions, a Key Vault, a Managed HSM and a vault outside the allow-list."""
    return Estate(sandbox, sandbox.world)


@pytest.fixture
async def rig(estate: Estate, azurite: str) -> AsyncIterator[Rig]:
    """Every real adapter wired to the sandbox and Azurite, and the Engine over them."""
    suffix = uuid.uuid4().hex[:10]
    topic = estate.sandbox.eventgrid.create_topic(f"cmkalerts{suffix}", region=REGION)
    estate.world.grant(
        estate.sandbox.app_principal.object_id, topic.resource_id, "EventGrid Data Sender"
    )
    settings = Settings(
        vault_allowlist=frozenset({estate.kv.url, estate.hsm.url}),
        subscriptions=(SUB_A, SUB_B, SUB_C),
        storage=StorageSettings(connection_string=azurite),
        job_queue=f"jobs-{suffix}",
        ledger_table=f"ledger{suffix}",
        alert_topic_endpoint=topic.endpoint,
        max_concurrency=16,
        update_timeout=timedelta(seconds=10),
    )
    async with Services.from_settings(settings, options=TEST_OPTIONS) as services:
        await services.jobs.ensure_queue()
        await services.ledger.ensure_table()
        engine = Engine(
            keys=services.keys,
            accounts=services.accounts,
            inventory=services.inventory,
            jobs=services.jobs,
            ledger=services.ledger,
            alerts=services.alerts,
            settings=settings,
            now=estate.world.clock.now,
            verify_delay=timedelta(0),
        )
        yield Rig(estate, services, engine, topic)
