"""The state of the local Azure: tenants, subscriptions, vaults, keys, accounts, identities, grants.

Every emulated service (Key Vault, ARM, Resource Graph, Event Grid) reads and writes
this one in-memory model; nothing here speaks HTTP. The model is deliberately close to
Azure's own resource shapes so the services can serialize it faithfully.

Thread-safety: the sandbox serves requests on one asyncio loop in one thread; tests
that touch the world from another thread go through :class:`World.lock`.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cmk.durations import parse_iso_duration

# --- clock -------------------------------------------------------------------------


class Clock:
    """Wall time plus a settable offset, so tests can jump ahead (expiry) while LROs still
    take real seconds."""

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        self._offset += delta

    def set(self, when: datetime) -> None:
        self._offset = when - datetime.now(UTC)


# --- identities and access -----------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """An Entra ID service principal (an app's or a managed identity's)."""

    object_id: str
    client_id: str
    tenant_id: str
    display_name: str

    @staticmethod
    def new(display_name: str, tenant_id: str) -> Principal:
        return Principal(str(uuid.uuid4()), str(uuid.uuid4()), tenant_id, display_name)


@dataclass
class RoleAssignment:
    """``principal_id`` holds ``role`` (a name in :data:`ROLE_ACTIONS` or a custom role of the
    world) at ``scope`` (an ARM id prefix: subscription, resource group, vault, or vault
    key)."""

    principal_id: str
    scope: str
    role: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: When it was made (the world's clock); ARM's ``createdOn`` and ``updatedOn``.
    created: datetime | None = None


# Actions (control and data plane) each built-in role grants. '*' matches a suffix.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "Owner": frozenset({"*"}),
    "Contributor": frozenset({"*"}),
    "Reader": frozenset({"*/read"}),
    "Cognitive Services Contributor": frozenset({"Microsoft.CognitiveServices/*"}),
    "Key Vault Administrator": frozenset({"Microsoft.KeyVault/vaults/*"}),
    "Key Vault Crypto Officer": frozenset(
        {"Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"}
    ),
    "Key Vault Crypto User": frozenset(
        {
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/update/action",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
            "Microsoft.KeyVault/vaults/keys/encrypt/action",
            "Microsoft.KeyVault/vaults/keys/decrypt/action",
        }
    ),
    "Key Vault Crypto Service Encryption User": frozenset(
        {
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
        }
    ),
    "Key Vault Reader": frozenset({"Microsoft.KeyVault/vaults/*/read"}),
    "EventGrid Data Sender": frozenset({"Microsoft.EventGrid/topics/events/send/action"}),
    # may grant and revoke the Key Vault data roles only (its condition: arm/authorization.py)
    "Key Vault Data Access Administrator": frozenset(
        {
            "Microsoft.Authorization/roleAssignments/write",
            "Microsoft.Authorization/roleAssignments/delete",
            "Microsoft.Authorization/*/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Resources/subscriptions/read",
            "Microsoft.Management/managementGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/vaults/*/read",
        }
    ),
}


# Data-plane actions: Azure's control-plane wildcards ("*" of Owner and Contributor,
# "*/read" of Reader) never grant these; only roles that list data actions do.
_DATA_ACTION_PREFIXES = (
    "microsoft.keyvault/vaults/keys/",
    "microsoft.keyvault/vaults/keyrotationpolicies/",
    "microsoft.keyvault/vaults/secrets/",
    "microsoft.keyvault/managedhsm/",
)


def is_data_action(action: str) -> bool:
    """Whether ``action`` is a data action (Key Vault keys, Event Grid event sends)."""
    lowered = action.lower()
    return lowered.startswith(_DATA_ACTION_PREFIXES) or lowered.endswith("/events/send/action")


def action_allowed(granted: frozenset[str], action: str) -> bool:
    """Whether ``action`` is covered by a set of granted actions (with ``*`` wildcards)."""
    data = is_data_action(action)
    action = action.lower()
    for pattern in granted:
        p = pattern.lower()
        if data and p.startswith("*"):
            continue
        if p in ("*", action):
            return True
        if "*" in p:
            head, _, tail = p.partition("*")
            if action.startswith(head) and action.endswith(tail):
                return True
    return False


# Key Vault access-policy permissions (legacy model) per key operation.
KEY_PERMISSIONS = frozenset(
    {
        "get", "list", "create", "update", "import", "delete", "recover", "backup", "restore",
        "decrypt", "encrypt", "unwrapKey", "wrapKey", "verify", "sign", "purge", "release",
        "rotate", "getrotationpolicy", "setrotationpolicy",
    }
)  # fmt: skip


# --- Key Vault -----------------------------------------------------------------------


class VaultKind(StrEnum):
    VAULT = "vault"
    MANAGED_HSM = "managedhsm"


@dataclass
class KeyVersionState:
    """One version of a key, as Key Vault stores it."""

    version: str
    kty: str  # RSA, RSA-HSM, EC, EC-HSM, oct-HSM
    size: int | None  # RSA modulus bits
    curve: str | None  # EC only
    key_ops: list[str]
    enabled: bool
    created: datetime
    updated: datetime
    not_before: datetime | None = None
    expires: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    modulus: bytes = b""  # RSA n (random bytes of the right size; not a real key)
    exponent: bytes = b"\x01\x00\x01"
    # set once the sandbox clock has emitted these events for this version
    near_expiry_emitted: bool = False
    expired_emitted: bool = False


@dataclass
class RotationPolicy:
    """A key's rotation policy (``lifetimeActions`` in Key Vault's JSON shape)."""

    expiry_time: str | None = None  # ISO 8601 duration, e.g. "P90D": expiry of new versions
    lifetime_actions: list[dict[str, object]] = field(default_factory=list)
    id: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    def notify_before_expiry(self) -> timedelta:
        """The 'Notify' action's timeBeforeExpiry (default 30 days, as Key Vault)."""
        for action in self.lifetime_actions:
            kind = action.get("action")
            trigger = action.get("trigger")
            if (
                isinstance(kind, dict)
                and str(kind.get("type", "")).lower() == "notify"
                and isinstance(trigger, dict)
                and isinstance(trigger.get("timeBeforeExpiry"), str)
            ):
                return parse_iso_duration(str(trigger["timeBeforeExpiry"]))
        return timedelta(days=30)


