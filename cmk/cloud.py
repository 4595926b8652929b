"""The Azure clouds cmk-rotator runs in, and where each one's services live.

The values of :class:`AzureCloud` match ``KeyId.cloud`` and the ``CMK_AZURE_CLOUD``
setting; :mod:`cmk.wiring` builds every client from :attr:`AzureCloud.endpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["AzureCloud", "CloudEndpoints"]


@dataclass(frozen=True)
class CloudEndpoints:
    """Where one Azure cloud's services live: host names and DNS suffixes."""

    arm_host: str
    authority_host: str
    key_vault_suffix: str
    managed_hsm_suffix: str
    event_grid_suffix: str
    storage_suffix: str

    @property
    def arm_endpoint(self) -> str:
        """Azure Resource Manager (also serves Resource Graph), e.g. https://management.azure.com."""
        return f"https://{self.arm_host}"

    @property
    def arm_scope(self) -> str:
        """The OAuth scope of ARM tokens, e.g. https://management.azure.com/.default."""
        return f"https://{self.arm_host}/.default"

    @property
    def resource_graph_endpoint(self) -> str:
        """Resource Graph is served by the ARM endpoint in every cloud."""
        return self.arm_endpoint


class AzureCloud(Enum):
    """The Azure cloud the app runs in (CMK_AZURE_CLOUD); values match ``KeyId.cloud``."""

    PUBLIC = "public"
    CHINA = "china"
    US_GOVERNMENT = "usgovernment"

    @property
    def endpoints(self) -> CloudEndpoints:
        """The endpoints and DNS suffixes of this cloud."""
        return _ENDPOINTS[self]


_ENDPOINTS = {
    cloud: CloudEndpoints(*hosts)
    for cloud, hosts in {
        AzureCloud.PUBLIC: (
            "management.azure.com",
            "login.microsoftonline.com",
            "vault.azure.net",
            "managedhsm.azure.net",
            "eventgrid.azure.net",
            "core.windows.net",
        ),
        AzureCloud.CHINA: (
            "management.chinacloudapi.cn",
            "login.chinacloudapi.cn",
            "vault.azure.cn",
            "managedhsm.azure.cn",
            "eventgrid.azure.cn",
            "core.chinacloudapi.cn",
        ),
        AzureCloud.US_GOVERNMENT: (
            "management.usgovcloudapi.net",
            "login.microsoftonline.us",
            "vault.usgovcloudapi.net",
            "managedhsm.usgovcloudapi.net",
            "eventgrid.azure.us",
            "core.usgovcloudapi.net",
        ),
    }.items()
}
