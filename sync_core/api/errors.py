"""The one table from sync_core's errors to HTTP statuses, applied once at the HTTP edge.

``triggers/http_json.run`` (the one request runner every route goes through) turns a ``SyncError`` a
handler lets escape into ``api_error_of(exc)``; handlers raise ``ApiError`` themselves only for what is
about the HTTP request (bad fields, content types, unknown ids). Invariants:

- Rows are tried in order and the first ``isinstance`` match wins, so a subclass with its own row comes
  before its base's (``CredentialsUnreadable`` answers as the ``ReauthRequired`` it is).
- The body is ``{code, message, details}``: ``code`` is the row's (when the wire code differs from the
  error's own) or the error's ``code``; ``message`` the row's fixed text (``{exc.…}`` fields filled in)
  or the error's text; ``details`` the error's ``details``. A row's text never echoes request input.
- An error without a row is a 500 ``internal_error`` (the runner logs its type, never its text).
"""

from __future__ import annotations

from sync_core.api.http import ApiError
from sync_core.errors import (
    ConcurrencyConflict,
    ConsentRequired,
    GoogleError,
    InvalidMessage,
    InvalidNotification,
    InvalidRequest,
    MailboxAccessDenied,
    MailboxDisconnected,
    MailboxNotFound,
    NotSyncable,
    ProviderRefused,
    ReauthRequired,
    SecretAlreadyRevealed,
    StorageUnavailable,
    SyncError,
    TransientGoogleError,
    TransientGraphError,
    WebhookSecretUnreadable,
)

# error class, HTTP status, wire code (None: the error's ``code``), message (None: the error's text)
ERROR_STATUSES: tuple[tuple[type[SyncError], int, str | None, str | None], ...] = (
    (InvalidRequest, 400, None, None),
    (InvalidNotification, 400, None, None),
    (MailboxNotFound, 404, "not_found", "mailbox not found"),
    (NotSyncable, 409, None, "the mailbox cannot sync while {exc.status}"),
    (MailboxDisconnected, 409, None, None),
    (ConsentRequired, 409, None, None),
    (SecretAlreadyRevealed, 409, None, None),
    (
        WebhookSecretUnreadable,
        409,
        None,
        "the stored webhook secret cannot be decrypted with the configured keys (TOKEN_ENCRYPTION_KEY); "
        "POST again with ?rotate=true to replace it with a new one",
    ),
    (ReauthRequired, 409, "needs_reauth", "the mailbox must be connected again before this works"),
    (MailboxAccessDenied, 409, "access_denied", "Microsoft 365 denies access to this mailbox"),
    (ConcurrencyConflict, 409, "concurrent_update", "the mailbox was changed concurrently; try again"),
    (TransientGoogleError, 503, "google_unavailable", "Google is temporarily unavailable; try again"),
    (GoogleError, 502, "google_error", "Gmail refused the request ({exc.status} {exc.provider_code})"),
    (TransientGraphError, 503, "graph_unavailable", "Microsoft 365 is temporarily unavailable; try again"),
    (ProviderRefused, 502, "graph_error", "Microsoft 365 refused the request ({exc.status} {exc.provider_code})"),
    (StorageUnavailable, 503, "storage_unavailable", "storage is temporarily unavailable; try again"),
)

# An uploaded message's defect (``InvalidMessage.code``) → status and wire code.
INVALID_MESSAGE: dict[str, tuple[int, str]] = {
    "too_large": (413, "message_too_large"),
    "malformed": (400, "malformed_message"),
    "too_complex": (400, "message_too_complex"),
    "header_line_too_long": (400, "header_line_too_long"),
    "header_section_too_large": (400, "header_section_too_large"),
}
MAX_MESSAGE_CHARS = 500  # of an error's own text in a body


def api_error_of(exc: SyncError) -> ApiError | None:
    """The API error for ``exc`` by the table, or None when no row matches (a 500 at the runner)."""
    if isinstance(exc, InvalidMessage):
        status, code = INVALID_MESSAGE.get(exc.code, (400, "malformed_message"))
        return ApiError(status, code, str(exc)[:MAX_MESSAGE_CHARS], exc.details)
    for kind, status, wire_code, message in ERROR_STATUSES:
        if isinstance(exc, kind):
            text = message.format(exc=exc) if message is not None else str(exc)[:MAX_MESSAGE_CHARS]
            return ApiError(status, wire_code or exc.code, text, exc.details)
    return None
