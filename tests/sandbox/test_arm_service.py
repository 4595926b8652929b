"""The ARM service over raw HTTP (aiohttp test server): status codes, headers and bodies of
the Cognitive Services accounts RP, authentication, RBAC and throttling."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from azure.mgmt.cognitiveservices.models import Account

from cmk.sandbox.arm import service as arm
from cmk.sandbox.arm.cognitive.accounts import rp_for, seed_account
from cmk.sandbox.platform.context import ServiceContext, TokenClaims
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.world import (
    Encryption,
    KeyState,
    KeyVersionState,
    Principal,
    Subscription,
    VaultKind,
    VaultState,
    World,
)

DATA = Path(__file__).parent / "data" / "arm"
SUB = "11111111-2222-3333-4444-555555555555"
RG = "rg-ai"
API = "api-version=2025-09-01"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Tokens:
    """A TokenVerifier that knows tokens by name."""

    claims: dict[str, TokenClaims] = field(default_factory=dict)

    def verify(self, token: str) -> TokenClaims | None:
        return self.claims.get(token)


def _version(world: World, name: str, **changes: Any) -> KeyVersionState:
    now = world.clock.now()
    version = KeyVersionState(
        version=name,
        kty="RSA",
        size=2048,
        curve=None,
        key_ops=["wrapKey", "unwrapKey", "encrypt", "decrypt"],
        enabled=True,
        created=now,
        updated=now,
    )
    for attr, value in changes.items():
        setattr(version, attr, value)
    return version


def _vault(world: World, name: str, location: str = "eastus", **changes: Any) -> VaultState:
    vault = VaultState(name, VaultKind.VAULT, SUB, RG, location, world.tenant_id)
    for attr, value in changes.items():
        setattr(vault, attr, value)
    now = world.clock.now()
    vault.keys["cmk"] = KeyState(
        "cmk",
        [
            _version(world, "0" * 32),
            _version(world, "1" * 32),
            _version(world, "d" * 32, enabled=False),
            _version(world, "e" * 32, expires=now - timedelta(days=1)),
            _version(world, "f" * 32, not_before=now + timedelta(days=1)),
            _version(world, "c" * 32, kty="EC", size=None, curve="P-256"),
            _version(world, "b" * 32, key_ops=["sign", "verify"]),
            _version(world, "2" * 32),
        ],
    )
    world.vaults[vault.host] = vault
    return vault


@dataclass
class Env:
    world: World
    client: TestClient[Any, Any]
    clock: FakeClock
    admin: Principal
    reader: Principal
    nobody: Principal

    def url(self, name: str = "acct", suffix: str = "") -> str:
        return (
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
            f"Microsoft.CognitiveServices/accounts/{name}{suffix}?{API}"
        )

    async def call(
        self, method: str, url: str, token: str = "admin", body: object = None
    ) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.client.request(method, url, headers=headers, json=body)
        text = await response.text()
        return response.status, dict(response.headers), json.loads(text) if text else None


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    world = World()
    world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "ai")
    admin = world.add_principal(Principal.new("admin", world.tenant_id))
    reader = world.add_principal(Principal.new("reader", world.tenant_id))
    nobody = world.add_principal(Principal.new("nobody", world.tenant_id))
    world.grant(admin.object_id, f"/subscriptions/{SUB}", "Contributor")
    world.grant(reader.object_id, f"/subscriptions/{SUB}", "Reader")
    kv1 = _vault(world, "kv1")
    _vault(world, "kv2")
    kvwest = _vault(world, "kvwest", "westus")
    kvpurge = _vault(world, "kvpurge", purge_protection=False)
    kvfirewall = _vault(world, "kvfw", network_default_action="Deny", network_bypass="None")
    binding = Encryption("Microsoft.KeyVault", f"{kv1.url}/", "cmk", "0" * 32)
    acct = seed_account(world, SUB, RG, "acct", "eastus", encryption=binding)
    fresh = seed_account(world, SUB, RG, "fresh", "eastus")
    seed_account(world, SUB, RG, "noid", "eastus", system_identity=False)
    for account in (acct, fresh):
        assert account.identity.system is not None
        for vault in (kv1, kvwest, kvpurge, kvfirewall):
            world.grant(
                account.identity.system.object_id,
                vault.resource_id,
                "Key Vault Crypto Service Encryption User",
            )
    tokens = Tokens(
        {
            "admin": TokenClaims(admin, "https://management.azure.com", 2**31),
            "reader": TokenClaims(reader, "https://management.core.windows.net", 2**31),
            "nobody": TokenClaims(nobody, "https://management.azure.com", 2**31),
            "vault": TokenClaims(admin, "https://vault.azure.net", 2**31),
            "foreign": TokenClaims(
                Principal.new("x", "99999999-0000-0000-0000-000000000000"),
                "https://management.azure.com",
                2**31,
            ),
        }
    )
    clock = FakeClock()
    rp_for(world).clock = clock
    client: TestClient[Any, Any] = TestClient(
        TestServer(arm.build_app(ServiceContext(world, tokens)))
    )
    await client.start_server()
    try:
        yield Env(world, client, clock, admin, reader, nobody)
    finally:
        await client.close()


def _cmk(version: str | None, vault: str = "kv1", **extra: str) -> dict[str, Any]:
    props = {"keyVaultUri": f"https://{vault}.vault.azure.net/", "keyName": "cmk", **extra}
    if version is not None:
        props["keyVersion"] = version
    return {
        "properties": {
            "encryption": {"keySource": "Microsoft.KeyVault", "keyVaultProperties": props}
        }
    }


class TestAuthentication:
    async def test_missing_token_is_authentication_failed(self, env: Env) -> None:
        """No Authorization header: 401 AuthenticationFailed with a Bearer challenge."""
        status, headers, body = await env.call("GET", env.url(), token="")
        assert status == 401
        assert body["error"]["code"] == "AuthenticationFailed"
        assert headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")

    async def test_unknown_token_is_invalid(self, env: Env) -> None:
        """A token the identity service did not issue: 401 InvalidAuthenticationToken."""
        status, _, body = await env.call("GET", env.url(), token="forged")
        assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationToken")

    async def test_key_vault_audience_is_rejected(self, env: Env) -> None:
        """A token for https://vault.azure.net: 401 InvalidAuthenticationTokenAudience."""
        status, _, body = await env.call("GET", env.url(), token="vault")
        assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationTokenAudience")

    async def test_token_of_another_tenant_is_rejected(self, env: Env) -> None:
        """A token from another tenant: 401 InvalidAuthenticationTokenTenant."""
        status, _, body = await env.call("GET", env.url(), token="foreign")
        assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationTokenTenant")

    async def test_missing_api_version(self, env: Env) -> None:
        """No api-version: 400 MissingApiVersionParameter."""
        status, _, body = await env.call("GET", env.url().split("?")[0])
        assert (status, body["error"]["code"]) == (400, "MissingApiVersionParameter")


