"""The clients the lifecycle commands add to :class:`cmk.wiring.Services`: one
``KeyVaultManagementClient`` per subscription (vault resources, and the ARM pipeline the
role-assignment reads go through), built with the same cloud endpoint, token scope, retry
and user agent as every other ARM client, and closed with :meth:`LifecycleClients.aclose`.
"""

from __future__ import annotations

from types import TracebackType

from azure.mgmt.keyvault.aio import KeyVaultManagementClient

from cmk.adapters.account_lifecycle import AccountLifecycle
from cmk.adapters.authorization import RoleAssignments
from cmk.adapters.vaults import KeyVaultResources
from cmk.lifecycle.context import Lifecycle
from cmk.usecases.context import Engine
from cmk.wiring import Services

__all__ = ["LifecycleClients"]


class LifecycleClients:
    """Vault resources and role assignments over ARM, for one :class:`Services`."""

    def __init__(self, services: Services) -> None:
        self.services = services

        def client_for(subscription_id: str) -> KeyVaultManagementClient:
            return KeyVaultManagementClient(
                services.credential, subscription_id, **services.arm_client_options()
            )

        self.vaults = KeyVaultResources(client_for)
        self.roles = RoleAssignments(self.vaults.client)

    def lifecycle(self, engine: Engine, *, trigger: str = "cli") -> Lifecycle:
        """The lifecycle ports over ``engine`` (its keys, accounts, ledger, settings, clock)."""
        return Lifecycle(
            keys=engine.keys,
            accounts=engine.accounts,
            writer=AccountLifecycle(self.services.accounts),
            vaults=self.vaults,
            roles=self.roles,
            ledger=engine.ledger,
            settings=engine.settings,
            now=engine.now,
            trigger=trigger,
        )

    async def aclose(self) -> None:
        await self.vaults.close()

    async def __aenter__(self) -> LifecycleClients:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
