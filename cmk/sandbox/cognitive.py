"""The Microsoft.CognitiveServices/accounts resource provider: account JSON, update rules,
and long-running operations. HTTP lives in :mod:`cmk.sandbox.arm`; this module works on
the world and raises :class:`ArmError` the way the real RP answers.

Shapes follow ``specification/cognitiveservices/resource-manager/Microsoft.CognitiveServices/
stable/2025-06-01|2025-09-01/cognitiveservices.json`` in Azure/azure-rest-api-specs (examples
``GetAccount.json``, ``UpdateAccount.json``, ``ListAccountsBySubscription.json``; the first two
are kept in ``tests/sandbox/data/arm``). ``properties.encryption`` is omitted while the account uses
Microsoft-managed keys, as the service does (hashicorp/terraform-provider-azurerm#28368).

Long-running updates
--------------------
A PATCH (or PUT) that changes ``properties.encryption`` answers ``202 Accepted`` with the
account (``provisioningState: Updating``) and ``Azure-AsyncOperation`` (operation status),
``Location`` (operation result) and ``Retry-After`` headers — what ``begin_update``'s
ARMPolling follows. The operation takes ``AccountState.lro_seconds`` of real (monotonic)
time; it is settled lazily whenever the account, a listing, Resource Graph or the status
endpoint is read. ``Retry-After`` is the remaining time in whole seconds, clamped to
``retry_after_floor``..``retry_after_cap`` (1..15 s; tests lower the floor to poll faster).
A PATCH without an encryption change (tags, sku, identity only), or one restating the
current binding, answers ``200`` with ``provisioningState: Succeeded`` at once. A write while an
update is in flight answers ``409 RequestConflict`` with ARM's "provisioning state is not
terminal" message (Azure/bicep-types-az#2419).

CMK rules (DESIGN §1) and how the RP fails
------------------------------------------
Rejected synchronously with ``400`` — the request alone shows the problem:

=================================  ======================================================
``InvalidKeySource`` (assumed)     keySource other than Microsoft.CognitiveServices /
                                   Microsoft.KeyVault
``InvalidKeyVaultProperties``      keySource Microsoft.KeyVault without keyVaultUri or
(assumed)                          keyName, or a keyVaultUri that is not
                                   ``https://<vault host>/``
``AccountIdentityRequired``        the account has no managed identity (or, without
(assumed)                          identityClientId, no system-assigned one)
``IdentityNotFound`` (assumed)     identityClientId names no user-assigned identity of
                                   the account
``KeyVaultChangeNotSupported``     keyVaultUri differs from the vault the account already
(assumed)                          uses ("a key can only be changed to another key in the
                                   same vault")
=================================  ======================================================

Found while the operation runs (the RP talks to Key Vault with the account's identity):
the LRO ends ``Failed`` with one of these codes in the status body's ``error`` (the SDK
raises ``HttpResponseError`` whose ``error.code`` is it), ``provisioningState`` becomes
``Failed`` and the previous binding stays. All codes are assumed (Microsoft does not
publish the RP's codes); messages follow the documented requirements:
``KeyVaultNotFound``, ``KeyVaultTenantMismatch``, ``KeyVaultRegionMismatch``,
``KeyVaultPurgeProtectionRequired`` (soft delete and purge protection),
``KeyVaultAccessDenied`` (firewall denies trusted services, or the identity lacks
get/wrapKey/unwrapKey), ``KeyNotFound`` (key or version), ``KeyDisabled``,
``KeyExpired``, ``KeyNotYetValid``, ``UnsupportedKeyType`` (RSA/RSA-HSM of an allowed size
only, default 2048), ``KeyOperationNotPermitted`` (key_ops lacks wrapKey/unwrapKey).

``keyVersion`` may be omitted: the RP then binds the key's latest version and reports that
version (assumed; the service documents versioned keys). Every successful change of the
bound version is appended to ``AccountState.binding_history``.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import math
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cmk.sandbox.world import (
    AccountState,
    Encryption,
    Principal,
    UserAssignedIdentity,
    World,
)

MICROSOFT_MANAGED = "Microsoft.CognitiveServices"
KEY_VAULT = "Microsoft.KeyVault"
ACCOUNT_TYPE = "Microsoft.CognitiveServices/accounts"


class ArmError(Exception):
    """An ARM error answer: ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def _bad_request(code: str, message: str) -> ArmError:
    return ArmError(400, code, message)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- JSON --------------------------------------------------------------------------


