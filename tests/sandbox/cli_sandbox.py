"""``sandbox_up``: ``cmk sandbox up`` as a user runs it, for clients nobody here wrote
(import the fixture into the test module that uses it).

The fixture starts the real command in a subprocess (no Azurite) and gives the
environment of a shell that sourced its ``--env-file``: only those variables, plus
``PATH`` and a private ``HOME``. Readiness is the env file appearing (``up`` writes it
after every service answered); the ceiling only bounds a hang.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_CEILING_SECONDS = 60.0


@dataclass(frozen=True)
class SandboxUp:
    env: dict[str, str]  # what a shell that sourced the env file has
    root: Path  # a private directory (HOME) for the client's own state


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines ``cmk sandbox up`` writes (values shell-quoted)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith(("#", "unset ")):  # the header; what the shell drops
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@contextmanager
def running_sandbox_up(root: Path, scenario: Path | None = None) -> Iterator[SandboxUp]:
    """``cmk sandbox up`` (of ``scenario``, else the built-in example) with its state in
    ``root``, stopped with SIGINT on exit."""
    env_file = root / "sandbox.env"
    command = [sys.executable, "-m", "cmk.cli", "sandbox", "up", "--no-azurite"]
    command += ["--env-file", str(env_file), "--state-dir", str(root / "state")]
    if scenario is not None:
        command += ["--scenario", str(scenario)]
    log_path = root / "up.log"
    with log_path.open("w") as log:
        up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + START_CEILING_SECONDS
            while not env_file.exists():
                assert up.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "cmk sandbox up wrote no env file"
                time.sleep(0.1)
            env = {"PATH": os.environ["PATH"], "HOME": str(root), **read_env_file(env_file)}
            yield SandboxUp(env, root)
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=30)


@pytest.fixture(scope="module")
def sandbox_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxUp]:
    with running_sandbox_up(tmp_path_factory.mktemp("sandbox-up")) as running:
        yield running
