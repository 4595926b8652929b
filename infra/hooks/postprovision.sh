#!/bin/sh
# azd postprovision hook: step 2 of the deployment, the vault side (infra/app/vaults.bicep):
# each vault's Event Grid system topic and the app's key role, in the vaults' own resource
# groups. A deployment of its own, which azd neither records nor tears down: `azd down` deletes
# the resource groups tagged azd-env-name=<environment name> (checked below never to be a
# vault's), and nothing of this deployment is in one. It runs after main.bicep and before the
# code is published: the app can read its keys from its first start.
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

# The app's resource group must not be a vault's, nor a vault's group carry this environment's
# azd-env-name tag (preprovision refused both already; checked again here, before the vault
# side, for a run that skipped that hook or a tag set since).
. "${0%/*}/app-group-guard.sh"
app_group_guard postprovision after "$AZURE_RESOURCE_GROUP" "$vaults"
vault_tag_guard postprovision after "$vaults"

# An adopted system topic (systemTopicName given in CMK_VAULTS) is read, never redeployed, so
# its tags and identity stay as they are; it must already have a system-assigned identity,
# which writes the dead letters. Refuse, naming the fix, before deploying anything.
if command -v python3 >/dev/null 2>&1; then
  adopted="$(printf '%s' "$vaults" | python3 -c '
import json, sys
for v in json.load(sys.stdin):
    if v.get("adopt"):
        print(v["subscriptionId"], v["resourceGroup"], v["systemTopicName"])
')"
  refused=0
  while read -r subscription group topic; do
    [ -n "$topic" ] || continue
    identity="$(az eventgrid system-topic show --subscription "$subscription" \
      --resource-group "$group" --name "$topic" --query identity.type --output tsv)" || {
      echo "postprovision: cannot read the system topic $topic in $group ($subscription) to adopt it" >&2
      refused=1
      continue
    }
    case "$identity" in
      *SystemAssigned*) ;;
      *)
        echo "postprovision: refusing to adopt the system topic $topic in $group: it has no" >&2
        echo "postprovision: system-assigned identity (identity: ${identity:-none}), which writes" >&2
        echo "postprovision: this app's dead letters. cmk-rotator does not change an adopted topic;" >&2
        echo "postprovision: add one yourself (keeping any user-assigned identity): in the portal," >&2
        echo "postprovision: the topic > Identity > System assigned > On. Then rerun." >&2
        refused=1
        ;;
    esac
  done <<ADOPTED
$adopted
ADOPTED
  [ "$refused" -eq 0 ] || exit 1
else
  echo "postprovision: python3 not found; adopted system topics are not checked for an identity" >&2
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
