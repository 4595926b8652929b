"""Scenario files: a JSON description of a sandbox world (``scenario.schema.json``,
documented in docs/sandbox.md), validated and turned into :class:`~cmk.sandbox.world.World`
objects directly (no HTTP, no events, no real RSA keys), so 10,000 accounts seed in
well under a second.

Every problem names its JSON path: ``$.accounts[3].encryption.key: vault kv1 has no key
'k9'``.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema

from cmk.sandbox.world import (
    AccountIdentity,
    AccountState,
    Encryption,
    KeyState,
    KeyVersionState,
    Principal,
    RotationPolicy,
    Subscription,
    UserAssignedIdentity,
    VaultKind,
    VaultState,
    World,
    new_key_version_id,
)

_NAMESPACE = uuid.UUID("5d0c8f0e-8a44-4a5b-9a55-2f1f6a8c0c11")
_RELATIVE = re.compile(r"^([+-])(\d+)([dhms])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_VAULT_SUFFIX = {
    ("vault", "public"): "vault.azure.net",
    ("vault", "china"): "vault.azure.cn",
    ("vault", "usgovernment"): "vault.usgovcloudapi.net",
    ("managedhsm", "public"): "managedhsm.azure.net",
    ("managedhsm", "china"): "managedhsm.azure.cn",
    ("managedhsm", "usgovernment"): "managedhsm.usgovcloudapi.net",
}
KEY_ACCESS_ROLE = "Key Vault Crypto Service Encryption User"
KEY_ACCESS_PERMISSIONS = frozenset({"get", "wrapKey", "unwrapKey"})


class ScenarioError(ValueError):
    """A scenario that does not validate; ``problems`` are ``"$.path: problem"`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid scenario {source}:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    region: str
    subscription_id: str
    resource_group: str
    key: str | None
    input_schema: str | None


@dataclass(frozen=True)
class FaultSpec:
    host: str = "*"
    path: str | None = None
    method: str | None = None
    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0
    drop: bool = False
    probability: float = 1.0
    count: int | None = None


@dataclass
class SeededWorld:
    """A world built from a scenario, with what the sandbox applies besides the world."""

    world: World
    topics: list[TopicSpec] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    throttling: bool = True
    identities: dict[str, UserAssignedIdentity] = field(default_factory=dict)

    def settings_env(self) -> dict[str, str]:
        """The CMK_* settings that fit this world (vault allow-list, subscriptions)."""
        vaults = sorted({v.url for v in self.world.vaults.values()})
        subscriptions = sorted(self.world.subscriptions)
        return {
            "CMK_VAULT_ALLOWLIST": ",".join(vaults),
            "CMK_SUBSCRIPTIONS": ",".join(subscriptions),
        }


def schema() -> dict[str, Any]:
    """The JSON Schema of scenario files."""
    text = importlib.resources.files("cmk.sandbox").joinpath("scenario.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def example_path() -> Path:
    """The built-in example world (used by ``cmk sandbox up`` without ``--scenario``)."""
    return Path(str(importlib.resources.files("cmk.sandbox").joinpath("example_world.json")))


def load(source: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    """Read (a path or a parsed document) and validate a scenario; raise ScenarioError."""
    if isinstance(source, Mapping):
        name, document = "<dict>", dict(source)
    else:
        name = str(source)
        try:
            document = json.loads(Path(source).read_text())
        except OSError as exc:
            raise ScenarioError(name, [f"$: cannot read the file: {exc.strerror}"]) from exc
        except json.JSONDecodeError as exc:
            raise ScenarioError(
                name, [f"$: not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"]
            ) from exc
    validator = jsonschema.Draft202012Validator(schema())
    problems = [
        f"{_path(error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        raise ScenarioError(name, problems)
    return document


def _path(parts: Any) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _derived_id(kind: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{name}"))


class _Builder:
    """Turns a validated document into a world, collecting problems with their paths."""

    def __init__(self, document: dict[str, Any], world: World, app: Principal | None) -> None:
        self.doc = document
        self.world = world
        self.app = app
        self.problems: list[str] = []
        self.now = world.clock.now()
        self.tenants: dict[str, str] = {}
        self.subs: dict[str, Subscription] = {}  # by name and by id (lower)
        self.vaults: dict[str, VaultState] = {}  # by name (lower)
        self.identities: dict[str, UserAssignedIdentity] = {}
        self.account_principals: dict[str, Principal] = {}
        self.regions = set(document.get("regions", []))
        self.add_version = _key_version_adder()
        self.key_grants: set[tuple[str, str]] = set()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # references -----------------------------------------------------------------------

    def sub(self, ref: str, path: str) -> Subscription | None:
        found = self.subs.get(ref.lower())
        if found is None:
            self.problem(path, f"unknown subscription {ref!r}; declared: {self._sub_names()}")
        return found

    def _sub_names(self) -> list[str]:
        return sorted({s.display_name for s in self.subs.values()})

    def location(self, value: str, path: str) -> str:
        if self.regions and value not in self.regions:
            self.problem(path, f"region {value!r} is not in $.regions {sorted(self.regions)}")
        return value

    def when(self, value: str | None, path: str) -> datetime | None:
        if value is None:
            return None
        match = _RELATIVE.match(value)
        if match:
            sign, amount, unit = match.groups()
            delta = timedelta(**{_UNITS[unit]: int(amount)})
            return self.now + delta if sign == "+" else self.now - delta
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.problem(path, f"not a time: {value!r} (use '+400d' or an ISO 8601 time)")
            return None
        if parsed.tzinfo is None:
            self.problem(path, f"time {value!r} needs a UTC offset (e.g. 'Z')")
            return None
        return parsed

    def principal(self, ref: str, path: str) -> str | None:
        if ref == "app":
            if self.app is None:
                self.problem(path, "'app' needs the sandbox's app identity")
                return None
            return self.app.object_id
        kind, _, name = ref.partition(":")
        if kind == "identity":
            uai = self.identities.get(name.lower())
            if uai is None:
                self.problem(path, f"unknown identity {name!r}")
                return None
            return uai.principal.object_id
        if kind == "account":
            principal = self.account_principals.get(name.lower())
            if principal is None:
                self.problem(path, f"unknown account {name!r} or it has no system identity")
                return None
            return principal.object_id
        try:
            return str(uuid.UUID(ref))
        except ValueError:
            self.problem(path, f"not a principal: {ref!r} (app, identity:N, account:N, a GUID)")
            return None

    def scope(self, ref: str, path: str) -> str | None:
        if ref.startswith("/"):
            return ref
        kind, _, name = ref.partition(":")
        if kind == "subscription":
            s = self.sub(name, path)
            return f"/subscriptions/{s.subscription_id}" if s else None
        if kind == "vault":
            vault = self.vaults.get(name.lower())
            if vault is None:
                self.problem(path, f"unknown vault {name!r}")
                return None
            return vault.resource_id
        if kind == "key":
            vault_name, _, key = name.partition("/")
            vault = self.vaults.get(vault_name.lower())
            if vault is None or key.lower() not in vault.keys:
                self.problem(path, f"unknown key {name!r} (use key:VAULT/KEY)")
                return None
            return f"{vault.resource_id}/keys/{key}"
        if kind == "topic":
            for topic in self.doc.get("topics", []):
                if topic["name"].lower() == name.lower():
                    s = self.sub(topic["subscription"], path)
                    rg = topic.get("resourceGroup", "rg-cmk")
                    if s is None:
                        return None
                    return (
                        f"/subscriptions/{s.subscription_id}/resourceGroups/{rg}"
                        f"/providers/Microsoft.EventGrid/topics/{topic['name']}"
                    )
            self.problem(path, f"unknown topic {name!r}")
            return None
        self.problem(path, f"not a scope: {ref!r} (subscription:, vault:, key:, topic:, or /...)")
        return None

    # sections -------------------------------------------------------------------------

    def build(self) -> None:
        tenants = self.doc.get("tenants") or [{"name": "main"}]
        for i, tenant in enumerate(tenants):
            default = self.world.tenant_id if i == 0 else _derived_id("tenant", tenant["name"])
            self.tenants[tenant["name"].lower()] = tenant.get("id", default)
        for i, item in enumerate(self.doc.get("subscriptions", [])):
            tenant_name = item.get("tenant", tenants[0]["name"]).lower()
            tenant_id = self.tenants.get(tenant_name)
            if tenant_id is None:
                self.problem(f"$.subscriptions[{i}].tenant", f"unknown tenant {tenant_name!r}")
                tenant_id = self.world.tenant_id
            sub_id = item.get("id", _derived_id("subscription", item["name"])).lower()
            s = Subscription(sub_id, tenant_id, item["name"])
            self.world.subscriptions[sub_id] = s
            self.subs[item["name"].lower()] = s
            self.subs[sub_id] = s
        for i, item in enumerate(self.doc.get("identities", [])):
            self.identity(item, f"$.identities[{i}]")
        for i, item in enumerate(self.doc.get("vaults", [])):
            self.vault(item, f"$.vaults[{i}]")
        for i, item in enumerate(self.doc.get("accounts", [])):
            self.accounts(item, f"$.accounts[{i}]")
        for i, item in enumerate(self.doc.get("vaults", [])):
            for j, policy in enumerate(item.get("accessPolicies", [])):
                pid = self.principal(policy["principal"], f"$.vaults[{i}].accessPolicies[{j}]")
                vault = self.vaults.get(item["name"].lower())
                if pid and vault:
                    vault.access_policies.setdefault(pid, set()).update(policy["keys"])
        for i, item in enumerate(self.doc.get("roleAssignments", [])):
            path = f"$.roleAssignments[{i}]"
            pid = self.principal(item["principal"], f"{path}.principal")
            scope = self.scope(item["scope"], f"{path}.scope")
            if pid and scope:
                try:
                    self.world.grant(pid, scope, item["role"])
                except ValueError as exc:
                    self.problem(f"{path}.role", str(exc))

    def identity(self, item: dict[str, Any], path: str) -> None:
        s = self.sub(item["subscription"], f"{path}.subscription")
        if s is None:
            return
        rg = item.get("resourceGroup", "rg-identities")
        resource_id = (
            f"/subscriptions/{s.subscription_id}/resourceGroups/{rg}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{item['name']}"
        )
        principal = Principal(
            _derived_id("identity-oid", resource_id.lower()),
            _derived_id("identity-client", resource_id.lower()),
            s.tenant_id,
            item["name"],
        )
        self.world.add_principal(principal)
        self.identities[item["name"].lower()] = UserAssignedIdentity(resource_id, principal)

    def vault(self, item: dict[str, Any], path: str) -> None:
        s = self.sub(item["subscription"], f"{path}.subscription")
        if s is None:
            return
        kind = item.get("kind", "vault")
        vault = VaultState(
            name=item["name"].lower(),
            kind=VaultKind(kind),
            subscription_id=s.subscription_id,
            resource_group=item.get("resourceGroup", "rg-keys"),
            location=self.location(item["location"], f"{path}.location"),
            tenant_id=s.tenant_id,
            dns_suffix=_VAULT_SUFFIX[(kind, item.get("cloud", "public"))],
            soft_delete=item.get("softDelete", True),
            purge_protection=item.get("purgeProtection", True),
            retention_days=item.get("retentionDays", 90),
            enable_rbac_authorization=item.get("rbac", True),
        )
        network = item.get("network", {})
        vault.network_default_action = network.get("defaultAction", "Allow")
        vault.network_bypass = network.get("bypass", "AzureServices")
        if vault.host in self.world.vaults:
            self.problem(f"{path}.name", f"duplicate vault {vault.name!r}")
        self.world.vaults[vault.host] = vault
        self.vaults[vault.name] = vault
        for j, key in enumerate(item.get("keys", [])):
            self.key(vault, key, f"{path}.keys[{j}]")

    def key(self, vault: VaultState, item: dict[str, Any], path: str) -> None:
        name = item["name"]
        if name.lower() in vault.keys:
            self.problem(f"{path}.name", f"duplicate key {name!r} in vault {vault.name}")
            return
        kty = item.get("kty", "RSA")
        for k, version in enumerate(item.get("versions") or [{}]):
            vpath = f"{path}.versions[{k}]"
            self.add_version(
                self.world,
                vault,
                name,
                kty=kty,
                size=version.get("size", item.get("size", 2048)),
                curve=item.get("curve"),
                key_ops=version.get("keyOps", item.get("keyOps")),
                enabled=version.get("enabled", True),
                not_before=self.when(version.get("nbf"), f"{vpath}.nbf"),
                expires=self.when(version.get("exp"), f"{vpath}.exp"),
                created=self.when(version.get("created"), f"{vpath}.created") or self.now,
                tags=dict(item.get("tags", {})),
            )
        policy = item.get("rotationPolicy")
        if policy is not None:
            vault.keys[name.lower()].rotation_policy = RotationPolicy(
                expiry_time=policy.get("expiryTime"),
                lifetime_actions=list(policy.get("lifetimeActions", [])),
                id=f"{vault.url}/keys/{name}/rotationpolicy",
                created=self.now,
                updated=self.now,
            )

    def accounts(self, item: dict[str, Any], path: str) -> None:
        s = self.sub(item["subscription"], f"{path}.subscription")
        if s is None:
            return
        location = self.location(item["location"], f"{path}.location")
        encryption = item.get("encryption")
        binding = self.binding(encryption, f"{path}.encryption") if encryption else None
        identity = item.get("identity", {})
        uais: list[UserAssignedIdentity] = []
        for j, name in enumerate(identity.get("userAssigned", [])):
            uai = self.identities.get(name.lower())
            if uai is None:
                self.problem(f"{path}.identity.userAssigned[{j}]", f"unknown identity {name!r}")
            else:
                uais.append(uai)
        count = item.get("count")
        template: str = item["name"]
        if count is not None and "{i" not in template:
            self.problem(f"{path}.name", "with 'count', the name must contain {i}")
            return
        for i in range(1, (count or 1) + 1):
            try:
                name = template.format(i=i) if count is not None else template
            except (ValueError, KeyError, IndexError) as exc:
                self.problem(f"{path}.name", f"bad name template {template!r}: {exc}")
                return
            self.account(
                item,
                s=s,
                location=location,
                name=name,
                binding=binding,
                identity=identity,
                uais=uais,
                path=path,
            )

    def binding(
        self, encryption: dict[str, Any], path: str
    ) -> tuple[VaultState, KeyState, KeyVersionState] | None:
        vault = self.vaults.get(encryption["vault"].lower())
        if vault is None:
            self.problem(f"{path}.vault", f"unknown vault {encryption['vault']!r}")
            return None
        key = vault.keys.get(encryption["key"].lower())
        if key is None or not key.versions:
            self.problem(f"{path}.key", f"vault {vault.name} has no key {encryption['key']!r}")
            return None
        index = encryption.get("version", "latest")
        if index == "latest":
            index = -1
        if not -len(key.versions) <= index < len(key.versions):
            self.problem(
                f"{path}.version", f"index {index} out of range: key has {len(key.versions)}"
            )
            return None
        return vault, key, key.versions[index]

    def account(
        self,
        item: dict[str, Any],
        *,
        s: Subscription,
        location: str,
        name: str,
        binding: tuple[VaultState, KeyState, KeyVersionState] | None,
        identity: dict[str, Any],
        uais: list[UserAssignedIdentity],
        path: str,
    ) -> None:
        system = (
            Principal(str(uuid.uuid4()), str(uuid.uuid4()), s.tenant_id, name)
            if identity.get("system", False)
            else None
        )
        account = AccountState(
            subscription_id=s.subscription_id,
            resource_group=item.get("resourceGroup", "rg-ai"),
            name=name,
            location=location,
            kind=item.get("kind", "AIServices"),
            sku=item.get("sku", "S0"),
            tags=dict(item.get("tags", {})),
            identity=AccountIdentity(
                system=system, user_assigned={u.resource_id.lower(): u for u in uais}
            ),
            lro_seconds=float(item.get("lroSeconds", 0.0)),
            custom_subdomain=name.lower(),
            created=self.now,
        )
        if account.resource_id.lower() in self.world.accounts:
            self.problem(f"{path}.name", f"duplicate account {name!r}")
            return
        if system is not None:
            self.world.principals[system.object_id] = system
            self.account_principals[name.lower()] = system
        if binding is not None:
            self.bind(account, binding, item["encryption"], uais, path)
        self.world.accounts[account.resource_id.lower()] = account

    def bind(
        self,
        account: AccountState,
        binding: tuple[VaultState, KeyState, KeyVersionState],
        encryption: dict[str, Any],
        uais: list[UserAssignedIdentity],
        path: str,
    ) -> None:
        vault, key, version = binding
        who = encryption.get("identity", "system")
        if who == "system":
            principal = account.identity.system
            if principal is None:
                self.problem(f"{path}.encryption.identity", "the account has no system identity")
                return
            client_id = None
        else:
            uai = next((u for u in uais if u.principal.display_name.lower() == who.lower()), None)
            if uai is None:
                self.problem(
                    f"{path}.encryption.identity",
                    f"{who!r} is not among the account's user-assigned identities",
                )
                return
            principal, client_id = uai.principal, uai.principal.client_id
        account.encryption = Encryption(
            key_source="Microsoft.KeyVault",
            key_vault_uri=f"{vault.url}/",
            key_name=key.name,
            key_version=version.version,
            identity_client_id=client_id,
        )
        account.binding_history.append((self.now, version.version))
        if encryption.get("grantKeyAccess", True):
            if vault.enable_rbac_authorization or vault.kind is VaultKind.MANAGED_HSM:
                scope = f"{vault.resource_id}/keys/{key.name}"
                # user-assigned identities are shared by many accounts: grant once
                if (principal.object_id, scope) not in self.key_grants:
                    self.key_grants.add((principal.object_id, scope))
                    self.world.grant(principal.object_id, scope, KEY_ACCESS_ROLE)
            else:
                vault.access_policies.setdefault(principal.object_id, set()).update(
                    KEY_ACCESS_PERMISSIONS
                )


AddVersion = Callable[..., KeyVersionState]


def _key_version_adder() -> AddVersion:
    """The Key Vault service's add_key_version (no events), or a local fallback."""
    try:
        from cmk.sandbox.keyvault import add_key_version  # noqa: PLC0415 (optional module)
    except ImportError:
        return _add_key_version_fallback

    def add(world: World, vault: VaultState, key_name: str, **kwargs: Any) -> KeyVersionState:
        kwargs["emit"] = False
        result: KeyVersionState = add_key_version(world, vault, key_name, **kwargs)
        return result

    return add


def _add_key_version_fallback(
    world: World,
    vault: VaultState,
    key_name: str,
    *,
    kty: str,
    size: int | None,
    curve: str | None,
    key_ops: list[str] | None,
    enabled: bool,
    not_before: datetime | None,
    expires: datetime | None,
    created: datetime,
    tags: dict[str, str],
) -> KeyVersionState:
    key = vault.keys.setdefault(key_name.lower(), KeyState(name=key_name))
    rsa = kty.startswith("RSA")
    version = KeyVersionState(
        version=new_key_version_id(),
        kty=kty,
        size=size if rsa else None,
        curve=None if rsa else (curve or "P-256"),
        key_ops=key_ops or ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
        enabled=enabled,
        created=created,
        updated=created,
        not_before=not_before,
        expires=expires,
        tags=tags,
        modulus=secrets.token_bytes((size or 2048) // 8) if rsa else b"",
    )
    key.versions.append(version)
    return version


def build_world(
    document: dict[str, Any],
    *,
    tenant_id: str | None = None,
    app: Principal | None = None,
    source: str = "<scenario>",
) -> SeededWorld:
    """A world from a validated scenario document (see :func:`load`); ``app`` is the
    principal that ``"app"`` refers to. Raises ScenarioError naming every problem."""
    world = World(tenant_id=tenant_id)
    if app is not None:
        world.add_principal(app)
    builder = _Builder(document, world, app)
    with world.lock:
        builder.build()
    if builder.problems:
        raise ScenarioError(source, builder.problems)
    topics: list[TopicSpec] = []
    for i, item in enumerate(document.get("topics", [])):
        s = builder.sub(item["subscription"], f"$.topics[{i}].subscription")
        if s is not None:
            topics.append(
                TopicSpec(
                    name=item["name"],
                    region=builder.location(item["location"], f"$.topics[{i}].location"),
                    subscription_id=s.subscription_id,
                    resource_group=item.get("resourceGroup", "rg-cmk"),
                    key=item.get("key"),
                    input_schema=item.get("inputSchema"),
                )
            )
    faults = [
        FaultSpec(
            host=f.get("host", "*"),
            path=f.get("path"),
            method=f.get("method"),
            status=f.get("status"),
            retry_after=f.get("retryAfter"),
            latency=f.get("latency", 0.0),
            drop=f.get("drop", False),
            probability=f.get("probability", 1.0),
            count=f.get("count"),
        )
        for f in document.get("faults", [])
    ]
    if builder.problems:
        raise ScenarioError(source, builder.problems)
    return SeededWorld(
        world=world,
        topics=topics,
        faults=faults,
        throttling=document.get("throttling", True),
        identities=builder.identities,
    )
