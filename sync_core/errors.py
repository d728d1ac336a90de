"""Errors sync_core raises. Adapters wrap SDK errors into these with ``raise ... from exc``.

Failures of a sync run are classified here, and only here, by type (``SyncFailure`` and its four kinds);
``failure_of`` gives the class of any exception, so the run, the scheduler and the API never parse text:

- ``TransientFailure`` (Graph or identity platform 429, 5xx, timeouts, dropped connections; storage
  unreachable): back off and retry on a later run; the mailbox is never parked for it.
- ``MessageFailure`` (one message's optional extras cannot be read, e.g. its attachment listing 404s
  because it was deleted meanwhile): the message is stored without them, with a note in the run report.
- ``ConfigurationFailure`` (client secret expired or invalid, an access policy denies the mailbox, an
  unexpected refusal): status ``error`` with a readable reason, retried with a back-off, cleared by the
  next run that succeeds.
- ``GrantFailure`` (the user's or the tenant admin's grant is gone): ``needs_reauth`` until reconnected.

Anything else is an ``UnexpectedFailure`` (a bug, or an error nobody classified yet): the run records it and
raises, so the queue retries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class SyncError(Exception):
    """Base class of every error sync_core raises on purpose."""


class SyncFailure(SyncError):
    """A classified failure of a sync run. ``code`` is the class's stable name in run reports and the API."""

    code: ClassVar[str] = "unexpected"


class TransientFailure(SyncFailure):
    """Retrying later fixes it; ``retry_after`` (seconds) when the service said when."""

    code: ClassVar[str] = "transient"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MessageFailure(SyncFailure):
    """One message's optional extras could not be read; the message itself is stored without them."""

    code: ClassVar[str] = "message"


class ConfigurationFailure(SyncFailure):
    """The app registration, the tenant's policies or the mailbox's setup refuse the sync; an operator
    or admin must act, and the next run that succeeds clears it."""

    code: ClassVar[str] = "configuration"


class GrantFailure(SyncFailure):
    """The grant the mailbox syncs with is gone: the user (or the tenant's admin) must connect again."""

    code: ClassVar[str] = "grant"


class UnexpectedFailure(SyncFailure):
    """An exception nobody classified; the run records its type (never its text) and raises it."""

    code: ClassVar[str] = "unexpected"


FAILURE_CLASSES: tuple[type[SyncFailure], ...] = (
    TransientFailure,
    MessageFailure,
    ConfigurationFailure,
    GrantFailure,
    UnexpectedFailure,
)


def failure_of(exc: BaseException) -> type[SyncFailure]:
    """The failure class of any exception: its own for a ``SyncFailure``, else ``UnexpectedFailure``."""
    for kind in FAILURE_CLASSES:
        if isinstance(exc, kind):
            return kind
    return UnexpectedFailure



class IdentityError(ConfigurationFailure):
    """The identity platform refused a request for a reason other than a dead grant (bad request,
    misconfigured app registration, expired client secret). ``error`` is the OAuth error, ``codes`` the
    AADSTS codes."""

    def __init__(self, message: str, error: str = "", codes: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.error = error
        self.codes = tuple(codes)


class ProviderRefused(SyncError):
    """The mail provider refused a request for a reason retrying will not fix; ``status`` is its HTTP
    status, ``code`` its error code (the Graph adapter raises ``GraphError``, a subclass)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ConcurrencyConflict(SyncError):
    """An optimistic-concurrency write lost: someone else changed the entity first."""


class AlreadyExists(SyncError):
    """An insert found the key taken."""


class StorageUnavailable(TransientFailure):
    """Table or queue storage could not be reached; the operation may be retried."""


class TransientGraphError(TransientFailure):
    """Graph or the identity platform stayed throttled or unavailable past the bounded wait; retry later."""


class DeltaTokenExpired(SyncError):
    """Graph no longer knows a delta/skip token (410, SyncStateNotFound, resyncRequired)."""


class MailboxAccessDenied(ConfigurationFailure):
    """Graph refused the mailbox (403 ErrorAccessDenied, e.g. an application access policy)."""


class ReauthRequired(GrantFailure):
    """The grant is revoked or expired (AADSTS 70008, 700082, 50173, 65001): the user must reconnect.
    ``aadsts`` is the identity platform's error code when it gave one (``code`` is the failure class's)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.aadsts = code


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
    """Graph has no such item (404: a message, an attachment listing's message, a folder, a delta link's
    folder). What it means depends on where: the caller classifies it."""
