"""EngineProvider: one engine per process, built lazily; a dry run creates no storage."""

from __future__ import annotations

import os
import uuid

from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient

from cmk.runtime import EngineProvider
from cmk.sandbox.core import Sandbox


def _names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return f"jobs-{suffix}", f"ledger{suffix}"


class TestEngineProvider:
    async def test_builds_once_and_prepares_storage(self, sandbox: Sandbox, azurite: str) -> None:
        """The first engine() creates the job queue and ledger table; later calls reuse it."""
        queue, table = _names()
        environ = {**os.environ, "CMK_JOB_QUEUE": queue, "CMK_LEDGER_TABLE": table}
        provider = EngineProvider(environ)
        try:
            first, second = await provider.engine(), await provider.engine()
            assert first.settings is second.settings
        finally:
            await provider.aclose()
        tables = [t.name for t in TableServiceClient.from_connection_string(azurite).list_tables()]
        queues = [q.name for q in QueueServiceClient.from_connection_string(azurite).list_queues()]
        assert table in tables and queue in queues

    async def test_dry_run_creates_no_storage(self, sandbox: Sandbox, azurite: str) -> None:
        """With CMK_DRY_RUN=true the engine is built without creating queue or table."""
        queue, table = _names()
        environ = {
            **os.environ,
            "CMK_JOB_QUEUE": queue,
            "CMK_LEDGER_TABLE": table,
            "CMK_DRY_RUN": "true",
        }
        provider = EngineProvider(environ)
        try:
            assert (await provider.engine()).dry_run
        finally:
            await provider.aclose()
        tables = [t.name for t in TableServiceClient.from_connection_string(azurite).list_tables()]
        queues = [q.name for q in QueueServiceClient.from_connection_string(azurite).list_queues()]
        assert table not in tables and queue not in queues
