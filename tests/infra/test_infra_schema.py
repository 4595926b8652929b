"""Every resource body in every Bicep file, checked against Azure's own models for its type
and API version (the azure-mgmt-* packages, generated from the REST specs).

The template tests name the keys they care about; these catch what no test names: a
misspelt property, a property of another API version, a read-only one, a wrong literal
type, a value outside an enum, a discriminator no subtype answers to.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from pycep import BicepParser

from tests.infra.arm_schema import (
    ModelRef,
    Problem,
    Validator,
    load_model,
    models_from_spec,
    operations_api_version,
)

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DATA = Path(__file__).parent / "data"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

_EG = "azure.mgmt.eventgrid"
_MONITOR = "azure.mgmt.monitor"
_STORAGE = "azure.mgmt.storage.v2023_05_01.models"
_WEB = "azure.mgmt.web.v2024_04_01.models"
_AUTH = "azure.mgmt.authorization.v2022_04_01.models"

#: (resource type, API version) -> the model its PUT body is. Packages with one subpackage per
#: API version are pinned to that subpackage; the others name the operations module whose
#: default api-version must match (checked below).
MODELS: dict[tuple[str, str], ModelRef] = {
    ("Microsoft.Resources/resourceGroups", "2024-11-01"): ModelRef(
        "azure.mgmt.resource.resources.v2024_11_01.models", "ResourceGroup"
    ),
    ("Microsoft.ManagedIdentity/userAssignedIdentities", "2023-01-31"): ModelRef(
        "azure.mgmt.msi.v2023_01_31.models", "Identity"
    ),
    ("Microsoft.Storage/storageAccounts", "2023-05-01"): ModelRef(
        _STORAGE, "StorageAccountCreateParameters"
    ),
    ("Microsoft.Storage/storageAccounts/blobServices", "2023-05-01"): ModelRef(
        _STORAGE, "BlobServiceProperties"
    ),
    ("Microsoft.Storage/storageAccounts/blobServices/containers", "2023-05-01"): ModelRef(
        _STORAGE, "BlobContainer"
    ),
    ("Microsoft.Storage/storageAccounts/queueServices", "2023-05-01"): ModelRef(
        _STORAGE, "QueueServiceProperties"
    ),
    ("Microsoft.Storage/storageAccounts/queueServices/queues", "2023-05-01"): ModelRef(
        _STORAGE, "StorageQueue"
    ),
    ("Microsoft.Storage/storageAccounts/tableServices", "2023-05-01"): ModelRef(
        _STORAGE, "TableServiceProperties"
    ),
    ("Microsoft.Storage/storageAccounts/tableServices/tables", "2023-05-01"): ModelRef(
        _STORAGE, "Table"
    ),
    ("Microsoft.Insights/components", "2020-02-02"): ModelRef(
        "azure.mgmt.applicationinsights.v2020_02_02.models", "ApplicationInsightsComponent"
    ),
    ("Microsoft.OperationalInsights/workspaces", "2025-07-01"): ModelRef(
        "azure.mgmt.loganalytics.models",
        "Workspace",
        "azure.mgmt.loganalytics.operations._workspaces_operations",
    ),
    ("Microsoft.Insights/actionGroups", "2023-01-01"): ModelRef(
        f"{_MONITOR}.models",
        "ActionGroupResource",
        f"{_MONITOR}.operations._action_groups_operations",
    ),
    ("Microsoft.Insights/scheduledQueryRules", "2023-12-01"): ModelRef(
        f"{_MONITOR}.models",
        "ScheduledQueryRuleResource",
        f"{_MONITOR}.operations._scheduled_query_rules_operations",
    ),
    ("Microsoft.Web/serverfarms", "2024-04-01"): ModelRef(_WEB, "AppServicePlan"),
    ("Microsoft.Web/sites", "2024-04-01"): ModelRef(_WEB, "Site"),
    ("Microsoft.Web/sites/basicPublishingCredentialsPolicies", "2024-04-01"): ModelRef(
        _WEB, "CsmPublishingCredentialsPoliciesEntity"
    ),
    ("Microsoft.EventGrid/topics", "2025-02-15"): ModelRef(
        f"{_EG}.models", "Topic", f"{_EG}.operations._topics_operations"
    ),
    ("Microsoft.EventGrid/systemTopics", "2025-02-15"): ModelRef(
        f"{_EG}.models", "SystemTopic", f"{_EG}.operations._system_topics_operations"
    ),
    ("Microsoft.EventGrid/systemTopics/eventSubscriptions", "2025-02-15"): ModelRef(
        f"{_EG}.models",
        "EventSubscription",
        f"{_EG}.operations._system_topic_event_subscriptions_operations",
    ),
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"): ModelRef(
        _AUTH, "RoleAssignmentCreateParameters"
    ),
    ("Microsoft.Authorization/roleDefinitions", "2022-04-01"): ModelRef(_AUTH, "RoleDefinition"),
}

#: Types no installed package has a model for at that API version (azure-mgmt-monitor 7.x,
#: needed for scheduledQueryRules 2023-12-01, dropped diagnostic settings; 6.x lacks the GA
#: rule API): checked against models built from the REST spec's definitions, vendored under
#: tests/infra/data with their source.
SPEC_MODELS: dict[tuple[str, str], tuple[str, str]] = {
    ("Microsoft.Insights/diagnosticSettings", "2021-05-01-preview"): (
        "diagnosticsSettings-2021-05-01-preview-definitions.json",
        "DiagnosticSettingsResource",
    ),
}

#: Types checked by neither, each with the reason. Asserted exactly: a new gap is a
#: decision, not an accident.
UNCHECKED: dict[tuple[str, str], str] = {}


@cache
def parsed(path: Path) -> dict[str, Any]:
    """The parsed template."""
    result: dict[str, Any] = cast(dict[str, Any], BicepParser().parse(file_path=path))
    return result


def declared_resources() -> list[tuple[str, str, dict[str, Any]]]:
    """(file, symbolic name, resource) of every resource a template deploys (not `existing`)."""
    found = []
    for path in BICEP_FILES:
        for name, resource in parsed(path).get("resources", {}).items():
            if not resource["existing"]:
                found.append((path.relative_to(INFRA).as_posix(), name, resource))
    return found


RESOURCES = declared_resources()


@cache
def spec_models(file: str) -> ModuleType:
    """The models built from a vendored REST spec's definitions."""
    document = json.loads((DATA / file).read_text(encoding="utf-8"))
    assert "https://github.com/Azure/azure-rest-api-specs/blob/" in document["_source"]
    return models_from_spec(file, document["definitions"])


