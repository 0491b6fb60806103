// cmk-rotator: access outside the app's resource group, deployed by the azd `postprovision` hook
// (infra/hooks/postprovision.sh) as its own subscription deployment, NOT by `azd provision`:
// `azd down` deletes every resource group its deployment touched, and these resource groups hold the
// Key Vault and the clusters. Removal: the `postdown` hook (infra/hooks/postdown.sh), after `azd down`.
//
// - on the vault: Key Vault Reader for the app; the vault's Event Grid system topic (created, tagged with
//   this environment's id as its owner, or reused) with a system-assigned identity; that identity may write
//   dead-lettered events to the app's container;
// - on each watched scope: the custom "cluster key rotator" role for the app;
// - on each subscription holding a watched scope: the custom "operation status reader" role for the app;
// - on each identity the clusters use (or its resource group): the custom "identity assigner" role.
// Incremental deployments never remove an assignment: the hook removes the ones for scopes no longer
// listed (it records the ids this template outputs, per kind).
targetScope = 'subscription'

@description('Name of the azd environment (role names must be unique in the tenant, so they include it).')
param environmentName string

@description('Id of this environment: the app\'s resource group id. Tags the system topic this environment creates, and seeds deployment names.')
param environmentId string

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

@description('Resource ids of the user-assigned identities the registered clusters use, or of the resource groups holding them: the app may assign exactly these to a cluster it rotates.')
param clusterIdentityScopes array = []

@description('Read actions for polling mongoClusters long-running operations (granted on each subscription holding a watched scope, because the operation URLs are subscription-level).')
param operationStatusActions array = [
  // The cluster PUT answers with Azure-AsyncOperation .../locations/{loc}/mongoClusterAzureAsyncOperation/{id}
  // and Location .../locations/{loc}/mongoClusterOperationResults/{id} (REST spec examples). Neither type
  // is in the published Microsoft.DocumentDB operations list, and an unpublished action makes ARM reject
  // the whole role (InvalidActionOrNotAction); one read-only wildcard under locations/ covers both.
  'Microsoft.DocumentDB/locations/*/read'
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
  // doctor (read-only): read the cluster's identity to find its principal id.
  'Microsoft.ManagedIdentity/userAssignedIdentities/read'
  // doctor (read-only): read the vault a cluster uses (RBAC mode, soft delete, purge protection).
  'Microsoft.KeyVault/vaults/read'
  // doctor (read-only): check that the cluster's identity holds a key role on its vault.
  'Microsoft.Authorization/roleAssignments/read'
]

