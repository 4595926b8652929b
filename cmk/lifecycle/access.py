"""Does an identity hold get / wrapKey / unwrapKey on a key, and through which grants?

Pure functions over :mod:`cmk.lifecycle.model`. A vault that uses access policies is read
from its policy entries (the identity's object id in the vault's tenant; ``all`` covers
every permission); a vault that uses Azure RBAC from the identity's role assignments at the
key, the vault or any scope above, whose role grants the data action (``*`` wildcards,
minus ``notDataActions``; assignments with an ABAC condition do not count). A Managed HSM
authorizes keys with its own local RBAC, which ARM does not show: its access cannot be
verified here (``verifiable`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmk.lifecycle.model import KEY_DATA_ACTIONS, Grant, GrantKind, RoleGrant, VaultRecord

__all__ = ["KeyAccess", "action_matches", "key_access", "role_allows", "scope_applies"]

REQUIRED = tuple(KEY_DATA_ACTIONS)  # get, wrapKey, unwrapKey


def action_matches(pattern: str, action: str) -> bool:
    """Whether a role's action pattern (``*`` wildcards, case-insensitive) covers ``action``."""
    pattern, action = pattern.lower(), action.lower()
    if "*" not in pattern:
        return pattern == action
    head, _, tail = pattern.partition("*")
    if "*" in tail:
        middle, _, rest = tail.partition("*")
        return action.startswith(head) and middle in action[len(head) :] and action.endswith(rest)
    return action.startswith(head) and action.endswith(tail) and len(action) >= len(head + tail)


def scope_applies(scope: str, assigned_at: str) -> bool:
    """True when a role assigned at ``assigned_at`` applies to ``scope`` (same or above)."""
    inner, outer = scope.lower().rstrip("/"), assigned_at.lower().rstrip("/")
    return outer in ("", inner) or inner.startswith(outer + "/")


@dataclass(frozen=True)
class KeyAccess:
    """Which grants give each required permission; ``verifiable`` False for a Managed HSM."""

    principal_id: str
    by_permission: dict[str, tuple[Grant, ...]]
    verifiable: bool = True

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in REQUIRED if not self.by_permission.get(p))

    @property
    def holds(self) -> bool | None:
        if not self.verifiable:
            return None
        return not self.missing

    @property
    def grants(self) -> tuple[Grant, ...]:
        """Every grant that gives at least one required permission, once."""
        seen: dict[str, Grant] = {}
        for grants in self.by_permission.values():
            for grant in grants:
                seen.setdefault(grant.id, grant)
        return tuple(seen.values())

    def essential(self) -> tuple[Grant, ...]:
        """The grants whose revocation alone would take a required permission away."""
        only = {g[0].id: g[0] for g in self.by_permission.values() if len(g) == 1}
        return tuple(only.values())


def role_allows(grant: RoleGrant, action: str, *, data: bool = True) -> bool:
    """Whether ``grant``'s role allows ``action``: a data action (``data``) or a control-plane
    one, matched by a pattern and by none of the role's exceptions. An assignment with an
    ABAC condition allows nothing here."""
    if grant.condition:
        return False
    allowed, denied = (
        (grant.data_actions, grant.not_data_actions) if data else (grant.actions, grant.not_actions)
    )
    return any(action_matches(p, action) for p in allowed) and not any(
        action_matches(p, action) for p in denied
    )


def _role_permissions(grant: RoleGrant) -> frozenset[str]:
    return frozenset(
        permission for permission, action in KEY_DATA_ACTIONS.items() if role_allows(grant, action)
    )


def _policy_grants(principal_id: str, vault: VaultRecord) -> list[Grant]:
    grants = []
    for policy in vault.access_policies:
        if policy.object_id != principal_id or policy.tenant_id != vault.tenant_id:
            continue
        lowered = {p.lower() for p in policy.key_permissions}
        held = frozenset(p for p in REQUIRED if "all" in lowered or p.lower() in lowered)
        grants.append(
            Grant(
                kind=GrantKind.ACCESS_POLICY,
                id=f"{vault.vault_id}/accessPolicies/{principal_id}",
                scope=str(vault.vault_id),
                principal_id=principal_id,
                permissions=held,
            )
        )
    return grants


def key_access(
    principal_id: str, vault: VaultRecord, key_name: str, roles: tuple[RoleGrant, ...]
) -> KeyAccess:
    """How ``principal_id`` may use key ``key_name`` of ``vault``."""
    principal_id = principal_id.lower()
    if vault.is_managed_hsm:
        return KeyAccess(principal_id, {}, verifiable=False)
    if vault.rbac_authorization:
        scope = vault.key_scope(key_name)
        grants = [
            Grant(
                kind=GrantKind.ROLE_ASSIGNMENT,
                id=role.assignment_id,
                scope=role.scope,
                principal_id=principal_id,
                permissions=_role_permissions(role),
                role_name=role.role_name,
            )
            for role in roles
            if role.principal_id.lower() == principal_id and scope_applies(scope, role.scope)
        ]
    else:
        grants = _policy_grants(principal_id, vault)
    by_permission = {p: tuple(g for g in grants if p in g.permissions) for p in REQUIRED}
    return KeyAccess(principal_id, by_permission)
