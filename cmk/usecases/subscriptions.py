"""Which subscriptions a run inventories, and which configured ones the identity cannot see.

- CMK_SUBSCRIPTIONS unset: every subscription the identity can read (ARM
  ``GET /subscriptions``), except disabled or deleted ones (ARM refuses reads there).
- CMK_SUBSCRIPTIONS set: those subscriptions, checked against the same list. One the
  identity cannot see is left out of the inventory and reported in ``not_visible``
  (Resource Graph would silently answer nothing for it: a typo would look like success);
  a WARNING is logged each time, for the Functions app's logs. If the list itself cannot
  be read, the configured ones are used unchecked (``checked`` is False).

Without a :class:`~cmk.ports.SubscriptionDirectory` on the engine, CMK_SUBSCRIPTIONS is
used as it is, and must be set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cmk.errors import CmkError, ConfigurationError
from cmk.usecases.context import Engine

__all__ = [
    "FROM_IDENTITY",
    "FROM_SETTING",
    "HIDDEN_FIX",
    "SubscriptionScope",
    "subscription_scope",
]

log = logging.getLogger(__name__)

#: Where the scope came from.
FROM_SETTING = "CMK_SUBSCRIPTIONS"
FROM_IDENTITY = "readable by the identity"

_UNUSABLE_STATES = frozenset({"disabled", "deleted"})
#: The fix of a run refused for subscriptions the identity cannot see.
HIDDEN_FIX = (
    "fix CMK_SUBSCRIPTIONS (or unset it: every subscription the identity can read), or grant"
    " the identity a role there"
)


@dataclass(frozen=True)
class SubscriptionScope:
    """The subscriptions to inventory (lowercase ids), where they came from, their display
    names when known, and the configured ones the identity cannot see."""

    subscriptions: tuple[str, ...]
    source: str
    names: tuple[tuple[str, str], ...] = ()
    not_visible: tuple[str, ...] = ()
    checked: bool = True

    def label(self, subscription_id: str) -> str:
        """``name (id)`` when the name is known, else the id."""
        name = dict(self.names).get(subscription_id)
        return f"{name} ({subscription_id})" if name else subscription_id

    def refusal(self, what: str) -> str | None:
        """Why ``what`` (a command that writes: a rotation) must not run in this scope, or
        None: the accounts of a configured subscription the identity cannot see would not
        be inventoried, so they would stay on their old version while the run reported
        success."""
        if not self.not_visible:
            return None
        return (
            f"{what} refused, nothing was created or written: {len(self.not_visible)}"
            f" subscription(s) of CMK_SUBSCRIPTIONS ({', '.join(self.not_visible)}) are not"
            " visible to the identity, so the accounts there would be left on their old"
            " version unnoticed"
        )

    def warnings(self) -> list[str]:
        """What is wrong with the scope, one line each."""
        return [
            f"subscription {subscription} of CMK_SUBSCRIPTIONS is not visible to the identity"
            " (a typo, or no role assignment in it): it is not inventoried; fix the id or"
            " grant the identity a role there (docs/deployment.md, Least privilege)"
            for subscription in self.not_visible
        ]


async def subscription_scope(engine: Engine) -> SubscriptionScope:
    """The subscriptions in scope for ``engine`` (one ARM read, cached by the adapter)."""
    configured = engine.settings.subscriptions
    directory = engine.subscriptions
    if directory is None:
        return SubscriptionScope(engine.settings.require_subscriptions(), FROM_SETTING)
    if not configured:
        readable = await directory.readable()
        usable = [s for s in readable if s.state.lower() not in _UNUSABLE_STATES]
        if not usable:
            raise ConfigurationError(
                "CMK_SUBSCRIPTIONS is unset and the identity can read no subscription:"
                " grant it a role in the subscriptions to manage (docs/deployment.md), or"
                " set CMK_SUBSCRIPTIONS"
            )
        return SubscriptionScope(
            tuple(s.subscription_id for s in usable),
            FROM_IDENTITY,
            names=tuple((s.subscription_id, s.display_name) for s in usable),
        )
    try:
        readable = await directory.readable()
    except CmkError as error:
        log.warning(
            "cannot list the subscriptions the identity can read (%s): using"
            " CMK_SUBSCRIPTIONS unchecked",
            error,
            extra={"cmk_step": "scope"},
        )
        return SubscriptionScope(configured, FROM_SETTING, checked=False)
    seen = {s.subscription_id: s for s in readable}
    scope = SubscriptionScope(
        tuple(s for s in configured if s in seen),
        FROM_SETTING,
        names=tuple((s, seen[s].display_name) for s in configured if s in seen),
        not_visible=tuple(s for s in configured if s not in seen),
    )
    for warning in scope.warnings():
        log.warning(warning, extra={"cmk_step": "scope"})
    return scope
