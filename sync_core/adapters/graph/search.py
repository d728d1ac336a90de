"""``MailSource.search`` on Microsoft Graph: a participant search of one folder through ``$search`` (KQL).

Why ``$search`` and not ``$filter``: the backfill must find mail *sent to* a record as well as mail from
it. ``$filter`` on messages handles ``from/emailAddress/address eq '…'`` but not a lambda on the recipient
collections: ``toRecipients/any(r: r/emailAddress/address eq '…')`` is refused with 400
``ErrorInvalidUrlQueryFilter`` ("The query filter contains one or more invalid nodes"), although the
generic ``$filter`` page lists lambda operators (microsoftgraph/microsoft-graph-explorer-v4 issue #3957,
reproduced by Microsoft in 2026; O365/python-o365 issues #452 and #521, where ``to:`` through
``$search`` is the working answer). KQL's ``participants:`` covers From, To, Cc and Bcc in one term, and
``received>=`` bounds the window (https://learn.microsoft.com/en-us/graph/search-query-parameter, "Using
$search on message collections").

What the documentation says about ``$search`` on messages, and what this adapter does about it:
- "A $search request returns up to 1,000 results", "sorted by the date and time that the message was
  sent" (same page). The adapter follows ``@odata.nextLink`` verbatim (results are not paged like delta:
  no delta link, no state to keep) and counts the results of the query in its cursor; a query that
  ends at 1,000 results ends the folder ``capped`` (older matches may be missing) instead of looping.
  The caller keeps queries small (``MAX_SEARCH_TERMS`` terms each) so the cap is rarely reached.
- ``$search`` is not combined with ``$filter`` or ``$orderby`` (results come in sent-date order), so the
  window is in the KQL (``received>=`` a date: day-granular), and the adapter drops what was received
  before ``since`` itself. No ``ConsistencyLevel`` header: that is for directory objects' advanced
  queries, not for messages.
- ``participants:`` also matches Bcc and display names: the superset the port allows (the pipeline
  decides on From/To/Cc only). A domain is searched as ``participants:example.com``, which matches the
  addresses at that domain; the adapter keeps only messages with a From/To/Cc address at exactly one of
  the domains or equal to one of the addresses, so a token match elsewhere never reaches the caller.
- An address or domain that KQL cannot quote (a double quote or white space in it) is left out of the
  query: RFC 5321 allows such local parts, mailboxes practically never use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sync_core.adapters.graph.http import GraphHttp
from sync_core.domain.model import MailMessage
from sync_core.ports import SearchPage, SearchQuery

SEARCH_RESULT_CAP = 1000  # "A $search request returns up to 1,000 results" (search-query-parameter)
SEARCH_PAGE_SIZE = 250


def kql(query: SearchQuery) -> str | None:
    """The KQL of one search; None when no term can be expressed."""
    terms = [f"participants:{value}" for value in (*query.addresses, *query.domains) if _quotable(value)]
    if not terms:
        return None
    day = query.since.astimezone(UTC).strftime("%Y-%m-%d")
    return f"({' OR '.join(terms)}) AND received>={day}"


def _quotable(value: str) -> bool:
    return bool(value) and not any(ch == '"' or ch.isspace() for ch in value)


@dataclass(frozen=True)
class SearchResponse:
    """One answer of a ``$search`` query: its items, its next link and the results of the query so far."""

    items: tuple[Any, ...]
    next_link: str | None
    seen: int

    def page(self, query: SearchQuery, messages: Sequence[MailMessage]) -> SearchPage:
        """The port's page: only what meets the query (``SearchQuery.wants``), the cursor, the cap."""
        kept = tuple(m for m in messages if query.wants(m))
        if self.next_link and self.seen < SEARCH_RESULT_CAP:
            return SearchPage(query.folder, kept, f"{self.seen} {self.next_link}")
        return SearchPage(query.folder, kept, None, capped=self.seen >= SEARCH_RESULT_CAP)


def search_request(
    http: GraphHttp, messages_path: str, query: SearchQuery, cursor: str | None, *, select: str, prefer: Sequence[str]
) -> SearchResponse:
    """One request: the query's first (``$search``, ``$select``, ``$top``) or its next link (the cursor
    is ``"<results so far> <next link>"``)."""
    if cursor:
        seen_text, _, link = cursor.partition(" ")
        seen = int(seen_text)
        payload = http.get(link, prefer=prefer)
    else:
        text = kql(query)
        if text is None:
            return SearchResponse((), None, 0)
        seen = 0
        params = {"$search": f'"{text}"', "$select": select, "$top": str(SEARCH_PAGE_SIZE)}
        payload = http.get(messages_path, params, prefer)
    items = tuple(payload.get("value", []))
    link_value = payload.get("@odata.nextLink")
    return SearchResponse(items, str(link_value) if link_value else None, seen + len(items))
