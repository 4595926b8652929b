"""The storage and alert checks of ``cmk smoke``: the queues and the ledger table the app
uses answer, and an Event Grid token can be had for the alert topic (nothing published, so
the right to send stays unverified)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from cmk.adapters._errors import azure_errors
from cmk.commands.errors import LOGIN_HINT
from cmk.errors import AccessDenied, CmkError, NotFound
from cmk.settings import Settings
from cmk.smoke import (
    Caller,
    Check,
    Result,
    combined,
)
from cmk.wiring import Services

#: The scope the Event Grid publisher asks tokens for (azure-eventgrid's default; the app
#: passes no other).
EVENT_GRID_SCOPE = "https://eventgrid.azure.net/.default"


@asynccontextmanager
async def _queue(settings: Settings, services: Services, name: str) -> AsyncIterator[QueueClient]:
    """A client of queue ``name`` of the app's storage, as :mod:`cmk.wiring` builds it."""
    storage = settings.require_storage()
    if storage.connection_string is not None:
        client = QueueClient.from_connection_string(storage.connection_string, name)
    else:
        assert storage.queue_service_uri is not None
        client = QueueClient(storage.queue_service_uri, name, credential=services.credential)
    async with client:
        yield client


async def storage_check(settings: Settings, services: Services, caller: Caller | None) -> Check:
    queues = (settings.job_queue, f"{settings.job_queue}-poison", settings.operation_queue)
    by_connection_string = not settings.require_storage().uses_identity
    parts = [
        await _queue_part(settings, services, caller, name, by_connection_string) for name in queues
    ]
    parts.append(await _table_part(services.ledger.client, caller, by_connection_string))
    return Check(
        "storage",
        combined(p.result for p in parts),
        "; ".join(p.found for p in parts),
        "; ".join(p.fix for p in parts if p.fix),
    )


def _storage_fix(
    kind: str,
    name: str,
    account: str,
    caller: Caller | None,
    error: Exception,
    *,
    by_connection_string: bool,
) -> str:
    """The command that creates a missing queue or table, or grants the refused data role.
    With a connection string (AzureWebJobsStorage, e.g. Azurite's) ``az`` is given the same
    string: ``--auth-mode login`` would ask for a token the storage does not take."""
    if isinstance(error, NotFound):
        where = (
            '--connection-string "$AzureWebJobsStorage"'
            if by_connection_string
            else f"--account-name {account} --auth-mode login"
        )
        return (
            f"az storage {kind} create --name {name} {where}"
            " (or `azd provision`: infra/app/storage.bicep creates it)"
        )
    if isinstance(error, AccessDenied):
        role = (
            "Storage Queue Data Contributor"
            if kind == "queue"
            else "Storage Table Data Contributor"
        )
        who = caller.object_id if caller else "<object-id>"
        return (
            f'az role assignment create --assignee-object-id {who} --role "{role}" --scope'
            f' "$(az storage account show --name {account} --query id -o tsv)"'
        )
    return ""


async def _queue_part(
    settings: Settings,
    services: Services,
    caller: Caller | None,
    name: str,
    by_connection_string: bool,
) -> Check:
    async with _queue(settings, services, name) as client:
        try:
            with azure_errors(f"reading queue {name}"):
                properties = await client.get_queue_properties()
        except CmkError as error:
            fix = _storage_fix(
                "queue",
                name,
                client.account_name or "<account>",
                caller,
                error,
                by_connection_string=by_connection_string,
            )
            return Check(name, Result.FAILED, f"queue {name}: {_first_line(error)}", fix)
    count = properties.approximate_message_count or 0
    return Check(name, Result.OK, f"queue {name} answers ({count} message(s))")


async def _table_part(
    client: TableClient, caller: Caller | None, by_connection_string: bool
) -> Check:
    name = client.table_name
    rows = 0
    try:
        with azure_errors(f"reading table {name}"):
            async for page in client.list_entities(results_per_page=1).by_page():
                async for _ in page:
                    rows += 1
                    break
                break
    except CmkError as error:
        fix = _storage_fix(
            "table",
            name,
            client.account_name or "<account>",
            caller,
            error,
            by_connection_string=by_connection_string,
        )
        return Check(name, Result.FAILED, f"table {name}: {_first_line(error)}", fix)
    return Check(name, Result.OK, f"table {name} answers ({'has rows' if rows else 'empty'})")


def _first_line(error: Exception) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


#: How to decide by hand what the alert-topic row leaves unverified.
_SENDER_CHECK = (
    "check by hand: az role assignment list --assignee-object-id <object-id> --role"
    ' "EventGrid Data Sender" --scope <topic resource id> --include-inherited'
    " (for you and for CMK_APP_PRINCIPAL_ID; the topic is in the app's resource group)"
)


async def alert_topic(settings: Settings, services: Services) -> Check:
    """A token for Event Grid is the most smoke can show without publishing: whether the
    caller may send to the topic (EventGrid Data Sender) is not tested, so the row is
    ``unverified``, never ``ok``; ``failed`` when not even a token can be had."""
    endpoint = settings.alert_topic_endpoint
    if endpoint is None:
        found = "CMK_ALERT_TOPIC_ENDPOINT not set: alerts are only logged (App Insights)"
        return Check("alert topic", Result.OK, found)
    try:
        await services.credential.get_token(EVENT_GRID_SCOPE)
    except Exception as error:  # any credential failure
        found = f"{endpoint}: no token for {EVENT_GRID_SCOPE}: {_first_line(error)}"
        return Check("alert topic", Result.FAILED, found, LOGIN_HINT)
    found = (
        f"{endpoint}: a token for {EVENT_GRID_SCOPE} was acquired; the right to send"
        " (EventGrid Data Sender on the topic) is not tested: smoke publishes no event"
    )
    return Check("alert topic", Result.UNVERIFIED, found, _SENDER_CHECK)
