# Sourced by the preprovision and postprovision hooks (POSIX sh): `azd down` must never be able
# to delete a Key Vault's resource group. What azd down deletes is chosen by a tag, not by what
# main.bicep deployed: it lists every resource group of the deployment's subscription tagged
# azd-env-name=<environment name> and deletes them all, and with --purge purges the Key Vaults
# in them (azure-dev, StandardDeployments.ListSubscriptionDeploymentResources). main.bicep puts
# that tag on the app's group, so a vault's group is at risk when it is the app's group, or when
# it carries the tag already (another azd template of the same environment name, a hand-made tag).
#   app_group_guard HOOK before|after APP_GROUP VAULTS_JSON
#     returns 1, saying what to do, when APP_GROUP is one of VAULTS_JSON[].resourceGroup;
#   vault_tag_guard HOOK before|after VAULTS_JSON
#     returns 1, saying what to do, when a vault's resource group carries the tag
#     azd-env-name=$AZURE_ENV_NAME (asks `az group list --tag`), or when az cannot tell.
# A vault counts when it is in AZURE_SUBSCRIPTION_ID (in any subscription when that is unset or
# python3 is missing). Names compare case-insensitively, as Azure does.

# The names of the vaults of VAULTS_JSON whose resource group is GROUP, one a line.
_vaults_in_group() {
  _vg_group="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')"
  if command -v python3 >/dev/null 2>&1; then
    printf '%s' "$2" | python3 -c '
import json, sys
group, subscription = sys.argv[1].lower(), sys.argv[2].lower()
for v in json.load(sys.stdin):
    same_subscription = not subscription or str(v.get("subscriptionId", "")).lower() == subscription
    if same_subscription and str(v.get("resourceGroup", "")).lower() == group:
        print(v.get("name", "?"))
' "$_vg_group" "${AZURE_SUBSCRIPTION_ID:-}"
  else
    printf '%s' "$2" | tr -d ' \n' | tr '{' '\n' \
      | grep -i "\"resourceGroup\":\"$_vg_group\"" | sed -n 's/.*"name":"\([^"]*\)".*/\1/p' || true
  fi
}

app_group_guard() {
  _hook="$1" _when="$2" _given="$3" _vaults="$4"
  _clashes="$(_vaults_in_group "$_given" "$_vaults")"
  [ -z "$_clashes" ] && return 0
  echo "$_hook: refusing: the app's resource group $_given is the resource group" >&2
  echo "$_hook: of vault(s) $(printf '%s' "$_clashes" | tr '\n' ' ')(CMK_VAULTS). main.bicep tags the" >&2
  echo "$_hook: app's group azd-env-name=<environment name>, and \`azd down\` deletes every group so" >&2
  echo "$_hook: tagged: it would delete the vault and its keys." >&2
  if [ "$_when" = before ]; then
    echo "$_hook: Nothing was deployed. Give the app a group of its own: a different environment" >&2
    echo "$_hook: name (the group is rg-<environment name>), then run azd up again." >&2
  else
    echo "$_hook: Do NOT run \`azd down\` for this environment. Give the app a group of its own" >&2
    echo "$_hook: (a different environment name, or main.bicep's resourceGroupName), provision that," >&2
    echo "$_hook: remove what main.bicep created in $_given by hand, and remove the tag from it:" >&2
    echo "$_hook: $(_untag_command "$_given") (docs/deployment.md)." >&2
  fi
  return 1
}

# The command that removes the environment's tag from resource group $1.
_untag_command() {
  printf 'az tag update --resource-id /subscriptions/%s/resourceGroups/%s --operation Delete --tags azd-env-name=%s' \
    "${AZURE_SUBSCRIPTION_ID:-<subscription-id>}" "$1" "$AZURE_ENV_NAME"
}

vault_tag_guard() {
  _hook="$1" _when="$2" _vaults="$3"
  [ "$(printf '%s' "${_vaults:-[]}" | tr -d ' \n\r\t')" = "[]" ] && return 0
  if [ -z "${AZURE_SUBSCRIPTION_ID:-}" ]; then
    if [ "$_when" = after ]; then
      echo "$_hook: refusing: AZURE_SUBSCRIPTION_ID is not set, so the resource groups \`azd down\`" >&2
      echo "$_hook: would delete (those tagged azd-env-name=$AZURE_ENV_NAME in it) cannot be checked." >&2
      echo "$_hook: Set it (azd env set AZURE_SUBSCRIPTION_ID <id>), then run azd provision again." >&2
      return 1
    fi
    # A first \`azd provision\` may run this before azd has chosen the subscription: check
    # the Azure CLI's current one now; postprovision checks azd's, before any \`azd down\`.
    echo "$_hook: AZURE_SUBSCRIPTION_ID is not set yet: checking the Azure CLI's current" >&2
    echo "$_hook: subscription; postprovision checks the deployment's own." >&2
  fi
  _tagged="$(az group list ${AZURE_SUBSCRIPTION_ID:+--subscription "$AZURE_SUBSCRIPTION_ID"} \
    --tag "azd-env-name=$AZURE_ENV_NAME" --query "[].name" --output tsv)" || {
    echo "$_hook: refusing: cannot list the resource groups tagged azd-env-name=$AZURE_ENV_NAME" >&2
    echo "$_hook: (\`az group list\` failed). \`azd down\` deletes every such group, so a vault's" >&2
    echo "$_hook: group must not be one, and that cannot be checked. The hooks use the Azure CLI:" >&2
    echo "$_hook: sign in (az login), select this subscription, then run it again." >&2
    return 1
  }
  _found=0
  for _group in $(printf '%s\n' "$_tagged" | tr -d '\r'); do
    _names="$(_vaults_in_group "$_group" "$_vaults")"
    [ -n "$_names" ] || continue
    if [ "$_found" -eq 0 ]; then
      echo "$_hook: refusing: \`azd down\` deletes every resource group of this subscription tagged" >&2
      echo "$_hook: azd-env-name=$AZURE_ENV_NAME (and \`azd down --purge\` purges the Key Vaults in them)," >&2
      echo "$_hook: and a Key Vault's group carries that tag: it would delete the vault and its keys." >&2
    fi
    _found=1
    echo "$_hook: the resource group $_group of vault(s) $(printf '%s' "$_names" | tr '\n' ' ')(CMK_VAULTS):" >&2
    echo "$_hook:   remove the tag: $(_untag_command "$_group")" >&2
  done
  [ "$_found" -eq 0 ] && return 0
  if [ "$_when" = before ]; then
    echo "$_hook: Nothing was deployed. Remove the tag as shown (or choose another environment" >&2
    echo "$_hook: name), then run azd up again." >&2
  else
    echo "$_hook: Do NOT run \`azd down\` for this environment while a vault's group has the tag." >&2
    echo "$_hook: Remove it as shown, then run \`azd provision\` again (docs/deployment.md)." >&2
  fi
  return 1
}
