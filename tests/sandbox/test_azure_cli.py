"""The unmodified ``az`` CLI against ``cmk sandbox up``: a client nobody here wrote.

``make az-cli-check`` installs the latest ``azure-cli`` from PyPI into ``.venv-azcli`` and
runs this module with ``CMK_AZ_CLI`` naming its ``az``; without that variable every test
is skipped (installing the CLI takes minutes, so ``make test`` does not). The CLI sees
only the variables of the env file ``cmk sandbox up --env-file`` writes (its
``AZURE_CONFIG_DIR`` in the sandbox's state directory included), exactly as a user who
sourced it (the ``sandbox_up`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_sandbox import SandboxUp, running_sandbox_up, sandbox_up  # noqa: F401 (the fixture)

from cmk.sandbox.scenario.loader import example_path

AZ = os.environ.get("CMK_AZ_CLI", "")
pytestmark = pytest.mark.skipif(
    not AZ or not Path(AZ).exists(), reason="set CMK_AZ_CLI to an az binary (make az-cli-check)"
)

AZ_CEILING_SECONDS = 180.0
VAULT, KEY = "kv-cmk-weu", "ai-cmk"
GROUP, ACCOUNT = "rg-ai-weu", "ai-prod-weu-01"
GRAPH = "https://management.azure.com/providers/Microsoft.ResourceGraph/resources"


@dataclass
class Cli:
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AZ, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=AZ_CEILING_SECONDS,
            check=False,
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--output", "json")
        assert result.returncode == 0, f"az {' '.join(args)}\n{result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture(scope="module")
def az(sandbox_up: SandboxUp) -> Cli:  # noqa: F811 (the imported fixture)
    """``az`` logged in with the sandbox's managed identity, its profile kept private."""
    assert sandbox_up.env["AZURE_CONFIG_DIR"].startswith(str(sandbox_up.root))
    cli = Cli({**sandbox_up.env, "AZURE_CORE_COLLECT_TELEMETRY": "no"})
    login = cli.run("login", "--identity", "--output", "json")
    assert login.returncode == 0, login.stderr
    return cli


class TestAccount:
    def test_login_lists_the_subscriptions_the_identity_can_see(self, az: Cli):
        """az account list: the example world's three subscriptions, one tenant."""
        accounts = az.json("account", "list")
        assert sorted(a["name"] for a in accounts) == ["ai-dev", "ai-prod", "platform"]
        assert len({a["tenantId"] for a in accounts}) == 1
        assert {a["user"]["type"] for a in accounts} == {"servicePrincipal"}

    def test_access_token_is_a_jwt_for_arm(self, az: Cli):
        """az account get-access-token hands out the sandbox's RS256 JWT."""
        token = az.json("account", "get-access-token")
        assert token["accessToken"].count(".") == 2
        assert token["tenant"] == az.json("account", "show")["tenantId"]


class TestLogin:
    def test_user_and_device_code_logins_say_only_managed_identity_signs_in(
        self,
        sandbox_up: SandboxUp,  # noqa: F811 (the imported fixture)
    ):
        """Plain az login (no browser here, so a device code) and az login --use-device-code
        exit non-zero with the sandbox's message and refusal, not a traceback; so does az
        login --service-principal. The config dir is a fresh one, logged in to nothing."""
        config = sandbox_up.root / "az-user"
        env = {**sandbox_up.env, "AZURE_CONFIG_DIR": str(config)}
        cli = Cli({**env, "AZURE_CORE_COLLECT_TELEMETRY": "no"})
        for args in (
            ("login",),
            ("login", "--use-device-code"),
            ("login", "--service-principal", "-u", "x", "-p", "y", "--tenant", "contoso.com"),
        ):
            result = cli.run(*args)
            assert result.returncode != 0, args
            assert "issues tokens only through managed identity" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
            if "--service-principal" not in args:
                assert "Sign in with `az login --identity`" in result.stderr


