"""Which version should each account use? Pure decisions over one key's versions.

:func:`plan` takes every version of one key (any order, as Key Vault pages them or as
events arrived) and the bindings of the accounts that use the key, and returns one
:class:`Decision` per binding, in binding order:

- :class:`UpToDate`: bound to the newest bindable version.
- :class:`Move`: bind to ``target``, the newest bindable version, which is newer than
  the bound one. ``finding`` is set (and ``urgent`` is true) when the bound version
  is itself unsafe (disabled, expired, expiring, ...): move it first.
- :class:`Finding`: something a human must look at; the account is never moved.
  Its ``kind`` is the bound version's most severe problem (disabled, expired,
  expiring, otherwise rejected), except that ``NO_VALID_VERSION`` replaces
  expiring/rejected when there is no bindable version at all (rotate the key).
  ``BOUND_VERSION_UNKNOWN``, ``DIFFERENT_VAULT`` and ``DIFFERENT_KEY`` need a human.

"Newest" means latest ``created``, ties broken by the larger version string, so the
outcome never depends on input order. An account never moves to a version created
before the one it has, never to a version the policy rejects, and never to another
key or vault (only ``keyVersion`` changes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cmk.keyid import KeyId
from cmk.policy import KeyVersion, Reason, ReasonCode, VersionPolicy, evaluate
from cmk.resource_id import AccountId

__all__ = [
    "Binding",
    "Decision",
    "Finding",
    "FindingKind",
    "Move",
    "UpToDate",
    "newest_bindable",
    "plan",
    "version_order",
]


@dataclass(frozen=True, slots=True)
class Binding:
    """What one account's ``encryption.keyVaultProperties`` points at (a versioned key)."""

    account_id: AccountId
    key_id: KeyId
    identity_client_id: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        if self.key_id.version is None:
            raise ValueError(f"Binding of {self.account_id} needs a versioned key id")


class FindingKind(StrEnum):
    """What is wrong with a binding; stable codes for alerts and the ledger."""

    BOUND_VERSION_DISABLED = "bound_version_disabled"
    BOUND_VERSION_EXPIRED = "bound_version_expired"
    BOUND_VERSION_EXPIRING = "bound_version_expiring"
    BOUND_VERSION_REJECTED = "bound_version_rejected"
    BOUND_VERSION_UNKNOWN = "bound_version_unknown"
    NO_VALID_VERSION = "no_valid_version"
    DIFFERENT_VAULT = "different_vault"
    DIFFERENT_KEY = "different_key"


@dataclass(frozen=True)
class UpToDate:
    """The account is bound to the newest bindable version."""

    binding: Binding
    version: KeyVersion


@dataclass(frozen=True, slots=True)
class Move:
    """Bind the account to ``target``; urgent when the bound version is unsafe."""

    binding: Binding
    target: KeyVersion
    reason: str
    finding: FindingKind | None = None

    @property
    def urgent(self) -> bool:
        """True when the account's current version is disabled, expired or otherwise unsafe."""
        return self.finding is not None


@dataclass(frozen=True, slots=True)
class Finding:
    """A binding we will not change; ``target`` is the best bindable version, if any.

    ``reasons`` lists why the bound version fails the policy (empty when it is unknown
    or the binding is to another key).
    """

    binding: Binding
    kind: FindingKind
    detail: str
    target: KeyVersion | None = None
    reasons: tuple[Reason, ...] = ()


Decision = UpToDate | Move | Finding

# When the bound version fails several rules, the most severe names the finding.
_SEVERITY = (
    (ReasonCode.DISABLED, FindingKind.BOUND_VERSION_DISABLED),
    (ReasonCode.EXPIRED, FindingKind.BOUND_VERSION_EXPIRED),
    (ReasonCode.EXPIRING, FindingKind.BOUND_VERSION_EXPIRING),
)

# A bound version that is disabled or expired breaks the account now: that names the
# finding even when no successor exists; otherwise the lack of a successor does.
_BROKEN = frozenset({FindingKind.BOUND_VERSION_DISABLED, FindingKind.BOUND_VERSION_EXPIRED})


