"""``cmk check / enable / switch / disable`` end to end: exit codes and JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from lifecycle_rig import Land, environ_for, settings_for

from cmk.cli import main
from cmk.commands import session
from cmk.sandbox.core import Sandbox


@pytest.fixture
def cli_land(sandbox: Sandbox, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Land]:
    """The land, with the CMK_* settings of the CLI in the environment; the CLI's log
    handler is taken off again afterwards (it would write to a closed capture stream)."""
    land = Land(sandbox, sandbox.world)
    for name, value in environ_for(settings_for(land, azurite)).items():
        monkeypatch.setenv(name, value)
    yield land
    for name in ("cmk", "azure"):
        logging.getLogger(name).removeHandler(session._HANDLER)
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("cmk.alerts").setLevel(logging.NOTSET)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


class TestLifecycleCli:
    def test_check_exits_1_and_names_the_failure(
        self, cli_land: Land, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An identity without access: exit 1, the requirement failed with its fix in JSON."""
        account = cli_land.account("ai-cli")
        code, doc = _run(
            capsys, "check", account.resource_id, "--key", cli_land.key_id(cli_land.kv), "--json"
        )
        assert code == 1 and doc["ok"] is False
        checks = doc["checks"]
        assert isinstance(checks, list)
        failed = [r for r in checks[0]["requirements"] if r["holds"] is False]
        assert [r["name"] for r in failed] == ["identity has get, wrapKey, unwrapKey"]
        assert "az role assignment create" in failed[0]["fix"]

    def test_enable_then_check_then_disable(
        self, cli_land: Land, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """enable by vault name and key name exits 0; check then holds; disable needs --yes (2)."""
        account = cli_land.account("ai-cli2")
        cli_land.grant(account, cli_land.kv)
        code, doc = _run(
            capsys,
            "enable",
            account.resource_id,
            "--vault",
            cli_land.kv.name,
            "--key-name",
            "cmk",
            "--json",
        )
        assert code == 0 and doc["change"]["outcome"] == "done"  # type: ignore[index]
        code, doc = _run(capsys, "check", account.resource_id, "--json")
        assert code == 0 and doc["ok"] is True
        code, doc = _run(capsys, "disable", account.resource_id, "--json")
        assert code == 2 and account.encryption.key_source == "Microsoft.KeyVault"
        code, doc = _run(capsys, "disable", account.resource_id, "--yes", "--json")
        assert code == 0 and account.encryption.key_source == "Microsoft.CognitiveServices"

    def test_check_needs_accounts_or_all(
        self, cli_land: Land, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Neither ACCOUNT_ID nor --all is a usage error (exit 2)."""
        assert main(["check", "--json"]) == 2
        capsys.readouterr()

    def test_human_output_shows_the_fix_and_refusal(
        self, cli_land: Land, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --json, enable prints the requirements table, the fix and the refusal."""
        account = cli_land.account("ai-cli3")
        key = cli_land.key_id(cli_land.kv)
        assert main(["enable", account.resource_id, "--key", key]) == 1
        out = capsys.readouterr().out
        assert "az role assignment create" in out and "refused" in out
        assert account.encryption.key_source == "Microsoft.CognitiveServices"
