"""ResourceGraphInventory against the sandbox's Resource Graph and ARM, through the real SDK."""

from __future__ import annotations

import logging

import pytest
from adapter_world import RG, SUB, SUB2, Cloud

from cmk.adapters.inventory import ResourceGraphInventory, record_from_row
from cmk.errors import AccessDenied, InvalidInput
from cmk.ports import AccountRecord
from cmk.sandbox.cognitive import seed_account
from cmk.sandbox.world import Encryption
from cmk.wiring import Services

GRAPH_PATH = "Microsoft.ResourceGraph/resources"


def _graph_calls(cloud: Cloud) -> int:
    return cloud.sandbox.counters.count(host="management.azure.com", path=GRAPH_PATH)


async def _collect(inventory: ResourceGraphInventory, subs: tuple[str, ...]) -> list[AccountRecord]:
    return [record async for record in inventory.cmk_accounts(subs)]


def _seed_many(cloud: Cloud, subscription: str, count: int, version: str) -> None:
    encryption = Encryption("Microsoft.KeyVault", f"{cloud.vault.url}/", "cmk", version)
    with cloud.world.lock:
        for index in range(count):
            seed_account(
                cloud.world,
                subscription,
                RG,
                f"acct-{index:05d}",
                "westeurope",
                encryption=encryption,
            )


class TestRecordFromRow:
    def test_reads_a_row(self) -> None:
        """A projected row becomes an AccountRecord with binding and identity client ids."""
        row = {
            "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
            "Microsoft.CognitiveServices/accounts/a1",
            "location": "westeurope",
            "keyVaultUri": "https://kv1.vault.azure.net/",
            "keyName": "cmk",
            "keyVersion": "a" * 32,
            "identityClientId": "C-1",
            "identityType": "UserAssigned",
            "userAssigned": '{"/subscriptions/x/uami": {"principalId": "p", "clientId": "C-1"}}',
            "provisioningState": "Succeeded",
        }
        record = record_from_row(row)
        assert record.binding is not None
        assert str(record.binding.key_id) == f"https://kv1.vault.azure.net/keys/cmk/{'a' * 32}"
        assert record.user_assigned_client_ids == frozenset({"c-1"})
        assert record.has_usable_identity

    @pytest.mark.parametrize(
        "change",
        [{"keyVaultUri": "https://evil.example.com/"}, {"keyVersion": ""}, {"id": "/nope"}],
    )
    def test_rejects_unreadable_rows(self, change: dict[str, str]) -> None:
        """A row with a bad key reference, no version or a bad id raises InvalidInput."""
        row = {
            "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
            "Microsoft.CognitiveServices/accounts/a1",
            "keyVaultUri": "https://kv1.vault.azure.net/",
            "keyName": "cmk",
            "keyVersion": "a" * 32,
            **change,
        }
        with pytest.raises(InvalidInput):
            record_from_row(row)


class TestResourceGraphInventory:
    async def test_pages_over_many_accounts_in_two_subscriptions(
        self, cloud: Cloud, services: Services
    ) -> None:
        """1,300 CMK accounts in 2 subscriptions stream back complete over several pages."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 700, version)
        _seed_many(cloud, SUB2, 600, version)
        with cloud.world.lock:
            seed_account(cloud.world, SUB, RG, "microsoft-managed", "westeurope")
        records = await _collect(services.inventory, (SUB, SUB2))
        assert len(records) == 1300
        assert len({record.account_id for record in records}) == 1300
        assert all(
            record.binding is not None and record.binding.key_id.version == version
            for record in records
        )
        assert _graph_calls(cloud) >= 2

    async def test_batches_subscriptions(self, cloud: Cloud, services: Services) -> None:
        """With a batch size of 1, each subscription is queried on its own."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 3, version)
        _seed_many(cloud, SUB2, 2, version)
        graph = services.inventory.client
        inventory = ResourceGraphInventory(graph, batch_size=1)
        records = await _collect(inventory, (SUB, SUB2))
        assert len(records) == 5
        assert _graph_calls(cloud) == 2

    async def test_skips_unreadable_rows_with_a_warning(
        self, cloud: Cloud, services: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An account without keyVersion is skipped, counted and logged by name."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("good", cloud.vault, version)
        cloud.add_account("versionless", cloud.vault, None)  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="cmk.adapters.inventory"):
            records = await _collect(services.inventory, (SUB,))
        assert [record.account_id.name for record in records] == ["good"]
        assert services.inventory.skipped == 1
        assert any("versionless" in message for message in caplog.messages)

    async def test_forbidden_graph_falls_back_to_arm(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A 403 from Resource Graph lists the accounts per subscription through ARM instead."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 150, version)
        _seed_many(cloud, SUB2, 30, version)
        with cloud.world.lock:
            seed_account(cloud.world, SUB, RG, "microsoft-managed", "westeurope")
        cloud.sandbox.faults.add(
            host="management.azure.com",
            path=GRAPH_PATH,
            status=403,
            body={"error": {"code": "AuthorizationFailed", "message": "no graph for you"}},
        )
        records = await _collect(services.inventory, (SUB, SUB2))
        assert len(records) == 180
        listed = cloud.sandbox.counters.count(
            host="management.azure.com",
            path="/providers/Microsoft.CognitiveServices/accounts/?$",
            method="GET",
        )
        assert listed >= 3  # 150 accounts take two pages of 100, plus SUB2

    async def test_forbidden_graph_without_fallback_raises(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Without a fallback, a 403 from Resource Graph raises AccessDenied."""
        cloud.sandbox.faults.add(host="management.azure.com", path=GRAPH_PATH, status=403)
        inventory = ResourceGraphInventory(services.inventory.client)
        with pytest.raises(AccessDenied):
            await _collect(inventory, (SUB,))
