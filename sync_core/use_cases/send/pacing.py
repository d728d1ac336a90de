"""Per-mailbox pacing inside Exchange Online's sending limits (``domain.sending.PacingWindow``).

``reserve`` grants a slot with a compare-and-set on the mailbox's window, so concurrent sends of one
mailbox never together exceed 30 messages a minute or 10,000 recipients a day: of two workers reading
the same window, one's write fails and it reads again. A slot is reserved just before the provider work
starts and never returned (a send that then fails still counts), which keeps the mailbox inside the
limits at the price of, at worst, a slot unused.
"""

from __future__ import annotations

from datetime import datetime

from sync_core.domain.sending import PacingWindow
from sync_core.errors import ConcurrencyConflict
from sync_core.ports.send import SendStore

ATTEMPTS = 20


def reserve(sends: SendStore, org_id: str, mailbox_id: str, now: datetime, recipients: int) -> datetime | None:
    """Take a slot for a send of ``recipients`` now: None when granted, else the time to try again."""
    for _ in range(ATTEMPTS):
        stored = sends.pacing(org_id, mailbox_id)
        window = stored.value if stored is not None else PacingWindow()
        wait = window.next_free(now, recipients)
        if wait is not None:
            return wait
        try:
            sends.put_pacing(org_id, mailbox_id, window.granted(now, recipients), stored.etag if stored else None)
        except ConcurrencyConflict:
            continue
        return None
    raise ConcurrencyConflict("the mailbox's pacing kept changing concurrently")
