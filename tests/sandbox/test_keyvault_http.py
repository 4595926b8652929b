"""Tests for cmk.sandbox.keyvault.service over raw HTTP: paths, status codes, headers and bodies."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.keyvault.service import build_app
from cmk.sandbox.keyvault.versions import (
    API_VERSIONS,
    LATEST_STABLE,
    PREVIEW_VERSIONS,
    STABLE_VERSIONS,
)
from cmk.sandbox.platform.context import ServiceContext, TokenClaims
from cmk.sandbox.world import KeyEvent, KeyEventType, Principal, VaultKind, VaultState, World

#: The version folders of the Key Vault keys spec, with their source.
SPEC_FOLDERS = Path(__file__).parent / "data" / "keyvault" / "keys-spec-folders.json"

SUB = "00000000-0000-4000-8000-000000000001"
API = "2025-07-01"
START = datetime(2030, 1, 1, tzinfo=UTC)


class FakeTokens:
    """A TokenVerifier with tokens handed out by the test."""

    def __init__(self) -> None:
        self._claims: dict[str, TokenClaims] = {}

    def issue(self, principal: Principal, audience: str) -> str:
        token = uuid.uuid4().hex
        self._claims[token] = TokenClaims(principal, audience, int(time.time()) + 3600)
        return token

    def verify(self, token: str) -> TokenClaims | None:
        return self._claims.get(token)


@dataclass
class Env:
    world: World
    tokens: FakeTokens
    client: TestClient[Any, Any]
    vault: VaultState
    hsm: VaultState
    officer: Principal
    events: list[KeyEvent]

    def headers(
        self,
        vault: VaultState | None = None,
        *,
        principal: Principal | None = None,
        audience: str | None = None,
    ) -> dict[str, str]:
        vault = vault or self.vault
        who = principal or self.officer
        token = self.tokens.issue(who, audience or f"https://{vault.dns_suffix}")
        return {"Host": vault.host, "Authorization": f"Bearer {token}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        vault: VaultState | None = None,
        api: str | None = API,
        json: object = None,
        principal: Principal | None = None,
    ) -> ClientResponse:
        query = f"?api-version={api}" if api else ""
        if "?" in path:
            query = f"&api-version={api}" if api else ""
        return await self.client.request(
            method, path + query, headers=self.headers(vault, principal=principal), json=json
        )

    async def ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.call(method, path, **kwargs)
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


def _vault(world: World, name: str, kind: VaultKind) -> VaultState:
    suffix = "vault.azure.net" if kind is VaultKind.VAULT else "managedhsm.azure.net"
    vault = VaultState(name, kind, SUB, "rg-keys", "westeurope", world.tenant_id, dns_suffix=suffix)
    world.vaults[vault.host] = vault
    return vault


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    world = World()
    world.clock.set(START)
    vault = _vault(world, "kv-http", VaultKind.VAULT)
    hsm = _vault(world, "hsm-http", VaultKind.MANAGED_HSM)
    officer = world.add_principal(Principal.new("officer", world.tenant_id))
    for v in (vault, hsm):
        world.grant(officer.object_id, v.resource_id, "Key Vault Crypto Officer")
    events: list[KeyEvent] = []
    world.add_key_event_listener(events.append)
    tokens = FakeTokens()
    client = TestClient(TestServer(build_app(ServiceContext(world, tokens))))
    await client.start_server()
    try:
        yield Env(world, tokens, client, vault, hsm, officer, events)
    finally:
        await client.close()


async def _error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["error"]["code"] == code
    return body["error"]  # type: ignore[no-any-return]


def _action(kind: str, **trigger: str) -> dict[str, Any]:
    return {"trigger": trigger, "action": {"type": kind}}


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TestChallenge:
    """Authentication: Key Vault's 401 challenge and token checks."""

    async def test_request_without_token_gets_the_challenge(self, env: Env) -> None:
        """No token: 401, the tenant's authority and the vault resource, AKV10000 body."""
        response = await env.client.post(
            f"/keys/k/create?api-version={API}", headers={"Host": env.vault.host}
        )
        error = await _error(response, 401, "Unauthorized")
        assert error["message"].startswith("AKV10000")
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer authorization="https://login.microsoftonline.com/{env.world.tenant_id}", '
            'resource="https://vault.azure.net"'
        )

    async def test_managed_hsm_challenge_names_its_resource(self, env: Env) -> None:
        """A Managed HSM challenges for https://managedhsm.azure.net."""
        response = await env.client.get(
            f"/keys/k/?api-version={API}", headers={"Host": env.hsm.host}
        )
        await _error(response, 401, "Unauthorized")
        assert 'resource="https://managedhsm.azure.net"' in response.headers["WWW-Authenticate"]

    async def test_wrong_audience_is_rejected(self, env: Env) -> None:
        """A management-plane token gets 401 AKV10022 with the challenge again."""
        headers = env.headers(audience="https://management.azure.com")
        response = await env.client.get(f"/keys/k/?api-version={API}", headers=headers)
        error = await _error(response, 401, "Unauthorized")
        assert error["message"].startswith("AKV10022: Invalid audience")
        assert "WWW-Authenticate" in response.headers

    async def test_vault_token_is_not_accepted_by_managed_hsm(self, env: Env) -> None:
        """A token for vault.azure.net does not open a Managed HSM."""
        headers = env.headers(env.hsm, audience="https://vault.azure.net")
        response = await env.client.get(f"/keys/k/?api-version={API}", headers=headers)
        await _error(response, 401, "Unauthorized")

    async def test_other_tenant_is_rejected(self, env: Env) -> None:
        """A principal of another tenant gets 401 for an invalid issuer."""
        stranger = env.world.add_principal(Principal.new("stranger", str(uuid.uuid4())))
        response = await env.call("GET", "/keys/k/", principal=stranger)
        error = await _error(response, 401, "Unauthorized")
        assert "Invalid issuer" in error["message"]

    async def test_unknown_token_is_rejected(self, env: Env) -> None:
        """A token the verifier does not know is a 401, not a 403."""
        headers = {"Host": env.vault.host, "Authorization": "Bearer forged"}
        response = await env.client.get(f"/keys/k/?api-version={API}", headers=headers)
        await _error(response, 401, "Unauthorized")

    async def test_unknown_vault_host_is_404(self, env: Env) -> None:
        """A host naming no vault answers 404 VaultNotFound before any auth."""
        response = await env.client.get(
            f"/keys/k/?api-version={API}", headers={"Host": "nope.vault.azure.net"}
        )
        error = await _error(response, 404, "VaultNotFound")
        assert "nope.vault.azure.net" in error["message"]


