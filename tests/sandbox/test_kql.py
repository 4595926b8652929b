"""The KQL subset the sandbox's Resource Graph evaluates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmk.sandbox.resourcegraph.kql import language as kql

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


def _account(rid: str, key_source: str | None, **props: object) -> kql.Row:
    encryption: dict[str, object] | None = None
    if key_source is not None:
        encryption = {
            "keySource": key_source,
            "keyVaultProperties": {
                "keyVaultUri": "https://kv.vault.azure.net/",
                "keyName": "cmk",
                "keyVersion": "v1",
            },
        }
    properties: dict[str, object] = {"provisioningState": "Succeeded", **props}
    if encryption is not None:
        properties["encryption"] = encryption
    return {
        "id": rid,
        "name": rid.rsplit("/", 1)[-1],
        "type": "microsoft.cognitiveservices/accounts",
        "location": "eastus",
        "subscriptionId": "s1",
        "properties": properties,
        "identity": {"type": "SystemAssigned"},
        "tags": {"env": "prod"},
    }


ROWS: list[kql.Row] = [
    _account("/a/b", "Microsoft.KeyVault"),
    _account("/a/a", "microsoft.keyvault"),
    _account("/a/c", None),
    {"id": "/v/1", "name": "kv", "type": "microsoft.keyvault/vaults", "properties": {}},
]


class TestParse:
    def test_inventory_query_selects_cmk_accounts_in_id_order(self) -> None:
        """The product's inventory query keeps CMK accounts only, sorted ascending by id."""
        rows = kql.parse(INVENTORY).run(ROWS)
        assert [r["id"] for r in rows] == ["/a/a", "/a/b"]
        assert rows[0]["keyVersion"] == "v1"
        assert rows[0]["identityClientId"] == ""

    def test_inventory_query_columns_are_strings(self) -> None:
        """Every tostring()-ed column is typed string, so the result can be paged."""
        query = kql.parse(INVENTORY)
        assert {kind for _, kind in query.columns} == {"string"}
        assert not query.all_dynamic
        assert not query.limited

    def test_untyped_projection_is_all_dynamic(self) -> None:
        """Projecting bare property paths yields dynamic columns named after the path."""
        query = kql.parse("Resources | project properties.provisioningState, tags['env']")
        assert query.columns == (
            ("properties_provisioningState", "dynamic"),
            ("tags_env", "dynamic"),
        )
        assert query.all_dynamic

    def test_lowercase_table_name_is_accepted(self) -> None:
        """ARG accepts 'resources' as well as 'Resources'."""
        assert len(kql.parse("resources").run(ROWS)) == len(ROWS)

    def test_limit_marks_query_limited(self) -> None:
        """'take' and 'limit' cut the rows and mark the query as unpageable."""
        query = kql.parse("Resources | take 2")
        assert query.limited
        assert len(query.run(ROWS)) == 2


