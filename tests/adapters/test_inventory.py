"""ResourceGraphInventory against the sandbox's Resource Graph and ARM, through the real SDK."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from adapter_world import RG, SUB, SUB2, Cloud
from hypothesis import given
from hypothesis import strategies as st

from cmk.adapters.inventory import (
    CMK_ACCOUNTS_QUERY,
    ResourceGraphInventory,
    cmk_accounts_query,
    kql_string,
    quota_pause,
    record_from_row,
)
from cmk.errors import AccessDenied, InvalidInput, ServiceUnavailable
from cmk.keyid import KeyId
from cmk.ports import AccountRecord
from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.resourcegraph.kql import language as kql
from cmk.sandbox.resourcegraph.service import graph_for
from cmk.sandbox.world import Encryption
from cmk.wiring import Services

GRAPH_PATH = "Microsoft.ResourceGraph/resources"


def _graph_calls(cloud: Cloud) -> int:
    """Resource Graph calls answered — not counting the sandbox's own per-user quota 429s
    (its window runs on the real clock and is shared with the tests before); a fault a
    test injects is counted."""
    records = cloud.sandbox.counters.matching(host="management.azure.com", path=GRAPH_PATH)
    return sum(1 for record in records if not (record.status == 429 and record.fault is None))


async def _collect(
    inventory: ResourceGraphInventory, subs: tuple[str, ...], key: KeyId | None = None
) -> list[AccountRecord]:
    return [record async for record in inventory.cmk_accounts(subs, key)]


def _seed_many(
    cloud: Cloud,
    subscription: str,
    count: int,
    version: str,
    *,
    key: str = "cmk",
    vault_uri: str | None = None,
    prefix: str = "acct",
) -> None:
    uri = vault_uri or f"{cloud.vault.url}/"
    encryption = Encryption("Microsoft.KeyVault", uri, key, version)
    with cloud.world.lock:
        for index in range(count):
            seed_account(
                cloud.world,
                subscription,
                RG,
                f"{prefix}-{index:05d}",
                "westeurope",
                encryption=encryption,
            )


def _spy_queries(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The KQL of every Resource Graph request body the sandbox receives."""
    graph = graph_for(cloud.world)
    answer = graph.query
    seen: list[str] = []

    def query(principal_id: str, request: object) -> dict[str, Any]:
        if isinstance(request, dict):
            seen.append(str(request.get("query")))
        return answer(principal_id, request)

    monkeypatch.setattr(graph, "query", query)
    return seen


class TestRecordFromRow:
    def test_reads_a_row(self) -> None:
        """A projected row becomes an AccountRecord with binding and identity client ids."""
        row = {
            "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
            "Microsoft.CognitiveServices/accounts/a1",
            "location": "westeurope",
            "keyVaultUri": "https://kv1.vault.azure.net/",
            "keyName": "cmk",
            "keyVersion": "a" * 32,
            "identityClientId": "C-1",
            "identityType": "UserAssigned",
            "userAssigned": '{"/subscriptions/x/uami": {"principalId": "p", "clientId": "C-1"}}',
            "provisioningState": "Succeeded",
        }
        record = record_from_row(row)
        assert record.binding is not None
        assert str(record.binding.key_id) == f"https://kv1.vault.azure.net/keys/cmk/{'a' * 32}"
        assert record.user_assigned_client_ids == frozenset({"c-1"})
        assert record.has_usable_identity

    @pytest.mark.parametrize(
        "change",
        [{"keyVaultUri": "https://evil.example.com/"}, {"keyVersion": ""}, {"id": "/nope"}],
    )
    def test_rejects_unreadable_rows(self, change: dict[str, str]) -> None:
        """A row with a bad key reference, no version or a bad id raises InvalidInput."""
        row = {
            "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
            "Microsoft.CognitiveServices/accounts/a1",
            "keyVaultUri": "https://kv1.vault.azure.net/",
            "keyName": "cmk",
            "keyVersion": "a" * 32,
            **change,
        }
        with pytest.raises(InvalidInput):
            record_from_row(row)


