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

This is the one exceptions module of sync_core: every error it raises on purpose is defined here, each
with a stable ``code`` (a class attribute; a few errors refine it per instance, e.g. ``InvalidRequest``) and
optional machine-readable ``details``. ``sync_core.api.errors`` maps them to HTTP statuses in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SyncError(Exception):
    """Base class of every error sync_core raises on purpose. ``code`` is stable (API bodies, logs);
    ``details`` is machine-readable context for the caller, never the refused content itself."""

    code: str = "sync_error"

    @property
    def details(self) -> dict[str, Any] | None:
        return None


class SyncFailure(SyncError):
    """A classified failure of a sync run. ``failure_of(exc).code`` is the failure class's stable name in
    run reports and the API (``transient``, ``message``, ``configuration``, ``grant``, ``unexpected``)."""

    code = "unexpected"


class TransientFailure(SyncFailure):
    """Retrying later fixes it; ``retry_after`` (seconds) when the service said when."""

    code = "transient"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MessageFailure(SyncFailure):
    """One message's optional extras could not be read; the message itself is stored without them."""

    code = "message"


class ConfigurationFailure(SyncFailure):
    """The app registration, the tenant's policies or the mailbox's setup refuse the sync; an operator
    or admin must act, and the next run that succeeds clears it."""

    code = "configuration"


class UnknownProvider(ConfigurationFailure):
    """The mailbox names a provider this deployment has no adapter for (e.g. a row written by a newer
    version, or a provider switched off): the mailbox is held in ``error`` until an operator acts."""

    code = "unknown_provider"


class GrantFailure(SyncFailure):
    """The grant the mailbox syncs with is gone: the user (or the tenant's admin) must connect again."""

    code = "grant"


class UnexpectedFailure(SyncFailure):
    """An exception nobody classified; the run records its type (never its text) and raises it."""

    code = "unexpected"


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


# -- storage -----------------------------------------------------------------------------------------


class ProviderRefused(SyncError):
    """The mail provider refused a request for a reason retrying will not fix; ``status`` is its HTTP
    status, ``provider_code`` its own error code (the Graph adapter raises ``GraphError``, a subclass)."""

    code = "provider_refused"

    def __init__(self, status: int, provider_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.provider_code = provider_code


class ConcurrencyConflict(SyncError):
    """An optimistic-concurrency write lost: someone else changed the entity first."""

    code = "concurrent_update"


class AlreadyExists(SyncError):
    """An insert found the key taken."""

    code = "already_exists"


class StorageUnavailable(TransientFailure):
    """Table or queue storage could not be reached; the operation may be retried."""

    code = "storage_unavailable"


# -- the mail provider and the identity platform ------------------------------------------------------


class TransientGraphError(TransientFailure):
    """Graph or the identity platform stayed throttled or unavailable past the bounded wait; retry later."""

    code = "graph_unavailable"

    @property
    def details(self) -> dict[str, Any] | None:
        return {"retry_after": self.retry_after} if self.retry_after is not None else None


class GraphError(ProviderRefused):
    """A Graph error that retrying will not fix. ``graph_code`` is Graph's own error code."""

    code = "graph_error"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, f"Graph {status} {code}: {message}")
        self.graph_code = code


class TransientGoogleError(TransientFailure):
    """Gmail or Google's token endpoint stayed throttled (429, 403 rateLimitExceeded /
    userRateLimitExceeded) or unavailable past the bounded wait; retry later."""

    code = "google_unavailable"

    @property
    def details(self) -> dict[str, Any] | None:
        return {"retry_after": self.retry_after} if self.retry_after is not None else None


class GoogleError(ProviderRefused):
    """A Gmail API error that retrying will not fix. ``provider_code`` is Google's ``reason``."""

    code = "google_error"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, f"Gmail {status} {code}: {message}")


class DeltaTokenExpired(SyncError):
    """Graph no longer knows a delta/skip token (410, SyncStateNotFound, resyncRequired)."""

    code = "delta_token_expired"


class MailboxAccessDenied(ConfigurationFailure):
    """Graph refused the mailbox (403 ErrorAccessDenied, e.g. an application access policy)."""

    code = "access_denied"