class TestApiVersion:
    """The api-version query parameter."""

    async def test_missing_api_version_is_bad_parameter(self, env: Env) -> None:
        """No api-version: 400 BadParameter."""
        add_key_version(env.world, env.vault, "k")
        error = await _error(await env.call("GET", "/keys/k/", api=None), 400, "BadParameter")
        assert "api-version" in error["message"]

    async def test_unrecognized_api_version_is_bad_parameter(self, env: Env) -> None:
        """A string that is no version: 400 BadParameter naming it."""
        error = await _error(await env.call("GET", "/keys/k/", api="latest"), 400, "BadParameter")
        assert "(latest)" in error["message"]

    @pytest.mark.parametrize("api", ["2016-10-01", "7.0", "7.4", "7.6", "2025-07-01"])
    async def test_every_sdk_version_is_accepted(self, env: Env, api: str) -> None:
        """Every api-version azure-keyvault-keys 4.11 can send is served."""
        add_key_version(env.world, env.vault, "k")
        await env.ok("GET", "/keys/k/", api=api)

    @pytest.mark.parametrize("api", sorted(API_VERSIONS))
    async def test_every_published_version_is_accepted(self, env: Env, api: str) -> None:
        """Every stable and preview version of the REST spec is served (az uses 7.6-preview.2)."""
        add_key_version(env.world, env.vault, "k")
        bundle = await env.ok("GET", "/keys/k/", api=api)
        assert bundle["key"]["kid"].startswith(f"{env.vault.url}/keys/k/")

    def test_the_list_is_what_the_spec_publishes(self) -> None:
        """Exactly the version folders of the vendored spec listing: stable ones stable,
        preview ones preview, the latest stable folder the one errors recommend."""
        listing = json.loads(SPEC_FOLDERS.read_text())
        assert "azure-rest-api-specs" in listing["_source"]
        published = {f.rsplit("/", 1)[1]: f.split("/")[1] for f in listing["folders"]}
        assert set(API_VERSIONS) == set(published)
        assert {v for v, level in published.items() if level == "stable"} == set(STABLE_VERSIONS)
        assert {v for v, level in published.items() if level == "preview"} == set(PREVIEW_VERSIONS)
        stable_order = [f.rsplit("/", 1)[1] for f in listing["folders"] if "/stable/" in f]
        assert stable_order[-1] == LATEST_STABLE

    @pytest.mark.parametrize("api", ["7.9", "7.6-preview.3", "2025-07-02", "latest", "8"])
    async def test_unknown_version_answers_as_key_vault(self, env: Env, api: str) -> None:
        """An unpublished version: 400 BadParameter with Key Vault's exact message."""
        add_key_version(env.world, env.vault, "k")
        error = await _error(await env.call("GET", "/keys/k/", api=api), 400, "BadParameter")
        assert error["message"] == (
            f"The specified version ({api}) is not recognized. "
            f"Consider using the latest supported version ({LATEST_STABLE})."
        )

    async def test_old_versions_omit_newer_attributes(self, env: Env) -> None:
        """recoverableDays appears from 7.1 and exportable from 7.3, as in the service."""
        add_key_version(env.world, env.vault, "k")
        old = (await env.ok("GET", "/keys/k/", api="7.0"))["attributes"]
        new = (await env.ok("GET", "/keys/k/", api="7.4"))["attributes"]
        assert "recoverableDays" not in old and "exportable" not in old
        assert new["recoverableDays"] == 90 and new["exportable"] is False


