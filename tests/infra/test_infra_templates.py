"""The Bicep templates under infra/, parsed offline with pycep-parser and asserted on.

No Bicep compiler can run here, so these tests are what stands between a template change
and a deployment that subscribes the wrong function, leaks a key into app settings, or
grants more than the app needs.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
from pycep import BicepParser

import function_app
from cmk.entrypoints import INPUT_REJECTED
from cmk.ports import AlertType
from cmk.settings import ENVIRONMENT_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

EXPECTED_FILES = {
    "main.bicep",
    "app/alerting.bicep",
    "app/event-subscriptions.bicep",
    "app/function.bicep",
    "app/identity.bicep",
    "app/monitoring.bicep",
    "app/rbac.bicep",
    "app/rbac-dead-letter.bicep",
    "app/rbac-function.bicep",
    "app/rbac-subscription.bicep",
    "app/rbac-vault.bicep",
    "app/storage.bicep",
    "app/vault-event-subscriptions.bicep",
    "app/vault-topic.bicep",
    "app/vault-topic-adopted.bicep",
    "app/vaults.bicep",
}

# The alert types the app raises (cmk.ports.AlertType): the log rules must cover them all.
ALERT_TYPES = {alert_type.value for alert_type in AlertType} | {INPUT_REJECTED}

# Every CMK_* setting the app reads (cmk.settings): the templates must wire them all.
CMK_SETTINGS = {name for name in ENVIRONMENT_VARIABLES if name.startswith("CMK_")}

# Built-in role ids and names, from the table in builtin_roles.json (which cites its source).
BUILT_IN_ROLES: dict[str, str] = json.loads(
    (Path(__file__).with_name("builtin_roles.json")).read_text(encoding="utf-8")
)["roles"]
ROLE_IDS = {name: role_id for role_id, name in BUILT_IN_ROLES.items()}

# Roles the app and the system topics must never hold: they reach far beyond what it does.
BROAD_ROLE_NAMES = (
    "Owner",
    "Contributor",
    "User Access Administrator",
    "Role Based Access Control Administrator",
    "Key Vault Administrator",
    "Key Vault Crypto Officer",
    "Cognitive Services Contributor",
    "Cognitive Services OpenAI Contributor",
)

# Each roles-table key of the rbac*.bicep files and the built-in role it must name.
ROLE_KEYS = {
    "storageQueueDataContributor": "Storage Queue Data Contributor",
    "storageTableDataContributor": "Storage Table Data Contributor",
    "storageBlobDataOwner": "Storage Blob Data Owner",
    "storageBlobDataContributor": "Storage Blob Data Contributor",
    "storageBlobDataReader": "Storage Blob Data Reader",
    "eventGridDataSender": "EventGrid Data Sender",
    "monitoringMetricsPublisher": "Monitoring Metrics Publisher",
}


@cache
def template(relative: str) -> dict[str, Any]:
    """The parsed template at infra/<relative>."""
    parsed: dict[str, Any] = cast(dict[str, Any], BicepParser().parse(file_path=INFRA / relative))
    return parsed


def text(relative: str) -> str:
    return (INFRA / relative).read_text(encoding="utf-8")


def render(value: Any) -> str:
    """A compact Bicep-like rendering of a parsed expression: `a.b.c`, `f(x, y)`."""
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        operands = [render(operand) for operand in operator["operands"].values()]
        if operator["type"] == "property_accessor":
            return ".".join(operands)
        return f"{operator['type']}({', '.join(operands)})"
    if isinstance(value, dict) and "function" in value:
        function = value["function"]
        arguments = [render(arg) for arg in function["parameters"].values() if arg is not None]
        return f"{function['type']}({', '.join(arguments)})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {render(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    return str(value)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's declared body, looking through a `for` loop."""
    config: dict[str, Any] = resource["config"]
    return config["config"] if "loop_type" in config else config


def resolve(parsed: dict[str, Any], value: Any) -> Any:
    """The value of a variable when `value` names one, else `value` itself."""
    if isinstance(value, str) and value in parsed.get("variables", {}):
        return parsed["variables"][value]["value"]
    return value


