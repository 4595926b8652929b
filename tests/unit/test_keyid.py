"""Tests for cmk.keyid: parsing, normalizing and comparing key identifiers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmk.errors import InvalidKeyId
from cmk.keyid import MANAGED_HSM_SUFFIXES, VAULT_SUFFIXES, KeyId, parse_vault_url

VERSION = "0123456789abcdef0123456789abcdef"


class TestKeyIdParse:
    """KeyId.parse accepts every documented shape and normalizes it."""

    @pytest.mark.parametrize(
        ("text", "normal"),
        [
            (
                f"https://myvault.vault.azure.net/keys/cmk/{VERSION}",
                f"https://myvault.vault.azure.net/keys/cmk/{VERSION}",
            ),
            (
                "https://myvault.vault.azure.net/keys/cmk",
                "https://myvault.vault.azure.net/keys/cmk",
            ),
            (
                "HTTPS://MyVault.Vault.Azure.NET:443/keys/CMK/0123456789ABCDEF0123456789ABCDEF/",
                f"https://myvault.vault.azure.net/keys/cmk/{VERSION}",
            ),
            (
                "https://myvault.vault.azure.net/keys/cmk/",
                "https://myvault.vault.azure.net/keys/cmk",
            ),
            (
                "https://myvault.vault.azure.net/Keys/cmk",
                "https://myvault.vault.azure.net/keys/cmk",
            ),
            (
                "  https://myvault.vault.azure.net/keys/cmk\n",
                "https://myvault.vault.azure.net/keys/cmk",
            ),
            ("https://kv-01.vault.azure.cn/keys/k", "https://kv-01.vault.azure.cn/keys/k"),
            (
                "https://gov.vault.usgovcloudapi.net/keys/k",
                "https://gov.vault.usgovcloudapi.net/keys/k",
            ),
            (
                "https://hsm1.managedhsm.azure.net/keys/k",
                "https://hsm1.managedhsm.azure.net/keys/k",
            ),
            ("https://hsm1.managedhsm.azure.cn/keys/k", "https://hsm1.managedhsm.azure.cn/keys/k"),
            (
                "https://hsm1.managedhsm.usgovcloudapi.net/keys/k",
                "https://hsm1.managedhsm.usgovcloudapi.net/keys/k",
            ),
        ],
    )
    def test_parse_normalizes(self, text: str, normal: str) -> None:
        """Scheme and host case, :443, trailing slash, name and version case all normalize."""
        assert str(KeyId.parse(text)) == normal

    def test_fields(self) -> None:
        """The parsed fields hold the normalized vault url, name and version."""
        key = KeyId.parse(f"https://MyVault.vault.azure.net/keys/Cmk/{VERSION.upper()}")
        assert (key.vault_url, key.name, key.version) == (
            "https://myvault.vault.azure.net",
            "cmk",
            VERSION,
        )

    def test_versionless_has_no_version(self) -> None:
        """A versionless id parses with version None."""
        key = KeyId.parse("https://myvault.vault.azure.net/keys/cmk")
        assert key.version is None
        assert not key.is_versioned

    @pytest.mark.parametrize(
        ("host", "cloud", "hsm"),
        [
            ("kv1.vault.azure.net", "public", False),
            ("kv1.vault.azure.cn", "china", False),
            ("kv1.vault.usgovcloudapi.net", "usgovernment", False),
            ("kv1.managedhsm.azure.net", "public", True),
            ("kv1.managedhsm.azure.cn", "china", True),
            ("kv1.managedhsm.usgovcloudapi.net", "usgovernment", True),
        ],
    )
    def test_cloud_and_kind(self, host: str, cloud: str, hsm: bool) -> None:
        """Each suffix maps to its cloud and to Key Vault or Managed HSM."""
        key = KeyId.parse(f"https://{host}/keys/k")
        assert key.cloud == cloud
        assert key.is_managed_hsm is hsm
        assert key.vault_host == host
        assert key.vault_name == "kv1"

    def test_suffix_tables_agree(self) -> None:
        """Every Managed HSM suffix is also a known vault suffix."""
        assert set(VAULT_SUFFIXES) >= MANAGED_HSM_SUFFIXES
        assert len(MANAGED_HSM_SUFFIXES) == 3

    def test_name_lengths(self) -> None:
        """Key names of 1 and 127 characters and vault names of 3 and 24 are accepted."""
        KeyId.parse("https://abc.vault.azure.net/keys/k")
        KeyId.parse(f"https://abc.vault.azure.net/keys/{'k' * 127}")
        KeyId.parse(f"https://a{'b' * 22}c.vault.azure.net/keys/k")


class TestKeyIdRejects:
    """KeyId.parse rejects everything else with a message that says what was wrong."""

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("http://myvault.vault.azure.net/keys/k", "https, not http"),
            ("ftp://myvault.vault.azure.net/keys/k", "must start with https://"),
            ("myvault.vault.azure.net/keys/k", "must start with https://"),
            ("https://myvault.vault.azure.net.evil.com/keys/k", "not a Key Vault"),
            ("https://evilvault.azure.net/keys/k", "not a Key Vault"),
            ("https://vault.azure.net/keys/k", "not a Key Vault"),
            ("https://myvault.vault.azure.net./keys/k", "not a Key Vault"),
            ("https://myvault.blob.core.windows.net/keys/k", "not a Key Vault"),
            ("https://a.b.vault.azure.net/keys/k", "single name"),
            ("https://x.vault.azure.net@evil.com/keys/k", "user info"),
            ("https://user:pw@myvault.vault.azure.net/keys/k", "user info"),
            ("https://myvault.vault.azure.net/keys/k?api-version=7.4", "query"),
            ("https://myvault.vault.azure.net/keys/k#frag", "fragment"),
            ("https://myvault.vault.azure.net:8443/keys/k", "port '8443'"),
            ("https://myvault.vault.azure.net:/keys/k", "port ''"),
            (f"https://myvault.vault.azure.net/keys/k/{VERSION}/extra", "unexpected path"),
            ("https://myvault.vault.azure.net/keys/../secrets/k", "dot segments"),
            ("https://myvault.vault.azure.net/keys/./k", "dot segments"),
            ("https://myvault.vault.azure.net/keys//k", "empty path segment"),
            ("https://myvault.vault.azure.net/keys/k%2F..", "percent-encoding"),
            ("https://myvault%2evault.azure.net/keys/k", "percent-encoding"),
            ("https://myvault.vault.azure.net/secrets/k", "the path must be /keys/"),
            ("https://myvault.vault.azure.net/certificates/k", "the path must be /keys/"),
            ("https://myvault.vault.azure.net", "the path must be /keys/"),
            ("https://myvault.vault.azure.net/", "the path must be /keys/"),
            ("https://myvault.vault.azure.net/keys", "key name is missing"),
            ("https://myvault.vault.azure.net/keys/", "key name is missing"),
            ("https://myvault.vault.azure.net/keys/my_key", "key name"),
            ("https://myvault.vault.azure.net/keys/my.key", "key name"),
            (f"https://myvault.vault.azure.net/keys/{'k' * 128}", "key name"),
            ("https://myvault.vault.azure.net/keys/k/123", "32 hexadecimal"),
            (f"https://myvault.vault.azure.net/keys/k/{'g' * 32}", "32 hexadecimal"),
            (f"https://myvault.vault.azure.net/keys/k/{VERSION}0", "32 hexadecimal"),
            ("https://ab.vault.azure.net/keys/k", "vault name"),
            (f"https://a{'b' * 23}c.vault.azure.net/keys/k", "vault name"),
            ("https://1vault.vault.azure.net/keys/k", "vault name"),
            ("https://my--vault.vault.azure.net/keys/k", "vault name"),
            ("https://myvault-.vault.azure.net/keys/k", "vault name"),
            ("https://my vault.vault.azure.net/keys/k", "whitespace or a control character"),
            ("https://myvault.vault.azure.net/keys/k\x00", "whitespace or a control character"),
            ("https://myvault.vault.azure.net/keys/k\tx", "whitespace or a control character"),
            ("https://myvault.vault.azure.net\\keys\\k", "backslash"),
            ("https://myvаult.vault.azure.net/keys/k", "non-ASCII"),  # noqa: RUF001 Cyrillic a
            ("https://[::1]/keys/k", "IP address"),
            ("https://10.0.0.1/keys/k", "not a Key Vault"),
            ("https://:443/keys/k", "the host is empty"),
            ("", "empty"),
            ("   ", "empty"),
        ],
    )
    def test_rejects(self, text: str, message: str) -> None:
        """A malformed or foreign id raises InvalidKeyId naming the problem."""
        with pytest.raises(InvalidKeyId, match=message.replace("?", r"\?")):
            KeyId.parse(text)

    @pytest.mark.parametrize("value", [None, 42, b"https://kv1.vault.azure.net/keys/k", ["x"]])
    def test_rejects_non_strings(self, value: object) -> None:
        """A non-string raises InvalidKeyId, not TypeError."""
        with pytest.raises(InvalidKeyId, match="must be a string"):
            KeyId.parse(value)


class TestKeyIdOperations:
    """Equality, hashing and derived ids."""

    def test_equal_by_normal_form(self) -> None:
        """Ids that differ only in case, port or trailing slash are equal and hash equal."""
        a = KeyId.parse(f"https://MYVAULT.vault.azure.net:443/keys/CMK/{VERSION.upper()}/")
        b = KeyId.parse(f"https://myvault.vault.azure.net/keys/cmk/{VERSION}")
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    def test_different_versions_differ(self) -> None:
        """Two versions of the same key are different ids of the same key."""
        a = KeyId.parse(f"https://kv1.vault.azure.net/keys/cmk/{VERSION}")
        b = a.with_version("f" * 32)
        assert a != b
        assert a.same_key(b)
        assert a.same_vault(b)

    def test_versionless_and_with_version(self) -> None:
        """versionless drops the version; with_version validates and normalizes one."""
        key = KeyId.parse(f"https://kv1.vault.azure.net/keys/cmk/{VERSION}")
        assert str(key.versionless()) == "https://kv1.vault.azure.net/keys/cmk"
        assert key.versionless().with_version(VERSION.upper()) == key
        with pytest.raises(InvalidKeyId, match="32 hexadecimal"):
            key.with_version("latest")

    def test_same_vault(self) -> None:
        """same_vault compares the normalized vault url, not the name alone."""
        a = KeyId.parse("https://kv1.vault.azure.net/keys/a")
        assert a.same_vault(KeyId.parse("https://KV1.vault.azure.net:443/keys/b"))
        assert not a.same_vault(KeyId.parse("https://kv1.vault.azure.cn/keys/a"))
        assert not a.same_vault(KeyId.parse("https://kv2.vault.azure.net/keys/a"))

    def test_constructor_normalizes(self) -> None:
        """Building a KeyId directly validates and normalizes like parse."""
        key = KeyId("https://KV1.vault.azure.net:443/", "CMK", VERSION.upper())
        assert key == KeyId.parse(f"https://kv1.vault.azure.net/keys/cmk/{VERSION}")

    def test_from_parts(self) -> None:
        """from_parts takes an account's keyVaultUri, keyName and keyVersion."""
        key = KeyId.from_parts("https://kv1.vault.azure.net/", "cmk", VERSION)
        assert str(key) == f"https://kv1.vault.azure.net/keys/cmk/{VERSION}"

    @pytest.mark.parametrize(
        ("vault_url", "name", "version"),
        [
            ("https://kv1.vault.azure.net/keys", "cmk", None),
            ("https://evil.com", "cmk", None),
            ("https://kv1.vault.azure.net", "c/k", None),
            ("https://kv1.vault.azure.net", "cmk", ""),
            ("https://kv1.vault.azure.net", "", None),
        ],
    )
    def test_constructor_rejects(self, vault_url: str, name: str, version: str | None) -> None:
        """The constructor rejects what parse would reject."""
        with pytest.raises(InvalidKeyId):
            KeyId(vault_url, name, version)

    def test_frozen(self) -> None:
        """A KeyId cannot be changed after it is built."""
        key = KeyId.parse("https://kv1.vault.azure.net/keys/cmk")
        with pytest.raises(AttributeError):
            key.name = "other"  # type: ignore[misc]


