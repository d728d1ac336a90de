"""Connecting mailboxes (spec §3): delegated sign-in, admin consent, application mode, disconnect.

Pure logic over ports: the identity platform is an ``IdentityProvider`` (MSAL in production), Graph a
``GraphReader`` built from a token source, storage the repository/store ports.

Invariants:
- An OAuth round trip is bound to the org, CRM user, return URL and kind it was started for: the
  callback trusts only the flow stored under its ``state`` (single use, 10 minutes), never its own query
  parameters for those. A state that is missing, unknown, expired, replayed or of the other kind changes
  nothing. A code obtained for another flow fails at redemption (PKCE verifier and nonce are per flow).
- Return URLs: ``start_*`` rejects a return URL that is not on the org's allow-list (``InvalidRequest``,
  HTTP 400), so a CRM misconfiguration shows up at once; the callback checks it again (the allow-list may
  have changed meanwhile) and otherwise, or without a return URL, answers with a plain result page.
- A delegated sign-in connects only the intended account of the intended CRM user: the signed-in account
  must own the ``login_hint`` address when one was given (any alias), its tenant must be on the org's
  ``allowed_tenants`` (when set), and the callback activates nothing. It parks the signed-in account and
  its token cache (encrypted, single use, 10 minutes) under a hash of a fresh connect code bound to
  (org, CRM user), and hands the code to the CRM's return URL (``connect_code``); only
  ``confirm_connect`` by the CRM, for the same org and CRM user, creates or re-activates the mailbox.
  A wrong user, org or code, a reused or expired code: ``InvalidRequest``, nothing activated. An org
  that sets ``connect_confirmation`` off gets the weaker behaviour: the callback activates at once.
- A mailbox's id is derived from (org, Graph user id): reconnecting the same person re-activates the same
  mailbox, keeping its watermark and delta cursors, so syncing resumes with no gap and no duplicate.
  A mailbox that was *disconnected* restarts from now instead (its delta state was deleted, and the
  time it was disconnected was not asked for).
- The token cache is saved before the mailbox is activated: an active mailbox always has tokens.
- Admin consent is a chain bound to the org's state at every step: an OpenID Connect sign-in of the admin
  (the redeemed id_token's ``tid`` fixes the tenant; the redirect's ``tenant`` parameter alone is never
  trusted), then the tenant-specific ``/{tid}/v2.0/adminconsent`` whose redirect must name that same
  tenant under a fresh state, then a client-credentials token for that tenant (fresh MSAL application)
  whose ``roles`` hold every application permission the org needs (``required_app_roles``). Only then,
  and only if no other org holds the tenant, is the consent recorded; a consent without the roles is
  ``consent_missing_roles`` and records nothing, so application mode stays unavailable.
- Nothing here logs tokens, codes, or caches.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from sync_core.auth.msal_tokens import IdentityProvider, TokenSource
from sync_core.auth.ports import (
    AuthFlowStore,
    OrgTenant,
    OrgTenantStore,
    PendingAuthFlow,
    TokenCacheStore,
    mailbox_owner,
    tenant_owner,
)
from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import ConnectionMode, Mailbox, MailboxStatus, OrgSettings
from sync_core.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    ConsentRequired,
    IdentityError,
    InvalidRequest,
    MailboxAccessDenied,
    MailboxNotFound,
    MessageNotFound,
    ReauthRequired,
    SyncError,
    TransientGraphError,
)
from sync_core.ports import (
    ActivityStore,
    Clock,
    CursorStore,
    LeaseStore,
    MailboxRepository,
    SettingsRepository,
)
from sync_core.use_cases.mailbox_updates import update_mailbox
from sync_core.use_cases.sync_mailbox import WRITE_GRACE, sync_lease_key

log = logging.getLogger(__name__)

CALLBACK_PATH = "/api/auth/callback"
ADMIN_CONSENT_CALLBACK_PATH = "/api/auth/admin-consent/callback"
PROFILE_FIELDS = "id,mail,userPrincipalName,proxyAddresses,displayName"
SIGNED_OUT_REASON = "signed out by admin"
_TENANT_HINT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_USER_ID = 256
MAX_RETURN_URL = 2048
DISCONNECT_LEASE = timedelta(minutes=10)  # how long a disconnect holds a mailbox's sync lease at most
MAX_CONNECT_CODE = 128
_DECLINED = {"access_denied", "consent_required", "interaction_required"}


# -- errors the HTTP API maps to statuses -----------------------------------------------------------------


# -- ports of this use case ----------------------------------------------------------------------------


class GraphReader(Protocol):
    """What the connect flows read from Graph (``GraphHttp`` satisfies it)."""

    def get(self, url: str, params: Mapping[str, str] | None = None, prefer: Sequence[str] = ()) -> Any: ...


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
    graph_for: Callable[[TokenSource], GraphReader]
    public_base_url: str
    new_state: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    # Called by ``disconnect`` while the mailbox's tokens still exist (deletes its Graph subscriptions).
    before_disconnect: Callable[[str, str], object] = lambda _org, _mailbox: None
    # How ``disconnect`` waits out the last write of a sync it fenced out.
    sleep: Callable[[float], None] = time.sleep

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

    @property
    def activated(self) -> bool:
        """A mailbox became active through this callback (no confirmation pending)."""
        return self.ok and self.kind == "connect" and not self.connect_code


@dataclass(frozen=True)
class DisconnectResult:
    mailbox: Mailbox
    activities_purged: int = 0


# -- pure helpers --------------------------------------------------------------------------------------


def mailbox_id_for(org_id: str, graph_user_id: str) -> str:
    """Stable mailbox id: the same Graph user in the same org always maps to the same mailbox."""
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


def _origin_and_path(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port] with default ports dropped, decoded path) of an absolute http(s) URL, or
    None when the URL is not one we would ever redirect to."""
    if not url or len(url) > MAX_RETURN_URL or any(ord(c) < 0x21 or c == "\\" for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if port and port != {"https": 443, "http": 80}[scheme]:
        host = f"{host}:{port}"
    path = unquote(parts.path) or "/"
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return scheme, host, path


def return_url_allowed(url: str, allow_list: Sequence[str]) -> bool:
    """True when ``url`` has exactly the scheme and host (and port) of an allow-list entry and its path
    starts with the entry's path at a segment boundary (``/crm`` allows ``/crm`` and ``/crm/x``, not
    ``/crmx``). Dot segments, credentials, backslashes and control characters are never allowed."""
    candidate = _origin_and_path(url)
    if candidate is None:
        return False
    for entry in allow_list:
        allowed = _origin_and_path(entry.strip())
        if allowed is None or allowed[:2] != candidate[:2]:
            continue
        prefix, path = allowed[2], candidate[2]
        if path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
            return True
    return False


def with_params(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to its query (existing parameters of the same name replaced)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def connect_code_key(org_id: str, user_id: str, code: str) -> str:
    """Where a signed-in account waits for confirmation: a hash of the code bound to (org, CRM user), so
    storage never holds the code, and a confirmation for another org or user finds nothing (and burns
    nothing)."""
    digest = hashlib.sha256(f"connect-code\n{org_id}\n{user_id}\n{code}".encode()).hexdigest()
    return "cc_" + digest


def tenant_allowed(allowed_tenants: Sequence[str], tenant_id: str, user_principal_name: str) -> bool:
    """True when ``allowed_tenants`` is empty, names the tenant id, or names the domain of the account's
    user principal name (a UPN's domain is always a verified domain of the account's own tenant)."""
    if not allowed_tenants:
        return True
    upn = normalize_address(user_principal_name) if user_principal_name else None
    domain = upn.rpartition("@")[2] if upn else None
    return any(entry.lower() in (tenant_id.lower(), domain) for entry in allowed_tenants)


# Application permissions an admin consent must grant, i.e. app-only token ``roles`` (case-insensitive),
# with the permissions that include each one. Mail.Send joins here once an org setting enables sending.
_ROLE_INCLUDED_BY: Mapping[str, tuple[str, ...]] = {"Mail.Read": ("Mail.Read", "Mail.ReadWrite")}


def required_app_roles(settings: OrgSettings) -> tuple[str, ...]:
    """The application permissions application mode needs for an org (its settings may add some)."""
    return ("Mail.Read",)


def missing_app_roles(granted: Sequence[str], required: Sequence[str]) -> tuple[str, ...]:
    """The ``required`` roles that ``granted`` (a token's ``roles``) neither holds nor includes."""
    have = {role.lower() for role in granted}
    return tuple(
        role for role in required if not any(r.lower() in have for r in _ROLE_INCLUDED_BY.get(role, (role,)))
    )


def _validate_return_url(return_url: str | None, settings: OrgSettings) -> str:
    if not return_url:
        return ""
    if not return_url_allowed(return_url, settings.return_url_allow_list):
        raise InvalidRequest(
            "return_url_not_allowed", "return_url is not on the organisation's return-URL allow-list"
        )
    return return_url


# -- delegated connect ---------------------------------------------------------------------------------


def start_connect(
    deps: ConnectDeps, org_id: str, user_id: str, login_hint: str | None = None, return_url: str | None = None
) -> str:
    """Start the delegated sign-in of a CRM user; returns the URL to send the browser to.

    With ``connect_confirmation`` on (the default) a ``return_url`` is required: the connect code the
    CRM confirms with is delivered there. A ``login_hint`` must be an address; only an account owning
    it can then be connected."""
    if not user_id or len(user_id) > MAX_USER_ID:
        raise InvalidRequest("invalid_user_id", f"user_id must be 1-{MAX_USER_ID} characters")
    settings = deps.settings.get(org_id)
    allowed_return = _validate_return_url(return_url, settings)
    if settings.connect_confirmation and not allowed_return:
        raise InvalidRequest(
            "return_url_required",
            "return_url is required: the sign-in is handed back there with a connect code for "
            "POST .../mailboxes/connect:confirm (unless the org turns connect_confirmation off)",
        )
    hint = normalize_address(login_hint) if login_hint else None
    if login_hint and hint is None:
        raise InvalidRequest("invalid_login_hint", "login_hint must be the email address of the account to connect")
    flow = deps.identity.initiate_connect(deps.redirect_uri, login_hint.strip() if login_hint else None)
    deps.flows.save(
        PendingAuthFlow(
            state=str(flow["state"]),
            org_id=org_id,
            kind="connect",
            created_at=deps.clock.now(),
            user_id=user_id,
            return_url=allowed_return,
            flow=flow,
            login_hint=hint or "",
        )
    )
    return str(flow["auth_uri"])


def complete_connect(deps: ConnectDeps, params: Mapping[str, str]) -> ConnectResult:
    """Handle ``/api/auth/callback``: redeem the code, read the profile, check it is the intended account
    in an allowed tenant, then hand a connect code to the CRM (or, with confirmation off, create or
    re-activate the mailbox and store its token cache). Never raises for a bad or refused callback: the
    result says why."""
    pending = deps.flows.take(params.get("state") or "", deps.clock.now())
    if pending is None or pending.kind != "connect":
        return _invalid_state("connect")
    fail = _failer("connect", pending, deps)
    if params.get("error"):
        return fail(*_callback_error(params, "The sign-in was cancelled or consent was declined."))
    if not params.get("code"):
        return fail("sign_in_failed", "The sign-in response carried no authorization code.")
    try:
        grant = deps.identity.redeem_connect(pending.flow, params)
    except TransientGraphError:
        return fail("temporarily_unavailable", "Microsoft sign-in is temporarily unavailable; please try again.")
    except (IdentityError, ReauthRequired) as exc:
        return fail("sign_in_failed", f"Microsoft sign-in failed: {exc}")

    token = grant.access_token
    try:
        profile = deps.graph_for(lambda _refresh: token).get("me", {"$select": PROFILE_FIELDS})
    except SyncError as exc:
        log.warning("reading the signed-in user's profile failed: %s", type(exc).__name__)
        return fail("profile_unavailable", "The mailbox profile could not be read from Microsoft 365.")
    graph_user_id = str(profile.get("id") or "")
    if not graph_user_id or (grant.object_id and grant.object_id.lower() != graph_user_id.lower()):
        return fail("account_mismatch", "The profile read does not belong to the account that signed in.")
    address, aliases = aliases_from_profile(profile)
    if not address:
        return fail("no_mailbox", "This Microsoft 365 account has no mailbox address.")
    if pending.login_hint and pending.login_hint not in aliases:
        return fail(
            "wrong_account", "You signed in with another account than the one the CRM asked for; sign in as that one."
        )
    settings = deps.settings.get(pending.org_id)
    upn = str(profile.get("userPrincipalName") or "")
    if not tenant_allowed(settings.allowed_tenants, grant.tenant_id, upn):
        return fail("tenant_not_allowed", "Accounts of this Microsoft 365 organisation cannot be connected here.")

    mailbox_id = mailbox_id_for(pending.org_id, graph_user_id)
    fresh = Mailbox(
        org_id=pending.org_id,
        mailbox_id=mailbox_id,
        address=address,
        aliases=aliases,
        watermark=deps.clock.now(),
        mode=ConnectionMode.DELEGATED,
        tenant_id=grant.tenant_id,
        graph_user_id=graph_user_id,
        user_id=pending.user_id,
    )
    if settings.connect_confirmation:
        return _await_confirmation(deps, pending, fresh, upn=upn, serialized_cache=grant.serialized_cache, fail=fail)
    mailbox = _connect_mailbox(deps, fresh, grant.serialized_cache)
    log.info("mailbox connected (org=%s mailbox=%s)", pending.org_id, mailbox_id)
    redirect = _redirect(deps, pending, {"status": "connected", "mailbox_id": mailbox_id})
    return ConnectResult(
        ok=True,
        kind="connect",
        message=f"The mailbox {address} is connected.",
        org_id=pending.org_id,
        mailbox_id=mailbox_id,
        tenant_id=grant.tenant_id,
        address=mailbox.address,
        redirect_url=redirect,
    )


def _await_confirmation(
    deps: ConnectDeps,
    pending: PendingAuthFlow,
    fresh: Mailbox,
    *,
    upn: str,
    serialized_cache: str,
    fail: Callable[[str, str], ConnectResult],
) -> ConnectResult:
    """Park the signed-in account under a new connect code and send the code to the CRM's return URL."""
    code = deps.new_state()
    redirect = _redirect(deps, pending, {"status": "signed_in", "connect_code": code})
    if redirect is None:  # started without a return URL, or it left the allow-list meanwhile
        return fail(
            "confirmation_unavailable",
            "The sign-in cannot be handed back to the CRM for confirmation; please start again from the CRM.",
        )
    parked = {
        "address": fresh.address,
        "aliases": list(fresh.aliases),
        "tenant_id": fresh.tenant_id,
        "graph_user_id": fresh.graph_user_id,
        "upn": upn,
        "cache": serialized_cache,
    }
    deps.flows.save(
        PendingAuthFlow(
            state=connect_code_key(pending.org_id, pending.user_id, code),
            org_id=pending.org_id,
            kind="connect_confirm",
            created_at=deps.clock.now(),
            user_id=pending.user_id,
            flow=parked,
        )
    )
    log.info("mailbox sign-in awaits confirmation (org=%s mailbox=%s)", pending.org_id, fresh.mailbox_id)
    return ConnectResult(
        ok=True,
        kind="connect",
        message=f"Signed in as {fresh.address}. Return to the CRM to finish connecting the mailbox.",
        org_id=pending.org_id,
        mailbox_id=fresh.mailbox_id,
        tenant_id=fresh.tenant_id,
        address=fresh.address,
        redirect_url=redirect,
        connect_code=code,
    )


def confirm_connect(deps: ConnectDeps, org_id: str, user_id: str, code: str) -> Mailbox:
    """``POST …/mailboxes/connect:confirm``: the CRM confirms, for the CRM user who started the connect
    (checked in its own session against the returning browser), the sign-in its ``connect_code`` stands
    for. Creates or re-activates the mailbox and stores its token cache. Raises ``InvalidRequest``
    (``invalid_connect_code``) for an unknown, expired or used code, or one of another org or user, and
    ``tenant_not_allowed`` when the org's ``allowed_tenants`` changed meanwhile; nothing is activated."""
    if not user_id or len(user_id) > MAX_USER_ID:
        raise InvalidRequest("invalid_user_id", f"user_id must be 1-{MAX_USER_ID} characters")
    refused = InvalidRequest(
        "invalid_connect_code", "the connect code is unknown, expired, already used, or was issued to another user"
    )
    if not code or len(code) > MAX_CONNECT_CODE:
        raise refused
    pending = deps.flows.take(connect_code_key(org_id, user_id, code), deps.clock.now())
    if pending is None or pending.kind != "connect_confirm" or (pending.org_id, pending.user_id) != (org_id, user_id):
        raise refused
    parked = pending.flow
    tenant_id, upn = str(parked["tenant_id"]), str(parked.get("upn", ""))
    if not tenant_allowed(deps.settings.get(org_id).allowed_tenants, tenant_id, upn):
        raise InvalidRequest("tenant_not_allowed", "accounts of this Microsoft 365 organisation cannot be connected")
    graph_user_id = str(parked["graph_user_id"])
    fresh = Mailbox(
        org_id=org_id,
        mailbox_id=mailbox_id_for(org_id, graph_user_id),
        address=str(parked["address"]),
        aliases=tuple(str(a) for a in parked["aliases"]),
        watermark=pending.created_at,  # when the person signed in
        mode=ConnectionMode.DELEGATED,
        tenant_id=tenant_id,
        graph_user_id=graph_user_id,
        user_id=user_id,
    )
    mailbox = _connect_mailbox(deps, fresh, str(parked["cache"]))
    log.info("mailbox connected (org=%s mailbox=%s)", org_id, fresh.mailbox_id)
    return mailbox


def _connect_mailbox(deps: ConnectDeps, fresh: Mailbox, serialized_cache: str) -> Mailbox:
    """Store the token cache, then create or re-activate the mailbox (an active mailbox has tokens)."""
    deps.tokens.put(fresh.org_id, mailbox_owner(fresh.mailbox_id), serialized_cache, None)
    return _activate(deps, fresh)


def _activate(deps: ConnectDeps, fresh: Mailbox) -> Mailbox:
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


# -- admin consent -------------------------------------------------------------------------------------


def start_admin_consent(
    deps: ConnectDeps, org_id: str, tenant_hint: str | None = None, return_url: str | None = None
) -> str:
    """Start a tenant admin's consent: the URL of the admin's OpenID Connect sign-in at ``tenant`` (the
    chain then goes on to ``/{tid}/v2.0/adminconsent`` and ends at the admin-consent callback)."""
    tenant = (tenant_hint or "organizations").strip()
    if not _TENANT_HINT.fullmatch(tenant) or tenant.lower() in ("common", "consumers"):
        raise InvalidRequest("invalid_tenant", "tenant must be a tenant id, a verified domain or 'organizations'")
    allowed_return = _validate_return_url(return_url, deps.settings.get(org_id))
    try:
        flow = deps.identity.initiate_admin_sign_in(tenant, deps.admin_consent_redirect_uri)
    except IdentityError as exc:
        raise InvalidRequest("invalid_tenant", "the identity platform does not know this tenant") from exc
    deps.flows.save(
        PendingAuthFlow(
            state=str(flow["state"]),
            org_id=org_id,
            kind="admin_sign_in",
            created_at=deps.clock.now(),
            return_url=allowed_return,
            flow={"tenant_hint": tenant, "auth": flow},
        )
    )
    return str(flow["auth_uri"])


def complete_admin_consent(deps: ConnectDeps, params: Mapping[str, str]) -> ConnectResult:
    """Handle ``/api/auth/admin-consent/callback``, reached twice per consent: after the admin's sign-in
    (the result ``continues`` to the tenant's adminconsent page) and after the consent (proved with a
    client-credentials token carrying the needed roles, then recorded for the org)."""
    pending = deps.flows.take(params.get("state") or "", deps.clock.now())
    if pending is None or pending.kind not in ("admin_sign_in", "admin_consent"):
        return _invalid_state("admin_consent")
    fail = _failer("admin_consent", pending, deps)
    if params.get("error"):
        return fail(*_callback_error(params, "Admin consent was not granted."))
    if pending.kind == "admin_sign_in":
        return _admin_signed_in(deps, pending, params, fail)
    return _admin_consented(deps, pending, params, fail)


def _admin_signed_in(
    deps: ConnectDeps, pending: PendingAuthFlow, params: Mapping[str, str], fail: Callable[[str, str], ConnectResult]
) -> ConnectResult:
    """Step 1 done: the id_token's ``tid`` fixes the tenant; send the admin on to consent in that tenant."""
    if not params.get("code"):
        return fail("sign_in_failed", "The sign-in response carried no authorization code.")
    hint = str(pending.flow.get("tenant_hint", "organizations"))
    try:
        signed_in = deps.identity.redeem_admin_sign_in(hint, pending.flow.get("auth") or {}, params)
    except TransientGraphError:
        return fail("temporarily_unavailable", "Microsoft sign-in is temporarily unavailable; please try again.")
    except (IdentityError, ReauthRequired) as exc:
        return fail("sign_in_failed", f"Microsoft sign-in failed: {exc}")
    tenant_id = signed_in.tenant_id.strip().lower()
    if not _GUID.fullmatch(tenant_id):
        return fail("consent_failed", "The sign-in did not name a tenant.")
    if _GUID.fullmatch(hint) and hint.lower() != tenant_id:
        return fail("tenant_mismatch", "The admin signed in to another tenant than the one requested.")
    holder = deps.tenants.org_for_tenant(tenant_id)
    if holder is not None and holder != pending.org_id:
        return fail("tenant_claimed", "This Microsoft 365 tenant is already connected to another organisation.")
    state = deps.new_state()
    deps.flows.save(
        PendingAuthFlow(
            state=state,
            org_id=pending.org_id,
            kind="admin_consent",
            created_at=deps.clock.now(),
            return_url=pending.return_url,
            flow={"tenant_id": tenant_id},
        )
    )
    return ConnectResult(
        ok=True,
        kind="admin_consent",
        message="Signed in; continue to grant consent for the organisation.",
        org_id=pending.org_id,
        tenant_id=tenant_id,
        redirect_url=deps.identity.admin_consent_url(tenant_id, deps.admin_consent_redirect_uri, state),
        continues=True,
    )


def _admin_consented(
    deps: ConnectDeps, pending: PendingAuthFlow, params: Mapping[str, str], fail: Callable[[str, str], ConnectResult]
) -> ConnectResult:
    """Step 2 done: the redirect must name the tenant step 1 proved; then prove the consent's roles."""
    tenant_id = (params.get("tenant") or "").strip().lower()
    if not _GUID.fullmatch(tenant_id) or (params.get("admin_consent") or "").lower() != "true":
        return fail("consent_failed", "The consent response did not name a tenant.")
    if tenant_id != str(pending.flow.get("tenant_id", "")).lower():
        return fail("tenant_mismatch", "Consent was granted in another tenant than the one the admin signed in to.")
    holder = deps.tenants.org_for_tenant(tenant_id)
    if holder is not None and holder != pending.org_id:
        return fail("tenant_claimed", "This Microsoft 365 tenant is already connected to another organisation.")
    try:
        proof = deps.identity.prove_app_access(tenant_id)
    except (IdentityError, ReauthRequired, TransientGraphError) as exc:
        log.info("admin consent not proven yet for org=%s: %s", pending.org_id, type(exc).__name__)
        return fail(
            "consent_not_proven",
            "Consent could not be verified with Microsoft yet (it can take a few minutes to apply); try again.",
        )
    missing = missing_app_roles(proof.roles, required_app_roles(deps.settings.get(pending.org_id)))
    if missing:
        log.info("admin consent lacks application permissions for org=%s: %s", pending.org_id, ", ".join(missing))
        return fail(
            "consent_missing_roles",
            f"The consent does not grant the application permission(s) {', '.join(missing)}. An admin must "
            "grant them to the app in Microsoft Entra ID (API permissions) and consent again.",
        )
    if not deps.tenants.claim(OrgTenant(pending.org_id, tenant_id, deps.clock.now())):
        return fail("tenant_claimed", "This Microsoft 365 tenant is already connected to another organisation.")
    deps.tokens.put(pending.org_id, tenant_owner(tenant_id), proof.serialized_cache, None)
    log.info("admin consent recorded (org=%s tenant=%s)", pending.org_id, tenant_id)
    return ConnectResult(
        ok=True,
        kind="admin_consent",
        message="Admin consent is granted; mailboxes of the organisation can now be added.",
        org_id=pending.org_id,
        tenant_id=tenant_id,
        redirect_url=_redirect(deps, pending, {"status": "consented", "tenant_id": tenant_id}),
    )


# -- application mode ----------------------------------------------------------------------------------


def add_app_mailbox(deps: ConnectDeps, org_id: str, address: str) -> Mailbox:
    """Add a user or shared mailbox by address in application mode (client credentials).

    Raises ``ConsentRequired`` without a proven admin consent, ``InvalidRequest`` for an invalid or
    unknown address. A mailbox the tenant's application access policy denies is still created, in
    status ``error`` with the reason, so the CRM sees a clear error on it (and can re-add it after the
    policy changed)."""
    consent = deps.tenants.get(org_id)
    if consent is None:
        raise ConsentRequired("an admin of the organisation must grant consent before mailboxes are added")
    wanted = normalize_address(address or "")
    if wanted is None:
        raise InvalidRequest("invalid_address", "address is not a valid email address")
    graph = deps.graph_for(deps.identity.app_token_source(org_id, consent.tenant_id))
    try:
        user = graph.get(f"users/{quote(wanted, safe='@')}", {"$select": PROFILE_FIELDS})
    except MessageNotFound as exc:
        raise InvalidRequest("address_not_found", f"no mailbox {wanted} in the organisation's tenant") from exc
    except (ReauthRequired, MailboxAccessDenied) as exc:
        # No app token (consent revoked) or no permission to read users: an admin must consent again.
        raise ConsentRequired(f"the organisation's admin consent does not allow this: {exc}") from exc
    graph_user_id = str(user.get("id") or "")
    primary, aliases = aliases_from_profile(user)
    if not graph_user_id or not primary:
        raise InvalidRequest("address_not_found", f"{wanted} has no mailbox in the organisation's tenant")
    status, reason = MailboxStatus.ACTIVE, ""
    try:
        graph.get(f"users/{quote(graph_user_id, safe='')}/mailFolders('inbox')", {"$select": "id"})
    except MailboxAccessDenied:
        status = MailboxStatus.ERROR
        reason = "access denied: the organisation's application access policy does not include this mailbox"
    fresh = Mailbox(
        org_id=org_id,
        mailbox_id=mailbox_id_for(org_id, graph_user_id),
        address=primary,
        aliases=aliases,
        watermark=deps.clock.now(),
        mode=ConnectionMode.APPLICATION,
        tenant_id=consent.tenant_id,
        graph_user_id=graph_user_id,
        status=status,
        status_reason=reason,
    )
    return _activate(deps, fresh)


# -- disconnect and sign-out ---------------------------------------------------------------------------


def disconnect(deps: ConnectDeps, org_id: str, mailbox_id: str, purge: bool = False) -> DisconnectResult:
    """Delete the mailbox's Graph subscriptions (``before_disconnect``, best effort), tokens and delta state
    and mark it ``disconnected``; with ``purge`` also remove it from its activities (activities no other
    mailbox saw are deleted). Idempotent.

    Fenced against a sync run in flight: the mailbox's sync lease is taken over first (the run's next
    renewal fails and it stops without writing) and, if a run held it, nothing is deleted before
    ``WRITE_GRACE`` has passed, so a write the run began under its last renewal has landed. Nothing of
    the mailbox (activity, cursor, report, status) is written after this returns, provided a write ends
    within ``WRITE_GRACE`` of the renewal before it (see ``sync_mailbox``)."""
    current = deps.mailboxes.get(org_id, mailbox_id)
    if current is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    try:
        deps.before_disconnect(org_id, mailbox_id)
    except Exception as exc:  # best effort: the subscriptions expire on their own, and their notifications are
        log.warning("disconnect: removing the subscriptions failed: %s", type(exc).__name__)  # then unknown
    fence, key, now = f"disconnect-{uuid.uuid4().hex}", sync_lease_key(org_id, mailbox_id), deps.clock.now()
    if deps.leases.take_over(key, fence, now + DISCONNECT_LEASE, now):
        # A run (or backfill) held the lease: its next renewal fails, so it writes nothing more; a write
        # it began under its last renewal lands within WRITE_GRACE, before anything is deleted below.
        log.info("disconnect: a sync of mailbox %s was running; waiting for its last write", mailbox_id)
        deps.sleep(WRITE_GRACE.total_seconds())
    try:
        deps.tokens.delete(org_id, mailbox_owner(mailbox_id))
        deps.cursors.clear(org_id, mailbox_id)
        mailbox = _update(deps, org_id, mailbox_id, Mailbox.disconnected)
        purged = deps.activities.delete_for_mailbox(org_id, mailbox_id) if purge else 0
    finally:
        deps.leases.release(key, fence)  # a run taking it from now on reads the mailbox disconnected
    return DisconnectResult(mailbox, purged)


def sign_out_all(deps: ConnectDeps, org_id: str) -> int:
    """Delete every stored token of the org (delegated and application) and put every mailbox that is
    not disconnected in ``needs_reauth`` ("signed out by admin"). Users reconnect; application-mode
    mailboxes resume when added again. Returns how many mailboxes were signed out."""
    deps.tokens.delete_org(org_id)
    changed = 0
    for mailbox in deps.mailboxes.list(org_id):
        if mailbox.status is MailboxStatus.DISCONNECTED:
            continue
        if deps.mailboxes.get(org_id, mailbox.mailbox_id) is not None:
            _update(deps, org_id, mailbox.mailbox_id, lambda m: m.signed_out(SIGNED_OUT_REASON))
            changed += 1
    return changed


def _update(deps: ConnectDeps, org_id: str, mailbox_id: str, change: Callable[[Mailbox], Mailbox]) -> Mailbox:
    """Compare-and-set a status transition; ``MailboxNotFound`` when the mailbox went meanwhile."""
    updated = update_mailbox(deps.mailboxes, org_id, mailbox_id, change)
    if updated is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    return updated.value


# -- callback results ----------------------------------------------------------------------------------


def _invalid_state(kind: Literal["connect", "admin_consent"]) -> ConnectResult:
    return ConnectResult(
        ok=False,
        kind=kind,
        error="invalid_state",
        message="This sign-in link is invalid, expired or was already used. Please start again from the CRM.",
    )


def _callback_error(params: Mapping[str, str], declined: str) -> tuple[str, str]:
    error = params.get("error", "")
    description = params.get("error_description", "")
    aadsts = re.search(r"AADSTS(\d+)", description)
    code = f" (AADSTS{aadsts.group(1)})" if aadsts else ""
    if error in _DECLINED or (aadsts and aadsts.group(1) == "65004"):
        return "consent_declined", f"{declined}{code}"
    return "sign_in_failed", f"Microsoft sign-in returned an error: {error[:64]}{code}"


def _failer(
    kind: Literal["connect", "admin_consent"], pending: PendingAuthFlow, deps: ConnectDeps
) -> Callable[[str, str], ConnectResult]:
    def fail(error: str, message: str) -> ConnectResult:
        return ConnectResult(
            ok=False,
            kind=kind,
            message=message,
            error=error,
            org_id=pending.org_id,
            redirect_url=_redirect(deps, pending, {"status": "error", "error": error}),
        )

    return fail


def _redirect(deps: ConnectDeps, pending: PendingAuthFlow, params: Mapping[str, str]) -> str | None:
    if not pending.return_url:
        return None
    if not return_url_allowed(pending.return_url, deps.settings.get(pending.org_id).return_url_allow_list):
        return None
    return with_params(pending.return_url, params)


__all__ = [
    "ConnectDeps",
    "ConnectResult",
    "ConsentRequired",
    "DisconnectResult",
    "GraphReader",
    "InvalidRequest",
    "MailboxNotFound",
    "add_app_mailbox",
    "aliases_from_profile",
    "complete_admin_consent",
    "complete_connect",
    "confirm_connect",
    "connect_code_key",
    "disconnect",
    "mailbox_id_for",
    "missing_app_roles",
    "required_app_roles",
    "return_url_allowed",
    "sign_out_all",
    "start_admin_consent",
    "start_connect",
    "tenant_allowed",
    "with_params",
]

