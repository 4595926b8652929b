"""Azurite: the real Storage emulator on free ports, reached with the SDK clients."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from cmk.sandbox.core import Sandbox
from cmk.sandbox.platform.azurite import Azurite


class TestAzurite:
    def test_queue_round_trip(self, azurite: str):
        """A QueueClient from the connection string sends and receives a message."""
        queue = QueueClient.from_connection_string(azurite, f"q{uuid.uuid4().hex[:12]}")
        queue.create_queue()
        queue.send_message("hello")
        [message] = list(queue.receive_messages())
        assert message.content == "hello"

    def test_table_round_trip(self, azurite: str):
        """A TableClient from the connection string inserts and reads an entity."""
        table = TableClient.from_connection_string(azurite, f"t{uuid.uuid4().hex[:12]}")
        table.create_table()
        table.create_entity({"PartitionKey": "p", "RowKey": "r", "n": 1})
        assert table.get_entity("p", "r")["n"] == 1

    def test_sandbox_env_carries_the_storage_connection(self, sandbox: Sandbox, azurite: str):
        """With both fixtures, AzureWebJobsStorage is the Azurite connection string and
        storage calls do not go through the proxy."""

        assert os.environ["AzureWebJobsStorage"] == azurite  # noqa: SIM112 (the Functions name)
        queue = QueueClient.from_connection_string(azurite, f"q{uuid.uuid4().hex[:12]}")
        queue.create_queue()
        assert sandbox.counters.total == 0


class _InterruptedWhileWaiting(Azurite):
    """Azurite whose readiness wait is interrupted (Ctrl-C) at its first look."""

    pid: int | None = None

    def _ready(self, log_path: Path, start: int) -> bool:
        assert self._process is not None
        self.pid = self._process.pid
        raise KeyboardInterrupt


class TestInterruptedStart:
    def test_a_ctrl_c_while_waiting_leaves_no_azurite_behind(self, tmp_path: Path):
        """Azurite runs in a session of its own (the terminal's SIGINT never reaches it):
        a start interrupted while waiting for it stops it, not leaves it running."""
        azurite = _InterruptedWhileWaiting(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            azurite.start()
        assert azurite.pid is not None
        assert not azurite.running
        with pytest.raises(ProcessLookupError):
            os.kill(azurite.pid, 0)  # gone (and reaped), not an orphan
