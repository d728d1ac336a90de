"""Identity ports (spec §3): the identity platform, the directory, token sources, and the stores of
connections (token caches, OAuth flows in progress, admin-consented tenants).

Adapters: ``adapters.graph.identity`` (``MsalIdentity``), ``adapters.graph.directory``
(``GraphDirectory``), ``adapters.graph.tokens`` (token sources), ``sync_core.auth.token_cache_store``
(Azure Table Storage; in-memory doubles in ``sync_core.testing.auth``, both kept honest by
tests/contract/test_token_cache_store.py).

Invariants shared by every adapter:
- Secrets (MSAL token caches, auth-code flows with their PKCE verifier) are stored only as AES-GCM
  ciphertext bound to their owner; the ports hand out plaintext, the tables never hold it.
- Every method is scoped by ``org_id`` except ``AuthFlowStore.take``: an OAuth callback only knows the
  ``state``, and the flow stored under it says which org it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sync_core.domain.model import Mailbox
from sync_core.ports.storage import Versioned

TokenSource = Callable[[bool], str]
"""An access token for a provider's API; ``True`` forces a refresh (the API answered 401)."""

FLOW_LIFETIME = timedelta(minutes=10)

# ``connect``: a user's sign-in, waiting for its callback; ``connect_confirm``: a completed sign-in waiting
# for the CRM's confirmation (stored under a hash of the connect code, never the code itself);
# ``admin_sign_in`` then ``admin_consent``: the two steps of a tenant admin's consent.
FlowKind = Literal["connect", "connect_confirm", "connect_done", "admin_sign_in", "admin_consent"]


def mailbox_owner(mailbox_id: str) -> str:
    """Owner key of a delegated mailbox's token cache."""
    return f"mailbox:{mailbox_id}"


def org_access_owner(provider: str) -> str:
    """Owner key of an org's uploaded org-wide credential for ``provider`` (a Google Workspace
    service account key)."""
    return f"org-access:{provider}"


def tenant_owner(tenant_id: str) -> str:
    """Owner key of a tenant's application (client-credentials) token cache."""
    return f"tenant:{tenant_id.lower()}"


class TokenCacheStore(Protocol):
    """Serialized MSAL token caches, one per owner (``mailbox:{id}`` or ``tenant:{tenant_id}``)."""

    def get(self, org_id: str, owner_key: str) -> Versioned[str] | None:
        """The decrypted serialized cache and its etag, or None. Raises ``TokenDecryptionError`` when
        the stored value cannot be decrypted with any configured key."""

    def put(self, org_id: str, owner_key: str, serialized: str, etag: str | None) -> str:
        """Encrypt under the current key and store; returns the new etag. With ``etag`` the write is
        conditional (``ConcurrencyConflict`` when someone else wrote since); with None it overwrites."""

    def delete(self, org_id: str, owner_key: str) -> None:
        """Remove one cache (missing is fine)."""

    def delete_org(self, org_id: str) -> int:
        """Remove every cache of the org; returns how many were removed."""

    def rewrap_if_needed(self, org_id: str, owner_key: str) -> bool:
        """Re-encrypt a cache stored under an old key with the current key (conditional on its etag;
        a concurrent writer already wrote under the current key). True when it rewrote. Raises
        ``TokenDecryptionError`` when no configured key opens it (the maintenance timer counts those)."""


@dataclass(frozen=True)
class PendingAuthFlow:
    """An OAuth round trip in progress, stored under its ``state`` until the callback takes it.

    ``flow`` is MSAL's auth-code flow dict (holds the PKCE verifier and nonce) for ``connect``; for
    ``connect_confirm`` the signed-in account and its serialized token cache; for ``admin_sign_in`` the
    tenant hint and MSAL's flow; for ``admin_consent`` the tenant id the admin's sign-in proved;
    ``connect_done`` is the empty trace a completed connect leaves under its ``state`` (nothing but the
    org), so a reload of the callback says "already completed" rather than "invalid"."""

    state: str
    org_id: str
    kind: FlowKind
    created_at: datetime
    user_id: str = ""
    return_url: str = ""
    flow: Mapping[str, Any] = field(default_factory=dict)
    login_hint: str = ""  # normalised address the signed-in account must own (``connect`` only)

    def expired(self, now: datetime) -> bool:
        return now - self.created_at > FLOW_LIFETIME or now < self.created_at - timedelta(minutes=5)


class AuthFlowStore(Protocol):
    def save(self, pending: PendingAuthFlow) -> None:
        """Store a new flow (encrypted). Raises ``AlreadyExists`` if the state is taken."""

    def take(self, state: str, now: datetime) -> PendingAuthFlow | None:
        """Single use: remove and return the flow of ``state``. None when unknown, already taken (two
        concurrent callbacks: exactly one wins, through an etag-conditional delete), or older than
        ``FLOW_LIFETIME`` at ``now`` (an expired flow is deleted and never returned)."""

    def purge_expired(self, now: datetime) -> int:
        """Delete flows that expired by ``now``; returns how many."""


