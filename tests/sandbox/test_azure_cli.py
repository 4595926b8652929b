"""The unmodified ``az`` CLI against ``cmk sandbox up``: a client nobody here wrote.

``make az-cli-check`` installs the latest ``azure-cli`` from PyPI into ``.venv-azcli`` and
runs this module with ``CMK_AZ_CLI`` naming its ``az``; without that variable every test
is skipped (installing the CLI takes minutes, so ``make test`` does not). The CLI sees
only the variables of the env file ``cmk sandbox up --env-file`` writes (plus a private
``AZURE_CONFIG_DIR``), exactly as a user who sourced it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

AZ = os.environ.get("CMK_AZ_CLI", "")
pytestmark = pytest.mark.skipif(
    not AZ or not Path(AZ).exists(), reason="set CMK_AZ_CLI to an az binary (make az-cli-check)"
)

START_CEILING_SECONDS = 60.0  # only bounds a hang; readiness is the env file appearing
AZ_CEILING_SECONDS = 180.0
VAULT, KEY = "kv-cmk-weu", "ai-cmk"
GROUP, ACCOUNT = "rg-ai-weu", "ai-prod-weu-01"
GRAPH = "https://management.azure.com/providers/Microsoft.ResourceGraph/resources"


def _read_env_file(path: Path) -> dict[str, str]:
    """``export NAME=value`` lines (values shell-quoted by ``shlex.quote``)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@dataclass
class Cli:
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AZ, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=AZ_CEILING_SECONDS,
            check=False,
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--output", "json")
        assert result.returncode == 0, f"az {' '.join(args)}\n{result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture(scope="module")
def az(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """``cmk sandbox up`` in a subprocess, and ``az`` logged in with its managed identity."""
    root = tmp_path_factory.mktemp("azcli")
    env_file = root / "sandbox.env"
    command = [sys.executable, "-m", "cmk.cli", "sandbox", "up", "--no-azurite"]
    command += ["--env-file", str(env_file), "--state-dir", str(root / "state")]
    log = (root / "up.log").open("w")
    up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_CEILING_SECONDS
        while not env_file.exists():
            assert up.poll() is None, (root / "up.log").read_text()
            assert time.monotonic() < deadline, "cmk sandbox up did not write its env file"
            time.sleep(0.1)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(root),
            "AZURE_CONFIG_DIR": str(root / "azure"),
            "AZURE_CORE_COLLECT_TELEMETRY": "no",
            **_read_env_file(env_file),
        }
        cli = Cli(env)
        login = cli.run("login", "--identity", "--output", "json")
        assert login.returncode == 0, login.stderr
        yield cli
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=30)
        log.close()


class TestAccount:
    def test_login_lists_the_subscriptions_the_identity_can_see(self, az: Cli):
        """az account list: the example world's three subscriptions, one tenant."""
        accounts = az.json("account", "list")
        assert sorted(a["name"] for a in accounts) == ["ai-dev", "ai-prod", "platform"]
        assert len({a["tenantId"] for a in accounts}) == 1
        assert {a["user"]["type"] for a in accounts} == {"servicePrincipal"}

    def test_access_token_is_a_jwt_for_arm(self, az: Cli):
        """az account get-access-token hands out the sandbox's RS256 JWT."""
        token = az.json("account", "get-access-token")
        assert token["accessToken"].count(".") == 2
        assert token["tenant"] == az.json("account", "show")["tenantId"]


class TestKeyVault:
    def test_list_versions_show_and_rotate(self, az: Cli):
        """key list-versions / show / rotate: rotate adds the version show then returns."""
        before = az.json("keyvault", "key", "list-versions", "--vault-name", VAULT, "-n", KEY)
        rotated = az.json("keyvault", "key", "rotate", "--vault-name", VAULT, "-n", KEY)
        current = az.json("keyvault", "key", "show", "--vault-name", VAULT, "-n", KEY)
        after = az.json("keyvault", "key", "list-versions", "--vault-name", VAULT, "-n", KEY)
        assert current["key"]["kid"] == rotated["key"]["kid"]
        assert len(after) == len(before) + 1
        assert rotated["key"]["kid"] in {v["kid"] for v in after}


class TestCognitiveServices:
    def test_list_show_and_update_encryption(self, az: Cli):
        """account list/show, then update --encryption to the newest version, seen by show."""
        az.json("account", "set", "--subscription", "ai-prod")
        names = {a["name"] for a in az.json("cognitiveservices", "account", "list")}
        assert ACCOUNT in names
        shown = az.json("cognitiveservices", "account", "show", "-g", GROUP, "-n", ACCOUNT)
        binding = shown["properties"]["encryption"]["keyVaultProperties"]
        newest = az.json("keyvault", "key", "show", "--vault-name", VAULT, "-n", KEY)
        version = newest["key"]["kid"].rsplit("/", 1)[1]
        encryption = {
            "keySource": "Microsoft.KeyVault",
            "keyVaultProperties": {**binding, "keyVersion": version},
        }
        updated = az.json(
            "cognitiveservices", "account", "update", "-g", GROUP, "-n", ACCOUNT,
            "--encryption", json.dumps(encryption),
        )  # fmt: skip
        assert updated["properties"]["provisioningState"] == "Succeeded"
        again = az.json("cognitiveservices", "account", "show", "-g", GROUP, "-n", ACCOUNT)
        assert again["properties"]["encryption"]["keyVaultProperties"]["keyVersion"] == version


class TestResourceGraph:
    def test_az_rest_summarize(self, az: Cli):
        """az rest to Resource Graph with summarize count() by a binding's key name."""
        query = (
            "Resources | where type =~ 'microsoft.cognitiveservices/accounts' "
            "| summarize accounts = count() by keyName = "
            "tostring(properties.encryption.keyVaultProperties.keyName) | order by keyName asc"
        )
        body = az.json(
            "rest", "--method", "post", "--url", f"{GRAPH}?api-version=2021-03-01",
            "--body", json.dumps({"query": query}),
        )  # fmt: skip
        rows = {row["keyName"]: row["accounts"] for row in body["data"]}
        assert set(rows) - {""} == {"ai-cmk", "ai-cmk-dev", "ai-cmk-hsm"}
        assert sum(rows.values()) == 60
        assert list(rows) == sorted(rows)
