"""Fixtures of the adapter tests: a seeded sandbox world (``cloud``) and the wired
services (``services``), see :mod:`adapter_world`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from adapter_world import SUB, TEST_OPTIONS, Cloud, settings_for

from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import VaultKind
from cmk.wiring import Services


@pytest.fixture
def cloud(sandbox: Sandbox) -> Cloud:
    """A world with one subscription, a Key Vault and a Managed HSM the app can use."""
    world = sandbox.world
    seeded = Cloud(sandbox, world, None, None)  # type: ignore[arg-type]
    seeded.add_subscription(SUB)
    seeded.vault = seeded.add_vault(f"kv{uuid.uuid4().hex[:8]}")
    seeded.hsm = seeded.add_vault(f"hsm{uuid.uuid4().hex[:8]}", VaultKind.MANAGED_HSM)
    return seeded


@pytest.fixture
async def services(cloud: Cloud, azurite: str) -> AsyncIterator[Services]:
    """Every adapter wired to the sandbox and Azurite (no retry sleeps, fast LRO polls)."""
    async with Services.from_settings(settings_for(azurite), options=TEST_OPTIONS) as wired:
        yield wired