class TestAuthorization:
    """Per-operation permissions through World.key_access."""

    async def test_no_role_is_forbidden_by_rbac(self, env: Env) -> None:
        """Without a role: 403 Forbidden, inner ForbiddenByRbac, naming action and resource."""
        nobody = env.world.add_principal(Principal.new("nobody", env.world.tenant_id))
        add_key_version(env.world, env.vault, "k")
        error = await _error(await env.call("GET", "/keys/k/", principal=nobody), 403, "Forbidden")
        assert error["innererror"] == {"code": "ForbiddenByRbac"}
        assert "Action: 'Microsoft.KeyVault/vaults/keys/read'" in error["message"]
        assert f"oid={nobody.object_id}" in error["message"]
        assert f"{env.vault.resource_id.lower()}/keys/k'" in error["message"]

    async def test_read_only_role_cannot_create_or_rotate(self, env: Env) -> None:
        """Crypto Service Encryption User may read a key but not create or rotate one."""
        reader = env.world.add_principal(Principal.new("reader", env.world.tenant_id))
        role = "Key Vault Crypto Service Encryption User"
        env.world.grant(reader.object_id, env.vault.resource_id, role)
        add_key_version(env.world, env.vault, "k")
        await env.ok("GET", "/keys/k/", principal=reader)
        create = await env.call("POST", "/keys/k/create", json={"kty": "RSA"}, principal=reader)
        await _error(create, 403, "Forbidden")
        await _error(await env.call("POST", "/keys/k/rotate", principal=reader), 403, "Forbidden")
        assert len(env.vault.keys["k"].versions) == 1

    async def test_access_policy_vault_answers_access_denied(self, env: Env) -> None:
        """Access-policy vaults: not on a policy, or lacking the permission, is AccessDenied."""
        env.vault.enable_rbac_authorization = False
        add_key_version(env.world, env.vault, "k")
        error = await _error(await env.call("GET", "/keys/k/"), 403, "Forbidden")
        assert error["innererror"] == {"code": "AccessDenied"}
        assert "not found on any access policy" in error["message"]
        env.vault.access_policies[env.officer.object_id] = {"get"}
        await env.ok("GET", "/keys/k/")
        create = await env.call("POST", "/keys/k/create", json={"kty": "RSA"})
        error = await _error(create, 403, "Forbidden")
        assert "does not have keys create permission" in error["message"]

    async def test_forbidden_comes_before_not_found(self, env: Env) -> None:
        """Without access, a missing key is 403 too: existence is not disclosed."""
        nobody = env.world.add_principal(Principal.new("nobody", env.world.tenant_id))
        await _error(await env.call("GET", "/keys/absent/", principal=nobody), 403, "Forbidden")


