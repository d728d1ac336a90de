"""The IMAP provider: mail read from any IMAP server (RFC 3501) with IMAPClient.

- ``account``: where and how to log in (``ImapAccount``), limits (``ImapLimits``);
- ``connection``: TLS or STARTTLS (plaintext is never spoken), login, and the mapping of socket, TLS
  and server answers onto the product's errors;
- ``structure``: BODYSTRUCTURE → text parts to fetch and attachment summaries (pure);
- ``cursor``: the opaque per-folder cursor (UIDVALIDITY, last UID, HIGHESTMODSEQ);
- ``mail``: ``ImapMailSource``, the ``MailSource`` port.
"""
