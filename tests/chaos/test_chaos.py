"""The chaos suite: the real Functions app, on three hosts of the local Functions host (one
killed mid-run), against a sandbox throwing 429s (with and without Retry-After), 5xx,
dropped connections, slow and failing LROs, duplicated, delayed and reordered Event Grid
deliveries and a key version disabled mid-run. After the run and one sweep the estate
must be right; see :mod:`chaos_run` for the sequence and the printed figures.

The run's random draws come from the session's seed: a failing run prints it, and
``pytest tests/chaos --chaos-seed=N`` replays the same draws."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from chaos_options import FIGURES, chaos_size
from chaos_run import Binding, ChaosResult, run_chaos

from cmk.keyid import KeyId
from cmk.policy import KeyVersion, Verdict, VersionPolicy, evaluate
from cmk.ports import AlertType, LedgerEntry, LedgerState, alert_group
from cmk.sandbox.core import INTERFERING_ENV, Sandbox
from cmk.sandbox.world import KeyVersionState, VaultState
from cmk.settings import Settings

#: The run (the first test's setup) takes a couple of minutes; on a loaded 2-core machine
#: more. This ceiling only bounds a hang.
pytestmark = pytest.mark.timeout(2400)

FAILED = LedgerState.FAILED


@pytest.fixture(scope="module")
def chaos(
    sandbox_server: Sandbox, azurite: str, random_seed: int, request: pytest.FixtureRequest
) -> Iterator[ChaosResult]:
    """One chaos run for the whole module; its figures go to the terminal summary."""
    size = chaos_size(request.config)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("AZURE_") or name in INTERFERING_ENV:
                monkeypatch.delenv(name, raising=False)
        result = asyncio.run(run_chaos(sandbox_server, azurite, size, monkeypatch, random_seed))
        # The settings the app's hosts ran with (run_chaos set them in this environment).
        request.config.stash[APP_SETTINGS] = Settings.from_environ(dict(os.environ))
    request.config.stash[FIGURES] = result.figures()
    workeroutput = getattr(request.config, "workeroutput", None)
    if workeroutput is not None:  # under pytest-xdist: the controller prints the figures
        figures = json.dumps(result.figures(), indent=2, default=str)
        workeroutput.setdefault("cmk_figures", {})["chaos figures"] = figures
    print(result.figures())  # shown with -s
    try:
        yield result
    finally:
        sandbox_server.reset()


APP_SETTINGS = pytest.StashKey[Settings]()


@dataclass(frozen=True)
class Judge:
    """The app's own verdict (:func:`cmk.policy.evaluate`, with the settings its hosts ran
    with: allowed sizes, expiry margin, allow-list) on a version of the chaos world, as
    the app reads it from Key Vault (recoveryLevel is the vault's). The sandbox keeps no
    history of a version's attributes: they are judged as they are after the run, except
    the version the run disabled, known to be enabled until ``disabled_at``."""

    settings: Settings
    vaults: dict[str, VaultState]  # by name
    disabled: tuple[str, str, datetime]  # vault/key, version, when
    end: datetime  # the sandbox's clock when the run was over

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy.from_settings(self.settings)

    def version(self, key: str, state: KeyVersionState, when: datetime) -> KeyVersion:
        """``state`` of ``key`` (vault/key) as the app would have read it at ``when``."""
        vault_name, name = key.split("/")
        vault = self.vaults[vault_name]
        was_enabled = state.enabled or (
            (key, state.version) == self.disabled[:2] and when <= self.disabled[2]
        )
        return KeyVersion(
            key_id=KeyId(vault.url, name, state.version),
            kty=state.kty,
            size=state.size,
            key_ops=frozenset(state.key_ops),
            enabled=was_enabled,
            not_before=state.not_before,
            expires=state.expires,
            created=state.created,
            recovery_level=vault.recovery_level,
        )

    def verdict(
        self, key: str, state: KeyVersionState, when: datetime, bound: str | None = None
    ) -> Verdict:
        """The policy's verdict on ``state`` at ``when`` (as the move from ``bound``)."""
        judged = self.version(key, state, when)
        before = None if bound is None else judged.key_id.with_version(bound)
        return evaluate(judged, self.policy, when, bound_vault=before)

    def in_scope(self, key: str, state: KeyVersionState) -> bool:
        vault_name, name = key.split("/")
        return self.settings.vault_in_scope(KeyId(self.vaults[vault_name].url, name, state.version))


@pytest.fixture(scope="module")
def judge(chaos: ChaosResult, sandbox_server: Sandbox, request: pytest.FixtureRequest) -> Judge:
    """The app's policy over the world the run left (read before the sandbox is reset)."""
    world = sandbox_server.world
    vaults = {vault.name: vault for vault in world.vaults.values()}
    return Judge(request.config.stash[APP_SETTINGS], vaults, chaos.disabled, world.clock.now())


def _newest_bindable(chaos: ChaosResult, judge: Judge, key: str) -> KeyVersionState:
    """The newest version of ``key`` the app's policy accepts at the end of the run."""
    return [v for v in chaos.versions[key] if judge.verdict(key, v, judge.end).bindable][-1]


def _updatable(chaos: ChaosResult) -> list[Binding]:
    return [a for a in chaos.accounts if a.group != "denied"]


def _alert_key(alert: dict[str, object]) -> tuple[str, str, str]:
    """(subject, target version, cause group): the failures of one account's move are
    one group (``account_update_failed`` and ``identity_missing``), as the app dedups."""
    data = alert["data"]
    assert isinstance(data, dict)
    group = alert_group(AlertType(str(alert["type"]).removeprefix("CmkRotator.")))
    return (str(alert["subject"]).lower(), str(data["toVersion"] or ""), group)


class TestChaosRun:
    def test_updatable_accounts_end_on_the_newest_valid_version(
        self, chaos: ChaosResult, judge: Judge
    ):
        """Every account whose identity can use its key is on the newest valid version."""
        wrong = [
            (a.name, a.version, a.provisioning_state)
            for a in _updatable(chaos)
            if a.version != _newest_bindable(chaos, judge, a.key).version
            or a.provisioning_state != "Succeeded"
        ]
        assert not wrong, f"{len(wrong)} accounts not on the newest valid version: {wrong[:5]}"

    def test_moved_accounts_are_verified_in_the_ledger(self, chaos: ChaosResult):
        """Every account that moved has a SUCCEEDED ledger row for the version it is on."""
        rows = {(str(e.account_id).lower(), e.to_version): e.state for e in chaos.ledger}
        unverified = [
            a.name
            for a in chaos.accounts
            if len(a.history) > 1
            and rows.get((a.resource_id.lower(), a.version or "")) is not LedgerState.SUCCEEDED
        ]
        assert not unverified, f"moved but not verified: {unverified[:5]}"

    def test_no_account_ever_moved_backwards(self, chaos: ChaosResult):
        """Each account's binding history follows its key's version order."""
        for account in chaos.accounts:
            order = {v.version: i for i, v in enumerate(chaos.versions[account.key])}
            positions = [order[v] for _, v in account.history if v is not None]
            assert positions == sorted(positions), f"{account.name}: {account.history}"

    def test_no_account_was_bound_to_a_version_the_policy_rejects(
        self, chaos: ChaosResult, judge: Judge
    ):
        """Every move went to a version the app's own policy accepted at the time of the
        move (the sandbox's clock, as it recorded the move: enabled then — the disabled
        version only before it was disabled —, nbf reached, not expired nor expiring
        within the margin, RSA of an allowed size, wrapKey/unwrapKey, a recoverable
        vault, the same key) in a vault on the allow-list: never the rejected one; and
        nobody stays on a disabled version."""
        key, disabled, _ = chaos.disabled
        for account in chaos.accounts:
            versions = {v.version: v for v in chaos.versions[account.key]}
            for (_, before), (when, moved_to) in itertools.pairwise(account.history):
                assert moved_to is not None and before is not None, account.history
                version = versions[moved_to]
                assert judge.in_scope(account.key, version), (
                    f"{account.name} bound to {moved_to}, off the allow-list"
                )
                verdict = judge.verdict(account.key, version, when, bound=before)
                assert verdict.bindable, (
                    f"{account.name} bound at {when:%H:%M:%S} to {moved_to}, which the"
                    f" policy rejected then: {'; '.join(map(str, verdict.reasons))}"
                )
            assert account.version != chaos.rejected[1]
            if account.key == key:
                assert account.version != disabled, f"{account.name} left on a disabled version"

    def test_no_alert_is_raised_twice(self, chaos: ChaosResult):
        """No (subject, target version, cause group) was published more than once."""
        alerts = Counter(_alert_key(a) for a in chaos.alerts)
        repeated = [key for key, n in alerts.items() if n > 1]
        assert not repeated, f"alerted more than once: {repeated[:5]}"

    def test_every_permanent_failure_is_alerted(self, chaos: ChaosResult):
        """Each FAILED ledger row has an alert for its account and target version."""
        alerted = {(subject, version) for subject, version, _ in map(_alert_key, chaos.alerts)}
        failures = [e for e in chaos.ledger if e.state is FAILED]
        missing = [
            (str(e.account_id).rsplit("/", 1)[-1], e.to_version)
            for e in failures
            if (str(e.account_id).lower(), e.to_version) not in alerted
        ]
        assert not missing, f"failures without an alert: {missing[:5]}"

    def test_every_permanent_failure_is_alerted_exactly_once(self, chaos: ChaosResult):
        """Each FAILED ledger row has exactly one alert, of whatever type."""
        per_failure = Counter(
            (subject, version) for subject, version, _ in map(_alert_key, chaos.alerts)
        )
        for entry in (e for e in chaos.ledger if e.state is FAILED):
            found = per_failure[(str(entry.account_id).lower(), entry.to_version)]
            assert found == 1, f"{entry.account_id} -> {entry.to_version}: {found} alerts"

    def test_accounts_whose_identity_cannot_use_the_key_fail_and_alert(self, chaos: ChaosResult):
        """Accounts denied access to the key stay on their version, each alerted once."""
        denied = [a for a in chaos.accounts if a.group == "denied"]
        subjects = Counter(_alert_key(a)[0] for a in chaos.alerts)
        for account in denied:
            assert len(account.history) == 1, f"{account.name} moved: {account.history}"
            assert subjects[account.resource_id.lower()] >= 1, f"{account.name} not alerted"

    def test_the_rejected_version_is_alerted_once(self, chaos: ChaosResult):
        """The policy-rejected RSA-4096 version raises one version_rejected alert."""
        _, version = chaos.rejected
        found = [a for a in chaos.alerts if _alert_key(a)[1:] == (version, "version_rejected")]
        assert len(found) == 1

    def test_nothing_else_alerted(self, chaos: ChaosResult):
        """Every alert is a permanent failure in the ledger, a poisoned job, the rejected
        version, or an account left on the version disabled under it."""
        _, disabled, _ = chaos.disabled
        failed = {
            (str(e.account_id).lower(), e.to_version) for e in chaos.ledger if e.state is FAILED
        }
        on_disabled = {
            a.resource_id.lower()
            for a in chaos.accounts
            if any(v == disabled for _, v in a.history)
        }
        unexplained, poison = [], 0
        for alert in chaos.alerts:
            subject, version, kind = _alert_key(alert)
            if kind == "version_rejected" and version == chaos.rejected[1]:
                continue
            if (subject, version) in failed:
                continue
            if kind == alert_group(AlertType.BINDING_UNSAFE) and subject in on_disabled:
                continue
            if alert["data"]["cause"].startswith(
                "the job exhausted its retries"
            ):  # a later sweep may fix it
                poison += 1
                continue
            unexplained.append((subject.rsplit("/", 1)[-1], version, kind, alert["data"]))
        assert not unexplained, f"{len(unexplained)} unexplained alerts: {unexplained[:3]}"
        assert poison <= chaos.poisoned

    def test_the_ledger_agrees_with_arm(self, chaos: ChaosResult):
        """Every SUCCEEDED row names a version the account was bound to; the account's
        last move is the newest SUCCEEDED row, naming the version ARM has now; nothing is
        left PLANNED or SUBMITTED."""
        accounts = {a.resource_id.lower(): a for a in chaos.accounts}
        newest: dict[str, LedgerEntry] = {}
        for entry in chaos.ledger:
            account = accounts[str(entry.account_id).lower()]
            assert entry.state not in (LedgerState.PLANNED, LedgerState.SUBMITTED), entry
            if entry.state is LedgerState.SUCCEEDED:
                bound = [v for _, v in account.history]
                assert entry.to_version in bound, f"{account.name}: {entry} vs {bound}"
                key = account.resource_id.lower()
                if key not in newest or entry.updated > newest[key].updated:
                    newest[key] = entry
        for key, account in accounts.items():
            bound = [v for _, v in account.history]
            if len(set(bound)) > 1:  # it moved: its last move is recorded, and is ARM's
                assert key in newest, f"{account.name} moved to {bound[-1]}, no SUCCEEDED row"
                assert newest[key].to_version == bound[-1], f"{account.name}: {bound}"

    def test_the_chaos_really_happened(self, chaos: ChaosResult):
        """Faults of every kind fired, events were duplicated, a host died with work in
        flight, and the sweep moved the Managed HSM accounts (each made to happen by the
        run, not left to chance)."""
        assert all(chaos.faults[kind] > 0 for kind in ("429", "5xx", "drop", "latency"))
        assert chaos.event_duplicates > 0
        assert chaos.killed_in_flight > 0
        assert chaos.sweep_enqueued > 0
        assert sum(chaos.function_failures.values()) > 0
