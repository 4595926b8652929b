"""``cmk versions`` and ``cmk history``: who uses which version, and the ledger."""

from __future__ import annotations

from cli_rig import World


class TestVersions:
    def test_old_version_is_safe_to_disable_after_rotation(self, world: World, cmk):
        """After every account moved, the old version is safe to disable, the new one not."""
        key_id = world.key_id("kv-demo-neu", "ai-cmk")
        old = world.vault("kv-demo-neu").keys["ai-cmk"].versions[0].version
        assert cmk("rotate", key_id).code == 0
        run = cmk("versions", key_id, "--json")
        document = run.valid("versions")
        assert run.code == 0
        newest, previous = document["key"]["versions"]
        assert previous["version"] == old and previous["safe_to_disable"] is True
        assert previous["accounts"] == []
        assert newest["newest_valid"] is True and newest["safe_to_disable"] is False
        assert len(newest["accounts"]) == 10

    def test_version_in_use_is_not_safe(self, world: World, cmk):
        """A version accounts are bound to is not safe to disable, and the table says why."""
        world.new_version("kv-demo-weu", "ai-cmk")
        run = cmk("versions", world.key_id("kv-demo-weu", "ai-cmk"))
        assert run.code == 0
        assert "24 account(s) use it" in run.out
        assert "no account uses it" not in run.out

    def test_advice_names_the_command_that_moves_them(self, world: World, cmk):
        """A version in use with a newer valid one: 'cmk sweep' moves its accounts. Without
        a newer valid version: 'cmk rotate' creates one. Never `az keyvault key rotate`,
        which leaves the accounts behind."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        [only] = cmk("versions", key_id, "--json").valid("versions")["key"]["versions"]
        assert "'cmk rotate' creates one and moves them" in only["verdict"]
        world.new_version("kv-demo-weu", "ai-cmk")
        _, old = cmk("versions", key_id, "--json").valid("versions")["key"]["versions"]
        assert "'cmk sweep' moves them" in old["verdict"]
        assert "az keyvault" not in old["verdict"] + only["verdict"]

    def test_bound_disabled_version_exits_1(self, world: World, cmk):
        """An account bound to a disabled version is a finding: exit 1."""
        world.vault("hsm-demo-weu").keys["ai-cmk-hsm"].versions[0].enabled = False
        run = cmk("versions", world.key_id("hsm-demo-weu", "ai-cmk-hsm"), "--json")
        assert run.code == 1
        [version] = run.valid("versions")["key"]["versions"]
        assert version["bindable"] is False and len(version["accounts"]) == 6


class TestHistory:
    def test_rows_of_one_account_after_a_rotation(self, world: World, cmk):
        """history --account shows the account's ledger row written by the rotation."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk-exp")
        assert cmk("rotate", key_id).code == 0
        account = world.accounts_on("kv-demo-weu", "ai-cmk-exp")[0]
        run = cmk("history", "--account", account.resource_id, "--json")
        document = run.valid("history")
        assert run.code == 0
        [entry] = document["entries"]
        assert entry["state"] == "succeeded" and entry["trigger"] == "cli:rotate"
        assert entry["to_version"] == account.encryption.key_version

    def test_key_filter_and_table(self, world: World, cmk):
        """history --key lists every account moved on that key, as a table."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk-exp")
        assert cmk("rotate", key_id).code == 0
        run = cmk("history", "--key", key_id)
        assert run.code == 0
        assert "8 ledger rows" in run.out and "succeeded" in run.out

    def test_failed_latest_row_exits_1(self, world: World, cmk):
        """An account whose latest row failed makes history exit 1."""
        victim = world.accounts_on("kv-demo-neu", "ai-cmk")[0]
        assert victim.identity.system is not None
        world.sandbox.world.revoke(victim.identity.system.object_id)
        assert cmk("rotate", world.key_id("kv-demo-neu", "ai-cmk")).code == 1
        run = cmk("history", "--account", victim.resource_id)
        assert run.code == 1 and "failed" in run.out

    def test_account_and_key_together_is_a_usage_error(self, world: World, cmk):
        """--account and --key exclude each other: exit 2."""
        run = cmk("history", "--account", "x", "--key", "y")
        assert run.code == 2 and "not allowed with" in run.err
