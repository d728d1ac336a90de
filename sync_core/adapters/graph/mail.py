"""The MailSource port on Microsoft Graph: message delta per folder, attachments, folder list, one
message by its Internet Message-ID (explain).

Invariants:
- Every request asks for immutable ids, plain-text bodies and ``odata.maxpagesize``; BCC is never
  selected, so it is never read.
- A folder's first delta request is filtered to ``receivedDateTime ge since``: a new connection or a
  resync after a lost delta token never imports mail older than the mailbox watermark.
- Partial items (updates, ``@removed``) are counted as skipped and never turned into messages.
- Prefetch: when ``delta`` returns a page with a next link, that link is fetched in the background
  while the caller works on the page; a ``delta`` call for exactly that link gets its page, or the exception
  its fetch raised. Safe because it only reads (a next link can be read again: a crash or a discarded
  prefetch re-reads at most one page), and the caller still stores and checkpoints each page in order,
  after asking for it. Bounded: one prefetch per (mailbox, folder), dropped (cancelled if not started) by a
  call for any other link; it goes through the mailbox's GraphHttp (its in-flight limit, wait budget and
  request count: a request is counted once, when sent).
- Attachment listings are single GETs, ``LISTINGS_IN_FLIGHT`` at a time (Graph runs a mailbox's requests
  4 at a time, so a ``$batch`` of them costs one round trip more, and its sub-requests would not share
  GraphHttp's slots with a prefetch).
- Background work runs on this source's own threads (one prefetcher, ``LISTINGS_IN_FLIGHT`` listers),
  reused from call to call (new threads per call grow the process's malloc arenas) and ended when the
  source, built per run, is collected. They hold no reference to the source: a prefetched page is held by
  the source alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

from sync_core.adapters.graph.http import BATCH_LIMIT, GraphHttp, raise_for_batch_item
from sync_core.domain.addresses import normalize_address
from sync_core.domain.decide import EXCLUDED_FOLDERS
from sync_core.domain.folders import DEFAULT_FOLDERS, FolderRole
from sync_core.domain.model import AttachmentSummary, EmailAddress, Mailbox, MailMessage
from sync_core.domain.text import html_text, preview
from sync_core.errors import MessageNotFound
from sync_core.ports import DeltaPage, RequestUsage

MESSAGE_FIELDS = (
    "id,internetMessageId,conversationId,subject,body,bodyPreview,from,toRecipients,ccRecipients,"
    "receivedDateTime,sentDateTime,isDraft,hasAttachments,internetMessageHeaders,parentFolderId"
)
GRAPH_FOLDERS: Mapping[FolderRole, str] = {FolderRole.INBOX: "inbox", FolderRole.SENT: "sentitems"}
"""Graph's well-known folder name of each folder role."""
_GRAPH_NAME = {role.value: name for role, name in GRAPH_FOLDERS.items()}
MAX_PAGE_SIZE = 1000
LISTINGS_IN_FLIGHT = 4  # GraphHttp's (and Graph's) per-mailbox limit
ATTACHMENT_SELECT = {"$select": "name,size,contentType,isInline"}
PREFETCH_THREAD_NAME = "graph-delta-prefetch"
LISTING_THREAD_NAME = "graph-attachment-listing"
# ``find_message`` reads one message the way the sync does (immutable ids, plain-text bodies), unpaged.
FIND_PREFER = ('IdType="ImmutableId"', 'outlook.body-content-type="text"')


def graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GraphMailSource:
    """Reads one mailbox at a time; ``http_for`` gives the GraphHttp (token, limits) of a mailbox."""

    def __init__(self, http_for: Callable[[Mailbox], GraphHttp], page_size: int = MAX_PAGE_SIZE) -> None:
        self._http_for = http_for
        self._prefer = (
            f"odata.maxpagesize={page_size}",
            'IdType="ImmutableId"',
            'outlook.body-content-type="text"',
        )
        self._clients: dict[str, GraphHttp] = {}
        self._lock = threading.Lock()
        self._prefetched: dict[tuple[str, str], tuple[str, Future[requests.Response]]] = {}  # (mailbox, folder)
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix=PREFETCH_THREAD_NAME)
        self._listers = ThreadPoolExecutor(LISTINGS_IN_FLIGHT, thread_name_prefix=LISTING_THREAD_NAME)

    def _http(self, mailbox: Mailbox) -> GraphHttp:
        key = _key(mailbox)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._http_for(mailbox)
            return self._clients[key]

    @property
    def requests_made(self) -> int:
        with self._lock:
            clients = list(self._clients.values())
        return sum(client.metrics.requests for client in clients)

    def requests_for(self, mailbox: Mailbox) -> int:
        with self._lock:
            client = self._clients.get(_key(mailbox))
        return client.metrics.requests if client is not None else 0

    def usage_for(self, mailbox: Mailbox) -> RequestUsage:
        """The mailbox's GraphHttp counts: requests, throttled answers (429 and retried 5xx, in batches
        too) and seconds slept honouring Retry-After or backoff (``ReportsUsage``)."""
        with self._lock:
            client = self._clients.get(_key(mailbox))
        if client is None:
            return RequestUsage()
        metrics = client.metrics
        return RequestUsage(metrics.requests, metrics.throttled, metrics.waited_seconds)

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        http = self._http(mailbox)
        key = (_key(mailbox), folder)
        with self._lock:
            held = self._prefetched.pop(key, None)
        if held is not None and held[0] != link:
            held[1].cancel()  # another link: dropped, and never sent if it has not started
            held = None
        if held is not None:
            payload = held[1].result().json()  # the prefetched page, or the exception its fetch raised
        elif link:
            payload = http.get(link, prefer=self._prefer)
        else:
            params = {"$select": MESSAGE_FIELDS, "$filter": f"receivedDateTime ge {graph_time(since)}"}
            name = _graph_folder(folder)
            payload = http.get(f"{_user_path(mailbox)}/mailFolders('{name}')/messages/delta", params, self._prefer)
        next_link = payload.get("@odata.nextLink")
        if next_link:
            self._prefetch(http, key, str(next_link))
        return page_from_payload(folder, payload)

    def _prefetch(self, http: GraphHttp, key: tuple[str, str], link: str) -> None:
        """The body is decoded by the caller: the prefetcher allocates one buffer, not the page's objects."""
        future = self._prefetcher.submit(http.get_response, link, None, self._prefer)
        with self._lock:
            self._prefetched[key] = (link, future)

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        """One ``$batch`` for up to 20 folders (an idle poll of Inbox + Sent Items is one request)."""
        http = self._http(mailbox)
        pages: dict[str, DeltaPage] = {}
        folders = list(links)
        for start in range(0, len(folders), BATCH_LIMIT):
            chunk = folders[start : start + BATCH_LIMIT]
            requests_ = [
                {"id": str(i), "method": "GET", "url": http.relative(links[folder]),
                 "headers": {"Prefer": ", ".join(self._prefer)}}
                for i, folder in enumerate(chunk)
            ]
            responses = http.batch(requests_)
            for i, folder in enumerate(chunk):
                item = responses[str(i)]
                raise_for_batch_item(item)
                pages[folder] = page_from_payload(folder, item.body)
        return pages

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        """One GET per message, ``LISTINGS_IN_FLIGHT`` at a time. A message Graph no longer has (404: deleted
        or moved since its delta page) is left out of the answer; any other first failure (in
        ``source_ids`` order) is raised once every started listing has ended; listings not started by then
        never start."""
        http = self._http(mailbox)
        ids = list(dict.fromkeys(source_ids))

        def listing(mid: str) -> tuple[AttachmentSummary, ...] | None:
            path = f"{_user_path(mailbox)}/messages/{quote(mid, safe='')}/attachments"
            try:
                payload = http.get(path, ATTACHMENT_SELECT, ('IdType="ImmutableId"',))
            except MessageNotFound:
                return None
            return tuple(_attachment(a) for a in payload.get("value", []) if not a.get("isInline"))

        if len(ids) <= 1:
            found = {mid: listing(mid) for mid in ids}
        else:
            futures = [self._listers.submit(listing, mid) for mid in ids]
            try:
                found = {mid: future.result() for mid, future in zip(ids, futures, strict=True)}
            except BaseException:
                for future in futures:
                    future.cancel()
                wait(futures)
                raise
        return {mid: files for mid, files in found.items() if files is not None}

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        """Delta pages already carry plain-text bodies; attachments are listed by ``attachments``."""
        return messages

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        """One ``$filter`` on ``internetMessageId`` (as given, then in angle brackets), then the ids of the
        well-known folders in one ``$batch`` to name the copies' folders."""
        http = self._http(mailbox)
        user = _user_path(mailbox)
        wanted = internet_message_id
        candidates = [wanted] if wanted.startswith("<") else [wanted, f"<{wanted}>"]
        items: list[dict[str, Any]] = []
        for candidate in candidates:
            params = {
                "$filter": "internetMessageId eq '{}'".format(candidate.replace("'", "''")),
                "$select": MESSAGE_FIELDS,
                "$top": "10",
            }
            try:
                items = list(http.get(f"{user}/messages", params, FIND_PREFER).get("value", []))
            except MessageNotFound:
                return None
            if items:
                break
        if not items:
            return None
        folders = _well_known_folders(http, user)
        copies: list[MailMessage] = []
        for item in items:
            folder_id = str(item.get("parentFolderId") or "")
            message = message_from_graph(item, folders.get(folder_id, folder_id))
            if message is not None:
                copies.append(message)
        if not copies:
            return None
        return next((m for m in copies if m.folder in DEFAULT_FOLDERS), copies[0])

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        """Every folder (child folders included) except system ones, by id."""
        http = self._http(mailbox)
        excluded = set()
        for name in EXCLUDED_FOLDERS:
            with suppress(MessageNotFound):  # a mailbox need not have every well-known folder
                excluded.add(str(http.get(f"{_user_path(mailbox)}/mailFolders('{name}')", {"$select": "id"})["id"]))
        result: list[str] = []
        pending = [f"{_user_path(mailbox)}/mailFolders?$select=id,childFolderCount&includeHiddenFolders=false"]
        while pending:
            url: str | None = pending.pop()
            while url:
                payload = http.get(url)
                for folder in payload.get("value", []):
                    fid = str(folder["id"])
                    if fid in excluded:
                        continue
                    result.append(fid)
                    if folder.get("childFolderCount"):
                        pending.append(f"{_user_path(mailbox)}/mailFolders/{fid}/childFolders?$select=id,childFolderCount")
                url = payload.get("@odata.nextLink")
        return tuple(result)


