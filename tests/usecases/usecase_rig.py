"""The use-case test rig: a seeded multi-subscription estate and a wired Engine.

``estate`` seeds three subscriptions (westeurope), a Key Vault in the first, a Managed
HSM in the second and a vault outside the allow-list in the third; the app holds Owner
on the subscriptions and Key Vault Crypto Officer on the vaults. ``rig`` wires every real
adapter (:mod:`cmk.wiring`) to the sandbox and Azurite, with an Event Grid custom topic
that keeps the alerts, and builds the :class:`~cmk.usecases.Engine` on the sandbox clock.
``rig.drain()`` plays the queue worker: it receives jobs from the Azurite queue, runs
:func:`~cmk.usecases.rotate_account`, leaves a job that raised a transient error for a
retry and hands it to :func:`~cmk.usecases.on_poison` after five deliveries.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from cmk.adapters.jobqueue import decode_job
from cmk.errors import TransientError
from cmk.events import KeyVaultEvent, parse_event
from cmk.keyid import KeyId
from cmk.policy import KeyVersion, evaluate
from cmk.ports import (
    AlertType,
    JobStep,
    LedgerEntry,
    LedgerState,
    RotationJob,
    alert_group,
)
from cmk.resource_id import AccountId
from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import Topic, shape_event
from cmk.sandbox.keyvault.model import add_key_version, key_event
from cmk.sandbox.world import (
    AccountState,
    Encryption,
    KeyEventType,
    KeyVersionState,
    Principal,
    Subscription,
    UserAssignedIdentity,
    VaultKind,
    VaultState,
    World,
)
from cmk.usecases import Engine, JobReport, on_poison, rotate_account
from cmk.usecases.worker import KEY_UNREADABLE_CAUSE, account_lease_name
from cmk.wiring import RetryOptions, Services, WiringOptions

SUB_A = "aaaaaaaa-1111-4111-8111-111111111111"
SUB_B = "bbbbbbbb-2222-4222-8222-222222222222"
SUB_C = "cccccccc-3333-4333-8333-333333333333"
REGION = "westeurope"
ENCRYPTION_USER = "Key Vault Crypto Service Encryption User"
TEST_OPTIONS = WiringOptions(retry=RetryOptions(total=3, backoff=False), polling_interval=0.05)
MAX_DELIVERIES = 5


@dataclass
class Estate:
    """The seeded world and helpers to add versions and accounts."""

    sandbox: Sandbox
    world: World
    kv: VaultState = field(init=False)
    hsm: VaultState = field(init=False)
    outside: VaultState = field(init=False)

    def __post_init__(self) -> None:
        for sub in (SUB_A, SUB_B, SUB_C):
            self.world.subscriptions[sub] = Subscription(sub, self.world.tenant_id, sub[:8])
            self.world.grant(self.sandbox.app_principal.object_id, f"/subscriptions/{sub}", "Owner")
        tag = uuid.uuid4().hex[:6]
        self.kv = self.vault(f"kv{tag}", SUB_A)
        self.hsm = self.vault(f"hsm{tag}", SUB_B, VaultKind.MANAGED_HSM)
        self.outside = self.vault(f"out{tag}", SUB_C)

    def vault(self, name: str, sub: str, kind: VaultKind = VaultKind.VAULT) -> VaultState:
        """A vault (or Managed HSM) the app may manage keys in."""
        suffix = "vault.azure.net" if kind is VaultKind.VAULT else "managedhsm.azure.net"
        vault = VaultState(name, kind, sub, "rg-keys", REGION, self.world.tenant_id)
        vault.dns_suffix = suffix
        with self.world.lock:
            self.world.vaults[vault.host] = vault
            self.world.grant(
                self.sandbox.app_principal.object_id, vault.resource_id, "Key Vault Crypto Officer"
            )
        return vault

    def version(self, vault: VaultState, key: str = "cmk", **options: Any) -> KeyVersionState:
        """A new version of ``key`` (created now on the sandbox clock unless ``created``)."""
        with self.world.lock:
            return add_key_version(self.world, vault, key, emit=False, **options)

    def account(
        self,
        name: str,
        vault: VaultState,
        version: str,
        *,
        sub: str = SUB_A,
        key: str = "cmk",
        user_assigned: bool = False,
        grant: bool = True,
        lro_seconds: float = 0.0,
    ) -> AccountState:
        """An account bound to vault/key/version through a system- or user-assigned identity."""
        with self.world.lock:
            uais: list[UserAssignedIdentity] = []
            client_id = None
            if user_assigned:
                principal = Principal.new(f"uai-{name}", self.world.tenant_id)
                rid = (
                    f"/subscriptions/{sub}/resourceGroups/rg-id/providers"
                    f"/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{name}"
                )
                uais.append(UserAssignedIdentity(rid, principal))
                client_id = principal.client_id
            encryption = Encryption("Microsoft.KeyVault", f"{vault.url}/", key, version, client_id)
            account = seed_account(
                self.world,
                sub,
                "rg-ai",
                name,
                REGION,
                system_identity=not user_assigned,
                user_assigned=uais,
                encryption=encryption,
                lro_seconds=lro_seconds,
            )
            who = uais[0].principal if uais else account.identity.system
            if grant and who is not None:
                scope = f"{vault.resource_id}/keys/{key}"
                self.world.grant(who.object_id, scope, ENCRYPTION_USER)
        return account

    def event(
        self, kind: KeyEventType, vault: VaultState, version: KeyVersionState, key: str = "cmk"
    ) -> KeyVaultEvent:
        """The Key Vault event for ``version``, shaped by the sandbox's Event Grid and parsed."""
        state = vault.keys[key.lower()]
        raw = shape_event(key_event(self.world, kind, vault, state, version), "EventGridSchema")
        parsed = parse_event(raw)
        assert isinstance(parsed, KeyVaultEvent)
        return parsed


