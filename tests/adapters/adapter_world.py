"""The seeded sandbox world of the adapter tests, and settings for the wiring.

``cloud`` seeds one subscription with a Key Vault and a Managed HSM in westeurope (the
app holds Key Vault Crypto Officer on both and Contributor on the subscription);
``services`` wires every adapter to the sandbox and Azurite with retries that do not
sleep and a 50 ms LRO poll period.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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
from cmk.wiring import RetryOptions, WiringOptions

SUB = "11111111-1111-4111-8111-111111111111"
SUB2 = "22222222-2222-4222-8222-222222222222"
RG = "rg-ai"
REGION = "westeurope"


@dataclass
class Cloud:
    """The seeded world: one subscription, a vault and a Managed HSM, helpers to add more."""

    sandbox: Sandbox
    world: World
    vault: VaultState
    hsm: VaultState

    def add_subscription(self, subscription_id: str) -> None:
        with self.world.lock:
            self.world.subscriptions[subscription_id] = Subscription(
                subscription_id, self.world.tenant_id, f"sub-{subscription_id[:4]}"
            )
            self.world.grant(
                self.sandbox.app_principal.object_id, f"/subscriptions/{subscription_id}", "Owner"
            )

    def add_vault(
        self,
        name: str,
        kind: VaultKind = VaultKind.VAULT,
        *,
        subscription: str = SUB,
        grant: bool = True,
        **changes: object,
    ) -> VaultState:
        """A vault (or Managed HSM); ``grant`` makes the app its Key Vault Crypto Officer."""
        suffix = "vault.azure.net" if kind is VaultKind.VAULT else "managedhsm.azure.net"
        vault = VaultState(
            name, kind, subscription, "rg-keys", REGION, self.world.tenant_id, dns_suffix=suffix
        )
        for attr, value in changes.items():
            setattr(vault, attr, value)
        with self.world.lock:
            self.world.vaults[vault.host] = vault
            if grant:
                self.world.grant(
                    self.sandbox.app_principal.object_id,
                    vault.resource_id,
                    "Key Vault Crypto Officer",
                )
        return vault

    def add_version(
        self, vault: VaultState, key: str = "cmk", **options: object
    ) -> KeyVersionState:
        with self.world.lock:
            return add_key_version(self.world, vault, key, emit=False, **options)  # type: ignore[arg-type]

    def add_account(
        self,
        name: str,
        vault: VaultState,
        version: str,
        *,
        key: str = "cmk",
        subscription: str = SUB,
        grant: bool = True,
        lro_seconds: float = 0.0,
        identity_client_id: str | None = None,
        **options: object,
    ) -> AccountState:
        """An account bound to ``vault``/``key``/``version``; ``grant`` gives its system
        identity get/wrap/unwrap on the key."""
        encryption = Encryption(
            "Microsoft.KeyVault", f"{vault.url}/", key, version, identity_client_id
        )
        with self.world.lock:
            account = seed_account(
                self.world,
                subscription,
                RG,
                name,
                REGION,
                encryption=encryption,
                lro_seconds=lro_seconds,
                **options,  # type: ignore[arg-type]
            )
            if grant and account.identity.system is not None:
                self.world.grant(
                    account.identity.system.object_id,
                    f"{vault.resource_id}/keys/{key}",
                    "Key Vault Crypto Service Encryption User",
                )
        return account


def settings_for(
    azurite: str, *, topic: str | None = None, subscriptions: tuple[str, ...] = (SUB,)
) -> Settings:
    """Settings pointing at Azurite (a fresh queue and table per test)."""
    suffix = uuid.uuid4().hex[:10]
    return Settings(
        subscriptions=subscriptions,
        storage=StorageSettings(connection_string=azurite),
        job_queue=f"jobs-{suffix}",
        ledger_table=f"ledger{suffix}",
        alert_topic_endpoint=topic,
        max_concurrency=16,
    )


TEST_OPTIONS = WiringOptions(retry=RetryOptions(total=3, backoff=False), polling_interval=0.05)
