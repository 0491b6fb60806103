// cmk-rotator: access outside the app's resource group, deployed by the azd `postprovision` hook
// (infra/hooks/postprovision.sh) as its own subscription deployment, NOT by `azd provision`:
// `azd down` deletes every resource group its deployment touched, and these resource groups hold the
// Key Vault and the clusters. Removal: the `predown` hook (infra/hooks/predown.sh).
//
// - on the vault: Key Vault Reader for the app; the vault's Event Grid system topic (created or reused)
//   with a system-assigned identity; that identity may write dead-lettered events to the app's container;
// - on each watched scope: the custom "cluster key rotator" role for the app;
// - on each subscription holding a watched scope: the custom "operation status reader" role for the app.
targetScope = 'subscription'

@description('Name of the azd environment (role names must be unique in the tenant, so they include it).')
param environmentName string

@description('Name of the app\'s resource group (holds the storage account with the dead-letter container).')
param appResourceGroupName string

@description('Object id of the app\'s user-assigned identity.')
param appPrincipalId string

@description('Name of the app\'s storage account.')
param storageAccountName string

@description('Blob container for dead-lettered events.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Resource id of the existing Key Vault (/subscriptions/GUID/resourceGroups/RG/providers/Microsoft.KeyVault/vaults/NAME).')
param keyVaultResourceId string

@description('Name of the vault\'s existing Event Grid system topic (a source can have only one); empty: create one in the vault\'s resource group.')
param existingSystemTopicName string = ''

@description('Subscription ids (/subscriptions/GUID) in which the app may rotate every cluster.')
param watchedSubscriptionIds array = []

@description('Resource group ids (/subscriptions/GUID/resourceGroups/NAME) holding watched clusters or the user-assigned identities they use.')
param watchedResourceGroupIds array = []

@description('Read actions for polling mongoClusters long-running operations (granted on each subscription holding a watched scope, because the operation URLs are subscription-level).')
param operationStatusActions array = [
  // Azure-AsyncOperation URL returned by the cluster PUT:
  // /subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/{location}/operationsStatus/{id}
  'Microsoft.DocumentDB/locations/operationsStatus/read'
  // Location URL (PATCH answers 202 + Location; the final result of an operation):
  // /subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/{location}/operationResults/{id}
  'Microsoft.DocumentDB/locations/operationResults/read'
]

@description('Tags for the system topic when it is created here.')
param tags object = {}

// Everything a rotation (and the read-only "doctor" checks) does at the clusters' scopes, and nothing else.
// No wildcard: each action is named, with the call that needs it.
var clusterRotatorActions = [
  // GET the cluster: register, decide, verify after the PUT, reconcile; list for `discover`.
  'Microsoft.DocumentDB/mongoClusters/read'
  // The PUT that moves keyEncryptionKeyUrl to the new key version (the only write the app makes).
  'Microsoft.DocumentDB/mongoClusters/write'
  // The PUT names the cluster's user-assigned identity (identity.userAssignedIdentities and
  // keyEncryptionKeyIdentity); ARM lets only a caller who may assign that identity send it.
  'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action'
  // doctor (read-only): read the cluster's identity to find its principal id.
  'Microsoft.ManagedIdentity/userAssignedIdentities/read'
  // doctor (read-only): read the vault a cluster uses (RBAC mode, soft delete, purge protection).
  'Microsoft.KeyVault/vaults/read'
  // doctor (read-only): check that the cluster's identity holds a key role on its vault.
  'Microsoft.Authorization/roleAssignments/read'
]

// Key Vault Reader: reads vault, key, secret and certificate metadata (key properties, list versions),
// never secret values, never a cryptographic operation (no wrapKey/unwrapKey/sign/decrypt). That is all
// the app does on the vault. Key Vault Crypto User (wrap/unwrap) or any Officer role would be more.
// Its other control-plane actions (Microsoft.Authorization/*/read, Microsoft.Resources/deployments/*,
// Microsoft.Support/*, classic alert rules) are inert or read-only on a single vault; a custom role with
// only Microsoft.KeyVault/vaults/keys/read would save little and need the vault in its assignable scopes.
var keyVaultReaderRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'

var vaultIdParts = split(keyVaultResourceId, '/')
var vaultSubscriptionId = vaultIdParts[2]
var vaultResourceGroupName = vaultIdParts[4]
var vaultName = last(vaultIdParts)

