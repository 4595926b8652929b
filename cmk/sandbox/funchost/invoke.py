"""Invoking one function the way the Python worker does: the host-shaped ``Datum`` for the
trigger, decoded by the ``azure-functions`` library's own converter, the parameters bound
by name (trigger, ``context``), async functions awaited on the host loop and sync ones run
in a thread pool, the ``$return`` value encoded by the library's HTTP converter.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import typing
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import azure.functions as func
from azure.functions import _abc as azf_abc
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.http import HttpRequestConverter, HttpResponseConverter
from azure.functions.queue import QueueMessageInConverter
from azure.functions.timer import TimerRequestConverter

from cmk.sandbox.funchost.index import FunctionIndexError, IndexedFunction

CONVERTERS: Mapping[str, Any] = {
    "eventGridTrigger": EventGridEventInConverter,
    "queueTrigger": QueueMessageInConverter,
    "timerTrigger": TimerRequestConverter,
    "httpTrigger": HttpRequestConverter,
}
RAW_TYPES = (str, bytes)


class FunctionTimeout(TimeoutError):
    """The invocation ran longer than host.json ``functionTimeout``."""


@dataclass(frozen=True)
class TriggerInput:
    """What the host hands the worker for one invocation: the trigger datum and metadata."""

    datum: Any  # azure.functions.meta.Datum
    metadata: Mapping[str, Any]  # name -> Datum


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _json_datum(value: object) -> Any:
    return meta.Datum(json.dumps(value), "json")


def event_grid_input(event: Mapping[str, Any]) -> TriggerInput:
    """One Event Grid event (Event Grid schema or CloudEvents 1.0) as the host sends it."""
    return TriggerInput(meta.Datum(json.dumps(event), "json"), {})


def queue_input(
    body: bytes,
    *,
    message_id: str,
    dequeue_count: int,
    inserted_on: datetime | None,
    expires_on: datetime | None,
    next_visible_on: datetime | None,
    pop_receipt: str | None,
) -> TriggerInput:
    """A decoded queue message with the trigger metadata the host sends."""
    try:
        datum = meta.Datum(body.decode("utf-8"), "string")
    except UnicodeDecodeError:
        datum = meta.Datum(body, "bytes")
    metadata: dict[str, Any] = {
        "Id": meta.Datum(message_id, "string"),
        "DequeueCount": _json_datum(dequeue_count),
    }
    if pop_receipt is not None:
        metadata["PopReceipt"] = meta.Datum(pop_receipt, "string")
    for name, when in (
        ("InsertionTime", inserted_on),
        ("ExpirationTime", expires_on),
        ("NextVisibleTime", next_visible_on),
    ):
        if when is not None:
            metadata[name] = _json_datum(_iso(when))
    return TriggerInput(datum, metadata)


def timer_input(
    *, past_due: bool, last: datetime | None, next_run: datetime | None
) -> TriggerInput:
    """The timer payload (``IsPastDue``, ``ScheduleStatus``) as the host sends it."""
    status = {
        "Last": _iso(last) if last else "0001-01-01T00:00:00",
        "Next": _iso(next_run) if next_run else None,
        "LastUpdated": _iso(datetime.now(UTC)),
    }
    payload = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due}
    return TriggerInput(meta.Datum(json.dumps(payload), "json"), {})


def http_input(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    route_params: Mapping[str, str],
    body: bytes,
) -> TriggerInput:
    """An HTTP request as the host sends it (``Datum`` of type ``http``)."""

    def strings(values: Mapping[str, str]) -> dict[str, Any]:
        return {k: meta.Datum(v, "string") for k, v in values.items()}

    value = {
        "method": meta.Datum(method, "string"),
        "url": meta.Datum(url, "string"),
        "headers": strings(headers),
        "query": strings(query),
        "params": strings(route_params),
        "body": meta.Datum(body, "bytes"),
    }
    return TriggerInput(meta.Datum(value, "http"), {})


@dataclass(frozen=True)
class HttpResult:
    """What an HTTP function answered, after the library's ``$return`` converter."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def http_result(returned: object) -> HttpResult:
    """Encode ``returned`` (``func.HttpResponse`` or ``str``) like the worker does."""
    if returned is None:
        return HttpResult(204, {}, b"")
    datum = HttpResponseConverter.encode(returned, expected_type=None)
    if datum.type == "string":
        return HttpResult(200, {"content-type": "text/plain; charset=utf-8"}, datum.value.encode())
    value = datum.value
    return HttpResult(
        status=int(value["status_code"].value),
        headers={name: str(h.value) for name, h in value["headers"].items()},
        body=bytes(value["body"].value or b""),
    )


class _TraceContext(azf_abc.TraceContext):
    def __init__(self, invocation_id: str) -> None:
        self._parent = f"00-{invocation_id.replace('-', '')}-{invocation_id[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _NoException(azf_abc.RpcException):
    """The retry context's exception on the first attempt (the worker sends an empty one)."""

    @property
    def source(self) -> str:
        return ""

    @property
    def stack_trace(self) -> str:
        return ""

    @property
    def message(self) -> str:
        return ""


