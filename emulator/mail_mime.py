"""RFC 822 for the mail emulator: build ``$value`` MIME from a stored message, parse delivered MIME.

Both directions use only the standard-library :mod:`email` package. A message delivered as MIME keeps
its raw bytes, and ``$value`` returns those bytes unchanged; any other message gets MIME generated from
its stored fields (attachments included, inline ones as ``multipart/related`` parts with Content-ID).
"""

from __future__ import annotations

import base64
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from .mail_model import Message, address_list_header, format_address, parse_address_header


def build_mime(msg: Message) -> bytes:
    """MIME bytes of a message (CRLF line endings), as ``GET messages/{id}/$value`` returns them."""
    if msg.mime is not None:
        return msg.mime
    out = EmailMessage(policy=policy.SMTP)
    if msg.from_:
        out["From"] = format_address(msg.from_)
    if msg.sender and msg.sender != msg.from_:
        out["Sender"] = format_address(msg.sender)
    for header, values in (("To", msg.to), ("Cc", msg.cc), ("Reply-To", msg.reply_to)):
        if values:
            out[header] = address_list_header(values)
    out["Subject"] = msg.subject
    out["Date"] = format_datetime(msg.sent)
    out["Message-ID"] = msg.internet_message_id
    for name in ("In-Reply-To", "References", "Thread-Topic", "Thread-Index"):
        value = msg.header(name)
        if value:
            out[name] = value
    for extra in msg.headers:
        lowered = extra["name"].lower()
        if lowered.startswith(("list-", "x-", "auto-submitted", "precedence")) and lowered not in out:
            out[extra["name"]] = extra["value"]
    out["MIME-Version"] = "1.0"
    subtype = "html" if msg.body_type == "html" else "plain"
    out.set_content(msg.body, subtype=subtype, charset="utf-8")
    inline = [a for a in msg.attachments if a.is_inline]
    if inline and subtype == "html":
        out.make_related()
        for att in inline:
            maintype, _, sub = att.content_type.partition("/")
            out.add_related(
                att.data(),
                maintype=maintype or "application",
                subtype=sub or "octet-stream",
                cid=f"<{att.content_id or att.id}>",
                filename=att.name,
                disposition="inline",
            )
    for att in msg.attachments:
        if att.is_inline and subtype == "html":
            continue
        maintype, _, sub = att.content_type.partition("/")
        out.add_attachment(
            att.data(),
            maintype=maintype or "application",
            subtype=sub or "octet-stream",
            filename=att.name,
            disposition="inline" if att.is_inline else "attachment",
        )
    return out.as_bytes()


def parse_mime(raw: bytes) -> dict[str, Any]:
    """Control-style delivery fields of an RFC 822 message (see ``MailStore.deliver``).

    Returns ``from``, ``sender``, ``to``, ``cc``, ``bcc``, ``reply_to``, ``subject``, ``body``,
    ``body_type``, ``sent``, ``internet_message_id``, ``in_reply_to``, ``references``, ``headers``
    (every header, in order), ``importance``, receipt flags and ``attachments`` with their bytes.
    """
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    fields: dict[str, Any] = {
        "headers": [{"name": name, "value": str(value)} for name, value in parsed.items()],
        "subject": str(parsed.get("Subject", "")),
        "to": parse_address_header(_header(parsed, "To")),
        "cc": parse_address_header(_header(parsed, "Cc")),
        "bcc": parse_address_header(_header(parsed, "Bcc")),
        "reply_to": parse_address_header(_header(parsed, "Reply-To")),
    }
    senders = parse_address_header(_header(parsed, "From"))
    fields["from"] = senders[0] if senders else None
    explicit_sender = parse_address_header(_header(parsed, "Sender"))
    fields["sender"] = explicit_sender[0] if explicit_sender else fields["from"]
    if parsed.get("Message-ID"):
        fields["internet_message_id"] = str(parsed["Message-ID"]).strip()
    if parsed.get("In-Reply-To"):
        fields["in_reply_to"] = str(parsed["In-Reply-To"]).strip()
    if parsed.get("References"):
        fields["references"] = str(parsed["References"]).split()
    if parsed.get("Date"):
        fields["sent"] = _parse_date(str(parsed["Date"]))
    fields["importance"] = _importance(parsed)
    fields["is_read_receipt_requested"] = "Disposition-Notification-To" in parsed
    fields["is_delivery_receipt_requested"] = "Return-Receipt-To" in parsed

    body_part = parsed.get_body(preferencelist=("html", "plain"))
    if body_part is None:
        fields["body"], fields["body_type"] = "", "text"
    else:
        fields["body"] = str(body_part.get_content())
        fields["body_type"] = "html" if body_part.get_content_subtype() == "html" else "text"

    attachments = []
    for part, in_related in _attachment_parts(parsed, body_part):
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else _embedded_message(part)
        disposition = part.get_content_disposition()
        content_id = part.get("Content-ID")
        is_message = part.get_content_type() == "message/rfc822"
        attachments.append(
            {
                "name": part.get_filename() or ("attached-message.eml" if is_message else "attachment"),
                "content_type": part.get_content_type(),
                "size": len(payload),
                "is_inline": disposition == "inline" or (in_related and content_id is not None),
                "content_base64": base64.b64encode(payload).decode("ascii"),
                "content_id": str(content_id).strip("<> ") if content_id else None,
            }
        )
    fields["attachments"] = attachments
    return fields


def _embedded_message(part: Any) -> bytes:
    """The bytes of a ``message/rfc822`` part's inner message."""
    inner = part.get_payload()
    return bytes(inner[0].as_bytes()) if isinstance(inner, list) and inner else b""


def _attachment_parts(part: Any, body_part: Any, in_related: bool = False) -> list[tuple[Any, bool]]:
    """Leaf parts that are attachments, each with whether it sits in a ``multipart/related``.

    Everything but the body and its text alternatives; an embedded message (``message/rfc822``) is one
    attachment and is not descended into.
    """
    if part is body_part:
        return []
    if part.get_content_type() == "message/rfc822":
        return [(part, in_related)]
    if part.is_multipart():
        related = in_related or part.get_content_subtype() == "related"
        return [found for child in part.iter_parts() for found in _attachment_parts(child, body_part, related)]
    disposition = part.get_content_disposition()
    is_alternative_text = part.get_content_maintype() == "text" and disposition is None and not part.get_filename()
    return [] if is_alternative_text else [(part, in_related)]


def _header(parsed: EmailMessage, name: str) -> str | None:
    value = parsed.get(name)
    return None if value is None else str(value)


def _parse_date(value: str) -> str | None:
    try:
        moment: datetime = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.isoformat()


def _importance(parsed: EmailMessage) -> str:
    importance = str(parsed.get("Importance", "")).strip().lower()
    if importance in ("low", "normal", "high"):
        return importance
    priority = str(parsed.get("X-Priority", "")).strip()[:1]
    return {"1": "high", "2": "high", "4": "low", "5": "low"}.get(priority, "normal")
