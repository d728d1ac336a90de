"""One test's Google, as the Google emulator's tests use it: a Workspace domain with ada and bob, a
consumer user and an OAuth client, with helpers for sign-in, tokens, Gmail calls and delivery."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

REDIRECT_URI = "http://127.0.0.1:7071/api/auth/google/callback"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"


@dataclass
class World:
    """One test's Google: ``url`` (every host), a session trusting the emulator's CA, a Workspace domain
    with ada@ and bob@, a consumer user, and an OAuth client."""

    url: str
    http: requests.Session
    domain: str
    client_id: str
    client_secret: str
    consumer: str
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def ada(self) -> str:
        return f"ada@{self.domain}"

    @property
    def bob(self) -> str:
        return f"bob@{self.domain}"

    def control(self, method: str, path: str, body: Any = None) -> requests.Response:
        return self.http.request(method, f"{self.url}/_emulator/{path}", json=body)

    def authorize_url(self, scopes: str = f"openid email {READONLY}", **extra: str) -> tuple[str, str]:
        """An authorize URL with PKCE (S256) and offline access, and its code verifier."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {
            "client_id": self.client_id, "redirect_uri": REDIRECT_URI, "response_type": "code", "scope": scopes,
            "state": "state-1", "code_challenge": challenge, "code_challenge_method": "S256",
            "access_type": "offline", "prompt": "consent", "include_granted_scopes": "true", **extra,
        }
        return f"{self.url}/o/oauth2/v2/auth?{urlencode(params)}", verifier

    def sign_in(self, user: str, scopes: str = f"openid email {READONLY}", **extra: Any) -> dict[str, Any]:
        """The redirect's query after ``user`` allows, plus ``verifier``."""
        decline = extra.pop("decline_scopes", None)
        url, verifier = self.authorize_url(scopes, **extra)
        answer = self.control("POST", "authorize", {"auth_uri": url, "user": user, "decline_scopes": decline or []})
        assert answer.status_code == 200, answer.text
        query = {k: v[0] for k, v in parse_qs(urlsplit(answer.json()["redirect_url"]).query).items()}
        return {**query, "verifier": verifier}

    def redeem(self, code: str, verifier: str) -> requests.Response:
        return self.http.post(f"{self.url}/token", data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI, "client_id": self.client_id, "client_secret": self.client_secret,
        })

    def connect(self, user: str, scopes: str = f"openid email {READONLY}", **extra: Any) -> dict[str, Any]:
        """Sign in and redeem the code: the token response."""
        query = self.sign_in(user, scopes, **extra)
        response = self.redeem(query["code"], query["verifier"])
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    def token_for(self, user: str, scopes: str = f"openid email {READONLY} {SEND}") -> str:
        return str(self.connect(user, scopes)["access_token"])

    def gmail(self, method: str, token: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, f"{self.url}/gmail/v1/users/{path}",
                                 headers={"Authorization": f"Bearer {token}"}, **kwargs)

    def deliver(self, user: str, **fields: Any) -> dict[str, Any]:
        response = self.control("POST", f"users/{user}/messages", fields)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result
