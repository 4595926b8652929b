#!/bin/sh
# azd preprovision hook: before main.bicep deploys anything, refuse what would let `azd down`
# delete a Key Vault's resource group (app-group-guard.sh): an app resource group that is a
# vault's, or a vault's group tagged azd-env-name=<environment name> (azd down deletes every
# group of the subscription so tagged). azd names the app's group rg-<environment name>
# (main.bicep's default; AZURE_RESOURCE_GROUP once provisioned) and passes CMK_VAULTS to
# main.bicep as its vaults.
set -eu
: "${AZURE_ENV_NAME:?run through azd, or export AZURE_ENV_NAME and CMK_VAULTS}"
. "${0%/*}/app-group-guard.sh"
app_group_guard preprovision before "${AZURE_RESOURCE_GROUP:-rg-$AZURE_ENV_NAME}" "${CMK_VAULTS:-[]}"
vault_tag_guard preprovision before "${CMK_VAULTS:-[]}"
