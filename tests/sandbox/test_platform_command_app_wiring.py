"""``cmk sandbox up --app`` wires Event Grid as infra/ does (``run_app`` in process, on a
minimal app of three Event Grid functions): only the Key Vaults of the app's allow-list
are subscribed, with the ``data.ObjectType StringIn Key`` filter, 30 delivery attempts and
a 1440-minute time-to-live (``infra/app/vault-event-subscriptions.bicep``)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from cmk.sandbox.command.app import app_settings, run_app
from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import AdvancedFilter
from cmk.sandbox.scenario.loader import example_path
from cmk.sandbox.world import KeyEvent, KeyEventType

SAMPLE_HOST_JSON = Path(__file__).parent / "sample_app" / "host.json"
APP = """
import azure.functions as func

app = func.FunctionApp()
RECEIVED = []


@app.event_grid_trigger(arg_name="event")
def on_key_new_version(event: func.EventGridEvent) -> None:
    RECEIVED.append(("on_key_new_version", event.get_json()["VaultName"]))


@app.event_grid_trigger(arg_name="event")
def on_key_near_expiry(event: func.EventGridEvent) -> None:
    RECEIVED.append(("on_key_near_expiry", event.get_json()["VaultName"]))


@app.event_grid_trigger(arg_name="event")
def on_key_expired(event: func.EventGridEvent) -> None:
    RECEIVED.append(("on_key_expired", event.get_json()["VaultName"]))
"""
ALLOWED, OTHER = "kv-cmk-weu", "kv-cmk-neu"


def _event(vault: str) -> KeyEvent:
    return KeyEvent(
        event_type=KeyEventType.NEW_VERSION,
        vault=vault,
        vault_resource_id=(
            "/subscriptions/6a1c4b57-0b7e-4d6e-9a41-1f0c2a3b4c01/resourceGroups/rg-keys"
            f"/providers/Microsoft.KeyVault/vaults/{vault}"
        ),
        vault_host=f"{vault}.vault.azure.net",
        key_name="ai-cmk",
        version="b" * 32,
        not_before=None,
        expires=None,
        time=datetime(2025, 1, 2, tzinfo=UTC),
    )


def test_only_allow_listed_key_vaults_are_subscribed(sandbox: Sandbox, tmp_path: Path) -> None:
    """The example world has two Key Vaults and a Managed HSM; with one vault on the
    allow-list, its topic alone gets the three subscriptions (infra/'s filter, attempts
    and TTL), and a new version in the other vault reaches no function."""
    (tmp_path / "function_app.py").write_text(APP)
    shutil.copy(SAMPLE_HOST_JSON, tmp_path / "host.json")
    sandbox.seed(example_path())
    assert {ALLOWED, OTHER} <= {v.name for v in sandbox.world.vaults.values()}
    settings = {
        **app_settings(sandbox, {}),
        "CMK_VAULT_ALLOWLIST": f"https://{ALLOWED}.vault.azure.net/",
    }
    with run_app(sandbox, tmp_path, settings, instances=1) as host:
        subscriptions = {s.name: s for s in sandbox.eventgrid.subscriptions}
        assert set(subscriptions) == {
            "cmk-key-new-version",
            "cmk-key-near-expiry",
            "cmk-key-expired",
        }
        for subscription in subscriptions.values():
            assert subscription.vaults == {ALLOWED}
            assert subscription.advanced_filters == (
                AdvancedFilter("StringIn", "data.ObjectType", frozenset({"key"})),
            )
            assert subscription.max_attempts == 30
            assert subscription.event_ttl_minutes == 1440
        sandbox.world.emit(_event(OTHER))
        sandbox.world.emit(_event(ALLOWED))
        sandbox.drain_events()
        assert host.module.RECEIVED == [("on_key_new_version", ALLOWED)]
    assert sandbox.eventgrid.subscriptions == []


def test_an_empty_allow_list_subscribes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """No vault on the allow-list: no subscription at all (infra/ deploys none either),
    rather than one that would match every vault."""
    (tmp_path / "function_app.py").write_text(APP)
    shutil.copy(SAMPLE_HOST_JSON, tmp_path / "host.json")
    sandbox.seed(example_path())
    settings = {**app_settings(sandbox, {}), "CMK_VAULT_ALLOWLIST": ""}
    with run_app(sandbox, tmp_path, settings, instances=1):
        assert sandbox.eventgrid.subscriptions == []
