"""The rights checks of ``cmk smoke``: the caller's rights on accounts (role assignments and
one Resource Graph page) and on the keys of each vault in scope."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import cast

from cmk.adapters._errors import azure_errors
from cmk.adapters.inventory import ResourceGraphInventory
from cmk.commands.cells import short_account
from cmk.errors import AccessDenied, CmkError, NotFound
from cmk.keyid import KeyId
from cmk.lifecycle.model import VaultRecord
from cmk.lifecycle.services import LifecycleClients
from cmk.ports import AccountRecord
from cmk.settings import Settings
from cmk.smoke import (
    ACCOUNT_ACTIONS,
    KEY_ACTIONS,
    KEY_POLICY_PERMISSIONS,
    Caller,
    Check,
    Result,
    combined,
    missing,
    not_run,
)
from cmk.wiring import Services


def _operator_grant(caller: Caller | None, subscription: str) -> str:
    """The grant of infra's account operator role (infra/app/rbac-subscription.bicep)."""
    who = caller.object_id if caller else "<object-id>"
    return (
        f'az role assignment create --assignee-object-id {who} --role "CMK rotator account'
        f' operator (<environment>, {subscription})" --scope /subscriptions/{subscription}'
    )


def operator_role_fix(caller: Caller | None, subscription: str) -> str:
    return (
        "add it to the deployment's managed subscriptions and `azd provision`, or: "
        + _operator_grant(caller, subscription)
    )


def _short(action: str) -> str:
    return action.removeprefix("Microsoft.CognitiveServices/").removeprefix("Microsoft.KeyVault/")


async def account_rights(
    services: Services, clients: LifecycleClients, caller: Caller | None, in_scope: tuple[str, ...]
) -> Check:
    """The caller's account role at each subscription in scope, and one Resource Graph page."""
    if caller is None:
        return Check("account rights", Result.UNVERIFIED, "the caller's object id is unknown")
    if not in_scope:
        return not_run(["account rights"], "no subscription in scope is visible")[0]
    grants = await _account_grants(clients, caller, in_scope)
    graph = await _resource_graph(services, in_scope)
    return Check(
        "account rights",
        combined((grants.result, graph.result)),
        "; ".join(found for found in (grants.found, graph.found) if found),
        "; ".join(fix for fix in (grants.fix, graph.fix) if fix),
    )


_NO_APP = (
    "the app's principal is unknown: export CMK_APP_PRINCIPAL_ID (azd env get-values) or pass"
    " --app-principal-id"
)


async def app_account_rights(
    clients: LifecycleClients, app: Caller | None, in_scope: tuple[str, ...]
) -> Check:
    """The deployed app's account role at each subscription in scope, read with the caller's
    right to read role assignments (infra's grant reader role gives operators that)."""
    if app is None:
        return Check("app account rights", Result.UNVERIFIED, _NO_APP)
    if not in_scope:
        return not_run(["app account rights"], "no subscription in scope is visible")[0]
    grants = await _account_grants(clients, app, in_scope)
    found = f"app {app.object_id}: {grants.found}"
    return Check("app account rights", grants.result, found, grants.fix)


async def _account_grants(
    clients: LifecycleClients, principal: Caller, in_scope: tuple[str, ...]
) -> Check:
    """Whether ``principal``'s role assignments at each subscription grant ACCOUNT_ACTIONS."""
    results: list[Result] = []
    found: list[str] = []
    fixes: list[str] = []
    for subscription in in_scope:
        scope = f"/subscriptions/{subscription}"
        try:
            grants = await clients.roles.grants_for(principal.object_id, scope)
        except AccessDenied:
            results.append(Result.UNVERIFIED)
            found.append(
                f"{subscription}: cannot read role assignments (needs"
                " Microsoft.Authorization/roleAssignments/read: infra's grant reader role, or"
                " Reader)"
            )
            continue
        gone = missing(ACCOUNT_ACTIONS, grants, data=False)
        if not gone:
            roles = ", ".join(sorted({g.role_name for g in grants if g.actions}))
            results.append(Result.OK)
            found.append(f"{subscription}: accounts read/write, operationResults via {roles}")
            continue
        results.append(Result.UNVERIFIED if principal.delegated else Result.FAILED)
        group = " (none of your own assignments; a group's are not listed)"
        found.append(
            f"{subscription}: missing {', '.join(gone)}{group if principal.delegated else ''}"
        )
        fixes.append(f"grant {', '.join(gone)}: {_operator_grant(principal, subscription)}")
    return Check("grants", combined(results), "; ".join(found), "; ".join(fixes))


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


async def key_rights(
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


async def app_key_rights(
    settings: Settings,
    clients: LifecycleClients,
    app: Caller | None,
    subscriptions: tuple[str, ...],
) -> Check:
    """Per vault of CMK_VAULT_ALLOWLIST: the deployed app's key role (or access policy)."""
    if app is None:
        return Check("app key rights", Result.UNVERIFIED, _NO_APP)
    if not settings.vault_allowlist:
        return not_run(["app key rights"], "CMK_VAULT_ALLOWLIST is empty")[0]
    parts = [
        await _app_vault_rights(clients, app, url, subscriptions)
        for url in sorted(settings.vault_allowlist)
    ]
    return Check(
        "app key rights",
        combined(p.result for p in parts),
        f"app {app.object_id}: " + "; ".join(p.found for p in parts),
        "; ".join(p.fix for p in parts if p.fix),
    )


async def _app_vault_rights(
    clients: LifecycleClients, app: Caller, vault_url: str, subscriptions: tuple[str, ...]
) -> Check:
    name = vault_url.removeprefix("https://").split(".", 1)[0]
    try:
        vault = await clients.vaults.find(KeyId(vault_url, "smoke"), subscriptions)
    except CmkError as error:
        found = f"{name}: the vault resource is not readable ({error})"
        return Check(name, Result.UNVERIFIED, found)
    if vault.is_managed_hsm:
        found = f"{name}: unverified: a Managed HSM's local RBAC is not visible in ARM"
        return Check(name, Result.UNVERIFIED, found)
    try:
        gone, via = await _key_grants(clients, app, vault)
    except AccessDenied as error:
        return Check(name, Result.UNVERIFIED, f"{name}: grants not read: {error}")
    if not gone:
        return Check(name, Result.OK, f"{name}: read, create, rotate via {via}")
    return Check(
        name, Result.FAILED, f"{name}: missing {', '.join(gone)}", _key_fix(vault, app, gone)
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
        gone = tuple(_short(a) for a in missing(KEY_ACTIONS, grants, data=True))
        roles = sorted({g.role_name for g in grants if g.data_actions})
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
