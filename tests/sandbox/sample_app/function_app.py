"""A small Functions app exercising every trigger kind the local host serves; used only
by tests/sandbox/test_funchost*.py. Each function records what it received in
``RECEIVED[<function>]`` and fails on demand (``FAIL``), so tests can assert both.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

RECEIVED: dict[str, list[Any]] = {}
# function name -> how many more invocations fail (a negative count: fail forever)
FAIL: dict[str, int] = {}
_lock = threading.Lock()
# "block-*" job messages wait for this (at most a minute) before they are recorded
RELEASE = threading.Event()


class Resources:
    """What an app keeps for its process (clients, an engine): the host closes it."""

    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


resources = Resources()


def _record(function: str, value: Any) -> None:
    with _lock:
        RECEIVED.setdefault(function, []).append(value)
        left = FAIL.get(function, 0)
        if left:
            FAIL[function] = left - 1
            raise RuntimeError(f"{function} failed on purpose")


@app.event_grid_trigger(arg_name="event")
async def on_key_event(event: func.EventGridEvent) -> None:
    if isinstance(event, func.CloudEvent):  # a CloudEvents 1.0 subscription
        event_type, topic = event.type, event.source
    else:
        event_type, topic = event.event_type, event.topic
    _record(
        "on_key_event",
        {
            "type": type(event).__name__,
            "id": event.id,
            "event_type": event_type,
            "subject": event.subject,
            "topic": topic,
            "data": event.get_json(),
        },
    )


@app.queue_trigger(
    arg_name="msg", queue_name="%SAMPLE_JOB_QUEUE%", connection="AzureWebJobsStorage"
)
def on_job(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode("utf-8")
    if body.startswith("slow"):
        threading.Event().wait(0.3)
    if body.startswith("block"):
        RELEASE.wait(60)
    _record(
        "on_job",
        {
            "id": msg.id,
            "body": body,
            "dequeue_count": msg.dequeue_count,
            "inserted": msg.insertion_time is not None,
            "thread": threading.current_thread().name,
        },
    )
    if body.startswith("poison"):
        raise ValueError(f"cannot process {body!r}")


@app.queue_trigger(arg_name="msg", queue_name="%SAMPLE_JOB_QUEUE%-poison", connection="")
async def on_job_poison(msg: func.QueueMessage, context: func.Context) -> None:
    await asyncio.sleep(0)
    _record(
        "on_job_poison",
        {"body": msg.get_body().decode("utf-8"), "function": context.function_name},
    )


@app.retry(strategy="fixed_delay", max_retry_count="1", delay_interval="00:00:00")
@app.timer_trigger(schedule="%SAMPLE_SCHEDULE%", arg_name="timer", run_on_startup=False)
def tick(timer: func.TimerRequest, context: func.Context) -> None:
    _record(
        "tick",
        {"past_due": timer.past_due, "retry_count": context.retry_context.retry_count},
    )


@app.route(route="status", methods=["GET"])
def status(req: func.HttpRequest) -> func.HttpResponse:
    _record("status", {"params": dict(req.params)})
    return func.HttpResponse(
        json.dumps({"ok": True, "name": req.params.get("name")}),
        mimetype="application/json",
    )


@app.route(route="ping", auth_level=func.AuthLevel.ANONYMOUS)
async def ping(req: func.HttpRequest) -> str:
    _record("ping", {"method": req.method})
    return "pong"


@app.function_name("reset_item")
@app.route(route="items/{item_id}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def reset(req: func.HttpRequest) -> func.HttpResponse:
    _record("reset_item", {"item_id": req.route_params["item_id"], "body": req.get_json()})
    return func.HttpResponse(status_code=202)
