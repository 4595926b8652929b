"""Managed identity: the App Service token endpoint, tokens, and DefaultAzureCredential."""

from __future__ import annotations

import time

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential

from cmk.sandbox.context import AUDIENCE_ARM, AUDIENCE_VAULT
from cmk.sandbox.core import Sandbox
from cmk.sandbox.identity import TokenService
from cmk.sandbox.world import Principal


class TestTokenService:
    def test_issued_token_verifies_with_principal_and_audience(self):
        """A token verifies to its principal and normalized audience."""
        service = TokenService()
        principal = Principal.new("p", "tenant")
        token, expires_on = service.issue(principal, "https://vault.azure.net/.default")
        claims = service.verify(token)
        assert claims is not None
        assert claims.principal == principal
        assert claims.audience == AUDIENCE_VAULT
        assert claims.expires_on == expires_on > time.time()

    def test_tampered_foreign_and_expired_tokens_are_rejected(self):
        """Changed, other-sandbox, expired and garbage tokens verify to None."""
        service = TokenService()
        principal = Principal.new("p", "tenant")
        token, _ = service.issue(principal, AUDIENCE_ARM)
        body, _, sig = token.partition(".")
        assert service.verify(body[:-2] + "xx." + sig) is None
        assert TokenService().verify(token) is None
        assert service.verify(service.issue(principal, AUDIENCE_ARM, lifetime=-1)[0]) is None
        assert service.verify("not-a-token") is None
        assert service.verify("") is None


class TestIdentityEndpoint:
    def test_default_azure_credential_gets_the_app_token(self, sandbox: Sandbox):
        """DefaultAzureCredential picks the sandbox managed identity and its token verifies."""
        token = DefaultAzureCredential().get_token("https://vault.azure.net/.default")
        claims = sandbox.tokens.verify(token.token)
        assert claims is not None
        assert claims.principal.object_id == sandbox.app_principal.object_id
        assert claims.audience == AUDIENCE_VAULT
        assert token.expires_on > time.time() + 3600

    async def test_async_default_azure_credential(self, sandbox: Sandbox):
        """The async DefaultAzureCredential gets a token for ARM from the sandbox."""
        async with AsyncDefaultAzureCredential() as credential:
            token = await credential.get_token("https://management.azure.com/.default")
        claims = sandbox.tokens.verify(token.token)
        assert claims is not None
        assert claims.audience == AUDIENCE_ARM

    def test_user_assigned_identity_by_client_id(self, sandbox: Sandbox, monkeypatch):
        """client_id selects a user-assigned identity of the host."""
        system = Principal.new("ops", sandbox.tenant_id)
        uai = Principal.new("uai-ops", sandbox.tenant_id)
        sandbox.add_host_identity("ops", system, user_assigned=[uai])
        monkeypatch.setenv("IDENTITY_HEADER", sandbox.env("ops")["IDENTITY_HEADER"])
        token = ManagedIdentityCredential(client_id=uai.client_id).get_token(AUDIENCE_VAULT)
        claims = sandbox.tokens.verify(token.token)
        assert claims is not None and claims.principal.object_id == uai.object_id
        token = ManagedIdentityCredential().get_token(AUDIENCE_VAULT)
        claims = sandbox.tokens.verify(token.token)
        assert claims is not None and claims.principal.object_id == system.object_id
        assert uai.object_id in sandbox.world.principals

    def test_unknown_client_id_fails_authentication(self, sandbox: Sandbox):
        """A client_id the host does not have yields an authentication error."""
        credential = ManagedIdentityCredential(client_id="00000000-0000-0000-0000-000000000001")
        with pytest.raises(ClientAuthenticationError):
            credential.get_token(AUDIENCE_VAULT)

    def test_wrong_header_is_refused(self, sandbox: Sandbox):
        """The endpoint answers 401 without the host's X-IDENTITY-HEADER."""
        params = {"api-version": "2019-08-01", "resource": AUDIENCE_VAULT}
        response = requests.get(
            sandbox.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": "x"}
        )
        assert response.status_code == 401
        assert response.json()["statusCode"] == 401

    def test_response_shape_is_app_service(self, sandbox: Sandbox):
        """The answer carries App Service's fields, expires_on as a string of seconds."""
        response = requests.get(
            sandbox.identity_endpoint,
            params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
            headers={"X-IDENTITY-HEADER": sandbox.env()["IDENTITY_HEADER"]},
        )
        body = response.json()
        assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
        assert body["token_type"] == "Bearer"
        assert body["client_id"] == sandbox.app_principal.client_id
        assert body["expires_on"].isdigit()

    def test_app_identity_survives_reset(self, sandbox: Sandbox):
        """After reset the app principal is the same and still in the new world."""
        before = sandbox.app_principal
        header = sandbox.env()["IDENTITY_HEADER"]
        world = sandbox.reset()
        assert sandbox.app_principal == before
        assert before.object_id in world.principals
        assert sandbox.env()["IDENTITY_HEADER"] == header

    def test_openid_discovery_answers(self, sandbox: Sandbox):
        """login.microsoftonline.com answers OpenID discovery; token grants are refused."""
        url = f"https://login.microsoftonline.com/{sandbox.tenant_id}/v2.0/.well-known/openid-configuration"
        body = requests.get(url, timeout=10).json()
        assert body["token_endpoint"].endswith(f"/{sandbox.tenant_id}/oauth2/v2.0/token")
        refused = requests.post(body["token_endpoint"], data={"grant_type": "x"}, timeout=10)
        assert refused.status_code == 400
