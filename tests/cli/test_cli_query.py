"""--query's result shown as the Azure CLI shows it (pure: no Azure)."""

from __future__ import annotations

import pytest

from cmk.commands.query import InvalidQueryError, Query, result_table, tsv_lines


class TestTsv:
    def test_a_list_of_values_is_one_line_each(self):
        assert tsv_lines(["a", 1, True, None]) == ["a", "1", "true", ""]

    def test_an_object_is_its_values_by_sorted_key(self):
        """Nested lists become their length, nested objects an empty field (az's rules)."""
        assert tsv_lines({"b": 2, "a": "x", "c": [1, 2, 3], "d": {"e": 1}}) == ["x\t2\t3\t"]

    def test_a_list_of_objects_is_one_row_each(self):
        assert tsv_lines([{"id": "a", "n": 1}, {"id": "b", "n": 2}]) == ["a\t1", "b\t2"]

    def test_no_result_prints_nothing(self):
        assert tsv_lines(None) == []

    def test_values_stay_on_one_line(self):
        [line] = tsv_lines(["two\nlines\tand a tab"])
        assert "\n" not in line and "\t" not in line and line.endswith("and a tab")


class TestTable:
    """As the Azure CLI's -o table (knack's _auto_table)."""

    def test_objects_become_columns_without_list_or_object_values(self):
        shown = result_table([{"id": "a", "n": 1, "tags": {"x": 1}}, {"id": "b", "extra": [1, 2]}])
        assert shown is not None
        assert shown.column_names == ["id", "n"]
        assert [[c.plain for c in row] for row in shown.cells] == [["a", "1"], ["b", "-"]]

    def test_a_list_of_lists_is_column1_column2(self):
        shown = result_table([["a", 1], ["b", 2, True]])
        assert shown is not None
        assert shown.column_names == ["Column1", "Column2", "Column3"]
        assert [[c.plain for c in row] for row in shown.cells] == [
            ["a", "1", "-"],
            ["b", "2", "yes"],
        ]

    @pytest.mark.parametrize(("value", "text"), [(12, "12"), ("x", "x"), (False, "no")])
    def test_a_value_is_a_one_cell_table_headed_result(self, value, text):
        shown = result_table(value)
        assert shown is not None and shown.column_names == ["Result"]
        assert [[c.plain for c in row] for row in shown.cells] == [[text]]

    def test_a_list_of_values_is_one_result_column(self):
        shown = result_table(["a", "b"])
        assert shown is not None and shown.column_names == ["Result"]
        assert len(shown.cells) == 2

    def test_an_object_is_one_row(self):
        shown = result_table({"a": 1, "b": [1]})
        assert shown is not None and shown.column_names == ["a"]

    def test_an_empty_list_is_no_table(self):
        assert result_table([]) is None


class TestQuery:
    def test_search(self):
        assert Query("a[?n > `1`].id").search(
            {"a": [{"id": "x", "n": 1}, {"id": "y", "n": 2}]}
        ) == ["y"]

    @pytest.mark.parametrize("expression", ["a[?", "", "a..b"])
    def test_invalid_expression_is_refused_with_the_reason(self, expression):
        """az's words, and the reason on one line."""
        with pytest.raises(InvalidQueryError, match=r"^Invalid jmespath query supplied") as e:
            Query(expression)
        assert "\n" not in str(e.value)

    @pytest.mark.parametrize(
        ("expression", "reason"),
        [
            ("foo(bar)", "Unknown function: foo()"),
            ("a[?contains(b, 'x')].{x: tostring(c)}", "Unknown function: tostring()"),
            ("sort_by(a, &nope(b))", "Unknown function: nope()"),
            ("length(a, b)", "length() takes exactly 1 argument(s), 2 given"),
            ("not_null()", "not_null() takes at least 1 argument(s), 0 given"),
        ],
    )
    def test_unknown_functions_are_refused_when_parsed(self, expression, reason):
        """Functions are checked against jmespath's built-ins anywhere in the expression."""
        with pytest.raises(InvalidQueryError) as refused:
            Query(expression)
        assert str(refused.value) == f"Invalid jmespath query supplied for `--query`: {reason}"

    @pytest.mark.parametrize(
        "expression", ["sort_by(a, &b)", "not_null(a, b, c)", "a[1:2] | max(@)", "`{}`"]
    )
    def test_built_in_functions_pass(self, expression):
        Query(expression)
