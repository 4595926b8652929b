"""`cmk sandbox up` as a subprocess, and the `cmk` command line."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from cmk.cli import main
from cmk.sandbox.command.env import live_owner, write_env_file
from cmk.sandbox.command.up import AZ_LOGIN_FILES

ROOT = Path(__file__).resolve().parents[2]
#: Bounds a hang of the start-up (Azurite included); a loaded machine is slow, not wrong.
HANG_SECONDS = 120
UP = [sys.executable, "-m", "cmk.cli", "sandbox", "up"]
#: What a user's shell may already export (azure-identity's EnvironmentCredential and
#: WorkloadIdentityCredential read them before managed identity).
USER_CREDENTIALS = {
    "AZURE_CLIENT_ID": "0a9c3b1e-5f7d-4e2a-8b6c-1d2e3f4a5b6c",
    "AZURE_CLIENT_SECRET": "not-a-secret",
    "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
    "AZURE_CLIENT_CERTIFICATE_PATH": "/home/user/sp.pem",
    "AZURE_USERNAME": "user@contoso.com",
    "AZURE_PASSWORD": "not-a-password",
}


def _env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith(("#", "unset ")):  # the header; what the shell drops
            continue
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
                timeout=HANG_SECONDS,
            ).json()["access_token"]
            vault = values["CMK_VAULT_ALLOWLIST"].split(",")[-1]
            response = requests.get(
                f"{vault}/keys/ai-cmk/?api-version=7.5",
                headers={"Authorization": f"Bearer {token}"},
                proxies={"https": values["HTTPS_PROXY"]},
                verify=values["REQUESTS_CA_BUNDLE"],
                timeout=HANG_SECONDS,
            )
            assert response.status_code == 200, response.text
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=HANG_SECONDS)
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


def _start_up(
    env_file: Path | None, tmp_path: Path, environ: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`cmk sandbox up --no-azurite` (with ``--env-file`` if given, in ``environ`` if given),
    stdout to up.log."""
    command = [*UP, "--no-azurite", "--state-dir", str(tmp_path / "state")]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    with (tmp_path / "up.log").open("w") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**(environ or os.environ), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.PIPE,
            text=True,
        )


def _read_until(process: subprocess.Popen[str], log: Path, marker: str) -> str:
    """What ``process`` wrote to ``log`` once it holds ``marker`` (the ceiling bounds a
    hang)."""
    deadline = time.monotonic() + HANG_SECONDS
    while marker not in (shown := log.read_text()):
        assert process.poll() is None, f"`up` ended early: {shown}"
        assert time.monotonic() < deadline, f"no {marker!r} within {HANG_SECONDS} s: {shown}"
        time.sleep(0.05)
    return shown


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGINT, then its stderr."""
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=HANG_SECONDS)[1]


class TestEnvFileHygiene:
    def test_without_env_file_up_prints_the_export_lines(self, tmp_path):
        """Without --env-file, `up` prints `export` lines a shell can run as they are."""
        process = _start_up(None, tmp_path)
        try:
            shown = _read_until(process, tmp_path / "up.log", "stop with Ctrl-C")
        finally:
            err = _stop(process)
        assert process.returncode == 0, err
        exports = [line for line in shown.splitlines() if line.startswith("export ")]
        names = {line.removeprefix("export ").partition("=")[0] for line in exports}
        assert {"HTTPS_PROXY", "REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT"} <= names
        assert "pass --env-file FILE" in shown
        [unset] = [line for line in shown.splitlines() if line.startswith("unset ")]
        assert shown.index(unset) < shown.index(exports[0])
        assert set(USER_CREDENTIALS) <= set(unset.split()[1:])

    def test_a_shell_with_credentials_of_its_own_reaches_the_sandbox(self, tmp_path):
        """A shell that already exports a service principal, a user, a workload identity
        and a certificate sources the env file: they are gone, `cmk versions` reads the
        key through ARM and Key Vault without a credential error, and az's config
        directory is the sandbox's, not ~/.azure."""
        env_file = tmp_path / "sandbox.env"
        process = _start_up(env_file, tmp_path)
        try:
            _read_until(process, tmp_path / "up.log", "stop with Ctrl-C")
            exports = " ".join(f"{n}={shlex.quote(v)}" for n, v in USER_CREDENTIALS.items())
            script = (
                f"export {exports}\n"
                f". {shlex.quote(str(env_file))}\n"
                'env | grep "^AZURE_" | sort >&2\n'
                "exec cmk versions https://kv-cmk-weu.vault.azure.net/keys/ai-cmk -o json\n"
            )
            shell = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                     "HOME": str(tmp_path)},
                capture_output=True,
                text=True,
                timeout=HANG_SECONDS,
                check=False,
            )  # fmt: skip
        finally:
            err = _stop(process)
        assert process.returncode == 0, err
        assert shell.returncode == 0, shell.stderr
        assert "DefaultAzureCredential" not in shell.stderr
        key = json.loads(shell.stdout)["key"]
        assert key["key_id"] == "https://kv-cmk-weu.vault.azure.net/keys/ai-cmk"
        assert key["in_scope"] is True
        left = dict(line.partition("=")[::2] for line in shell.stderr.split("\n") if line)
        assert left.pop("AZURE_EXTENSION_DIR")  # where the user's az extensions are
        assert left == {"AZURE_CONFIG_DIR": str(tmp_path / "state" / "azure")}

    def test_refuses_the_env_file_of_a_running_sandbox(self, tmp_path):
        """A second `up` with the env file of one still running exits 2, naming its pid,
        and leaves the file as it was."""
        env_file = tmp_path / "sandbox.env"
        first = _start_up(env_file, tmp_path)
        try:
            _read_until(first, tmp_path / "up.log", "stop with Ctrl-C")
            before = env_file.read_text()
            second = subprocess.run(
                [*UP, "--no-azurite", "--env-file", str(env_file)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=HANG_SECONDS,
                check=False,
            )
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid}" in second.stderr and "still running" in second.stderr
            assert env_file.read_text() == before
        finally:
            err = _stop(first)
        assert first.returncode == 0, err
        assert not env_file.exists()


