"""A resource group that does not exist, through the real management SDKs: every call under
it answers ARM's 404 ResourceGroupNotFound ("Resource group '{rg}' could not be found."),
never an empty list or ResourceNotFound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient

from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import Subscription, VaultKind, VaultState

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "rg-ai"


@pytest.fixture
def seeded(sandbox: Sandbox) -> Sandbox:
    """Group ``rg-ai`` holds an account and a vault; the app reads the whole subscription."""
    world = sandbox.world
    with world.lock:
        world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "ai")
        seed_account(world, SUB, RG, "acct", "eastus")
        vault = VaultState("kv-groups", VaultKind.VAULT, SUB, RG, "eastus", world.tenant_id)
        world.vaults[vault.host] = vault
        world.grant(sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Reader")
    return sandbox


def _cognitive() -> CognitiveServicesManagementClient:
    return CognitiveServicesManagementClient(DefaultAzureCredential(), SUB)


def _keyvault() -> KeyVaultManagementClient:
    return KeyVaultManagementClient(DefaultAzureCredential(), SUB)


CALLS: dict[str, Callable[[], Any]] = {
    "accounts.list_by_resource_group": lambda: list(
        _cognitive().accounts.list_by_resource_group("nosuch")
    ),
    "accounts.get": lambda: _cognitive().accounts.get("nosuch", "acct"),
    "vaults.list_by_resource_group": lambda: list(
        _keyvault().vaults.list_by_resource_group("nosuch")
    ),
    "vaults.get": lambda: _keyvault().vaults.get("nosuch", "kv-groups"),
    "user_assigned_identities.get": lambda: ManagedServiceIdentityClient(
        DefaultAzureCredential(), SUB
    ).user_assigned_identities.get("nosuch", "uai"),
}


class TestMissingGroup:
    @pytest.mark.parametrize("call", sorted(CALLS))
    def test_is_resource_group_not_found(self, seeded: Sandbox, call: str):
        """az cognitiveservices account list -g nosuch, az keyvault list -g nosuch, and a
        GET of one resource there: 404 ResourceGroupNotFound with ARM's message."""
        with pytest.raises(ResourceNotFoundError) as caught:
            CALLS[call]()
        assert caught.value.error is not None
        assert caught.value.error.code == "ResourceGroupNotFound"
        assert caught.value.error.message == "Resource group 'nosuch' could not be found."

    def test_existing_group_keeps_its_answers(self, seeded: Sandbox):
        """The group that exists lists its account and vault; a missing name in it is still
        ResourceNotFound."""
        assert [a.name for a in _cognitive().accounts.list_by_resource_group(RG)] == ["acct"]
        assert [v.name for v in _keyvault().vaults.list_by_resource_group(RG)] == ["kv-groups"]
        with pytest.raises(ResourceNotFoundError) as caught:
            _cognitive().accounts.get(RG, "ghost")
        assert caught.value.error is not None
        assert caught.value.error.code == "ResourceNotFound"

    def test_without_read_access_authorization_comes_first(self, seeded: Sandbox):
        """A caller without accounts/read gets 403 AuthorizationFailed, not the group's
        existence."""
        world = seeded.world
        with world.lock:
            world.revoke(seeded.app_principal.object_id)
        with pytest.raises(HttpResponseError) as caught:
            _cognitive().accounts.get("nosuch", "acct")
        assert caught.value.status_code == 403
