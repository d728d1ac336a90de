"""Explain: why the sync would or would not store one message of a mailbox (spec §4).

The message is read through the mail source the way the sync reads it (``MailSource.find_message``) and
decided by the pipeline's own screening, records lookup and matching (``pipeline.decide_messages``),
after the org's folder policy the sync applies by choosing which folders it reads. Writes nothing: no
activity, cursor, report or status.

The decision says what the sync would do with the message *if it read it now*; ``storage_of`` says what
will actually happen to it, and what would log it:

- ``stored``: its activity exists.
- ``not_logged``: the decision refuses it (a rule: junk, internal, unmatched, …); nothing logs it unless
  the rule's input changes (settings, records), and even then only a run that reads it again.
- ``before_watermark``: received before the mailbox's watermark; a backfill of ``days`` covering it logs
  it (``days`` beyond ``MAX_BACKFILL_DAYS``: nothing can).
- ``passed``: the decision would store it, but the folder's delta cursor was written by a run that
  started at least ``READ_MARGIN`` after the message was received, so that run read past it and it is not
  stored now (the usual cause: no record matched it then, e.g. the record was added later; an activity
  deleted by a privacy request looks the same, as no trace of a deletion is kept). Sync never reads it
  again; a backfill of ``days`` covering it does.
- ``pending``: the decision would store it and no run has read it yet (no cursor for its folder, or
  the cursor is older than the message): the next run logs it; Sync now runs one at once.
- ``not_stored``: it would be stored and is not, and whether a run read it cannot be told (the cursor
  is mid-round, or was written within ``READ_MARGIN`` of its receipt). Sync now first; if that does not
  log it, a backfill of ``days``.

Nothing is claimed that the stored state does not show: no reason is invented for ``passed`` or
``not_stored``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sync_core.domain.decide import EXCLUDED_FOLDERS
from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import Decision, DecisionStep, FolderFilter, Mailbox, MailMessage, OrgSettings, Reason
from sync_core.ports import MailSource, RecordsIndex
from sync_core.use_cases.pipeline import decide_messages
from sync_core.use_cases.schedule import MAX_BACKFILL_DAYS
from sync_core.use_cases.sync_mailbox import Cursor

READ_MARGIN = timedelta(minutes=2)  # a message may show in delta a little after its receive time


@dataclass(frozen=True)
class Explained:
    message: MailMessage
    decision: Decision


def explain(
    mail: MailSource, records: RecordsIndex, mailbox: Mailbox, settings: OrgSettings, internet_message_id: str
) -> Explained | None:
    """The decision on the mailbox's copy of the message; None when the mailbox has no such message."""
    message = mail.find_message(mailbox, internet_message_id)
    if message is None:
        return None
    return Explained(message, decide_in_folder(message, mailbox, settings, records))


def decide_in_folder(message: MailMessage, mailbox: Mailbox, settings: OrgSettings, records: RecordsIndex) -> Decision:
    """A message in a folder the org does not sync is refused for its folder; else the pipeline decides."""
    folder = message.folder.strip().lower()
    if settings.folders is FolderFilter.DEFAULT and folder not in DEFAULT_FOLDERS and folder not in EXCLUDED_FOLDERS:
        step = DecisionStep(
            "folder", False, f"folder {message.folder!r}: the organisation syncs Inbox and Sent Items only"
        )
        return Decision(store=False, reason=Reason.EXCLUDED_FOLDER, steps=(step,))
    return decide_messages([message], mailbox, settings, records)[0]


@dataclass(frozen=True)
class Storage:
    """What happens to the message (see the module docstring): ``state``, in words ``detail``, and what
    would log it: ``remedy`` (``backfill`` with ``days``, ``sync_now``, or empty: nothing)."""

    state: str
    detail: str
    remedy: str = ""
    days: int | None = None


def backfill_days(received_at: datetime, now: datetime) -> int:
    """The smallest whole number of days a backfill requested now must reach back to include the message."""
    return max(1, math.floor((now - received_at) / timedelta(days=1)) + 1)


def storage_of(
    message: MailMessage,
    decision: Decision,
    *,
    stored: bool,
    cursors: Mapping[str, str],
    settings: OrgSettings,
    now: datetime,
) -> Storage:
    """The message's storage state from its decision, whether its activity exists, and the mailbox's
    stored delta cursors. Pure. An org syncing every folder keys cursors by folder id, which a message
    found in a role folder (``inbox``) does not name: its cursor is then unknown unless none is stored."""
    if stored:
        return Storage("stored", "The message is logged.")
    days = backfill_days(message.received_at, now)
    reachable = days <= MAX_BACKFILL_DAYS

    def by_backfill(state: str, detail: str) -> Storage:
        if not reachable:
            return Storage(state, f"{detail} It is older than the longest backfill ({MAX_BACKFILL_DAYS} days).")
        return Storage(state, f"{detail} A backfill of {days} days would log it.", "backfill", days)

    if decision.reason is Reason.BEFORE_WATERMARK:
        return by_backfill("before_watermark", "Received before the mailbox's watermark, so the sync skips it.")
    if not decision.store:
        return Storage("not_logged", "The decision does not log it (see reason and steps).")
    folder_cursor = cursors.get(message.folder)
    if folder_cursor is None and cursors and settings.folders is FolderFilter.ALL:
        folder_cursor = "unknown"  # parses as mid-round: whether a run read it cannot be told
    cursor = Cursor.parse(folder_cursor) if folder_cursor else None
    if cursor is None or (cursor.caught_up and cursor.written_at < message.received_at):
        return Storage("pending", "No sync run has read it yet: the next run logs it.", "sync_now")
    if cursor.caught_up and cursor.written_at >= message.received_at + READ_MARGIN:
        return by_backfill(
            "passed",
            "A sync run already read past it (the folder's delta cursor has moved on) and it is not stored: "
            "a run reads new mail once, so no later run logs it.",
        )
    detail = "It is not stored, and whether a run read it yet cannot be told."
    if not reachable:
        return Storage("not_stored", f"{detail} Sync now may log it.", "sync_now")
    return Storage("not_stored", f"{detail} Sync now may log it; if not, a backfill of {days} days.", "sync_now", days)