@dataclass
class KeyState:
    name: str
    versions: list[KeyVersionState] = field(default_factory=list)  # in creation order
    rotation_policy: RotationPolicy | None = None

    def latest(self) -> KeyVersionState | None:
        return self.versions[-1] if self.versions else None

    def version(self, version: str) -> KeyVersionState | None:
        v = version.lower()
        return next((kv for kv in self.versions if kv.version == v), None)


@dataclass
class VaultState:
    """A Key Vault or Managed HSM, with its ARM-side properties."""

    name: str
    kind: VaultKind
    subscription_id: str
    resource_group: str
    location: str
    tenant_id: str
    dns_suffix: str = "vault.azure.net"  # or managedhsm.azure.net, vault.azure.cn, ...
    soft_delete: bool = True
    purge_protection: bool = True
    retention_days: int = 90
    enable_rbac_authorization: bool = True
    #: A vault's SKU name, ``standard`` or ``premium`` (HSM-protected keys need premium); a
    #: Managed HSM's is always ``Standard_B1``. ARM and Resource Graph both read it
    #: (:func:`cmk.sandbox.arm.keyvault.vault_sku`).
    sku: str = "premium"
    # legacy access policies: object id -> key permissions
    access_policies: dict[str, set[str]] = field(default_factory=dict)
    network_default_action: str = "Allow"  # or "Deny"
    network_bypass: str = "AzureServices"  # or "None"
    keys: dict[str, KeyState] = field(default_factory=dict)  # lowercase name -> key

    @property
    def host(self) -> str:
        return f"{self.name}.{self.dns_suffix}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def resource_id(self) -> str:
        rtype = "vaults" if self.kind is VaultKind.VAULT else "managedHSMs"
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/{rtype}/{self.name}"
        )

    @property
    def recovery_level(self) -> str:
        """Key Vault's ``attributes.recoveryLevel`` for keys in this vault."""
        if not self.soft_delete:
            return "Purgeable"
        base = "Recoverable" if self.retention_days == 90 else "CustomizedRecoverable"
        return base if self.purge_protection else f"{base}+Purgeable"


