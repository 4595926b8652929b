"""One role assignment through ``AuthorizationManagementClient`` (azure-mgmt-authorization,
api-version 2022-04-01) against the sandbox: ``RoleAssignments_Create`` / ``_Get`` /
``_Delete`` at a subscription, a resource group, a vault and a vault's key, and the grant
taking effect for the Cognitive Services key check."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.cognitiveservices.models import (
    Account,
    AccountProperties,
    Encryption,
    KeyVaultProperties,
)

from cmk.sandbox.arm.cognitive.accounts import rp_for, seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import Encryption as Binding
from cmk.sandbox.world import (
    KeyState,
    KeyVersionState,
    Principal,
    Subscription,
    VaultKind,
    VaultState,
)

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "rg-ai"
KEY_ROLE = "e147488a-f6f5-4113-8e2d-b22465e65bf6"  # Key Vault Crypto Service Encryption User
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
V0, V1 = "0" * 32, "1" * 32


@dataclass
class Seeded:
    sandbox: Sandbox
    vault: VaultState
    identity: Principal  # the account's system identity, without key access

    @property
    def key_scope(self) -> str:
        return f"{self.vault.resource_id}/keys/cmk"

    def definition(self, guid: str) -> str:
        return f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}"

    def grant(self, scope: str, guid: str = KEY_ROLE, name: str | None = None) -> str:
        """PUT a role assignment for the account's identity; returns its name."""
        name = name or str(uuid.uuid4())
        _authorization().role_assignments.create(
            scope,
            name,
            RoleAssignmentCreateParameters(
                role_definition_id=self.definition(guid),
                principal_id=self.identity.object_id,
                principal_type="ServicePrincipal",
            ),
        )
        return name

    def bind(self, version: str) -> Account:
        """PATCH the account's encryption to ``version`` of the key and wait for it."""
        binding = Account(
            properties=AccountProperties(
                encryption=Encryption(
                    key_source="Microsoft.KeyVault",
                    key_vault_properties=KeyVaultProperties(
                        key_vault_uri=f"{self.vault.url}/", key_name="cmk", key_version=version
                    ),
                )
            )
        )
        client = CognitiveServicesManagementClient(DefaultAzureCredential(), SUB)
        return client.accounts.begin_update(RG, "acct", binding, polling_interval=0.05).result()


def _authorization() -> AuthorizationManagementClient:
    return AuthorizationManagementClient(DefaultAzureCredential(), SUB)


