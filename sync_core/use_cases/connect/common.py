"""What the connect jobs share: their dependencies, results, the mailbox id and addresses of a profile, and
the one way a signed-in or added account becomes an active mailbox.

Invariants:
- A mailbox's id is derived from (org, Graph user id): reconnecting the same person re-activates the same
  mailbox, keeping its watermark and delta cursors, so syncing resumes with no gap and no duplicate.
  A mailbox that was *disconnected* restarts from now instead (its delta state was deleted, and the
  time it was disconnected was not asked for).
- Pure logic over ports: the identity platform is an ``IdentityProvider`` (MSAL in production), the
  directory a ``Directory`` built from a token source, storage the repository/store ports.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import ConnectionMode, Mailbox, MailboxStatus
from sync_core.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    InvalidRequest,
)
from sync_core.ports import (
    ActivityStore,
    Clock,
    CursorStore,
    LeaseStore,
    MailboxRepository,
    SettingsRepository,
)
from sync_core.ports.identity import (
    AuthFlowStore,
    Directory,
    IdentityProvider,
    OrgAccess,
    OrgTenantStore,
    TokenCacheStore,
    TokenSource,
    mailbox_owner,
)
from sync_core.ports.servers import ServerProbe

CALLBACK_PATH = "/api/auth/callback"


ADMIN_CONSENT_CALLBACK_PATH = "/api/auth/admin-consent/callback"


MAX_USER_ID = 256


@dataclass(frozen=True)
class ConnectProvider:
    """What a delegated connect needs of one provider: its identity platform, the directory behind a
    token, and the names its pages use (``label`` for the sign-in, ``account_label`` for the account)."""

    identity: IdentityProvider
    directory_for: Callable[[TokenSource], Directory]
    label: str
    account_label: str
    # Org-wide access from an uploaded credential (Google Workspace service account), when the provider
    # has one: mailboxes are then added by address (``connect.org_access``).
    org_access: OrgAccess | None = None


MICROSOFT = "microsoft"


@dataclass
class ConnectDeps:
    identity: IdentityProvider
    flows: AuthFlowStore
    tokens: TokenCacheStore
    tenants: OrgTenantStore
    mailboxes: MailboxRepository
    settings: SettingsRepository
    cursors: CursorStore
    activities: ActivityStore
    leases: LeaseStore  # the sync leases: ``disconnect`` takes a mailbox's over
    clock: Clock
    directory_for: Callable[[TokenSource], Directory]
    public_base_url: str
    new_state: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    # Called by ``disconnect`` while the mailbox's tokens still exist (deletes its Graph subscriptions).
    before_disconnect: Callable[[str, str], object] = lambda _org, _mailbox: None
    # How ``disconnect`` waits out the last write of a sync it fenced out.
    sleep: Callable[[float], None] = time.sleep
    # Checks a mail server login before it is stored (``server_mode``); None: no such provider here.
    server_probe: ServerProbe | None = None
    # Every other provider a CRM user may connect by delegated sign-in, by ``Mailbox.provider`` name;
    # Microsoft's is ``identity`` and ``directory_for``. The flow, its state, confirmation and return-URL
    # rules are the same for all.
    providers: Mapping[str, ConnectProvider] = field(default_factory=dict)

    def provider(self, name: str) -> ConnectProvider:
        """The connect parts of provider ``name``; ``InvalidRequest`` (``invalid_provider``) if unknown."""
        if name == MICROSOFT:
            return ConnectProvider(self.identity, self.directory_for, "Microsoft", "Microsoft 365")
        found = self.providers.get(name)
        if found is None:
            known = ", ".join(sorted({MICROSOFT, *self.providers}))
            raise InvalidRequest("invalid_provider", f"provider must be one of: {known}")
        return found

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_base_url.rstrip('/')}{CALLBACK_PATH}"

    @property
    def admin_consent_redirect_uri(self) -> str:
        return f"{self.public_base_url.rstrip('/')}{ADMIN_CONSENT_CALLBACK_PATH}"


@dataclass(frozen=True)
class ConnectResult:
    """Outcome of an OAuth callback. ``redirect_url`` (the CRM's return URL with ``status`` and either
    ``connect_code``/``mailbox_id``/``tenant_id`` or ``error`` added) is set when the flow had an allowed
    return URL; otherwise the API renders a plain page from ``message``. With ``continues`` the flow goes
    on at Microsoft: ``redirect_url`` is the next step (admin consent after the admin's sign-in).
    A successful connect with a ``connect_code`` activated nothing yet (the CRM confirms it).
    ``error`` codes: ``invalid_state``, ``consent_declined``, ``sign_in_failed``,
    ``temporarily_unavailable``, ``profile_unavailable``, ``no_mailbox``, ``account_mismatch``,
    ``wrong_account``, ``tenant_not_allowed``, ``confirmation_unavailable``, ``consent_failed``,
    ``consent_not_proven``, ``consent_missing_roles``, ``tenant_mismatch``, ``tenant_claimed``."""

    ok: bool
    kind: Literal["connect", "admin_consent"]
    message: str
    error: str = ""
    org_id: str = ""
    mailbox_id: str = ""
    tenant_id: str = ""
    address: str = ""
    redirect_url: str | None = None
    connect_code: str = field(default="", repr=False)
    continues: bool = False
    already_completed: bool = False  # a reload of a callback whose sign-in completed: nothing happened now

    @property
    def activated(self) -> bool:
        """A mailbox became active through this callback (no confirmation pending)."""
        return self.ok and self.kind == "connect" and not self.connect_code and not self.already_completed


@dataclass(frozen=True)
class DisconnectResult:
    mailbox: Mailbox
    activities_purged: int = 0


def mailbox_id_for(org_id: str, graph_user_id: str, provider: str = MICROSOFT) -> str:
    """Stable mailbox id: the same Graph user in the same org always maps to the same mailbox; another
    provider's user id (Google's ``sub``) is keyed with the provider's name, so ids never collide."""
    if provider != MICROSOFT:
        graph_user_id = f"{provider}:{graph_user_id}"
    digest = hashlib.sha256(f"{org_id}\n{graph_user_id.strip().lower()}".encode()).hexdigest()
    return "mbx_" + digest[:28]


