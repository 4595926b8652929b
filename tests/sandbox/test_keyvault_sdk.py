"""Fidelity tests: the real azure-keyvault-keys clients (sync and async) with
DefaultAzureCredential against the sandbox's Key Vault, configured only by the environment."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.identity import DefaultAzureCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential
from azure.keyvault.keys import (
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyType,
    KeyVaultKey,
)
from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient

from cmk.sandbox.core import Sandbox
from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.world import KeyEvent, KeyEventType, Principal, VaultKind, VaultState

SUB = "00000000-0000-4000-8000-0000000000aa"


def _add_vault(
    sandbox: Sandbox,
    kind: VaultKind = VaultKind.VAULT,
    *,
    role: str | None = "Key Vault Crypto Officer",
) -> VaultState:
    """A fresh vault (a new name, so the SDK's process-wide challenge cache is cold) on which
    the app identity holds ``role`` (None: no role at all)."""
    world = sandbox.world
    prefix, suffix = ("kv", "vault.azure.net")
    if kind is VaultKind.MANAGED_HSM:
        prefix, suffix = ("hsm", "managedhsm.azure.net")
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    vault = VaultState(name, kind, SUB, "rg-cmk", "westeurope", world.tenant_id, dns_suffix=suffix)
    with world.lock:
        world.vaults[vault.host] = vault
        if role is not None:
            world.grant(sandbox.app_principal.object_id, vault.resource_id, role)
    return vault


@pytest.fixture
def vault(sandbox: Sandbox) -> VaultState:
    return _add_vault(sandbox)


@pytest.fixture
def events(sandbox: Sandbox) -> list[KeyEvent]:
    seen: list[KeyEvent] = []
    sandbox.world.add_key_event_listener(seen.append)
    return seen


@pytest.fixture
def client(vault: VaultState) -> Iterator[KeyClient]:
    with KeyClient(vault.url, DefaultAzureCredential()) as key_client:
        yield key_client


def _modulus(key: KeyVaultKey) -> bytes:
    """The RSA modulus of a key (JsonWebKey sets its fields dynamically)."""
    modulus = vars(key.key)["n"]
    assert isinstance(modulus, bytes)
    return modulus


def _statuses(sandbox: Sandbox, vault: VaultState, method: str, path: str) -> list[int]:
    return [r.status for r in sandbox.counters.matching(host=vault.host, path=path, method=method)]


class TestSyncKeyClient:
    """azure.keyvault.keys.KeyClient against the emulated Key Vault."""

    def test_challenge_then_create_with_body(
        self, sandbox: Sandbox, vault: VaultState, client: KeyClient
    ) -> None:
        """The first (bodiless) create gets the 401 challenge; the retry with body succeeds."""
        key = client.create_rsa_key("cmk", size=2048)
        assert _statuses(sandbox, vault, "POST", r"^/keys/cmk/create$") == [401, 200]
        assert key.key_type == KeyType.rsa and len(_modulus(key)) == 256
        assert key.properties.recovery_level == "Recoverable"
        assert key.properties.recoverable_days == 90
        assert key.id == f"{vault.url}/keys/cmk/{key.properties.version}"

    def test_get_latest_and_a_version(self, vault: VaultState, client: KeyClient) -> None:
        """get_key without a version returns the latest; with one, that version."""
        first = client.create_rsa_key("cmk")
        second = client.create_rsa_key("cmk", size=3072)
        assert client.get_key("cmk").properties.version == second.properties.version
        got = client.get_key("cmk", first.properties.version)
        assert got.id == first.id and len(_modulus(got)) == 256

    def test_new_versions_are_announced(self, client: KeyClient, events: list[KeyEvent]) -> None:
        """Create and rotate through the SDK each emit KeyNewVersionCreated."""
        created = client.create_rsa_key("cmk")
        rotated = client.rotate_key("cmk")
        assert [(e.event_type, e.version) for e in events] == [
            (KeyEventType.NEW_VERSION, created.properties.version),
            (KeyEventType.NEW_VERSION, rotated.properties.version),
        ]

    def test_list_versions_pages_with_max_page_size(
        self, sandbox: Sandbox, vault: VaultState, client: KeyClient
    ) -> None:
        """30 versions come back exactly once over 5 pages of 7 (and 2 default pages)."""
        made = {add_key_version(sandbox.world, vault, "cmk", emit=False).version for _ in range(30)}
        pages = list(client.list_properties_of_key_versions("cmk", max_page_size=7).by_page())
        versions = [props.version for page in pages for props in page]
        assert len(pages) == 5 and len(versions) == 30 and set(versions) == made
        default_pages = list(client.list_properties_of_key_versions("cmk").by_page())
        assert [len(list(page)) for page in default_pages] == [25, 5]

    def test_list_keys(self, sandbox: Sandbox, vault: VaultState, client: KeyClient) -> None:
        """list_properties_of_keys yields every key once, across pages."""
        for index in range(4):
            add_key_version(sandbox.world, vault, f"key-{index}", emit=False)
        names = [p.name for p in client.list_properties_of_keys(max_page_size=3)]
        assert names == ["key-0", "key-1", "key-2", "key-3"]

    def test_update_properties(
        self, sandbox: Sandbox, vault: VaultState, client: KeyClient
    ) -> None:
        """update_key_properties changes enabled, expiry, operations and tags in the world."""
        key = client.create_rsa_key("cmk")
        expires = datetime(2031, 1, 1, tzinfo=UTC)
        props = client.update_key_properties(
            "cmk",
            key.properties.version,
            enabled=False,
            expires_on=expires,
            key_operations=["wrapKey", "unwrapKey"],
            tags={"owner": "cmk"},
        ).properties
        assert (props.enabled, props.expires_on, props.tags) == (False, expires, {"owner": "cmk"})
        version = vault.keys["cmk"].versions[0]
        assert (version.enabled, version.expires, version.key_ops) == (
            False,
            expires,
            ["wrapKey", "unwrapKey"],
        )

    def test_rotate_and_rotation_policy(self, client: KeyClient) -> None:
        """Default policy, then a set policy round-trips and drives the rotated expiry."""
        client.create_rsa_key("cmk")
        default = client.get_key_rotation_policy("cmk")
        assert [(a.action, a.time_before_expiry) for a in default.lifetime_actions] == [
            (KeyRotationPolicyAction.notify, "P30D")
        ]
        actions = [
            KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D"),
            KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P10D"),
        ]
        updated = client.update_key_rotation_policy(
            "cmk", KeyRotationPolicy(), lifetime_actions=actions, expires_in="P1Y"
        )
        fetched = client.get_key_rotation_policy("cmk")
        assert fetched.expires_in == updated.expires_in == "P1Y"
        assert fetched.id == updated.id and fetched.created_on is not None
        triggers = {
            (a.action, a.time_after_create, a.time_before_expiry) for a in fetched.lifetime_actions
        }
        assert triggers == {
            (KeyRotationPolicyAction.rotate, "P90D", None),
            (KeyRotationPolicyAction.notify, None, "P10D"),
        }
        rotated = client.rotate_key("cmk")
        assert rotated.properties.expires_on is not None
        lifetime = rotated.properties.expires_on - datetime.now(UTC)
        assert timedelta(days=364) < lifetime <= timedelta(days=365)

    def test_missing_key_is_resource_not_found(self, client: KeyClient) -> None:
        """KeyNotFound surfaces as ResourceNotFoundError with Key Vault's code."""
        with pytest.raises(ResourceNotFoundError) as caught:
            client.get_key("absent")
        assert caught.value.error is not None and caught.value.error.code == "KeyNotFound"

    def test_without_access_is_forbidden(self, sandbox: Sandbox) -> None:
        """A vault where the app has no role answers 403 Forbidden (ForbiddenByRbac)."""
        vault = _add_vault(sandbox, role=None)
        add_key_version(sandbox.world, vault, "cmk")
        with (
            KeyClient(vault.url, DefaultAzureCredential()) as key_client,
            pytest.raises(HttpResponseError) as caught,
        ):
            key_client.get_key("cmk")
        assert caught.value.status_code == 403
        assert caught.value.error is not None and caught.value.error.code == "Forbidden"
        assert "ForbiddenByRbac" in str(caught.value)

    def test_read_only_role_cannot_rotate(self, sandbox: Sandbox) -> None:
        """With the encryption-user role the app reads the key but rotating is 403."""
        vault = _add_vault(sandbox, role="Key Vault Crypto Service Encryption User")
        add_key_version(sandbox.world, vault, "cmk")
        with KeyClient(vault.url, DefaultAzureCredential()) as key_client:
            assert key_client.get_key("cmk").name == "cmk"
            with pytest.raises(HttpResponseError) as caught:
                key_client.rotate_key("cmk")
        assert caught.value.status_code == 403

    def test_access_policy_vault(self, sandbox: Sandbox) -> None:
        """On an access-policy vault a get-only policy reads but cannot create (AccessDenied)."""
        vault = _add_vault(sandbox, role=None)
        vault.enable_rbac_authorization = False
        vault.access_policies[sandbox.app_principal.object_id] = {"get"}
        add_key_version(sandbox.world, vault, "cmk")
        with KeyClient(vault.url, DefaultAzureCredential()) as key_client:
            assert key_client.get_key("cmk").name == "cmk"
            with pytest.raises(HttpResponseError) as caught:
                key_client.create_rsa_key("cmk")
        assert caught.value.status_code == 403 and "AccessDenied" in str(caught.value)

    def test_other_tenant_identity_is_unauthenticated(self, sandbox: Sandbox) -> None:
        """An identity of another tenant is refused: ClientAuthenticationError (401)."""
        vault = _add_vault(sandbox)
        outsider = Principal.new("outsider", str(uuid.uuid4()))
        sandbox.add_host_identity("outsider", outsider)
        env = sandbox.env("outsider")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("IDENTITY_HEADER", env["IDENTITY_HEADER"])
            with (
                KeyClient(vault.url, DefaultAzureCredential()) as key_client,
                pytest.raises(ClientAuthenticationError) as caught,
            ):
                key_client.get_key("cmk")
        assert caught.value.status_code == 401 and "Invalid issuer" in str(caught.value)

    def test_managed_hsm(self, sandbox: Sandbox, events: list[KeyEvent]) -> None:
        """A Managed HSM host: RSA-HSM keys, its own audience, get/list/rotate as on a vault."""
        hsm = _add_vault(sandbox, VaultKind.MANAGED_HSM)
        with KeyClient(hsm.url, DefaultAzureCredential()) as key_client:
            key = key_client.create_rsa_key("cmk", hardware_protected=True)
            assert key.key_type == KeyType.rsa_hsm
            assert key.id.startswith(f"https://{hsm.name}.managedhsm.azure.net/keys/cmk/")
            rotated = key_client.rotate_key("cmk")
            versions = {p.version for p in key_client.list_properties_of_key_versions("cmk")}
            assert versions == {key.properties.version, rotated.properties.version}
            with pytest.raises(HttpResponseError):
                key_client.create_rsa_key("soft", hardware_protected=False)
        assert len(events) == 2


class TestAsyncKeyClient:
    """azure.keyvault.keys.aio.KeyClient against the emulated Key Vault."""

    async def test_full_lifecycle(
        self, sandbox: Sandbox, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """Create, get, update, rotate, page versions and policy, all through aiohttp."""
        credential = AsyncDefaultAzureCredential()
        async with credential, AsyncKeyClient(vault.url, credential) as key_client:
            key = await key_client.create_rsa_key("cmk", size=2048, tags={"a": "b"})
            assert (await key_client.get_key("cmk")).id == key.id
            same = await key_client.get_key("cmk", key.properties.version)
            assert _modulus(same) == _modulus(key)
            props = (
                await key_client.update_key_properties("cmk", key.properties.version, enabled=False)
            ).properties
            assert props.enabled is False
            for _ in range(27):
                await key_client.rotate_key("cmk")
            pages = key_client.list_properties_of_key_versions("cmk", max_page_size=10).by_page()
            sizes = []
            versions: set[str] = set()
            async for page in pages:
                page_versions = [p.version async for p in page if p.version]
                sizes.append(len(page_versions))
                versions.update(page_versions)
            assert sizes == [10, 10, 8] and len(versions) == 28
            policy = await key_client.update_key_rotation_policy(
                "cmk", KeyRotationPolicy(), expires_in="P90D"
            )
            assert (await key_client.get_key_rotation_policy("cmk")).expires_in == "P90D"
            assert policy.expires_in == "P90D"
            with pytest.raises(ResourceNotFoundError):
                await key_client.get_key("absent")
        assert len(events) == 28
        assert _statuses(sandbox, vault, "POST", r"/create$") == [401, 200]

    async def test_managed_hsm(self, sandbox: Sandbox) -> None:
        """The async client works against a Managed HSM host too."""
        hsm = _add_vault(sandbox, VaultKind.MANAGED_HSM)
        credential = AsyncDefaultAzureCredential()
        async with credential, AsyncKeyClient(hsm.url, credential) as key_client:
            key = await key_client.create_rsa_key("cmk", hardware_protected=True)
            assert key.key_type == KeyType.rsa_hsm
            names = [p.name async for p in key_client.list_properties_of_keys()]
            assert names == ["cmk"]

    async def test_without_access_is_forbidden(self, sandbox: Sandbox) -> None:
        """The async client sees the same 403 for a vault without a role."""
        vault = _add_vault(sandbox, role=None)
        credential = AsyncDefaultAzureCredential()
        async with credential, AsyncKeyClient(vault.url, credential) as key_client:
            with pytest.raises(HttpResponseError) as caught:
                await key_client.get_key("cmk")
        assert caught.value.status_code == 403
