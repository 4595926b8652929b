#!/bin/sh
# azd postdeploy hook: step 3 of the deployment. Event Grid validates an AzureFunction endpoint
# when a subscription is created ("Destination endpoint not found" otherwise), and a Flex
# Consumption app lists its functions only some time after the package is published: wait,
# bounded, until the three event functions are listed, then subscribe them to each vault's
# system topic (infra/app/event-subscriptions.bicep), named after the environment
# (cmk-key-new-version-$EVENT_SUBSCRIPTION_SUFFIX, ...) so that environments sharing a vault
# keep their own subscriptions.
# CMK_FUNCTIONS_WAIT_ATTEMPTS (default 40) and CMK_FUNCTIONS_WAIT_SECONDS (default 15) bound
# the wait: 10 minutes by default.
set -eu

: "${AZURE_ENV_NAME:?run through azd, or export the variables main.bicep outputs}"
: "${AZURE_LOCATION:?}"
: "${AZURE_RESOURCE_GROUP:?}"
: "${AZURE_FUNCTION_APP_NAME:?}"
: "${AZURE_FUNCTION_APP_ID:?}"
: "${EVENT_STORAGE_ACCOUNT_ID:?}"
: "${EVENT_DEAD_LETTER_CONTAINER:?}"
: "${EVENT_SUBSCRIPTION_SUFFIX:?provision again (azd provision): main.bicep outputs it}"
vaults="${EVENT_VAULTS:-[]}"
attempts="${CMK_FUNCTIONS_WAIT_ATTEMPTS:-40}"
interval="${CMK_FUNCTIONS_WAIT_SECONDS:-15}"
functions="on_key_new_version on_key_near_expiry on_key_expired"

if [ "$(printf '%s' "$vaults" | tr -d ' \n')" = "[]" ]; then
  echo "postdeploy: no vaults configured (CMK_VAULTS); no event subscriptions to create."
  exit 0
fi

# The names of the functions the app lists, one per line ("{app}/{function}" in ARM).
listed_functions() {
  az functionapp function list \
    ${AZURE_SUBSCRIPTION_ID:+--subscription "$AZURE_SUBSCRIPTION_ID"} \
    --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" \
    --query "[].name" --output tsv 2>/dev/null | sed 's#.*/##'
}

missing=""
attempt=1
while :; do
  listed="$(listed_functions || true)"
  missing=""
  for function in $functions; do
    printf '%s\n' "$listed" | grep -qx "$function" || missing="$missing $function"
  done
  [ -z "$missing" ] && break
  if [ "$attempt" -ge "$attempts" ]; then
    echo "postdeploy: after $attempts attempts the app still does not list:$missing" >&2
    echo "postdeploy: check the deployment in the portal or 'az functionapp function list'," >&2
    echo "postdeploy: then rerun 'azd hooks run postdeploy'." >&2
    exit 1
  fi
  echo "postdeploy: waiting for the functions to be listed (missing:$missing; attempt $attempt/$attempts)"
  attempt=$((attempt + 1))
  sleep "$interval"
done
echo "postdeploy: functions listed: $functions"

params="$(mktemp)"
trap 'rm -f "$params"' EXIT
cat > "$params" <<JSON
{
  "\$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "functionAppId": { "value": "$AZURE_FUNCTION_APP_ID" },
    "storageAccountId": { "value": "$EVENT_STORAGE_ACCOUNT_ID" },
    "deadLetterContainerName": { "value": "$EVENT_DEAD_LETTER_CONTAINER" },
    "subscriptionNameSuffix": { "value": "$EVENT_SUBSCRIPTION_SUFFIX" },
    "vaults": { "value": $vaults }
  }
}
JSON

echo "postdeploy: subscribing the functions to the vaults' system topics"
az deployment sub create \
  ${AZURE_SUBSCRIPTION_ID:+--subscription "$AZURE_SUBSCRIPTION_ID"} \
  --name "cmk-event-subscriptions-$AZURE_ENV_NAME" \
  --location "$AZURE_LOCATION" \
  --template-file "$(dirname "$0")/../app/event-subscriptions.bicep" \
  --parameters "@$params" \
  --output none
echo "postdeploy: event subscriptions in place"
