# Sourced by the preprovision and postprovision hooks (POSIX sh): the app's resource group
# must never be a Key Vault's, because `azd down` deletes every resource group main.bicep
# deployed into, and a vault's group holds the keys.
#   app_group_guard HOOK before|after APP_GROUP VAULTS_JSON
# Returns 1, saying what to do, when APP_GROUP is one of VAULTS_JSON[].resourceGroup in
# AZURE_SUBSCRIPTION_ID (in any subscription when that is unset or python3 is missing).
# Names compare case-insensitively, as Azure does.
app_group_guard() {
  _hook="$1" _when="$2" _given="$3" _vaults="$4"
  _group="$(printf '%s' "$_given" | tr '[:upper:]' '[:lower:]')"
  if command -v python3 >/dev/null 2>&1; then
    _clashes="$(printf '%s' "$_vaults" | python3 -c '
import json, sys
group, subscription = sys.argv[1].lower(), sys.argv[2].lower()
for v in json.load(sys.stdin):
    same_subscription = not subscription or str(v.get("subscriptionId", "")).lower() == subscription
    if same_subscription and str(v.get("resourceGroup", "")).lower() == group:
        print(v.get("name", "?"))
' "$_group" "${AZURE_SUBSCRIPTION_ID:-}")"
  else
    _clashes="$(printf '%s' "$_vaults" | tr -d ' \n' | tr '{' '\n' \
      | grep -i "\"resourceGroup\":\"$_group\"" | sed -n 's/.*"name":"\([^"]*\)".*/\1/p')" || true
  fi
  [ -z "$_clashes" ] && return 0
  echo "$_hook: refusing: the app's resource group $_given is the resource group" >&2
  echo "$_hook: of vault(s) $(printf '%s' "$_clashes" | tr '\n' ' ')(CMK_VAULTS). \`azd down\` deletes every" >&2
  echo "$_hook: resource group this deployment touched: it would delete the vault and its keys." >&2
  if [ "$_when" = before ]; then
    echo "$_hook: Nothing was deployed. Give the app a group of its own: a different environment" >&2
    echo "$_hook: name (the group is rg-<environment name>), then run azd up again." >&2
  else
    echo "$_hook: Do NOT run \`azd down\` for this environment. Give the app a group of its own" >&2
    echo "$_hook: (a different environment name, or main.bicep's resourceGroupName), provision that," >&2
    echo "$_hook: and remove what main.bicep created in $_given by hand (docs/deployment.md)." >&2
  fi
  return 1
}
