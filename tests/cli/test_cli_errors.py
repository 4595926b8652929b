"""Usage and configuration errors: exit 2 and a message that says how to fix it."""

from __future__ import annotations

import pytest
from cli_rig import World


class TestConfigurationErrors:
    def test_missing_storage_is_reported_with_the_other_problems(
        self, world: World, cmk, monkeypatch
    ):
        """One run names every setting problem: a bad value and missing storage together."""
        monkeypatch.delenv("AzureWebJobsStorage")
        monkeypatch.setenv("CMK_MAX_CONCURRENCY", "lots")
        run = cmk("status")
        assert run.code == 2 and run.out == ""
        assert "CMK_MAX_CONCURRENCY='lots'" in run.err
        assert "AzureWebJobsStorage is not set" in run.err

    def test_missing_storage_in_json(self, world: World, cmk, monkeypatch):
        """Without AzureWebJobsStorage, --json prints the error document; exit 2."""
        monkeypatch.delenv("AzureWebJobsStorage")
        run = cmk("plan", "--json")
        error = run.valid("error")["error"]
        assert run.code == 2 and error["kind"] == "configuration"
        assert "AzureWebJobsStorage" in error["message"] and "fix:" in run.err

    def test_invalid_setting_is_quoted(self, world: World, cmk, monkeypatch):
        """An invalid value is named with the rule it breaks."""
        monkeypatch.setenv("CMK_MAX_CONCURRENCY", "lots")
        run = cmk("sweep")
        assert run.code == 2 and "CMK_MAX_CONCURRENCY='lots'" in run.err

    def test_no_credential_advises_az_login(self, world: World, cmk, monkeypatch):
        """When DefaultAzureCredential finds no credential: exit 2 with `az login` advice."""
        monkeypatch.delenv("IDENTITY_ENDPOINT")
        monkeypatch.delenv("IDENTITY_HEADER")
        monkeypatch.setenv("AZURE_CONFIG_DIR", "/nonexistent-cmk-test")
        monkeypatch.setenv("PATH", "/nonexistent-cmk-test")
        run = cmk("versions", world.key_id("kv-demo-weu", "ai-cmk"), "--json")
        assert run.code == 2, run.err
        assert run.valid("error")["error"]["kind"] == "authentication"
        assert "az login" in run.err


class TestUsageErrors:
    @pytest.mark.parametrize(
        ("argv", "hint"),
        [
            (("versions", "https://nope/keys/k"), "https://myvault.vault.azure.net/keys/mykey"),
            (("rotate", "not-a-key"), "https://myvault.vault.azure.net/keys/mykey"),
            (("history", "--account", "/subscriptions/x"), "Microsoft.CognitiveServices"),
        ],
    )
    def test_invalid_ids_exit_2_with_an_example(self, world: World, cmk, argv, hint):
        """A malformed key or account id: exit 2 and an example of a good one."""
        run = cmk(*argv)
        assert run.code == 2 and hint in run.err

    def test_unknown_key_exit_2(self, world: World, cmk):
        """A key that does not exist: exit 2 telling how to find the right id."""
        run = cmk("versions", world.key_id("kv-demo-weu", "missing"))
        assert run.code == 2 and "KeyNotFound" in run.err and "cmk status" in run.err

    def test_vault_outside_allowlist_exit_2(self, world: World, cmk, monkeypatch):
        """Rotating a key of a vault outside CMK_VAULT_ALLOWLIST: exit 2, add it there."""
        monkeypatch.setenv("CMK_VAULT_ALLOWLIST", world.vault("kv-demo-weu").url)
        run = cmk("rotate", world.key_id("kv-demo-neu", "ai-cmk"))
        assert run.code == 2 and "add the vault to CMK_VAULT_ALLOWLIST" in run.err

    def test_unknown_command_exit_2(self, cmk):
        """argparse usage errors return 2 instead of raising SystemExit."""
        run = cmk("frobnicate")
        assert run.code == 2 and "invalid choice" in run.err
