// Key Vault for the app's two secrets, GRAPH_CLIENT_SECRET and TOKEN_ENCRYPTION_KEY. Azure RBAC only (no
// access policies), soft delete and purge protection on. The Function App reads the secrets through Key
// Vault references resolved with its user-assigned identity (Key Vault Secrets User, see roles.bicep).

@description('Azure region.')
param location string

@description('Key Vault name (3-24 letters, digits and dashes, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Client secret of the Entra app registration (GRAPH_CLIENT_SECRET).')
@secure()
param graphClientSecret string

@description('Token cache encryption key(s), kid:base64key[,kid:base64key...] (TOKEN_ENCRYPTION_KEY).')
@secure()
param tokenEncryptionKey string

@description('Tags for every resource.')
param tags object = {}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    // checkov:skip=CKV_AZURE_109:Flex Consumption without VNet integration resolves Key Vault references over the public endpoint, and App Service is not a trusted service for the firewall bypass; access is RBAC-only, granted to the app's identity alone.
    // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: the public endpoint is needed without VNet integration.
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource graphClientSecretEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'graph-client-secret'
  properties: {
    // checkov:skip=CKV_AZURE_41:The value expires with the Entra app's client secret, which has its own expiry; a Key Vault expiry would stop the app resolving the reference. Rotation is documented in docs/deploy.md.
    value: graphClientSecret
    contentType: 'text/plain'
  }
}

resource tokenEncryptionKeyEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'token-encryption-key'
  properties: {
    // checkov:skip=CKV_AZURE_41:An expired key would make every stored token cache unreadable; keys are rotated by prepending a new kid:key (docs/deploy.md), not by expiry.
    value: tokenEncryptionKey
    contentType: 'text/plain'
  }
}

output name string = vault.name
output graphClientSecretUri string = graphClientSecretEntry.properties.secretUri
output tokenEncryptionKeyUri string = tokenEncryptionKeyEntry.properties.secretUri
