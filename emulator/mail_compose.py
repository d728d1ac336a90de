"""Building and changing stored messages from control-API fields (the mail emulator's "transport").

Invariants:

* ``conversationId`` is per mailbox: a message joins the conversation of a message it answers
  (``in_reply_to``/``references`` naming an internetMessageId already in *this* mailbox) or of an explicit
  ``conversation_topic`` seen before in this mailbox; otherwise it starts a new one. The same thread thus
  has different conversationIds in different mailboxes, as clients must expect.
* ``conversationIndex`` follows Exchange's layout: a 22-byte header (reserved byte, 5 bytes of FILETIME,
  a GUID) for a new conversation, plus 5 bytes per reply level.
* Messages delivered as MIME keep exactly the MIME's headers; others get Exchange-like generated
  transport headers followed by the caller's custom headers.
"""

from __future__ import annotations

import base64
import re
import secrets
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from .core import now_utc
from .mail_control import ControlError
from .mail_model import (
    Attachment,
    Folder,
    Mailbox,
    Message,
    address_list_header,
    format_address,
    looks_like_html,
    new_change_key,
    new_id,
    new_immutable_id,
    new_rest_id,
    parse_iso,
    recipient,
    recipients,
)

# Control field name -> Graph property, for ``MailStore.update``.
UPDATABLE = {
    "isread": "isRead",
    "is_read": "isRead",
    "subject": "subject",
    "body": "body",
    "importance": "importance",
    "categories": "categories",
    "flag": "flag",
    "inferenceclassification": "inferenceClassification",
    "inference_classification": "inferenceClassification",
    "isdraft": "isDraft",
    "is_draft": "isDraft",
}


def compose_message(box: Mailbox, folder: Folder, fields: dict[str, Any], raw_mime: bytes | None = None) -> Message:
    """A new message for ``folder`` of ``box`` from control fields (see ``MailStore.deliver``).

    Registers the message's thread in ``box`` but does not store the message or log a change.
    """
    is_draft = bool(fields.get("is_draft", False))
    now = now_utc()
    received = time_field(fields, "received", now)
    sent = time_field(fields, "sent", received)
    sender_from = recipient(fields.get("from") or fields.get("from_"))
    address = (sender_from or {}).get("emailAddress", {}).get("address", "")
    internet_message_id = str(fields.get("internet_message_id") or new_internet_message_id(address.partition("@")[2]))
    in_reply_to = fields.get("in_reply_to")
    references = fields.get("references") or []
    references = references.split() if isinstance(references, str) else [str(r) for r in references]
    body = str(fields.get("body", ""))
    body_type = str(fields.get("body_type") or ("html" if looks_like_html(body) else "text")).lower()
    if body_type not in ("html", "text"):
        raise ControlError(400, "body_type must be 'html' or 'text'")
    attachments = [_attachment(a, now) for a in fields.get("attachments", [])]
    conversation_id, index = _thread(
        box, internet_message_id, in_reply_to, references, fields.get("conversation_topic")
    )
    msg = Message(
        immutable_id=new_immutable_id(),
        rest_id=new_rest_id(),
        folder_id=folder.id,
        change_key=new_change_key(),
        created=min(received, now),
        last_modified=min(received, now),
        received=received,
        sent=sent,
        internet_message_id=internet_message_id,
        subject=str(fields.get("subject", "")),
        body=body,
        body_type=body_type,  # type: ignore[arg-type]
        conversation_id=conversation_id,
        conversation_index=index,
        sender=recipient(fields.get("sender")) or sender_from,
        from_=sender_from,
        to=recipients(fields.get("to")),
        cc=recipients(fields.get("cc")),
        bcc=recipients(fields.get("bcc")),
        reply_to=recipients(fields.get("reply_to")),
        importance=str(fields.get("importance", "normal")).lower(),
        is_delivery_receipt_requested=bool(fields.get("is_delivery_receipt_requested", False)),
        is_read_receipt_requested=bool(fields.get("is_read_receipt_requested", False)),
        is_read=bool(fields.get("is_read", folder.well_known in ("sentitems", "drafts"))),
        is_draft=is_draft,
        inference_classification=str(fields.get("inference_classification", "focused")),
        flag=flag_value(fields.get("flag")),
        categories=[str(c) for c in fields.get("categories", [])],
        attachments=attachments,
        mime=raw_mime,
    )
    if raw_mime is not None:
        msg.headers = [dict(h) for h in fields.get("headers", [])]
    else:
        msg.headers = _generated_headers(msg, folder, in_reply_to, references, fields)
    box.messages[msg.immutable_id] = msg
    return msg


def time_field(fields: dict[str, Any], name: str, default: datetime) -> datetime:
    raw = fields.get(name) or fields.get(f"{name}_date_time")
    if not raw:
        return default
    moment = parse_iso(str(raw))
    if moment is None:
        raise ControlError(400, f"{name} must be an ISO 8601 date-time, got {raw!r}")
    return moment.replace(microsecond=0)


def new_internet_message_id(domain: str) -> str:
    local = base64.b32encode(secrets.token_bytes(15)).decode("ascii")
    host = "EMLPR01MB" + str(secrets.randbelow(9000) + 1000) + ".prod.outlook.example"
    return f"<{local}@{domain or host}>" if domain else f"<{local}@{host}>"


