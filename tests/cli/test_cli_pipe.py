"""A reader that goes away (`cmk status | head -1`): `cmk` stops quietly, with the exit
code of a process ended by SIGPIPE and nothing on stderr. The pipe is closed before `cmk`
writes anything, so its first write fails: no timing decides the outcome. A stdout that
cannot be written for another reason (`> /dev/full`): one line on stderr, exit 1."""

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


DEV_FULL = Path("/dev/full")


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize(
    "argv",
    [["status"], ["status", "--json"], ["status", "-o", "tsv"], ["status", "--query", "summary"]],
    ids=" ".join,
)
def test_a_full_disk_is_one_line_and_exit_1(world: World, argv: list[str]) -> None:
    """stdout on /dev/full (every write fails with ENOSPC): one line on stderr that says
    the output cannot be written and why, exit 1, no traceback, no second error."""
    with DEV_FULL.open("w") as full:
        ended = subprocess.run(
            [str(CMK), *argv],
            env=dict(os.environ),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=CEILING_SECONDS,
            check=False,
        )
    assert ended.returncode == 1, ended.stderr
    assert ended.stderr == "cmk: cannot write the output: No space left on device\n"
