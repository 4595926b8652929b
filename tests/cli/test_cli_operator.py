"""The edges an operator meets: typos, scope mistakes, dry runs that tell the truth, and the
Azure CLI's conventions (--output, --version, usage errors exit 2, plain help)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from cli_rig import World

from cmk.cli import build_parser

TYPOS = (
    "https://kv-demo-weu.vault.azure.net/ai-cmk",
    "https://kv-demo-weu.vault.azure.net/secrets/ai-cmk",
)
ACCOUNT = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers"
    "/Microsoft.CognitiveServices/accounts/a"
)


class TestTypos:
    @pytest.mark.parametrize("typo", TYPOS)
    @pytest.mark.parametrize(
        "command", [("versions",), ("rotate",), ("check", ACCOUNT, "--key")], ids=str
    )
    @pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
    def test_one_clear_error_and_exit_2(self, world: World, cmk, typo, command, as_json):
        """A key id without /keys/ (or with /secrets/): one error naming the path rule and an
        example, exit 2; with --json also the error document; never a traceback."""
        run = cmk(*command, typo, *(["--json"] if as_json else []))
        assert run.code == 2
        assert "Traceback" not in run.err
        assert run.err.splitlines() == [
            f"cmk: invalid key id '{typo}': the path must be /keys/{{name}}[/{{version}}]",
            "  fix: give a key id such as https://myvault.vault.azure.net/keys/mykey",
        ]
        if as_json:
            assert run.valid("error")["error"]["kind"] == "usage"
        else:
            assert run.out == ""


class TestScope:
    def test_empty_allowlist_warns_and_exits_1(self, world: World, cmk, monkeypatch):
        """An empty CMK_VAULT_ALLOWLIST is not a clean run: a warning on stderr, exit 1."""
        monkeypatch.setenv("CMK_VAULT_ALLOWLIST", "")
        run = cmk("status")
        assert run.code == 1
        assert "cmk: warning: CMK_VAULT_ALLOWLIST is empty" in run.err

    def test_unknown_subscription_warns_and_exits_1(self, world: World, cmk, monkeypatch):
        """A CMK_SUBSCRIPTIONS the identity cannot see is named as such, and nothing found
        in scope: sweep warns on stderr and in its JSON, exit 1."""
        typo = "11111111-2222-3333-4444-555555555555"
        monkeypatch.setenv("CMK_SUBSCRIPTIONS", typo)
        run = cmk("sweep", "--json")
        document = run.valid("sweep")
        assert run.code == 1 and document["exit_code"] == 1
        hidden, empty = document["warnings"]
        assert typo in hidden and "not visible to the identity" in hidden
        assert "no CMK account in scope" in empty
        assert document["scope"]["not_visible"] == [typo]
        assert document["scope"]["subscriptions"] == []
        assert f"cmk: warning: subscription {typo} of CMK_SUBSCRIPTIONS" in run.err

    def test_one_hidden_subscription_among_good_ones(self, world: World, cmk, monkeypatch):
        """A typo next to real subscriptions: the real ones are inventoried, the typo is
        warned about on stderr (exit 1) and left out of the scope line."""
        real = sorted(world.sandbox.world.subscriptions)
        typo = "11111111-2222-3333-4444-555555555555"
        monkeypatch.setenv("CMK_SUBSCRIPTIONS", ",".join([*real, typo]))
        run = cmk("status")
        assert run.code == 1
        assert f"cmk: warning: subscription {typo} of CMK_SUBSCRIPTIONS" in run.err
        [scope] = [line for line in run.out.splitlines() if line.startswith("scope: ")]
        assert f"{len(real)} subscription(s) of CMK_SUBSCRIPTIONS" in scope
        assert typo not in scope and all(sub in scope for sub in real)

    @pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry_run"])
    def test_rotate_refuses_a_hidden_subscription_before_creating(
        self, world: World, cmk, monkeypatch, dry_run
    ):
        """rotate with a typo in CMK_SUBSCRIPTIONS warns as status does and refuses before
        any version exists: exit 1, the error document, no version, no account moved."""
        real = sorted(world.sandbox.world.subscriptions)
        typo = "11111111-2222-3333-4444-555555555555"
        monkeypatch.setenv("CMK_SUBSCRIPTIONS", ",".join([*real, typo]))
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        before = len(key.versions)
        bound = {
            a.name: a.encryption.key_version for a in world.accounts_on("kv-demo-neu", "ai-cmk")
        }
        argv = ["rotate", world.key_id("kv-demo-neu", "ai-cmk"), *(["--dry-run"] * dry_run)]
        run = cmk(*argv, "--json")
        assert run.code == 1, run.err
        error = run.valid("error")["error"]
        assert error["exit_code"] == 1 and "rotate refused" in error["message"]
        assert f"cmk: warning: subscription {typo} of CMK_SUBSCRIPTIONS" in run.err
        assert len(key.versions) == before
        table = cmk(*argv)
        assert table.code == 1 and table.out == ""
        assert "nothing was created" in table.err and "would move" not in table.err
        assert len(key.versions) == before
        after = {
            a.name: a.encryption.key_version for a in world.accounts_on("kv-demo-neu", "ai-cmk")
        }
        assert after == bound

    def test_check_all_with_a_hidden_subscription_exits_1(self, world: World, cmk, monkeypatch):
        """check --all applies the same scope check: the warning on stderr and in its JSON,
        exit 1 even when every account checked is fine."""
        typo = "11111111-2222-3333-4444-555555555555"
        good = cmk("check", "--all", "--json").json
        monkeypatch.setenv(
            "CMK_SUBSCRIPTIONS", ",".join([*world.sandbox.world.subscriptions, typo])
        )
        run = cmk("check", "--all", "--json")
        document = run.json
        assert run.code == 1 and document["exit_code"] == 1
        assert document["ok"] == good["ok"] and good["warnings"] == []
        [warning] = document["warnings"]
        assert typo in warning and f"cmk: warning: subscription {typo}" in run.err

    def test_without_subscriptions_the_scope_is_what_the_identity_reads(
        self, world: World, cmk, monkeypatch
    ):
        """Without CMK_SUBSCRIPTIONS, status covers every subscription the identity can
        read, names them (display name and id), and finds the same accounts."""
        with_setting = cmk("status", "--json").valid("status")
        monkeypatch.delenv("CMK_SUBSCRIPTIONS")
        run = cmk("status", "--json")
        document = run.valid("status")
        assert document["scope"]["source"] == "readable by the identity"
        assert {a["account_id"] for a in document["accounts"]} == {
            a["account_id"] for a in with_setting["accounts"]
        }
        configured = {s["id"] for s in with_setting["scope"]["subscriptions"]}
        assert configured <= {s["id"] for s in document["scope"]["subscriptions"]}
        assert all(s["name"] for s in document["scope"]["subscriptions"])
        table = cmk("status")
        [scope] = [line for line in table.out.splitlines() if line.startswith("scope: ")]
        assert "the identity can read (CMK_SUBSCRIPTIONS unset)" in scope
        name = document["scope"]["subscriptions"][0]["name"]
        assert name in scope

    def test_plan_in_scope_has_no_warning(self, world: World, cmk):
        """With the vaults in scope, plan has no scope warning and says what it covered."""
        run = cmk("plan", "--json")
        assert run.valid("plan")["warnings"] == [] and "warning" not in run.err
        run = cmk("plan")
        [scope] = [line for line in run.out.splitlines() if line.startswith("scope: ")]
        assert "3 subscription(s) of CMK_SUBSCRIPTIONS" in scope
        assert "kv-demo-weu.vault.azure.net" in scope

    def test_versions_refuses_a_vault_off_the_allowlist(self, world: World, cmk, monkeypatch):
        """versions honours CMK_VAULT_ALLOWLIST as every path does: exit 2, add it there."""
        monkeypatch.setenv("CMK_VAULT_ALLOWLIST", world.vault("kv-demo-weu").url)
        run = cmk("versions", world.key_id("kv-demo-neu", "ai-cmk"), "--json")
        error = run.valid("error")["error"]
        assert run.code == 2 and error["kind"] == "configuration"
        assert "not in CMK_VAULT_ALLOWLIST" in error["message"]


class TestRotateDryRun:
    def test_lists_the_accounts_and_the_checks(self, world: World, cmk):
        """rotate --dry-run names every bound account and the checks; never says rotated;
        creates nothing; exit 0."""
        key = world.vault("kv-demo-weu").keys["ai-cmk"]
        before = len(key.versions)
        accounts = world.accounts_on("kv-demo-weu", "ai-cmk")
        run = cmk("rotate", world.key_id("kv-demo-weu", "ai-cmk"), "--dry-run")
        assert run.code == 0, run.err
        assert len(key.versions) == before
        assert "rotated" not in run.out
        for account in accounts:
            assert account.name in run.out
        assert "wrapKey and unwrapKey" in run.out and "purge protection" in run.out
        assert f"move {len(accounts)} account(s)" in run.out

    def test_json_has_the_moves_and_checks(self, world: World, cmk, monkeypatch):
        """The JSON of a dry run has one move per bound account and the checks; it needs
        no storage."""
        monkeypatch.delenv("AzureWebJobsStorage")
        accounts = world.accounts_on("kv-demo-neu", "ai-cmk")
        run = cmk("rotate", world.key_id("kv-demo-neu", "ai-cmk"), "--dry-run", "-o", "json")
        document = run.valid("rotate")
        moves = document["rotation"]["moves"]
        assert run.code == 0 and document["rotation"]["dry_run"] is True
        assert sorted(m["account_id"].rsplit("/", 1)[-1] for m in moves) == sorted(
            a.name for a in accounts
        )
        assert {m["to_version"] for m in moves} == {"new"} and document["checks"]
        assert document["rotation"]["outcome"] == "would_rotate"
        assert document["summary"]["would_update"] == len(moves) == len(accounts)
        assert document["prediction"]["bindable"] is True
        assert document["prediction"]["failed_checks"] == []

    def test_predicts_a_rejection_the_real_run_meets(self, world: World, cmk, monkeypatch):
        """With CMK_ALLOWED_KEY_SIZES=4096 on a key of 2048-bit versions, the dry run
        judges the version a rotation would create (a copy of the newest: 2048 bits),
        reports key_size failing and exits 1, creating nothing; the real run is then
        rejected for the same reason."""
        monkeypatch.setenv("CMK_ALLOWED_KEY_SIZES", "4096")
        key_id = world.key_id("hsm-demo-weu", "ai-cmk-hsm")
        key = world.vault("hsm-demo-weu").keys["ai-cmk-hsm"]
        before = len(key.versions)
        run = cmk("rotate", key_id, "--dry-run")
        assert run.code == 1, run.err
        assert len(key.versions) == before
        assert "rotated" not in run.out
        [failed] = [line for line in run.out.splitlines() if "FAIL" in line]
        assert "CMK_ALLOWED_KEY_SIZES (4096)" in failed and "2048 bits" in failed
        assert "fails key_size and is rejected: no account would move" in run.out
        document = cmk("rotate", key_id, "--dry-run", "-o", "json").valid("rotate")
        assert document["exit_code"] == 1
        assert document["rotation"]["outcome"] == "would_be_rejected"
        assert document["rotation"]["moves"] == [] and document["summary"]["would_update"] == 0
        assert document["prediction"]["size"] == 2048
        assert [c.split(":")[0] for c in document["prediction"]["failed_checks"]] == ["key_size"]
        real = cmk("rotate", key_id, "--json").valid("rotate")
        assert real["rotation"]["outcome"] == "version_rejected"
        assert "key_size" in real["rotation"]["detail"]


class TestAzureCliConventions:
    def test_tsv_is_rows_without_headers(self, world: World, cmk):
        """-o tsv prints one tab-separated line per account and nothing else."""
        status = cmk("status", "--json").json
        run = cmk("status", "-o", "tsv")
        lines = run.out.splitlines()
        assert len(lines) == len(status["accounts"])
        ids = {line.split("\t")[0] for line in lines}
        assert ids == {a["account_id"] for a in status["accounts"]}

    def test_query_picks_from_the_json_document(self, world: World, cmk):
        """--query applies JMESPath to the JSON document; its result is JSON by default,
        one line per value with -o tsv, and a table with -o table."""
        status = cmk("status", "--json").json
        ids = sorted(a["account_id"] for a in status["accounts"])
        query = "sort(accounts[].account_id)"
        assert cmk("status", "--query", query).json == ids
        assert cmk("status", "--query", query, "-o", "tsv").out.splitlines() == ids
        count = cmk("status", "--query", "length(accounts)", "-o", "tsv")
        assert count.code == 0 and count.out == f"{len(ids)}\n"
        rows = cmk("status", "--query", "accounts[].{id: account_id}", "-o", "table").out
        assert rows.splitlines()[1:2] and all(i.rsplit("/", 1)[-1][:6] in rows for i in ids)

    def test_query_tables_are_laid_out_as_az_does(self, world: World, cmk):
        """--query ... -o table: a list of lists has columns Column1, Column2; a scalar is
        a one-cell table headed Result; an object's list values are left out."""
        document = cmk("status", "--json").json
        pairs = cmk("status", "--query", "accounts[].[account_id, state]", "-o", "table")
        header = pairs.out.splitlines()[1]
        assert "Column1" in header and "Column2" in header and "Result" not in header
        assert all(a["state"] in pairs.out for a in document["accounts"])
        count = cmk("status", "--query", "length(accounts)", "-o", "table")
        lines = count.out.splitlines()
        assert "Result" in lines[1] and str(len(document["accounts"])) in lines[3]
        scope = cmk("status", "--query", "scope", "-o", "table").out.splitlines()[1]
        assert "source" in scope and "subscriptions" not in scope and "vaults" not in scope

    def test_documented_queries_work(self, world: World, cmk):
        """The --query examples of docs/cli.md pick what they say from the documents."""
        world.new_version("kv-demo-weu", "ai-cmk")  # its accounts are stale now
        status = cmk("status", "--json").json
        stale = [a["account_id"] for a in status["accounts"] if a["state"] == "stale"]
        run = cmk("status", "--query", "accounts[?state=='stale'].account_id", "-o", "tsv")
        assert stale and run.out.splitlines() == stale
        moves = cmk("plan", "--json").json["plan"]["moves"]
        assert cmk("plan", "--query", "length(plan.moves)").json == len(moves)
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        versions = cmk("versions", key_id, "--json").json["key"]["versions"]
        safe = cmk("versions", key_id, "--query", "key.versions[?safe_to_disable].version")
        assert safe.json == [v["version"] for v in versions if v["safe_to_disable"]]

    def test_invalid_query_is_a_usage_error(self, cmk):
        """A --query that is not JMESPath: exit 2 with az's words, nothing run."""
        run = cmk("status", "--query", "accounts[?")
        assert run.code == 2 and "Invalid jmespath query supplied for `--query`" in run.err
        assert run.out == ""

    @pytest.mark.parametrize(
        ("query", "reason"),
        [("foo(bar)", "Unknown function: foo()"), ("length(a, b)", "length() takes exactly 1")],
    )
    def test_unknown_function_is_refused_before_any_work(self, world: World, cmk, query, reason):
        """A function JMESPath does not have (or a wrong count of arguments) is refused when
        the query is parsed: exit 2 with az's words, and rotate creates no version."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        before = len(key.versions)
        for argv in (["status"], ["rotate", world.key_id("kv-demo-neu", "ai-cmk")]):
            run = cmk(*argv, "--query", query)
            assert run.code == 2 and run.out == "", run.err
            line = f"Invalid jmespath query supplied for `--query`: {reason}"
            assert line in run.err and "argument --query: Invalid" not in run.err
            assert "Traceback" not in run.err and "UnknownFunctionError" not in run.err
        assert len(key.versions) == before

    def test_query_failing_on_the_result_keeps_the_result(self, world: World, cmk):
        """A query that fails only on the document (floor of a string) after rotate really
        rotated: stderr says it could not be applied and why, stdout has the whole
        document, and the exit code is rotate's own (0)."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        before = len(key.versions)
        argv = ["rotate", world.key_id("kv-demo-neu", "ai-cmk")]
        run = cmk(*argv, "--query", "rotation.key_id | floor(@)", "-o", "tsv")
        assert run.code == 0, run.err
        assert len(key.versions) == before + 1
        assert "cmk: warning: --query could not be applied: In function floor()" in run.err
        document = run.valid("rotate")
        assert document["summary"]["succeeded"] == 10 and document["exit_code"] == 0
        assert document["rotation"]["created_version"] == key.versions[-1].version

    def test_query_leaves_errors_on_stderr(self, world: World, cmk):
        """With --query, an error is a message on stderr and nothing on stdout."""
        run = cmk("versions", TYPOS[0], "--query", "versions")
        assert run.code == 2 and "invalid key id" in run.err and run.out == ""

    def test_global_options_before_the_command_apply_to_it(self, world: World, cmk):
        """-o/--output, --json, --query and -v before the command apply to it, as az's do;
        one given after the command wins."""
        document = cmk("status", "--json").json
        assert cmk("-o", "json", "status").json == document
        assert cmk("--output=json", "status").json == document
        assert cmk("--json", "status").json == document
        ids = [a["account_id"] for a in document["accounts"]]
        run = cmk("--query", "accounts[].account_id", "-o", "tsv", "status")
        assert run.code == document["exit_code"] and run.out.splitlines() == ids
        assert cmk("-o", "json", "status", "-o", "tsv").out.splitlines()[0].startswith(ids[0])
        assert "INFO " in cmk("-v", "status", "--json").err

    def test_global_options_keep_their_checks(self, cmk):
        """Before the command, a bad query or format is refused as after it (exit 2), and
        an option the command does not take is named."""
        bad = cmk("--query", "foo(x)", "status")
        assert bad.code == 2 and "Unknown function: foo()" in bad.err
        assert cmk("-o", "yaml", "status").code == 2
        conflict = cmk("-o", "tsv", "--json", "status")
        assert conflict.code == 2 and "--json is --output json" in conflict.err
        sandbox = cmk("-o", "json", "sandbox", "up")
        assert sandbox.code == 2 and "--output is not an option of cmk sandbox up" in sandbox.err

    def test_json_and_another_output_conflict(self, cmk):
        """--json with -o tsv is a usage error: exit 2."""
        run = cmk("status", "--json", "-o", "tsv")
        assert run.code == 2 and "--json is --output json" in run.err

    def test_version(self, cmk, capsys):
        """--version prints the package version and exits 0."""
        run = cmk("--version")
        assert run.code == 0 and run.out.startswith("cmk ")

    def test_help_has_no_rest_markup(self):
        """No help text shows reST (``x``, :mod:`x`); every command lists the exit codes."""
        parser = build_parser()
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for name, command in sub.choices.items():
            text = command.format_help()
            assert "``" not in text and ":mod:" not in text and ":func:" not in text, name
            assert "exit" in text.lower(), name

    @pytest.mark.parametrize(
        ("count", "reason"),
        [("0", "not 0"), ("-1", "not -1"), ("1000", "not 1000"), ("two", "whole number")],
    )
    @pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
    def test_demo_instances_out_of_range_is_refused(self, cmk, count, reason, as_json):
        """demo --instances 0, -1, 1000 or not a number: exit 2 with the range, before
        anything starts (as sandbox up --instances), the error document with --json."""
        run = cmk("demo", "--instances", count, *(["--json"] if as_json else []))
        assert run.code == 2
        assert "argument --instances: must be" in run.err and reason in run.err
        assert "from 1 to 8" in run.err or "whole number" in run.err
        if as_json:
            assert run.valid("error")["error"]["kind"] == "usage"
        else:
            assert run.out == ""

    def test_history_limit_below_one_is_refused(self, cmk):
        """history --limit -3: exit 2."""
        run = cmk("history", "--limit", "-3")
        assert run.code == 2 and "must be 1 or more" in run.err

    def test_history_takes_group_and_name(self, world: World, cmk):
        """history --account rg/name finds the account's rows, as the tables name it."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk-exp")
        assert cmk("rotate", key_id).code == 0
        account = world.accounts_on("kv-demo-weu", "ai-cmk-exp")[0]
        short = f"{account.resource_id.split('/')[4]}/{account.name}"
        run = cmk("history", "--account", short, "--json")
        [entry] = run.valid("history")["entries"]
        assert entry["account_id"].lower() == account.resource_id.lower()

    def test_disable_without_yes_is_a_usage_error(self, world: World, cmk):
        """disable without --yes changes nothing and exits 2."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        run = cmk("disable", account.resource_id)
        assert run.code == 2 and "--yes" in run.err
        assert account.encryption.key_source == "Microsoft.KeyVault"

    def test_disable_dry_run_shows_the_plan(self, world: World, cmk):
        """disable --yes --dry-run says what it would do, writes nothing, exits 0."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        run = cmk("disable", account.resource_id, "--yes", "--dry-run")
        assert run.code == 0, run.err
        assert "would take the account off" in run.out and "refused" not in run.out
        assert account.encryption.key_source == "Microsoft.KeyVault"

    def test_truncated_replay_file_names_line_and_column(self, world: World, cmk, tmp_path):
        """A truncated event file: exit 2 naming the line and column."""
        path = Path(tmp_path) / "dead.json"
        path.write_text(json.dumps([{"id": "1", "eventType": "x"}], indent=2)[:-8])
        run = cmk("replay", str(path))
        assert run.code == 2 and "line 4 column" in run.err
