"""docs/lifecycle.md's walkthrough on the built-in sandbox world, as the docs tell it: the
identity ``az login --identity`` gets (the world's app principal) runs the role assignment
``cmk enable`` prints, through ARM as ``az role assignment create`` sends it, and the flow
finishes; the same identity may grant no role but the Key Vault data roles."""

from __future__ import annotations

import json
import logging
import shlex
import uuid
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import DefaultAzureCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters

from cmk.cli import main
from cmk.commands import session
from cmk.sandbox.core import Sandbox
from cmk.sandbox.scenario.loader import example_path

VAULT = "https://kv-cmk-weu.vault.azure.net"
KEY, NEAR_EXPIRY_KEY = f"{VAULT}/keys/ai-cmk", f"{VAULT}/keys/ai-cmk-dev"
MMK, BOUND = "rg-ai-dev/ai-dev-mmk-01", "rg-ai-dev/ai-dev-01"
KEY_ACCESS = "identity has get, wrapKey, unwrapKey"


@pytest.fixture
def example(sandbox: Sandbox, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """The sandbox seeded with the built-in example world; the CLI's settings for it (its
    allow-list and subscriptions, a queue and table of their own on Azurite); the CLI's
    log handler is taken off again afterwards (it would write to a closed capture stream)."""
    sandbox.seed(example_path())
    suffix = uuid.uuid4().hex[:10]
    settings = {
        **sandbox.settings_env(),
        "CMK_JOB_QUEUE": f"jobs-{suffix}",
        "CMK_LEDGER_TABLE": f"ledger{suffix}",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    yield sandbox
    for name in ("cmk", "azure"):
        logging.getLogger(name).removeHandler(session._HANDLER)
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("cmk.alerts").setLevel(logging.NOTSET)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _failed(document: dict[str, object]) -> dict[str, str]:
    """Each failed requirement of a refused enable or switch, with its fix."""
    rows = [r for r in _requirements(document) if r.get("holds") is False]
    return {str(r["name"]): str(r.get("fix") or "") for r in rows}


def _requirements(node: object) -> list[dict[str, object]]:
    if isinstance(node, dict):
        if "requirements" in node and isinstance(node["requirements"], list):
            return [r for r in node["requirements"] if isinstance(r, dict)]
        return [r for value in node.values() for r in _requirements(value)]
    if isinstance(node, list):
        return [r for value in node for r in _requirements(value)]
    return []


def _az_role_assignment_create(sandbox: Sandbox, command: str) -> None:
    """What ``az role assignment create --role NAME --assignee-object-id P
    --assignee-principal-type T --scope S`` sends, as the signed-in managed identity: the
    role's definition looked up by name at the scope, then RoleAssignments_Create."""
    argv = shlex.split(command)
    assert argv[:4] == ["az", "role", "assignment", "create"], command
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    scope = options["--scope"]
    subscription = scope.split("/")[2]
    with AuthorizationManagementClient(DefaultAzureCredential(), subscription) as client:
        role_name = options["--role"]
        found = list(client.role_definitions.list(scope, filter=f"roleName eq '{role_name}'"))
        assert len(found) == 1, f"no role named {role_name!r}"
        client.role_assignments.create(
            scope,
            str(uuid.uuid4()),
            RoleAssignmentCreateParameters(
                role_definition_id=str(found[0].id),
                principal_id=options["--assignee-object-id"],
                principal_type=options["--assignee-principal-type"],
            ),
        )


class TestEnableOnTheExampleWorld:
    def test_enable_grant_enable_then_disable(
        self, example: Sandbox, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """ai-dev-mmk-01 (Microsoft-managed keys, no identity): enable creates the identity
        and is refused with the grant to run; the signed-in identity runs it (it holds Key
        Vault Data Access Administrator on the vault); enable again binds; disable --yes
        returns it to Microsoft-managed keys."""
        code, refused = _run(capsys, "enable", MMK, "--key", KEY)
        assert code == 1, refused
        fixes = _failed(refused)
        assert list(fixes) == [KEY_ACCESS], refused
        _az_role_assignment_create(example, fixes[KEY_ACCESS])
        code, done = _run(capsys, "enable", MMK, "--key", KEY)
        assert code == 0 and done["change"]["outcome"] == "done", done  # type: ignore[index]
        code, disabled = _run(capsys, "disable", MMK, "--yes")
        assert code == 0, disabled

    def test_switch_to_the_near_expiry_key_is_refused_and_back_succeeds(
        self, example: Sandbox, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """kv-cmk-weu's ai-cmk-dev expires within the 30-day margin: switching an enabled
        account to it is refused for that; ai-dev-01, bound to it, switches to ai-cmk once
        the grant the switch prints has been run."""
        code, refused = _run(capsys, "enable", MMK, "--key", KEY)
        _az_role_assignment_create(example, _failed(refused)[KEY_ACCESS])
        assert _run(capsys, "enable", MMK, "--key", KEY)[0] == 0
        code, near = _run(capsys, "switch", MMK, "--key", NEAR_EXPIRY_KEY)
        assert code == 1 and "key not expired (exp)" in _failed(near), near

        code, refused = _run(capsys, "switch", BOUND, "--key", KEY)
        assert code == 1 and list(_failed(refused)) == [KEY_ACCESS], refused
        _az_role_assignment_create(example, _failed(refused)[KEY_ACCESS])
        code, done = _run(capsys, "switch", BOUND, "--key", KEY)
        assert code == 0 and done["change"]["outcome"] == "done", done  # type: ignore[index]

    def test_the_signed_in_identity_may_grant_key_vault_data_roles_only(
        self, example: Sandbox
    ) -> None:
        """Key Vault Data Access Administrator's condition: the same grant with Reader or
        Owner instead is 403 AuthorizationFailed and nothing is granted."""
        vault = next(v for v in example.world.vaults.values() if v.name == "kv-cmk-weu")
        before = len(example.world.role_assignments)
        for role in ("Reader", "Owner"):
            with pytest.raises(HttpResponseError) as caught:
                _az_role_assignment_create(
                    example,
                    f'az role assignment create --role "{role}" --assignee-object-id'
                    f" {example.app_principal.object_id} --assignee-principal-type"
                    f" ServicePrincipal --scope {vault.resource_id}",
                )
            assert caught.value.status_code == 403
            assert "ABAC condition not fulfilled" in str(caught.value.message)
        assert len(example.world.role_assignments) == before
