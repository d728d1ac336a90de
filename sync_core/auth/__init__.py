"""Secrets of connections at rest: their encryption and their storage.

- ``crypto``: ``TokenCipher`` (AES-GCM, ``TOKEN_ENCRYPTION_KEY`` with key ids for rotation).
- ``token_cache_store``: Table Storage adapters and in-memory doubles of the identity stores
  (``ports.identity``: ``TokenCacheStore``, ``AuthFlowStore``, ``OrgTenantStore``).

The identity adapter (MSAL) and the token sources are in ``sync_core.adapters.graph``; the use cases that
connect, re-authenticate and disconnect mailboxes are in ``sync_core.use_cases.connect``.
"""