# --- Cognitive Services accounts ---------------------------------------------------


@dataclass
class UserAssignedIdentity:
    resource_id: str
    principal: Principal


@dataclass
class AccountIdentity:
    """``identity`` of an account: type and the identities behind it."""

    system: Principal | None = None
    user_assigned: dict[str, UserAssignedIdentity] = field(default_factory=dict)  # by lower id

    @property
    def type(self) -> str:
        if self.system and self.user_assigned:
            return "SystemAssigned, UserAssigned"
        if self.system:
            return "SystemAssigned"
        if self.user_assigned:
            return "UserAssigned"
        return "None"


@dataclass
class Encryption:
    """``properties.encryption``: Microsoft-managed, or a Key Vault key."""

    key_source: str = "Microsoft.CognitiveServices"  # or "Microsoft.KeyVault"
    key_vault_uri: str | None = None
    key_name: str | None = None
    key_version: str | None = None
    identity_client_id: str | None = None


@dataclass
class AccountState:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    kind: str = "AIServices"
    sku: str = "S0"
    tags: dict[str, str] = field(default_factory=dict)
    identity: AccountIdentity = field(default_factory=AccountIdentity)
    encryption: Encryption = field(default_factory=Encryption)
    provisioning_state: str = "Succeeded"  # Accepted/Creating/Updating/Succeeded/Failed/...
    lro_seconds: float = 0.0  # how long an encryption update takes
    custom_subdomain: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    # every (time, keyVersion) the account was bound to, for invariant checks
    binding_history: list[tuple[datetime, str | None]] = field(default_factory=list)
    etag: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.CognitiveServices/accounts/{self.name}"
        )


# --- tenants and subscriptions ---------------------------------------------------------


@dataclass
class Subscription:
    subscription_id: str
    tenant_id: str
    display_name: str


# --- events the world emits ----------------------------------------------------------


class KeyEventType(StrEnum):
    NEW_VERSION = "Microsoft.KeyVault.KeyNewVersionCreated"
    NEAR_EXPIRY = "Microsoft.KeyVault.KeyNearExpiry"
    EXPIRED = "Microsoft.KeyVault.KeyExpired"


@dataclass(frozen=True)
class KeyEvent:
    """A Key Vault key event as it happened; Event Grid shapes it into either schema."""

    event_type: KeyEventType
    vault: str  # vault name
    vault_resource_id: str
    vault_host: str
    key_name: str
    version: str
    not_before: datetime | None
    expires: datetime | None
    time: datetime
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


KeyEventListener = Callable[[KeyEvent], None]


# --- the world ---------------------------------------------------------------------