def identity_json(account: AccountState) -> dict[str, Any]:
    identity = account.identity
    body: dict[str, Any] = {"type": identity.type}
    if identity.system is not None:
        body["principalId"] = identity.system.object_id
        body["tenantId"] = identity.system.tenant_id
    if identity.user_assigned:
        body["userAssignedIdentities"] = {
            uami.resource_id: {
                "principalId": uami.principal.object_id,
                "clientId": uami.principal.client_id,
            }
            for uami in identity.user_assigned.values()
        }
    return body


def encryption_json(encryption: Encryption) -> dict[str, Any] | None:
    if encryption.key_source == MICROSOFT_MANAGED and not encryption.key_vault_uri:
        return None
    body: dict[str, Any] = {"keySource": encryption.key_source}
    if encryption.key_source == KEY_VAULT:
        props = {
            "keyVaultUri": encryption.key_vault_uri,
            "keyName": encryption.key_name,
            "keyVersion": encryption.key_version,
            "identityClientId": encryption.identity_client_id,
        }
        body["keyVaultProperties"] = {k: v for k, v in props.items() if v is not None}
    return body


def endpoint_of(account: AccountState) -> str:
    if account.custom_subdomain:
        return f"https://{account.custom_subdomain}.cognitiveservices.azure.com/"
    return f"https://{account.location}.api.cognitive.microsoft.com/"


def properties_json(account: AccountState) -> dict[str, Any]:
    props: dict[str, Any] = {
        "provisioningState": account.provisioning_state,
        "endpoint": endpoint_of(account),
        "internalId": hashlib.md5(
            account.resource_id.lower().encode(), usedforsecurity=False
        ).hexdigest(),
        "dateCreated": iso(account.created),
        "publicNetworkAccess": "Enabled",
    }
    if account.custom_subdomain:
        props["customSubDomainName"] = account.custom_subdomain
    encryption = encryption_json(account.encryption)
    if encryption is not None:
        props["encryption"] = encryption
    return props


def account_json(account: AccountState) -> dict[str, Any]:
    """The account as the RP returns it (GET, list, PUT/PATCH bodies)."""
    return {
        "id": account.resource_id,
        "name": account.name,
        "type": ACCOUNT_TYPE,
        "etag": f'"{account.etag}"',
        "location": account.location,
        "kind": account.kind,
        "sku": {"name": account.sku},
        "tags": dict(account.tags),
        "identity": identity_json(account),
        "properties": properties_json(account),
    }


# --- operations --------------------------------------------------------------------


@dataclass
class Operation:
    """One asynchronous account update."""

    id: str
    account_key: str  # lower resource id
    subscription_id: str
    location: str
    target: Encryption
    started: float  # monotonic
    duration: float
    start_time: datetime
    status: str = "InProgress"
    end_time: datetime | None = None
    error: ArmError | None = None

    def status_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": (
                f"/subscriptions/{self.subscription_id}/providers/Microsoft.CognitiveServices"
                f"/locations/{self.location}/operationStatuses/{self.id}"
            ),
            "name": self.id,
            "status": self.status,
            "startTime": iso(self.start_time),
        }
        if self.end_time is not None:
            body["endTime"] = iso(self.end_time)
        if self.error is not None:
            body["error"] = self.error.body()["error"]
        return body


def _norm_location(location: str) -> str:
    return location.replace(" ", "").lower()


def _vault_host(uri: str) -> str | None:
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "https" or not parts.hostname or parts.path.strip("/"):
        return None
    return parts.hostname.lower()


