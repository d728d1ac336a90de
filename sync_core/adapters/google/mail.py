"""The MailSource port on the Gmail API: labels as folders, history as delta, two-phase reads.

Folders are labels: the role ``inbox`` is ``INBOX``, ``sentitems`` is ``SENT``; with all folders, every
label but ``SPAM``, ``TRASH``, ``DRAFT`` (and ``CHAT``: chats are not mail), by label id. Cursors are
opaque to the core; here they are:

- ``gmail:list:<historyId>:<after>:<pageToken>`` — mid-way through the first listing of a label
  (``messages.list`` with ``labelIds`` and ``q=after:<after>``, the mailbox watermark in epoch seconds);
  ``historyId`` is ``users.getProfile``'s, read before the listing's first page;
- ``gmail:history:<historyId>`` — caught up: the next poll is ``history.list`` from there;
- ``gmail:history:<historyId>:<pageToken>`` — mid-way through a history round.

Invariants (Gmail sync guide, developers.google.com/gmail/api/guides/sync):
- A first sync (no cursor) or a resync never imports mail received before ``since`` (the watermark):
  the listing asks ``after:`` one second early and keeps messages whose ``internalDate`` is at or after
  ``since``. The history starts at the ``historyId`` read before the listing began, so mail arriving
  during the listing is seen by both (the run and the keyed activity store dedupe it), never by neither.
- ``history.list`` asks ``historyTypes=messageAdded`` and ``labelId`` of the folder (a message added with
  a date before the watermark is skipped, as the listing would never return it); a 404 for the start
  id (Google keeps history "at least a week", sometimes "only a few hours") is ``DeltaTokenExpired``:
  the sync restarts the folder from the watermark.
- Two-phase: pages carry headers only (``format=metadata``, the headers decisions need, Bcc dropped, the
  snippet as preview); ``complete`` reads bodies (``format=full``: text parts decoded, attachment parts
  summarised, never downloaded) for matched messages only.
- Every multi-message read goes through Gmail's batch endpoint (``GmailHttp.batch``); a message deleted
  between the list and the read (404) is counted as skipped.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from sync_core.adapters.google.http import BatchItem, GmailHttp, classify
from sync_core.domain.addresses import parse_address_list
from sync_core.domain.folders import DEFAULT_FOLDERS, FolderRole
from sync_core.domain.model import AttachmentSummary, Mailbox, MailMessage
from sync_core.domain.text import html_text, preview
from sync_core.errors import DeltaTokenExpired, MessageNotFound
from sync_core.ports import DeltaPage, RequestUsage

GMAIL_LABELS: Mapping[FolderRole, str] = {FolderRole.INBOX: "INBOX", FolderRole.SENT: "SENT"}
"""Gmail's system label of each folder role."""
_LABEL = {role.value: label for role, label in GMAIL_LABELS.items()}
_ROLE = {label: role for role, label in _LABEL.items()}
EXCLUDED_LABELS = frozenset({"SPAM", "TRASH", "DRAFT", "CHAT"})
PAGE_SIZE = 500  # messages.list and history.list maximum
IGNORED_HEADERS = frozenset({"bcc", "resent-bcc"})
MAX_HEADER_CHARS = 4000
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class GmailMailSource:
    """Reads one mailbox at a time; ``http_for`` gives the GmailHttp (token, backoff) of a mailbox."""

    def __init__(self, http_for: Callable[[Mailbox], GmailHttp], page_size: int = PAGE_SIZE) -> None:
        self._http_for = http_for
        self._page_size = page_size
        self._clients: dict[str, GmailHttp] = {}
        self._lock = threading.Lock()

    def _http(self, mailbox: Mailbox) -> GmailHttp:
        key = f"{mailbox.org_id}/{mailbox.mailbox_id}"
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._http_for(mailbox)
            return self._clients[key]

    @property
    def requests_made(self) -> int:
        with self._lock:
            return sum(client.metrics.requests for client in self._clients.values())

    def requests_for(self, mailbox: Mailbox) -> int:
        with self._lock:
            client = self._clients.get(f"{mailbox.org_id}/{mailbox.mailbox_id}")
        return client.metrics.requests if client is not None else 0

    def usage_for(self, mailbox: Mailbox) -> RequestUsage:
        """The mailbox's GmailHttp counts: requests (a batch once), throttled answers (429, 403 rate
        limits and retried 5xx, batched calls too) and seconds slept in backoff (``ReportsUsage``)."""
        with self._lock:
            client = self._clients.get(f"{mailbox.org_id}/{mailbox.mailbox_id}")
        if client is None:
            return RequestUsage()
        metrics = client.metrics
        return RequestUsage(metrics.requests, metrics.throttled, metrics.waited_seconds)

    # -- delta ------------------------------------------------------------------------------------

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        http = self._http(mailbox)
        label = gmail_label(folder)
        if not link:
            history_id = str(http.get("profile")["historyId"])
            after = int(since.timestamp()) - 1
            return self._list_page(http, folder, label, history_id, after, "")
        kind, start, rest = _parse_link(link)
        if kind == "list":
            after_text, _, token = rest.partition(":")
            return self._list_page(http, folder, label, start, int(after_text), token)
        return self._history_page(http, folder, label, start, self._history(http, label, start, rest), since)

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        """Caught-up folders' history in one batch (an idle poll of INBOX + SENT is one request); a
        listing link is followed on its own."""
        http = self._http(mailbox)
        pages: dict[str, DeltaPage] = {}
        history: list[tuple[str, str, str, str]] = []  # folder, label, start, token
        for folder, link in links.items():
            kind, start, rest = _parse_link(link)
            if kind == "list":
                pages[folder] = self.delta(mailbox, folder, link, mailbox.watermark)
            else:
                history.append((folder, gmail_label(folder), start, rest))
        paths = [f"history?{urlencode(self._history_params(label, start, tok))}" for _, label, start, tok in history]
        for (folder, label, start, _), item in zip(history, http.batch(paths), strict=True):
            if item.status == 404:
                raise DeltaTokenExpired("Gmail 404 for the stored historyId")
            if item.status >= 300:
                raise classify(item.status, item.body)
            pages[folder] = self._history_page(http, folder, label, start, item.body or {}, mailbox.watermark)
        return pages

    def _history_params(self, label: str, start: str, token: str) -> dict[str, str]:
        params = {
            "startHistoryId": start,
            "historyTypes": "messageAdded",
            "labelId": label,
            "maxResults": str(self._page_size),
        }
        if token:
            params["pageToken"] = token
        return params

    def _list_page(  # noqa: PLR0917
        self, http: GmailHttp, folder: str, label: str, history_id: str, after: int, token: str
    ) -> DeltaPage:
        """One page of the label's listing from the watermark. The last page also carries what history
        added since the listing began (from ``history_id``, which was read before its first page), so a
        round ends caught up, as a Graph delta round does; a page token outlives history, so mail that
        arrived meanwhile is never left for the next run to notice."""
        params: dict[str, str] = {"labelIds": label, "q": f"after:{after}", "maxResults": str(self._page_size)}
        if token:
            params["pageToken"] = token
        payload = http.get("messages", params)
        ids = [str(m["id"]) for m in payload.get("messages") or () if m.get("id")]
        since = datetime.fromtimestamp(after + 1, UTC)
        next_token = payload.get("nextPageToken")
        if next_token:
            messages, skipped = self._metadata(http, folder, ids)
            return DeltaPage(
                folder=folder,
                messages=_received_since(messages, since),
                next_link=f"gmail:list:{history_id}:{after}:{next_token}",
                delta_link=None,
                skipped=skipped,
            )
        history = self._history(http, label, history_id, "")
        added, history_skipped = _added_ids(history, label)
        fresh = [mid for mid in added if mid not in set(ids)]
        messages, skipped = self._metadata(http, folder, [*ids, *fresh])
        return self._history_link_page(folder, history_id, history, _received_since(messages, since),
                                       skipped + history_skipped + len(added) - len(fresh))  # fmt: skip

    def _history(self, http: GmailHttp, label: str, start: str, token: str) -> Mapping[str, Any]:
        try:
            payload: Mapping[str, Any] = http.get("history", self._history_params(label, start, token))
        except MessageNotFound:
            raise DeltaTokenExpired("Gmail 404 for the stored historyId") from None
        return payload

    def _history_page(  # noqa: PLR0917
        self, http: GmailHttp, folder: str, label: str, start: str, payload: Mapping[str, Any], since: datetime
    ) -> DeltaPage:
        """New messages of one history page; those received before ``since`` (mail added with an older
        date, such as an import) are left out, as the listing from the watermark would never return them."""
        ids, skipped = _added_ids(payload, label)
        found, missing = self._metadata(http, folder, ids)
        return self._history_link_page(folder, start, payload, _received_since(found, since), skipped + missing)

    @staticmethod
    def _history_link_page(
        folder: str, start: str, payload: Mapping[str, Any], messages: tuple[MailMessage, ...], skipped: int
    ) -> DeltaPage:
        next_token = payload.get("nextPageToken")
        current = str(payload.get("historyId") or start)
        return DeltaPage(
            folder=folder,
            messages=messages,
            next_link=f"gmail:history:{start}:{next_token}" if next_token else None,
            delta_link=None if next_token else f"gmail:history:{current}",
            skipped=skipped,
        )

    def _metadata(self, http: GmailHttp, folder: str, ids: Sequence[str]) -> tuple[list[MailMessage], int]:
        """Headers of these messages in batches; (messages, skipped: deleted since listed, or no Message-ID)."""
        if not ids:
            return [], 0
        items = http.batch([f"messages/{_safe_id(mid)}?format=metadata" for mid in ids])
        messages: list[MailMessage] = []
        skipped = 0
        for item in items:
            if item.status == 404:
                skipped += 1
                continue
            _raise_for(item)
            message = message_from_gmail(item.body or {}, folder)
            if message is None:
                skipped += 1
            else:
                messages.append(message)
        return messages, skipped

    # -- bodies and attachments ---------------------------------------------------------------------

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        """Bodies (text parts) and attachment summaries of matched messages, one batch of ``format=full``
        reads; a message Gmail no longer has keeps its headers and snippet."""
        if not messages:
            return messages
        full = self._full(self._http(mailbox), [m.source_id for m in messages])
        completed = []
        for message in messages:
            item = full.get(message.source_id)
            if item is None:
                completed.append(message)
                continue
            payload = item.get("payload") or {}
            text, truncated = body_text(payload)
            files = tuple(attachment_summaries(payload))
            completed.append(
                replace(
                    message,
                    body_text=text,
                    body_preview=preview(text) if text.strip() else message.body_preview,
                    body_truncated=truncated,
                    attachments=files,
                    has_attachments=bool(files),
                )
            )
        return completed

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        full = self._full(self._http(mailbox), list(dict.fromkeys(source_ids)))
        return {mid: tuple(attachment_summaries(item.get("payload") or {})) for mid, item in full.items()}

    def _full(self, http: GmailHttp, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        if not ids:
            return {}
        items = http.batch([f"messages/{_safe_id(mid)}?format=full" for mid in ids])
        found: dict[str, Mapping[str, Any]] = {}
        for mid, item in zip(ids, items, strict=True):
            if item.status == 404:
                continue
            _raise_for(item)
            found[mid] = item.body or {}
        return found

    # -- explain and folders ------------------------------------------------------------------------

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        """``messages.list`` with ``q=rfc822msgid:`` (spam and trash included, as the copy's label says
        why it was not logged), then the copies' headers; a copy in INBOX or SENT is preferred."""
        http = self._http(mailbox)
        wanted = internet_message_id.strip().strip("<>")
        payload = http.get("messages", {"q": f"rfc822msgid:{wanted}", "includeSpamTrash": "true", "maxResults": "10"})
        ids = [str(m["id"]) for m in payload.get("messages") or () if m.get("id")]
        if not ids:
            return None
        items = http.batch([f"messages/{_safe_id(mid)}?format=metadata" for mid in ids])
        copies: list[MailMessage] = []
        for item in items:
            if item.status >= 300:
                continue
            labels = list((item.body or {}).get("labelIds") or ())
            message = message_from_gmail(item.body or {}, folder_of_labels(labels))
            if message is not None:
                copies.append(message)
        if not copies:
            return None
        return next((m for m in copies if m.folder in DEFAULT_FOLDERS), copies[0])

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        """Every label's id except SPAM, TRASH, DRAFT and CHAT; INBOX and SENT by their roles."""
        payload = self._http(mailbox).get("labels")
        found = []
        for label in payload.get("labels") or ():
            lid = str(label.get("id") or "")
            if lid and lid not in EXCLUDED_LABELS:
                found.append(_ROLE.get(lid, lid))
        return tuple(found)


def gmail_label(folder: str) -> str:
    """Gmail's label id of a folder: the system label of a role, else the folder (a label id) as it is."""
    return _LABEL.get(folder, folder)


def folder_of_labels(labels: Sequence[str]) -> str:
    """The folder a copy is in, for explain: a role when INBOX/SENT, else SPAM/TRASH/DRAFT in the names
    the decisions know (junkemail, deleteditems, drafts), else its first label."""
    for label, folder in (("DRAFT", "drafts"), ("SPAM", "junkemail"), ("TRASH", "deleteditems")):
        if label in labels:
            return folder
    for label in labels:
        if label in _ROLE:
            return _ROLE[label]
    return labels[0] if labels else "archive"


def _added_ids(payload: Mapping[str, Any], label: str) -> tuple[list[str], int]:
    """Ids of the messages a history page adds to ``label`` (first mention only), and how many entries
    it carried that add nothing (another label, spam, trash, a draft, a repeat)."""
    ids: list[str] = []
    skipped = 0
    for record in payload.get("history") or ():
        for added in record.get("messagesAdded") or ():
            message = added.get("message") or {}
            labels = set(message.get("labelIds") or ())
            if not message.get("id") or (labels and (label not in labels or labels & EXCLUDED_LABELS)):
                skipped += 1
            else:
                ids.append(str(message["id"]))
    unique = list(dict.fromkeys(ids))
    return unique, skipped + len(ids) - len(unique)


def _received_since(messages: Sequence[MailMessage], since: datetime) -> tuple[MailMessage, ...]:
    """Mail received at or after ``since`` only; the rest is outside the window, as Graph's filter would
    never return it (not counted)."""
    return tuple(m for m in messages if m.received_at >= since)


def _parse_link(link: str) -> tuple[str, str, str]:
    """(kind, historyId, rest) of a cursor this adapter wrote; anything else is a lost state."""
    prefix, _, body = link.partition(":")
    kind, _, rest = body.partition(":")
    start, _, tail = rest.partition(":")
    if prefix != "gmail" or kind not in ("list", "history") or not start.isdigit():
        raise DeltaTokenExpired("not a Gmail cursor")
    return kind, start, tail


def _safe_id(message_id: str) -> str:
    return message_id if _ID.match(message_id) else quote(message_id, safe="")


def _raise_for(item: BatchItem) -> None:
    if item.status >= 300:
        raise classify(item.status, item.body)


# -- Gmail JSON → MailMessage ------------------------------------------------------------------------


def message_from_gmail(item: Mapping[str, Any], folder: str) -> MailMessage | None:
    """A Gmail message (``format=metadata`` or ``full``) → MailMessage without body; None without a
    Message-ID or an ``internalDate``. Bcc is dropped (a sent copy carries it)."""
    payload = item.get("payload") or {}
    headers = tuple(
        (name, str(h.get("value") or "")[:MAX_HEADER_CHARS])
        for h in payload.get("headers") or ()
        if (name := str(h.get("name") or "").strip().lower()) and name not in IGNORED_HEADERS
    )
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value)
    message_id = first.get("message-id", "").strip()
    internal = str(item.get("internalDate") or "")
    if not message_id or not internal.isdigit() or not item.get("id"):
        return None
    senders = parse_address_list(first.get("from"))
    labels = set(item.get("labelIds") or ())
    return MailMessage(
        source_id=str(item["id"]),
        internet_message_id=message_id,
        subject=first.get("subject", ""),
        sender=senders[0] if senders else None,
        to=parse_address_list([v for n, v in headers if n == "to"]),
        cc=parse_address_list([v for n, v in headers if n == "cc"]),
        received_at=datetime.fromtimestamp(int(internal) / 1000, UTC),
        sent_at=_parse_date(first.get("date")),
        body_preview=preview(_unescape_snippet(str(item.get("snippet") or ""))),
        conversation_id=str(item["threadId"]) if item.get("threadId") else None,
        folder=folder,
        is_draft="DRAFT" in labels,
        headers=headers,
        in_reply_to=next(iter(_message_ids(first.get("in-reply-to", ""))), None),
        references=_message_ids(first.get("references", "")),
    )