class TestCreateKey:
    """POST /keys/{name}/create."""

    async def test_bundle_has_key_vaults_shape(self, env: Env) -> None:
        """kid with version, RSA n/e in base64url, attributes as unix seconds, tags."""
        body = await env.ok(
            "POST", "/keys/Cmk-1/create", json={"kty": "RSA", "key_size": 2048, "tags": {"a": "b"}}
        )
        key, attributes = body["key"], body["attributes"]
        version = env.vault.keys["cmk-1"].versions[0].version
        assert key["kid"] == f"https://kv-http.vault.azure.net/keys/Cmk-1/{version}"
        assert key["kty"] == "RSA" and key["e"] == "AQAB"
        assert "=" not in key["n"] and len(_b64(key["n"])) == 256 and _b64(key["n"])[0] & 0x80
        assert key["key_ops"] == ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
        assert attributes["created"] == attributes["updated"] == int(START.timestamp())
        assert attributes["recoveryLevel"] == "Recoverable" and attributes["recoverableDays"] == 90
        assert attributes["enabled"] is True and "exp" not in attributes
        assert body["tags"] == {"a": "b"}

    async def test_create_on_an_existing_name_adds_a_version(self, env: Env) -> None:
        """A second create is a new version that becomes the latest; each emits an event."""
        first = await env.ok("POST", "/keys/k/create", json={"kty": "RSA"})
        second = await env.ok("POST", "/keys/k/create", json={"kty": "RSA", "key_size": 3072})
        assert first["key"]["kid"] != second["key"]["kid"]
        latest = await env.ok("GET", "/keys/k/")
        assert latest["key"]["kid"] == second["key"]["kid"]
        assert [e.event_type for e in env.events] == [KeyEventType.NEW_VERSION] * 2
        assert env.events[1].version == second["key"]["kid"].rsplit("/", 1)[1]

    async def test_attributes_and_operations_are_honoured(self, env: Env) -> None:
        """enabled, nbf, exp and key_ops from the request are stored and echoed."""
        nbf, exp = int(START.timestamp()), int((START + timedelta(days=365)).timestamp())
        body = await env.ok(
            "POST",
            "/keys/k/create",
            json={
                "kty": "RSA",
                "key_ops": ["wrapKey", "unwrapKey"],
                "attributes": {"enabled": False, "nbf": nbf, "exp": exp},
            },
        )
        assert body["key"]["key_ops"] == ["wrapKey", "unwrapKey"]
        assert (body["attributes"]["enabled"], body["attributes"]["nbf"]) == (False, nbf)
        assert body["attributes"]["exp"] == exp
        assert env.events[0].expires == datetime.fromtimestamp(exp, UTC)

    async def test_created_follows_the_sandbox_clock(self, env: Env) -> None:
        """created/updated come from world.clock, so moving the clock moves them."""
        env.world.clock.advance(timedelta(days=10))
        body = await env.ok("POST", "/keys/k/create", json={"kty": "RSA"})
        assert body["attributes"]["created"] == int((START + timedelta(days=10)).timestamp())

    async def test_ec_key_has_curve_and_coordinates(self, env: Env) -> None:
        """EC keys return crv, x and y of the curve's length and no n/e."""
        body = await env.ok("POST", "/keys/ec/create", json={"kty": "EC", "crv": "P-384"})
        key = body["key"]
        assert key["crv"] == "P-384" and len(_b64(key["x"])) == len(_b64(key["y"])) == 48
        assert "n" not in key and key["key_ops"] == ["sign", "verify"]

    @pytest.mark.parametrize(
        "request_body",
        [
            {"kty": "RSA", "key_size": 1024},
            {"kty": "RSA-XL"},
            {"kty": "oct-HSM"},
            {},
            {"kty": "RSA", "key_ops": ["wrap"]},
            {"kty": "RSA", "attributes": {"exp": "tomorrow"}},
            {"kty": "RSA", "tags": {"n": 1}},
        ],
    )
    async def test_invalid_parameters_are_bad_parameter(
        self, env: Env, request_body: dict[str, Any]
    ) -> None:
        """Bad type, size, operations, attributes or tags: 400 BadParameter, nothing stored."""
        response = await env.call("POST", "/keys/k/create", json=request_body)
        await _error(response, 400, "BadParameter")
        assert env.vault.keys == {} and env.events == []

    async def test_invalid_name_is_bad_parameter(self, env: Env) -> None:
        """Key names allow only letters, digits and dashes."""
        response = await env.call("POST", "/keys/bad_name/create", json={"kty": "RSA"})
        await _error(response, 400, "BadParameter")

    async def test_body_must_be_a_json_object(self, env: Env) -> None:
        """A body that is not JSON is 400 BadParameter."""
        headers = env.headers() | {"Content-Type": "application/json"}
        response = await env.client.post(
            f"/keys/k/create?api-version={API}", headers=headers, data=b"{nope"
        )
        await _error(response, 400, "BadParameter")

    async def test_managed_hsm_creates_hsm_keys_only(self, env: Env) -> None:
        """On a Managed HSM, RSA-HSM is created (with its host in the kid), RSA is refused."""
        body = await env.ok("POST", "/keys/k/create", vault=env.hsm, json={"kty": "RSA-HSM"})
        assert body["key"]["kty"] == "RSA-HSM"
        assert body["key"]["kid"].startswith("https://hsm-http.managedhsm.azure.net/keys/k/")
        response = await env.call("POST", "/keys/k/create", vault=env.hsm, json={"kty": "RSA"})
        await _error(response, 400, "BadParameter")