@dataclass
class Rig:
    """The estate, the wired services, the engine and the alert topic."""

    estate: Estate
    services: Services
    engine: Engine
    topic: Topic

    @property
    def world(self) -> World:
        return self.estate.world

    def dry(self) -> Engine:
        """The same engine in dry-run mode."""
        return replace(self.engine, settings=replace(self.engine.settings, dry_run=True))

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The alert CloudEvents the topic received (optionally of one alert type)."""
        events = list(self.topic.events)
        return [e for e in events if kind is None or e["type"] == f"CmkRotator.{kind}"]

    async def queued(self) -> list[RotationJob]:
        """The jobs visible in the queue now (peeked, not received)."""
        messages = await self.services.jobs.client.peek_messages(max_messages=32)
        return [decode_job(message.content) for message in messages]

    async def queue_length(self) -> int:
        properties = await self.services.jobs.client.get_queue_properties()
        return int(properties.approximate_message_count or 0)

    async def drain(self, *, rounds: int = 60) -> list[JobReport]:
        """Run queued jobs as the Functions host would, until the queue is empty."""
        client = self.services.jobs.client
        reports: list[JobReport] = []
        for _ in range(rounds):
            messages = [
                m async for m in client.receive_messages(max_messages=32, visibility_timeout=60)
            ]
            if not messages:
                if await self.queue_length() == 0:
                    return reports
                continue
            for message in messages:
                job = decode_job(message.content)
                try:
                    reports.append(await rotate_account(self.engine, job))
                except TransientError:
                    if (message.dequeue_count or 0) >= MAX_DELIVERIES:
                        reports.append(await on_poison(self.engine, job))
                    else:
                        await client.update_message(message, visibility_timeout=0)
                        continue
                await client.delete_message(message)
        raise AssertionError("the queue did not drain")

    async def ledger(self, account: AccountState) -> list[LedgerEntry]:
        return await self.engine.ledger.history(AccountId.parse(account.resource_id))

    def check_invariants(self) -> None:
        """No account moved backwards or to a version the policy rejected then, or off the
        allow-list (see :meth:`_check_bindings`), and no problem alerted twice: one alert
        per (subject, target version, cause group) — the failures of one move
        (account_update_failed, identity_missing) are one group. The ledger's agreement
        with ARM, and one alert per FAILED row, are :meth:`check_ledger`'s."""
        self._check_bindings()
        alerts = self.alerts()
        keys = [
            (e["subject"].lower(), e["data"]["toVersion"] or "", _group(e["type"])) for e in alerts
        ]
        assert len(keys) == len(set(keys)), f"duplicate alerts: {keys}"

    def _check_bindings(self) -> None:
        """Invariants 1 and 2 from the world's side, for every account: its versions follow
        the key's order, and each version it moved to (not the one it was seeded with)
        passes the product's own policy — :func:`cmk.policy.evaluate` with the rig's
        settings (allowed sizes, expiry margin) — at the time of the move, as the sandbox
        recorded it in ``binding_history`` (nbf reached, not expired nor expiring within
        the margin then), and in a vault on the allow-list. The history holds versions
        only, read in the account's current key: a move to another key or vault is not
        found there, and fails. The sandbox keeps no history of a version's attributes:
        enabled, nbf, exp and key_ops are judged as they are now (a version disabled or
        edited after the move, as it is now), the vault's recoveryLevel likewise."""
        settings, policy = self.engine.settings, self.engine.policy
        for account in self.world.accounts.values():
            encryption = account.encryption
            vault = self.world.vault_by_host(encryption.key_vault_uri.split("/")[2])  # type: ignore[union-attr]
            assert vault is not None
            key = encryption.key_name or ""
            versions = vault.keys[key.lower()].versions
            order = {v.version: i for i, v in enumerate(versions)}
            history = [(when, v) for when, v in account.binding_history if v is not None]
            positions = [order[v] for _, v in history]
            assert positions == sorted(positions), f"{account.name} moved backwards: {history}"
            for (_, before), (when, moved_to) in itertools.pairwise(history):
                judged = world_version(vault, key, versions[order[moved_to]])
                assert settings.vault_in_scope(judged.key_id), (
                    f"{account.name} bound to {moved_to} in {vault.url}, off the allow-list"
                )
                verdict = evaluate(
                    judged, policy, when, bound_vault=judged.key_id.with_version(before)
                )
                assert verdict.bindable, (
                    f"{account.name} bound at {when:%Y-%m-%d %H:%M:%S} to {moved_to}, which"
                    f" the policy rejected then: {'; '.join(map(str, verdict.reasons))}"
                )

    async def check_ledger(self) -> None:
        """Every SUCCEEDED row matches ARM; every FAILED row has exactly one alert."""
        entries = await self.engine.ledger.history()
        for entry in entries:
            account = self.world.account(str(entry.account_id))
            assert account is not None
            if entry.state is LedgerState.SUCCEEDED:
                assert account.encryption.key_version == entry.to_version
                assert account.provisioning_state == "Succeeded"
            if entry.state is LedgerState.FAILED:
                wanted = (str(entry.account_id).lower(), entry.to_version)
                if (entry.cause or "").startswith(KEY_UNREADABLE_CAUSE):
                    # Stopped by its key: the key's one alert stands for every account.
                    wanted = (str(entry.key_id.versionless()).lower(), None)
                mine = [
                    e
                    for e in self.alerts()
                    if (e["subject"].lower(), e["data"]["toVersion"]) == wanted
                ]
                assert len(mine) == 1, f"{entry.account_id}: {len(mine)} alerts for a failure"


