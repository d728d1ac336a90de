"""Org-wide access of a provider other than Microsoft (Google Workspace: a service account with
domain-wide delegation): the org's admin uploads the credential once, then mailboxes are added by
address, as Microsoft's application mode adds them after an admin consent.

Invariants:
- The credential is validated by the provider (``OrgAccess.validate``) before anything is stored, and
  stored only encrypted, in the ``TokenCacheStore`` under ``org_access_owner(provider)``; it is never
  returned (``describe`` is its public view) and never logged.
- A mailbox is added only after the provider read it with the credential (``mailbox_profile``): the
  delegation is proven for that address, or the add is refused with the provider's reason and nothing
  is stored. Its mode is ``application``; an existing mailbox of the same provider and address in the
  org (a delegated connect of the same person) is switched to org-wide access rather than duplicated
  (``activate`` deletes its delegated grant and keeps its cursors).
- Removing the credential puts every mailbox of the org that used it (``application`` mode of that
  provider, not disconnected) in ``needs_reauth`` with ``ORG_ACCESS_REMOVED``; uploading one again
  re-activates exactly those mailboxes (the ones held for that reason), cursors kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import ConnectionMode, Mailbox, MailboxStatus
from sync_core.errors import (
    GrantFailure,
    IdentityError,
    InvalidRequest,
    MailboxAccessDenied,
    OrgAccessRequired,
    ProviderRefused,
)
from sync_core.ports.identity import OrgAccess, org_access_owner
from sync_core.use_cases.connect.common import ConnectDeps, activate, mailbox_id_for
from sync_core.use_cases.mailbox_updates import update_mailbox

log = logging.getLogger(__name__)

ORG_ACCESS_REMOVED = "the organisation's service account was removed; upload it again to resume"


def _access(deps: ConnectDeps, provider: str) -> OrgAccess:
    access = deps.provider(provider).org_access
    if access is None:
        raise InvalidRequest("invalid_provider", f"{provider} mailboxes have no org-wide access")
    return access


def install_org_access(
    deps: ConnectDeps, org_id: str, provider: str, credential: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Validate and store (replacing any earlier one) the org's credential; re-activate the mailboxes
    its removal held. Returns (public description, ids of the mailboxes re-activated)."""
    access = _access(deps, provider)
    try:
        stored, description = access.validate(credential)
    except (IdentityError, GrantFailure) as exc:
        raise OrgAccessRequired(f"Google refused the service account: {exc}", "service_account_refused") from exc
    deps.tokens.put(org_id, org_access_owner(provider), stored, None)
    log.info("org-wide access of %s stored for an org", provider)
    resumed: list[str] = []
    for mailbox in deps.mailboxes.list(org_id):
        if _uses(mailbox, provider) and mailbox.status_reason == ORG_ACCESS_REMOVED:
            updated = update_mailbox(
                deps.mailboxes, org_id, mailbox.mailbox_id,
                lambda m: m.with_status(MailboxStatus.ACTIVE) if m.status_reason == ORG_ACCESS_REMOVED else m,
            )  # fmt: skip
            if updated is not None and updated.value.status is MailboxStatus.ACTIVE:
                resumed.append(mailbox.mailbox_id)
    return description, resumed


def org_access_of(deps: ConnectDeps, org_id: str, provider: str) -> dict[str, Any] | None:
    """The public description of the org's stored credential, or None."""
    access = _access(deps, provider)
    stored = deps.tokens.get(org_id, org_access_owner(provider))
    return access.describe(stored.value) if stored is not None else None


def remove_org_access(deps: ConnectDeps, org_id: str, provider: str) -> int:
    """Delete the credential; its mailboxes go to ``needs_reauth`` (``ORG_ACCESS_REMOVED``). Returns
    how many mailboxes were held. Idempotent."""
    _access(deps, provider)
    deps.tokens.delete(org_id, org_access_owner(provider))
    held = 0
    for mailbox in deps.mailboxes.list(org_id):
        if _uses(mailbox, provider) and mailbox.status is not MailboxStatus.DISCONNECTED:
            updated = update_mailbox(
                deps.mailboxes, org_id, mailbox.mailbox_id,
                lambda m: m.signed_out(ORG_ACCESS_REMOVED) if _uses(m, provider) else m,
            )  # fmt: skip
            held += updated is not None
    return held


def add_org_mailbox(deps: ConnectDeps, org_id: str, address: str, provider: str) -> Mailbox:
    """Add the mailbox at ``address`` through the org's credential. ``OrgAccessRequired`` without one
    (``service_account_required``) or when the provider refuses the delegation (``delegation_refused``);
    ``InvalidRequest`` (``address_not_found``) for an address the provider has no mailbox for."""
    access = _access(deps, provider)
    wanted = normalize_address(address or "")
    if wanted is None:
        raise InvalidRequest("invalid_address", "address is not a valid email address")
    stored = deps.tokens.get(org_id, org_access_owner(provider))
    if stored is None:
        raise OrgAccessRequired(
            "the organisation's admin must upload a Google Workspace service account before mailboxes are added"
        )
    settings = deps.settings.get(org_id)
    try:
        profile = access.mailbox_profile(stored.value, wanted, bool(getattr(settings, "sending_enabled", False)))
    except IdentityError as exc:
        raise OrgAccessRequired(str(exc), "delegation_refused") from exc
    except GrantFailure as exc:
        refused = f"{wanted} has no mailbox Google lets the service account read: {exc}"
        raise InvalidRequest("address_not_found", refused) from exc
    except (MailboxAccessDenied, ProviderRefused) as exc:
        refused = f"{wanted} has no mailbox the service account can read ({exc.code})"
        raise InvalidRequest("address_not_found", refused) from exc
    primary = normalize_address(str(profile.get("mail") or "")) or wanted
    account_id = str(profile.get("id") or primary)
    existing = next(
        (m for m in deps.mailboxes.list(org_id) if m.provider == provider and m.owns(primary)),
        None,
    )
    # A delegated connect of the same person is switched over: ``activate`` deletes its grant.
    mailbox_id = existing.mailbox_id if existing is not None else mailbox_id_for(org_id, account_id, provider)
    fresh = Mailbox(
        org_id=org_id,
        mailbox_id=mailbox_id,
        address=primary,
        aliases=(primary,) if primary == wanted else (primary, wanted),
        watermark=deps.clock.now(),
        mode=ConnectionMode.APPLICATION,
        tenant_id=primary.partition("@")[2],
        graph_user_id=existing.graph_user_id if existing is not None else account_id,
        provider=provider,
    )
    return activate(deps, fresh)


def _uses(mailbox: Mailbox, provider: str) -> bool:
    return mailbox.provider == provider and mailbox.mode is ConnectionMode.APPLICATION
