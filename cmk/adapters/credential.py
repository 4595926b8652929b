"""A new token when a service refuses the one it was sent.

azure-identity keeps each token until shortly before it expires, so a token a service
refuses earlier — revoked, signed by a key the service no longer trusts, expired by the
service's clock — comes back from the cache on every later attempt: "retry" without
"refresh" until the cache lets go, which for a managed identity is hours, and a job
runs out of deliveries long before that. (azure-core's bearer policies drop their own
copy on any 401 already; the credential's cache is the one that keeps it.)

- :class:`RenewingCredential` wraps a credential *factory* and remembers the tokens the
  current credential handed out. When a service refuses one of them, the next caller gets
  its token from a fresh credential (an empty cache). A token of an older credential
  changes nothing (one refusal, one renewal, however many requests carried it), and
  renewals are at least ``min_interval`` seconds apart, so a service that refuses every
  token costs one new credential a minute, not one per request.
- :class:`RenewingARMChallengePolicy` is ARM's challenge policy that, when ARM refused a
  token as such (not "right token, wrong audience or tenant": a new token would be
  refused the same way), renews the credential, authorizes the request again and sends
  it once more: the refused request was not carried out, so sending it again is safe (a
  PATCH included).
- :class:`TokenRefusalPolicy` does the same for Key Vault's clients, whose challenge
  policy cannot be replaced: a per-retry policy above it that sees the 401 Key Vault's
  policy could not mend (it asks the credential again, which still had the cached token),
  renews the credential and sends the request once more through that policy, which now
  gets a new token. A 401 that comes back after that is about more than a stale token.

The Storage and Event Grid clients keep the SDK's behaviour: they authenticate with the
connection string or the same credential, and a refused token there is retried with the
job (docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.mgmt.core.policies import AsyncARMChallengeAuthenticationPolicy

__all__ = ["RenewingARMChallengePolicy", "RenewingCredential", "TokenRefusalPolicy"]

log = logging.getLogger(__name__)

#: Tokens of the current credential remembered (a few scopes, a few refreshes each).
REMEMBERED_TOKENS = 64
#: Seconds between two renewals at least.
MIN_RENEW_INTERVAL = 60.0

# 401 codes that say the token itself is fine but meant for another audience or tenant,
# or was not sent at all: a new token from the same credential would fare no better.
_MISDIRECTED_CODES = frozenset(
    {
        "invalidauthenticationtokenaudience",
        "invalidauthenticationtokentenant",
        "authenticationfailed",
    }
)


class RenewingCredential(AsyncTokenCredential):
    """A credential that starts afresh when a service refuses a token it handed out."""

    def __init__(
        self,
        factory: Callable[[], AsyncTokenCredential],
        *,
        min_interval: float = MIN_RENEW_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._current = factory()
        self._retired: list[AsyncTokenCredential] = []
        self._handed_out: OrderedDict[str, None] = OrderedDict()
        self._min_interval = min_interval
        self._clock = clock
        self._renewed_at: float | None = None
        #: How many times a refused token made this credential start afresh.
        self.renewals = 0

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        credential = self._current
        token = await credential.get_token(
            *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
        )
        self._remember(credential, token.token)
        return token

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        credential = self._current
        get_token_info = getattr(credential, "get_token_info", None)
        if get_token_info is not None:
            info: AccessTokenInfo = await get_token_info(*scopes, options=options)
        else:
            given = options or {}
            token = await credential.get_token(
                *scopes,
                claims=given.get("claims"),
                tenant_id=given.get("tenant_id"),
                enable_cae=given.get("enable_cae", False),
            )
            info = AccessTokenInfo(token.token, token.expires_on)
        self._remember(credential, info.token)
        return info

    def _remember(self, credential: AsyncTokenCredential, token: str) -> None:
        if credential is not self._current:
            return  # renewed while this token was on its way: it is already old
        self._handed_out[token] = None
        self._handed_out.move_to_end(token)
        while len(self._handed_out) > REMEMBERED_TOKENS:
            self._handed_out.popitem(last=False)

    def outdated(self, token: str) -> bool:
        """Whether ``token`` no longer comes from the current credential."""
        return token not in self._handed_out

    def refused(self, token: str, where: str) -> bool:
        """A service (``where``) refused ``token``: start afresh if it is one of the
        current credential's and the last renewal is long enough ago. True if renewed."""
        if token not in self._handed_out:
            return False
        now = self._clock()
        if self._renewed_at is not None and now - self._renewed_at < self._min_interval:
            return False
        self._retired.append(self._current)
        self._current = self._factory()
        self._handed_out.clear()
        self._renewed_at = now
        self.renewals += 1
        log.info("%s refused a token before it expired; getting a new one", where)
        return True

    async def close(self) -> None:
        credentials, self._retired = [*self._retired, self._current], []
        for credential in credentials:
            await credential.close()

    async def __aexit__(self, *args: Any) -> None:
        await self.close()


def _bearer_token(request: PipelineRequest[Any]) -> str | None:
    scheme, _, token = request.http_request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _error_code(response: PipelineResponse[Any, Any]) -> str | None:
    try:
        body = json.loads(response.http_response.body() or b"null")
    except (ValueError, TypeError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def token_refused(request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> bool:
    """Whether ``response`` refuses the bearer token ``request`` carried as such (a 401
    that does not say "right token, wrong audience or tenant")."""
    if response.http_response.status_code != 401 or _bearer_token(request) is None:
        return False
    code = _error_code(response)
    return code is None or code.lower() not in _MISDIRECTED_CODES


def _renewed(
    credential: RenewingCredential,
    request: PipelineRequest[Any],
    response: PipelineResponse[Any, Any],
) -> bool:
    """Whether ``response`` refused the token ``request`` carried and the credential now
    hands out another (renewed now or before): then the request is worth sending again.
    False when it was not refused, or not renewed (too soon after the last renewal)."""
    if not token_refused(request, response):  # a status check first: every request
        return False
    token = _bearer_token(request)
    assert token is not None  # token_refused saw one
    credential.refused(token, request.http_request.url.split("?", 1)[0])
    return credential.outdated(token)


class TokenRefusalPolicy(AsyncHTTPPolicy[Any, Any]):
    """Above a client's authentication policy: when the service refused the token, renew
    the :class:`RenewingCredential` and send the request once more (with a new token)."""

    def __init__(self, credential: RenewingCredential) -> None:
        super().__init__()
        self._credential = credential

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        response = await self.next.send(request)
        if not _renewed(self._credential, request, response):
            return response
        return await self.next.send(request)


class RenewingARMChallengePolicy(AsyncARMChallengeAuthenticationPolicy):
    """ARM's challenge policy, plus: a token ARM refused is replaced by one of the renewed
    credential and the request sent once more."""

    def __init__(self, credential: RenewingCredential, *scopes: str, **kwargs: Any) -> None:
        super().__init__(credential, *scopes, **kwargs)
        self._renewing = credential

    async def on_challenge(
        self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]
    ) -> bool:
        if await super().on_challenge(request, response):
            return True
        if not _renewed(self._renewing, request, response):
            return False
        await self.authorize_request(request, *self._scopes)
        return True
