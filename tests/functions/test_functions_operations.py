"""/api/status and /api/sweep as Azure's asynchronous request-reply pattern, end to end: the
repository's app on the local Functions host against the sandbox and Azurite. Within the
answer window the caller gets the direct answer; beyond it (made so by construction: a
window of 0 s, or a Resource Graph request the sandbox holds) 202 with a status URL that
answers 202 while the work runs and then the very document the direct call gives."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import jsonschema
import pytest
from app_world import ROOT, AppWorld, close_app

from cmk import entrypoints, operations
from cmk.adapters.operations import TableOperations, new_operation_id
from cmk.ports import Operation, OperationAnswer, OperationKind, OperationState
from cmk.sandbox.core import Sandbox
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.platform.faults import FaultRule
from cmk.usecases import Engine

#: Ceiling on any wait here: it only bounds a hang, it decides nothing.
HANG = 30.0
ARM = "management.azure.com"
GRAPH = "/providers/Microsoft.ResourceGraph/resources"
_SCHEMA_BLOCK = re.compile(r"<!-- schema: (\S+) -->\s*```json\n(.*?)```", re.DOTALL)


def _documented(page: str) -> dict[str, dict[str, Any]]:
    """The JSON schemas of docs/``page`` by name, each with docs/cli.md's shared ``$defs``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    blocks = {name: json.loads(body) for name, body in _SCHEMA_BLOCK.findall(text)}
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    shared = dict(_SCHEMA_BLOCK.findall(cli))["$defs"]
    return {name: {**schema, **json.loads(shared)} for name, schema in blocks.items()}


def _functions_schema(name: str) -> dict[str, Any]:
    """A JSON schema documented in docs/functions.md."""
    return _documented("functions.md")[name]


@dataclass
class Answer:
    """One HTTP answer of the app."""

    status: int
    headers: dict[str, str]
    body: Any


@pytest.fixture
def app_world(sandbox: Sandbox, azurite: str) -> AppWorld:
    return AppWorld(sandbox, azurite)


@asynccontextmanager
async def _running(app_world: AppWorld, **settings: str) -> AsyncIterator[FunctionsHost]:
    """The app on one instance with ``settings`` on top of the world's; its queue polling
    jitter comes from the session's seed (the sandbox's)."""
    values = {**app_world.settings, **settings}
    seed = app_world.sandbox.random_seed
    async with FunctionsHost(ROOT, settings=values, instances=1, random_seed=seed) as host:
        try:
            yield host
        finally:
            await close_app(host)


async def _call(
    method: str, url: str, *, key: str | None = None, code: str | None = None
) -> Answer:
    """One request, the key in ``x-functions-key`` (``key``) or in ``?code=`` (``code``)."""
    headers = {"x-functions-key": key} if key is not None else {}
    params = {"code": code} if code is not None else {}
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.request(method, url, headers=headers, params=params) as response,
    ):
        body = await response.json() if response.content_length else None
        return Answer(response.status, dict(response.headers), body)


async def _poll(url: str, key: str | None, done: Callable[[Answer], bool] | None = None) -> Answer:
    """Poll the status URL until it answers anything but 202 (or ``done``), as a client
    does (without waiting Retry-After's 10 s: the ceiling only bounds a hang)."""
    finished = done or (lambda answer: answer.status != 202)
    loop = asyncio.get_running_loop()
    until = loop.time() + HANG
    while True:
        answer = await _call("GET", url, key=key)
        if finished(answer):
            return answer
        if loop.time() > until:
            raise TimeoutError(f"{url} still answers {answer.status}: {answer.body}")
        await asyncio.sleep(0.05)


def _stale_world(app_world: AppWorld, count: int = 2) -> None:
    """``count`` accounts bound to the first version while a newer one exists."""
    first = app_world.first_version()
    for i in range(count):
        app_world.account(f"acct-op-{i}", first.version)
    app_world.version()


async def _engine(host: FunctionsHost) -> Engine:
    engine: Engine = await host.module.engines.engine()
    return engine


async def _operation_rows(host: FunctionsHost) -> list[dict[str, Any]]:
    """Every operation row (and answer row) in the app's table."""
    engine = await _engine(host)
    assert isinstance(engine.operations, TableOperations)
    client = engine.operations.client
    pages = client.query_entities(
        "PartitionKey ge @low and PartitionKey lt @high",
        parameters={"low": "operation", "high": "operation}"},
    )
    return [dict(entity) async for entity in pages]


def _held_graph(app_world: AppWorld) -> tuple[FaultRule, threading.Event]:
    """The next Resource Graph query waits (in the sandbox) until the event is set."""
    hold = threading.Event()
    rule = app_world.sandbox.faults.add(host=ARM, path=GRAPH, method="POST", hold=hold, count=1)
    return rule, hold


