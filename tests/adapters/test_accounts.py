"""CognitiveAccounts against the sandbox's ARM (Cognitive Services RP), through the real SDK."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from adapter_world import RG, SUB, SUB2, TEST_OPTIONS, Cloud, settings_for
from aiohttp.client_reqrep import ConnectionKey
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.mgmt.cognitiveservices import models
from azure.mgmt.cognitiveservices._utils.serialization import Serializer

from cmk.adapters.accounts import _maybe_sent, encryption_patch
from cmk.errors import (
    AccessDenied,
    NotFound,
    ServiceUnavailable,
    ThrottledError,
    UpdateFailed,
    UpdateUnanswered,
)
from cmk.ports import UpdateOutcome
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import rp_for
from cmk.sandbox.world import Principal, UserAssignedIdentity
from cmk.wiring import Services

WAIT = timedelta(seconds=20)
ACCOUNT_PATH = "/providers/Microsoft.CognitiveServices/accounts/"


def _id(name: str, subscription: str = SUB) -> AccountId:
    return AccountId(subscription, RG, name)


def _patches(cloud: Cloud) -> int:
    return cloud.sandbox.counters.count(
        host="management.azure.com", path=ACCOUNT_PATH, method="PATCH"
    )


class TestEncryptionPatch:
    def test_serializes_only_the_encryption(self) -> None:
        """The PATCH body holds properties.encryption and nothing else."""
        current = models.KeyVaultProperties(
            key_vault_uri="https://KV1.vault.azure.net/",
            key_name="MyKey",
            key_version="0" * 32,
            identity_client_id="C1",
        )
        serializer = Serializer(
            {name: kind for name, kind in vars(models).items() if isinstance(kind, type)}
        )
        body = serializer.body(encryption_patch(current, "a" * 32), "Account")
        assert json.loads(json.dumps(body)) == {
            "properties": {
                "encryption": {
                    "keySource": "Microsoft.KeyVault",
                    "keyVaultProperties": {
                        "keyVaultUri": "https://KV1.vault.azure.net/",
                        "keyName": "MyKey",
                        "keyVersion": "a" * 32,
                        "identityClientId": "C1",
                    },
                }
            }
        }


class TestCognitiveAccountsGet:
    async def test_get_reads_binding_and_identity(self, cloud: Cloud, services: Services) -> None:
        """get() maps the keyVaultProperties to a Binding and the identity fields."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("acct1", cloud.vault, version)
        record = await services.accounts.get(_id("acct1"))
        assert record.binding is not None
        assert str(record.binding.key_id) == f"{cloud.vault.url}/keys/cmk/{version}"
        assert record.binding.identity_client_id is None
        assert record.provisioning_state == "Succeeded"
        assert record.identity_type == "SystemAssigned"
        assert record.location == "westeurope"
        assert record.has_usable_identity

    async def test_get_reads_user_assigned_client_ids(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A user-assigned identity named by identityClientId is reported and usable."""
        principal = Principal.new("uami1", cloud.world.tenant_id)
        uami = UserAssignedIdentity(
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers"
            "/Microsoft.ManagedIdentity/userAssignedIdentities/uami1",
            principal,
        )
        version = cloud.add_version(cloud.vault).version
        cloud.add_account(
            "acct2",
            cloud.vault,
            version,
            identity_client_id=principal.client_id,
            system_identity=False,
            user_assigned=[uami],
        )
        record = await services.accounts.get(_id("acct2"))
        assert record.binding is not None
        assert record.binding.identity_client_id == principal.client_id.lower()
        assert record.user_assigned_client_ids == frozenset({principal.client_id.lower()})
        assert record.identity_type == "UserAssigned"
        assert record.has_usable_identity

    async def test_missing_account_is_not_found(self, cloud: Cloud, services: Services) -> None:
        """A missing account raises NotFound."""
        with pytest.raises(NotFound):
            await services.accounts.get(_id("ghost"))

    async def test_server_errors_are_transient(self, cloud: Cloud, services: Services) -> None:
        """Persistent 503s raise ServiceUnavailable after the SDK's retries."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("acct3", cloud.vault, version)
        cloud.sandbox.faults.add(host="management.azure.com", path="acct3", status=503)
        with pytest.raises(ServiceUnavailable):
            await services.accounts.get(_id("acct3"))


class TestCognitiveAccountsUpdate:
    async def test_update_succeeds_through_the_lro(self, cloud: Cloud, services: Services) -> None:
        """A PATCH followed through the LRO ends SUCCEEDED with the new version in ARM."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        account = cloud.add_account("acct", cloud.vault, old, lro_seconds=0.3, tags={"team": "a"})
        record = await services.accounts.get(_id("acct"))
        outcome = await services.accounts.update_key_version(record, new, WAIT)
        assert outcome is UpdateOutcome.SUCCEEDED
        assert account.encryption.key_version == new
        assert account.encryption.key_vault_uri == f"{cloud.vault.url}/"
        assert account.tags == {"team": "a"}
        assert account.provisioning_state == "Succeeded"
        assert _patches(cloud) == 1

    async def test_update_keeps_identity_client_id(self, cloud: Cloud, services: Services) -> None:
        """The user-assigned identityClientId survives the update."""
        principal = Principal.new("uami2", cloud.world.tenant_id)
        uami = UserAssignedIdentity(
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers"
            "/Microsoft.ManagedIdentity/userAssignedIdentities/uami2",
            principal,
        )
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        account = cloud.add_account(
            "acctu", cloud.vault, old, identity_client_id=principal.client_id, user_assigned=[uami]
        )
        cloud.world.grant(
            principal.object_id,
            f"{cloud.vault.resource_id}/keys/cmk",
            "Key Vault Crypto Service Encryption User",
        )
        record = await services.accounts.get(_id("acctu"))
        assert await services.accounts.update_key_version(record, new, WAIT) is (
            UpdateOutcome.SUCCEEDED
        )
        assert account.encryption.identity_client_id == principal.client_id
        assert account.encryption.key_version == new

    async def test_update_on_managed_hsm(self, cloud: Cloud, services: Services) -> None:
        """An account bound to a Managed HSM key moves to the new version."""
        old = cloud.add_version(cloud.hsm, kty="RSA-HSM").version
        new = cloud.add_version(cloud.hsm, kty="RSA-HSM").version
        account = cloud.add_account("accthsm", cloud.hsm, old)
        record = await services.accounts.get(_id("accthsm"))
        assert await services.accounts.update_key_version(record, new, WAIT) is (
            UpdateOutcome.SUCCEEDED
        )
        assert account.encryption.key_version == new

    async def test_already_on_version_sends_no_patch(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Asking for the bound version answers SUCCEEDED without a PATCH (idempotent)."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("same", cloud.vault, version)
        record = await services.accounts.get(_id("same"))
        assert await services.accounts.update_key_version(record, version, WAIT) is (
            UpdateOutcome.SUCCEEDED
        )
        assert _patches(cloud) == 0

    async def test_identity_without_access_is_access_denied(
        self, cloud: Cloud, services: Services
    ) -> None:
        """An identity without key access makes the LRO fail: AccessDenied with the RP code."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        account = cloud.add_account("noaccess", cloud.vault, old, grant=False)
        record = await services.accounts.get(_id("noaccess"))
        with pytest.raises(AccessDenied, match="KeyVaultAccessDenied"):
            await services.accounts.update_key_version(record, new, WAIT)
        assert account.encryption.key_version == old
        assert account.provisioning_state == "Failed"

    async def test_rejected_version_is_update_failed(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A version the RP rejects (disabled) ends the LRO Failed: UpdateFailed with its code."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault, enabled=False).version
        account = cloud.add_account("disabled", cloud.vault, old)
        record = await services.accounts.get(_id("disabled"))
        with pytest.raises(UpdateFailed, match="KeyDisabled"):
            await services.accounts.update_key_version(record, new, WAIT)
        assert account.encryption.key_version == old

    async def test_long_update_is_in_progress(self, cloud: Cloud, services: Services) -> None:
        """An LRO longer than the wait returns IN_PROGRESS; it finishes in ARM and verifies."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        # held open (whatever the load) until the test ends it in ARM below
        account = cloud.add_account("slow", cloud.vault, old, lro_seconds=math.inf)
        record = await services.accounts.get(_id("slow"))
        outcome = await services.accounts.update_key_version(record, new, timedelta(seconds=0.1))
        assert outcome is UpdateOutcome.IN_PROGRESS
        target = record.binding.key_id.with_version(new)  # type: ignore[union-attr]
        assert await services.accounts.verify(_id("slow"), target) is UpdateOutcome.IN_PROGRESS
        assert account.encryption.key_version == old
        rp_for(cloud.world).finish_now(account.resource_id)
        assert await services.accounts.verify(_id("slow"), target) is UpdateOutcome.SUCCEEDED
        assert account.encryption.key_version == new
        assert _patches(cloud) == 1

    async def test_busy_account_is_transient(self, cloud: Cloud, services: Services) -> None:
        """While another update runs, a second one raises ServiceUnavailable: from a fresh
        record without a PATCH, and from a stale record through the RP's 409."""
        old = cloud.add_version(cloud.vault).version
        mid = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        # held open until the test ends, so all three requests meet the running update
        cloud.add_account("busy", cloud.vault, old, lro_seconds=math.inf)
        stale = await services.accounts.get(_id("busy"))
        first = await services.accounts.update_key_version(stale, mid, timedelta(0))
        assert first is UpdateOutcome.IN_PROGRESS
        fresh = await services.accounts.get(_id("busy"))
        with pytest.raises(ServiceUnavailable):
            await services.accounts.update_key_version(fresh, new, WAIT)
        assert _patches(cloud) == 1
        with pytest.raises(ServiceUnavailable):
            await services.accounts.update_key_version(stale, new, WAIT)
        assert cloud.world.account(str(_id("busy"))).encryption.key_version == old

    async def test_conflict_on_patch_is_transient(self, cloud: Cloud, services: Services) -> None:
        """A 409 answer to the PATCH raises ServiceUnavailable."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        cloud.add_account("conflict", cloud.vault, old)
        cloud.sandbox.faults.add(
            host="management.azure.com", path="conflict", method="PATCH", status=409
        )
        record = await services.accounts.get(_id("conflict"))
        with pytest.raises(ServiceUnavailable):
            await services.accounts.update_key_version(record, new, WAIT)

    async def test_throttled_patch_is_not_resent(self, cloud: Cloud, services: Services) -> None:
        """A 429 with Retry-After on the PATCH is not re-sent by the SDK (it would carry a
        body decided before others moved the account): ThrottledError with the hint, the
        account unchanged; the next call re-reads and succeeds."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        account = cloud.add_account("throttled", cloud.vault, old)
        rule = cloud.sandbox.faults.add(
            host="management.azure.com",
            path="throttled",
            method="PATCH",
            status=429,
            retry_after=1,
            count=1,
        )
        record = await services.accounts.get(_id("throttled"))
        with pytest.raises(ThrottledError) as raised:
            await services.accounts.update_key_version(record, new, WAIT)
        assert raised.value.retry_after == 1
        assert rule.hits == 1
        assert account.encryption.key_version == old
        patches = cloud.sandbox.counters.count(path="throttled", method="PATCH")
        assert patches == 1
        record = await services.accounts.get(_id("throttled"))
        assert await services.accounts.update_key_version(record, new, WAIT) is (
            UpdateOutcome.SUCCEEDED
        )
        assert account.encryption.key_version == new

    @pytest.mark.parametrize(
        ("fault", "raised"),
        [
            ({"status": 503}, ServiceUnavailable),
            ({"drop": True}, UpdateUnanswered),
            ({"status": 504}, UpdateUnanswered),
        ],
        ids=["503-answered", "connection-lost", "504-gateway"],
    )
    async def test_failed_patch_is_sent_once(
        self, cloud: Cloud, services: Services, fault: dict[str, Any], raised: type
    ) -> None:
        """A PATCH that fails is one request, never an SDK retry. Answered (503) it is a
        ServiceUnavailable; one that may still have been applied — the connection dropped
        before the answer, or ARM's 504 (the resource provider did not answer the front
        end in time) — is UpdateUnanswered (its job keeps the write lease). Telling a lost
        connection apart is the aiohttp error inside azure-core's ServiceRequestError:
        only a refused connection proves nothing was sent."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        cloud.add_account("flaky", cloud.vault, old)
        cloud.sandbox.faults.add(
            host="management.azure.com", path="flaky", method="PATCH", count=1, **fault
        )
        record = await services.accounts.get(_id("flaky"))
        with pytest.raises(ServiceUnavailable) as failed:
            await services.accounts.update_key_version(record, new, WAIT)
        assert type(failed.value) is raised
        assert cloud.sandbox.counters.count(path="flaky", method="PATCH") == 1

    def test_only_a_refused_connection_proves_nothing_was_sent(self) -> None:
        refused = aiohttp.ClientConnectorError(
            ConnectionKey("management.azure.com", 443, True, True, None, None, None),
            OSError(111, "Connection refused"),
        )
        assert not _maybe_sent(ServiceRequestError(refused, error=refused))
        dropped = aiohttp.ServerDisconnectedError()
        assert _maybe_sent(ServiceRequestError(dropped, error=dropped))
        assert _maybe_sent(ServiceResponseError("read timed out"))
        assert _maybe_sent(TimeoutError())
        assert not _maybe_sent(None)

    async def test_persistent_throttling_is_throttled_error(
        self, cloud: Cloud, services: Services
    ) -> None:
        """429s beyond the retry budget raise ThrottledError carrying Retry-After."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        cloud.add_account("hot", cloud.vault, old)
        record = await services.accounts.get(_id("hot"))
        cloud.sandbox.faults.add(
            host="management.azure.com", path="hot", method="PATCH", status=429, retry_after=5
        )
        with pytest.raises(ThrottledError) as caught:
            await services.accounts.update_key_version(record, new, WAIT)
        assert caught.value.retry_after == 5

    async def test_changed_binding_is_refused(self, cloud: Cloud, services: Services) -> None:
        """A record that is not a GET of the account (an inventory row) is read again
        first: if the account moved to another key since, nothing is patched."""
        old = cloud.add_version(cloud.vault).version
        cloud.add_version(cloud.vault, "other")
        account = cloud.add_account("moved", cloud.vault, old)
        record = replace(await services.accounts.get(_id("moved")), key_vault_reference=None)
        account.encryption.key_name = "other"
        with pytest.raises(UpdateFailed, match="no longer bound"):
            await services.accounts.update_key_version(record, "f" * 32, WAIT)
        assert _patches(cloud) == 0

    async def test_version_moved_since_read_is_replanned(
        self, cloud: Cloud, services: Services
    ) -> None:
        """An inventory row on v1, the account moved to v3 since, asked for v2: no PATCH
        (it would go back); a transient error makes the caller re-plan."""
        v1 = cloud.add_version(cloud.vault).version
        v2 = cloud.add_version(cloud.vault).version
        v3 = cloud.add_version(cloud.vault).version
        account = cloud.add_account("raced", cloud.vault, v1)
        record = replace(await services.accounts.get(_id("raced")), key_vault_reference=None)
        account.encryption.key_version = v3
        with pytest.raises(ServiceUnavailable, match="re-planning"):
            await services.accounts.update_key_version(record, v2, WAIT)
        assert _patches(cloud) == 0
        assert account.encryption.key_version == v3

    async def test_accounts_in_two_subscriptions(self, cloud: Cloud, services: Services) -> None:
        """Each subscription gets its own client; both accounts update."""
        cloud.add_subscription(SUB2)
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        first = cloud.add_account("one", cloud.vault, old)
        second = cloud.add_account("two", cloud.vault, old, subscription=SUB2)
        records = [
            await services.accounts.get(_id("one")),
            await services.accounts.get(_id("two", SUB2)),
        ]
        outcomes = await asyncio.gather(
            *(services.accounts.update_key_version(r, new, WAIT) for r in records)
        )
        assert outcomes == [UpdateOutcome.SUCCEEDED, UpdateOutcome.SUCCEEDED]
        assert first.encryption.key_version == second.encryption.key_version == new


class TestUpdateCost:
    """A verified update costs the PATCH and its status polls: no re-read, no final GET."""

    async def test_update_reads_only_the_operation_status(
        self, cloud: Cloud, services: Services
    ) -> None:
        """From the caller's deciding read to SUCCEEDED: one PATCH, the Azure-AsyncOperation
        status poll(s), and no GET of the account (the Succeeded status of the operation our
        PATCH started proves the version is in place)."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        account = cloud.add_account("cheap", cloud.vault, old, lro_seconds=0.2)
        record = await services.accounts.get(_id("cheap"))
        cloud.sandbox.counters.reset()

        outcome = await services.accounts.update_key_version(record, new, WAIT)

        assert outcome is UpdateOutcome.SUCCEEDED
        assert account.encryption.key_version == new
        account_gets = cloud.sandbox.counters.count(
            host="management.azure.com", path=r"/accounts/cheap$", method="GET"
        )
        polls = cloud.sandbox.counters.count(host="management.azure.com", method="GET")
        assert _patches(cloud) == 1
        assert account_gets == 0
        assert polls >= 1  # the operation's status

    async def test_first_status_poll_waits_for_retry_after(
        self, cloud: Cloud, azurite: str
    ) -> None:
        """Polling paced by the service: the 202's Retry-After covers the whole update, so
        one status poll finds it Succeeded (azure-core alone would ask once at once too)."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        cloud.add_account("paced", cloud.vault, old, lro_seconds=0.3)
        options = replace(TEST_OPTIONS, polling_interval=None)
        async with Services.from_settings(settings_for(azurite), options=options) as paced:
            record = await paced.accounts.get(_id("paced"))
            cloud.sandbox.counters.reset()
            assert await paced.accounts.update_key_version(record, new, WAIT) is (
                UpdateOutcome.SUCCEEDED
            )
        polls = cloud.sandbox.counters.count(path="operationStatuses", method="GET")
        assert polls == 1