class TestResources:
    def test_group_list_shows_the_group_holding_only_a_topic(self, az: Cli):
        """az group list: the platform subscription's key group and alert-topic group."""
        groups = az.json("group", "list", "--subscription", "platform")
        assert {"rg-keys", "rg-cmk"} <= {g["name"] for g in groups}
        assert all(g["properties"]["provisioningState"] == "Succeeded" for g in groups)

    def test_plain_resource_list(self, az: Cli):
        """az resource list (empty $filter, $expand of the times and state) lists vaults,
        the HSM and the alert topic, each with its provisioningState."""
        listed = az.json("resource", "list", "--subscription", "platform")
        by_name = {r["name"]: r for r in listed}
        assert by_name[VAULT]["type"] == "Microsoft.KeyVault/vaults"
        assert by_name["cmk-alerts"]["type"] == "Microsoft.EventGrid/topics"
        assert {r["provisioningState"] for r in listed} == {"Succeeded"}

    def test_resource_list_of_accounts_has_their_times_and_identity(self, az: Cli):
        """az resource list --resource-type: accounts with createdTime and identity."""
        listed = az.json(
            "resource", "list", "--subscription", "ai-prod", "-g", GROUP,
            "--resource-type", "Microsoft.CognitiveServices/accounts",
        )  # fmt: skip
        account = {r["name"]: r for r in listed}[ACCOUNT]
        assert account["createdTime"] and account["changedTime"]
        assert account["identity"]["type"] in ("UserAssigned", "SystemAssigned, UserAssigned")

    def test_tag_filters(self, az: Cli):
        """az resource list --tag k=v and az group list --tag k=v send ARM's tag $filter: the
        account tagged by a PATCH (cognitiveservices account update --tags) and nothing
        else; the sandbox's groups carry no tags."""
        listed = az.json(
            "resource", "list", "--subscription", "ai-prod", "-g", GROUP,
            "--resource-type", "Microsoft.CognitiveServices/accounts",
        )  # fmt: skip
        name = sorted(r["name"] for r in listed if r["name"] != ACCOUNT)[0]
        az.json(
            "cognitiveservices", "account", "update", "--subscription", "ai-prod", "-g", GROUP,
            "-n", name, "--tags", "cmk-check=tagged",
        )  # fmt: skip
        tagged = az.json(
            "resource", "list", "--subscription", "ai-prod", "--tag", "cmk-check=tagged"
        )
        assert [r["name"] for r in tagged] == [name]
        assert (
            az.json("resource", "list", "--subscription", "ai-prod", "--tag", "cmk-check=x") == []
        )
        assert (
            az.json("group", "list", "--subscription", "ai-prod", "--tag", "cmk-check=tagged") == []
        )


