"""MSAL on the Microsoft identity platform: the identity adapter of the connect flows.

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
import json
import logging
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import msal
import requests

from sync_core.adapters.graph.msal_errors import (
    APP_SCOPES,
    CONNECT_SCOPES,
    DEFAULT_TENANT,
    DELEGATED_SCOPES,
    REAUTH_CODES,
    SEND_SCOPES,
    TRANSIENT_ERRORS,
    UNREACHABLE,
    aadsts_suffix,
    call_msal,
    codes_of,
    credential_error,
    reauth_error,
)
from sync_core.adapters.graph.session import MsalHttpClient, make_session
from sync_core.adapters.graph.tokens import AppTokenMemory, AppTokenSource, DelegatedTokenSource
from sync_core.domain.model import ConnectionMode, Mailbox
from sync_core.errors import IdentityError, SyncError, TransientGraphError
from sync_core.ports.identity import AdminSignIn, AppGrant, DelegatedGrant, TokenCacheStore, TokenSource
from sync_core.settings import Settings

log = logging.getLogger(__name__)

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
        self.app_tokens = AppTokenMemory()  # this worker's application tokens, per (org, tenant)

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

    def initiate_connect(self, redirect_uri: str, login_hint: str | None, *, send: bool = False) -> dict[str, Any]:
        # prompt=select_account: the person always sees (and picks) the account they connect.
        scopes = [*CONNECT_SCOPES, *(SEND_SCOPES if send else ())]
        return _initiate(self.application(None), scopes, redirect_uri, login_hint)

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
        result = call_msal(lambda: app.acquire_token_for_client(list(APP_SCOPES)))
        if "error" in result or "access_token" not in result:
            error = str(result.get("error", "no_token"))
            codes = codes_of(result)
            message = f"no application token for tenant {tenant_id} ({error}{aadsts_suffix(codes)})"
            raise IdentityError(message, error, codes)
        token = str(result["access_token"])
        return AppGrant(tenant_id, token, cache.serialize(), token_roles(token))

    def token_source(self, mailbox: Mailbox, send: bool = False) -> TokenSource:
        if mailbox.mode is ConnectionMode.APPLICATION:
            return AppTokenSource(self, self._tokens, mailbox.org_id, mailbox.tenant_id, self.app_tokens)
        return DelegatedTokenSource(self, self._tokens, mailbox, SEND_SCOPES if send else DELEGATED_SCOPES)

    def app_token_source(self, org_id: str, tenant_id: str) -> TokenSource:
        return AppTokenSource(self, self._tokens, org_id, tenant_id, self.app_tokens)


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


def _redeem_error(result: Mapping[str, Any]) -> SyncError:
    error = str(result.get("error", ""))
    codes = codes_of(result)
    if error in TRANSIENT_ERRORS:
        return TransientGraphError(f"identity platform unavailable ({error})")
    if any(code in REAUTH_CODES for code in codes) or error in {"consent_required", "interaction_required"}:
        return reauth_error(error, codes)
    return IdentityError(f"the identity platform refused the sign-in ({error}{aadsts_suffix(codes)})", error, codes)


__all__ = [
    "AppTokenSource",
    "DelegatedTokenSource",
    "MsalHttpClient",
    "MsalIdentity",
    "credential_error",
    "make_session",
    "reauth_error",
    "token_roles",
]
