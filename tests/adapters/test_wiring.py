"""Services.from_settings: clients per cloud, retry knobs, storage, closing."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp.client
import pytest
from adapter_world import RG, SUB, TEST_OPTIONS, Cloud, settings_for
from azure.keyvault.keys.aio import KeyClient

from cmk.errors import AccessDenied, ConfigurationError, ThrottledError
from cmk.keyid import KeyId
from cmk.ports import RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import rp_for
from cmk.settings import AzureCloud, Settings, StorageSettings
from cmk.wiring import RetryOptions, Services, WiringOptions

#: Bounds a hang (a retry or poll that waited the hour it was told): decides nothing else.
HANG_SECONDS = 120


class TestRetryOptions:
    def test_backoff_off_uses_a_policy_that_never_sleeps(self) -> None:
        """RetryOptions(backoff=False) gives Key Vault/ARM clients a non-sleeping retry policy."""
        options = RetryOptions(total=2, backoff=False).core_client_options()
        assert options["retry_total"] == 2
        assert options["retry_backoff_factor"] == 0.0
        assert "retry_policy" in options

    def test_default_keeps_azure_core_behaviour(self) -> None:
        """The default retries with backoff and honours Retry-After (no custom policy)."""
        options = RetryOptions().core_client_options()
        assert "retry_policy" not in options
        assert options["retry_backoff_factor"] > 0


class TestServices:
    async def test_no_backoff_ignores_retry_after(self, cloud: Cloud, services: Services) -> None:
        """In no-backoff mode, 429s with Retry-After of an hour are retried at once (were
        it honoured, the call would hang; the ceiling only bounds that hang)."""
        cloud.add_version(cloud.vault)
        rule = cloud.sandbox.faults.add(
            host=cloud.vault.host, path="/keys/cmk", status=429, retry_after=3600, count=2
        )
        async with asyncio.timeout(HANG_SECONDS):
            await services.keys.latest(KeyId(cloud.vault.url, "cmk"))
        assert rule.hits == 2

    async def test_retry_total_bounds_attempts(self, cloud: Cloud, azurite: str) -> None:
        """retry_total=1 makes one retry: two requests, then ThrottledError."""
        cloud.add_version(cloud.vault)
        rule = cloud.sandbox.faults.add(host=cloud.vault.host, path="/keys/cmk", status=429)
        options = WiringOptions(retry=RetryOptions(total=1, backoff=False))
        async with Services.from_settings(settings_for(azurite), options=options) as wired:
            with pytest.raises(ThrottledError):
                await wired.keys.latest(KeyId(cloud.vault.url, "cmk"))
        assert rule.hits == 2

    async def test_storage_is_required_only_when_used(self, cloud: Cloud) -> None:
        """Without storage, ARM works; jobs, ledger and alerts name the setting to add."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("acct", cloud.vault, version)
        async with Services.from_settings(Settings(), options=TEST_OPTIONS) as wired:
            assert (await wired.accounts.get(AccountId(SUB, RG, "acct"))).binding is not None
            for name in ("jobs", "ledger", "alerts"):
                with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):
                    getattr(wired, name)

    async def test_identity_storage_uses_service_uris(self, cloud: Cloud) -> None:
        """Identity-based storage builds the queue and table clients on the service URIs."""
        storage = StorageSettings(
            queue_service_uri="https://st1.queue.core.windows.net",
            table_service_uri="https://st1.table.core.windows.net",
        )
        async with Services.from_settings(Settings(storage=storage), options=TEST_OPTIONS) as wired:
            assert wired.jobs.client.url.startswith("https://st1.queue.core.windows.net/")
            assert wired.ledger.client.url.startswith("https://st1.table.core.windows.net")
            assert wired.alerts is not None

    async def test_sovereign_cloud_uses_its_arm_endpoint(self, cloud: Cloud) -> None:
        """CMK_AZURE_CLOUD=china sends ARM requests to management.chinacloudapi.cn."""
        settings = Settings(cloud=AzureCloud.CHINA)
        async with Services.from_settings(settings, options=TEST_OPTIONS) as wired:
            with pytest.raises(AccessDenied):  # the sandbox's ARM accepts public-cloud tokens only
                await wired.accounts.get(AccountId(SUB, RG, "acct"))
        assert cloud.sandbox.counters.count(host="management.chinacloudapi.cn") >= 1
        assert cloud.sandbox.counters.count(host="management.azure.com") == 0

    async def test_close_is_idempotent(self, cloud: Cloud, azurite: str) -> None:
        """aclose() closes every client once; a second call does nothing."""
        wired = Services.from_settings(settings_for(azurite), options=TEST_OPTIONS)
        cloud.add_version(cloud.vault)
        await wired.keys.latest(KeyId(cloud.vault.url, "cmk"))
        await wired.aclose()
        await wired.aclose()
        assert wired.keys._clients == {}

    async def test_lro_polling_interval_is_used(self, cloud: Cloud, services: Services) -> None:
        """The 50 ms poll period wins over the operation's Retry-After: with Retry-After
        an hour, a 0.3 s update is seen finished (honoured, the call would hang; the
        ceiling only bounds that hang)."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        account = cloud.add_account("fast", cloud.vault, old, lro_seconds=0.3)
        rp = rp_for(cloud.world)
        rp.retry_after_floor = rp.retry_after_cap = 3600.0
        record = await services.accounts.get(AccountId(SUB, RG, "fast"))
        async with asyncio.timeout(HANG_SECONDS):
            await services.accounts.update_key_version(record, new, timedelta(seconds=10))
        assert account.encryption.key_version == new


class TestTransport:
    async def test_no_request_asks_the_environment_for_its_proxy(
        self, cloud: Cloud, services: Services, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """aiohttp with trust_env looks up HTTPS_PROXY/NO_PROXY and ~/.netrc on a thread for
        every request; the clients Services builds name their proxy themselves (read once),
        and still reach the sandbox — which only answers through its proxy."""
        asked: list[str] = []
        lookup = aiohttp.client.get_env_proxy_for_url

        def spy(url: Any) -> Any:
            asked.append(str(url))
            return lookup(url)

        monkeypatch.setattr(aiohttp.client, "get_env_proxy_for_url", spy)
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("acct", cloud.vault, version)
        key = KeyId(cloud.vault.url, "cmk")
        await services.keys.latest(key)
        record = await services.accounts.get(AccountId(SUB, RG, "acct"))
        found = [found async for found in services.inventory.cmk_accounts([SUB], key)]
        await services.subscriptions.readable()
        await services.jobs.enqueue(
            RotationJob(record.account_id, key.with_version(version), trigger="test")
        )
        await services.ledger.get(record.account_id, version)
        assert [str(found.account_id).lower() for found in found] == [
            str(record.account_id).lower()
        ]
        identity = urlsplit(os.environ["IDENTITY_ENDPOINT"]).netloc
        assert [url for url in asked if urlsplit(url).netloc != identity] == []

        # The spy sees what a client built the SDK's default way asks.
        async with KeyClient(cloud.vault.url, services.credential) as plain:
            await plain.get_key("cmk")
        assert any(cloud.vault.host in url for url in asked)
