"""Fixtures of the lifecycle tests (see :mod:`lifecycle_rig`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import pytest
from lifecycle_rig import TEST_OPTIONS, Land, Wired, settings_for

from cmk.lifecycle.services import LifecycleClients
from cmk.sandbox.core import Sandbox
from cmk.usecases import Engine
from cmk.wiring import Services, WiringOptions


@pytest.fixture
def land(sandbox: Sandbox) -> Land:
    """One subscription, an RBAC Key Vault with key ``cmk``, the app allowed to use it."""
    return Land(sandbox, sandbox.world)


@pytest.fixture
async def wired(land: Land, azurite: str) -> AsyncIterator[Wired]:
    """The lifecycle ports and the rotation engine, wired to the sandbox and Azurite."""
    async with _wired(land, azurite, TEST_OPTIONS) as wired:
        yield wired


@pytest.fixture
async def wired_as_deployed(land: Land, azurite: str) -> AsyncIterator[Wired]:
    """:func:`wired` with the deployed app's ARM polling (``Retry-After`` decides the
    poll period, not the tests' fixed 50 ms)."""
    async with _wired(land, azurite, replace(TEST_OPTIONS, polling_interval=None)) as wired:
        yield wired


@asynccontextmanager
async def _wired(land: Land, azurite: str, options: WiringOptions) -> AsyncIterator[Wired]:
    settings = settings_for(land, azurite)
    async with Services.from_settings(settings, options=options) as services:
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
            now=land.world.clock.now,
            verify_delay=timedelta(0),
        )
        async with LifecycleClients(services) as clients:
            yield Wired(land, services, clients, engine, clients.lifecycle(engine))
