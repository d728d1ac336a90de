"""MSAL on the Microsoft identity platform: the connect flows and the token sources Graph calls use.

``MsalIdentity`` is the identity adapter the connect use cases depend on (``IdentityProvider``); the
token sources are the ``Callable[[bool], str]`` ``GraphHttp`` takes (True = force a refresh after a 401).

Invariants:
- Every MSAL application object is built per operation, with the mailbox's or tenant's cache
  deserialized into a fresh ``SerializableTokenCache``: no token state is shared between mailboxes,
  and no MSAL object remembers an error response across operations (MSAL replays an identical HTTP 400
  for ~60 s per application object, which would otherwise poison the admin-consent proof).
- OIDC discovery documents are cached in ``MsalHttpClient`` (successful GETs only), so building an
  application per operation costs no extra request after the first.
- A cache is written back only when MSAL changed it (``has_state_changed``), etag-conditionally.
- Tokens, refresh tokens and caches are never logged, never put in exception messages, never in
  ``repr``.
- A revoked or expired grant (AADSTS 70008, 700082, 50173, 65001, or any other ``invalid_grant``)
  raises ``ReauthRequired`` with a readable reason and the AADSTS code; an unreachable identity
  platform raises ``TransientGraphError`` (retry later, the mailbox stays active); a refusal of the app
  itself (client secret expired or invalid: AADSTS 7000222, 7000215...) raises ``IdentityError``, a
  ``ConfigurationFailure`` whose message says what an operator must fix, never ``ReauthRequired``:
  reconnecting a mailbox cannot fix the app's credentials.
- A delegated token cache no configured key opens raises ``CredentialsUnreadable`` (a ``ReauthRequired``:
  the mailbox goes ``needs_reauth``, never a crash); an application one is replaced by a fresh one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import msal
import requests

from sync_core.auth.ports import TokenCacheStore, mailbox_owner, tenant_owner
from sync_core.domain.model import ConnectionMode, Mailbox
from sync_core.errors import (
    ConcurrencyConflict,
    CredentialsUnreadable,
    IdentityError,
    ReauthRequired,
    SyncError,
    TokenDecryptionError,
    TransientGraphError,
)
from sync_core.settings import GRAPH_RESOURCE, Settings

log = logging.getLogger(__name__)

TokenSource = Callable[[bool], str]

DELEGATED_SCOPES = ("Mail.Read",)
CONNECT_SCOPES = ("Mail.Read", "User.Read")
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


def _codes(result: Mapping[str, Any]) -> list[int]:
    codes: list[int] = []
    for value in result.get("error_codes") or ():
        try:
            codes.append(int(value))
        except (TypeError, ValueError):
            continue
    return codes


# -- HTTP ------------------------------------------------------------------------------------------------


class MsalHttpClient:
    """The ``http_client`` MSAL gets: a requests Session (whose ``verify`` follows REQUESTS_CA_BUNDLE),
    default timeouts, and a cache of successful OIDC discovery GETs. MSAL does its own throttling on
    top; it does not retry, and neither does this (callers retry whole operations)."""

    def __init__(
        self,
        session: requests.Session,
        timeout: tuple[float, float] = (5.0, 30.0),
        discovery_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._ttl = discovery_ttl
        self._clock = clock
        self._discovery: dict[str, tuple[float, requests.Response]] = {}
        self._lock = threading.Lock()

    def post(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return self._session.post(url, params=params, data=data, headers=headers, **kwargs)

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        cacheable = url.endswith("/.well-known/openid-configuration") and not params
        if cacheable:
            with self._lock:
                hit = self._discovery.get(url)
            if hit is not None and hit[0] > self._clock():
                return hit[1]
        response = self._session.get(url, params=params, headers=headers, **kwargs)
        if cacheable and 200 <= response.status_code < 300:
            with self._lock:
                self._discovery[url] = (self._clock() + self._ttl, response)
        return response

    def close(self) -> None:
        self._session.close()


def make_session(ca_bundle: str | None) -> requests.Session:
    """A requests Session that trusts ``ca_bundle`` (REQUESTS_CA_BUNDLE: the system bundle plus any
    private CA) or the default bundle."""
    session = requests.Session()
    if ca_bundle:
        session.verify = ca_bundle
    return session


# -- results of the interactive flows --------------------------------------------------------------------


@dataclass(frozen=True)
class DelegatedGrant:
    """Tokens of a redeemed authorization code. ``serialized_cache`` holds the refresh token: it goes
    to the ``TokenCacheStore`` and nowhere else."""

    access_token: str = field(repr=False)
    tenant_id: str
    object_id: str
    username: str
    serialized_cache: str = field(repr=False)


@dataclass(frozen=True)
class AdminSignIn:
    """Who signed in for an admin consent: ``tenant_id`` is the id_token's ``tid`` (MSAL checked the
    id_token's nonce and audience; it came from the token endpoint over TLS)."""

    tenant_id: str
    object_id: str
    username: str


