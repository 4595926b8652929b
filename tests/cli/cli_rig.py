"""Shared parts of the CLI tests: the seeded demo world, a captured ``cmk`` run, and the
JSON schemas documented in docs/cli.md. (A module of its own: test modules import it,
which they must not do with a conftest.)"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema

from cmk.sandbox.core import Sandbox
from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.world import AccountState, VaultState

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
_SCHEMA_BLOCK = re.compile(r"<!-- schema: (\S+) -->\s*```json\n(.*?)```", re.DOTALL)


def documented_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schemas of docs/cli.md by name, each with the shared ``$defs``."""
    blocks = {name: json.loads(body) for name, body in _SCHEMA_BLOCK.findall(CLI_DOC.read_text())}
    shared = blocks.pop("$defs")["$defs"]
    return {name: {**schema, "$defs": shared} for name, schema in blocks.items()}


SCHEMAS = documented_schemas()


@dataclass
class Run:
    """One ``cmk`` run: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def valid(self, schema: str) -> Any:
        """The JSON document, validated against the documented schema ``schema``."""
        document = self.json
        jsonschema.validate(document, SCHEMAS[schema])
        return document


@dataclass
class World:
    """The seeded demo world and helpers to change it the way Azure would."""

    sandbox: Sandbox

    def vault(self, name: str) -> VaultState:
        return next(v for v in self.sandbox.world.vaults.values() if v.name == name)

    def key_id(self, vault: str, key: str) -> str:
        return f"{self.vault(vault).url}/keys/{key}"

    def accounts_on(self, vault: str, key: str) -> list[AccountState]:
        url = self.vault(vault).url
        return sorted(
            (
                a
                for a in self.sandbox.world.accounts.values()
                if a.encryption.key_name == key
                and (a.encryption.key_vault_uri or "").rstrip("/") == url
            ),
            key=lambda a: a.name,
        )

    def new_version(self, vault: str, key: str, *, kty: str = "RSA") -> str:
        """A new version whose event nobody receives (the accounts become stale)."""
        world = self.sandbox.world
        with world.lock:
            expires = world.clock.now() + timedelta(days=365)
            created = add_key_version(
                world, self.vault(vault), key, kty=kty, size=2048, expires=expires, emit=False
            )
        return created.version