class TestOperators:
    def test_case_sensitive_equality(self) -> None:
        """'==' compares exactly, '=~' ignores case."""
        exact = kql.parse(
            "Resources | where properties.encryption.keySource == 'Microsoft.KeyVault'"
        )
        loose = kql.parse(
            "Resources | where properties.encryption.keySource =~ 'MICROSOFT.KEYVAULT'"
        )
        assert [r["id"] for r in exact.run(ROWS)] == ["/a/b"]
        assert {r["id"] for r in loose.run(ROWS)} == {"/a/b", "/a/a"}

    def test_not_equal_drops_missing_values(self) -> None:
        """A comparison with a missing property is false, even '!='."""
        query = kql.parse("Resources | where properties.encryption.keySource != 'x'")
        assert {r["id"] for r in query.run(ROWS)} == {"/a/a", "/a/b"}

    def test_tostring_makes_missing_values_empty(self) -> None:
        """tostring(missing) is '', so '!=' on it keeps rows without the property."""
        query = kql.parse("Resources | where tostring(properties.encryption.keySource) != 'x'")
        assert len(query.run(ROWS)) == 4

    def test_bracket_paths_equal_dotted_paths(self) -> None:
        """properties['encryption'].keySource reads the same value as the dotted path."""
        query = kql.parse(
            "Resources | where properties['encryption']['keySource'] == 'Microsoft.KeyVault'"
        )
        assert [r["id"] for r in query.run(ROWS)] == ["/a/b"]

    def test_and_or_not_and_parentheses(self) -> None:
        """Boolean operators combine predicates with the usual precedence."""
        query = kql.parse(
            "Resources | where type =~ 'microsoft.keyvault/vaults' or "
            "(isnotempty(properties.encryption) and not(name == 'b'))"
        )
        assert {r["id"] for r in query.run(ROWS)} == {"/a/a", "/v/1"}

    def test_in_and_case_insensitive_in(self) -> None:
        """'in' matches exactly within a list, 'in~' ignoring case, '!in' negates."""
        rows = ROWS
        assert len(kql.parse("Resources | where name in ('a', 'B')").run(rows)) == 1
        assert len(kql.parse("Resources | where name in~ ('a', 'B')").run(rows)) == 2
        assert len(kql.parse("Resources | where name !in ('a', 'b')").run(rows)) == 2

    def test_string_operators(self) -> None:
        """contains/startswith/endswith/has ignore case."""
        assert len(kql.parse("Resources | where id contains '/A/'").run(ROWS)) == 3
        assert len(kql.parse("Resources | where id startswith '/V'").run(ROWS)) == 1
        assert len(kql.parse("Resources | where type endswith 'ACCOUNTS'").run(ROWS)) == 3
        assert len(kql.parse("Resources | where type has 'keyvault'").run(ROWS)) == 1

    def test_extend_then_filter_on_new_column(self) -> None:
        """An extended column can be used by later operators."""
        query = kql.parse(
            "Resources | extend source = tolower(tostring(properties.encryption.keySource)) "
            "| where source == 'microsoft.keyvault' | project id, source"
        )
        assert {(r["id"], r["source"]) for r in query.run(ROWS)} == {
            ("/a/a", "microsoft.keyvault"),
            ("/a/b", "microsoft.keyvault"),
        }

    def test_order_by_defaults_to_descending(self) -> None:
        """Kusto's 'order by' without direction sorts descending, nulls last."""
        rows = kql.parse("Resources | order by name").run(ROWS)
        assert [r["name"] for r in rows] == ["kv", "c", "b", "a"]

    def test_count(self) -> None:
        """'count' yields one row with the number of rows."""
        assert kql.parse("Resources | where name != 'kv' | count").run(ROWS) == [{"Count": 3}]

    def test_project_away_removes_columns(self) -> None:
        """project-away drops the named columns."""
        rows = kql.parse("Resources | project id, name | project-away name").run(ROWS)
        assert rows[0] == {"id": "/a/b"}

    def test_numbers_compare_numerically(self) -> None:
        """'<' and '>' compare numbers by value."""
        rows: list[kql.Row] = [
            {"id": "1", "properties": {"n": 9}},
            {"id": "2", "properties": {"n": 10}},
        ]
        query = kql.parse("Resources | where properties.n > 9")
        assert [r["id"] for r in query.run(rows)] == ["2"]


GROUPED: list[kql.Row] = [
    {"id": "1", "type": "a", "location": "x", "properties": {"keySource": "Microsoft.KeyVault"}},
    {"id": "2", "type": "a", "location": "y", "properties": {}},
    {"id": "3", "type": "b", "location": "x", "properties": None},
    {"id": "4", "type": "a", "location": None, "properties": {"keySource": "Microsoft.KeyVault"}},
]