@dataclass(frozen=True)
class AppGrant:
    """A client-credentials token for one tenant: the proof that its admin consented. ``roles`` are the
    application permissions the token carries (its ``roles`` claim): what the admin actually granted."""

    tenant_id: str
    access_token: str = field(repr=False)
    serialized_cache: str = field(repr=False)
    roles: tuple[str, ...] = ()


class IdentityProvider(Protocol):
    """What the connect use cases need from the identity platform (``MsalIdentity`` in production,
    a fake in unit tests)."""

    def initiate_connect(self, redirect_uri: str, login_hint: str | None) -> dict[str, Any]:
        """Start an auth-code flow with PKCE; returns MSAL's flow dict (``auth_uri``, ``state``...)."""

    def redeem_connect(self, flow: Mapping[str, Any], auth_response: Mapping[str, str]) -> DelegatedGrant:
        """Redeem the code of a callback. Raises ``IdentityError`` (or ``ReauthRequired`` for a consent
        problem) when the identity platform refuses, ``TransientGraphError`` when it is unreachable."""

    def initiate_admin_sign_in(self, tenant: str, redirect_uri: str) -> dict[str, Any]:
        """Start an OpenID Connect sign-in (no API scopes) of a tenant admin at ``tenant`` (a tenant id,
        verified domain or ``organizations``); returns MSAL's flow dict. Raises ``IdentityError`` for an
        unknown tenant, ``TransientGraphError`` when the identity platform is unreachable."""

    def redeem_admin_sign_in(
        self, tenant: str, flow: Mapping[str, Any], auth_response: Mapping[str, str]
    ) -> AdminSignIn:
        """Redeem the admin's sign-in code; the result's ``tenant_id`` is the id_token's ``tid``. Raises
        like ``redeem_connect``."""

    def admin_consent_url(self, tenant: str, redirect_uri: str, state: str) -> str: ...

    def prove_app_access(self, tenant_id: str) -> AppGrant:
        """Acquire a client-credentials token for ``tenant_id`` with a fresh application object; its
        ``roles`` are the token's. Raises ``IdentityError`` when the tenant has not (or not yet) consented."""

    def token_source(self, mailbox: Mailbox) -> TokenSource:
        """The token source for syncing ``mailbox`` (delegated or application, by its mode)."""

    def app_token_source(self, org_id: str, tenant_id: str) -> TokenSource: ...


# -- the MSAL adapter ------------------------------------------------------------------------------------


