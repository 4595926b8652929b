"""EnvironmentProxies: the environment's proxies read once, by aiohttp's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmk.adapters.http_transport import EnvironmentProxies, transport_options

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No proxy variables, and a NETRC that names a file that does not exist."""
    for name in (*PROXY_VARIABLES, "ALL_PROXY", "all_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


class TestEnvironmentProxies:
    def test_no_proxy_variables_connect_directly(self, environment: pytest.MonkeyPatch) -> None:
        proxies = EnvironmentProxies.resolve()
        assert proxies is not None
        assert proxies.for_url("https://management.azure.com/subscriptions") is None

    def test_https_proxy_is_used_and_no_proxy_bypasses_it(
        self, environment: pytest.MonkeyPatch
    ) -> None:
        environment.setenv("HTTPS_PROXY", "http://127.0.0.1:8443")
        environment.setenv("NO_PROXY", "127.0.0.1,localhost,.internal.example")
        proxies = EnvironmentProxies.resolve()
        assert proxies is not None
        assert proxies.for_url("https://kv.vault.azure.net/keys/cmk") == "http://127.0.0.1:8443"
        assert proxies.for_url("https://127.0.0.1:10002/devstoreaccount1") is None
        assert proxies.for_url("https://a.internal.example/x") is None
        assert proxies.for_url("http://kv.vault.azure.net/") is None  # no HTTP_PROXY set

    def test_lowercase_variable_wins_as_in_urllib(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("HTTPS_PROXY", "http://upper:1")
        environment.setenv("https_proxy", "http://lower:2")
        proxies = EnvironmentProxies.resolve()
        assert proxies is not None
        assert proxies.for_url("https://management.azure.com/") == "http://lower:2"

    def test_https_scheme_proxies_are_ignored_as_aiohttp_does(
        self, environment: pytest.MonkeyPatch
    ) -> None:
        environment.setenv("HTTPS_PROXY", "https://tls-proxy:443")
        proxies = EnvironmentProxies.resolve()
        assert proxies is not None
        assert proxies.for_url("https://management.azure.com/") is None

    @pytest.mark.parametrize("url", ["http://user:secret@proxy:3128", "http://user@proxy:3128"])
    def test_proxy_credentials_leave_the_lookup_to_aiohttp(
        self, environment: pytest.MonkeyPatch, url: str
    ) -> None:
        environment.setenv("HTTPS_PROXY", url)
        assert EnvironmentProxies.resolve() is None
        assert transport_options() == {}

    def test_a_netrc_file_leaves_the_lookup_to_aiohttp(
        self, environment: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        netrc = tmp_path / "netrc"
        netrc.write_text("machine proxy login u password p\n")
        environment.setenv("NETRC", str(netrc))
        environment.setenv("HTTPS_PROXY", "http://proxy:3128")
        assert EnvironmentProxies.resolve() is None
        assert transport_options() == {}

    async def test_each_client_gets_a_transport_of_its_own(
        self, environment: pytest.MonkeyPatch
    ) -> None:
        first, second = transport_options()["transport"], transport_options()["transport"]
        assert first is not second
        await first.close()
        await second.close()
