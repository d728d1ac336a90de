"""Storage ports of the connection/auth layer (spec §3).

Adapters: ``sync_core.auth.token_cache_store`` (Azure Table Storage and in-memory doubles, kept honest by
tests/contract/test_token_cache_store.py).

Invariants shared by every adapter:
- Secrets (MSAL token caches, auth-code flows with their PKCE verifier) are stored only as AES-GCM
  ciphertext bound to their owner; the ports hand out plaintext, the tables never hold it.
- Every method is scoped by ``org_id`` except ``AuthFlowStore.take``: an OAuth callback only knows the
  ``state``, and the flow stored under it says which org it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sync_core.ports import Versioned

FLOW_LIFETIME = timedelta(minutes=10)

# ``connect``: a user's sign-in, waiting for its callback; ``connect_confirm``: a completed sign-in waiting
# for the CRM's confirmation (stored under a hash of the connect code, never the code itself);
# ``admin_sign_in`` then ``admin_consent``: the two steps of a tenant admin's consent.
FlowKind = Literal["connect", "connect_confirm", "admin_sign_in", "admin_consent"]


def mailbox_owner(mailbox_id: str) -> str:
    """Owner key of a delegated mailbox's token cache."""
    return f"mailbox:{mailbox_id}"


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
    tenant hint and MSAL's flow; for ``admin_consent`` the tenant id the admin's sign-in proved."""

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
