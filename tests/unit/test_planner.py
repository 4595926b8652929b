"""Tests for cmk.planner: per-account decisions over one key's versions."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cmk.keyid import KeyId
from cmk.planner import (
    Binding,
    Decision,
    Finding,
    FindingKind,
    Move,
    UpToDate,
    newest_bindable,
    plan,
    version_order,
)
from cmk.policy import KeyVersion, ReasonCode, VersionPolicy, evaluate
from cmk.resource_id import AccountId

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
KEY = KeyId.parse("https://kv-prod.vault.azure.net/keys/cmk")
POLICY = VersionPolicy()
T = TypeVar("T")
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"


def version(n: int, *, days_ago: float | None = None, **changes: Any) -> KeyVersion:
    """Version number ``n`` (version string f'{n:032x}'), created ``days_ago`` (default 100-n)."""
    age = timedelta(days=100 - n if days_ago is None else days_ago)
    base = KeyVersion(
        key_id=KEY.with_version(f"{n:032x}"),
        kty="RSA",
        size=2048,
        key_ops=frozenset({"wrapKey", "unwrapKey"}),
        enabled=True,
        not_before=None,
        expires=NOW + timedelta(days=365),
        created=NOW - age,
        recovery_level="Recoverable+Purgeable"
        if changes.pop("purgeable", False)
        else "Recoverable",
    )
    return replace(base, **changes)


def binding(name: str, key_id: KeyId) -> Binding:
    """A binding of account ``name`` to ``key_id``."""
    return Binding(AccountId(SUBSCRIPTION, "rg-ai", name), key_id)


def one(versions: list[KeyVersion], bound: KeyId) -> Decision:
    """The single decision for one account bound to ``bound``."""
    [decision] = plan(versions, [binding("acct", bound)], POLICY, NOW)
    return decision


class TestBinding:
    """Binding construction."""

    def test_requires_versioned_key(self) -> None:
        """A binding must name a key version."""
        with pytest.raises(ValueError, match="versioned"):
            binding("acct", KEY)


class TestNewestBindable:
    """newest_bindable() picks the newest version the policy accepts."""

    def test_newest_by_created_not_by_input_order(self) -> None:
        """The newest created version wins wherever it is in the input."""
        versions = [version(3), version(1), version(2)]
        assert newest_bindable(versions, POLICY, NOW) == version(3)

    def test_skips_rejected_versions(self) -> None:
        """A newer but disabled version is skipped."""
        versions = [version(1), version(2, enabled=False)]
        assert newest_bindable(versions, POLICY, NOW) == version(1)

    def test_tie_broken_by_version_string(self) -> None:
        """Equal creation times are ordered by the larger version string."""
        versions = [version(7, days_ago=1), version(9, days_ago=1), version(8, days_ago=1)]
        assert newest_bindable(versions, POLICY, NOW) == version(9, days_ago=1)

    def test_tie_goes_to_the_current_version(self) -> None:
        """Within one second (Key Vault's resolution) the key's current version is newest,
        whatever its version string."""
        versions = [version(9, days_ago=1), version(7, days_ago=1)]
        current = version(7, days_ago=1).version
        assert newest_bindable(versions, POLICY, NOW, current=current) == version(7, days_ago=1)

    def test_account_moves_to_a_current_version_created_in_the_same_second(self) -> None:
        """A new current version dated the same second as the bound one still wins the move."""
        bound, new = version(9, days_ago=1), version(7, days_ago=1)
        [decision] = plan(
            [bound, new], [binding("acct", bound.key_id)], POLICY, NOW, current=new.version
        )
        assert isinstance(decision, Move) and decision.target == new

    def test_none_when_nothing_bindable(self) -> None:
        """No bindable version gives None."""
        assert newest_bindable([version(1, enabled=False)], POLICY, NOW) is None
        assert newest_bindable([], POLICY, NOW) is None


class TestPlan:
    """plan(): one decision per binding, in binding order."""

    def test_up_to_date(self) -> None:
        """An account on the newest bindable version is up to date."""
        versions = [version(1), version(2)]
        assert one(versions, version(2).key_id) == UpToDate(
            binding("acct", version(2).key_id), version(2)
        )

    def test_routine_move(self) -> None:
        """An account on an older good version moves to the newest, not urgently."""
        decision = one([version(1), version(2)], version(1).key_id)
        assert isinstance(decision, Move)
        assert decision.target == version(2)
        assert not decision.urgent
        assert decision.finding is None

    @pytest.mark.parametrize(
        ("changes", "kind"),
        [
            ({"enabled": False}, FindingKind.BOUND_VERSION_DISABLED),
            ({"expires": NOW - timedelta(days=1)}, FindingKind.BOUND_VERSION_EXPIRED),
            ({"expires": NOW + timedelta(days=3)}, FindingKind.BOUND_VERSION_EXPIRING),
            ({"recovery_level": "Purgeable"}, FindingKind.BOUND_VERSION_REJECTED),
        ],
    )
    def test_urgent_move(self, changes: dict[str, Any], kind: FindingKind) -> None:
        """A move away from an unsafe bound version is urgent and names the problem."""
        bound = version(1, **changes)
        decision = one([bound, version(2)], bound.key_id)
        assert isinstance(decision, Move)
        assert decision.urgent
        assert decision.finding is kind
        assert decision.target == version(2)

    def test_disabled_outranks_expiring(self) -> None:
        """When the bound version is both disabled and expiring, the finding is 'disabled'."""
        bound = version(1, enabled=False, expires=NOW + timedelta(days=1))
        decision = one([bound, version(2)], bound.key_id)
        assert isinstance(decision, Move)
        assert decision.finding is FindingKind.BOUND_VERSION_DISABLED

    def test_never_moves_backwards(self) -> None:
        """A disabled bound version newer than the only good one stays, with a finding."""
        bound = version(2, enabled=False)
        decision = one([version(1), bound], bound.key_id)
        assert isinstance(decision, Finding)
        assert decision.kind is FindingKind.BOUND_VERSION_DISABLED
        assert decision.target == version(1)
        assert ReasonCode.DISABLED in {reason.code for reason in decision.reasons}

    def test_expiring_without_successor(self) -> None:
        """An expiring bound version with nothing to move to is NO_VALID_VERSION."""
        bound = version(1, expires=NOW + timedelta(days=5))
        decision = one([bound], bound.key_id)
        assert isinstance(decision, Finding)
        assert decision.kind is FindingKind.NO_VALID_VERSION
        assert decision.target is None
        assert [reason.code for reason in decision.reasons] == [ReasonCode.EXPIRING]

    @pytest.mark.parametrize(
        ("changes", "kind"),
        [
            ({"enabled": False}, FindingKind.BOUND_VERSION_DISABLED),
            ({"expires": NOW - timedelta(seconds=1)}, FindingKind.BOUND_VERSION_EXPIRED),
        ],
    )
    def test_broken_without_successor(self, changes: dict[str, Any], kind: FindingKind) -> None:
        """A disabled or expired bound version names the finding even with no successor."""
        bound = version(1, **changes)
        decision = one([bound], bound.key_id)
        assert isinstance(decision, Finding)
        assert decision.kind is kind
        assert decision.target is None

    def test_unknown_bound_version_is_not_moved(self) -> None:
        """A bound version missing from the list is a finding, never a move."""
        decision = one([version(1), version(2)], KEY.with_version("f" * 32))
        assert isinstance(decision, Finding)
        assert decision.kind is FindingKind.BOUND_VERSION_UNKNOWN
        assert decision.target == version(2)

    def test_no_versions_at_all(self) -> None:
        """With no versions the bound version is unknown and there is no target."""
        decision = one([], version(1).key_id)
        assert isinstance(decision, Finding)
        assert decision.kind is FindingKind.BOUND_VERSION_UNKNOWN
        assert decision.target is None

    def test_different_vault(self) -> None:
        """A binding to a key in another vault is a finding and never moves."""
        other = KeyId.parse("https://kv-other.vault.azure.net/keys/cmk/" + "1" * 32)
        decision = one([version(1), version(2)], other)
        assert isinstance(decision, Finding)
        assert decision.kind is FindingKind.DIFFERENT_VAULT

    def test_different_key(self) -> None:
        """A binding to another key in the same vault is a finding and never moves."""
        other = KeyId.parse("https://kv-prod.vault.azure.net/keys/other/" + "1" * 32)
        decision = one([version(1), version(2)], other)
        assert isinstance(decision, Finding)
        assert decision.kind is FindingKind.DIFFERENT_KEY

    def test_decisions_follow_binding_order(self) -> None:
        """Each binding gets its own decision, in input order."""
        versions = [version(1), version(2)]
        bindings = [binding("acct-b", version(2).key_id), binding("acct-a", version(1).key_id)]
        decisions = plan(versions, bindings, POLICY, NOW)
        assert [d.binding for d in decisions] == bindings
        assert isinstance(decisions[0], UpToDate)
        assert isinstance(decisions[1], Move)

    def test_versions_of_two_keys_refused(self) -> None:
        """Mixing versions of two keys is a programming error."""
        stray = replace(
            version(2), key_id=KeyId.parse("https://kv-prod.vault.azure.net/keys/x/" + "2" * 32)
        )
        with pytest.raises(ValueError, match="one key"):
            plan([version(1), stray], [], POLICY, NOW)

    def test_conflicting_duplicates_refused(self) -> None:
        """Two different descriptions of the same version are refused; equal ones are fine."""
        plan([version(1), version(1)], [], POLICY, NOW)
        with pytest.raises(ValueError, match="conflicting"):
            plan([version(1), version(1, enabled=False)], [], POLICY, NOW)


# --- properties -----------------------------------------------------------------------

VERSION_STRINGS = st.integers(min_value=0, max_value=2**128 - 1).map(lambda n: f"{n:032x}")


def mostly(good: T, *bad: T) -> st.SearchStrategy[T]:
    """``good`` four times out of five, otherwise one of ``bad``."""
    return st.sampled_from([good] * (4 * len(bad)) + list(bad))


@st.composite
def key_versions(draw: st.DrawFn) -> KeyVersion:
    """Any version of KEY, usually bindable, created within a small window (ties likely)."""
    return KeyVersion(
        key_id=KEY.with_version(draw(VERSION_STRINGS)),
        kty=draw(mostly("RSA", "RSA-HSM", "EC")),
        size=draw(mostly(2048, 3072, None)),
        key_ops=draw(mostly(frozenset({"wrapKey", "unwrapKey"}), frozenset({"sign"}))),
        enabled=draw(mostly(True, False)),
        not_before=draw(mostly(None, NOW - timedelta(days=1), NOW + timedelta(days=1))),
        expires=draw(
            st.none()
            | st.integers(min_value=-10, max_value=400).map(lambda d: NOW + timedelta(days=d))
        ),
        created=NOW - timedelta(days=draw(st.integers(min_value=0, max_value=20))),
        recovery_level=draw(mostly("Recoverable", "Recoverable+Purgeable", None)),
    )


version_lists = st.lists(key_versions(), max_size=8, unique_by=lambda v: v.key_id)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[KeyVersion], list[Binding]]:
    """Versions plus bindings to known versions, unknown versions or other keys."""
    versions = draw(version_lists)
    targets = [v.key_id for v in versions] + [
        KEY.with_version(draw(VERSION_STRINGS)),
        KeyId.parse("https://kv-other.vault.azure.net/keys/cmk/" + "e" * 32),
    ]
    count = draw(st.integers(min_value=0, max_value=6))
    bindings = [binding(f"acct-{i}", draw(st.sampled_from(targets))) for i in range(count)]
    return versions, bindings


@st.composite
def scenarios_with_current(
    draw: st.DrawFn,
) -> tuple[list[KeyVersion], list[Binding], str | None]:
    """A scenario and the key's current version (one of its versions), when known."""
    versions, bindings = draw(scenarios())
    current = draw(st.sampled_from([None, *(v.version for v in versions)]))
    return versions, bindings, current


BOUND_4 = [binding("acct", version(4).key_id)]
V4 = version(4).version


class TestPlanProperties:
    """Invariants of plan() over arbitrary versions and bindings."""

    @given(scenarios_with_current())
    # Dated to the same second, an unbindable bound version newer by its version string,
    # then by being the key's current version: nothing to move to.
    @example(([version(3, days_ago=1), version(4, days_ago=1, enabled=False)], BOUND_4, None))
    @example(([version(5, days_ago=1), version(4, days_ago=1, enabled=False)], BOUND_4, V4))
    def test_never_moves_backwards(
        self, scenario: tuple[list[KeyVersion], list[Binding], str | None]
    ) -> None:
        """A move's target is newer than the version the account has by the product's own
        order (version_order: created, then the key's current version, then the version
        string) — not merely created in the same second."""
        versions, bindings, current = scenario
        by_id = {v.key_id: v for v in versions}
        for decision in plan(versions, bindings, POLICY, NOW, current=current):
            if isinstance(decision, Move):
                bound = by_id[decision.binding.key_id]
                assert version_order(decision.target, current) > version_order(bound, current)
                assert decision.target.created >= bound.created

    @given(scenarios())
    def test_targets_only_bindable_versions(
        self, scenario: tuple[list[KeyVersion], list[Binding]]
    ) -> None:
        """Every move targets a version the policy accepts, in the account's own key."""
        versions, bindings = scenario
        for decision in plan(versions, bindings, POLICY, NOW):
            if isinstance(decision, Move):
                verdict = evaluate(decision.target, POLICY, NOW, decision.binding.key_id)
                assert verdict.bindable
                assert decision.target.key_id.same_key(decision.binding.key_id)

    @given(scenarios(), st.randoms(use_true_random=False))
    def test_independent_of_input_order(
        self, scenario: tuple[list[KeyVersion], list[Binding]], rng: random.Random
    ) -> None:
        """Shuffling the versions never changes any decision."""
        versions, bindings = scenario
        shuffled = list(versions)
        rng.shuffle(shuffled)
        assert plan(shuffled, bindings, POLICY, NOW) == plan(versions, bindings, POLICY, NOW)

    @given(scenarios())
    def test_up_to_date_means_newest_bindable(
        self, scenario: tuple[list[KeyVersion], list[Binding]]
    ) -> None:
        """UpToDate only when the account already has the newest bindable version."""
        versions, bindings = scenario
        best = newest_bindable(versions, POLICY, NOW)
        for decision in plan(versions, bindings, POLICY, NOW):
            if isinstance(decision, UpToDate):
                assert decision.version == best
            if isinstance(decision, Move):
                assert decision.target == best
