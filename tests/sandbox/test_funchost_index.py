"""The local Functions host's indexing, host.json reading, NCRONTAB evaluation, HTTP route
templates and keys: no I/O beyond importing the sample app."""

from __future__ import annotations

import json
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmk.sandbox.funchost.config import HostConfig, HostConfigError, QueueOptions, parse_timespan
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.funchost.http import HostKeys, aiohttp_paths
from cmk.sandbox.funchost.index import FunctionIndexError
from cmk.sandbox.funchost.schedule import Schedule, ScheduleError

SAMPLE_APP = Path(__file__).parent / "sample_app"
SETTINGS = {"SAMPLE_JOB_QUEUE": "sample-jobs", "SAMPLE_SCHEDULE": "0 */5 * * * *"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def _app(tmp_path: Path, source: str, host_json: str = '{"version": "2.0"}') -> Path:
    (tmp_path / "function_app.py").write_text(textwrap.dedent(source))
    (tmp_path / "host.json").write_text(host_json)
    return tmp_path


class TestIndexing:
    def test_indexes_every_function_of_the_sample_app(self):
        """All seven sample functions are found with their trigger types."""
        host = FunctionsHost(SAMPLE_APP, settings=SETTINGS)
        assert {name: f.trigger_type for name, f in host.functions.items()} == {
            "on_key_event": "eventGridTrigger",
            "on_job": "queueTrigger",
            "on_job_poison": "queueTrigger",
            "tick": "timerTrigger",
            "status": "httpTrigger",
            "ping": "httpTrigger",
            "reset_item": "httpTrigger",
        }

    def test_bindings_are_what_the_host_receives(self):
        """Raw bindings keep %SETTING% references and the worker's enum spellings."""
        functions = FunctionsHost(SAMPLE_APP, settings=SETTINGS).functions
        assert functions["on_key_event"].bindings == (
            {"direction": "IN", "type": "eventGridTrigger", "name": "event"},
        )
        assert functions["on_job"].bindings == (
            {
                "direction": "IN",
                "type": "queueTrigger",
                "name": "msg",
                "queueName": "%SAMPLE_JOB_QUEUE%",
                "connection": "AzureWebJobsStorage",
            },
        )
        assert functions["tick"].bindings == (
            {
                "direction": "IN",
                "type": "timerTrigger",
                "name": "timer",
                "schedule": "%SAMPLE_SCHEDULE%",
                "runOnStartup": False,
            },
        )
        assert functions["status"].bindings == (
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "status",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        )
        assert functions["ping"].trigger["authLevel"] == "ANONYMOUS"
        assert "methods" not in functions["ping"].trigger
        assert functions["reset_item"].trigger["authLevel"] == "ADMIN"
        assert functions["reset_item"].trigger["route"] == "items/{item_id}"

    def test_setting_references_are_resolved(self):
        """queueName and schedule resolve from the settings; the names used are recorded."""
        functions = FunctionsHost(SAMPLE_APP, settings=SETTINGS).functions
        assert functions["on_job"].trigger["queueName"] == "sample-jobs"
        assert functions["on_job_poison"].trigger["queueName"] == "sample-jobs-poison"
        assert dict(functions["on_job"].settings) == {"SAMPLE_JOB_QUEUE": "sample-jobs"}
        assert functions["tick"].trigger["schedule"] == "0 */5 * * * *"
        assert functions["on_job_poison"].trigger["connection"] == ""

    def test_retry_policy_is_indexed(self):
        """The timer's @app.retry policy is part of the indexed model."""
        retry = FunctionsHost(SAMPLE_APP, settings=SETTINGS).functions["tick"].retry
        assert retry is not None
        assert retry["strategy"] == "fixed_delay" and retry["max_retry_count"] == "1"

    def test_missing_setting_fails_clearly(self, monkeypatch: pytest.MonkeyPatch):
        """An unset %SETTING% fails indexing naming the function and the setting."""
        monkeypatch.delenv("SAMPLE_SCHEDULE", raising=False)
        host = FunctionsHost(SAMPLE_APP, settings={"SAMPLE_JOB_QUEUE": "q1q"})
        with pytest.raises(FunctionIndexError, match=r"'tick'.*%SAMPLE_SCHEDULE%.*not set"):
            host.index()

    def test_invalid_queue_name_is_refused(self):
        """A queueName that Azure Storage would reject fails indexing."""
        host = FunctionsHost(SAMPLE_APP, settings={**SETTINGS, "SAMPLE_JOB_QUEUE": "Bad_Queue"})
        with pytest.raises(FunctionIndexError, match="not a valid queue name"):
            host.index()

    def test_invalid_schedule_is_refused(self):
        """A five-field cron expression fails indexing."""
        host = FunctionsHost(SAMPLE_APP, settings={**SETTINGS, "SAMPLE_SCHEDULE": "*/5 * * * *"})
        with pytest.raises(FunctionIndexError, match="six fields"):
            host.index()

    def test_settings_are_in_the_environment_only_while_importing(self):
        """Explicit settings reach os.environ during import and are restored afterwards."""
        assert "SAMPLE_JOB_QUEUE" not in os.environ
        FunctionsHost(SAMPLE_APP, settings=SETTINGS).index()
        assert "SAMPLE_JOB_QUEUE" not in os.environ

    def test_each_host_imports_its_own_module(self):
        """Two hosts of one app do not share module state."""
        first = FunctionsHost(SAMPLE_APP, settings=SETTINGS)
        second = FunctionsHost(SAMPLE_APP, settings=SETTINGS)
        assert first.module is not second.module
        assert first.module.RECEIVED is not second.module.RECEIVED

    def test_two_function_apps_are_refused(self, tmp_path: Path):
        """Like the worker, exactly one top-level FunctionApp is accepted."""
        app_dir = _app(
            tmp_path,
            """
            import azure.functions as func
            app = func.FunctionApp()
            other = func.FunctionApp()
            """,
        )
        with pytest.raises(FunctionIndexError, match="more than one"):
            FunctionsHost(app_dir).index()

    def test_no_function_app_is_refused(self, tmp_path: Path):
        """A module without a FunctionApp cannot be indexed."""
        app_dir = _app(tmp_path, "x = 1\n")
        with pytest.raises(FunctionIndexError, match="no top-level FunctionApp"):
            FunctionsHost(app_dir).index()

    def test_import_error_is_reported(self, tmp_path: Path):
        """An exception while importing the app is reported with its file."""
        app_dir = _app(tmp_path, "raise RuntimeError('boom')\n")
        with pytest.raises(FunctionIndexError, match="boom"):
            FunctionsHost(app_dir).index()

    def test_unsupported_output_binding_is_refused(self, tmp_path: Path):
        """An output binding the local host cannot serve fails at indexing, not at run."""
        app_dir = _app(
            tmp_path,
            """
            import azure.functions as func
            app = func.FunctionApp()

            @app.queue_trigger(arg_name="msg", queue_name="in-q", connection="")
            @app.queue_output(arg_name="out", queue_name="out-q", connection="")
            def relay(msg: func.QueueMessage, out: func.Out[str]) -> None:
                out.set(msg.get_body().decode())
            """,
        )
        with pytest.raises(FunctionIndexError, match="not supported by the local host"):
            FunctionsHost(app_dir).index()

    def test_mismatched_annotation_is_refused(self, tmp_path: Path):
        """A trigger parameter annotated with another binding's type fails like the worker."""
        app_dir = _app(
            tmp_path,
            """
            import azure.functions as func
            app = func.FunctionApp()

            @app.queue_trigger(arg_name="msg", queue_name="in-q", connection="")
            def wrong(msg: func.HttpRequest) -> None:
                pass
            """,
        )
        with pytest.raises(FunctionIndexError, match="does not match its Python annotation"):
            FunctionsHost(app_dir).index()

    def test_repository_app_is_indexable(self):
        """The repository's own function_app.py indexes with the documented settings."""
        example = REPO_ROOT / "local.settings.json.example"
        values = json.loads(example.read_text())["Values"]
        host = FunctionsHost(REPO_ROOT, settings=values)
        for function in host.functions.values():
            assert function.trigger_type in {
                "eventGridTrigger",
                "queueTrigger",
                "timerTrigger",
                "httpTrigger",
            }


class TestHostConfig:
    def test_sample_host_json(self):
        """The sample app's host.json is read with its queue options and timeout."""
        config = HostConfig.load(SAMPLE_APP)
        assert config.queues == QueueOptions(
            batch_size=4,
            new_batch_threshold=2,
            max_dequeue_count=3,
            visibility_timeout=timedelta(0),
            max_polling_interval=timedelta(milliseconds=200),
            message_encoding="base64",
        )
        assert config.function_timeout == timedelta(seconds=5)
        assert config.route_prefix == "api"

    def test_repository_host_json(self):
        """The repository's host.json has the documented workload choices."""
        config = HostConfig.load(REPO_ROOT)
        assert config.queues == QueueOptions(
            batch_size=16,
            new_batch_threshold=8,
            max_dequeue_count=5,
            visibility_timeout=timedelta(seconds=30),
            max_polling_interval=timedelta(seconds=2),
            message_encoding="base64",
        )
        assert config.queues.max_concurrency == 24
        assert config.function_timeout == timedelta(minutes=10)
        assert config.raw["extensionBundle"]["version"] == "[4.*, 5.0.0)"

    def test_app_setting_overrides(self):
        """AzureFunctionsJobHost__* app settings override host.json, keys case-insensitive."""
        config = HostConfig.load(
            REPO_ROOT,
            {
                "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
                "AzureFunctionsJobHost__Extensions__Queues__batchSize": "4",
                "AzureFunctionsJobHost__functionTimeout": "00:01:00",
            },
        )
        assert config.queues.visibility_timeout == timedelta(0)
        assert config.queues.batch_size == 4 and config.queues.max_dequeue_count == 5
        assert config.function_timeout == timedelta(minutes=1)

    def test_host_reads_overrides_from_its_settings(self):
        """A host built with override settings uses them (the repository app, short retries)."""
        example = json.loads((REPO_ROOT / "local.settings.json.example").read_text())["Values"]
        settings = {**example, "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2"}
        assert FunctionsHost(REPO_ROOT, settings=settings).config.queues.max_dequeue_count == 2

    def test_defaults(self):
        """An empty host.json gets the host's defaults (5 dequeues, 1 min polling, base64)."""
        config = HostConfig.from_json({"version": "2.0"})
        assert config.queues.max_dequeue_count == 5
        assert config.queues.batch_size == 16 and config.queues.new_batch_threshold == 8
        assert config.queues.max_polling_interval == timedelta(minutes=1)
        assert config.function_timeout == timedelta(minutes=30)

    def test_unlimited_timeout(self):
        """functionTimeout -1 means no limit."""
        assert (
            HostConfig.from_json({"version": "2.0", "functionTimeout": "-1"}).function_timeout
            is None
        )

    @pytest.mark.parametrize(
        "queues",
        [
            {"batchSize": 33},
            {"batchSize": 0},
            {"maxDequeueCount": "5"},
            {"maxPollingInterval": 2000},
            {"maxPollingInterval": "00:00:00.05"},
            {"messageEncoding": "utf8"},
            {"visibilityTimeout": "30s"},
        ],
    )
    def test_invalid_queue_options(self, queues: dict[str, object]):
        """Values the host would reject are refused with the setting's path."""
        with pytest.raises(HostConfigError, match=r"extensions\.queues"):
            HostConfig.from_json({"version": "2.0", "extensions": {"queues": queues}})

    def test_version_is_required(self):
        """host.json without version 2.0 is refused."""
        with pytest.raises(HostConfigError, match="version"):
            HostConfig.from_json({})

    def test_comments_are_refused(self, tmp_path: Path):
        """host.json is strict JSON: a comment is an error."""
        (tmp_path / "host.json").write_text('{"version": "2.0" // no\n}')
        with pytest.raises(HostConfigError, match="strict JSON"):
            HostConfig.load(tmp_path)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("00:00:30", timedelta(seconds=30)),
            ("00:10:00", timedelta(minutes=10)),
            ("1.02:00:00", timedelta(days=1, hours=2)),
            ("00:00:00.250", timedelta(milliseconds=250)),
        ],
    )
    def test_timespans(self, text: str, expected: timedelta):
        """.NET TimeSpan strings parse to the same duration."""
        assert parse_timespan(text, "x") == expected


