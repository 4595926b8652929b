// Role assignment on one Key Vault, deployed in the vault's resource group (vaults.bicep scopes
// this module there). The custom role carries only the key data actions the app uses; it is
// defined per resource group and assignable there only. The vault must use the Azure RBAC
// permission model; docs/deployment.md gives the access-policy equivalent.
param appPrincipalId string
param vaultName string
param environmentName string

@description('Principal ids of operators who run `cmk rotate` / `cmk versions` from their shell.')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

// Why each data action:
// - keys/read: read the key, its versions and their attributes (the event is only a pointer).
// - keys/create/action: create a same-parameter version on KeyNearExpiry when the key has no
//   rotation policy.
// - keys/rotate/action: rotate a key that has a rotation policy.
// - keyrotationpolicies/read: decide between rotate and create.
// Not included: wrap/unwrap, sign, update, delete, purge, backup, import, policy write.
var keyRotatorDataActions = [
  'Microsoft.KeyVault/vaults/keys/read'
  'Microsoft.KeyVault/vaults/keys/create/action'
  'Microsoft.KeyVault/vaults/keys/rotate/action'
  'Microsoft.KeyVault/vaults/keyrotationpolicies/read'
]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource keyRotator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'cmk-rotator-key-rotator', environmentName)
  properties: {
    roleName: 'CMK rotator key rotator (${environmentName}, ${uniqueString(resourceGroup().id)})'
    description: 'Reads keys and creates or rotates key versions; no cryptographic use of keys.'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: keyRotatorDataActions
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

// Why: the app re-reads keys named in events and by the sweep, and creates or rotates a version
// when a key nears expiry. Scoped to this vault, not its resource group.
resource appKeyRotator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, keyRotator.id)
  scope: vault
  properties: {
    roleDefinitionId: keyRotator.id
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: operators' `cmk versions`, `status` and `rotate` read keys and create or rotate a
// version exactly as the app does; the same narrow role, on this vault only.
resource operatorKeyRotator 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(vault.id, principalId, keyRotator.id)
  scope: vault
  properties: {
    roleDefinitionId: keyRotator.id
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]

// Why each action: `cmk smoke` finds the vault (vaults/read: its resource, never its keys or
// secrets) and decides the key rights (the operator's own and the app's) from the role
// assignments at the vault and their role definitions; without these reads both rows stay
// `unverified`. Operators only: the app reads keys through the data plane alone.
var vaultGrantReaderActions = [
  'Microsoft.Authorization/roleAssignments/read'
  'Microsoft.Authorization/roleDefinitions/read'
  'Microsoft.KeyVault/vaults/read'
]

resource vaultGrantReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'cmk-rotator-vault-grant-reader', environmentName)
  properties: {
    roleName: 'CMK rotator vault grant reader (${environmentName}, ${uniqueString(resourceGroup().id)})'
    description: 'Reads a vault resource, its role assignments and role definitions, so cmk smoke can check who holds the key rotator role.'
    type: 'CustomRole'
    permissions: [
      {
        actions: vaultGrantReaderActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

// Why: `cmk smoke` run by an operator checks the key role of the operator and of the app on
// this vault (docs/deployment.md). Scoped to this vault, not its resource group.
resource operatorVaultGrantReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(vault.id, principalId, vaultGrantReader.id)
  scope: vault
  properties: {
    roleDefinitionId: vaultGrantReader.id
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]