def version_order(version: KeyVersion, current: str | None = None) -> tuple[datetime, bool, str]:
    """What "newer" means: created later. Key Vault dates versions to the second, so
    within one second the key's current version (what ``GET /keys/{name}/`` returns), when
    known, is the newest; the version string only makes the order total."""
    return (version.created, version.version == current, version.version)


def _index(versions: Iterable[KeyVersion]) -> dict[KeyId, KeyVersion]:
    """Versions by id; all must belong to one key, and duplicates must agree."""
    index: dict[KeyId, KeyVersion] = {}
    for version in versions:
        known = index.setdefault(version.key_id, version)
        if known != version:
            raise ValueError(f"conflicting descriptions of {version.key_id}")
    keys = {key_id.versionless() for key_id in index}
    if len(keys) > 1:
        raise ValueError(f"plan() takes the versions of one key, got {sorted(map(str, keys))}")
    return index


def newest_bindable(
    versions: Iterable[KeyVersion],
    policy: VersionPolicy,
    now: datetime,
    *,
    current: str | None = None,
) -> KeyVersion | None:
    """The newest version (see :func:`version_order`) the policy accepts, if any."""
    bindable = [version for version in versions if evaluate(version, policy, now).bindable]
    return max(bindable, key=lambda v: version_order(v, current), default=None)


def plan(
    versions: Sequence[KeyVersion],
    bindings: Sequence[Binding],
    policy: VersionPolicy,
    now: datetime,
    *,
    current: str | None = None,
) -> list[Decision]:
    """Decide for every binding: up to date, move, or finding (see the module docstring).
    ``current`` names the key's current version, when known (ties of creation time)."""
    index = _index(versions)
    target = newest_bindable(index.values(), policy, now, current=current)
    key = next(iter(index)).versionless() if index else None
    return [
        _decide(
            binding, key=key, index=index, target=target, policy=policy, now=now, current=current
        )
        for binding in bindings
    ]


def _decide(
    binding: Binding,
    *,
    key: KeyId | None,
    index: dict[KeyId, KeyVersion],
    target: KeyVersion | None,
    policy: VersionPolicy,
    now: datetime,
    current: str | None,
) -> Decision:
    if key is not None and not binding.key_id.same_vault(key):
        detail = f"bound to a key in {binding.key_id.vault_url}, not {key.vault_url}"
        return Finding(binding, FindingKind.DIFFERENT_VAULT, detail)
    if key is not None and not binding.key_id.same_key(key):
        detail = f"bound to key {binding.key_id.name!r}, not {key.name!r}"
        return Finding(binding, FindingKind.DIFFERENT_KEY, detail)
    bound = index.get(binding.key_id)
    if bound is None:
        detail = f"bound version {binding.key_id.version} is not among the key's versions"
        return Finding(binding, FindingKind.BOUND_VERSION_UNKNOWN, detail, target)
    verdict = evaluate(bound, policy, now, bound_vault=binding.key_id)
    problem = _problem(verdict.codes)
    if target is not None and version_order(target, current) > version_order(bound, current):
        reason = f"newer version {target.version} replaces {bound.version}"
        if problem is not None:
            reason = f"{reason}; {_describe(bound, verdict.reasons)}"
        return Move(binding, target, reason, problem)
    if problem is None:
        return UpToDate(binding, bound)
    if target is None:
        detail = f"no bindable version to move to; {_describe(bound, verdict.reasons)}"
        if problem not in _BROKEN:
            problem = FindingKind.NO_VALID_VERSION
        return Finding(binding, problem, detail, None, verdict.reasons)
    detail = (
        f"{_describe(bound, verdict.reasons)}; the newest bindable version {target.version}"
        " is older, so the account is not moved back"
    )
    return Finding(binding, problem, detail, target, verdict.reasons)


def _problem(codes: frozenset[ReasonCode]) -> FindingKind | None:
    """The finding kind for a bound version failing ``codes`` (None when it passes)."""
    if not codes:
        return None
    for code, kind in _SEVERITY:
        if code in codes:
            return kind
    return FindingKind.BOUND_VERSION_REJECTED


def _describe(bound: KeyVersion, reasons: tuple[Reason, ...]) -> str:
    return f"bound version {bound.version} is unsafe: " + "; ".join(r.message for r in reasons)
