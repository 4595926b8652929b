"""A shell whose env file names a sandbox that has stopped: the CLI says the sandbox is
gone instead of relaying a connection error (:mod:`cmk.commands.unreachable`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from cmk.commands.output import EXIT_USAGE
from cmk.commands.unreachable import sandbox_gone
from cmk.errors import ConfigurationError, ServiceUnavailable

GONE = ServiceUnavailable("Cannot connect to host management.azure.com:443")


@contextmanager
def _listening() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield int(server.getsockname()[1])


def _closed_port() -> int:
    with _listening() as port:
        return port


def _sandbox_env(proxy_port: int, identity_port: int) -> dict[str, str]:
    return {
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "IDENTITY_ENDPOINT": f"http://127.0.0.1:{identity_port}/msi/token",
    }


class TestSandboxGone:
    def test_nothing_answering_is_reported_as_the_sandbox_gone(self) -> None:
        """Proxy and identity endpoint refuse: exit 2, naming the address and `up`."""
        proxy = _closed_port()
        failure = sandbox_gone(GONE, _sandbox_env(proxy, _closed_port()))
        assert failure is not None
        assert failure.code == EXIT_USAGE
        assert failure.message == (
            f"no sandbox answers at 127.0.0.1:{proxy} — is `cmk sandbox up` still running?"
        )
        assert "cmk sandbox up --env-file" in failure.fix

    def test_a_sandbox_that_answers_keeps_the_original_error(self) -> None:
        """The proxy accepts connections: the error is something else, left to explain()."""
        with _listening() as proxy:
            assert sandbox_gone(GONE, _sandbox_env(proxy, _closed_port())) is None

    def test_a_proxy_that_is_not_on_loopback_is_not_a_sandbox(self) -> None:
        """A corporate proxy (not loopback) is never taken for a sandbox."""
        env = {**_sandbox_env(_closed_port(), _closed_port()), "HTTPS_PROXY": "http://10.0.0.1:1"}
        assert sandbox_gone(GONE, env) is None

    def test_no_identity_endpoint_is_not_a_sandbox(self) -> None:
        """A loopback proxy alone (cntlm, a debugging proxy) does not make a sandbox."""
        assert sandbox_gone(GONE, {"HTTPS_PROXY": f"http://127.0.0.1:{_closed_port()}"}) is None

    def test_configuration_errors_say_what_to_fix_themselves(self) -> None:
        """A missing setting is reported as such even when the sandbox is gone."""
        env = _sandbox_env(_closed_port(), _closed_port())
        assert sandbox_gone(ConfigurationError("CMK_SUBSCRIPTIONS is empty"), env) is None
