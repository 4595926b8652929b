"""Resource Graph over the world: rows, scope and RBAC, paging and errors (no HTTP)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cmk.sandbox.arm.cognitive.accounts import rp_for, seed_account
from cmk.sandbox.resourcegraph.service import GraphError, ResourceGraph
from cmk.sandbox.world import (
    Encryption,
    Principal,
    Subscription,
    VaultKind,
    VaultState,
    World,
)

DATA = Path(__file__).parent / "data" / "arm"
SUB_A = "aaaaaaaa-0000-0000-0000-000000000001"
SUB_B = "bbbbbbbb-0000-0000-0000-000000000002"
INVENTORY = (
    "Resources | where type =~ 'microsoft.cognitiveservices/accounts' "
    "| where tostring(properties.encryption.keySource) =~ 'Microsoft.KeyVault' "
    "| project id = tostring(id), subscriptionId = tostring(subscriptionId), "
    "location = tostring(location), "
    "keyVaultUri = tostring(properties.encryption.keyVaultProperties.keyVaultUri), "
    "keyName = tostring(properties.encryption.keyVaultProperties.keyName), "
    "keyVersion = tostring(properties.encryption.keyVaultProperties.keyVersion), "
    "identityClientId = tostring(properties.encryption.keyVaultProperties.identityClientId), "
    "identityType = tostring(identity.type), "
    "provisioningState = tostring(properties.provisioningState) | order by id asc"
)


def _world(accounts_per_sub: int = 3) -> tuple[World, Principal]:
    world = World()
    reader = world.add_principal(Principal.new("reader", world.tenant_id))
    for sub in (SUB_A, SUB_B):
        world.subscriptions[sub] = Subscription(sub, world.tenant_id, sub[:4])
        vault = VaultState(
            f"kv-{sub[:4]}", VaultKind.VAULT, sub, "RG-Keys", "eastus", world.tenant_id
        )
        world.vaults[vault.host] = vault
        binding = Encryption("Microsoft.KeyVault", f"{vault.url}/", "cmk", "0" * 32)
        for index in range(accounts_per_sub):
            seed_account(world, sub, "RG-AI", f"acct{index:06d}", "eastus", encryption=binding)
        seed_account(world, sub, "RG-AI", "plain", "eastus")
        world.grant(reader.object_id, f"/subscriptions/{sub}", "Reader")
    return world, reader


def _query(
    graph: ResourceGraph, principal: Principal, query: str, **options: Any
) -> dict[str, Any]:
    return graph.query(
        principal.object_id, {"subscriptions": [SUB_A, SUB_B], "query": query, "options": options}
    )


class TestRows:
    def test_accounts_and_vaults_use_arg_casing(self) -> None:
        """Types and resource groups are lowercase; ids keep their case."""
        world, reader = _world(1)
        data = _query(ResourceGraph(world), reader, "Resources | order by id asc")["data"]
        types = {row["type"] for row in data}
        assert types == {"microsoft.cognitiveservices/accounts", "microsoft.keyvault/vaults"}
        assert {row["resourceGroup"] for row in data} == {"rg-ai", "rg-keys"}
        assert any("/resourceGroups/RG-AI/" in row["id"] for row in data)

    def test_vault_properties_carry_protection_settings(self) -> None:
        """Vault rows expose vaultUri, enableSoftDelete and enablePurgeProtection."""
        world, reader = _world(0)
        query = "Resources | where type =~ 'microsoft.keyvault/vaults' | project properties"
        props = _query(ResourceGraph(world), reader, query)["data"][0]["properties"]
        assert props["enableSoftDelete"] is True
        assert props["enablePurgeProtection"] is True
        assert props["vaultUri"].endswith(".vault.azure.net/")

    def test_inventory_query_returns_bindings(self) -> None:
        """The product's inventory query yields one string row per CMK account."""
        world, reader = _world(2)
        body = _query(ResourceGraph(world), reader, INVENTORY)
        assert body["totalRecords"] == 4
        row = body["data"][0]
        assert row["keyName"] == "cmk"
        assert row["identityType"] == "SystemAssigned"
        assert row["provisioningState"] == "Succeeded"

    def test_finished_update_is_visible(self) -> None:
        """A completed account update shows in Resource Graph without polling ARM."""
        world, reader = _world(1)
        account = next(iter(world.accounts.values()))
        rp = rp_for(world)
        rp.update(account, {"tags": {"seen": "yes"}})
        query = "Resources | where tostring(tags.seen) == 'yes' | project id"
        assert _query(ResourceGraph(world), reader, query)["count"] == 1


