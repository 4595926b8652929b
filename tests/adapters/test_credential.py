"""A token a service refuses before it expires is replaced, not sent again.

The sandbox revokes every token issued so far (``tokens.revoke_issued()``, as a CAE
revocation or a signing-key rollover would); the wired services must go on working with
a new token from the managed identity endpoint, not retry the cached one until it
expires.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from adapter_world import RG, SUB, TEST_OPTIONS, Cloud, settings_for
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

from cmk.adapters.credential import RenewingCredential
from cmk.errors import AccessDenied
from cmk.keyid import KeyId
from cmk.resource_id import AccountId
from cmk.wiring import Services


def _arm_requests(cloud: Cloud, name: str) -> int:
    return cloud.sandbox.counters.count(
        host="management.azure.com", path=f"/accounts/{name}$", method="GET"
    )


def _renewing(services: Services) -> RenewingCredential:
    assert services.renewing is not None
    return services.renewing


class TestArm:
    async def test_a_refused_token_is_replaced_within_the_same_call(
        self, cloud: Cloud, services: Services
    ) -> None:
        """ARM refuses the cached token (401 InvalidAuthenticationToken): the same read
        is authorized again with a new token and answered, one request more."""
        version = cloud.add_version(cloud.vault).version
        cloud.add_account("acct", cloud.vault, version)
        account = AccountId(SUB, RG, "acct")
        await services.accounts.get(account)
        assert cloud.sandbox.tokens.revoke_issued() >= 1

        before = _arm_requests(cloud, "acct")
        record = await services.accounts.get(account)

        assert record.binding is not None
        assert _arm_requests(cloud, "acct") - before == 2  # refused, then answered
        assert _renewing(services).renewals == 1

    async def test_a_patch_refused_for_its_token_is_sent_again_and_applied(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A PATCH refused with 401 was not carried out: sent again with a new token, it
        moves the account (no job delivery spent, no failure)."""
        old = cloud.add_version(cloud.vault).version
        new = cloud.add_version(cloud.vault).version
        state = cloud.add_account("acct", cloud.vault, old, lro_seconds=0.0)
        record = await services.accounts.get(AccountId(SUB, RG, "acct"))
        cloud.sandbox.tokens.revoke_issued()

        await services.accounts.update_key_version(record, new, timedelta(seconds=10))

        assert state.encryption.key_version == new
        assert _renewing(services).renewals == 1

    async def test_many_requests_with_one_refused_token_renew_once(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Twenty reads that all carried the refused token make one new credential."""
        version = cloud.add_version(cloud.vault).version
        names = [f"a{i}" for i in range(20)]
        for name in names:
            cloud.add_account(name, cloud.vault, version)
        await services.accounts.get(AccountId(SUB, RG, names[0]))
        cloud.sandbox.tokens.revoke_issued()

        for name in names:
            assert (await services.accounts.get(AccountId(SUB, RG, name))).binding is not None

        assert _renewing(services).renewals == 1


class TestKeyVault:
    async def test_a_refused_token_is_replaced_within_the_same_call(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Key Vault's own challenge policy asks the credential again at once (and gets
        the cached token, refused again); then the credential is renewed and the read
        sent once more: Key Vault's policy still holds the refused token for that first
        send (refused a third time), then asks the renewed credential and is answered."""
        cloud.add_version(cloud.vault)
        key = KeyId(cloud.vault.url, "cmk")
        await services.keys.latest(key)
        cloud.sandbox.tokens.revoke_issued()
        before = cloud.sandbox.counters.count(host=cloud.vault.host, path="/keys/cmk/$")

        assert (await services.keys.latest(key)).enabled

        assert (
            cloud.sandbox.counters.count(host=cloud.vault.host, path="/keys/cmk/$") - (before) == 4
        )
        assert _renewing(services).renewals == 1

    async def test_a_new_token_refused_too_is_access_denied(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Refused again with a brand-new token (revoked as it is issued): not a stale
        token but a real refusal, reported as such."""
        cloud.add_version(cloud.vault)
        key = KeyId(cloud.vault.url, "cmk")
        await services.keys.latest(key)
        tokens = cloud.sandbox.tokens
        issue = tokens.issue

        def issue_revoked(*args: Any, **kwargs: Any) -> tuple[str, int]:
            issued = issue(*args, **kwargs)
            tokens.revoke_issued()
            return issued

        tokens.revoke_issued()
        tokens.issue = issue_revoked  # type: ignore[method-assign]
        try:
            with pytest.raises(AccessDenied, match="Unauthorized"):
                await services.keys.latest(key)
        finally:
            tokens.issue = issue  # type: ignore[method-assign]
        assert _renewing(services).renewals == 1


class _Counting(AsyncTokenCredential):
    """A credential that hands out ``token-<n>-<calls>`` (n: which one it is)."""

    built = 0

    def __init__(self) -> None:
        _Counting.built += 1
        self.n = _Counting.built
        self.calls = 0
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.calls += 1
        return AccessToken(f"token-{self.n}-{self.calls}", 4_000_000_000)

    async def close(self) -> None:
        self.closed = True


class TestRenewingCredential:
    @pytest.fixture(autouse=True)
    def _reset(self) -> None:
        _Counting.built = 0

    async def test_only_a_token_of_the_current_credential_renews(self) -> None:
        now = [0.0]
        credential = RenewingCredential(_Counting, min_interval=60.0, clock=lambda: now[0])
        first = (await credential.get_token("scope")).token
        assert credential.refused(first, "ARM")
        assert not credential.refused(first, "ARM")  # already renewed: nothing to do
        assert credential.outdated(first)
        assert (await credential.get_token("scope")).token == "token-2-1"
        assert not credential.refused("a token it never handed out", "ARM")
        assert credential.renewals == 1

    async def test_renewals_are_spaced(self) -> None:
        """A service refusing every token makes one new credential per interval."""
        now = [0.0]
        credential = RenewingCredential(_Counting, min_interval=60.0, clock=lambda: now[0])
        assert credential.refused((await credential.get_token("s")).token, "ARM")
        second = (await credential.get_token("s")).token
        now[0] = 59.0
        assert not credential.refused(second, "ARM")
        now[0] = 60.0
        assert credential.refused(second, "ARM")
        assert credential.renewals == 2

    async def test_close_closes_every_credential_it_built(self) -> None:
        built: list[_Counting] = []

        def factory() -> _Counting:
            built.append(_Counting())
            return built[-1]

        credential = RenewingCredential(factory, min_interval=0.0)
        credential.refused((await credential.get_token("s")).token, "ARM")
        await credential.close()
        assert [c.closed for c in built] == [True, True]


async def test_wiring_builds_a_renewing_credential(cloud: Cloud, azurite: str) -> None:
    async with Services.from_settings(settings_for(azurite), options=TEST_OPTIONS) as wired:
        assert isinstance(wired.credential, RenewingCredential)
