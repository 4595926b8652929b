"""Resource Graph through the real ``ResourceGraphClient`` (sync and async) with
``DefaultAzureCredential``, pointed at the sandbox by the environment only."""

from __future__ import annotations

from typing import Any, cast

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineResponse
from azure.identity import DefaultAzureCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.aio import ResourceGraphClient as AsyncResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.world import Encryption, Subscription, VaultKind, VaultState

SUB = "5d0c3f6e-7a3b-4c1e-9f55-2b1f0b6a9c11"
INVENTORY = (
    "Resources | where type =~ 'microsoft.cognitiveservices/accounts' "
    "| where tostring(properties.encryption.keySource) =~ 'Microsoft.KeyVault' "
    "| project id = tostring(id), subscriptionId = tostring(subscriptionId), "
    "location = tostring(location), "
    "keyVaultUri = tostring(properties.encryption.keyVaultProperties.keyVaultUri), "
    "keyName = tostring(properties.encryption.keyVaultProperties.keyName), "
    "keyVersion = tostring(properties.encryption.keyVaultProperties.keyVersion), "
    "identityClientId = tostring(properties.encryption.keyVaultProperties.identityClientId), "
    "identityType = tostring(identity.type), "
    "provisioningState = tostring(properties.provisioningState) | order by id asc"
)
ACCOUNTS = 2500


@pytest.fixture
def seeded(sandbox: Sandbox) -> Sandbox:
    world = sandbox.world
    with world.lock:
        world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "inventory")
        vault = VaultState("kv-arg", VaultKind.VAULT, SUB, "rg-keys", "eastus", world.tenant_id)
        world.vaults[vault.host] = vault
        binding = Encryption("Microsoft.KeyVault", f"{vault.url}/", "cmk", "0" * 32)
        for index in range(ACCOUNTS):
            seed_account(world, SUB, "rg-ai", f"acct{index:05d}", "eastus", encryption=binding)
        world.grant(sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Reader")
    return sandbox


class Headers:
    """A raw_response_hook keeping the response headers of every attempt."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, str]]] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        http = response.http_response
        self.seen.append((http.status_code, dict(http.headers)))


def _request(token: str | None = None, **options: Any) -> QueryRequest:
    return QueryRequest(
        subscriptions=[SUB],
        query=INVENTORY,
        options=QueryRequestOptions(skip_token=token, **options),
    )


class TestSyncClient:
    def test_pages_with_skip_token(self, seeded: Sandbox) -> None:
        """resources() pages 1,000 rows at a time via $skipToken until it is absent."""
        hook = Headers()
        client = ResourceGraphClient(DefaultAzureCredential(), raw_response_hook=hook)
        ids: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            response = client.resources(_request(token))
            pages += 1
            assert response.total_records == ACCOUNTS
            assert response.result_truncated == "false"
            rows = cast(list[dict[str, Any]], response.data)  # the model types it as a mapping
            ids += [row["id"] for row in rows]
            token = response.skip_token
            if not token:
                break
        assert pages == 3
        assert ids == sorted(ids)
        assert len(set(ids)) == ACCOUNTS
        assert all("x-ms-user-quota-remaining" in headers for _, headers in hook.seen)

    def test_table_result_format(self, seeded: Sandbox) -> None:
        """resultFormat 'table' deserializes into columns and rows."""
        client = ResourceGraphClient(DefaultAzureCredential())
        response = client.resources(_request(result_format="table", top=5))
        assert response.count == 5
        assert response.data["columns"][0] == {"name": "id", "type": "string"}
        assert len(response.data["rows"]) == 5

    def test_invalid_query_raises_bad_request(self, seeded: Sandbox) -> None:
        """A malformed query raises HttpResponseError 400 with ARG's error details."""
        client = ResourceGraphClient(DefaultAzureCredential())
        with pytest.raises(HttpResponseError) as caught:
            client.resources(QueryRequest(subscriptions=[SUB], query="Resources | where ("))
        assert caught.value.status_code == 400
        assert caught.value.error is not None
        assert caught.value.error.code == "BadRequest"
        assert [d.code for d in caught.value.error.details] == ["InvalidQuery", "ParserFailure"]

    def test_quota_exhaustion_is_retried(self, seeded: Sandbox) -> None:
        """Over quota: 429 with Retry-After, retried by the SDK, then answered."""
        throttle = throttle_for(seeded.world)
        throttle.configure(graph_quota=1, graph_window_seconds=1)
        # The quota's time moves when the test says (a 429 seen: the window passes), never
        # with the machine's speed, which would reopen the window before the second query.
        now, monotonic = [0.0], throttle.clock
        throttle.clock = lambda: now[0]
        hook = Headers()

        def seen(response: Any) -> None:
            hook(response)
            if response.http_response.status_code == 429:
                now[0] += 2.0

        try:
            client = ResourceGraphClient(DefaultAzureCredential(), raw_response_hook=seen)
            client.resources(_request(top=1))
            client.resources(_request(top=1))
        finally:
            throttle.clock = monotonic
            throttle.configure(graph_quota=15, graph_window_seconds=5.0)
        assert [status for status, _ in hook.seen] == [200, 429, 200]
        assert hook.seen[1][1]["x-ms-user-quota-remaining"] == "0"

    def test_caller_without_read_sees_nothing(self, seeded: Sandbox) -> None:
        """A caller with no role on the subscription gets an empty result, not others' rows."""
        world = seeded.world
        with world.lock:
            world.revoke(seeded.app_principal.object_id)
        response = ResourceGraphClient(DefaultAzureCredential()).resources(_request())
        assert response.total_records == 0


class TestAsyncClient:
    async def test_pages_with_skip_token(self, seeded: Sandbox) -> None:
        """The aio client pages the inventory the same way."""
        rows = 0
        async with (
            AsyncDefaultAzureCredential() as credential,
            AsyncResourceGraphClient(credential) as client,
        ):
            token: str | None = None
            while True:
                response = await client.resources(_request(token))
                rows += response.count
                token = response.skip_token
                if not token:
                    break
        assert rows == ACCOUNTS
