"""Managed identity for the sandbox: the App Service-style token endpoint
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``) that azure-identity's
``ManagedIdentityCredential`` / ``DefaultAzureCredential`` call, the tokens it issues, and
their verification for the emulated services.

Each ``IDENTITY_HEADER`` value stands for one *host* (the Function app, an operator's
shell, ...) with a system-assigned principal and optional user-assigned identities;
``client_id`` / ``object_id`` / ``principal_id`` / ``mi_res_id`` pick a user-assigned one,
as on App Service.

Tokens are JWTs as Entra issues them (see :mod:`cmk.sandbox.identity.tokens`), and
``login.microsoftonline.com`` serves the OpenID configuration and the signing keys (JWKS)
under ``/{tenant}/...``, so a client that validates tokens can.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from cmk.sandbox.identity.tokens import TOKEN_LIFETIME_SECONDS, TokenService, issuer_v1
from cmk.sandbox.world import Principal, UserAssignedIdentity

__all__ = [
    "APP_SERVICE_API_VERSION",
    "IDENTITY_PATH",
    "TOKEN_LIFETIME_SECONDS",
    "HostIdentity",
    "IdentityHosts",
    "TokenService",
    "build_identity_app",
    "build_login_app",
]

logger = logging.getLogger(__name__)

IDENTITY_PATH = "/msi/token"
APP_SERVICE_API_VERSION = "2019-08-01"


@dataclass
class HostIdentity:
    """A host that can ask the identity endpoint for tokens: its header and identities."""

    name: str
    header: str
    principal: Principal | None
    user_assigned: list[UserAssignedIdentity] = field(default_factory=list)

    def select(
        self, client_id: str | None, object_id: str | None, resource_id: str | None
    ) -> Principal | None:
        """The identity a token request names (system-assigned when it names none)."""
        if not (client_id or object_id or resource_id):
            return self.principal
        for uai in self.user_assigned:
            p = uai.principal
            if (
                (client_id and p.client_id.lower() == client_id.lower())
                or (object_id and p.object_id.lower() == object_id.lower())
                or (resource_id and uai.resource_id.lower() == resource_id.lower())
            ):
                return p
        return None

    def resource_id_of(self, principal: Principal) -> str | None:
        """The ARM id of ``principal`` when it is one of the host's user-assigned identities."""
        return next((u.resource_id for u in self.user_assigned if u.principal == principal), None)


