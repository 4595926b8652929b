"""Shared fixtures: the local Azure sandbox and Azurite.

- ``sandbox_server`` (session): one running :class:`~cmk.sandbox.core.Sandbox`.
- ``sandbox`` (function): the same sandbox reset to an empty world (the app identity
  kept), with the process environment pointing Azure SDK clients at it.
- ``azurite`` (session): the Storage connection string of a running Azurite; a test that
  uses both ``sandbox`` and ``azurite`` also gets ``AzureWebJobsStorage`` set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmk.sandbox.azurite import Azurite
from cmk.sandbox.core import INTERFERING_ENV, Sandbox


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-size",
        type=int,
        default=None,
        help="accounts in the chaos suite's run (default 240, or CMK_CHAOS_SIZE)",
    )


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox for the whole session; this process's aiohttp trusts its CA."""
    sandbox = Sandbox(Path(tmp_path_factory.mktemp("sandbox"))).start()
    sandbox.trust_ca_in_process()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The connection string of an Azurite (queues, tables, blobs) on free loopback ports."""
    emulator = Azurite(Path(tmp_path_factory.mktemp("azurite"))).start()
    try:
        yield emulator.connection_string
    finally:
        emulator.stop()


@pytest.fixture
def sandbox(
    sandbox_server: Sandbox, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Sandbox:
    """The session sandbox, reset, with os.environ pointing SDK clients at it."""
    sandbox_server.reset()
    for name in list(os.environ):
        if name.startswith("AZURE_") or name in INTERFERING_ENV:
            monkeypatch.delenv(name, raising=False)
    for name, value in sandbox_server.env().items():
        monkeypatch.setenv(name, value)
    if "azurite" in request.fixturenames:
        monkeypatch.setenv("AzureWebJobsStorage", request.getfixturevalue("azurite"))
    return sandbox_server