class TestAuthorization:
    async def test_caller_without_role_gets_arm_message(self, env: Env) -> None:
        """No role: 403 AuthorizationFailed with ARM's message naming action and scope."""
        status, _, body = await env.call("GET", env.url(), token="nobody")
        assert status == 403
        assert body["error"]["code"] == "AuthorizationFailed"
        scope = env.url().split("?")[0]
        assert body["error"]["message"] == (
            f"The client '{env.nobody.client_id}' with object id '{env.nobody.object_id}' "
            "does not have authorization to perform action "
            f"'Microsoft.CognitiveServices/accounts/read' over scope '{scope}' or the scope "
            "is invalid. If access was recently granted, please refresh your credentials."
        )

    async def test_reader_can_read_but_not_write(self, env: Env) -> None:
        """Reader: GET 200, PATCH 403 for the write action."""
        status, _, _ = await env.call("GET", env.url(), token="reader")
        assert status == 200
        status, _, body = await env.call("PATCH", env.url(), token="reader", body={"tags": {}})
        assert status == 403
        assert "Microsoft.CognitiveServices/accounts/write" in body["error"]["message"]


class TestAccounts:
    async def test_get_has_spec_shape(self, env: Env) -> None:
        """GET returns the spec example's top-level keys plus identity and encryption."""
        example = json.loads((DATA / "GetAccount.json").read_text())["responses"]["200"]["body"]
        status, _, body = await env.call("GET", env.url())
        assert status == 200
        assert set(example) <= set(body)
        assert set(example["properties"]) <= set(body["properties"])
        assert body["type"] == "Microsoft.CognitiveServices/accounts"
        assert body["identity"]["type"] == "SystemAssigned"
        assert body["properties"]["encryption"] == {
            "keySource": "Microsoft.KeyVault",
            "keyVaultProperties": {
                "keyVaultUri": "https://kv1.vault.azure.net/",
                "keyName": "cmk",
                "keyVersion": "0" * 32,
            },
        }

    async def test_get_body_uses_only_modelled_fields(self, env: Env) -> None:
        """Every field the RP returns is known to the SDK's Account model (no typos)."""
        _, _, body = await env.call("GET", env.url())
        assert Account.deserialize(body).serialize(keep_readonly=True) == body

    async def test_microsoft_managed_account_has_no_encryption(self, env: Env) -> None:
        """An account on Microsoft-managed keys omits properties.encryption, as the service."""
        _, _, body = await env.call("GET", env.url("fresh"))
        assert "encryption" not in body["properties"]

    async def test_missing_account_is_resource_not_found(self, env: Env) -> None:
        """Unknown account: 404 ResourceNotFound with ARM's message."""
        status, _, body = await env.call("GET", env.url("ghost"))
        assert status == 404
        assert body["error"] == {
            "code": "ResourceNotFound",
            "message": f"The Resource 'Microsoft.CognitiveServices/accounts/ghost' under "
            f"resource group '{RG}' was not found. For more details please go to "
            "https://aka.ms/ARMResourceNotFoundFix",
        }

    async def test_missing_subscription(self, env: Env) -> None:
        """Unknown subscription: 404 SubscriptionNotFound."""
        url = env.url().replace(SUB, "00000000-0000-0000-0000-000000000000")
        status, _, body = await env.call("GET", url)
        assert (status, body["error"]["code"]) == (404, "SubscriptionNotFound")

    async def test_paths_are_case_insensitive(self, env: Env) -> None:
        """ARM matches provider and collection names regardless of case."""
        url = env.url().replace(
            "Microsoft.CognitiveServices/accounts", "microsoft.cognitiveservices/ACCOUNTS"
        )
        status, _, body = await env.call("GET", url)
        assert (status, body["name"]) == (200, "acct")

    async def test_list_pages_with_skip_token(self, env: Env) -> None:
        """Listing pages by page_size and links the next page with $skipToken."""
        rp_for(env.world).page_size = 2
        url: str | None = (
            f"/subscriptions/{SUB}/providers/Microsoft.CognitiveServices/accounts?{API}"
        )
        names: list[str] = []
        pages = 0
        while url:
            status, _, body = await env.call("GET", url)
            assert status == 200
            names += [a["name"] for a in body["value"]]
            url = body.get("nextLink")
            if url:
                assert "$skipToken=" in url
                assert url.startswith("https://")
                url = url.split("://", 1)[1].split("/", 1)[1]
                url = "/" + url
            pages += 1
        assert sorted(names) == ["acct", "fresh", "noid"]
        assert pages == 2

    async def test_list_by_resource_group_filters(self, env: Env) -> None:
        """Listing a resource group returns only its accounts."""
        seed_account(env.world, SUB, "other-rg", "elsewhere", "eastus")
        url = (
            f"/subscriptions/{SUB}/resourceGroups/other-rg/providers/"
            f"Microsoft.CognitiveServices/accounts?{API}"
        )
        status, _, body = await env.call("GET", url)
        assert status == 200
        assert [a["name"] for a in body["value"]] == ["elsewhere"]
        assert "nextLink" not in body

    async def test_put_creates_account(self, env: Env) -> None:
        """PUT of a new account: 201 with the account, Succeeded."""
        body = {
            "location": "East US",
            "kind": "OpenAI",
            "sku": {"name": "S0"},
            "identity": {"type": "SystemAssigned"},
        }
        status, _, created = await env.call("PUT", env.url("newone"), body=body)
        assert status == 201
        assert created["location"] == "eastus"
        assert created["properties"]["provisioningState"] == "Succeeded"
        assert created["identity"]["principalId"] in env.world.principals

    async def test_put_existing_in_other_region_is_refused(self, env: Env) -> None:
        """PUT of an existing account with another location: 400 InvalidResourceLocation."""
        status, _, body = await env.call("PUT", env.url(), body={"location": "westus"})
        assert (status, body["error"]["code"]) == (400, "InvalidResourceLocation")


