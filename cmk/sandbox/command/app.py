"""``cmk sandbox up --app``: ``function_app.py`` on the local Functions host against the
running sandbox — the local ``func start`` with a local Azure.

Wired as infra/ wires the deployment:

- the system topic of each Key Vault in the app's allow-list (``CMK_VAULT_ALLOWLIST``, as
  infra/ subscribes the vaults of its ``vaults`` parameter) gets the three subscriptions of
  ``infra/app/vault-event-subscriptions.bicep`` (one event type each, to its function, the
  ``data.ObjectType StringIn Key`` advanced filter), delivered by the sandbox's Event Grid
  over HTTP to the host's Event Grid webhook (``/runtime/webhooks/eventgrid``, with the
  ``eventgrid_extension`` system key), at least once with Event Grid's retry schedule, 30
  delivery attempts and a 1440-minute event time-to-live; a vault off the allow-list gets
  none; Managed HSM publishes no Event Grid events, so it gets none either;
- every queue the app uses (``CMK_JOB_QUEUE``, its ``-poison``, ``-ops`` and ``-ops-poison``)
  and the ledger table exist on the sandbox's Azurite before the host starts, as
  ``infra/app/storage.bicep`` creates them before the app runs (the host creates none:
  a queue trigger takes a missing queue for an empty one, and ``cmk smoke`` would fail);
- ``rotate_account`` and ``on_poison`` poll the job queue and its poison queue on the
  sandbox's Azurite, ``instances`` workers each, with host.json's queue rules;
- ``sweep`` runs on ``CMK_SWEEP_SCHEDULE`` (hourly unless the environment says otherwise);
- the HTTP functions answer on a loopback port, behind the function keys printed at start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient

from cmk.sandbox.command.vault_events import (
    EVENT_TTL_MINUTES,
    KEYS_ONLY,
    MAX_DELIVERY_ATTEMPTS,
    SUBSCRIPTIONS,
    app_key_vaults,
)
from cmk.sandbox.core import Sandbox
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.funchost.http import EVENTGRID_SYSTEM_KEY, EVENTGRID_WEBHOOK
from cmk.sandbox.funchost.queues import poison_queue_name
from cmk.settings import OPERATION_QUEUE_SUFFIX

__all__ = ["app_queues", "app_settings", "create_app_storage", "describe_app", "run_app"]

#: App settings the host needs and the sandbox does not give (local.settings.json.example
#: and infra/main.parameters.json defaults); the environment of ``up`` may override them.
APP_DEFAULTS = {
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "CMK_JOB_QUEUE": "cmk-rotation-jobs",
    "CMK_LEDGER_TABLE": "cmkledger",
    "CMK_SWEEP_SCHEDULE": "0 0 * * * *",
}


def app_settings(sandbox: Sandbox, environ: Mapping[str, str]) -> dict[str, str]:
    """The app's settings: the defaults above (or the environment's values for them), then
    the sandbox's endpoints, identity, storage and scope (which always win)."""
    tunables = {name: environ.get(name) or value for name, value in APP_DEFAULTS.items()}
    return {**tunables, **sandbox.env(), **sandbox.settings_env()}


def app_queues(job_queue: str) -> tuple[str, ...]:
    """Every queue the app reads or writes for CMK_JOB_QUEUE ``job_queue``: the job queue,
    the operations queue (``function_app.py``'s ``%CMK_JOB_QUEUE%-ops``) and the poison
    queue of each."""
    operations = f"{job_queue}{OPERATION_QUEUE_SUFFIX}"
    return (job_queue, poison_queue_name(job_queue), operations, poison_queue_name(operations))


def create_app_storage(settings: Mapping[str, str]) -> list[str]:
    """Create the app's queues (:func:`app_queues`) and ledger table in the storage of
    ``AzureWebJobsStorage`` (a connection string: the sandbox's Azurite); the ones that
    exist are left alone. Returns what it created; nothing without a connection string."""
    connection = settings.get("AzureWebJobsStorage")
    if not connection:
        return []
    created = []
    # Azurite is on loopback: no proxy of the environment applies (use_env_settings=False)
    with QueueServiceClient.from_connection_string(connection, use_env_settings=False) as queues:
        for name in app_queues(settings.get("CMK_JOB_QUEUE") or APP_DEFAULTS["CMK_JOB_QUEUE"]):
            try:
                queues.create_queue(name)
            except ResourceExistsError:
                continue
            created.append(f"queue {name}")
    table = settings.get("CMK_LEDGER_TABLE") or APP_DEFAULTS["CMK_LEDGER_TABLE"]
    with TableServiceClient.from_connection_string(connection, use_env_settings=False) as tables:
        try:
            tables.create_table(table)
        except ResourceExistsError:
            pass
        else:
            created.append(f"table {table}")
    return created


@contextmanager
def run_app(
    sandbox: Sandbox, app_dir: Path, settings: Mapping[str, str], *, instances: int
) -> Iterator[FunctionsHost]:
    """Run the app on a Functions host (a loop thread of its own) with every trigger live,
    Event Grid subscribed, its queues and ledger table created first; the subscriptions
    end and the host stops when the block ends."""
    for name in Sandbox.interfering_env(dict(os.environ)):
        os.environ.pop(name, None)  # credentials that would steer the app away from the sandbox
    sandbox.trust_ca_in_process()
    create_app_storage(settings)
    with FunctionsHost(
        app_dir, settings=settings, instances=instances, serve_http=True, run_schedules=True
    ) as host:
        system_key = host.keys.system[EVENTGRID_SYSTEM_KEY]
        vaults = app_key_vaults(sandbox, settings)
        subscriptions = [
            sandbox.eventgrid.subscribe(
                url=f"{host.base_url}{EVENTGRID_WEBHOOK}?functionName={function}&code={system_key}",
                included_event_types=[event_type],
                vaults=vaults,
                name=name,
                advanced_filters=KEYS_ONLY,
                max_attempts=MAX_DELIVERY_ATTEMPTS,
                event_ttl_minutes=EVENT_TTL_MINUTES,
            )
            for name, (event_type, function) in SUBSCRIPTIONS.items()
            if function in host.functions and vaults  # an app of your own may lack one
        ]
        try:
            yield host
        finally:
            for subscription in subscriptions:
                sandbox.eventgrid.unsubscribe(subscription)


def describe_app(host: FunctionsHost, sandbox: Sandbox) -> str:
    """What runs where: one line per function, the keys, and how to try it."""
    vaults = app_key_vaults(sandbox, host.settings)
    lines = [f"  app: {host.app_dir / 'function_app.py'}, {host.instances} instance(s)"]
    for function in host.functions.values():
        trigger = function.trigger
        kind = function.trigger_type
        if kind == "eventGridTrigger":
            where = f"Event Grid from {', '.join(vaults) or 'no Key Vault'}"
        elif kind == "queueTrigger":
            where = f"queue {trigger['queueName']} on Azurite"
        elif kind == "timerTrigger":
            where = f"timer {trigger['schedule']}"
        elif kind == "httpTrigger":
            methods = ",".join(str(m).upper() for m in trigger.get("methods") or ["*"])
            where = f"{methods} {host.url(str(trigger.get('route') or function.name))}"
        else:
            where = kind
        lines.append(f"    {function.name:<20} {where}")
    lines += [
        f"  function key: {host.function_key}  (header x-functions-key, or ?code=)",
        f"  master key:   {host.master_key}",
        f'  try: curl -H "x-functions-key: {host.function_key}" {host.url("status")}',
    ]
    return "\n".join(lines)
