"""The installed ``cmk`` console script, run as a subprocess: a command and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
from cli_rig import SCHEMAS, World

CMK = Path(sys.executable).parent / "cmk"


class TestConsoleScript:
    def test_status_json_in_a_subprocess(self, world: World):
        """`cmk status --json` as a process: exit 0 and one schema-valid document."""
        result = subprocess.run(
            [str(CMK), "status", "--json"],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        jsonschema.validate(json.loads(result.stdout), SCHEMAS["status"])

    def test_help_lists_every_command(self):
        """`cmk --help` lists the operator commands and the demo."""
        result = subprocess.run(
            [str(CMK), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0
        for command in ("status", "plan", "sweep", "rotate", "versions", "replay", "history"):
            assert command in result.stdout
        assert "demo" in result.stdout


class TestDemo:
    def test_demo_json_exits_0_with_every_act_ok(self, tmp_path: Path):
        """`cmk demo --json` plays all four acts as expected and exits 0; stdout is the one
        document, stderr says which act is playing."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMK_", "AZURE_"))}
        env.pop("AzureWebJobsStorage", None)
        result = subprocess.run(
            [str(CMK), "demo", "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,  # bounds a hang only
            check=False,
        )
        assert result.returncode == 0, result.stderr + result.stdout
        acts = [line for line in result.stderr.splitlines() if line.startswith("cmk demo: Act ")]
        assert [line.split(":")[1] for line in acts] == [" Act 1", " Act 2", " Act 3", " Act 4"]
        document = json.loads(result.stdout)
        jsonschema.validate(document, SCHEMAS["demo"])
        assert document["ok"] is True and [a["ok"] for a in document["acts"]] == [True] * 4
