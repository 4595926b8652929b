"""What ARM answers before a client touches a resource: subscriptions, tenants, resource
groups and the generic resource list, through the sandbox proxy, filtered by RBAC."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.identity import DefaultAzureCredential

from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import Principal, Subscription, UserAssignedIdentity, VaultKind, VaultState

SUB_A = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
SUB_B = "7c0ffee0-0000-4000-8000-000000000002"
SUB_HIDDEN = "5ca1ab1e-0000-4000-8000-000000000003"
ARM = "https://management.azure.com"
API_RESOURCES = {"api-version": "2021-04-01"}
API_SUBSCRIPTIONS = {"api-version": "2022-12-01"}
MI_ID = (
    f"/subscriptions/{SUB_A}/resourceGroups/rg-identities/providers"
    "/Microsoft.ManagedIdentity/userAssignedIdentities/uami-ai"
)


@dataclass
class Seeded:
    sandbox: Sandbox
    token: str

    def get(self, path: str, params: dict[str, str] | None = None) -> requests.Response:
        return requests.get(
            f"{ARM}{path}",
            params=params or API_RESOURCES,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )

    def ok(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = self.get(path, params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def seeded(sandbox: Sandbox) -> Seeded:
    """Three subscriptions: Reader on A, one resource group of B, nothing on the third."""
    world = sandbox.world
    with world.lock:
        for sub, name in ((SUB_A, "ai-prod"), (SUB_B, "ai-dev"), (SUB_HIDDEN, "finance")):
            world.subscriptions[sub] = Subscription(sub, world.tenant_id, name)
        vault = VaultState("kv-a", VaultKind.VAULT, SUB_A, "rg-keys", "westeurope", world.tenant_id)
        world.vaults[vault.host] = vault
        uami = UserAssignedIdentity(MI_ID, Principal.new("uami-ai", world.tenant_id))
        account = seed_account(world, SUB_A, "rg-ai", "acct-a", "westeurope")
        account.identity.user_assigned[MI_ID.lower()] = uami
        seed_account(world, SUB_B, "rg-dev", "acct-b", "eastus")
        seed_account(world, SUB_B, "rg-dev-2", "acct-b2", "eastus")
        seed_account(world, SUB_HIDDEN, "rg-fin", "acct-fin", "eastus")
        app = sandbox.app_principal.object_id
        world.grant(app, f"/subscriptions/{SUB_A}", "Reader")
        world.grant(app, f"/subscriptions/{SUB_B}/resourceGroups/rg-dev", "Reader")
    token = DefaultAzureCredential().get_token(f"{ARM}/.default").token
    return Seeded(sandbox, token)


class TestSubscriptions:
    def test_list_shows_only_subscriptions_with_a_role_assignment(self, seeded: Seeded):
        """GET /subscriptions: subscription- and group-level access count; none hides it."""
        body = seeded.ok("/subscriptions", API_SUBSCRIPTIONS)
        assert set(body) == {"value"}
        assert [s["subscriptionId"] for s in body["value"]] == [SUB_B, SUB_A]

    def test_subscription_has_the_spec_fields(self, seeded: Seeded):
        """A subscription carries the fields of the 2022-12-01 Subscription definition."""
        body = seeded.ok(f"/subscriptions/{SUB_A}", API_SUBSCRIPTIONS)
        assert body == {
            "id": f"/subscriptions/{SUB_A}",
            "authorizationSource": "RoleBased",
            "managedByTenants": [],
            "subscriptionId": SUB_A,
            "tenantId": seeded.sandbox.tenant_id,
            "displayName": "ai-prod",
            "state": "Enabled",
            "subscriptionPolicies": {
                "locationPlacementId": "Public_2014-09-01",
                "quotaId": "PayAsYouGo_2014-09-01",
                "spendingLimit": "Off",
            },
        }

    def test_hidden_and_unknown_subscriptions(self, seeded: Seeded):
        """Without access: 403 AuthorizationFailed; an unknown id: 404 SubscriptionNotFound."""
        hidden = seeded.get(f"/subscriptions/{SUB_HIDDEN}", API_SUBSCRIPTIONS)
        assert hidden.status_code == 403
        assert hidden.json()["error"]["code"] == "AuthorizationFailed"
        unknown = seeded.get(f"/subscriptions/{'0' * 8}-0000-0000-0000-{'0' * 12}")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "SubscriptionNotFound"

    def test_tenants_lists_the_home_tenant(self, seeded: Seeded):
        """GET /tenants: the token's tenant, category Home, with the spec's fields."""
        body = seeded.ok("/tenants", API_SUBSCRIPTIONS)
        [tenant] = body["value"]
        assert tenant["id"] == f"/tenants/{seeded.sandbox.tenant_id}"
        assert tenant["tenantId"] == seeded.sandbox.tenant_id
        assert tenant["tenantCategory"] == "Home"
        assert {"countryCode", "displayName", "domains", "defaultDomain"} <= set(tenant)

    def test_wrong_audience_is_refused(self, seeded: Seeded):
        """A Key Vault token is refused at /subscriptions: ARM checks the audience."""
        vault_token = DefaultAzureCredential().get_token("https://vault.azure.net/.default")
        response = requests.get(
            f"{ARM}/subscriptions",
            params=API_SUBSCRIPTIONS,
            headers={"Authorization": f"Bearer {vault_token.token}"},
            timeout=10,
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"


class TestResourceGroups:
    def test_list_is_filtered_by_group_access(self, seeded: Seeded):
        """Reader on one group of B lists that group only; Reader on A lists all of A's."""
        names_b = [g["name"] for g in seeded.ok(f"/subscriptions/{SUB_B}/resourcegroups")["value"]]
        assert names_b == ["rg-dev"]
        names_a = [g["name"] for g in seeded.ok(f"/subscriptions/{SUB_A}/resourcegroups")["value"]]
        assert names_a == ["rg-ai", "rg-identities", "rg-keys"]

    def test_group_shape_and_head(self, seeded: Seeded):
        """GET a group answers the ResourceGroup shape; HEAD answers 204 or 404."""
        group = seeded.ok(f"/subscriptions/{SUB_A}/resourceGroups/rg-keys")
        assert group == {
            "id": f"/subscriptions/{SUB_A}/resourceGroups/rg-keys",
            "name": "rg-keys",
            "type": "Microsoft.Resources/resourceGroups",
            "location": "westeurope",
            "properties": {"provisioningState": "Succeeded"},
        }
        head = requests.head(
            f"{ARM}/subscriptions/{SUB_A}/resourcegroups/rg-keys",
            params=API_RESOURCES,
            headers={"Authorization": f"Bearer {seeded.token}"},
            timeout=10,
        )
        assert head.status_code == 204
        missing = seeded.get(f"/subscriptions/{SUB_A}/resourceGroups/rg-nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "ResourceGroupNotFound"

    def test_group_without_access_is_forbidden(self, seeded: Seeded):
        """A group of B the caller holds no role on: 403 AuthorizationFailed."""
        response = seeded.get(f"/subscriptions/{SUB_B}/resourceGroups/rg-dev-2")
        assert response.status_code == 403
        assert "resourceGroups/read" in response.json()["error"]["message"]


class TestGenericResources:
    def test_filter_by_resource_type(self, seeded: Seeded):
        """$filter=resourceType eq '...' returns only that type, with kind, sku, location."""
        body = seeded.ok(
            f"/subscriptions/{SUB_A}/resources",
            {**API_RESOURCES, "$filter": "resourceType eq 'Microsoft.CognitiveServices/accounts'"},
        )
        [account] = body["value"]
        assert account["id"].endswith(
            "/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/acct-a"
        )
        assert account["type"] == "Microsoft.CognitiveServices/accounts"
        assert (account["kind"], account["sku"], account["location"]) == (
            "AIServices",
            {"name": "S0"},
            "westeurope",
        )

    def test_unfiltered_list_has_every_readable_type(self, seeded: Seeded):
        """Vaults, accounts and the user-assigned identities accounts use, and nothing hidden."""
        types = sorted(r["type"] for r in seeded.ok(f"/subscriptions/{SUB_A}/resources")["value"])
        assert types == [
            "Microsoft.CognitiveServices/accounts",
            "Microsoft.KeyVault/vaults",
            "Microsoft.ManagedIdentity/userAssignedIdentities",
        ]
        names_b = [r["name"] for r in seeded.ok(f"/subscriptions/{SUB_B}/resources")["value"]]
        assert names_b == ["acct-b"]

    def test_group_scope_and_combined_filter(self, seeded: Seeded):
        """/resourceGroups/{rg}/resources and 'and'-joined clauses narrow the list."""
        in_group = seeded.ok(f"/subscriptions/{SUB_A}/resourceGroups/rg-keys/resources")
        assert [r["name"] for r in in_group["value"]] == ["kv-a"]
        both = seeded.ok(
            f"/subscriptions/{SUB_A}/resources",
            {
                **API_RESOURCES,
                "$filter": "resourceType eq 'Microsoft.KeyVault/vaults' and name eq 'nope'",
            },
        )
        assert both["value"] == []

    @pytest.mark.parametrize(
        "text",
        [
            "plan/publisher eq 'x'",  # documented by ARM; the sandbox has no plans
            "tagName eq 'env' and name eq 'acct-a'",  # a tag filter is alone
            "tagValue eq 'prod'",  # a value without its name
            "substringof('a', location)",  # substringof reads name and resourceGroup only
            "name eq acct-a",  # not a literal
            "name gt 'a'",
        ],
    )
    def test_unsupported_filter_is_bad_request(self, seeded: Seeded, text: str):
        """A $filter the sandbox cannot evaluate is 400, not a silently wrong list."""
        response = seeded.get(
            f"/subscriptions/{SUB_A}/resources", {**API_RESOURCES, "$filter": text}
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidFilterInQueryString"


class TestFilters:
    """Resources_List's $filter as resources.json describes it: eq/ne, substringof, and/or,
    and the tag filter az sends for --tag."""

    def names(self, seeded: Seeded, text: str, sub: str = SUB_A) -> list[str]:
        body = seeded.ok(f"/subscriptions/{sub}/resources", {**API_RESOURCES, "$filter": text})
        return [r["name"] for r in body["value"]]

    @pytest.fixture
    def tagged(self, seeded: Seeded) -> Seeded:
        world = seeded.sandbox.world
        with world.lock:
            seed_account(world, SUB_A, "rg-ai", "acct-prod", "westeurope", tags={"Env": "prod"})
            seed_account(world, SUB_A, "rg-ai", "acct-test", "westeurope", tags={"env": "test"})
            seed_account(world, SUB_A, "rg-ai", "acct-dept", "westeurope", tags={"department": "x"})
        return seeded

    def test_tag_name_and_value(self, tagged: Seeded):
        """tagname eq 'env' and tagvalue eq 'prod' (az resource list --tag env=prod): the
        tag's name matched in any case, its value exactly; tags left out of the answer."""
        body = tagged.ok(
            f"/subscriptions/{SUB_A}/resources",
            {**API_RESOURCES, "$filter": "tagname eq 'env' and tagvalue eq 'prod'"},
        )
        assert [r["name"] for r in body["value"]] == ["acct-prod"]
        assert "tags" not in body["value"][0]
        assert self.names(tagged, "tagName eq 'env' and tagValue eq 'PROD'") == []

    def test_tag_name_alone_and_prefix(self, tagged: Seeded):
        """tagName eq 'env' (az --tag env) and startswith(tagName, 'dep') (az --tag dep*)."""
        assert sorted(self.names(tagged, "tagName eq 'env'")) == ["acct-prod", "acct-test"]
        assert self.names(tagged, "startswith(tagname, 'dep')") == ["acct-dept"]

    def test_substringof_or_and_ne(self, tagged: Seeded):
        """substringof('v', name) joined by or, narrowed by resourceType and ne."""
        assert sorted(
            self.names(tagged, "substringof('prod', name) or substringof('kv', name)")
        ) == [
            "acct-prod",
            "kv-a",
        ]
        text = (
            "(substringof('acct', name) or substringof('keys', resourceGroup)) and "
            "resourceType ne 'Microsoft.KeyVault/vaults' and name ne 'ACCT-A'"
        )
        assert sorted(self.names(tagged, text)) == ["acct-dept", "acct-prod", "acct-test"]

    def test_group_list_tag_filter(self, tagged: Seeded):
        """ResourceGroups_List's tag filter (az group list --tag env=prod): the sandbox's
        groups carry no tags, so none matches; no filter lists them all."""
        params = {**API_RESOURCES, "$filter": "tagname eq 'env' and tagvalue eq 'prod'"}
        assert tagged.ok(f"/subscriptions/{SUB_A}/resourcegroups", params)["value"] == []
        assert tagged.ok(f"/subscriptions/{SUB_A}/resourcegroups")["value"]

    def test_group_list_refuses_other_filters(self, tagged: Seeded):
        """Only tags filter groups: name eq '...' is 400, not ignored."""
        response = tagged.get(
            f"/subscriptions/{SUB_A}/resourcegroups",
            {**API_RESOURCES, "$filter": "name eq 'rg-ai'"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidFilterInQueryString"


class TestRepeatedSlashes:
    """ARM routes a path with runs of slashes as the single-slash path."""

    def test_empty_parent_resource_path(self, seeded: Seeded):
        """az resource show -g -n --resource-type: Resources_Get with an empty
        {parentResourcePath} (not URL-encoded) asks for '.../Microsoft.CognitiveServices//
        accounts/{name}': the account."""
        path = (
            f"/subscriptions/{SUB_A}/resourceGroups/rg-ai/providers/"
            "Microsoft.CognitiveServices//accounts/acct-a"
        )
        body = seeded.ok(path, {"api-version": "2025-09-01"})
        assert body["name"] == "acct-a"
        assert body["type"] == "Microsoft.CognitiveServices/accounts"

    def test_leading_double_slash_of_get_by_id(self, seeded: Seeded):
        """The JavaScript SDK's resources.getById sends '//subscriptions/...'."""
        body = seeded.ok(f"//subscriptions/{SUB_A}/resourceGroups//rg-keys", API_RESOURCES)
        assert body["name"] == "rg-keys"


class TestApiVersions:
    """Microsoft.Resources routes check their own api-versions (the spec's folders)."""

    @pytest.mark.parametrize(
        ("path", "version"),
        [
            ("/subscriptions", "2022-12-01"),  # az CLI, Python and Node SubscriptionClient
            ("/tenants", "2022-12-01"),
            (f"/subscriptions/{SUB_A}", "2020-01-01"),
            (f"/subscriptions/{SUB_A}/resourcegroups", "2024-11-01"),  # az CLI
            (f"/subscriptions/{SUB_A}/resources", "2025-03-01"),  # azure-mgmt-resource
            (f"/subscriptions/{SUB_A}/resourceGroups/rg-keys", "2021-04-01"),
        ],
    )
    def test_the_versions_clients_use_are_accepted(self, seeded: Seeded, path: str, version: str):
        response = seeded.get(path, {"api-version": version})
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        "path", ["/subscriptions", "/tenants", f"/subscriptions/{SUB_A}/resources"]
    )
    def test_an_unknown_version_names_the_supported_ones(self, seeded: Seeded, path: str):
        """2099-01-01: 400 InvalidApiVersionParameter listing Microsoft.Resources' versions
        newest first, not another provider's."""
        response = seeded.get(path, {"api-version": "2099-01-01"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "InvalidApiVersionParameter"
        listed = error["message"].split("supported versions are '")[1].rstrip("'.").split(",")
        assert listed == sorted(listed, reverse=True)
        assert {"2025-04-01", "2024-11-01", "2022-12-01", "2021-04-01"} <= set(listed)
        assert "2025-09-01" not in listed  # a Cognitive Services version

    def test_malformed_version_is_the_same_error(self, seeded: Seeded):
        """A version that is not a date at all gets the same answer."""
        response = seeded.get("/subscriptions", {"api-version": "latest"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidApiVersionParameter"


class TestResourceListAsAzAsksForIt:
    """``az resource list`` sends an empty $filter and $expand=createdTime,changedTime,
    provisioningState (api-version 2024-11-01)."""

    AZ_PARAMS = {
        "$filter": "",
        "$expand": "createdTime,changedTime,provisioningState",
        "api-version": "2024-11-01",
    }

    def test_blank_filter_is_no_filter(self, seeded: Seeded):
        """An empty $filter lists what no $filter lists, instead of a 400."""
        path = f"/subscriptions/{SUB_A}/resources"
        listed = seeded.ok(path, self.AZ_PARAMS)["value"]
        assert [r["id"] for r in listed] == [r["id"] for r in seeded.ok(path)["value"]]
        blank = seeded.ok(path, {**API_RESOURCES, "$filter": "  "})["value"]
        assert len(blank) == len(listed) == 3

    def test_expand_adds_the_generic_resource_expanded_fields(self, seeded: Seeded):
        """Accounts gain createdTime/changedTime/provisioningState; others the state."""
        listed = seeded.ok(f"/subscriptions/{SUB_A}/resources", self.AZ_PARAMS)["value"]
        by_type = {r["type"]: r for r in listed}
        account = by_type["Microsoft.CognitiveServices/accounts"]
        assert account["provisioningState"] == "Succeeded"
        assert account["createdTime"].endswith("Z")
        assert account["changedTime"] >= account["createdTime"]
        vault = by_type["Microsoft.KeyVault/vaults"]
        assert vault["provisioningState"] == "Succeeded"
        assert "createdTime" not in vault
        plain = seeded.ok(f"/subscriptions/{SUB_A}/resources")["value"]
        assert not any("provisioningState" in r for r in plain)

    def test_only_the_asked_fields_are_expanded(self, seeded: Seeded):
        """$expand=provisioningState adds that field alone; unknown terms are ignored."""
        listed = seeded.ok(
            f"/subscriptions/{SUB_A}/resources",
            {**API_RESOURCES, "$expand": "ProvisioningState,somethingElse"},
        )["value"]
        assert all(r["provisioningState"] == "Succeeded" for r in listed)
        assert not any("createdTime" in r or "changedTime" in r for r in listed)


class TestOneInventory:
    """ARM's generic list and Resource Graph's Resources table show the same resources."""

    def test_accounts_carry_their_identity(self, seeded: Seeded):
        """An account in the generic list has the identity its GET shows."""
        body = seeded.ok(
            f"/subscriptions/{SUB_A}/resources",
            {**API_RESOURCES, "$filter": "resourceType eq 'Microsoft.CognitiveServices/accounts'"},
        )
        [account] = body["value"]
        shown = seeded.ok(account["id"], {"api-version": "2025-09-01"})
        assert account["identity"] == shown["identity"]
        assert MI_ID in account["identity"]["userAssignedIdentities"]

    def test_a_group_holding_only_a_topic_is_listed(self, seeded: Seeded):
        """An Event Grid custom topic is a resource; its group is a resource group."""
        topic = seeded.sandbox.eventgrid.create_topic(
            "alerts-a", region="northeurope", subscription_id=SUB_A, resource_group="rg-alerts"
        )
        groups = seeded.ok(f"/subscriptions/{SUB_A}/resourcegroups")["value"]
        assert {"name": "rg-alerts", "location": "northeurope"}.items() <= {
            g["name"]: g for g in groups
        }["rg-alerts"].items()
        [listed] = seeded.ok(f"/subscriptions/{SUB_A}/resourceGroups/rg-alerts/resources")["value"]
        assert (listed["id"], listed["type"]) == (topic.resource_id, "Microsoft.EventGrid/topics")

    def test_resource_graph_and_arm_list_the_same_types(self, seeded: Seeded):
        """Resources | distinct type equals the generic list's types (lowercased)."""
        seeded.sandbox.eventgrid.create_topic("alerts-b", subscription_id=SUB_A)
        arm = {r["type"].lower() for r in seeded.ok(f"/subscriptions/{SUB_A}/resources")["value"]}
        response = requests.post(
            f"{ARM}/providers/Microsoft.ResourceGraph/resources",
            params={"api-version": "2021-03-01"},
            json={"subscriptions": [SUB_A], "query": "Resources | distinct type"},
            headers={"Authorization": f"Bearer {seeded.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        graph = {row["type"] for row in response.json()["data"]}
        assert graph == arm
        assert "microsoft.managedidentity/userassignedidentities" in graph
        assert "microsoft.eventgrid/topics" in graph

    def graph(self, seeded: Seeded, query: str) -> list[dict[str, Any]]:
        response = requests.post(
            f"{ARM}/providers/Microsoft.ResourceGraph/resources",
            params={"api-version": "2021-03-01"},
            json={"subscriptions": [SUB_A], "query": query},
            headers={"Authorization": f"Bearer {seeded.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["data"]
        return rows

    @pytest.mark.parametrize("sku", ["standard", "premium"])
    def test_vault_sku_is_the_same_in_arm_and_resource_graph(self, seeded: Seeded, sku: str):
        """A vault's properties.sku comes from the world: az keyvault show and Resource
        Graph say the same; a Managed HSM's top-level sku too."""
        world = seeded.sandbox.world
        with world.lock:
            world.vaults["kv-a.vault.azure.net"].sku = sku
            hsm = VaultState(
                "hsm-a", VaultKind.MANAGED_HSM, SUB_A, "rg-keys", "westeurope", world.tenant_id,
                dns_suffix="managedhsm.azure.net",
            )  # fmt: skip
            world.vaults[hsm.host] = hsm
        base = f"/subscriptions/{SUB_A}/resourceGroups/rg-keys/providers/Microsoft.KeyVault"
        vault = seeded.ok(f"{base}/vaults/kv-a", {"api-version": "2023-07-01"})
        hsm_arm = seeded.ok(f"{base}/managedHSMs/hsm-a", {"api-version": "2023-07-01"})
        rows = {
            row["name"]: row
            for row in self.graph(seeded, "Resources | where type startswith 'microsoft.keyvault'")
        }
        assert vault["properties"]["sku"] == {"family": "A", "name": sku}
        assert rows["kv-a"]["properties"]["sku"] == vault["properties"]["sku"]
        assert rows["hsm-a"]["sku"] == hsm_arm["sku"] == {"family": "B", "name": "Standard_B1"}


class TestIdentityAndTopicGet:
    """UserAssignedIdentities_Get and Topics_Get: what the generic list lists can be read."""

    def test_user_assigned_identity(self, seeded: Seeded):
        """The spec's Identity: properties tenantId, principalId, clientId, as listed."""
        body = seeded.ok(MI_ID, {"api-version": "2023-01-31"})
        listed = seeded.ok(
            f"/subscriptions/{SUB_A}/resources",
            {**API_RESOURCES, "$filter": "resourceType eq "
             "'Microsoft.ManagedIdentity/userAssignedIdentities'"},
        )["value"]  # fmt: skip
        assert [r["id"] for r in listed] == [body["id"]] == [MI_ID]
        assert body["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
        assert set(body["properties"]) == {"tenantId", "principalId", "clientId"}
        accounts = seeded.sandbox.world.accounts.values()
        principals = {
            u.principal.client_id for a in accounts for u in a.identity.user_assigned.values()
        }
        assert body["properties"]["clientId"] in principals

    def test_event_grid_topic(self, seeded: Seeded):
        """The spec's Topic: sku Basic, kind Azure, endpoint and provisioningState."""
        topic = seeded.sandbox.eventgrid.create_topic("alerts-a", subscription_id=SUB_A)
        body = seeded.ok(topic.resource_id, {"api-version": "2025-02-15"})
        assert (body["id"], body["type"]) == (topic.resource_id, "Microsoft.EventGrid/topics")
        assert body["sku"] == {"name": "Basic"} and body["kind"] == "Azure"
        assert body["properties"]["endpoint"] == topic.endpoint
        assert body["properties"]["provisioningState"] == "Succeeded"

    def test_unknown_name_is_resource_not_found(self, seeded: Seeded):
        """404 ResourceNotFound with ARM's message, not InvalidResourceType."""
        missing = MI_ID.rsplit("/", 1)[0] + "/nope"
        response = seeded.get(missing, {"api-version": "2023-01-31"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "ResourceNotFound"

    def test_without_read_access_is_forbidden(self, seeded: Seeded):
        """A caller without {type}/read on the resource gets 403 first."""
        topic = seeded.sandbox.eventgrid.create_topic("alerts-hidden", subscription_id=SUB_HIDDEN)
        response = seeded.get(topic.resource_id, {"api-version": "2025-02-15"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "AuthorizationFailed"


class TestResourceManagementSdk:
    def test_sdk_lists_subscriptions_groups_and_resources(self, seeded: Seeded):
        """SubscriptionClient and ResourceManagementClient work unmodified against ARM."""
        resource = pytest.importorskip("azure.mgmt.resource")
        credential = DefaultAzureCredential()
        subscriptions = resource.SubscriptionClient(credential)
        listed = sorted(str(s.subscription_id) for s in subscriptions.subscriptions.list())
        assert listed == sorted([SUB_A, SUB_B])
        assert [t.tenant_id for t in subscriptions.tenants.list()] == [seeded.sandbox.tenant_id]
        client = resource.ResourceManagementClient(credential, SUB_A)
        assert client.resource_groups.check_existence("rg-ai") is True
        assert client.resource_groups.check_existence("rg-nope") is False
        found = client.resources.list(filter="resourceType eq 'Microsoft.KeyVault/vaults'")
        assert [r.name for r in found] == ["kv-a"]


class TestProvidersAndLocations:
    """What `az resource show --ids`, `az provider show` and `az account list-locations`
    read first: Providers_Get / Providers_List (resources.json) and
    Subscriptions_ListLocations (subscriptions.json)."""

    def test_provider_lists_the_account_type_and_its_versions(self, seeded: Seeded):
        """The namespace (any case asked, canonical case answered) is Registered, with the
        accounts type, its API versions newest first and the regions by display name."""
        path = f"/subscriptions/{SUB_A}/providers/microsoft.cognitiveservices"
        provider = seeded.ok(path, {"api-version": "2024-11-01"})
        assert provider["id"] == f"/subscriptions/{SUB_A}/providers/Microsoft.CognitiveServices"
        assert provider["namespace"] == "Microsoft.CognitiveServices"
        assert provider["registrationState"] == "Registered"
        types = {t["resourceType"]: t for t in provider["resourceTypes"]}
        accounts = types["accounts"]
        assert accounts["apiVersions"][0] == "2025-09-01"
        assert accounts["apiVersions"] == sorted(accounts["apiVersions"], reverse=True)
        assert {"West Europe", "East US"} <= set(accounts["locations"])

    def test_the_newest_version_listed_reads_the_account(self, seeded: Seeded):
        """As `az resource show --ids` does: the newest stable version of the type, then GET
        the id with it."""
        provider = seeded.ok(
            f"/subscriptions/{SUB_A}/providers/Microsoft.CognitiveServices",
            {"api-version": "2024-11-01"},
        )
        [accounts] = [t for t in provider["resourceTypes"] if t["resourceType"] == "accounts"]
        version = next(v for v in accounts["apiVersions"] if "preview" not in v)
        account_id = (
            f"/subscriptions/{SUB_A}/resourceGroups/rg-ai/providers"
            "/Microsoft.CognitiveServices/accounts/acct-a"
        )
        assert seeded.ok(account_id, {"api-version": version})["name"] == "acct-a"

    def test_list_has_every_emulated_namespace(self, seeded: Seeded):
        """Providers_List: the namespaces of every type the sandbox serves."""
        listed = seeded.ok(f"/subscriptions/{SUB_A}/providers", {"api-version": "2024-11-01"})
        names = [p["namespace"] for p in listed["value"]]
        assert set(names) == {
            "Microsoft.Authorization", "Microsoft.CognitiveServices", "Microsoft.EventGrid",
            "Microsoft.KeyVault", "Microsoft.ManagedIdentity", "Microsoft.ResourceGraph",
            "Microsoft.Resources",
        }  # fmt: skip
        assert names == sorted(names, key=str.lower)
        assert {p["registrationState"] for p in listed["value"]} == {"Registered"}

    def test_a_namespace_not_emulated_is_invalid(self, seeded: Seeded):
        """Microsoft.Compute is not emulated: 404 InvalidResourceNamespace."""
        path = f"/subscriptions/{SUB_A}/providers/Microsoft.Compute"
        response = seeded.get(path, {"api-version": "2024-11-01"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "InvalidResourceNamespace"

    def test_locations_have_the_spec_fields(self, seeded: Seeded):
        """West Europe with its regional display name, geography and paired region."""
        listed = seeded.ok(f"/subscriptions/{SUB_A}/locations", API_SUBSCRIPTIONS)["value"]
        by_name = {loc["name"]: loc for loc in listed}
        weu = by_name["westeurope"]
        assert weu["id"] == f"/subscriptions/{SUB_A}/locations/westeurope"
        assert weu["type"] == "Region"
        assert weu["displayName"] == "West Europe"
        assert weu["regionalDisplayName"] == "(Europe) West Europe"
        assert weu["metadata"]["pairedRegion"] == [
            {"name": "northeurope", "id": f"/subscriptions/{SUB_A}/locations/northeurope"}
        ]
        assert {"eastus", "westeurope", "northeurope"} <= set(by_name)

    @pytest.mark.parametrize("tail", ["providers", "providers/Microsoft.KeyVault", "locations"])
    def test_filtered_by_access_as_the_subscription_is(self, seeded: Seeded, tail: str):
        """Whoever sees a subscription (Reader on one of its groups is enough) reads these;
        a subscription without any assignment is 403 AuthorizationFailed."""
        version = {"api-version": "2022-12-01"}
        assert seeded.get(f"/subscriptions/{SUB_B}/{tail}", version).status_code == 200
        hidden = seeded.get(f"/subscriptions/{SUB_HIDDEN}/{tail}", version)
        assert hidden.status_code == 403, hidden.text
        assert hidden.json()["error"]["code"] == "AuthorizationFailed"

    def test_an_unknown_version_is_refused_as_on_the_other_routes(self, seeded: Seeded):
        """The routes check the Microsoft.Resources api-versions."""
        response = seeded.get(f"/subscriptions/{SUB_A}/locations", {"api-version": "2099-01-01"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidApiVersionParameter"

    def test_sdk_reads_providers_and_locations(self, seeded: Seeded):
        """ResourceManagementClient.providers and SubscriptionClient.list_locations work
        unmodified (their own api-versions)."""
        resource = pytest.importorskip("azure.mgmt.resource")
        credential = DefaultAzureCredential()
        client = resource.ResourceManagementClient(credential, SUB_A)
        provider = client.providers.get("Microsoft.KeyVault")
        assert provider.registration_state == "Registered"
        assert {t.resource_type for t in provider.resource_types} == {"vaults", "managedHSMs"}
        assert "Microsoft.CognitiveServices" in {p.namespace for p in client.providers.list()}
        subscriptions = resource.SubscriptionClient(credential)
        locations = {loc.name: loc for loc in subscriptions.subscriptions.list_locations(SUB_A)}
        assert locations["northeurope"].display_name == "North Europe"
        assert locations["northeurope"].metadata.paired_region[0].name == "westeurope"


DATA = Path(__file__).parent / "data" / "arm"
#: Fields the spec's examples show that the sandbox leaves out: a subscription's tags (the
#: world has none), a tenant's branding logo (optional in the spec), and nextLink where
#: every item fits one page (ARM omits it then; the examples show a placeholder).
NOT_SERVED = frozenset({"tags", "tenantBrandingLogoUrl", "nextLink"})


#: Optional fields of the Provider and Location examples the sandbox does not serve (it does
#: not know them for Azure's live catalogue): a type's edge-zone ``locationMappings``,
#: ``capabilities`` and ``aliases``; a region's coordinates and availability-zone mappings.
PROVIDER_AND_REGION_EXTRAS = frozenset(
    {"locationMappings", "capabilities", "aliases", "longitude", "latitude",
     "availabilityZoneMappings"}
)  # fmt: skip


#: Read-only fields the spec's definition declares and its example does not show (the
#: ResourceGroup definition of resources.json 2022-12-01: ``type``).
DECLARED_NOT_SHOWN = {"CreateResourceGroup.json": {"type": "Microsoft.Resources/resourceGroups"}}


def _example(name: str, status: str = "200") -> Any:
    document = json.loads((DATA / name).read_text())
    assert "https://github.com/Azure/azure-rest-api-specs/blob/" in document["_source"]
    return document["responses"][status]["body"]


def _shape(value: Any) -> Any:
    """The JSON structure of ``value``: keys and types, lists by their first item."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _assert_like(
    served: Any, example: Any, where: str = "$", not_served: frozenset[str] = NOT_SERVED
) -> None:
    """``served`` has the example's structure: every key of one is a key of the other
    (but ``not_served``), with the same JSON type; an empty list matches any list."""
    if isinstance(example, dict):
        assert isinstance(served, dict), f"{where}: {served!r} is not an object"
        assert set(served) <= set(example), (
            f"{where}: not in the spec: {set(served) - set(example)}"
        )
        missing = set(example) - set(served) - not_served
        assert not missing, f"{where}: missing {missing}"
        for key in served:
            _assert_like(served[key], example[key], f"{where}.{key}", not_served)
    elif isinstance(example, list):
        assert isinstance(served, list), f"{where}: {served!r} is not a list"
        if served and example:
            _assert_like(served[0], example[0], f"{where}[0]", not_served)
    else:
        assert _shape(served) == _shape(example), f"{where}: {served!r} vs {example!r}"


class TestLikeTheSpecExamples:
    """Answers with the structure of the 2022-12-01 examples of Microsoft.Resources, kept
    under tests/sandbox/data/arm with their source."""

    @pytest.mark.parametrize(
        ("example", "path"),
        [
            ("GetSubscriptions.json", "/subscriptions"),
            ("GetSubscription.json", f"/subscriptions/{SUB_A}"),
            ("GetTenants.json", "/tenants"),
            ("CreateResourceGroup.json", f"/subscriptions/{SUB_A}/resourceGroups/rg-keys"),
        ],
    )
    def test_answer_has_the_example_structure(self, seeded: Seeded, example: str, path: str):
        expected = {**_example(example), **DECLARED_NOT_SHOWN.get(example, {})}
        _assert_like(seeded.ok(path, API_SUBSCRIPTIONS), expected)

    @pytest.mark.parametrize(
        ("example", "path", "version"),
        [
            ("GetProviders.json", f"/subscriptions/{SUB_A}/providers", "2024-11-01"),
            ("GetLocations.json", f"/subscriptions/{SUB_A}/locations", "2022-12-01"),
        ],
    )
    def test_providers_and_locations_have_the_example_structure(
        self, seeded: Seeded, example: str, path: str, version: str
    ):
        """Providers_List and Subscriptions_ListLocations against the 2024-11-01 and
        2022-12-01 examples, less what the sandbox leaves out (PROVIDER_AND_REGION_EXTRAS)."""
        served = seeded.ok(path, {"api-version": version})
        _assert_like(served, _example(example), not_served=NOT_SERVED | PROVIDER_AND_REGION_EXTRAS)

    def test_the_comparison_catches_a_misspelt_field(self) -> None:
        body = _example("GetSubscription.json")
        wrong = {**body, "subscriptionID": body["subscriptionId"]}
        del wrong["subscriptionId"]
        with pytest.raises(AssertionError, match="not in the spec"):
            _assert_like(wrong, body)
