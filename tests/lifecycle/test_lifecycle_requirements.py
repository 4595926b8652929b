"""The pure preflight: each key rule, the tenant, the scope, with a fix for each failure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cmk.keyid import KeyId
from cmk.lifecycle.model import AccountIdentity, VaultRecord
from cmk.lifecycle.requirements import Facts, preflight
from cmk.policy import KeyVersion, VersionPolicy
from cmk.resource_id import AccountId, VaultId

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SUB = "44444444-4444-4444-8444-444444444444"
KEY = KeyId.parse("https://kvone.vault.azure.net/keys/cmk/" + "a" * 32)
VAULT = VaultRecord(
    vault_id=VaultId(SUB, "rg", "kvone"),
    vault_url="https://kvone.vault.azure.net",
    location="westeurope",
    tenant_id="tenant",
    soft_delete=True,
    purge_protection=True,
    retention_days=90,
    rbac_authorization=True,
)
VERSION = KeyVersion(
    key_id=KEY,
    kty="RSA-HSM",
    size=2048,
    key_ops=frozenset({"wrapKey", "unwrapKey"}),
    enabled=True,
    not_before=None,
    expires=NOW + timedelta(days=365),
    created=NOW - timedelta(days=1),
    recovery_level="Recoverable",
)
FACTS = Facts(
    account_id=AccountId(SUB, "rg-ai", "ai"),
    location="westeurope",
    identity=AccountIdentity("SystemAssigned", "pid", "tenant"),
    identity_client_id=None,
    key=KEY,
    version=VERSION,
    vault=VAULT,
    access=None,
    in_scope=True,
)


def _failed(facts: Facts) -> dict[str, str]:
    return {r.name: r.fix for r in preflight(facts, VersionPolicy(), NOW) if r.failed}


class TestPreflight:
    def test_a_good_key_holds_everything(self) -> None:
        """Nothing fails for a valid RSA-HSM 2048 key in a protected vault."""
        assert _failed(FACTS) == {}

    def test_each_key_rule_fails_with_a_fix(self) -> None:
        """Disabled, expiring, wrong size and missing unwrapKey each fail with a fix."""
        bad = replace(
            VERSION,
            enabled=False,
            expires=NOW + timedelta(days=3),
            size=4096,
            key_ops=frozenset({"wrapKey"}),
        )
        failed = _failed(replace(FACTS, version=bad))
        assert set(failed) == {
            "key enabled",
            "key not expired (exp)",
            "key size allowed",
            "key operations wrapKey, unwrapKey",
        }
        assert all(failed.values())

    def test_missing_key_fails_once(self) -> None:
        """No version found: one 'key exists' failure suggesting a create."""
        assert list(_failed(replace(FACTS, version=None))) == ["key exists"]

    def test_a_vault_that_is_not_found_comes_first(self) -> None:
        """No vault resource (a typo, or a subscription cmk does not read): 'vault found'
        fails with how to check or create it, and the missing key's fix does not ask for
        a key in a vault that does not exist."""
        failed = _failed(replace(FACTS, vault=None, version=None))
        assert "az keyvault show --name kvone" in failed["vault found"]
        assert "az keyvault create --name kvone" in failed["vault found"]
        assert failed["key exists"] == "create the vault first (see 'vault found')"

    def test_other_tenant_and_out_of_scope_fail(self) -> None:
        """An identity in another tenant and a vault outside the allow-list both fail."""
        identity = AccountIdentity("SystemAssigned", "pid", "other")
        failed = _failed(replace(FACTS, identity=identity, in_scope=False))
        assert set(failed) == {"same tenant", "vault in CMK_VAULT_ALLOWLIST"}

    def test_unknown_tenant_is_unverified_not_failed(self) -> None:
        """A user-assigned-only account reports no tenant: a warning, not a failure."""
        identity = AccountIdentity("UserAssigned", None, None, {"cid": "uid"})
        facts = replace(FACTS, identity=identity, identity_client_id="cid")
        tenant = next(r for r in preflight(facts, VersionPolicy(), NOW) if r.name == "same tenant")
        assert tenant.holds is None

    def test_missing_named_identity_fails(self) -> None:
        """A named client id the account does not have: the managed identity rule fails."""
        failed = _failed(replace(FACTS, identity_client_id="nope"))
        assert "managed identity" in failed and "nope" in failed["managed identity"]

    def test_expiring_key_fix_is_cmk_rotate(self) -> None:
        """An expiring version's fix is `cmk rotate KEY` (a version the accounts follow),
        not `az keyvault key rotate`, which leaves bound accounts behind."""
        soon = replace(VERSION, expires=NOW + timedelta(days=3))
        fix = _failed(replace(FACTS, version=soon))["key not expired (exp)"]
        assert fix.startswith("cmk rotate https://kvone.vault.azure.net/keys/cmk ")
        assert "az keyvault key rotate" not in fix and "a" * 32 not in fix

    def test_missing_system_identity_fix_is_the_az_command(self) -> None:
        """No identity: the fix is the az command (usable whatever command found it);
        `cmk enable` is only mentioned as doing it itself."""
        none = AccountIdentity("None", None, None)
        fix = _failed(replace(FACTS, identity=none))["managed identity"]
        assert fix.startswith("az cognitiveservices account identity assign --name ai")
        assert "run `cmk enable`" not in fix