@dataclass
class CognitiveRP:
    """The resource provider's state for one world: operations and listing indexes."""

    world: World
    clock: Callable[[], float] = time.monotonic
    page_size: int = 100
    allowed_key_sizes: frozenset[int] = frozenset({2048})
    retry_after_floor: float = 1.0  # Retry-After on 202/in-progress answers, seconds
    retry_after_cap: float = 15.0
    operations: dict[str, Operation] = field(default_factory=dict)
    _inflight: dict[str, Operation] = field(default_factory=dict)
    _index: dict[str, list[str]] = field(default_factory=dict)
    _index_stamp: tuple[int, int] = (0, -1)

    # lookups --------------------------------------------------------------------
    def require_subscription(self, subscription_id: str) -> None:
        if subscription_id.lower() not in self.world.subscriptions:
            raise ArmError(
                404,
                "SubscriptionNotFound",
                f"The subscription '{subscription_id}' could not be found.",
            )

    def account(self, subscription_id: str, resource_group: str, name: str) -> AccountState:
        key = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/{ACCOUNT_TYPE}/{name}"
        ).lower()
        self.settle(key)
        account = self.world.accounts.get(key)
        if account is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{ACCOUNT_TYPE}/{name}' under resource group "
                f"'{resource_group}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        return account

    def sorted_keys(self, prefix: str) -> list[str]:
        accounts = self.world.accounts
        stamp = (id(accounts), len(accounts))
        if stamp != self._index_stamp:
            self._index = {}
            self._index_stamp = stamp
        keys = self._index.get(prefix)
        if keys is None:
            keys = sorted(k for k in accounts if k.startswith(prefix))
            self._index[prefix] = keys
        return keys

    def page(
        self, subscription_id: str, resource_group: str | None, after: str | None
    ) -> tuple[list[AccountState], str | None]:
        """One page of a listing, ordered by id; ``after`` is the last id of the previous
        page. Returns the accounts and the last id to continue from (None at the end)."""
        self.settle_all()
        prefix = f"/subscriptions/{subscription_id}/".lower()
        if resource_group is not None:
            prefix += f"resourcegroups/{resource_group}/".lower()
        keys = self.sorted_keys(prefix)
        start = bisect.bisect_right(keys, after.lower()) if after else 0
        chunk = keys[start : start + self.page_size]
        accounts = [a for a in (self.world.accounts.get(k) for k in chunk) if a is not None]
        more = start + self.page_size < len(keys)
        return accounts, (chunk[-1] if more and chunk else None)

    # operations -----------------------------------------------------------------
    def settle(self, account_key: str) -> None:
        operation = self._inflight.get(account_key)
        if operation is not None and self.clock() >= operation.started + operation.duration:
            self._complete(operation)

    def settle_all(self) -> None:
        now = self.clock()
        for operation in list(self._inflight.values()):
            if now >= operation.started + operation.duration:
                self._complete(operation)

    def operation(self, operation_id: str) -> Operation | None:
        operation = self.operations.get(operation_id.lower())
        if operation is not None:
            self.settle(operation.account_key)
        return operation

    def retry_after(self, operation: Operation) -> str:
        remaining = operation.started + operation.duration - self.clock()
        seconds = min(self.retry_after_cap, max(self.retry_after_floor, remaining))
        return str(math.ceil(seconds)) if self.retry_after_floor >= 1 else f"{seconds:.2f}"

    def _complete(self, operation: Operation) -> None:
        self._inflight.pop(operation.account_key, None)
        account = self.world.accounts.get(operation.account_key)
        operation.end_time = self.world.clock.now()
        if account is None:
            operation.status = "Failed"
            operation.error = ArmError(404, "ResourceNotFound", "The account was deleted.")
            return
        failure = check_key(self.world, account, operation.target, self.allowed_key_sizes)
        if failure is not None:
            operation.status = "Failed"
            operation.error = failure
            account.provisioning_state = "Failed"
            return
        target = operation.target
        if target.key_source == KEY_VAULT and not target.key_version:
            target = replace(target, key_version=_latest_version(self.world, target))
        bind(self.world, account, target)
        account.provisioning_state = "Succeeded"
        operation.status = "Succeeded"

    # writes ---------------------------------------------------------------------
    def update(self, account: AccountState, body: dict[str, Any]) -> Operation | None:
        """Apply a PATCH body. Returns the started operation, or None when the change was
        applied at once. Raises ArmError for 400/409 answers."""
        key = account.resource_id.lower()
        self.settle(key)
        if key in self._inflight or account.provisioning_state in (
            "Updating",
            "Creating",
            "Accepted",
            "Deleting",
        ):
            raise ArmError(
                409,
                "RequestConflict",
                f"Cannot modify resource with id '{account.resource_id}' because the resource "
                "entity provisioning state is not terminal. Please wait for the provisioning "
                "state to become terminal and then retry the request.",
            )
        if not isinstance(body, dict):
            raise _bad_request("InvalidRequestContent", "The request content was invalid.")
        identity = body.get("identity")
        properties = body.get("properties")
        if properties is not None and not isinstance(properties, dict):
            raise _bad_request("InvalidRequestContent", "'properties' must be an object.")
        target: Encryption | None = None
        if isinstance(properties, dict) and properties.get("encryption") is not None:
            target = parse_encryption(properties["encryption"])
        before = copy.deepcopy(account.identity)
        if isinstance(identity, dict):
            apply_identity(self.world, account, identity)
        if target is not None and target != account.encryption:
            try:
                validate_request(account, target)
            except ArmError:
                account.identity = before
                raise
        if isinstance(body.get("tags"), dict):
            account.tags = {str(k): str(v) for k, v in body["tags"].items()}
        sku = body.get("sku")
        if isinstance(sku, dict) and isinstance(sku.get("name"), str):
            account.sku = sku["name"]
        if target is None or target == account.encryption:
            account.etag = uuid.uuid4().hex[:16]
            return None
        return self._start(account, target)

    def create(
        self, subscription_id: str, resource_group: str, name: str, body: dict[str, Any]
    ) -> tuple[AccountState, Operation | None, bool]:
        """PUT: create or replace. Returns (account, operation or None, created)."""
        key = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/{ACCOUNT_TYPE}/{name}"
        ).lower()
        self.settle(key)
        location = body.get("location") if isinstance(body, dict) else None
        if not isinstance(location, str) or not location:
            raise _bad_request("LocationRequired", "The location property is required.")
        existing = self.world.accounts.get(key)
        if existing is not None:
            if _norm_location(existing.location) != _norm_location(location):
                raise _bad_request(
                    "InvalidResourceLocation",
                    f"The resource '{name}' already exists in location "
                    f"'{existing.location}' in resource group '{resource_group}'. A resource "
                    "with the same name cannot be created in location "
                    f"'{location}'. Please select a new resource name.",
                )
            return existing, self.update(existing, body), False
        sku = body.get("sku") if isinstance(body.get("sku"), dict) else {}
        props = body.get("properties") if isinstance(body.get("properties"), dict) else {}
        assert isinstance(sku, dict) and isinstance(props, dict)
        account = AccountState(
            subscription_id=subscription_id,
            resource_group=resource_group,
            name=name,
            location=_norm_location(location),
            kind=str(body.get("kind") or "AIServices"),
            sku=str(sku.get("name") or "S0"),
            tags={str(k): str(v) for k, v in (body.get("tags") or {}).items()},
            custom_subdomain=props.get("customSubDomainName"),
            created=self.world.clock.now(),
        )
        target = parse_encryption(props["encryption"]) if props.get("encryption") else None
        if isinstance(body.get("identity"), dict):
            apply_identity(self.world, account, body["identity"])
        if target is not None and target != account.encryption:
            validate_request(account, target)
        self.world.accounts[key] = account
        if target is None or target == account.encryption:
            return account, None, True
        return account, self._start(account, target), True

    def _start(self, account: AccountState, target: Encryption) -> Operation:
        operation = Operation(
            id=str(uuid.uuid4()),
            account_key=account.resource_id.lower(),
            subscription_id=account.subscription_id,
            location=account.location,
            target=target,
            started=self.clock(),
            duration=max(0.0, account.lro_seconds),
            start_time=self.world.clock.now(),
        )
        self.operations[operation.id] = operation
        self._inflight[operation.account_key] = operation
        account.provisioning_state = "Updating"
        account.etag = uuid.uuid4().hex[:16]
        return operation


