// In the Key Vault's resource group: the app may read key metadata, and the vault's Event Grid system
// topic exists with a system-assigned identity (used to write dead-lettered events).

@description('Name of the existing Key Vault.')
param vaultName string

@description('Object id of the app\'s user-assigned identity.')
param appPrincipalId string

@description('Built-in role the app gets on the vault (Key Vault Reader).')
param keyVaultReaderRoleId string

@description('Name of the vault\'s existing system topic; empty: create newSystemTopicName.')
param existingSystemTopicName string

@description('Name of the system topic created when existingSystemTopicName is empty.')
param newSystemTopicName string

@description('Tags for a created system topic (with the owner tag naming the environment that created it).')
param tags object

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

// Works for vaults using the Azure RBAC permission model (enableRbacAuthorization). A vault on access
// policies needs an access policy with keys: get, list instead (docs/deploy.md).
resource vaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, keyVaultReaderRoleId)
  scope: vault
  properties: {
    description: 'cmk-rotator: read key properties and list key versions (no cryptographic operation)'
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRoleId)
  }
}

resource newTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (empty(existingSystemTopicName)) {
  name: newSystemTopicName
  location: vault.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

resource existingTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = if (!empty(existingSystemTopicName)) {
  name: existingSystemTopicName
}

output systemTopicName string = empty(existingSystemTopicName) ? newTopic.name : existingTopic.name
// An existing topic must have its system-assigned identity turned on (docs/deploy.md).
output systemTopicPrincipalId string = empty(existingSystemTopicName) ? newTopic.identity.principalId : existingTopic.identity.principalId
output vaultReaderAssignmentId string = vaultReader.id
