"""The pure access rules: role data actions, scopes, access policies, Managed HSM."""

from __future__ import annotations

from cmk.lifecycle.access import action_matches, key_access, scope_applies
from cmk.lifecycle.model import AccessPolicy, RoleGrant, VaultRecord
from cmk.resource_id import VaultId

VAULT_ID = (
    "/subscriptions/44444444-4444-4444-8444-444444444444/resourceGroups/rg"
    "/providers/Microsoft.KeyVault/vaults/kvone"
)
PID = "11111111-0000-0000-0000-000000000001"


def _vault(**changes: object) -> VaultRecord:
    fields: dict[str, object] = {
        "vault_id": VaultId.parse(VAULT_ID),
        "vault_url": "https://kvone.vault.azure.net",
        "location": "westeurope",
        "tenant_id": "t",
        "soft_delete": True,
        "purge_protection": True,
        "retention_days": 90,
        "rbac_authorization": True,
    }
    fields.update(changes)
    return VaultRecord(**fields)  # type: ignore[arg-type]


def _role(scope: str, data: tuple[str, ...], **changes: object) -> RoleGrant:
    return RoleGrant("ra-" + scope[-4:], "role", scope, PID, data, **changes)  # type: ignore[arg-type]


class TestAccessRules:
    def test_wildcards_cover_actions(self) -> None:
        """``keys/*`` and ``vaults/*`` cover wrap; a different prefix does not."""
        wrap = "Microsoft.KeyVault/vaults/keys/wrap/action"
        assert action_matches("Microsoft.KeyVault/vaults/keys/*", wrap)
        assert action_matches("microsoft.keyvault/vaults/*", wrap)
        assert not action_matches("Microsoft.KeyVault/vaults/secrets/*", wrap)

    def test_scope_applies_at_and_above_only(self) -> None:
        """A vault-scope role applies to its keys; a key-scope role not to another key."""
        key = f"{VAULT_ID}/keys/cmk"
        assert scope_applies(key, VAULT_ID)
        assert not scope_applies(key, f"{VAULT_ID}/keys/other")
        assert not scope_applies(VAULT_ID, key)

    def test_rbac_role_at_vault_scope_grants_every_permission(self) -> None:
        """Crypto Service Encryption User's data actions at the vault hold."""
        data = (
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
        )
        access = key_access(PID, _vault(), "cmk", (_role(VAULT_ID, data),))
        assert access.holds is True and len(access.essential()) == 1

    def test_not_data_actions_and_conditions_take_away(self) -> None:
        """notDataActions remove unwrap; a conditional assignment counts for nothing."""
        every = ("Microsoft.KeyVault/vaults/*",)
        denied = _role(VAULT_ID, every, not_data_actions=("*/unwrap/action",))
        conditional = _role(f"{VAULT_ID}/keys/cmk", every, condition="@Resource[x] == 'y'")
        access = key_access(PID, _vault(), "cmk", (denied, conditional))
        assert access.missing == ("unwrapKey",)

    def test_owner_without_data_actions_grants_nothing(self) -> None:
        """A control-plane role (no data actions) does not reach keys in an RBAC vault."""
        assert key_access(PID, _vault(), "cmk", (_role(VAULT_ID, ()),)).holds is False

    def test_access_policy_all_covers_everything_in_the_tenant(self) -> None:
        """``all`` in the vault's tenant holds; the same entry for another tenant does not."""
        good = _vault(
            rbac_authorization=False,
            access_policies=(AccessPolicy(PID, "t", frozenset({"all"})),),
        )
        other = _vault(
            rbac_authorization=False,
            access_policies=(AccessPolicy(PID, "elsewhere", frozenset({"all"})),),
        )
        assert key_access(PID, good, "cmk", ()).holds is True
        assert key_access(PID, other, "cmk", ()).holds is False

    def test_managed_hsm_access_is_unverifiable(self) -> None:
        """Managed HSM local RBAC is not in ARM: holds is None, not False."""
        hsm = _vault(vault_id=VaultId.parse(VAULT_ID.replace("vaults", "managedHSMs")))
        assert key_access(PID, hsm, "cmk", ()).holds is None
