// Log Analytics workspace + workspace-based Application Insights. Local (instrumentation-key) auth is
// off: the Function App sends telemetry with its managed identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING
// and the Monitoring Metrics Publisher role, see roles.bicep). The operations workbook (infra/workbook.json,
// docs/operations.md) is linked to the Application Insights component and queries its traces.

@description('Azure region.')
param location string

@description('Log Analytics workspace name.')
param workspaceName string

@description('Application Insights component name.')
param appInsightsName string

@description('Days Log Analytics keeps logs.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

@description('Tags for every resource.')
param tags object = {}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

// The workbook's name must be a GUID: stable per resource group and component, so a redeploy updates it.
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsightsName, 'crm-sync-operations')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'CRM Mailbox Sync operations'
    category: 'workbook'
    sourceId: appInsights.id
    version: '1.0'
    serializedData: replace(loadTextContent('../workbook.json'), '__APP_INSIGHTS_ID__', appInsights.id)
  }
}

output appInsightsName string = appInsights.name
output workbookId string = workbook.id
output connectionString string = appInsights.properties.ConnectionString
