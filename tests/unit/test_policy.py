"""Tests for cmk.policy: which key versions an account may be bound to."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cmk.errors import PolicyRejected
from cmk.keyid import KeyId
from cmk.policy import KeyVersion, ReasonCode, VersionPolicy, evaluate
from cmk.settings import Settings

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
KEY = KeyId.parse("https://kv-prod.vault.azure.net/keys/cmk/" + "a" * 32)
POLICY = VersionPolicy(allowed_sizes=frozenset({2048}), expiry_margin=timedelta(days=30))


def good_version(**changes: object) -> KeyVersion:
    """A version that passes every rule at NOW, with ``changes`` applied."""
    version = KeyVersion(
        key_id=KEY,
        kty="RSA",
        size=2048,
        key_ops=frozenset({"encrypt", "decrypt", "wrapKey", "unwrapKey"}),
        enabled=True,
        not_before=NOW - timedelta(days=1),
        expires=NOW + timedelta(days=365),
        created=NOW - timedelta(days=1),
        recovery_level="Recoverable",
    )
    return replace(version, **changes)  # type: ignore[arg-type]


class TestKeyVersion:
    """KeyVersion construction rules."""

    def test_requires_versioned_key_id(self) -> None:
        """A versionless key id is refused."""
        with pytest.raises(ValueError, match="versioned"):
            good_version(key_id=KEY.versionless())

    @pytest.mark.parametrize("field", ["not_before", "expires", "created"])
    def test_rejects_naive_datetimes(self, field: str) -> None:
        """Each datetime attribute must be timezone-aware."""
        with pytest.raises(ValueError, match="timezone-aware"):
            good_version(**{field: datetime(2025, 1, 1)})

    def test_accepts_non_utc_offsets(self) -> None:
        """An aware datetime in another zone is accepted and compared correctly."""
        plus_two = timezone(timedelta(hours=2))
        version = good_version(not_before=datetime(2025, 6, 1, 14, 0, tzinfo=plus_two))
        assert evaluate(version, POLICY, NOW).bindable

    def test_version_property(self) -> None:
        """version is the key id's 32-hex version."""
        assert good_version().version == "a" * 32


class TestVersionPolicy:
    """Building the policy from settings."""

    def test_from_settings(self) -> None:
        """The policy takes the allowed sizes and margin from the settings."""
        settings = Settings.from_environ(
            {"CMK_ALLOWED_KEY_SIZES": "3072", "CMK_EXPIRY_MARGIN_DAYS": "7"}
        )
        policy = VersionPolicy.from_settings(settings)
        assert policy == VersionPolicy(frozenset({3072}), timedelta(days=7))


SINGLE_FAILURES = [
    ({"enabled": False}, ReasonCode.DISABLED),
    ({"not_before": NOW + timedelta(seconds=1)}, ReasonCode.NOT_YET_VALID),
    ({"expires": NOW}, ReasonCode.EXPIRED),
    ({"expires": NOW - timedelta(days=1)}, ReasonCode.EXPIRED),
    ({"expires": NOW + timedelta(days=30)}, ReasonCode.EXPIRING),
    ({"expires": NOW + timedelta(days=1)}, ReasonCode.EXPIRING),
    ({"kty": "EC"}, ReasonCode.KEY_TYPE),
    ({"kty": "oct-HSM"}, ReasonCode.KEY_TYPE),
    ({"size": 4096}, ReasonCode.KEY_SIZE),
    ({"size": None}, ReasonCode.KEY_SIZE),
    ({"key_ops": frozenset({"wrapKey"})}, ReasonCode.KEY_OPS),
    ({"key_ops": frozenset({"unwrapKey", "sign"})}, ReasonCode.KEY_OPS),
    ({"key_ops": frozenset()}, ReasonCode.KEY_OPS),
    ({"recovery_level": "Purgeable"}, ReasonCode.PURGEABLE),
    ({"recovery_level": "Recoverable+Purgeable"}, ReasonCode.PURGEABLE),
    ({"recovery_level": "customizedrecoverable+purgeable"}, ReasonCode.PURGEABLE),
    ({"recovery_level": None}, ReasonCode.PURGEABLE),
    ({"recovery_level": ""}, ReasonCode.PURGEABLE),
]