class TestGetKey:
    """GET /keys/{name}/[{version}]."""

    async def test_latest_with_and_without_trailing_slash(self, env: Env) -> None:
        """/keys/k/ and /keys/k both return the latest version."""
        add_key_version(env.world, env.vault, "k")
        latest = add_key_version(env.world, env.vault, "k")
        for path in ("/keys/k/", "/keys/k"):
            body = await env.ok("GET", path)
            assert body["key"]["kid"].endswith(latest.version)

    async def test_specific_version_and_case_insensitive_names(self, env: Env) -> None:
        """A version id returns that version; names match case-insensitively."""
        old = add_key_version(env.world, env.vault, "MyKey")
        add_key_version(env.world, env.vault, "MyKey")
        body = await env.ok("GET", f"/keys/MYKEY/{old.version.upper()}")
        assert body["key"]["kid"] == f"{env.vault.url}/keys/MyKey/{old.version}"

    async def test_missing_key_is_key_not_found(self, env: Env) -> None:
        """An unknown key is 404 KeyNotFound with Key Vault's wording."""
        error = await _error(await env.call("GET", "/keys/absent/"), 404, "KeyNotFound")
        assert error["message"].startswith("A key with (name/id) absent was not found")

    async def test_missing_version_is_key_not_found(self, env: Env) -> None:
        """An unknown version of a known key is 404 KeyNotFound naming name/version."""
        add_key_version(env.world, env.vault, "k")
        error = await _error(await env.call("GET", f"/keys/k/{'0' * 32}"), 404, "KeyNotFound")
        assert f"k/{'0' * 32}" in error["message"]

    async def test_disabled_versions_are_still_readable(self, env: Env) -> None:
        """Getting a disabled key works and shows enabled false."""
        add_key_version(env.world, env.vault, "k", enabled=False)
        assert (await env.ok("GET", "/keys/k/"))["attributes"]["enabled"] is False


