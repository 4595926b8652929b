"""Tables that fit: on a terminal a table is never wider than the console (every line ends
with its right border), the columns left out are named under it, and the bound and newest
versions outlast the words about them; off a terminal the columns that are the point of a
table are not cut to a stub. Rendered with rich at fixed widths, as :class:`Output` does."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from cli_rig import CLI_DOC, World
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment

from cmk.commands import history, status, tables, versions
from cmk.commands.cells import DataTable, fit, table
from cmk.commands.lifecycle import _scope_name
from cmk.keyid import KeyId

#: A key id in the docs: vault or Managed HSM, key name, and a version if any.
KEY_ID = re.compile(
    r"https://[A-Za-z0-9-]+\.(?:vault|managedhsm)\.azure\.net/keys/[A-Za-z0-9-]+(?:/[0-9a-f]{32})?"
)
#: The last character of each line of a table: its right border.
RIGHT_BORDERS = frozenset("┓┃┩│┘")
NOW = datetime(2027, 3, 1, 12, 30, 45)
VERSIONS = ["0d6f1e2a9c3b4d5e8f7a6b5c4d3e2f1a", "9a8b7c6d5e4f40312a1b2c3d4e5f6a7b"]
GRANT = (
    "role assignment /subscriptions/7b2d5c68-1c8f-4e7f-8b52-2a1d3b4c5d01/resourceGroups/"
    "rg-keys/providers/Microsoft.KeyVault/vaults/kv-cmk-weu/keys/ai-cmk/providers/"
    "Microsoft.Authorization/roleAssignments/{n}a6b9e26-6ba9-42a4-9976-10fe164509b2 (Key Vault"
    " Crypto Service Encryption User) at scope /subscriptions/7b2d5c68-1c8f-4e7f-8b52-"
    "2a1d3b4c5d01/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/kv-cmk-weu/keys/"
    "ai-cmk"
)


def _account(n: int) -> str:
    return f"rg-ai-weu/ai-prod-weu-{n:02d}"


def _status() -> DataTable:
    """`cmk status` of the audit's world: 24 accounts on kv-cmk-weu/ai-cmk, half stale."""
    rows = [
        (
            _account(n),
            "7b2d5c68-1c8f-4e7f-8b52-2a1d3b4c5d02",
            "kv-cmk-weu/ai-cmk",
            VERSIONS[n % 2][:8],
            VERSIONS[0][:8],
            "stale" if n % 2 else "current",
            "12.3d",
            f"newer version {VERSIONS[0]} replaces {VERSIONS[1]}" if n % 2 else None,
        )
        for n in range(1, 25)
    ]
    return table("24 CMK accounts", status.COLUMNS, rows, optional=status.OPTIONAL)


def _versions(optional: tuple[str, ...] | None = versions.OPTIONAL) -> DataTable:
    """`cmk versions https://kv-cmk-weu.vault.azure.net/keys/ai-cmk` after a new version."""
    names = ", ".join(_account(n) for n in range(1, 4))
    rows = [
        (VERSIONS[0], "latest, newest valid", True, NOW, NOW + timedelta(days=365), "yes", "0"),
        (VERSIONS[1], "", True, NOW, NOW + timedelta(days=300), "yes", f"24: {names} (+21 more)"),
    ]
    rows = [(*row, "no") for row in rows]
    title = "https://kv-cmk-weu.vault.azure.net/keys/ai-cmk"
    return table(title, versions.COLUMNS, rows, optional=optional)


def _history() -> DataTable:
    rows = [
        (
            NOW - timedelta(minutes=n),
            _account(n),
            "kv-cmk-weu/ai-cmk-exp",
            f"{VERSIONS[1][:8]} -> {VERSIONS[0][:8]}",
            "succeeded" if n % 3 else "failed",
            n % 3 + 1,
            "cli:rotate",
            None if n % 3 else "KeyAccessDenied: the identity lost wrapKey on the key",
        )
        for n in range(1, 9)
    ]
    return table("8 ledger rows (newest first)", history.COLUMNS, rows, optional=history.OPTIONAL)


