"""HTTP triggers on the local Functions host: routes, methods, auth levels and keys (401
like the real host), the library's request/response conversion, and the sync runner."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cmk.sandbox.funchost.host import FunctionsHost

SAMPLE_APP = Path(__file__).parent / "sample_app"
SETTINGS = {"SAMPLE_JOB_QUEUE": "http-jobs", "SAMPLE_SCHEDULE": "0 0 * * * *"}


def _host(**options: Any) -> FunctionsHost:
    settings = {**SETTINGS, **options.pop("settings", {})}
    return FunctionsHost(SAMPLE_APP, settings=settings, poll_queues=False, **options)


class TestHttpTrigger:
    async def test_function_level_without_key_is_refused(self):
        """No key, or a wrong one, gets 401 and the function does not run."""
        async with _host() as host, aiohttp.ClientSession() as http:
            async with http.get(host.url("status")) as response:
                assert response.status == 401
                assert await response.read() == b""
            async with http.get(host.url("status"), params={"code": "wrong"}) as response:
                assert response.status == 401
        assert host.invocations["status"] == 0

    async def test_function_key_in_query_or_header(self):
        """The host key opens a function-level route via ?code= or x-functions-key."""
        async with _host() as host, aiohttp.ClientSession() as http:
            params = {"code": host.function_key, "name": "kv1"}
            async with http.get(host.url("status"), params=params) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/json"
                assert await response.json() == {"ok": True, "name": "kv1"}
            headers = {"x-functions-key": host.keys.functions["status"]}
            async with http.get(host.url("status"), headers=headers) as response:
                assert response.status == 200
        assert host.invocations["status"] == 2

    async def test_anonymous_route_needs_no_key(self):
        """An anonymous function answers without a key; a str return becomes text/plain."""
        async with _host() as host, aiohttp.ClientSession() as http:
            async with http.get(host.url("ping")) as response:
                assert response.status == 200
                assert await response.text() == "pong"
                assert response.headers["Content-Type"].startswith("text/plain")
            async with http.delete(host.url("ping")) as response:
                assert response.status == 200  # no methods in the binding: any method

    async def test_methods_from_the_binding(self):
        """A GET-only function refuses POST."""
        async with (
            _host() as host,
            aiohttp.ClientSession() as http,
            http.post(host.url("status"), params={"code": host.function_key}) as response,
        ):
            assert response.status == 405

    async def test_admin_level_needs_the_master_key(self):
        """Admin functions refuse the host key and take the master key; route params bind."""
        async with _host() as host, aiohttp.ClientSession() as http:
            url = host.url("items/42")
            async with http.post(url, json={"x": 1}, params={"code": host.function_key}) as resp:
                assert resp.status == 401
            async with http.post(url, json={"x": 1}, params={"code": host.master_key}) as resp:
                assert resp.status == 202
        assert host.module.RECEIVED["reset_item"] == [{"item_id": "42", "body": {"x": 1}}]

    async def test_failing_function_answers_500(self, caplog: pytest.LogCaptureFixture):
        """An exception in the function is a bare 500, counted as a failure, and logged
        with the function's name and the error in the text (what `cmk sandbox up` shows)."""
        async with _host() as host, aiohttp.ClientSession() as http:
            host.module.FAIL["ping"] = 1
            async with http.get(host.url("ping")) as response:
                assert response.status == 500
        assert host.failures["ping"] == 1
        failed = [r.getMessage() for r in caplog.records if "invocation" in r.getMessage()]
        assert len(failed) == 1 and failed[0].startswith("function ping invocation ")
        assert failed[0].endswith(" failed: RuntimeError: ping failed on purpose")

    async def test_unknown_route_is_404(self):
        """A path no function serves is 404."""
        async with (
            _host() as host,
            aiohttp.ClientSession() as http,
            http.get(host.url("nope")) as response,
        ):
            assert response.status == 404

    def test_sync_context_manager_runs_on_its_own_loop(self):
        """`with FunctionsHost(...)` serves from a thread; run() submits coroutines to it."""
        with _host() as host:
            with urllib.request.urlopen(host.url("ping")) as response:
                assert response.read() == b"pong"
            host.run(host.fire_timer("tick"))
        assert host.invocations["tick"] == 1 and host.invocations["ping"] == 1
