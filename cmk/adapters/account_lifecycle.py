"""The CMK lifecycle's writes to Cognitive Services accounts (cmk enable / switch / disable).

Rotation changes one field (:meth:`CognitiveAccounts.update_key_version`); the lifecycle
changes more: it enables a system-assigned identity, points the encryption at a key, or
returns the account to Microsoft-managed keys. Each write first checks no other update
is running, follows the long-running operation for a bounded time, and verifies by GET.
Once a PATCH was accepted, the update is in Azure's hands: a status poll or a verifying GET
that cannot be answered for now makes it in progress (verified later), never a failure.
The encryption PATCHes are sent once (no SDK re-send of an old body after a 429 or 5xx),
under the account's write lease taken by :mod:`cmk.lifecycle.changes`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from azure.core.polling import AsyncLROPoller
from azure.mgmt.cognitiveservices.models import (
    Account,
    AccountProperties,
    Encryption,
    Identity,
    KeyVaultProperties,
)

from cmk.adapters._errors import azure_errors
from cmk.adapters._sdk import text_of
from cmk.adapters.accounts import KEY_VAULT_SOURCE, CognitiveAccounts, follow, unfollowed
from cmk.errors import (
    CmkError,
    InvalidInput,
    ServiceUnavailable,
    UpdateFailed,
)
from cmk.keyid import KeyId
from cmk.lifecycle.model import AccountIdentity
from cmk.ports import BUSY_STATES, AccountRecord, UpdateOutcome
from cmk.resource_id import AccountId

__all__ = ["AccountLifecycle", "account_identity"]

logger = logging.getLogger(__name__)


class AccountLifecycle:
    """The lifecycle writer (:class:`cmk.lifecycle.context.AccountWriter`) over the
    management clients of a :class:`CognitiveAccounts`."""

    def __init__(self, accounts: CognitiveAccounts) -> None:
        self._accounts = accounts

    async def identity(self, account_id: AccountId) -> AccountIdentity:
        """The account's managed identities (principal ids), read now."""
        return account_identity(await self._accounts.read(account_id))

    async def enable_system_identity(self, account_id: AccountId) -> AccountIdentity:
        """PATCH ``identity: {type: SystemAssigned}`` onto an account that has no identity;
        Azure creates its service principal. Returns the identities read back."""
        accounts = self._accounts.client(account_id.subscription_id).accounts
        body = Account(identity=Identity(type="SystemAssigned"))
        logger.info(
            "enabling the system-assigned identity of %s",
            account_id,
            extra={"cmk_account_id": str(account_id), "cmk_step": "identity"},
        )
        with azure_errors(f"enabling the system-assigned identity of {account_id}"):
            poller = await accounts.begin_update(
                account_id.resource_group, account_id.name, body, **self._accounts.poll_options()
            )
            await poller.result()
        return await self.identity(account_id)

    async def set_encryption(
        self,
        account_id: AccountId,
        key: KeyId,
        identity_client_id: str | None,
        wait: timedelta,
        *,
        sending: Callable[[], Awaitable[None]] | None = None,
    ) -> UpdateOutcome:
        """PATCH ``properties.encryption`` to ``key`` (versioned) with keySource
        Microsoft.KeyVault, wait up to ``wait`` and verify by GET. IN_PROGRESS when the
        operation runs on, or its status or the account cannot be read for now."""
        if key.version is None:
            raise InvalidInput(f"set_encryption needs a versioned key id, got {key}")
        body = Account(
            properties=AccountProperties(
                encryption=Encryption(
                    key_source=KEY_VAULT_SOURCE,
                    key_vault_properties=KeyVaultProperties(
                        key_vault_uri=f"{key.vault_url}/",
                        key_name=key.name,
                        key_version=key.version,
                        identity_client_id=identity_client_id,
                    ),
                )
            )
        )
        action = f"setting the key of {account_id} to {key}"
        poller = await self._write(account_id, body, action, sending)
        if await _followed(poller, action, wait) is None:
            return UpdateOutcome.IN_PROGRESS
        record = await self._read_back(account_id, action)
        if record is None:
            return UpdateOutcome.IN_PROGRESS
        bound = record.binding.key_id if record.binding else None
        if record.provisioning_state.lower() == "succeeded" and bound == key:
            return UpdateOutcome.SUCCEEDED
        raise UpdateFailed(
            f"account {account_id} is not on {key} after the update"
            f" (provisioningState {record.provisioning_state or 'unknown'}, key {bound})"
        )

    async def use_microsoft_keys(
        self,
        account_id: AccountId,
        wait: timedelta,
        *,
        sending: Callable[[], Awaitable[None]] | None = None,
    ) -> UpdateOutcome:
        """PATCH keySource back to Microsoft.CognitiveServices, wait and verify by GET
        (IN_PROGRESS as for :meth:`set_encryption`)."""
        body = Account(
            properties=AccountProperties(
                encryption=Encryption(key_source="Microsoft.CognitiveServices")
            )
        )
        action = f"switching {account_id} to Microsoft-managed keys"
        poller = await self._write(account_id, body, action, sending)
        if await _followed(poller, action, wait) is None:
            return UpdateOutcome.IN_PROGRESS
        record = await self._read_back(account_id, action)
        if record is None:
            return UpdateOutcome.IN_PROGRESS
        if record.binding is None and record.provisioning_state.lower() == "succeeded":
            return UpdateOutcome.SUCCEEDED
        raise UpdateFailed(
            f"account {account_id} still uses {record.binding.key_id if record.binding else '?'}"
            f" after the update (provisioningState {record.provisioning_state or 'unknown'})"
        )

    async def _read_back(self, account_id: AccountId, action: str) -> AccountRecord | None:
        """The account read after its update ended, to verify it — None when it cannot be
        read now (a transient error, or a 403/404 as a status poll may get: see
        :func:`~cmk.adapters.accounts.unfollowed`): the PATCH was accepted and its
        operation ended, so the change may well be made; reported as an error, the change
        would be closed as not done while the account shows it. In progress, it is
        verified later."""
        try:
            return await self._accounts.get(account_id)
        except CmkError as error:
            status = unfollowed(error)
            if status is None:
                raise
            logger.warning(
                "%s: accepted, the account %s (%s)",
                action,
                status,
                error,
                extra={"cmk_account_id": str(account_id), "cmk_step": "verify"},
            )
            return None

    async def _write(
        self,
        account_id: AccountId,
        body: Account,
        action: str,
        sending: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncLROPoller[Account]:
        """Start a PATCH after checking no other update is running (ServiceUnavailable if so)."""
        current = await self._accounts.read(account_id)
        state = text_of(current.properties.provisioning_state if current.properties else None)
        if state.lower() in BUSY_STATES:
            raise ServiceUnavailable(f"account {account_id} is {state}; retry later")
        logger.info(
            "%s", action, extra={"cmk_account_id": str(account_id), "cmk_step": "encryption"}
        )
        # Sent once and answered in time, like the rotation's PATCH (UpdateUnanswered else).
        return await self._accounts.send_patch(
            account_id, body, action, sending=sending, **self._accounts.poll_options()
        )


async def _followed(poller: AsyncLROPoller[Account], action: str, wait: timedelta) -> object:
    """The operation's end, or None while it runs on — also when its status could not be
    followed after the PATCH was accepted (:func:`~cmk.adapters.accounts.unfollowed`):
    the update goes on in Azure, and the caller verifies it by reading the account."""
    try:
        done = await follow(poller, action, wait)
    except CmkError as error:
        status = unfollowed(error)
        if status is None:
            raise
        logger.warning("%s: accepted, its status %s (%s)", action, status, error)
        return None
    if done is None:
        logger.info("%s: still running after %s", action, wait)
    return done


def account_identity(account: Account) -> AccountIdentity:
    """Our :class:`AccountIdentity` for an SDK ``Account``."""
    identity = account.identity
    if identity is None:
        return AccountIdentity(type="None")
    users = {
        (user.client_id or "").lower(): (user.principal_id or "").lower()
        for user in (identity.user_assigned_identities or {}).values()
        if user is not None and user.client_id
    }
    return AccountIdentity(
        type=text_of(identity.type) or "None",
        system_principal_id=(identity.principal_id or "").lower() or None,
        tenant_id=(identity.tenant_id or "").lower() or None,
        user_assigned=users,
    )