var watchedScopes = concat(watchedSubscriptionIds, watchedResourceGroupIds)
// Subscriptions (GUIDs) holding a watched scope; union() drops duplicates.
var guidsOfWatchedSubscriptions = [for id in watchedSubscriptionIds: split(id, '/')[2]]
var guidsOfWatchedResourceGroupSubscriptions = [for id in watchedResourceGroupIds: split(id, '/')[2]]
var watchedSubscriptionGuids = union(guidsOfWatchedSubscriptions, guidsOfWatchedResourceGroupSubscriptions)
var operationStatusScopes = [for sub in watchedSubscriptionGuids: '/subscriptions/${sub}']

var clusterRotatorRoleId = guid(tenant().tenantId, 'cmk-rotator', environmentName, 'cluster-key-rotator')
var operationStatusRoleId = guid(tenant().tenantId, 'cmk-rotator', environmentName, 'operation-status-reader')

resource clusterRotatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (!empty(watchedScopes)) {
  name: clusterRotatorRoleId
  properties: {
    roleName: 'cmk-rotator cluster key rotator (${environmentName})'
    description: 'Moves Azure DocumentDB (mongoClusters) to a new version of their customer-managed key; read-only checks of their identity and vault.'
    type: 'CustomRole'
    permissions: [
      {
        actions: clusterRotatorActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    // This subscription is listed too because the definition is created here.
    assignableScopes: union([subscription().id], watchedScopes)
  }
}

resource operationStatusRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (!empty(watchedScopes)) {
  name: operationStatusRoleId
  properties: {
    roleName: 'cmk-rotator operation status reader (${environmentName})'
    description: 'Reads the status of Microsoft.DocumentDB long-running operations (subscription-level URLs).'
    type: 'CustomRole'
    permissions: [
      {
        actions: operationStatusActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: union([subscription().id], operationStatusScopes)
  }
}

module vaultAccess 'modules/vault-access.bicep' = {
  name: 'cmk-rotator-vault-${environmentName}'
  scope: resourceGroup(vaultSubscriptionId, vaultResourceGroupName)
  params: {
    vaultName: vaultName
    appPrincipalId: appPrincipalId
    keyVaultReaderRoleId: keyVaultReaderRoleId
    existingSystemTopicName: existingSystemTopicName
    newSystemTopicName: 'evgt-${vaultName}'
    tags: tags
  }
}

module deadLetterAccess 'modules/deadletter-access.bicep' = {
  name: 'cmk-rotator-deadletter-${environmentName}'
  scope: resourceGroup(appResourceGroupName)
  params: {
    storageAccountName: storageAccountName
    containerName: deadLetterContainerName
    principalId: vaultAccess.outputs.systemTopicPrincipalId
  }
}

module resourceGroupAccess 'modules/role-assignment-rg.bicep' = [
  for (id, i) in watchedResourceGroupIds: {
    name: 'cmk-rotator-rg-${i}-${uniqueString(id, environmentName)}'
    scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
    dependsOn: [clusterRotatorRole]
    params: {
      principalId: appPrincipalId
      roleDefinitionGuid: clusterRotatorRoleId
      assignmentDescription: 'cmk-rotator: rotate the customer-managed key version of mongoClusters in this resource group'
    }
  }
]

module subscriptionAccess 'modules/role-assignment-sub.bicep' = [
  for (id, i) in watchedSubscriptionIds: {
    name: 'cmk-rotator-sub-${i}-${uniqueString(id, environmentName)}'
    scope: subscription(split(id, '/')[2])
    dependsOn: [clusterRotatorRole]
    params: {
      principalId: appPrincipalId
      roleDefinitionGuid: clusterRotatorRoleId
      assignmentDescription: 'cmk-rotator: rotate the customer-managed key version of mongoClusters in this subscription'
    }
  }
]

module operationStatusAccess 'modules/role-assignment-sub.bicep' = [
  for (sub, i) in watchedSubscriptionGuids: {
    name: 'cmk-rotator-ops-${i}-${uniqueString(sub, environmentName)}'
    scope: subscription(sub)
    dependsOn: [operationStatusRole]
    params: {
      principalId: appPrincipalId
      roleDefinitionGuid: operationStatusRoleId
      assignmentDescription: 'cmk-rotator: poll Microsoft.DocumentDB long-running operations in this subscription'
    }
  }
]

output EVENTGRID_SYSTEM_TOPIC_NAME string = vaultAccess.outputs.systemTopicName
output EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP string = vaultResourceGroupName
output EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID string = vaultSubscriptionId
output EVENTGRID_SYSTEM_TOPIC_CREATED bool = empty(existingSystemTopicName)
output CLUSTER_ROTATOR_ROLE_ID string = clusterRotatorRoleId
output OPERATION_STATUS_ROLE_ID string = operationStatusRoleId