# --- rules -------------------------------------------------------------------------


def parse_encryption(raw: object) -> Encryption:
    if not isinstance(raw, dict):
        raise _bad_request("InvalidRequestContent", "'encryption' must be an object.")
    source = raw.get("keySource") or MICROSOFT_MANAGED
    if not isinstance(source, str) or source.lower() not in (
        MICROSOFT_MANAGED.lower(),
        KEY_VAULT.lower(),
    ):
        raise _bad_request(
            "InvalidKeySource",
            f"The keySource '{source}' is not supported. Supported values: "
            f"'{MICROSOFT_MANAGED}', '{KEY_VAULT}'.",
        )
    if source.lower() == MICROSOFT_MANAGED.lower():
        return Encryption()
    props = raw.get("keyVaultProperties")
    if not isinstance(props, dict):
        props = {}
    uri, name = props.get("keyVaultUri"), props.get("keyName")
    version, client_id = props.get("keyVersion"), props.get("identityClientId")
    if not isinstance(uri, str) or not uri or not isinstance(name, str) or not name:
        raise _bad_request(
            "InvalidKeyVaultProperties",
            "keyVaultProperties.keyVaultUri and keyVaultProperties.keyName are required when "
            "keySource is Microsoft.KeyVault.",
        )
    if _vault_host(uri) is None:
        raise _bad_request(
            "InvalidKeyVaultProperties",
            f"The keyVaultUri '{uri}' is not a valid key vault URI such as "
            "'https://myvault.vault.azure.net/'.",
        )
    return Encryption(
        key_source=KEY_VAULT,
        key_vault_uri=uri,
        key_name=name,
        key_version=(version or None) if isinstance(version, str) else None,
        identity_client_id=(client_id or None) if isinstance(client_id, str) else None,
    )


