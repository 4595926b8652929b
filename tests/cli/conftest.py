"""Fixtures of the CLI tests: the demo world seeded in the sandbox (updates instant), the
environment a signed-in operator would have, and ``cmk`` run through its real entry point."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from cli_rig import Run, World

from cmk.cli import main
from cmk.commands.demo_stage import DEMO_WORLD
from cmk.sandbox.core import Sandbox


@pytest.fixture
def world(sandbox: Sandbox, azurite: str, monkeypatch: pytest.MonkeyPatch) -> World:
    """The demo world with instant updates, and the CMK_* settings that fit it (fresh
    queue and ledger table)."""
    sandbox.seed(DEMO_WORLD)
    sandbox.set_throttling(False)
    for account in sandbox.world.accounts.values():
        account.lro_seconds = 0.0
    for name, value in sandbox.settings_env().items():
        monkeypatch.setenv(name, value)
    suffix = uuid.uuid4().hex[:10]
    monkeypatch.setenv("CMK_JOB_QUEUE", f"jobs-{suffix}")
    monkeypatch.setenv("CMK_LEDGER_TABLE", f"ledger{suffix}")
    return World(sandbox)


@pytest.fixture
def cmk(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run ``cmk`` through :func:`cmk.cli.main` and capture what it printed."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run
