"""The one way a use case changes a stored mailbox: read, change, compare-and-set, retry on a conflict.

Every status change (a run's outcome, give-up, disconnect, sign-out), the backfill's watermark move and the
CRM's own edits go through ``update_mailbox``. Invariants:

- ``change`` is a pure function of the mailbox as stored now (the ``Mailbox`` transitions: ``failed``,
  ``recovered``, ``disconnected``, ``backfilled``, …); it is called again on the re-read after a conflict,
  so a decision is never written over a state it was not made on. Returning None or the same mailbox
  writes nothing.
- ``before_write`` (a lease renewal, a fence) runs right before each write; it raises to abort.
- At most ``UPDATE_ATTEMPTS`` writes are tried; when every one lost, ``ConcurrencyConflict`` is raised (the
  caller decides: the API answers 409 ``concurrent_update``, a run logs it and keeps its report).
"""

from __future__ import annotations

from collections.abc import Callable

from sync_core.domain.model import Mailbox
from sync_core.errors import ConcurrencyConflict
from sync_core.ports import MailboxRepository, Versioned

UPDATE_ATTEMPTS = 5


def update_mailbox(
    mailboxes: MailboxRepository,
    org_id: str,
    mailbox_id: str,
    change: Callable[[Mailbox], Mailbox | None],
    *,
    before_write: Callable[[], None] | None = None,
    attempts: int = UPDATE_ATTEMPTS,
) -> Versioned[Mailbox] | None:
    """The mailbox as stored after the change (unchanged when ``change`` wanted nothing), or None when
    there is no such mailbox (the caller decides whether that is ``MailboxNotFound``)."""
    for _ in range(attempts):
        current = mailboxes.get(org_id, mailbox_id)
        if current is None:
            return None
        wanted = change(current.value)
        if wanted is None or wanted == current.value:
            return current
        if before_write is not None:
            before_write()
        try:
            return mailboxes.replace(wanted, current.etag)
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(f"mailbox {mailbox_id} kept changing")