class TestUpdates:
    async def test_patch_starts_lro_with_polling_headers(self, env: Env) -> None:
        """PATCH of the key version: 202, Updating, Azure-AsyncOperation/Location/Retry-After."""
        env.world.account(env.url().split("?")[0]).lro_seconds = 5  # type: ignore[union-attr]
        status, headers, body = await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        assert status == 202
        assert body["properties"]["provisioningState"] == "Updating"
        assert "/operationStatuses/" in headers["Azure-AsyncOperation"]
        assert "/operationResults/" in headers["Location"]
        assert headers["Retry-After"] == "5"

    async def test_operation_runs_for_lro_seconds_then_succeeds(self, env: Env) -> None:
        """Status is InProgress until lro_seconds passed, then Succeeded and bound."""
        account = env.world.account(env.url().split("?")[0])
        assert account is not None
        account.lro_seconds = 5
        _, headers, _ = await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        status_url = "/" + headers["Azure-AsyncOperation"].split("/", 3)[3]
        result_url = "/" + headers["Location"].split("/", 3)[3]
        status, _, body = await env.call("GET", status_url)
        assert (status, body["status"]) == (200, "InProgress")
        assert "endTime" not in body
        status, _, _ = await env.call("GET", result_url)
        assert status == 202
        env.clock.now += 5
        status, _, body = await env.call("GET", status_url)
        assert body["status"] == "Succeeded"
        assert {"id", "name", "status", "startTime", "endTime"} <= set(body)
        status, _, final = await env.call("GET", result_url)
        assert status == 200
        assert final["properties"]["encryption"]["keyVaultProperties"]["keyVersion"] == "1" * 32
        assert [v for _, v in account.binding_history] == ["0" * 32, "1" * 32]

    async def test_held_operation_runs_until_finished_now(self, env: Env) -> None:
        """lro_seconds=inf keeps an update InProgress however much time passes (Retry-After
        at the cap); finish_now ends it at once, Succeeded and bound, and only once."""
        account = env.world.account(env.url().split("?")[0])
        assert account is not None
        account.lro_seconds = math.inf
        _, headers, _ = await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        status_url = "/" + headers["Azure-AsyncOperation"].split("/", 3)[3]
        assert headers["Retry-After"] == "15"
        env.clock.now += 10**9
        _, headers, body = await env.call("GET", status_url)
        assert (body["status"], headers["Retry-After"]) == ("InProgress", "15")
        assert account.provisioning_state == "Updating"

        operation = rp_for(env.world).finish_now(account.resource_id.upper())

        assert operation.status == "Succeeded"
        _, _, body = await env.call("GET", status_url)
        assert body["status"] == "Succeeded"
        assert account.provisioning_state == "Succeeded"
        assert [v for _, v in account.binding_history] == ["0" * 32, "1" * 32]
        with pytest.raises(KeyError):
            rp_for(env.world).finish_now(account.resource_id)

    async def test_get_settles_finished_operation(self, env: Env) -> None:
        """A GET after the duration shows Succeeded without anyone polling the status."""
        await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        _, _, body = await env.call("GET", env.url())
        assert body["properties"]["provisioningState"] == "Succeeded"

    async def test_patch_while_updating_conflicts(self, env: Env) -> None:
        """A second PATCH during the update: 409 RequestConflict."""
        env.world.account(env.url().split("?")[0]).lro_seconds = 5  # type: ignore[union-attr]
        await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        status, _, body = await env.call("PATCH", env.url(), body=_cmk("2" * 32))
        assert status == 409
        assert body["error"]["code"] == "RequestConflict"
        assert "provisioning state is not terminal" in body["error"]["message"]

    async def test_tag_only_patch_is_immediate(self, env: Env) -> None:
        """A PATCH without an encryption change answers 200 Succeeded at once."""
        status, headers, body = await env.call("PATCH", env.url(), body={"tags": {"a": "b"}})
        assert status == 200
        assert "Azure-AsyncOperation" not in headers
        assert body["tags"] == {"a": "b"}

    async def test_restating_the_binding_is_immediate(self, env: Env) -> None:
        """PATCH with the current binding answers 200 without an operation or history."""
        status, _, _ = await env.call("PATCH", env.url(), body=_cmk("0" * 32))
        account = env.world.account(env.url().split("?")[0])
        assert status == 200
        assert account is not None
        assert len(account.binding_history) == 1

    async def test_versionless_binds_latest(self, env: Env) -> None:
        """keyVersion omitted: the RP binds and reports the key's latest version."""
        status, _, _ = await env.call("PATCH", env.url(), body=_cmk(None))
        assert status == 202
        _, _, body = await env.call("GET", env.url())
        assert body["properties"]["encryption"]["keyVaultProperties"]["keyVersion"] == "2" * 32

    @pytest.mark.parametrize(
        ("name", "body", "code"),
        [
            ("noid", _cmk("1" * 32), "AccountIdentityRequired"),
            (
                "acct",
                _cmk("1" * 32, identityClientId="1b1b1b1b-0000-0000-0000-000000000000"),
                "IdentityNotFound",
            ),
            ("acct", _cmk("1" * 32, vault="kv2"), "KeyVaultChangeNotSupported"),
            (
                "acct",
                {"properties": {"encryption": {"keySource": "Microsoft.KeyVault"}}},
                "InvalidKeyVaultProperties",
            ),
            ("acct", {"properties": {"encryption": {"keySource": "Contoso"}}}, "InvalidKeySource"),
        ],
    )
    async def test_request_errors_are_synchronous(
        self, env: Env, name: str, body: dict[str, Any], code: str
    ) -> None:
        """Problems visible in the request alone: 400 with the RP's code, nothing changes."""
        status, _, answer = await env.call("PATCH", env.url(name), body=body)
        assert (status, answer["error"]["code"]) == (400, code)
        account = env.world.account(env.url(name).split("?")[0])
        assert account is not None
        assert account.provisioning_state == "Succeeded"

    @pytest.mark.parametrize(
        ("name", "vault", "version", "code"),
        [
            ("acct", "kv1", "d" * 32, "KeyDisabled"),
            ("acct", "kv1", "e" * 32, "KeyExpired"),
            ("acct", "kv1", "f" * 32, "KeyNotYetValid"),
            ("acct", "kv1", "9" * 32, "KeyNotFound"),
            ("acct", "kv1", "c" * 32, "UnsupportedKeyType"),
            ("acct", "kv1", "b" * 32, "KeyOperationNotPermitted"),
            ("fresh", "kvwest", "1" * 32, "KeyVaultRegionMismatch"),
            ("fresh", "kvpurge", "1" * 32, "KeyVaultPurgeProtectionRequired"),
            ("fresh", "kvfw", "1" * 32, "KeyVaultAccessDenied"),
            ("fresh", "kvnone", "1" * 32, "KeyVaultNotFound"),
        ],
    )
    async def test_key_vault_errors_fail_the_operation(
        self, env: Env, name: str, vault: str, version: str, code: str
    ) -> None:
        """Problems found in Key Vault: 202, then status Failed with the code; binding kept."""
        account = env.world.account(env.url(name).split("?")[0])
        assert account is not None
        before = account.encryption
        status, headers, _ = await env.call("PATCH", env.url(name), body=_cmk(version, vault))
        assert status == 202
        status_url = "/" + headers["Azure-AsyncOperation"].split("/", 3)[3]
        _, _, body = await env.call("GET", status_url)
        assert body["status"] == "Failed"
        assert body["error"]["code"] == code
        assert account.provisioning_state == "Failed"
        assert account.encryption == before

    async def test_identity_without_key_permissions_fails(self, env: Env) -> None:
        """Revoking the account identity's key role makes the update fail KeyVaultAccessDenied."""
        account = env.world.account(env.url().split("?")[0])
        assert account is not None and account.identity.system is not None
        env.world.revoke(account.identity.system.object_id)
        _, headers, _ = await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        _, _, body = await env.call("GET", "/" + headers["Azure-AsyncOperation"].split("/", 3)[3])
        assert (body["status"], body["error"]["code"]) == ("Failed", "KeyVaultAccessDenied")

    async def test_failed_account_accepts_a_new_update(self, env: Env) -> None:
        """After a Failed update the account can be updated again (Failed is terminal)."""
        await env.call("PATCH", env.url(), body=_cmk("d" * 32))
        await env.call("GET", env.url())
        status, _, _ = await env.call("PATCH", env.url(), body=_cmk("1" * 32))
        assert status == 202
        _, _, body = await env.call("GET", env.url())
        assert body["properties"]["provisioningState"] == "Succeeded"