class TestScope:
    def test_only_readable_subscriptions_are_searched(self) -> None:
        """A Reader of one subscription sees none of the other's resources."""
        world, _ = _world(2)
        partial = world.add_principal(Principal.new("partial", world.tenant_id))
        world.grant(partial.object_id, f"/subscriptions/{SUB_A}", "Reader")
        body = _query(ResourceGraph(world), partial, "Resources | project subscriptionId")
        assert {row["subscriptionId"] for row in body["data"]} == {SUB_A}

    def test_resource_level_grant_shows_one_account(self) -> None:
        """A grant on one account makes exactly that row visible."""
        world, _ = _world(2)
        one = world.add_principal(Principal.new("one", world.tenant_id))
        target = next(iter(world.accounts.values()))
        world.grant(one.object_id, target.resource_id, "Reader")
        body = _query(ResourceGraph(world), one, "Resources | project id")
        assert [row["id"] for row in body["data"]] == [target.resource_id]

    def test_no_subscriptions_means_all_of_the_tenant(self) -> None:
        """Without 'subscriptions' every subscription the caller can read is searched."""
        world, reader = _world(1)
        body = ResourceGraph(world).query(reader.object_id, {"query": "Resources | count"})
        assert body["data"] == [{"Count": 6}]


class TestPaging:
    def test_skip_token_until_the_last_page(self) -> None:
        """1,000 rows per page; $skipToken while rows remain, none on the last page."""
        world, reader = _world(1250)
        graph = ResourceGraph(world)
        pages, ids, token = 0, [], None
        while True:
            options: dict[str, Any] = {"$skipToken": token} if token else {}
            body = _query(graph, reader, INVENTORY, **options)
            pages += 1
            ids += [row["id"] for row in body["data"]]
            assert body["totalRecords"] == 2500
            assert body["resultTruncated"] == "false"
            token = body.get("$skipToken")
            if token is None:
                break
        assert pages == 3
        assert ids == sorted(ids)
        assert len(set(ids)) == 2500

    def test_top_and_skip(self) -> None:
        """$top sizes the page and $skip offsets it."""
        world, reader = _world(5)
        body = _query(ResourceGraph(world), reader, INVENTORY, **{"$top": 3, "$skip": 4})
        assert body["count"] == 3
        assert "$skipToken" in body
        everything = _query(ResourceGraph(world), reader, INVENTORY)["data"]
        assert body["data"] == everything[4:7]

    def test_pages_come_from_one_snapshot(self) -> None:
        """Accounts added while paging do not shift the pages of a running query."""
        world, reader = _world(3)
        graph = ResourceGraph(world)
        first = _query(graph, reader, INVENTORY, **{"$top": 2})
        binding = next(iter(world.accounts.values())).encryption
        seed_account(world, SUB_A, "RG-AI", "aaaa-first", "eastus", encryption=binding)
        second = _query(graph, reader, INVENTORY, **{"$top": 2, "$skipToken": first["$skipToken"]})
        assert second["totalRecords"] == first["totalRecords"] == 6

    def test_all_dynamic_columns_are_not_paged(self) -> None:
        """Untyped projections: resultTruncated 'true' and no $skipToken, as documented."""
        world, reader = _world(3)
        query = "Resources | project properties.provisioningState"
        body = _query(ResourceGraph(world), reader, query, **{"$top": 2})
        assert body["resultTruncated"] == "true"
        assert "$skipToken" not in body

    def test_limit_disables_paging(self) -> None:
        """A query with 'take' is never paged."""
        world, reader = _world(3)
        body = _query(
            ResourceGraph(world), reader, "Resources | project id | take 5", **{"$top": 2}
        )
        assert (body["count"], body["totalRecords"], body["resultTruncated"]) == (2, 5, "true")
        assert "$skipToken" not in body

    def test_table_format(self) -> None:
        """resultFormat 'table' returns typed columns and row arrays."""
        world, reader = _world(1)
        query = "Resources | project id, props = properties, n = strlen(name) | order by id asc"
        data = _query(ResourceGraph(world), reader, query, resultFormat="table")["data"]
        assert data["columns"] == [
            {"name": "id", "type": "string"},
            {"name": "props", "type": "object"},
            {"name": "n", "type": "integer"},
        ]
        assert len(data["rows"]) == 6

    def test_example_response_shape(self) -> None:
        """The response has the spec example's fields and value types."""
        example = json.loads((DATA / "ResourcesBasicQuery.json").read_text())
        expected = example["responses"]["200"]["body"]
        world, reader = _world(1)
        body = _query(ResourceGraph(world), reader, example["parameters"]["query"]["query"])
        assert set(expected) <= set(body)
        assert {k: type(v) for k, v in expected.items()} == {k: type(body[k]) for k in expected}
        assert set(body["data"][0]) == set(expected["data"][0])