class TestSummarize:
    def test_count_by_key_names_columns_as_kusto(self) -> None:
        """summarize count() by type: key column, then count_, one row per key."""
        query = kql.parse("Resources | summarize count() by type")
        assert query.columns == (("type", "string"), ("count_", "long"))
        assert query.run(GROUPED) == [{"type": "a", "count_": 3}, {"type": "b", "count_": 1}]

    def test_aggregates_and_their_default_names(self) -> None:
        """countif_, dcount_<col>, set_<col>; dcount and make_set ignore nulls."""
        query = kql.parse(
            "Resources | summarize countif(properties.keySource == 'Microsoft.KeyVault'), "
            "dcount(location), make_set(location) by type"
        )
        assert [name for name, _ in query.columns] == [
            "type",
            "countif_",
            "dcount_location",
            "set_location",
        ]
        assert query.run(GROUPED) == [
            {"type": "a", "countif_": 2, "dcount_location": 2, "set_location": ["x", "y"]},
            {"type": "b", "countif_": 0, "dcount_location": 1, "set_location": ["x"]},
        ]

    def test_without_by_one_row_even_over_nothing(self) -> None:
        """No by: exactly one row; over no rows count_ is 0."""
        query = kql.parse("Resources | where type == 'none' | summarize n = count()")
        assert query.run(GROUPED) == [{"n": 0}]
        grouped = kql.parse("Resources | where type == 'none' | summarize count() by type")
        assert grouped.run(GROUPED) == []

    def test_key_reading_a_path_takes_its_name(self) -> None:
        """by tostring(properties.keySource) names the key properties_keySource; null groups."""
        query = kql.parse("Resources | summarize count() by tostring(properties.keySource)")
        assert query.columns[0] == ("properties_keySource", "string")
        assert query.run(GROUPED) == [
            {"properties_keySource": "Microsoft.KeyVault", "count_": 2},
            {"properties_keySource": "", "count_": 2},
        ]

    def test_keys_only_and_later_operators_see_new_columns(self) -> None:
        """summarize by a, b is a distinct; later where/order by use the new columns."""
        query = kql.parse(
            "Resources | summarize c = count() by type, location "
            "| where c >= 1 | order by type asc, c desc"
        )
        assert [(r["type"], r["location"], r["c"]) for r in query.run(GROUPED)] == [
            ("a", "x", 1),
            ("a", "y", 1),
            ("a", None, 1),
            ("b", "x", 1),
        ]
        with pytest.raises(kql.KqlError):
            kql.parse("Resources | summarize count() by type | where location == 'x'")

    def test_make_set_honours_max_size(self) -> None:
        """make_set(expr, n) keeps at most n values."""
        query = kql.parse("Resources | summarize make_set(id, 2)")
        assert query.run(GROUPED) == [{"set_id": ["1", "2"]}]


class TestArgMaxArgMin:
    """arg_max / arg_min: the row of each group where an expression is greatest / least."""

    def test_arg_max_star_returns_the_whole_row_after_the_keys(self) -> None:
        """arg_max(id, *) by type: type, id, then every other input column in order."""
        query = kql.parse(
            "Resources | project id, type, location, properties | summarize arg_max(id, *) by type"
        )
        assert [name for name, _ in query.columns] == ["type", "id", "location", "properties"]
        assert query.run(GROUPED) == [
            {"type": "a", **{k: v for k, v in GROUPED[3].items() if k != "type"}},
            {"type": "b", **{k: v for k, v in GROUPED[2].items() if k != "type"}},
        ]

    def test_arg_min_with_named_columns_and_other_aggregates(self) -> None:
        """arg_min(id, location), count() by type: the columns in the order written."""
        query = kql.parse("Resources | summarize arg_min(id, location), count() by type")
        assert [name for name, _ in query.columns] == ["type", "id", "location", "count_"]
        assert query.run(GROUPED) == [
            {"type": "a", "id": "1", "location": "x", "count_": 3},
            {"type": "b", "id": "3", "location": "x", "count_": 1},
        ]

    def test_nulls_are_skipped_and_an_expression_is_named_max_column(self) -> None:
        """A null is never the maximum; a non-column expression is max_<column>."""
        query = kql.parse("Resources | summarize arg_max(tostring(location), id)")
        assert query.columns[0] == ("max_location", "string")
        assert query.run(GROUPED) == [{"max_location": "y", "id": "2"}]
        over_nulls = kql.parse("Resources | summarize arg_max(properties.keySource, id)")
        assert over_nulls.run(GROUPED) == [
            {"max_properties_keySource": "Microsoft.KeyVault", "id": "1"}
        ]

    def test_latest_version_per_key_idiom(self) -> None:
        """The inventory idiom: newest row per group, later operators see its columns."""
        query = kql.parse(
            "Resources | summarize arg_max(id, *) by location | project location, id "
            "| order by id asc"
        )
        assert query.run(GROUPED) == [
            {"location": "y", "id": "2"},
            {"location": "x", "id": "3"},
            {"location": None, "id": "4"},
        ]


