"""RFC 822 in and out of Gmail's shapes: the ``payload`` tree of ``messages.get``, snippets, message
building for the control API, and the search query (``q``) of ``messages.list``.

Invariants:

* ``payload`` mirrors the MIME tree: the root has ``partId`` "", children "0", "1", …, grandchildren
  "0.1"; every part has ``mimeType``, ``filename``, ``headers`` (name/value pairs in the order of the
  message) and ``body`` with ``size``. Leaf bodies are base64url (``data``); attachments (parts with a
  filename) carry ``attachmentId`` instead, served by ``messages.attachments.get``.
* The attachment id is derived from the message id and part id, so it is stable across restarts.
* Search dates ``after:``/``before:`` in ``YYYY/MM/DD`` are midnight America/Los_Angeles; a number is
  epoch seconds (Gmail's documented behaviour).
"""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")
SNIPPET_LENGTH = 200


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str) -> bytes:
    """base64url with or without padding; ValueError if it is not base64url at all."""
    cleaned = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_\-+/=\s]*", cleaned):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(cleaned.replace("+", "-").replace("/", "_") + "=" * (-len(cleaned) % 4))


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def attachment_id(message_id: str, part_id: str) -> str:
    return "ANGjdJ" + b64url(f"{message_id}:{part_id}".encode()).rstrip("=")


def part_of_attachment(message_id: str, attachment: str) -> str | None:
    """The part id an attachment id names, if it names one of ``message_id``'s parts."""
    if not attachment.startswith("ANGjdJ"):
        return None
    try:
        decoded = b64url_decode(attachment[6:]).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    owner, _, part = decoded.partition(":")
    return part if owner == message_id else None


def _headers(part: Message) -> list[dict[str, str]]:
    return [{"name": name, "value": str(value)} for name, value in part.items()]


def _is_attachment(part: Message) -> bool:
    return bool(part.get_filename()) or part.get_content_disposition() == "attachment"


def payload(message_id: str, part: Message, part_id: str = "") -> dict[str, Any]:
    """The ``format=full`` payload of one MIME part (recursively)."""
    result: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": _headers(part),
    }
    if part.is_multipart():
        children = part.get_payload()
        assert isinstance(children, list)
        result["body"] = {"size": 0}
        result["parts"] = [
            payload(message_id, child, f"{part_id}.{i}" if part_id else str(i)) for i, child in enumerate(children)
        ]
        return result
    data = part.get_payload(decode=True)
    content = data if isinstance(data, bytes) else b""
    if _is_attachment(part):
        result["body"] = {"attachmentId": attachment_id(message_id, part_id), "size": len(content)}
    else:
        result["body"] = {"size": len(content), "data": b64url(content)} if content else {"size": 0}
    return result


def find_part(message: Message, part_id: str) -> Message | None:
    """The MIME part with Gmail part id ``part_id`` ("" is the root)."""
    current = message
    if part_id == "":
        return current
    for index in part_id.split("."):
        children = current.get_payload() if current.is_multipart() else None
        if not isinstance(children, list) or not index.isdigit() or int(index) >= len(children):
            return None
        child = children[int(index)]
        if not isinstance(child, Message):
            return None
        current = child
    return current


def plain_text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not _is_attachment(part):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return data.decode(part.get_content_charset() or "utf-8", errors="replace")
    for part in message.walk():
        if part.get_content_type() == "text/html" and not _is_attachment(part):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return re.sub(r"<[^>]+>", " ", data.decode(part.get_content_charset() or "utf-8", errors="replace"))
    return ""


def snippet(message: Message) -> str:
    return " ".join(plain_text(message).split())[:SNIPPET_LENGTH]