class TestEvaluate:
    """evaluate(): every rule alone, every rule together, and the boundaries."""

    def test_good_version_is_bindable(self) -> None:
        """A version that passes every rule is bindable with no reasons."""
        verdict = evaluate(good_version(), POLICY, NOW, bound_vault=KEY)
        assert verdict.bindable
        assert verdict.reasons == ()
        verdict.require_bindable()

    @pytest.mark.parametrize(("changes", "code"), SINGLE_FAILURES)
    def test_each_rule_alone(self, changes: dict[str, object], code: ReasonCode) -> None:
        """Breaking exactly one rule yields exactly that reason."""
        verdict = evaluate(good_version(**changes), POLICY, NOW)
        assert not verdict.bindable
        assert [reason.code for reason in verdict.reasons] == [code]
        assert verdict.reasons[0].message

    @pytest.mark.parametrize(
        "level", ["Recoverable", "Recoverable+ProtectedSubscription", "CustomizedRecoverable"]
    )
    def test_recoverable_levels_pass(self, level: str) -> None:
        """Recovery levels with purge protection are accepted."""
        assert evaluate(good_version(recovery_level=level), POLICY, NOW).bindable

    def test_rsa_hsm_and_no_dates_pass(self) -> None:
        """RSA-HSM without nbf or exp is bindable."""
        version = good_version(kty="RSA-HSM", not_before=None, expires=None)
        assert evaluate(version, POLICY, NOW).bindable

    def test_nbf_equal_to_now_is_valid(self) -> None:
        """A version whose nbf is exactly now is already valid."""
        assert evaluate(good_version(not_before=NOW), POLICY, NOW).bindable

    def test_expiry_just_beyond_margin_passes(self) -> None:
        """A version expiring one second after the margin is bindable."""
        expires = NOW + timedelta(days=30, seconds=1)
        assert evaluate(good_version(expires=expires), POLICY, NOW).bindable

    def test_zero_margin_only_rejects_expired(self) -> None:
        """With a zero margin a version expiring in a second is still bindable."""
        policy = replace(POLICY, expiry_margin=timedelta(0))
        version = good_version(expires=NOW + timedelta(seconds=1))
        assert evaluate(version, policy, NOW).bindable

    def test_other_allowed_size(self) -> None:
        """A 4096-bit key passes when 4096 is allowed."""
        policy = replace(POLICY, allowed_sizes=frozenset({2048, 4096}))
        assert evaluate(good_version(size=4096), policy, NOW).bindable

    def test_different_vault(self) -> None:
        """A version in another vault than the binding is rejected."""
        other = KeyId.parse("https://kv-other.vault.azure.net/keys/cmk/" + "b" * 32)
        verdict = evaluate(good_version(), POLICY, NOW, bound_vault=other)
        assert verdict.codes == frozenset({ReasonCode.DIFFERENT_VAULT})

    def test_same_vault_other_key_is_not_a_vault_failure(self) -> None:
        """Another key in the same vault passes the vault rule."""
        other = KeyId.parse("https://KV-PROD.vault.azure.net/keys/other")
        assert evaluate(good_version(), POLICY, NOW, bound_vault=other).bindable

    def test_every_reason_together(self) -> None:
        """A version breaking every rule lists every reason, not only the first."""
        version = good_version(
            enabled=False,
            not_before=NOW + timedelta(days=1),
            expires=NOW - timedelta(days=1),
            kty="EC",
            size=256,
            key_ops=frozenset({"sign"}),
            recovery_level="Purgeable",
        )
        other = KeyId.parse("https://kv-other.vault.azure.net/keys/cmk")
        verdict = evaluate(version, POLICY, NOW, bound_vault=other)
        assert verdict.codes == frozenset(ReasonCode) - {ReasonCode.EXPIRING}
        assert len(verdict.reasons) == len(ReasonCode) - 1

    def test_expiring_and_disabled_together(self) -> None:
        """Expiring within the margin combines with other failures."""
        version = good_version(enabled=False, expires=NOW + timedelta(days=2), size=1024)
        codes = evaluate(version, POLICY, NOW).codes
        assert codes == {ReasonCode.DISABLED, ReasonCode.EXPIRING, ReasonCode.KEY_SIZE}

    def test_naive_now_is_refused(self) -> None:
        """evaluate() refuses a naive 'now'."""
        with pytest.raises(ValueError, match="timezone-aware"):
            evaluate(good_version(), POLICY, datetime(2025, 6, 1))

    def test_require_bindable_raises_with_every_reason(self) -> None:
        """require_bindable() raises PolicyRejected carrying every reason."""
        verdict = evaluate(good_version(enabled=False, size=None), POLICY, NOW)
        with pytest.raises(PolicyRejected) as caught:
            verdict.require_bindable()
        assert len(caught.value.reasons) == 2
        assert str(KEY) in str(caught.value)
