#!/bin/sh
# azd postdeploy hook: step 2 of the deployment. The functions now exist, so Event Grid can
# validate them: subscribe them to each vault's system topic (infra/app/event-subscriptions.bicep).
# azd exports main.bicep's outputs as environment variables; arrays arrive as JSON.
set -eu

: "${AZURE_ENV_NAME:?run through azd, or export the variables main.bicep outputs}"
: "${AZURE_LOCATION:?}"
: "${AZURE_FUNCTION_APP_ID:?}"
: "${EVENT_STORAGE_ACCOUNT_ID:?}"
: "${EVENT_DEAD_LETTER_CONTAINER:?}"
vaults="${EVENT_VAULTS:-[]}"

if [ "$(printf '%s' "$vaults" | tr -d ' \n')" = "[]" ]; then
  echo "postdeploy: no vaults configured (CMK_VAULTS); no event subscriptions to create."
  exit 0
fi

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