class TestUpdateKey:
    """PATCH /keys/{name}/{version}."""

    async def test_updates_attributes_operations_and_tags(self, env: Env) -> None:
        """enabled, exp, key_ops and tags change; updated moves, created does not."""
        version = add_key_version(env.world, env.vault, "k", tags={"old": "1"})
        env.world.clock.advance(timedelta(hours=1))
        exp = int((START + timedelta(days=30)).timestamp())
        body = await env.ok(
            "PATCH",
            f"/keys/k/{version.version}",
            json={
                "attributes": {"enabled": False, "exp": exp},
                "key_ops": ["wrapKey", "unwrapKey"],
                "tags": {"new": "2"},
            },
        )
        attributes = body["attributes"]
        assert (attributes["enabled"], attributes["exp"]) == (False, exp)
        assert attributes["created"] == int(START.timestamp())
        assert attributes["updated"] == int((START + timedelta(hours=1)).timestamp())
        assert body["key"]["key_ops"] == ["wrapKey", "unwrapKey"] and body["tags"] == {"new": "2"}
        assert version.enabled is False and version.tags == {"new": "2"}

    async def test_empty_version_updates_the_latest(self, env: Env) -> None:
        """PATCH /keys/k/ (what the SDK sends without a version) targets the latest."""
        old = add_key_version(env.world, env.vault, "k")
        new = add_key_version(env.world, env.vault, "k")
        await env.ok("PATCH", "/keys/k/", json={"attributes": {"enabled": False}})
        assert (old.enabled, new.enabled) == (True, False)

    async def test_changing_expiry_rearms_the_expiry_events(self, env: Env) -> None:
        """A new exp clears the emitted flags so the events can fire for the new date."""
        version = add_key_version(env.world, env.vault, "k", expires=START)
        version.near_expiry_emitted = version.expired_emitted = True
        exp = int((START + timedelta(days=90)).timestamp())
        await env.ok("PATCH", f"/keys/k/{version.version}", json={"attributes": {"exp": exp}})
        assert not version.near_expiry_emitted and not version.expired_emitted

    async def test_null_expiry_clears_it(self, env: Env) -> None:
        """An explicit null exp removes the expiry."""
        add_key_version(env.world, env.vault, "k", expires=START + timedelta(days=9))
        body = await env.ok("PATCH", "/keys/k/", json={"attributes": {"exp": None}})
        assert "exp" not in body["attributes"]

    async def test_invalid_update_changes_nothing(self, env: Env) -> None:
        """An unknown operation is 400 and leaves the version as it was."""
        version = add_key_version(env.world, env.vault, "k")
        response = await env.call(
            "PATCH", "/keys/k/", json={"key_ops": ["nope"], "attributes": {"enabled": False}}
        )
        await _error(response, 400, "BadParameter")
        assert version.enabled is True

    async def test_missing_version_is_key_not_found(self, env: Env) -> None:
        """Updating a version that does not exist is 404 KeyNotFound."""
        add_key_version(env.world, env.vault, "k")
        response = await env.call("PATCH", f"/keys/k/{'f' * 32}", json={})
        await _error(response, 404, "KeyNotFound")


class TestListVersions:
    """GET /keys/{name}/versions with paging."""

    async def test_pages_follow_next_link_until_null(self, env: Env) -> None:
        """maxresults sizes pages; nextLink carries $skiptoken and maxresults; last is null."""
        made = {add_key_version(env.world, env.vault, "k").version for _ in range(7)}
        body = await env.ok("GET", "/keys/k/versions?maxresults=3")
        seen, pages = [], 0
        while True:
            pages += 1
            assert len(body["value"]) <= 3
            seen += [item["kid"].rsplit("/", 1)[1] for item in body["value"]]
            if body["nextLink"] is None:
                break
            link = body["nextLink"]
            assert link.startswith(f"https://{env.vault.host}:443/keys/k/versions?api-version=")
            assert "$skiptoken=" in link and link.endswith("&maxresults=3")
            path = link.split(":443", 1)[1].split("&api-version")[0]
            body = await env.ok("GET", path, api=None)
        assert pages == 3 and sorted(seen) == sorted(made) and len(seen) == 7

    async def test_versions_are_listed_in_version_id_order(self, env: Env) -> None:
        """Like Key Vault, the list is ordered by version id, not by creation time."""
        for _ in range(10):
            add_key_version(env.world, env.vault, "k")
        body = await env.ok("GET", "/keys/k/versions")
        ids = [item["kid"].rsplit("/", 1)[1] for item in body["value"]]
        assert ids == sorted(ids)

    async def test_items_have_kid_attributes_tags_but_no_key(self, env: Env) -> None:
        """Version items are KeyItems: versioned kid, attributes, tags, no key material."""
        add_key_version(env.world, env.vault, "k", tags={"t": "v"})
        [item] = (await env.ok("GET", "/keys/k/versions"))["value"]
        assert set(item) == {"kid", "attributes", "tags"}
        assert item["tags"] == {"t": "v"} and item["attributes"]["recoveryLevel"] == "Recoverable"

    async def test_default_page_is_twenty_five(self, env: Env) -> None:
        """Without maxresults a page holds 25 items and the nextLink has no maxresults."""
        for _ in range(26):
            add_key_version(env.world, env.vault, "k", emit=False)
        body = await env.ok("GET", "/keys/k/versions")
        assert len(body["value"]) == 25 and "maxresults" not in body["nextLink"]

    @pytest.mark.parametrize("query", ["maxresults=26", "maxresults=0", "$skiptoken=%21%21"])
    async def test_bad_paging_parameters_are_bad_parameter(self, env: Env, query: str) -> None:
        """maxresults outside 1..25 and foreign skip tokens are 400."""
        add_key_version(env.world, env.vault, "k")
        await _error(await env.call("GET", f"/keys/k/versions?{query}"), 400, "BadParameter")

    async def test_missing_key_is_key_not_found(self, env: Env) -> None:
        """Listing versions of an unknown key is 404 KeyNotFound."""
        await _error(await env.call("GET", "/keys/absent/versions"), 404, "KeyNotFound")


