"""Mailboxes on a mail server reached with a user name and password (the ``imap`` provider).

Invariants:
- Nothing is stored before the probe logged in: a wrong host, an untrusted certificate, a refused login
  or a server without a Sent folder is a 400 with its precise code (``ServerProbe``), and no mailbox,
  credential or cursor exists afterwards.
- The login is stored encrypted in the token-cache store under the mailbox's owner key, like an OAuth
  token cache: the same key ids and rotation (the maintenance timer re-wraps it), deleted by disconnect
  and by sign-out-all. It is never returned by the API nor logged.
- A mailbox's id is derived from (org, provider, host, port, user name): adding the same login again
  re-activates the same mailbox with its watermark and cursors (as reconnecting a Microsoft mailbox does).
- New credentials (PATCH) are probed the same way before they replace the stored ones; a mailbox held in
  ``needs_reauth`` (its server refused the old password) becomes ``active`` again.
"""

from __future__ import annotations

from dataclasses import replace

from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import Mailbox, MailboxStatus
from sync_core.errors import InvalidRequest, MailboxNotFound, TokenDecryptionError
from sync_core.ports.identity import mailbox_owner
from sync_core.ports.servers import ServerAccount, ServerLogin
from sync_core.use_cases.connect.common import ConnectDeps, activate, mailbox_id_for
from sync_core.use_cases.mailbox_updates import update_mailbox

SERVER_PROVIDERS = ("imap",)
MAX_ALIASES = 50


def add_server_mailbox(
    deps: ConnectDeps,
    org_id: str,
    *,
    address: str,
    account: ServerAccount,
    user_id: str = "",
    aliases: tuple[str, ...] = (),
    provider: str = "imap",
) -> Mailbox:
    """Probe the login, store it, then create (or re-activate) the mailbox; see the module docstring."""
    if deps.server_probe is None:
        raise InvalidRequest("provider_not_available", f"this deployment does not offer {provider} mailboxes")
    primary = normalize_address(address or "")
    if primary is None:
        raise InvalidRequest("invalid_address", "address is not a valid email address")
    others = []
    for alias in aliases[:MAX_ALIASES]:
        normalised = normalize_address(alias)
        if normalised is None:
            raise InvalidRequest("invalid_address", "an alias is not a valid email address")
        if normalised not in others and normalised != primary:
            others.append(normalised)
    deps.server_probe.check(account)
    login = account.imap
    mailbox_id = mailbox_id_for(org_id, f"{provider}:{login.host.lower()}:{login.port}:{login.username}")
    deps.tokens.put(org_id, mailbox_owner(mailbox_id), account.to_json(), None)
    fresh = Mailbox(
        org_id=org_id,
        mailbox_id=mailbox_id,
        address=primary,
        aliases=(primary, *others),
        watermark=deps.clock.now(),
        user_id=user_id,
        provider=provider,
    )
    return activate(deps, fresh)


def change_server_credentials(
    deps: ConnectDeps, org_id: str, mailbox_id: str, *, imap: ServerLogin | None, smtp: ServerLogin | None
) -> Mailbox:
    """Replace the IMAP and/or SMTP login of a server mailbox after probing the result (a login left out
    keeps its stored value). A mailbox in ``needs_reauth`` becomes ``active``."""
    current = deps.mailboxes.get(org_id, mailbox_id)
    if current is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    if current.value.provider not in SERVER_PROVIDERS:
        raise InvalidRequest("not_a_server_mailbox", "imap and smtp logins can only be changed on imap mailboxes")
    if current.value.status is MailboxStatus.DISCONNECTED:
        raise InvalidRequest("mailbox_disconnected", "the mailbox is disconnected; add it again")
    if deps.server_probe is None:
        raise InvalidRequest("provider_not_available", "this deployment does not offer imap mailboxes")
    stored = None
    try:
        found = deps.tokens.get(org_id, mailbox_owner(mailbox_id))
        stored = ServerAccount.from_json(found.value) if found is not None else None
    except (TokenDecryptionError, ValueError):
        stored = None  # unreadable: the new login must be complete
    if imap is None and stored is None:
        raise InvalidRequest("imap_required", "no readable IMAP login is stored: give the whole imap object")
    merged = ServerAccount(imap or stored.imap, smtp or (stored.smtp if stored else None))  # type: ignore[union-attr]
    deps.server_probe.check(merged)
    deps.tokens.put(org_id, mailbox_owner(mailbox_id), merged.to_json(), None)

    def reauthenticated(mailbox: Mailbox) -> Mailbox:
        if mailbox.status is MailboxStatus.NEEDS_REAUTH:
            return replace(mailbox, status=MailboxStatus.ACTIVE, status_reason="")
        return mailbox

    updated = update_mailbox(deps.mailboxes, org_id, mailbox_id, reauthenticated)
    if updated is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    return updated.value
