"""A CRM user's delegated sign-in (spec §3): start it, answer its callback, and the CRM's confirmation.

Invariants:
- A code obtained for another flow fails at redemption (PKCE verifier and nonce are per flow); the
  callback trusts only the flow stored under its ``state`` (see ``results``).
- A delegated sign-in connects only the intended account of the intended CRM user: the signed-in account
  must own the ``login_hint`` address when one was given (any alias), its tenant must be on the org's
  ``allowed_tenants`` (when set), and the callback activates nothing. It parks the signed-in account and
  its token cache (encrypted, single use, 10 minutes) under a hash of a fresh connect code bound to
  (org, CRM user), and hands the code to the CRM's return URL (``connect_code``); only
  ``confirm_connect`` by the CRM, for the same org and CRM user, creates or re-activates the mailbox.
  A wrong user, org or code, a reused or expired code: ``InvalidRequest``, nothing activated. An org
  that sets ``connect_confirmation`` off gets the weaker behaviour: the callback activates at once.
- The token cache is saved before the mailbox is activated: an active mailbox always has tokens.
- A callback that completed (connected, or handed a connect code to the CRM) leaves a ``connect_done``
  trace under its ``state`` for ``FLOW_LIFETIME``: reloading the page then says the sign-in was already
  completed, and nothing more: no address, mailbox id, code or redirect (the state is in the URL, so the
  page must tell whoever holds the URL nothing the first answer did not). Nothing is done again.
- Nothing here logs tokens, codes, or caches.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence

from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import ConnectionMode, Mailbox
from sync_core.errors import (
    AlreadyExists,
    IdentityError,
    InvalidRequest,
    ReauthRequired,
    StorageUnavailable,
    SyncError,
    TransientFailure,
)
from sync_core.ports.identity import (
    PendingAuthFlow,
    mailbox_owner,
)
from sync_core.use_cases.connect.common import (
    MAX_USER_ID,
    MICROSOFT,
    ConnectDeps,
    ConnectResult,
    activate,
    aliases_from_profile,
    mailbox_id_for,
)
from sync_core.use_cases.connect.results import callback_error, failer, invalid_state, redirect_url_for
from sync_core.use_cases.connect.return_urls import validate_return_url

log = logging.getLogger(__name__)

MAX_CONNECT_CODE = 128


# -- pure helpers --------------------------------------------------------------------------------------


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


# -- delegated connect ---------------------------------------------------------------------------------


def start_connect(  # noqa: PLR0917
    deps: ConnectDeps,
    org_id: str,
    user_id: str,
    login_hint: str | None = None,
    return_url: str | None = None,
    provider: str = MICROSOFT,
) -> str:
    """Start the delegated sign-in of a CRM user at ``provider`` (``microsoft`` or any provider in
    ``deps.providers``); returns the URL to send the browser to. The provider's permission to send is
    asked for when the org enables sending (``sending_enabled``).

    With ``connect_confirmation`` on (the default) a ``return_url`` is required: the connect code the
    CRM confirms with is delivered there. A ``login_hint`` must be an address; only an account owning
    it can then be connected."""
    if not user_id or len(user_id) > MAX_USER_ID:
        raise InvalidRequest("invalid_user_id", f"user_id must be 1-{MAX_USER_ID} characters")
    connector = deps.provider(provider)
    settings = deps.settings.get(org_id)
    allowed_return = validate_return_url(return_url, settings)
    if settings.connect_confirmation and not allowed_return:
        raise InvalidRequest(
            "return_url_required",
            "return_url is required: the sign-in is handed back there with a connect code for "
            "POST .../mailboxes/connect:confirm (unless the org turns connect_confirmation off)",
        )
    hint = normalize_address(login_hint) if login_hint else None
    if login_hint and hint is None:
        raise InvalidRequest("invalid_login_hint", "login_hint must be the email address of the account to connect")
    send = bool(getattr(settings, "sending_enabled", False))
    flow = connector.identity.initiate_connect(deps.redirect_uri, login_hint.strip() if login_hint else None, send=send)
    if provider != MICROSOFT:
        flow = {**flow, "provider": provider}  # the callback redeems with the same provider
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
    if pending is not None and pending.kind == "connect_done":
        _leave_done_trace(deps, pending)  # taken to read it: put back, so a further reload says the same
        return ALREADY_COMPLETED
    if pending is None or pending.kind != "connect":
        return invalid_state("connect")
    result = _complete(deps, pending, params)
    if result.ok:
        now = deps.clock.now()
        _leave_done_trace(deps, PendingAuthFlow(pending.state, pending.org_id, "connect_done", now))
    return result


ALREADY_COMPLETED = ConnectResult(
    ok=True,
    kind="connect",
    message="This sign-in was already completed. Return to the CRM to see the mailbox.",
    already_completed=True,
)


def _leave_done_trace(deps: ConnectDeps, done: PendingAuthFlow) -> None:
    """Best effort: without the trace a reload only says "invalid or already used"."""
    try:
        deps.flows.save(done)
    except (AlreadyExists, StorageUnavailable):
        log.info("could not leave the trace of a completed connect; a reload will say the link was used")


def _complete(deps: ConnectDeps, pending: PendingAuthFlow, params: Mapping[str, str]) -> ConnectResult:
    fail = failer("connect", pending, deps)
    provider = str(pending.flow.get("provider") or MICROSOFT)
    connector = deps.provider(provider)
    label = connector.label
    if params.get("error"):
        return fail(*callback_error(params, "The sign-in was cancelled or consent was declined."))
    if not params.get("code"):
        return fail("sign_in_failed", "The sign-in response carried no authorization code.")
    try:
        grant = connector.identity.redeem_connect(pending.flow, params)
    except TransientFailure:
        return fail("temporarily_unavailable", f"{label} sign-in is temporarily unavailable; please try again.")
    except (IdentityError, ReauthRequired) as exc:
        return fail("sign_in_failed", f"{label} sign-in failed: {exc}")

    token = grant.access_token
    try:
        profile = connector.directory_for(lambda _refresh: token).me()
    except SyncError as exc:
        log.warning("reading the signed-in user's profile failed: %s", type(exc).__name__)
        return fail("profile_unavailable", f"The mailbox profile could not be read from {connector.account_label}.")
    graph_user_id = str(profile.get("id") or "")
    if not graph_user_id or (grant.object_id and grant.object_id.lower() != graph_user_id.lower()):
        return fail("account_mismatch", "The profile read does not belong to the account that signed in.")
    address, aliases = aliases_from_profile(profile)
    if not address:
        return fail("no_mailbox", f"This {connector.account_label} account has no mailbox address.")
    if pending.login_hint and pending.login_hint not in aliases:
        return fail(
            "wrong_account", "You signed in with another account than the one the CRM asked for; sign in as that one."
        )
    settings = deps.settings.get(pending.org_id)
    upn = str(profile.get("userPrincipalName") or "")
    if not tenant_allowed(settings.allowed_tenants, grant.tenant_id, upn):
        return fail(
            "tenant_not_allowed", f"Accounts of this {connector.account_label} organisation cannot be connected here."
        )

    mailbox_id = mailbox_id_for(pending.org_id, graph_user_id, provider)
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
        provider=provider,
    )
    if settings.connect_confirmation:
        return _await_confirmation(deps, pending, fresh, upn=upn, serialized_cache=grant.serialized_cache, fail=fail)
    mailbox = _connect_mailbox(deps, fresh, grant.serialized_cache)
    log.info("mailbox connected (org=%s mailbox=%s)", pending.org_id, mailbox_id)
    redirect = redirect_url_for(deps, pending, {"status": "connected", "mailbox_id": mailbox_id})
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
    redirect = redirect_url_for(deps, pending, {"status": "signed_in", "connect_code": code})
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
        "provider": fresh.provider,
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
    provider = str(parked.get("provider") or MICROSOFT)
    fresh = Mailbox(
        org_id=org_id,
        mailbox_id=mailbox_id_for(org_id, graph_user_id, provider),
        address=str(parked["address"]),
        aliases=tuple(str(a) for a in parked["aliases"]),
        watermark=pending.created_at,  # when the person signed in
        mode=ConnectionMode.DELEGATED,
        tenant_id=tenant_id,
        graph_user_id=graph_user_id,
        user_id=user_id,
        provider=provider,
    )
    mailbox = _connect_mailbox(deps, fresh, str(parked["cache"]))
    log.info("mailbox connected (org=%s mailbox=%s)", org_id, fresh.mailbox_id)
    return mailbox


def _connect_mailbox(deps: ConnectDeps, fresh: Mailbox, serialized_cache: str) -> Mailbox:
    """Store the token cache, then create or re-activate the mailbox (an active mailbox has tokens)."""
    deps.tokens.put(fresh.org_id, mailbox_owner(fresh.mailbox_id), serialized_cache, None)
    return activate(deps, fresh)