def body_text(payload: Mapping[str, Any]) -> tuple[str, bool]:
    """The message's text: its text/plain parts (multipart/alternative prefers plain text), else its
    text/html converted; (text, cut). Attachment parts are never read."""
    found = _part_text(payload)
    return found if found is not None else ("", False)


def _part_text(part: Mapping[str, Any]) -> tuple[str, bool] | None:
    mime = str(part.get("mimeType") or "").lower()
    if _is_attachment(part):
        return None
    if mime == "text/plain":
        return _decoded(part), False
    if mime == "text/html":
        html = html_text(_decoded(part))
        return html.text, html.truncated
    children = list(part.get("parts") or ())
    if mime == "multipart/alternative":
        plain = [t for c in children if str(c.get("mimeType") or "").lower() == "text/plain" if (t := _part_text(c))]
        if plain and plain[0][0].strip():
            return plain[0]
        return next((t for c in reversed(children) if (t := _part_text(c)) and t[0].strip()), None)
    if mime.startswith("multipart/"):
        texts = [t for c in children if (t := _part_text(c)) is not None and t[0].strip()]
        return ("\n\n".join(t for t, _ in texts), any(cut for _, cut in texts)) if texts else None
    return None


def attachment_summaries(payload: Mapping[str, Any]) -> list[AttachmentSummary]:
    """Name, size and type of every attachment part (inline images with a Content-ID excluded)."""
    found = []
    stack = [payload]
    while stack:
        part = stack.pop()
        children = part.get("parts") or ()
        if children:
            stack.extend(reversed(list(children)))
            continue
        if _is_attachment(part) and not _is_inline_image(part):
            body = part.get("body") or {}
            mime = str(part.get("mimeType") or "application/octet-stream")
            found.append(AttachmentSummary(str(part.get("filename") or "untitled"), int(body.get("size") or 0), mime))
    return found


