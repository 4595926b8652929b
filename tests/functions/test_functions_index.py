"""function_app.py as the Functions host indexes it: the exact bindings of the twelve
functions, the %SETTING% references and what they resolve to, and which Key Vault event
type each Event Grid function handles, checked against the subscriptions in infra/."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from app_world import ROOT, AppWorld, close_app, example_values, infra_routes
from pycep import BicepParser

from cmk.events import KeyVaultEventType
from cmk.sandbox.command.vault_events import SUBSCRIPTIONS
from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.funchost.index import FunctionIndexError, IndexedFunction
from cmk.sandbox.world import KeyEvent, KeyEventType
from cmk.settings import Settings

EVENT_GRID = ("on_key_new_version", "on_key_near_expiry", "on_key_expired")
QUEUE = {
    "rotate_account": "%CMK_JOB_QUEUE%",
    "on_poison": "%CMK_JOB_QUEUE%-poison",
    "run_operation": "%CMK_JOB_QUEUE%-ops",
}
HTTP = {
    "http_status": ("GET", "status"),
    "http_plan": ("GET", "plan"),
    "http_sweep": ("POST", "sweep"),
    "http_rotate": ("POST", "rotate"),
    "http_operation": ("GET", "operations/{operation_id}"),
}
# The event type each function is written for (its docstring and its call to entrypoints).
HANDLES = {
    "on_key_new_version": KeyVaultEventType.NEW_VERSION,
    "on_key_near_expiry": KeyVaultEventType.NEAR_EXPIRY,
    "on_key_expired": KeyVaultEventType.EXPIRED,
}


@pytest.fixture(scope="module")
def functions() -> dict[str, IndexedFunction]:
    """The repository's app indexed with local.settings.json.example's Values."""
    return FunctionsHost(ROOT, settings=example_values(), poll_queues=False).functions


class TestIndexedBindings:
    """What the worker sends the host for each function of function_app.py."""

    def test_twelve_functions_with_their_trigger_types(
        self, functions: dict[str, IndexedFunction]
    ) -> None:
        """Exactly the twelve functions of the design, each with the right trigger type."""
        expected = {
            **dict.fromkeys(EVENT_GRID, "eventGridTrigger"),
            **dict.fromkeys(QUEUE, "queueTrigger"),
            "sweep": "timerTrigger",
            **dict.fromkeys(HTTP, "httpTrigger"),
        }
        assert {name: f.trigger_type for name, f in functions.items()} == expected

    def test_every_function_is_async_without_retry_policy(
        self, functions: dict[str, IndexedFunction]
    ) -> None:
        """All functions are coroutines, and none declares @app.retry (host.json owns retries)."""
        assert all(f.is_async for f in functions.values())
        assert all(f.retry is None for f in functions.values())

    @pytest.mark.parametrize("name", EVENT_GRID)
    def test_event_grid_binding(self, functions: dict[str, IndexedFunction], name: str) -> None:
        """An Event Grid trigger is one IN binding named after the parameter, nothing else."""
        assert functions[name].bindings == (
            {"direction": "IN", "type": "eventGridTrigger", "name": "event"},
        )

    @pytest.mark.parametrize("name", sorted(QUEUE))
    def test_queue_binding_raw(self, functions: dict[str, IndexedFunction], name: str) -> None:
        """The queue name stays a %CMK_JOB_QUEUE% reference; the connection is a setting name."""
        assert functions[name].bindings == (
            {
                "direction": "IN",
                "type": "queueTrigger",
                "name": "msg",
                "queueName": QUEUE[name],
                "connection": "AzureWebJobsStorage",
            },
        )

    def test_queue_names_resolve_from_the_setting(
        self, functions: dict[str, IndexedFunction]
    ) -> None:
        """The worker and the poison trigger resolve to the job queue and its -poison queue,
        the operations worker to the -ops queue the app's settings name."""
        assert functions["rotate_account"].trigger["queueName"] == "cmk-rotation-jobs"
        assert functions["on_poison"].trigger["queueName"] == "cmk-rotation-jobs-poison"
        operations = Settings.from_environ(example_values()).operation_queue
        assert functions["run_operation"].trigger["queueName"] == operations
        for name in QUEUE:
            assert functions[name].settings == {"CMK_JOB_QUEUE": "cmk-rotation-jobs"}
            assert functions[name].trigger["connection"] == "AzureWebJobsStorage"

    def test_timer_binding(self, functions: dict[str, IndexedFunction]) -> None:
        """The sweep's schedule is the CMK_SWEEP_SCHEDULE setting, and it does not run on start."""
        sweep = functions["sweep"]
        assert sweep.bindings == (
            {
                "direction": "IN",
                "type": "timerTrigger",
                "name": "timer",
                "schedule": "%CMK_SWEEP_SCHEDULE%",
                "runOnStartup": False,
            },
        )
        assert sweep.trigger["schedule"] == "0 0 * * * *"
        assert sweep.settings == {"CMK_SWEEP_SCHEDULE": "0 0 * * * *"}

    @pytest.mark.parametrize("name", sorted(HTTP))
    def test_http_binding(self, functions: dict[str, IndexedFunction], name: str) -> None:
        """Each endpoint needs a function key, takes one method on its route, returns $return."""
        method, route = HTTP[name]
        assert functions[name].bindings == (
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": [method],
                "authLevel": "FUNCTION",
                "route": route,
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        )

    @pytest.mark.parametrize("setting", ["CMK_JOB_QUEUE", "CMK_SWEEP_SCHEDULE"])
    def test_unset_setting_refuses_to_index(self, setting: str) -> None:
        """Without the queue or schedule setting the host refuses the app, naming the setting."""
        values = {**example_values(), setting: ""}
        with pytest.raises(FunctionIndexError, match=f"%{setting}%"):
            FunctionsHost(ROOT, settings=values, poll_queues=False).index()


