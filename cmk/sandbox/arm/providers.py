"""What ARM says about resource providers and regions, for :mod:`cmk.sandbox.arm.resources`:
``Providers_Get`` / ``Providers_List`` (``resources.json`` of Microsoft.Resources) for the
namespaces the sandbox emulates, and ``Subscriptions_ListLocations`` (``subscriptions.json``).

``az resource show --ids <id>`` (with no ``--api-version``) and ``az provider show`` read
``GET /subscriptions/{s}/providers/{namespace}`` to learn a type's API versions, then use the
newest stable one; ``az account list-locations`` reads ``GET /subscriptions/{s}/locations``.

Shapes (``Provider``: ``id``, ``namespace``, ``registrationState``, ``registrationPolicy``,
``resourceTypes[]`` of ``ProviderResourceType`` with ``resourceType``, ``locations``,
``apiVersions``; ``Location``: ``id``, ``name``, ``type``, ``displayName``,
``regionalDisplayName``, ``metadata``) follow the spec and its examples (``GetProviders.json``
2024-11-01, ``GetLocations.json`` 2022-12-01, which show no ``subscriptionId``). What the sandbox
chooses, as it cannot know Azure's live catalogue:

* only the emulated namespaces and types are listed, each ``Registered``; another namespace
  answers 404 ``InvalidResourceNamespace`` (on Azure a real but unregistered namespace
  answers 200 with ``NotRegistered``);
* ``apiVersions`` are the versions the sandbox's routes are written against and the SDKs it
  is tested with send, newest first — Azure's lists are longer;
* a regional type's ``locations`` are the display names of :data:`REGIONS` and of the
  world's own regions; global types (role assignments, Resource Graph) list none;
* :data:`REGIONS` holds the common public regions with the display names, geography and
  paired region ``az account list-locations`` shows; coordinates and availability-zone
  mappings are left out, and every region is ``Physical`` / ``Recommended``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmk.sandbox.arm.cognitive.accounts import ArmError
from cmk.sandbox.world import World

COGNITIVE_VERSIONS = (
    "2025-09-01", "2025-06-01", "2024-10-01", "2023-05-01", "2022-12-01", "2021-10-01",
    "2017-04-18",
)  # fmt: skip
KEYVAULT_VERSIONS = (
    "2024-11-01", "2023-07-01", "2023-02-01", "2022-07-01", "2021-10-01", "2019-09-01",
    "2018-02-14", "2016-10-01", "2015-06-01",
)  # fmt: skip
HSM_VERSIONS = ("2024-11-01", "2023-07-01", "2023-02-01", "2022-07-01", "2021-10-01")
EVENTGRID_VERSIONS = ("2025-02-15", "2022-06-15", "2021-12-01", "2020-06-01")
IDENTITY_VERSIONS = ("2023-01-31", "2018-11-30")
AUTHORIZATION_VERSIONS = ("2022-04-01", "2018-01-01-preview", "2015-07-01")
GRAPH_VERSIONS = ("2024-04-01", "2022-10-01", "2021-03-01", "2020-04-01-preview", "2019-04-01")


@dataclass(frozen=True)
class ResourceType:
    name: str
    api_versions: tuple[str, ...]
    regional: bool = True


@dataclass(frozen=True)
class Namespace:
    name: str
    types: tuple[ResourceType, ...]
    registration_policy: str = "RegistrationRequired"


def _namespaces(resources_versions: tuple[str, ...]) -> dict[str, Namespace]:
    namespaces = (
        Namespace(
            "Microsoft.CognitiveServices",
            (
                ResourceType("accounts", COGNITIVE_VERSIONS),
                ResourceType("locations", COGNITIVE_VERSIONS),
                ResourceType("locations/operationResults", COGNITIVE_VERSIONS),
            ),
        ),
        Namespace(
            "Microsoft.KeyVault",
            (ResourceType("vaults", KEYVAULT_VERSIONS), ResourceType("managedHSMs", HSM_VERSIONS)),
        ),
        Namespace("Microsoft.EventGrid", (ResourceType("topics", EVENTGRID_VERSIONS),)),
        Namespace(
            "Microsoft.ManagedIdentity",
            (ResourceType("userAssignedIdentities", IDENTITY_VERSIONS),),
        ),
        Namespace(
            "Microsoft.Authorization",
            (
                ResourceType("roleAssignments", AUTHORIZATION_VERSIONS, regional=False),
                ResourceType("roleDefinitions", AUTHORIZATION_VERSIONS, regional=False),
            ),
            "RegistrationFree",
        ),
        Namespace(
            "Microsoft.ResourceGraph",
            (ResourceType("resources", GRAPH_VERSIONS, regional=False),),
        ),
        Namespace(
            "Microsoft.Resources",
            (
                ResourceType("tenants", resources_versions, regional=False),
                ResourceType("subscriptions", resources_versions, regional=False),
                ResourceType("subscriptions/locations", resources_versions, regional=False),
                ResourceType("subscriptions/providers", resources_versions, regional=False),
                ResourceType("subscriptions/resourceGroups", resources_versions, regional=False),
                ResourceType("resourceGroups", resources_versions, regional=False),
                ResourceType("subscriptions/resources", resources_versions, regional=False),
            ),
            "RegistrationFree",
        ),
    )
    return {n.name.lower(): n for n in namespaces}


@dataclass(frozen=True)
class Region:
    name: str
    display_name: str
    geography_group: str
    geography: str
    physical_location: str
    paired: str | None


REGIONS: tuple[Region, ...] = (
    Region("eastus", "East US", "US", "United States", "Virginia", "westus"),
    Region("eastus2", "East US 2", "US", "United States", "Virginia", "centralus"),
    Region("westus", "West US", "US", "United States", "California", "eastus"),
    Region("westus2", "West US 2", "US", "United States", "Washington", "westcentralus"),
    Region("westus3", "West US 3", "US", "United States", "Phoenix", "eastus"),
    Region("centralus", "Central US", "US", "United States", "Iowa", "eastus2"),
    Region("northcentralus", "North Central US", "US", "United States", "Illinois",
           "southcentralus"),
    Region("southcentralus", "South Central US", "US", "United States", "Texas",
           "northcentralus"),
    Region("westcentralus", "West Central US", "US", "United States", "Wyoming", "westus2"),
    Region("canadacentral", "Canada Central", "Canada", "Canada", "Toronto", "canadaeast"),
    Region("brazilsouth", "Brazil South", "South America", "Brazil", "Sao Paulo State",
           "southcentralus"),
    Region("northeurope", "North Europe", "Europe", "Europe", "Ireland", "westeurope"),
    Region("westeurope", "West Europe", "Europe", "Europe", "Netherlands", "northeurope"),
    Region("uksouth", "UK South", "Europe", "United Kingdom", "London", "ukwest"),
    Region("ukwest", "UK West", "Europe", "United Kingdom", "Cardiff", "uksouth"),
    Region("francecentral", "France Central", "Europe", "France", "Paris", "francesouth"),
    Region("germanywestcentral", "Germany West Central", "Europe", "Germany", "Frankfurt",
           "germanynorth"),
    Region("switzerlandnorth", "Switzerland North", "Europe", "Switzerland", "Zurich",
           "switzerlandwest"),
    Region("swedencentral", "Sweden Central", "Europe", "Sweden", "Gävle", "swedensouth"),
    Region("norwayeast", "Norway East", "Europe", "Norway", "Norway", "norwaywest"),
    Region("polandcentral", "Poland Central", "Europe", "Poland", "Warsaw", None),
    Region("italynorth", "Italy North", "Europe", "Italy", "Milan", None),
    Region("australiaeast", "Australia East", "Asia Pacific", "Australia", "New South Wales",
           "australiasoutheast"),
    Region("southeastasia", "Southeast Asia", "Asia Pacific", "Asia Pacific", "Singapore",
           "eastasia"),
    Region("eastasia", "East Asia", "Asia Pacific", "Asia Pacific", "Hong Kong",
           "southeastasia"),
    Region("japaneast", "Japan East", "Asia Pacific", "Japan", "Tokyo, Saitama", "japanwest"),
    Region("koreacentral", "Korea Central", "Asia Pacific", "Korea", "Seoul", "koreasouth"),
    Region("centralindia", "Central India", "Asia Pacific", "India", "Pune", "southindia"),
    Region("uaenorth", "UAE North", "Middle East", "UAE", "Dubai", "uaecentral"),
    Region("southafricanorth", "South Africa North", "Africa", "South Africa", "Johannesburg",
           "southafricawest"),
)  # fmt: skip
_BY_NAME = {r.name: r for r in REGIONS}


def world_regions(world: World) -> list[Region]:
    """:data:`REGIONS` and any other region the world's resources are in (named by itself)."""
    used = {
        *(v.location.replace(" ", "").lower() for v in world.vaults.values()),
        *(a.location.replace(" ", "").lower() for a in world.accounts.values()),
    }
    extra = [Region(name, name, "", "", "", None) for name in sorted(used - set(_BY_NAME))]
    return [*REGIONS, *extra]


