// Data-plane roles of the app's identities on their own storage account and Application Insights.
// Role assignment names are guid(scope, principal, role): deterministic, so re-deploying is a no-op.
//
// Blob roles are scoped to containers, never to the account: the app's identity owns the Functions host's
// containers and may only READ its code package; only the deployment identity (used by the platform's
// one-deploy upload, functionAppConfig.deployment.storage) may write the package. So the running app's
// identity cannot rewrite its own code. Event Grid's identity writes the dead-letter container
// (deadletter-access.bicep); the app reads those blobs with the CLI's credentials, not its own.

@description('Object id of the app\'s user-assigned identity.')
param principalId string

@description('Object id of the user-assigned identity that uploads the code package.')
param deploymentPrincipalId string

@description('Name of the app\'s storage account (same resource group).')
param storageAccountName string

@description('The Functions host\'s blob containers (leases, function keys).')
param hostContainerNames array

@description('Blob container holding the code package.')
param deploymentContainerName string

@description('Name of the Application Insights component (same resource group).')
param appInsightsName string

// Functions host with identity-based AzureWebJobsStorage: creates and leases blobs in its own containers
// (azure-webjobs-hosts: timer and singleton locks; azure-webjobs-secrets: function keys). The host docs
// require Owner (it sets container metadata and manages leases), not Contributor.
var blobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// The app reads its package; it never writes it.
var blobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
// The platform's one-deploy upload writes the package with the deployment identity.
var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

// Account-wide roles for queues and tables, each with the reason.
var storageRoles = [
  {
    // Queue trigger on rotation-jobs (read, process, delete), enqueueing jobs from on_key_event and
    // reconcile (add), and the host creating/writing rotation-jobs-poison. Contributor covers the
    // Message Processor and Message Sender roles together, plus creating the poison queue.
    name: 'Storage Queue Data Contributor'
    id: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  }
  {
    // Registry (watchedclusters: read, ETag-conditional claims, register/unregister) and history
    // (rotationhistory: append, query).
    name: 'Storage Table Data Contributor'
    id: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  }
]

// Application Insights with local auth disabled accepts telemetry only from a principal holding this role.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource hostContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [
  for containerName in hostContainerNames: {
    parent: blobService
    name: containerName
  }
]

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deploymentContainerName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource hostContainerOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (containerName, i) in hostContainerNames: {
    name: guid(hostContainers[i].id, principalId, blobDataOwnerRoleId)
    scope: hostContainers[i]
    properties: {
      description: 'cmk-rotator app: Storage Blob Data Owner on the Functions host container ${containerName}'
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwnerRoleId)
    }
  }
]

resource packageReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deploymentContainer.id, principalId, blobDataReaderRoleId)
  scope: deploymentContainer
  properties: {
    description: 'cmk-rotator app: read (never write) its code package'
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataReaderRoleId)
  }
}

resource packageWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deploymentContainer.id, deploymentPrincipalId, blobDataContributorRoleId)
  scope: deploymentContainer
  properties: {
    description: 'cmk-rotator deployment identity: the platform uploads the code package here'
    principalId: deploymentPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
  }
}

resource storageAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: {
    name: guid(storage.id, principalId, role.id)
    scope: storage
    properties: {
      description: 'cmk-rotator app: ${role.name}'
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.id)
    }
  }
]

resource telemetryAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    description: 'cmk-rotator app: Monitoring Metrics Publisher (Entra ID telemetry ingestion)'
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
  }
}
