"""One engine per process: settings read once, clients built once, storage made ready.

The Functions app and the CLI both get their :class:`~cmk.usecases.context.Engine` here.
The environment is read by :meth:`Settings.from_environ` only; callers pass it in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import cast

from cmk.errors import ConfigurationError
from cmk.ports import AlertSink, JobQueue, Ledger, OperationStore
from cmk.settings import Settings
from cmk.usecases.context import Engine
from cmk.wiring import Services, WiringOptions

__all__ = ["EngineProvider", "Runtime"]

_log = logging.getLogger(__name__)


class Runtime:
    """Settings, the services built for them, and the engine over both (async context)."""

    def __init__(self, settings: Settings, *, options: WiringOptions | None = None) -> None:
        self.settings = settings
        self.services = Services.from_settings(settings, options=options)
        self._storage_ready = False

    def engine(self, *, dry_run: bool | None = None) -> Engine:
        """The engine; ``dry_run`` overrides the setting (the CLI's ``--dry-run``)."""
        settings = self.settings
        if dry_run is not None and dry_run != settings.dry_run:
            settings = settings.with_dry_run(dry_run)
        services = self.services
        storage = settings.storage is not None
        return Engine(
            keys=services.keys,
            accounts=services.accounts,
            inventory=services.inventory,
            jobs=services.jobs if storage else cast(JobQueue, _Unconfigured("job queue")),
            ledger=services.ledger if storage else cast(Ledger, _Unconfigured("ledger")),
            alerts=services.alerts if storage else cast(AlertSink, _Unconfigured("alerts")),
            settings=settings,
            subscriptions=services.subscriptions,
            operations=(
                services.operations
                if storage
                else cast(OperationStore, _Unconfigured("HTTP operations store"))
            ),
        )

    async def prepare_storage(self) -> None:
        """Create the job queue and the ledger table once (both calls tolerate existing ones)."""
        if self._storage_ready or self.settings.storage is None:
            return
        await asyncio.gather(self.services.jobs.ensure_queue(), self.services.ledger.ensure_table())
        self._storage_ready = True

    async def aclose(self) -> None:
        await self.services.aclose()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Unconfigured:
    """Stands in for a storage-backed port when no storage is configured: any use fails
    with the ConfigurationError that says how to configure it."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> object:
        raise ConfigurationError(
            f"the {self._what} needs storage: set AzureWebJobsStorage (a connection string) "
            "or AzureWebJobsStorage__accountName (identity-based); see docs/configuration.md"
        )


class EngineProvider:
    """A lazily built, process-wide :class:`Runtime` for the Functions app: the first
    invocation reads the settings and builds the clients; later ones reuse them."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._runtime: Runtime | None = None
        self._lock = asyncio.Lock()

    async def engine(self) -> Engine:
        runtime = self._runtime
        if runtime is None:
            async with self._lock:
                if self._runtime is None:
                    built = Runtime(Settings.from_environ(self._environ))
                    try:
                        if not built.settings.dry_run:  # a dry run creates nothing
                            await built.prepare_storage()
                    except BaseException:
                        await built.aclose()
                        raise
                    self._runtime = built
                    _log.info("cmk engine ready", extra={"cmk_step": "startup"})
                runtime = self._runtime
        return runtime.engine()

    async def aclose(self) -> None:
        """Close the clients, if they were built (a host shutting down, or a test)."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await runtime.aclose()
