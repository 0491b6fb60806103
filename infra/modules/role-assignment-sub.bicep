// One role assignment on the subscription this module is deployed to.
targetScope = 'subscription'

@description('Object id of the principal.')
param principalId string

@description('Name (GUID) of the role definition.')
param roleDefinitionGuid string

@description('Why the principal has the role.')
param assignmentDescription string

var roleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionGuid)

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, roleDefinitionId)
  properties: {
    description: assignmentDescription
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
  }
}

output id string = assignment.id
