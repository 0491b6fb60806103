// The identity assigner role on one user-assigned identity (or, with no identity name, on its whole resource
// group), in the resource group this module is deployed to.

@description('Name of the user-assigned identity; empty: the resource group this module is deployed to.')
param identityName string

@description('Object id of the principal.')
param principalId string

@description('Name (GUID) of the role definition.')
param roleDefinitionGuid string

var roleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionGuid)
var assignmentDescription = 'cmk-rotator: name this identity in the PUT of a cluster that uses it'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = if (!empty(identityName)) {
  name: empty(identityName) ? 'unused' : identityName
}

resource onIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(identityName)) {
  name: guid(identity.id, principalId, roleDefinitionId)
  scope: identity
  properties: {
    description: assignmentDescription
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
  }
}

resource onResourceGroup 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (empty(identityName)) {
  name: guid(resourceGroup().id, principalId, roleDefinitionId)
  properties: {
    description: assignmentDescription
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
  }
}

output id string = empty(identityName) ? onResourceGroup.id : onIdentity.id