class TestSummarize:
    def test_the_spec_example(self) -> None:
        """The spec's summarize example, run as written: one row per location, each with the
        location alone, in the example's response structure."""
        example = json.loads((DATA / "ResourcesSummarizeQuery.json").read_text())
        expected = example["responses"]["200"]["body"]
        world, reader = _world(1)
        for index, location in enumerate(("westus", "centralus")):
            seed_account(world, SUB_A, "RG-AI", f"elsewhere{index}", location)
        body = _query(ResourceGraph(world), reader, example["parameters"]["query"]["query"])
        assert {k: type(v) for k, v in expected.items()} == {k: type(body[k]) for k in expected}
        assert sorted(body["data"], key=lambda row: row["location"]) == expected["data"]
        assert body["totalRecords"] == body["count"] == expected["totalRecords"]

    def test_the_spec_complex_example(self) -> None:
        """The spec's complex example (project | where type | summarize count() by location
        | top 3 by count_), run over accounts (the world has no virtual machines): the top
        three locations with their counts, in the example's response structure."""
        example = json.loads((DATA / "ResourcesComplexQuery.json").read_text())
        expected = example["responses"]["200"]["body"]
        world = World()
        reader = world.add_principal(Principal.new("reader", world.tenant_id))
        world.subscriptions[SUB_A] = Subscription(SUB_A, world.tenant_id, "a")
        world.grant(reader.object_id, f"/subscriptions/{SUB_A}", "Reader")
        for location, count in (("centralus", 11), ("eastus", 11), ("westus", 1),
                                ("southcentralus", 3)):  # fmt: skip
            for index in range(count):
                seed_account(world, SUB_A, "rg", f"{location}{index}", location)
        query = example["parameters"]["query"]["query"].replace(
            "Microsoft.Compute/virtualMachines", "Microsoft.CognitiveServices/accounts"
        )
        body = ResourceGraph(world).query(
            reader.object_id, {"subscriptions": [SUB_A], "query": query}
        )
        assert {k: type(v) for k, v in expected.items()} == {k: type(body[k]) for k in expected}
        # top sorts by count_ descending; Kusto leaves the order of equal counts open.
        ranked = sorted(body["data"], key=lambda row: (-row["count_"], row["location"]))
        assert ranked == expected["data"]
        assert (body["totalRecords"], body["count"], body["resultTruncated"]) == (3, 3, "false")

    def test_cmk_inventory_summary_by_subscription(self) -> None:
        """count(), countif() and dcount() by a key over the readable subscriptions."""
        world, reader = _world(2)
        query = (
            "Resources | where type =~ 'microsoft.cognitiveservices/accounts' "
            "| summarize accounts = count(), "
            "cmk = countif(tostring(properties.encryption.keySource) == 'Microsoft.KeyVault'), "
            "dcount(location) by subscriptionId | order by subscriptionId asc"
        )
        body = _query(ResourceGraph(world), reader, query)
        assert body["data"] == [
            {"subscriptionId": sub, "accounts": 3, "cmk": 2, "dcount_location": 1}
            for sub in sorted((SUB_A, SUB_B))
        ]
        assert body["totalRecords"] == 2

    def test_summarize_pages_and_formats_as_a_table(self) -> None:
        """A summarize result has typed columns and pages with $top/$skipToken."""
        world, reader = _world(1)
        query = "Resources | summarize count() by type | order by type asc"
        body = _query(ResourceGraph(world), reader, query, **{"$top": 1, "resultFormat": "table"})
        assert body["data"]["columns"] == [
            {"name": "type", "type": "string"},
            {"name": "count_", "type": "integer"},
        ]
        assert body["data"]["rows"] == [["microsoft.cognitiveservices/accounts", 4]]
        assert "$skipToken" in body

    def test_make_set_and_distinct(self) -> None:
        """make_set() collects distinct values; distinct keeps one row per tuple."""
        world, reader = _world(1)
        sets = _query(ResourceGraph(world), reader, "Resources | summarize make_set(type)")
        assert sorted(sets["data"][0]["set_type"]) == [
            "microsoft.cognitiveservices/accounts",
            "microsoft.keyvault/vaults",
        ]
        rows = _query(ResourceGraph(world), reader, "Resources | distinct resourceGroup")["data"]
        assert sorted(r["resourceGroup"] for r in rows) == ["rg-ai", "rg-keys"]


