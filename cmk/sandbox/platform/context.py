"""What every emulated service gets: the world and a way to tell who is calling.

A service's module (``keyvault.service``, ``arm.service``; Event Grid's topics through
their class) exposes ``build_app(ctx: ServiceContext) -> aiohttp.web.Application``; the
sandbox server mounts it for the service's host names behind the TLS proxy, and wraps it
with the fault and counter middleware, so services only implement Azure's behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from cmk.sandbox.world import Principal, World

# Token audiences as the services check them (trailing '/' and '/.default' stripped).
AUDIENCE_VAULT = "https://vault.azure.net"
AUDIENCE_MANAGED_HSM = "https://managedhsm.azure.net"
AUDIENCE_ARM = "https://management.azure.com"
AUDIENCE_EVENTGRID = "https://eventgrid.azure.net"


def normalize_audience(resource_or_scope: str) -> str:
    """'https://vault.azure.net/.default' and 'https://vault.azure.net/' -> 'https://vault.azure.net'."""
    text = resource_or_scope.strip()
    if text.endswith("/.default"):
        text = text[: -len("/.default")]
    return text.rstrip("/").lower()


@dataclass(frozen=True)
class TokenClaims:
    """What a sandbox bearer token says: who, for which audience, until when (unix seconds)."""

    principal: Principal
    audience: str
    expires_on: int


class TokenVerifier(Protocol):
    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a valid, unexpired sandbox token; None for anything else."""
        ...


@dataclass
class ServiceContext:
    world: World
    tokens: TokenVerifier

    def bearer_claims(self, request: web.Request) -> TokenClaims | None:
        """Claims of the request's ``Authorization: Bearer`` token, or None if absent/invalid."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.tokens.verify(token.strip())