class TestThrottlingHeaders:
    async def test_every_answer_reports_remaining_reads(self, env: Env) -> None:
        """Reads carry x-ms-ratelimit-remaining-subscription-reads, counting down."""
        _, first, _ = await env.call("GET", env.url())
        _, second, _ = await env.call("GET", env.url("ghost"))
        remaining = "x-ms-ratelimit-remaining-subscription-reads"
        assert int(first[remaining]) == int(second[remaining]) + 1

    async def test_writes_use_their_own_bucket(self, env: Env) -> None:
        """Writes report x-ms-ratelimit-remaining-subscription-writes."""
        _, headers, _ = await env.call("PATCH", env.url(), body={"tags": {}})
        assert headers["x-ms-ratelimit-remaining-subscription-writes"] == "199"

    async def test_empty_bucket_answers_429_with_retry_after(self, env: Env) -> None:
        """With the read bucket empty: 429 SubscriptionRequestsThrottled and Retry-After
        (the bucket's clock stands still: a slow machine cannot refill it in between)."""
        throttle = throttle_for(env.world)
        clock, throttle.clock = throttle.clock, lambda: 0.0
        try:
            throttle.configure(read_capacity=1, read_refill_per_second=0.5)
            await env.call("GET", env.url())
            status, headers, body = await env.call("GET", env.url())
        finally:
            throttle.clock = clock
            throttle.configure(read_capacity=250, read_refill_per_second=25)
        assert status == 429
        assert headers["Retry-After"] == "2"
        assert headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"
        assert body["error"]["code"] == "SubscriptionRequestsThrottled"

    async def test_switched_off_never_throttles(self, env: Env) -> None:
        """With throttling disabled, an exhausted bucket still lets requests through."""
        throttle = throttle_for(env.world)
        throttle.configure(read_capacity=1, read_refill_per_second=0)
        throttle.enabled = False
        for _ in range(3):
            status, _, _ = await env.call("GET", env.url())
            assert status == 200