class TestEventTypes:
    """Which Key Vault event reaches which function: infra/ routes, the app agrees."""

    def test_event_grid_functions_are_the_infra_destinations(
        self, functions: dict[str, IndexedFunction]
    ) -> None:
        """The Event Grid functions are exactly the functions infra/ subscribes to the vaults."""
        in_app = {n for n, f in functions.items() if f.trigger_type == "eventGridTrigger"}
        assert set(infra_routes()) == in_app

    def test_infra_routes_each_event_type_to_its_function(self) -> None:
        """Each subscription filters to the one event type its function is written for."""
        routes = infra_routes()
        assert routes == {name: (event_type.value,) for name, event_type in HANDLES.items()}

    def test_the_local_rehearsal_wires_as_infra(self) -> None:
        """`cmk demo` and `cmk sandbox up --app` subscribe the app as infra/ does: the same
        subscription names (infra/ adds the environment's suffix, so two environments on
        one vault keep their own), each to the same function and event type."""
        parsed = BicepParser().parse(file_path=ROOT / "infra/app/vault-event-subscriptions.bicep")
        names = {
            str(resource["config"]["name"])
            for resource in parsed["resources"].values()
            if resource["type"] == "Microsoft.EventGrid/systemTopics/eventSubscriptions"
        }
        assert {f"{name}-${{nameSuffix}}" for name in SUBSCRIPTIONS} == names
        assert {
            function: (event_type.value,) for event_type, function in SUBSCRIPTIONS.values()
        } == (infra_routes())

    @pytest.mark.parametrize("name", EVENT_GRID)
    async def test_function_handles_its_own_event_type(
        self,
        sandbox: Sandbox,
        azurite: str,
        caplog: pytest.LogCaptureFixture,
        name: str,
    ) -> None:
        """A function is quiet on its own event type and flags any other type as misrouted."""
        settings = AppWorld(sandbox, azurite).settings
        own = HANDLES[name]
        other = next(t for t in KeyVaultEventType if t is not own)
        caplog.set_level(logging.INFO, logger="cmk.entrypoints")
        async with FunctionsHost(ROOT, settings=settings, poll_queues=False) as host:
            try:
                await host.deliver_event_grid(name, _foreign_event(own))
                assert not _misrouted(caplog)
                await host.deliver_event_grid(name, _foreign_event(other))
            finally:
                await close_app(host)
        [warning] = _misrouted(caplog)
        assert f"of type {other.value} arrived at the {own.value} function" in warning


def _misrouted(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "arrived at the" in r.getMessage()]


def _foreign_event(event_type: KeyVaultEventType) -> dict[str, Any]:
    """A well-formed Key Vault event for a vault outside the allow-list (so nothing is done)."""
    event = KeyEvent(
        event_type=KeyEventType(event_type.value),
        vault="kvelsewhere",
        vault_resource_id=(
            "/subscriptions/99999999-9999-4999-8999-999999999999/resourceGroups/rg"
            "/providers/Microsoft.KeyVault/vaults/kvelsewhere"
        ),
        vault_host="kvelsewhere.vault.azure.net",
        key_name="cmk",
        version="0" * 32,
        not_before=None,
        expires=None,
        time=datetime.now(UTC),
    )
    return shape_event(event, "EventGridSchema")
