"""Long-running account updates of the Cognitive Services resource provider.

An encryption change starts an :class:`Operation` that takes the account's
``lro_seconds`` of monotonic time; when it is due, :func:`finish` runs the Key Vault
checks and either binds the key or fails the operation (and the account's
``provisioningState``), keeping the previous binding. :func:`retry_after` is the
``Retry-After`` header of answers about an operation still running.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cmk.sandbox.arm.cognitive.bodies import KEY_VAULT, iso, new_etag
from cmk.sandbox.arm.cognitive.cmk import bind, check_key, latest_version
from cmk.sandbox.arm.errors import ArmError
from cmk.sandbox.world import AccountState, Encryption, World


@dataclass
class Operation:
    """One asynchronous account update."""

    id: str
    account_key: str  # lower resource id
    subscription_id: str
    location: str
    target: Encryption
    started: float  # monotonic
    duration: float
    start_time: datetime
    status: str = "InProgress"
    end_time: datetime | None = None
    error: ArmError | None = None

    def due(self, now: float) -> bool:
        """Whether the operation has run its course at monotonic time ``now``."""
        return now >= self.started + self.duration

    def status_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": (
                f"/subscriptions/{self.subscription_id}/providers/Microsoft.CognitiveServices"
                f"/locations/{self.location}/operationStatuses/{self.id}"
            ),
            "name": self.id,
            "status": self.status,
            "startTime": iso(self.start_time),
        }
        if self.end_time is not None:
            body["endTime"] = iso(self.end_time)
        if self.error is not None:
            body["error"] = self.error.body()["error"]
        return body


def start(world: World, account: AccountState, target: Encryption, now: float) -> Operation:
    """An operation moving ``account`` to ``target``, started at monotonic time ``now``;
    the account becomes ``Updating``."""
    operation = Operation(
        id=str(uuid.uuid4()),
        account_key=account.resource_id.lower(),
        subscription_id=account.subscription_id,
        location=account.location,
        target=target,
        started=now,
        duration=max(0.0, account.lro_seconds),
        start_time=world.clock.now(),
    )
    account.provisioning_state = "Updating"
    account.etag = new_etag()
    return operation


def finish(world: World, operation: Operation, allowed_key_sizes: frozenset[int]) -> None:
    """End a due operation: bind the checked key, or fail with the check's error."""
    account = world.accounts.get(operation.account_key)
    operation.end_time = world.clock.now()
    if account is None:
        operation.status = "Failed"
        operation.error = ArmError(404, "ResourceNotFound", "The account was deleted.")
        return
    failure = check_key(world, account, operation.target, allowed_key_sizes)
    if failure is not None:
        operation.status = "Failed"
        operation.error = failure
        account.provisioning_state = "Failed"
        return
    target = operation.target
    if target.key_source == KEY_VAULT and not target.key_version:
        target = replace(target, key_version=latest_version(world, target))
    bind(world, account, target)
    account.provisioning_state = "Succeeded"
    operation.status = "Succeeded"


def retry_after(operation: Operation, now: float, floor: float, cap: float) -> str:
    """The remaining time in seconds, clamped to ``floor``..``cap``: whole seconds, or
    hundredths when ``floor`` is below one second (tests poll faster)."""
    remaining = operation.started + operation.duration - now
    seconds = min(cap, max(floor, remaining))
    return str(math.ceil(seconds)) if floor >= 1 else f"{seconds:.2f}"
