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

__all__ = ["app_settings", "describe_app", "run_app"]

#: App settings the host needs and the sandbox does not give (local.settings.json.example
#: and infra/main.parameters.json defaults); the environment of ``up`` may override them.
APP_DEFAULTS = {
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "CMK_JOB_QUEUE": "cmk-rotation-jobs",
    "CMK_SWEEP_SCHEDULE": "0 0 * * * *",
}


def app_settings(sandbox: Sandbox, environ: Mapping[str, str]) -> dict[str, str]:
    """The app's settings: the defaults above (or the environment's values for them), then
    the sandbox's endpoints, identity, storage and scope (which always win)."""
    tunables = {name: environ.get(name) or value for name, value in APP_DEFAULTS.items()}
    return {**tunables, **sandbox.env(), **sandbox.settings_env()}


@contextmanager
def run_app(
    sandbox: Sandbox, app_dir: Path, settings: Mapping[str, str], *, instances: int
) -> Iterator[FunctionsHost]:
    """Run the app on a Functions host (a loop thread of its own) with every trigger live,
    Event Grid subscribed; the subscriptions end and the host stops when the block ends."""
    for name in Sandbox.interfering_env(dict(os.environ)):
        os.environ.pop(name, None)  # credentials that would steer the app away from the sandbox
    sandbox.trust_ca_in_process()
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