def _revocations() -> DataTable:
    """`cmk check --all`'s revocations, as cmk/commands/lifecycle.py builds them."""
    rows = [
        (GRANT.format(n=0), ", ".join(f"ai-prod-weu-{n:02d}" for n in range(1, 25))),
        *((GRANT.format(n=n), f"ai-dev-{n:02d}") for n in range(1, 4)),
    ]
    return table("Revoking would cut off", ("grant", "accounts"), rows)


def _every_table() -> dict[str, DataTable]:
    """A table of each kind the CLI prints, with the values of a real world."""
    key = KeyId.parse("https://kv-cmk-weu.vault.azure.net/keys/ai-cmk")
    moves = [
        (_account(n), key, f"{VERSIONS[1][:8]} -> {VERSIONS[0][:8]}", "normal", "newer version")
        for n in range(1, 4)
    ]
    fix = "az role assignment create --role 'Key Vault Crypto Service Encryption User' ..."
    return {
        "status": _status(),
        "versions": _versions(),
        "versions, default order": _versions(None),
        "history": _history(),
        "revocations": _revocations(),
        "moves": table(
            "Moves",
            ("account", "key", "version", "priority", "reason"),
            moves,
            optional=tables.MOVES_OPTIONAL,
        ),
        "findings": table(
            "Findings",
            ("kind", "subject", "key", "detail"),
            [("unsafe_binding", _account(1), key, "bound version expires in 3 days")],
            optional=tables.FINDINGS_OPTIONAL,
        ),
        "jobs": table(
            "Accounts",
            ("account", "key", "to", "result", "attempts", "cause"),
            [(_account(1), key, VERSIONS[0][:8], "failed", 3, "KeyAccessDenied: no wrapKey")],
            optional=tables.JOBS_OPTIONAL,
        ),
        "requirements": table(
            f"{_account(1)} — {key}",
            ("result", "requirement", "found", "fix"),
            [("failed", "identity can wrap and unwrap", "no role on the key", fix)],
        ),
        "smoke": table(
            "cmk smoke", ("check", "result", "found", "fix"), [("ledger", "ok", "", "")]
        ),
        "replay": table(
            "1 event",
            ("#", "event id", "type", "key", "outcome", "enqueued", "detail"),
            [
                (
                    1,
                    "5d1f0c7e-1b0a-4c55-9a8e-0f1e2d3c4b5a",
                    "KeyNewVersionCreated",
                    key,
                    "ok",
                    24,
                    "",
                )
            ],
        ),
    }


def _render(data: DataTable, width: int, *, terminal: bool = True) -> tuple[DataTable, list[str]]:
    """``data`` fitted as :class:`Output` fits it, and its lines as rendered (not cut at
    the console's edge, as a terminal would cut them)."""
    console = Console(
        width=width,
        force_terminal=terminal,
        color_system=None,
        highlight=False,
        markup=False,
        emoji=False,
    )
    fitted = fit(console, data)
    options = console.options.update_width(fitted.line_width or width)
    lines = Segment.split_lines(console.render(fitted, options))
    return fitted, ["".join(segment.text for segment in line).rstrip() for line in lines]


def _table_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line[:1] in "┏┃┡│└"]


def _header(lines: list[str]) -> list[str]:
    """The column names of a rendered table (a header may wrap over several lines)."""
    parts: list[list[str]] = []
    for line in lines:
        if not line.startswith("┃"):
            continue
        for index, text in enumerate(line.strip("┃").split("┃")):
            if index == len(parts):
                parts.append([])
            parts[index].extend(text.split())
    return [" ".join(words) for words in parts]


def _caption(lines: list[str]) -> str:
    """The words under the table, on one line."""
    end = max(i for i, line in enumerate(lines) if line.startswith("└"))
    return " ".join(" ".join(lines[end + 1 :]).split())


