"""The env of the sandbox makes clients outside Python trust it: curl and Node, unmodified."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cmk.sandbox.core import Sandbox, write_node_bundle

ARM_SUBSCRIPTIONS = "https://management.azure.com/subscriptions?api-version=2022-12-01"


def _client_env(sandbox: Sandbox) -> dict[str, str]:
    """Only what the env file sets, plus PATH/HOME: nothing inherited steers the client."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **sandbox.env()}


class TestClientEnv:
    def test_env_names_the_ca_for_curl_and_node(self, sandbox: Sandbox):
        """CURL_CA_BUNDLE and NODE_EXTRA_CA_CERTS name files holding the sandbox CA."""
        env = sandbox.env()
        assert Path(env["CURL_CA_BUNDLE"]).read_bytes() == sandbox.ca.pem
        assert Path(env["NODE_EXTRA_CA_CERTS"]).read_bytes().startswith(sandbox.ca.pem)
        assert env["NODE_USE_ENV_PROXY"] == "1"

    def test_node_bundle_keeps_a_bundle_the_machine_already_set(self, tmp_path: Path):
        """A NODE_EXTRA_CA_CERTS set before the sandbox is appended, not replaced."""
        inherited = tmp_path / "corporate.pem"
        inherited.write_bytes(b"-----BEGIN CERTIFICATE-----\ncorp\n-----END CERTIFICATE-----\n")
        bundle = write_node_bundle(b"SANDBOX\n", tmp_path / "node.pem", str(inherited))
        assert bundle.read_bytes() == b"SANDBOX\n\n" + inherited.read_bytes()
        alone = write_node_bundle(b"SANDBOX\n", tmp_path / "alone.pem", str(tmp_path / "gone"))
        assert alone.read_bytes() == b"SANDBOX\n"

    @pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
    def test_curl_reaches_arm_through_the_proxy(self, sandbox: Sandbox):
        """curl with only the env file's variables gets ARM's 401 challenge over TLS."""
        result = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", ARM_SUBSCRIPTIONS],
            env=_client_env(sandbox),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "401"

    @pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
    def test_node_trusts_the_sandbox_ca(self, sandbox: Sandbox):
        """Node's TLS accepts the sandbox's certificate for management.azure.com."""
        host, port = sandbox.proxy_url.removeprefix("http://").rsplit(":", 1)
        script = f"""
const http = require('http'); const tls = require('tls');
const req = http.request({{host: '{host}', port: {port}, method: 'CONNECT',
                          path: 'management.azure.com:443'}});
req.on('connect', (res, socket) => {{
  const s = tls.connect({{socket, servername: 'management.azure.com'}}, () => {{
    console.log(s.authorized ? 'trusted' : 'untrusted'); s.end(); process.exit(0); }});
  s.on('error', (e) => {{ console.log('error ' + e.code); process.exit(1); }});
}});
req.end();
"""
        result = subprocess.run(
            ["node", "-e", script],
            env=_client_env(sandbox),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.stdout.strip() == "trusted", result.stdout + result.stderr