def _part_headers(part: Mapping[str, Any]) -> dict[str, str]:
    return {str(h.get("name") or "").lower(): str(h.get("value") or "") for h in part.get("headers") or ()}


def _is_attachment(part: Mapping[str, Any]) -> bool:
    mime = str(part.get("mimeType") or "").lower()
    disposition = _part_headers(part).get("content-disposition", "").split(";")[0].strip().lower()
    return (
        disposition == "attachment"
        or bool(part.get("filename"))
        or mime in ("message/rfc822", "message/global")
        or (mime.partition("/")[0] not in ("text", "multipart", "message") and bool(mime))
    )


def _is_inline_image(part: Mapping[str, Any]) -> bool:
    headers = _part_headers(part)
    disposition = headers.get("content-disposition", "").split(";")[0].strip().lower()
    image = str(part.get("mimeType") or "").lower().startswith("image/")
    return image and "content-id" in headers and disposition != "attachment"


def _decoded(part: Mapping[str, Any]) -> str:
    data = str((part.get("body") or {}).get("data") or "")
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)) if data else b""
    charset = None
    content_type = _part_headers(part).get("content-type", "")
    match = re.search(r'charset="?([A-Za-z0-9_.:-]+)"?', content_type, re.IGNORECASE)
    if match:
        charset = match.group(1).lower()
    try:
        text = raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _parse_date(value: str | None) -> datetime | None:
    from email.utils import parsedate_to_datetime  # noqa: PLC0415

    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _message_ids(value: str) -> tuple[str, ...]:
    return tuple(t for t in value.replace(",", " ").split() if t.startswith("<") and t.endswith(">") and len(t) > 2)


def _unescape_snippet(snippet: str) -> str:
    import html  # noqa: PLC0415

    return html.unescape(snippet)
