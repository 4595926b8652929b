// The app's user-assigned identity, created before the Function app (Azure-Samples Flex
// Consumption pattern): main.bicep grants it storage, App Insights and alert-topic access
// first, then creates the app with it, so the host never starts on an identity without its
// grants. Created in both identity modes (an unused identity holds no grant); with
// appIdentityType 'SystemAssigned' the app uses its own identity instead.
param location string
param tags object = {}
param name string

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
