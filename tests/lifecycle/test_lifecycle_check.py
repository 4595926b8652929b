"""``check`` against the sandbox: each requirement read from ARM and Key Vault, revocations."""

from __future__ import annotations

from dataclasses import replace

from lifecycle_rig import Wired, account_id

from cmk.keyid import KeyId
from cmk.lifecycle.check import check_accounts


def _failed(report: object) -> set[str]:
    checks = report.checks  # type: ignore[attr-defined]
    return {r.name for check in checks for r in check.failures}


class TestCheck:
    async def test_a_good_binding_holds_everything(self, wired: Wired) -> None:
        """A bound, granted account in an allow-listed vault: every requirement holds."""
        land = wired.land
        account = land.bound("ai-good", land.kv, land.first.version)
        report = await check_accounts(wired.lc, [account_id(account)], None)
        assert report.ok, _failed(report)
        names = {r.name for r in report.checks[0].requirements}
        assert {"vault soft delete", "same region", "same tenant", "key size allowed"} <= names

    async def test_each_vault_and_identity_failure_is_named_with_a_fix(self, wired: Wired) -> None:
        """Firewall without bypass, soft delete off, another region and no grant all fail."""
        land = wired.land
        vault = land.vault(
            "kvbad" + land.kv.name[2:8],
            network_default_action="Deny",
            network_bypass="None",
            soft_delete=False,
            location="northeurope",
        )
        land.version(vault)
        account = land.account("ai-bad")
        report = await check_accounts(
            wired.lc, [account_id(account)], KeyId.parse(land.key_id(vault))
        )
        assert _failed(report) == {
            "firewall allows trusted services",
            "vault soft delete",
            "same region",
            "key recoveryLevel not purgeable",
            "identity has get, wrapKey, unwrapKey",
            "vault in CMK_VAULT_ALLOWLIST",
        }
        assert all(r.fix for r in report.checks[0].failures)

    async def test_access_policy_vault_is_read_from_its_policies(self, wired: Wired) -> None:
        """A vault without RBAC: access comes from the identity's access policy entry."""
        land = wired.land
        vault = land.vault("kvpol" + land.kv.name[2:8], enable_rbac_authorization=False)
        land.version(vault)
        account = land.account("ai-pol")
        assert account.identity.system is not None
        vault.access_policies[account.identity.system.object_id] = {"get", "wrapKey"}
        vault.access_policies[land.sandbox.app_principal.object_id] = {"get", "list"}
        lc = replace(wired.lc, settings=replace(wired.lc.settings, vault_allowlist=frozenset()))
        report = await check_accounts(lc, [account_id(account)], KeyId.parse(land.key_id(vault)))
        access = next(r for r in report.checks[0].requirements if r.name.startswith("identity"))
        assert access.holds is False and access.detail == "missing unwrapKey"
        assert "az keyvault set-policy" in access.fix

    async def test_revocation_names_the_accounts_it_would_cut_off(self, wired: Wired) -> None:
        """The one role assignment of each account is essential: revoking it cuts that account."""
        land = wired.land
        first = land.bound("ai-r1", land.kv, land.first.version)
        second = land.bound("ai-r2", land.kv, land.first.version)
        report = await check_accounts(wired.lc, [account_id(first), account_id(second)], None)
        assert len(report.revocations()) == 2
        assert all(len(r.cut_off) == 1 for r in report.revocations())
        assert {a.name for r in report.revocations() for a in r.cut_off} == {"ai-r1", "ai-r2"}

    async def test_microsoft_managed_account_without_key_fails(self, wired: Wired) -> None:
        """Nothing to check without --key on an account that does not use CMK."""
        account = wired.land.account("ai-mmk")
        report = await check_accounts(wired.lc, [account_id(account)], None)
        assert _failed(report) == {"key given"}
