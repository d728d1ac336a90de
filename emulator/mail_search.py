"""``$search`` on message lists (``GET [mailFolders/{id}/]messages?$search="…"``): the KQL subset the app's
participant search sends, answered the way Graph documents it.

Facts (https://learn.microsoft.com/en-us/graph/search-query-parameter, "Using $search on message
collections"), and what the emulator does:

* "The results of the search are sorted by the date and time that the message was sent": newest sent
  first; ``$orderby`` is refused with ``$search`` (400 ``ErrorInvalidUrlQuery``), and so is ``$filter``
  (the emulator is stricter than Graph may be here: the app never combines them).
* "A $search request returns up to 1,000 results": whatever the paging, a query reaches at most its
  first 1,000 results; pages follow ``$top`` (default 10, at most 1000) with an ``@odata.nextLink``.
* The value is a KQL string in double quotes. Supported: ``participants:`` (From, To, Cc and Bcc),
  ``from:``, ``to:``, ``cc:``, ``bcc:`` with an address (equal, case-insensitive) or a domain (every
  address at that domain); ``received>=``, ``received<=``, ``received>``, ``received<`` with a
  ``YYYY-MM-DD`` date (day-granular, UTC); terms joined by ``OR`` inside one pair of parentheses and
  ``AND`` between groups. Anything else is 400 ``BadRequest`` (the real service accepts far more KQL;
  the emulator refuses what it does not answer faithfully rather than guess).
* Drafts and every folder are searched alike; the folder route limits it to that folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .core import GraphContext, Response, graph_error
from .mail_model import Folder, Mailbox, Message, View, render_message

RESULT_CAP = 1000
_PARTY = re.compile(r"^(participants|from|to|cc|bcc):(\S+)$", re.IGNORECASE)
_DATE = re.compile(r"^received(>=|<=|>|<)(\d{4}-\d{2}-\d{2})$", re.IGNORECASE)

Check = Callable[[Message], bool]


def list_searched(
    store: Any, ctx: GraphContext, box: Mailbox, folder: Folder | None, *, view: View, select: Any
) -> Response:
    """Answer a message list that carries ``$search`` (the hook in ``MailStore._list_messages``)."""
    query = ctx.request.query
    if "$filter" in query or "$orderby" in query:
        return graph_error(400, "ErrorInvalidUrlQuery", "$search cannot be combined with $filter or $orderby.")
    check = parse_search(query.get("$search", ""))
    if check is None:
        return graph_error(400, "BadRequest", "Syntax error: the $search query is not supported.")
    found = [m for m in box.messages.values() if (folder is None or m.folder_id == folder.id) and check(m)]
    found.sort(key=lambda m: m.sent, reverse=True)
    path = f"mailFolders('{folder.id}')/messages" if folder else "messages"
    return store._paged(ctx, found[:RESULT_CAP], path, lambda m: render_message(m, view, select))


def parse_search(raw: str) -> Check | None:
    """The KQL of a ``$search`` value (in double quotes) as a check; None when unsupported."""
    text = raw.strip()
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return None
    groups: list[Check] = []
    for group in re.split(r"\s+AND\s+", text[1:-1].strip()):
        inner = group.strip()
        if inner.startswith("(") and inner.endswith(")"):
            inner = inner[1:-1].strip()
        terms = [_term(term.strip()) for term in re.split(r"\s+OR\s+", inner)]
        if not terms or any(term is None for term in terms):
            return None
        groups.append(_any([t for t in terms if t is not None]))
    return lambda m: all(check(m) for check in groups)


def _any(checks: list[Check]) -> Check:
    return lambda m: any(check(m) for check in checks)


def _term(term: str) -> Check | None:
    party = _PARTY.match(term)
    if party:
        field, value = party.group(1).lower(), party.group(2).lower()
        return lambda m: any(_address_matches(address, value) for address in _addresses(m, field))
    date = _DATE.match(term)
    if date:
        try:
            day = datetime.strptime(date.group(2), "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            return None
        op, end = date.group(1), day + timedelta(days=1)
        return {
            ">=": lambda m: m.received >= day,
            ">": lambda m: m.received >= end,
            "<=": lambda m: m.received < end,
            "<": lambda m: m.received < day,
        }[op]
    return None


def _addresses(message: Message, field: str) -> list[str]:
    def of(values: list[dict[str, Any]]) -> list[str]:
        return [str(v.get("emailAddress", {}).get("address", "")).lower() for v in values]

    sender = [message.from_] if message.from_ else []
    parts = {"from": of(sender), "to": of(message.to), "cc": of(message.cc), "bcc": of(message.bcc)}
    if field == "participants":
        return [address for values in parts.values() for address in values]
    return parts[field]


def _address_matches(address: str, value: str) -> bool:
    return address == value if "@" in value else address.rpartition("@")[2] == value
