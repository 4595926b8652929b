"""Ctrl-C: an interrupted `cmk rotate` or `cmk sweep` (a real process, a real SIGINT) says
what it did, what it did not, and the command that finishes the work; no traceback, exit
130. Each interruption point is made to happen: the sandbox holds one request open (a
latency fault) and the signal is sent once that request has arrived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from cli_rig import SCHEMAS, World

from cmk.sandbox.platform.faults import FaultRule

CMK = Path(sys.executable).parent / "cmk"
#: Only bounds a hang: the signal is sent when the held request has arrived.
CEILING_SECONDS = 60
HOLD_SECONDS = 15

PATCH_ACCOUNT = {"host": "management.azure.com", "path": r"/accounts/", "method": "PATCH"}
CREATE_VERSION = {"host": "*.vault.azure.net", "path": r"/keys/ai-cmk/(create|rotate)"}
RESOURCE_GRAPH = {"host": "management.azure.com", "path": r"Microsoft\.ResourceGraph/resources"}


#: Runs ARGV with SIGINT at its default. A suite started in the background (`make test &`,
#: nohup) inherits SIGINT ignored, and a Python started with SIGINT ignored keeps ignoring
#: it, as a background job should: `cmk` would run to the end and these tests would fail.
#: (Not a preexec_fn: the sandbox's threads make forking with one unsafe.)
CTRL_C_DEFAULT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def _interrupt(
    world: World, argv: list[str], hold: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `cmk ARGV`, hold the first request matching ``hold``, SIGINT the process once
    it is waiting on it, and return how it ended."""
    rule: FaultRule = world.sandbox.faults.add(latency=HOLD_SECONDS, **hold)
    process = subprocess.Popen(
        [*CTRL_C_DEFAULT, str(CMK), *argv],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CEILING_SECONDS
        while rule.hits == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the held request never arrived"
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=CEILING_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        world.sandbox.faults.remove(rule)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


class TestInterruptedRotate:
    def test_during_the_moves(self, world: World):
        """Interrupted while accounts move: it names the created version, how many accounts
        finished, what is left, and `cmk sweep`; exit 130, no traceback."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        before = len(key.versions)
        ended = _interrupt(world, ["rotate", world.key_id("kv-demo-neu", "ai-cmk")], PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        created = key.versions[before].version
        assert f"created version {created}" in ended.stderr
        assert "of 10 account(s) finished" in ended.stderr
        assert "not verified on the new version" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr

    def test_while_creating_the_version(self, world: World):
        """Interrupted while the version is being created: nothing moved, and how to tell
        whether the version exists (`cmk versions`) before `cmk sweep` or a new rotate."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        ended = _interrupt(world, ["rotate", key_id], CREATE_VERSION)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert "while creating a new version" in ended.stderr
        assert "no account was moved" in ended.stderr
        assert f"cmk versions {key_id}" in ended.stderr and "cmk sweep" in ended.stderr

    def test_json_gets_an_interrupted_document(self, world: World):
        """With --json, stdout holds one error document of kind `interrupted`, exit 130."""
        argv = ["rotate", world.key_id("kv-demo-neu", "ai-cmk"), "--json"]
        ended = _interrupt(world, argv, PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        document = json.loads(ended.stdout)
        jsonschema.validate(document, SCHEMAS["error"])
        error = document["error"]
        assert error["kind"] == "interrupted" and error["exit_code"] == 130
        assert error["fix"] == "run `cmk sweep`"


class TestInterruptedSweep:
    def test_during_the_inventory(self, world: World):
        """Interrupted while taking the inventory: nothing moved; run the sweep again."""
        ended = _interrupt(world, ["sweep"], RESOURCE_GRAPH)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert "while taking the inventory" in ended.stderr
        assert "no account was moved" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr

    @pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
    def test_during_the_moves(self, world: World, verbose: bool):
        """Interrupted while stale accounts move: how many finished, and `cmk sweep`."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        argv = ["sweep", *(["-v"] if verbose else [])]
        ended = _interrupt(world, argv, PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert "of 6 account(s) finished" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr


class TestInterruptedDemo:
    def test_between_acts(self, tmp_path: Path):
        """`cmk demo` interrupted once act 2 has begun: the acts so far are on stdout, one
        line on stderr says it stopped and how to run it again; exit 130, no traceback."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMK_", "AZURE_"))}
        env.pop("AzureWebJobsStorage", None)
        process = subprocess.Popen(
            [*CTRL_C_DEFAULT, str(CMK), "demo"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        seen = []
        try:
            for line in process.stdout:  # bounded by the demo itself
                seen.append(line)
                if line.startswith("Act 2"):
                    process.send_signal(signal.SIGINT)
                    break
            rest, err = process.communicate(timeout=CEILING_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, err
        assert "Traceback" not in err
        assert "cmk demo: interrupted" in err and "run `cmk demo` again" in err
        assert any(line.startswith("Act 1") for line in seen)
        assert "demo finished" not in rest