class TestResourceGraphInventory:
    async def test_pages_over_many_accounts_in_two_subscriptions(
        self, cloud: Cloud, services: Services
    ) -> None:
        """1,300 CMK accounts in 2 subscriptions stream back complete over several pages."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 700, version)
        _seed_many(cloud, SUB2, 600, version)
        with cloud.world.lock:
            seed_account(cloud.world, SUB, RG, "microsoft-managed", "westeurope")
        records = await _collect(services.inventory, (SUB, SUB2))
        assert len(records) == 1300
        assert len({record.account_id for record in records}) == 1300
        assert all(
            record.binding is not None and record.binding.key_id.version == version
            for record in records
        )
        assert _graph_calls(cloud) >= 2

    async def test_batches_subscriptions(self, cloud: Cloud, services: Services) -> None:
        """With a batch size of 1, each subscription is queried on its own."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 3, version)
        _seed_many(cloud, SUB2, 2, version)
        graph = services.inventory.client
        inventory = ResourceGraphInventory(graph, batch_size=1)
        records = await _collect(inventory, (SUB, SUB2))
        assert len(records) == 5
        assert _graph_calls(cloud) == 2

    async def test_skips_unreadable_rows_with_a_warning(
        self, cloud: Cloud, services: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An account without keyVersion is skipped, counted and logged by name."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("good", cloud.vault, version)
        cloud.add_account("versionless", cloud.vault, None)  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="cmk.adapters.inventory"):
            records = await _collect(services.inventory, (SUB,))
        assert [record.account_id.name for record in records] == ["good"]
        assert services.inventory.skipped == 1
        assert any("versionless" in message for message in caplog.messages)

    async def test_forbidden_graph_falls_back_to_arm(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A 403 from Resource Graph lists the accounts per subscription through ARM instead."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 150, version)
        _seed_many(cloud, SUB2, 30, version)
        with cloud.world.lock:
            seed_account(cloud.world, SUB, RG, "microsoft-managed", "westeurope")
        cloud.sandbox.faults.add(
            host="management.azure.com",
            path=GRAPH_PATH,
            status=403,
            body={"error": {"code": "AuthorizationFailed", "message": "no graph for you"}},
        )
        records = await _collect(services.inventory, (SUB, SUB2))
        assert len(records) == 180
        listed = cloud.sandbox.counters.count(
            host="management.azure.com",
            path="/providers/Microsoft.CognitiveServices/accounts/?$",
            method="GET",
        )
        assert listed >= 3  # 150 accounts take two pages of 100, plus SUB2

    async def test_forbidden_graph_without_fallback_raises(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Without a fallback, a 403 from Resource Graph raises AccessDenied."""
        cloud.sandbox.faults.add(host="management.azure.com", path=GRAPH_PATH, status=403)
        inventory = ResourceGraphInventory(services.inventory.client)
        with pytest.raises(AccessDenied):
            await _collect(inventory, (SUB,))


class TestKeyQuery:
    # CR is left out only because the sandbox's KQL reads "\\r" as "r" (Kusto reads a CR).
    @given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r"), max_size=40))
    def test_string_literal_round_trips(self, text: str) -> None:
        """Any text (quotes, backslashes, line breaks) as a KQL literal matches itself only."""
        query = kql.parse(f"Resources | where name == {kql_string(text)}")
        rows: list[dict[str, object]] = [{"name": text}, {"name": text + "x"}]
        assert query.run(rows) == [{"name": text}]

    def test_literal_escapes_quote_and_backslash(self) -> None:
        """A quote becomes \\' and a backslash \\\\ (KQL's rules, not SQL's doubling)."""
        assert kql_string("it's a\\b") == "'it\\'s a\\\\b'"

    def test_without_key_the_query_is_unchanged(self) -> None:
        """The unkeyed inventory sends the whole-scope query."""
        assert cmk_accounts_query() == CMK_ACCOUNTS_QUERY
        assert "keyName" not in CMK_ACCOUNTS_QUERY.split("| project")[0]

    def test_keyed_query_matches_vault_and_key_name(self) -> None:
        """The where clause names the vault in every accepted spelling and the key, both =~."""
        query = cmk_accounts_query(KeyId.parse("https://KV1.vault.azure.net/keys/Cmk/"))
        for uri in (
            "https://kv1.vault.azure.net",
            "https://kv1.vault.azure.net/",
            "https://kv1.vault.azure.net:443",
            "https://kv1.vault.azure.net:443/",
        ):
            assert f"keyVaultUri =~ '{uri}'" in query
        assert "keyName =~ 'cmk'" in query
        assert query.endswith("| order by id asc")


class TestKeyedInventory:
    async def test_returns_only_that_keys_accounts_filtered_by_resource_graph(
        self, cloud: Cloud, services: Services, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Of three keys (one on another vault under the same name), a keyed listing asks
        Resource Graph for one key and gets only its accounts, in any URI spelling."""
        mine = cloud.add_version(cloud.vault, "k1").version
        other = cloud.add_version(cloud.vault, "k2").version
        twin = cloud.add_version(cloud.hsm, "k1", kty="RSA-HSM").version
        host = cloud.vault.url.removeprefix("https://")
        _seed_many(cloud, SUB, 40, mine, key="k1", prefix="slash")
        _seed_many(
            cloud, SUB, 5, mine, key="K1", vault_uri=f"https://{host.upper()}", prefix="bare"
        )
        _seed_many(cloud, SUB, 5, mine, key="k1", vault_uri=f"https://{host}:443/", prefix="port")
        _seed_many(cloud, SUB, 60, other, key="k2", prefix="other")
        _seed_many(cloud, SUB, 60, twin, key="k1", vault_uri=f"{cloud.hsm.url}/", prefix="twin")
        queries = _spy_queries(cloud, monkeypatch)
        inventory = ResourceGraphInventory(services.inventory.client, page_size=20)
        key = KeyId.from_parts(cloud.vault.url, "k1")

        records = await _collect(inventory, (SUB,), key)

        assert len(records) == 50
        assert all(r.binding is not None and r.binding.key_id.same_key(key) for r in records)
        assert _graph_calls(cloud) == 3  # 50 rows of 20; the scope's 170 would take 9
        assert queries and all("keyName =~ 'k1'" in query for query in queries)
        assert all(f"keyVaultUri =~ '{cloud.vault.url}/'" in query for query in queries)

    async def test_arm_fallback_filters_by_key(self, cloud: Cloud, services: Services) -> None:
        """When Resource Graph is forbidden, the ARM listing is narrowed to the key too."""
        mine = cloud.add_version(cloud.vault, "k1").version
        other = cloud.add_version(cloud.vault, "k2").version
        _seed_many(cloud, SUB, 12, mine, key="k1", prefix="mine")
        _seed_many(cloud, SUB, 8, other, key="k2", prefix="other")
        cloud.sandbox.faults.add(host="management.azure.com", path=GRAPH_PATH, status=403)

        records = await _collect(
            services.inventory, (SUB,), KeyId.from_parts(cloud.vault.url, "k1")
        )

        assert sorted(r.account_id.name for r in records) == [f"mine-{i:05d}" for i in range(12)]


class TestResourceGraphQuota:
    async def test_pages_wait_for_the_quota_instead_of_meeting_429(
        self, cloud: Cloud, services: Services
    ) -> None:
        """With a quota of two queries per window, a five-page listing waits for the window
        to reset when the answer says none is left: every account, no query answered 429."""
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 10, version)
        throttle = throttle_for(cloud.world)
        throttle.configure(graph_quota=2, graph_window_seconds=1.0)
        try:
            inventory = ResourceGraphInventory(services.inventory.client, page_size=2)
            cloud.sandbox.counters.reset()
            records = await _collect(inventory, (SUB,))
        finally:
            throttle.configure(graph_quota=15, graph_window_seconds=5.0)
        assert len(records) == 10
        assert inventory.quota_waits >= 1
        refused = [
            r for r in cloud.sandbox.counters.matching(path="ResourceGraph") if r.status == 429
        ]
        assert refused == []

    async def test_the_next_batch_waits_for_the_quota_too(
        self, cloud: Cloud, services: Services
    ) -> None:
        """The last page of one batch of subscriptions spent the quota: the next batch's
        first query waits for the window as a next page would — no query answered 429."""
        cloud.add_subscription(SUB2)
        version = cloud.add_version(cloud.vault).version
        _seed_many(cloud, SUB, 2, version)
        _seed_many(cloud, SUB2, 2, version, prefix="other")
        throttle = throttle_for(cloud.world)
        throttle.configure(graph_quota=1, graph_window_seconds=1.0)
        try:
            inventory = ResourceGraphInventory(services.inventory.client, batch_size=1)
            cloud.sandbox.counters.reset()
            records = await _collect(inventory, (SUB, SUB2))
        finally:
            throttle.configure(graph_quota=15, graph_window_seconds=5.0)
        assert len(records) == 4
        assert inventory.quota_waits == 1
        refused = [
            r for r in cloud.sandbox.counters.matching(path="ResourceGraph") if r.status == 429
        ]
        assert refused == []

    @pytest.mark.parametrize(
        ("headers", "pause"),
        [
            ({"x-ms-user-quota-remaining": "3", "x-ms-user-quota-resets-after": "00:00:05"}, 0),
            ({"x-ms-user-quota-remaining": "0", "x-ms-user-quota-resets-after": "00:00:05"}, 5),
            ({"x-ms-user-quota-remaining": "0", "x-ms-user-quota-resets-after": "01:00:00"}, 60),
            ({"x-ms-user-quota-remaining": "0"}, 1),
            ({}, 0),
        ],
    )
    def test_quota_pause(self, headers: dict[str, str], pause: float) -> None:
        """Wait only when none is left: until the window resets, at most a minute."""
        assert quota_pause(headers) == pause


class TestTruncatedAnswers:
    async def test_a_truncated_answer_without_a_skip_token_fails_the_listing(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Resource Graph says it cut the result short and gives no $skipToken: the
        listing fails (transient: the next run asks again) instead of yielding a part of
        the estate as if it were all of it."""
        cloud.sandbox.faults.add(
            host="management.azure.com",
            path=GRAPH_PATH,
            status=200,
            body={"totalRecords": 5000, "count": 0, "resultTruncated": "true", "data": []},
        )
        with pytest.raises(ServiceUnavailable, match="truncated its answer"):
            await _collect(services.inventory, (SUB,))

    async def test_fewer_rows_than_announced_is_a_warning(
        self, cloud: Cloud, services: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Fewer rows than totalRecords, not truncated (accounts removed while the pages
        were read): the rows are listed and a WARNING says so."""
        cloud.sandbox.faults.add(
            host="management.azure.com",
            path=GRAPH_PATH,
            status=200,
            body={"totalRecords": 3, "count": 0, "resultTruncated": "false", "data": []},
        )
        with caplog.at_level(logging.WARNING, logger="cmk.adapters.inventory"):
            assert await _collect(services.inventory, (SUB,)) == []
        assert any("announced 3 rows and answered 0" in r.getMessage() for r in caplog.records)