class TestSchedule:
    def test_every_five_seconds(self):
        """*/5 in the seconds field fires at the next multiple of five."""
        after = datetime(2025, 1, 1, 10, 0, 3, tzinfo=UTC)
        assert Schedule.parse("*/5 * * * * *").next_after(after) == after.replace(second=5)

    def test_hourly_default_of_the_sweep(self):
        """'0 0 * * * *' fires at the top of the next hour."""
        after = datetime(2025, 1, 1, 10, 0, 0, tzinfo=UTC)
        assert Schedule.parse("0 0 * * * *").next_after(after) == after.replace(hour=11)

    def test_daily_at_time(self):
        """'0 30 2 * * *' fires at 02:30 the next day once today's has passed."""
        after = datetime(2025, 1, 1, 3, 0, tzinfo=UTC)
        assert Schedule.parse("0 30 2 * * *").next_after(after) == datetime(
            2025, 1, 2, 2, 30, tzinfo=UTC
        )

    def test_lists_ranges_and_day_of_week(self):
        """Lists, ranges and day-of-week (0 = Sunday) combine."""
        schedule = Schedule.parse("0 0 9,17 * * 1-5")
        friday_evening = datetime(2025, 1, 3, 17, 0, tzinfo=UTC)  # a Friday
        assert schedule.next_after(friday_evening) == datetime(2025, 1, 6, 9, 0, tzinfo=UTC)

    def test_day_and_weekday_are_both_required(self):
        """As in NCrontab, a restricted day and weekday must both match (AND)."""
        schedule = Schedule.parse("0 0 0 13 * 5")  # Friday the 13th
        assert schedule.next_after(datetime(2025, 1, 1, tzinfo=UTC)) == datetime(
            2025, 6, 13, tzinfo=UTC
        )

    def test_leap_day(self):
        """29 February is found years ahead."""
        assert Schedule.parse("0 0 0 29 2 *").next_after(
            datetime(2025, 3, 1, tzinfo=UTC)
        ) == datetime(2028, 2, 29, tzinfo=UTC)

    @pytest.mark.parametrize(
        "expression",
        ["* * * * *", "60 * * * * *", "* * * * JAN *", "*/0 * * * * *", "5-1 * * * * *"],
    )
    def test_unsupported_expressions(self, expression: str):
        """Five fields, out-of-range numbers, names, zero steps and reversed ranges fail."""
        with pytest.raises(ScheduleError):
            Schedule.parse(expression)