def resources_of_type(resource_type: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(file, symbolic name, resource) of every non-existing resource of that type."""
    found = []
    for relative in sorted(EXPECTED_FILES):
        for name, resource in template(relative).get("resources", {}).items():
            if resource["type"] == resource_type and not resource["existing"]:
                found.append((relative, name, resource))
    return found


def app_setting_values() -> dict[str, Any]:
    """Every app setting of the Function app: CMK_* from main.bicep, the rest from function."""
    main_params = template("main.bicep")["modules"]["functionApp"]["config"]["params"]
    settings: dict[str, Any] = dict(main_params["cmkSettings"])
    site = template("app/function.bicep")["resources"]["functionApp"]
    concatenated = site["config"]["properties"]["siteConfig"]["appSettings"]["function"]
    assert concatenated["type"] == "concat"
    assert concatenated["parameters"]["arg_1"] == "cmkAppSettings"
    assert concatenated["parameters"]["arg_2"] == "identitySettings"
    for entry in concatenated["parameters"]["arg_3"]:
        settings[entry["name"]] = entry["value"]
    return settings


def branches(value: Any) -> tuple[Any, Any]:
    """(true, false) values of a `cond ? a : b` expression."""
    operands = value["operator"]["operands"]
    assert value["operator"]["type"] == "conditional"
    return operands["true_value"], operands["false_value"]


class TestParsing:
    """Every template parses; a broken one is reported, not skipped."""

    def test_all_expected_templates_exist(self) -> None:
        """The layout is main.bicep plus the modules under infra/app/."""
        found = {path.relative_to(INFRA).as_posix() for path in BICEP_FILES}
        assert found == EXPECTED_FILES

    @pytest.mark.parametrize("path", BICEP_FILES, ids=lambda path: path.name)
    def test_template_parses(self, path: Path) -> None:
        """pycep parses the file into parameters, resources or modules."""
        parsed = BicepParser().parse(file_path=path)
        assert parsed.get("resources") or parsed.get("modules")

    def test_parser_rejects_broken_bicep(self) -> None:
        """A syntax error raises, so the parse test above can fail."""
        with pytest.raises(Exception):  # noqa: B017 - lark raises several error types
            BicepParser().parse(text="resource x 'Microsoft.Web/sites@2024-04-01' = {\n  name: \n")

    def test_no_conditional_resources_or_modules(self) -> None:
        """No `= if (...)` deployments: checkov does not scan conditional resources."""
        for relative in sorted(EXPECTED_FILES):
            parsed = template(relative)
            for kind in ("resources", "modules"):
                for name, item in parsed.get(kind, {}).items():
                    assert item["config"].get("condition") is None, f"{relative}: {name}"

    def test_every_checkov_skip_has_a_reason(self) -> None:
        """Each `checkov:skip` names a check and gives a reason after the colon."""
        for relative in sorted(EXPECTED_FILES):
            for line in text(relative).splitlines():
                if "checkov:skip" in line:
                    assert re.search(r"// checkov:skip=CKV2?_AZURE_\d+: \S.{20,}", line), line

    def test_abbreviations_used_exist(self) -> None:
        """Every abbrs.<name> main.bicep uses is in abbreviations.json."""
        table = json.loads((INFRA / "abbreviations.json").read_text(encoding="utf-8"))
        used = set(re.findall(r"abbrs\.(\w+)", text("main.bicep")))
        assert used
        assert used <= set(table)


class TestEventSubscriptions:
    """Each Key Vault event type reaches its function, with retries and dead-lettering."""

    ROUTES = {
        "keyNewVersion": ("Microsoft.KeyVault.KeyNewVersionCreated", "on_key_new_version"),
        "keyNearExpiry": ("Microsoft.KeyVault.KeyNearExpiry", "on_key_near_expiry"),
        "keyExpired": ("Microsoft.KeyVault.KeyExpired", "on_key_expired"),
    }

    @pytest.fixture
    def parsed(self) -> dict[str, Any]:
        return template("app/vault-event-subscriptions.bicep")

    def test_exactly_three_subscriptions(self, parsed: dict[str, Any]) -> None:
        """One subscription per event type, on the vault's system topic."""
        subscriptions = {
            name
            for name, resource in parsed["resources"].items()
            if resource["type"] == "Microsoft.EventGrid/systemTopics/eventSubscriptions"
        }
        assert subscriptions == set(self.ROUTES)
        for name in subscriptions:
            assert body(parsed["resources"][name])["parent"] == "systemTopic"
        topic = parsed["resources"]["systemTopic"]
        assert topic["existing"] is True
        assert topic["type"] == "Microsoft.EventGrid/systemTopics"

    @pytest.mark.parametrize("name", sorted(ROUTES))
    def test_event_type_and_function(self, parsed: dict[str, Any], name: str) -> None:
        """The subscription filters to one event type and targets the matching function."""
        event_type, function = self.ROUTES[name]
        properties = body(parsed["resources"][name])["properties"]
        assert properties["filter"]["includedEventTypes"] == [event_type]
        destination = properties["destination"]
        assert destination["endpointType"] == "AzureFunction"
        assert destination["properties"]["resourceId"] == ("${functionAppId}/functions/" + function)
        assert destination["properties"]["maxEventsPerBatch"] == 1
        assert properties["eventDeliverySchema"] == "EventGridSchema"

    @pytest.mark.parametrize("name", sorted(ROUTES))
    def test_keys_only_advanced_filter(self, parsed: dict[str, Any], name: str) -> None:
        """Only key events pass (data.ObjectType is Key)."""
        properties = body(parsed["resources"][name])["properties"]
        filters = resolve(parsed, properties["filter"]["advancedFilters"])
        assert filters == [
            {"operatorType": "StringIn", "key": "data.ObjectType", "values": ["Key"]}
        ]

    @pytest.mark.parametrize("name", sorted(ROUTES))
    def test_retry_policy_explicit(self, parsed: dict[str, Any], name: str) -> None:
        """maxDeliveryAttempts and eventTimeToLiveInMinutes are set, 30 and 1440 by default."""
        properties = body(parsed["resources"][name])["properties"]
        retry = resolve(parsed, properties["retryPolicy"])
        assert retry == {
            "maxDeliveryAttempts": "maxDeliveryAttempts",
            "eventTimeToLiveInMinutes": "eventTimeToLiveInMinutes",
        }
        assert parsed["parameters"]["maxDeliveryAttempts"]["default"] == 30
        assert parsed["parameters"]["eventTimeToLiveInMinutes"]["default"] == 1440

    @pytest.mark.parametrize("name", sorted(ROUTES))
    def test_dead_letter_with_topic_identity(self, parsed: dict[str, Any], name: str) -> None:
        """Dead letters go to the storage container, written with the topic's identity."""
        properties = body(parsed["resources"][name])["properties"]
        assert "deadLetterDestination" not in properties
        dead_letter = resolve(parsed, properties["deadLetterWithResourceIdentity"])
        assert dead_letter["identity"] == {"type": "SystemAssigned"}
        destination = dead_letter["deadLetterDestination"]
        assert destination["endpointType"] == "StorageBlob"
        assert destination["properties"] == {
            "resourceId": "storageAccountId",
            "blobContainerName": "deadLetterContainerName",
        }

    # Event Grid's rule for an event subscription's name: 3-64 letters, digits and hyphens.
    EVENT_GRID_NAME = re.compile(r"^[A-Za-z0-9-]{3,64}$")

    def test_names_carry_the_environment(self, parsed: dict[str, Any]) -> None:
        """Each subscription is named cmk-key-<event>-${nameSuffix}, nameSuffix a required
        parameter short enough for Event Grid's 64 characters, which the step-3 wrapper fills
        from its own required parameter: two environments on one vault never share a name."""
        names = {name: str(body(parsed["resources"][name])["name"]) for name in self.ROUTES}
        assert names == {
            "keyNewVersion": "cmk-key-new-version-${nameSuffix}",
            "keyNearExpiry": "cmk-key-near-expiry-${nameSuffix}",
            "keyExpired": "cmk-key-expired-${nameSuffix}",
        }
        suffix = parsed["parameters"]["nameSuffix"]
        assert suffix.get("default") is None
        bounds = {d["type"]: d.get("argument") for d in suffix["decorators"]}
        longest = max(len(name.split("${", 1)[0]) for name in names.values())
        assert bounds["min_length"] >= 1 and longest + bounds["max_length"] <= 64
        for name in names.values():
            for filled in ("a", "x" * bounds["max_length"], "abcdefghij123"):
                assert self.EVENT_GRID_NAME.match(name.replace("${nameSuffix}", filled)), name
        wrapper = template("app/event-subscriptions.bicep")
        assert wrapper["parameters"]["subscriptionNameSuffix"].get("default") is None
        wrapper_bounds = {
            d["type"]: d.get("argument")
            for d in wrapper["parameters"]["subscriptionNameSuffix"]["decorators"]
        }
        assert wrapper_bounds["max_length"] <= bounds["max_length"]
        params = body(wrapper["modules"]["vaultSubscriptions"])["params"]
        assert params["nameSuffix"] == "subscriptionNameSuffix"

    def test_the_suffix_is_the_environments_resource_token(self) -> None:
        """main.bicep outputs EVENT_SUBSCRIPTION_SUFFIX as its resource token: uniqueString of
        the subscription, the environment name and the region (13 letters and digits)."""
        main = template("main.bicep")
        assert main["outputs"]["EVENT_SUBSCRIPTION_SUFFIX"]["value"] == "resourceToken"
        token = render(main["variables"]["resourceToken"]["value"])
        assert token == "to_lower(unique_string(subscription().id, environmentName, location))"

    def test_hooks_pass_the_suffix(self) -> None:
        """Both postdeploy hooks require EVENT_SUBSCRIPTION_SUFFIX and hand it to step 3."""
        for hook, needle in (
            (
                "postdeploy.sh",
                '"subscriptionNameSuffix": { "value": "$EVENT_SUBSCRIPTION_SUFFIX" }',
            ),
            (
                "postdeploy.ps1",
                "subscriptionNameSuffix  = @{ value = $env:EVENT_SUBSCRIPTION_SUFFIX }",
            ),
        ):
            source = (INFRA / "hooks" / hook).read_text(encoding="utf-8")
            assert needle in source, hook
        assert ': "${EVENT_SUBSCRIPTION_SUFFIX:?' in text("hooks/postdeploy.sh")
        assert "'EVENT_SUBSCRIPTION_SUFFIX')" in text("hooks/postdeploy.ps1")

    def test_docs_name_the_suffixed_subscriptions(self) -> None:
        """docs/deployment.md's subscription table and teardown name each subscription with
        its suffix, and the teardown deletes this environment's names only."""
        doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
        stems = [
            str(body(resource)["name"]).split("-${", 1)[0]
            for resource in template("app/vault-event-subscriptions.bicep")["resources"].values()
            if resource["type"] == "Microsoft.EventGrid/systemTopics/eventSubscriptions"
        ]
        for stem in stems:
            assert f"| `{stem}-<suffix>` |" in doc, stem
        teardown = teardown_section()
        assert f"for s in {' '.join(stems)}; do" in teardown
        assert '-n "$s-<suffix>"' in teardown
        assert "azd env get-value EVENT_SUBSCRIPTION_SUFFIX" in teardown
        assert not re.search(r"-n cmk-key-[a-z-]+`", teardown)
        assert '"subscriptionNameSuffix": {"value": outputs["EVENT_SUBSCRIPTION_SUFFIX"]}' in doc

    def test_wrapper_bounds_and_scope(self) -> None:
        """The step-2 entry point caps retries at Event Grid's limits and targets each vault RG."""
        parsed = template("app/event-subscriptions.bicep")
        assert parsed["globals"]["scope"]["value"] == "subscription"
        decorators = {
            name: {d["type"]: d["argument"] for d in parsed["parameters"][name]["decorators"]}
            for name in ("maxDeliveryAttempts", "eventTimeToLiveInMinutes")
        }
        assert decorators["maxDeliveryAttempts"]["max_value"] == 30
        assert decorators["eventTimeToLiveInMinutes"]["max_value"] == 1440
        module = parsed["modules"]["vaultSubscriptions"]
        assert module["detail"]["path"] == "./vault-event-subscriptions.bicep"
        scope = render(body(module)["scope"])
        assert scope == "resource_group(v.resourceGroup, v.subscriptionId)"

    def test_adopted_topic_is_never_redeployed(self) -> None:
        """A topic named in systemTopicName is read (`existing`), so its tags and identity stay;
        only the others are created."""
        vaults = template("app/vaults.bicep")
        created = vaults["modules"]["vaultTopics"]["config"]["loop_type"]["detail"]
        adopted = vaults["modules"]["adoptedTopics"]["config"]["loop_type"]["detail"]
        assert created["array_name"] == "createdTopicVaults"
        assert adopted["array_name"] == "adoptedTopicVaults"
        assert vaults["modules"]["adoptedTopics"]["detail"]["path"] == (
            "./vault-topic-adopted.bicep"
        )
        assert "adopt" in render(vaults["variables"]["adoptedTopicVaults"]["value"])
        resources = template("app/vault-topic-adopted.bicep")["resources"]
        assert all(resource["existing"] for resource in resources.values())
        sides = template("main.bicep")["variables"]["vaultSides"]["value"]["config"]
        assert render(sides["adopt"]) == "contains(v, systemTopicName)"

    def test_system_topic_has_identity(self) -> None:
        """The vault's system topic is a Key Vault topic with a system-assigned identity."""
        topic = template("app/vault-topic.bicep")["resources"]["systemTopic"]["config"]
        assert topic["identity"] == {"type": "SystemAssigned"}
        assert topic["properties"]["topicType"] == "Microsoft.KeyVault.vaults"
        assert render(topic["properties"]["source"]) == "vault.id"

    def test_hook_deploys_the_wrapper(self) -> None:
        """The azd postdeploy hook deploys app/event-subscriptions.bicep at subscription scope."""
        azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
        assert "postdeploy:" in azure_yaml
        assert "./infra/hooks/postdeploy.sh" in azure_yaml
        hook = (INFRA / "hooks" / "postdeploy.sh").read_text(encoding="utf-8")
        assert "az deployment sub create" in hook
        assert "app/event-subscriptions.bicep" in hook
        for output in ("AZURE_FUNCTION_APP_ID", "EVENT_STORAGE_ACCOUNT_ID", "EVENT_VAULTS"):
            assert output in template("main.bicep")["outputs"]
            assert output in hook


class TestFunctionApp:
    """The Function app: Flex Consumption, Python 3.11, HTTPS/TLS 1.2, identity, no secrets."""

    @pytest.fixture
    def parsed(self) -> dict[str, Any]:
        return template("app/function.bicep")

    def test_https_tls_ftps(self, parsed: dict[str, Any]) -> None:
        """HTTPS only, TLS 1.2 (site and SCM), FTPS disabled, basic publishing off."""
        site = parsed["resources"]["functionApp"]["config"]
        assert site["properties"]["httpsOnly"] is True
        site_config = site["properties"]["siteConfig"]
        assert site_config["minTlsVersion"] == "1.2"
        assert site_config["scmMinTlsVersion"] == "1.2"
        assert site_config["ftpsState"] == "Disabled"
        for name in ("ftpBasicAuth", "scmBasicAuth"):
            assert parsed["resources"][name]["config"]["properties"]["allow"] is False

    def test_flex_consumption_python(self, parsed: dict[str, Any]) -> None:
        """FC1 plan, Python 3.11 runtime, package read with the app's identity."""
        plan = parsed["resources"]["plan"]["config"]
        assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
        site = parsed["resources"]["functionApp"]["config"]
        assert site["kind"] == "functionapp,linux"
        config = site["properties"]["functionAppConfig"]
        assert config["runtime"] == {"name": "python", "version": "3.11"}
        storage = config["deployment"]["storage"]
        assert storage["type"] == "blobContainer"
        assert branches(storage["authentication"]) == (
            {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"},
            {"type": "SystemAssignedIdentity"},
        )

    def test_identity_user_assigned_by_default(self, parsed: dict[str, Any]) -> None:
        """The app runs as the user-assigned identity unless identityType says SystemAssigned."""
        site = parsed["resources"]["functionApp"]["config"]
        user, system = branches(site["identity"])
        assert user == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}
        assert system == {"type": "SystemAssigned"}
        assert site["identity"]["operator"]["operands"]["condition"] == "userAssigned"
        assert parsed["variables"]["userAssigned"]["value"] == {
            "operator": {
                "type": "equals",
                "operands": {"operand_1": "identityType", "operand_2": "UserAssigned"},
            }
        }
        main = template("main.bicep")
        assert main["parameters"]["appIdentityType"]["default"] == "UserAssigned"
        params = main["modules"]["functionApp"]["config"]["params"]
        assert params["identityType"] == "appIdentityType"
        assert render(params["identityId"]) == "identity.outputs.id"
        assert render(params["identityClientId"]) == "identity.outputs.clientId"

    def test_clients_told_which_identity(self, parsed: dict[str, Any]) -> None:
        """With the user-assigned identity, the host, the SDK and App Insights get its client id."""
        user, system = branches(parsed["variables"]["identitySettings"]["value"])
        assert {entry["name"]: entry["value"] for entry in user} == {
            "AzureWebJobsStorage__clientId": "identityClientId",
            "AZURE_CLIENT_ID": "identityClientId",
        }
        assert system == []
        auth = app_setting_values()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        assert branches(auth) == (
            "ClientId=${identityClientId};Authorization=AAD",
            "Authorization=AAD",
        )

    def test_every_cmk_setting_wired_from_parameters(self) -> None:
        """Every CMK_* setting the app reads is set, each from a main.bicep parameter or output."""
        settings = app_setting_values()
        assert {name for name in settings if name.startswith("CMK_")} == CMK_SETTINGS
        main = template("main.bicep")
        params = set(main["parameters"])
        expected_sources = {
            "CMK_VAULT_ALLOWLIST": "additionalVaultUrls",
            "CMK_SUBSCRIPTIONS": "managedSubscriptions",
            "CMK_ALLOWED_KEY_SIZES": "allowedKeySizes",
            "CMK_EXPIRY_MARGIN_DAYS": "expiryMarginDays",
            "CMK_ROTATE_ON_NEAR_EXPIRY": "rotateOnNearExpiry",
            "CMK_SWEEP_SCHEDULE": "sweepSchedule",
            "CMK_ALERT_TOPIC_ENDPOINT": "alerting.outputs.topicEndpoint",
            "CMK_JOB_QUEUE": "jobQueueName",
            "CMK_LEDGER_TABLE": "ledgerTableName",
            "CMK_DRY_RUN": "dryRun",
            "CMK_AZURE_CLOUD": "azureCloud",
            "CMK_STALE_GRACE_HOURS": "staleGraceHours",
            "CMK_UPDATE_TIMEOUT_SECONDS": "updateTimeoutSeconds",
            "CMK_MAX_CONCURRENCY": "maxConcurrency",
            "CMK_ROTATE_COOLDOWN_MINUTES": "rotateCooldownMinutes",
        }
        for name, source in expected_sources.items():
            assert source in render(settings[name]), name
            root = source.split(".")[0]
            assert root in params or root in main["variables"] or root in main["modules"]
        assert "vaultUrls" in render(settings["CMK_VAULT_ALLOWLIST"])
        assert "managedSubscriptionIds" in render(main["variables"]["managedSubscriptions"])

    def test_setting_defaults_match_the_app(self) -> None:
        """Parameter defaults are the app's documented defaults."""
        params = template("main.bicep")["parameters"]
        assert params["allowedKeySizes"]["default"] == "2048"
        assert params["expiryMarginDays"]["default"] == 30
        assert params["rotateOnNearExpiry"]["default"] is True
        assert params["sweepSchedule"]["default"] == "0 0 * * * *"
        assert params["jobQueueName"]["default"] == "cmk-rotation-jobs"
        assert params["ledgerTableName"]["default"] == "cmkledger"
        assert params["dryRun"]["default"] is False
        assert params["staleGraceHours"]["default"] == 24
        assert params["updateTimeoutSeconds"]["default"] == 120
        assert params["maxConcurrency"]["default"] == 32
        assert params["rotateCooldownMinutes"]["default"] == 10
        allowed = next(
            d["argument"] for d in params["azureCloud"]["decorators"] if d["type"] == "allowed"
        )
        assert allowed == ["public", "china", "usgovernment"]

    def test_identity_based_storage(self) -> None:
        """AzureWebJobsStorage is identity-based: account name and service URIs, no string."""
        settings = app_setting_values()
        assert "AzureWebJobsStorage" not in settings
        assert render(settings["AzureWebJobsStorage__accountName"]) == "storageAccount.name"
        assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
        for service in ("blob", "queue", "table"):
            value = render(settings[f"AzureWebJobsStorage__{service}ServiceUri"])
            assert value == f"storageAccount.properties.primaryEndpoints.{service}"
        assert "Authorization=AAD" in render(settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"])

    def test_no_secret_in_app_settings(self) -> None:
        """No app setting holds a key, SAS, connection string with a key, or list*() call."""
        forbidden = re.compile(
            r"accountkey|sharedaccesskey|sharedaccesssignature|defaultendpointsprotocol"
            r"|list_?keys|listconnectionstrings|listsecrets|password|sig=",
            re.IGNORECASE,
        )
        for name, value in app_setting_values().items():
            assert not forbidden.search(render(value)), name

    def test_no_key_listing_anywhere(self) -> None:
        """No template calls listKeys() or builds a connection string with a key."""
        forbidden = re.compile(r"\.list\w*\(|AccountKey=|SharedAccessKey=", re.IGNORECASE)
        for relative in sorted(EXPECTED_FILES):
            assert not forbidden.search(text(relative)), relative


class TestStorage:
    """The app's storage: no public blobs, TLS 1.2, shared key off, queues, table, containers."""

    @pytest.fixture
    def parsed(self) -> dict[str, Any]:
        return template("app/storage.bicep")

    def test_account_hardening(self, parsed: dict[str, Any]) -> None:
        """Shared key and public blob access off, HTTPS only, TLS 1.2, OAuth by default."""
        properties = parsed["resources"]["storageAccount"]["config"]["properties"]
        assert properties["allowSharedKeyAccess"] is False
        assert properties["allowBlobPublicAccess"] is False
        assert properties["supportsHttpsTrafficOnly"] is True
        assert properties["minimumTlsVersion"] == "TLS1_2"
        assert properties["defaultToOAuthAuthentication"] is True

    def test_queues_table_containers(self, parsed: dict[str, Any]) -> None:
        """Job queue and its poison queue, ledger table, deployment and dead-letter containers."""
        resources = parsed["resources"]
        assert resources["jobQueue"]["config"]["name"] == "jobQueueName"
        assert parsed["variables"]["poisonQueueName"]["value"] == "${jobQueueName}-poison"
        assert resources["poisonQueue"]["config"]["name"] == "poisonQueueName"
        assert resources["ledgerTable"]["config"]["name"] == "ledgerTableName"
        for name in ("deploymentContainer", "deadLetterContainer"):
            assert resources[name]["config"]["properties"]["publicAccess"] == "None"
        assert resources["deadLetterContainer"]["config"]["name"] == "deadLetterContainerName"

    def test_queue_logs_to_workspace(self, parsed: dict[str, Any]) -> None:
        """Queue write and delete logs reach Log Analytics (the poison-queue alert reads the
        writes); StorageRead, every poll of every instance, is not collected."""
        diagnostics = parsed["resources"]["queueDiagnostics"]["config"]
        assert diagnostics["scope"] == "queueService"
        categories = {log["category"] for log in diagnostics["properties"]["logs"]}
        assert categories == {"StorageWrite", "StorageDelete"}


class TestRoleAssignments:
    """Least privilege: who gets which role where, each named guid(scope, principal, role)."""

    EXPECTED = {
        ("app/rbac.bicep", "appQueueData"): ("storageAccount", "storageQueueDataContributor"),
        ("app/rbac.bicep", "appTableData"): ("storageAccount", "storageTableDataContributor"),
        ("app/rbac.bicep", "appBlobData"): ("storageAccount", "storageBlobDataOwner"),
        ("app/rbac.bicep", "appAlertTopicSender"): ("alertTopic", "eventGridDataSender"),
        ("app/rbac.bicep", "appTelemetryPublisher"): (
            "applicationInsights",
            "monitoringMetricsPublisher",
        ),
        ("app/rbac-dead-letter.bicep", "topicDeadLetterWriters"): (
            "deadLetterContainer",
            "storageBlobDataContributor",
        ),
        ("app/rbac-subscription.bicep", "appAccountOperator"): (None, "accountOperator.id"),
        ("app/rbac-vault.bicep", "appKeyRotator"): ("vault", "keyRotator.id"),
        ("app/rbac.bicep", "operatorQueueData"): ("storageAccount", "storageQueueDataContributor"),
        ("app/rbac.bicep", "operatorTableData"): ("storageAccount", "storageTableDataContributor"),
        ("app/rbac.bicep", "operatorAlertTopicSender"): ("alertTopic", "eventGridDataSender"),
        ("app/rbac-subscription.bicep", "operatorAccountOperator"): (None, "accountOperator.id"),
        ("app/rbac-vault.bicep", "operatorKeyRotator"): ("vault", "keyRotator.id"),
        ("app/rbac.bicep", "operatorDeadLetterReader"): (
            "deadLetterContainer",
            "storageBlobDataReader",
        ),
        ("app/rbac-subscription.bicep", "operatorGrantReader"): (None, "grantReader.id"),
        ("app/rbac-vault.bicep", "operatorVaultGrantReader"): ("vault", "vaultGrantReader.id"),
        ("app/rbac-function.bicep", "operatorAppOperator"): ("functionApp", "roleDefinitionId"),
    }

    # What operators hold beyond the app's roles, each for one command: the dead letters
    # `cmk replay` takes, the role assignments `cmk smoke` decides its rights rows from, and
    # the Function app's settings, functions and function keys the az commands of the docs read.
    OPERATOR_EXTRAS = frozenset(
        {
            "operatorDeadLetterReader",
            "operatorGrantReader",
            "operatorVaultGrantReader",
            "operatorAppOperator",
        }
    )

    # What each `az functionapp` command of docs/deployment.md asks of ARM, as the az CLI sends
    # it (azure-cli appservice custom.py: get_app_settings POSTs .../config/appsettings/list
    # and GETs the site to tell a Flex app; list_host_keys POSTs .../host/default/listkeys;
    # show_functionapp on Flex, show_identity GET the site; list_functions GETs
    # .../functions), named as Microsoft's resource provider operations list for
    # Microsoft.Web names the actions ("List Web App's security sensitive settings, such as
    # publishing credentials, app settings and connection strings", "List Functions Host
    # keys", "Get the properties of a Web App", "Get Web Apps Functions").
    AZ_FUNCTIONAPP_ACTIONS = {
        "functionapp config appsettings list": {
            "Microsoft.Web/sites/read",
            "Microsoft.Web/sites/config/list/action",
        },
        "functionapp keys list": {"Microsoft.Web/sites/host/listkeys/action"},
        "functionapp function keys list": {"Microsoft.Web/sites/functions/listkeys/action"},
        "functionapp show": {"Microsoft.Web/sites/read"},
        "functionapp identity show": {"Microsoft.Web/sites/read"},
        "functionapp function list": {"Microsoft.Web/sites/functions/read"},
    }

    # Operators' assignments: one per operator principal, of the type the parameter says.
    OPERATOR_ASSIGNMENTS = frozenset(name for _, name in EXPECTED if name.startswith("operator"))

    def test_assignments_and_scopes(self) -> None:
        """Exactly the expected assignments exist, each on its expected scope and role."""
        found = {}
        for relative, name, resource in resources_of_type(
            "Microsoft.Authorization/roleAssignments"
        ):
            config = body(resource)
            role = render(config["properties"]["roleDefinitionId"])
            found[(relative, name)] = (config.get("scope"), role)
        assert set(found) == set(self.EXPECTED)
        for key, (scope, role) in self.EXPECTED.items():
            assert found[key][0] == scope, key
            assert role in found[key][1], key

    def test_built_in_role_ids(self) -> None:
        """Every roles table in rbac*.bicep names each role by its id in the cited table."""
        tables = {
            relative: template(relative)["variables"]["roles"]["value"]
            for relative in ("app/rbac.bicep", "app/rbac-dead-letter.bicep")
        }
        assert set(tables["app/rbac.bicep"]) == set(ROLE_KEYS) - {"storageBlobDataContributor"}
        assert tables["app/rbac.bicep"]["storageBlobDataReader"] == (
            "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
        )
        assert set(tables["app/rbac-dead-letter.bicep"]) == {"storageBlobDataContributor"}
        for relative, roles in tables.items():
            for key, role_id in roles.items():
                assert BUILT_IN_ROLES.get(role_id) == ROLE_KEYS[key], f"{relative}: {key}"

    def test_role_table_cites_its_source(self) -> None:
        """The role table says where its ids come from and holds well-formed, distinct ids."""
        document = json.loads(
            (Path(__file__).with_name("builtin_roles.json")).read_text(encoding="utf-8")
        )
        assert (
            "learn.microsoft.com/azure/role-based-access-control/built-in-roles"
            in (document["source"])
        )
        uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        assert all(uuid.match(role_id) for role_id in BUILT_IN_ROLES)
        assert len(set(BUILT_IN_ROLES.values())) == len(BUILT_IN_ROLES)
        assert ROLE_IDS["Cognitive Services Contributor"] == "25fbc0a9-bd7c-42a3-aa1a-3b75d497ee68"
        assert ROLE_IDS["Cognitive Services OpenAI Contributor"] == (
            "a001fd3d-188f-4b5d-821b-7da978bf7442"
        )

    def test_names_are_guid_of_scope_principal_role(self) -> None:
        """Each assignment is named guid(scope id, principal, role): stable across redeploys."""
        for _relative, name, resource in resources_of_type(
            "Microsoft.Authorization/roleAssignments"
        ):
            config = body(resource)
            guid = config["name"]["function"]
            assert guid["type"] == "guid", name
            base, principal, role = (render(arg) for arg in guid["parameters"].values())
            scope = config.get("scope")
            assert base == (f"{scope}.id" if scope else "subscription().id"), name
            assert principal == render(config["properties"]["principalId"]), name
            assert role.split(".")[-1] in render(config["properties"]["roleDefinitionId"]), name
            expected_type = (
                "operatorPrincipalType" if name in self.OPERATOR_ASSIGNMENTS else "ServicePrincipal"
            )
            assert config["properties"]["principalType"] == expected_type, name

    def test_every_assignment_says_why(self) -> None:
        """A `// Why:` comment sits right above every role assignment."""
        for relative, name, _ in resources_of_type("Microsoft.Authorization/roleAssignments"):
            lines = text(relative).splitlines()
            start = next(i for i, line in enumerate(lines) if line.startswith(f"resource {name} "))
            comment = []
            for line in reversed(lines[:start]):
                if not line.startswith("//"):
                    break
                comment.append(line)
            assert any(line.startswith("// Why:") for line in comment), f"{relative}: {name}"

    def test_operators_get_what_the_app_has(self) -> None:
        """Operators loop over operatorPrincipalIds, wired from main.bicep to every grant
        module, and get the app's roles plus exactly: Storage Blob Data Reader on the
        dead-letter container (for `cmk replay`) and the grant readers (for `cmk smoke`)."""
        for relative, name, resource in resources_of_type(
            "Microsoft.Authorization/roleAssignments"
        ):
            if name in self.OPERATOR_ASSIGNMENTS:
                detail = resource["config"]["loop_type"]["detail"]
                assert detail["array_name"] == "operatorPrincipalIds", name
                params = template(relative)["parameters"]
                assert params["operatorPrincipalIds"]["default"] == [], relative
                assert params["operatorPrincipalType"]["default"] == "Group", relative
        main = template("main.bicep")
        for name in ("rbacBeforeApp", "rbacAfterApp", "rbacSubscriptions", "rbacFunction"):
            params = body(main["modules"][name])["params"]
            assert params["operatorPrincipalIds"] == "operatorPrincipalIds", name
            assert params["operatorPrincipalType"] == "operatorPrincipalType", name
        for name in ("rbacBeforeApp", "rbacAfterApp"):
            params = body(main["modules"][name])["params"]
            assert render(params["deadLetterContainerName"]) == (
                "storage.outputs.deadLetterContainerName"
            ), name
        vault_params = body(template("app/vaults.bicep")["modules"]["rbacVaults"])["params"]
        assert vault_params["operatorPrincipalIds"] == "operatorPrincipalIds"
        assert "CMK_OPERATOR_PRINCIPAL_IDS" in main["outputs"]
        for hook in ("postprovision.sh", "postprovision.ps1"):
            source = (INFRA / "hooks" / hook).read_text(encoding="utf-8")
            assert "CMK_OPERATOR_PRINCIPAL_IDS" in source, hook
        app_roles = {self.EXPECTED[key][1] for key in self.EXPECTED if key[1].startswith("app")}
        operator_roles = {
            self.EXPECTED[key][1]
            for key in self.EXPECTED
            if key[1] in self.OPERATOR_ASSIGNMENTS - self.OPERATOR_EXTRAS
        }
        assert operator_roles <= app_roles
        assert not any("Blob" in role for role in operator_roles)
        blob_grants = {
            key: value
            for key, value in self.EXPECTED.items()
            if key[1] in self.OPERATOR_ASSIGNMENTS and "Blob" in value[1]
        }
        assert blob_grants == {
            ("app/rbac.bicep", "operatorDeadLetterReader"): (
                "deadLetterContainer",
                "storageBlobDataReader",
            )
        }
        container = template("app/rbac.bicep")["resources"]["deadLetterContainer"]
        assert container["existing"] is True
        assert container["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"
        assert "deadLetterContainerName" in render(container["config"]["name"])

    @pytest.mark.parametrize(
        ("relative", "variable", "expected"),
        [
            (
                "app/rbac-subscription.bicep",
                "grantReaderActions",
                {
                    "Microsoft.Authorization/roleAssignments/read",
                    "Microsoft.Authorization/roleDefinitions/read",
                },
            ),
            (
                "app/rbac-vault.bicep",
                "vaultGrantReaderActions",
                {
                    "Microsoft.Authorization/roleAssignments/read",
                    "Microsoft.Authorization/roleDefinitions/read",
                    "Microsoft.KeyVault/vaults/read",
                },
            ),
        ],
    )
    def test_grant_readers_only_read(
        self, relative: str, variable: str, expected: set[str]
    ) -> None:
        """The operators' grant-reader roles read assignments, definitions (and the vault
        resource), nothing else: no write, no data action; the app is never granted them."""
        parsed = template(relative)
        assert set(parsed["variables"][variable]["value"]) == expected
        role_name = "grantReader" if variable == "grantReaderActions" else "vaultGrantReader"
        permissions = parsed["resources"][role_name]["config"]["properties"]["permissions"][0]
        assert permissions["actions"] == variable
        assert permissions["dataActions"] == []
        app_roles = {value[1] for key, value in self.EXPECTED.items() if key[1].startswith("app")}
        assert f"{role_name}.id" not in app_roles

    def test_app_operator_role_holds_what_the_docs_run(self) -> None:
        """The operators' role on the Function app holds exactly the actions of the
        `az functionapp` commands docs/deployment.md has them run ("Operating from your
        shell"), is assigned on the app only, to operators only, after the app exists; the
        docs' roles table names each action. A new `az functionapp` command in the docs fails
        here until its actions are known and granted."""
        main = template("main.bicep")
        actions = set(main["variables"]["appOperatorActions"]["value"])
        doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
        section = doc.split("\n## Operating from your shell\n", 1)[1].split("\n## ", 1)[0]
        scripts = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.DOTALL))
        commands = {
            "functionapp " + " ".join(re.findall(r"[a-z]+", found))
            for found in re.findall(r"\baz functionapp((?: [a-z]+)+)", scripts)
        }
        assert commands, "no az functionapp command found in the section"
        assert commands <= set(self.AZ_FUNCTIONAPP_ACTIONS), commands
        needed = set().union(*(self.AZ_FUNCTIONAPP_ACTIONS[c] for c in commands))
        assert actions == needed
        role = main["resources"]["appOperatorRole"]["config"]["properties"]
        assert role["permissions"][0]["actions"] == "appOperatorActions"
        assert role["permissions"][0]["dataActions"] == []
        assert render(role["assignableScopes"]) == "[subscription().id]"
        module = main["modules"]["rbacFunction"]
        assert module["detail"]["path"] == "./app/rbac-function.bicep"
        assert render(body(module)["scope"]) == "rg"
        params = body(module)["params"]
        assert render(params["roleDefinitionId"]) == "appOperatorRole.id"
        assert render(params["functionAppName"]) == "functionApp.outputs.name"
        row = next(line for line in doc.splitlines() if "*CMK rotator app operator*:" in line)
        for action in actions:
            assert f"`{action.removeprefix('Microsoft.Web/')}`" in row or f"`{action}`" in row
        grants = [key for key, value in self.EXPECTED.items() if value[1] == "roleDefinitionId"]
        assert grants == [("app/rbac-function.bicep", "operatorAppOperator")]

    def test_account_role_is_narrow(self) -> None:
        """The Cognitive Services custom role: read/write accounts, poll operations, no more:
        nothing on Microsoft.Resources (listing subscriptions checks no action; nothing reads
        a resource group), and the template says why next to the actions."""
        parsed = template("app/rbac-subscription.bicep")
        assert parsed["globals"]["scope"]["value"] == "subscription"
        actions = parsed["variables"]["accountOperatorActions"]["value"]
        assert set(actions) == {
            "Microsoft.CognitiveServices/accounts/read",
            "Microsoft.CognitiveServices/accounts/write",
            "Microsoft.CognitiveServices/locations/operationResults/read",
        }
        source = text("app/rbac-subscription.bicep")
        why = source[: source.index("var accountOperatorActions")]
        assert "// - Microsoft.Resources/subscriptions/read: " in why
        assert "// - Microsoft.Resources/subscriptions/resourceGroups/read: " in why
        doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
        row = next(
            line for line in doc.splitlines() if "| The app | custom *CMK rotator account" in line
        )
        assert "subscriptions/read`" not in row and "resourceGroups/read`" not in row
        role = parsed["resources"]["accountOperator"]["config"]["properties"]
        permissions = role["permissions"][0]
        assert permissions["actions"] == "accountOperatorActions"
        assert permissions["dataActions"] == []
        assert render(role["assignableScopes"]) == "[subscription().id]"

    def test_key_role_is_narrow(self) -> None:
        """The Key Vault custom role: read keys, create and rotate versions; no crypto use."""
        parsed = template("app/rbac-vault.bicep")
        data_actions = parsed["variables"]["keyRotatorDataActions"]["value"]
        assert set(data_actions) == {
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/create/action",
            "Microsoft.KeyVault/vaults/keys/rotate/action",
            "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
        }
        permissions = parsed["resources"]["keyRotator"]["config"]["properties"]["permissions"][0]
        assert permissions["actions"] == []
        assert permissions["dataActions"] == "keyRotatorDataActions"
        role = parsed["resources"]["keyRotator"]["config"]["properties"]
        assert render(role["assignableScopes"]) == "[resource_group().id]"

    def test_no_wildcards_or_broad_built_in_roles(self) -> None:
        """No `*` action and no Owner/Contributor/Key Vault admin-type role anywhere."""
        for relative in sorted(EXPECTED_FILES):
            source = text(relative)
            if "rbac" in relative:
                assert not re.search(r"'[^'\n]*\*[^'\n]*'", source), relative
            for role_name in BROAD_ROLE_NAMES:
                assert ROLE_IDS[role_name] not in source.lower(), f"{relative} uses {role_name}"

    def test_cross_scope_modules(self) -> None:
        """Vault grants and topics go to the vault's RG (in vaults.bicep), account grants to
        each subscription, app grants to the app's RG before the app when user-assigned."""
        modules = template("app/vaults.bicep")["modules"]
        vault_scope = "resource_group(v.resourceGroup, v.subscriptionId)"
        assert render(body(modules["vaultTopics"])["scope"]) == vault_scope
        assert render(body(modules["adoptedTopics"])["scope"]) == vault_scope
        assert render(body(modules["rbacVaults"])["scope"]) == vault_scope
        assert render(body(modules["deadLetterWriters"])["scope"]) == (
            "resource_group(appResourceGroup)"
        )
        params = body(modules["deadLetterWriters"])["params"]
        assert "vaultTopics" in render(params["systemTopicPrincipalIds"])
        assert "adoptedTopics" in render(params["adoptedTopicPrincipalIds"])
        main = template("main.bicep")["modules"]
        assert render(body(main["rbacSubscriptions"])["scope"]) == "subscription(s)"
        assert main["rbacSubscriptions"]["config"]["loop_type"]["detail"]["array_name"] == (
            "managedSubscriptions"
        )
        for name in ("rbacBeforeApp", "rbacAfterApp"):
            assert render(body(main[name])["scope"]) == "rg"
            assert main[name]["detail"]["path"] == "./app/rbac.bicep"
        assert render(body(main["rbacBeforeApp"])["params"]["appPrincipalId"]) == (
            "identity.outputs.principalId"
        )
        assert render(body(main["rbacAfterApp"])["params"]["appPrincipalId"]) == (
            "functionApp.outputs.systemAssignedPrincipalId"
        )
        assert main["functionApp"]["config"]["dependsOn"] == ["rbacBeforeApp"]

    def test_exactly_one_app_grant_module_deploys(self) -> None:
        """rbacBeforeApp loops once with the user-assigned identity, rbacAfterApp otherwise."""
        main = template("main.bicep")["modules"]
        counts = {}
        for name in ("rbacBeforeApp", "rbacAfterApp"):
            array = main[name]["config"]["loop_type"]["detail"]["array_name"]["function"]
            assert array["type"] == "range"
            counts[name] = branches(array["parameters"]["count"])
        assert counts == {"rbacBeforeApp": (1, 0), "rbacAfterApp": (0, 1)}


# The permissions of the privileged built-in roles, from privileged_roles.json (which cites
# its source): what the deploying principal's roles can do.
PRIVILEGED_ROLES: dict[str, dict[str, list[str]]] = json.loads(
    (Path(__file__).with_name("privileged_roles.json")).read_text(encoding="utf-8")
)["roles"]


def role_grants(role: str, action: str) -> bool:
    """Whether the built-in ``role`` allows the control-plane ``action`` (its actions minus
    its notActions, wildcards as Azure matches them, case-insensitively)."""
    permissions = PRIVILEGED_ROLES[role]

    def matches(patterns: list[str]) -> bool:
        return any(fnmatchcase(action.lower(), pattern.lower()) for pattern in patterns)

    return matches(permissions["actions"]) and not matches(permissions["notActions"])


class TestWhoDeploys:
    """docs/deployment.md's "Who deploys" names only built-in roles that can do what the
    templates do with roles: define the custom roles, then assign them."""

    NEEDED = (
        "Microsoft.Authorization/roleDefinitions/write",
        "Microsoft.Authorization/roleAssignments/write",
    )

    @staticmethod
    def section() -> str:
        doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
        return doc.split("\n## Who deploys\n", 1)[1].split("\n## ", 1)[0]

    def test_the_templates_define_custom_roles(self) -> None:
        """roleDefinitions/write is needed: the templates create custom role definitions."""
        assert resources_of_type("Microsoft.Authorization/roleDefinitions")
        assert "Microsoft.Authorization/roleDefinitions/write" in self.section()

    def test_every_role_named_can_define_and_assign_roles(self) -> None:
        """Each privileged built-in role the section recommends (in italics) grants both
        roleDefinitions/write and roleAssignments/write; at least one is named."""
        section = self.section()
        named = [role for role in PRIVILEGED_ROLES if f"*{role}*" in section]
        assert named
        for role in named:
            for action in self.NEEDED:
                assert role_grants(role, action), f"{role} lacks {action}"

    def test_the_table_tells_the_roles_apart(self) -> None:
        """Not vacuous: Role Based Access Control Administrator assigns roles but defines
        none, Contributor does neither, User Access Administrator and Owner do both."""
        rbac = "Role Based Access Control Administrator"
        assert role_grants(rbac, self.NEEDED[1]) and not role_grants(rbac, self.NEEDED[0])
        assert not any(role_grants("Contributor", action) for action in self.NEEDED)
        for role in ("User Access Administrator", "Owner"):
            assert all(role_grants(role, action) for action in self.NEEDED), role

    def test_the_table_cites_its_source(self) -> None:
        document = json.loads(
            (Path(__file__).with_name("privileged_roles.json")).read_text(encoding="utf-8")
        )
        assert (
            "learn.microsoft.com/azure/role-based-access-control/built-in-roles"
            in (document["source"])
        )
        assert set(PRIVILEGED_ROLES) <= set(BUILT_IN_ROLES.values())


class TestAzdDownSafety:
    """`azd down` deletes every resource group tagged azd-env-name=<environment> (the hooks
    keep vault groups out of it, tests/infra/test_infra_hooks.py); besides, nothing azd
    records as its own reaches a vault's group."""

    def test_main_deploys_only_to_its_group_and_subscriptions(self) -> None:
        """Every module of main.bicep targets the app's group or a subscription, nothing else."""
        main = template("main.bicep")
        for name, module in main["modules"].items():
            scope = render(body(module)["scope"])
            assert scope in {"rg", "subscription(s)"}, f"{name} deploys to {scope}"
        assert "resourceGroup(" not in text("main.bicep").replace("resourceGroupName", "")

    def test_modules_of_main_stay_in_their_scope(self) -> None:
        """The modules main.bicep uses reach no other scope themselves."""
        used = {module["detail"]["path"] for module in template("main.bicep")["modules"].values()}
        for path in used:
            relative = path.removeprefix("./")
            assert not template(relative).get("modules"), relative
            assert "resourceGroup(" not in text(relative), relative

    def test_vault_side_is_its_own_deployment(self) -> None:
        """The vault side is deployed by the postprovision hook, under a name of its own."""
        azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
        assert "postprovision:" in azure_yaml
        assert "./infra/hooks/postprovision.sh" in azure_yaml
        assert "./infra/hooks/postprovision.ps1" in azure_yaml
        for hook in ("postprovision.sh", "postprovision.ps1"):
            source = (INFRA / "hooks" / hook).read_text(encoding="utf-8")
            assert "app/vaults.bicep" in source
            assert "cmk-vaults-" in source
        vaults = template("app/vaults.bicep")
        assert vaults["globals"]["scope"]["value"] == "subscription"
        outputs = template("main.bicep")["outputs"]
        for name in ("CMK_APP_PRINCIPAL_ID", "EVENT_VAULTS", "AZURE_RESOURCE_GROUP"):
            assert name in outputs
        assert set(vaults["parameters"]) >= {"appPrincipalId", "vaults", "appResourceGroup"}


def files_in_app_group() -> set[str]:
    """The files main.bicep deploys into the app's resource group (scope `rg`): what
    `azd down` deletes with that group."""
    return {
        module["detail"]["path"].removeprefix("./")
        for module in template("main.bicep")["modules"].values()
        if render(body(module)["scope"]) == "rg"
    }


def teardown_section() -> str:
    """The text of docs/deployment.md's `## Teardown` section."""
    doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    return doc.split("\n## Teardown\n", 1)[1].split("\n## ", 1)[0]


def role_name_stem(resource: dict[str, Any]) -> str:
    """A custom role's name up to its first interpolation: 'CMK rotator grant reader' of
    'CMK rotator grant reader (${environmentName}, ...)'."""
    name = str(body(resource)["properties"]["roleName"])
    return name.split("${", 1)[0].rstrip(" (")


def custom_roles_outside_app_group() -> list[tuple[str, str, str]]:
    """(file, symbolic name, role name stem) of every roleDefinitions resource deployed
    outside the app's resource group: what survives `azd down`."""
    inside = files_in_app_group()
    return [
        (relative, name, role_name_stem(resource))
        for relative, name, resource in resources_of_type("Microsoft.Authorization/roleDefinitions")
        if relative not in inside
    ]


def missing_from_teardown(section: str) -> list[str]:
    """The surviving custom roles that no row of ``section`` removes: a row must name the
    role in `az role assignment delete --role "<name> (` and `az role definition delete
    --name "<name> (`."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    missing = []
    for relative, name, stem in custom_roles_outside_app_group():
        removed = [
            row
            for row in rows
            if f'az role assignment delete --role "{stem} (' in row
            and f'az role definition delete --name "{stem} (' in row
        ]
        if not stem or not removed:
            missing.append(f"{relative}: {name} ({stem!r})")
    return missing


class TestTeardownDocs:
    """What `azd down` leaves behind is written down, with how to remove it."""

    def test_every_custom_role_outside_the_app_group_is_in_teardown(self) -> None:
        """Each roleDefinitions resource deployed outside the app's resource group survives
        `azd down`: docs/deployment.md's Teardown section has a row that deletes its
        assignments, then the definition, by its role name."""
        stems = {stem for _, _, stem in custom_roles_outside_app_group()}
        assert {
            "CMK rotator account operator",
            "CMK rotator app operator",
            "CMK rotator grant reader",
            "CMK rotator key rotator",
            "CMK rotator vault grant reader",
        } <= stems
        assert missing_from_teardown(teardown_section()) == []

    def test_the_guard_sees_a_role_missing_from_the_section(self) -> None:
        """Without the grant reader's row the guard names it (the vault grant reader's row,
        whose name contains 'grant reader', does not count for it)."""
        section = "\n".join(
            line
            for line in teardown_section().splitlines()
            if "CMK rotator grant reader (" not in line
        )
        assert missing_from_teardown(section) == [
            "app/rbac-subscription.bicep: grantReader ('CMK rotator grant reader')"
        ]


class TestAlerting:
    """Alert topic, action group, log alerts on every cmk_alert_type, poison-queue alert."""

    @pytest.fixture
    def parsed(self) -> dict[str, Any]:
        return template("app/alerting.bicep")

    def test_alert_topic_takes_cloud_events_only(self, parsed: dict[str, Any]) -> None:
        """The app publishes CloudEvents 1.0 only: the schema is fixed, not a parameter."""
        properties = parsed["resources"]["alertTopic"]["config"]["properties"]
        assert properties["inputSchema"] == "CloudEventSchemaV1_0"
        assert "alertTopicInputSchema" not in parsed["parameters"]
        assert "alertTopicInputSchema" not in template("main.bicep")["parameters"]
        assert "EventGridSchema" not in text("app/alerting.bicep")

    def test_alert_topic_entra_only(self, parsed: dict[str, Any]) -> None:
        """The custom topic takes Entra ID only (local auth off) over TLS 1.2."""
        properties = parsed["resources"]["alertTopic"]["config"]["properties"]
        assert properties["disableLocalAuth"] is True
        assert properties["minimumTlsVersionAllowed"] == "1.2"

    def test_log_rules_cover_every_alert_type(self, parsed: dict[str, Any]) -> None:
        """Together the log rules fire on exactly the alert types the app raises (and
        the log-only one of input it dropped)."""
        rules = parsed["variables"]["logAlertRules"]["value"]
        covered = [alert for rule in rules for alert in rule["alertTypes"]]
        assert sorted(covered) == sorted(ALERT_TYPES)
        assert {rule["severity"] for rule in rules} <= {0, 1, 2}

    def test_log_rule_query_and_action(self, parsed: dict[str, Any]) -> None:
        """The rules query ERROR traces by customDimensions.cmk_alert_type and notify the group."""
        resource = parsed["resources"]["logAlerts"]
        assert resource["type"] == "Microsoft.Insights/scheduledQueryRules"
        assert resource["config"]["loop_type"]["detail"]["array_name"] == "logAlertRules"
        properties = body(resource)["properties"]
        assert properties["scopes"] == ["applicationInsightsId"]
        assert properties["autoMitigate"] is True
        criterion = properties["criteria"]["allOf"][0]
        query = criterion["query"]
        assert "severityLevel >= 3" in query
        assert "customDimensions.cmk_alert_type" in query
        assert "${string(rule.alertTypes)}" in query
        assert criterion["operator"] == "GreaterThan"
        assert criterion["threshold"] == 0
        assert criterion["dimensions"][0]["name"] == "alertType"
        assert render(properties["actions"]["actionGroups"]) == "[actionGroup.id]"

    def test_poison_queue_rule(self, parsed: dict[str, Any]) -> None:
        """A message put on the poison queue fires an alert from the queue's resource logs."""
        properties = parsed["resources"]["poisonQueueAlert"]["config"]["properties"]
        assert properties["scopes"] == ["logAnalyticsWorkspaceId"]
        query = properties["criteria"]["allOf"][0]["query"]
        assert query.startswith("StorageQueueLogs")
        assert 'OperationName == "PutMessage"' in query
        assert "${poisonQueueName}" in query
        assert render(properties["actions"]["actionGroups"]) == "[actionGroup.id]"
        main_alerting = template("main.bicep")["modules"]["alerting"]["config"]["params"]
        assert render(main_alerting["poisonQueueName"]) == "storage.outputs.poisonQueueName"

    def test_sweep_failing_rule(self, parsed: dict[str, Any]) -> None:
        """A timer sweep whose every run of the last three hours failed fires an alert,
        from Application Insights' requests of the function function_app.py names sweep."""
        resource = parsed["resources"]["sweepFailingAlert"]
        properties = resource["config"]["properties"]
        assert properties["scopes"] == ["applicationInsightsId"]
        assert (properties["evaluationFrequency"], properties["windowSize"]) == ("PT1H", "PT3H")
        query = properties["criteria"]["allOf"][0]["query"]
        timers = [
            function.get_function_name()
            for function in function_app.app.get_functions()
            if any(binding.type == "timerTrigger" for binding in function.get_bindings())
        ]
        assert timers == ["sweep"]
        assert query.startswith('requests | where name == "sweep"')
        assert "failed == runs" in query and "runs > 0" in query
        assert render(properties["actions"]["actionGroups"]) == "[actionGroup.id]"

    def test_deployment_doc_alert_table_matches(self, parsed: dict[str, Any]) -> None:
        """docs/deployment.md's alert table lists each rule with its severity and types."""
        doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
        rows = {
            match.group(1): (int(match.group(2)), set(re.findall(r"`([a-z_]+)`", match.group(3))))
            for match in re.finditer(r"^  \| `([a-z-]+)` \| (\d) \| (.*) \|$", doc, re.MULTILINE)
        }
        rules = parsed["variables"]["logAlertRules"]["value"]
        expected = {rule["name"]: (rule["severity"], set(rule["alertTypes"])) for rule in rules}
        poison = parsed["resources"]["poisonQueueAlert"]["config"]["properties"]
        expected["poison-queue"] = (poison["severity"], set())  # its row names the queue
        sweep = parsed["resources"]["sweepFailingAlert"]["config"]["properties"]
        expected["sweep-failing"] = (sweep["severity"], set())  # its row names the function
        assert rows == expected

    def test_action_group_receivers_from_parameters(self, parsed: dict[str, Any]) -> None:
        """E-mail and webhook receivers come from parameters; the webhook URL is @secure."""
        properties = parsed["resources"]["actionGroup"]["config"]["properties"]
        assert "alertEmailAddress" in render(properties["emailReceivers"])
        assert "alertWebhookUrl" in render(properties["webhookReceivers"])
        decorators = parsed["parameters"]["alertWebhookUrl"]["decorators"]
        assert any(d["type"] == "secure" for d in decorators)


