// The Function App on a Flex Consumption plan (Linux, Python 3.11), running as a user-assigned managed
// identity: identity-based AzureWebJobsStorage, identity-based deployment storage, Key Vault references
// resolved with that identity, Entra ID auth for Application Insights. HTTPS only, TLS 1.2, no FTP, no
// basic publishing credentials (publish with `func azure functionapp publish`, which uses Entra ID).
//
// On Flex Consumption the runtime and scale live in functionAppConfig; the app settings that other plans
// use for them (FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE,
// WEBSITE_CONTENT*, ...) must not be set.

@description('Azure region.')
param location string

@description('Function App name (becomes {name}.azurewebsites.net unless Azure assigns a unique host name).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Storage account behind AzureWebJobsStorage and the app data.')
param storageAccountName string

@description('URL of the blob container for deployment packages.')
param deploymentContainerUrl string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Versionless URI of the Key Vault secret holding GRAPH_CLIENT_SECRET.')
param graphClientSecretUri string

@description('Versionless URI of the Key Vault secret holding TOKEN_ENCRYPTION_KEY.')
param tokenEncryptionKeyUri string

@description('Application (client) id of the Entra app registration.')
param graphClientId string

@description('Identity platform host.')
param graphAuthorityHost string

@description('Microsoft Graph root.')
param graphBaseUrl string

@description('CA bundle path for REQUESTS_CA_BUNDLE; empty leaves it unset (the system bundle).')
param requestsCaBundle string

@description('Upper bound of instances the app scales out to.')
param maximumInstanceCount int

@description('Memory per instance.')
param instanceMemoryMB int

@description('Tags for every resource.')
param tags object = {}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption is region-dependent and needs zone-redundant storage; it is an opt-in for deployments that need it, not a default.
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    // checkov:skip=CKV_AZURE_222:The app is a public API by design: the CRM backend (function keys), browsers (OAuth redirects) and Microsoft Graph (change notifications) call it from the internet.
    // checkov:skip=CKV_AZURE_17:Client certificates cannot be presented by browsers following OAuth redirects nor by Microsoft Graph posting notifications; CRM routes use function keys, callbacks state/clientState.
    // checkov:skip=CKV_AZURE_212:Flex Consumption is serverless: the platform scales instances (from zero) per load; there is no fixed instance count to set.
    // checkov:skip=CKV_AZURE_213:App Service health check (instance eviction) is an App Service plan feature; GET /api/health is for external uptime checks (docs/deploy.md).
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
    }
  }
}

// App settings as their own resource: PUBLIC_BASE_URL needs the site's host name.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov applies its site-config checks to every Microsoft.Web/sites/config, this app-settings one included:
  // checkov:skip=CKV_AZURE_13:Easy Auth would block the anonymous OAuth callbacks and Graph notifications; CRM routes use function keys, callbacks state/clientState (spec section 4).
  // checkov:skip=CKV_AZURE_222:Same as on the site: a public API by design.
  // checkov:skip=CKV_AZURE_63:App Service HTTP logs do not exist on Flex Consumption; requests are logged to Application Insights.
  // checkov:skip=CKV_AZURE_65:App Service detailed error pages do not exist on Flex Consumption; errors are logged to Application Insights.
  // checkov:skip=CKV_AZURE_66:App Service failed request tracing does not exist on Flex Consumption; failures are logged to Application Insights.
  // checkov:skip=CKV_AZURE_80:.NET Framework version: the app is Python (functionAppConfig.runtime).
  // checkov:skip=CKV_AZURE_88:No Azure Files mount is used; Flex Consumption runs from its deployment blob container.
  parent: site
  name: 'appsettings'
  properties: union({
    // Identity-based host storage: no connection string, no key.
    AzureWebJobsStorage__accountName: storageAccountName
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    // DefaultAzureCredential (the app's own Table/Queue clients) picks the user-assigned identity by this.
    AZURE_CLIENT_ID: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    GRAPH_CLIENT_ID: graphClientId
    GRAPH_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${graphClientSecretUri})'
    GRAPH_AUTHORITY_HOST: graphAuthorityHost
    GRAPH_BASE_URL: graphBaseUrl
    PUBLIC_BASE_URL: 'https://${site.properties.defaultHostName}'
    TOKEN_ENCRYPTION_KEY: '@Microsoft.KeyVault(SecretUri=${tokenEncryptionKeyUri})'
    // The queue the timer fills and the queue-triggered sync reads (%SYNC_QUEUE_NAME% in the trigger).
    SYNC_QUEUE_NAME: 'mailbox-sync'
  }, empty(requestsCaBundle) ? {} : {
    REQUESTS_CA_BUNDLE: requestsCaBundle
  })
}

resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
