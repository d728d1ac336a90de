"""What an IMAP mailbox logs in with (``ports.servers.ServerLogin``, stored encrypted by connect), and the
limits every IMAP conversation keeps.

The password is a secret: it is never logged, never part of an error message, and its ``repr`` hides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sync_core.domain.model import Mailbox
from sync_core.errors import CredentialsUnreadable, ReauthRequired, TokenDecryptionError
from sync_core.ports.identity import TokenCacheStore, mailbox_owner
from sync_core.ports.servers import Security, ServerAccount, ServerLogin

__all__ = ["ImapAccount", "ImapLimits", "Security", "stored_account", "stored_server_account"]

ImapAccount = ServerLogin
"""The incoming-server login of a mailbox (the port's ``ServerLogin``)."""


@dataclass(frozen=True)
class ImapLimits:
    """Bounds of every IMAP conversation: a server that stalls or floods costs at most these.

    ``fetch_batch``: messages per header FETCH (and per delta page); ``body_bytes``: bytes fetched of a
    text part (``BODY.PEEK[n]<0.body_bytes>``: the rest is never downloaded, the body is marked
    truncated); ``max_message_bytes``: larger messages are listed and decided on their headers but
    their bodies are not fetched."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    fetch_batch: int = 200
    body_bytes: int = 512 * 1024
    max_message_bytes: int = 50 * 1024 * 1024
    ca_file: str | None = None


def stored_account(tokens: TokenCacheStore) -> Callable[[Mailbox], ImapAccount]:
    """The IMAP login of a mailbox, read (and decrypted) from where connect stored it. A mailbox without
    one, or whose stored value is not a server account, needs new credentials (``needs_reauth``); one no
    configured key opens is ``CredentialsUnreadable``."""

    read = stored_server_account(tokens)

    def account_for(mailbox: Mailbox) -> ImapAccount:
        return read(mailbox).imap

    return account_for


def stored_server_account(tokens: TokenCacheStore) -> Callable[[Mailbox], ServerAccount]:
    """The whole stored login of a mailbox (IMAP, and SMTP when given), for sending; errors as
    ``stored_account``."""

    def account_for(mailbox: Mailbox) -> ServerAccount:
        try:
            stored = tokens.get(mailbox.org_id, mailbox_owner(mailbox.mailbox_id))
        except TokenDecryptionError:
            raise CredentialsUnreadable() from None
        if stored is None:
            raise ReauthRequired("no mail server credentials are stored for this mailbox; add them again")
        try:
            return ServerAccount.from_json(stored.value)
        except ValueError:
            raise ReauthRequired("the stored credentials are not a mail server login; add them again") from None

    return account_for
