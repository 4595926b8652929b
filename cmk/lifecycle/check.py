"""``cmk check``: read what the preflight needs for each account and key, and evaluate it.

For an account the key is the one given (``--key``) or the one it is bound to. A versioned key
is checked as is; a versionless one at its newest valid version (else its latest, so the
failures show). :func:`check_accounts` also tells which grants are essential: revoking such a
grant alone would cut the account off from its key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from cmk.errors import NotFound
from cmk.keyid import KeyId
from cmk.lifecycle.access import KeyAccess, key_access
from cmk.lifecycle.context import Lifecycle
from cmk.lifecycle.model import AccountIdentity, Grant, RoleGrant, VaultRecord
from cmk.lifecycle.requirements import Facts, Requirement, preflight
from cmk.policy import KeyVersion
from cmk.ports import AccountRecord
from cmk.resource_id import AccountId
from cmk.usecases.keyview import KeyVersions

__all__ = ["AccountCheck", "CheckReport", "Revocation", "check_account", "check_accounts"]


@dataclass(frozen=True)
class AccountCheck:
    """The preflight of one account against one key (``key`` None: nothing to check)."""

    account_id: AccountId
    key: KeyId | None  # the version checked, when one was found
    requirements: tuple[Requirement, ...]
    access: KeyAccess | None = None

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.requirements)

    @property
    def failures(self) -> tuple[Requirement, ...]:
        return tuple(r for r in self.requirements if r.failed)


@dataclass(frozen=True)
class Revocation:
    """A grant, and the accounts that revoking it alone would cut off from their key."""

    grant: Grant
    cut_off: tuple[AccountId, ...]


@dataclass(frozen=True)
class CheckReport:
    checks: tuple[AccountCheck, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def revocations(self) -> tuple[Revocation, ...]:
        by_grant: dict[str, tuple[Grant, list[AccountId]]] = {}
        for check in self.checks:
            for grant in check.access.essential() if check.access else ():
                by_grant.setdefault(grant.id, (grant, []))[1].append(check.account_id)
        return tuple(Revocation(g, tuple(a)) for g, a in by_grant.values())


async def _version(lc: Lifecycle, key: KeyId) -> KeyVersion | None:
    try:
        if key.version is not None:
            return await lc.keys.get_version(key)
        view = await KeyVersions.load(lc.keys, key, lc.policy, lc.now())
    except NotFound:
        return None
    return view.newest_bindable(lc.policy, lc.now()) or view.latest


async def _vault(lc: Lifecycle, account_id: AccountId, key: KeyId) -> VaultRecord | None:
    try:
        return await lc.vaults.find(key, lc.subscriptions_for(account_id))
    except NotFound:
        return None


async def evaluate_account(
    lc: Lifecycle,
    record: AccountRecord,
    identity: AccountIdentity,
    key: KeyId,
    client_id: str | None,
    *,
    bound_key: KeyId | None = None,
) -> AccountCheck:
    """Read the vault, key version and grants for ``key`` and run the preflight."""
    account_id = record.account_id
    version, vault = await asyncio.gather(_version(lc, key), _vault(lc, account_id, key))
    principal = identity.principal_for(client_id)
    access = None
    if principal is not None and vault is not None:
        roles: tuple[RoleGrant, ...] = ()
        if vault.rbac_authorization and not vault.is_managed_hsm:
            roles = tuple(await lc.roles.grants_for(principal, vault.key_scope(key.name)))
        access = key_access(principal, vault, key.name, roles)
    facts = Facts(
        account_id=account_id,
        location=record.location,
        identity=identity,
        identity_client_id=client_id,
        key=key,
        version=version,
        vault=vault,
        access=access,
        in_scope=lc.settings.vault_in_scope(key),
        bound_key=bound_key,
    )
    checked = version.key_id if version else None
    return AccountCheck(account_id, checked, preflight(facts, lc.policy, lc.now()), access)


async def check_account(lc: Lifecycle, account_id: AccountId, key: KeyId | None) -> AccountCheck:
    """The preflight of one account against ``key`` (default: the key it is bound to)."""
    record, identity = await asyncio.gather(
        lc.accounts.get(account_id), lc.writer.identity(account_id)
    )
    binding = record.binding
    client_id = binding.identity_client_id if binding else None
    if key is None:
        if binding is None:
            detail = "the account uses Microsoft-managed keys"
            fix = "pass --key KEY_ID to check a key for `cmk enable`"
            return AccountCheck(account_id, None, (Requirement("key given", False, detail, fix),))
        key = binding.key_id
    return await evaluate_account(lc, record, identity, key, client_id)


async def check_accounts(
    lc: Lifecycle, account_ids: Sequence[AccountId], key: KeyId | None
) -> CheckReport:
    """:func:`check_account` for each account (bounded concurrency)."""
    gate = asyncio.Semaphore(max(1, lc.settings.max_concurrency))

    async def one(account_id: AccountId) -> AccountCheck:
        async with gate:
            return await check_account(lc, account_id, key)

    return CheckReport(tuple(await asyncio.gather(*(one(a) for a in account_ids))))