class TestProvidersAndLocations:
    def test_resource_show_by_id(self, az: Cli):
        """az resource show --ids: the CLI reads the provider for the type's newest API
        version (GET /subscriptions/{s}/providers/Microsoft.CognitiveServices), then the
        account."""
        listed = az.json(
            "resource", "list", "--subscription", "ai-prod", "-g", GROUP,
            "--resource-type", "Microsoft.CognitiveServices/accounts",
        )  # fmt: skip
        account_id = {r["name"]: r for r in listed}[ACCOUNT]["id"]
        shown = az.json("resource", "show", "--ids", account_id)
        assert shown["id"] == account_id
        assert shown["properties"]["encryption"]["keySource"] == "Microsoft.KeyVault"

    def test_resource_show_by_group_name_and_type(self, az: Cli):
        """az resource show -g -n --resource-type: the empty parent path makes the CLI ask
        for '.../Microsoft.CognitiveServices//accounts/{name}', which ARM answers."""
        shown = az.json(
            "resource", "show", "--subscription", "ai-prod", "-g", GROUP, "-n", ACCOUNT,
            "--resource-type", "Microsoft.CognitiveServices/accounts",
        )  # fmt: skip
        assert shown["name"] == ACCOUNT
        assert shown["properties"]["encryption"]["keySource"] == "Microsoft.KeyVault"

    def test_identity_and_topic_show(self, az: Cli):
        """az identity show -n -g and az resource show --ids read a user-assigned identity
        and the alert topic that az resource list lists."""
        listed = az.json("resource", "list", "--subscription", "platform")
        ids = {r["type"]: r["id"] for r in listed}
        identity_id = ids["Microsoft.ManagedIdentity/userAssignedIdentities"]
        group, name = identity_id.split("/")[4], identity_id.rsplit("/", 1)[1]
        identity = az.json(
            "identity", "show", "--subscription", "platform", "-g", group, "-n", name
        )
        assert identity["id"] == identity_id and identity["clientId"] and identity["principalId"]
        assert az.json("resource", "show", "--ids", identity_id)["name"] == name
        topic = az.json("resource", "show", "--ids", ids["Microsoft.EventGrid/topics"])
        assert topic["properties"]["endpoint"].endswith(".eventgrid.azure.net/api/events")

    def test_provider_show(self, az: Cli):
        """az provider show -n Microsoft.CognitiveServices: Registered, with accounts."""
        provider = az.json(
            "provider", "show", "-n", "Microsoft.CognitiveServices", "--subscription", "ai-prod"
        )
        assert provider["registrationState"] == "Registered"
        assert "accounts" in {t["resourceType"] for t in provider["resourceTypes"]}

    def test_account_list_locations(self, az: Cli):
        """az account list-locations (of the current subscription): the regions with their
        display names."""
        locations = az.json("account", "list-locations")
        by_name = {loc["name"]: loc for loc in locations}
        assert by_name["westeurope"]["displayName"] == "West Europe"
        assert by_name["westeurope"]["regionalDisplayName"] == "(Europe) West Europe"

    def test_role_assignment_list_without_graph(self, az: Cli):
        """az role assignment list with principal and role-name filling off: the identity's
        assignments on the subscription, with no Graph or role-definition call."""
        subscription = az.json("account", "show", "--subscription", "ai-prod")["id"]
        assignments = az.json(
            "role", "assignment", "list", "--scope", f"/subscriptions/{subscription}",
            "--fill-principal-name", "false", "--fill-role-definition-name", "false",
        )  # fmt: skip
        assert assignments
        assert {a["scope"] for a in assignments} == {f"/subscriptions/{subscription}"}

    def test_role_assignment_list_by_assignee_with_names(self, az: Cli):
        """az role assignment list --assignee <guid> --scope <vault> with the default fills:
        Graph answers 403 (no Graph permission), the CLI takes the GUID as an object id,
        and the role names come from the role-definition list."""
        vault = az.json("keyvault", "show", "-n", VAULT, "--subscription", "platform")["id"]
        listed = az.json(
            "role", "assignment", "list", "--scope", vault,
            "--fill-principal-name", "false", "--fill-role-definition-name", "false",
        )  # fmt: skip
        principal = listed[0]["principalId"]
        result = az.run("role", "assignment", "list", "--assignee", principal, "--scope", vault)
        assert result.returncode == 0, result.stderr
        assert "Assuming " + principal + " as an object ID" in result.stderr
        assignments = json.loads(result.stdout)
        assert assignments and {a["principalId"] for a in assignments} == {principal}
        assert all(a["roleDefinitionName"] for a in assignments)

    def test_real_types_the_sandbox_does_not_serve_say_so(self, az: Cli):
        """az identity list and az eventgrid system-topic list exit non-zero with the
        sandbox's 501 NotImplemented ("does not emulate"), never a 404 InvalidResourceType
        that would claim Azure has no such type."""
        for args in (("identity", "list"), ("eventgrid", "system-topic", "list")):
            result = az.run(*args, "--subscription", "platform")
            assert result.returncode != 0, args
            assert "The sandbox does not emulate" in result.stderr, result.stderr
            assert "InvalidResourceType" not in result.stderr

    def test_lists_in_a_missing_group_are_resource_group_not_found(self, az: Cli):
        """az cognitiveservices account list -g nosuch and az keyvault list -g nosuch
        --resource-type vault exit non-zero with ARM's ResourceGroupNotFound, as az resource
        list -g nosuch does. (Plain az keyvault list swallows any error of its vault and HSM
        lists and prints [], against Azure too: azure-cli's list_vault_or_hsm.)"""
        for args in (
            ("cognitiveservices", "account", "list", "--subscription", "ai-prod"),
            ("keyvault", "list", "--subscription", "platform", "--resource-type", "vault"),
            ("resource", "list", "--subscription", "platform"),
        ):
            result = az.run(*args, "-g", "nosuch")
            assert result.returncode != 0, args
            assert "Resource group 'nosuch' could not be found" in result.stderr, result.stderr

    def test_role_definition_list_by_name(self, az: Cli):
        """az role definition list --name: the built-in role with its real GUID."""
        roles = az.json("role", "definition", "list", "--name", "Key Vault Crypto User")
        assert [r["name"] for r in roles] == ["12338af0-0e69-4776-bea7-57ae8d297424"]
        assert roles[0]["roleType"] == "BuiltInRole"


class TestKeyVault:
    def test_list_versions_show_and_rotate(self, az: Cli):
        """key list-versions / show / rotate: rotate adds the version show then returns."""
        before = az.json("keyvault", "key", "list-versions", "--vault-name", VAULT, "-n", KEY)
        rotated = az.json("keyvault", "key", "rotate", "--vault-name", VAULT, "-n", KEY)
        current = az.json("keyvault", "key", "show", "--vault-name", VAULT, "-n", KEY)
        after = az.json("keyvault", "key", "list-versions", "--vault-name", VAULT, "-n", KEY)
        assert current["key"]["kid"] == rotated["key"]["kid"]
        assert len(after) == len(before) + 1
        assert rotated["key"]["kid"] in {v["kid"] for v in after}


