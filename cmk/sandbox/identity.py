"""Managed identity for the sandbox: the App Service-style token endpoint
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``) that azure-identity's
``ManagedIdentityCredential`` / ``DefaultAzureCredential`` call, the tokens it issues, and
their verification for the emulated services.

Each ``IDENTITY_HEADER`` value stands for one *host* (the Function app, an operator's
shell, ...) with a system-assigned principal and optional user-assigned identities;
``client_id`` / ``object_id`` / ``principal_id`` / ``mi_res_id`` pick a user-assigned one,
as on App Service.

Tokens are opaque to clients but verifiable here: ``base64url(json claims) "."
base64url(HMAC-SHA256)``. Claims: ``oid``, ``appid``, ``tid``, ``name``, ``aud``
(normalized), ``iat``, ``exp``. Expiry is real time (not the sandbox clock), so moving
the clock ahead does not invalidate tokens clients have cached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from cmk.sandbox.context import TokenClaims, normalize_audience
from cmk.sandbox.world import Principal, UserAssignedIdentity

logger = logging.getLogger(__name__)

TOKEN_LIFETIME_SECONDS = 24 * 3600
IDENTITY_PATH = "/msi/token"
APP_SERVICE_API_VERSION = "2019-08-01"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenService:
    """Issues and verifies sandbox bearer tokens (implements ``TokenVerifier``)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def issue(
        self, principal: Principal, audience: str, lifetime: int = TOKEN_LIFETIME_SECONDS
    ) -> tuple[str, int]:
        """A token for ``principal`` and ``audience`` (a resource or scope) and its expiry."""
        now = int(time.time())
        expires_on = now + lifetime
        claims = {
            "oid": principal.object_id,
            "appid": principal.client_id,
            "tid": principal.tenant_id,
            "name": principal.display_name,
            "aud": normalize_audience(audience),
            "iat": now,
            "exp": expires_on,
            "jti": uuid.uuid4().hex,
        }
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        return f"{body}.{signature}", expires_on

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a valid, unexpired sandbox token; None for anything else."""
        body, _, signature = token.strip().partition(".")
        if not body or not signature:
            return None
        expected = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return None
        try:
            claims = json.loads(_unb64(body))
            principal = Principal(
                object_id=str(claims["oid"]),
                client_id=str(claims["appid"]),
                tenant_id=str(claims["tid"]),
                display_name=str(claims.get("name", "")),
            )
            audience, expires_on = str(claims["aud"]), int(claims["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if expires_on <= time.time():
            return None
        return TokenClaims(principal=principal, audience=audience, expires_on=expires_on)


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
        access_token, expires_on = tokens.issue(principal, resource)
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


def build_login_app(tenant_id: str) -> web.Application:
    """A minimal ``login.microsoftonline.com``: OpenID discovery answers, so a client that
    looks there does not hang; every token grant is refused (only managed identity works)."""

    async def openid(request: web.Request) -> web.Response:
        tenant = request.match_info.get("tenant", tenant_id)
        base = f"https://{request.host.split(':')[0]}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "WW",
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

    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": "unauthorized_client",
                "error_description": (
                    "AADSTS700016: the local Azure sandbox issues tokens only through managed"
                    " identity (IDENTITY_ENDPOINT)."
                ),
                "error_codes": [700016],
            },
            status=400,
        )

    app = web.Application()
    app.router.add_get("/common/discovery/instance", instance_discovery)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid)
    app.router.add_get("/{tenant}/.well-known/openid-configuration", openid)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", refuse)
    app.router.add_post("/{tenant}/oauth2/token", refuse)
    return app