async def _until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + HANG
    while not condition():
        if loop.time() > until:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


CLI_SCHEMAS = _documented("cli.md")


class TestDirectAnswer:
    """Work that finishes within CMK_HTTP_ANSWER_SECONDS is answered as before."""

    async def test_small_status_is_answered_directly(self, app_world: AppWorld) -> None:
        """GET /api/status within the window: 200, the `cmk status` document, no Location,
        and no operation left behind in the table."""
        _stale_world(app_world)
        async with _running(app_world) as host:
            answer = await _call("GET", host.url("status"), key=host.function_key)
            rows = await _operation_rows(host)

        assert answer.status == 200, answer.body
        assert "Location" not in answer.headers and "Retry-After" not in answer.headers
        jsonschema.validate(answer.body, CLI_SCHEMAS["status"])
        assert answer.body["summary"]["stale"] == 2 and answer.body["exit_code"] == 1
        assert rows == []

    async def test_small_sweep_is_answered_directly(self, app_world: AppWorld) -> None:
        """POST /api/sweep within the window: 200 and the `cmk sweep` document."""
        _stale_world(app_world)
        async with _running(app_world) as host:
            answer = await _call("POST", host.url("sweep"), key=host.function_key)

        assert answer.status == 200, answer.body
        jsonschema.validate(answer.body, CLI_SCHEMAS["sweep"])
        assert answer.body["sweep"]["enqueued"] == 2 and answer.body["jobs"] == []


class TestAcceptedAnswer:
    """Work that outlives the window: 202, Location, Retry-After; the status URL follows."""

    async def test_status_answers_202_then_the_direct_document(self, app_world: AppWorld) -> None:
        """With a 0 s window, GET /api/status answers 202 with Location and Retry-After;
        polling the status URL reaches 200 with the document the direct call gives."""
        _stale_world(app_world)
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("GET", host.url("status"), key=host.function_key)
            location = accepted.headers["Location"]
            done = await _poll(location, host.function_key)
            direct = await entrypoints.http_status(await _engine(host))
            operations_url = host.url("operations")

        assert accepted.status == 202
        jsonschema.validate(accepted.body, _functions_schema("operation"))
        operation = accepted.body["operation"]
        assert location == f"{operations_url}/{operation['id']}"
        assert operation["status_url"] == location and operation["kind"] == "status"
        assert accepted.headers["Retry-After"] == str(operations.RETRY_AFTER_SECONDS)
        assert done.status == 200 and "Location" not in done.headers
        jsonschema.validate(done.body, CLI_SCHEMAS["status"])
        assert (done.status, set(done.body)) == (direct[0], set(direct[1]))  # type: ignore[arg-type]
        assert done.body["summary"] == direct[1]["summary"]  # type: ignore[index]
        assert _bindings(done.body) == _bindings(direct[1])

    async def test_sweep_answers_202_then_its_document(self, app_world: AppWorld) -> None:
        """With a 0 s window, POST /api/sweep answers 202; its status URL reaches 200 with
        the `cmk sweep` document, and the moves it enqueued are made."""
        _stale_world(app_world)
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("POST", host.url("sweep"), key=host.function_key)
            done = await _poll(accepted.headers["Location"], host.function_key)
            newest = app_world.versions()[-1].version
            await host.wait_for(lambda: app_world.on_version(newest), within=HANG)
            await host.wait_idle()

        assert accepted.status == 202 and accepted.body["operation"]["kind"] == "sweep"
        assert done.status == 200, done.body
        jsonschema.validate(done.body, CLI_SCHEMAS["sweep"])
        assert done.body["sweep"]["enqueued"] == 2 and done.body["jobs"] == []
        app_world.check_invariants()

    async def test_plan_answers_202_then_its_document(self, app_world: AppWorld) -> None:
        """GET /api/plan surveys the whole estate as status does: with a 0 s window it
        answers 202 too, and its status URL reaches the `cmk plan` document; nothing
        is moved (a plan writes nothing but its operation's row)."""
        _stale_world(app_world)
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("GET", host.url("plan"), key=host.function_key)
            done = await _poll(accepted.headers["Location"], host.function_key)

        assert accepted.status == 202 and accepted.body["operation"]["kind"] == "plan"
        jsonschema.validate(accepted.body, _functions_schema("operation"))
        assert done.status == 200, done.body
        jsonschema.validate(done.body, CLI_SCHEMAS["plan"])
        assert len(done.body["plan"]["moves"]) == 2
        assert not app_world.on_version(app_world.versions()[-1].version)

    async def test_running_operation_answers_202_with_its_progress(
        self, app_world: AppWorld
    ) -> None:
        """While the worker waits on a (held) Resource Graph query the status URL answers
        202, status running, one attempt, Location and Retry-After; once it goes on, 200 —
        even beyond the window of the call that accepted it."""
        _stale_world(app_world)
        rule, hold = _held_graph(app_world)
        try:
            async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
                accepted = await _call("GET", host.url("status"), key=host.function_key)
                location = accepted.headers["Location"]
                await _until(lambda: rule.hits == 1)
                running = await _poll(location, host.function_key, _is_running)
                hold.set()
                done = await _poll(location, host.function_key)
        finally:
            hold.set()

        assert accepted.status == 202
        assert running.status == 202
        jsonschema.validate(running.body, _functions_schema("operation"))
        assert running.body["operation"]["attempts"] == 1
        assert running.body["operation"]["started"] is not None
        assert running.headers["Location"] == location
        assert running.headers["Retry-After"] == str(operations.RETRY_AFTER_SECONDS)
        assert done.status == 200 and done.body["summary"]["stale"] == 2

    async def test_failed_operation_answers_its_error_document(self, app_world: AppWorld) -> None:
        """An inventory the app may not read (403 from Resource Graph and from ARM's list):
        the status URL answers 403 and the error document the direct call answers."""
        _stale_world(app_world)
        faults = app_world.sandbox.faults
        faults.add(host=ARM, path=GRAPH, method="POST", status=403)
        faults.add(host=ARM, path="/providers/Microsoft.CognitiveServices/accounts$", status=403)
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("GET", host.url("status"), key=host.function_key)
            done = await _poll(accepted.headers["Location"], host.function_key)
            again = await _call("GET", accepted.headers["Location"], key=host.function_key)
            direct = await entrypoints.http_status(await _engine(host))

        assert accepted.status == 202
        assert (done.status, done.body) == direct == (again.status, again.body)
        jsonschema.validate(done.body, CLI_SCHEMAS["error"])
        assert done.status == 403 and done.body["error"]["kind"] == "access_denied"

    async def test_transient_failure_is_retried_then_answered_503(
        self, app_world: AppWorld
    ) -> None:
        """A Resource Graph that keeps answering 503 fails the first deliveries of the
        operation (the host delivers it again); the last attempt keeps the 503 answer."""
        faults = app_world.sandbox.faults
        faults.add(host=ARM, path=GRAPH, method="POST", status=503, retry_after=0.01)
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("GET", host.url("status"), key=host.function_key)
            done = await _poll(accepted.headers["Location"], host.function_key)
            await host.wait_idle()
            runs = host.invocations_of("run_operation")

        assert accepted.status == 202
        assert done.status == 503 and done.body["error"]["kind"] == "transient"
        jsonschema.validate(done.body, CLI_SCHEMAS["error"])
        assert [(run.dequeue_count, run.succeeded) for run in runs] == [
            (attempt, attempt == operations.ATTEMPTS)
            for attempt in range(1, operations.ATTEMPTS + 1)
        ]
        assert not host.poisoned