def model_of(resource: dict[str, Any]) -> tuple[type, ModuleType]:
    """The model class of a resource's type and API version, and its models module."""
    key = (resource["type"], resource["api_version"])
    if key in SPEC_MODELS:
        file, name = SPEC_MODELS[key]
        models = spec_models(file)
        model: type = getattr(models, name)
        return model, models
    return load_model(MODELS[key])


def check(relative: str, resource: dict[str, Any]) -> list[Problem]:
    """Problems of one resource body against its model."""
    model, models = model_of(resource)
    config = resource["config"]
    loops: frozenset[str] = frozenset()
    if "loop_type" in config:
        detail = config["loop_type"]["detail"]
        loops = frozenset(
            name for name in (detail.get("item_name"), detail.get("index_name")) if name
        )
        config = config["config"]
    validator = Validator(parsed(INFRA / relative), models)
    return validator.check_body(config, model, loops)


def with_body(text: str) -> dict[str, Any]:
    """A one-resource template parsed from ``text``."""
    result: dict[str, Any] = cast(dict[str, Any], BicepParser().parse(text=text))
    return result


def problems_of(text: str) -> list[str]:
    """The problems the checker finds in the first resource of a Bicep snippet."""
    template = with_body(text)
    resource = next(iter(template["resources"].values()))
    ref = MODELS[(resource["type"], resource["api_version"])]
    model, models = load_model(ref)
    return [str(p) for p in Validator(template, models).check_body(resource["config"], model)]