class World:
    """Everything the local Azure knows. Services mutate it; tests seed and inspect it."""

    def __init__(self, tenant_id: str | None = None) -> None:
        self.lock = threading.RLock()
        self.clock = Clock()
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.subscriptions: dict[str, Subscription] = {}  # lower sub id
        self.vaults: dict[str, VaultState] = {}  # lower host -> vault
        self.accounts: dict[str, AccountState] = {}  # lower resource id -> account
        self.principals: dict[str, Principal] = {}  # object id -> principal
        self.role_assignments: list[RoleAssignment] = []
        #: Custom role definitions (name -> actions), as a template's roleDefinitions make.
        self.custom_roles: dict[str, frozenset[str]] = {}
        self._listeners: list[KeyEventListener] = []
        #: The Event Grid services serving this world (``EventGrid.attach``): ARM lists
        #: their custom topics as resources. Typed loosely: the world imports no service.
        self.event_grids: list[object] = []

    # events
    def add_key_event_listener(self, listener: KeyEventListener) -> None:
        self._listeners.append(listener)

    def emit(self, event: KeyEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    # lookups
    def vault_by_host(self, host: str) -> VaultState | None:
        return self.vaults.get(host.lower().split(":")[0])

    def account(self, resource_id: str) -> AccountState | None:
        return self.accounts.get(resource_id.lower())

    def add_principal(self, principal: Principal) -> Principal:
        self.principals[principal.object_id] = principal
        return principal

    def principal_by_client_id(self, client_id: str) -> Principal | None:
        c = client_id.lower()
        return next((p for p in self.principals.values() if p.client_id.lower() == c), None)

    # access
    def define_role(self, name: str, actions: Iterable[str]) -> str:
        """A custom role granting exactly ``actions`` (control and data plane, ``*`` as in
        Azure); grant it by ``name`` like a built-in one."""
        if name in ROLE_ACTIONS:
            raise ValueError(f"{name!r} is a built-in role")
        self.custom_roles[name] = frozenset(actions)
        return name

    def role_actions(self, role: str) -> frozenset[str]:
        """What ``role`` (built-in or custom) grants."""
        granted = ROLE_ACTIONS.get(role)
        return granted if granted is not None else self.custom_roles[role]

    def grant(self, principal_id: str, scope: str, role: str) -> RoleAssignment:
        if role not in ROLE_ACTIONS and role not in self.custom_roles:
            known = sorted({*ROLE_ACTIONS, *self.custom_roles})
            raise ValueError(f"unknown role {role!r}; known: {known}")
        assignment = RoleAssignment(principal_id, scope, role, created=self.clock.now())
        self.role_assignments.append(assignment)
        return assignment

    def revoke(self, principal_id: str, scope: str | None = None) -> None:
        self.role_assignments = [
            a
            for a in self.role_assignments
            if not (
                a.principal_id == principal_id
                and (scope is None or a.scope.lower() == scope.lower())
            )
        ]

    def rbac_allows(self, principal_id: str, action: str, resource_scope: str) -> bool:
        """Whether a role assignment at ``resource_scope`` or above grants ``action``."""
        target = resource_scope.lower().rstrip("/")
        for a in self.role_assignments:
            scope = a.scope.lower().rstrip("/")
            if a.principal_id != principal_id:
                continue
            if (target == scope or target.startswith(scope + "/")) and action_allowed(
                self.role_actions(a.role), action
            ):
                return True
        return False

    def key_access(self, principal_id: str, vault: VaultState, key_name: str, perm: str) -> bool:
        """Whether a principal may perform key permission ``perm`` (access-policy name such as
        'get', 'wrapKey', 'unwrapKey', 'create', 'rotate') on a key in ``vault``."""
        if not vault.enable_rbac_authorization and vault.kind is VaultKind.VAULT:
            return perm in vault.access_policies.get(principal_id, set())
        action = KEY_PERMISSION_ACTIONS[perm]
        scope = f"{vault.resource_id}/keys/{key_name}"
        return self.rbac_allows(principal_id, action, scope)


# access-policy permission -> RBAC data action
KEY_PERMISSION_ACTIONS: dict[str, str] = {
    "get": "Microsoft.KeyVault/vaults/keys/read",
    "list": "Microsoft.KeyVault/vaults/keys/read",
    "create": "Microsoft.KeyVault/vaults/keys/create/action",
    "update": "Microsoft.KeyVault/vaults/keys/update/action",
    "rotate": "Microsoft.KeyVault/vaults/keys/rotate/action",
    "wrapKey": "Microsoft.KeyVault/vaults/keys/wrap/action",
    "unwrapKey": "Microsoft.KeyVault/vaults/keys/unwrap/action",
    "encrypt": "Microsoft.KeyVault/vaults/keys/encrypt/action",
    "decrypt": "Microsoft.KeyVault/vaults/keys/decrypt/action",
    "getrotationpolicy": "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
    "setrotationpolicy": "Microsoft.KeyVault/vaults/keyrotationpolicies/write",
}


def new_key_version_id() -> str:
    """A Key Vault version identifier: 32 lowercase hex characters."""
    return uuid.uuid4().hex
