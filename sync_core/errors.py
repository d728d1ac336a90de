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


class MessageNotFound(SyncError):
    """Graph has no such message (404)."""
