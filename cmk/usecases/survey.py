"""The whole scope as data: every CMK account in scope, its key read once, a decision each.

:func:`survey` streams the inventory, groups accounts by key (outside the vault
allow-list they are only counted), reads each distinct key once (see
:class:`~cmk.usecases.keyview.KeyVersions`) and decides every binding. It writes nothing;
:mod:`cmk.usecases.sweep` acts on the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cmk.errors import CmkError
from cmk.keyid import KeyId
from cmk.planner import Decision
from cmk.policy import KeyVersion
from cmk.ports import AccountRecord
from cmk.usecases.context import Engine, gather_bounded
from cmk.usecases.keyview import KeyVersions, decide
from cmk.usecases.subscriptions import subscription_scope

__all__ = ["KeySurvey", "Survey", "survey"]

log = logging.getLogger(__name__)


@dataclass
class KeySurvey:
    """One key: what was read of it, the accounts bound to it, and a decision for each."""

    key: KeyId
    records: list[AccountRecord] = field(default_factory=list)
    view: KeyVersions | None = None
    error: str | None = None
    decisions: list[Decision] = field(default_factory=list)

    @property
    def latest(self) -> KeyVersion | None:
        """The key's latest version, if it could be read."""
        return self.view.latest if self.view else None


@dataclass
class Survey:
    """Every key in scope, the accounts outside the allow-list, and what failed to read."""

    keys: dict[KeyId, KeySurvey] = field(default_factory=dict)
    out_of_scope: list[AccountRecord] = field(default_factory=list)
    key_requests: int = 0

    @property
    def accounts(self) -> int:
        """How many CMK accounts the inventory returned."""
        return sum(len(k.records) for k in self.keys.values()) + len(self.out_of_scope)

    @property
    def errors(self) -> list[str]:
        """Why some keys could not be read."""
        return [f"{k.key}: {k.error}" for k in self.keys.values() if k.error]


async def survey(engine: Engine) -> Survey:
    """Inventory everything in scope and decide every binding (no writes)."""
    result = Survey()
    scope = await subscription_scope(engine)
    async for record in engine.inventory.cmk_accounts(scope.subscriptions):
        if record.binding is None:
            continue
        key = record.binding.key_id.versionless()
        if not engine.settings.vault_in_scope(key):
            result.out_of_scope.append(record)
            continue
        result.keys.setdefault(key, KeySurvey(key)).records.append(record)
    await gather_bounded(
        engine.settings.max_concurrency, (_read(engine, k) for k in result.keys.values())
    )
    result.key_requests = sum(k.view.requests for k in result.keys.values() if k.view)
    log.info(
        "survey: %d accounts, %d keys, %d key requests, %d out of scope, %d key errors",
        result.accounts,
        len(result.keys),
        result.key_requests,
        len(result.out_of_scope),
        len(result.errors),
        extra={"cmk_step": "survey"},
    )
    return result


async def _read(engine: Engine, item: KeySurvey) -> None:
    """Read one key and decide its bindings; a failure is kept on the item, not raised."""
    bindings = [record.binding for record in item.records if record.binding is not None]
    try:
        item.view = await KeyVersions.load(engine.keys, item.key, engine.policy, engine.now())
        versions = await item.view.covering(bindings)
    except CmkError as error:
        item.error = str(error) or type(error).__name__
        log.warning("cannot read %s: %s", item.key, item.error, extra={"cmk_key_id": str(item.key)})
        return
    item.decisions = decide(
        versions, bindings, engine.policy, engine.now(), current=item.view.latest.version
    )
