"""The lifecycle test rig: a sandbox estate and the lifecycle ports wired to it.

``Land`` seeds one subscription (westeurope) with an RBAC Key Vault holding key ``cmk``
(RSA 2048), the app as Owner of the subscription and Key Vault Crypto Officer of the vault,
and helpers for accounts and further vaults. ``Wired`` holds the real services
(:mod:`cmk.wiring`, :mod:`cmk.lifecycle.services`) against the sandbox and Azurite, the
:class:`~cmk.lifecycle.context.Lifecycle` and the rotation :class:`~cmk.usecases.Engine`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cmk.adapters.jobqueue import decode_job
from cmk.lifecycle.context import Lifecycle
from cmk.lifecycle.services import LifecycleClients
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.world import (
    AccountState,
    Encryption,
    KeyVersionState,
    Subscription,
    VaultKind,
    VaultState,
    World,
)
from cmk.settings import Settings, StorageSettings
from cmk.usecases import Engine, JobReport, rotate_account
from cmk.wiring import RetryOptions, Services, WiringOptions

SUB = "44444444-4444-4444-8444-444444444444"
REGION = "westeurope"
ENCRYPTION_USER = "Key Vault Crypto Service Encryption User"
TEST_OPTIONS = WiringOptions(retry=RetryOptions(total=2, backoff=False), polling_interval=0.05)


@dataclass
class Land:
    """The seeded world."""

    sandbox: Sandbox
    world: World

    def __post_init__(self) -> None:
        with self.world.lock:
            self.world.subscriptions[SUB] = Subscription(SUB, self.world.tenant_id, "lifecycle")
            self.world.grant(self.sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Owner")
        self.kv = self.vault(f"kv{uuid.uuid4().hex[:8]}")
        self.first = self.version(self.kv)

    def vault(self, name: str, kind: VaultKind = VaultKind.VAULT, **changes: Any) -> VaultState:
        suffix = "vault.azure.net" if kind is VaultKind.VAULT else "managedhsm.azure.net"
        vault = VaultState(name, kind, SUB, "rg-keys", REGION, self.world.tenant_id)
        vault.dns_suffix = suffix
        for attr, value in changes.items():
            setattr(vault, attr, value)
        with self.world.lock:
            self.world.vaults[vault.host] = vault
            self.world.grant(
                self.sandbox.app_principal.object_id, vault.resource_id, "Key Vault Crypto Officer"
            )
        return vault

    def version(self, vault: VaultState, key: str = "cmk", **options: Any) -> KeyVersionState:
        with self.world.lock:
            return add_key_version(self.world, vault, key, emit=False, **options)

    def account(self, name: str, *, identity: bool = True, **options: Any) -> AccountState:
        """An account on Microsoft-managed keys (with a system identity unless not)."""
        with self.world.lock:
            return seed_account(
                self.world, SUB, "rg-ai", name, REGION, system_identity=identity, **options
            )

    def bound(self, name: str, vault: VaultState, version: str, key: str = "cmk") -> AccountState:
        """An account already on CMK, its system identity granted on the key."""
        encryption = Encryption("Microsoft.KeyVault", f"{vault.url}/", key, version)
        account = self.account(name, encryption=encryption)
        self.grant(account, vault, key)
        return account

    def grant(self, account: AccountState, vault: VaultState, key: str = "cmk") -> str:
        """Give the account's system identity the encryption role on the key; its id."""
        assert account.identity.system is not None
        with self.world.lock:
            scope = f"{vault.resource_id}/keys/{key}"
            return self.world.grant(account.identity.system.object_id, scope, ENCRYPTION_USER).id

    def key_id(self, vault: VaultState, key: str = "cmk") -> str:
        return f"{vault.url}/keys/{key}"


def account_id(account: AccountState) -> AccountId:
    return AccountId.parse(account.resource_id)


def settings_for(land: Land, azurite: str, *vaults: VaultState) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    return Settings(
        vault_allowlist=frozenset(v.url for v in (land.kv, *vaults)),
        subscriptions=(SUB,),
        storage=StorageSettings(connection_string=azurite),
        job_queue=f"jobs-{suffix}",
        ledger_table=f"ledger{suffix}",
        max_concurrency=8,
    )


def environ_for(settings: Settings) -> dict[str, str]:
    """The CMK_* variables that give the CLI ``settings``."""
    return {
        "CMK_VAULT_ALLOWLIST": ",".join(sorted(settings.vault_allowlist)),
        "CMK_SUBSCRIPTIONS": ",".join(settings.subscriptions),
        "CMK_JOB_QUEUE": settings.job_queue,
        "CMK_LEDGER_TABLE": settings.ledger_table,
    }


@dataclass
class Wired:
    land: Land
    services: Services
    clients: LifecycleClients
    engine: Engine
    lc: Lifecycle

    async def ledger(self, account: AccountState) -> list[Any]:
        return await self.lc.ledger.history(account_id(account))

    async def drain(self) -> list[JobReport]:
        """Run every queued rotation job once, as the queue worker does."""
        client = self.services.jobs.client
        reports = []
        async for message in client.receive_messages(max_messages=32, visibility_timeout=30):
            reports.append(await rotate_account(self.engine, decode_job(message.content)))
            await client.delete_message(message)
        return reports