class TestEveryResource:
    """Each deployed resource has a model, and its body fits it."""

    def test_resources_found(self) -> None:
        """The walk sees the resources of every file that declares any (not just main.bicep)."""
        files = {relative for relative, _, _ in RESOURCES}
        assert len(RESOURCES) >= 25
        assert {"app/function.bicep", "app/storage.bicep", "app/vaults.bicep"} - files == {
            "app/vaults.bicep"  # modules only
        }

    def test_every_type_and_version_is_known(self) -> None:
        """Each (type, API version) deployed has a model or a written reason it has none."""
        used = {(r["type"], r["api_version"]) for _, _, r in RESOURCES}
        assert used - set(MODELS) - set(SPEC_MODELS) == set(UNCHECKED)
        assert set(MODELS) <= used, "a model entry no template uses"

    @pytest.mark.parametrize("key", sorted(MODELS), ids="@".join)
    def test_model_is_that_api_version(self, key: tuple[str, str]) -> None:
        """The model is generated from the API version the template deploys."""
        ref = MODELS[key]
        if ref.operations is None:
            assert f".v{key[1].replace('-', '_')}." in f"{ref.module}."
        else:
            assert operations_api_version(ref) == {key[1]}
        model, _ = load_model(ref)
        assert hasattr(model, "_attribute_map")

    @pytest.mark.parametrize(
        ("relative", "name", "resource"),
        [
            pytest.param(rel, name, res, id=f"{rel}:{name}")
            for rel, name, res in RESOURCES
            if (res["type"], res["api_version"]) in MODELS | SPEC_MODELS
        ],
    )
    def test_body_fits_model(self, relative: str, name: str, resource: dict[str, Any]) -> None:
        """No unknown or read-only property, wrong type, bad enum or unknown subtype."""
        assert check(relative, resource) == []


