"""What ARM calls the sandbox does not serve answer, through the real management SDKs: 501
NotImplemented for Azure's real types (the sandbox says it does not emulate them), ARM's 404
InvalidResourceType only for types and namespaces Azure does not have."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.identity import DefaultAzureCredential
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.eventgrid import EventGridManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient

from cmk.sandbox.arm.cognitive.accounts import seed_account
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import Subscription

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "rg-ai"


@pytest.fixture
def seeded(sandbox: Sandbox) -> Sandbox:
    """One account; the app is Owner of the subscription (RBAC never decides these)."""
    world = sandbox.world
    with world.lock:
        world.subscriptions[SUB] = Subscription(SUB, world.tenant_id, "ai")
        seed_account(world, SUB, RG, "acct", "eastus")
        world.grant(sandbox.app_principal.object_id, f"/subscriptions/{SUB}", "Owner")
    return sandbox


def _cognitive(subscription: str = SUB) -> CognitiveServicesManagementClient:
    return CognitiveServicesManagementClient(DefaultAzureCredential(), subscription)


def _not_emulated(caught: pytest.ExceptionInfo[HttpResponseError], what: str) -> None:
    assert caught.value.status_code == 501
    assert caught.value.error is not None
    assert caught.value.error.code == "NotImplemented"
    assert caught.value.error.message.startswith("The sandbox does not emulate ")
    assert what in caught.value.error.message


class TestRealTypesAreNotImplemented:
    def test_identity_list(self, seeded: Sandbox):
        """az identity list's call (UserAssignedIdentities_ListBySubscription): 501."""
        client = ManagedServiceIdentityClient(DefaultAzureCredential(), SUB)
        with pytest.raises(HttpResponseError) as caught:
            list(client.user_assigned_identities.list_by_subscription())
        _not_emulated(caught, "Microsoft.ManagedIdentity/userAssignedIdentities")

    def test_event_grid_system_topics(self, seeded: Sandbox):
        """az eventgrid system-topic list's call (SystemTopics_ListBySubscription): 501."""
        client = EventGridManagementClient(DefaultAzureCredential(), SUB)
        with pytest.raises(HttpResponseError) as caught:
            list(client.system_topics.list_by_subscription())
        _not_emulated(caught, "Microsoft.EventGrid/systemTopics")

    def test_account_list_keys(self, seeded: Sandbox):
        """POST accounts/{name}/listKeys, a child action of an emulated type: 501."""
        with pytest.raises(HttpResponseError) as caught:
            _cognitive().accounts.list_keys(RG, "acct")
        _not_emulated(caught, "POST ")

    def test_deleted_accounts(self, seeded: Sandbox):
        """DeletedAccounts_List: 501."""
        with pytest.raises(HttpResponseError) as caught:
            list(_cognitive().deleted_accounts.list())
        _not_emulated(caught, "Microsoft.CognitiveServices/deletedAccounts")

    def test_unknown_subscription_is_still_subscription_not_found(self, seeded: Sandbox):
        """The subscription is checked first, as for every served call."""
        client = _cognitive("00000000-0000-0000-0000-000000000000")
        with pytest.raises(HttpResponseError) as caught:
            list(client.deleted_accounts.list())
        assert caught.value.status_code == 404
        assert caught.value.error is not None
        assert caught.value.error.code == "SubscriptionNotFound"


class TestUnknownTypesStayInvalid:
    @pytest.mark.parametrize(
        "provider", ["Microsoft.KeyVault/noSuchType", "Microsoft.NoSuchNamespace/things"]
    )
    def test_invalid_resource_type(self, seeded: Sandbox, provider: str):
        """A type or namespace Azure does not have: ARM's 404 InvalidResourceType."""
        request = HttpRequest(
            "GET", f"/subscriptions/{SUB}/providers/{provider}?api-version=2024-11-01"
        )
        with _cognitive() as client:
            response = client._send_request(request)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "InvalidResourceType"
