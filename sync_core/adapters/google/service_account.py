"""Google Workspace org-wide access: a service account with domain-wide delegation, whose JSON key the
org's admin uploads once; every Gmail mailbox of the domain is then read with an access token the
service account obtains *for* that mailbox (developers.google.com/identity/protocols/oauth2/service-account,
"Delegating domain-wide authority to the service account").

Invariants:
- A key is accepted only with the shape of a downloaded key file (``type`` ``service_account``,
  ``client_email``, numeric ``client_id``, ``private_key_id``, an RSA PKCS#8 ``private_key``) and only
  after Google issued a token for the service account itself with it (no ``sub``): the key is live and
  its signature accepted. Delegation cannot be proven without a user, so it is checked when a mailbox
  is added (a token for that address).
- Only the fields needed to sign are stored (``StoredKey``); the stored form goes to the encrypted
  ``TokenCacheStore`` and nowhere else. ``describe`` never carries the private key.
- The assertion is an RS256 JWT with ``kid`` = ``private_key_id``, claims ``iss`` = ``client_email``,
  ``sub`` = the mailbox address, ``scope`` (``gmail.readonly``, + ``gmail.send`` when the org sends),
  ``aud`` = the token endpoint, ``iat`` and ``exp`` = ``iat`` + one hour (Google's maximum).
- ``unauthorized_client`` (the Workspace admin did not delegate these scopes to the client id) and
  ``invalid_client`` are configuration failures (``IdentityError``: mailbox ``error``, an admin must act);
  ``invalid_grant`` (unknown or suspended user, deleted key, clock skew) is a grant failure
  (``ReauthRequired``: ``needs_reauth``). 429 and 5xx are transient. Messages name the client id and
  scopes, never the key, the token or the mailbox address.
- Access tokens are cached in process per (service account, key, subject, scopes) until
  ``EXPIRY_MARGIN`` before they expire; ``source(True)`` (Gmail answered 401) always obtains a new one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sync_core.adapters.google.identity import READ_SCOPE, SEND_SCOPE
from sync_core.adapters.google.tokens import EXPIRY_MARGIN, MAX_DESCRIPTION
from sync_core.errors import (
    CredentialsUnreadable,
    IdentityError,
    InvalidRequest,
    ReauthRequired,
    TokenDecryptionError,
    TransientGoogleError,
)
from sync_core.ports.identity import TokenCacheStore, org_access_owner

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # seconds: Google refuses assertions living longer than an hour
MAX_KEY_FIELD = 8192


@dataclass(frozen=True)
class StoredKey:
    """What is kept of a key file: enough to sign assertions and to tell the admin which key it is."""

    client_email: str
    client_id: str
    private_key_id: str
    private_key: str
    project_id: str
    added_at: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> StoredKey:
        data = json.loads(text)
        return cls(
            str(data["client_email"]), str(data["client_id"]), str(data["private_key_id"]),
            str(data["private_key"]), str(data.get("project_id") or ""), float(data.get("added_at") or 0),
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The public view (never the private key)."""
        return {
            "client_email": self.client_email,
            "client_id": self.client_id,
            "private_key_id": self.private_key_id,
            "project_id": self.project_id,
        }


def parse_key(key_file: Mapping[str, Any], now: float) -> StoredKey:
    """A downloaded key file → ``StoredKey``; ``InvalidRequest`` (``invalid_service_account_key``) naming
    what is wrong, never quoting the key."""

    def field(name: str) -> str:
        value = key_file.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_KEY_FIELD:
            raise _invalid(f"the key file has no valid {name}")
        return value.strip()

    if key_file.get("type") != "service_account":
        raise _invalid('the key file is not a service account key (its "type" must be "service_account")')
    email, client_id, key_id = field("client_email"), field("client_id"), field("private_key_id")
    if "@" not in email:
        raise _invalid("the key file's client_email is not a service account address")
    if not client_id.isdigit():
        raise _invalid("the key file's client_id must be the service account's numeric client id")
    pem = field("private_key")
    try:
        loaded = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise _invalid("the key file's private_key is not a PEM private key") from None
    if not isinstance(loaded, RSAPrivateKey):
        raise _invalid("the key file's private_key is not an RSA key")
    project = key_file.get("project_id")
    return StoredKey(email, client_id, key_id, pem, str(project) if isinstance(project, str) else "", now)


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest("invalid_service_account_key", message)


def mailbox_scopes(send: bool) -> tuple[str, ...]:
    return (READ_SCOPE, *((SEND_SCOPE,) if send else ()))


def assertion(key: StoredKey, token_url: str, scopes: tuple[str, ...], subject: str | None, now: float) -> str:
    """The signed JWT-bearer assertion (RS256, ``kid`` = the key's id)."""
    claims: dict[str, Any] = {
        "iss": key.client_email,
        "scope": " ".join(scopes),
        "aud": token_url,
        "iat": int(now),
        "exp": int(now) + ASSERTION_LIFETIME,
    }
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.private_key_id})


