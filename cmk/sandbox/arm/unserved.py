"""What ARM answers for a call the sandbox does not serve, for :mod:`cmk.sandbox.arm.service`.

Azure serves far more than the sandbox emulates (``az eventgrid system-topic list``,
``az identity list``, ``accounts/{name}/listKeys``, ``deletedAccounts``, ...). A 404
``InvalidResourceType`` for those would be a lie a client could act on ("no such type"), so a
path whose last ``/providers/{namespace}/{type}`` names a real type of a real namespace
answers 501 ``NotImplemented`` — "The sandbox does not emulate …", as the Key Vault data plane
says for its gaps. A namespace or type Azure does not have keeps ARM's 404
``InvalidResourceType`` ("The resource type could not be found …").

:data:`REAL_TYPES` holds, per namespace, the top-level resource types and actions of its
resource-manager spec in Azure/azure-rest-api-specs (``specification/{service}/
resource-manager/{namespace}``: the first segment after ``providers/{namespace}/`` in its
paths), for the namespaces a user of this app meets. It is not Azure's whole catalogue: a
real type missing from it still answers 404.
"""

from __future__ import annotations

import re

from cmk.sandbox.arm.errors import ArmError, not_implemented

REAL_TYPES: dict[str, tuple[str, ...]] = {
    "Microsoft.CognitiveServices": (
        "accounts", "deletedAccounts", "commitmentPlans", "locations", "operations",
        "checkDomainAvailability", "skus", "modelCapacities", "calculateModelCapacity",
    ),
    "Microsoft.KeyVault": (
        "vaults", "managedHSMs", "deletedVaults", "deletedManagedHSMs", "locations",
        "operations", "checkNameAvailability", "checkMhsmNameAvailability",
    ),
    "Microsoft.EventGrid": (
        "topics", "systemTopics", "domains", "eventSubscriptions", "namespaces",
        "partnerNamespaces", "partnerRegistrations", "partnerConfigurations", "partnerTopics",
        "partnerDestinations", "topicTypes", "extensionTopics", "verifiedPartners",
        "locations", "operations",
    ),
    "Microsoft.ManagedIdentity": ("userAssignedIdentities", "identities", "operations"),
    "Microsoft.Authorization": (
        "roleAssignments", "roleDefinitions", "denyAssignments", "locks", "permissions",
        "policyAssignments", "policyDefinitions", "policySetDefinitions", "policyExemptions",
        "providerOperations", "classicAdministrators", "roleAssignmentSchedules",
        "roleAssignmentScheduleInstances", "roleAssignmentScheduleRequests",
        "roleEligibilitySchedules", "roleEligibilityScheduleInstances",
        "roleEligibilityScheduleRequests", "roleManagementPolicies",
        "roleManagementPolicyAssignments", "eligibleChildResources", "elevateAccess",
        "operations",
    ),
    "Microsoft.Resources": (
        "deployments", "deploymentScripts", "deploymentStacks", "templateSpecs", "tags",
        "links", "resources", "calculateTemplateHash", "changes", "snapshots", "operations",
    ),
    "Microsoft.ResourceGraph": (
        "resources", "resourcesHistory", "resourceChanges", "resourceChangeDetails",
        "queries", "operations",
    ),
    "Microsoft.Storage": (
        "storageAccounts", "deletedAccounts", "storageTasks", "locations", "operations",
        "checkNameAvailability", "usages", "skus",
    ),
    "Microsoft.Web": (
        "sites", "serverfarms", "certificates", "staticSites", "hostingEnvironments",
        "kubeEnvironments", "connections", "connectionGateways", "customApis", "deletedSites",
        "sourcecontrols", "publishingUsers", "recommendations", "resourceHealthMetadata",
        "geoRegions", "availableStacks", "functionAppStacks", "webAppStacks",
        "deploymentLocations", "billingMeters", "premieraddonoffers", "listSitesAssignedToHostName",
        "checknameavailability", "validate", "locations", "operations", "skus",
    ),
    "Microsoft.Insights": (
        "components", "actionGroups", "activityLogAlerts", "metricAlerts", "scheduledQueryRules",
        "autoscaleSettings", "diagnosticSettings", "diagnosticSettingsCategories",
        "dataCollectionRules", "dataCollectionEndpoints", "dataCollectionRuleAssociations",
        "eventtypes", "metrics", "metricDefinitions", "metricNamespaces", "logProfiles",
        "alertRules", "webtests", "workbooks", "workbookTemplates", "myWorkbooks",
        "privateLinkScopes", "operations", "locations",
    ),
    "Microsoft.OperationalInsights": (
        "workspaces", "deletedWorkspaces", "clusters", "queryPacks", "linkTargets",
        "locations", "operations",
    ),
}  # fmt: skip
_BY_NAMESPACE = {
    ns.lower(): (ns, {t.lower(): t for t in types}) for ns, types in REAL_TYPES.items()
}
_PROVIDER_TYPE = re.compile(r"/providers/(?P<namespace>[^/]+)/(?P<type>[^/]+)", re.IGNORECASE)


def real_type(path: str) -> str | None:
    """``Namespace/type`` (Azure's spelling) of the last ``/providers/{namespace}/{type}`` of
    ``path`` when Azure has it, else None."""
    matches = list(_PROVIDER_TYPE.finditer(path))
    if not matches:
        return None
    last = matches[-1]
    namespace = _BY_NAMESPACE.get(last["namespace"].lower())
    if namespace is None:
        return None
    name, types = namespace
    rtype = types.get(last["type"].lower())
    return f"{name}/{rtype}" if rtype else None


def unserved(method: str, path: str, api_version: str) -> ArmError:
    """The answer to a path no sandbox route serves: 501 ``NotImplemented`` for a real type,
    else ARM's 404 ``InvalidResourceType``."""
    rtype = real_type(path)
    if rtype is not None:
        return not_implemented(
            f"{method.upper()} {path} ({rtype}: Azure serves it; docs/sandbox.md lists what "
            "the sandbox serves)"
        )
    return ArmError(
        404,
        "InvalidResourceType",
        f"The resource type could not be found for the path '{path}' with api-version "
        f"'{api_version}'.",
    )
