"""How the identity platform's answers (MSAL result dicts and exceptions) map to our errors.

A revoked or expired grant is ``ReauthRequired`` with a readable reason and its AADSTS code; an
unreachable identity platform ``TransientGraphError``; a refusal of the app's own credentials
``IdentityError`` (a configuration failure an operator fixes), never ``ReauthRequired``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msal
import requests

from sync_core.adapters.graph.endpoints import GRAPH_RESOURCE
from sync_core.errors import IdentityError, ReauthRequired, TransientGraphError

TokenSource = Callable[[bool], str]

DELEGATED_SCOPES = ("Mail.Read",)
CONNECT_SCOPES = ("Mail.Read", "User.Read")
SEND_SCOPES = ("Mail.ReadWrite", "Mail.Send")
"""What sending adds (docs/sending.md): the draft, its attachments and createReply need Mail.ReadWrite,
sending it Mail.Send. Asked at connect only when the org's ``sending_enabled`` is on (incremental consent:
reconnecting an existing mailbox adds them), and for the sender's tokens only."""
APP_SCOPES = (f"{GRAPH_RESOURCE}/.default",)
DEFAULT_TENANT = "organizations"

REAUTH_REASONS: Mapping[int, str] = {
    70008: "the sign-in expired after a period of inactivity",
    700082: "the sign-in expired because it was not used for too long",
    50173: "the grant was revoked (password change, or sessions revoked by the user or an admin)",
    65001: "consent for this app is missing or was withdrawn",
    65004: "the user declined consent",
    50076: "the organisation now requires multi-factor authentication",
    50079: "the organisation now requires multi-factor authentication",
    7000112: "the app is disabled in the organisation",
    700016: "the app is not consented in the organisation",
}
REAUTH_CODES = frozenset({70008, 700082, 50173, 65001})
# client-credentials errors that mean "the tenant's admin consent is gone", not "retry later".
APP_CONSENT_ERRORS = frozenset({"unauthorized_client", "invalid_client", "invalid_grant", "consent_required"})
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
# The app's own credentials are refused: an operator must fix the app registration or the settings.
CREDENTIAL_REASONS: Mapping[int, str] = {
    7000222: "the app's client secret has expired; add a new secret to the app registration and "
    "update GRAPH_CLIENT_SECRET",
    7000215: "the app's client secret is invalid; check GRAPH_CLIENT_SECRET (the secret's value, not its id)",
    7000216: "the app's client credentials are malformed; check GRAPH_CLIENT_ID and GRAPH_CLIENT_SECRET",
    7000218: "the app sent no client secret; set GRAPH_CLIENT_SECRET",
}


def reauth_error(error: str, codes: Sequence[int]) -> ReauthRequired:
    """A ``ReauthRequired`` with a readable reason for an ``invalid_grant``-like error."""
    code = next((c for c in codes if c in REAUTH_REASONS), codes[0] if codes else None)
    reason = REAUTH_REASONS.get(code or 0, f"the identity platform refused the stored sign-in ({error})")
    suffix = f" (AADSTS{code})" if code else ""
    return ReauthRequired(f"{reason}; reconnect the mailbox{suffix}", code)


def credential_error(error: str, codes: Sequence[int]) -> IdentityError | None:
    """An ``IdentityError`` with an operator's reason when the app's own credentials were refused."""
    code = next((c for c in codes if c in CREDENTIAL_REASONS), None)
    if code is None:
        return None
    return IdentityError(f"{CREDENTIAL_REASONS[code]} (AADSTS{code})", error, codes)


def codes_of(result: Mapping[str, Any]) -> list[int]:
    codes: list[int] = []
    for value in result.get("error_codes") or ():
        try:
            codes.append(int(value))
        except (TypeError, ValueError):
            continue
    return codes


# The identity platform could not answer: a network failure, or a 5xx that MSAL raises as MsalServiceError
# ("HTTP Error: 503") instead of returning an error dict. Both are worth retrying later.
UNREACHABLE = (requests.RequestException, msal.exceptions.MsalServiceError)


def aadsts_suffix(codes: Sequence[int]) -> str:
    return f", AADSTS{codes[0]}" if codes else ""


def call_msal(operation: Callable[[], Any]) -> dict[str, Any]:
    try:
        result = operation()
    except UNREACHABLE as exc:
        raise TransientGraphError(f"identity platform unreachable: {type(exc).__name__}") from exc
    return dict(result) if result else {}
