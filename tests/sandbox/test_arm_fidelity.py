"""The emulated ARM through the real SDK: ``CognitiveServicesManagementClient`` (sync and
async) with ``DefaultAzureCredential``, pointed at the sandbox by the environment only.

The SDK's default LRO polling interval is 30 s, but ARMPolling sleeps for the
``Retry-After`` the RP sends; the tests lower the RP's Retry-After floor to 0.1 s (and pass a
small ``polling_interval``) so an update of ``lro_seconds`` takes about that long.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.identity import DefaultAzureCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.cognitiveservices.aio import (
    CognitiveServicesManagementClient as AsyncCognitiveServicesManagementClient,
)
from azure.mgmt.cognitiveservices.models import (
    Account,
    AccountProperties,
    KeyVaultProperties,
)
from azure.mgmt.cognitiveservices.models import (
    Encryption as EncryptionModel,
)

from cmk.sandbox.arm.cognitive.accounts import rp_for, seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.world import (
    Encryption,
    KeyState,
    KeyVersionState,
    Subscription,
    VaultKind,
    VaultState,
)

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "rg-ai"
V0, V1, V_DISABLED = "0" * 32, "1" * 32, "d" * 32


@dataclass
class Seeded:
    sandbox: Sandbox
    vault: VaultState

    def binding(self, version: str) -> Account:
        return Account(
            properties=AccountProperties(
                encryption=EncryptionModel(
                    key_source="Microsoft.KeyVault",
                    key_vault_properties=KeyVaultProperties(
                        key_vault_uri=f"{self.vault.url}/", key_name="cmk", key_version=version
                    ),
                )
            )
        )


def _version(sandbox: Sandbox, version: str, *, enabled: bool = True) -> KeyVersionState:
    now = sandbox.world.clock.now()
    return KeyVersionState(version, "RSA", 2048, None, ["wrapKey", "unwrapKey"], enabled, now, now)


@pytest.fixture
def seeded(sandbox: Sandbox) -> Seeded:
    world = sandbox.world
    with world.lock:
        world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "ai")
        vault = VaultState("kv-fidelity", VaultKind.VAULT, SUB, RG, "eastus", world.tenant_id)
        vault.keys["cmk"] = KeyState(
            "cmk",
            [
                _version(sandbox, V0),
                _version(sandbox, V1),
                _version(sandbox, V_DISABLED, enabled=False),
            ],
        )
        world.vaults[vault.host] = vault
        binding = Encryption("Microsoft.KeyVault", f"{vault.url}/", "cmk", V0)
        for index in range(5):
            account = seed_account(
                world, SUB, RG, f"acct{index}", "eastus", encryption=binding, lro_seconds=0.5
            )
            assert account.identity.system is not None
            world.grant(
                account.identity.system.object_id,
                vault.resource_id,
                "Key Vault Crypto Service Encryption User",
            )
        seed_account(world, SUB, "rg-other", "loner", "eastus", system_identity=False)
        world.grant(sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Contributor")
        rp = rp_for(world)
        rp.retry_after_floor = 0.1
        rp.page_size = 2
    return Seeded(sandbox, vault)


class Recorder:
    """A raw_response_hook that records (method, status, path) of every HTTP attempt."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        request = response.http_request
        self.calls.append((request.method, response.http_response.status_code, request.url))


