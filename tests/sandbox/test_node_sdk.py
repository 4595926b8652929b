"""The Azure SDK for JavaScript, unmodified, against ``cmk sandbox up``: another language's
identity, proxy and TLS stack (``NODE_EXTRA_CA_CERTS``, ``HTTPS_PROXY``, App Service
managed identity through ``IDENTITY_ENDPOINT``).

``make node-sdk-check`` installs the latest ``@azure/identity``, ``@azure/keyvault-keys``
and ``@azure/arm-resources-subscriptions`` from npm into ``.node-azsdk`` and runs this
module with ``CMK_NODE_SDK`` naming that folder; without it every test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_sandbox import SandboxUp, sandbox_up  # noqa: F401 (the fixture)

SDK = os.environ.get("CMK_NODE_SDK", "")
pytestmark = pytest.mark.skipif(
    not SDK or not (Path(SDK) / "node_modules").is_dir() or shutil.which("node") is None,
    reason="set CMK_NODE_SDK to a folder with the Azure JS SDK (make node-sdk-check)",
)
NODE_CEILING_SECONDS = 120.0

SCRIPT = """
const { DefaultAzureCredential } = require("@azure/identity");
const { KeyClient } = require("@azure/keyvault-keys");
const { SubscriptionClient } = require("@azure/arm-resources-subscriptions");
(async () => {
  const credential = new DefaultAzureCredential();
  const subscriptions = [];
  for await (const s of new SubscriptionClient(credential).subscriptions.list()) {
    subscriptions.push(s.displayName);
  }
  const keys = new KeyClient("https://kv-cmk-weu.vault.azure.net", credential);
  const before = [];
  for await (const v of keys.listPropertiesOfKeyVersions("ai-cmk")) before.push(v.version);
  const rotated = await keys.rotateKey("ai-cmk");
  const latest = await keys.getKey("ai-cmk");
  const token = await credential.getToken("https://management.azure.com/.default");
  console.log(JSON.stringify({
    subscriptions: subscriptions.sort(),
    versionsBefore: before.length,
    rotated: rotated.id,
    latest: latest.id,
    tokenSegments: token.token.split(".").length,
  }));
})().catch((error) => { console.error(error); process.exit(1); });
"""


def test_js_sdk_lists_subscriptions_and_rotates_a_key(sandbox_up: SandboxUp):  # noqa: F811
    """DefaultAzureCredential, SubscriptionClient and KeyClient work with only the env file."""
    script = sandbox_up.root / "check.cjs"
    script.write_text(SCRIPT)
    result = subprocess.run(
        ["node", str(script)],
        env={**sandbox_up.env, "NODE_PATH": str(Path(SDK) / "node_modules")},
        capture_output=True,
        text=True,
        timeout=NODE_CEILING_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["subscriptions"] == ["ai-dev", "ai-prod", "platform"]
    assert answer["versionsBefore"] >= 1
    assert answer["latest"] == answer["rotated"]
    assert answer["latest"].startswith("https://kv-cmk-weu.vault.azure.net/keys/ai-cmk/")
    assert answer["tokenSegments"] == 3
