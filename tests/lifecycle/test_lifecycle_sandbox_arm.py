"""The sandbox's ARM vault and authorization routes, read through the real SDK and adapters."""

from __future__ import annotations

from lifecycle_rig import SUB, Land, Wired

from cmk.errors import NotFound
from cmk.keyid import KeyId
from cmk.sandbox.world import VaultKind


class TestVaultResources:
    async def test_vault_properties_come_back_in_our_record(self, wired: Wired) -> None:
        """Soft delete, purge protection, RBAC, network ACLs, location and tenant are read."""
        land: Land = wired.land
        land.kv.network_default_action = "Deny"
        record = await wired.clients.vaults.find(KeyId.parse(land.key_id(land.kv)), [SUB])
        assert str(record.vault_id).lower() == land.kv.resource_id.lower()
        assert (record.soft_delete, record.purge_protection, record.rbac_authorization) == (
            True,
            True,
            True,
        )
        assert (record.network_default_action, record.network_bypass) == ("Deny", "AzureServices")
        assert (record.location, record.tenant_id) == ("westeurope", land.world.tenant_id)

    async def test_purge_protection_off_is_omitted_and_read_as_off(self, wired: Wired) -> None:
        """ARM leaves enablePurgeProtection out while off; the record says False."""
        land = wired.land
        land.kv.purge_protection = False
        record = await wired.clients.vaults.find(KeyId.parse(land.key_id(land.kv)), [SUB])
        assert record.purge_protection is False

    async def test_managed_hsm_is_found(self, wired: Wired) -> None:
        """A Managed HSM key id finds the managedHSMs resource."""
        land = wired.land
        hsm = land.vault("hsm" + land.kv.name[2:8], VaultKind.MANAGED_HSM)
        record = await wired.clients.vaults.find(KeyId.parse(f"{hsm.url}/keys/k"), [SUB])
        assert record.is_managed_hsm and record.vault_url == hsm.url

    async def test_unknown_vault_is_not_found(self, wired: Wired) -> None:
        """A vault in no searched subscription raises NotFound naming the fix."""
        key = KeyId.parse("https://nosuchvault.vault.azure.net/keys/k")
        try:
            await wired.clients.vaults.find(key, [SUB])
        except NotFound as error:
            assert "CMK_SUBSCRIPTIONS" in str(error)
        else:
            raise AssertionError("expected NotFound")


class TestRoleAssignments:
    async def test_grants_at_key_and_above_with_real_role_ids(self, wired: Wired) -> None:
        """Key and vault scope apply, another key's does not; the role's data actions are read."""
        land = wired.land
        account = land.account("ai-roles")
        assert account.identity.system is not None
        pid = account.identity.system.object_id
        land.grant(account, land.kv)
        land.world.grant(pid, f"{land.kv.resource_id}/keys/other", "Key Vault Crypto User")
        land.world.grant(pid, land.kv.resource_id, "Key Vault Reader")
        grants = await wired.clients.roles.grants_for(pid, f"{land.kv.resource_id}/keys/cmk")
        names = sorted(g.role_name for g in grants)
        assert names == ["Key Vault Crypto Service Encryption User", "Key Vault Reader"]
        encryption = next(g for g in grants if g.role_name.endswith("Encryption User"))
        assert "Microsoft.KeyVault/vaults/keys/unwrap/action" in encryption.data_actions

    async def test_a_custom_role_is_read_with_its_own_actions(self, wired: Wired) -> None:
        """A role the world defines (as a template's roleDefinitions would) is read back by
        name with exactly its data actions and its control-plane actions."""
        land = wired.land
        account = land.account("ai-custom-role")
        assert account.identity.system is not None
        pid = account.identity.system.object_id
        actions = [
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
        ]
        control = ["Microsoft.KeyVault/vaults/read"]
        role = land.world.define_role("Key wrapper (custom)", [*actions, *control])
        land.world.grant(pid, f"{land.kv.resource_id}/keys/cmk", role)
        grants = await wired.clients.roles.grants_for(pid, f"{land.kv.resource_id}/keys/cmk")
        assert [(g.role_name, sorted(g.data_actions), list(g.actions)) for g in grants] == [
            ("Key wrapper (custom)", sorted(actions), control)
        ]
