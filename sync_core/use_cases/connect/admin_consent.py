"""Tenant admin consent, the precondition of application mode.

Invariants:
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

import logging
import re
from collections.abc import Callable, Mapping, Sequence

from sync_core.domain.model import OrgSettings
from sync_core.errors import (
    IdentityError,
    InvalidRequest,
    ReauthRequired,
    TransientGraphError,
)
from sync_core.ports.identity import (
    OrgTenant,
    PendingAuthFlow,
    tenant_owner,
)
from sync_core.use_cases.connect.common import ConnectDeps, ConnectResult
from sync_core.use_cases.connect.results import callback_error, failer, invalid_state, redirect_url_for
from sync_core.use_cases.connect.return_urls import validate_return_url

log = logging.getLogger(__name__)

_TENANT_HINT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# Application permissions an admin consent must grant, i.e. app-only token ``roles`` (case-insensitive),
# with the permissions that include each one.
_ROLE_INCLUDED_BY: Mapping[str, tuple[str, ...]] = {
    "Mail.Read": ("Mail.Read", "Mail.ReadWrite"),
    "Mail.ReadWrite": ("Mail.ReadWrite",),
    "Mail.Send": ("Mail.Send",),
}
SENDING_APP_ROLES = ("Mail.ReadWrite", "Mail.Send")
"""What sending adds (docs/sending.md): the draft, its attachments and createReply need Mail.ReadWrite;
sending the draft needs Mail.Send."""


def required_app_roles(settings: OrgSettings) -> tuple[str, ...]:
    """The application permissions application mode needs for an org: Mail.Read, plus Mail.ReadWrite
    and Mail.Send when the org sends mail (``sending_enabled``)."""
    return ("Mail.Read", *SENDING_APP_ROLES) if settings.sending_enabled else ("Mail.Read",)


def missing_app_roles(granted: Sequence[str], required: Sequence[str]) -> tuple[str, ...]:
    """The ``required`` roles that ``granted`` (a token's ``roles``) neither holds nor includes."""
    have = {role.lower() for role in granted}
    return tuple(
        role for role in required if not any(r.lower() in have for r in _ROLE_INCLUDED_BY.get(role, (role,)))
    )


def start_admin_consent(
    deps: ConnectDeps, org_id: str, tenant_hint: str | None = None, return_url: str | None = None
) -> str:
    """Start a tenant admin's consent: the URL of the admin's OpenID Connect sign-in at ``tenant`` (the
    chain then goes on to ``/{tid}/v2.0/adminconsent`` and ends at the admin-consent callback)."""
    tenant = (tenant_hint or "organizations").strip()
    if not _TENANT_HINT.fullmatch(tenant) or tenant.lower() in ("common", "consumers"):
        raise InvalidRequest("invalid_tenant", "tenant must be a tenant id, a verified domain or 'organizations'")
    allowed_return = validate_return_url(return_url, deps.settings.get(org_id))
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
        return invalid_state("admin_consent")
    fail = failer("admin_consent", pending, deps)
    if params.get("error"):
        return fail(*callback_error(params, "Admin consent was not granted."))
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
        redirect_url=redirect_url_for(deps, pending, {"status": "consented", "tenant_id": tenant_id}),
    )