class TestErrors:
    def test_invalid_query_has_real_error_shape(self) -> None:
        """A syntax error answers 400 BadRequest with InvalidQuery and ParserFailure details."""
        example = json.loads((DATA / "ResourceGraphQueryError.json").read_text())["body"]
        world, reader = _world(1)
        with pytest.raises(GraphError) as caught:
            _query(ResourceGraph(world), reader, "Resources | where name ==")
        body = caught.value.body
        assert caught.value.status == 400
        assert body["error"]["code"] == example["error"]["code"]
        assert body["error"]["message"].startswith("Please provide below info")
        details = body["error"]["details"]
        assert details[0] == example["error"]["details"][0]
        assert set(details[1]) == set(example["error"]["details"][1])

    def test_unsupported_operator_is_invalid_query_language(self) -> None:
        """An operator outside the subset is reported as InvalidQueryLanguage."""
        world, reader = _world(1)
        with pytest.raises(GraphError) as caught:
            _query(ResourceGraph(world), reader, "Resources | join (Resources) on id")
        assert caught.value.body["error"]["details"][1]["code"] == "InvalidQueryLanguage"
        assert caught.value.body["error"]["code"] == "BadRequest"

    def test_unknown_aggregate_is_invalid_query_language(self) -> None:
        """An aggregate outside the subset (avg) is refused, not approximated."""
        world, reader = _world(1)
        with pytest.raises(GraphError) as caught:
            _query(ResourceGraph(world), reader, "Resources | summarize avg(strlen(name))")
        details = caught.value.body["error"]["details"]
        assert (details[1]["code"], details[1]["token"]) == ("InvalidQueryLanguage", "avg")

    def test_dynamic_group_key_is_kusto_s_semantic_error(self) -> None:
        """summarize by identity.type: Kusto's refusal of a dynamic key, with its position."""
        world, reader = _world(1)
        query = "Resources | summarize count() by identity.type"
        with pytest.raises(GraphError) as caught:
            _query(ResourceGraph(world), reader, query)
        details = caught.value.body["error"]["details"]
        assert details[0]["code"] == "InvalidQuery"
        assert details[1]["message"].startswith(
            "Summarize group key 'identity_type' is of a 'dynamic' type. Please use an "
            "explicit cast (for example, 'summarize ... by tostring(identity_type)')"
        )
        assert (details[1]["token"], details[1]["characterPositionInLine"]) == (
            "identity",
            query.index("identity"),
        )

    def test_malformed_skip_token(self) -> None:
        """A $skipToken that was not issued answers 400."""
        world, reader = _world(1)
        with pytest.raises(GraphError):
            _query(ResourceGraph(world), reader, INVENTORY, **{"$skipToken": "!!"})


class TestScale:
    def test_hundred_thousand_accounts_page_by_page(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Paging the inventory of 100,000 accounts evaluates once; prints the figures."""
        started = time.perf_counter()
        world, reader = _world(50_000)
        seeded = time.perf_counter()
        graph = ResourceGraph(world)
        token, rows, first_page = None, 0, 0.0
        while True:
            options: dict[str, Any] = {"$skipToken": token} if token else {}
            body = _query(graph, reader, INVENTORY, **options)
            first_page = first_page or time.perf_counter() - seeded
            rows += body["count"]
            token = body.get("$skipToken")
            if token is None:
                break
        done = time.perf_counter()
        assert rows == 100_000
        with capsys.disabled():
            print(
                f"\n[resourcegraph] seed 100k: {seeded - started:.2f}s, first page: "
                f"{first_page:.2f}s, all 100 pages: {done - seeded:.2f}s"
            )
