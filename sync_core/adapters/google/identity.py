"""Google's OAuth 2.0 for a delegated Gmail connect: the authorize URL (authorization code with PKCE
S256) and the code's redemption (developers.google.com/identity/protocols/oauth2/web-server).

Invariants:
- Every connect asks ``access_type=offline`` and ``prompt=consent select_account``: Google returns a
  refresh token only at an account's first consent or with ``prompt=consent``, and every connect (a
  reconnect after ``invalid_grant`` too) must leave a refresh token; the person always picks the account.
  ``include_granted_scopes=true`` keeps scopes granted earlier (incremental authorization).
- Scopes: ``openid email`` and ``gmail.readonly``; ``gmail.send`` only when the org enables sending.
- The PKCE verifier, ``state`` and ``nonce`` are per flow and stay in the stored (encrypted) flow; a code
  is redeemed with the verifier of the flow its ``state`` names, so a code of another flow fails.
- A redemption is refused (``IdentityError``) when Google returns no refresh token, when the person
  unticked the Gmail permission (Google's granular consent), or when the id_token is not for this
  client, not from Google's issuer, not for this flow's nonce, or has no verified email. The id_token
  comes straight from the token endpoint over TLS, so its signature need not be checked (OpenID Connect
  Core 3.1.3.7; Google: "validating an ID token … is not necessary when obtained directly from Google").
- Tokens, codes and verifiers are never logged nor put in messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import requests

from sync_core.adapters.google.endpoints import GOOGLE_ISSUERS
from sync_core.adapters.google.http import GmailHttp, classify
from sync_core.adapters.google.tokens import grant_json, token_request
from sync_core.domain.model import Mailbox
from sync_core.errors import IdentityError, TransientGoogleError
from sync_core.ports.identity import AdminSignIn, AppGrant, DelegatedGrant, TokenSource

READ_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
IDENTITY_SCOPES = ("openid", "email")


def connect_scopes(send: bool) -> tuple[str, ...]:
    return (*IDENTITY_SCOPES, READ_SCOPE, *((SEND_SCOPE,) if send else ()))


class GoogleIdentity:
    """The ``IdentityProvider`` of Google mailboxes (delegated connect only: Workspace org-wide access
    goes through a service account, not an admin consent)."""

    def __init__(  # noqa: PLR0917
        self,
        session: requests.Session,
        client_id: str,
        client_secret: str,
        authorize_url: str,
        token_url: str,
        token_source_for: Callable[[Mailbox], TokenSource],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._client_id = client_id
        self._client_secret = client_secret
        self._authorize_url = authorize_url
        self._token_url = token_url
        self._token_source_for = token_source_for
        self._now = now

    def initiate_connect(self, redirect_uri: str, login_hint: str | None, *, send: bool = False) -> dict[str, Any]:
        if not self._client_id:
            raise IdentityError("Google connects are not configured (GOOGLE_CLIENT_ID is empty)", "invalid_client")
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        scopes = connect_scopes(send)
        params = {
            "client_id": self._client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "access_type": "offline",
            "prompt": "consent select_account",
            "include_granted_scopes": "true",
        }
        if login_hint:
            params["login_hint"] = login_hint
        return {
            "provider": "google",
            "state": state,
            "nonce": nonce,
            "code_verifier": verifier,
            "redirect_uri": redirect_uri,
            "scope": list(scopes),
            "auth_uri": f"{self._authorize_url}?{urlencode(params)}",
        }

    def redeem_connect(self, flow: Mapping[str, Any], auth_response: Mapping[str, str]) -> DelegatedGrant:
        if auth_response.get("state") != flow.get("state"):
            raise IdentityError("the sign-in answer belongs to another flow", "state_mismatch")
        answer = token_request(
            self._session,
            self._token_url,
            {
                "grant_type": "authorization_code",
                "code": str(auth_response.get("code") or ""),
                "code_verifier": str(flow.get("code_verifier") or ""),
                "redirect_uri": str(flow.get("redirect_uri") or ""),
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        granted = set(str(answer.get("scope") or "").split())
        if READ_SCOPE not in granted:
            raise IdentityError("the permission to read Gmail was not granted; sign in again and allow it", "scope")
        refresh = str(answer.get("refresh_token") or "")
        if not refresh:
            raise IdentityError("Google returned no refresh token for this sign-in", "no_refresh_token")
        claims = id_token_claims(str(answer.get("id_token") or ""))
        if claims.get("iss") not in GOOGLE_ISSUERS or claims.get("aud") != self._client_id:
            raise IdentityError("the id_token is not Google's answer for this client", "invalid_id_token")
        if claims.get("nonce") != flow.get("nonce"):
            raise IdentityError("the id_token belongs to another sign-in", "invalid_id_token")
        if not claims.get("sub") or not claims.get("email") or claims.get("email_verified") not in (True, "true"):
            raise IdentityError("the Google account has no verified email address", "invalid_id_token")
        return DelegatedGrant(
            access_token=str(answer["access_token"]),
            tenant_id=str(claims.get("hd") or ""),
            object_id=str(claims["sub"]),
            username=str(claims["email"]),
            serialized_cache=grant_json(
                refresh, str(answer["access_token"]), float(answer.get("expires_in") or 3600),
                " ".join(sorted(granted)), self._now(),
            ),
        )  # fmt: skip

    def token_source(self, mailbox: Mailbox) -> TokenSource:
        return self._token_source_for(mailbox)

    # -- Microsoft's admin consent has no Google counterpart (Workspace uses a service account) ---------

    def initiate_admin_sign_in(self, tenant: str, redirect_uri: str) -> dict[str, Any]:
        raise IdentityError("admin consent is a Microsoft 365 flow; Google Workspace uses a service account")

    def redeem_admin_sign_in(
        self, tenant: str, flow: Mapping[str, Any], auth_response: Mapping[str, str]
    ) -> AdminSignIn:
        raise IdentityError("admin consent is a Microsoft 365 flow; Google Workspace uses a service account")

    def admin_consent_url(self, tenant: str, redirect_uri: str, state: str) -> str:
        raise IdentityError("admin consent is a Microsoft 365 flow; Google Workspace uses a service account")

    def prove_app_access(self, tenant_id: str) -> AppGrant:
        raise IdentityError("admin consent is a Microsoft 365 flow; Google Workspace uses a service account")

    def app_token_source(self, org_id: str, tenant_id: str) -> TokenSource:
        raise IdentityError("admin consent is a Microsoft 365 flow; Google Workspace uses a service account")


def id_token_claims(id_token: str) -> dict[str, Any]:
    """The payload of a JWT (not verified: see the module docstring); {} when it is not one."""
    parts = id_token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class GoogleDirectory:
    """Who a Google token belongs to: OpenID userinfo (``sub``, ``email``) and the Gmail profile's address."""

    def __init__(self, session: requests.Session, userinfo_url: str, gmail_base_url: str, token: TokenSource) -> None:
        self._session = session
        self._userinfo_url = userinfo_url
        self._gmail_base_url = gmail_base_url.rstrip("/")
        self._token = token

    def me(self) -> Mapping[str, Any]:
        info = self._get(self._userinfo_url)
        profile = GmailHttp(self._session, self._gmail_base_url, self._token).get("profile")
        address = str(profile.get("emailAddress") or info.get("email") or "")
        return {
            "id": str(info.get("sub") or ""),
            "mail": address,
            "userPrincipalName": str(info.get("email") or address),
            "proxyAddresses": [],
            "displayName": str(info.get("name") or ""),
        }

    def user(self, address: str) -> Mapping[str, Any]:
        raise IdentityError("Google mailboxes are added by delegated sign-in or a Workspace service account")

    def check_mail_access(self, user_id: str) -> None:
        return None

    def _get(self, url: str) -> dict[str, Any]:
        try:
            response = self._session.get(
                url, headers={"Authorization": f"Bearer {self._token(False)}"}, timeout=(5.0, 30.0)
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientGoogleError(f"Google unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientGoogleError(f"Google answered {response.status_code}")
        if response.status_code >= 300:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise classify(response.status_code, body)
        payload = response.json()
        return payload if isinstance(payload, dict) else {}