def request_token(  # noqa: PLR0917
    session: requests.Session,
    token_url: str,
    key: StoredKey,
    scopes: tuple[str, ...],
    subject: str | None,
    now: float,
) -> tuple[str, float]:
    """(access token, seconds it lives) for ``subject`` (None: the service account itself)."""
    form = {"grant_type": JWT_BEARER, "assertion": assertion(key, token_url, scopes, subject, now)}
    try:
        response = session.post(token_url, data=form, headers={"Accept": "application/json"}, timeout=(5.0, 30.0))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientGoogleError(f"Google's token endpoint unreachable: {type(exc).__name__}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code < 300 and body.get("access_token"):
        return str(body["access_token"]), float(body.get("expires_in") or 3600)
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientGoogleError(f"Google's token endpoint answered {response.status_code}")
    error = str(body.get("error") or "")
    description = str(body.get("error_description") or "")[:MAX_DESCRIPTION]
    said = f": {description}" if description else ""
    if error == "unauthorized_client":
        raise IdentityError(
            f"the Workspace admin has not delegated the scopes {' '.join(scopes)} to the service account's "
            f"client id {key.client_id} (unauthorized_client); add them under Security > API controls > "
            "Domain-wide delegation",
            error,
        )
    if error == "invalid_grant":
        whom = "this mailbox" if subject else "the service account"
        raise ReauthRequired(
            f"Google refused the service account's access to {whom} (invalid_grant{said}); check that the "
            "address is an active user of the Workspace domain and that the key is not deleted, then add "
            "the mailbox again"
        )
    if error == "invalid_client":
        raise IdentityError(f"Google does not know the service account (invalid_client{said})", error)
    raise IdentityError(f"Google's token endpoint refused the service account ({error or response.status_code})", error)


_CACHE: dict[tuple[str, str, str, tuple[str, ...]], tuple[str, float]] = {}
_CACHE_LOCK = threading.Lock()


class ServiceAccountTokenSource:
    """The ``TokenSource`` of one Gmail mailbox read through the org's service account."""

    def __init__(  # noqa: PLR0917
        self,
        session: requests.Session,
        token_url: str,
        load_key: Callable[[], StoredKey | None],
        subject: str,
        scopes: tuple[str, ...],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._load_key = load_key
        self._subject = subject
        self._scopes = scopes
        self._now = now

    def __call__(self, force_refresh: bool = False) -> str:
        key = self._load_key()
        if key is None:
            raise ReauthRequired(
                "the organisation's Google Workspace service account was removed; add it again "
                "(PUT /api/orgs/{org}/google/service-account)"
            )
        cache_key = (key.client_email, key.private_key_id, self._subject.lower(), self._scopes)
        now = self._now()
        with _CACHE_LOCK:
            cached = _CACHE.get(cache_key)
        if cached is not None and not force_refresh and cached[1] - EXPIRY_MARGIN > now:
            return cached[0]
        token, lifetime = request_token(self._session, self._token_url, key, self._scopes, self._subject, now)
        with _CACHE_LOCK:
            _CACHE[cache_key] = (token, now + lifetime)
        return token


def stored_key_loader(store: TokenCacheStore, org_id: str) -> Callable[[], StoredKey | None]:
    """Reads the org's key from the encrypted store on each token request (a removed or replaced key
    takes effect at once); an undecryptable key is ``CredentialsUnreadable``."""

    def load() -> StoredKey | None:
        try:
            stored = store.get(org_id, org_access_owner("google"))
        except TokenDecryptionError:
            raise CredentialsUnreadable(
                "the stored service account key cannot be decrypted with the configured keys; upload it again"
            ) from None
        if stored is None:
            return None
        try:
            return StoredKey.from_json(stored.value)
        except (ValueError, KeyError, TypeError):
            raise CredentialsUnreadable("the stored service account key is unusable; upload it again") from None

    return load


class GoogleOrgAccess:
    """The ``OrgAccess`` of Google Workspace: validates key files, reads a mailbox's profile through one."""

    def __init__(
        self, session: requests.Session, token_url: str, gmail_base_url: str, now: Callable[[], float] = time.time
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._gmail_base_url = gmail_base_url
        self._now = now

    def validate(self, credential: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        key = parse_key(credential, self._now())
        # A token for the service account itself: Google accepted the key's signature (it is live).
        request_token(self._session, self._token_url, key, (READ_SCOPE,), None, self._now())
        return key.to_json(), key.describe()

    def describe(self, stored: str) -> dict[str, Any]:
        return StoredKey.from_json(stored).describe()

    def mailbox_profile(self, stored: str, address: str, send: bool) -> Mapping[str, Any]:
        from sync_core.adapters.google.http import GmailHttp  # noqa: PLC0415 (only when a mailbox is added)

        key = StoredKey.from_json(stored)
        source = ServiceAccountTokenSource(
            self._session, self._token_url, lambda: key, address, mailbox_scopes(send), self._now
        )
        profile = GmailHttp(self._session, self._gmail_base_url, source).get("profile")
        mail = str(profile.get("emailAddress") or "")
        return {"id": mail.lower(), "mail": mail}
