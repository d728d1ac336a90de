"""Connections to Microsoft 365: encryption of secrets at rest, their storage, and MSAL.

- ``crypto``: ``TokenCipher`` (AES-GCM, ``TOKEN_ENCRYPTION_KEY`` with key ids for rotation).
- ``ports``: ``TokenCacheStore``, ``AuthFlowStore``, ``OrgTenantStore`` and their value types.
- ``token_cache_store``: Table Storage adapters and in-memory doubles of those ports.
- ``msal_tokens``: ``MsalIdentity`` (the identity adapter of the connect use cases) and the token
  sources ``GraphHttp`` uses (delegated per mailbox, client credentials per tenant).

The use cases that connect, re-authenticate and disconnect mailboxes are in ``sync_core.use_cases.connect``.
"""