@dataclass(frozen=True)
class OrgTenant:
    """The Microsoft 365 tenant an org's admin consented for (application mode)."""

    org_id: str
    tenant_id: str
    consented_at: datetime


class OrgTenantStore(Protocol):
    """Admin consent per org, recorded only after the admin's sign-in fixed the tenant and a
    client-credentials token carrying the needed application roles proved the consent.

    One tenant per org, and one org per tenant: a tenant already claimed by another org is refused
    rather than shared."""

    def get(self, org_id: str) -> OrgTenant | None: ...

    def org_for_tenant(self, tenant_id: str) -> str | None:
        """The org that claimed ``tenant_id``, if any."""

    def claim(self, consent: OrgTenant) -> bool:
        """Record the org's consented tenant. False (nothing changed) when another org holds the
        tenant. An org that moves to another tenant releases its previous one."""

    def release(self, org_id: str) -> None:
        """Forget the org's consent and its tenant claim (missing is fine)."""


# -- the identity platform and the directory -------------------------------------------------------


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

    def initiate_connect(self, redirect_uri: str, login_hint: str | None, *, send: bool = False) -> dict[str, Any]:
        """Start an auth-code flow with PKCE; returns the flow dict (``auth_uri``, ``state``...). With
        ``send`` it also asks for what sending needs (the org's ``sending_enabled``): the consent screen
        then adds those permissions to the ones already granted."""

    def redeem_connect(self, flow: Mapping[str, Any], auth_response: Mapping[str, str]) -> DelegatedGrant:
        """Redeem the code of a callback. Raises ``IdentityError`` (or ``ReauthRequired`` for a consent
        problem) when the identity platform refuses, ``TransientGraphError`` when it is unreachable."""

    def initiate_admin_sign_in(self, tenant: str, redirect_uri: str) -> dict[str, Any]:
        """Start an OpenID Connect sign-in (no API scopes) of a tenant admin at ``tenant`` (a tenant id,
        verified domain or ``organizations``); returns the flow dict. Raises ``IdentityError`` for an
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

    def token_source(self, mailbox: Mailbox, send: bool = False) -> TokenSource:
        """The token source for syncing ``mailbox`` (delegated or application, by its mode); with
        ``send``, tokens for sending from it (a delegated mailbox that never granted sending gets a
        ``GrantFailure`` from this source only, never from the sync's)."""

    def app_token_source(self, org_id: str, tenant_id: str) -> TokenSource: ...


class Directory(Protocol):
    """The directory behind a token source: who the signed-in user is, which user owns an address.

    A profile is a mapping with ``id`` (the provider's stable user id), ``mail``, ``userPrincipalName``,
    ``proxyAddresses`` (``SMTP:``/``smtp:`` prefixed aliases) and ``displayName``; missing keys are
    absent or None. Raises ``ReauthRequired``/``MailboxAccessDenied`` for the token's grant,
    ``TransientGraphError`` when the provider stays unavailable."""

    def me(self) -> Mapping[str, Any]:
        """The signed-in user's profile (delegated tokens)."""

    def user(self, address: str) -> Mapping[str, Any]:
        """The profile of the user or shared mailbox owning ``address``; ``MessageNotFound`` when none."""

    def check_mail_access(self, user_id: str) -> None:
        """Raise ``MailboxAccessDenied`` when this token may not read the user's mail (e.g. an
        application access policy excludes the mailbox)."""


class OrgAccess(Protocol):
    """A provider's org-wide access from a credential the org's admin uploads (Google Workspace: a
    service account key with domain-wide delegation). Stateless: the stored form lives encrypted in the
    ``TokenCacheStore`` under ``org_access_owner(provider)``; the provider reads it from there at sync.

    Adapters: ``adapters.google.service_account.GoogleOrgAccess``; in-memory double
    ``sync_core.testing.auth.FakeOrgAccess`` (both run by tests/contract/test_org_access.py)."""

    def validate(self, credential: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Check an uploaded credential → (stored form, public description without the secret).
        ``InvalidRequest`` when malformed; ``IdentityError``/``ReauthRequired`` when the provider refuses it."""

    def describe(self, stored: str) -> dict[str, Any]:
        """The public description of a stored credential (never the secret)."""

    def mailbox_profile(self, stored: str, address: str, send: bool) -> Mapping[str, Any]:
        """Read the mailbox at ``address`` with the credential: ``{"id", "mail"}`` (the provider's
        account id and primary address). Proves the delegation covers the mailbox; ``IdentityError``
        when the provider's admin did not delegate the scopes, ``ReauthRequired`` for an unknown user."""