def _graph_folder(folder: str) -> str:
    """Graph's name of a folder: its well-known name for a role, else the folder id as it is."""
    return _GRAPH_NAME.get(folder, folder)


def _well_known_folders(http: GraphHttp, user: str) -> dict[str, str]:
    """Folder id → role or well-known name (inbox, sentitems, drafts, junkemail…) in one ``$batch``;
    folders the mailbox does not have are left out."""
    by_name = {graph_name: role.value for role, graph_name in GRAPH_FOLDERS.items()}
    names = sorted({*by_name, *EXCLUDED_FOLDERS})
    found: dict[str, str] = {}
    for start in range(0, len(names), BATCH_LIMIT):
        chunk = names[start : start + BATCH_LIMIT]
        requests_ = [
            {"id": str(i), "method": "GET", "url": f"/{user}/mailFolders('{name}')?$select=id",
             "headers": {"Prefer": 'IdType="ImmutableId"'}}
            for i, name in enumerate(chunk)
        ]  # fmt: skip
        responses = http.batch(requests_)
        for i, name in enumerate(chunk):
            item = responses.get(str(i))
            if item is not None and item.status < 300 and isinstance(item.body, dict) and item.body.get("id"):
                found[str(item.body["id"])] = by_name.get(name, name)
    return found


def _key(mailbox: Mailbox) -> str:
    return f"{mailbox.org_id}/{mailbox.mailbox_id}"


def _user_path(mailbox: Mailbox) -> str:
    return f"users/{quote(mailbox.graph_user_id or mailbox.address, safe='@')}"


def page_from_payload(folder: str, payload: Mapping[str, Any]) -> DeltaPage:
    messages: list[MailMessage] = []
    skipped = 0
    for item in payload.get("value", []):
        message = message_from_graph(item, folder)
        if message is None:
            skipped += 1
        else:
            messages.append(message)
    return DeltaPage(
        folder=folder,
        messages=tuple(messages),
        next_link=payload.get("@odata.nextLink"),
        delta_link=payload.get("@odata.deltaLink"),
        skipped=skipped,
    )


def message_from_graph(item: Mapping[str, Any], folder: str) -> MailMessage | None:
    """A complete Graph message → MailMessage; None for removed or partial (updated) items."""
    if "@removed" in item or not item.get("internetMessageId") or not item.get("receivedDateTime"):
        return None
    headers = tuple(
        (str(h.get("name", "")).lower(), str(h.get("value", ""))) for h in item.get("internetMessageHeaders") or ()
    )
    body = item.get("body") or {}
    content = str(body.get("content") or "")
    html = html_text(content) if str(body.get("contentType", "")).lower() == "html" else None
    text = html.text if html is not None else content
    header_map = dict(headers)
    return MailMessage(
        source_id=str(item["id"]),
        internet_message_id=str(item["internetMessageId"]).strip(),
        subject=str(item.get("subject") or ""),
        sender=_address(item.get("from")),
        to=_addresses(item.get("toRecipients")),
        cc=_addresses(item.get("ccRecipients")),
        received_at=_parse_time(str(item["receivedDateTime"])),
        sent_at=_parse_time(str(item["sentDateTime"])) if item.get("sentDateTime") else None,
        body_text=text,
        body_preview=preview(str(item.get("bodyPreview") or text)),
        body_truncated=html is not None and html.truncated,
        conversation_id=item.get("conversationId"),
        folder=folder,
        is_draft=bool(item.get("isDraft")),
        has_attachments=bool(item.get("hasAttachments")),
        headers=headers,
        in_reply_to=next(iter(_message_ids(header_map.get("in-reply-to", ""))), None),
        references=_message_ids(header_map.get("references", "")),
    )


def _attachment(item: Mapping[str, Any]) -> AttachmentSummary:
    return AttachmentSummary(
        str(item.get("name") or ""), int(item.get("size") or 0), str(item.get("contentType") or "")
    )


def _address(recipient: Any) -> EmailAddress | None:
    if not isinstance(recipient, Mapping):
        return None
    email = recipient.get("emailAddress") or {}
    address = normalize_address(str(email.get("address") or ""))
    return EmailAddress(address, str(email.get("name") or "")) if address else None


def _addresses(recipients: Any) -> tuple[EmailAddress, ...]:
    found = (_address(r) for r in recipients or ())
    return tuple(a for a in found if a is not None)


def _message_ids(value: str) -> tuple[str, ...]:
    ids = []
    for token in value.replace(",", " ").split():
        if token.startswith("<") and token.endswith(">") and len(token) > 2:
            ids.append(token)
    return tuple(ids)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
