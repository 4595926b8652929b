"""The Azure Functions app (Python v2 model): a table of contents over the ``cmk`` core.

Each function unwraps its binding into plain data and calls one function of
:mod:`cmk.entrypoints`; the engine (settings, clients) is built once per process.
Transient errors propagate so the host retries; permanent ones are handled by the engine.
"""

from __future__ import annotations

import json
import os

import azure.functions as func

from cmk import entrypoints, operations
from cmk.events import KeyVaultEventType
from cmk.ports import OperationKind
from cmk.runtime import EngineProvider

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
# The clients live as long as the worker process: the Python worker has no shutdown hook
# to close them in (azure-functions-python-worker#1904). Whoever ends the process early
# closes them with `await engines.aclose()`, as the local Functions host does on stop.
engines = EngineProvider(os.environ)


def _event(event: func.EventGridEvent | func.CloudEvent) -> dict[str, object]:
    """The event as Event Grid sent it, in its own schema (Event Grid or CloudEvents 1.0)."""
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": event.time.isoformat() if event.time else None,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }


@app.function_name("on_key_new_version")
@app.event_grid_trigger(arg_name="event")
async def on_key_new_version(event: func.EventGridEvent) -> None:
    """Microsoft.KeyVault.KeyNewVersionCreated: move every bound account."""
    engine = await engines.engine()
    await entrypoints.handle_key_event(engine, _event(event), KeyVaultEventType.NEW_VERSION)


@app.function_name("on_key_near_expiry")
@app.event_grid_trigger(arg_name="event")
async def on_key_near_expiry(event: func.EventGridEvent) -> None:
    """Microsoft.KeyVault.KeyNearExpiry: rotate (exactly once) if needed, then move."""
    engine = await engines.engine()
    await entrypoints.handle_key_event(engine, _event(event), KeyVaultEventType.NEAR_EXPIRY)


@app.function_name("on_key_expired")
@app.event_grid_trigger(arg_name="event")
async def on_key_expired(event: func.EventGridEvent) -> None:
    """Microsoft.KeyVault.KeyExpired: urgent moves and a critical alert."""
    engine = await engines.engine()
    await entrypoints.handle_key_event(engine, _event(event), KeyVaultEventType.EXPIRED)


@app.function_name("rotate_account")
@app.queue_trigger(arg_name="msg", queue_name="%CMK_JOB_QUEUE%", connection="AzureWebJobsStorage")
async def rotate_account(msg: func.QueueMessage) -> None:
    """One account, one key version: PATCH, verify, record."""
    engine = await engines.engine()
    await entrypoints.handle_job_message(engine, msg.get_body())


@app.function_name("on_poison")
@app.queue_trigger(
    arg_name="msg", queue_name="%CMK_JOB_QUEUE%-poison", connection="AzureWebJobsStorage"
)
async def on_poison(msg: func.QueueMessage) -> None:
    """A job that exhausted its retries: ledger failure and one alert."""
    engine = await engines.engine()
    await entrypoints.handle_poison_message(engine, msg.get_body())


@app.function_name("sweep")
@app.timer_trigger(arg_name="timer", schedule="%CMK_SWEEP_SCHEDULE%", run_on_startup=False)
async def sweep(timer: func.TimerRequest) -> None:
    """Catch whatever events missed: stale bindings, findings, stuck updates."""
    engine = await engines.engine()
    await entrypoints.run_sweep(engine)


def _json(result: entrypoints.JsonResponse) -> func.HttpResponse:
    code, body = result
    return func.HttpResponse(json.dumps(body), status_code=code, mimetype="application/json")


def _answer(answer: operations.HttpAnswer) -> func.HttpResponse:
    code, body, headers = answer
    return func.HttpResponse(
        json.dumps(body), status_code=code, headers=headers, mimetype="application/json"
    )


@app.function_name("http_status")
@app.route(route="status", methods=["GET"])
async def http_status(req: func.HttpRequest) -> func.HttpResponse:
    """Every CMK-bound account in scope and its state (202 and a status URL when it takes
    longer than CMK_HTTP_ANSWER_SECONDS)."""
    refused = entrypoints.refuse_unknown_parameters("status", req.params)
    if refused is not None:
        return _json(refused)
    engine = await engines.engine()
    return _answer(await operations.accept(engine, OperationKind.STATUS, req.url))


@app.function_name("http_plan")
@app.route(route="plan", methods=["GET"])
async def http_plan(req: func.HttpRequest) -> func.HttpResponse:
    """What a sweep would do; writes nothing but the operation's row (202 and a status URL
    when it takes longer than CMK_HTTP_ANSWER_SECONDS)."""
    refused = entrypoints.refuse_unknown_parameters("plan", req.params)
    if refused is not None:
        return _json(refused)
    engine = await engines.engine()
    return _answer(await operations.accept(engine, OperationKind.PLAN, req.url))


@app.function_name("http_sweep")
@app.route(route="sweep", methods=["POST"])
async def http_sweep(req: func.HttpRequest) -> func.HttpResponse:
    """Sweep now (202 and a status URL when it takes longer than CMK_HTTP_ANSWER_SECONDS)."""
    refused = entrypoints.refuse_unknown_parameters("sweep", req.params)
    if refused is not None:
        return _json(refused)
    engine = await engines.engine()
    return _answer(await operations.accept(engine, OperationKind.SWEEP, req.url))


@app.function_name("http_operation")
@app.route(route="operations/{operation_id}", methods=["GET"])
async def http_operation(req: func.HttpRequest) -> func.HttpResponse:
    """The status URL of an accepted status, plan or sweep: 202 while it runs, then its answer."""
    engine = await engines.engine()
    operation_id = req.route_params.get("operation_id", "")
    return _answer(await operations.poll(engine, operation_id, req.url))


@app.function_name("run_operation")
@app.queue_trigger(
    arg_name="msg", queue_name="%CMK_JOB_QUEUE%-ops", connection="AzureWebJobsStorage"
)
async def run_operation(msg: func.QueueMessage) -> None:
    """The work of an accepted status, plan or sweep; its answer is kept for the status URL."""
    engine = await engines.engine()
    await operations.handle_operation_message(engine, msg.get_body(), msg.dequeue_count or 1)


@app.function_name("http_rotate")
@app.route(route="rotate", methods=["POST"])
async def http_rotate(req: func.HttpRequest) -> func.HttpResponse:
    """Create a new version of one key now and move every bound account (with
    dry_run=true: say what it would do, create nothing)."""
    return _json(await entrypoints.http_rotate_request(await engines.engine(), req.params))