class TestCheckerCatches:
    """The checker is not vacuous: planted mistakes are found."""

    @pytest.mark.parametrize(
        ("original", "planted", "expected"),
        [
            (
                "workspaceId: logAnalyticsWorkspaceId",
                "workspaceID: logAnalyticsWorkspaceId",
                "properties.workspaceID: no such property",
            ),
            (
                "category: 'StorageWrite'\n        enabled: true",
                "category: 'StorageWrite'\n        enabled: 'true'",
                "properties.logs[0].enabled: 'true' is not of type bool",
            ),
        ],
        ids=["typo", "wrong-type"],
    )
    def test_planted_in_the_diagnostic_setting(
        self, original: str, planted: str, expected: str
    ) -> None:
        """The diagnostic setting, checked against models built from the spec, is not
        vacuous either: a typo or a wrong literal type is found."""
        source = (INFRA / "app" / "storage.bicep").read_text(encoding="utf-8")
        assert source.count(original) == 1
        template = cast(dict[str, Any], BicepParser().parse(text=source.replace(original, planted)))
        resource = template["resources"]["queueDiagnostics"]
        model, models = model_of(resource)
        found = [str(p) for p in Validator(template, models).check_body(resource["config"], model)]
        assert any(expected in problem for problem in found), found

    @pytest.mark.parametrize(
        ("original", "planted", "expected"),
        [
            (
                "allowSharedKeyAccess: false",
                "allowSharedKeyAcess: false",
                "properties.allowSharedKeyAcess: no such property",
            ),
            (
                "minimumTlsVersion: 'TLS1_2'",
                "minimumTlsVersion: 'TLS1_4'",
                "properties.minimumTlsVersion: 'TLS1_4' is not one of",
            ),
        ],
        ids=["typo", "bad-enum"],
    )
    def test_planted_in_the_real_template(self, original: str, planted: str, expected: str) -> None:
        """A typo or a bad enum planted in the real storage.bicep fails its check."""
        source = (INFRA / "app" / "storage.bicep").read_text(encoding="utf-8")
        assert source.count(original) == 1
        template = cast(dict[str, Any], BicepParser().parse(text=source.replace(original, planted)))
        resource = template["resources"]["storageAccount"]
        model, models = load_model(MODELS[(resource["type"], resource["api_version"])])
        found = [str(p) for p in Validator(template, models).check_body(resource["config"], model)]
        assert len(found) == 1
        assert found[0].startswith(expected)

    SITE = """
param name string
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: 'westeurope'
  kind: 'functionapp,linux'
  properties: {
    httpsOnly: true
    siteConfig: {
      %s
    }
  }
}
"""

    def test_clean_snippet_passes(self) -> None:
        """A correct body yields no problem (so the cases below fail for their mistake)."""
        assert problems_of(self.SITE % "minTlsVersion: '1.2'") == []

    def test_typo_in_property(self) -> None:
        """A misspelt nested property (minTlsVerison) is reported with its path."""
        found = problems_of(self.SITE % "minTlsVerison: '1.2'")
        assert len(found) == 1
        assert found[0].startswith("properties.siteConfig.minTlsVerison: no such property")

    def test_bad_enum(self) -> None:
        """A value outside the property's enum (ftpsState) is reported."""
        found = problems_of(self.SITE % "ftpsState: 'Off'")
        assert found == [
            "properties.siteConfig.ftpsState: 'Off' is not one of"
            " ['allallowed', 'disabled', 'ftpsonly']"
        ]

    def test_enum_is_case_insensitive(self) -> None:
        """ARM compares enum values without case: 'disabled' is as good as 'Disabled'."""
        assert problems_of(self.SITE % "ftpsState: 'disabled'") == []

    def test_wrong_literal_type(self) -> None:
        """A string where a bool goes is reported."""
        found = problems_of(self.SITE % "http20Enabled: 'yes'")
        assert found == ["properties.siteConfig.http20Enabled: 'yes' is not of type bool"]

    def test_read_only_property(self) -> None:
        """Setting a read-only property (defaultHostName) is reported."""
        found = problems_of(
            self.SITE.replace("httpsOnly: true", "httpsOnly: true\n    defaultHostName: 'x'")
            % "minTlsVersion: '1.2'"
        )
        assert found == ["properties.defaultHostName: read-only property"]

    def test_parameter_reference_is_not_checked(self) -> None:
        """A parameter stands for a value known at deployment only: it passes."""
        assert problems_of(self.SITE % "ftpsState: name") == []

    def test_both_branches_of_a_conditional(self) -> None:
        """Each branch of `cond ? a : b` is checked."""
        found = problems_of(self.SITE % "ftpsState: empty(name) ? 'Disabled' : 'Sometimes'")
        assert found == [
            "properties.siteConfig.ftpsState: 'Sometimes' is not one of"
            " ['allallowed', 'disabled', 'ftpsonly']"
        ]

    SUBSCRIPTION = """
resource sub 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  name: 'x'
  properties: {
    destination: {
      endpointType: '%s'
      properties: {
        %s
      }
    }
  }
}
"""

    def test_discriminated_subtype_properties(self) -> None:
        """The subtype's own properties are known once the discriminator selects it."""
        body = self.SUBSCRIPTION % (
            "AzureFunction",
            "resourceId: 'r'\n        maxEventsPerBatch: 1",
        )
        assert problems_of(body) == []

    def test_property_of_another_subtype(self) -> None:
        """A webhook's endpointUrl on an AzureFunction destination is unknown."""
        found = problems_of(self.SUBSCRIPTION % ("AzureFunction", "endpointUrl: 'https://x'"))
        assert len(found) == 1
        assert found[0].startswith("properties.destination.properties.endpointUrl: no such")

    def test_unknown_discriminator(self) -> None:
        """An endpointType no subtype answers to is reported."""
        found = problems_of(self.SUBSCRIPTION % ("AzureFunctions", "resourceId: 'r'"))
        assert len(found) == 1
        assert "'AzureFunctions' is not a EventSubscriptionDestination type" in found[0]

    def test_variable_is_resolved(self) -> None:
        """A variable's declared value is checked where it is used."""
        text = """
var retry = {
  maxDeliveryAttempts: 30
  eventTimeToLive: 1440
}
resource sub 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  name: 'x'
  properties: {
    retryPolicy: retry
  }
}
"""
        found = problems_of(text)
        assert len(found) == 1
        assert found[0].startswith("properties.retryPolicy.eventTimeToLive: no such property")
