"""What a user types in a shell that sourced the env file of ``cmk sandbox up``, with the
Python SDKs and nothing of ours: run as ``python sdk_shell.py <command> ...``.

- ``rotate VAULT_URL KEY``: rotate the key (Key Vault ``POST /keys/{name}/rotate``) and
  print the new version;
- ``wait-bound VAULT_URL KEY VERSION CEILING``: read every account of CMK_SUBSCRIPTIONS
  through ARM until each one bound to the key is on VERSION and Succeeded; print
  ``{account id: version}`` as JSON and exit 0, or exit 1 with the last reading once
  CEILING seconds have passed (the ceiling only bounds a hang).
"""

from __future__ import annotations

import json
import os
import sys
import time

from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient

POLL_SECONDS = 0.5


def rotate(credential: DefaultAzureCredential, vault_url: str, key: str) -> int:
    with KeyClient(vault_url, credential) as client:
        print(client.rotate_key(key).properties.version)
    return 0


def _bound(credential: DefaultAzureCredential, vault_url: str, key: str) -> dict[str, str]:
    """``{account id: "version state"}`` for every account bound to ``vault_url``/``key``."""
    found: dict[str, str] = {}
    for subscription in os.environ["CMK_SUBSCRIPTIONS"].split(","):
        with CognitiveServicesManagementClient(credential, subscription) as client:
            for account in client.accounts.list():
                encryption = account.properties.encryption if account.properties else None
                vault = encryption.key_vault_properties if encryption else None
                if vault is None or (vault.key_vault_uri or "").rstrip("/") != vault_url:
                    continue
                if (vault.key_name or "").lower() == key.lower():
                    state = account.properties.provisioning_state
                    found[str(account.id)] = f"{vault.key_version} {state}"
    return found


def wait_bound(
    credential: DefaultAzureCredential, vault_url: str, key: str, version: str, ceiling: float
) -> int:
    deadline = time.monotonic() + ceiling
    while True:
        bound = _bound(credential, vault_url, key)
        if bound and all(v == f"{version} Succeeded" for v in bound.values()):
            print(json.dumps({k: v.split()[0] for k, v in bound.items()}))
            return 0
        if time.monotonic() > deadline:
            print(json.dumps(bound), file=sys.stderr)
            return 1
        time.sleep(POLL_SECONDS)


def main(argv: list[str]) -> int:
    command, vault_url, key, *rest = argv
    with DefaultAzureCredential() as credential:
        if command == "rotate":
            return rotate(credential, vault_url.rstrip("/"), key)
        version, ceiling = rest
        return wait_bound(credential, vault_url.rstrip("/"), key, version, float(ceiling))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