class TestStatusUrl:
    """The status URL: its keys, unknown and expired ids, and the deadline."""

    @pytest.mark.parametrize("key", [None, "not-the-key"])
    async def test_without_a_valid_key_is_refused(
        self, app_world: AppWorld, key: str | None
    ) -> None:
        """GET /api/operations/{id} without the function key, or with a wrong one, is 401."""
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("GET", host.url("status"), key=host.function_key)
            refused = await _call("GET", accepted.headers["Location"], key=key)

        assert accepted.status == 202
        assert refused.status == 401

    async def test_a_key_sent_as_code_stays_in_the_location(self, app_world: AppWorld) -> None:
        """A key sent as ?code= is in the Location (the URL works as given); one sent as a
        header is not repeated there."""
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            by_code = await _call("GET", host.url("status"), code=host.function_key)
            followed = await _poll(by_code.headers["Location"], key=None)
            by_header = await _call("GET", host.url("status"), key=host.function_key)

        assert by_code.status == 202
        assert by_code.headers["Location"].endswith(f"?code={host.function_key}")
        assert followed.status == 200
        assert "code=" not in by_header.headers["Location"]

    @pytest.mark.parametrize("operation_id", ["0" * 32, "not-an-operation"])
    async def test_unknown_id_is_not_found(self, app_world: AppWorld, operation_id: str) -> None:
        """An id never issued (well-formed or not) answers 404 with the error document."""
        async with _running(app_world) as host:
            answer = await _call(
                "GET", host.url(f"operations/{operation_id}"), key=host.function_key
            )

        assert answer.status == 404
        jsonschema.validate(answer.body, CLI_SCHEMAS["error"])
        assert answer.body["error"]["kind"] == "not_found"
        assert operation_id in answer.body["error"]["message"]

    async def test_expired_answer_is_not_found_and_forgotten(self, app_world: AppWorld) -> None:
        """Past CMK_OPERATION_RETENTION_HOURS the status URL answers 404, and the next
        accepted call removes the expired rows."""
        async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
            accepted = await _call("GET", host.url("status"), key=host.function_key)
            location = accepted.headers["Location"]
            assert (await _poll(location, host.function_key)).status == 200
            engine = await _engine(host)
            later = _clock(engine.now() + timedelta(hours=25))
            expired = await operations.poll(replace(engine, now=later), _id(location), location)
            rows_before = await _operation_rows(host)
            status_call = host.url("status")
            await operations.accept(replace(engine, now=later), OperationKind.STATUS, status_call)
            rows_after = await _operation_rows(host)

        assert expired[0] == 404 and expired[1]["error"]["kind"] == "not_found"  # type: ignore[index]
        assert _id(location) in {row["RowKey"] for row in rows_before}
        assert _id(location) not in {row["RowKey"] for row in rows_after}
        assert not [row for row in rows_after if row["PartitionKey"].endswith(_id(location))]

    async def test_operation_past_its_deadline_answers_failed_not_202(
        self, app_world: AppWorld
    ) -> None:
        """An operation whose worker never finished (held here, as a lost instance would
        leave it) answers 500 `failed` once past CMK_OPERATION_DEADLINE_MINUTES, and keeps
        that answer when the late worker finishes after all."""
        _stale_world(app_world)
        rule, hold = _held_graph(app_world)
        try:
            async with _running(app_world, CMK_HTTP_ANSWER_SECONDS="0") as host:
                accepted = await _call("GET", host.url("status"), key=host.function_key)
                location = accepted.headers["Location"]
                await _until(lambda: rule.hits == 1)
                engine = await _engine(host)
                late = replace(engine, now=_clock(engine.now() + timedelta(minutes=61)))
                past = await operations.poll(late, _id(location), location)
                hold.set()
                await host.wait_for(lambda: host.invocations["run_operation"] == 1, within=HANG)
                await host.wait_idle()
                after = await _call("GET", location, key=host.function_key)
        finally:
            hold.set()

        status, document, headers = past
        assert status == 500 and headers == {}
        jsonschema.validate(document, CLI_SCHEMAS["error"])
        assert document["error"]["kind"] == "failed"  # type: ignore[index]
        assert "deadline" in document["error"]["message"]  # type: ignore[index]
        assert (after.status, after.body) == (status, document)