def _thread(
    box: Mailbox, internet_message_id: str, in_reply_to: Any, references: list[str], topic: Any
) -> tuple[str, bytes]:
    """This mailbox's conversationId and conversationIndex for a new message (see module docstring).

    A second copy of the same internetMessageId in a mailbox (e.g. sent to oneself) shares the first's.
    """
    if internet_message_id in box.threads:
        return box.threads[internet_message_id]
    parent = None
    for ref in ([str(in_reply_to)] if in_reply_to else []) + list(reversed(references)):
        if ref.strip() in box.threads:
            parent = box.threads[ref.strip()]
            break
    topic_key = str(topic).strip().lower() if topic else None
    if parent is None and topic_key and topic_key in box.topics:
        parent = box.topics[topic_key]
    if parent is not None:
        conversation_id, index = parent[0], parent[1] + secrets.token_bytes(5)
    else:
        conversation_id = new_id("AAQkADAwATM0MDAAMS1h", 16)
        ticks = int((now_utc() - datetime(1601, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 10
        index = b"\x01" + struct.pack(">Q", ticks)[:5] + uuid.uuid4().bytes
    box.threads.setdefault(internet_message_id, (conversation_id, index))
    if topic_key:
        box.topics.setdefault(topic_key, (conversation_id, index[:22]))
    return conversation_id, index


def _generated_headers(
    msg: Message, folder: Folder, in_reply_to: Any, references: list[str], fields: dict[str, Any]
) -> list[dict[str, str]]:
    """Transport headers as Exchange shows them in ``internetMessageHeaders``, then any custom ones."""
    headers: list[tuple[str, str]] = []
    sender_domain = (msg.from_ or {}).get("emailAddress", {}).get("address", "").partition("@")[2] or "example.com"
    date = msg.sent.strftime("%a, %d %b %Y %H:%M:%S +0000")
    if folder.well_known not in ("sentitems", "drafts", "outbox"):
        headers.append(
            (
                "Received",
                f"from mail.{sender_domain} (192.0.2.25) by EMLPR01MB0001.prod.outlook.example "
                f"with HTTPS; {msg.received.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
            )
        )
    if msg.from_:
        headers.append(("From", format_address(msg.from_)))
    for name, values in (("To", msg.to), ("CC", msg.cc)):
        if values:
            headers.append((name, address_list_header(values)))
    topic = re.sub(r"^\s*((re|fw|fwd|aw|wg)\s*:\s*)+", "", msg.subject, flags=re.IGNORECASE)
    headers += [
        ("Subject", msg.subject),
        ("Thread-Topic", str(fields.get("conversation_topic") or topic)),
        ("Thread-Index", base64.b64encode(msg.conversation_index).decode("ascii")),
        ("Date", date),
        ("Message-ID", msg.internet_message_id),
    ]
    if in_reply_to:
        headers.append(("In-Reply-To", str(in_reply_to)))
    if references:
        headers.append(("References", " ".join(references)))
    content_type = "text/html" if msg.body_type == "html" else "text/plain"
    headers += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'{content_type}; charset="utf-8"'),
        ("X-MS-Has-Attach", "yes" if any(not a.is_inline for a in msg.attachments) else ""),
        ("X-MS-Exchange-Organization-SCL", "1"),
    ]
    custom = [{"name": str(h["name"]), "value": str(h["value"])} for h in fields.get("headers", [])]
    return [{"name": n, "value": v} for n, v in headers] + custom


def _attachment(spec: dict[str, Any], moment: datetime) -> Attachment:
    content = base64.b64decode(spec["content_base64"]) if spec.get("content_base64") else None
    size = int(spec.get("size", len(content) if content is not None else 0))
    return Attachment(
        id=new_id("AAMkADAwATM0MDAAMS1hBGAAABEgAQ", 24),
        name=str(spec.get("name", "attachment")),
        content_type=str(spec.get("content_type", "application/octet-stream")),
        size=size,
        is_inline=bool(spec.get("is_inline", False)),
        last_modified=moment,
        content=content,
        content_id=spec.get("content_id"),
    )


def flag_value(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return {"flagStatus": str(value) if value else "notFlagged"}


def apply_change(msg: Message, prop: str, value: Any, body_type: Any) -> None:
    if prop == "isRead":
        msg.is_read = bool(value)
    elif prop == "isDraft":
        msg.is_draft = bool(value)
    elif prop == "subject":
        msg.subject = str(value)
    elif prop == "body":
        content = value.get("content", "") if isinstance(value, dict) else str(value)
        kind = (value.get("contentType") if isinstance(value, dict) else body_type) or (
            "html" if looks_like_html(content) else "text"
        )
        msg.body, msg.body_type = content, "html" if str(kind).lower() == "html" else "text"
    elif prop == "importance":
        msg.importance = str(value).lower()
    elif prop == "categories":
        msg.categories = [str(c) for c in value]
    elif prop == "flag":
        msg.flag = flag_value(value)
    elif prop == "inferenceClassification":
        msg.inference_classification = str(value)
