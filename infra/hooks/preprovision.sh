#!/bin/sh
# azd preprovision hook: before main.bicep deploys anything, refuse an app resource group that
# is a Key Vault's (app-group-guard.sh): `azd down` would delete it, keys included. azd names
# the group rg-<environment name> (main.bicep's default; AZURE_RESOURCE_GROUP once provisioned)
# and passes CMK_VAULTS to main.bicep as its vaults.
set -eu
: "${AZURE_ENV_NAME:?run through azd, or export AZURE_ENV_NAME and CMK_VAULTS}"
. "${0%/*}/app-group-guard.sh"
app_group_guard preprovision before "${AZURE_RESOURCE_GROUP:-rg-$AZURE_ENV_NAME}" "${CMK_VAULTS:-[]}"
