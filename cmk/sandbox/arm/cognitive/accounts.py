"""The Microsoft.CognitiveServices/accounts resource provider: account JSON, update rules,
and long-running operations. HTTP lives in :mod:`cmk.sandbox.arm.service`; this module works on
the world and raises :class:`ArmError` the way the real RP answers.

:class:`CognitiveRP` (one per world, :func:`rp_for`) keeps the operations and listing
indexes and composes the parts, which live in their own modules:
:mod:`~cmk.sandbox.arm.cognitive.bodies` (account JSON), :mod:`~cmk.sandbox.arm.cognitive.requests`
(PATCH/PUT bodies), :mod:`~cmk.sandbox.arm.cognitive.identity` (managed identities),
:mod:`~cmk.sandbox.arm.cognitive.cmk` (CMK rules), :mod:`~cmk.sandbox.arm.cognitive.operations`
(long-running updates), :mod:`~cmk.sandbox.arm.cognitive.listing` (paging) and
:mod:`~cmk.sandbox.arm.cognitive.seed` (accounts without requests). Their public names are
importable from here too.

Shapes follow ``specification/cognitiveservices/resource-manager/Microsoft.CognitiveServices/
stable/2025-06-01|2025-09-01/cognitiveservices.json`` in Azure/azure-rest-api-specs (examples
``GetAccount.json``, ``UpdateAccount.json``, ``ListAccountsBySubscription.json``; the first two
are kept in ``tests/sandbox/data/arm``). ``properties.encryption`` is omitted while the account uses
Microsoft-managed keys, as the service does (hashicorp/terraform-provider-azurerm#28368).

Long-running updates
--------------------
A PATCH (or PUT) that changes ``properties.encryption`` answers ``202 Accepted`` with the
account (``provisioningState: Updating``) and ``Azure-AsyncOperation`` (operation status),
``Location`` (operation result) and ``Retry-After`` headers — what ``begin_update``'s
ARMPolling follows. The operation takes ``AccountState.lro_seconds`` of real (monotonic)
time (``CognitiveRP.clock``); it is settled lazily whenever the account, a listing, Resource
Graph or the status endpoint is read. An update with ``lro_seconds=math.inf`` runs until
:meth:`CognitiveRP.finish_now` ends it: how a test holds an update open for as long as it
needs, whatever the machine's load, and then decides when it ends. ``Retry-After`` is the
remaining time in whole seconds, clamped to ``retry_after_floor``..``retry_after_cap``
(1..15 s; tests lower the floor to poll faster).
A PATCH without an encryption change (tags, sku, identity only), or one restating the
current binding, answers ``200`` at once with the account as it is: ``Succeeded`` stays
``Succeeded``, and a ``Failed`` left by an earlier update stays ``Failed`` (whether Azure's
resource provider re-provisions a Failed account on such a write is not known; the
sandbox does not guess). A write while an
update is in flight answers ``409 RequestConflict`` with ARM's "provisioning state is not
terminal" message (Azure/bicep-types-az#2419).

CMK rules (DESIGN §1) and how the RP fails
------------------------------------------
Rejected synchronously with ``400`` — the request alone shows the problem:

=================================  ======================================================
``InvalidKeySource`` (assumed)     keySource other than Microsoft.CognitiveServices /
                                   Microsoft.KeyVault
``InvalidKeyVaultProperties``      keySource Microsoft.KeyVault without keyVaultUri or
(assumed)                          keyName, or a keyVaultUri that is not
                                   ``https://<vault host>/``
``AccountIdentityRequired``        the account has no managed identity (or, without
(assumed)                          identityClientId, no system-assigned one)
``IdentityNotFound`` (assumed)     identityClientId names no user-assigned identity of
                                   the account
``KeyVaultChangeNotSupported``     keyVaultUri differs from the vault the account already
(assumed)                          uses ("a key can only be changed to another key in the
                                   same vault")
=================================  ======================================================

Found while the operation runs (the RP talks to Key Vault with the account's identity):
the LRO ends ``Failed`` with one of these codes in the status body's ``error`` (the SDK
raises ``HttpResponseError`` whose ``error.code`` is it), ``provisioningState`` becomes
``Failed`` and the previous binding stays. All codes are assumed (Microsoft does not
publish the RP's codes); messages follow the documented requirements:
``KeyVaultNotFound``, ``KeyVaultTenantMismatch``, ``KeyVaultRegionMismatch``,
``KeyVaultPurgeProtectionRequired`` (soft delete and purge protection),
``KeyVaultAccessDenied`` (firewall denies trusted services, or the identity lacks
get/wrapKey/unwrapKey), ``KeyNotFound`` (key or version), ``KeyDisabled``,
``KeyExpired``, ``KeyNotYetValid``, ``UnsupportedKeyType`` (RSA/RSA-HSM of an allowed size
only, default 2048), ``KeyOperationNotPermitted`` (key_ops lacks wrapKey/unwrapKey).

``keyVersion`` may be omitted: the RP then binds the key's latest version and reports that
version (assumed; the service documents versioned keys). Every successful change of the
bound version is appended to ``AccountState.binding_history``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmk.sandbox.arm.cognitive.bodies import (
    ACCOUNT_TYPE,
    KEY_VAULT,
    MICROSOFT_MANAGED,
    account_json,
    account_key,
    encryption_json,
    endpoint_of,
    identity_json,
    iso,
    properties_json,
)
from cmk.sandbox.arm.cognitive.cmk import bind, check_key, parse_encryption, validate_request
from cmk.sandbox.arm.cognitive.identity import apply_identity
from cmk.sandbox.arm.cognitive.listing import AccountIndex, listing_prefix, page_after
from cmk.sandbox.arm.cognitive.operations import Operation, finish, retry_after, start
from cmk.sandbox.arm.cognitive.requests import (
    BUSY_STATES,
    apply_patch,
    check_location,
    new_account,
    request_conflict,
)
from cmk.sandbox.arm.cognitive.seed import seed_account
from cmk.sandbox.arm.errors import ArmError, bad_request
from cmk.sandbox.world import AccountState, Encryption, World

__all__ = [
    "ACCOUNT_TYPE",
    "KEY_VAULT",
    "MICROSOFT_MANAGED",
    "ArmError",
    "CognitiveRP",
    "Operation",
    "account_json",
    "apply_identity",
    "bind",
    "check_key",
    "encryption_json",
    "endpoint_of",
    "identity_json",
    "iso",
    "parse_encryption",
    "properties_json",
    "rp_for",
    "seed_account",
    "validate_request",
]


@dataclass
class CognitiveRP:
    """The resource provider's state for one world: operations and listing indexes."""

    world: World
    clock: Callable[[], float] = time.monotonic
    page_size: int = 100
    allowed_key_sizes: frozenset[int] = frozenset({2048})
    retry_after_floor: float = 1.0  # Retry-After on 202/in-progress answers, seconds
    retry_after_cap: float = 15.0
    operations: dict[str, Operation] = field(default_factory=dict)
    _inflight: dict[str, Operation] = field(default_factory=dict)
    _listing: AccountIndex = field(default_factory=AccountIndex)

    # lookups --------------------------------------------------------------------
    def require_subscription(self, subscription_id: str) -> None:
        if subscription_id.lower() not in self.world.subscriptions:
            raise ArmError(
                404,
                "SubscriptionNotFound",
                f"The subscription '{subscription_id}' could not be found.",
            )

    def account(self, subscription_id: str, resource_group: str, name: str) -> AccountState:
        key = account_key(subscription_id, resource_group, name)
        self.settle(key)
        account = self.world.accounts.get(key)
        if account is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{ACCOUNT_TYPE}/{name}' under resource group "
                f"'{resource_group}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        return account

    def sorted_keys(self, prefix: str) -> list[str]:
        return self._listing.sorted_keys(self.world.accounts, prefix)

    def page(
        self, subscription_id: str, resource_group: str | None, after: str | None
    ) -> tuple[list[AccountState], str | None]:
        """One page of a listing, ordered by id; ``after`` is the last id of the previous
        page. Returns the accounts and the last id to continue from (None at the end)."""
        self.settle_all()
        keys = self.sorted_keys(listing_prefix(subscription_id, resource_group))
        return page_after(keys, self.world.accounts, after, self.page_size)

    # operations -----------------------------------------------------------------
    def settle(self, account_key: str) -> None:
        operation = self._inflight.get(account_key)
        if operation is not None and operation.due(self.clock()):
            self._complete(operation)

    def settle_all(self) -> None:
        now = self.clock()
        for operation in list(self._inflight.values()):
            if operation.due(now):
                self._complete(operation)

    def operation(self, operation_id: str) -> Operation | None:
        operation = self.operations.get(operation_id.lower())
        if operation is not None:
            self.settle(operation.account_key)
        return operation

    def retry_after(self, operation: Operation) -> str:
        return retry_after(operation, self.clock(), self.retry_after_floor, self.retry_after_cap)

    def finish_now(self, resource_id: str) -> Operation:
        """End the account's running update at once, as if its ``lro_seconds`` had passed
        (Key Vault checks included), and return it. Takes the world's lock: callable from a
        test's thread while the server runs. Raises KeyError when no update is running."""
        with self.world.lock:
            operation = self._inflight[resource_id.lower()]
            self._complete(operation)
            return operation

    def _complete(self, operation: Operation) -> None:
        self._inflight.pop(operation.account_key, None)
        finish(self.world, operation, self.allowed_key_sizes)

    def _start(self, account: AccountState, target: Encryption) -> Operation:
        operation = start(self.world, account, target, self.clock())
        self.operations[operation.id] = operation
        self._inflight[operation.account_key] = operation
        return operation

    # writes ---------------------------------------------------------------------
    def update(self, account: AccountState, body: dict[str, Any]) -> Operation | None:
        """Apply a PATCH body. Returns the started operation, or None when the change was
        applied at once. Raises ArmError for 400/409 answers."""
        key = account.resource_id.lower()
        self.settle(key)
        if key in self._inflight or account.provisioning_state in BUSY_STATES:
            raise request_conflict(account)
        target = apply_patch(self.world, account, body)
        return None if target is None else self._start(account, target)

    def create(
        self, subscription_id: str, resource_group: str, name: str, body: dict[str, Any]
    ) -> tuple[AccountState, Operation | None, bool]:
        """PUT: create or replace. Returns (account, operation or None, created)."""
        key = account_key(subscription_id, resource_group, name)
        self.settle(key)
        location = body.get("location") if isinstance(body, dict) else None
        if not isinstance(location, str) or not location:
            raise bad_request("LocationRequired", "The location property is required.")
        existing = self.world.accounts.get(key)
        if existing is not None:
            check_location(existing, resource_group, name, location)
            return existing, self.update(existing, body), False
        account, target = new_account(
            self.world, subscription_id, resource_group, name, location=location, body=body
        )
        self.world.accounts[key] = account
        if target is None:
            return account, None, True
        return account, self._start(account, target), True


_RPS: weakref.WeakKeyDictionary[World, CognitiveRP] = weakref.WeakKeyDictionary()


def rp_for(world: World) -> CognitiveRP:
    """The resource provider of a world (created on first use)."""
    rp = _RPS.get(world)
    if rp is None:
        rp = _RPS[world] = CognitiveRP(world)
    return rp