// Only on the identities the clusters use (or their resource groups), never on a whole watched scope.
var identityAssignerActions = [
  // The PUT names the cluster's user-assigned identity (identity.userAssignedIdentities and
  // keyEncryptionKeyIdentity); ARM lets only a caller who may assign that identity send it.
  'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action'
  // doctor (read-only): the identity's principal id, where the identity lives outside the watched scopes.
  'Microsoft.ManagedIdentity/userAssignedIdentities/read'
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
var subscriptionsOfIdentityScopes = [for id in clusterIdentityScopes: '/subscriptions/${split(id, '/')[2]}']
// union() with an empty array drops duplicates.
var identitySubscriptionScopes = union(subscriptionsOfIdentityScopes, [])

// Role definition names (GUIDs) and role names are unique in the tenant: both carry the subscription, so
// two environments of the same name in two subscriptions of one tenant never share (or delete) one role.
var clusterRotatorRoleId = guid(tenant().tenantId, subscription().subscriptionId, 'cmk-rotator', environmentName, 'cluster-key-rotator')
var operationStatusRoleId = guid(tenant().tenantId, subscription().subscriptionId, 'cmk-rotator', environmentName, 'operation-status-reader')
var identityAssignerRoleId = guid(tenant().tenantId, subscription().subscriptionId, 'cmk-rotator', environmentName, 'identity-assigner')
var roleNameSuffix = '(${environmentName}, ${subscription().subscriptionId})'
// Nested deployment names: at most 64 characters, whatever the environment name (azd allows 64).
var deploymentToken = uniqueString(environmentId)

resource clusterRotatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (!empty(watchedScopes)) {
  name: clusterRotatorRoleId
  properties: {
    roleName: 'cmk-rotator cluster key rotator ${roleNameSuffix}'
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
    roleName: 'cmk-rotator operation status reader ${roleNameSuffix}'
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

resource identityAssignerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (!empty(clusterIdentityScopes)) {
  name: identityAssignerRoleId
  properties: {
    roleName: 'cmk-rotator identity assigner ${roleNameSuffix}'
    description: 'Lets the rotator name a cluster\'s own user-assigned identity in the cluster PUT; assigned only on those identities.'
    type: 'CustomRole'
    permissions: [
      {
        actions: identityAssignerActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: union([subscription().id], identitySubscriptionScopes)
  }
}

module vaultAccess 'modules/vault-access.bicep' = {
  name: 'cmk-rotator-vault-${deploymentToken}'
  scope: resourceGroup(vaultSubscriptionId, vaultResourceGroupName)
  params: {
    vaultName: vaultName
    appPrincipalId: appPrincipalId
    keyVaultReaderRoleId: keyVaultReaderRoleId
    existingSystemTopicName: existingSystemTopicName
    newSystemTopicName: 'evgt-${vaultName}'
    // Who created the topic: postdown deletes it only when this tag names this environment.
    tags: union(tags, { 'cmk-rotator-owner': environmentId })
  }
}

module deadLetterAccess 'modules/deadletter-access.bicep' = {
  name: 'cmk-rotator-deadletter-${deploymentToken}'
  scope: resourceGroup(appResourceGroupName)
  params: {
    storageAccountName: storageAccountName
    containerName: deadLetterContainerName
    principalId: vaultAccess.outputs.systemTopicPrincipalId
  }
}

module resourceGroupAccess 'modules/role-assignment-rg.bicep' = [
  for (id, i) in watchedResourceGroupIds: {
    name: 'cmk-rotator-rg-${i}-${uniqueString(id, environmentId)}'
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
    name: 'cmk-rotator-sub-${i}-${uniqueString(id, environmentId)}'
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
    name: 'cmk-rotator-ops-${i}-${uniqueString(sub, environmentId)}'
    scope: subscription(sub)
    dependsOn: [operationStatusRole]
    params: {
      principalId: appPrincipalId
      roleDefinitionGuid: operationStatusRoleId
      assignmentDescription: 'cmk-rotator: poll Microsoft.DocumentDB long-running operations in this subscription'
    }
  }
]

module identityAccess 'modules/role-assignment-identity.bicep' = [
  for (id, i) in clusterIdentityScopes: {
    name: 'cmk-rotator-uami-${i}-${uniqueString(id, environmentId)}'
    scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
    dependsOn: [identityAssignerRole]
    params: {
      // /subscriptions/S/resourceGroups/G has 5 segments; an identity id has 9 (its name is the last).
      identityName: length(split(id, '/')) > 5 ? last(split(id, '/')) : ''
      principalId: appPrincipalId
      roleDefinitionGuid: identityAssignerRoleId
    }
  }
]

output EVENTGRID_SYSTEM_TOPIC_NAME string = vaultAccess.outputs.systemTopicName
output EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP string = vaultResourceGroupName
output EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID string = vaultSubscriptionId
output CLUSTER_ROTATOR_ROLE_ID string = clusterRotatorRoleId
output OPERATION_STATUS_ROLE_ID string = operationStatusRoleId
output IDENTITY_ASSIGNER_ROLE_ID string = identityAssignerRoleId
// The role assignments this deployment holds, per kind: the hook removes recorded ones that are no longer
// here (a scope removed from the lists), because an incremental deployment never deletes them.
output ACCESS_VAULT_ASSIGNMENT_IDS array = [vaultAccess.outputs.vaultReaderAssignmentId]
output ACCESS_CLUSTER_RG_ASSIGNMENT_IDS array = [for (id, i) in watchedResourceGroupIds: resourceGroupAccess[i].outputs.id]
output ACCESS_CLUSTER_SUB_ASSIGNMENT_IDS array = [for (id, i) in watchedSubscriptionIds: subscriptionAccess[i].outputs.id]
output ACCESS_OPERATION_ASSIGNMENT_IDS array = [for (sub, i) in watchedSubscriptionGuids: operationStatusAccess[i].outputs.id]
output ACCESS_IDENTITY_ASSIGNMENT_IDS array = [for (id, i) in clusterIdentityScopes: identityAccess[i].outputs.id]
