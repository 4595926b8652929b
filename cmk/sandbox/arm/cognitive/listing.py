"""Listing Cognitive Services accounts a page at a time, ordered by resource id.

A page continues after the last id of the previous one, so a listing stays consistent
while accounts come and go. The sorted ids per scope (subscription or resource group)
are kept until the world's account table changes size or is replaced.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from cmk.sandbox.world import AccountState


def listing_prefix(subscription_id: str, resource_group: str | None) -> str:
    """The lower-case resource id prefix of the accounts a listing covers."""
    prefix = f"/subscriptions/{subscription_id}/".lower()
    if resource_group is not None:
        prefix += f"resourcegroups/{resource_group}/".lower()
    return prefix


@dataclass
class AccountIndex:
    """Sorted account keys by resource id prefix."""

    _keys: dict[str, list[str]] = field(default_factory=dict)
    _stamp: tuple[int, int] = (0, -1)

    def sorted_keys(self, accounts: dict[str, AccountState], prefix: str) -> list[str]:
        stamp = (id(accounts), len(accounts))
        if stamp != self._stamp:
            self._keys = {}
            self._stamp = stamp
        keys = self._keys.get(prefix)
        if keys is None:
            keys = sorted(k for k in accounts if k.startswith(prefix))
            self._keys[prefix] = keys
        return keys


def page_after(
    keys: list[str], accounts: dict[str, AccountState], after: str | None, page_size: int
) -> tuple[list[AccountState], str | None]:
    """The accounts of the ``page_size`` keys after ``after`` (from the start when None),
    and the last key to continue from (None at the end)."""
    start = bisect.bisect_right(keys, after.lower()) if after else 0
    chunk = keys[start : start + page_size]
    found = [a for a in (accounts.get(k) for k in chunk) if a is not None]
    more = start + page_size < len(keys)
    return found, (chunk[-1] if more and chunk else None)
