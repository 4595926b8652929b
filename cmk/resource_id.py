"""ARM resource ids of the two resource types we care about: parse, normalize, format.

- :class:`AccountId`: ``Microsoft.CognitiveServices/accounts`` (the accounts we update).
- :class:`VaultId`: ``Microsoft.KeyVault/vaults`` and ``Microsoft.KeyVault/managedHSMs``
  (the vaults that hold the keys, and the ``topic``/``source`` of Key Vault events).

ARM compares resource ids case-insensitively, so these types **store every value in
lowercase** (subscription GUID, resource group, resource name). ``str()`` writes the
fixed segments in their canonical casing (``resourceGroups``,
``Microsoft.CognitiveServices``) and the values in lowercase, so equal ids format
identically. The display casing of a name is not kept. Surrounding whitespace and one
trailing slash are tolerated; anything else that is not exactly the expected shape
raises :class:`~cmk.errors.InvalidResourceId`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cmk.errors import InvalidResourceId

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Resource group: 1-90 of letters (Unicode), digits, underscore, dash, dot, parentheses;
# must not end with a dot.
_RESOURCE_GROUP = re.compile(r"[\w().-]{0,89}[\w()-]")
# Cognitive Services account: 2-64 letters, digits, dashes; starts and ends alphanumeric.
_ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}[a-z0-9]")
# Key Vault / Managed HSM: 3-24 letters, digits, dashes; starts with a letter, ends
# alphanumeric, no consecutive dashes.
_VAULT_NAME = re.compile(r"[a-z][a-z0-9-]{1,22}[a-z0-9]")

_ACCOUNTS = ("Microsoft.CognitiveServices", "accounts")
_VAULTS = ("Microsoft.KeyVault", "vaults")
_MANAGED_HSMS = ("Microsoft.KeyVault", "managedHSMs")


def _require_str(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidResourceId(f"{what} must be a string, not {type(text).__name__}")
    return text.strip()


def parse_subscription_id(text: object) -> str:
    """Validate a subscription id (a GUID) and return it in lowercase."""
    value = _require_str(text, "subscription id").lower()
    if not _GUID.fullmatch(value):
        raise InvalidResourceId(f"subscription id {text!r} is not a GUID")
    return value


def _resource_group(text: object) -> str:
    value = _require_str(text, "resource group").lower()
    if not value.isprintable() or not _RESOURCE_GROUP.fullmatch(value):
        raise InvalidResourceId(
            f"resource group {text!r} must be 1-90 letters, digits, '_', '-', '.', '(' "
            "or ')' and must not end with '.'"
        )
    return value


def _name(text: object, pattern: re.Pattern[str], what: str, rule: str) -> str:
    value = _require_str(text, f"{what} name").lower()
    double_dash = what == "vault" and "--" in value
    if not value.isascii() or not pattern.fullmatch(value) or double_dash:
        raise InvalidResourceId(f"{what} name {text!r} must be {rule}")
    return value


def _parse(text: object, types: tuple[tuple[str, str], ...]) -> tuple[str, str, str, int]:
    """Split an ARM id into (subscription, resource group, name, index into ``types``)."""
    wanted = " or ".join(f"{ns}/{kind}" for ns, kind in types)
    raw = _require_str(text, "resource id")
    shape = f"/subscriptions/{{id}}/resourceGroups/{{rg}}/providers/{{{wanted}}}/{{name}}"

    def fail(problem: str) -> InvalidResourceId:
        return InvalidResourceId(f"invalid resource id {raw!r}: {problem} (expected {shape})")

    if any(char.isspace() or not char.isprintable() for char in raw):
        raise fail("contains whitespace or a control character")
    path = raw[:-1] if raw.endswith("/") else raw
    if not path.startswith("/"):
        raise fail("must start with /subscriptions/")
    segments = path[1:].split("/")
    if len(segments) != 8:
        raise fail(f"has {len(segments)} path segments, not 8")
    keywords = (segments[0], segments[2], segments[4])
    if tuple(word.lower() for word in keywords) != ("subscriptions", "resourcegroups", "providers"):
        raise fail("segments must be subscriptions/.../resourceGroups/.../providers/...")
    lowered = [(namespace.lower(), kind.lower()) for namespace, kind in types]
    resource_type = (segments[5].lower(), segments[6].lower())
    if resource_type not in lowered:
        raise fail(f"resource type {segments[5]}/{segments[6]} is not {wanted}")
    return segments[1], segments[3], segments[7], lowered.index(resource_type)


def _with_context(text: object, error: InvalidResourceId) -> InvalidResourceId:
    return InvalidResourceId(f"invalid resource id {text!r}: {error}")


@dataclass(frozen=True, slots=True)
class AccountId:
    """A ``Microsoft.CognitiveServices/accounts`` resource id, stored in lowercase."""

    subscription_id: str
    resource_group: str
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "subscription_id", parse_subscription_id(self.subscription_id))
        object.__setattr__(self, "resource_group", _resource_group(self.resource_group))
        rule = "2-64 letters, digits or dashes, starting and ending with a letter or digit"
        object.__setattr__(self, "name", _name(self.name, _ACCOUNT_NAME, "account", rule))

    @classmethod
    def parse(cls, text: object) -> AccountId:
        """Parse an account resource id, raising InvalidResourceId that says what was wrong."""
        subscription, group, name, _ = _parse(text, (_ACCOUNTS,))
        try:
            return cls(subscription, group, name)
        except InvalidResourceId as error:
            raise _with_context(text, error) from None

    def __str__(self) -> str:
        namespace, kind = _ACCOUNTS
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{namespace}/{kind}/{self.name}"
        )


@dataclass(frozen=True)
class VaultId:
    """A ``Microsoft.KeyVault/vaults`` or ``managedHSMs`` resource id, stored in lowercase."""

    subscription_id: str
    resource_group: str
    name: str
    is_managed_hsm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "subscription_id", parse_subscription_id(self.subscription_id))
        object.__setattr__(self, "resource_group", _resource_group(self.resource_group))
        rule = (
            "3-24 letters, digits or dashes, starting with a letter, ending with a letter "
            "or digit, without consecutive dashes"
        )
        object.__setattr__(self, "name", _name(self.name, _VAULT_NAME, "vault", rule))
        if not isinstance(self.is_managed_hsm, bool):
            raise InvalidResourceId("is_managed_hsm must be a bool")

    @classmethod
    def parse(cls, text: object) -> VaultId:
        """Parse a vault or Managed HSM resource id, raising InvalidResourceId."""
        subscription, group, name, index = _parse(text, (_VAULTS, _MANAGED_HSMS))
        try:
            return cls(subscription, group, name, is_managed_hsm=index == 1)
        except InvalidResourceId as error:
            raise _with_context(text, error) from None

    @property
    def resource_type(self) -> str:
        """``Microsoft.KeyVault/vaults`` or ``Microsoft.KeyVault/managedHSMs``."""
        namespace, kind = _MANAGED_HSMS if self.is_managed_hsm else _VAULTS
        return f"{namespace}/{kind}"

    def __str__(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{self.resource_type}/{self.name}"
        )
