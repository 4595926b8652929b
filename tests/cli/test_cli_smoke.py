"""``cmk smoke`` against the sandbox and Azurite: every check of a sound deployment is ok
(but the alert topic's right to send, which smoke cannot test without publishing, is
unverified), and each thing a deployment can miss (a role, a queue, the table, a
subscription, a setting, the app identity's own grants) is the failed row that names it,
with its fix; an operator holding exactly infra's operator roles gets every rights row
decided. The roles are read from infra/'s templates, not copied here."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any, cast

import pytest
from azure.data.tables.aio import TableServiceClient
from azure.storage.queue.aio import QueueServiceClient
from cli_rig import World
from pycep import BicepParser

from cmk.sandbox.world import Principal, VaultKind

INFRA_APP = Path(__file__).resolve().parents[2] / "infra" / "app"


def _role_actions(template: str, variable: str) -> tuple[str, ...]:
    """The actions (or data actions) list ``variable`` of infra/app/``template``."""
    parsed = cast(dict[str, Any], BicepParser().parse(file_path=INFRA_APP / template))
    actions = parsed["variables"][variable]["value"]
    assert isinstance(actions, list) and actions, (template, variable)
    return tuple(str(action) for action in actions)


#: infra's custom account operator role (the app's and the operators', each subscription).
OPERATOR_ACTIONS = _role_actions("rbac-subscription.bicep", "accountOperatorActions")
#: infra's key rotator role (data actions, each vault).
KEY_ROTATOR_ACTIONS = _role_actions("rbac-vault.bicep", "keyRotatorDataActions")
#: infra's grant reader roles for operators (each subscription, each vault).
GRANT_READER_ACTIONS = _role_actions("rbac-subscription.bicep", "grantReaderActions")
VAULT_GRANT_READER_ACTIONS = _role_actions("rbac-vault.bicep", "vaultGrantReaderActions")

ROWS = [
    "settings",
    "identity",
    "subscriptions",
    "account rights",
    "key rights",
    "app account rights",
    "app key rights",
    "storage",
    "alert topic",
]


async def _create_storage(connection_string: str, queues: list[str], table: str) -> None:
    async with QueueServiceClient.from_connection_string(connection_string) as service:
        for name in queues:
            await service.create_queue(name)
    async with TableServiceClient.from_connection_string(connection_string) as service:
        await service.create_table(table)


@pytest.fixture
def deployed(world: World, azurite: str, monkeypatch: pytest.MonkeyPatch) -> World:
    """The demo world as infra deploys it: the queues and the ledger table exist, the app
    holds the account operator role on every managed subscription (the demo world gives it
    only Reader on `platform`, which holds the vaults), and CMK_APP_PRINCIPAL_ID names it."""
    job_queue = os.environ["CMK_JOB_QUEUE"]
    queues = [job_queue, f"{job_queue}-poison", f"{job_queue}-ops"]
    asyncio.run(_create_storage(azurite, queues, os.environ["CMK_LEDGER_TABLE"]))
    state = world.sandbox.world
    role = state.define_role("CMK rotator account operator (test)", OPERATOR_ACTIONS)
    for subscription in state.subscriptions:
        state.grant(world.sandbox.app_principal.object_id, f"/subscriptions/{subscription}", role)
    monkeypatch.setenv("CMK_APP_PRINCIPAL_ID", world.sandbox.app_principal.object_id)
    return world


@pytest.fixture
def operator(deployed: World, monkeypatch: pytest.MonkeyPatch) -> Principal:
    """An operator signed in as its own identity, holding exactly infra's operator roles: the
    account operator and grant reader roles on every subscription, the key rotator and vault
    grant reader roles on every Key Vault, and the key role on the Managed HSM as its docs
    say to grant it by hand (the storage is Azurite's, by connection string)."""
    sandbox = deployed.sandbox
    state = sandbox.world
    person = Principal.new("cmk-operator", sandbox.tenant_id)
    sandbox.add_host_identity("operator", person)
    account = state.define_role("account operator (operator)", OPERATOR_ACTIONS)
    reader = state.define_role("grant reader (operator)", GRANT_READER_ACTIONS)
    keys = state.define_role("key rotator (operator)", KEY_ROTATOR_ACTIONS)
    vault_reader = state.define_role("vault grant reader (operator)", VAULT_GRANT_READER_ACTIONS)
    for subscription in state.subscriptions:
        for role in (account, reader):
            state.grant(person.object_id, f"/subscriptions/{subscription}", role)
    for vault in state.vaults.values():
        # A Managed HSM's key role is granted by hand in its local RBAC (docs/deployment.md)
        state.grant(person.object_id, vault.resource_id, keys)
        if vault.kind is VaultKind.VAULT:
            state.grant(person.object_id, vault.resource_id, vault_reader)
    monkeypatch.setenv("IDENTITY_HEADER", sandbox.env("operator")["IDENTITY_HEADER"])
    return person


def _rows(document: dict) -> dict[str, dict]:
    return {row["check"]: row for row in document["checks"]}


class TestSmoke:
    def test_a_sound_deployment_is_all_ok(self, deployed: World, cmk):
        """Every check of the deployed demo world is ok but what smoke cannot see: the HSM's
        key grants and the alert topic's right to send are unverified; exit 0, the caller
        named by its token's object id."""
        run = cmk("smoke", "--json")
        document = run.valid("smoke")
        assert run.code == 0, run.out
        rows = _rows(document)
        assert list(rows) == ROWS
        unseen = {"key rights", "app key rights", "alert topic"}
        assert all(r["result"] == "ok" for n, r in rows.items() if n not in unseen), rows
        for name in ("key rights", "app key rights"):
            assert rows[name]["result"] == "unverified"
            assert "Managed HSM" in rows[name]["found"]
        principal = deployed.sandbox.app_principal
        assert document["caller"]["object_id"] == principal.object_id.lower()
        assert principal.object_id.lower() in rows["identity"]["found"]
        assert rows["alert topic"]["result"] == "unverified"

    def test_the_alert_topics_right_to_send_is_unverified(self, deployed: World, cmk):
        """A token for Event Grid proves no right to send to the topic, and smoke publishes
        nothing: the row is unverified (not ok), says so, and names the check to make by hand;
        the table shows the same; an unverified row is no failure (exit 0)."""
        run = cmk("smoke", "--json")
        row = _rows(run.valid("smoke"))["alert topic"]
        assert run.code == 0, run.out
        assert row["result"] == "unverified"
        assert os.environ["CMK_ALERT_TOPIC_ENDPOINT"] in row["found"]
        assert "a token for https://eventgrid.azure.net/.default was acquired" in row["found"]
        assert "not tested" in row["found"] and "EventGrid Data Sender" in row["found"]
        assert "az role assignment list" in row["fix"] and '"EventGrid Data Sender"' in row["fix"]
        table = cmk("smoke")
        assert table.code == 0, table.out
        line = next(
            text for text in table.out.splitlines() if text.lstrip("│ ").startswith("alert topic")
        )
        assert "unverified" in line and " ok " not in line

    def test_without_a_topic_the_alert_row_is_ok(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """Without CMK_ALERT_TOPIC_ENDPOINT alerts are only logged: nothing to send to, the
        row is ok and says so."""
        monkeypatch.delenv("CMK_ALERT_TOPIC_ENDPOINT")
        row = _rows(cmk("smoke", "--json").valid("smoke"))["alert topic"]
        assert row["result"] == "ok"
        assert "CMK_ALERT_TOPIC_ENDPOINT not set" in row["found"]

    def test_the_table_has_one_row_per_check(self, deployed: World, cmk):
        """The default output is a table with one row per check and a summary line."""
        run = cmk("smoke")
        assert run.code == 0, run.out
        for check in ROWS:
            assert check in run.out
        assert "nothing written, no event published" in run.out

    def test_a_role_without_accounts_write_fails_account_rights(self, deployed: World, cmk):
        """With a role lacking accounts/write on a subscription, the account rights row fails
        and its fix grants the missing action at that subscription; exit 1."""
        state = deployed.sandbox.world
        principal = deployed.sandbox.app_principal.object_id
        subscription = sorted(state.subscriptions)[1]
        scope = f"/subscriptions/{subscription}"
        state.revoke(principal, scope)
        actions = [a for a in OPERATOR_ACTIONS if not a.endswith("accounts/write")]
        state.grant(principal, scope, state.define_role("no write", actions))
        state.grant(principal, scope, "Reader")  # reads role assignments; writes nothing
        run = cmk("smoke", "--json")
        rows = _rows(run.valid("smoke"))
        assert run.code == 1
        account = rows["account rights"]
        assert account["result"] == "failed"
        assert "Microsoft.CognitiveServices/accounts/write" in account["found"]
        assert "accounts/write" in account["fix"] and f"--scope {scope}" in account["fix"]
        assert rows["storage"]["result"] == "ok"

    def test_every_failed_fix_is_printed_whole_below_the_table(self, deployed: World, cmk):
        """The table cuts a long fix to fit; each failed check's fix is printed in full
        below it (as `cmk check` does), and only for failed checks."""
        state = deployed.sandbox.world
        principal = deployed.sandbox.app_principal.object_id
        subscription = sorted(state.subscriptions)[1]
        scope = f"/subscriptions/{subscription}"
        state.revoke(principal, scope)
        actions = [a for a in OPERATOR_ACTIONS if not a.endswith("accounts/write")]
        state.grant(principal, scope, state.define_role("no write", actions))
        state.grant(principal, scope, "Reader")
        rows = _rows(cmk("smoke", "--json").json)
        fix = rows["account rights"]["fix"]
        assert len(fix) > 80
        run = cmk("smoke")
        assert run.code == 1
        failed = [(name, row["fix"]) for name, row in rows.items() if row["result"] == "failed"]
        for name, whole in failed:
            assert f"  {name} — fix: {whole}\n" in run.out
        assert run.out.count(" — fix: ") == len(failed)  # ok and unverified rows have none

    def test_unreadable_role_assignments_are_unverified(self, deployed: World, cmk):
        """Without Microsoft.Authorization/roleAssignments/read at a subscription (infra's
        account operator role lacks it) the rights there are unverified, not failed: exit 0."""
        state = deployed.sandbox.world
        principal = deployed.sandbox.app_principal.object_id
        scope = f"/subscriptions/{sorted(state.subscriptions)[1]}"
        state.revoke(principal, scope)
        state.grant(principal, scope, state.define_role("operator only", OPERATOR_ACTIONS))
        run = cmk("smoke", "--json")
        account = _rows(run.valid("smoke"))["account rights"]
        assert run.code == 0
        assert account["result"] == "unverified"
        assert "roleAssignments/read" in account["found"]

    def test_an_operator_with_the_template_roles_decides_every_rights_row(
        self, deployed: World, operator: Principal, cmk
    ):
        """Signed in as an operator holding only infra's operator roles, the rights rows are
        decided, not unverified: the operator's own and the app's, read from the role
        assignments; only the Managed HSM (local RBAC, not in ARM) stays unverified; exit 0."""
        run = cmk("smoke", "--json")
        document = run.valid("smoke")
        rows = _rows(document)
        assert run.code == 0, run.out
        assert document["caller"]["object_id"] == operator.object_id.lower()
        assert rows["account rights"]["result"] == "ok", rows["account rights"]
        assert rows["app account rights"]["result"] == "ok", rows["app account rights"]
        app = deployed.sandbox.app_principal.object_id.lower()
        assert rows["app account rights"]["found"].startswith(f"app {app}: ")
        state = deployed.sandbox.world
        key_vaults = sorted(v.name for v in state.vaults.values() if v.kind is VaultKind.VAULT)
        decided = {
            "key rights": r"(kv-[\w-]+): keys listed \(\d+\+?\); create, rotate via",
            "app key rights": r"(kv-[\w-]+): read, create, rotate via",
        }
        for name, pattern in decided.items():
            found = rows[name]["found"]
            assert rows[name]["result"] == "unverified", found  # the Managed HSM only
            assert sorted(re.findall(pattern, found)) == key_vaults, found
            assert "missing" not in found and "hsm-demo-weu" in found, found

    def test_the_app_without_its_account_role_fails_its_own_row(
        self, deployed: World, operator: Principal, cmk
    ):
        """The app's identity lacking the account operator role on one subscription fails the
        app account rights row, naming the subscription, with the fix for the app's
        principal; the operator's own row stays ok; exit 1."""
        state = deployed.sandbox.world
        app = deployed.sandbox.app_principal.object_id
        subscription = sorted(state.subscriptions)[1]
        state.revoke(app, f"/subscriptions/{subscription}")
        run = cmk("smoke", "--json")
        rows = _rows(run.valid("smoke"))
        assert run.code == 1
        assert rows["account rights"]["result"] == "ok"
        row = rows["app account rights"]
        assert row["result"] == "failed"
        assert f"{subscription}: missing" in row["found"]
        assert "Microsoft.CognitiveServices/accounts/write" in row["found"]
        assert f"--assignee-object-id {app.lower()}" in row["fix"]
        assert f"--scope /subscriptions/{subscription}" in row["fix"]

    def test_without_the_grant_reader_the_app_rows_are_unverified(
        self, deployed: World, operator: Principal, cmk
    ):
        """An operator without the grant reader role on a subscription cannot see the app's
        grants there: unverified, naming the role that decides it; not a failure."""
        state = deployed.sandbox.world
        scope = f"/subscriptions/{sorted(state.subscriptions)[1]}"
        state.revoke(operator.object_id, scope)
        state.grant(operator.object_id, scope, "account operator (operator)")
        run = cmk("smoke", "--json")
        rows = _rows(run.valid("smoke"))
        assert run.code == 0, run.out
        for name in ("account rights", "app account rights"):
            assert rows[name]["result"] == "unverified"
            assert "grant reader" in rows[name]["found"]

    def test_without_the_app_principal_the_app_rows_are_unverified(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """With no CMK_APP_PRINCIPAL_ID and no --app-principal-id the app's rows say how to
        name it and are unverified (exit 0); the option names it."""
        monkeypatch.delenv("CMK_APP_PRINCIPAL_ID")
        run = cmk("smoke", "--json")
        rows = _rows(run.valid("smoke"))
        assert run.code == 0, run.out
        for name in ("app account rights", "app key rights"):
            assert rows[name]["result"] == "unverified"
            assert "CMK_APP_PRINCIPAL_ID" in rows[name]["found"]
        app = deployed.sandbox.app_principal.object_id
        named = _rows(cmk("smoke", "--json", "--app-principal-id", app).valid("smoke"))
        assert named["app account rights"]["result"] == "ok"

    def test_a_missing_ledger_table_fails_storage(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """A ledger table that does not exist is a failed storage row whose fix creates it;
        nothing is created; exit 1."""
        monkeypatch.setenv("CMK_LEDGER_TABLE", "ledgermissing")
        run = cmk("smoke", "--json")
        storage = _rows(run.valid("smoke"))["storage"]
        assert run.code == 1
        assert storage["result"] == "failed"
        assert "az storage table create --name ledgermissing" in storage["fix"]
        assert cmk("smoke", "--json").code == 1  # still missing: smoke wrote nothing

    def test_a_missing_job_queue_fails_storage(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """A job queue that does not exist (nor its poison and operations queues) fails the
        storage row with a fix per queue; exit 1."""
        monkeypatch.setenv("CMK_JOB_QUEUE", "jobs-missing")
        run = cmk("smoke", "--json")
        storage = _rows(run.valid("smoke"))["storage"]
        assert run.code == 1 and storage["result"] == "failed"
        for name in ("jobs-missing", "jobs-missing-poison", "jobs-missing-ops"):
            assert f"az storage queue create --name {name} " in storage["fix"]

    def test_missing_storage_by_connection_string_is_created_with_it(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """With AzureWebJobsStorage a connection string (Azurite's), the fix of a missing
        queue or table hands az that string, not `--auth-mode login`: a token is of no use
        to storage reached by its key."""
        monkeypatch.setenv("CMK_JOB_QUEUE", "jobs-missing")
        monkeypatch.setenv("CMK_LEDGER_TABLE", "ledgermissing")
        fix = _rows(cmk("smoke", "--json").valid("smoke"))["storage"]["fix"]
        for kind, name in (("queue", "jobs-missing-poison"), ("table", "ledgermissing")):
            assert (
                f'az storage {kind} create --name {name} --connection-string "$AzureWebJobsStorage"'
                in fix
            )
        assert "--auth-mode login" not in fix and "--account-name" not in fix

    def test_an_invisible_subscription_fails(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """A subscription of CMK_SUBSCRIPTIONS the identity cannot see is a failed row that
        names it; the visible ones are still checked; exit 1."""
        ghost = "00000000-0000-0000-0000-00000000dead"
        monkeypatch.setenv("CMK_SUBSCRIPTIONS", f"{os.environ['CMK_SUBSCRIPTIONS']},{ghost}")
        run = cmk("smoke", "--json")
        rows = _rows(run.valid("smoke"))
        assert run.code == 1
        assert rows["subscriptions"]["result"] == "failed"
        assert f"not visible: {ghost}" in rows["subscriptions"]["found"]
        assert f"--scope /subscriptions/{ghost}" in rows["subscriptions"]["fix"]
        assert rows["account rights"]["result"] == "ok"

    def test_invalid_settings_are_one_row_and_exit_2(
        self, deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
    ):
        """Every problem of the environment is in the settings row, the other checks are not
        run, and the exit code is 2 (a configuration error, as elsewhere)."""
        monkeypatch.setenv("CMK_MAX_CONCURRENCY", "many")
        monkeypatch.setenv("CMK_DRY_RUN", "maybe")
        run = cmk("smoke", "--json")
        document = run.valid("smoke")
        rows = _rows(document)
        assert run.code == 2 and document["exit_code"] == 2
        found = rows["settings"]["found"]
        assert "CMK_MAX_CONCURRENCY" in found and "CMK_DRY_RUN" in found
        assert {r["result"] for n, r in rows.items() if n != "settings"} == {"not_run"}
        assert document["caller"] is None


def test_no_token_stops_after_the_identity_row(
    deployed: World, cmk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential that gets no token (here a managed identity endpoint that refuses it)
    fails the identity row with the login hint; the checks that need it are not run."""
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-sandbox-secret")
    run = cmk("smoke", "--json")
    document = run.valid("smoke")
    assert run.code == 1, run.out
    rows = _rows(document)
    assert rows["settings"]["result"] == "ok"
    assert rows["identity"]["result"] == "failed" and "az login" in rows["identity"]["fix"]
    assert {rows[n]["result"] for n in list(rows)[2:]} == {"not_run"}
