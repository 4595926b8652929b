// A vault's existing Event Grid system topic, adopted: read, never redeployed, so its tags,
// identity and other subscriptions stay exactly as they are. Its system-assigned identity
// writes this app's dead letters (the grant is in rbac-dead-letter.bicep); the postprovision
// hook checks that it has one before this runs and refuses, naming the fix, otherwise.
param topicName string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: topicName
}

output name string = systemTopic.name
output id string = systemTopic.id
output principalId string = systemTopic.identity.principalId
