// The Event Grid system topic's identity may write dead-lettered events to one container, and only there.

@description('Name of the app\'s storage account.')
param storageAccountName string

@description('Dead-letter blob container.')
param containerName string

@description('Object id of the system topic\'s system-assigned identity.')
param principalId string

// Storage Blob Data Contributor: write the dead-letter blobs (Event Grid writes, never reads or deletes).
var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, principalId, blobDataContributorRoleId)
  scope: container
  properties: {
    description: 'cmk-rotator: Event Grid system topic writes undeliverable key events here'
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
  }
}