def _group(event_type: str) -> str:
    """The dedup cause group of an alert CloudEvent's type (see Alert.dedup_key)."""
    return alert_group(AlertType(event_type.removeprefix("CmkRotator.")))


def world_version(vault: VaultState, key: str, state: KeyVersionState) -> KeyVersion:
    """The sandbox's version as the product would read it from Key Vault (the bundle's
    attributes; recoveryLevel is the vault's), to judge with :func:`cmk.policy.evaluate`."""
    return KeyVersion(
        key_id=KeyId(vault.url, key, state.version),
        kty=state.kty,
        size=state.size,
        key_ops=frozenset(state.key_ops),
        enabled=state.enabled,
        not_before=state.not_before,
        expires=state.expires,
        created=state.created,
        recovery_level=vault.recovery_level,
    )


async def take_queued(rig: Rig) -> list[RotationJob]:
    """Empty the job queue; the jobs that were in it, as the worker (or a producer) sent
    them, in the order the queue handed them out."""
    client = rig.services.jobs.client
    taken: list[RotationJob] = []
    while True:
        messages = [
            m async for m in client.receive_messages(max_messages=32, visibility_timeout=60)
        ]
        if not messages:
            return taken
        for message in messages:
            taken.append(decode_job(message.content))
            await client.delete_message(message)


async def take_verify(rig: Rig, account: AccountState) -> RotationJob:
    """Empty the job queue; the one VERIFY job that was queued for ``account``."""
    found = [
        job
        for job in await take_queued(rig)
        if job.step is JobStep.VERIFY and str(job.account_id) == str(account.resource_id)
    ]
    [verify] = found
    return verify


def verify_job(job: RotationJob) -> RotationJob:
    """The VERIFY job that follows ``job`` (as a producer that hands no lease on sends it)."""
    return replace(job, step=JobStep.VERIFY)


async def handed_verify(rig: Rig, job: RotationJob) -> RotationJob:
    """The VERIFY job that follows ``job`` as the worker sends it: it carries the account's
    write lease, taken here as the run that sent the update would have held it."""
    token = f"test:{uuid.uuid4().hex[:12]}"
    grant = await rig.engine.ledger.acquire_lease(
        account_lease_name(job.account_id),
        token,
        rig.engine.now(),
        rig.engine.settings.write_lease_ttl,
    )
    assert grant.granted
    return replace(job, step=JobStep.VERIFY, lease_owner=token)
