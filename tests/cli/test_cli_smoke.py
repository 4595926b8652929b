"""``cmk smoke`` against the sandbox and Azurite: every check of a sound deployment is ok,
and each thing a deployment can miss (a role, a queue, the table, a subscription, a setting)
is the failed row that names it, with its fix."""

from __future__ import annotations

import asyncio
import os

import pytest
from azure.data.tables.aio import TableServiceClient
from azure.storage.queue.aio import QueueServiceClient
from cli_rig import World

#: The actions of infra's custom account operator role (infra/app/rbac-subscription.bicep).
OPERATOR_ACTIONS = (
    "Microsoft.CognitiveServices/accounts/read",
    "Microsoft.CognitiveServices/accounts/write",
    "Microsoft.CognitiveServices/locations/operationResults/read",
    "Microsoft.Resources/subscriptions/read",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
)


async def _create_storage(connection_string: str, queues: list[str], table: str) -> None:
    async with QueueServiceClient.from_connection_string(connection_string) as service:
        for name in queues:
            await service.create_queue(name)
    async with TableServiceClient.from_connection_string(connection_string) as service:
        await service.create_table(table)


@pytest.fixture
def deployed(world: World, azurite: str) -> World:
    """The demo world as infra deploys it: the queues and the ledger table exist, and the app
    holds the account operator role on every managed subscription (the demo world gives it
    only Reader on `platform`, which holds the vaults)."""
    job_queue = os.environ["CMK_JOB_QUEUE"]
    queues = [job_queue, f"{job_queue}-poison", f"{job_queue}-ops"]
    asyncio.run(_create_storage(azurite, queues, os.environ["CMK_LEDGER_TABLE"]))
    state = world.sandbox.world
    role = state.define_role("CMK rotator account operator (test)", OPERATOR_ACTIONS)
    for subscription in state.subscriptions:
        state.grant(world.sandbox.app_principal.object_id, f"/subscriptions/{subscription}", role)
    return world


def _rows(document: dict) -> dict[str, dict]:
    return {row["check"]: row for row in document["checks"]}


class TestSmoke:
    def test_a_sound_deployment_is_all_ok(self, deployed: World, cmk):
        """Every check of the deployed demo world is ok (the HSM's key grants unverified);
        exit 0, the caller named by its token's object id."""
        run = cmk("smoke", "--json")
        document = run.valid("smoke")
        assert run.code == 0, run.out
        rows = _rows(document)
        assert list(rows) == [
            "settings",
            "identity",
            "subscriptions",
            "account rights",
            "key rights",
            "storage",
            "alert topic",
        ]
        assert all(r["result"] == "ok" for n, r in rows.items() if n != "key rights"), rows
        assert rows["key rights"]["result"] == "unverified"
        assert "Managed HSM" in rows["key rights"]["found"]
        principal = deployed.sandbox.app_principal
        assert document["caller"]["object_id"] == principal.object_id.lower()
        assert principal.object_id.lower() in rows["identity"]["found"]
        assert "no event was published" in rows["alert topic"]["found"]

    def test_the_table_has_one_row_per_check(self, deployed: World, cmk):
        """The default output is a table with one row per check and a summary line."""
        run = cmk("smoke")
        assert run.code == 0, run.out
        for check in ("settings", "identity", "subscriptions", "account rights", "storage"):
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
