"""``enable`` against the sandbox and Azurite: preflight, identity, encryption, ledger."""

from __future__ import annotations

import copy
from datetime import timedelta

from lifecycle_rig import Wired, account_id

from cmk.events import KeyVaultEvent, parse_event
from cmk.keyid import KeyId
from cmk.lifecycle.changes import ChangeOutcome, enable
from cmk.lifecycle.requirements import KEY_ACCESS
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.keyvault.model import key_event
from cmk.sandbox.world import KeyEventType
from cmk.usecases import on_new_version


class TestEnable:
    async def test_enables_with_the_newest_valid_version(self, wired: Wired) -> None:
        """A granted identity: encryption set to the newest version, verified, recorded."""
        land = wired.land
        account = land.account("ai-ok")
        land.grant(account, land.kv)
        land.world.clock.advance(timedelta(minutes=5))
        newest = land.version(land.kv)
        change = await enable(wired.lc, account_id(account), KeyId.parse(land.key_id(land.kv)))
        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert account.encryption.key_source == "Microsoft.KeyVault"
        assert account.encryption.key_version == newest.version
        rows = await wired.ledger(account)
        assert [(r.to_version, r.state.value, r.trigger) for r in rows] == [
            (newest.version, "succeeded", "cli:enable")
        ]

    async def test_identity_without_access_is_refused_and_nothing_written(
        self, wired: Wired
    ) -> None:
        """No grant on the key: refused with the grant to make; account and ledger untouched."""
        land = wired.land
        account = land.account("ai-noaccess")
        before = copy.deepcopy((account.encryption, account.identity, account.etag))
        change = await enable(wired.lc, account_id(account), KeyId.parse(land.key_id(land.kv)))
        assert change.outcome is ChangeOutcome.REFUSED
        failed = [r.name for r in change.requirements if r.failed]
        assert failed == ["identity has get, wrapKey, unwrapKey"]
        assert "az role assignment create" in change.detail
        assert (account.encryption, account.identity, account.etag) == before
        assert await wired.ledger(account) == []

    async def test_fresh_identity_is_created_then_refused_then_completes(
        self, wired: Wired
    ) -> None:
        """No identity: enable creates one, names the exact grant; after it, a re-run binds."""
        land = wired.land
        account = land.account("ai-fresh", identity=False)
        key = KeyId.parse(land.key_id(land.kv))
        first = await enable(wired.lc, account_id(account), key)
        assert first.outcome is ChangeOutcome.REFUSED and first.identity_enabled
        principal = account.identity.system
        assert principal is not None and first.principal_id == principal.object_id
        command = (
            f'az role assignment create --role "Key Vault Crypto Service Encryption User" '
            f"--assignee-object-id {principal.object_id} --assignee-principal-type "
            f"ServicePrincipal --scope {land.kv.resource_id}/keys/cmk"
        )
        assert command in first.detail
        assert account.encryption.key_source == "Microsoft.CognitiveServices"
        land.grant(account, land.kv)
        second = await enable(wired.lc, account_id(account), key)
        assert second.outcome is ChangeOutcome.DONE, second.detail
        assert not second.identity_enabled
        assert account.encryption.key_version == land.first.version

    async def test_purgeable_vault_is_refused(self, wired: Wired) -> None:
        """A vault without purge protection: refused on the vault and the key's recoveryLevel."""
        land = wired.land
        land.kv.purge_protection = False
        account = land.account("ai-purge")
        land.grant(account, land.kv)
        change = await enable(wired.lc, account_id(account), KeyId.parse(land.key_id(land.kv)))
        assert change.outcome is ChangeOutcome.REFUSED
        failed = {r.name for r in change.requirements if r.failed}
        assert failed == {"vault purge protection", "key recoveryLevel not purgeable"}
        assert "--enable-purge-protection true" in change.detail
        assert account.encryption.key_source == "Microsoft.CognitiveServices"

    async def test_dry_run_writes_nothing_and_tells_the_truth(self, wired: Wired) -> None:
        """A dry run on an account without identity creates none and writes nothing; it is
        refused as the real run is: the identity enable creates holds no permission on the
        key, so the real run creates it and stops before binding."""
        land = wired.land
        account = land.account("ai-dry", identity=False)
        key = KeyId.parse(land.key_id(land.kv))
        dry = await enable(wired.lc, account_id(account), key, dry_run=True)
        assert dry.outcome is ChangeOutcome.REFUSED
        assert [r.name for r in dry.requirements if r.failed] == [KEY_ACCESS]
        assert "no permission on the key" in dry.detail
        assert account.identity.type == "None"
        assert await wired.ledger(account) == []
        real = await enable(wired.lc, account_id(account), key)
        assert real.outcome is ChangeOutcome.REFUSED and real.identity_enabled
        assert [r.name for r in real.requirements if r.failed] == [KEY_ACCESS]

    async def test_dry_run_with_access_granted_would_bind(self, wired: Wired) -> None:
        """An account whose identity may use the key: the dry run says it would bind, and
        the real run binds."""
        land = wired.land
        account = land.account("ai-dry-ok")
        land.grant(account, land.kv)
        key = KeyId.parse(land.key_id(land.kv))
        dry = await enable(wired.lc, account_id(account), key, dry_run=True)
        assert dry.outcome is ChangeOutcome.DRY_RUN and "would bind" in dry.detail
        assert account.encryption.key_source == "Microsoft.CognitiveServices"
        real = await enable(wired.lc, account_id(account), key)
        assert real.outcome is ChangeOutcome.DONE, real.detail

    async def test_new_version_reaches_the_account_through_rotation(self, wired: Wired) -> None:
        """After enable, a new version's event fans out and the worker moves the account."""
        land = wired.land
        account = land.account("ai-rotated")
        land.grant(account, land.kv)
        key = KeyId.parse(land.key_id(land.kv))
        assert (await enable(wired.lc, account_id(account), key)).outcome is ChangeOutcome.DONE
        land.world.clock.advance(timedelta(minutes=5))
        newer = land.version(land.kv)
        state = land.kv.keys["cmk"]
        raw = shape_event(
            key_event(land.world, KeyEventType.NEW_VERSION, land.kv, state, newer),
            "EventGridSchema",
        )
        event = parse_event(raw)
        assert isinstance(event, KeyVaultEvent)
        report = await on_new_version(wired.engine, event)
        assert report.enqueued == 1
        results = await wired.drain()
        assert [r.result.value for r in results] == ["succeeded"]
        assert account.encryption.key_version == newer.version
