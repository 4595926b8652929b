"""``cmk sandbox up --app``: the Functions app rehearsed locally with one command. The user
rotates a key from another shell (the env file sourced, the Python SDKs, nothing of ours)
and every bound account moves; Ctrl-C stops the host, the sandbox and Azurite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cli_sandbox import read_env_file

ROOT = Path(__file__).resolve().parents[2]
CMK = Path(sys.executable).parent / "cmk"
SDK_SHELL = Path(__file__).with_name("sdk_shell.py")
AZ = os.environ.get("CMK_AZ_CLI")  # `make az-cli-check` names the az it installed
needs_az = pytest.mark.skipif(
    not AZ or not Path(AZ).exists(), reason="set CMK_AZ_CLI to an az binary (make az-cli-check)"
)
#: Bound hangs only (start-up of the sandbox, Azurite and the host; convergence; stop) on a
#: loaded machine: slow is not wrong.
HANG_SECONDS = 180
BOUND_ACCOUNTS = 3
SCENARIO = {
    "tenants": [{"name": "contoso"}],
    "subscriptions": [
        {"name": "platform", "id": "8c3e6d79-2d90-4f80-9c63-3b2e4c5d6e01"},
        {"name": "ai", "id": "8c3e6d79-2d90-4f80-9c63-3b2e4c5d6e02"},
    ],
    "regions": ["westeurope"],
    "vaults": [
        {
            "name": "kv-rehearse",
            "subscription": "platform",
            "resourceGroup": "rg-keys",
            "location": "westeurope",
            "keys": [
                {
                    "name": "ai-cmk",
                    "kty": "RSA",
                    "size": 2048,
                    "versions": [{"created": "-30d", "exp": "+335d"}],
                }
            ],
        }
    ],
    "accounts": [
        {
            "name": "ai-{i:02d}",
            "count": BOUND_ACCOUNTS,
            "subscription": "ai",
            "resourceGroup": "rg-ai",
            "location": "westeurope",
            "lroSeconds": 0.2,
            "identity": {"system": True},
            "encryption": {"vault": "kv-rehearse", "key": "ai-cmk", "identity": "system"},
        },
        {
            "name": "ai-mmk",
            "subscription": "ai",
            "resourceGroup": "rg-ai",
            "location": "westeurope",
        },
    ],
    "topics": [
        {
            "name": "cmk-alerts",
            "subscription": "platform",
            "resourceGroup": "rg-cmk",
            "location": "westeurope",
            "inputSchema": "CloudEventSchemaV1_0",
        }
    ],
    "roleAssignments": [
        {"principal": "app", "role": "Key Vault Crypto Officer", "scope": "vault:kv-rehearse"},
        {"principal": "app", "role": "Reader", "scope": "subscription:platform"},
        {"principal": "app", "role": "Reader", "scope": "subscription:ai"},
        {"principal": "app", "role": "Cognitive Services Contributor", "scope": "subscription:ai"},
        {"principal": "app", "role": "EventGrid Data Sender", "scope": "topic:cmk-alerts"},
    ],
}


def _processes_in(directory: Path) -> list[str]:
    """Command lines of the processes whose working directory is under ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = (proc / "cwd").resolve()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.is_relative_to(directory):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without settings or credentials that would steer ``up``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMK_", "AZURE_"))}
    env.pop("AzureWebJobsStorage", None)
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _shell(env: dict[str, str], *argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command as in a shell that sourced the env file (ceiling: a hang)."""
    return subprocess.run(
        [str(a) for a in argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS + 60,
        check=False,
    )


@dataclass
class AppUp:
    """A running `cmk sandbox up --app` and a shell that sourced its env file."""

    process: subprocess.Popen[bytes]
    shell: dict[str, str]
    values: dict[str, str]
    log: Path

    def wait_bound(self, version: str) -> dict[str, str]:
        """Wait (through ARM) until every account bound to ai-cmk is on ``version``."""
        vault = self.values["CMK_VAULT_ALLOWLIST"]
        moved = _shell(
            self.shell, sys.executable, SDK_SHELL, "wait-bound", vault, "ai-cmk", version,
            str(HANG_SECONDS),
        )  # fmt: skip
        assert moved.returncode == 0, f"{moved.stderr}\n{self.log.read_text()}"
        bound: dict[str, str] = json.loads(moved.stdout)
        return bound


@contextmanager
def _app_up(tmp_path: Path, *options: str) -> Iterator[AppUp]:
    """Start `cmk sandbox up --app` on SCENARIO; on exit SIGINT it and check it stopped
    cleanly: exit 0, env file removed, no process (Azurite) left in its state directory."""
    scenario, env_file, state = tmp_path / "world.json", tmp_path / "up.env", tmp_path / "s"
    scenario.write_text(json.dumps(SCENARIO))
    log = tmp_path / "up.log"
    command = [str(CMK), "sandbox", "up", "--app", *options, "--scenario", str(scenario)]
    command += ["--env-file", str(env_file), "--state-dir", str(state)]
    with log.open("w") as output:
        up = subprocess.Popen(
            command, cwd=ROOT, env=_clean_environ(), stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + HANG_SECONDS
        while not env_file.exists():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"never ready: {log.read_text()}"
            time.sleep(0.1)
        values = read_env_file(env_file)
        shell = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **values}
        assert _processes_in(state), "Azurite should run in the state directory"
        yield AppUp(up, shell, values, log)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=HANG_SECONDS)
    assert up.returncode == 0, log.read_text()
    assert "stopped" in log.read_text()
    assert not env_file.exists()
    assert _processes_in(state) == []


def _up_refused(*args: str) -> subprocess.CompletedProcess[str]:
    """`cmk sandbox up ARGS` in a clean environment, expected to stop at its arguments."""
    return subprocess.run(
        [str(CMK), "sandbox", "up", *args],
        cwd=ROOT,
        env=_clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestSandboxUpApp:
    def test_a_key_rotated_in_another_shell_moves_every_bound_account(self, tmp_path: Path) -> None:
        """`up --app --instances 2`: a key rotated with the Key Vault SDK from a shell that
        sourced the env file moves every bound account (read through ARM), `cmk status`
        shows each on the new version, SIGINT stops everything with no Azurite left, and
        the CLI then says the sandbox is gone."""
        with _app_up(tmp_path, "--instances", "2") as app:
            vault = app.values["CMK_VAULT_ALLOWLIST"]
            rotated = _shell(app.shell, sys.executable, SDK_SHELL, "rotate", vault, "ai-cmk")
            assert rotated.returncode == 0, rotated.stderr
            version = rotated.stdout.strip()
            bound = app.wait_bound(version)
            assert list(bound.values()) == [version] * BOUND_ACCOUNTS

            status = _shell(app.shell, CMK, "status", "-o", "json")
            assert status.returncode == 0, status.stderr
            rows = json.loads(status.stdout)["accounts"]
            on_key = [r for r in rows if r["key_id"] and r["key_id"].endswith("/keys/ai-cmk")]
            assert [r["bound_version"] for r in on_key] == [version] * BOUND_ACCOUNTS
            assert {r["state"] for r in on_key} == {"current"}

        gone = _shell(app.shell, CMK, "status")
        assert gone.returncode == 2, gone.stderr
        proxy = app.values["HTTPS_PROXY"].removeprefix("http://")
        assert f"no sandbox answers at {proxy} — is `cmk sandbox up` still running?" in gone.stderr

    def test_the_http_endpoints_answer_with_the_function_key(self, tmp_path: Path) -> None:
        """The env file names the app's URL and function key: /api/status answers 200 with
        them and 401 without."""
        with _app_up(tmp_path) as app:
            url = f"{app.values['CMK_SANDBOX_APP_URL']}/status"
            key = app.values["CMK_SANDBOX_APP_KEY"]
            with requests.Session() as session:
                session.trust_env = False
                assert session.get(url, timeout=HANG_SECONDS).status_code == 401
                answer = session.get(url, headers={"x-functions-key": key}, timeout=HANG_SECONDS)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["accounts"]) >= BOUND_ACCOUNTS

    def test_every_queue_and_the_ledger_table_exist_before_any_job(self, tmp_path: Path) -> None:
        """Right after `up --app` (no sweep, no job yet) the job queue, its poison queue, the
        operations queue and its poison queue and the ledger table exist on its Azurite, as
        infra/app/storage.bicep makes them: `cmk smoke` from the sourced shell finds its
        storage row ok."""
        with _app_up(tmp_path) as app:
            job = app.values["CMK_JOB_QUEUE"]
            storage = _shell(
                app.shell, sys.executable, "-c",
                "import os; from azure.storage.queue import QueueServiceClient as Q;"
                "c = Q.from_connection_string(os.environ['AzureWebJobsStorage']);"
                "print(' '.join(sorted(q.name for q in c.list_queues())))",
            )  # fmt: skip
            assert storage.returncode == 0, storage.stderr
            expected = [job, f"{job}-ops", f"{job}-ops-poison", f"{job}-poison"]
            assert storage.stdout.split() == expected
            smoke = _shell(app.shell, CMK, "smoke", "-o", "json")
            rows = {row["check"]: row for row in json.loads(smoke.stdout)["checks"]}
            assert rows["storage"]["result"] == "ok", rows["storage"]
            assert app.values["CMK_LEDGER_TABLE"] in rows["storage"]["found"]

    @pytest.mark.skipif(
        not AZ or not Path(AZ).exists(), reason="set CMK_AZ_CLI (make az-cli-check)"
    )
    def test_az_keyvault_key_rotate_moves_every_bound_account(self, tmp_path: Path) -> None:
        """The unmodified az CLI, logged in with the sandbox's managed identity, rotates the
        key (`az keyvault key rotate`) and every bound account moves to the new version."""
        with _app_up(tmp_path) as app:
            az = app.shell  # the env file's AZURE_CONFIG_DIR keeps ~/.azure apart
            login = _shell(az, str(AZ), "login", "--identity", "-o", "none")
            assert login.returncode == 0, login.stderr
            rotated = _shell(
                az, str(AZ), "keyvault", "key", "rotate", "--vault-name", "kv-rehearse",
                "--name", "ai-cmk", "--query", "key.kid", "-o", "tsv",
            )  # fmt: skip
            assert rotated.returncode == 0, rotated.stderr
            version = rotated.stdout.strip().rsplit("/", 1)[-1]
            assert list(app.wait_bound(version).values()) == [version] * BOUND_ACCOUNTS

    def test_app_without_azurite_is_a_usage_error(self, tmp_path: Path) -> None:
        """`up --app --no-azurite` exits 2 before starting anything: the queues need it."""
        result = _up_refused("--app", "--no-azurite")
        assert result.returncode == 2
        assert "--app needs Azurite" in result.stderr

    @pytest.mark.parametrize("count", ["0", "65"])
    def test_instances_out_of_range_is_a_usage_error(self, count: str) -> None:
        """`up --app --instances 0` (or more than the bound) exits 2 naming the range."""
        result = _up_refused("--app", "--instances", count)
        assert result.returncode == 2
        assert "--instances must be from 1 to 64" in result.stderr

    def test_instances_without_app_is_a_usage_error(self) -> None:
        """`up --instances 2` without --app exits 2 naming the missing option."""
        result = _up_refused("--instances", "2")
        assert result.returncode == 2
        assert "--instances needs --app" in result.stderr
