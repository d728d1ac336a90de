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
import threading
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
MessageCompleter = Callable[[Sequence[MailMessage]], Sequence[MailMessage]]
"""The matched messages with their bodies (``MailSource.complete``: two-phase fetch, bodies read for
matched mail only); None when the messages already carry them."""


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
    complete: MessageCompleter | None = None,
) -> list[Activity]:
    """Decide each message as seen in ``mailbox`` and build the activities of the matched ones (not
    stored: the caller saves them). Adds one count per message to ``reasons``. Decisions need headers
    only: bodies are read (``complete``) for matched messages alone, and attachment listings fetched
    for matched messages that have attachments not yet summarised. The two halves, ``matched_messages``
    then ``activities_of``, may run apart (the sync builds a page's activities while it fetches the next)."""
    matched = matched_messages(messages, mailbox, settings, records=records, reasons=reasons, complete=complete)
    return activities_of(matched, mailbox, activities=activities, fetch_attachments=fetch_attachments)


def matched_messages(
    messages: Sequence[MailMessage],
    mailbox: Mailbox,
    settings: OrgSettings,
    *,
    records: RecordsIndex,
    reasons: Counter[str],
    complete: MessageCompleter | None = None,
) -> list[tuple[MailMessage, Decision]]:
    """The matched messages (with their bodies, ``complete``) and their decisions; one count per message
    decided in ``reasons``."""
    if not messages:
        return []
    decisions = []
    for message, decision in zip(messages, decide_messages(messages, mailbox, settings, records), strict=True):
        reasons[decision.reason.value] += 1
        if decision.reason is Reason.MATCHED:
            decisions.append((message, decision))
    if decisions and complete is not None:
        completed = complete([m for m, _ in decisions])
        decisions = [(full, d) for full, (_, d) in zip(completed, decisions, strict=True)]
    return decisions


def activities_of(
    decisions: Sequence[tuple[MailMessage, Decision]],
    mailbox: Mailbox,
    *,
    activities: ThreadLookup,
    fetch_attachments: AttachmentFetcher | None = None,
) -> list[Activity]:
    """The activities of matched messages: their attachment summaries listed where missing, their
    threads resolved (``thread_ids``)."""
    if not decisions:
        return []
    with_files = to_list_attachments(decisions)
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


def to_list_attachments(decisions: Sequence[tuple[MailMessage, Decision]]) -> list[str]:
    """The ``source_id``s whose attachments ``activities_of`` lists: messages with attachments not yet
    summarised."""
    return [m.source_id for m, _ in decisions if m.has_attachments and not m.attachments]


MAX_REFERENCES_LOOKED_UP = 20
"""References is sender-controlled: look up at most the root and the latest 20 (one Table read each)."""


def thread_ids(activities: ThreadLookup, org_id: str, messages: Sequence[MailMessage]) -> dict[str, str]:
    """Thread of each message: the thread of the nearest message it references (In-Reply-To, then its
    References from the latest) that is stored or among ``messages``, else the thread rooted at the first
    message of its References chain (or its In-Reply-To, or itself). Both rules give the same id in every
    mailbox, so replies seen elsewhere join the thread.

    A reference to one of ``messages`` (a reply and what it answers on one page) takes that message's
    thread as these rules give it, without reading the store: the store is read, in one lookup, only
    for references outside ``messages``. The same as reading it unless that message was stored before
    with another thread, which needs its References chain cut (roots differ) on the way; a reference loop
    (sender-controlled headers) is skipped where it closes."""
    by_id = {m.internet_message_id: m for m in messages}
    candidates = {mid: _references_to_look_up(m) for mid, m in by_id.items()}
    referenced = thread_references(messages)
    known = activities.thread_ids_for_messages(org_id, referenced) if referenced else {}
    threads: dict[str, str] = {}
    for start in by_id:
        path, on_path = [start], {start}  # messages being resolved, each waiting for the next
        while path:
            mid = path[-1]
            thread, waiting = _nearest(candidates[mid], by_id, threads, known, on_path)
            if waiting is not None:
                path.append(waiting)
                on_path.add(waiting)
                continue
            m = by_id[mid]
            root = m.references[0] if m.references else (m.in_reply_to or m.internet_message_id)
            threads[mid] = thread or thread_id_for(org_id, root)
            path.pop()
            on_path.discard(mid)
    return threads


def thread_references(messages: Sequence[MailMessage]) -> list[str]:
    """The Message-IDs ``thread_ids`` reads from the store for ``messages``: their references (In-Reply-To,
    the latest ``MAX_REFERENCES_LOOKED_UP`` References, the root) to messages outside them."""
    ids = {m.internet_message_id for m in messages}
    return sorted({ref for m in messages for ref in _references_to_look_up(m) if ref not in ids})


def _nearest(
    refs: Sequence[str],
    batch: Mapping[str, MailMessage],
    resolved: Mapping[str, str],
    stored: Mapping[str, str],
    on_path: set[str],
) -> tuple[str | None, str | None]:
    """(thread, None): the thread of the nearest reference that has one (None: no reference has);
    (None, ref): the nearest reference is in the batch and not resolved yet."""
    for ref in refs:
        if ref in batch:
            if ref in resolved:
                return resolved[ref], None
            if ref not in on_path:
                return None, ref
        elif ref in stored:
            return stored[ref], None
    return None, None


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
    so the next lookup reads their stored thread. Safe across threads: a lookup that runs while a save
    of the run is in flight must not name that save's messages (it would read them mid-save)."""

    def __init__(self, store: ThreadLookup) -> None:
        self._store = store
        self._known: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()  # a run may read ahead on one thread while it saves on another

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
        with self._lock:
            missing = [mid for mid in dict.fromkeys(internet_message_ids) if (org_id, mid) not in self._known]
        if missing:
            found = self._store.thread_ids_for_messages(org_id, missing)
            with self._lock:  # what a save told meanwhile is newer than what was read
                for mid in missing:
                    self._known.setdefault((org_id, mid), found.get(mid))
        with self._lock:
            answers = {mid: self._known.get((org_id, mid)) for mid in internet_message_ids}
        return {mid: thread for mid, thread in answers.items() if thread is not None}

    def saved(self, activities: Iterable[Activity], written: ActivityWrite) -> None:
        created = set(written.created)
        with self._lock:
            for activity in activities:
                key = (activity.org_id, activity.internet_message_id)
                if activity.activity_id in created:
                    self._known[key] = activity.thread_id
                else:
                    self._known.pop(key, None)
