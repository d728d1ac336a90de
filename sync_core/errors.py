"""Errors sync_core raises. Adapters wrap SDK errors into these with ``raise ... from exc``."""

from __future__ import annotations


class SyncError(Exception):
    """Base class of every error sync_core raises on purpose."""


class ConcurrencyConflict(SyncError):
    """An optimistic-concurrency write lost: someone else changed the entity first."""


class AlreadyExists(SyncError):
    """An insert found the key taken."""


class StorageUnavailable(SyncError):
    """Table or queue storage could not be reached; the operation may be retried."""


class TransientGraphError(SyncError):
    """Graph stayed throttled or unavailable past the bounded wait; retry later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeltaTokenExpired(SyncError):
    """Graph no longer knows a delta/skip token (410, SyncStateNotFound, resyncRequired)."""


class MailboxAccessDenied(SyncError):
    """Graph refused the mailbox (403 ErrorAccessDenied, e.g. an application access policy)."""


class ReauthRequired(SyncError):
    """The grant is revoked or expired (AADSTS 70008, 700082, 50173, 65001): the user must reconnect."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class CredentialsUnreadable(ReauthRequired):
    """The mailbox's stored credentials (its token cache) cannot be decrypted with any configured key
    (``TOKEN_ENCRYPTION_KEY`` lost the key, or a key id was reused for a new key): the sign-in must be
    redone, so it is a grant failure (``needs_reauth``), never a crash."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message or "stored credentials cannot be decrypted with the configured keys; reconnect the mailbox"
        )


class TokenDecryptionError(SyncError):
    """A stored secret cannot be decrypted: unknown key id (a key was removed from the setting too
    early), a malformed value, or an authentication failure (tampering, a value moved to another
    owner, or a key id reused for another key). A configuration or integrity problem, not a revoked
    grant; ``sync_core.auth.crypto`` raises it (defined here so callers need not load cryptography)."""


class MessageNotFound(SyncError):
    """Graph has no such message (404)."""
