"""The mail-source port: a mailbox's mail, read folder by folder through opaque cursors.

Folders are named by their role (``domain.folders.FolderRole``: ``inbox``, ``sentitems``) or,
when an org syncs every folder, by the provider's folder id. Cursors (``link``) are opaque per provider:
the use cases store them and hand them back verbatim, never parse them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from sync_core.domain.model import AttachmentSummary, Mailbox, MailMessage


@dataclass(frozen=True)
class DeltaPage:
    """One page of a folder's delta. Exactly one of ``next_link``/``delta_link`` is set.

    ``messages`` are new or moved-in messages, with everything the decision reads (headers, addresses,
    dates); their bodies may wait for ``MailSource.complete``; ``skipped`` counts items that carry no new
    message (partial updates, ``@removed`` entries, replays of items without content)."""

    folder: str
    messages: tuple[MailMessage, ...]
    next_link: str | None
    delta_link: str | None
    skipped: int = 0


MAX_SEARCH_TERMS = 20
"""At most this many addresses and domains together in one ``MailSource.search`` call: a provider's query
length stays bounded (KQL, Gmail ``q=``, an IMAP ``OR`` tree); callers split longer lists."""


@dataclass(frozen=True)
class SearchQuery:
    """A participant search of one folder: mail received at or after ``since`` with one of ``addresses``
    in From/To/Cc or an address at one of ``domains``. Normalised values, 1 to ``MAX_SEARCH_TERMS`` of
    them together (else ``ValueError``, from the constructor)."""

    folder: str
    addresses: tuple[str, ...]
    domains: tuple[str, ...]
    since: datetime

    def __post_init__(self) -> None:
        if not 1 <= len(self.addresses) + len(self.domains) <= MAX_SEARCH_TERMS:
            raise ValueError(f"1 to {MAX_SEARCH_TERMS} addresses and domains per search")

    def wants(self, message: MailMessage) -> bool:
        """Does the message meet the query (received in the window, a participant searched for)?"""
        wanted, at = set(self.addresses), set(self.domains)
        in_window = message.received_at >= self.since
        return in_window and any(p.address in wanted or p.domain in at for p in message.participants)


@dataclass(frozen=True)
class SearchPage:
    """One page of a participant search of one folder (``MailSource.search``).

    ``cursor``: opaque, to pass back for the next page; None when the folder's search is complete.
    ``capped``: the provider stopped at its own result limit before the end of the window, so older
    matches may be missing (the caller reports it; it never retries the same query in a loop)."""

    folder: str
    messages: tuple[MailMessage, ...]
    cursor: str | None
    capped: bool = False


class MailSource(Protocol):
    """A mailbox's mail, read through delta queries (Graph in production)."""

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        """Follow ``link`` verbatim, or start the folder's delta filtered to mail received at or
        after ``since``. Raises ``DeltaTokenExpired`` when Graph lost the sync state."""

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        """Poll several folders whose delta links are known, in as few requests as possible."""

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        """Attachment names/sizes/types (inline ones excluded) for these messages. A message the source no
        longer has (deleted or moved since it was listed) is left out of the answer: a per-message failure
        that costs that message its attachment summary, not the run. The sync calls it from another thread
        while it fetches the next page with ``delta`` (one call at a time): an adapter whose connection
        cannot serve both at once serialises them (IMAP and Gmail pages carry the summaries: never called)."""

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        """The matched ``messages`` with everything the pipeline stores: body text and, where the
        provider lists them in the same read, attachment summaries (``attachments`` set). Two-phase
        fetch: a provider whose delta pages carry headers only (Gmail ``format=metadata``) reads bodies
        here, for matched mail only; one whose pages already carry bodies (Graph) returns them as given.
        Same order; a message the source no longer has is returned as given (stored without its body),
        never dropped."""

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        """The mailbox's copy of the message with this Internet Message-ID (with or without its angle
        brackets), read as the sync reads it; a copy in a ``DEFAULT_FOLDERS`` folder is preferred, its
        ``folder`` a role where the folder has one. None when the mailbox has no such message."""

    def search(self, mailbox: Mailbox, query: SearchQuery, cursor: str | None) -> SearchPage:
        """One page of the messages of ``query.folder`` received at or after ``query.since`` that have one
        of ``query.addresses`` in From, To or Cc, or an address at one of ``query.domains`` (exactly that
        domain, as record matching compares it: ``SearchQuery.wants``), read as ``delta`` reads them (same
        fields; BCC never read).

        The contract every provider keeps (the record backfill and its contract tests rely on it):
        - Inputs: ``query.folder`` a role or a provider folder id as ``delta`` takes it; ``cursor`` None
          for the first page, else the previous page's ``cursor`` verbatim.
        - At least every such message, received at or after ``since``: a provider whose search is
          coarser (a BCC copy, a display name, a token match, a day-granular date) may return more, and
          the caller decides each one with the pipeline, so an extra one costs a count, never a stored
          row. Never a message received before ``since``: the adapter drops what its query could not.
        - Paging: each call is a small fixed number of provider requests (Graph: one; Gmail: a listing
          and one batch of headers; so a request budget is a call budget), a page holds at most 1,000
          messages, order unspecified; a message may repeat across pages (the
          caller dedupes by Internet Message-ID). ``cursor`` None on the last page.
        - Bounds: a provider with a result limit per query (Graph's ``$search``: 1,000) ends the folder
          with ``capped`` set instead of looping; throttling is a ``TransientFailure`` (with its
          Retry-After); a folder the mailbox does not have is ``MessageNotFound``.
        - Read-only: nothing in the mailbox changes and nothing is stored."""

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        """Ids of every folder to sync when the org syncs all folders (system folders excluded)."""

    @property
    def requests_made(self) -> int:
        """HTTP requests sent to the provider so far, for every mailbox (a batch counts once, a retry
        counts again)."""

    def requests_for(self, mailbox: Mailbox) -> int:
        """``requests_made`` for this mailbox only: a run's report counts its own requests, not those
        of runs of other mailboxes sharing the source in the same process."""


@dataclass(frozen=True)
class RequestUsage:
    """What a mail source spent on one mailbox so far: ``requests`` sent (a batch once, a retry again),
    ``throttled`` answers asking it to slow down (429, 503, ...; retried or given up), and
    ``waited_seconds`` slept honouring them (Retry-After or backoff). Monotonic: a run's share is the
    difference of two readings."""

    requests: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0

    def since(self, before: RequestUsage) -> RequestUsage:
        return RequestUsage(
            self.requests - before.requests,
            self.throttled - before.throttled,
            round(self.waited_seconds - before.waited_seconds, 3),
        )


@runtime_checkable
class ReportsUsage(Protocol):
    """Optional capability of a ``MailSource``: its throttling per mailbox, for the run's operational
    event (``use_cases.telemetry``). A source without it reports no throttling."""

    def usage_for(self, mailbox: Mailbox) -> RequestUsage:
        """``RequestUsage`` of this mailbox since the source was built."""
