"""``cmk status`` and ``cmk plan`` against the sandbox: tables, JSON and exit codes."""

from __future__ import annotations

from cli_rig import World


class TestStatus:
    def test_all_current_exits_0_with_a_table(self, world: World, cmk):
        """Every CMK account is listed as current; exit 0."""
        run = cmk("status")
        assert run.code == 0, run.err
        assert "ai-prod-weu-01" in run.out and "ai-prod-hsm-06" in run.out
        assert "current: 48" in run.out

    def test_stale_accounts_exit_1_in_json(self, world: World, cmk):
        """A version nobody was told about makes its accounts stale: JSON says so, exit 1."""
        version = world.new_version("kv-demo-weu", "ai-cmk")
        run = cmk("status", "--json")
        document = run.valid("status")
        assert run.code == 1 and document["exit_code"] == 1
        assert document["summary"]["stale"] == 24 and document["summary"]["current"] == 24
        stale = [a for a in document["accounts"] if a["state"] == "stale"]
        assert {a["newest_version"] for a in stale} == {version}

    def test_json_is_the_only_stdout(self, world: World, cmk):
        """With --json stdout holds one JSON document and nothing else."""
        run = cmk("status", "--json")
        assert run.out.lstrip().startswith("{") and run.out.rstrip().endswith("}")
        assert len(run.valid("status")["accounts"]) == 48


class TestPlan:
    def test_moves_are_listed_and_nothing_written(self, world: World, cmk):
        """Plan shows each stale account's move with its reason and changes nothing."""
        version = world.new_version("kv-demo-neu", "ai-cmk")
        run = cmk("plan", "--json")
        document = run.valid("plan")
        assert run.code == 0
        plan = document["plan"]
        assert plan["dry_run"] is True and plan["enqueued"] == 0
        assert len(plan["moves"]) == 10
        assert {m["to_version"] for m in plan["moves"]} == {version}
        assert all(
            a.encryption.key_version != version for a in world.accounts_on("kv-demo-neu", "ai-cmk")
        )

    def test_findings_exit_1(self, world: World, cmk):
        """A bound version disabled with no successor is a finding: exit 1, shown in a table."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        key.versions[-1].enabled = False
        run = cmk("plan")
        assert run.code == 1
        assert "Findings" in run.out and "ai-prod-neu-01" in run.out
