"""The one place that builds the credential and every Azure client, once per process.

::

    async with Services.from_settings(settings) as services:
        record = await services.accounts.get(account_id)

:meth:`Services.from_settings` builds (without any network call):

- the credential: ``azure.identity.aio.DefaultAzureCredential`` with the configured
  cloud's authority (in Azure Functions: the app's managed identity);
- Key Vault clients per vault (challenge auth finds the audience in any cloud);
- ARM clients (Cognitive Services per subscription, Resource Graph) on the cloud's ARM
  endpoint with its token scope (``base_url=``, ``credential_scopes=``), and an ARM
  pipeline for the subscriptions the identity can read (the default scope);
- the Storage queues (jobs, HTTP operations) and table from ``AzureWebJobsStorage``
  (connection string, or identity-based service URIs), messages base64 as Functions
  expects;
- the Event Grid publisher when CMK_ALERT_TOPIC_ENDPOINT is set (else alerts are
  logged only);

and closes them all on exit. Every client gets the same retry settings
(:class:`RetryOptions`); ``RetryOptions(backoff=False)`` retries without sleeping (for
tests and benchmarks; chosen by the caller, never detected). Every request carries the
``cmk-rotator/<version>`` user agent, so ARM activity logs show who changed an account.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline import policies as core_policies
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.data.tables.aio import TableClient
from azure.eventgrid.aio import EventGridPublisherClient
from azure.identity.aio import DefaultAzureCredential
from azure.mgmt.cognitiveservices.aio import CognitiveServicesManagementClient
from azure.mgmt.core import AsyncARMPipelineClient
from azure.mgmt.core.policies import ARMHttpLoggingPolicy, AsyncARMChallengeAuthenticationPolicy
from azure.mgmt.resourcegraph.aio import ResourceGraphClient
from azure.storage.queue.aio import QueueClient

from cmk import __version__
from cmk.adapters.accounts import CognitiveAccounts
from cmk.adapters.alerts import EventGridAlerts
from cmk.adapters.arm_budget import (
    ARM_READS,
    ARM_WRITES,
    ArmBudget,
    ArmPacingPolicy,
    BucketSize,
)
from cmk.adapters.credential import (
    RenewingARMChallengePolicy,
    RenewingCredential,
    TokenRefusalPolicy,
)
from cmk.adapters.http_transport import transport_options
from cmk.adapters.inventory import ResourceGraphInventory
from cmk.adapters.jobqueue import StorageJobQueue, message_policies
from cmk.adapters.keyvault import KeyVaultKeys
from cmk.adapters.ledger import TableLedger
from cmk.adapters.operations import TableOperations
from cmk.adapters.subscriptions import ArmSubscriptions
from cmk.settings import Settings, StorageSettings

__all__ = ["RetryOptions", "Services", "WiringOptions"]

logger = logging.getLogger(__name__)

USER_AGENT = f"cmk-rotator/{__version__}"


class _ImmediateRetryPolicy(AsyncRetryPolicy[Any, Any]):
    """azure-core's retry policy without any sleep (neither backoff nor Retry-After)."""

    async def sleep(self, settings: Any, transport: Any, response: Any = None) -> None:
        return None


@dataclass(frozen=True)
class RetryOptions:
    """How every client retries transient failures (429, 5xx, connection errors).

    ``total`` retries per request; ``backoff=False`` retries at once, ignoring
    ``Retry-After`` (tests and benchmarks only: it would hammer a real service).
    """

    total: int = 4
    backoff: bool = True
    backoff_factor: float = 0.8
    backoff_max: int = 30

    def core_options(self) -> dict[str, Any]:
        """Keyword arguments of azure-core's retry policy."""
        return {
            "retry_total": self.total,
            "retry_backoff_factor": self.backoff_factor if self.backoff else 0.0,
            "retry_backoff_max": self.backoff_max,
        }

    def core_client_options(self) -> dict[str, Any]:
        """Options for clients that accept ``retry_policy`` (Key Vault, ARM)."""
        options = self.core_options()
        if not self.backoff:
            options["retry_policy"] = _ImmediateRetryPolicy(**self.core_options())
        return options

    def queue_options(self) -> dict[str, Any]:
        """Options of the Storage queue's exponential retry."""
        return {
            "retry_total": self.total,
            "initial_backoff": 2 if self.backoff else 0,
            "increment_base": 3 if self.backoff else 0,
            "random_jitter_range": 1 if self.backoff else 0,
        }


