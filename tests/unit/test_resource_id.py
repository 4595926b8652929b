"""Tests for cmk.resource_id: ARM ids of accounts and vaults."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmk.errors import InvalidResourceId
from cmk.resource_id import AccountId, VaultId, parse_subscription_id

SUB = "0a1b2c3d-0000-4000-8000-00000000abcd"
RG_AI = f"/subscriptions/{SUB}/resourceGroups/rg-ai"
ACCOUNT = f"{RG_AI}/providers/Microsoft.CognitiveServices/accounts/my-ai"
VAULT = f"/subscriptions/{SUB}/resourceGroups/rg-kv/providers/Microsoft.KeyVault/vaults/my-kv"
HSM = f"/subscriptions/{SUB}/resourceGroups/rg-kv/providers/Microsoft.KeyVault/managedHSMs/my-hsm"


class TestSubscriptionId:
    """parse_subscription_id accepts GUIDs only."""

    def test_lowercases(self) -> None:
        """A GUID in upper case comes back lowercase."""
        assert parse_subscription_id(SUB.upper()) == SUB

    @pytest.mark.parametrize("text", ["", "not-a-guid", SUB + "0", "{" + SUB + "}", 7])
    def test_rejects(self, text: object) -> None:
        """Anything but a bare GUID string raises InvalidResourceId."""
        with pytest.raises(InvalidResourceId):
            parse_subscription_id(text)


class TestAccountId:
    """AccountId parses, normalizes and formats Cognitive Services account ids."""

    def test_round_trip(self) -> None:
        """A canonical id formats back to itself."""
        account = AccountId.parse(ACCOUNT)
        assert str(account) == ACCOUNT
        assert (account.subscription_id, account.resource_group, account.name) == (
            SUB,
            "rg-ai",
            "my-ai",
        )

    def test_case_insensitive(self) -> None:
        """Segment and value case do not matter; the stored values are lowercase."""
        shouted = ACCOUNT.upper().replace("RESOURCEGROUPS", "resourcegroups")
        account = AccountId.parse(shouted)
        assert account == AccountId.parse(ACCOUNT)
        assert hash(account) == hash(AccountId.parse(ACCOUNT))
        assert str(account) == ACCOUNT

    def test_tolerates_trailing_slash_and_whitespace(self) -> None:
        """One trailing slash and surrounding whitespace are tolerated."""
        assert AccountId.parse(f"  {ACCOUNT}/\n") == AccountId.parse(ACCOUNT)

    def test_constructor_normalizes(self) -> None:
        """Building from parts normalizes like parse."""
        assert AccountId(SUB.upper(), "RG-AI", "My-AI") == AccountId.parse(ACCOUNT)

    def test_resource_group_characters(self) -> None:
        """Resource groups may hold dots, underscores, parentheses and Unicode letters."""
        group = "Rg_(Prod).eu-ö"
        account = AccountId.parse(ACCOUNT.replace("rg-ai", group))
        assert account.resource_group == group.lower()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (VAULT, "is not Microsoft.CognitiveServices/accounts"),
            (ACCOUNT.replace("accounts", "accountz"), "is not Microsoft.CognitiveServices"),
            (ACCOUNT + "/deployments/gpt", "path segments"),
            (ACCOUNT + "//", "path segments"),
            (ACCOUNT + "?api-version=1", "account name"),
            (ACCOUNT.replace(SUB, "nope"), "not a GUID"),
            (ACCOUNT.replace("/subscriptions", "/subscription"), "segments must be"),
            (ACCOUNT.replace("/providers", "/provider"), "segments must be"),
            (ACCOUNT[1:], "must start with /"),
            (ACCOUNT.replace("rg-ai", "rg."), "resource group"),
            (ACCOUNT.replace("rg-ai", "rg/x"), "path segments"),
            (ACCOUNT.replace("rg-ai", "r g"), "whitespace"),
            (ACCOUNT.replace("rg-ai", "rg#1"), "resource group"),
            (ACCOUNT.replace("rg-ai", "x" * 91), "resource group"),
            (ACCOUNT.replace("my-ai", "-ai"), "account name"),
            (ACCOUNT.replace("my-ai", "a"), "account name"),
            (ACCOUNT.replace("my-ai", "a" * 65), "account name"),
            (ACCOUNT.replace("my-ai", "my_ai"), "account name"),
            (ACCOUNT.replace("/accounts/my-ai", "/accounts/"), "path segments"),
            (ACCOUNT.replace("/accounts/my-ai", "/accounts/my ai"), "whitespace"),
            (ACCOUNT.replace("rg-ai", " rg-ai"), "whitespace"),
            (ACCOUNT.replace("my-ai", "my-ai\x00"), "control character"),
            ("", "path segments|must start"),
        ],
    )
    def test_rejects(self, text: str, message: str) -> None:
        """Other types, missing segments, trailing junk and bad names raise with a reason."""
        with pytest.raises(InvalidResourceId, match=message):
            AccountId.parse(text)

    def test_rejects_non_string(self) -> None:
        """A non-string raises InvalidResourceId, not TypeError."""
        with pytest.raises(InvalidResourceId, match="must be a string"):
            AccountId.parse(None)


class TestVaultId:
    """VaultId parses Key Vault and Managed HSM resource ids."""

    def test_vault(self) -> None:
        """A vaults id round-trips and is not a Managed HSM."""
        vault = VaultId.parse(VAULT)
        assert str(vault) == VAULT
        assert not vault.is_managed_hsm
        assert vault.resource_type == "Microsoft.KeyVault/vaults"

    def test_managed_hsm(self) -> None:
        """A managedHSMs id round-trips and is a Managed HSM."""
        hsm = VaultId.parse(HSM.replace("managedHSMs", "managedhsms"))
        assert str(hsm) == HSM
        assert hsm.is_managed_hsm
        assert hsm != VaultId.parse(HSM.replace("managedHSMs", "vaults"))

    def test_case_insensitive(self) -> None:
        """Upper-case spelling parses to the same id."""
        assert VaultId.parse(VAULT.upper()) == VaultId.parse(VAULT)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (ACCOUNT, "is not Microsoft.KeyVault/vaults or Microsoft.KeyVault/managedHSMs"),
            (VAULT + "/keys/cmk", "path segments"),
            (VAULT.replace("my-kv", "kv"), "vault name"),
            (VAULT.replace("my-kv", "my--kv"), "vault name"),
            (VAULT.replace("my-kv", "1kv"), "vault name"),
            (VAULT.replace("my-kv", "a" * 25), "vault name"),
            (VAULT.replace(SUB, "{subscription-id}"), "not a GUID"),
            (f"/subscriptions/{SUB}", "path segments"),
        ],
    )
    def test_rejects(self, text: str, message: str) -> None:
        """Wrong type, extra segments and bad vault names raise with a reason."""
        with pytest.raises(InvalidResourceId, match=message):
            VaultId.parse(text)


# -- properties --------------------------------------------------------------------------

_subscriptions = st.uuids().map(str)
_groups = st.from_regex(r"[A-Za-z0-9_()-][A-Za-z0-9_().-]{0,88}[A-Za-z0-9_()-]", fullmatch=True)
_accounts = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}[A-Za-z0-9]", fullmatch=True)
_vaults = st.from_regex(r"[A-Za-z]([A-Za-z0-9]|-(?=[A-Za-z0-9])){1,22}[A-Za-z0-9]", fullmatch=True)


def _spellings(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.lower(), word.upper()])


@st.composite
def account_texts(draw: st.DrawFn) -> tuple[str, str]:
    """A valid account id in random spelling, and its canonical form."""
    sub, group, name = draw(_subscriptions), draw(_groups), draw(_accounts)
    words = [
        draw(_spellings(w))
        for w in ("subscriptions", "resourceGroups", "providers", "Microsoft.CognitiveServices")
    ]
    kind = draw(_spellings("accounts"))
    slash = draw(st.sampled_from(["", "/"]))
    text = f"/{words[0]}/{sub.upper()}/{words[1]}/{group}/{words[2]}/{words[3]}/{kind}/{name}"
    canonical = (
        f"/subscriptions/{sub}/resourceGroups/{group.lower()}"
        f"/providers/Microsoft.CognitiveServices/accounts/{name.lower()}"
    )
    return text + slash, canonical


class TestResourceIdProperties:
    """Properties over generated ids."""

    @given(account_texts())
    def test_account_round_trip(self, case: tuple[str, str]) -> None:
        """format(parse(x)) is canonical and parses back to an equal id."""
        text, canonical = case
        account = AccountId.parse(text)
        assert str(account) == canonical
        assert AccountId.parse(str(account)) == account

    @given(_subscriptions, _groups, _vaults, st.booleans(), st.booleans())
    def test_vault_round_trip(
        self, sub: str, group: str, name: str, hsm: bool, upper: bool
    ) -> None:
        """Vault and Managed HSM ids round-trip through parse and str."""
        kind = "managedHSMs" if hsm else "vaults"
        prefix = f"/subscriptions/{sub}/resourceGroups/"
        text = f"{prefix}{group}/providers/Microsoft.KeyVault/{kind}/{name}"
        vault = VaultId.parse(text.upper() if upper else text)
        assert vault.is_managed_hsm is hsm
        assert str(vault) == (
            f"{prefix}{group.lower()}/providers/Microsoft.KeyVault/{kind}/{name.lower()}"
        )
        assert VaultId.parse(str(vault)) == vault

    @given(st.text())
    def test_arbitrary_text_only_raises_invalid_resource_id(self, text: str) -> None:
        """Parsing any text either succeeds or raises InvalidResourceId."""
        with contextlib.suppress(InvalidResourceId):
            AccountId.parse(text)
        with contextlib.suppress(InvalidResourceId):
            VaultId.parse(text)