def _is_running(answer: Answer) -> bool:
    return answer.status == 202 and answer.body["operation"]["status"] == "running"


def _bindings(document: Any) -> set[tuple[str, str, str]]:
    return {
        (row["account_id"].lower(), row["bound_version"], row["newest_version"])
        for row in document["accounts"]
    }


def _clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _id(location: str) -> str:
    return location.split("?", maxsplit=1)[0].rsplit("/", 1)[1]


class TestKeptAnswer:
    """The answer rows in Table storage (through the app's own adapter, against Azurite)."""

    async def test_answer_larger_than_an_entity_is_read_back_whole(
        self, app_world: AppWorld
    ) -> None:
        """A document of several MB (gzip-resistant) is kept in chunk rows of under 1 MiB
        and read back equal; a second finish does not replace the first answer."""
        accounts = [{"account_id": secrets.token_hex(64)} for _ in range(40_000)]
        document = {"accounts": accounts, "exit_code": 0}
        async with FunctionsHost(ROOT, settings=app_world.settings, poll_queues=False) as host:
            try:
                engine = await _engine(host)
                store = engine.operations
                assert isinstance(store, TableOperations)
                now = engine.now()
                operation = Operation(
                    id=new_operation_id(),
                    kind=OperationKind.STATUS,
                    state=OperationState.NOT_STARTED,
                    created=now,
                    deadline=now + timedelta(hours=1),
                    expires=now + timedelta(hours=2),
                )
                await store.accept(operation)
                kept = await store.finish(operation.id, OperationAnswer(200, document), now, now)
                again = await store.finish(operation.id, OperationAnswer(503, {}), now, now)
                assert kept is not None
                answer = await store.answer(kept)
                rows = await _operation_rows(host)
            finally:
                await close_app(host)

        assert kept.state is OperationState.SUCCEEDED and again == kept
        assert answer == OperationAnswer(200, document)
        chunk_rows = [row for row in rows if row["PartitionKey"] != "operation"]
        assert len(chunk_rows) > 1
        sizes = [sum(len(v) for v in row.values() if isinstance(v, bytes)) for row in chunk_rows]
        assert max(sizes) < 2**20 < sum(sizes)
