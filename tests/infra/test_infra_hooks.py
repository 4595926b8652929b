"""The azd hooks under infra/hooks/, run for real by `sh` with an `az` that records its calls.

The Azure CLI cannot reach Azure here, so a small `az` script on PATH stands in for it: it
appends each call to a log and answers `functionapp function list` from a scripted sequence
(nothing listed for the first N calls, then the functions). The hooks themselves run
unmodified; the wait between polls is set to 0 s through the hooks' own setting.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "infra" / "hooks"
FUNCTIONS = ("on_key_new_version", "on_key_near_expiry", "on_key_expired")
APP = "func-cmk-abc"
APP_ID = f"/subscriptions/s/resourceGroups/rg-cmk/providers/Microsoft.Web/sites/{APP}"
VAULTS = [
    {
        "name": "kv1",
        "subscriptionId": "s",
        "resourceGroup": "rg-keys",
        "location": "westeurope",
        "systemTopicName": "egst-kv1",
    }
]

# Answers `functionapp function list` with nothing for the first $AZ_EMPTY_LISTS calls and
# with $AZ_LISTED after; copies each --parameters file next to the log.
FAKE_AZ = """#!/bin/sh
log="$AZ_LOG"
printf '%s\\n' "$*" >> "$log"
case "$*" in
  "functionapp function list"*)
    n=$(grep -c '^functionapp function list' "$log")
    if [ "$n" -gt "$AZ_EMPTY_LISTS" ]; then printf '%s\\n' $AZ_LISTED; fi
    ;;
  "eventgrid system-topic show"*)
    printf '%s\n' "$AZ_TOPIC_IDENTITY"
    ;;
  "deployment sub create"*)
    while [ $# -gt 0 ]; do
      if [ "$1" = "--parameters" ]; then cp "${2#@}" "$log.params.$(date +%s%N)"; fi
      shift
    done
    ;;
esac
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def run_hook(
    tmp_path: Path,
    hook: str,
    *,
    empty_lists: int = 0,
    attempts: int = 5,
    listed: str = "",
    vaults: list[dict[str, Any]] | None = None,
    topic_identity: str = "SystemAssigned",
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str], list[dict[str, Any]]]:
    """Run infra/hooks/<hook> with the recording az; (result, az calls, parameter files)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(FAKE_AZ, encoding="utf-8")
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "az.log"
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "AZ_LOG": str(log),
        "AZ_EMPTY_LISTS": str(empty_lists),
        "AZ_LISTED": listed or " ".join(f"{APP}/{name}" for name in FUNCTIONS),
        "AZURE_ENV_NAME": "cmk-test",
        "AZURE_LOCATION": "westeurope",
        "AZURE_RESOURCE_GROUP": "rg-cmk",
        "AZURE_FUNCTION_APP_NAME": APP,
        "AZURE_FUNCTION_APP_ID": APP_ID,
        "AZURE_STORAGE_ACCOUNT_NAME": "stcmk",
        "CMK_APP_PRINCIPAL_ID": "00000000-0000-0000-0000-0000000000aa",
        "EVENT_STORAGE_ACCOUNT_ID": "/subscriptions/s/.../stcmk",
        "EVENT_DEAD_LETTER_CONTAINER": "eventgrid-deadletter",
        "EVENT_VAULTS": json.dumps(VAULTS if vaults is None else vaults),
        "AZ_TOPIC_IDENTITY": topic_identity,
        "CMK_OPERATOR_PRINCIPAL_IDS": '["00000000-0000-0000-0000-0000000000bb"]',
        "CMK_OPERATOR_PRINCIPAL_TYPE": "User",
        "CMK_FUNCTIONS_WAIT_ATTEMPTS": str(attempts),
        "CMK_FUNCTIONS_WAIT_SECONDS": "0",
        **(extra_env or {}),
    }
    result = subprocess.run(
        ["sh", str(HOOKS / hook)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    params = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(tmp_path.glob("az.log.params.*"))
    ]
    return result, calls, params


class TestPostdeploy:
    """postdeploy waits, bounded, for the functions before subscribing them."""

    def test_waits_until_listed_then_subscribes(self, tmp_path: Path) -> None:
        """Two empty listings, then the functions: three polls, then one deployment."""
        result, calls, params = run_hook(tmp_path, "postdeploy.sh", empty_lists=2)
        assert result.returncode == 0, result.stderr
        lists = [call for call in calls if call.startswith("functionapp function list")]
        assert len(lists) == 3
        assert "--resource-group rg-cmk --name func-cmk-abc" in lists[0]
        deployments = [call for call in calls if call.startswith("deployment sub create")]
        assert len(deployments) == 1
        assert calls[-1] == deployments[0]
        assert "--name cmk-event-subscriptions-cmk-test" in deployments[0]
        assert "app/event-subscriptions.bicep" in deployments[0]
        assert params[0]["parameters"]["vaults"] == {"value": VAULTS}
        assert params[0]["parameters"]["functionAppId"] == {"value": APP_ID}

    def test_gives_up_after_the_bound(self, tmp_path: Path) -> None:
        """Never listed: exit 1 after exactly the allowed attempts, no subscription created."""
        result, calls, _ = run_hook(tmp_path, "postdeploy.sh", empty_lists=99, attempts=4)
        assert result.returncode == 1
        assert len(calls) == 4
        assert not any(call.startswith("deployment") for call in calls)
        assert "on_key_new_version" in result.stderr
        assert "azd hooks run postdeploy" in result.stderr

    def test_partial_listing_keeps_waiting(self, tmp_path: Path) -> None:
        """Two of three functions listed is not enough: the missing one is named."""
        partial = f"{APP}/on_key_new_version {APP}/on_key_expired"
        result, calls, _ = run_hook(tmp_path, "postdeploy.sh", attempts=2, listed=partial)
        assert result.returncode == 1
        assert "on_key_near_expiry" in result.stderr
        assert not any(call.startswith("deployment") for call in calls)


class TestPostprovision:
    """postprovision deploys the vault side as a deployment of its own."""

    def test_deploys_vaults_bicep(self, tmp_path: Path) -> None:
        """One subscription deployment of app/vaults.bicep named after the environment."""
        result, calls, params = run_hook(tmp_path, "postprovision.sh")
        assert result.returncode == 0, result.stderr
        assert len(calls) == 1
        assert calls[0].startswith("deployment sub create")
        assert "--name cmk-vaults-cmk-test" in calls[0]
        assert "app/vaults.bicep" in calls[0]
        values = {name: entry["value"] for name, entry in params[0]["parameters"].items()}
        assert values["appPrincipalId"] == "00000000-0000-0000-0000-0000000000aa"
        assert values["appResourceGroup"] == "rg-cmk"
        assert values["vaults"] == VAULTS
        assert values["tags"] == {"azd-env-name": "cmk-test"}
        assert values["operatorPrincipalIds"] == ["00000000-0000-0000-0000-0000000000bb"]
        assert values["operatorPrincipalType"] == "User"

    ADOPTED = {**VAULTS[0], "systemTopicName": "existing-topic", "adopt": True}

    def test_adopts_topic_with_system_identity(self, tmp_path: Path) -> None:
        """An adopted topic with a system-assigned identity is checked, then deployed."""
        result, calls, _ = run_hook(
            tmp_path,
            "postprovision.sh",
            vaults=[self.ADOPTED],
            topic_identity="SystemAssigned, UserAssigned",
        )
        assert result.returncode == 0, result.stderr
        assert calls[0].startswith("eventgrid system-topic show --subscription s")
        assert "--resource-group rg-keys --name existing-topic" in calls[0]
        assert calls[1].startswith("deployment sub create")

    def test_refuses_topic_without_system_identity(self, tmp_path: Path) -> None:
        """An adopted topic without a system-assigned identity: refused, nothing deployed."""
        result, calls, _ = run_hook(
            tmp_path, "postprovision.sh", vaults=[self.ADOPTED], topic_identity="UserAssigned"
        )
        assert result.returncode == 1
        assert "refusing to adopt the system topic existing-topic" in result.stderr
        assert "System assigned" in result.stderr
        assert not any(call.startswith("deployment") for call in calls)

    def test_refuses_a_vault_group_as_the_app_group(self, tmp_path: Path) -> None:
        """The app's group is a vault's (names differ only in case, same subscription):
        refused before anything is deployed, saying not to run `azd down`."""
        clash = {**VAULTS[0], "resourceGroup": "RG-CMK"}
        result, calls, _ = run_hook(
            tmp_path,
            "postprovision.sh",
            vaults=[clash],
            extra_env={"AZURE_SUBSCRIPTION_ID": "s"},
        )
        assert result.returncode == 1
        assert "refusing: the app's resource group rg-cmk is the resource group" in result.stderr
        assert "of vault(s) kv1" in result.stderr
        assert "Do NOT run `azd down`" in result.stderr
        assert calls == []

    def test_same_group_name_in_another_subscription_deploys(self, tmp_path: Path) -> None:
        """A vault group named like the app's but in another subscription is another group."""
        elsewhere = {**VAULTS[0], "resourceGroup": "rg-cmk", "subscriptionId": "other"}
        result, calls, _ = run_hook(
            tmp_path,
            "postprovision.sh",
            vaults=[elsewhere],
            extra_env={"AZURE_SUBSCRIPTION_ID": "s"},
        )
        assert result.returncode == 0, result.stderr
        assert calls[0].startswith("deployment sub create")

    def test_refuses_without_python3(self, tmp_path: Path) -> None:
        """Without python3 (a PATH holding only the tools the check uses) the check still
        refuses the vault's group, in any subscription."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("tr", "grep", "sed"):
            found = shutil.which(tool)
            assert found is not None, tool
            (bin_dir / tool).symlink_to(found)
        sh = shutil.which("sh")
        assert sh is not None
        clash = {**VAULTS[0], "resourceGroup": "rg-CMK", "subscriptionId": "other"}
        result = subprocess.run(
            [sh, str(HOOKS / "postprovision.sh")],
            env={
                "PATH": str(bin_dir),
                "AZURE_ENV_NAME": "e",
                "AZURE_LOCATION": "l",
                "AZURE_RESOURCE_GROUP": "rg-cmk",
                "AZURE_STORAGE_ACCOUNT_NAME": "st",
                "CMK_APP_PRINCIPAL_ID": "p",
                "EVENT_DEAD_LETTER_CONTAINER": "c",
                "EVENT_VAULTS": json.dumps([clash]),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert "of vault(s) kv1" in result.stderr and "Do NOT run `azd down`" in result.stderr

    def test_both_hooks_guard_the_vault_groups(self) -> None:
        """The Windows hooks carry the same refusal (pwsh cannot run here): the shared
        guard compares the groups, postprovision calls it before deploying anything."""
        guard = (HOOKS / "app-group-guard.ps1").read_text(encoding="utf-8")
        assert "$_.resourceGroup -eq $AppGroup" in guard
        assert "Do NOT run ``azd down``" in guard and "Nothing was deployed" in guard
        source = (HOOKS / "postprovision.ps1").read_text(encoding="utf-8")
        call = "Test-AppGroup 'postprovision' 'after' $env:AZURE_RESOURCE_GROUP $vaults"
        assert source.index(call) < source.index("'deployment', 'sub', 'create'")
        before = (HOOKS / "preprovision.ps1").read_text(encoding="utf-8")
        assert "Test-AppGroup 'preprovision' 'before' $group $vaults" in before
        assert '"rg-$($env:AZURE_ENV_NAME)"' in before

    def test_no_vaults_no_deployment(self, tmp_path: Path) -> None:
        """Without vaults the hook says so and calls nothing."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        result = subprocess.run(
            ["sh", str(HOOKS / "postprovision.sh")],
            env={
                "PATH": os.environ["PATH"],
                "AZURE_ENV_NAME": "e",
                "AZURE_LOCATION": "l",
                "AZURE_RESOURCE_GROUP": "rg",
                "AZURE_STORAGE_ACCOUNT_NAME": "st",
                "CMK_APP_PRINCIPAL_ID": "p",
                "EVENT_DEAD_LETTER_CONTAINER": "c",
                "EVENT_VAULTS": "[]",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0
        assert "no vaults configured" in result.stdout


class TestPreprovision:
    """preprovision refuses, before main.bicep deploys anything, an app resource group that
    is a Key Vault's: azd names it rg-<environment name>."""

    def _run(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        sh = shutil.which("sh")
        assert sh is not None
        return subprocess.run(
            [sh, str(HOOKS / "preprovision.sh")],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_refuses_the_environment_group_of_a_vault(self) -> None:
        clash = {**VAULTS[0], "resourceGroup": "RG-Keys"}
        result = self._run(
            {
                "AZURE_ENV_NAME": "keys",
                "AZURE_SUBSCRIPTION_ID": "s",
                "CMK_VAULTS": json.dumps([clash]),
            }
        )
        assert result.returncode == 1
        assert "preprovision: refusing: the app's resource group rg-keys" in result.stderr
        assert "of vault(s) kv1" in result.stderr and "Nothing was deployed" in result.stderr

    def test_a_group_of_its_own_passes(self) -> None:
        result = self._run({"AZURE_ENV_NAME": "cmk-prod", "CMK_VAULTS": json.dumps(VAULTS)})
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""

    def test_the_provisioned_group_is_checked_once_known(self) -> None:
        result = self._run(
            {
                "AZURE_ENV_NAME": "cmk-prod",
                "AZURE_RESOURCE_GROUP": "rg-keys",
                "CMK_VAULTS": json.dumps(VAULTS),
            }
        )
        assert result.returncode == 1 and "rg-keys" in result.stderr

    def test_without_vaults_passes(self) -> None:
        assert self._run({"AZURE_ENV_NAME": "keys"}).returncode == 0

    def test_azure_yaml_runs_it_before_provisioning(self) -> None:
        text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
        assert "run: ./infra/hooks/preprovision.sh" in text
        assert "run: ./infra/hooks/preprovision.ps1" in text
        assert text.index("preprovision:") < text.index("postprovision:")