def _encryption_principal(account: AccountState, target: Encryption) -> Principal | None:
    if target.identity_client_id:
        wanted = target.identity_client_id.lower()
        for uami in account.identity.user_assigned.values():
            if uami.principal.client_id.lower() == wanted:
                return uami.principal
        return None
    return account.identity.system


def validate_request(account: AccountState, target: Encryption) -> None:
    """The synchronous checks of an encryption change (400 answers)."""
    if target.key_source != KEY_VAULT:
        return
    if account.identity.type == "None":
        raise _bad_request(
            "AccountIdentityRequired",
            "A managed identity is required to use customer-managed keys. Assign a "
            "system-assigned or user-assigned identity to the account first.",
        )
    if _encryption_principal(account, target) is None:
        if target.identity_client_id:
            raise _bad_request(
                "IdentityNotFound",
                f"The identity with client id '{target.identity_client_id}' is not assigned "
                "to the account.",
            )
        raise _bad_request(
            "AccountIdentityRequired",
            "The account has no system-assigned identity; set "
            "keyVaultProperties.identityClientId to one of its user-assigned identities.",
        )
    current = account.encryption
    if (
        current.key_source == KEY_VAULT
        and current.key_vault_uri
        and _vault_host(current.key_vault_uri) != _vault_host(target.key_vault_uri or "")
    ):
        raise _bad_request(
            "KeyVaultChangeNotSupported",
            f"The key vault cannot be changed from '{current.key_vault_uri}' to "
            f"'{target.key_vault_uri}'. A key can only be changed to another key in the "
            "same key vault.",
        )


