"""The world the Functions app tests run in: the repository's app on the local Functions
host, against the sandbox (Key Vault, ARM, Resource Graph, Event Grid) and Azurite.

``AppWorld`` seeds one subscription with a purge-protected vault in westeurope (the app
holds Owner on the subscription and Key Vault Crypto Officer on the vault) and an alert
topic it may send to; ``settings`` are local.settings.json.example's ``Values`` pointed
at that world, with a fresh queue and table, and host.json's queue intervals shortened
through ``AzureFunctionsJobHost__*`` app settings (docs/functions.md). ``infra_routes``
reads which function each Event Grid subscription in infra/ delivers to.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

from cmk.ports import LedgerEntry
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import rp_for, seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import Subscription, Topic
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.world import (
    AccountState,
    Encryption,
    KeyVersionState,
    VaultKind,
    VaultState,
)
from cmk.sandbox.world import Subscription as ArmSubscription

ROOT = Path(__file__).resolve().parents[2]
SUB = "5a5a5a5a-1111-4111-8111-111111111111"
REGION = "westeurope"
KEY = "cmk"
ENCRYPTION_USER = "Key Vault Crypto Service Encryption User"
LRO_SECONDS = 0.3
MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount


def example_values() -> dict[str, str]:
    """``Values`` of local.settings.json.example, as ``func start`` would read them."""
    document = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))
    values: dict[str, str] = document["Values"]
    return values


@cache
def infra_routes() -> dict[str, tuple[str, ...]]:
    """Function name -> includedEventTypes of each Event Grid subscription in infra/."""
    parsed = BicepParser().parse(file_path=ROOT / "infra/app/vault-event-subscriptions.bicep")
    routes: dict[str, tuple[str, ...]] = {}
    for resource in parsed["resources"].values():
        if resource["type"] != "Microsoft.EventGrid/systemTopics/eventSubscriptions":
            continue
        properties = resource["config"]["properties"]
        target = str(properties["destination"]["properties"]["resourceId"])
        function = target.rpartition("/functions/")[2]
        routes[function] = tuple(properties["filter"]["includedEventTypes"])
    return routes


@dataclass
class AppWorld:
    """The seeded sandbox world, the app settings for it, and helpers to change and read it."""

    sandbox: Sandbox
    azurite: str
    vault: VaultState = field(init=False)
    topic: Topic = field(init=False)
    settings: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        world = self.sandbox.world
        app = self.sandbox.app_principal.object_id
        tag = uuid.uuid4().hex[:8]
        with world.lock:
            world.subscriptions[SUB] = ArmSubscription(SUB, world.tenant_id, "sub-app")
            world.grant(app, f"/subscriptions/{SUB}", "Owner")
            self.vault = VaultState(
                f"kv{tag}", VaultKind.VAULT, SUB, "rg-keys", REGION, world.tenant_id
            )
            world.vaults[self.vault.host] = self.vault
            world.grant(app, self.vault.resource_id, "Key Vault Crypto Officer")
        self.topic = self.sandbox.eventgrid.create_topic(f"cmkalerts{tag}", region=REGION)
        world.grant(app, self.topic.resource_id, "EventGrid Data Sender")
        rp_for(world).retry_after_floor = 0.1  # LRO polls follow a sub-second Retry-After
        self.settings = {
            **example_values(),
            "AzureWebJobsStorage": self.azurite,
            "CMK_VAULT_ALLOWLIST": self.vault.url,
            "CMK_SUBSCRIPTIONS": SUB,
            "CMK_ALERT_TOPIC_ENDPOINT": self.topic.endpoint,
            "CMK_JOB_QUEUE": f"jobs-{tag}",
            "CMK_LEDGER_TABLE": f"ledger{tag}",
            "CMK_DRY_RUN": "false",
            "CMK_UPDATE_TIMEOUT_SECONDS": "20",
            "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.2",
            "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
        }

    # --- seeding -------------------------------------------------------------------------

    def version(self, *, emit: bool = False, **options: Any) -> KeyVersionState:
        """A new version of the key (announced to Event Grid only with ``emit``)."""
        return add_key_version(self.sandbox.world, self.vault, KEY, emit=emit, **options)

    def first_version(self, **options: Any) -> KeyVersionState:
        """The version accounts start on, created a day ago (not announced).

        A day, not now: versions created within the same second are ordered by their
        random version string (cmk.usecases.keyview.order), so a new version made right
        after would be "older" half of the time. See the report of issue 5's tests."""
        created = self.sandbox.world.clock.now() - timedelta(days=1)
        return self.version(**{"created": created, **options})

    def account(self, name: str, version: str, *, grant: bool = True) -> AccountState:
        """An account bound to the key at ``version`` through its system identity, which
        may use the key when ``grant``; its updates take LRO_SECONDS."""
        world = self.sandbox.world
        encryption = Encryption("Microsoft.KeyVault", f"{self.vault.url}/", KEY, version, None)
        with world.lock:
            account = seed_account(
                world, SUB, "rg-ai", name, REGION, encryption=encryption, lro_seconds=LRO_SECONDS
            )
            principal = account.identity.system
            assert principal is not None
            if grant:
                world.grant(
                    principal.object_id, f"{self.vault.resource_id}/keys/{KEY}", ENCRYPTION_USER
                )
        return account

    def subscribe(self, host: FunctionsHost) -> list[Subscription]:
        """The vault's Event Grid subscriptions as infra/ declares them, delivering to ``host``."""
        return [
            self.sandbox.eventgrid.subscribe(
                host.event_grid_target(function),
                included_event_types=list(event_types),
                vaults=[self.vault.name],
                name=f"cmk-{function}",
            )
            for function, event_types in infra_routes().items()
        ]

    # --- reading -------------------------------------------------------------------------

    def versions(self) -> list[KeyVersionState]:
        return list(self.vault.keys[KEY].versions)

    def accounts(self) -> list[AccountState]:
        return list(self.sandbox.world.accounts.values())

    def on_version(self, version: str) -> bool:
        """Every account is bound to ``version`` and no update is running."""
        return all(
            a.encryption.key_version == version and a.provisioning_state == "Succeeded"
            for a in self.accounts()
        )

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The alert CloudEvents the topic received (optionally of one alert type)."""
        return [e for e in self.topic.events if kind is None or e["type"] == f"CmkRotator.{kind}"]

    @staticmethod
    async def ledger(host: FunctionsHost, account: AccountState | None = None) -> list[LedgerEntry]:
        """Ledger rows (of one account, or all), read through the app's own engine."""
        engine = await host.module.engines.engine()
        account_id = AccountId.parse(account.resource_id) if account is not None else None
        entries: list[LedgerEntry] = await engine.ledger.history(account_id)
        return entries

    # --- invariants ----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """No account moved backwards or onto a version the policy rejects; no alert twice."""
        order = {v.version: i for i, v in enumerate(self.versions())}
        for account in self.accounts():
            history = [v for _, v in account.binding_history if v is not None]
            positions = [order[v] for v in history]
            assert positions == sorted(positions), f"{account.name} moved backwards: {history}"
            for moved_to in history[1:]:
                assert _bindable(self.versions()[order[moved_to]]), (
                    f"{account.name} bound to rejected {moved_to}"
                )
        keys = [(e["subject"].lower(), e["data"]["toVersion"], e["type"]) for e in self.alerts()]
        assert len(keys) == len(set(keys)), f"duplicate alerts: {keys}"


def _bindable(version: KeyVersionState) -> bool:
    """What the default policy accepts (RSA 2048, wrap/unwrap, enabled, not expiring)."""
    horizon = datetime.now(UTC) + timedelta(days=30)
    expiring = version.expires is not None and version.expires <= horizon
    return (
        version.enabled
        and version.kty in ("RSA", "RSA-HSM")
        and version.size == 2048
        and {"wrapKey", "unwrapKey"} <= set(version.key_ops)
        and not expiring
    )


async def close_app(host: FunctionsHost) -> None:
    """Close the clients the app's engine built (the real worker keeps them for the process;
    a test host is one of many in a process)."""
    await host.module.engines.aclose()
