"""The app's ARM role exactly as infra/ defines it, enforced by the sandbox: an update made
with the custom role's actions succeeds through its PATCH and status polls, and the same
role without the polling action is refused at the first poll, with ARM's AuthorizationFailed
naming the action to add (docs/deployment.md, "Polling the PATCH") — and the update,
accepted, is verified by a GET instead of failing."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from adapter_world import RG, SUB, Cloud
from pycep import BicepParser

from cmk.errors import AccessDenied
from cmk.keyid import KeyId
from cmk.ports import UpdateOutcome
from cmk.resource_id import AccountId
from cmk.wiring import Services

ROLE_TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "app" / "rbac-subscription.bicep"
POLLING_ACTION = "Microsoft.CognitiveServices/locations/operationResults/read"
WAIT = timedelta(seconds=20)


def _account_operator_actions() -> list[str]:
    """The actions of the custom role infra/ assigns the app on each subscription."""
    parsed = cast(dict[str, Any], BicepParser().parse(file_path=ROLE_TEMPLATE))
    actions = parsed["variables"]["accountOperatorActions"]["value"]
    assert isinstance(actions, list) and POLLING_ACTION in actions
    return [str(action) for action in actions]


def _only_role(cloud: Cloud, actions: list[str]) -> None:
    """The app holds, on the subscription, a custom role of exactly ``actions`` (and its
    Key Vault grants), nothing else."""
    app = cloud.sandbox.app_principal.object_id
    scope = f"/subscriptions/{SUB}"
    with cloud.world.lock:
        cloud.world.revoke(app, scope)
        role = cloud.world.define_role("CMK rotator account operator (test)", actions)
        cloud.world.grant(app, scope, role)


async def test_update_with_the_role_of_infra_succeeds(cloud: Cloud, services: Services) -> None:
    old = cloud.add_version(cloud.vault).version
    new = cloud.add_version(cloud.vault).version
    account = cloud.add_account("roled", cloud.vault, old, lro_seconds=0.2)
    _only_role(cloud, _account_operator_actions())
    record = await services.accounts.get(AccountId(SUB, RG, "roled"))
    assert await services.accounts.update_key_version(record, new, WAIT) is (
        UpdateOutcome.SUCCEEDED
    )
    assert account.encryption.key_version == new


async def test_without_the_polling_action_the_update_is_verified_by_a_get(
    cloud: Cloud, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """The status URL answers 403 (the role lacks the action ARM checks for it): the
    accepted update is IN_PROGRESS, with a WARNING naming the refused action — not a
    failure (and an alert) for every rotation — and the GET of the verify finds it done."""
    old = cloud.add_version(cloud.vault).version
    new = cloud.add_version(cloud.vault).version
    account = cloud.add_account("unpolled", cloud.vault, old, lro_seconds=0.2)
    actions = [a for a in _account_operator_actions() if a != POLLING_ACTION]
    _only_role(cloud, actions)
    account_id = AccountId(SUB, RG, "unpolled")
    record = await services.accounts.get(account_id)
    with caplog.at_level(logging.WARNING, logger="cmk.adapters.accounts"):
        outcome = await services.accounts.update_key_version(record, new, WAIT)
    assert outcome is UpdateOutcome.IN_PROGRESS
    [warning] = [
        r.getMessage() for r in caplog.records if "refused to this identity" in r.getMessage()
    ]
    assert re.search(r"(?i)AuthorizationFailed.*operationresults/read", warning)
    target = KeyId(cloud.vault.url, record.binding.key_id.name, new) if record.binding else None
    assert target is not None
    deadline = asyncio.get_running_loop().time() + 30  # bounds a hang only
    while (verified := await services.accounts.verify(account_id, target)) is not (
        UpdateOutcome.SUCCEEDED
    ):
        assert verified is UpdateOutcome.IN_PROGRESS
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert account.encryption.key_version == new


async def test_a_key_access_refusal_still_fails(cloud: Cloud, services: Services) -> None:
    """Only a status URL's 403 is read as "verify later": an update that ends Failed
    because the account's identity may not use the key still raises AccessDenied."""
    old = cloud.add_version(cloud.vault).version
    new = cloud.add_version(cloud.vault).version
    cloud.add_account("ungranted", cloud.vault, old, lro_seconds=0.2, grant=False)
    record = await services.accounts.get(AccountId(SUB, RG, "ungranted"))
    with pytest.raises(AccessDenied):
        await services.accounts.update_key_version(record, new, WAIT)
