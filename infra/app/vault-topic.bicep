// The Event Grid system topic of one Key Vault, deployed in the vault's own subscription and
// resource group (vaults.bicep scopes this module there, outside what azd down deletes). A
// vault has at most one system topic; if it already has one, set the vault's systemTopicName
// in main.bicep's vaults: vault-topic-adopted.bicep then reads it instead of this module.
// The system-assigned identity lets Event Grid write dead letters to the app's storage
// (deadLetterWithResourceIdentity; its grant is in rbac.bicep).
param vaultName string
param location string
param tags object = {}
param topicName string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: topicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

output name string = systemTopic.name
output id string = systemTopic.id
output principalId string = systemTopic.identity.principalId