class TestParseVaultUrl:
    """parse_vault_url normalizes a vault URL and rejects anything with a path."""

    def test_normalizes(self) -> None:
        """Case, :443 and a trailing slash normalize away."""
        assert parse_vault_url("HTTPS://KV1.Vault.Azure.Net:443/") == "https://kv1.vault.azure.net"

    @pytest.mark.parametrize(
        "text",
        ["https://kv1.vault.azure.net/keys", "http://kv1.vault.azure.net", "https://example.com"],
    )
    def test_rejects(self, text: str) -> None:
        """A path, http, or a foreign host is rejected."""
        with pytest.raises(InvalidKeyId):
            parse_vault_url(text)


# -- properties --------------------------------------------------------------------------

_vault_names = st.from_regex(r"[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,5}){0,2}[a-z0-9]", fullmatch=True)
_vault_names = _vault_names.filter(lambda n: 3 <= len(n) <= 24)
_key_names = st.from_regex(r"[A-Za-z0-9-]{1,127}", fullmatch=True)
_versions = st.from_regex(r"[0-9a-fA-F]{32}", fullmatch=True)


def _random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True))


@st.composite
def key_id_texts(draw: st.DrawFn) -> tuple[str, str]:
    """A valid key id in random spelling, and its expected normal form."""
    vault = draw(_vault_names)
    suffix = draw(st.sampled_from(sorted(VAULT_SUFFIXES)))
    name = draw(_key_names)
    version = draw(st.none() | _versions)
    port = draw(st.sampled_from(["", ":443"]))
    slash = draw(st.sampled_from(["", "/"]))
    keys = draw(st.sampled_from(["keys", "KEYS", "Keys"]))
    scheme = _random_case(draw, "https://")
    host = _random_case(draw, f"{vault}.{suffix}")
    tail = f"/{version}" if version else ""
    text = f"{scheme}{host}{port}/{keys}/{name}{tail}{slash}"
    normal = f"https://{vault}.{suffix}/keys/{name.lower()}{tail.lower()}"
    return text, normal


class TestKeyIdProperties:
    """Properties over generated ids."""

    @given(key_id_texts())
    def test_round_trip(self, case: tuple[str, str]) -> None:
        """format(parse(x)) is the normal form, and parsing it again gives the same id."""
        text, normal = case
        key = KeyId.parse(text)
        assert str(key) == normal
        assert KeyId.parse(str(key)) == key

    @given(key_id_texts(), st.integers(min_value=0), st.characters())
    def test_one_char_edit_is_safe(self, case: tuple[str, str], at: int, char: str) -> None:
        """Inserting any character anywhere is rejected or still yields a known vault host."""
        text = case[0]
        position = at % (len(text) + 1)
        mutated = text[:position] + char + text[position:]
        try:
            key = KeyId.parse(mutated)
        except InvalidKeyId:
            return
        assert key.vault_suffix in VAULT_SUFFIXES
        assert KeyId.parse(str(key)) == key

    @given(st.text())
    def test_arbitrary_text_only_raises_invalid_key_id(self, text: str) -> None:
        """Parsing any text either succeeds or raises InvalidKeyId."""
        with contextlib.suppress(InvalidKeyId):
            KeyId.parse(text)