class TestListKeys:
    """GET /keys."""

    async def test_lists_each_key_once_with_unversioned_kid(self, env: Env) -> None:
        """Each key appears once, kid without version, attributes of the latest version."""
        add_key_version(env.world, env.vault, "b", enabled=False)
        add_key_version(env.world, env.vault, "a")
        add_key_version(env.world, env.vault, "b")
        body = await env.ok("GET", "/keys")
        assert [item["kid"] for item in body["value"]] == [
            f"{env.vault.url}/keys/a",
            f"{env.vault.url}/keys/b",
        ]
        assert body["value"][1]["attributes"]["enabled"] is True and body["nextLink"] is None

    async def test_pages(self, env: Env) -> None:
        """maxresults pages the key list too."""
        for index in range(5):
            add_key_version(env.world, env.vault, f"key-{index}", emit=False)
        body = await env.ok("GET", "/keys?maxresults=2")
        assert len(body["value"]) == 2 and body["nextLink"].endswith("&maxresults=2")


class TestRotate:
    """POST /keys/{name}/rotate."""

    async def test_rotate_creates_a_like_version(self, env: Env) -> None:
        """The new version keeps type, size, operations and tags, and emits an event."""
        add_key_version(env.world, env.vault, "k", size=3072, key_ops=["wrapKey"], tags={"a": "b"})
        body = await env.ok("POST", "/keys/k/rotate")
        assert body["key"]["key_ops"] == ["wrapKey"] and len(_b64(body["key"]["n"])) == 384
        assert body["tags"] == {"a": "b"}
        assert env.events[-1].event_type is KeyEventType.NEW_VERSION
        assert body["key"]["kid"].endswith(env.events[-1].version)

    async def test_rotate_applies_the_policy_expiry(self, env: Env) -> None:
        """With expiryTime P90D in the policy the rotated version expires in 90 days."""
        add_key_version(env.world, env.vault, "k")
        await env.ok("PUT", "/keys/k/rotationpolicy", json={"attributes": {"expiryTime": "P90D"}})
        body = await env.ok("POST", "/keys/k/rotate")
        expected = START + timedelta(days=90)
        assert abs(body["attributes"]["exp"] - int(expected.timestamp())) <= 2

    async def test_rotate_missing_key_is_key_not_found(self, env: Env) -> None:
        """Rotating an unknown key is 404 KeyNotFound."""
        await _error(await env.call("POST", "/keys/absent/rotate"), 404, "KeyNotFound")


