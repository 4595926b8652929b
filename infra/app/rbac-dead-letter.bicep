// The vaults' system topics write dead letters into the app's storage with their own
// identities (deadLetterWithResourceIdentity). Deployed by vaults.bicep into the app's
// resource group, once the topics (and so their principal ids) exist.
param storageAccountName string
param deadLetterContainerName string

@description('Principal ids of the system topics vaults.bicep created.')
param systemTopicPrincipalIds array

@description('Principal ids of the existing system topics vaults.bicep adopted.')
param adoptedTopicPrincipalIds array = []

// Built-in role definition id (the same in every cloud).
var roles = {
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${deadLetterContainerName}'
}

// Why: each vault's system topic dead-letters undeliverable events with its own identity
// (deadLetterWithResourceIdentity). Blob data write on the dead-letter container only.
resource topicDeadLetterWriters 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in concat(systemTopicPrincipalIds, adoptedTopicPrincipalIds): {
  name: guid(deadLetterContainer.id, principalId, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]