class TestRoutes:
    @pytest.mark.parametrize(
        ("route", "paths"),
        [
            ("status", ["/api/status"]),
            ("items/{item_id}", ["/api/items/{item_id}"]),
            ("items/{id:int}", ["/api/items/{id}"]),
            ("items/{id?}", ["/api/items/{id}", "/api/items"]),
            ("files/{*rest}", ["/api/files/{rest:.*}"]),
        ],
    )
    def test_route_templates(self, route: str, paths: list[str]):
        """Functions route templates become aiohttp paths under the prefix."""
        assert aiohttp_paths("api", route) == paths

    def test_empty_prefix(self):
        """routePrefix '' serves routes at the root."""
        assert aiohttp_paths("", "status") == ["/status"]


class TestHostKeys:
    def test_levels(self):
        """anonymous opens; function takes its key, the host key or master; admin master only."""
        keys = HostKeys.generate(["a", "b"])
        assert keys.allows("anonymous", "a", None)
        assert keys.allows("function", "a", keys.functions["a"])
        assert not keys.allows("function", "a", keys.functions["b"])
        assert keys.allows("function", "a", keys.host)
        assert keys.allows("FUNCTION", "a", keys.master)
        assert not keys.allows("function", "a", None)
        assert not keys.allows("admin", "a", keys.host)
        assert keys.allows("admin", "a", keys.master)

    def test_keys_are_fresh_per_host(self):
        """Every host generates its own keys."""
        assert HostKeys.generate([]).master != HostKeys.generate([]).master