class ThrottledUntilSeen(Recorder):
    """A Recorder that is also the clock of the sandbox's ARM buckets: time stands still
    (a slow machine cannot refill a bucket between two requests) until a 429 is seen,
    then moves past its Retry-After, so the SDK's retry finds the bucket refilled."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        super().__call__(response)
        if response.http_response.status_code == 429:
            self.now += 10.0


@contextmanager
def _bucket_of_one(seeded: Seeded, kind: str, recorder: ThrottledUntilSeen) -> Iterator[None]:
    """ARM's ``kind`` bucket (read or write) holds one token, on ``recorder``'s clock."""
    throttle = throttle_for(seeded.sandbox.world)
    clock = throttle.clock
    before = {
        name: getattr(throttle, name) for name in (f"{kind}_capacity", f"{kind}_refill_per_second")
    }
    throttle.clock = recorder.clock
    throttle.configure(**{f"{kind}_capacity": 1, f"{kind}_refill_per_second": 1})
    try:
        yield
    finally:
        throttle.clock = clock
        throttle.configure(**before)


def _key_version(account: Account) -> str | None:
    props = account.properties
    assert props is not None and props.encryption is not None
    assert props.encryption.key_vault_properties is not None
    return props.encryption.key_vault_properties.key_version


def _state(account: Account) -> str | None:
    assert account.properties is not None
    return account.properties.provisioning_state


def _client(**kwargs: Any) -> CognitiveServicesManagementClient:
    return CognitiveServicesManagementClient(DefaultAzureCredential(), SUB, **kwargs)


class TestSyncClient:
    def test_get_returns_binding_and_identity(self, seeded: Seeded) -> None:
        """accounts.get deserializes the CMK binding and the system-assigned identity."""
        account = _client().accounts.get(RG, "acct0")
        assert _state(account) == "Succeeded"
        assert account.properties is not None and account.properties.encryption is not None
        assert account.properties.encryption.key_source == "Microsoft.KeyVault"
        assert _key_version(account) == V0
        assert account.identity is not None
        assert account.identity.type == "SystemAssigned"
        assert account.identity.principal_id

    def test_list_follows_next_links(self, seeded: Seeded) -> None:
        """accounts.list pages through nextLink across the whole subscription."""
        recorder = Recorder()
        names = [str(a.name) for a in _client(raw_response_hook=recorder).accounts.list()]
        assert sorted(names) == ["acct0", "acct1", "acct2", "acct3", "acct4", "loner"]
        assert sum("skipToken" in url for _, _, url in recorder.calls) == 2

    def test_list_by_resource_group(self, seeded: Seeded) -> None:
        """accounts.list_by_resource_group returns only that group's accounts."""
        names = [a.name for a in _client().accounts.list_by_resource_group("rg-other")]
        assert names == ["loner"]

    def test_begin_update_polls_until_succeeded(self, seeded: Seeded) -> None:
        """begin_update: 202, status polls while InProgress, final GET with the new version."""
        recorder = Recorder()
        client = _client(raw_response_hook=recorder)
        started = time.monotonic()
        poller = client.accounts.begin_update(
            RG, "acct1", seeded.binding(V1), polling_interval=0.05
        )
        account = poller.result()
        assert time.monotonic() - started >= 0.5
        assert _state(account) == "Succeeded"
        assert _key_version(account) == V1
        assert recorder.calls[0][:2] == ("PATCH", 202)
        polls = [c for c in recorder.calls if "operationStatuses" in c[2]]
        assert len(polls) >= 2
        assert recorder.calls[-1][:2] == ("GET", 200)
        state = seeded.sandbox.world.account(str(account.id))
        assert state is not None
        assert [v for _, v in state.binding_history] == [V0, V1]

    def test_begin_update_fails_with_rp_code(self, seeded: Seeded) -> None:
        """Binding a disabled version: the poller raises with the RP's KeyDisabled code."""
        poller = _client().accounts.begin_update(
            RG, "acct2", seeded.binding(V_DISABLED), polling_interval=0.05
        )
        with pytest.raises(HttpResponseError) as caught:
            poller.result()
        assert caught.value.error is not None
        assert caught.value.error.code == "KeyDisabled"
        account = _client().accounts.get(RG, "acct2")
        assert _state(account) == "Failed"
        assert _key_version(account) == V0

    def test_identity_without_key_access_fails(self, seeded: Seeded) -> None:
        """An account identity without get/wrapKey/unwrapKey: LRO fails KeyVaultAccessDenied."""
        world = seeded.sandbox.world
        with world.lock:
            state = world.account(
                f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
                "Microsoft.CognitiveServices/accounts/acct3"
            )
            assert state is not None and state.identity.system is not None
            world.revoke(state.identity.system.object_id)
        poller = _client().accounts.begin_update(
            RG, "acct3", seeded.binding(V1), polling_interval=0.05
        )
        with pytest.raises(HttpResponseError) as caught:
            poller.result()
        assert caught.value.error is not None
        assert caught.value.error.code == "KeyVaultAccessDenied"

    def test_account_without_identity_is_rejected_at_once(self, seeded: Seeded) -> None:
        """No managed identity: begin_update itself raises 400 AccountIdentityRequired."""
        with pytest.raises(HttpResponseError) as caught:
            _client().accounts.begin_update("rg-other", "loner", seeded.binding(V1))
        assert caught.value.status_code == 400
        assert caught.value.error is not None
        assert caught.value.error.code == "AccountIdentityRequired"

    def test_update_while_updating_conflicts(self, seeded: Seeded) -> None:
        """A second begin_update during the first: ResourceExistsError (409 RequestConflict)."""
        client = _client()
        first = client.accounts.begin_update(RG, "acct4", seeded.binding(V1), polling_interval=0.05)
        with pytest.raises(ResourceExistsError) as caught:
            client.accounts.begin_update(RG, "acct4", seeded.binding(V0))
        assert caught.value.error is not None
        assert caught.value.error.code == "RequestConflict"
        first.result()

    def test_caller_without_role_is_forbidden(self, seeded: Seeded) -> None:
        """Without a role the SDK raises 403 AuthorizationFailed."""
        world = seeded.sandbox.world
        with world.lock:
            world.revoke(seeded.sandbox.app_principal.object_id)
        with pytest.raises(HttpResponseError) as caught:
            _client().accounts.get(RG, "acct0")
        assert caught.value.status_code == 403
        assert caught.value.error is not None
        assert caught.value.error.code == "AuthorizationFailed"

    def test_missing_account_is_not_found(self, seeded: Seeded) -> None:
        """An unknown account raises ResourceNotFoundError with code ResourceNotFound."""
        with pytest.raises(ResourceNotFoundError) as caught:
            _client().accounts.get(RG, "ghost")
        assert caught.value.error is not None
        assert caught.value.error.code == "ResourceNotFound"

    def test_throttled_read_is_retried_after_retry_after(self, seeded: Seeded) -> None:
        """A 429 with Retry-After on GET is retried by the SDK and then succeeds."""
        recorder = ThrottledUntilSeen()
        with _bucket_of_one(seeded, "read", recorder):
            client = _client(raw_response_hook=recorder)
            client.accounts.get(RG, "acct0")
            started = time.monotonic()
            client.accounts.get(RG, "acct0")
        assert [status for _, status, _ in recorder.calls] == [200, 429, 200]
        assert time.monotonic() - started >= 0.9  # it waited the Retry-After (1 s)

    def test_throttled_patch_is_retried(self, seeded: Seeded) -> None:
        """A 429 on PATCH carries Retry-After, so the SDK retries the write too."""
        recorder = ThrottledUntilSeen()
        with _bucket_of_one(seeded, "write", recorder):
            client = _client(raw_response_hook=recorder)
            for value in ("a", "b"):
                client.accounts.begin_update(RG, "acct0", Account(tags={"t": value})).result()
        patches = [status for method, status, _ in recorder.calls if method == "PATCH"]
        assert patches == [200, 429, 200]
        assert client.accounts.get(RG, "acct0").tags == {"t": "b"}


