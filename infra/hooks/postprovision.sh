#!/bin/sh
# azd postprovision hook: step 2 of the deployment, the vault side (infra/app/vaults.bicep):
# each vault's Event Grid system topic and the app's key role, in the vaults' own resource
# groups. A deployment of its own, so that `azd down` (which deletes every resource group a
# deployment it made has touched) never deletes a vault's resource group. It runs after
# main.bicep and before the code is published: the app can read its keys from its first start.
# azd exports main.bicep's outputs as environment variables; arrays arrive as JSON.
set -eu

: "${AZURE_ENV_NAME:?run through azd, or export the variables main.bicep outputs}"
: "${AZURE_LOCATION:?}"
: "${AZURE_RESOURCE_GROUP:?}"
: "${AZURE_STORAGE_ACCOUNT_NAME:?}"
: "${CMK_APP_PRINCIPAL_ID:?}"
: "${EVENT_DEAD_LETTER_CONTAINER:?}"
vaults="${EVENT_VAULTS:-[]}"
operators="${CMK_OPERATOR_PRINCIPAL_IDS:-[]}"
operator_type="${CMK_OPERATOR_PRINCIPAL_TYPE:-Group}"

if [ "$(printf '%s' "$vaults" | tr -d ' \n')" = "[]" ]; then
  echo "postprovision: no vaults configured (CMK_VAULTS); no vault-side resources to deploy."
  exit 0
fi

params="$(mktemp)"
trap 'rm -f "$params"' EXIT
cat > "$params" <<JSON
{
  "\$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "environmentName": { "value": "$AZURE_ENV_NAME" },
    "appPrincipalId": { "value": "$CMK_APP_PRINCIPAL_ID" },
    "appResourceGroup": { "value": "$AZURE_RESOURCE_GROUP" },
    "storageAccountName": { "value": "$AZURE_STORAGE_ACCOUNT_NAME" },
    "deadLetterContainerName": { "value": "$EVENT_DEAD_LETTER_CONTAINER" },
    "operatorPrincipalIds": { "value": $operators },
    "operatorPrincipalType": { "value": "$operator_type" },
    "tags": { "value": { "azd-env-name": "$AZURE_ENV_NAME" } },
    "vaults": { "value": $vaults }
  }
}
JSON

echo "postprovision: deploying the vault side (system topics, key roles) outside azd's deployment"
az deployment sub create \
  ${AZURE_SUBSCRIPTION_ID:+--subscription "$AZURE_SUBSCRIPTION_ID"} \
  --name "cmk-vaults-$AZURE_ENV_NAME" \
  --location "$AZURE_LOCATION" \
  --template-file "$(dirname "$0")/../app/vaults.bicep" \
  --parameters "@$params" \
  --output none
echo "postprovision: vault side in place"
