// CRM Mailbox Sync on Azure: a Flex Consumption Function App (Python 3.11) with identity-only storage,
// its secrets in Key Vault and telemetry in Application Insights. Deploy into an existing resource group:
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     -p graphClientId=<app id> graphClientSecret=<secret> tokenEncryptionKey=<kid:base64key>
//
// then publish the code with `func azure functionapp publish <functionAppName>`. docs/deploy.md walks
// through it, including the Entra app registration the outputs below are for.

targetScope = 'resourceGroup'

@description('Azure region for every resource; it must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Short name the resource names start with: 2-12 lowercase letters, digits or dashes, starting with a letter.')
@minLength(2)
@maxLength(12)
param namePrefix string = 'crmsync'

@description('Application (client) id of the Entra app registration (GRAPH_CLIENT_ID).')
param graphClientId string

@description('A client secret of that app registration (GRAPH_CLIENT_SECRET); stored in Key Vault only.')
@secure()
param graphClientSecret string

@description('Token cache encryption key(s), kid:base64key[,kid:base64key...], first is current (TOKEN_ENCRYPTION_KEY); stored in Key Vault only.')
@secure()
param tokenEncryptionKey string

@description('Identity platform host (GRAPH_AUTHORITY_HOST).')
param graphAuthorityHost string = 'https://login.microsoftonline.com'

@description('Microsoft Graph root (GRAPH_BASE_URL).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('REQUESTS_CA_BUNDLE: a CA bundle path inside the deployed app; empty (the default) leaves it unset, so the system bundle is used.')
param requestsCaBundle string = ''

@description('Upper bound of instances the app scales out to (Graph limits are per mailbox and per tenant, not per instance).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Storage replication.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_GRS'

@description('Days Log Analytics keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Tags for every resource.')
param tags object = {}

var suffix = uniqueString(resourceGroup().id, namePrefix)
var compactPrefix = take(toLower(replace(namePrefix, '-', '')), 9)
var functionAppName = '${namePrefix}-${suffix}'
var deploymentContainerName = 'app-package'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${namePrefix}-${suffix}'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    workspaceName: 'log-${namePrefix}-${suffix}'
    appInsightsName: 'appi-${namePrefix}-${suffix}'
    retentionInDays: logRetentionInDays
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: 'st${compactPrefix}${suffix}'
    skuName: storageSku
    deploymentContainerName: deploymentContainerName
    tags: tags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    name: 'kv${compactPrefix}${suffix}'
    graphClientSecret: graphClientSecret
    tokenEncryptionKey: tokenEncryptionKey
    tags: tags
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: identity.properties.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    name: functionAppName
    planName: 'plan-${namePrefix}-${suffix}'
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsConnectionString: monitoring.outputs.connectionString
    graphClientSecretUri: keyVault.outputs.graphClientSecretUri
    tokenEncryptionKeyUri: keyVault.outputs.tokenEncryptionKeyUri
    graphClientId: graphClientId
    graphAuthorityHost: graphAuthorityHost
    graphBaseUrl: graphBaseUrl
    requestsCaBundle: requestsCaBundle
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    tags: tags
  }
  // The host and the Key Vault references need the roles from their first start.
  dependsOn: [
    roles
  ]
}

var appUrl = 'https://${functionApp.outputs.defaultHostName}'

@description('Name of the Function App: func azure functionapp publish <this>.')
output functionAppName string = functionApp.outputs.name

@description('Public URL of the app (PUBLIC_BASE_URL).')
output appUrl string = appUrl

@description('Redirect URIs to register on the Entra app (platform: Web).')
output redirectUris array = [
  '${appUrl}/api/auth/callback'
  '${appUrl}/api/auth/admin-consent/callback'
]

@description('Microsoft Graph change and lifecycle notification URLs the app subscribes with.')
output notificationUrls array = [
  '${appUrl}/api/notifications'
  '${appUrl}/api/notifications/lifecycle'
]

@description('Key Vault holding graph-client-secret and token-encryption-key (for rotation).')
output keyVaultName string = keyVault.outputs.name

@description('Storage account (tables, queues, deployment packages).')
output storageAccountName string = storage.outputs.name
