"""``-o tsv`` keeps every value whole (full ids and versions, one value per field, as
docs/cli.md lists the columns), and piped tables cut free text before ids: what an
operator needs whole (an id, a fix, why a version is not safe) is printed whole."""

from __future__ import annotations

from cli_rig import World

ID_PREFIX = "/subscriptions/"


def _fields(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines()]


class TestTsv:
    def test_status_has_full_ids_and_versions(self, world: World, cmk):
        """status -o tsv: account id, subscription, key id, bound and newest version in full."""
        version = world.new_version("kv-demo-weu", "ai-cmk")
        accounts = {a["account_id"]: a for a in cmk("status", "--json").json["accounts"]}
        rows = _fields(cmk("status", "-o", "tsv").out)
        assert len(rows) == len(accounts)
        for account_id, subscription, key, bound, newest, state, _, _ in rows:
            expected = accounts[account_id]
            assert (subscription, key, bound, newest, state) == (
                expected["subscription_id"],
                expected["key_id"],
                expected["bound_version"],
                expected["newest_version"],
                expected["state"],
            )
        assert any(row[4] == version and len(version) > 8 for row in rows)

    def test_plan_moves_have_from_and_to_in_fields_of_their_own(self, world: World, cmk):
        """plan -o tsv: one move per line, account id, key id, from, to, priority, reason."""
        version = world.new_version("kv-demo-neu", "ai-cmk")
        moves = cmk("plan", "--json").json["plan"]["moves"]
        rows = _fields(cmk("plan", "-o", "tsv").out)
        assert len(rows) == len(moves) == 10
        for row, move in zip(rows, sorted(moves, key=lambda m: m["account_id"]), strict=True):
            assert row[:4] == [
                move["account_id"],
                move["key_id"],
                move["from_version"],
                move["to_version"],
            ]
            assert row[3] == version and row[4] == "normal" and "->" not in "\t".join(row[:4])

    def test_plan_findings_name_the_subject_in_full(self, world: World, cmk):
        """A finding's subject in tsv is the account's full id, not its bare name."""
        world.vault("kv-demo-neu").keys["ai-cmk"].versions[-1].enabled = False
        findings = cmk("plan", "--json").json["plan"]["findings"]
        rows = _fields(cmk("plan", "-o", "tsv").out)
        subjects = {f["subject"] for f in findings}
        assert subjects and all(s.startswith(ID_PREFIX) for s in subjects)
        assert subjects <= {row[1] for row in rows}

    def test_rotate_dry_run_moves(self, world: World, cmk):
        """rotate --dry-run -o tsv: from version in full, to version `new`, own fields."""
        key_id = world.key_id("kv-demo-neu", "ai-cmk")
        bound = {a.encryption.key_version for a in world.accounts_on("kv-demo-neu", "ai-cmk")}
        rows = _fields(cmk("rotate", key_id, "--dry-run", "-o", "tsv").out)
        assert len(rows) == 10
        assert {row[0].startswith(ID_PREFIX) for row in rows} == {True}
        assert {row[2] for row in rows} == bound and {row[3] for row in rows} == {"new"}

    def test_history_from_and_to_in_full(self, world: World, cmk):
        """history -o tsv: updated, account id, key id, from, to, state, attempts, trigger,
        cause; versions whole."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk-exp")
        before = {
            a.resource_id: a.encryption.key_version
            for a in world.accounts_on("kv-demo-weu", "ai-cmk-exp")
        }
        assert cmk("rotate", key_id).code == 0
        after = {
            a.resource_id: a.encryption.key_version
            for a in world.accounts_on("kv-demo-weu", "ai-cmk-exp")
        }
        rows = _fields(cmk("history", "--key", key_id, "-o", "tsv").out)
        assert len(rows) == 8
        for _, account, key, old, new, state, attempts, trigger, _ in rows:
            assert (old, new) == (before[account], after[account])
            assert key == key_id and state == "succeeded" and trigger == "cli:rotate"
            assert int(attempts) >= 1

    def test_versions_accounts_are_full_ids(self, world: World, cmk):
        """versions -o tsv: the accounts field lists every account's full id (comma-separated),
        not a count with three names."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        [row] = _fields(cmk("versions", key_id, "-o", "tsv").out)
        version, _, enabled, _, _, bindable, reasons, accounts, safe, why = row
        expected = sorted(a.resource_id for a in world.accounts_on("kv-demo-weu", "ai-cmk"))
        assert sorted(accounts.split(",")) == expected and len(expected) == 24
        assert (enabled, bindable, reasons, safe) == ("true", "true", "", "false")
        assert "account(s) use it" in why and len(version) == 32


class TestTablesPiped:
    def test_moves_table_names_every_column(self, world: World, cmk):
        """The Moves table's urgency column has a header."""
        world.new_version("kv-demo-neu", "ai-cmk")
        run = cmk("plan")
        header = next(line for line in run.out.splitlines() if "account" in line)
        assert [c.strip() for c in header.strip("┃").split("┃")] == [
            "account",
            "key",
            "version",
            "priority",
            "reason",
        ]
        assert "normal" in run.out

    def test_query_table_keeps_ids_whole(self, world: World, cmk):
        """plan --query "plan.moves[0]" -o table: the free-text reason is cut, the account
        id is whole (the line is as long as it needs)."""
        world.new_version("kv-demo-neu", "ai-cmk")
        move = cmk("plan", "--query", "plan.moves[0]").json
        run = cmk("plan", "--query", "plan.moves[0]", "-o", "table")
        assert move["account_id"] in run.out and move["key_id"] in run.out
        assert move["reason"] not in run.out and "…" in run.out

    def test_versions_says_why_in_full(self, world: World, cmk):
        """versions piped: each version's verdict is printed whole under the table, after
        its tags (latest, newest valid) if it has any."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        world.new_version("kv-demo-weu", "ai-cmk")
        versions = cmk("versions", key_id, "--json").json["key"]["versions"]
        out = cmk("versions", key_id).out
        for version in versions:
            tags = ", ".join(
                tag
                for tag, has in (
                    ("latest", version["latest"]),
                    ("newest valid", version["newest_valid"]),
                )
                if has
            )
            shown = f" ({tags})" if tags else ""
            assert f"  {version['version']}{shown}: {version['verdict']}" in out.splitlines()

    def test_check_prints_each_failed_fix_in_full(self, world: World, cmk):
        """check ACCOUNT --key (another region's vault), piped: each failed requirement's
        fix is printed whole under the table, however narrow its cell."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        key_id = world.key_id("kv-demo-neu", "ai-cmk")
        [check] = cmk("check", account.resource_id, "--key", key_id, "--json").json["checks"]
        failed = [r for r in check["requirements"] if r["holds"] is False and r["fix"]]
        run = cmk("check", account.resource_id, "--key", key_id)
        assert run.code == 1 and failed
        for requirement in failed:
            assert f"  {requirement['name']} — fix: {requirement['fix']}" in run.out.splitlines()
        tsv = _fields(cmk("check", account.resource_id, "--key", key_id, "-o", "tsv").out)
        assert {row[0] for row in tsv} == {account.resource_id}
        assert {row[5] for row in tsv if row[2] == "failed"} == {r["fix"] for r in failed}
