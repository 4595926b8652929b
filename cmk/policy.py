"""Is this key version safe to bind a Cognitive Services account to?

:func:`evaluate` is a pure function from a :class:`KeyVersion` (what Key Vault says
about one version), a :class:`VersionPolicy` (from the settings) and the current time
to a :class:`Verdict` that lists *every* failing :class:`Reason`, not only the first.
The rules are those of DESIGN.md §1: enabled; ``nbf`` reached; not expired and not
expiring within the margin; RSA or RSA-HSM of an allowed size; ``key_ops`` allow
wrapKey and unwrapKey; a ``recoveryLevel`` without ``Purgeable``; the same vault as
the account's binding.

Every datetime here must be timezone-aware: a naive one raises ``ValueError``, since
comparing it with Key Vault's UTC timestamps would silently shift expiry by hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cmk.errors import PolicyRejected
from cmk.keyid import KeyId
from cmk.settings import Settings

__all__ = ["KeyVersion", "Reason", "ReasonCode", "Verdict", "VersionPolicy", "evaluate"]

#: Key types a Cognitive Services account accepts.
BINDABLE_KEY_TYPES = frozenset({"RSA", "RSA-HSM"})
#: Operations the account's identity performs with the key.
REQUIRED_KEY_OPS = frozenset({"wrapKey", "unwrapKey"})


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")


@dataclass(frozen=True)
class KeyVersion:
    """One version of a Key Vault key, as Key Vault describes it (our own type, not the SDK's).

    ``size`` is the RSA modulus length in bits, or ``None`` when unknown. Datetimes
    must be timezone-aware and ``key_id`` must name a version.
    """

    key_id: KeyId
    kty: str
    size: int | None
    key_ops: frozenset[str]
    enabled: bool
    not_before: datetime | None
    expires: datetime | None
    created: datetime
    recovery_level: str | None

    def __post_init__(self) -> None:
        if self.key_id.version is None:
            raise ValueError(f"KeyVersion needs a versioned key id, got {self.key_id}")
        _require_aware("not_before", self.not_before)
        _require_aware("expires", self.expires)
        _require_aware("created", self.created)

    @property
    def version(self) -> str:
        """The 32-hex version string."""
        assert self.key_id.version is not None  # checked in __post_init__
        return self.key_id.version


@dataclass(frozen=True)
class VersionPolicy:
    """What makes a version bindable: allowed RSA sizes and the expiry safety margin."""

    allowed_sizes: frozenset[int] = frozenset({2048})
    expiry_margin: timedelta = timedelta(days=30)

    @classmethod
    def from_settings(cls, settings: Settings) -> VersionPolicy:
        """The policy configured by CMK_ALLOWED_KEY_SIZES and CMK_EXPIRY_MARGIN_DAYS."""
        return cls(allowed_sizes=settings.allowed_key_sizes, expiry_margin=settings.expiry_margin)


class ReasonCode(StrEnum):
    """Why a version is not bindable; stable codes for logs, ledger rows and alerts."""

    DISABLED = "disabled"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    EXPIRING = "expiring"
    KEY_TYPE = "key_type"
    KEY_SIZE = "key_size"
    KEY_OPS = "key_ops"
    PURGEABLE = "purgeable"
    DIFFERENT_VAULT = "different_vault"


@dataclass(frozen=True)
class Reason:
    """One failed rule: a stable code and a message for humans."""

    code: ReasonCode
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`evaluate`: bindable iff no rule failed."""

    key_id: KeyId
    reasons: tuple[Reason, ...] = ()

    @property
    def bindable(self) -> bool:
        """True if the version passed every rule."""
        return not self.reasons

    @property
    def codes(self) -> frozenset[ReasonCode]:
        """The codes of every failed rule."""
        return frozenset(reason.code for reason in self.reasons)

    def require_bindable(self) -> None:
        """Raise PolicyRejected (with every reason) unless the version is bindable."""
        if self.reasons:
            text = "; ".join(str(reason) for reason in self.reasons)
            raise PolicyRejected(
                f"key version {self.key_id} is not bindable: {text}",
                reasons=tuple(str(reason) for reason in self.reasons),
            )


def evaluate(
    version: KeyVersion,
    policy: VersionPolicy,
    now: datetime,
    bound_vault: KeyId | None = None,
) -> Verdict:
    """Check ``version`` against every rule at ``now``; ``bound_vault`` is the account's key."""
    _require_aware("now", now)
    reasons = [
        *_validity(version, policy, now),
        *_key_material(version, policy),
        *_vault(version, bound_vault),
    ]
    return Verdict(version.key_id, tuple(reasons))


def _validity(version: KeyVersion, policy: VersionPolicy, now: datetime) -> list[Reason]:
    reasons = []
    if not version.enabled:
        reasons.append(Reason(ReasonCode.DISABLED, "the version is disabled"))
    if version.not_before is not None and version.not_before > now:
        reasons.append(
            Reason(ReasonCode.NOT_YET_VALID, f"not valid before {version.not_before.isoformat()}")
        )
    if version.expires is not None:
        if version.expires <= now:
            reasons.append(Reason(ReasonCode.EXPIRED, f"expired at {version.expires.isoformat()}"))
        elif version.expires <= now + policy.expiry_margin:
            reasons.append(
                Reason(
                    ReasonCode.EXPIRING,
                    f"expires at {version.expires.isoformat()}, within the"
                    f" {policy.expiry_margin / timedelta(days=1):g}-day margin",
                )
            )
    return reasons


def _key_material(version: KeyVersion, policy: VersionPolicy) -> list[Reason]:
    reasons = []
    if version.kty not in BINDABLE_KEY_TYPES:
        reasons.append(Reason(ReasonCode.KEY_TYPE, f"key type {version.kty!r} is not RSA/RSA-HSM"))
    if version.size not in policy.allowed_sizes:
        allowed = ", ".join(str(size) for size in sorted(policy.allowed_sizes))
        size = "unknown" if version.size is None else f"{version.size} bits"
        reasons.append(Reason(ReasonCode.KEY_SIZE, f"key size {size} is not allowed ({allowed})"))
    missing = REQUIRED_KEY_OPS - version.key_ops
    if missing:
        reasons.append(Reason(ReasonCode.KEY_OPS, f"key_ops lack {', '.join(sorted(missing))}"))
    level = version.recovery_level
    if level is None or not level.strip() or "purgeable" in level.lower():
        reasons.append(
            Reason(
                ReasonCode.PURGEABLE,
                f"recoveryLevel {level!r} does not show soft delete and purge protection",
            )
        )
    return reasons


def _vault(version: KeyVersion, bound_vault: KeyId | None) -> list[Reason]:
    if bound_vault is None or version.key_id.same_vault(bound_vault):
        return []
    return [
        Reason(
            ReasonCode.DIFFERENT_VAULT,
            f"the version is in {version.key_id.vault_url}, the account is bound to"
            f" {bound_vault.vault_url}",
        )
    ]