@pytest.fixture
def seeded(sandbox: Sandbox) -> Seeded:
    """An RBAC vault with key ``cmk`` (two versions), an account bound to V0 whose system
    identity holds no key role, and the app as Owner of the subscription."""
    world = sandbox.world
    with world.lock:
        world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "ai")
        vault = VaultState("kv-grants", VaultKind.VAULT, SUB, RG, "eastus", world.tenant_id)
        now = world.clock.now()
        vault.keys["cmk"] = KeyState(
            "cmk",
            [
                KeyVersionState(v, "RSA", 2048, None, ["wrapKey", "unwrapKey"], True, now, now)
                for v in (V0, V1)
            ],
        )
        world.vaults[vault.host] = vault
        binding = Binding("Microsoft.KeyVault", f"{vault.url}/", "cmk", V0)
        account = seed_account(world, SUB, RG, "acct", "eastus", encryption=binding)
        assert account.identity.system is not None
        world.grant(sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Owner")
        rp_for(world).retry_after_floor = 0.05
    return Seeded(sandbox, vault, account.identity.system)


class TestCreate:
    def test_key_scope_grant_lets_the_account_bind_the_key(self, seeded: Seeded):
        """The CMK update the key role is missing for fails; after RoleAssignments_Create at
        <vault id>/keys/<key> (docs/lifecycle.md's fix) the same update succeeds."""
        with pytest.raises(HttpResponseError) as denied:
            seeded.bind(V1)
        assert denied.value.error is not None
        assert denied.value.error.code == "KeyVaultAccessDenied"
        seeded.grant(seeded.key_scope)
        account = seeded.bind(V1)
        assert account.properties is not None and account.properties.encryption is not None
        assert account.properties.encryption.key_vault_properties is not None
        assert account.properties.encryption.key_vault_properties.key_version == V1

    def test_answer_is_the_spec_role_assignment(self, seeded: Seeded):
        """201 body (RoleAssignments_CreateForResource.json): id under the scope, name,
        type, and properties with the role definition, principal and scope."""
        name = str(uuid.uuid4())
        made = _authorization().role_assignments.create(
            seeded.key_scope,
            name,
            RoleAssignmentCreateParameters(
                role_definition_id=seeded.definition(KEY_ROLE),
                principal_id=seeded.identity.object_id,
            ),
        )
        assert made.id == (
            f"{seeded.key_scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        )
        assert (made.name, made.type) == (name, "Microsoft.Authorization/roleAssignments")
        assert made.role_definition_id == seeded.definition(KEY_ROLE)
        assert (made.principal_id, made.scope) == (seeded.identity.object_id, seeded.key_scope)

    @pytest.mark.parametrize("where", ["subscription", "group", "vault"])
    def test_every_scope_the_world_holds(self, seeded: Seeded, where: str):
        """Subscription, resource group and resource scopes are accepted and listed."""
        scope = {
            "subscription": f"/subscriptions/{SUB}",
            "group": f"/subscriptions/{SUB}/resourceGroups/{RG}",
            "vault": seeded.vault.resource_id,
        }[where]
        name = seeded.grant(scope, READER)
        listed = _authorization().role_assignments.list_for_scope(
            scope, filter=f"principalId eq '{seeded.identity.object_id}'"
        )
        assert name in {a.name for a in listed}

    def test_same_name_again_is_idempotent(self, seeded: Seeded):
        """A template deployed twice PUTs the same assignment again: 200, one assignment."""
        name = seeded.grant(seeded.key_scope)
        seeded.grant(seeded.key_scope, name=name)
        world = seeded.sandbox.world
        held = [a for a in world.role_assignments if a.principal_id == seeded.identity.object_id]
        assert [a.id for a in held] == [name]

    def test_same_grant_under_another_name_conflicts(self, seeded: Seeded):
        """409 RoleAssignmentExists: one principal holds a role at a scope once."""
        seeded.grant(seeded.key_scope)
        with pytest.raises(HttpResponseError) as caught:
            seeded.grant(seeded.key_scope)
        assert caught.value.status_code == 409
        assert caught.value.error is not None
        assert caught.value.error.code == "RoleAssignmentExists"

    def test_another_role_under_an_existing_name_is_refused(self, seeded: Seeded):
        """400 RoleAssignmentUpdateNotPermitted: an assignment is never changed in place."""
        name = seeded.grant(seeded.key_scope)
        with pytest.raises(HttpResponseError) as caught:
            seeded.grant(seeded.key_scope, READER, name=name)
        assert caught.value.status_code == 400
        assert caught.value.error is not None
        assert caught.value.error.code == "RoleAssignmentUpdateNotPermitted"

    @pytest.mark.parametrize(
        ("suffix", "status", "code"),
        [
            ("/keys/nokey", 404, "ResourceNotFound"),
            ("-nope", 404, "ResourceNotFound"),
        ],
    )
    def test_scope_the_world_does_not_hold(
        self, seeded: Seeded, suffix: str, status: int, code: str
    ):
        """A key or vault that does not exist: 404 ResourceNotFound, nothing granted."""
        before = len(seeded.sandbox.world.role_assignments)
        with pytest.raises(HttpResponseError) as caught:
            seeded.grant(seeded.vault.resource_id + suffix)
        assert caught.value.status_code == status
        assert caught.value.error is not None and caught.value.error.code == code
        assert len(seeded.sandbox.world.role_assignments) == before

    def test_missing_group_is_resource_group_not_found(self, seeded: Seeded):
        """A scope in a group that does not exist: 404 ResourceGroupNotFound."""
        with pytest.raises(HttpResponseError) as caught:
            seeded.grant(f"/subscriptions/{SUB}/resourceGroups/nosuch")
        assert caught.value.error is not None
        assert caught.value.error.code == "ResourceGroupNotFound"

    def test_unknown_role_definition_is_refused(self, seeded: Seeded):
        """A role definition GUID the sandbox does not know: 400 RoleDefinitionDoesNotExist."""
        with pytest.raises(HttpResponseError) as caught:
            seeded.grant(seeded.key_scope, str(uuid.uuid4()))
        assert caught.value.status_code == 400
        assert caught.value.error is not None
        assert caught.value.error.code == "RoleDefinitionDoesNotExist"

    def test_contributor_cannot_grant_access(self, seeded: Seeded):
        """Contributor's notActions exclude Microsoft.Authorization/*/Write: 403."""
        world = seeded.sandbox.world
        app = seeded.sandbox.app_principal.object_id
        with world.lock:
            world.revoke(app)
            world.grant(app, f"/subscriptions/{SUB}", "Contributor")
        with pytest.raises(HttpResponseError) as caught:
            seeded.grant(seeded.key_scope)
        assert caught.value.status_code == 403
        assert caught.value.error is not None
        assert caught.value.error.code == "AuthorizationFailed"
        assert "Microsoft.Authorization/roleAssignments/write" in str(caught.value.message)


class TestGetAndDelete:
    def test_get_then_delete_revokes(self, seeded: Seeded):
        """GET answers the assignment; DELETE answers it once more and the key role is
        gone (the CMK update is refused again); a second DELETE is 204 (None)."""
        name = seeded.grant(seeded.key_scope)
        client = _authorization()
        got = client.role_assignments.get(seeded.key_scope, name)
        assert got.name == name and got.principal_id == seeded.identity.object_id
        deleted = client.role_assignments.delete(seeded.key_scope, name)
        assert deleted is not None and deleted.name == name
        assert client.role_assignments.delete(seeded.key_scope, name) is None
        with pytest.raises(HttpResponseError) as denied:
            seeded.bind(V1)
        assert denied.value.error is not None
        assert denied.value.error.code == "KeyVaultAccessDenied"

    def test_unknown_name_is_not_found(self, seeded: Seeded):
        """GET of a name nobody assigned: 404 RoleAssignmentNotFound."""
        with pytest.raises(ResourceNotFoundError) as caught:
            _authorization().role_assignments.get(seeded.key_scope, str(uuid.uuid4()))
        assert caught.value.error is not None
        assert caught.value.error.code == "RoleAssignmentNotFound"


DATA_ACCESS_ADMIN = "8b54135c-b56d-4d72-a534-26097cfdc8d8"


@pytest.fixture
def data_access_admin(seeded: Seeded) -> Seeded:
    """The app holds Key Vault Data Access Administrator on the vault, and nothing else."""
    world = seeded.sandbox.world
    app = seeded.sandbox.app_principal.object_id
    with world.lock:
        world.revoke(app)
        world.grant(app, seeded.vault.resource_id, "Key Vault Data Access Administrator")
    return seeded


class TestKeyVaultDataAccessAdministrator:
    def test_grants_and_revokes_a_key_vault_data_role(self, data_access_admin: Seeded):
        """Its condition admits Key Vault Crypto Service Encryption User at a key of the
        vault: created (201), then deleted."""
        name = data_access_admin.grant(data_access_admin.key_scope)
        assert _authorization().role_assignments.delete(data_access_admin.key_scope, name)

    def test_any_other_role_is_an_unfulfilled_condition(self, data_access_admin: Seeded):
        """Reader at the vault: 403 AuthorizationFailed naming the ABAC condition; nothing
        is granted."""
        before = len(data_access_admin.sandbox.world.role_assignments)
        with pytest.raises(HttpResponseError) as caught:
            data_access_admin.grant(data_access_admin.vault.resource_id, READER)
        assert caught.value.status_code == 403
        assert caught.value.error is not None
        assert caught.value.error.code == "AuthorizationFailed"
        assert "ABAC condition not fulfilled" in str(caught.value.message)
        assert len(data_access_admin.sandbox.world.role_assignments) == before

    def test_may_not_delete_another_role(self, data_access_admin: Seeded):
        """A Reader assignment at the vault, made by someone else, is not its to delete: 403,
        the assignment stays."""
        world = data_access_admin.sandbox.world
        with world.lock:
            held = world.grant(
                data_access_admin.identity.object_id, data_access_admin.vault.resource_id, "Reader"
            )
        with pytest.raises(HttpResponseError) as caught:
            _authorization().role_assignments.delete(data_access_admin.vault.resource_id, held.id)
        assert caught.value.status_code == 403
        assert held in world.role_assignments

    def test_its_definition_carries_the_condition(self, data_access_admin: Seeded):
        """RoleDefinitions_Get (api-version 2022-05-01-preview, whose Permission has the
        condition) answers its real actions and the condition, version 2.0, naming the
        Crypto Service Encryption User role among those it may assign."""
        client = AuthorizationManagementClient(
            DefaultAzureCredential(), SUB, api_version="2022-05-01-preview"
        )
        definition = client.role_definitions.get(f"/subscriptions/{SUB}", DATA_ACCESS_ADMIN)
        assert definition.role_name == "Key Vault Data Access Administrator"
        assert definition.permissions is not None
        permission = definition.permissions[0]
        assert permission.actions is not None
        assert "Microsoft.Authorization/roleAssignments/write" in permission.actions
        assert permission.data_actions == []
        assert permission.condition_version == "2.0"
        assert permission.condition is not None and KEY_ROLE in permission.condition