class TestNeverWiderThanTheConsole:
    @pytest.mark.parametrize("width", [40, 60, 80, 100, 120, 160, 200])
    @pytest.mark.parametrize("kind", list(_every_table()))
    def test_every_line_ends_with_its_border(self, kind: str, width: int):
        """Each table the CLI prints, on a terminal `width` columns wide: no line is wider,
        and each line of the table ends with its right border (none is cut at the edge)."""
        _, lines = _render(_every_table()[kind], width)
        assert all(cell_len(line) <= width for line in lines), "\n".join(lines)
        rows = _table_lines(lines)
        assert rows and all(line[-1] in RIGHT_BORDERS for line in rows), "\n".join(lines)

    @pytest.mark.parametrize("width", [80, 120])
    def test_versions_of_the_audit(self, width: int):
        """The audit's `cmk versions` on 80 and 120 columns: `safe to disable` whole, with
        its border (it was `safe to dis` with none, the rows cut at the edge)."""
        _, lines = _render(_versions(None), width)
        assert max(cell_len(line) for line in lines) <= width, "\n".join(lines)
        assert "safe to disable" in _header(lines), "\n".join(lines)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        names=st.lists(
            st.sampled_from(
                [
                    "account",
                    "key",
                    "state",
                    "detail",
                    "safe to disable",
                    "event id",
                    "bound",
                    "cause",
                    "#",
                    "fix",
                    "accounts",
                    "expires",
                ]
            ),
            min_size=1,
            max_size=8,
            unique=True,
        ),
        texts=st.lists(
            st.one_of(
                st.text(alphabet="abcdefghij-/0123456789", min_size=1, max_size=70),
                st.text(alphabet="abc de/fgh ij-", max_size=120),
                st.text(alphabet="界字", max_size=30),
            ),
            min_size=1,
            max_size=24,
        ),
        width=st.integers(min_value=40, max_value=220),
    )
    def test_any_table_at_any_width(self, names: list[str], texts: list[str], width: int):
        """Any columns and any cells (wide characters included): the table is never wider
        than the terminal, every table line ends with its border, and the columns shown and
        the columns the caption names are all the columns."""
        rows = [
            [
                NOW + timedelta(days=i) if name == "expires" else texts[(i + j) % len(texts)]
                for j, name in enumerate(names)
            ]
            for i in range(3)
        ]
        fitted, lines = _render(table("t", names, rows), width)
        assert all(cell_len(line) <= width for line in lines), "\n".join(lines)
        assert all(line[-1] in RIGHT_BORDERS for line in _table_lines(lines)), "\n".join(lines)
        assert sorted([*fitted.column_names, *fitted.left_out]) == sorted(names)
        for name in fitted.left_out:
            assert name in _caption(lines), "\n".join(lines)


class TestLeftOutColumnsAreNamed:
    @pytest.mark.parametrize(
        ("kind", "width", "shown"),
        [
            ("status", 80, ["account", "key", "bound", "newest", "state"]),
            ("status", 100, ["account", "key", "bound", "newest", "state", "age"]),
            ("status", 120, ["account", "key", "bound", "newest", "state", "age", "detail"]),
            ("versions", 80, ["version", "expires", "bindable", "safe to disable"]),
            ("history", 80, ["updated", "account", "version", "state"]),
        ],
    )
    def test_caption_names_every_column_left_out(self, kind: str, width: int, shown: list[str]):
        """On a narrow terminal the caption under the table names each column left out (not
        only the free text) and where to see it; bound and newest versions are kept before
        the subscription, the age and the detail."""
        data = _every_table()[kind]
        _, lines = _render(data, width)
        assert _header(lines) == shown, "\n".join(lines)
        left_out = [name for name in data.column_names if name not in shown]
        names = f"{', '.join(left_out[:-1])} and {left_out[-1]}" if left_out[1:] else left_out[0]
        them = "them" if left_out[1:] else "it"
        assert _caption(lines) == (
            f"{names} left out to fit {width} columns: a wider terminal, -o json or -o tsv"
            f" shows {them}"
        ), "\n".join(lines)

    def test_a_wide_terminal_shows_everything_and_says_nothing(self):
        """With room for every column, none is left out and there is no caption."""
        fitted, lines = _render(_status(), 200)
        assert _header(lines) == list(_status().column_names) and fitted.caption is None
        assert _caption(lines) == ""

    def test_names_stay_whole(self):
        """On 80 columns each account's `rg/name`, key and bound version are whole."""
        _, lines = _render(_status(), 80)
        text = "\n".join(lines)
        for n in range(1, 25):
            assert f"│ {_account(n)} │ kv-cmk-weu/ai-cmk │ {VERSIONS[n % 2][:8]} │" in text


