"""Key Vault responses checked against Azure's REST API specification (keys.json 2025-07-01)
and its examples, kept under tests/sandbox/data/keyvault with their source."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft7Validator

from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import VaultKind, VaultState

DATA = Path(__file__).parent / "data" / "keyvault"
API = "2025-07-01"
SUB = "00000000-0000-4000-8000-0000000000bb"


def _example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / name).read_text())
    assert "https://github.com/Azure/azure-rest-api-specs/blob/" in document["_source"]
    return document


def _strict(node: Any) -> Any:
    """A copy where every object with declared properties allows no others."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


DEFINITIONS = _strict(_example("keys-2025-07-01-definitions.json")["definitions"])
# Key Vault sends "nextLink": null on the last page; the spec types it as a string.
DEFINITIONS["KeyListResult"]["properties"]["nextLink"] = {"type": ["string", "null"]}


def _validate(body: object, definition: str) -> None:
    schema = {"definitions": copy.deepcopy(DEFINITIONS), "$ref": f"#/definitions/{definition}"}
    errors = sorted(Draft7Validator(schema).iter_errors(body), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


class Vault:
    """Raw HTTPS calls to one sandbox vault, through the proxy, with the app's token."""

    def __init__(self, sandbox: Sandbox, kind: VaultKind = VaultKind.VAULT) -> None:
        suffix = "vault.azure.net" if kind is VaultKind.VAULT else "managedhsm.azure.net"
        name = f"spec-{uuid.uuid4().hex[:10]}"
        world = sandbox.world
        self.state = VaultState(
            name, kind, SUB, "rg", "westeurope", world.tenant_id, dns_suffix=suffix
        )
        with world.lock:
            world.vaults[self.state.host] = self.state
            world.grant(
                sandbox.app_principal.object_id, self.state.resource_id, "Key Vault Administrator"
            )
        token = sandbox.token(sandbox.app_principal, f"https://{suffix}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        url = f"{self.state.url}{path}"
        return self.session.request(method, url, params={"api-version": API}, json=body, timeout=10)

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self.call(method, path, body)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture
def vault(sandbox: Sandbox) -> Vault:
    return Vault(sandbox)


class TestSpecData:
    """The transcribed definitions agree with the specification's own examples."""

    @pytest.mark.parametrize(
        ("example", "definition"),
        [
            ("CreateKey-example.json", "KeyBundle"),
            ("GetKey-example.json", "KeyBundle"),
            ("UpdateKey-example.json", "KeyBundle"),
            ("RotateKey-example.json", "KeyBundle"),
            ("GetKeyVersions-example.json", "KeyListResult"),
            ("GetKeys-example.json", "KeyListResult"),
            ("GetKeyRotationPolicy-example.json", "KeyRotationPolicy"),
            ("UpdateKeyRotationPolicy-example.json", "KeyRotationPolicy"),
        ],
    )
    def test_examples_validate(self, example: str, definition: str) -> None:
        """Each example response body is valid under the strict definitions."""
        _validate(_example(example)["responses"]["200"]["body"], definition)


class TestResponsesMatchTheSpec:
    """Sandbox responses validate under the spec and mirror the examples member by member."""

    def test_create_key_like_the_example(self, vault: Vault) -> None:
        """CreateKey's example request yields a KeyBundle with the example's members."""
        example = _example("CreateKey-example.json")
        ours = vault.ok(
            "POST", "/keys/CreateSoftKeyTest/create", example["parameters"]["parameters"]
        )
        theirs = example["responses"]["200"]["body"]
        _validate(ours, "KeyBundle")
        assert set(ours) == set(theirs)
        assert set(ours["key"]) == set(theirs["key"])
        assert ours["key"]["key_ops"] == theirs["key"]["key_ops"]
        assert ours["tags"] == theirs["tags"]
        assert len(ours["key"]["n"]) == len(theirs["key"]["n"])
        assert set(theirs["attributes"]) <= set(ours["attributes"])
        assert set(ours["attributes"]) - set(theirs["attributes"]) == {
            "recoverableDays",
            "exportable",
        }

    def test_get_and_rotate_keys_are_bundles(self, vault: Vault) -> None:
        """GetKey (latest and by version) and RotateKey answer KeyBundles."""
        created = vault.ok("POST", "/keys/k/create", {"kty": "RSA"})
        version = created["key"]["kid"].rsplit("/", 1)[1]
        for body in (
            vault.ok("GET", "/keys/k/"),
            vault.ok("GET", f"/keys/k/{version}"),
            vault.ok("POST", "/keys/k/rotate"),
        ):
            _validate(body, "KeyBundle")

    def test_update_key_like_the_example(self, vault: Vault) -> None:
        """UpdateKey's example request changes exactly what the example response shows."""
        example = _example("UpdateKey-example.json")
        created = vault.ok("POST", "/keys/UpdateKeyAttributesTest/create", {"kty": "RSA"})
        version = created["key"]["kid"].rsplit("/", 1)[1]
        ours = vault.ok(
            "PATCH", f"/keys/UpdateKeyAttributesTest/{version}", example["parameters"]["parameters"]
        )
        theirs = example["responses"]["200"]["body"]
        _validate(ours, "KeyBundle")
        assert ours["key"]["key_ops"] == theirs["key"]["key_ops"]
        for name in ("enabled", "nbf", "exp"):
            assert ours["attributes"][name] == theirs["attributes"][name]
        assert "tags" not in ours

    @pytest.mark.parametrize(
        ("example", "path"),
        [("GetKeyVersions-example.json", "/keys/k/versions"), ("GetKeys-example.json", "/keys")],
    )
    def test_lists_page_like_the_examples(self, vault: Vault, example: str, path: str) -> None:
        """maxresults=1 gives one KeyItem and a nextLink of the example's form."""
        vault.ok("POST", "/keys/k/create", {"kty": "RSA"})
        vault.ok("POST", "/keys/k/create", {"kty": "RSA"})
        vault.ok("POST", "/keys/j/create", {"kty": "RSA"})
        response = vault.session.get(
            f"{vault.state.url}{path}", params={"api-version": API, "maxresults": "1"}, timeout=10
        )
        ours, theirs = response.json(), _example(example)["responses"]["200"]["body"]
        _validate(ours, "KeyListResult")
        assert len(ours["value"]) == 1
        assert set(ours["value"][0]["attributes"]) >= set(theirs["value"][0]["attributes"])
        prefix, _, query = theirs["nextLink"].partition("?")
        our_prefix, _, our_query = ours["nextLink"].partition("?")
        assert our_prefix == prefix.replace("myvault.vault.azure.net", vault.state.host).replace(
            "listkeyversionstest", "k"
        )
        assert [p.split("=")[0] for p in our_query.split("&")] == [
            p.split("=")[0] for p in query.split("&")
        ]

    def test_rotation_policy_like_the_example(self, vault: Vault) -> None:
        """UpdateKeyRotationPolicy's example request round-trips to its example response."""
        example = _example("UpdateKeyRotationPolicy-example.json")
        vault.ok("POST", "/keys/updateKey01/create", {"kty": "RSA"})
        ours = vault.ok(
            "PUT", "/keys/updateKey01/rotationpolicy", example["parameters"]["keyRotationPolicy"]
        )
        theirs = example["responses"]["200"]["body"]
        _validate(ours, "KeyRotationPolicy")
        assert ours["id"] == theirs["id"].replace("myvault.vault.azure.net", vault.state.host)
        assert ours["lifetimeActions"] == theirs["lifetimeActions"]
        assert set(ours["attributes"]) == set(theirs["attributes"])
        assert ours["attributes"]["expiryTime"] == theirs["attributes"]["expiryTime"]
        _validate(vault.ok("GET", "/keys/updateKey01/rotationpolicy"), "KeyRotationPolicy")

    @pytest.mark.parametrize(
        ("method", "path", "body", "status"),
        [
            ("GET", "/keys/absent/", None, 404),
            ("POST", "/keys/k/create", {"kty": "RSA", "key_size": 1000}, 400),
            ("PUT", "/keys/absent/rotationpolicy", {}, 404),
        ],
    )
    def test_errors_are_key_vault_errors(
        self, vault: Vault, method: str, path: str, body: object, status: int
    ) -> None:
        """Error bodies are KeyVaultError objects."""
        response = vault.call(method, path, body)
        assert response.status_code == status
        _validate(response.json(), "KeyVaultError")

    def test_managed_hsm_bundle(self, sandbox: Sandbox) -> None:
        """A Managed HSM key bundle is a valid KeyBundle with kty RSA-HSM."""
        hsm = Vault(sandbox, VaultKind.MANAGED_HSM)
        body = hsm.ok("POST", "/keys/k/create", {"kty": "RSA-HSM", "key_size": 3072})
        _validate(body, "KeyBundle")
        assert body["key"]["kty"] == "RSA-HSM"