class IdentityError(ConfigurationFailure):
    """The identity platform refused a request for a reason other than a dead grant (bad request,
    misconfigured app registration, expired client secret). ``error`` is the OAuth error, ``codes`` the
    AADSTS codes."""

    code = "identity_error"

    def __init__(self, message: str, error: str = "", codes: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.error = error
        self.codes = tuple(codes)


class ReauthRequired(GrantFailure):
    """The grant is revoked or expired (AADSTS 70008, 700082, 50173, 65001): the user must reconnect.
    ``aadsts`` is the identity platform's error code when it gave one."""

    code = "needs_reauth"

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.aadsts = code


class CredentialsUnreadable(ReauthRequired):
    """The mailbox's stored credentials (its token cache) cannot be decrypted with any configured key
    (``TOKEN_ENCRYPTION_KEY`` lost the key, or a key id was reused for a new key): the sign-in must be
    redone, so it is a grant failure (``needs_reauth``), never a crash."""

    code = "credentials_unreadable"

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message or "stored credentials cannot be decrypted with the configured keys; reconnect the mailbox"
        )


class MailServerUnavailable(TransientFailure):
    """A mail server (IMAP/SMTP) cannot be talked to right now: connection refused, timed out or lost
    mid-command, or a command refused for a reason that may pass. Retried; the run resumes at its last
    checkpoint."""

    code = "mail_server_unavailable"


class MailServerUnreachable(MailServerUnavailable):
    """No connection to the mail server at all (name not resolved, refused, timed out)."""

    code = "mail_server_unreachable"


class MailServerUntrusted(ConfigurationFailure):
    """The mail server's TLS certificate is not trusted (or not for this host), or it offers no way to
    encrypt the connection: the password is never sent, and a person must fix the server or settings."""

    code = "mail_server_untrusted"


class MailServerLoginFailed(ReauthRequired):
    """The mail server refused the stored user name and password (changed or revoked): the mailbox needs
    new credentials (``needs_reauth``). The message carries the server's own reason, never the password."""

    code = "mail_server_login_failed"


class TokenDecryptionError(SyncError):
    """A stored secret cannot be decrypted: unknown key id (a key was removed from the setting too
    early), a malformed value, or an authentication failure (tampering, a value moved to another
    owner, or a key id reused for another key). A configuration or integrity problem, not a revoked
    grant; ``sync_core.auth.crypto`` raises it (defined here so callers need not load cryptography)."""

    code = "token_decryption_failed"


class MessageNotFound(SyncError):
    """Graph has no such item (404: a message, an attachment listing's message, a folder, a delta link's
    folder). What it means depends on where: the caller classifies it."""

    code = "message_not_found"


# -- requests the use cases refuse (the HTTP edge maps them to statuses: sync_core.api.errors) --------

# Which request field an InvalidRequest code is about (the CRM shows it next to that field).
_FIELD_OF = {
    "invalid_user_id": "user_id",
    "invalid_login_hint": "login_hint",
    "invalid_connect_code": "code",
    "return_url_not_allowed": "return_url",
    "return_url_required": "return_url",
    "invalid_tenant": "tenant",
    "invalid_address": "address",
    "address_not_found": "address",
    "reply_activity_not_found": "reply_to_activity_id",
    **dict.fromkeys(
        ("imap_unreachable", "imap_tls_untrusted", "imap_starttls_unavailable", "imap_auth_failed",
         "imap_no_sent_folder", "imap_required"),
        "imap",
    ),
    **dict.fromkeys(
        ("smtp_unreachable", "smtp_tls_untrusted", "smtp_starttls_unavailable", "smtp_auth_failed"), "smtp"
    ),
}


class InvalidRequest(SyncError):
    """The caller's request is invalid (HTTP 400). ``code`` is machine-readable, e.g.
    ``return_url_not_allowed``, ``return_url_required``, ``invalid_user_id``, ``invalid_login_hint``,
    ``invalid_connect_code``, ``tenant_not_allowed``, ``invalid_tenant``, ``invalid_address``,
    ``address_not_found``; ``details.field`` names the request field it is about, when one is."""

    code = "invalid_request"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def details(self) -> dict[str, Any] | None:
        field = _FIELD_OF.get(self.code)
        return {"field": field} if field else None


class ConsentRequired(SyncError):
    """Application mode needs a proven admin consent first (HTTP 409, ``admin_consent_required``)."""

    code = "admin_consent_required"


