// The operators' role on the Function app (main.bicep defines it, appOperatorRole, and
// deploys this module once the app exists: a grant on the app can only follow it). It holds
// what docs/deployment.md "Operating from your shell" runs with az against the app: loading its
// settings, taking its host key, showing it and listing its functions. The app itself is
// never granted it. Named guid(scope, principal, role) like every assignment (rbac.bicep).
param functionAppName string

@description('Resource id of the custom role CMK rotator app operator (main.bicep appOperatorRole).')
param roleDefinitionId string

@description('Principal ids of operators (people or a group) who run the cmk CLI and the az commands of docs/deployment.md against this deployment.')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalIds.')
param operatorPrincipalType string = 'Group'

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

// Why: operators load the app's CMK_* settings into their shell (`az functionapp config
// appsettings list`), take the host key that calls /api/status (`az functionapp keys list`),
// and read the app and its functions (`az functionapp show`, `identity show`, `function list`)
// as docs/deployment.md shows; without a grant on the app every one of those is refused.
// Scoped to this app only; the role changes nothing (no config/write, restart or publish).
resource operatorAppOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(functionApp.id, principalId, roleDefinitionId)
  scope: functionApp
  properties: {
    roleDefinitionId: roleDefinitionId
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]
