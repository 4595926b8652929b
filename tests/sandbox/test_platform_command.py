"""`cmk sandbox up` as a subprocess, and the `cmk` command line."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from cmk.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: Bounds a hang of the start-up (Azurite included); a loaded machine is slow, not wrong.
HANG_SECONDS = 120


def _env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = shlex.split(value)[0] if value else ""
    return values


class TestSandboxUp:
    def test_up_writes_env_serves_and_stops_on_sigterm(self, tmp_path):
        """`cmk sandbox up` gets ready, its env works, SIGTERM stops it cleanly (how fast
        it gets ready is a benchmark: bench/sandbox_startup.py)."""
        env_file = tmp_path / "sandbox.env"
        environ = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "cmk.cli", "sandbox", "up", "--env-file", str(env_file)],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while not env_file.exists():
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() - started < HANG_SECONDS, "never ready"
                time.sleep(0.05)
            values = _env_file_values(env_file)
            for name in (
                "HTTPS_PROXY",
                "NO_PROXY",
                "REQUESTS_CA_BUNDLE",
                "SSL_CERT_FILE",
                "IDENTITY_ENDPOINT",
                "IDENTITY_HEADER",
                "AzureWebJobsStorage",
                "CMK_VAULT_ALLOWLIST",
                "CMK_SUBSCRIPTIONS",
            ):
                assert values[name], name
            token = requests.get(
                values["IDENTITY_ENDPOINT"],
                params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
                headers={"X-IDENTITY-HEADER": values["IDENTITY_HEADER"]},
                timeout=5,
            ).json()["access_token"]
            vault = values["CMK_VAULT_ALLOWLIST"].split(",")[-1]
            response = requests.get(
                f"{vault}/keys/ai-cmk/?api-version=7.5",
                headers={"Authorization": f"Bearer {token}"},
                proxies={"https": values["HTTPS_PROXY"]},
                verify=values["REQUESTS_CA_BUNDLE"],
                timeout=5,
            )
            assert response.status_code == 200, response.text
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
        assert "ready in" in out and "stopped" in out
        assert not env_file.exists()

    def test_bad_scenario_exits_1_with_the_path(self, tmp_path):
        """A bad scenario file makes `up` exit 1 and name the JSON path."""
        bad = tmp_path / "bad.json"
        bad.write_text('{"subscriptions": [{"name": 5}]}')
        result = subprocess.run(
            [sys.executable, "-m", "cmk.cli", "sandbox", "up", "--no-azurite", "--scenario", bad],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert "$.subscriptions[0].name" in result.stderr


class TestCli:
    def test_sandbox_subcommand_is_registered(self, capsys):
        """`cmk sandbox up --help` is served by the sandbox command module."""
        assert main(["sandbox", "up", "--help"]) == 0
        assert "--scenario" in capsys.readouterr().out

    def test_unknown_subcommand_is_a_usage_error(self, capsys):
        """An unknown subcommand exits 2 with argparse's usage message."""
        assert main(["nope"]) == 2
        assert "invalid choice" in capsys.readouterr().err