class TestCognitiveServices:
    def test_list_show_and_update_encryption(self, az: Cli):
        """account list/show, then update --encryption to the newest version, seen by show."""
        az.json("account", "set", "--subscription", "ai-prod")
        names = {a["name"] for a in az.json("cognitiveservices", "account", "list")}
        assert ACCOUNT in names
        shown = az.json("cognitiveservices", "account", "show", "-g", GROUP, "-n", ACCOUNT)
        binding = shown["properties"]["encryption"]["keyVaultProperties"]
        newest = az.json("keyvault", "key", "show", "--vault-name", VAULT, "-n", KEY)
        version = newest["key"]["kid"].rsplit("/", 1)[1]
        encryption = {
            "keySource": "Microsoft.KeyVault",
            "keyVaultProperties": {**binding, "keyVersion": version},
        }
        updated = az.json(
            "cognitiveservices", "account", "update", "-g", GROUP, "-n", ACCOUNT,
            "--encryption", json.dumps(encryption),
        )  # fmt: skip
        assert updated["properties"]["provisioningState"] == "Succeeded"
        again = az.json("cognitiveservices", "account", "show", "-g", GROUP, "-n", ACCOUNT)
        assert again["properties"]["encryption"]["keyVaultProperties"]["keyVersion"] == version


class TestResourceGraph:
    def test_az_rest_summarize(self, az: Cli):
        """az rest to Resource Graph with summarize count() by a binding's key name."""
        query = (
            "Resources | where type =~ 'microsoft.cognitiveservices/accounts' "
            "| summarize accounts = count() by keyName = "
            "tostring(properties.encryption.keyVaultProperties.keyName) | order by keyName asc"
        )
        body = az.json(
            "rest", "--method", "post", "--url", f"{GRAPH}?api-version=2021-03-01",
            "--body", json.dumps({"query": query}),
        )  # fmt: skip
        rows = {row["keyName"]: row["accounts"] for row in body["data"]}
        assert set(rows) - {""} == {"ai-cmk", "ai-cmk-dev", "ai-cmk-hsm"}
        assert sum(rows.values()) == 60
        assert list(rows) == sorted(rows)

    def test_az_rest_refuses_a_dynamic_group_key(self, az: Cli):
        """summarize by identity.type: az rest exits non-zero with Kusto's explicit-cast
        error, as against Azure."""
        body = json.dumps({"query": "Resources | summarize count() by identity.type"})
        result = az.run(
            "rest", "--method", "post", "--url", f"{GRAPH}?api-version=2021-03-01", "--body", body
        )
        assert result.returncode != 0
        assert "Summarize group key 'identity_type' is of a 'dynamic' type" in result.stderr

    def test_az_rest_functions_operators_type(self, az: Cli):
        """iff(), strcat(), split()/array_length() and summarize max()/sum() answer rows."""
        query = (
            "Resources | where type =~ 'microsoft.cognitiveservices/accounts' "
            "| extend cmk = iff(tostring(properties.encryption.keySource) =~ "
            "'Microsoft.KeyVault', 'cmk', 'mmk'), "
            "label = strcat(name, '@', location), parts = array_length(split(name, '-')) "
            "| summarize accounts = count(), longest = max(parts), total = sum(parts) by cmk"
        )
        body = az.json(
            "rest", "--method", "post", "--url", f"{GRAPH}?api-version=2021-03-01",
            "--body", json.dumps({"query": query}),
        )  # fmt: skip
        rows = {row["cmk"]: row for row in body["data"]}
        assert sum(row["accounts"] for row in rows.values()) == 60
        assert all(row["longest"] >= 1 and row["total"] >= row["accounts"] for row in rows.values())

    def test_vault_sku_agrees_with_keyvault_show(self, az: Cli):
        """Resource Graph's properties.sku of a vault is what az keyvault show says."""
        shown = az.json("keyvault", "show", "-n", VAULT, "--subscription", "platform")
        query = f"Resources | where name == '{VAULT}' | project sku = tostring(properties.sku.name)"
        body = az.json(
            "rest", "--method", "post", "--url", f"{GRAPH}?api-version=2021-03-01",
            "--body", json.dumps({"query": query}),
        )  # fmt: skip
        assert [row["sku"] for row in body["data"]] == [shown["properties"]["sku"]["name"]]


