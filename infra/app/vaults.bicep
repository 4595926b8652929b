// Step 2 of the deployment: the vault side. For each vault, in the vault's own subscription
// and resource group, an Event Grid system topic and the app's key role; in the app's resource
// group, the topics' dead-letter grant. It is a deployment of its own, never a module of
// main.bicep, so that nothing azd records as its own reaches a vault's resource group, which
// holds the keys (`azd down` deletes the resource groups tagged azd-env-name=<environment
// name>; the hooks refuse a vault group that carries that tag). The azd postprovision
// hook (infra/hooks/) runs it after main.bicep, before the code is published, or
//   az deployment sub create --location <region> \
//     --template-file infra/app/vaults.bicep --parameters @<file>
// with the values main.bicep outputs (docs/deployment.md). `azd down` leaves all of it in place.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('The azd environment name (main.bicep environmentName); names the custom key role.')
param environmentName string

@description('Principal the key role is granted to (main.bicep output CMK_APP_PRINCIPAL_ID).')
param appPrincipalId string

@description('The app\'s resource group (AZURE_RESOURCE_GROUP).')
param appResourceGroup string

@description('The app storage account (AZURE_STORAGE_ACCOUNT_NAME).')
param storageAccountName string

@description('Dead-letter container (EVENT_DEAD_LETTER_CONTAINER).')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('The vaults: [{name, subscriptionId, resourceGroup, location, systemTopicName, adopt}] (EVENT_VAULTS). adopt: the topic exists and is left as it is.')
param vaults array

@description('Principal ids of operators granted the key role too, and read access to the vault and its role assignments for cmk smoke (main.bicep output CMK_OPERATOR_PRINCIPAL_IDS).')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalIds (CMK_OPERATOR_PRINCIPAL_TYPE).')
param operatorPrincipalType string = 'Group'

@description('Tags of the system topics the template creates.')
param tags object = {}

// Vaults whose topic this deployment creates, and vaults whose existing topic it adopts.
// (A conditional, not &&: ARM's if() evaluates only the branch taken, so v.adopt is read only
// where it exists.)
var createdTopicVaults = filter(vaults, v => !(contains(v, 'adopt') ? bool(v.adopt) : false))
var adoptedTopicVaults = filter(vaults, v => contains(v, 'adopt') ? bool(v.adopt) : false)

// One Key Vault system topic per vault (a system topic lives next to its source). Its
// identity writes dead letters.
module vaultTopics './vault-topic.bicep' = [for v in createdTopicVaults: {
  name: 'cmk-vault-topic-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    location: v.location
    tags: tags
    topicName: v.systemTopicName
  }
}]

// An adopted topic is read, never redeployed: its tags, identity and other subscribers stay
// as they are. It must have a system-assigned identity (the postprovision hook refuses to
// deploy, naming the fix, when it has none).
module adoptedTopics './vault-topic-adopted.bicep' = [for v in adoptedTopicVaults: {
  name: 'cmk-vault-topic-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    topicName: v.systemTopicName
  }
}]

// batchSize(1): vaults sharing a resource group share its custom role definition.
@batchSize(1)
module rbacVaults './rbac-vault.bicep' = [for v in vaults: {
  name: 'cmk-rbac-vault-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    appPrincipalId: appPrincipalId
    vaultName: v.name
    environmentName: environmentName
    operatorPrincipalIds: operatorPrincipalIds
    operatorPrincipalType: operatorPrincipalType
  }
}]

module deadLetterWriters './rbac-dead-letter.bicep' = {
  name: 'cmk-rbac-dead-letter-${uniqueString(environmentName)}'
  scope: resourceGroup(appResourceGroup)
  params: {
    storageAccountName: storageAccountName
    deadLetterContainerName: deadLetterContainerName
    systemTopicPrincipalIds: [for (v, i) in createdTopicVaults: vaultTopics[i].outputs.principalId]
    adoptedTopicPrincipalIds: [for (v, i) in adoptedTopicVaults: adoptedTopics[i].outputs.principalId]
  }
}

output createdTopicIds array = [for (v, i) in createdTopicVaults: vaultTopics[i].outputs.id]
output adoptedTopicIds array = [for (v, i) in adoptedTopicVaults: adoptedTopics[i].outputs.id]