class MsalIdentity:
    """``IdentityProvider`` on MSAL Python, for one app registration."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenCacheStore,
        http_client: MsalHttpClient | None = None,
    ) -> None:
        if not settings.graph_client_id or not settings.graph_client_secret:
            raise ValueError("GRAPH_CLIENT_ID and GRAPH_CLIENT_SECRET must be set")
        self._client_id = settings.graph_client_id
        self._secret = settings.graph_client_secret
        self._authority_host = settings.authority_host.rstrip("/")
        self._tokens = tokens
        self._http = http_client or MsalHttpClient(make_session(settings.ca_bundle))

    def __repr__(self) -> str:
        return f"MsalIdentity(client_id={self._client_id!r}, authority_host={self._authority_host!r})"

    def application(
        self, tenant: str | None, cache: msal.SerializableTokenCache | None = None
    ) -> msal.ConfidentialClientApplication:
        """A fresh MSAL application for ``tenant`` (or ``organizations``) over ``cache``."""
        try:
            return msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._secret,
                authority=f"{self._authority_host}/{tenant or DEFAULT_TENANT}",
                instance_discovery=False,
                http_client=self._http,
                token_cache=cache if cache is not None else msal.SerializableTokenCache(),
            )
        except requests.RequestException as exc:
            raise TransientGraphError(f"identity platform unreachable: {type(exc).__name__}") from exc
        except ValueError as exc:  # MSAL: unknown tenant / bad authority / discovery failure
            raise IdentityError(f"identity platform rejected the authority: {exc}") from exc

    # -- delegated connect -------------------------------------------------------------------------------

    def initiate_connect(self, redirect_uri: str, login_hint: str | None) -> dict[str, Any]:
        # prompt=select_account: the person always sees (and picks) the account they connect.
        return _initiate(self.application(None), list(CONNECT_SCOPES), redirect_uri, login_hint)

    def redeem_connect(self, flow: Mapping[str, Any], auth_response: Mapping[str, str]) -> DelegatedGrant:
        cache = msal.SerializableTokenCache()
        result, claims, tenant_id = _redeem(self.application(None, cache), flow, auth_response)
        if "access_token" not in result:
            raise IdentityError("the sign-in returned no access token", "invalid_response")
        return DelegatedGrant(
            access_token=str(result["access_token"]),
            tenant_id=tenant_id,
            object_id=str(claims.get("oid") or ""),
            username=str(claims.get("preferred_username") or ""),
            serialized_cache=cache.serialize(),
        )

    # -- admin consent / application mode --------------------------------------------------------------

    def initiate_admin_sign_in(self, tenant: str, redirect_uri: str) -> dict[str, Any]:
        # No API scopes: MSAL asks for openid/profile/offline_access, enough for an id_token with ``tid``.
        return _initiate(self.application(_authority_tenant(tenant)), [], redirect_uri, None)

    def redeem_admin_sign_in(
        self, tenant: str, flow: Mapping[str, Any], auth_response: Mapping[str, str]
    ) -> AdminSignIn:
        # The same authority as the authorize request; the tokens are dropped (only the id_token's claims count).
        _, claims, tenant_id = _redeem(self.application(_authority_tenant(tenant)), flow, auth_response)
        return AdminSignIn(tenant_id, str(claims.get("oid") or ""), str(claims.get("preferred_username") or ""))

    def admin_consent_url(self, tenant: str, redirect_uri: str, state: str) -> str:
        query = urlencode(
            {"client_id": self._client_id, "scope": APP_SCOPES[0], "redirect_uri": redirect_uri, "state": state}
        )
        return f"{self._authority_host}/{tenant}/v2.0/adminconsent?{query}"

    def prove_app_access(self, tenant_id: str) -> AppGrant:
        cache = msal.SerializableTokenCache()
        app = self.application(tenant_id, cache)  # fresh: no remembered 400 from before the consent
        result = _call(lambda: app.acquire_token_for_client(list(APP_SCOPES)))
        if "error" in result or "access_token" not in result:
            error = str(result.get("error", "no_token"))
            raise IdentityError(
                f"no application token for tenant {tenant_id} ({error}{_aadsts(_codes(result))})", error, _codes(result)
            )
        token = str(result["access_token"])
        return AppGrant(tenant_id, token, cache.serialize(), token_roles(token))

    def token_source(self, mailbox: Mailbox) -> TokenSource:
        if mailbox.mode is ConnectionMode.APPLICATION:
            return AppTokenSource(self, self._tokens, mailbox.org_id, mailbox.tenant_id)
        return DelegatedTokenSource(self, self._tokens, mailbox)

    def app_token_source(self, org_id: str, tenant_id: str) -> TokenSource:
        return AppTokenSource(self, self._tokens, org_id, tenant_id)


def _authority_tenant(tenant: str) -> str | None:
    return None if tenant.lower() == DEFAULT_TENANT else tenant


def _initiate(
    app: msal.ConfidentialClientApplication, scopes: list[str], redirect_uri: str, login_hint: str | None
) -> dict[str, Any]:
    with warnings.catch_warnings():
        # The callback is a GET (spec §4); the query carries only a PKCE-bound, single-use code.
        warnings.filterwarnings("ignore", "response_mode='form_post' is recommended", UserWarning)
        flow = app.initiate_auth_code_flow(
            scopes, redirect_uri=redirect_uri, login_hint=login_hint, prompt="select_account"
        )
    return dict(flow)


def _redeem(
    app: msal.ConfidentialClientApplication, flow: Mapping[str, Any], auth_response: Mapping[str, str]
) -> tuple[dict[str, Any], Mapping[str, Any], str]:
    """(MSAL's result, the id_token's claims, its ``tid``) of a redeemed authorization code."""
    try:
        result = app.acquire_token_by_auth_code_flow(dict(flow), dict(auth_response))
    except UNREACHABLE as exc:
        raise TransientGraphError(f"identity platform unreachable: {type(exc).__name__}") from exc
    except ValueError as exc:  # state mismatch, nonce or audience check of the id token
        # MSAL's message may quote the state or nonce: keep it out of results and logs.
        raise IdentityError(
            "the sign-in response did not match the sign-in request (state, nonce or audience)", "invalid_response"
        ) from exc
    if "error" in result:
        raise _redeem_error(result)
    claims = result.get("id_token_claims") or {}
    tenant_id = str(claims.get("tid") or "")
    if not tenant_id:
        raise IdentityError("the sign-in returned no tenant", "invalid_response")
    return dict(result), claims, tenant_id


def token_roles(access_token: str) -> tuple[str, ...]:
    """The ``roles`` claim of an app-only access token: the application permissions granted to the app
    in the token's tenant (https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference).
    Read, not validated: the token came straight from the token endpoint over TLS. A token that is not
    a readable JWT has no roles we can see, which fails the consent check (safe side)."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return ()
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return tuple(str(role) for role in roles) if isinstance(roles, list) else ()