class TestDistinctTopCount:
    def test_distinct_star_is_every_column(self) -> None:
        """distinct * keeps one row per distinct whole row."""
        query = kql.parse("Resources | distinct *")
        assert [name for name, _ in query.columns] == list(kql.RESOURCES_SCHEMA)
        rows = [{name: row.get(name) for name in kql.RESOURCES_SCHEMA} for row in GROUPED]
        assert query.run([*GROUPED, GROUPED[1]]) == rows

    def test_dcount_accepts_an_accuracy_level(self) -> None:
        """dcount(expr, 0..4): the level is accepted and the count stays exact."""
        query = kql.parse("Resources | summarize dcount(location, 4) by type")
        assert query.run(GROUPED) == [
            {"type": "a", "dcount_location": 2},
            {"type": "b", "dcount_location": 1},
        ]
        with pytest.raises(kql.KqlError):
            kql.parse("Resources | summarize dcount(location, 5)")

    def test_distinct_keeps_one_row_per_tuple(self) -> None:
        """distinct type, location: columns narrowed, duplicates dropped, null is a value."""
        query = kql.parse("Resources | distinct type, location")
        assert query.columns == (("type", "string"), ("location", "string"))
        assert query.run([*GROUPED, GROUPED[0]]) == [
            {"type": "a", "location": "x"},
            {"type": "a", "location": "y"},
            {"type": "b", "location": "x"},
            {"type": "a", "location": None},
        ]

    def test_top_orders_then_takes(self) -> None:
        """top 2 by id asc is order by id asc | take 2, and never pages."""
        query = kql.parse("Resources | top 2 by id asc")
        assert [r["id"] for r in query.run(GROUPED)] == ["1", "2"]
        assert query.limited
        assert [r["id"] for r in kql.parse("Resources | top 1 by id").run(GROUPED)] == ["4"]

    def test_count_operator(self) -> None:
        """count leaves one Count column."""
        assert kql.parse("Resources | count").run(GROUPED) == [{"Count": 4}]

    @pytest.mark.parametrize(
        "query",
        [
            "Resources | summarize",
            "Resources | summarize count() by",
            "Resources | summarize count(), count()",
            "Resources | distinct nosuchcolumn",
            "Resources | top x by id",
            "Resources | top 3",
        ],
    )
    def test_malformed_grouping_is_a_parser_failure(self, query: str) -> None:
        """Broken summarize/distinct/top fail to parse rather than guess."""
        with pytest.raises(kql.KqlError) as caught:
            kql.parse(query)
        assert not caught.value.unsupported


class TestDynamicKeys:
    """Kusto refuses to group by a dynamic value (microsoft/Kusto-Query-Language#61); a cast
    makes the key a string."""

    @pytest.mark.parametrize(
        ("query", "key"),
        [
            ("Resources | summarize count() by identity.type", "identity_type"),
            (
                "Resources | summarize count() by properties.encryption.keyVaultProperties.keyName",
                "properties_encryption_keyVaultProperties_keyName",
            ),
            ("Resources | summarize count() by k = properties.keySource", "k"),
            ("Resources | summarize by tags", "tags"),
            ("Resources | summarize arg_max(id, *) by identity", "identity"),
            ("Resources | distinct identity", "identity"),
            ("Resources | distinct type, properties", "properties"),
            ("Resources | mv-expand zones | summarize count() by zones", "zones"),
        ],
    )
    def test_dynamic_key_is_refused(self, query: str, key: str) -> None:
        """A dynamic key is a semantic error naming it, not a row per JSON text."""
        with pytest.raises(kql.KqlError) as caught:
            kql.parse(query)
        assert caught.value.semantic and not caught.value.unsupported
        assert caught.value.message.startswith(
            f"Summarize group key '{key}' is of a 'dynamic' type. Please use an explicit cast"
        )

    def test_cast_keys_group(self) -> None:
        """tostring(...) of the same paths groups, the key named after the path it reads."""
        query = kql.parse(
            "Resources | summarize count() by tostring(properties.keySource), "
            "t = tostring(type), tostring(properties)"
        )
        assert [kind for _, kind in query.columns] == ["string", "string", "string", "long"]
        assert [name for name, _ in query.columns][:2] == ["properties_keySource", "t"]
        assert len(query.run(GROUPED)) == 3  # rows 1 and 4 share every key
        distinct = kql.parse("Resources | extend s = tostring(properties) | distinct s")
        assert len(distinct.run(GROUPED)) == 3


