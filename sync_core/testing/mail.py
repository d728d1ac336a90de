"""In-memory doubles of the MailSource and Clock ports, for unit tests of the sync run.

FakeMailSource keeps, per folder, an append-only log of messages and serves delta pages over it the
way Graph does: a first round filtered by receivedDateTime, then changes since the last delta link.
Links are opaque strings; ``expire_links()`` makes every issued link fail with DeltaTokenExpired,
``forget_links()`` with MessageNotFound (Graph's 404 for a link whose state or folder it lost).
``remove_folder`` makes a folder 404 whatever the link (it is still listed by ``folders``: deleted after
the listing, the race a real run can meet); ``delete_message`` makes its attachment listing
404 (it is left out of ``attachments``' answer, as GraphMailSource does).
With ``headers_only`` its pages carry no bodies (as Gmail's ``format=metadata`` pages): ``complete`` gives
them back and records the ids it was asked for (``completed``), as a two-phase provider does.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import AttachmentSummary, Mailbox, MailMessage
from sync_core.errors import DeltaTokenExpired, MessageNotFound, TransientGraphError
from sync_core.ports import DeltaPage, RequestUsage


@dataclass
class FixedClock:
    moment: datetime = field(default_factory=lambda: datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
    step: timedelta = timedelta(0)

    def now(self) -> datetime:
        current = self.moment
        self.moment += self.step
        return current


class FakeMailSource:
    def __init__(self, page_size: int = 3, *, headers_only: bool = False) -> None:
        self.page_size = page_size
        self.headers_only = headers_only
        self.completed: list[str] = []  # source ids whose bodies ``complete`` read
        self.folders_: dict[str, list[MailMessage]] = {"inbox": [], "sentitems": []}
        self.files: dict[str, tuple[AttachmentSummary, ...]] = {}
        self._links: dict[str, tuple[str, int, datetime | None, int]] = {}  # link -> folder, pos, since, generation
        self._generation = 0
        self._ids = itertools.count(1)
        self.requests = 0
        self.requests_by_mailbox: Counter[tuple[str, str]] = Counter()
        self.fail_next: list[Exception] = []
        self.forgotten: set[str] = set()  # links answered with 404
        self.removed_folders: set[str] = set()
        self.deleted: set[str] = set()  # source ids whose attachment listing 404s
        self.throttling: dict[tuple[str, str], tuple[int, float]] = {}  # (org, mailbox) -> (answers, seconds)

    # -- test controls ------------------------------------------------------------------------------

    def deliver(self, message: MailMessage, files: Sequence[AttachmentSummary] = ()) -> None:
        self.folders_.setdefault(message.folder, []).append(message)
        if files:
            self.files[message.source_id] = tuple(files)

    def throttle(self, mailbox: Mailbox, answers: int, waited_seconds: float) -> None:
        """Count ``answers`` throttled responses and ``waited_seconds`` of waiting on the mailbox, as
        GraphHttp does when it retries after a Retry-After (``usage_for`` reports them)."""
        key = (mailbox.org_id, mailbox.mailbox_id)
        before = self.throttling.get(key, (0, 0.0))
        self.throttling[key] = (before[0] + answers, before[1] + waited_seconds)

    def expire_links(self) -> None:
        self._generation += 1

    def forget_links(self) -> None:
        self.forgotten.update(self._links)

    def remove_folder(self, folder: str) -> None:
        self.removed_folders.add(folder)

    def delete_message(self, source_id: str) -> None:
        self.deleted.add(source_id)

    # -- MailSource ---------------------------------------------------------------------------------

    @property
    def requests_made(self) -> int:
        return self.requests

    def requests_for(self, mailbox: Mailbox) -> int:
        return self.requests_by_mailbox[(mailbox.org_id, mailbox.mailbox_id)]

    def usage_for(self, mailbox: Mailbox) -> RequestUsage:
        answers, seconds = self.throttling.get((mailbox.org_id, mailbox.mailbox_id), (0, 0.0))
        return RequestUsage(self.requests_for(mailbox), answers, seconds)

    def _count(self, mailbox: Mailbox) -> None:
        self.requests += 1
        self.requests_by_mailbox[(mailbox.org_id, mailbox.mailbox_id)] += 1

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        self._count(mailbox)
        return self._delta(mailbox, folder, link, since)

    def _delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        if self.fail_next:
            raise self.fail_next.pop(0)
        if folder in self.removed_folders or link in self.forgotten:
            raise MessageNotFound("ErrorItemNotFound: The specified object was not found in the store.")
        since_filter: datetime | None
        if link is None:
            position, since_filter = 0, since
        else:
            if link not in self._links or self._links[link][3] != self._generation:
                raise DeltaTokenExpired("410 SyncStateNotFound")
            link_folder, position, since_filter, _ = self._links[link]
            assert link_folder == folder, "links are per folder"
        log = self.folders_.get(folder, [])
        end = min(position + self.page_size, len(log))
        items = [m for m in log[position:end] if since_filter is None or m.received_at >= since_filter]
        new_link = f"link-{next(self._ids)}"
        self._links[new_link] = (folder, end, since_filter, self._generation)
        caught_up = end >= len(log)
        if self.headers_only:
            items = [replace(m, body_text="", body_preview="") for m in items]
        return DeltaPage(
            folder=folder,
            messages=tuple(items),
            next_link=None if caught_up else new_link,
            delta_link=new_link if caught_up else None,
            skipped=(end - position) - len(items),
        )

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        self._count(mailbox)  # one request polls every folder, as the port promises
        return {folder: self._delta(mailbox, folder, link, mailbox.watermark) for folder, link in links.items()}

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        self._count(mailbox)
        return {sid: self.files.get(sid, ()) for sid in source_ids if sid not in self.deleted}

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        if not self.headers_only:
            return messages  # delivered messages carry their bodies, as Graph's delta pages do
        self._count(mailbox)
        self.completed.extend(m.source_id for m in messages)
        full = {m.source_id: m for log in self.folders_.values() for m in log}
        return [full.get(m.source_id, m) for m in messages]

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        self._count(mailbox)
        wanted = {internet_message_id, f"<{internet_message_id.strip('<>')}>"}
        copies = [m for log in self.folders_.values() for m in log if m.internet_message_id in wanted]
        return next((m for m in copies if m.folder in DEFAULT_FOLDERS), copies[0] if copies else None)

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        return tuple(self.folders_)


def throttled() -> TransientGraphError:
    return TransientGraphError("Graph answered 429 8 times", retry_after=30)