# The identity platform could not answer: a network failure, or a 5xx that MSAL raises as MsalServiceError
# ("HTTP Error: 503") instead of returning an error dict. Both are worth retrying later.
UNREACHABLE = (requests.RequestException, msal.exceptions.MsalServiceError)


def _aadsts(codes: Sequence[int]) -> str:
    return f", AADSTS{codes[0]}" if codes else ""


def _call(operation: Callable[[], Any]) -> dict[str, Any]:
    try:
        result = operation()
    except UNREACHABLE as exc:
        raise TransientGraphError(f"identity platform unreachable: {type(exc).__name__}") from exc
    return dict(result) if result else {}


def _redeem_error(result: Mapping[str, Any]) -> SyncError:
    error = str(result.get("error", ""))
    codes = _codes(result)
    if error in TRANSIENT_ERRORS:
        return TransientGraphError(f"identity platform unavailable ({error})")
    if any(code in REAUTH_CODES for code in codes) or error in {"consent_required", "interaction_required"}:
        return reauth_error(error, codes)
    return IdentityError(f"the identity platform refused the sign-in ({error}{_aadsts(codes)})", error, codes)


# -- token sources ---------------------------------------------------------------------------------------


class DelegatedTokenSource:
    """Access tokens for one delegated mailbox, from its stored MSAL cache.

    ``source(False)`` returns a cached access token or refreshes with the refresh token;
    ``source(True)`` always refreshes (Graph answered 401). A changed cache is written back
    etag-conditionally; on a conflict (another worker refreshed concurrently) the cache is reloaded and
    the acquisition retried once, so the freshest refresh token is the one kept."""

    def __init__(self, identity: MsalIdentity, store: TokenCacheStore, mailbox: Mailbox) -> None:
        self._identity = identity
        self._store = store
        self._org_id = mailbox.org_id
        self._owner = mailbox_owner(mailbox.mailbox_id)
        self._tenant = mailbox.tenant_id or None
        self._user = mailbox.graph_user_id

    def __call__(self, force_refresh: bool = False) -> str:
        token = ""
        for attempt in (1, 2):
            try:
                stored = self._store.get(self._org_id, self._owner)
            except TokenDecryptionError:
                # No configured key opens it (a key dropped too early, or a key id reused): only a new
                # sign-in brings a refresh token back.
                raise CredentialsUnreadable() from None
            if stored is None:
                raise ReauthRequired("no token cache; connect the mailbox again")
            cache = msal.SerializableTokenCache()
            cache.deserialize(stored.value)
            app = self._identity.application(self._tenant, cache)
            account = self._account(app)
            if account is None:
                raise ReauthRequired("no token cache; connect the mailbox again")
            result = _call(
                lambda app=app, account=account: app.acquire_token_silent_with_error(  # type: ignore[misc]
                    list(DELEGATED_SCOPES), account, force_refresh=force_refresh
                )
            )
            if not result:
                raise ReauthRequired("no token cache; connect the mailbox again")
            if "error" in result:
                raise _refresh_error(result)
            token = str(result["access_token"])
            if not cache.has_state_changed:
                return token
            try:
                self._store.put(self._org_id, self._owner, cache.serialize(), stored.etag)
            except ConcurrencyConflict:
                if attempt == 1:
                    continue  # someone refreshed meanwhile: use their cache
                log.info("token cache changed concurrently twice; keeping the other writer's cache")
            return token
        return token

    def _account(self, app: msal.ConfidentialClientApplication) -> dict[str, Any] | None:
        accounts = list(app.get_accounts())
        if self._user:
            mine = [a for a in accounts if str(a.get("home_account_id", "")).startswith(f"{self._user}.")]
            accounts = mine or accounts
        return dict(accounts[0]) if accounts else None