class TestMvExpand:
    ROWS: tuple[kql.Row, ...] = (
        {"id": "1", "zones": ["1", "2"], "tags": {"a": "x", "b": "y"}},
        {"id": "2", "zones": [], "tags": None},
        {"id": "3", "zones": None, "tags": {}},
    )

    def test_array_gives_a_row_per_element(self) -> None:
        """An array expands per element; empty gives no row; null keeps one null row."""
        query = kql.parse("Resources | mv-expand zones | project id, zones")
        assert query.run(list(self.ROWS)) == [
            {"id": "1", "zones": "1"},
            {"id": "1", "zones": "2"},
            {"id": "3", "zones": None},
        ]

    def test_bag_gives_single_entry_bags_under_a_new_name(self) -> None:
        """A property bag expands to {key: value} bags; name = puts them in a new column."""
        query = kql.parse("Resources | mv-expand tag = tags | project id, tag")
        assert query.columns == (("id", "string"), ("tag", "dynamic"))
        assert query.run(list(self.ROWS)) == [
            {"id": "1", "tag": {"a": "x"}},
            {"id": "1", "tag": {"b": "y"}},
            {"id": "2", "tag": None},
        ]


FUNCTION_ROWS: list[kql.Row] = [
    {"id": "1", "name": "ai-a", "kind": "AIServices", "zones": ["1", "2"], "properties": {"n": 3}},
    {"id": "2", "name": "ai-b", "kind": "OpenAI", "zones": [], "properties": {"n": "4"}},
    {"id": "3", "name": "kv", "kind": "", "zones": None, "properties": {}},
]


class TestFunctions:
    """The scalar functions and aggregates operators type most, beyond the first subset."""

    def column(self, expression: str) -> list[object]:
        query = kql.parse(f"Resources | order by id asc | project v = {expression}")
        return [row["v"] for row in query.run(FUNCTION_ROWS)]

    def test_iff_and_case(self) -> None:
        """iff(p, a, b) and case(p1, v1, p2, v2, else): the first true branch, else the last."""
        assert self.column("iff(kind =~ 'openai', 'oai', 'other')") == ["other", "oai", "other"]
        assert self.column("iif(isempty(kind), 1, 0)") == [0, 0, 1]
        assert self.column("case(kind == 'AIServices', 'ai', kind == 'OpenAI', 'oai', 'none')") == [
            "ai",
            "oai",
            "none",
        ]

    def test_strcat_split_and_array_length(self) -> None:
        """strcat joins the text of each argument (null is ''); split gives an array;
        array_length counts one (null for anything else)."""
        assert self.column("strcat(name, '/', kind, properties.missing)") == [
            "ai-a/AIServices",
            "ai-b/OpenAI",
            "kv/",
        ]
        assert self.column("split(name, '-')") == [["ai", "a"], ["ai", "b"], ["kv"]]
        assert self.column("array_length(zones)") == [2, 0, None]
        assert self.column("array_length(split(name, '-'))") == [2, 2, 1]
        assert self.column("toupper(tolower(kind))") == ["AISERVICES", "OPENAI", ""]

    def test_numeric_casts(self) -> None:
        """tolong/todouble convert numbers and numeric text; anything else is null."""
        assert self.column("tolong(properties.n)") == [3, 4, None]
        assert self.column("todouble(properties.n)") == [3.0, 4.0, None]

    def test_max_min_sum(self) -> None:
        """max()/min() skip nulls; sum() adds numbers; default names max_/min_/sum_<col>."""
        query = kql.parse(
            "Resources | summarize max(name), min(name), sum(tolong(properties.n)), "
            "total = sum(array_length(zones))"
        )
        assert query.columns == (
            ("max_name", "string"),
            ("min_name", "string"),
            ("sum_properties_n", "long"),
            ("total", "long"),
        )
        assert query.run(FUNCTION_ROWS) == [
            {"max_name": "kv", "min_name": "ai-a", "sum_properties_n": 7, "total": 2}
        ]
        empty = kql.parse("Resources | where id == 'x' | summarize sum(tolong(properties.n))")
        assert empty.run(FUNCTION_ROWS) == [{"sum_properties_n": 0}]

    @pytest.mark.parametrize(
        "query",
        [
            "Resources | where iff(true, 1) == 1",
            "Resources | where case(true, 1) == 1",
            "Resources | where split(name) == 1",
            "Resources | where tostring(name, 1) == 'a'",
        ],
    )
    def test_wrong_number_of_arguments_is_a_parser_failure(self, query: str) -> None:
        """A known function with the wrong arity is refused, not guessed."""
        with pytest.raises(kql.KqlError) as caught:
            kql.parse(query)
        assert not caught.value.unsupported