class OrgAccessRequired(ConsentRequired):
    """A provider's org-wide access is missing or refused (HTTP 409): no Google Workspace service
    account is stored (``service_account_required``), or Google refused it for this request
    (``delegation_refused``, with Google's reason)."""

    code = "service_account_required"

    def __init__(self, message: str, code: str = "service_account_required") -> None:
        super().__init__(message)
        self.code = code


class MailboxNotFound(SyncError):
    """No such mailbox in this org (HTTP 404)."""

    code = "mailbox_not_found"


class NotSyncable(SyncError):
    """The mailbox cannot sync now (HTTP 409): ``status`` is ``paused``, ``needs_reauth`` or
    ``disconnected``; ``reason`` says why in words. A mailbox in ``error`` can always sync."""

    code = "mailbox_not_syncable"

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"the mailbox cannot sync while {status}" + (f": {reason}" if reason else ""))
        self.status = status
        self.reason = reason

    @property
    def details(self) -> dict[str, Any] | None:
        return {"status": self.status, "reason": self.reason}


class MailboxDisconnected(SyncError):
    """The named mailbox is disconnected (HTTP 409): its mail is not logged any more."""

    code = "mailbox_disconnected"


class InvalidMessage(SyncError):
    """The upload is not a message this service accepts. ``code``: ``too_large``, ``malformed``,
    ``too_complex``, ``header_line_too_long`` or ``header_section_too_large``; ``limit`` is the limit that was
    exceeded, when one was. The message never quotes the refused content."""

    code = "malformed"

    def __init__(self, code: str, message: str, *, limit: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.limit = limit

    @property
    def details(self) -> dict[str, Any] | None:
        return {"limit": self.limit} if self.limit is not None else None


class InvalidNotification(SyncError, ValueError):
    """The body is not a Graph notification collection (``{"value": [...]}``)."""

    code = "invalid_notification"


class SecretAlreadyRevealed(SyncError):
    """The org's webhook secret was shown before (HTTP 409): rotate to get a new one."""

    code = "secret_already_revealed"


class WebhookSecretUnreadable(TokenDecryptionError):
    """No configured key opens the org's stored webhook secret (HTTP 409): ``rotate`` replaces it
    without reading it."""

    code = "webhook_secret_unreadable"


# -- queue messages -------------------------------------------------------------------------------------


class InvalidCommand(SyncError):
    """A queue message that is not a command this version knows (bad JSON, unknown kind, missing fields).
    Dropped with a log line, never retried: a retry would read the same bytes."""

    code = "invalid_command"


# -- push: subscriptions and the CRM's webhooks ----------------------------------------------------------


class SubscriptionRefused(SyncError):
    """Graph refused a subscription request for a reason retrying will not fix by itself (e.g. the
    notification URL failed validation). ``max_minutes`` is set when Graph named a shorter maximum
    expiration than the one asked for."""

    code = "subscription_refused"

    def __init__(self, message: str, max_minutes: int | None = None) -> None:
        super().__init__(message)
        self.max_minutes = max_minutes


class WebhookUrlRefused(SyncError):
    """The webhook URL may not be called (not https, or a private, loopback or link-local address)."""

    code = "webhook_url_refused"


class WebhookSendFailed(SyncError):
    """The webhook POST got no answer (connection refused, TLS failure, timeout)."""

    code = "webhook_send_failed"


# -- sending ---------------------------------------------------------------------------------------------


class IdempotencyKeyReused(SyncError):
    """The org already has a send under this Idempotency-Key, for a different request (HTTP 409)."""

    code = "idempotency_key_reused"


class SendingRefused(SyncError):
    """The mailbox may not send now (HTTP 409). ``code``: ``sending_disabled`` (the org's
    ``sending_enabled`` is off), ``mailbox_not_active`` (its status is not ``active``) or
    ``send_permission_missing`` (the connection lacks the permission sending needs: checked on the
    sending token's claims before anything is stored); the message says what to do."""

    code = "sending_refused"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SendNotFound(SyncError):
    """No such send in this org (HTTP 404)."""

    code = "send_not_found"


class SendNotCancelable(SyncError):
    """The send is past the point where it can be canceled (HTTP 409): sending began or it ended."""

    code = "send_not_cancelable"

    def __init__(self, status: str) -> None:
        super().__init__(f"a send can be canceled only while scheduled or queued; this one is {status}")
        self.status = status

    @property
    def details(self) -> dict[str, Any] | None:
        return {"status": self.status}
