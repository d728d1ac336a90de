"""Token sources for Graph calls: the ``TokenSource`` (``Callable[[bool], str]``, True = force a refresh
after a 401) of a delegated mailbox (its stored MSAL cache) and of a tenant (client credentials).

A cache is written back only when MSAL changed it (``has_state_changed``), etag-conditionally; tokens and
caches are never logged, never in exception messages.

A tenant's application token is also remembered in the worker's memory (``AppTokenMemory``) while it has
more than ``REMEMBER_MARGIN`` left, so a worker syncing many mailboxes of one tenant reads the tenant's
stored cache only when the token nears its expiry (or Graph refused it), not once per run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msal

from sync_core.adapters.graph.msal_errors import (
    APP_CONSENT_ERRORS,
    APP_SCOPES,
    DELEGATED_SCOPES,
    REAUTH_CODES,
    TRANSIENT_ERRORS,
    aadsts_suffix,
    call_msal,
    codes_of,
    credential_error,
    reauth_error,
)
from sync_core.domain.model import Mailbox
from sync_core.errors import (
    ConcurrencyConflict,
    CredentialsUnreadable,
    IdentityError,
    ReauthRequired,
    SyncError,
    TokenDecryptionError,
    TransientGraphError,
)
from sync_core.ports.identity import TokenCacheStore, mailbox_owner, tenant_owner

if TYPE_CHECKING:
    from sync_core.adapters.graph.identity import MsalIdentity

log = logging.getLogger(__name__)

class DelegatedTokenSource:
    """Access tokens for one delegated mailbox, from its stored MSAL cache.

    ``source(False)`` returns a cached access token or refreshes with the refresh token;
    ``source(True)`` always refreshes (Graph answered 401). A changed cache is written back
    etag-conditionally; on a conflict (another worker refreshed concurrently) the cache is reloaded and
    the acquisition retried once, so the freshest refresh token is the one kept."""

    def __init__(
        self,
        identity: MsalIdentity,
        store: TokenCacheStore,
        mailbox: Mailbox,
        scopes: tuple[str, ...] = DELEGATED_SCOPES,
    ) -> None:
        self._scopes = scopes
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
            result = call_msal(
                lambda app=app, account=account: app.acquire_token_silent_with_error(  # type: ignore[misc]
                    list(self._scopes), account, force_refresh=force_refresh
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
    codes = codes_of(result)
    if error in TRANSIENT_ERRORS:
        return TransientGraphError(f"identity platform unavailable ({error})")
    if credentials := credential_error(error, codes):
        return credentials
    if error in {"invalid_grant", "interaction_required", "consent_required"} or any(c in REAUTH_CODES for c in codes):
        return reauth_error(error, codes)
    return IdentityError(f"token refresh failed ({error}{aadsts_suffix(codes)})", error, codes)


REMEMBER_MARGIN = 5 * 60.0  # seconds: a remembered token this close to its expiry is fetched again


class AppTokenMemory:
    """The application token of each (org, tenant) a worker used, with its expiry: one per worker process
    (``MsalIdentity``), shared by its threads. ``get`` answers only while the token has more than
    ``REMEMBER_MARGIN`` left (MSAL's own cache treats a token as expired 5 minutes early too), so a token
    handed out is valid for at least that long by this worker's clock.

    Invariants: only application tokens (tenant-wide, from the app's own credentials) are remembered, never
    a delegated mailbox's; a token Graph refused is forgotten before the forced refresh; nothing here is
    ever logged. A consent revoked meanwhile shows as Graph refusing the token (then the forced refresh
    raises ``ReauthRequired``), as it did for a token still valid in the stored cache."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, org_id: str, tenant_id: str) -> str | None:
        with self._lock:
            found = self._tokens.get((org_id, tenant_id))
        if found is None or found[1] - self._clock() <= REMEMBER_MARGIN:
            return None
        return found[0]

    def put(self, org_id: str, tenant_id: str, token: str, expires_in: float) -> None:
        with self._lock:
            self._tokens[(org_id, tenant_id)] = (token, self._clock() + expires_in)

    def forget(self, org_id: str, tenant_id: str) -> None:
        with self._lock:
            self._tokens.pop((org_id, tenant_id), None)


class AppTokenSource:
    """Client-credentials tokens (``https://graph.microsoft.com/.default``) for one tenant, cached per
    (org, tenant) in the store and remembered in ``memory`` (see ``AppTokenMemory``). A forced refresh
    ignores both. A tenant whose admin consent is gone raises ``ReauthRequired`` (an admin must consent
    again)."""

    def __init__(
        self,
        identity: MsalIdentity,
        store: TokenCacheStore,
        org_id: str,
        tenant_id: str,
        memory: AppTokenMemory | None = None,
    ) -> None:
        if not tenant_id:
            raise ReauthRequired("no consented tenant; an admin must grant consent first")
        self._identity = identity
        self._store = store
        self._org_id = org_id
        self._tenant = tenant_id
        self._owner = tenant_owner(tenant_id)
        self._memory = memory or AppTokenMemory()

    def __call__(self, force_refresh: bool = False) -> str:
        if force_refresh:
            self._memory.forget(self._org_id, self._tenant)
        else:
            remembered = self._memory.get(self._org_id, self._tenant)
            if remembered is not None:
                return remembered
        token, expires_in = self._fetch(force_refresh)
        self._memory.put(self._org_id, self._tenant, token, expires_in)
        return token

    def _fetch(self, force_refresh: bool) -> tuple[str, float]:
        """The token and its remaining seconds, from the stored cache or the identity platform."""
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
        result = call_msal(lambda: app.acquire_token_for_client(list(APP_SCOPES)))
        if "error" in result or "access_token" not in result:
            error = str(result.get("error", "no_token"))
            codes = codes_of(result)
            if error in TRANSIENT_ERRORS:
                raise TransientGraphError(f"identity platform unavailable ({error})")
            if credentials := credential_error(error, codes):
                raise credentials
            if error in APP_CONSENT_ERRORS:
                code = codes[0] if codes else None
                raise ReauthRequired(
                    f"the organisation's admin consent is missing or was revoked ({error}{aadsts_suffix(codes)}); "
                    "an admin must grant consent again",
                    code,
                )
            raise IdentityError(f"client-credentials token failed ({error}{aadsts_suffix(codes)})", error, codes)
        if cache.has_state_changed:
            # On a conflict another worker stored a token of its own; both are valid.
            with contextlib.suppress(ConcurrencyConflict):
                self._store.put(self._org_id, self._owner, cache.serialize(), stored.etag if stored else None)
        try:
            expires_in = float(result.get("expires_in", 0))
        except (TypeError, ValueError):
            expires_in = 0.0  # unknown: not remembered (``get`` wants more than the margin left)
        return str(result["access_token"]), expires_in