class IdentityHosts:
    """The hosts known to the identity endpoint, by header value and by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, HostIdentity] = {}

    def add(
        self,
        name: str,
        principal: Principal | None,
        user_assigned: Sequence[UserAssignedIdentity] = (),
    ) -> HostIdentity:
        """Register (or replace, keeping its header) host ``name``."""
        with self._lock:
            old = self._by_name.get(name)
            header = old.header if old else secrets.token_hex(16)
            host = HostIdentity(name, header, principal, list(user_assigned))
            self._by_name[name] = host
            return host

    def get(self, name: str) -> HostIdentity:
        with self._lock:
            try:
                return self._by_name[name]
            except KeyError:
                raise KeyError(
                    f"no host identity {name!r}; known: {sorted(self._by_name)}"
                ) from None

    def by_header(self, header: str) -> HostIdentity | None:
        with self._lock:
            return next(
                (h for h in self._by_name.values() if hmac.compare_digest(h.header, header)), None
            )

    def retain(self, names: Sequence[str]) -> None:
        """Forget every host except ``names``."""
        with self._lock:
            self._by_name = {n: h for n, h in self._by_name.items() if n in names}

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)


def _error(status: int, message: str) -> web.Response:
    # App Service's token endpoint answers errors with this shape.
    return web.json_response(
        {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())},
        status=status,
    )


def build_identity_app(tokens: TokenService, hosts: IdentityHosts) -> web.Application:
    """The App Service managed identity endpoint, served over plain HTTP on loopback."""

    async def token(request: web.Request) -> web.Response:
        header = request.headers.get("X-IDENTITY-HEADER", "")
        host = hosts.by_header(header) if header else None
        if host is None:
            return _error(401, "The X-IDENTITY-HEADER header is missing or does not match.")
        query = request.query
        if query.get("api-version") != APP_SERVICE_API_VERSION:
            return _error(400, f"api-version must be {APP_SERVICE_API_VERSION}.")
        resource = query.get("resource", "").strip()
        if not resource:
            return _error(400, "The 'resource' query parameter is required.")
        principal = host.select(
            query.get("client_id") or query.get("clientid"),
            query.get("object_id") or query.get("principal_id"),
            query.get("mi_res_id"),
        )
        if principal is None:
            return _error(400, "Unable to load the proper Managed Identity.")
        access_token, expires_on = tokens.issue(
            principal, resource, resource_id=host.resource_id_of(principal)
        )
        logger.debug(
            "issued token", extra={"host": host.name, "oid": principal.object_id, "aud": resource}
        )
        return web.json_response(
            {
                "access_token": access_token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": principal.client_id,
            }
        )

    app = web.Application()
    app.router.add_get(IDENTITY_PATH, token)
    return app


#: Why every grant at ``login.microsoftonline.com`` is refused (a client prints it).
REFUSAL = (
    "AADSTS700016: the local Azure sandbox issues tokens only through managed identity"
    " (IDENTITY_ENDPOINT)."
)
#: What a device-code client shows its user instead of "open ... and enter the code".
DEVICE_CODE_MESSAGE = (
    "The local Azure sandbox signs in no user and no device: it issues tokens only through"
    " managed identity (IDENTITY_ENDPOINT). Sign in with `az login --identity`."
)
#: Entra's sign-in page for device codes (where https://microsoft.com/devicelogin leads).
DEVICE_AUTH_PATH = "/common/oauth2/deviceauth"
DEVICE_CODE_SECONDS = 900  # Entra's expires_in for a device code


def build_login_app(tenant_id: str, tokens: TokenService) -> web.Application:
    """A minimal ``login.microsoftonline.com``: OpenID configuration (v1.0 and v2.0) and the
    token-signing keys (JWKS) answer as Entra's do, so clients can discover and validate
    tokens; every token grant is refused (only managed identity issues tokens here).

    The configurations publish ``device_authorization_endpoint`` as Entra's do, and a device
    code request answers a code whose message says the sandbox signs in no user: a client
    (``az login`` without a browser, ``az login --use-device-code``) shows it, then its first
    poll of the token endpoint gets the refusal every grant gets. (Refusing the code request
    itself would make MSAL clients fail with a traceback instead: azure-cli raises a bare
    ValueError when the answer has no ``user_code``.)"""

    def _tenant(request: web.Request) -> str:
        tenant = request.match_info.get("tenant", tenant_id)
        # Multi-tenant aliases publish a templated issuer, as Entra does.
        return "{tenantid}" if tenant.lower() in ("common", "organizations") else tenant

    async def openid_v2(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        tenant = request.match_info.get("tenant", tenant_id)
        base = f"https://{host}/{tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"https://{host}/{_tenant(request)}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "tenant_region_scope": "WW",
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def openid_v1(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        tenant = request.match_info.get("tenant", tenant_id)
        base = f"https://{host}/{tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
                "scopes_supported": ["openid"],
                "issuer": issuer_v1(_tenant(request)),
                "authorization_endpoint": f"{base}/oauth2/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/devicecode",
                "tenant_region_scope": "WW",
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def instance_discovery(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        return web.json_response(
            {
                "tenant_discovery_endpoint": (
                    f"https://{host}/common/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            }
        )

    async def keys_v2(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        return web.json_response(tokens.jwks(f"https://{host}/{_tenant(request)}/v2.0"))

    async def keys_v1(request: web.Request) -> web.Response:
        return web.json_response(tokens.jwks(issuer_v1(_tenant(request))))

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": "unauthorized_client",
                "error_description": REFUSAL,
                "error_codes": [700016],
            },
            status=400,
        )

    def device_code(request: web.Request, uri_field: str) -> web.Response:
        host = request.host.split(":")[0]
        return web.json_response(
            {
                "user_code": "SANDBOX",
                "device_code": secrets.token_urlsafe(32),
                uri_field: f"https://{host}{DEVICE_AUTH_PATH}",
                "expires_in": DEVICE_CODE_SECONDS,
                "interval": 5,
                "message": DEVICE_CODE_MESSAGE,
            }
        )

    async def device_code_v2(request: web.Request) -> web.Response:
        return device_code(request, "verification_uri")

    async def device_code_v1(request: web.Request) -> web.Response:  # v1 names it _url
        return device_code(request, "verification_url")

    app = web.Application()
    app.router.add_get("/common/discovery/instance", instance_discovery)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_v2)
    app.router.add_get("/{tenant}/.well-known/openid-configuration", openid_v1)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys_v2)
    app.router.add_get("/{tenant}/discovery/keys", keys_v1)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", refuse)
    app.router.add_post("/{tenant}/oauth2/token", refuse)
    app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", device_code_v2)
    app.router.add_post("/{tenant}/oauth2/devicecode", device_code_v1)
    app.router.add_get(DEVICE_AUTH_PATH, refuse)
    return app
