"""The subscriptions the identity can read: ARM ``GET /subscriptions`` (api-version
2022-12-01), followed through ``nextLink``.

It is the default scope when CMK_SUBSCRIPTIONS is unset, and how a configured
subscription the identity cannot see is told apart from one without CMK accounts
(Resource Graph answers both with nothing). ARM lists a subscription to whoever holds a
role assignment at, above or inside it; listing needs no role of its own.

The request goes through an ARM pipeline the wiring builds (azure-mgmt-core's
``AsyncARMPipelineClient``: the cloud's token scope, our retry policy and user agent), so
no further SDK package (azure-mgmt-resource is 76 MB) is deployed for one GET. The
answer is kept for ``ttl`` seconds: a burst of key events, or a CLI command that sweeps
its scope and then names it, asks ARM once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from azure.core.rest import AsyncHttpResponse, HttpRequest

from cmk.adapters._errors import azure_errors
from cmk.errors import ServiceUnavailable
from cmk.ports import Subscription

__all__ = ["API_VERSION", "ArmSubscriptions"]

#: Microsoft.Resources subscriptions API (azure-rest-api-specs, stable).
API_VERSION = "2022-12-01"
#: A guard against a nextLink that never ends (ARM pages are 100+ subscriptions).
MAX_PAGES = 1000


class ArmPipeline(Protocol):
    """What we use of an async ARM pipeline client (``AsyncARMPipelineClient``)."""

    def send_request(self, request: HttpRequest, **kwargs: Any) -> Awaitable[AsyncHttpResponse]: ...


class ArmSubscriptions:
    """:class:`~cmk.ports.SubscriptionDirectory` over an ARM client's pipeline."""

    def __init__(
        self,
        client: ArmPipeline,
        arm_endpoint: str,
        *,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._endpoint = arm_endpoint.rstrip("/")
        self._ttl = ttl
        self._clock = clock
        self._cached: tuple[float, list[Subscription]] | None = None

    async def readable(self) -> list[Subscription]:
        """Every subscription ARM lists for the caller (cached for ``ttl`` seconds)."""
        cached = self._cached
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return list(cached[1])
        found = await self._list()
        self._cached = (self._clock(), found)
        return list(found)

    async def _list(self) -> list[Subscription]:
        found: list[Subscription] = []
        url: str | None = f"{self._endpoint}/subscriptions?api-version={API_VERSION}"
        pages = 0
        while url:
            pages += 1
            if pages > MAX_PAGES:
                raise ServiceUnavailable(
                    f"ARM's subscription list did not end after {MAX_PAGES} pages"
                )
            with azure_errors("listing the subscriptions the identity can read"):
                response = await self._client.send_request(HttpRequest("GET", url))
                response.raise_for_status()
                await response.read()
                page = response.json()
            found.extend(_subscription(item) for item in page.get("value") or [])
            url = page.get("nextLink") or None
        return list({s.subscription_id: s for s in found}.values())


def _subscription(item: dict[str, Any]) -> Subscription:
    sid = str(item.get("subscriptionId") or str(item.get("id", "")).rpartition("/")[2])
    return Subscription(
        subscription_id=sid.lower(),
        display_name=str(item.get("displayName") or ""),
        state=str(item.get("state") or ""),
    )