class TestAsyncClient:
    async def test_get_and_list(self, seeded: Seeded) -> None:
        """The aio client reads an account and pages through the listing."""
        async with (
            AsyncDefaultAzureCredential() as credential,
            AsyncCognitiveServicesManagementClient(credential, SUB) as client,
        ):
            account = await client.accounts.get(RG, "acct0")
            names = [a.name async for a in client.accounts.list()]
        assert _key_version(account) == V0
        assert len(names) == 6

    async def test_begin_update_succeeds(self, seeded: Seeded) -> None:
        """The aio poller follows Azure-AsyncOperation to Succeeded and the final GET."""
        async with (
            AsyncDefaultAzureCredential() as credential,
            AsyncCognitiveServicesManagementClient(credential, SUB) as client,
        ):
            poller = await client.accounts.begin_update(
                RG, "acct1", seeded.binding(V1), polling_interval=0.05
            )
            account = await poller.result()
        assert _state(account) == "Succeeded"
        assert _key_version(account) == V1

    async def test_begin_update_fails_with_rp_code(self, seeded: Seeded) -> None:
        """The aio poller raises HttpResponseError carrying the RP's failure code."""
        async with (
            AsyncDefaultAzureCredential() as credential,
            AsyncCognitiveServicesManagementClient(credential, SUB) as client,
        ):
            poller = await client.accounts.begin_update(
                RG, "acct2", seeded.binding(V_DISABLED), polling_interval=0.05
            )
            with pytest.raises(HttpResponseError) as caught:
                await poller.result()
        assert caught.value.error is not None
        assert caught.value.error.code == "KeyDisabled"
