"""A reader that goes away (`cmk status | head -1`): `cmk` stops quietly, with the exit
code of a process ended by SIGPIPE and nothing on stderr. The pipe is closed before `cmk`
writes anything, so its first write fails: no timing decides the outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_rig import World

CMK = Path(sys.executable).parent / "cmk"
CEILING_SECONDS = 120


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["check", "--all"]])
def test_a_closed_pipe_ends_quietly(world: World, argv: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before cmk starts
    try:
        ended = subprocess.run(
            [str(CMK), *argv],
            env=dict(os.environ),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=CEILING_SECONDS,
            check=False,
        )
    finally:
        os.close(write)
    assert ended.returncode == 141, ended.stderr
    assert ended.stderr == ""
