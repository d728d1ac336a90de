"""Mailbox data model of the Graph emulator: folders, messages, attachments and their JSON shapes.

Invariants:

* A mailbox is keyed by the directory user id; folder ids are opaque and stable for the mailbox's life.
* A message has an immutable id (stable across moves inside the mailbox) and a REST id that changes on
  every move. Both are URL-safe base64 (no ``/``), so they can sit in a URL path unquoted.
* ``changeKey`` (and so ``@odata.etag``) changes on every modification, ``lastModifiedDateTime`` too.
* A message's text rendering (text body, ``bodyPreview``) is cached on it, keyed by the identity of the
  ``body`` string and by ``body_type``: assigning either (any update path) invalidates it.
* Nothing here locks or does I/O: :class:`emulator.mail.MailStore` owns the lock.
"""

from __future__ import annotations

import base64
import html
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import quote

from .core import graph_time

# Well-known folder name -> display name. Visible top-level folders are listed by ``GET mailFolders``.
VISIBLE_TOP_LEVEL = {
    "archive": "Archive",
    "conversationhistory": "Conversation History",
    "deleteditems": "Deleted Items",
    "drafts": "Drafts",
    "inbox": "Inbox",
    "junkemail": "Junk Email",
    "outbox": "Outbox",
    "sentitems": "Sent Items",
    "syncissues": "Sync Issues",
}
SYNC_ISSUES_CHILDREN = {
    "conflicts": "Conflicts",
    "localfailures": "Local Failures",
    "serverfailures": "Server Failures",
}
# Addressable by name but hidden (isHidden) or outside the visible tree.
HIDDEN_FOLDERS = {
    "clutter": "Clutter",
    "recoverableitemsdeletions": "Deletions",
    "scheduled": "Scheduled",
    "searchfolders": "Finder",
}
ROOT = "msgfolderroot"
WELL_KNOWN_NAMES = frozenset({ROOT, *VISIBLE_TOP_LEVEL, *SYNC_ISSUES_CHILDREN, *HIDDEN_FOLDERS})

_ID_SHAPE = re.compile(r"^AA[A-Za-z0-9_\-]{14,}=*$")


def new_id(prefix: str, size: int = 30) -> str:
    """An opaque, URL-safe, Exchange-looking id such as ``AAMkAGI2...AAA=``."""
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(size)).decode("ascii")


def new_folder_id() -> str:
    return new_id("AAMkADAwATM0MDAAMS1h", 24)


def new_rest_id() -> str:
    return new_id("AAMkADAwATM0MDAAMS1hBGAAA", 45)


def new_immutable_id() -> str:
    return new_id("AAkALgAAAAAAHYQDEapmEc2byACqAC", 45)