def aliases_from_profile(profile: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(primary address, every address of the mailbox): ``mail`` (else the UPN) first, then the SMTP
    proxy addresses (``SMTP:``/``smtp:`` stripped) and the UPN, normalised and de-duplicated."""
    found: list[str] = []
    candidates = [profile.get("mail"), profile.get("userPrincipalName")]
    for proxy in profile.get("proxyAddresses") or ():
        prefix, sep, proxied = str(proxy).partition(":")
        if sep and prefix.lower() == "smtp":
            candidates.append(proxied)
    for raw in candidates:
        normalised = normalize_address(str(raw)) if raw else None
        if normalised and normalised not in found:
            found.append(normalised)
    return (found[0] if found else ""), tuple(found)


def activate(deps: ConnectDeps, fresh: Mailbox) -> Mailbox:
    """Create the mailbox, or re-activate the existing one with the same id: profile, mode and tenant
    are refreshed; watermark and delta cursors are kept (unless it was disconnected)."""
    for _ in range(5):
        current = deps.mailboxes.get(fresh.org_id, fresh.mailbox_id)
        if current is None:
            try:
                return deps.mailboxes.add(fresh).value
            except AlreadyExists:
                continue
        updated = _reactivated(current.value, fresh)
        if updated.mode is not current.value.mode and updated.mode is ConnectionMode.APPLICATION:
            deps.tokens.delete(fresh.org_id, mailbox_owner(fresh.mailbox_id))  # the delegated grant is unused now
        try:
            return deps.mailboxes.replace(updated, current.etag).value
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(f"mailbox {fresh.mailbox_id} kept changing while being connected")


def _reactivated(existing: Mailbox, fresh: Mailbox) -> Mailbox:
    """A paused mailbox stays paused (pausing is a separate decision than re-authenticating); the
    ``enabled`` switch and the directions are the CRM's and are kept as they are."""
    was_disconnected = existing.status is MailboxStatus.DISCONNECTED
    keep_paused = existing.status is MailboxStatus.PAUSED and fresh.status is MailboxStatus.ACTIVE
    return replace(
        existing,
        address=fresh.address,
        aliases=fresh.aliases,
        mode=fresh.mode,
        tenant_id=fresh.tenant_id,
        graph_user_id=fresh.graph_user_id,
        user_id=fresh.user_id or existing.user_id,
        status=existing.status if keep_paused else fresh.status,
        status_reason=existing.status_reason if keep_paused else fresh.status_reason,
        watermark=fresh.watermark if was_disconnected else existing.watermark,
    )
