// Role assignment on one managed subscription (main.bicep deploys this module per entry of
// managedSubscriptionIds). The custom role carries only what the app does on Cognitive
// Services accounts; it is defined per subscription and assignable there only.
targetScope = 'subscription'

param appPrincipalId string
param environmentName string

@description('Principal ids of operators who run `cmk sweep` / `cmk rotate` from their shell.')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

// Why each action:
// - accounts/read: GET an account (reload before acting, verify after PATCH), the
//   per-subscription list of accounts (the sweep's fallback) and the rows Resource Graph
//   returns (it only returns resources the caller may read).
// - accounts/write: PATCH properties.encryption.keyVaultProperties.keyVersion.
// - locations/operationResults/read: poll the PATCH's Azure-AsyncOperation status.
// Not included: listKeys, delete, identity assignment, anything on other resource types, and
// - Microsoft.Resources/subscriptions/read: the app's one subscription call is ARM's
//   `GET /subscriptions` (cmk/adapters/subscriptions.py: the scope when CMK_SUBSCRIPTIONS is
//   unset, and how a configured subscription it cannot see is told apart). ARM lists a
//   subscription to whoever holds any role assignment at, above or inside it — here, this
//   role's own assignment at the subscription — and checks no action for the list. Nothing
//   reads one subscription (`GET /subscriptions/{id}`).
// - Microsoft.Resources/subscriptions/resourceGroups/read: nothing the app or `cmk` runs lists
//   or reads a resource group: accounts are found by Resource Graph's Resources table and by
//   the per-subscription account list, both under accounts/read.
var accountOperatorActions = [
  'Microsoft.CognitiveServices/accounts/read'
  'Microsoft.CognitiveServices/accounts/write'
  'Microsoft.CognitiveServices/locations/operationResults/read'
]

resource accountOperator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'cmk-rotator-account-operator', environmentName)
  properties: {
    roleName: 'CMK rotator account operator (${environmentName}, ${subscription().subscriptionId})'
    description: 'Reads Cognitive Services accounts and updates their customer-managed key version.'
    type: 'CustomRole'
    permissions: [
      {
        actions: accountOperatorActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      subscription().id
    ]
  }
}

// Why: the sweep inventories every CMK-enabled account in this subscription and the queue
// worker PATCHes accounts anywhere in it; accounts live in any resource group, so the scope
// is the subscription, with the narrow custom role above.
resource appAccountOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, appPrincipalId, accountOperator.id)
  properties: {
    roleDefinitionId: accountOperator.id
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: operators' `cmk status`, `sweep` and `rotate` inventory and move accounts exactly as
// the app does; the same narrow role, on the same scope.
resource operatorAccountOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(subscription().id, principalId, accountOperator.id)
  properties: {
    roleDefinitionId: accountOperator.id
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]

// Why each action: `cmk smoke` decides the account rights (the operator's own and the app's)
// from the role assignments at this subscription and their role definitions; without these
// reads both rows stay `unverified`. They expose who holds which role here, no data, and
// change nothing. Operators only: the app never reads role assignments.
var grantReaderActions = [
  'Microsoft.Authorization/roleAssignments/read'
  'Microsoft.Authorization/roleDefinitions/read'
]

resource grantReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'cmk-rotator-grant-reader', environmentName)
  properties: {
    roleName: 'CMK rotator grant reader (${environmentName}, ${subscription().subscriptionId})'
    description: 'Reads role assignments and role definitions, so cmk smoke can check who holds the rotator roles.'
    type: 'CustomRole'
    permissions: [
      {
        actions: grantReaderActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      subscription().id
    ]
  }
}

// Why: `cmk smoke` run by an operator checks the account role of the operator and of the app
// here (docs/deployment.md); reading role assignments is what decides those rows.
resource operatorGrantReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(subscription().id, principalId, grantReader.id)
  properties: {
    roleDefinitionId: grantReader.id
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]

output roleDefinitionId string = accountOperator.id