class _RetryContext(azf_abc.RetryContext):
    def __init__(self, retry_count: int, max_retry_count: int) -> None:
        self._count, self._max = retry_count, max_retry_count

    @property
    def retry_count(self) -> int:
        return self._count

    @property
    def max_retry_count(self) -> int:
        return self._max

    @property
    def exception(self) -> azf_abc.RpcException:
        return _NoException()


class InvocationContext(func.Context):
    """The ``context`` parameter (``func.Context``) the worker passes when it is declared."""

    _local = threading.local()

    def __init__(
        self,
        invocation_id: str,
        function_name: str,
        function_directory: str,
        retry_count: int = 0,
        max_retry_count: int = 0,
    ) -> None:
        self._id = invocation_id
        self._name = function_name
        self._directory = function_directory
        self._retry = _RetryContext(retry_count, max_retry_count)

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        # annotated as a type by the library; the worker hands out an instance, as here
        return cast(type[threading.local], self._local)

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return self._directory

    @property
    def trace_context(self) -> _TraceContext:
        return _TraceContext(self._id)

    @property
    def retry_context(self) -> _RetryContext:
        return self._retry


def _annotations(function: IndexedFunction) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function.user_function)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        return dict(getattr(function.user_function, "__annotations__", {}))


def check_signature(function: IndexedFunction) -> None:
    """Refuse what the worker refuses at load: unbound parameters, bindings this host
    cannot serve, and a trigger annotation the binding's converter does not accept."""
    where = f"function {function.name!r}"
    unsupported = [b for b in function.other_bindings if b.get("type") not in ("http",)]
    if unsupported:
        kinds = sorted({str(b.get("type")) for b in unsupported})
        raise FunctionIndexError(
            f"{where}: bindings {kinds} are not supported by the local host (it serves "
            "eventGridTrigger, queueTrigger, timerTrigger and httpTrigger with http $return)"
        )
    if function.trigger_type not in CONVERTERS:
        raise FunctionIndexError(
            f"{where}: trigger {function.trigger_type!r} is not supported by the local host"
        )
    hints = _annotations(function)
    parameters = inspect.signature(function.user_function).parameters
    bound = {function.trigger_param, "context"}
    unbound = [p for p in parameters if p not in bound]
    if unbound:
        raise FunctionIndexError(
            f"{where}: parameters {unbound} are declared in Python but not bound"
        )
    if function.trigger_param not in parameters:
        raise FunctionIndexError(
            f"{where}: the trigger binding {function.trigger_param!r} has no parameter"
        )
    annotation = hints.get(function.trigger_param)
    converter = CONVERTERS[function.trigger_type]
    if (
        isinstance(annotation, type)
        and annotation not in RAW_TYPES
        and not converter.check_input_type_annotation(annotation)
    ):
        raise FunctionIndexError(
            f"{where}: type of {function.trigger_param!r} binding {function.trigger_type!r} "
            f"does not match its Python annotation {annotation.__name__!r}"
        )


def decode_trigger(function: IndexedFunction, trigger: TriggerInput) -> Any:
    """The trigger argument: the library converter's object, or the raw ``str``/``bytes``."""
    annotation = _annotations(function).get(function.trigger_param)
    value = trigger.datum.value
    if annotation is str:
        return value.decode("utf-8") if isinstance(value, bytes) else value
    if annotation is bytes:
        return value.encode("utf-8") if isinstance(value, str) else value
    converter = CONVERTERS[function.trigger_type]
    return converter.decode(trigger.datum, trigger_metadata=trigger.metadata)


async def call(
    function: IndexedFunction,
    trigger: TriggerInput,
    *,
    context: InvocationContext,
    executor: Executor,
    timeout_seconds: float | None,
) -> Any:
    """Run the user function once and return its value; FunctionTimeout when it overruns."""
    kwargs: dict[str, Any] = {function.trigger_param: decode_trigger(function, trigger)}
    if "context" in inspect.signature(function.user_function).parameters:
        kwargs["context"] = context
    loop = asyncio.get_running_loop()
    deadline = asyncio.timeout(timeout_seconds)
    try:
        async with deadline:
            if function.is_async:
                result = await function.user_function(**kwargs)
            else:
                result = await loop.run_in_executor(
                    executor, lambda: function.user_function(**kwargs)
                )
    except TimeoutError:
        if not deadline.expired():
            raise  # the function's own TimeoutError
        raise FunctionTimeout(
            f"Timeout value of {timeout_seconds} s was exceeded by function {function.name!r}"
        ) from None
    has_return = any(b["name"] == "$return" for b in function.resolved)
    if result is not None and not has_return:
        raise TypeError(
            f"function {function.name!r} without a $return binding returned a non-None value"
        )
    return result
