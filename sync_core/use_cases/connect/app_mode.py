"""Application mode: add a user or shared mailbox of a consented tenant by address.
"""

from __future__ import annotations

import logging

from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import ConnectionMode, Mailbox, MailboxStatus
from sync_core.errors import (
    ConsentRequired,
    InvalidRequest,
    MailboxAccessDenied,
    MessageNotFound,
    ReauthRequired,
)
from sync_core.use_cases.connect.common import (
    ConnectDeps,
    activate,
    aliases_from_profile,
    mailbox_id_for,
)

log = logging.getLogger(__name__)

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
    directory = deps.directory_for(deps.identity.app_token_source(org_id, consent.tenant_id))
    try:
        user = directory.user(wanted)
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
        directory.check_mail_access(graph_user_id)
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
    return activate(deps, fresh)