def _refresh_error(result: Mapping[str, Any]) -> SyncError:
    error = str(result.get("error", ""))
    codes = _codes(result)
    if error in TRANSIENT_ERRORS:
        return TransientGraphError(f"identity platform unavailable ({error})")
    if credentials := credential_error(error, codes):
        return credentials
    if error in {"invalid_grant", "interaction_required", "consent_required"} or any(c in REAUTH_CODES for c in codes):
        return reauth_error(error, codes)
    return IdentityError(f"token refresh failed ({error}{_aadsts(codes)})", error, codes)


class AppTokenSource:
    """Client-credentials tokens (``https://graph.microsoft.com/.default``) for one tenant, cached per
    (org, tenant) in the store. A forced refresh ignores the cached token. A tenant whose admin consent
    is gone raises ``ReauthRequired`` (an admin must consent again)."""

    def __init__(self, identity: MsalIdentity, store: TokenCacheStore, org_id: str, tenant_id: str) -> None:
        if not tenant_id:
            raise ReauthRequired("no consented tenant; an admin must grant consent first")
        self._identity = identity
        self._store = store
        self._org_id = org_id
        self._tenant = tenant_id
        self._owner = tenant_owner(tenant_id)

    def __call__(self, force_refresh: bool = False) -> str:
        try:
            stored = self._store.get(self._org_id, self._owner)
        except TokenDecryptionError:
            # Only app tokens live in it, and the client credentials get new ones: start afresh (the put
            # below replaces it under the current key).
            log.warning("an application token cache no configured key opens was replaced")
            stored = None
        cache = msal.SerializableTokenCache()
        if stored is not None and not force_refresh:
            cache.deserialize(stored.value)
        app = self._identity.application(self._tenant, cache)
        result = _call(lambda: app.acquire_token_for_client(list(APP_SCOPES)))
        if "error" in result or "access_token" not in result:
            error = str(result.get("error", "no_token"))
            codes = _codes(result)
            if error in TRANSIENT_ERRORS:
                raise TransientGraphError(f"identity platform unavailable ({error})")
            if credentials := credential_error(error, codes):
                raise credentials
            if error in APP_CONSENT_ERRORS:
                code = codes[0] if codes else None
                raise ReauthRequired(
                    f"the organisation's admin consent is missing or was revoked ({error}{_aadsts(codes)}); "
                    "an admin must grant consent again",
                    code,
                )
            raise IdentityError(f"client-credentials token failed ({error}{_aadsts(codes)})", error, codes)
        if cache.has_state_changed:
            # On a conflict another worker stored a token of its own; both are valid.
            with contextlib.suppress(ConcurrencyConflict):
                self._store.put(self._org_id, self._owner, cache.serialize(), stored.etag if stored else None)
        return str(result["access_token"])