class TestAzdWiring:
    """azure.yaml and main.parameters.json fit main.bicep."""

    def test_azure_yaml_function_host(self) -> None:
        """One Python service hosted on Functions, Bicep infra in infra/."""
        azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
        assert re.search(r"^\s+host: function$", azure_yaml, re.MULTILINE)
        assert re.search(r"^\s+language: python$", azure_yaml, re.MULTILINE)
        assert re.search(r"^\s+provider: bicep$", azure_yaml, re.MULTILINE)
        site = template("app/function.bicep")["resources"]["functionApp"]["config"]
        service = re.search(r"^services:\n  (\w[\w-]*):$", azure_yaml, re.MULTILINE)
        assert service is not None
        assert service.group(1) in render(site["tags"])

    def test_parameters_file_matches_main(self) -> None:
        """Every parameter in main.parameters.json exists; every required one is set."""
        document = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
        given = set(document["parameters"])
        declared = template("main.bicep")["parameters"]
        assert given <= set(declared)
        required = {name for name, param in declared.items() if "default" not in param}
        assert required <= given

    def test_every_parameter_settable_from_azd(self) -> None:
        """An `azd up` user sets any parameter through an azd environment variable, with
        main.bicep's default beside it; only azureCloud is left to its computed default
        (the cloud the deployment runs in), which no variable could express."""
        document = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
        declared = template("main.bicep")["parameters"]
        assert set(declared) - set(document["parameters"]) == {"azureCloud"}
        for name, entry in document["parameters"].items():
            assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), name

    def test_parameter_bounds_are_documented(self) -> None:
        """docs/deployment.md lists every @minValue/@maxValue of main.bicep as it is: an
        operator learns the template's bounds before `azd provision` refuses a value."""
        docs = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
        listed = " ".join(docs.split())
        bounded = 0
        for name, param in template("main.bicep")["parameters"].items():
            bounds = {d["type"]: d.get("argument") for d in param.get("decorators", [])}
            low, high = bounds.get("min_value"), bounds.get("max_value")
            if low is None and high is None:
                continue
            bounded += 1
            shown = f"{low}\N{EN DASH}{high}" if high is not None else f"≥ {low}"
            assert f"`{name}` {shown}" in listed, (name, shown)
        assert bounded >= 10

    def test_main_is_subscription_scoped(self) -> None:
        """main.bicep creates the resource group (azd quickstart layout)."""
        main = template("main.bicep")
        assert main["globals"]["scope"]["value"] == "subscription"
        assert main["resources"]["rg"]["type"] == "Microsoft.Resources/resourceGroups"
