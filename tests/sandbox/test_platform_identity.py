"""Managed identity: the App Service token endpoint, tokens, and DefaultAzureCredential."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential
from cryptography import x509

from cmk.sandbox.core import Sandbox
from cmk.sandbox.identity.service import DEVICE_CODE_MESSAGE, REFUSAL, TokenService
from cmk.sandbox.platform.context import AUDIENCE_ARM, AUDIENCE_VAULT
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
        """Changed, other-sandbox, expired, not-yet-valid and garbage tokens verify to None."""
        service = TokenService()
        principal = Principal.new("p", "tenant")
        token, _ = service.issue(principal, AUDIENCE_ARM)
        header, payload, signature = token.split(".")
        forged = _encode({**_claims(token), "oid": str(uuid.uuid4())})
        assert service.verify(f"{header}.{forged}.{signature}") is None
        assert service.verify(f"{header}.{payload}.{signature[:-4]}AAAA") is None
        assert TokenService().verify(token) is None
        assert service.verify(service.issue(principal, AUDIENCE_ARM, lifetime=-1)[0]) is None
        none_alg = _encode({"typ": "JWT", "alg": "none", "kid": service.key.kid})
        assert service.verify(f"{none_alg}.{payload}.{signature}") is None
        assert service.verify("not-a-token") is None
        assert service.verify(f"{header}.{payload}") is None
        assert service.verify("") is None

    def test_token_is_an_rs256_jwt_with_entra_managed_identity_claims(self):
        """Header RS256 with kid = x5t; claims as Entra issues them to a managed identity."""
        service = TokenService()
        principal = Principal.new("p", "tenant-1")
        mirid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/x/u"
        token, expires_on = service.issue(
            principal, "https://management.azure.com/", resource_id=mirid
        )
        header = jwt.get_unverified_header(token)
        assert header == {
            "typ": "JWT",
            "alg": "RS256",
            "x5t": service.key.kid,
            "kid": service.key.kid,
        }
        claims = _claims(token)
        assert claims["aud"] == "https://management.azure.com/"
        assert claims["iss"] == claims["idp"] == "https://sts.windows.net/tenant-1/"
        assert claims["oid"] == claims["sub"] == principal.object_id
        assert claims["appid"] == principal.client_id
        assert claims["tid"] == "tenant-1"
        assert (claims["idtyp"], claims["ver"], claims["appidacr"]) == ("app", "1.0", "2")
        assert claims["xms_mirid"] == mirid
        assert claims["iat"] == claims["nbf"] <= time.time() < claims["exp"] == expires_on
        system, _ = service.issue(principal, AUDIENCE_ARM)
        assert "xms_mirid" not in _claims(system)

    def test_pyjwt_validates_the_token_with_the_served_key(self):
        """A third-party JWT library verifies signature, audience and issuer with the JWK."""
        service = TokenService()
        principal = Principal.new("p", "tenant-1")
        token, _ = service.issue(principal, "https://vault.azure.net/.default")
        jwk = service.jwks("https://sts.windows.net/tenant-1/")["keys"][0]
        key = jwt.PyJWK(jwk).key
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience="https://vault.azure.net",
            issuer="https://sts.windows.net/tenant-1/",
        )
        assert claims["oid"] == principal.object_id
        with pytest.raises(jwt.InvalidAudienceError):
            jwt.decode(token, key, algorithms=["RS256"], audience="https://management.azure.com")
        other = jwt.PyJWK(TokenService().jwks("x")["keys"][0]).key
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, other, algorithms=["RS256"], audience="https://vault.azure.net")

    def test_jwk_certificate_matches_kid_and_key(self):
        """x5c is the signing certificate: its SHA-1 thumbprint is x5t/kid, its key n/e."""
        service = TokenService()
        jwk = service.jwks("issuer")["keys"][0]
        der = base64.b64decode(jwk["x5c"][0])
        thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
        assert jwk["kid"] == jwk["x5t"] == thumbprint
        numbers = x509.load_der_x509_certificate(der).public_key().public_numbers()
        assert jwt.PyJWK(jwk).key.public_numbers() == numbers
        assert (jwk["kty"], jwk["use"], jwk["e"]) == ("RSA", "sig", "AQAB")


def _encode(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


DEVICE_AUTH_HOST = "https://login.microsoftonline.com"


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

    def test_configurations_publish_entras_device_code_endpoints(self, sandbox: Sandbox):
        """v2.0 and v1.0 discovery name device_authorization_endpoint where Entra does
        (.../oauth2/v2.0/devicecode, .../oauth2/devicecode), and both answer a code."""
        base = f"https://login.microsoftonline.com/{sandbox.tenant_id}"
        for discovery, endpoint, uri_field in (
            ("v2.0/.well-known/openid-configuration", "oauth2/v2.0/devicecode", "verification_uri"),
            (".well-known/openid-configuration", "oauth2/devicecode", "verification_url"),
        ):
            config = requests.get(f"{base}/{discovery}", timeout=10).json()
            assert config["device_authorization_endpoint"] == f"{base}/{endpoint}"
            code = requests.post(
                config["device_authorization_endpoint"], data={"client_id": "x"}, timeout=10
            )
            assert code.status_code == 200
            assert code.json()["message"] == DEVICE_CODE_MESSAGE
            assert code.json()[uri_field] == f"{DEVICE_AUTH_HOST}/common/oauth2/deviceauth"

    def test_msal_device_flow_ends_in_the_managed_identity_refusal(self, sandbox: Sandbox):
        """MSAL's device flow (az login's without a browser) gets a code that says only
        managed identity signs in; its first poll answers the refusal every grant gets."""
        app = msal.PublicClientApplication(
            "04b07795-8ddb-461a-bbee-02f9e1bf7b46",  # azure-cli's public client id
            authority=f"https://login.microsoftonline.com/{sandbox.tenant_id}",
        )
        flow = app.initiate_device_flow(scopes=["https://management.core.windows.net//.default"])
        assert flow["user_code"] and flow["message"] == DEVICE_CODE_MESSAGE
        result = app.acquire_token_by_device_flow(flow)
        assert result["error"] == "unauthorized_client"
        assert result["error_description"] == REFUSAL

    def test_app_token_validates_against_the_served_openid_configuration(self, sandbox: Sandbox):
        """As a resource server does: v1 discovery -> jwks_uri -> verify signature, aud, iss."""
        token = DefaultAzureCredential().get_token("https://management.azure.com/.default").token
        tenant = jwt.decode(token, options={"verify_signature": False})["tid"]
        assert tenant == sandbox.tenant_id
        base = f"https://login.microsoftonline.com/{tenant}"
        config = requests.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
        assert config["issuer"] == f"https://sts.windows.net/{tenant}/"
        keys = requests.get(config["jwks_uri"], timeout=10).json()["keys"]
        header = jwt.get_unverified_header(token)
        jwk = next(k for k in keys if k["kid"] == header["kid"])
        claims = jwt.decode(
            token,
            jwt.PyJWK(jwk).key,
            algorithms=config["id_token_signing_alg_values_supported"],
            audience="https://management.azure.com",
            issuer=config["issuer"],
        )
        assert claims["oid"] == sandbox.app_principal.object_id
        assert "xms_mirid" not in claims

    def test_v2_discovery_serves_the_same_keys(self, sandbox: Sandbox):
        """v2.0 discovery names a v2 issuer and a jwks_uri with the same signing key."""
        base = f"https://login.microsoftonline.com/{sandbox.tenant_id}"
        config = requests.get(f"{base}/v2.0/.well-known/openid-configuration", timeout=10).json()
        assert config["issuer"] == f"{base}/v2.0"
        keys = requests.get(config["jwks_uri"], timeout=10).json()["keys"]
        assert [k["kid"] for k in keys] == [sandbox.tokens.key.kid]
        common = "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
        issuer = requests.get(common, timeout=10).json()["issuer"]
        assert issuer == "https://login.microsoftonline.com/{tenantid}/v2.0"

    def test_user_assigned_token_names_its_resource_id(self, sandbox: Sandbox, monkeypatch):
        """A user-assigned identity's token carries xms_mirid, its ARM resource id."""
        uai = Principal.new("uai-mirid", sandbox.tenant_id)
        host = sandbox.add_host_identity("mirid", None, user_assigned=[uai])
        monkeypatch.setenv("IDENTITY_HEADER", sandbox.env("mirid")["IDENTITY_HEADER"])
        token = ManagedIdentityCredential(client_id=uai.client_id).get_token(AUDIENCE_VAULT)
        claims = jwt.decode(token.token, options={"verify_signature": False})
        assert claims["xms_mirid"] == host.user_assigned[0].resource_id
        assert claims["aud"] == AUDIENCE_VAULT
