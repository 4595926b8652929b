"""The azd hooks under infra/hooks/, run for real by `sh` with an `az` that records its calls.

The Azure CLI cannot reach Azure here, so a small `az` script on PATH stands in for it: it
appends each call to a log, answers `functionapp function list` from a scripted sequence
(nothing listed for the first N calls, then the functions) and `group list` (the resource
groups tagged azd-env-name=<environment>, which `azd down` deletes) from a scripted list, or
fails it. The hooks themselves run unmodified; the wait between polls is set to 0 s through
the hooks' own setting.
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
# with $AZ_LISTED after, `group list` with $AZ_TAGGED_GROUPS (or fails it, as an az that is not
# signed in does, when $AZ_GROUP_LIST_FAILS is set); copies each --parameters file next to the
# log.
FAKE_AZ = """#!/bin/sh
log="$AZ_LOG"
printf '%s\\n' "$*" >> "$log"
case "$*" in
  "group list"*)
    if [ -n "${AZ_GROUP_LIST_FAILS:-}" ]; then
      echo "ERROR: Please run 'az login' to setup account." >&2
      exit 1
    fi
    for group in ${AZ_TAGGED_GROUPS:-}; do printf '%s\\n' "$group"; done
    exit 0
    ;;
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


def install_fake_az(tmp_path: Path) -> Path:
    """The directory holding the recording `az` (tmp_path/bin); its log is tmp_path/az.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(FAKE_AZ, encoding="utf-8")
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def az_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "az.log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def run_hook(
    tmp_path: Path,
    hook: str,
    *,
    empty_lists: int = 0,
    attempts: int = 5,
    listed: str = "",
    vaults: list[dict[str, Any]] | None = None,
    topic_identity: str = "SystemAssigned",
    tagged: str = "rg-cmk",
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str], list[dict[str, Any]]]:
    """Run infra/hooks/<hook> with the recording az; (result, az calls, parameter files).
    ``tagged``: the groups az lists as tagged azd-env-name=cmk-test (by default the app's own,
    as main.bicep tags it)."""
    bin_dir = install_fake_az(tmp_path)
    log = tmp_path / "az.log"
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "AZ_LOG": str(log),
        "AZ_TAGGED_GROUPS": tagged,
        "AZ_EMPTY_LISTS": str(empty_lists),
        "AZ_LISTED": listed or " ".join(f"{APP}/{name}" for name in FUNCTIONS),
        "AZURE_ENV_NAME": "cmk-test",
        "AZURE_SUBSCRIPTION_ID": "s",  # azd has chosen it by postprovision
        "AZURE_LOCATION": "westeurope",
        "AZURE_RESOURCE_GROUP": "rg-cmk",
        "AZURE_FUNCTION_APP_NAME": APP,
        "AZURE_FUNCTION_APP_ID": APP_ID,
        "AZURE_STORAGE_ACCOUNT_NAME": "stcmk",
        "CMK_APP_PRINCIPAL_ID": "00000000-0000-0000-0000-0000000000aa",
        "EVENT_STORAGE_ACCOUNT_ID": "/subscriptions/s/.../stcmk",
        "EVENT_DEAD_LETTER_CONTAINER": "eventgrid-deadletter",
        "EVENT_SUBSCRIPTION_SUFFIX": "tok3n",
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
    calls = az_calls(tmp_path)
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
        assert params[0]["parameters"]["subscriptionNameSuffix"] == {"value": "tok3n"}

    def test_refuses_without_the_name_suffix(self, tmp_path: Path) -> None:
        """Without EVENT_SUBSCRIPTION_SUFFIX (an environment provisioned before main.bicep
        output it) the hook stops before any az call: unsuffixed names would collide with
        another environment's subscriptions on a shared vault."""
        result, calls, _ = run_hook(
            tmp_path, "postdeploy.sh", extra_env={"EVENT_SUBSCRIPTION_SUFFIX": ""}
        )
        assert result.returncode != 0
        assert "EVENT_SUBSCRIPTION_SUFFIX" in result.stderr
        assert "azd provision" in result.stderr
        assert calls == []

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
        """One subscription deployment of app/vaults.bicep named after the environment, after
        asking az which groups carry the environment's azd-env-name tag."""
        result, calls, params = run_hook(
            tmp_path, "postprovision.sh", extra_env={"AZURE_SUBSCRIPTION_ID": "s"}
        )
        assert result.returncode == 0, result.stderr
        assert len(calls) == 2
        assert calls[0] == (
            "group list --subscription s --tag azd-env-name=cmk-test --query [].name --output tsv"
        )
        assert calls[1].startswith("deployment sub create")
        assert "--name cmk-vaults-cmk-test" in calls[1]
        assert "app/vaults.bicep" in calls[1]
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
        assert calls[0].startswith("group list")
        assert calls[1].startswith("eventgrid system-topic show --subscription s")
        assert "--resource-group rg-keys --name existing-topic" in calls[1]
        assert calls[2].startswith("deployment sub create")

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

    def test_refuses_a_vault_group_tagged_with_the_environment(self, tmp_path: Path) -> None:
        """A vault's group (another name than the app's) carries azd-env-name=<environment>:
        `azd down` deletes every group so tagged, so the hook refuses before the vault side,
        names the group and the vault, says not to run `azd down` and how to remove the tag."""
        result, calls, _ = run_hook(
            tmp_path,
            "postprovision.sh",
            tagged="rg-cmk RG-Keys",
            extra_env={"AZURE_SUBSCRIPTION_ID": "s"},
        )
        assert result.returncode == 1
        assert "tagged" in result.stderr and "azd-env-name=cmk-test" in result.stderr
        assert "the resource group RG-Keys of vault(s) kv1" in result.stderr
        assert "Do NOT run `azd down`" in result.stderr
        assert (
            "az tag update --resource-id /subscriptions/s/resourceGroups/RG-Keys"
            " --operation Delete --tags azd-env-name=cmk-test"
        ) in result.stderr
        assert [call.split(" --")[0] for call in calls] == ["group list"]

    def test_a_tagged_group_of_the_same_name_elsewhere_deploys(self, tmp_path: Path) -> None:
        """`azd down` lists the tagged groups of its own subscription: a vault whose group has
        that name in another subscription is out of its reach, and is deployed."""
        elsewhere = {**VAULTS[0], "subscriptionId": "other"}
        result, calls, _ = run_hook(
            tmp_path,
            "postprovision.sh",
            vaults=[elsewhere],
            tagged="rg-cmk rg-keys",
            extra_env={"AZURE_SUBSCRIPTION_ID": "s"},
        )
        assert result.returncode == 0, result.stderr
        assert calls[-1].startswith("deployment sub create")

    def test_postprovision_refuses_without_the_subscription(self, tmp_path: Path) -> None:
        """After provisioning azd has set AZURE_SUBSCRIPTION_ID; without it, the groups
        `azd down` would delete cannot be listed in the right subscription (az's current
        one may be another): refused, saying how to set it; nothing deployed."""
        result, calls, _ = run_hook(
            tmp_path, "postprovision.sh", extra_env={"AZURE_SUBSCRIPTION_ID": ""}
        )
        assert result.returncode == 1
        assert "AZURE_SUBSCRIPTION_ID is not set" in result.stderr
        assert "azd env set AZURE_SUBSCRIPTION_ID" in result.stderr
        assert not any(call.startswith(("deployment", "group list")) for call in calls)

    def test_refuses_when_the_tagged_groups_cannot_be_read(self, tmp_path: Path) -> None:
        """An az that cannot list the tagged groups (not signed in) cannot show the vaults
        safe: refused, saying to sign in; nothing deployed."""
        result, calls, _ = run_hook(
            tmp_path, "postprovision.sh", extra_env={"AZ_GROUP_LIST_FAILS": "1"}
        )
        assert result.returncode == 1
        assert "cannot list the resource groups tagged azd-env-name=cmk-test" in result.stderr
        assert "az login" in result.stderr
        assert not any(call.startswith("deployment") for call in calls)

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
        assert calls[-1].startswith("deployment sub create")

    @staticmethod
    def _without_python3(tmp_path: Path, vault: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """postprovision.sh on a PATH holding only the recording az and the tools the checks
        use (no python3)."""
        bin_dir = install_fake_az(tmp_path)
        for tool in ("tr", "grep", "sed"):
            found = shutil.which(tool)
            assert found is not None, tool
            (bin_dir / tool).symlink_to(found)
        sh = shutil.which("sh")
        assert sh is not None
        return subprocess.run(
            [sh, str(HOOKS / "postprovision.sh")],
            env={
                "PATH": str(bin_dir),
                "AZ_LOG": str(tmp_path / "az.log"),
                "AZ_TAGGED_GROUPS": "rg-cmk rg-keys",
                "AZURE_ENV_NAME": "e",
                "AZURE_SUBSCRIPTION_ID": "s",
                "AZURE_LOCATION": "l",
                "AZURE_RESOURCE_GROUP": "rg-cmk",
                "AZURE_STORAGE_ACCOUNT_NAME": "st",
                "CMK_APP_PRINCIPAL_ID": "p",
                "EVENT_DEAD_LETTER_CONTAINER": "c",
                "EVENT_VAULTS": json.dumps([vault]),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_refuses_without_python3(self, tmp_path: Path) -> None:
        """Without python3 (a PATH holding only the tools the check uses) the check still
        refuses the vault's group, in any subscription."""
        clash = {**VAULTS[0], "resourceGroup": "rg-CMK", "subscriptionId": "other"}
        result = self._without_python3(tmp_path, clash)
        assert result.returncode == 1
        assert "of vault(s) kv1" in result.stderr and "Do NOT run `azd down`" in result.stderr

    def test_refuses_a_tagged_vault_group_without_python3(self, tmp_path: Path) -> None:
        """Without python3 a vault's group among the tagged ones is still refused."""
        result = self._without_python3(tmp_path, VAULTS[0])
        assert result.returncode == 1
        assert "the resource group rg-keys of vault(s) kv1" in result.stderr
        assert not any(call.startswith("deployment") for call in az_calls(tmp_path))

    def test_both_hooks_guard_the_vault_groups(self) -> None:
        """The Windows hooks carry the same refusals (pwsh cannot run here): the shared
        guard compares the groups and asks az for the tagged ones; both hooks call it before
        deploying anything."""
        guard = (HOOKS / "app-group-guard.ps1").read_text(encoding="utf-8")
        assert "$_.resourceGroup -eq $AppGroup" in guard
        assert "Do NOT run ``azd down``" in guard and "Nothing was deployed" in guard
        assert (
            "@('group', 'list', '--tag', \"azd-env-name=$($env:AZURE_ENV_NAME)\", '--query',"
            " '[].name', '--output', 'tsv')"
        ) in guard
        assert "$tagged -contains $_.resourceGroup" in guard
        assert "if ($LASTEXITCODE -ne 0)" in guard
        source = (HOOKS / "postprovision.ps1").read_text(encoding="utf-8")
        deploy = source.index("'deployment', 'sub', 'create'")
        call = "Test-AppGroup 'postprovision' 'after' $env:AZURE_RESOURCE_GROUP $vaults"
        assert source.index(call) < deploy
        assert source.index("Test-VaultGroupTags 'postprovision' 'after' $vaults") < deploy
        before = (HOOKS / "preprovision.ps1").read_text(encoding="utf-8")
        assert "Test-AppGroup 'preprovision' 'before' $group $vaults" in before
        assert "Test-VaultGroupTags 'preprovision' 'before' $vaults" in before
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
    """preprovision refuses, before main.bicep deploys anything, what would let `azd down`
    delete a Key Vault's group: an app resource group that is a vault's (azd names it
    rg-<environment name>), and a vault's group tagged azd-env-name=<environment name>."""

    def _run(
        self, tmp_path: Path, env: dict[str, str], tagged: str = ""
    ) -> subprocess.CompletedProcess[str]:
        sh = shutil.which("sh")
        assert sh is not None
        bin_dir = install_fake_az(tmp_path)
        return subprocess.run(
            [sh, str(HOOKS / "preprovision.sh")],
            env={
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "AZ_LOG": str(tmp_path / "az.log"),
                "AZ_TAGGED_GROUPS": tagged,
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_refuses_the_environment_group_of_a_vault(self, tmp_path: Path) -> None:
        clash = {**VAULTS[0], "resourceGroup": "RG-Keys"}
        result = self._run(
            tmp_path,
            {
                "AZURE_ENV_NAME": "keys",
                "AZURE_SUBSCRIPTION_ID": "s",
                "CMK_VAULTS": json.dumps([clash]),
            },
        )
        assert result.returncode == 1
        assert "preprovision: refusing: the app's resource group rg-keys" in result.stderr
        assert "of vault(s) kv1" in result.stderr and "Nothing was deployed" in result.stderr

    def test_refuses_a_vault_group_tagged_with_the_environment(self, tmp_path: Path) -> None:
        """The vault's group already carries azd-env-name=cmk-prod (say, another azd template
        of that environment name): refused before anything is deployed, with the fix."""
        result = self._run(
            tmp_path,
            {
                "AZURE_ENV_NAME": "cmk-prod",
                "AZURE_SUBSCRIPTION_ID": "s",
                "CMK_VAULTS": json.dumps(VAULTS),
            },
            tagged="rg-keys",
        )
        assert result.returncode == 1
        assert "preprovision: refusing" in result.stderr
        assert "the resource group rg-keys of vault(s) kv1" in result.stderr
        assert "azd-env-name=cmk-prod" in result.stderr
        assert "Nothing was deployed" in result.stderr
        assert az_calls(tmp_path) == [
            "group list --subscription s --tag azd-env-name=cmk-prod --query [].name --output tsv"
        ]

    def test_refuses_when_the_tagged_groups_cannot_be_read(self, tmp_path: Path) -> None:
        result = self._run(
            tmp_path,
            {
                "AZURE_ENV_NAME": "cmk-prod",
                "CMK_VAULTS": json.dumps(VAULTS),
                "AZ_GROUP_LIST_FAILS": "1",
            },
        )
        assert result.returncode == 1
        assert "cannot list the resource groups tagged" in result.stderr

    def test_without_the_subscription_it_checks_the_current_one(self, tmp_path: Path) -> None:
        """A first `azd provision` may run preprovision before azd chose the subscription:
        it checks az's current one, says so, and leaves the rest to postprovision."""
        result = self._run(
            tmp_path,
            {"AZURE_ENV_NAME": "cmk-prod", "CMK_VAULTS": json.dumps(VAULTS)},
            tagged="rg-cmk-prod rg-other",
        )
        assert result.returncode == 0, result.stderr
        assert "checking the Azure CLI's current" in result.stderr
        calls = az_calls(tmp_path)
        assert [call.split(" --")[0] for call in calls] == ["group list"]
        assert "--subscription" not in calls[0]

    def test_a_group_of_its_own_passes(self, tmp_path: Path) -> None:
        """Neither the app's group nor a tagged group is a vault's: no output, exit 0."""
        result = self._run(
            tmp_path,
            {
                "AZURE_ENV_NAME": "cmk-prod",
                "AZURE_SUBSCRIPTION_ID": "s",
                "CMK_VAULTS": json.dumps(VAULTS),
            },
            tagged="rg-cmk-prod rg-other",
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert [call.split(" --")[0] for call in az_calls(tmp_path)] == ["group list"]

    def test_the_provisioned_group_is_checked_once_known(self, tmp_path: Path) -> None:
        result = self._run(
            tmp_path,
            {
                "AZURE_ENV_NAME": "cmk-prod",
                "AZURE_RESOURCE_GROUP": "rg-keys",
                "CMK_VAULTS": json.dumps(VAULTS),
            },
        )
        assert result.returncode == 1 and "rg-keys" in result.stderr

    def test_without_vaults_passes(self, tmp_path: Path) -> None:
        """No vault, nothing to protect: passes without asking az."""
        assert self._run(tmp_path, {"AZURE_ENV_NAME": "keys"}).returncode == 0
        assert az_calls(tmp_path) == []

    def test_azure_yaml_runs_it_before_provisioning(self) -> None:
        text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
        assert "run: ./infra/hooks/preprovision.sh" in text
        assert "run: ./infra/hooks/preprovision.ps1" in text
        assert text.index("preprovision:") < text.index("postprovision:")
