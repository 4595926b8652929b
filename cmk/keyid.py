"""Key Vault and Managed HSM key identifiers: parse strictly, normalize, compare.

A key id is ``https://{vault}.{suffix}/keys/{name}[/{version}]``. Everything that
decides *which* key we touch is checked strictly: scheme, host (one label in front of
a known Key Vault / Managed HSM suffix, so look-alikes such as
``vault.azure.net.evil.com`` fail), port (only 443), path shape, names and version.
Anything else (user info, query, fragment, percent-encoding, dot segments, extra
segments, whitespace or control characters inside, non-ASCII) is rejected with an
:class:`~cmk.errors.InvalidKeyId` that says what was wrong.

Normal form: lowercase host without port, no trailing slash, lowercase key name (Key
Vault names are case-insensitive) and lowercase 32-hex version. Two ids are equal iff
their normal forms are equal. Surrounding whitespace is trimmed before parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from cmk.errors import InvalidKeyId

Cloud = Literal["public", "china", "usgovernment"]

#: DNS suffix of every vault host we accept -> the Azure cloud it belongs to.
VAULT_SUFFIXES: Mapping[str, Cloud] = MappingProxyType(
    {
        "vault.azure.net": "public",
        "vault.azure.cn": "china",
        "vault.usgovcloudapi.net": "usgovernment",
        "managedhsm.azure.net": "public",
        "managedhsm.azure.cn": "china",
        "managedhsm.usgovcloudapi.net": "usgovernment",
    }
)

#: The subset of :data:`VAULT_SUFFIXES` that are Managed HSM pools.
MANAGED_HSM_SUFFIXES: frozenset[str] = frozenset(
    suffix for suffix in VAULT_SUFFIXES if suffix.startswith("managedhsm.")
)

# Vault and Managed HSM names: 3-24 of letters, digits, dashes; start with a letter,
# end with a letter or digit, no "--". Checked after lowercasing the host.
_VAULT_NAME = re.compile(r"[a-z][a-z0-9-]{1,22}[a-z0-9]")
_KEY_NAME = re.compile(r"[A-Za-z0-9-]{1,127}")
_VERSION = re.compile(r"[0-9A-Fa-f]{32}")
_SCHEME = "https://"


#: What a vault URL looks like, in the errors about one.
_VAULT_URL = "a vault URL is https://{vault}.vault.azure.net or https://{hsm}.managedhsm.azure.net"


def _fail(text: str, problem: str, what: str = "key id") -> InvalidKeyId:
    if what == "vault url":
        return InvalidKeyId(f"invalid vault URL {text!r}: {problem} ({_VAULT_URL})")
    return InvalidKeyId(f"invalid {what} {text!r}: {problem}")


def _check_characters(text: str, what: str = "key id") -> None:
    if not text.isascii():
        raise _fail(text, "contains non-ASCII characters", what)
    for position, char in enumerate(text):
        if char.isspace() or not char.isprintable():
            raise _fail(text, f"contains whitespace or a control character at {position}", what)
    if "\\" in text:
        raise _fail(text, "contains a backslash", what)
    if "%" in text:
        raise _fail(text, "percent-encoding is not allowed", what)


def _split_authority(original: str, text: str, what: str = "key id") -> tuple[str, str]:
    """Check scheme, user info, query and fragment; return (authority, path)."""
    if text[: len(_SCHEME)].lower() != _SCHEME:
        if text[:7].lower() == "http://":
            raise _fail(original, "must use https, not http", what)
        raise _fail(original, "must start with https://", what)
    rest = text[len(_SCHEME) :]
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise _fail(original, "user info (user@host) is not allowed", what)
    if "?" in text:
        raise _fail(original, "a query string is not allowed", what)
    if "#" in text:
        raise _fail(original, "a fragment is not allowed", what)
    return authority, slash + path


def _vault_host(original: str, authority: str, what: str = "key id") -> str:
    """Validate ``host[:443]`` and return the lowercase host."""
    if "[" in authority or "]" in authority:
        raise _fail(original, "an IP address literal is not a Key Vault host", what)
    host, colon, port = authority.partition(":")
    if colon and port != "443":
        raise _fail(original, f"port {port!r} is not allowed; only 443 (https)", what)
    host = host.lower()
    if not host:
        raise _fail(original, "the host is empty", what)
    for suffix in VAULT_SUFFIXES:
        if host.endswith("." + suffix):
            vault = host[: -len(suffix) - 1]
            if "." in vault:
                raise _fail(original, f"host {host!r} must be a single name before .{suffix}", what)
            _check_vault_name(original, vault, what)
            return host
    expected = ", ".join(f"{{vault}}.{suffix}" for suffix in VAULT_SUFFIXES)
    raise _fail(
        original, f"host {host!r} is not a Key Vault or Managed HSM host ({expected})", what
    )


def _check_vault_name(original: str, vault: str, what: str = "key id") -> None:
    if not _VAULT_NAME.fullmatch(vault) or "--" in vault:
        raise _fail(
            original,
            f"vault name {vault!r} must be 3-24 letters, digits or dashes, start with a "
            "letter, end with a letter or digit, and have no consecutive dashes",
            what,
        )


def _check_key_name(original: str, name: str) -> str:
    if not _KEY_NAME.fullmatch(name):
        raise _fail(original, f"key name {name!r} must be 1-127 letters, digits or dashes")
    return name.lower()


def _check_version(original: str, version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise _fail(original, f"key version {version!r} must be 32 hexadecimal characters")
    return version.lower()


def _prepare(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidKeyId(f"{what} must be a string, not {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InvalidKeyId(f"{what} is empty")
    _check_characters(stripped, what)
    return stripped


def parse_vault_url(text: object) -> str:
    """Normalize a vault URL (``https://{vault}.{suffix}[:443][/]``) or raise InvalidKeyId."""
    stripped = _prepare(text, "vault url")
    authority, path = _split_authority(stripped, stripped, "vault url")
    host = _vault_host(stripped, authority, "vault url")
    if path not in ("", "/"):
        raise _fail(stripped, "a vault url must not have a path", "vault url")
    return _SCHEME + host


def _parse_path(original: str, path: str) -> tuple[str, str | None]:
    """Parse ``/keys/{name}[/{version}][/]`` into (name, version)."""
    if path.endswith("/"):
        path = path[:-1]
    segments = path.split("/")[1:] if path.startswith("/") else []
    if not segments or segments[0].lower() != "keys":
        raise _fail(original, "the path must be /keys/{name}[/{version}]")
    if any(segment in (".", "..") for segment in segments):
        raise _fail(original, "dot segments (. or ..) are not allowed")
    if any(segment == "" for segment in segments):
        raise _fail(original, "empty path segment (//) or missing key name")
    if len(segments) > 3:
        extra = "/".join(segments[3:])
        raise _fail(original, f"unexpected path segments after the version: /{extra}")
    name = _check_key_name(original, segments[1]) if len(segments) > 1 else ""
    if not name:
        raise _fail(original, "the key name is missing")
    version = _check_version(original, segments[2]) if len(segments) == 3 else None
    return name, version


@dataclass(frozen=True, slots=True)
class KeyId:
    """A normalized Key Vault / Managed HSM key identifier, with or without version.

    Build one with :meth:`parse`, :meth:`from_parts`, or the constructor; every path
    validates and normalizes, so two equal keys always compare (and hash) equal.
    """

    vault_url: str
    name: str
    version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vault_url", parse_vault_url(self.vault_url))
        name = _prepare(self.name, "key name")
        object.__setattr__(self, "name", _check_key_name(name, name))
        if self.version is not None:
            version = _prepare(self.version, "key version")
            object.__setattr__(self, "version", _check_version(version, version))

    @classmethod
    def parse(cls, text: object) -> KeyId:
        """Parse a key id URL, raising InvalidKeyId that says what was wrong."""
        stripped = _prepare(text, "key id")
        authority, path = _split_authority(stripped, stripped)
        host = _vault_host(stripped, authority)
        name, version = _parse_path(stripped, path)
        return cls(_SCHEME + host, name, version)

    @classmethod
    def from_parts(cls, vault_url: str, name: str, version: str | None = None) -> KeyId:
        """Build from an account's ``keyVaultUri``, ``keyName`` and ``keyVersion``."""
        return cls(vault_url, name, version)

    def __str__(self) -> str:
        tail = f"/{self.version}" if self.version else ""
        return f"{self.vault_url}/keys/{self.name}{tail}"

    @property
    def vault_host(self) -> str:
        """The lowercase host, e.g. ``myvault.vault.azure.net``."""
        return self.vault_url[len(_SCHEME) :]

    @property
    def vault_name(self) -> str:
        """The vault (or Managed HSM pool) name: the host's first label."""
        return self.vault_host.partition(".")[0]

    @property
    def vault_suffix(self) -> str:
        """The DNS suffix after the vault name, e.g. ``vault.azure.net``."""
        return self.vault_host.partition(".")[2]

    @property
    def is_managed_hsm(self) -> bool:
        """True for a Managed HSM pool, False for a Key Vault."""
        return self.vault_suffix in MANAGED_HSM_SUFFIXES

    @property
    def cloud(self) -> Cloud:
        """The Azure cloud of the vault: public, china or usgovernment."""
        return VAULT_SUFFIXES[self.vault_suffix]

    @property
    def is_versioned(self) -> bool:
        """True if the id names one key version."""
        return self.version is not None

    def versionless(self) -> KeyId:
        """The same key without a version."""
        return KeyId(self.vault_url, self.name)

    def with_version(self, version: str) -> KeyId:
        """The same key at ``version`` (32 hex characters)."""
        return KeyId(self.vault_url, self.name, version)

    def same_vault(self, other: KeyId) -> bool:
        """True if both keys live in the same vault (same normalized vault URL)."""
        return self.vault_url == other.vault_url

    def same_key(self, other: KeyId) -> bool:
        """True if both ids name the same key, whatever their versions."""
        return self.vault_url == other.vault_url and self.name == other.name
