"""``cmk smoke``: the post-deploy smoke test. With the deployed app's settings in the shell
and the caller's credential, it checks, in order, the settings, who the credential is, the
subscriptions in scope, the rights on accounts and on keys, the storage the app uses and
the alert topic, and prints one row per check with what it found and the fix. It writes
nothing and never publishes an event. The judgments are :mod:`cmk.smoke`'s; this module
reads Azure and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, cast
from urllib.parse import quote

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient
from rich.text import Text

from cmk.adapters._errors import azure_errors
from cmk.adapters.authorization import API_VERSION, RequestSender, within_scope
from cmk.adapters.inventory import ResourceGraphInventory
from cmk.commands.cells import short_account
from cmk.commands.errors import LOGIN_HINT
from cmk.commands.interrupt import Journal
from cmk.commands.output import Output, common_options, output_format, styled, table
from cmk.commands.session import configure_logging, fail, interrupted
from cmk.errors import AccessDenied, CmkError, ConfigurationError, NotFound
from cmk.keyid import KeyId
from cmk.lifecycle.model import VaultRecord
from cmk.lifecycle.services import LifecycleClients
from cmk.ports import AccountRecord
from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.smoke import (
    ACCOUNT_ACTIONS,
    CHECKS,
    KEY_ACTIONS,
    KEY_POLICY_PERMISSIONS,
    Caller,
    Check,
    Permission,
    Result,
    combined,
    decode_claims,
    exit_code,
    missing,
    not_run,
)
from cmk.wiring import Services

__all__ = ["add_parser"]

DOC = """`cmk smoke`: the post-deploy smoke test (docs/deployment.md). Run it with the deployed
app's settings loaded in the shell; it checks, with your credential: the settings; who you
are (the ARM token's oid, appid, tid); that each subscription in scope is visible; that your
role assignments on each grant accounts/read, accounts/write and
locations/operationResults/read, and that Resource Graph answers; that the keys of each vault
of CMK_VAULT_ALLOWLIST can be listed and your grants include keys/create and keys/rotate; that
the job queue, its poison queue, the operations queue and the ledger table answer; and that
an Event Grid token can be had for the alert topic. One row per check: ok, failed,
unverified (not decidable from what you may read; not a failure) or not_run. Writes nothing
and publishes no event. Exit 0 every check ok or unverified, 1 one failed, 2 usage or
invalid settings."""

#: The scope the Event Grid publisher asks tokens for (azure-eventgrid's default; the app
#: passes no other).
EVENT_GRID_SCOPE = "https://eventgrid.azure.net/.default"
_UNUSABLE_STATES = frozenset({"disabled", "deleted"})
_MAX_PAGES = 50
_SETTINGS_FIX = (
    "set the variables named (docs/configuration.md); load the deployed app's own with"
    " docs/deployment.md, Operating from your shell"
)


def add_parser(subparsers: Any) -> None:
    """Register ``cmk smoke``."""
    parser = subparsers.add_parser(
        "smoke",
        parents=[common_options()],
        help="post-deploy smoke test: settings, identity, rights, storage, alert topic",
        description=DOC,
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    output = Output(bool(args.json), output_format(args), args.query)
    configure_logging(bool(args.verbose))
    journal = Journal("smoke")
    try:
        try:
            settings = Settings.from_environ(os.environ, require_storage=True)
        except ConfigurationError as error:
            row = Check("settings", Result.FAILED, _one_line(str(error)), _SETTINGS_FIX)
            checks = [row, *not_run(CHECKS[1:], "the settings are invalid")]
            return _print(output, checks, None)
        with output.working("cmk smoke: checking the deployment"):
            checks, caller = asyncio.run(_smoke(settings))
        return _print(output, checks, caller)
    except KeyboardInterrupt:
        return interrupted(args, output, journal)
    except BrokenPipeError:
        raise
    except Exception as error:
        return fail(args, output, error)


def _one_line(text: str) -> str:
    lines = [line.strip().removeprefix("- ") for line in text.splitlines() if line.strip()]
    return lines[0] + (" " + "; ".join(lines[1:]) if lines[1:] else "") if lines else text


async def _smoke(settings: Settings) -> tuple[list[Check], Caller | None]:
    checks = [_settings(settings)]
    async with Runtime(settings) as runtime, LifecycleClients(runtime.services) as clients:
        services = runtime.services
        identity, caller = await _identity(services)
        checks.append(identity)
        if identity.result is Result.FAILED:
            checks += not_run(CHECKS[2:], "no token for the caller")
            return checks, caller
        subscriptions, in_scope, readable = await _subscriptions(settings, services, caller)
        checks.append(subscriptions)
        checks.append(await _account_rights(services, clients, caller, in_scope))
        vault_search = (*in_scope, *readable)
        checks.append(await _key_rights(settings, services, clients, caller, vault_search))
        checks.append(await _storage(settings, services, caller))
        checks.append(await _alert_topic(settings, services))
    return checks, caller


def _settings(settings: Settings) -> Check:
    storage = settings.require_storage()
    how = "a connection string" if not storage.uses_identity else "the identity (service URIs)"
    found = (
        f"read; {len(settings.subscriptions) or 'no'} subscription(s) in CMK_SUBSCRIPTIONS"
        f"{'' if settings.subscriptions else ' (every readable one)'},"
        f" {len(settings.vault_allowlist)} vault(s) in CMK_VAULT_ALLOWLIST, storage through"
        f" {how}, queue {settings.job_queue}, table {settings.ledger_table},"
        f" dry run {'on' if settings.dry_run else 'off'}"
    )
    if not settings.vault_allowlist:
        fix = "set CMK_VAULT_ALLOWLIST to the vault URLs, e.g. https://kv-cmk-prod.vault.azure.net"
        return Check("settings", Result.FAILED, f"{found}: no vault is rotated", fix)
    return Check("settings", Result.OK, found)


async def _identity(services: Services) -> tuple[Check, Caller | None]:
    scope = services.settings.cloud.endpoints.arm_scope
    try:
        token = await services.credential.get_token(scope)
    except Exception as error:  # any credential failure: not signed in, no identity
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        return Check("identity", Result.FAILED, f"no token for {scope}: {first}", LOGIN_HINT), None
    try:
        caller = Caller.from_claims(decode_claims(token.token))
    except ValueError as error:
        found = f"a token for {scope}, but who it names is unknown: {error}"
        return Check("identity", Result.UNVERIFIED, found), None
    return Check("identity", Result.OK, f"token for {scope}: {caller.describe()}"), caller


async def _subscriptions(
    settings: Settings, services: Services, caller: Caller | None
) -> tuple[Check, tuple[str, ...], tuple[str, ...]]:
    """The row, the subscriptions in scope that are visible, and every readable one."""
    configured = settings.subscriptions
    try:
        listed = await services.subscriptions.readable()
    except CmkError as error:
        found = f"cannot list the subscriptions the identity can read: {error}"
        return Check("subscriptions", Result.FAILED, found, LOGIN_HINT), configured, ()
    usable = {s.subscription_id: s for s in listed if s.state.lower() not in _UNUSABLE_STATES}
    if not configured:
        if not usable:
            found = "CMK_SUBSCRIPTIONS is unset and the identity can read no subscription"
            fix = "set CMK_SUBSCRIPTIONS, or " + _operator_role_fix(caller, "<subscription-id>")
            return Check("subscriptions", Result.FAILED, found, fix), (), ()
        names = ", ".join(f"{s.display_name} ({s.subscription_id})" for s in usable.values())
        found = f"CMK_SUBSCRIPTIONS unset: {len(usable)} readable subscription(s): {names}"
        return Check("subscriptions", Result.OK, found), tuple(usable), tuple(usable)
    visible = tuple(s for s in configured if s in usable)
    hidden = [s for s in configured if s not in usable]
    names = ", ".join(f"{usable[s].display_name} ({s})" for s in visible) or "none"
    found = f"{len(visible)} of {len(configured)} in CMK_SUBSCRIPTIONS visible: {names}"
    if not hidden:
        return Check("subscriptions", Result.OK, found), visible, tuple(usable)
    found += f"; not visible: {', '.join(hidden)}"
    fixes = [
        f"fix the id in CMK_SUBSCRIPTIONS, or {_operator_role_fix(caller, sub)}" for sub in hidden
    ]
    return Check("subscriptions", Result.FAILED, found, "; ".join(fixes)), visible, tuple(usable)


def _operator_grant(caller: Caller | None, subscription: str) -> str:
    """The grant of infra's account operator role (infra/app/rbac-subscription.bicep)."""
    who = caller.object_id if caller else "<object-id>"
    return (
        f'az role assignment create --assignee-object-id {who} --role "CMK rotator account'
        f' operator (<environment>, {subscription})" --scope /subscriptions/{subscription}'
    )


def _operator_role_fix(caller: Caller | None, subscription: str) -> str:
    return (
        "add it to the deployment's managed subscriptions and `azd provision`, or: "
        + _operator_grant(caller, subscription)
    )


def _short(action: str) -> str:
    return action.removeprefix("Microsoft.CognitiveServices/").removeprefix("Microsoft.KeyVault/")


async def _account_rights(
    services: Services, clients: LifecycleClients, caller: Caller | None, in_scope: tuple[str, ...]
) -> Check:
    if caller is None:
        return Check("account rights", Result.UNVERIFIED, "the caller's object id is unknown")
    if not in_scope:
        return not_run(["account rights"], "no subscription in scope is visible")[0]
    results: list[Result] = []
    found: list[str] = []
    fixes: list[str] = []
    for subscription in in_scope:
        scope = f"/subscriptions/{subscription}"
        try:
            permissions = await _control_permissions(
                clients.vaults.client(subscription), caller.object_id, scope
            )
        except AccessDenied:
            results.append(Result.UNVERIFIED)
            found.append(
                f"{subscription}: cannot read role assignments (needs"
                " Microsoft.Authorization/roleAssignments/read, e.g. Reader)"
            )
            continue
        gone = missing(ACCOUNT_ACTIONS, permissions)
        if not gone:
            roles = ", ".join(sorted({p.role_name for p in permissions if p.allowed}))
            results.append(Result.OK)
            found.append(f"{subscription}: accounts read/write, operationResults via {roles}")
            continue
        results.append(Result.UNVERIFIED if caller.delegated else Result.FAILED)
        group = " (none of your own assignments; a group's are not listed)"
        found.append(
            f"{subscription}: missing {', '.join(gone)}{group if caller.delegated else ''}"
        )
        fixes.append(f"grant {', '.join(gone)}: {_operator_grant(caller, subscription)}")
    graph = await _resource_graph(services, in_scope)
    results.append(graph.result)
    found.append(graph.found)
    if graph.fix:
        fixes.append(graph.fix)
    return Check("account rights", combined(results), "; ".join(found), "; ".join(fixes))


async def _resource_graph(services: Services, in_scope: tuple[str, ...]) -> Check:
    """One page (one row) of the CMK inventory query, without the ARM fallback."""
    inventory = ResourceGraphInventory(services.inventory.client, page_size=1)
    try:
        listing = cast(AsyncGenerator[AccountRecord, None], inventory.cmk_accounts(in_scope))
        async with aclosing(listing) as records:
            first = await anext(records, None)
    except CmkError as error:
        fix = "Resource Graph returns what the caller may read: grant accounts/read (above)"
        return Check("resource graph", Result.FAILED, f"Resource Graph: {error}", fix)
    if first is None:
        found = "Resource Graph answered: no CMK account in scope yet (`cmk status` warns)"
    else:
        found = f"Resource Graph answered (first CMK account {short_account(first.account_id)})"
    return Check("resource graph", Result.OK, found)


async def _control_permissions(
    sender: RequestSender, principal_id: str, scope: str
) -> list[Permission]:
    """The principal's role assignments at ``scope`` or above, with their roles' control-plane
    actions (:class:`cmk.adapters.authorization.RoleAssignments` reads data actions only)."""
    query = quote(f"principalId eq '{principal_id}'", safe="")
    url: str | None = (
        f"{scope}/providers/Microsoft.Authorization/roleAssignments"
        f"?$filter={query}&api-version={API_VERSION}"
    )
    assignments: list[dict[str, Any]] = []
    for _ in range(_MAX_PAGES):
        if url is None:
            break
        page = await _arm_get(sender, url, f"listing role assignments at {scope}")
        assignments += [a for a in page.get("value", []) if isinstance(a, dict)]
        next_link = page.get("nextLink")
        url = next_link if isinstance(next_link, str) and next_link else None
    definitions: dict[str, dict[str, Any]] = {}
    permissions = []
    for assignment in assignments:
        props = assignment.get("properties") or {}
        assigned_at = str(props.get("scope") or "")
        if str(props.get("principalId", "")).lower() != principal_id.lower():
            continue
        if not within_scope(scope, assigned_at):
            continue
        definition_id = str(props.get("roleDefinitionId") or "")
        if definition_id not in definitions:
            definitions[definition_id] = await _arm_get(
                sender, f"{definition_id}?api-version={API_VERSION}", "reading a role definition"
            )
        role = definitions[definition_id].get("properties") or {}
        allowed: list[str] = []
        denied: list[str] = []
        for entry in role.get("permissions") or []:
            allowed += [str(a) for a in entry.get("actions") or []]
            denied += [str(a) for a in entry.get("notActions") or []]
        name = str(role.get("roleName") or definition_id.rsplit("/", 1)[-1])
        conditional = bool(props.get("condition"))
        permissions.append(
            Permission(name, assigned_at, tuple(allowed), tuple(denied), conditional)
        )
    return permissions


async def _arm_get(sender: RequestSender, url: str, action: str) -> dict[str, Any]:
    with azure_errors(action):
        response = await sender.send_request(HttpRequest("GET", url))
        await response.read()
        if response.status_code >= 400:
            raise HttpResponseError(response=response)
        body = json.loads(response.text())
    return body if isinstance(body, dict) else {}


async def _key_rights(
    settings: Settings,
    services: Services,
    clients: LifecycleClients,
    caller: Caller | None,
    subscriptions: tuple[str, ...],
) -> Check:
    """Per vault of CMK_VAULT_ALLOWLIST (found in ``subscriptions``): list keys, read grants."""
    if not settings.vault_allowlist:
        return not_run(["key rights"], "CMK_VAULT_ALLOWLIST is empty")[0]
    parts = [
        await _vault_rights(services, clients, caller, url, subscriptions)
        for url in sorted(settings.vault_allowlist)
    ]
    return Check(
        "key rights",
        combined(p.result for p in parts),
        "; ".join(p.found for p in parts),
        "; ".join(p.fix for p in parts if p.fix),
    )


async def _vault_rights(
    services: Services,
    clients: LifecycleClients,
    caller: Caller | None,
    vault_url: str,
    subscriptions: tuple[str, ...],
) -> Check:
    name = vault_url.removeprefix("https://").split(".", 1)[0]
    try:
        listed = await _list_keys(services, vault_url)
    except CmkError as error:
        fix = f"fix {vault_url} in CMK_VAULT_ALLOWLIST" if isinstance(error, NotFound) else ""
        return Check(name, Result.FAILED, f"{name}: listing keys failed: {error}", fix)
    seen = f"{name}: keys listed ({listed}{'+' if listed >= _KEYS_PAGE else ''})"
    if caller is None:
        return Check(name, Result.UNVERIFIED, f"{seen}; the caller's object id is unknown")
    try:
        vault = await clients.vaults.find(KeyId(vault_url, "smoke"), subscriptions)
    except CmkError as error:
        return Check(name, Result.UNVERIFIED, f"{seen}; grants not read: {error}")
    if vault.is_managed_hsm:
        detail = "create/rotate unverified: a Managed HSM's local RBAC is not visible in ARM"
        return Check(name, Result.UNVERIFIED, f"{seen}; {detail}")
    try:
        gone, via = await _key_grants(clients, caller, vault)
    except AccessDenied as error:
        return Check(name, Result.UNVERIFIED, f"{seen}; grants not read: {error}")
    if not gone:
        return Check(name, Result.OK, f"{seen}; create, rotate via {via}")
    result = Result.UNVERIFIED if caller.delegated else Result.FAILED
    group = " (not in your own grants; a group's are not listed)" if caller.delegated else ""
    return Check(
        name, result, f"{seen}; missing {', '.join(gone)}{group}", _key_fix(vault, caller, gone)
    )


_KEYS_PAGE = 25


async def _list_keys(services: Services, vault_url: str) -> int:
    """How many keys the first page lists (at most :data:`_KEYS_PAGE`)."""
    count = 0
    with azure_errors(f"listing the keys of {vault_url}"):
        pages = services.keys.client(vault_url).list_properties_of_keys().by_page()
        async for page in pages:
            async for _ in page:
                count += 1
                if count >= _KEYS_PAGE:
                    break
            break
    return count


async def _key_grants(
    clients: LifecycleClients, caller: Caller, vault: VaultRecord
) -> tuple[tuple[str, ...], str]:
    """The rights missing on ``vault`` and what gives the others."""
    if vault.rbac_authorization:
        grants = await clients.roles.grants_for(caller.object_id, str(vault.vault_id))
        permissions = [Permission.of_data_actions(g) for g in grants]
        gone = tuple(_short(a) for a in missing(KEY_ACTIONS, permissions))
        roles = sorted({p.role_name for p in permissions if p.allowed})
        return gone, f"role(s) {', '.join(roles) or 'none'}"
    held: set[str] = set()
    for policy in vault.access_policies:
        if policy.object_id == caller.object_id and policy.tenant_id == vault.tenant_id:
            held |= {p.lower() for p in policy.key_permissions}
    gone = tuple(p for p in KEY_POLICY_PERMISSIONS if "all" not in held and p.lower() not in held)
    return gone, "its access policy"


def _key_fix(vault: VaultRecord, caller: Caller, gone: tuple[str, ...]) -> str:
    if not vault.rbac_authorization:
        permissions = " ".join(KEY_POLICY_PERMISSIONS)
        return (
            f"az keyvault set-policy --name {vault.vault_id.name} --object-id"
            f" {caller.object_id} --key-permissions {permissions}"
        )
    return (
        f"grant {', '.join(gone)}: az role assignment create --assignee-object-id"
        f' {caller.object_id} --role "CMK rotator key rotator (<environment>, <id>)" --scope'
        f" {vault.vault_id}  (the role infra/app/rbac-vault.bicep defines; `azd provision`)"
    )


@asynccontextmanager
async def _queue(settings: Settings, services: Services, name: str) -> AsyncIterator[QueueClient]:
    """A client of queue ``name`` of the app's storage, as :mod:`cmk.wiring` builds it."""
    storage = settings.require_storage()
    if storage.connection_string is not None:
        client = QueueClient.from_connection_string(storage.connection_string, name)
    else:
        assert storage.queue_service_uri is not None
        client = QueueClient(storage.queue_service_uri, name, credential=services.credential)
    async with client:
        yield client


async def _storage(settings: Settings, services: Services, caller: Caller | None) -> Check:
    queues = (settings.job_queue, f"{settings.job_queue}-poison", settings.operation_queue)
    parts = [await _queue_part(settings, services, caller, name) for name in queues]
    parts.append(await _table_part(services.ledger.client, caller))
    return Check(
        "storage",
        combined(p.result for p in parts),
        "; ".join(p.found for p in parts),
        "; ".join(p.fix for p in parts if p.fix),
    )


def _storage_fix(
    kind: str, name: str, account: str, caller: Caller | None, error: Exception
) -> str:
    if isinstance(error, NotFound):
        return (
            f"az storage {kind} create --name {name} --account-name {account} --auth-mode login"
            " (or `azd provision`: infra/app/storage.bicep creates it)"
        )
    if isinstance(error, AccessDenied):
        role = (
            "Storage Queue Data Contributor"
            if kind == "queue"
            else "Storage Table Data Contributor"
        )
        who = caller.object_id if caller else "<object-id>"
        return (
            f'az role assignment create --assignee-object-id {who} --role "{role}" --scope'
            f' "$(az storage account show --name {account} --query id -o tsv)"'
        )
    return ""


async def _queue_part(
    settings: Settings, services: Services, caller: Caller | None, name: str
) -> Check:
    async with _queue(settings, services, name) as client:
        try:
            with azure_errors(f"reading queue {name}"):
                properties = await client.get_queue_properties()
        except CmkError as error:
            fix = _storage_fix("queue", name, client.account_name or "<account>", caller, error)
            return Check(name, Result.FAILED, f"queue {name}: {_first_line(error)}", fix)
    count = properties.approximate_message_count or 0
    return Check(name, Result.OK, f"queue {name} answers ({count} message(s))")


async def _table_part(client: TableClient, caller: Caller | None) -> Check:
    name = client.table_name
    rows = 0
    try:
        with azure_errors(f"reading table {name}"):
            async for page in client.list_entities(results_per_page=1).by_page():
                async for _ in page:
                    rows += 1
                    break
                break
    except CmkError as error:
        fix = _storage_fix("table", name, client.account_name or "<account>", caller, error)
        return Check(name, Result.FAILED, f"table {name}: {_first_line(error)}", fix)
    return Check(name, Result.OK, f"table {name} answers ({'has rows' if rows else 'empty'})")


def _first_line(error: Exception) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


async def _alert_topic(settings: Settings, services: Services) -> Check:
    endpoint = settings.alert_topic_endpoint
    if endpoint is None:
        found = "CMK_ALERT_TOPIC_ENDPOINT not set: alerts are only logged (App Insights)"
        return Check("alert topic", Result.OK, found)
    try:
        await services.credential.get_token(EVENT_GRID_SCOPE)
    except Exception as error:  # any credential failure
        found = f"{endpoint}: no token for {EVENT_GRID_SCOPE}: {_first_line(error)}"
        return Check("alert topic", Result.FAILED, found, LOGIN_HINT)
    found = (
        f"{endpoint}: a token for {EVENT_GRID_SCOPE} was acquired; no event was published, so"
        " the right to send (EventGrid Data Sender on the topic) is not tested"
    )
    return Check("alert topic", Result.OK, found)


def _result_cell(result: Result) -> Text:
    if result is Result.UNVERIFIED:
        return Text(result.value, style="yellow")
    if result is Result.NOT_RUN:
        return Text(result.value, style="dim")
    return styled(result.value)


def _print(output: Output, checks: list[Check], caller: Caller | None) -> int:
    code = exit_code(checks)
    if output.json_mode:
        output.emit_json(
            {
                "checks": checks,
                "caller": caller,
                "ok": code == 0,
                "exit_code": code,
            }
        )
        return code
    rows = [(c.check, _result_cell(c.result), c.found, c.fix) for c in checks]
    output.print(table("cmk smoke", ("check", "result", "found", "fix"), rows))
    counts = {r: sum(1 for c in checks if c.result is r) for r in Result}
    summary = ", ".join(f"{n} {r.value}" for r, n in counts.items() if n)
    output.print(f"smoke: {len(checks)} check(s): {summary}; nothing written, no event published")
    return code