class TestRotationPolicy:
    """GET/PUT /keys/{name}/rotationpolicy."""

    POLICY = {
        "lifetimeActions": [
            {"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "rotate"}},
            {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}},
        ],
        "attributes": {"expiryTime": "P2Y"},
    }

    async def test_key_without_policy_shows_the_default(self, env: Env) -> None:
        """Key Vault's default: Notify 30 days before expiry, no expiryTime."""
        add_key_version(env.world, env.vault, "k")
        body = await env.ok("GET", "/keys/k/rotationpolicy")
        assert body == {
            "id": f"{env.vault.url}/keys/k/rotationpolicy",
            "lifetimeActions": [
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}
            ],
            "attributes": {},
        }

    async def test_put_then_get_round_trips(self, env: Env) -> None:
        """A stored policy comes back normalized (action case) with created/updated."""
        add_key_version(env.world, env.vault, "k")
        put = await env.ok("PUT", "/keys/k/rotationpolicy", json=self.POLICY)
        got = await env.ok("GET", "/keys/k/rotationpolicy")
        assert put == got
        assert got["lifetimeActions"][0] == {
            "trigger": {"timeAfterCreate": "P90D"},
            "action": {"type": "Rotate"},
        }
        assert got["attributes"] == {
            "expiryTime": "P2Y",
            "created": int(START.timestamp()),
            "updated": int(START.timestamp()),
        }
        policy = env.vault.keys["k"].rotation_policy
        assert policy is not None and policy.notify_before_expiry() == timedelta(days=30)

    async def test_update_keeps_created(self, env: Env) -> None:
        """A second PUT moves updated but keeps created."""
        add_key_version(env.world, env.vault, "k")
        await env.ok("PUT", "/keys/k/rotationpolicy", json=self.POLICY)
        env.world.clock.advance(timedelta(days=1))
        body = await env.ok("PUT", "/keys/k/rotationpolicy", json={"lifetimeActions": []})
        assert body["attributes"]["created"] == int(START.timestamp())
        assert body["attributes"]["updated"] == int((START + timedelta(days=1)).timestamp())

    @pytest.mark.parametrize(
        "policy",
        [
            {"attributes": {"expiryTime": "P27D"}},
            {"attributes": {"expiryTime": "soon"}},
            {"lifetimeActions": [_action("Rotate", timeAfterCreate="P6D")]},
            {"lifetimeActions": [_action("Notify", timeAfterCreate="P30D")]},
            {"lifetimeActions": [_action("Rotate")]},
            {"lifetimeActions": [_action("Delete", timeAfterCreate="P30D")]},
            {
                "lifetimeActions": [_action("Rotate", timeAfterCreate="P89D")],
                "attributes": {"expiryTime": "P90D"},
            },
            {
                "lifetimeActions": [
                    _action("Rotate", timeAfterCreate="P30D"),
                    _action("Rotate", timeAfterCreate="P40D"),
                ]
            },
        ],
    )
    async def test_invalid_policies_are_bad_parameter(
        self, env: Env, policy: dict[str, Any]
    ) -> None:
        """Key Vault's policy rules (28-day expiry, 7-day triggers, one action per type)."""
        add_key_version(env.world, env.vault, "k")
        response = await env.call("PUT", "/keys/k/rotationpolicy", json=policy)
        await _error(response, 400, "BadParameter")
        assert env.vault.keys["k"].rotation_policy is None

    async def test_managed_hsm_has_no_notify(self, env: Env) -> None:
        """Managed HSM refuses Notify actions and its default policy has none."""
        add_key_version(env.world, env.hsm, "k", kty="RSA-HSM")
        body = await env.ok("GET", "/keys/k/rotationpolicy", vault=env.hsm)
        assert body["lifetimeActions"] == []
        response = await env.call("PUT", "/keys/k/rotationpolicy", vault=env.hsm, json=self.POLICY)
        await _error(response, 400, "BadParameter")

    async def test_missing_key_is_key_not_found(self, env: Env) -> None:
        """Policies of unknown keys are 404 KeyNotFound, for GET and PUT."""
        await _error(await env.call("GET", "/keys/absent/rotationpolicy"), 404, "KeyNotFound")
        response = await env.call("PUT", "/keys/absent/rotationpolicy", json=self.POLICY)
        await _error(response, 404, "KeyNotFound")


class TestNotEmulated:
    """Operations the sandbox does not implement."""

    async def test_other_operations_answer_not_implemented(self, env: Env) -> None:
        """DELETE /keys/k is 501 NotImplemented rather than a misleading Azure answer."""
        error = await _error(await env.call("DELETE", "/keys/k"), 501, "NotImplemented")
        assert "DELETE /keys/k" in error["message"]

    async def test_unknown_paths_still_challenge(self, env: Env) -> None:
        """Authentication comes first, so even unknown paths answer the 401 challenge."""
        response = await env.client.get("/secrets/s", headers={"Host": env.vault.host})
        await _error(response, 401, "Unauthorized")