@dataclass(frozen=True)
class WiringOptions:
    """Knobs of the wiring that are not settings: retry, LRO polling, clock.

    ``polling_interval`` (seconds) fixes the ARM long-running-operation poll period;
    None follows ``Retry-After``. ``clock`` dates new key versions' expiry.
    ``subscriptions_ttl`` (seconds) is how long the list of subscriptions the identity
    can read is reused before ARM is asked again. ``arm_reads`` / ``arm_writes`` size the
    per-subscription buckets that pace ARM requests (ARM's own sizes by default).
    """

    retry: RetryOptions = field(default_factory=RetryOptions)
    polling_interval: float | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    key_read_concurrency: int = 8
    subscriptions_ttl: float = 300.0
    arm_reads: BucketSize = ARM_READS
    arm_writes: BucketSize = ARM_WRITES


class Services:
    """Every adapter of :mod:`cmk.ports`, built for one :class:`Settings`; an async context
    manager that closes every client (and the credential, if it built it)."""

    def __init__(
        self,
        settings: Settings,
        credential: AsyncTokenCredential,
        *,
        options: WiringOptions | None = None,
        owns_credential: bool = False,
    ) -> None:
        self.settings = settings
        self.credential = credential
        self.options = options or WiringOptions()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        if owns_credential:
            self._closers.append(credential.close)
        retry = self.options.retry

        #: Set when the credential is ours to renew (a service refused a token early).
        self.renewing = credential if isinstance(credential, RenewingCredential) else None
        key_options: dict[str, Any] = {"user_agent": USER_AGENT, **retry.core_client_options()}
        if self.renewing is not None:
            key_options["per_retry_policies"] = [TokenRefusalPolicy(self.renewing)]
        self.keys = KeyVaultKeys(
            credential,
            client_options=key_options,
            clock=self.options.clock,
            max_concurrency=self.options.key_read_concurrency,
            cache_seconds=settings.key_cache.total_seconds(),
        )
        self._closers.append(self.keys.close)

        #: One process's view of each subscription's ARM budget, shared by every client.
        self.arm_budget = ArmBudget(self.options.arm_reads, self.options.arm_writes)
        pacing = ArmPacingPolicy(self.arm_budget)

        def cognitive_client(subscription_id: str) -> CognitiveServicesManagementClient:
            return CognitiveServicesManagementClient(
                credential,
                subscription_id,
                per_retry_policies=[pacing],
                **self.arm_client_options(),
                **transport_options(),
            )

        self.accounts = CognitiveAccounts(
            cognitive_client,
            polling_interval=self.options.polling_interval,
            patch_timeout=settings.patch_timeout.total_seconds(),
            budget=self.arm_budget,
        )
        self._closers.append(self.accounts.close)

        graph = ResourceGraphClient(credential, **self.arm_client_options(), **transport_options())
        self._closers.append(graph.close)
        self.inventory = ResourceGraphInventory(graph, fallback=self.accounts)

        pipeline = self._arm_pipeline()
        self._closers.append(pipeline.close)
        self.subscriptions = ArmSubscriptions(
            pipeline,
            settings.cloud.endpoints.arm_endpoint,
            ttl=self.options.subscriptions_ttl,
        )

        self._jobs: StorageJobQueue | None = None
        self._ledger: TableLedger | None = None
        self._operations: TableOperations | None = None
        self._alerts: EventGridAlerts | None = None
        if settings.storage is not None:
            self._build_storage(settings.storage)

    def arm_client_options(self) -> dict[str, Any]:
        """Keyword arguments every ARM management client gets: the cloud's endpoint and
        token scope, the authentication and retry policies and our user agent (new
        policy objects on every call: a policy belongs to one client's pipeline)."""
        endpoints = self.settings.cloud.endpoints
        return {
            "base_url": endpoints.arm_endpoint,
            "credential_scopes": [endpoints.arm_scope],
            "authentication_policy": self._arm_authentication(),
            "user_agent": USER_AGENT,
            **self.options.retry.core_client_options(),
        }

    def _arm_authentication(self) -> AsyncARMChallengeAuthenticationPolicy:
        """ARM's challenge policy; with a credential of ours, one that also replaces a
        token ARM refused before it expired (:mod:`cmk.adapters.credential`)."""
        scope = self.settings.cloud.endpoints.arm_scope
        if self.renewing is not None:
            return RenewingARMChallengePolicy(self.renewing, scope)
        return AsyncARMChallengeAuthenticationPolicy(self.credential, scope)

    def _arm_pipeline(self) -> AsyncARMPipelineClient[Any, Any]:
        """A bare ARM pipeline (token scope, retry, user agent, ARM's logging policy) for
        calls no management client we deploy makes (``GET /subscriptions``)."""
        endpoints = self.settings.cloud.endpoints
        retry = self.options.retry
        retry_policy = (
            AsyncRetryPolicy(**retry.core_options())
            if retry.backoff
            else _ImmediateRetryPolicy(**retry.core_options())
        )
        return AsyncARMPipelineClient(
            base_url=endpoints.arm_endpoint,
            policies=[
                core_policies.RequestIdPolicy(),
                core_policies.HeadersPolicy(),
                core_policies.UserAgentPolicy(user_agent=USER_AGENT),
                core_policies.ProxyPolicy(),
                core_policies.ContentDecodePolicy(),
                retry_policy,
                self._arm_authentication(),
                core_policies.CustomHookPolicy(),
                core_policies.NetworkTraceLoggingPolicy(),
                core_policies.DistributedTracingPolicy(),
                ARMHttpLoggingPolicy(),
            ],
            **transport_options(),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        options: WiringOptions | None = None,
        credential: AsyncTokenCredential | None = None,
    ) -> Services:
        """Build every client for ``settings``. Without ``credential``, a
        ``DefaultAzureCredential`` for the configured cloud is built (and closed)."""
        if credential is not None:
            return cls(settings, credential, options=options)
        authority = settings.cloud.endpoints.authority_host
        built = RenewingCredential(lambda: DefaultAzureCredential(authority=authority))
        return cls(settings, built, options=options, owns_credential=True)

    def _build_storage(self, storage: StorageSettings) -> None:
        retry = self.options.retry
        settings = self.settings
        queue_options = {**message_policies(), **retry.queue_options(), "user_agent": USER_AGENT}
        table_options = {**retry.core_options(), "user_agent": USER_AGENT}
        if storage.connection_string is not None:
            queue = QueueClient.from_connection_string(
                storage.connection_string,
                settings.job_queue,
                **queue_options,
                **transport_options(),
            )
            operations = QueueClient.from_connection_string(
                storage.connection_string,
                settings.operation_queue,
                **queue_options,
                **transport_options(),
            )
            table = TableClient.from_connection_string(
                storage.connection_string,
                table_name=settings.ledger_table,
                **table_options,
                **transport_options(),
            )
        else:
            assert storage.queue_service_uri is not None
            assert storage.table_service_uri is not None
            queue = QueueClient(
                storage.queue_service_uri,
                settings.job_queue,
                credential=self.credential,
                **queue_options,
                **transport_options(),
            )
            operations = QueueClient(
                storage.queue_service_uri,
                settings.operation_queue,
                credential=self.credential,
                **queue_options,
                **transport_options(),
            )
            table = TableClient(
                storage.table_service_uri,
                table_name=settings.ledger_table,
                credential=self.credential,
                **table_options,
                **transport_options(),
            )
        self._closers.append(queue.close)
        self._closers.append(operations.close)
        self._closers.append(table.close)
        self._jobs = StorageJobQueue(queue, max_concurrency=settings.max_concurrency)
        self._ledger = TableLedger(table)
        self._operations = TableOperations(table, operations)
        publisher = None
        if settings.alert_topic_endpoint is not None:
            publisher = EventGridPublisherClient(
                settings.alert_topic_endpoint,
                self.credential,
                user_agent=USER_AGENT,
                **retry.core_options(),
                **transport_options(),
            )
            self._closers.append(publisher.close)
        self._alerts = EventGridAlerts(
            publisher, self._ledger, logging.getLogger("cmk.alerts"), clock=self.options.clock
        )

    @property
    def jobs(self) -> StorageJobQueue:
        """The rotation job queue (needs AzureWebJobsStorage)."""
        if self._jobs is None:
            self.settings.require_storage()
        assert self._jobs is not None
        return self._jobs

    @property
    def ledger(self) -> TableLedger:
        """The ledger table (needs AzureWebJobsStorage)."""
        if self._ledger is None:
            self.settings.require_storage()
        assert self._ledger is not None
        return self._ledger

    @property
    def operations(self) -> TableOperations:
        """HTTP operations: rows in the ledger table, the operations queue (needs
        AzureWebJobsStorage)."""
        if self._operations is None:
            self.settings.require_storage()
        assert self._operations is not None
        return self._operations

    @property
    def alerts(self) -> EventGridAlerts:
        """The alert sink (needs AzureWebJobsStorage for its dedup rows)."""
        if self._alerts is None:
            self.settings.require_storage()
        assert self._alerts is not None
        return self._alerts

    async def aclose(self) -> None:
        """Close every client, last built first; errors are logged, not raised."""
        closers, self._closers = self._closers[::-1], []
        for close in closers:
            try:
                await close()
            except Exception:
                logger.warning("closing a client failed", exc_info=True)

    async def __aenter__(self) -> Services:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
