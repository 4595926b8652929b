"""Pure decisions of the use cases: the re-check of planner moves, and report JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cmk.keyid import KeyId
from cmk.planner import Binding, Finding, Move
from cmk.policy import KeyVersion, VersionPolicy
from cmk.resource_id import AccountId
from cmk.usecases.keyview import _checked, decide, newest_bindable
from cmk.usecases.report import PlannedMove, to_jsonable

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = VersionPolicy()
KEY = KeyId("https://kvtest.vault.azure.net", "cmk")
ACCOUNT = AccountId("aaaaaaaa-1111-4111-8111-111111111111", "rg", "acct")


def _version(n: int, *, days_ago: int, enabled: bool = True) -> KeyVersion:
    return KeyVersion(
        key_id=KEY.with_version(f"{n:032x}"),
        kty="RSA",
        size=2048,
        key_ops=frozenset({"wrapKey", "unwrapKey"}),
        enabled=enabled,
        not_before=None,
        expires=None,
        created=NOW - timedelta(days=days_ago),
        recovery_level="Recoverable",
    )


class TestDecide:
    def test_stale_binding_moves_to_newest_bindable(self) -> None:
        """An older binding moves to the newest bindable version, not a disabled newer one."""
        old, good, disabled = (
            _version(1, days_ago=9),
            _version(2, days_ago=5),
            _version(3, days_ago=1, enabled=False),
        )
        binding = Binding(ACCOUNT, old.key_id)

        [decision] = decide([old, good, disabled], [binding], POLICY, NOW)

        assert isinstance(decision, Move) and decision.target == good
        assert newest_bindable([old, good, disabled], POLICY, NOW) == good

    def test_move_to_rejected_target_becomes_finding(self) -> None:
        """A Move to a version the policy rejects is turned into a Finding (defence in depth)."""
        old, bad = _version(1, days_ago=9), _version(2, days_ago=1, enabled=False)
        move = Move(Binding(ACCOUNT, old.key_id), bad, "planner bug")

        checked = _checked(move, old, None, POLICY, NOW)

        assert isinstance(checked, Finding)

    def test_backward_move_is_redirected_or_refused(self) -> None:
        """A Move to an older version is replaced by the newest bindable newer one, else refused."""
        older, bound, newest = (
            _version(1, days_ago=9),
            _version(2, days_ago=5),
            _version(3, days_ago=1),
        )
        move = Move(Binding(ACCOUNT, bound.key_id), older, "planner bug")

        assert isinstance(_checked(move, bound, None, POLICY, NOW), Finding)
        redirected = _checked(move, bound, newest, POLICY, NOW)
        assert isinstance(redirected, Move) and redirected.target == newest


class TestReportJson:
    def test_ids_and_times_become_strings(self) -> None:
        """to_jsonable writes ids as strings and keeps plain values."""
        old, new = _version(1, days_ago=2), _version(2, days_ago=1)
        move = PlannedMove.from_move(Move(Binding(ACCOUNT, old.key_id), new, "newer"))

        data = to_jsonable(move)

        assert data == {
            "account_id": str(ACCOUNT),
            "key_id": str(KEY),
            "from_version": old.version,
            "to_version": new.version,
            "urgent": False,
            "reason": "newer",
        }