class TestStateDir:
    def test_a_later_sandbox_on_the_same_state_dir_starts_logged_out(self, tmp_path: Path):
        """az logged in to a sandbox that stopped: a new sandbox with the same --state-dir
        starts az logged out (not on the old tenant), and az login --identity there names
        the new tenant."""
        with running_sandbox_up(tmp_path) as first:
            cli = Cli({**first.env, "AZURE_CORE_COLLECT_TELEMETRY": "no"})
            cli.json("login", "--identity")
            old_tenant = cli.json("account", "show")["tenantId"]
        with running_sandbox_up(tmp_path) as second:
            cli = Cli({**second.env, "AZURE_CORE_COLLECT_TELEMETRY": "no"})
            shown = cli.run("account", "show")
            assert shown.returncode != 0 and "az login" in shown.stderr, shown.stdout
            cli.json("login", "--identity")
            new_tenant = cli.json("account", "show")["tenantId"]
        assert second.env["AZURE_CONFIG_DIR"] == first.env["AZURE_CONFIG_DIR"]
        assert new_tenant != old_tenant


@pytest.fixture(scope="module")
def owner_az(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """``az`` against a sandbox of the example world where the identity is also Owner of the
    platform subscription (it may grant access there) and account ``ai-prod-nokey`` is bound
    to ``kv-cmk-weu/ai-cmk`` with a system identity holding no role on the key."""
    root = tmp_path_factory.mktemp("sandbox-up-owner")
    world = json.loads(example_path().read_text())
    world.pop("$schema", None)
    world["roleAssignments"].append(
        {"principal": "app", "role": "Owner", "scope": "subscription:platform"}
    )
    world["accounts"].append(
        {
            "name": NOKEY,
            "subscription": "ai-prod",
            "resourceGroup": GROUP,
            "location": "westeurope",
            "identity": {"system": True},
            "encryption": {
                "vault": VAULT, "key": KEY, "version": 0, "identity": "system",
                "grantKeyAccess": False,
            },
        }
    )  # fmt: skip
    scenario = root / "owner_world.json"
    scenario.write_text(json.dumps(world))
    with running_sandbox_up(root, scenario) as running:
        cli = Cli({**running.env, "AZURE_CORE_COLLECT_TELEMETRY": "no"})
        login = cli.run("login", "--identity", "--output", "json")
        assert login.returncode == 0, login.stderr
        yield cli


NOKEY = "ai-prod-nokey"


class TestRoleAssignmentCreate:
    def test_key_scope_grant_from_the_docs_lets_the_account_bind(self, owner_az: Cli):
        """docs/lifecycle.md's fix, verbatim: az role assignment create --role "Key Vault
        Crypto Service Encryption User" --assignee-object-id <p> --assignee-principal-type
        ServicePrincipal --scope <vault id>/keys/<key> answers the assignment (ARM's 201,
        RoleAssignments_Create); the account update the key role was missing for then
        succeeds, and az role assignment delete takes it away again."""
        az = owner_az
        vault = az.json("keyvault", "show", "-n", VAULT, "--subscription", "platform")["id"]
        shown = az.json(
            "cognitiveservices", "account", "show", "--subscription", "ai-prod",
            "-g", GROUP, "-n", NOKEY,
        )  # fmt: skip
        principal = shown["identity"]["principalId"]
        newest = az.json("keyvault", "key", "show", "--vault-name", VAULT, "-n", KEY)
        binding = shown["properties"]["encryption"]["keyVaultProperties"]
        encryption = json.dumps(
            {
                "keySource": "Microsoft.KeyVault",
                "keyVaultProperties": {
                    **binding,
                    "keyVersion": newest["key"]["kid"].rsplit("/", 1)[1],
                },
            }
        )
        update = (
            "cognitiveservices", "account", "update", "--subscription", "ai-prod",
            "-g", GROUP, "-n", NOKEY, "--encryption", encryption, "--output", "json",
        )  # fmt: skip
        refused = az.run(*update)
        assert refused.returncode != 0 and "KeyVaultAccessDenied" in refused.stderr
        scope = f"{vault}/keys/{KEY}"
        made = az.json(
            "role", "assignment", "create", "--role", "Key Vault Crypto Service Encryption User",
            "--assignee-object-id", principal, "--assignee-principal-type", "ServicePrincipal",
            "--scope", scope,
        )  # fmt: skip
        assert made["scope"] == scope and made["principalId"] == principal
        assert made["roleDefinitionId"].endswith("/e147488a-f6f5-4113-8e2d-b22465e65bf6")
        updated = az.run(*update)
        assert updated.returncode == 0, updated.stderr
        assert json.loads(updated.stdout)["properties"]["provisioningState"] == "Succeeded"
        deleted = az.run("role", "assignment", "delete", "--ids", made["id"])
        assert deleted.returncode == 0, deleted.stderr
        listed = az.json(
            "role", "assignment", "list", "--scope", scope, "--assignee", principal,
            "--fill-principal-name", "false",
        )  # fmt: skip
        assert listed == []
