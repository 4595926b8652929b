"""Cognitive Services accounts: the :class:`~cmk.ports.AccountStore` over ARM (aio).

One ``CognitiveServicesManagementClient`` per subscription, from a factory, cached
and closed by :meth:`CognitiveAccounts.close`.

:meth:`CognitiveAccounts.update_key_version` is the one write this product makes in
ARM. It starts from the caller's deciding read of the account, made under the account's
write lease (to keep ``keyVaultUri``, ``keyName`` and ``identityClientId`` exactly as the
account has them, and to answer without a PATCH when the version is already in place or
being applied), then PATCHes only ``properties.encryption``, once::

    {"properties": {"encryption": {"keySource": "Microsoft.KeyVault",
        "keyVaultProperties": {"keyVaultUri": ..., "keyName": ..., "keyVersion": <new>,
                               "identityClientId": ...}}}}

and follows the long-running operation's status for at most ``wait``. Past that it
returns IN_PROGRESS: the operation goes on in Azure and a later VERIFY job reads the
result. The Succeeded status of the operation the PATCH started verifies it: no final GET
of the account repeats what the status proved (:mod:`cmk.adapters.account_polling`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.polling import AsyncLROPoller
from azure.core.polling.base_polling import OperationFailed
from azure.mgmt.cognitiveservices.aio import CognitiveServicesManagementClient
from azure.mgmt.cognitiveservices.models import (
    Account,
    AccountProperties,
    Encryption,
    KeyVaultProperties,
)
from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling

from cmk.adapters._errors import azure_errors, status_code, translate
from cmk.adapters._sdk import text_of
from cmk.adapters.account_polling import StatusPolling
from cmk.adapters.arm_budget import PACED, ArmBudget
from cmk.errors import (
    AccessDenied,
    CmkError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    TransientError,
    UpdateFailed,
    UpdateUnanswered,
)
from cmk.keyid import KeyId
from cmk.planner import Binding
from cmk.ports import BUSY_STATES, AccountRecord, KeyVaultReference, UpdateOutcome
from cmk.resource_id import AccountId

__all__ = [
    "CognitiveAccounts",
    "account_record",
    "encryption_patch",
    "follow",
    "unfollowed",
]

logger = logging.getLogger(__name__)

KEY_VAULT_SOURCE = "Microsoft.KeyVault"

ClientFactory = Callable[[str], CognitiveServicesManagementClient]


def account_record(account: Account, account_id: AccountId | None = None) -> AccountRecord:
    """Our :class:`AccountRecord` for an SDK ``Account``.

    Raises InvalidInput (InvalidKeyId, InvalidResourceId) when the account uses Key Vault
    but its key reference cannot be parsed, or carries no version.
    """
    if account_id is None:
        account_id = AccountId.parse(account.id)
    properties = account.properties
    encryption = properties.encryption if properties is not None else None
    vault_properties = encryption.key_vault_properties if encryption is not None else None
    binding = None
    if encryption is not None and text_of(encryption.key_source).lower() == "microsoft.keyvault":
        if vault_properties is None or not vault_properties.key_version:
            raise InvalidInput(
                f"account {account_id} uses a Key Vault key without a keyVersion;"
                " cmk-rotator manages versioned bindings only"
            )
        key_id = KeyId.from_parts(
            vault_properties.key_vault_uri or "",
            vault_properties.key_name or "",
            vault_properties.key_version,
        )
        binding = Binding(
            account_id=account_id,
            key_id=key_id,
            identity_client_id=(vault_properties.identity_client_id or "").lower() or None,
            location=account.location,
        )
    identity = account.identity
    client_ids = frozenset(
        (user.client_id or "").lower()
        for user in ((identity.user_assigned_identities or {}) if identity else {}).values()
        if user is not None and user.client_id
    )
    return AccountRecord(
        account_id=account_id,
        location=account.location or "",
        binding=binding,
        provisioning_state=text_of(properties.provisioning_state if properties else None),
        identity_type=text_of(identity.type if identity else None) or "None",
        user_assigned_client_ids=client_ids,
        key_vault_reference=None
        if binding is None or vault_properties is None
        else KeyVaultReference(
            key_vault_uri=vault_properties.key_vault_uri or "",
            key_name=vault_properties.key_name or "",
            key_version=vault_properties.key_version or "",
            identity_client_id=vault_properties.identity_client_id,
        ),
    )


def encryption_patch(current: KeyVaultReference, version: str) -> Account:
    """The PATCH body that moves an account to ``version``: ``properties.encryption`` only,
    with keyVaultUri, keyName and identityClientId as ``current`` has them."""
    return Account(
        properties=AccountProperties(
            encryption=Encryption(
                key_source=KEY_VAULT_SOURCE,
                key_vault_properties=KeyVaultProperties(
                    key_vault_uri=current.key_vault_uri,
                    key_name=current.key_name,
                    key_version=version,
                    identity_client_id=current.identity_client_id,
                ),
            )
        )
    )


async def follow(poller: AsyncLROPoller[Account], action: str, wait: timedelta) -> Account | None:
    """Follow an account's long-running operation for up to ``wait``: the account it ended
    with, or None while it is still running (it goes on in Azure). An operation that ended
    Failed raises the :mod:`cmk.errors` error of the RP's code."""
    try:
        return await asyncio.wait_for(poller.result(), timeout=max(0.0, wait.total_seconds()))
    except TimeoutError:
        return None
    except HttpResponseError as error:
        failed = isinstance(error.__cause__, OperationFailed)
        raise translate(error, action, operation_failed=failed) from error
    except CmkError:
        raise
    except Exception as error:
        raise translate(error, action) from error


