"""Messages → decisions → activities: the one path every message takes, whatever brought it in (a Graph
delta page in ``sync_mailbox``, an RFC 822 upload in ``ingest``).

Invariants:
- At most one records lookup for all the messages given, asking only for the addresses and domains their
  ``Screening``s name (none: no lookup); every message is decided as ``decide`` would, with one
  ``DecisionContext`` per call, and its reason counted; only ``MATCHED`` messages become activities.
- An activity's id is ``activity_id_for(org, internet message id)`` and its thread id follows the same
  rules in every mailbox and ingestion path, so the same message always lands on the same activity and
  thread (dedupe is a keyed write, see ``ActivityStore.save``).
- A mailbox with an empty ``mailbox_id`` (an org-level upload) gives activities with no mailbox ids.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from sync_core.domain.decide import DecisionContext
from sync_core.domain.model import (
    Activity,
    AttachmentSummary,
    Decision,
    Direction,
    Mailbox,
    MailMessage,
    OrgSettings,
    Reason,
    activity_id_for,
)
from sync_core.ports import ActivityWrite, RecordLookupResult, RecordsIndex, ThreadLookup

AttachmentFetcher = Callable[[Sequence[str]], Mapping[str, tuple[AttachmentSummary, ...]]]
"""Attachment summaries of messages by ``source_id`` (one batched request where the provider allows it);
None when the messages already carry them (RFC 822 uploads)."""


def decide_messages(
    messages: Sequence[MailMessage], mailbox: Mailbox, settings: OrgSettings, records: RecordsIndex
) -> list[Decision]:
    """The decision on each message as seen in ``mailbox``: every message screened, then one records
    lookup for all of them, then matching (the sync's pages and explain decide alike)."""
    context = DecisionContext.of(mailbox, settings)
    screenings = [context.screen(message) for message in messages]
    # Only what matching can ask for: not the owner, colleagues, never-logged or blocked participants,
    # nor those of messages refused before matching; domains only when the org matches by domain.
    addresses = list(dict.fromkeys(a for screening in screenings for a in screening.addresses))
    domains = list(dict.fromkeys(d for screening in screenings for d in screening.domains))
    lookup = records.lookup(mailbox.org_id, addresses, domains) if addresses or domains else RecordLookupResult()
    return [screening.finish(lookup) for screening in screenings]


def build_activities(
    messages: Sequence[MailMessage],
    mailbox: Mailbox,
    settings: OrgSettings,
    *,
    records: RecordsIndex,
    activities: ThreadLookup,
    reasons: Counter[str],
    fetch_attachments: AttachmentFetcher | None = None,
) -> list[Activity]:
    """Decide each message as seen in ``mailbox`` and build the activities of the matched ones (not
    stored: the caller saves them). Adds one count per message to ``reasons``."""
    if not messages:
        return []
    decisions = []
    for message, decision in zip(messages, decide_messages(messages, mailbox, settings, records), strict=True):
        reasons[decision.reason.value] += 1
        if decision.reason is Reason.MATCHED:
            decisions.append((message, decision))
    if not decisions:
        return []
    with_files = [m.source_id for m, _ in decisions if m.has_attachments]
    files = fetch_attachments(with_files) if with_files and fetch_attachments is not None else {}
    threads = thread_ids(activities, mailbox.org_id, [m for m, _ in decisions])
    mailbox_ids = (mailbox.mailbox_id,) if mailbox.mailbox_id else ()
    return [
        Activity(
            org_id=mailbox.org_id,
            activity_id=activity_id_for(mailbox.org_id, m.internet_message_id),
            internet_message_id=m.internet_message_id,
            thread_id=threads[m.internet_message_id],
            subject=m.subject,
            body_text=m.body_text,
            body_preview=m.body_preview,
            body_truncated=m.body_truncated,
            sender=m.sender,
            to=m.to,
            cc=m.cc,
            sent_at=m.sent_at,
            received_at=m.received_at,
            direction=d.direction or Direction.RECEIVED,
            mailbox_ids=mailbox_ids,
            records=d.records,
            attachments=files.get(m.source_id, m.attachments),
            conversation_id=m.conversation_id,
        )
        for m, d in decisions
    ]


MAX_REFERENCES_LOOKED_UP = 20
"""References is sender-controlled: look up at most the root and the latest 20 (one Table read each)."""


def thread_ids(activities: ThreadLookup, org_id: str, messages: Sequence[MailMessage]) -> dict[str, str]:
    """Thread of each message: the stored thread of a message it references, else the thread rooted at
    the first message of its References chain (or its In-Reply-To, or itself). Both rules give the same
    id in every mailbox, so replies seen elsewhere join the thread."""
    candidates = {m.internet_message_id: _references_to_look_up(m) for m in messages}
    referenced = sorted({ref for refs in candidates.values() for ref in refs})
    known = activities.thread_ids_for_messages(org_id, referenced) if referenced else {}
    threads: dict[str, str] = {}
    for m in messages:
        stored = next((known[r] for r in candidates[m.internet_message_id] if r in known), None)
        root = m.references[0] if m.references else (m.in_reply_to or m.internet_message_id)
        threads[m.internet_message_id] = stored or thread_id_for(org_id, root)
    return threads


def _references_to_look_up(message: MailMessage) -> list[str]:
    """Nearest first: In-Reply-To, the latest references, then the root."""
    refs = [message.in_reply_to] if message.in_reply_to else []
    refs += reversed(message.references[-MAX_REFERENCES_LOOKED_UP:])
    refs += message.references[:1]
    return list(dict.fromkeys(refs))


def thread_id_for(org_id: str, root_message_id: str) -> str:
    return "t" + hashlib.sha256(f"{org_id}\n{root_message_id.strip().lower()}".encode()).hexdigest()[:31]


class RunThreadCache:
    """A ``ThreadLookup`` for one sync run: each Message-ID is read from the store at most once per run
    (found or not), and the activities the run creates answer for themselves. Its pages share their
    threads, so a reply's References would otherwise be read again page after page.

    A stored thread never changes, so a found answer stays true. A not-found answer may turn true when
    another mailbox stores that message during the run, as it may between any lookup and save; the
    reply then takes the thread of its References root, which is where that message's thread begins
    too unless its chain was cut. Messages the run saved that turned out to exist already are forgotten,
    so the next lookup reads their stored thread."""

    def __init__(self, store: ThreadLookup) -> None:
        self._store = store
        self._known: dict[tuple[str, str], str | None] = {}

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
        missing = [mid for mid in dict.fromkeys(internet_message_ids) if (org_id, mid) not in self._known]
        if missing:
            found = self._store.thread_ids_for_messages(org_id, missing)
            self._known.update({(org_id, mid): found.get(mid) for mid in missing})
        answers = {mid: self._known[(org_id, mid)] for mid in internet_message_ids}
        return {mid: thread for mid, thread in answers.items() if thread is not None}

    def saved(self, activities: Iterable[Activity], written: ActivityWrite) -> None:
        created = set(written.created)
        for activity in activities:
            key = (activity.org_id, activity.internet_message_id)
            if activity.activity_id in created:
                self._known[key] = activity.thread_id
            else:
                self._known.pop(key, None)
