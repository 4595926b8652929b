"""Role assignments and role definitions as ARM's Microsoft.Authorization serves them, and
Microsoft Graph as a managed identity without Graph permissions meets it, through the
sandbox proxy with the app's managed identity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import requests
from azure.identity import DefaultAzureCredential

from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import Subscription

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
ARM = "https://management.azure.com"
GRAPH = "https://graph.microsoft.com"
API = {"api-version": "2022-04-01"}
DEFINITIONS = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions"


@dataclass
class Caller:
    sandbox: Sandbox
    credential: DefaultAzureCredential

    def token(self, resource: str) -> str:
        return self.credential.get_token(f"{resource}/.default").token

    def arm(self, path: str, params: dict[str, str] | None = None) -> requests.Response:
        return requests.get(
            f"{ARM}{path}",
            params=params or API,
            headers={"Authorization": f"Bearer {self.token(ARM)}"},
            timeout=10,
        )

    def ok(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = self.arm(path, params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def caller(sandbox: Sandbox) -> Caller:
    """The app's identity, Reader on one subscription, with a custom role defined."""
    world = sandbox.world
    with world.lock:
        world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "ai-prod")
        world.define_role("CMK Rotator", {"Microsoft.CognitiveServices/accounts/write"})
        world.grant(sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Reader")
    return Caller(sandbox, DefaultAzureCredential())


class TestRoleDefinitionsList:
    def test_lists_every_role_with_the_spec_fields(self, caller: Caller):
        """RoleDefinitions_List: built-in and custom roles, each a RoleDefinition."""
        roles = caller.ok(DEFINITIONS)["value"]
        by_name = {r["properties"]["roleName"]: r for r in roles}
        assert {"Reader", "Key Vault Crypto User", "CMK Rotator"} <= set(by_name)
        reader = by_name["Reader"]
        assert reader["id"] == f"{DEFINITIONS}/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        assert reader["type"] == "Microsoft.Authorization/roleDefinitions"
        assert set(reader["properties"]) >= {
            "roleName", "type", "description", "assignableScopes", "permissions",
        }  # fmt: skip
        assert reader["properties"]["type"] == "BuiltInRole"
        assert by_name["CMK Rotator"]["properties"]["type"] == "CustomRole"

    def test_filter_by_role_name_and_type(self, caller: Caller):
        """roleName eq '...' (az role definition list --name) in any case; type eq."""
        named = caller.ok(DEFINITIONS, {**API, "$filter": "roleName eq 'key vault crypto user'"})
        assert [r["name"] for r in named["value"]] == ["12338af0-0e69-4776-bea7-57ae8d297424"]
        custom = caller.ok(DEFINITIONS, {**API, "$filter": "type eq 'CustomRole'"})
        assert [r["properties"]["roleName"] for r in custom["value"]] == ["CMK Rotator"]
        none = caller.ok(DEFINITIONS, {**API, "$filter": "roleName eq 'No Such Role'"})
        assert none["value"] == []

    def test_at_a_resource_scope_ids_stay_subscription_level(self, caller: Caller):
        """Listed at a vault's scope (az role assignment list fills names from it), the ids
        are the subscription-level ids role assignments point at."""
        scope = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"
        roles = caller.ok(f"{scope}/providers/Microsoft.Authorization/roleDefinitions")["value"]
        assert all(r["id"].startswith(f"{DEFINITIONS}/") for r in roles)

    def test_unsupported_filter_is_refused(self, caller: Caller):
        """A filter the sandbox cannot evaluate is 400, never an unfiltered list."""
        response = caller.arm(DEFINITIONS, {**API, "$filter": "startswith(roleName, 'Key')"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidFilter"


class TestRoleAssignmentTimes:
    def test_created_on_is_fixed_at_creation(self, caller: Caller):
        """createdOn/updatedOn are when the assignment was made, the same on every read."""
        path = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments"
        first = caller.ok(path)["value"][0]["properties"]
        caller.sandbox.world.clock.advance(timedelta(days=3))
        again = caller.ok(path)["value"][0]["properties"]
        assert first["createdOn"] and first["createdOn"] == again["createdOn"]
        assert again["updatedOn"] == first["createdOn"]


class TestGraph:
    def test_a_managed_identity_without_graph_permission_is_denied(self, caller: Caller):
        """Any Graph call with a Graph token: 403 Authorization_RequestDenied, Graph's body."""
        response = requests.post(
            f"{GRAPH}/v1.0/directoryObjects/getByIds",
            json={"ids": [caller.sandbox.app_principal.object_id]},
            headers={"Authorization": f"Bearer {caller.token(GRAPH)}"},
            timeout=10,
        )
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "Authorization_RequestDenied"
        assert error["message"] == "Insufficient privileges to complete the operation."
        assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}

    def test_missing_or_foreign_token_is_unauthenticated(self, caller: Caller):
        """No token, or an ARM token: 401 InvalidAuthenticationToken."""
        url = f"{GRAPH}/v1.0/servicePrincipals"
        bare = requests.get(url, timeout=10)
        arm = requests.get(
            url, headers={"Authorization": f"Bearer {caller.token(ARM)}"}, timeout=10
        )
        assert (bare.status_code, arm.status_code) == (401, 401)
        assert bare.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert arm.json()["error"]["code"] == "InvalidAuthenticationToken"