def unfollowed(error: CmkError) -> str | None:
    """Why the status of an accepted PATCH could not be followed to its end — None when
    ``error`` is that end (the operation ended Failed) or not about the status at all.

    The PATCH was accepted: the update runs in Azure whatever its status polls answer.
    Reported as an error, it would free the account (the caller's write lease) while the
    update runs; still running, it is verified later, by a GET of the account. A status
    URL answered 403 is the same: the role may lack the action ARM checks for it
    (docs/deployment.md, "Polling the PATCH"), which must not fail — and alert — every
    update the GET can verify."""
    if not isinstance(error, TransientError | AccessDenied | NotFound) or _operation_ended(error):
        return None
    if isinstance(error, AccessDenied):
        return "refused to this identity"
    return "gone (404)" if isinstance(error, NotFound) else "unreadable for now"


def _operation_ended(error: CmkError) -> bool:
    """Whether ``error`` is the end of the operation (it ended Failed), not a status poll
    that could not be answered."""
    cause = error.__cause__
    return isinstance(cause, HttpResponseError) and isinstance(cause.__cause__, OperationFailed)


#: Answers of a front end that forwarded the request and gave up waiting for the service.
_GATEWAY_STATUSES = frozenset({408, 502, 504})


def _maybe_sent(error: BaseException | None) -> bool:
    """Whether a request that failed with ``error`` may have reached the service: anything
    but a refused connection (nothing was sent). azure-core reports a connection lost
    mid-exchange ("Server disconnected", reset) as a ServiceRequestError too, so the
    aiohttp error inside tells them apart."""
    if isinstance(error, ServiceResponseError | TimeoutError):
        return True
    if not isinstance(error, ServiceRequestError):
        return False
    inner = error.inner_exception or error.__cause__
    return not isinstance(inner, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


class _FixedIntervalPolling(AsyncARMPolling):
    """ARM polling every ``timeout`` seconds, whatever ``Retry-After`` says."""

    def _extract_delay(self) -> float:
        return float(self._timeout)


class CognitiveAccounts:
    """The :class:`~cmk.ports.AccountStore` over ``Microsoft.CognitiveServices/accounts``.

    ``client_for(subscription_id)`` builds the management client of one subscription;
    each is built once and closed by :meth:`close`. ``polling_interval`` (seconds)
    fixes the LRO poll period; None follows the service's ``Retry-After`` (the SDK's
    default behaviour).
    """

    def __init__(
        self,
        client_for: ClientFactory,
        *,
        polling_interval: float | None = None,
        patch_timeout: float = 30.0,
        budget: ArmBudget | None = None,
    ) -> None:
        self._client_for = client_for
        self._polling_interval = polling_interval
        self._patch_timeout = patch_timeout
        self._budget = budget
        self._clients: dict[str, CognitiveServicesManagementClient] = {}

    def client(self, subscription_id: str) -> CognitiveServicesManagementClient:
        """The cached management client of one subscription."""
        key = subscription_id.lower()
        client = self._clients.get(key)
        if client is None:
            client = self._client_for(key)
            self._clients[key] = client
        return client

    async def close(self) -> None:
        """Close every management client this adapter created."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def read(self, account_id: AccountId) -> Account:
        """The SDK model of the account, read now (for adapters in this package)."""
        accounts = self.client(account_id.subscription_id).accounts
        with azure_errors(f"reading account {account_id}"):
            return await accounts.get(account_id.resource_group, account_id.name)

    async def get(self, account_id: AccountId) -> AccountRecord:
        """Read the account now (NotFound if gone)."""
        return account_record(await self.read(account_id), account_id)

    async def list_cmk(self, subscription_id: str) -> AsyncIterator[AccountRecord]:
        """Every account of a subscription whose keySource is Microsoft.KeyVault (ARM list,
        page by page). Accounts whose binding cannot be parsed are logged and skipped."""
        pages = self.client(subscription_id).accounts.list()
        with azure_errors(f"listing the accounts of subscription {subscription_id}"):
            async for account in pages:
                properties = account.properties
                encryption = properties.encryption if properties else None
                source = text_of(encryption.key_source if encryption else None)
                if source.lower() != KEY_VAULT_SOURCE.lower():
                    continue
                try:
                    yield account_record(account)
                except InvalidInput as error:
                    logger.warning(
                        "skipping account %s: %s",
                        account.id,
                        error,
                        extra={"cmk_account_id": account.id},
                    )

    async def update_key_version(
        self, record: AccountRecord, version: str, wait: timedelta
    ) -> UpdateOutcome:
        """PATCH only ``keyVersion`` (keeping keyVaultUri, keyName, identityClientId) and
        wait up to ``wait`` for the long-running operation.

        ``record`` is the caller's deciding read, made under the account's write lease:
        its keyVaultProperties go back exactly as ARM spelled them, so no second read is
        needed. A record that did not come from a GET of the account (no
        ``key_vault_reference``) is read once here first.

        Returns SUCCEEDED once the status of the operation the PATCH started is
        Succeeded (that status poll is the verifying read), IN_PROGRESS when it outlives
        ``wait``, when its status polls fail for now (the accepted update runs on), or
        when it was already running for this version. A Failed operation raises
        UpdateFailed / AccessDenied with the RP's code; 409 / 429 / 5xx raise a
        TransientError — the PATCH is never re-sent by the SDK.
        """
        account_id = record.account_id
        if record.binding is None:
            raise UpdateFailed(f"account {account_id} has no customer-managed key to update")
        target = record.binding.key_id.with_version(version)
        if record.key_vault_reference is None:
            record = await self._reread(record, target)
        self._check_current(record, target)
        reference = record.key_vault_reference
        assert reference is not None and record.binding is not None
        outcome = self._already(record, target)
        if outcome is not None:
            return outcome
        client = self.client(account_id.subscription_id)
        polling = self._polling(client)
        poller = await self._patch(account_id, reference, target, polling)
        try:
            done = await follow(poller, f"updating account {account_id} to {target}", wait)
        except CmkError as error:
            status = unfollowed(error)
            if status is None:
                raise  # it ended Failed: the RP's cause decides (a passing one retries)
            logger.warning(
                "update of %s to %s accepted, its status %s (%s); verify later",
                account_id,
                target.version,
                status,
                error,
                extra={"cmk_account_id": str(account_id), "cmk_key_id": str(target)},
            )
            return UpdateOutcome.IN_PROGRESS
        if done is None:
            logger.info(
                "update of %s to %s still running after %s; verify later",
                account_id,
                target.version,
                wait,
                extra={"cmk_account_id": str(account_id), "cmk_key_id": str(target)},
            )
            return UpdateOutcome.IN_PROGRESS
        # The operation our PATCH started ended Succeeded: the change we sent — this one
        # version, under the account's write lease — is in place. Its status is the
        # verifying read. Only an answer showing the account on another key (never
        # expected) costs one more GET to find out what happened.
        accepted = polling.accepted
        shown = None if accepted is None else account_record(accepted, account_id).binding
        if shown is None or shown.key_id.same_key(target):
            return UpdateOutcome.SUCCEEDED
        return await self.verify(account_id, target)

    async def _reread(self, seen: AccountRecord, target: KeyId) -> AccountRecord:
        """Read the account for a PATCH; refuse a binding that moved since ``seen``."""
        record = account_record(await self.read(seen.account_id), seen.account_id)
        self._check_current(record, target)
        assert seen.binding is not None and record.binding is not None
        now_bound = record.binding.key_id
        if now_bound not in (seen.binding.key_id, target):
            # Another update moved it since the caller decided: let the caller decide again
            # (its ordering check keeps the account from ever going back).
            raise ServiceUnavailable(
                f"account {seen.account_id} moved from {seen.binding.key_id.version} to"
                f" {now_bound.version} since it was read; re-planning"
            )
        return record

    def _check_current(self, now: AccountRecord, target: KeyId) -> None:
        """Refuse to change an account no longer bound to ``target``'s key."""
        if now.binding is None or not now.binding.key_id.same_key(target):
            raise UpdateFailed(
                f"account {now.account_id} is no longer bound to {target.versionless()}"
                f" (now: {now.binding.key_id if now.binding else 'Microsoft-managed keys'});"
                " refusing to change it"
            )

    def _already(self, record: AccountRecord, target: KeyId) -> UpdateOutcome | None:
        """An outcome without a PATCH: the version is in place or being applied."""
        state = record.provisioning_state.lower()
        bound = record.binding.key_id.version if record.binding else None
        if bound == target.version:
            if state == "succeeded":
                return UpdateOutcome.SUCCEEDED
            if state in BUSY_STATES:
                return UpdateOutcome.IN_PROGRESS
        elif state in BUSY_STATES:
            raise ServiceUnavailable(
                f"account {record.account_id} is {state} (another change is running); retry later"
            )
        return None

    async def _patch(
        self,
        account_id: AccountId,
        current: KeyVaultReference,
        target: KeyId,
        polling: StatusPolling,
    ) -> AsyncLROPoller[Account]:
        """Send the PATCH once. The SDK would re-send it by itself after a 429 with
        Retry-After, a 5xx or a timeout — the old body, after others may have moved the
        account on — so its retries are off for this one request (``retry_total=0``); the
        caller re-reads and decides again instead. The status polls keep their retries.

        The PATCH must be answered within ``patch_timeout`` (well inside the caller's
        write lease). Unanswered — the timeout, or the connection lost after the request
        went out — it may still be applied: :class:`~cmk.errors.UpdateUnanswered`, and
        the caller keeps its lease until it expires."""
        body = encryption_patch(current, target.version or "")
        logger.info(
            "updating account %s to key version %s",
            account_id,
            target.version,
            extra={"cmk_account_id": str(account_id), "cmk_key_id": str(target)},
        )
        action = f"updating account {account_id} to {target}"
        return await self.send_patch(account_id, body, action, polling=polling)

    async def send_patch(
        self,
        account_id: AccountId,
        body: Account,
        action: str,
        *,
        sending: Callable[[], Awaitable[None]] | None = None,
        **options: Any,
    ) -> AsyncLROPoller[Account]:
        """PATCH ``body`` onto the account once (``retry_total=0``), answered within
        ``patch_timeout``; :class:`~cmk.errors.UpdateUnanswered` when it may still be
        applied: no answer in time, the connection lost after it went out, or a gateway's
        408/502/504 (the resource provider did not answer the front end in time).

        The subscription's write budget is waited for first, outside that timeout, and
        for at most as long: a PATCH held back by the pacing was never sent, so it is a
        :class:`~cmk.errors.ThrottledError` (the job is deferred), not an unanswered one.
        ``sending`` is awaited once that wait is over, right before the PATCH goes out."""
        client = self.client(account_id.subscription_id)
        # An explicit poller: without one the SDK builds its own from this call's keyword
        # arguments, and the PATCH's own options (retry_total=0, PACED) would reach every
        # status poll too.
        options.setdefault("polling", AsyncARMPolling(client._config.polling_interval))
        if self._budget is not None:
            await self._budget.take(
                account_id.subscription_id, "writes", within=self._patch_timeout
            )
            options = {**options, PACED: True}
        if sending is not None:
            await sending()
        try:
            async with asyncio.timeout(self._patch_timeout):
                with azure_errors(action):
                    return await client.accounts.begin_update(
                        account_id.resource_group,
                        account_id.name,
                        body,
                        retry_total=0,
                        read_timeout=self._patch_timeout,
                        **options,
                    )
        except TimeoutError as error:
            raise UpdateUnanswered(
                f"{action}: no answer within {self._patch_timeout:g} s; the update may still"
                " be applied, so the account is re-read once its write lease expires"
            ) from error
        except ServiceUnavailable as error:
            cause = error.__cause__
            gateway = cause is not None and status_code(cause) in _GATEWAY_STATUSES
            if gateway or _maybe_sent(cause):
                raise UpdateUnanswered(
                    f"{error}; the update may still be applied, so the account is re-read"
                    " once its write lease expires"
                ) from error
            raise

    def _polling(self, client: CognitiveServicesManagementClient) -> StatusPolling:
        """The LRO polling of an update, built here so the PATCH's options stay off it."""
        if self._polling_interval is not None:
            return StatusPolling(self._polling_interval, fixed_interval=True)
        return StatusPolling(client._config.polling_interval)

    async def verify(self, account_id: AccountId, target: KeyId) -> UpdateOutcome:
        """GET the account: SUCCEEDED when Succeeded on ``target``, IN_PROGRESS while an
        update is still running, otherwise UpdateFailed (Failed, or another version)."""
        return self._verified(account_record(await self.read(account_id), account_id), target)

    @staticmethod
    def _verified(record: AccountRecord, target: KeyId) -> UpdateOutcome:
        state = record.provisioning_state
        bound = record.binding.key_id.version if record.binding else None
        if state.lower() in BUSY_STATES:
            return UpdateOutcome.IN_PROGRESS
        if state.lower() == "succeeded" and bound == target.version:
            return UpdateOutcome.SUCCEEDED
        raise UpdateFailed(
            f"account {record.account_id} is not on {target.version} after the update"
            f" (provisioningState {state or 'unknown'}, keyVersion {bound})"
        )

    def poll_options(self) -> dict[str, Any]:
        """Keyword arguments for ``begin_*`` calls: a fixed LRO poll period if configured."""
        if self._polling_interval is None:
            return {}
        return {"polling": _FixedIntervalPolling(timeout=self._polling_interval)}