def _latest_version(world: World, target: Encryption) -> str | None:
    vault = world.vault_by_host(_vault_host(target.key_vault_uri or "") or "")
    key = vault.keys.get((target.key_name or "").lower()) if vault else None
    latest = key.latest() if key else None
    return latest.version if latest else None


def check_key(
    world: World, account: AccountState, target: Encryption, allowed_sizes: frozenset[int]
) -> ArmError | None:
    """The Key Vault side of an encryption change; None when the binding is usable."""
    if target.key_source != KEY_VAULT:
        return None
    uri = target.key_vault_uri or ""
    vault = world.vault_by_host(_vault_host(uri) or "")
    if vault is None:
        return _bad_request("KeyVaultNotFound", f"The key vault '{uri}' could not be found.")
    subscription = world.subscriptions.get(account.subscription_id.lower())
    tenant = subscription.tenant_id if subscription else world.tenant_id
    if vault.tenant_id.lower() != tenant.lower():
        return _bad_request(
            "KeyVaultTenantMismatch",
            f"The key vault '{uri}' belongs to tenant '{vault.tenant_id}'; the account's "
            f"tenant is '{tenant}'. Key vault and account must be in the same tenant.",
        )
    if _norm_location(vault.location) != _norm_location(account.location):
        return _bad_request(
            "KeyVaultRegionMismatch",
            f"The key vault '{uri}' is in region '{vault.location}'; the account is in "
            f"'{account.location}'. Key vault and account must be in the same region.",
        )
    if not (vault.soft_delete and vault.purge_protection):
        return _bad_request(
            "KeyVaultPurgeProtectionRequired",
            f"The key vault '{uri}' must have soft delete and purge protection enabled.",
        )
    principal = _encryption_principal(account, target)
    name = target.key_name or ""
    denied = _bad_request(
        "KeyVaultAccessDenied",
        f"The managed identity '{principal.object_id if principal else ''}' of the account "
        f"cannot access key '{name}' in key vault '{uri}'. It needs get, wrapKey and "
        "unwrapKey permissions on the key, and the vault must allow trusted Azure services.",
    )
    if vault.network_default_action.lower() == "deny" and vault.network_bypass != "AzureServices":
        return denied
    if principal is None or not all(
        world.key_access(principal.object_id, vault, name, perm)
        for perm in ("get", "wrapKey", "unwrapKey")
    ):
        return denied
    key = vault.keys.get(name.lower())
    version = key.version(target.key_version) if key and target.key_version else None
    if key is not None and not target.key_version:
        version = key.latest()
    if version is None:
        return _bad_request(
            "KeyNotFound",
            f"The key '{name}' (version '{target.key_version or 'latest'}') was not found in "
            f"key vault '{uri}'.",
        )
    now = world.clock.now()
    if not version.enabled:
        return _bad_request("KeyDisabled", f"The key version '{version.version}' is disabled.")
    if version.expires is not None and version.expires <= now:
        return _bad_request(
            "KeyExpired", f"The key version '{version.version}' expired at {iso(version.expires)}."
        )
    if version.not_before is not None and version.not_before > now:
        return _bad_request(
            "KeyNotYetValid",
            f"The key version '{version.version}' is not valid before {iso(version.not_before)}.",
        )
    if version.kty not in ("RSA", "RSA-HSM") or version.size not in allowed_sizes:
        sizes = ", ".join(str(s) for s in sorted(allowed_sizes))
        return _bad_request(
            "UnsupportedKeyType",
            f"The key '{name}' is {version.kty} {version.size or ''}; only RSA or RSA-HSM keys "
            f"of size {sizes} are supported.",
        )
    if not {"wrapKey", "unwrapKey"} <= set(version.key_ops):
        return _bad_request(
            "KeyOperationNotPermitted",
            f"The key '{name}' must permit the wrapKey and unwrapKey operations.",
        )
    return None


