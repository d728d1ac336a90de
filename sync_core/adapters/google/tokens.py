"""Access tokens for Gmail: a delegated mailbox's stored Google grant (refresh token), refreshed at
Google's token endpoint (developers.google.com/identity/protocols/oauth2/web-server#offline).

The grant is stored in the ``TokenCacheStore`` under the mailbox's owner key, encrypted at rest like an
MSAL cache, as JSON: ``{"provider": "google", "refresh_token", "access_token", "expires_at", "scope"}``.

Invariants:
- ``source(False)`` returns the stored access token while it has more than ``EXPIRY_MARGIN`` left, else
  refreshes; ``source(True)`` always refreshes (Gmail answered 401).
- ``invalid_grant`` (revoked, expired, password changed, or a refresh token of a test-mode app after
  7 days) is ``ReauthRequired`` with Google's description: the mailbox shows ``needs_reauth`` and why.
  ``invalid_client``/``unauthorized_client`` are ``IdentityError`` (the deployment's client is wrong);
  429 and 5xx are ``TransientGoogleError``.
- The refreshed access token is written back etag-conditionally; losing that race only costs another
  refresh later (Google does not rotate refresh tokens on refresh; a new one, when given, is kept).
- Tokens never appear in logs or exception messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import requests

from sync_core.domain.model import Mailbox
from sync_core.errors import (
    ConcurrencyConflict,
    CredentialsUnreadable,
    IdentityError,
    ReauthRequired,
    TokenDecryptionError,
    TransientGoogleError,
)
from sync_core.ports.identity import TokenCacheStore, mailbox_owner

log = logging.getLogger(__name__)

EXPIRY_MARGIN = 120.0  # seconds: an access token closer to its expiry than this is refreshed first
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
MAX_DESCRIPTION = 200


def grant_json(refresh_token: str, access_token: str, expires_in: float, scope: str, now: float) -> str:
    """The stored form of a Google grant (what connect writes and the token source reads)."""
    return json.dumps(
        {
            "provider": "google",
            "refresh_token": refresh_token,
            "access_token": access_token,
            "expires_at": now + float(expires_in),
            "scope": scope,
        }
    )


def token_request(
    session: requests.Session, token_url: str, form: dict[str, str], timeout: tuple[float, float] = (5.0, 30.0)
) -> dict[str, Any]:
    """POST a form to Google's token endpoint; the JSON answer, or the error it means."""
    try:
        response = session.post(token_url, data=form, headers={"Accept": "application/json"}, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientGoogleError(f"Google's token endpoint unreachable: {type(exc).__name__}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code < 300 and isinstance(body, dict) and body.get("access_token"):
        return body
    error = str(body.get("error") or "") if isinstance(body, dict) else ""
    description = str(body.get("error_description") or "")[:MAX_DESCRIPTION] if isinstance(body, dict) else ""
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientGoogleError(f"Google's token endpoint answered {response.status_code}")
    if error == "invalid_grant":
        said = f": {description}" if description else ""
        raise ReauthRequired(f"Google refused the mailbox's grant (invalid_grant{said}); connect the mailbox again")
    if error in CLIENT_ERRORS:
        raise IdentityError(
            f"Google refused this deployment's OAuth client ({error}); check GOOGLE_CLIENT_ID/SECRET", error
        )
    raise IdentityError(f"Google's token endpoint refused the request ({error or response.status_code})", error)


class GoogleTokenSource:
    """The ``TokenSource`` of one delegated Gmail mailbox."""

    def __init__(  # noqa: PLR0917
        self,
        session: requests.Session,
        token_url: str,
        client_id: str,
        client_secret: str,
        store: TokenCacheStore,
        mailbox: Mailbox,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._store = store
        self._org_id = mailbox.org_id
        self._owner = mailbox_owner(mailbox.mailbox_id)
        self._now = now

    def __call__(self, force_refresh: bool = False) -> str:
        try:
            stored = self._store.get(self._org_id, self._owner)
        except TokenDecryptionError:
            raise CredentialsUnreadable() from None
        if stored is None:
            raise ReauthRequired("no Google grant is stored; connect the mailbox again")
        try:
            grant = json.loads(stored.value)
        except ValueError:
            grant = None
        if not isinstance(grant, dict) or not grant.get("refresh_token"):
            raise ReauthRequired("the stored Google grant is unusable; connect the mailbox again")
        now = self._now()
        fresh = float(grant.get("expires_at") or 0) - EXPIRY_MARGIN > now
        if not force_refresh and grant.get("access_token") and fresh:
            return str(grant["access_token"])
        answer = token_request(
            self._session,
            self._token_url,
            {
                "grant_type": "refresh_token",
                "refresh_token": str(grant["refresh_token"]),
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        refreshed = grant_json(
            str(answer.get("refresh_token") or grant["refresh_token"]),
            str(answer["access_token"]),
            float(answer.get("expires_in") or 3600),
            str(answer.get("scope") or grant.get("scope") or ""),
            now,
        )
        with contextlib.suppress(ConcurrencyConflict):  # another worker refreshed too: its token is as good
            self._store.put(self._org_id, self._owner, refreshed, stored.etag)
        return str(answer["access_token"])


def revoke_grant(session: requests.Session, revoke_url: str, store: TokenCacheStore, mailbox: Mailbox) -> bool:
    """Revoke a delegated mailbox's stored grant at Google (``POST revoke_url`` with the refresh token:
    "If the token is an access token and it has a corresponding refresh token, the refresh token will
    also be revoked", developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke), so the
    app no longer appears under the person's third-party access and the token is dead even if a copy
    leaked. Best effort: True when Google confirmed; any failure (no grant stored, unreadable, Google
    unreachable or answering 4xx/5xx) is logged by kind and False, never raised. Never logs the token."""
    try:
        stored = store.get(mailbox.org_id, mailbox_owner(mailbox.mailbox_id))
        grant = json.loads(stored.value) if stored is not None else None
    except (TokenDecryptionError, ValueError):
        log.warning("disconnect: the stored Google grant is unreadable; nothing to revoke")
        return False
    token = str(grant.get("refresh_token") or grant.get("access_token") or "") if isinstance(grant, dict) else ""
    if not token:
        return False
    try:
        response = session.post(revoke_url, data={"token": token}, timeout=(5.0, 15.0))
    except (requests.ConnectionError, requests.Timeout) as exc:
        log.warning("disconnect: Google's revocation endpoint unreachable (%s)", type(exc).__name__)
        return False
    if response.status_code >= 300:
        log.warning("disconnect: Google's revocation endpoint answered %s", response.status_code)
        return False
    return True
