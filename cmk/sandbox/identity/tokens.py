"""Sandbox access tokens: JWTs as Entra ID issues them for a managed identity.

A token is ``header.payload.signature`` (RS256) signed by a per-sandbox RSA key whose
self-signed certificate gives the key id: ``kid`` = ``x5t`` = base64url SHA-1 thumbprint,
as Entra's keys have. The public key is served as a JWKS where Entra serves it
(``login.microsoftonline.com/{tenant}/discovery/keys``), so any client that decodes or
validates tokens (``az`` reads ``tid``; a resource server checks the signature) accepts
them. Claims follow Entra's v1.0 access tokens for managed identities: ``aud`` (the
resource as requested), ``iss`` = ``https://sts.windows.net/{tid}/``, ``iat``, ``nbf``,
``exp``, ``aio``, ``appid``, ``appidacr``, ``idp``, ``idtyp`` = ``app``, ``oid``, ``rh``,
``sub`` (= ``oid``), ``tid``, ``uti``, ``ver`` = ``1.0``, ``xms_mirid`` (the identity's
resource id, for user-assigned identities), and ``app_displayname`` (an optional Entra
claim) so the verifier can rebuild the principal. Opaque claims (``aio``, ``rh``, ``uti``)
are random base64url, as their content is undocumented.

Expiry is real time (not the sandbox clock), so moving the clock ahead does not
invalidate tokens clients have cached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from cmk.sandbox.platform.context import TokenClaims, normalize_audience
from cmk.sandbox.world import Principal

TOKEN_LIFETIME_SECONDS = 24 * 3600
# Entra backdates nbf/iat by five minutes to absorb clock skew.
NOT_BEFORE_SKEW_SECONDS = 300
ALGORITHM = "RS256"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issuer_v1(tenant_id: str) -> str:
    """The ``iss`` of v1.0 tokens (what managed identities get)."""
    return f"https://sts.windows.net/{tenant_id}/"


def resource_of(resource_or_scope: str) -> str:
    """'https://vault.azure.net/.default' -> 'https://vault.azure.net' (the ``aud``)."""
    text = resource_or_scope.strip()
    return text[: -len("/.default")] if text.endswith("/.default") else text


class SigningKey:
    """An RSA-2048 key and its self-signed certificate; ``kid`` is the cert's thumbprint."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.sandbox.local")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .sign(self.private_key, hashes.SHA256())
        )
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        self.kid = b64url(hashlib.sha1(der, usedforsecurity=False).digest())
        self._x5c = base64.b64encode(der).decode("ascii")

    def jwk(self, issuer: str) -> dict[str, Any]:
        """The key as an entry of Entra's JWKS (``keys`` of ``discovery/keys``)."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "x5c": [self._x5c],
            "issuer": issuer,
        }

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def verifies(self, data: bytes, signature: bytes) -> bool:
        try:
            self.private_key.public_key().verify(
                signature, data, padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return False
        return True


class TokenService:
    """Issues and verifies sandbox bearer tokens (implements ``TokenVerifier``)."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self.key = key or SigningKey()
        self._issued: set[str] = set()
        self._revoked: set[str] = set()

    def revoke_issued(self) -> int:
        """Refuse every token issued so far, as Entra's continuous access evaluation or a
        signing-key rollover does before the tokens expire: services answer them as
        invalid (ARM ``401 InvalidAuthenticationToken``, Key Vault ``401`` with its
        challenge); tokens issued afterwards are good. How many were revoked."""
        revoked, self._issued = self._issued, set()
        self._revoked |= revoked
        return len(revoked)

    def jwks(self, issuer: str) -> dict[str, Any]:
        return {"keys": [self.key.jwk(issuer)]}

    def issue(
        self,
        principal: Principal,
        audience: str,
        lifetime: int = TOKEN_LIFETIME_SECONDS,
        *,
        resource_id: str | None = None,
    ) -> tuple[str, int]:
        """A token for ``principal`` and ``audience`` (a resource or scope) and its expiry;
        ``resource_id`` is the user-assigned identity's ARM id (``xms_mirid``)."""
        now = int(time.time())
        expires_on = now + lifetime
        issuer = issuer_v1(principal.tenant_id)
        claims: dict[str, Any] = {
            "aud": resource_of(audience),
            "iss": issuer,
            "iat": now - NOT_BEFORE_SKEW_SECONDS,
            "nbf": now - NOT_BEFORE_SKEW_SECONDS,
            "exp": expires_on,
            "aio": b64url(secrets.token_bytes(48)),
            "app_displayname": principal.display_name,
            "appid": principal.client_id,
            "appidacr": "2",
            "idp": issuer,
            "idtyp": "app",
            "oid": principal.object_id,
            "rh": f"1.{b64url(secrets.token_bytes(36))}.",
            "sub": principal.object_id,
            "tid": principal.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        self._issued.add(claims["uti"])
        if resource_id:
            claims["xms_mirid"] = resource_id
        header = {"typ": "JWT", "alg": ALGORITHM, "x5t": self.key.kid, "kid": self.key.kid}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = b64url(self.key.sign(signing_input.encode("ascii")))
        return f"{signing_input}.{signature}", expires_on

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a valid, current token this sandbox signed; None for anything else
        (wrong signature, key, algorithm or issuer; expired; revoked; not yet valid; malformed)."""
        parts = token.strip().split(".")
        if len(parts) != 3 or not all(parts):
            return None
        try:
            header = json.loads(unb64url(parts[0]))
            if header.get("alg") != ALGORITHM or header.get("kid") != self.key.kid:
                return None
            signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
            if not self.key.verifies(signing_input, unb64url(parts[2])):
                return None
            claims = json.loads(unb64url(parts[1]))
            principal = Principal(
                object_id=str(claims["oid"]),
                client_id=str(claims["appid"]),
                tenant_id=str(claims["tid"]),
                display_name=str(claims.get("app_displayname", "")),
            )
            audience = normalize_audience(str(claims["aud"]))
            expires_on, not_before = int(claims["exp"]), int(claims["nbf"])
            issuer = str(claims["iss"])
            if str(claims.get("uti", "")) in self._revoked:
                return None
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            return None
        now = time.time()
        if expires_on <= now or not_before > now or issuer != issuer_v1(principal.tenant_id):
            return None
        return TokenClaims(principal=principal, audience=audience, expires_on=expires_on)
