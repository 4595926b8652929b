"""How an account update's long-running operation is followed: the status, and no more.

ARM answers the PATCH of an account with ``202 Accepted``, the account as the resource
provider took the change (``provisioningState: Updating``, the new ``keyVersion``) and an
``Azure-AsyncOperation`` status URL. azure-core's ARM polling follows that status and, for
a PATCH, then GETs the account once more. That last GET repeats what the status already
proved — the operation that carried our change ended ``Succeeded`` — so
:class:`StatusPolling` stops at the status. It keeps the PATCH's answer, so the caller can
tell the (never expected) case of an answer that shows the account on another key.

Operations answered with ``Location`` only, or with the provisioning state in the body,
follow azure-core's usual algorithms.
"""

from __future__ import annotations

from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.core.polling.base_polling import (
    LocationPolling,
    OperationFailed,
    StatusCheckPolling,
)
from azure.mgmt.cognitiveservices.models import Account
from azure.mgmt.core.polling.arm_polling import (
    AzureAsyncOperationPolling,
    BodyContentPolling,
)
from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling

__all__ = ["StatusPolling"]


class _StatusOnly(AzureAsyncOperationPolling[Any, Any]):
    """The ``Azure-AsyncOperation`` algorithm without the final GET of the resource."""

    def get_final_get_url(self, pipeline_response: Any) -> str | None:
        return None


class StatusPolling(AsyncARMPolling):
    """ARM polling that ends at the operation's status and remembers the PATCH's answer.

    ``fixed_interval`` polls every ``timeout`` seconds whatever ``Retry-After`` says (the
    tests' fast setting); otherwise the service's ``Retry-After`` paces the polls.
    """

    def __init__(self, timeout: float, *, fixed_interval: bool = False) -> None:
        algorithms = [_StatusOnly(), LocationPolling(), BodyContentPolling(), StatusCheckPolling()]
        super().__init__(timeout, lro_algorithms=algorithms)
        self._fixed = fixed_interval
        self._accepted: Account | None = None

    def initialize(
        self,
        client: Any,
        initial_response: PipelineResponse[Any, Any],
        deserialization_callback: Any,
    ) -> None:
        super().initialize(client, initial_response, deserialization_callback)
        try:
            body = initial_response.http_response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("properties") is not None:
            self._accepted = Account.deserialize(body)

    @property
    def accepted(self) -> Account | None:
        """The account as the PATCH's answer showed it, if the answer carried it."""
        return self._accepted

    def _extract_delay(self) -> float:
        return float(self._timeout) if self._fixed else super()._extract_delay()

    async def _poll(self) -> None:
        """azure-core's loop (pinned 1.41.0), with one change: the first status poll waits
        for the ``Retry-After`` of the PATCH's answer, as every later one does, instead of
        asking at once — an answer that says "try in 2 s" is not asked again after 20 ms."""
        while not self.finished():
            await self._delay()
            await self.update_status()
        if str(self.status()).lower() in ("failed", "canceled"):
            raise OperationFailed("Operation failed or canceled")
        final_get_url = self._operation.get_final_get_url(self._pipeline_response)
        if final_get_url:  # only the algorithms other than the status one ask for it
            self._pipeline_response = await self.request_status(final_get_url)