def location_json(region: Region, subscription_id: str) -> dict[str, Any]:
    """A ``Location`` of ``Subscriptions_ListLocations``."""
    base = f"/subscriptions/{subscription_id}/locations"
    metadata: dict[str, Any] = {"regionType": "Physical", "regionCategory": "Recommended"}
    if region.geography_group:
        metadata |= {
            "geography": region.geography,
            "geographyGroup": region.geography_group,
            "physicalLocation": region.physical_location,
            "pairedRegion": (
                [{"name": region.paired, "id": f"{base}/{region.paired}"}] if region.paired else []
            ),
        }
    regional = (
        f"({region.geography_group}) {region.display_name}"
        if region.geography_group
        else region.display_name
    )
    return {
        "id": f"{base}/{region.name}",
        "name": region.name,
        "type": "Region",
        "displayName": region.display_name,
        "regionalDisplayName": regional,
        "metadata": metadata,
    }


class Providers:
    """The provider catalogue of one world."""

    def __init__(self, world: World, resources_versions: tuple[str, ...]) -> None:
        self.world = world
        self.namespaces = _namespaces(resources_versions)

    def provider_json(self, namespace: Namespace, subscription_id: str) -> dict[str, Any]:
        """A ``Provider`` body, every namespace ``Registered``."""
        locations = [r.display_name for r in world_regions(self.world)]
        return {
            "id": f"/subscriptions/{subscription_id}/providers/{namespace.name}",
            "namespace": namespace.name,
            "registrationState": "Registered",
            "registrationPolicy": namespace.registration_policy,
            "resourceTypes": [
                {
                    "resourceType": t.name,
                    "locations": locations if t.regional else [],
                    "apiVersions": list(t.api_versions),
                }
                for t in namespace.types
            ],
        }

    def get(self, name: str, subscription_id: str) -> dict[str, Any]:
        """``Providers_Get``; 404 ``InvalidResourceNamespace`` for a namespace not emulated."""
        namespace = self.namespaces.get(name.lower())
        if namespace is None:
            raise ArmError(
                404, "InvalidResourceNamespace", f"The resource namespace '{name}' is invalid."
            )
        return self.provider_json(namespace, subscription_id)

    def list_all(self, subscription_id: str) -> list[dict[str, Any]]:
        """``Providers_List``: every emulated namespace, by name."""
        return [
            self.provider_json(n, subscription_id)
            for n in sorted(self.namespaces.values(), key=lambda n: n.name.lower())
        ]

    def locations(self, subscription_id: str) -> list[dict[str, Any]]:
        """``Subscriptions_ListLocations``."""
        return [location_json(r, subscription_id) for r in world_regions(self.world)]