class TestRejects:
    @pytest.mark.parametrize(
        ("query", "token"),
        [
            ("Resources | summarize avg(1) by type", "avg"),
            ("Resources | summarize percentile(strlen(name), 50)", "percentile"),
            ("Resources | summarize latest = arg_max(name, *)", "arg_max"),
            ("Resources | join (Resources) on id", "join"),
            ("Resources | mv-expand kind=array tags", "kind"),
            ("Resources | mv-expand zones, tags", ","),
            ("ResourceContainers | take 1", "ResourceContainers"),
            ("Resources | where extract('a', 0, name) == 'a'", "extract"),
            ("Resources | where todatetime(properties.created) > ago(1d)", "todatetime"),
        ],
    )
    def test_valid_kql_outside_subset_is_unsupported(self, query: str, token: str) -> None:
        """Real KQL the sandbox cannot evaluate is rejected as unsupported, naming the token."""
        with pytest.raises(kql.KqlError) as caught:
            kql.parse(query)
        assert caught.value.unsupported
        assert caught.value.token == token

    @pytest.mark.parametrize(
        "query",
        [
            "Resources | where",
            "Resources | where name == ",
            "Resources | where nosuchcolumn == 'a'",
            "Resources | project id,",
            "Resources | take x",
            "Resources | order by id sideways",
            "Resources | where name == 'unterminated",
        ],
    )
    def test_syntax_errors_are_parser_failures(self, query: str) -> None:
        """Broken queries fail with ParserFailure and a position, never a result."""
        with pytest.raises(kql.KqlError) as caught:
            kql.parse(query)
        assert not caught.value.unsupported
        assert caught.value.message == "ParserFailure"
        assert caught.value.line == 1

    def test_error_position_counts_lines(self) -> None:
        """The error's line and column point at the offending token."""
        with pytest.raises(kql.KqlError) as caught:
            kql.parse("Resources\n| where bogus == 1")
        assert (caught.value.line, caught.value.position, caught.value.token) == (2, 8, "bogus")


_text = st.text(alphabet=st.characters(codec="ascii", exclude_characters="'\\\n"), max_size=12)


class TestProperties:
    @given(value=_text, probe=_text)
    def test_case_insensitive_equality_matches_python(self, value: str, probe: str) -> None:
        """'=~' on a string literal agrees with Python's lower-case comparison."""
        query = kql.parse(f"Resources | where name =~ '{probe}'")
        assert bool(query.run([{"name": value}])) == (value.lower() == probe.lower())

    @given(values=st.lists(_text, max_size=30))
    def test_order_by_asc_sorts_like_python(self, values: list[str]) -> None:
        """'order by name asc' is Python's ordinal sort."""
        rows: list[kql.Row] = [{"name": v} for v in values]
        result = kql.parse("Resources | order by name asc").run(rows)
        assert [r["name"] for r in result] == sorted(values)

    @given(value=st.one_of(st.none(), st.booleans(), st.integers(), _text))
    def test_tostring_never_fails(self, value: object) -> None:
        """tostring() turns any scalar into text, null into ''."""
        rows = kql.parse("Resources | project v = tostring(properties.v)").run(
            [{"properties": {"v": value}}]
        )
        text = rows[0]["v"]
        assert isinstance(text, str)
        assert (text == "") == (value is None or value == "")