class TestPipedTables:
    def test_accounts_a_revocation_cuts_off_are_not_a_stub(self):
        """`cmk check --all | …`: the accounts revoking a grant would cut off are not cut to
        `ai-prod-w…` to keep the grant's words whole; a short list is whole."""
        _, lines = _render(_revocations(), 200, terminal=False)
        rows = [line for line in lines if line.startswith("│")]
        assert len(rows) == 4, "\n".join(lines)
        for n in range(1, 4):
            assert any(re.search(f"│ ai-dev-{n:02d} +│$", line) for line in rows), lines
        assert "ai-prod-weu-01, ai-prod-weu-02, ai-prod-weu-03," in rows[0]
        assert all(cell_len(line) <= 200 for line in lines)

    def test_no_column_is_left_out_when_piped(self):
        """Off a terminal every column is printed (free text cut instead), so a script's
        `grep` sees the same columns at any width."""
        fitted, lines = _render(_status(), 80, terminal=False)
        assert _header(lines) == list(_status().column_names) and not fitted.left_out
        assert fitted.caption is None


class TestCli:
    def test_check_all_piped_keeps_the_accounts(self, world: World, cmk):
        """`cmk check --all`, piped: each account a grant alone serves is printed whole on
        that grant's row (it was cut to ten characters while the grant took 300)."""
        revocations = cmk("check", "--all", "--json").json["revocations"]
        run = cmk("check", "--all")
        rows = run.out[run.out.index("Revoking would cut off") :].splitlines()
        single = [r for r in revocations if len(r["cut_off"]) == 1]
        assert single, revocations
        for revocation in single:
            parts = revocation["cut_off"][0].split("/")
            name = f"{parts[4]}/{parts[8]}"  # RESOURCE_GROUP/NAME, as every table prints it
            assert any(re.search(f"│ {name} +│$", line) for line in rows), (name, run.out)

    def test_check_all_names_a_grant_by_guid_role_and_scope(self, world: World, cmk):
        """A grant's cell starts with the assignment's GUID, then its role and scope — not
        the 200-character id, which ``-o tsv`` keeps whole with every account; a grant
        that cuts off more accounts than a cell holds has them all listed under it."""
        revocations = cmk("check", "--all", "--json").json["revocations"]
        run = cmk("check", "--all")
        table_part = run.out[run.out.index("Revoking would cut off") :]
        tsv = cmk("check", "--all", "-o", "tsv").out
        roles = [r for r in revocations if r["grant"]["kind"] == "role assignment"]
        assert roles, revocations
        for revocation in roles:
            grant_id = revocation["grant"]["id"]
            role = revocation["grant"]["role_name"]
            guid = grant_id.rsplit("/", 1)[-1]
            assert f"│ {guid}: {role} on vault " in table_part, table_part
            assert grant_id not in table_part
            assert grant_id in tsv
        many = [r for r in revocations if len(r["cut_off"]) > 3]
        assert many, revocations
        for revocation in many:
            names = ", ".join(
                "/".join(account.split("/")[i] for i in (4, 8)) for account in revocation["cut_off"]
            )
            assert f"cuts off all {len(revocation['cut_off'])}: {names}" in table_part


class TestScopeNames:
    @pytest.mark.parametrize(
        ("scope", "name"),
        [
            (
                "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"
                "/keys/cmk",
                "vault kv1, key cmk",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1",
                "vault kv1",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.KeyVault/managedHSMs/h1",
                "vault h1",
            ),
            ("/subscriptions/s1/resourceGroups/rg-keys", "resource group rg-keys"),
            ("/subscriptions/s1", "subscription s1"),
            ("/", "/"),
        ],
    )
    def test_a_scope_is_named_by_what_it_is(self, scope: str, name: str) -> None:
        assert _scope_name(scope) == name


class TestDocs:
    def test_key_ids_in_examples_are_accepted(self):
        """Every Key Vault key id in docs/cli.md's examples is one `cmk` accepts."""
        found = KEY_ID.findall(CLI_DOC.read_text())
        assert len(found) >= 3, found
        for key_id in found:
            KeyId.parse(key_id)