def bind(world: World, account: AccountState, target: Encryption) -> None:
    """Make ``target`` the account's encryption, recording a version change."""
    before = account.encryption.key_version
    account.encryption = target
    account.etag = uuid.uuid4().hex[:16]
    if target.key_version != before:
        account.binding_history.append((world.clock.now(), target.key_version))


def apply_identity(world: World, account: AccountState, raw: dict[str, Any]) -> None:
    """Apply an ``identity`` request object (type and userAssignedIdentities)."""
    kind = str(raw.get("type") or "None").replace(" ", "").lower()
    allowed = {"none", "systemassigned", "userassigned", "systemassigned,userassigned"}
    if kind not in allowed:
        raise _bad_request(
            "InvalidIdentityType", f"The identity type '{raw.get('type')}' is not supported."
        )
    identity = account.identity
    if "systemassigned" in kind:
        if identity.system is None:
            tenant = world.subscriptions.get(account.subscription_id.lower())
            principal = Principal.new(account.name, tenant.tenant_id if tenant else world.tenant_id)
            identity.system = world.add_principal(principal)
    else:
        identity.system = None
    if "userassigned" not in kind:
        identity.user_assigned = {}
        return
    requested = raw.get("userAssignedIdentities")
    if not isinstance(requested, dict) or not requested:
        if not identity.user_assigned:
            raise _bad_request(
                "InvalidIdentity",
                "userAssignedIdentities is required when the identity type includes UserAssigned.",
            )
        return
    for resource_id, value in requested.items():
        key = str(resource_id).lower()
        if value is None:
            identity.user_assigned.pop(key, None)
        elif key not in identity.user_assigned:
            identity.user_assigned[key] = UserAssignedIdentity(
                str(resource_id), _user_assigned_principal(world, account, str(resource_id))
            )


def _user_assigned_principal(world: World, account: AccountState, resource_id: str) -> Principal:
    key = resource_id.lower()
    for other in world.accounts.values():
        uami = other.identity.user_assigned.get(key)
        if uami is not None:
            return uami.principal
    tenant = world.subscriptions.get(account.subscription_id.lower())
    name = resource_id.rstrip("/").rsplit("/", 1)[-1]
    return world.add_principal(Principal.new(name, tenant.tenant_id if tenant else world.tenant_id))


_RPS: weakref.WeakKeyDictionary[World, CognitiveRP] = weakref.WeakKeyDictionary()


def rp_for(world: World) -> CognitiveRP:
    """The resource provider of a world (created on first use)."""
    rp = _RPS.get(world)
    if rp is None:
        rp = _RPS[world] = CognitiveRP(world)
    return rp


def seed_account(
    world: World,
    subscription_id: str,
    resource_group: str,
    name: str,
    location: str,
    *,
    kind: str = "AIServices",
    system_identity: bool = True,
    user_assigned: Sequence[UserAssignedIdentity] = (),
    encryption: Encryption | None = None,
    lro_seconds: float = 0.0,
    tags: dict[str, str] | None = None,
) -> AccountState:
    """Add an account to the world directly — no request, no CMK checks (scenarios and
    tests). A system-assigned identity gets a new principal; user-assigned ones are added
    to the world's principals. The initial key version starts ``binding_history``."""
    subscription = world.subscriptions.get(subscription_id.lower())
    tenant = subscription.tenant_id if subscription else world.tenant_id
    account = AccountState(
        subscription_id=subscription_id,
        resource_group=resource_group,
        name=name,
        location=_norm_location(location),
        kind=kind,
        tags=dict(tags or {}),
        lro_seconds=lro_seconds,
        created=world.clock.now(),
    )
    if system_identity:
        account.identity.system = world.add_principal(Principal.new(name, tenant))
    for uami in user_assigned:
        world.add_principal(uami.principal)
        account.identity.user_assigned[uami.resource_id.lower()] = uami
    if encryption is not None:
        account.encryption = encryption
        if encryption.key_version:
            account.binding_history.append((world.clock.now(), encryption.key_version))
    world.accounts[account.resource_id.lower()] = account
    return account
