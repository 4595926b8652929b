"""`cmk smoke` in a shell whose env file names a sandbox that has stopped: it says the
sandbox is gone, as every other command does (:mod:`cmk.commands.unreachable`), instead of
a failed `identity` row telling the operator to sign in with `az login`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmk.commands.output import EXIT_USAGE

CMK = Path(sys.executable).parent / "cmk"
#: Only bounds a hang.
CEILING_SECONDS = 60

_REFUSING: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _release_ports() -> Iterator[None]:
    yield
    while _REFUSING:
        _REFUSING.pop().close()


def _closed_port() -> int:
    """A port that refuses connections — bound, not listening, and held until the test
    ends, so no other process can start listening on it."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    _REFUSING.append(held)
    return int(held.getsockname()[1])


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
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy}",
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{_closed_port()}/msi/token",
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