def header(message: Message, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    return str(email.header.make_header(email.header.decode_header(str(value))))


def addresses(message: Message, *names: str) -> list[str]:
    values = [str(v) for name in names for v in message.get_all(name, [])]
    return [address.lower() for _, address in getaddresses(values) if address]


def build(fields: dict[str, Any], default_from: str) -> bytes:
    """An RFC 822 message from control-API fields: from, to, cc, subject, body, html, date (ISO 8601),
    message_id, in_reply_to, references, headers {name: value}, attachments [{filename,
    content_type, data (base64)}]."""
    message = EmailMessage()
    message["From"] = str(fields.get("from") or default_from)
    for name in ("to", "cc"):
        value = fields.get(name)
        if value:
            message[name.title()] = ", ".join(value) if isinstance(value, list) else str(value)
    message["Subject"] = str(fields.get("subject", ""))
    moment = datetime.fromisoformat(str(fields["date"])) if fields.get("date") else datetime.now(UTC)
    message["Date"] = format_datetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    message["Message-ID"] = str(fields.get("message_id") or make_msgid(domain="emulator.google.local"))
    for name, key in (("In-Reply-To", "in_reply_to"), ("References", "references")):
        if fields.get(key):
            message[name] = str(fields[key])
    for name, value in (fields.get("headers") or {}).items():
        message[str(name)] = str(value)
    message.set_content(str(fields.get("body", "")))
    if fields.get("html"):
        message.add_alternative(str(fields["html"]), subtype="html")
    for attachment in fields.get("attachments") or []:
        maintype, _, subtype = str(attachment.get("content_type", "application/octet-stream")).partition("/")
        message.add_attachment(
            base64.b64decode(attachment["data"]), maintype=maintype, subtype=subtype or "octet-stream",
            filename=str(attachment["filename"]),
        )
    return message.as_bytes(policy=email.policy.SMTP)


# -- search ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    key: str  # "" for free text
    value: str
    negated: bool


def parse_query(q: str) -> list[Term]:
    """Split a Gmail search query into terms; ValueError for unbalanced quotes."""
    terms = []
    for raw in shlex.split(q):
        negated = raw.startswith("-") and len(raw) > 1
        token = raw[1:] if negated else raw
        key, sep, value = token.partition(":")
        if sep and key.lower() in SEARCH_KEYS and value:
            terms.append(Term(key.lower(), value, negated))
        else:
            terms.append(Term("", token, negated))
    return terms


def search_date(value: str) -> int:
    """Epoch milliseconds of an ``after:``/``before:`` value; ValueError if it is neither form."""
    if value.isdigit():
        return int(value) * 1000
    match = re.fullmatch(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", value)
    if not match:
        raise ValueError(f"bad date {value!r}")
    year, month, day = (int(g) for g in match.groups())
    return int(datetime(year, month, day, tzinfo=PACIFIC).timestamp() * 1000)


SEARCH_KEYS = ("after", "before", "from", "to", "cc", "bcc", "subject", "label", "in", "is", "rfc822msgid")


def term_matches(term: Term, message: Message, label_ids: list[str], label_names: dict[str, str],
                 internal_date_ms: int) -> bool:
    """Whether one (not negated) term matches the message."""
    key, value = term.key, term.value.lower()
    if key in ("after", "before"):
        moment = search_date(term.value)
        return internal_date_ms >= moment if key == "after" else internal_date_ms < moment
    if key in ("from", "to", "cc", "bcc"):
        found = addresses(message, key.title())
        return any(value in address for address in found) or value in header(message, key.title()).lower()
    if key == "subject":
        return value in header(message, "Subject").lower()
    if key in ("label", "in"):
        wanted = value.replace("-", " ")
        names = {label_names.get(label, label).lower().replace("-", " ") for label in label_ids}
        names |= {label.lower() for label in label_ids}
        return wanted in names
    if key == "is":
        return value.upper() in label_ids
    if key == "rfc822msgid":
        return value.strip("<>") == header(message, "Message-ID").lower().strip().strip("<>")
    text = f"{header(message, 'Subject')} {header(message, 'From')} {header(message, 'To')} {plain_text(message)}"
    return value in text.lower()
