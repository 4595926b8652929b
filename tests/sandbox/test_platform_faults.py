"""Fault rules and request counters, observed through real HTTP clients."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from aiohttp import web

from cmk.sandbox.core import Sandbox
from cmk.sandbox.platform.context import ServiceContext
from cmk.sandbox.platform.faults import Counters, FaultRule, Faults, RequestRecord

HOST = "faulty.vault.azure.net"
URL = f"https://{HOST}/items/a"


def _items_app(ctx: ServiceContext) -> web.Application:
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"]})

    app = web.Application()
    app.router.add_route("*", "/items/{name}", item)
    return app


@pytest.fixture
def service(sandbox: Sandbox) -> Iterator[Sandbox]:
    sandbox.add_service("items", [HOST], _items_app)
    yield sandbox
    sandbox.remove_service("items")


def _session() -> requests.Session:
    """A session without urllib3's own retries, so every fault is seen once."""
    session = requests.Session()
    session.mount("https://", requests.adapters.HTTPAdapter(max_retries=0))
    return session


class TestFaultRule:
    def test_rule_needs_an_effect(self):
        """A rule without status, drop or latency is refused."""
        with pytest.raises(ValueError, match="status"):
            FaultRule(host="*")

    def test_match_by_host_glob_path_regex_and_method(self):
        """Host glob, path regex (searched) and method must all match."""
        rule = FaultRule(host="*.vault.azure.net", path=r"/keys/k\d/", method="get", status=500)
        assert rule.matches("a.vault.azure.net", "/keys/k1/abc", "GET")
        assert not rule.matches("management.azure.com", "/keys/k1/abc", "GET")
        assert not rule.matches("a.vault.azure.net", "/keys/kx/", "GET")
        assert not rule.matches("a.vault.azure.net", "/keys/k1/", "POST")

    def test_count_limits_firings(self):
        """A rule with count=2 fires twice, then never."""
        faults = Faults()
        rule = faults.add(status=503, count=2)
        fired = [bool(faults.fire("h", "/", "GET")) for _ in range(4)]
        assert fired == [True, True, False, False]
        assert rule.hits == 2

    def test_probability_is_repeatable_with_a_seed(self):
        """A 30 % rule fires about 30 % of the time, identically for the same seed."""

        def run() -> list[bool]:
            faults = Faults(seed=7)
            faults.add(status=500, probability=0.3)
            return [bool(faults.fire("h", "/", "GET")) for _ in range(1000)]

        first = run()
        assert first == run()
        assert 230 < sum(first) < 370

    def test_a_rules_draws_do_not_depend_on_other_traffic(self):
        """With a seed, whether a rule fires on its k-th matching request is the same
        however many requests another probabilistic rule saw in between."""

        def vault_faults(other_requests: int) -> list[bool]:
            faults = Faults(seed=11)
            faults.add(host="*.vault.azure.net", status=500, probability=0.5)
            faults.add(host="management.azure.com", status=429, probability=0.5)
            fired = []
            for _ in range(200):
                for _ in range(other_requests):
                    faults.fire("management.azure.com", "/", "GET")
                fired.append(bool(faults.fire("kv.vault.azure.net", "/keys/k", "GET")))
            return fired

        assert vault_faults(0) == vault_faults(3)

    def test_reseeding_rewinds_the_rules(self):
        """seed() makes the present rules draw again from the start of the seed."""
        faults = Faults(seed=5)
        faults.add(status=500, probability=0.5)
        first = [bool(faults.fire("h", "/", "GET")) for _ in range(100)]
        faults.seed(5)
        assert [bool(faults.fire("h", "/", "GET")) for _ in range(100)] == first


class TestFaultsOverHttp:
    def test_status_with_retry_after(self, service: Sandbox):
        """A 429 rule answers 429 with Retry-After and Azure's error body, then recovers."""
        service.faults.add(host=HOST, method="GET", status=429, retry_after=2, count=1)
        with _session() as session:
            first = session.get(URL, timeout=10)
            second = session.get(URL, timeout=10)
        assert first.status_code == 429
        assert first.headers["Retry-After"] == "2"
        assert first.json()["error"]["code"] == "TooManyRequests"
        assert second.status_code == 200

    def test_status_without_retry_after(self, service: Sandbox):
        """A 503 rule without retry_after sends no Retry-After header."""
        service.faults.add(path="/items/", status=503, count=1)
        with _session() as session:
            response = session.get(URL, timeout=10)
        assert response.status_code == 503
        assert "Retry-After" not in response.headers

    def test_latency(self, service: Sandbox):
        """A latency rule delays the answer, which still succeeds."""
        service.faults.add(host=HOST, latency=0.3, count=1)
        started = time.monotonic()
        assert requests.get(URL, timeout=10).status_code == 200
        assert time.monotonic() - started >= 0.3

    def test_dropped_connection(self, service: Sandbox):
        """A drop rule closes the connection without an answer; the next request works."""
        service.faults.add(host=HOST, drop=True, count=1)
        with _session() as session, pytest.raises(requests.exceptions.ConnectionError):
            session.get(URL, timeout=10)
        assert requests.get(URL, timeout=10).status_code == 200
        dropped = service.counters.matching(host=HOST)[0]
        assert dropped.status == 0 and dropped.fault is not None

    def test_method_filter(self, service: Sandbox):
        """A PATCH-only rule leaves GET alone."""
        service.faults.add(method="PATCH", status=500)
        with _session() as session:
            assert session.get(URL, timeout=10).status_code == 200
            assert session.patch(URL, timeout=10).status_code == 500


class TestCounters:
    def test_counts_per_endpoint_route(self, service: Sandbox):
        """Requests to different names count under one route-shaped endpoint."""
        with _session() as session:
            for name in ("a", "b", "c"):
                session.get(f"https://{HOST}/items/{name}", timeout=10)
            session.post(f"https://{HOST}/items/a", timeout=10)
        snapshot = service.counters.snapshot()
        assert snapshot[f"GET {HOST} /items/{{name}}"] == 3
        assert snapshot[f"POST {HOST} /items/{{name}}"] == 1
        assert service.counters.count(host="*.azure.net", method="GET") == 3
        assert service.counters.by_status()[(f"GET {HOST} /items/{{name}}", 200)] == 3

    def test_log_is_bounded(self):
        """The request log keeps only the newest entries."""
        counters = Counters(log_size=3)
        for i in range(5):
            counters.record(RequestRecord(0.0, "GET", "h", f"/{i}", "", 200, 0.0, "GET h /x"))
        assert [r.path for r in counters.log] == ["/2", "/3", "/4"]
        assert counters["GET h /x"] == 5
