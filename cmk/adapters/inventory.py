"""Every CMK-enabled account in scope: the :class:`~cmk.ports.Inventory` over Resource Graph.

One Resource Graph query (:data:`CMK_ACCOUNTS_QUERY`, every projected column
``tostring``-ed, or Resource Graph returns no ``$skipToken``) per batch of fewer than
300 subscriptions, paged 1,000 rows at a time with ``$skipToken``. Rows are yielded as
each page arrives, so even 100,000 accounts are never all held in memory.

A row that cannot be read (a key reference that is not a valid versioned key id, a
malformed resource id) is skipped with a WARNING naming the account and counted in
:attr:`ResourceGraphInventory.skipped`.

Given a key, the query gets a ``where`` clause (:func:`key_clause`) so Resource Graph
returns only that key's accounts: an event for one key reads pages in proportion to its
accounts, not to the whole estate. Each record is checked against the key again here.

When Resource Graph answers 403 for a batch before any row of it was yielded, the
batch is listed subscription by subscription through ARM instead (the ``fallback``),
filtered by key in Python.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from azure.mgmt.resourcegraph.aio import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions, QueryResponse

from cmk.adapters._errors import azure_errors
from cmk.adapters.accounts import CognitiveAccounts
from cmk.errors import AccessDenied, InvalidInput, ServiceUnavailable
from cmk.keyid import KeyId
from cmk.planner import Binding
from cmk.ports import AccountRecord
from cmk.resource_id import AccountId, parse_subscription_id

__all__ = [
    "CMK_ACCOUNTS_QUERY",
    "ResourceGraphInventory",
    "cmk_accounts_query",
    "key_clause",
    "kql_string",
    "record_from_row",
]

logger = logging.getLogger(__name__)

_CMK_SOURCE = (
    "Resources"
    " | where type =~ 'microsoft.cognitiveservices/accounts'"
    " | where tostring(properties.encryption.keySource) =~ 'Microsoft.KeyVault'"
)
_CMK_COLUMNS = (
    " | project id = tostring(id), subscriptionId = tostring(subscriptionId),"
    " location = tostring(location),"
    " keyVaultUri = tostring(properties.encryption.keyVaultProperties.keyVaultUri),"
    " keyName = tostring(properties.encryption.keyVaultProperties.keyName),"
    " keyVersion = tostring(properties.encryption.keyVaultProperties.keyVersion),"
    " identityClientId = tostring(properties.encryption.keyVaultProperties.identityClientId),"
    " identityType = tostring(identity.type),"
    " userAssigned = tostring(identity.userAssignedIdentities),"
    " provisioningState = tostring(properties.provisioningState)"
)
_ORDER = " | order by id asc"

#: Every CMK account in scope (see :func:`cmk_accounts_query` for one key's accounts).
CMK_ACCOUNTS_QUERY = _CMK_SOURCE + _CMK_COLUMNS + _ORDER


def kql_string(value: str) -> str:
    r"""``value`` as a single-quoted KQL string literal.

    In a Kusto string literal the backslash escapes: ``\\`` is a backslash and ``\'`` a
    quote (doubling quotes is only for verbatim ``@'...'`` literals). Line breaks and
    tabs are written as ``\n``, ``\r``, ``\t``.
    """
    escaped = (
        value.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f"'{escaped}'"


def key_clause(key: KeyId) -> str:
    """The ``where`` clause (on the projected columns) that keeps the accounts of ``key``.

    ``keyVaultUri`` matches case-insensitively in every spelling :class:`KeyId` accepts
    for the vault (with or without a trailing slash, with or without ``:443``) and
    ``keyName`` case-insensitively. The caller still checks each record (a guard).
    """
    host = key.vault_host
    uris = [f"https://{host}{port}{slash}" for port in ("", ":443") for slash in ("", "/")]
    vault = " or ".join(f"keyVaultUri =~ {kql_string(uri)}" for uri in uris)
    return f" | where ({vault}) and keyName =~ {kql_string(key.name)}"


def cmk_accounts_query(key: KeyId | None = None) -> str:
    """:data:`CMK_ACCOUNTS_QUERY`, narrowed to the accounts of ``key`` when given."""
    if key is None:
        return CMK_ACCOUNTS_QUERY
    return _CMK_SOURCE + _CMK_COLUMNS + key_clause(key) + _ORDER


#: Resource Graph accepts up to 1,000 subscriptions a request; we stay well under.
MAX_BATCH = 299
PAGE_SIZE = 1000


def _column(row: Mapping[str, object], name: str) -> str:
    value = row.get(name)
    return value.strip() if isinstance(value, str) else ""


def _client_ids(user_assigned: str) -> frozenset[str]:
    """Client ids from ``tostring(identity.userAssignedIdentities)`` (a JSON object)."""
    if not user_assigned:
        return frozenset()
    try:
        identities = json.loads(user_assigned)
    except ValueError:
        raise InvalidInput(f"userAssignedIdentities is not JSON: {user_assigned[:80]!r}") from None
    if not isinstance(identities, dict):
        return frozenset()
    found = set()
    for identity in identities.values():
        client_id = identity.get("clientId") if isinstance(identity, dict) else None
        if isinstance(client_id, str) and client_id:
            found.add(client_id.lower())
    return frozenset(found)


def record_from_row(row: Mapping[str, object]) -> AccountRecord:
    """An :class:`AccountRecord` from one row of :data:`CMK_ACCOUNTS_QUERY` (objectArray).

    Raises InvalidInput (InvalidResourceId, InvalidKeyId) when the row cannot be read.
    """
    account_id = AccountId.parse(_column(row, "id"))
    version = _column(row, "keyVersion")
    if not version:
        raise InvalidInput(f"account {account_id} uses a Key Vault key without a keyVersion")
    key_id = KeyId.from_parts(_column(row, "keyVaultUri"), _column(row, "keyName"), version)
    location = _column(row, "location")
    binding = Binding(
        account_id=account_id,
        key_id=key_id,
        identity_client_id=_column(row, "identityClientId").lower() or None,
        location=location or None,
    )
    return AccountRecord(
        account_id=account_id,
        location=location,
        binding=binding,
        provisioning_state=_column(row, "provisioningState"),
        identity_type=_column(row, "identityType") or "None",
        user_assigned_client_ids=_client_ids(_column(row, "userAssigned")),
    )


class ResourceGraphInventory:
    """The :class:`~cmk.ports.Inventory` over Azure Resource Graph, with an ARM fallback."""

    def __init__(
        self,
        client: ResourceGraphClient,
        fallback: CognitiveAccounts | None = None,
        *,
        batch_size: int = MAX_BATCH,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        self._client = client
        self._fallback = fallback
        self._batch_size = batch_size
        self._page_size = page_size
        #: rows skipped (unreadable) by the last :meth:`cmk_accounts` run
        self.skipped = 0
        #: times a page waited for Resource Graph's per-user quota to reset
        self.quota_waits = 0
        #: when the next query may go (event-loop time): a page that spent the quota
        #: holds back the next query, the next batch's first one too
        self._quiet_until = 0.0

    @property
    def client(self) -> ResourceGraphClient:
        """The underlying ``ResourceGraphClient`` (the caller closes it)."""
        return self._client

    async def cmk_accounts(
        self, subscriptions: Sequence[str], key: KeyId | None = None
    ) -> AsyncIterator[AccountRecord]:
        """Stream the accounts whose keySource is Microsoft.KeyVault, page by page; with
        ``key``, only those bound to it (filtered by Resource Graph, checked again here)."""
        self.skipped = 0
        wanted = None if key is None else key.versionless()
        scope = list(dict.fromkeys(parse_subscription_id(sub) for sub in subscriptions))
        for start in range(0, len(scope), self._batch_size):
            batch = scope[start : start + self._batch_size]
            yielded = False
            try:
                async for record in self._query(batch, wanted):
                    if _bound_to(record, wanted):
                        yielded = True
                        yield record
            except AccessDenied as error:
                if self._fallback is None or yielded:
                    raise
                logger.warning(
                    "Resource Graph denied the query (%s); listing %d subscription(s) through ARM",
                    error,
                    len(batch),
                )
                for subscription in batch:
                    async for record in self._fallback.list_cmk(subscription):
                        if _bound_to(record, wanted):
                            yield record

    async def _query(
        self, subscriptions: list[str], key: KeyId | None
    ) -> AsyncIterator[AccountRecord]:
        query = cmk_accounts_query(key)
        skip_token: str | None = None
        rows_seen, total = 0, None
        while True:
            await self._wait_for_quota()
            request = QueryRequest(
                subscriptions=subscriptions,
                query=query,
                options=QueryRequestOptions(
                    top=self._page_size, skip_token=skip_token, result_format="objectArray"
                ),
            )
            with azure_errors(f"querying Resource Graph for {len(subscriptions)} subscription(s)"):
                answer: Any = await self._client.resources(request, cls=_with_headers)
            page: QueryResponse = answer[0]
            headers: Mapping[str, str] = answer[1]
            pause = quota_pause(headers)
            if pause:
                self._quiet_until = asyncio.get_running_loop().time() + pause
            data: object = page.data
            rows: list[object] = data if isinstance(data, list) else []
            rows_seen += len(rows)
            total = page.total_records if total is None else total
            for row in rows:
                if not isinstance(row, dict):
                    continue
                try:
                    yield record_from_row(row)
                except InvalidInput as error:
                    self.skipped += 1
                    logger.warning(
                        "skipping account %s: %s",
                        row.get("id"),
                        error,
                        extra={"cmk_account_id": str(row.get("id"))},
                    )
            skip_token = page.skip_token
            if not skip_token:
                _check_complete(page, rows_seen, total, len(subscriptions))
                return

    async def _wait_for_quota(self) -> None:
        """The per-user quota (~15 queries / 5 s) was spent by the last page: wait for its
        window to reset instead of asking for a page that would be answered 429."""
        pause = self._quiet_until - asyncio.get_running_loop().time()
        if pause > 0:
            logger.info("Resource Graph quota spent; next query in %.1f s", pause)
            self.quota_waits += 1
            await asyncio.sleep(pause)


def _check_complete(page: QueryResponse, rows_seen: int, total: int | None, scope: int) -> None:
    """The last page of a listing: Resource Graph must not have cut it short. A result it
    truncated (``resultTruncated``) without a ``$skipToken`` to go on with would leave
    accounts out of the sweep without a word — their stale or unsafe bindings never found,
    never alerted — so it fails the listing. Fewer rows than the ``totalRecords`` of the
    first page is only a WARNING: accounts deleted while the pages were read do that."""
    flag = getattr(page.result_truncated, "value", page.result_truncated)
    if str(flag or "").lower() == "true":
        raise ServiceUnavailable(
            f"Resource Graph truncated its answer for {scope} subscription(s) after"
            f" {rows_seen} of {total if total is not None else 'an unknown number of'} rows"
            " and gave no $skipToken to read the rest: the inventory would be incomplete,"
            " so nothing is decided from it; the next run asks again"
        )
    if total is not None and rows_seen < total:
        logger.warning(
            "Resource Graph announced %d rows and answered %d for %d subscription(s)"
            " (accounts removed while the pages were read?)",
            total,
            rows_seen,
            scope,
        )


def _with_headers(response: Any, page: Any, _headers: Any) -> tuple[Any, Mapping[str, str]]:
    """``cls`` of a Resource Graph call: the page and the HTTP headers it came with."""
    return page, response.http_response.headers


def quota_pause(headers: Mapping[str, str]) -> float:
    """Seconds to wait before the next query: until the quota window resets when
    ``x-ms-user-quota-remaining`` says none is left, else 0."""
    remaining = str(headers.get("x-ms-user-quota-remaining") or "").strip()
    if not remaining.isdigit() or int(remaining) > 0:
        return 0.0
    resets = str(headers.get("x-ms-user-quota-resets-after") or "").strip()
    parts = resets.split(":")
    try:
        hours, minutes, seconds = (float(part) for part in parts) if len(parts) == 3 else (0, 0, 1)
    except ValueError:
        return 1.0
    return min(max(hours * 3600 + minutes * 60 + seconds, 0.0), 60.0)


def _bound_to(record: AccountRecord, key: KeyId | None) -> bool:
    """Whether ``record`` belongs in a listing for ``key`` (every record when None)."""
    if key is None:
        return True
    return record.binding is not None and record.binding.key_id.same_key(key)
