"""A shell whose env file names a sandbox that has stopped: the CLI says the sandbox is
gone instead of relaying a connection error (:mod:`cmk.commands.unreachable`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cmk.commands.output import EXIT_USAGE
from cmk.commands.unreachable import sandbox_gone
from cmk.errors import ConfigurationError, ServiceUnavailable

GONE = ServiceUnavailable("Cannot connect to host management.azure.com:443")
CMK = Path(sys.executable).parent / "cmk"
#: Only bounds a hang.
CEILING_SECONDS = 60


@contextmanager
def _listening() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield int(server.getsockname()[1])


_REFUSING: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _release_ports() -> Iterator[None]:
    yield
    while _REFUSING:
        _REFUSING.pop().close()


def _closed_port() -> int:
    """A port that refuses connections — bound, not listening, and held until the test
    ends, so no other process (another test worker) can start listening on it."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    _REFUSING.append(held)
    return int(held.getsockname()[1])


def _sandbox_env(proxy_port: int, identity_port: int) -> dict[str, str]:
    return {
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "IDENTITY_ENDPOINT": f"http://127.0.0.1:{identity_port}/msi/token",
    }


class TestSandboxGone:
    def test_nothing_answering_is_reported_as_the_sandbox_gone(self) -> None:
        """Proxy and identity endpoint refuse: exit 2, naming the address and `up`."""
        proxy = _closed_port()
        failure = sandbox_gone(GONE, _sandbox_env(proxy, _closed_port()))
        assert failure is not None
        assert failure.code == EXIT_USAGE
        assert failure.message == (
            f"no sandbox answers at 127.0.0.1:{proxy} — is `cmk sandbox up` still running?"
        )
        assert "cmk sandbox up --env-file" in failure.fix

    def test_a_sandbox_that_answers_keeps_the_original_error(self) -> None:
        """The proxy accepts connections: the error is something else, left to explain()."""
        with _listening() as proxy:
            assert sandbox_gone(GONE, _sandbox_env(proxy, _closed_port())) is None

    def test_a_proxy_that_is_not_on_loopback_is_not_a_sandbox(self) -> None:
        """A corporate proxy (not loopback) is never taken for a sandbox."""
        env = {**_sandbox_env(_closed_port(), _closed_port()), "HTTPS_PROXY": "http://10.0.0.1:1"}
        assert sandbox_gone(GONE, env) is None

    def test_no_identity_endpoint_is_not_a_sandbox(self) -> None:
        """A loopback proxy alone (cntlm, a debugging proxy) does not make a sandbox."""
        assert sandbox_gone(GONE, {"HTTPS_PROXY": f"http://127.0.0.1:{_closed_port()}"}) is None

    def test_configuration_errors_say_what_to_fix_themselves(self) -> None:
        """A missing setting is reported as such even when the sandbox is gone."""
        env = _sandbox_env(_closed_port(), _closed_port())
        assert sandbox_gone(ConfigurationError("CMK_SUBSCRIPTIONS is empty"), env) is None


class TestCheckedBeforeAnything:
    def test_a_command_says_so_before_reading_its_settings(self) -> None:
        """`cmk status --json` in a shell whose sandbox is gone: the sandbox is reported
        gone (exit 2, the error document) before anything else is tried — even a missing
        AzureWebJobsStorage is not reached, let alone a request retried by the SDK."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CMK_", "AZURE_", "IDENTITY_", "HTTPS_PROXY", "https_proxy"))
        }
        env.pop("AzureWebJobsStorage", None)
        proxy = _closed_port()
        env.update(_sandbox_env(proxy, _closed_port()))
        ended = subprocess.run(
            [str(CMK), "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=CEILING_SECONDS,
            check=False,
        )
        assert ended.returncode == EXIT_USAGE, ended.stderr
        error = json.loads(ended.stdout)["error"]
        assert error["kind"] == "configuration"
        assert error["message"].startswith(f"no sandbox answers at 127.0.0.1:{proxy}")
        assert "AzureWebJobsStorage" not in ended.stderr


def _gone_env(proxy: int) -> dict[str, str]:
    """An environment as a sourced env file leaves it once its sandbox has stopped: valid
    settings, a loopback proxy and identity endpoint that refuse connections."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CMK_", "AZURE_", "IDENTITY_", "HTTPS_PROXY", "https_proxy"))
    }
    env.update(
        {
            **_sandbox_env(proxy, _closed_port()),
            "IDENTITY_HEADER": "gone",
            "CMK_VAULT_ALLOWLIST": "https://kv-cmk-weu.vault.azure.net",
            "CMK_SUBSCRIPTIONS": "11111111-1111-4111-8111-111111111111",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    return env


def _smoke(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CMK), "smoke", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=CEILING_SECONDS,
        check=False,
    )


class TestSmokeSandboxGone:
    """`cmk smoke` says the sandbox is gone, as every other command does, instead of a
    failed `identity` row telling the operator to sign in with `az login`."""

    def test_json_names_the_sandbox_not_a_sign_in(self) -> None:
        """`cmk smoke --json`: exit 2, the configuration error document that names the
        address the sandbox answered at and `cmk sandbox up`; no "az login"."""
        proxy = _closed_port()
        ended = _smoke(_gone_env(proxy), "--json")
        assert ended.returncode == EXIT_USAGE, ended.stderr
        error = json.loads(ended.stdout)["error"]
        assert error["kind"] == "configuration"
        assert error["message"] == (
            f"no sandbox answers at 127.0.0.1:{proxy} — is `cmk sandbox up` still running?"
        )
        assert "cmk sandbox up --env-file" in error["fix"]
        assert "az login" not in ended.stdout + ended.stderr

    def test_the_table_is_not_printed(self) -> None:
        """Without --json: the one error on stderr, no table of checks on stdout."""
        proxy = _closed_port()
        ended = _smoke(_gone_env(proxy))
        assert ended.returncode == EXIT_USAGE, ended.stderr
        assert f"no sandbox answers at 127.0.0.1:{proxy}" in ended.stderr
        assert "no token" not in ended.stdout + ended.stderr
        assert "cmk smoke" not in ended.stdout
