"""Scenario files: schema validation with JSON paths, seeding, the built-in example world."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient

from cmk.sandbox.core import Sandbox
from cmk.sandbox.scenario import loader as scenario
from cmk.sandbox.scenario.loader import ScenarioError, build_world, load
from cmk.sandbox.world import Principal, VaultKind


def _small(**extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "subscriptions": [{"name": "s1"}],
        "identities": [{"name": "uai", "subscription": "s1"}],
        "vaults": [
            {
                "name": "kv1",
                "subscription": "s1",
                "location": "westeurope",
                "keys": [{"name": "k", "versions": [{"exp": "+400d"}, {"nbf": "-1d"}]}],
            }
        ],
        "accounts": [
            {
                "name": "a-{i}",
                "count": 3,
                "subscription": "s1",
                "location": "westeurope",
                "identity": {"userAssigned": ["uai"]},
                "encryption": {"vault": "kv1", "key": "k", "version": 0, "identity": "uai"},
            }
        ],
    }
    document.update(extra)
    return document


class TestValidation:
    def test_schema_is_valid_json_schema(self):
        """The shipped schema is itself a valid draft 2020-12 schema."""
        jsonschema.Draft202012Validator.check_schema(scenario.schema())

    def test_example_world_validates(self):
        """The built-in example world validates against the schema."""
        load(scenario.example_path())

    def test_structural_error_names_the_path(self):
        """A wrong value is reported with its JSON path."""
        document = _small()
        document["vaults"][0]["keys"][0]["kty"] = "DSA"
        with pytest.raises(ScenarioError) as caught:
            load(document)
        assert caught.value.problems == [
            "$.vaults[0].keys[0].kty: 'DSA' is not one of"
            " ['RSA', 'RSA-HSM', 'EC', 'EC-HSM', 'oct-HSM']"
        ]

    def test_reference_errors_name_the_path(self):
        """Unknown subscriptions, keys and identities are reported where they are used."""
        document = _small()
        document["accounts"][0]["encryption"]["key"] = "nope"
        document["vaults"][0]["subscription"] = "s9"
        with pytest.raises(ScenarioError) as caught:
            build_world(load(document))
        assert "$.vaults[0].subscription: unknown subscription 's9'; declared: ['s1']" in (
            caught.value.problems
        )
        assert any(p.startswith("$.accounts[0].encryption.vault") for p in caught.value.problems)

    def test_bad_file_is_reported(self, tmp_path):
        """A file that is not JSON is reported with line and column."""
        path = tmp_path / "bad.json"
        path.write_text("{\n  nope\n}")
        with pytest.raises(ScenarioError, match=r"\$: not JSON \(line 2"):
            load(path)

    def test_version_index_out_of_range(self):
        """A binding to a version index the key does not have is an error."""
        document = _small()
        document["accounts"][0]["encryption"]["version"] = 5
        with pytest.raises(ScenarioError, match=r"encryption.version: index 5 out of range"):
            build_world(load(document))


class TestSeeding:
    def test_world_objects(self):
        """Vaults, versions with relative times, accounts, identities and grants are built."""
        app = Principal.new("app", "t")
        seeded = build_world(load(_small()), tenant_id="t", app=app)
        world = seeded.world
        vault = world.vaults["kv1.vault.azure.net"]
        assert vault.kind is VaultKind.VAULT and vault.recovery_level == "Recoverable"
        versions = vault.keys["k"].versions
        assert len(versions) == 2 and versions[0].expires is not None
        assert versions[0].expires - world.clock.now() > timedelta(days=399)
        assert len(versions[0].modulus) == 256
        accounts = sorted(world.accounts.values(), key=lambda a: a.name)
        assert [a.name for a in accounts] == ["a-1", "a-2", "a-3"]
        uai = seeded.identities["uai"]
        assert accounts[0].encryption.key_version == versions[0].version
        assert accounts[0].encryption.identity_client_id == uai.principal.client_id
        assert world.key_access(uai.principal.object_id, vault, "k", "unwrapKey")
        assert len(world.role_assignments) == 1  # one grant for the shared identity

    def test_ten_thousand_accounts_seed(self):
        """10,000 templated accounts seed, each with its own name (how fast: a benchmark,
        bench/sandbox_startup.py, not a timed test)."""
        document = _small()
        document["accounts"][0]["count"] = 10_000
        seeded = build_world(load(document))
        assert len(seeded.world.accounts) == 10_000
        assert len({a.name for a in seeded.world.accounts.values()}) == 10_000

    def test_seed_into_sandbox_serves_the_world(self, sandbox: Sandbox):
        """Sandbox.seed builds the example world; its keys are readable with KeyClient."""
        seeded = sandbox.seed(scenario.example_path())
        assert len(sandbox.world.accounts) >= 24
        assert sandbox.eventgrid.topic("cmk-alerts")
        env = sandbox.settings_env()
        assert "https://kv-cmk-weu.vault.azure.net" in env["CMK_VAULT_ALLOWLIST"].split(",")
        assert env["CMK_ALERT_TOPIC_ENDPOINT"].startswith("https://cmk-alerts.westeurope-1.")
        client = KeyClient("https://kv-cmk-weu.vault.azure.net", DefaultAzureCredential())
        key = client.get_key("ai-cmk")
        latest = seeded.world.vaults["kv-cmk-weu.vault.azure.net"].keys["ai-cmk"].latest()
        assert latest is not None and key.properties.version == latest.version

    def test_seed_applies_faults(self, sandbox: Sandbox):
        """Faults declared in the scenario become active rules."""
        sandbox.seed(_small(faults=[{"host": "*.vault.azure.net", "status": 503, "count": 1}]))
        [rule] = sandbox.faults.rules
        assert rule.status == 503 and rule.count == 1

    def test_scenario_file_round_trip(self, tmp_path, sandbox: Sandbox):
        """A scenario written to a file seeds like the dict."""
        path = tmp_path / "world.json"
        path.write_text(json.dumps(_small()))
        assert len(sandbox.seed(path).world.accounts) == 3