class TestStateDir:
    def test_refuses_the_state_dir_of_a_running_sandbox(self, tmp_path):
        """A second `up` with the --state-dir of one still running (another env file) exits
        2 naming its pid and how to stop it; the CA bundle the first one's clients trust is
        unchanged, and they still reach it."""
        env_file = tmp_path / "sandbox.env"
        first = _start_up(env_file, tmp_path)
        try:
            _read_until(first, tmp_path / "up.log", "stop with Ctrl-C")
            ca = (tmp_path / "state" / "ca.pem").read_bytes()
            second = subprocess.run(
                [*UP, "--no-azurite", "--env-file", str(tmp_path / "second.env"),
                 "--state-dir", str(tmp_path / "state")],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=HANG_SECONDS,
                check=False,
            )  # fmt: skip
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid}" in second.stderr and "--state-dir" in second.stderr
            assert f"kill {first.pid}" in second.stderr
            assert not (tmp_path / "second.env").exists()
            assert (tmp_path / "state" / "ca.pem").read_bytes() == ca
            env = _env_file_values(env_file)
            answer = requests.get(
                "https://kv-cmk-weu.vault.azure.net/keys?api-version=7.5",
                proxies={"https": env["HTTPS_PROXY"]},
                verify=env["REQUESTS_CA_BUNDLE"],
                timeout=30,
            )
            assert answer.status_code == 401  # Key Vault's challenge, over verified TLS
        finally:
            err = _stop(first)
        assert first.returncode == 0, err

    def test_a_former_sandboxs_az_login_is_cleared(self, tmp_path):
        """`up` on a state dir a stopped sandbox used starts az logged out (the former
        profile named another tenant and its subscriptions) and keeps az's own settings;
        AZURE_EXTENSION_DIR names the extensions of the user's az."""
        config = tmp_path / "state" / "azure"
        config.mkdir(parents=True)
        for name in AZ_LOGIN_FILES:
            (config / name).write_text("left by a former sandbox")
        (config / "config").write_text("[core]\noutput = table\n")
        env_file = tmp_path / "sandbox.env"
        extensions = tmp_path / "user-azure" / "cliextensions"
        environ = {**os.environ, "AZURE_EXTENSION_DIR": str(extensions)}
        process = _start_up(env_file, tmp_path, environ)
        try:
            _read_until(process, tmp_path / "up.log", "stop with Ctrl-C")
            env = _env_file_values(env_file)
        finally:
            err = _stop(process)
        assert process.returncode == 0, err
        assert env["AZURE_CONFIG_DIR"] == str(config)
        assert env["AZURE_EXTENSION_DIR"] == str(extensions)
        assert sorted(p.name for p in config.iterdir()) == ["config"]


class TestEnvFileOwner:
    def test_a_live_process_with_an_answering_proxy_owns_the_file(self, tmp_path):
        """The header's pid alive and its proxy accepting connections: the file is in use."""
        path = tmp_path / "env"
        with socket.create_server(("127.0.0.1", 0)) as proxy:
            url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
            write_env_file(path, {"HTTPS_PROXY": url}, pid=os.getppid(), proxy_url=url)
            owner = live_owner(path)
        assert owner is not None and owner.pid == os.getppid()

    def test_a_dead_process_owns_nothing(self, tmp_path):
        """The header names a process that has ended: the file may be overwritten."""
        path = tmp_path / "env"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with socket.create_server(("127.0.0.1", 0)) as proxy:
            url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
            write_env_file(path, {"HTTPS_PROXY": url}, pid=dead.pid, proxy_url=url)
            assert live_owner(path) is None

    def test_a_proxy_that_refuses_owns_nothing(self, tmp_path):
        """The process lives but nothing listens at the proxy: the sandbox is gone."""
        path = tmp_path / "env"
        # Bound but not listening: connections are refused, and while the test holds the
        # port no other process (another test worker) can start listening on it.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refusing:
            refusing.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{refusing.getsockname()[1]}"
            write_env_file(path, {"HTTPS_PROXY": url}, pid=os.getppid(), proxy_url=url)
            assert live_owner(path) is None

    def test_a_file_without_header_is_judged_by_its_proxy(self, tmp_path):
        """An env file of an older `up` (no header) is in use while its proxy answers."""
        path = tmp_path / "env"
        with socket.create_server(("127.0.0.1", 0)) as proxy:
            url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
            path.write_text(f"export HTTPS_PROXY={url}\nexport NO_PROXY=127.0.0.1\n")
            assert live_owner(path) is not None
        assert live_owner(tmp_path / "missing") is None


class TestCli:
    def test_sandbox_subcommand_is_registered(self, capsys):
        """`cmk sandbox up --help` is served by the sandbox command module."""
        assert main(["sandbox", "up", "--help"]) == 0
        assert "--scenario" in capsys.readouterr().out

    def test_unknown_subcommand_is_a_usage_error(self, capsys):
        """An unknown subcommand exits 2 with argparse's usage message."""
        assert main(["nope"]) == 2
        assert "invalid choice" in capsys.readouterr().err
