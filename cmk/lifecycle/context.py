"""What the lifecycle use cases talk to: the engine's ports plus vault resources, role
assignments and the account writes of the lifecycle (our protocols, met by the adapters)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cmk.keyid import KeyId
from cmk.lifecycle.model import AccountIdentity, RoleGrant, VaultRecord
from cmk.policy import VersionPolicy
from cmk.ports import AccountStore, KeyStore, Ledger, UpdateOutcome
from cmk.resource_id import AccountId
from cmk.settings import Settings

__all__ = ["AccountWriter", "Lifecycle", "RoleReader", "VaultDirectory"]


class VaultDirectory(Protocol):
    """Vault resources in ARM (:class:`cmk.adapters.vaults.KeyVaultResources`)."""

    async def find(self, key: KeyId, subscriptions: Sequence[str]) -> VaultRecord: ...


class RoleReader(Protocol):
    """Role assignments (:class:`cmk.adapters.authorization.RoleAssignments`)."""

    async def grants_for(self, principal_id: str, scope: str) -> list[RoleGrant]: ...


class AccountWriter(Protocol):
    """The lifecycle's account writes (:class:`cmk.adapters.accounts.CognitiveAccounts`)."""

    async def identity(self, account_id: AccountId) -> AccountIdentity: ...

    async def enable_system_identity(self, account_id: AccountId) -> AccountIdentity: ...

    async def set_encryption(
        self,
        account_id: AccountId,
        key: KeyId,
        identity_client_id: str | None,
        wait: timedelta,
        *,
        sending: Callable[[], Awaitable[None]] | None = None,
    ) -> UpdateOutcome:
        """``sending`` is awaited right before the PATCH goes out (not if it never does)."""
        ...

    async def use_microsoft_keys(
        self,
        account_id: AccountId,
        wait: timedelta,
        *,
        sending: Callable[[], Awaitable[None]] | None = None,
    ) -> UpdateOutcome: ...


@dataclass(frozen=True)
class Lifecycle:
    """The ports, settings and clock of ``cmk check / enable / switch / disable``.

    ``trigger`` names who acts in ledger rows (``cli:<user>``).
    """

    keys: KeyStore
    accounts: AccountStore
    writer: AccountWriter
    vaults: VaultDirectory
    roles: RoleReader
    ledger: Ledger
    settings: Settings
    now: Callable[[], datetime]
    trigger: str = "cli"

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy.from_settings(self.settings)

    def subscriptions_for(self, account_id: AccountId) -> tuple[str, ...]:
        """Where to look for a vault: the account's subscription, then CMK_SUBSCRIPTIONS."""
        return (account_id.subscription_id, *self.settings.subscriptions)
