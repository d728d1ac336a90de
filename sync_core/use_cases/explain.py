"""Explain: why the sync would or would not store one message of a mailbox (spec §4).

The message is read through the mail source the way the sync reads it (``MailSource.find_message``) and
decided by the pipeline's own screening, records lookup and matching (``pipeline.decide_messages``),
after the org's folder policy the sync applies by choosing which folders it reads. Writes nothing: no
activity, cursor, report or status.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_core.domain.decide import EXCLUDED_FOLDERS
from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import Decision, DecisionStep, FolderFilter, Mailbox, MailMessage, OrgSettings, Reason
from sync_core.ports import MailSource, RecordsIndex
from sync_core.use_cases.pipeline import decide_messages


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