def parse_iso(value: str) -> datetime | None:
    """An ISO 8601 date-time (``Z`` or offset; naive means UTC) in UTC, or None if unparseable."""
    try:
        moment = datetime.fromisoformat(value.strip().strip("'").replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def looks_like_id(value: str) -> bool:
    """True if ``value`` has the shape of an Exchange id (else Graph answers ``ErrorInvalidIdMalformed``)."""
    return bool(_ID_SHAPE.match(value))


@dataclass
class Folder:
    id: str
    display_name: str
    parent_id: str | None
    well_known: str | None = None
    is_hidden: bool = False


@dataclass
class Attachment:
    """A file attachment. ``content`` None means synthetic bytes of ``size`` (generated on demand)."""

    id: str
    name: str
    content_type: str
    size: int
    is_inline: bool
    last_modified: datetime
    content: bytes | None = None
    content_id: str | None = None

    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        pattern = f"{self.name} ".encode() or b"x"
        return (pattern * (self.size // len(pattern) + 1))[: self.size]


@dataclass
class Message:
    """A message as the store keeps it; :func:`render_message` turns it into Graph JSON."""

    immutable_id: str
    rest_id: str
    folder_id: str
    change_key: str
    created: datetime
    last_modified: datetime
    received: datetime
    sent: datetime
    internet_message_id: str
    subject: str
    body: str
    body_type: Literal["html", "text"]
    conversation_id: str
    conversation_index: bytes
    sender: dict[str, Any] | None = None
    from_: dict[str, Any] | None = None
    to: list[dict[str, Any]] = field(default_factory=list)
    cc: list[dict[str, Any]] = field(default_factory=list)
    bcc: list[dict[str, Any]] = field(default_factory=list)
    reply_to: list[dict[str, Any]] = field(default_factory=list)
    importance: str = "normal"
    is_delivery_receipt_requested: bool = False
    is_read_receipt_requested: bool = False
    is_read: bool = False
    is_draft: bool = False
    inference_classification: str = "focused"
    flag: dict[str, Any] = field(default_factory=lambda: {"flagStatus": "notFlagged"})
    categories: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    mime: bytes | None = None
    text_cache: TextRendering | None = field(default=None, init=False, repr=False, compare=False)

    def touch(self, moment: datetime) -> None:
        """Record a modification: new changeKey and lastModifiedDateTime."""
        self.change_key = new_change_key()
        self.last_modified = moment

    def header(self, name: str) -> str | None:
        for item in self.headers:
            if item["name"].lower() == name.lower():
                return item["value"]
        return None


def new_change_key() -> str:
    return "CQAAABYAAA" + base64.b64encode(secrets.token_bytes(18)).decode("ascii")


# --------------------------------------------------------------------------------------------------
# Recipients


def recipient(value: Any) -> dict[str, Any] | None:
    """Normalise ``"Name <a@b>"``, ``"a@b"``, ``{"address","name"}`` or a Graph recipient to Graph shape."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        inner = value.get("emailAddress", value)
        address = str(inner.get("address", ""))
        name = inner.get("name")
    else:
        name, address = parseaddr(str(value))
    return {"emailAddress": {"name": name or address, "address": address}}


def recipients(values: Any) -> list[dict[str, Any]]:
    if values is None:
        return []
    if isinstance(values, (str, dict)):
        values = [values]
    return [r for r in (recipient(v) for v in values) if r is not None]


def format_address(rcpt: dict[str, Any]) -> str:
    inner = rcpt["emailAddress"]
    name, address = inner.get("name") or "", inner.get("address") or ""
    if name and name != address:
        quoted = name if re.fullmatch(r"[\w .'-]+", name) else '"' + name.replace('"', '\\"') + '"'
        return f"{quoted} <{address}>"
    return address


def address_list_header(values: list[dict[str, Any]]) -> str:
    return ", ".join(format_address(r) for r in values)


def parse_address_header(value: str | None) -> list[dict[str, Any]]:
    if not value:
        return []
    return [{"emailAddress": {"name": n or a, "address": a}} for n, a in getaddresses([value]) if a]


# --------------------------------------------------------------------------------------------------
# Bodies


# Runs of [ \t\r\n] other than a lone space (replacing a lone space by a space would change nothing).
_DATA_WHITESPACE = re.compile(r"(?: [ \t\r\n]|[\t\r\n])[ \t\r\n]*")
PREVIEW_LENGTH = 255
_PREVIEW_WINDOW = 512  # first slice of the text read for a preview; doubled while too short


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset({"p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "pre"})
    _SKIP = frozenset({"head", "style", "script", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "br" or tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            needs = "\n" in data or "  " in data or "\t" in data or "\r" in data
            self.parts.append(_DATA_WHITESPACE.sub(" ", data) if needs else data)  # [ \t\r\n]+ -> one space


def html_to_text(markup: str) -> str:
    """Plain text of an HTML body: tags dropped, entities decoded, block elements as line breaks."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    text = "\r\n".join(lines).replace("\r\n", "\n")
    if "\n\n\n" in text:
        text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip().replace("\n", "\r\n")


def text_to_html(text: str) -> str:
    """Exchange's HTML rendering of a plain-text body."""
    escaped = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\r\n")
    return (
        '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n'
        '<meta content="text/html; charset=us-ascii">\r\n</head>\r\n<body>\r\n<div>' + escaped + "</div>\r\n"
        "</body>\r\n</html>\r\n"
    )


def collapsed_prefix(text: str, length: int = PREVIEW_LENGTH) -> str:
    """``re.sub(r"\\s+", " ", text).strip()[:length]``, reading only a prefix of ``text`` when that suffices.

    ``" ".join(t.split())`` is that collapse (``\\s`` and ``str.split`` agree on whitespace). Collapsing a
    prefix of ``text`` gives a prefix of the whole collapsed text (a cut word or whitespace run only ends it
    early), so once a prefix collapses to at least ``length`` characters, its first ``length`` are the answer.
    """
    window = _PREVIEW_WINDOW
    while window < len(text):
        head = " ".join(text[:window].split())
        if len(head) >= length:
            return head[:length]
        window *= 2
    return " ".join(text.split())[:length]


@dataclass(frozen=True)
class TextRendering:
    """A message's text body and preview, valid while ``msg.body is body`` and ``msg.body_type == body_type``."""

    body: str
    body_type: str
    text: str
    preview: str


def text_rendering(msg: Message) -> TextRendering:
    """The cached text rendering of ``msg``, recomputed when its body or body type was replaced."""
    cached = msg.text_cache
    if cached is None or cached.body is not msg.body or cached.body_type != msg.body_type:
        text = html_to_text(msg.body) if msg.body_type == "html" else msg.body
        cached = msg.text_cache = TextRendering(msg.body, msg.body_type, text, collapsed_prefix(text))
    return cached


def body_text(msg: Message) -> str:
    return text_rendering(msg).text


def body_preview(msg: Message) -> str:
    """First 255 characters of the text body, whitespace collapsed."""
    return text_rendering(msg).preview


def looks_like_html(text: str) -> bool:
    return bool(re.search(r"<(html|body|div|p|br|span|table|a|b|i)\b[^>]*>", text, re.IGNORECASE))


# --------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class View:
    """Per-request rendering choices: which id the client sees and the body format it asked for."""

    immutable_ids: bool = False
    body_format: Literal["html", "text"] = "html"


def shown_id(msg: Message, view: View) -> str:
    return msg.immutable_id if view.immutable_ids else msg.rest_id


def _body(msg: Message, view: View) -> dict[str, str]:
    if view.body_format == "text":
        return {"contentType": "text", "content": body_text(msg)}
    content = msg.body if msg.body_type == "html" else text_to_html(msg.body)
    return {"contentType": "html", "content": content}


def _web_link(msg: Message, view: View) -> str:
    return (
        "https://outlook.office365.com/owa/?ItemID="
        + quote(shown_id(msg, view), safe="")
        + "&exvsurl=1&viewmodel=ReadMessageItem"
    )


# Graph property name -> renderer, in the order Graph emits them.
MESSAGE_PROPERTIES: dict[str, Any] = {
    "createdDateTime": lambda m, v: graph_time(m.created),
    "lastModifiedDateTime": lambda m, v: graph_time(m.last_modified),
    "changeKey": lambda m, v: m.change_key,
    "categories": lambda m, v: list(m.categories),
    "receivedDateTime": lambda m, v: graph_time(m.received),
    "sentDateTime": lambda m, v: graph_time(m.sent),
    "hasAttachments": lambda m, v: any(not a.is_inline for a in m.attachments),
    "internetMessageId": lambda m, v: m.internet_message_id,
    "subject": lambda m, v: m.subject,
    "bodyPreview": lambda m, v: body_preview(m),
    "importance": lambda m, v: m.importance,
    "parentFolderId": lambda m, v: m.folder_id,
    "conversationId": lambda m, v: m.conversation_id,
    "conversationIndex": lambda m, v: base64.b64encode(m.conversation_index).decode("ascii"),
    "isDeliveryReceiptRequested": lambda m, v: m.is_delivery_receipt_requested,
    "isReadReceiptRequested": lambda m, v: m.is_read_receipt_requested,
    "isRead": lambda m, v: m.is_read,
    "isDraft": lambda m, v: m.is_draft,
    "webLink": _web_link,
    "inferenceClassification": lambda m, v: m.inference_classification,
    "body": _body,
    "sender": lambda m, v: m.sender,
    "from": lambda m, v: m.from_,
    "toRecipients": lambda m, v: list(m.to),
    "ccRecipients": lambda m, v: list(m.cc),
    "bccRecipients": lambda m, v: list(m.bcc),
    "replyTo": lambda m, v: list(m.reply_to),
    "flag": lambda m, v: dict(m.flag),
    # Only on $select:
    "uniqueBody": _body,
    "internetMessageHeaders": lambda m, v: [dict(h) for h in m.headers],
}
SELECT_ONLY = frozenset({"uniqueBody", "internetMessageHeaders"})
DEFAULT_PROPERTIES = tuple(p for p in MESSAGE_PROPERTIES if p not in SELECT_ONLY)
_CANONICAL = {name.lower(): name for name in (*MESSAGE_PROPERTIES, "id")}


def parse_select(raw: str | None, entity: str = "message") -> tuple[str, ...] | str | None:
    """``$select`` -> canonical property names; a ``str`` result is the unknown name (an error)."""
    if raw is None or raw.strip() == "":
        return None
    names: list[str] = []
    for part in raw.split(","):
        key = part.strip()
        if key == "*":
            return None
        canonical = _CANONICAL.get(key.lower())
        if canonical is None:
            return key
        if canonical != "id" and canonical not in names:
            names.append(canonical)
    return tuple(names)


def render_message(
    msg: Message, view: View, select: tuple[str, ...] | None = None, *, odata_type: bool = False
) -> dict[str, Any]:
    """Graph JSON of a message: ``@odata.etag``, ``id`` and the selected (or default) properties."""
    out: dict[str, Any] = {}
    if odata_type:
        out["@odata.type"] = "#microsoft.graph.message"
    out["@odata.etag"] = f'W/"{msg.change_key}"'
    out["id"] = shown_id(msg, view)
    for name in select if select is not None else DEFAULT_PROPERTIES:
        out[name] = MESSAGE_PROPERTIES[name](msg, view)
    return out


ATTACHMENT_PROPERTIES = ("lastModifiedDateTime", "name", "contentType", "size", "isInline", "contentId", "contentBytes")
_ATTACHMENT_CANONICAL = {name.lower(): name for name in (*ATTACHMENT_PROPERTIES, "id", "contentLocation")}


def parse_attachment_select(raw: str | None) -> tuple[str, ...] | str | None:
    if raw is None or raw.strip() == "":
        return None
    names: list[str] = []
    for part in raw.split(","):
        canonical = _ATTACHMENT_CANONICAL.get(part.strip().lower())
        if canonical is None:
            return part.strip()
        if canonical != "id":
            names.append(canonical)
    return tuple(names)


def render_attachment(att: Attachment, select: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``#microsoft.graph.fileAttachment`` JSON; ``contentBytes`` unless ``$select`` leaves it out."""
    values: dict[str, Any] = {
        "lastModifiedDateTime": graph_time(att.last_modified),
        "name": att.name,
        "contentType": att.content_type,
        "size": att.size,
        "isInline": att.is_inline,
        "contentId": att.content_id,
        "contentLocation": None,
        "contentBytes": None,
    }
    out: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "@odata.mediaContentType": att.content_type,
    }
    out["id"] = att.id
    for name in select if select is not None else ATTACHMENT_PROPERTIES:
        if name == "contentBytes":
            values[name] = base64.b64encode(att.data()).decode("ascii")
        out[name] = values[name]
    return out


def render_folder(folder: Folder, child_count: int, total: int, unread: int, size: int) -> dict[str, Any]:
    return {
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": folder.parent_id,
        "childFolderCount": child_count,
        "unreadItemCount": unread,
        "totalItemCount": total,
        "sizeInBytes": size,
        "isHidden": folder.is_hidden,
    }


# --------------------------------------------------------------------------------------------------
# Mailbox


@dataclass(frozen=True)
class ChangeEntry:
    """One change in a folder's log. ``rest_id`` is the message's REST id in that folder at that moment."""

    seq: int
    kind: Literal["created", "updated", "deleted"]
    immutable_id: str
    rest_id: str
    props: frozenset[str] = frozenset()


@dataclass
class Mailbox:
    """One user's mailbox: folders, messages and a per-folder change log ordered by ``seq``.

    ``generation`` is the sync-state generation; delta tokens minted under an older one are gone (410).
    ``threads`` maps internetMessageId -> (conversationId, conversationIndex) for this mailbox only.
    """

    user_id: str
    tenant_id: str
    folders: dict[str, Folder] = field(default_factory=dict)
    well_known: dict[str, str] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    rest_index: dict[str, str] = field(default_factory=dict)
    logs: dict[str, list[ChangeEntry]] = field(default_factory=dict)
    threads: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    topics: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    seq: int = 0
    generation: int = 1

    @classmethod
    def create(cls, user_id: str, tenant_id: str) -> Mailbox:
        box = cls(user_id, tenant_id)
        root = box._add_folder("Top of Information Store", None, ROOT, hidden=False)
        non_ipm = new_folder_id()  # the non-IPM subtree root (never addressable)
        for name, display in VISIBLE_TOP_LEVEL.items():
            box._add_folder(display, root.id, name)
        sync_issues = box.well_known["syncissues"]
        for name, display in SYNC_ISSUES_CHILDREN.items():
            box._add_folder(display, sync_issues, name)
        for name, display in HIDDEN_FOLDERS.items():
            box._add_folder(display, non_ipm, name, hidden=True)
        return box

    def _add_folder(self, display: str, parent_id: str | None, well_known: str | None, hidden: bool = False) -> Folder:
        folder = Folder(new_folder_id(), display, parent_id, well_known, hidden)
        self.folders[folder.id] = folder
        if well_known:
            self.well_known[well_known] = folder.id
        return folder

    def add_folder(self, display: str, parent_id: str) -> Folder:
        return self._add_folder(display, parent_id, None)

    def folder(self, key: str) -> Folder | None:
        """A folder by well-known name (case-insensitive) or by id (case-sensitive)."""
        folder_id = self.well_known.get(key.lower(), key)
        return self.folders.get(folder_id)

    def children(self, folder_id: str) -> list[Folder]:
        return [f for f in self.folders.values() if f.parent_id == folder_id]

    def message(self, key: str) -> Message | None:
        """A message by immutable id or by its current REST id (an old REST id no longer resolves)."""
        msg = self.messages.get(key)
        if msg is None and key in self.rest_index:
            msg = self.messages.get(self.rest_index[key])
        return msg

    def in_folder(self, folder_id: str) -> list[Message]:
        return [m for m in self.messages.values() if m.folder_id == folder_id]

    def record(
        self,
        kind: Literal["created", "updated", "deleted"],
        msg: Message,
        folder_id: str,
        props: frozenset[str] = frozenset(),
    ) -> ChangeEntry:
        self.seq += 1
        entry = ChangeEntry(self.seq, kind, msg.immutable_id, msg.rest_id, props)
        self.logs.setdefault(folder_id, []).append(entry)
        return entry
