"""The app's ARM role exactly as infra/ defines it, enforced by the sandbox: an update made
with the custom role's actions succeeds through its PATCH and status polls, and the same
role without the polling action fails at the first poll, with ARM's AuthorizationFailed
naming the action to add (docs/deployment.md, "Polling the PATCH")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from adapter_world import RG, SUB, Cloud
from pycep import BicepParser

from cmk.errors import AccessDenied
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


async def test_without_the_polling_action_the_poll_is_refused(
    cloud: Cloud, services: Services
) -> None:
    old = cloud.add_version(cloud.vault).version
    new = cloud.add_version(cloud.vault).version
    cloud.add_account("unpolled", cloud.vault, old, lro_seconds=0.2)
    actions = [a for a in _account_operator_actions() if a != POLLING_ACTION]
    _only_role(cloud, actions)
    record = await services.accounts.get(AccountId(SUB, RG, "unpolled"))
    with pytest.raises(AccessDenied, match=r"(?i)AuthorizationFailed.*operationresults/read"):
        await services.accounts.update_key_version(record, new, WAIT)
