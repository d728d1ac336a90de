"""Sending mail from the CRM (docs/sending.md), all CRM routes (function key):

    POST   /api/orgs/{org}/mailboxes/{mailbox_id}/messages:send   Idempotency-Key + message → 202 send
    GET    /api/orgs/{org}/sends/{send_id}                         → send
    GET    /api/orgs/{org}/mailboxes/{mailbox_id}/sends?cursor=&limit= → {sends, next_cursor}, newest first
    DELETE /api/orgs/{org}/sends/{send_id}                         → send (canceled); 409 once sending began

Invariants:
- Validation names the field (``details.field``): ``Idempotency-Key`` (required, 1-200 printable ASCII
  characters), ``to`` (at least one recipient in all; at most 500 in to, cc and bcc together), each address,
  ``body``, ``attachments`` (valid base64; at most 150 MB decoded in all), ``send_at`` (ISO 8601 with a
  zone, at most 30 days ahead).
- The same key with the same body answers the same send (202 again, ``Idempotent-Replayed: true``),
  never a second message; another body is 409 ``idempotency_key_reused`` (``use_cases.send.request``).
- A send's JSON never carries its body, its attachments or its BCC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sync_core.api.http import ApiError, ApiRequest, ApiResponse, field_error, not_found, ok, read_str, reject_unknown
from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import EmailAddress
from sync_core.domain.representation import send_to_json
from sync_core.domain.sending import (
    MAX_ATTACHMENT_BYTES,
    MAX_SCHEDULE_AHEAD,
    RECIPIENTS_PER_MESSAGE,
    AttachmentSpec,
    SendRequest,
)
from sync_core.use_cases import send

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

FIELDS = {"to", "cc", "bcc", "subject", "body", "reply_to_activity_id", "record_ids", "attachments", "send_at"}
MAX_SEND_BODY_BYTES = 100 * 1024 * 1024
"""The Functions host's request limit (Azure Functions HTTP: 100 MB): base64 attachments travel inside it,
so one request carries about 74 MB of attachments; the 150 MB total is Microsoft 365's limit, checked too."""
MAX_CONTENT_CHARS = 4 * 1024 * 1024
MAX_SUBJECT_CHARS = 998  # RFC 5322 line length
MAX_KEY_CHARS = 200
MAX_RECORD_IDS = 100
MAX_ATTACHMENTS = 100
DEFAULT_LIMIT, MAX_LIMIT = 25, 100


def send_url(org: str, send_id: str) -> str:
    return f"/api/orgs/{quote(org, safe='')}/sends/{quote(send_id, safe='')}"


def send_message(svc: Services, req: ApiRequest) -> ApiResponse:
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    data = req.json_body(MAX_SEND_BODY_BYTES)
    key = _idempotency_key(req)
    request, contents = parse_send(data, svc.clock.now())
    result = send.request_send(
        svc.send_deps(), org, mailbox_id, idempotency_key=key, request=request, contents=contents
    )
    headers = {"Location": send_url(org, result.send.send_id)}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return ApiResponse(202, send_to_json(result.send), headers)


def get_send(svc: Services, req: ApiRequest) -> ApiResponse:
    return ok(send_to_json(send.get(svc.send_deps(), req.param("org"), req.param("send_id"))))


def cancel_send(svc: Services, req: ApiRequest) -> ApiResponse:
    return ok(send_to_json(send.cancel(svc.send_deps(), req.param("org"), req.param("send_id"))))


def list_sends(svc: Services, req: ApiRequest) -> ApiResponse:
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    if svc.stores.mailboxes.get(org, mailbox_id) is None:
        raise not_found("mailbox")
    raw_limit = req.query.get("limit")
    if raw_limit is not None and not (raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT):
        raise ApiError(400, "invalid_limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}", {"field": "limit"})
    cursor = req.query.get("cursor") or None
    try:
        page = svc.sends.for_mailbox(org, mailbox_id, cursor, int(raw_limit) if raw_limit else DEFAULT_LIMIT)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "'cursor' is not one this API gave out", {"field": "cursor"}) from exc
    return ok({"sends": [send_to_json(s) for s in page.items], "next_cursor": page.cursor})


# -- parsing ---------------------------------------------------------------------------------------


def _idempotency_key(req: ApiRequest) -> str:
    key = req.headers.get("idempotency-key")
    if key is None or not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"the Idempotency-Key header is required: 1-{MAX_KEY_CHARS} printable ASCII characters",
            {"field": "Idempotency-Key"},
        )
    return key


def parse_send(data: dict[str, Any], now: datetime) -> tuple[SendRequest, tuple[bytes, ...]]:
    """The request body as a ``SendRequest`` and its attachments' bytes; ``ApiError`` 400 naming the field."""
    reject_unknown(data, FIELDS)
    to, cc, bcc = (_addresses(data, name) for name in ("to", "cc", "bcc"))
    total = len(to) + len(cc) + len(bcc)
    if total == 0:
        raise field_error("to", "must hold at least one recipient (to, cc and bcc together)")
    if total > RECIPIENTS_PER_MESSAGE:
        raise field_error("to", f"to, cc and bcc together may hold at most {RECIPIENTS_PER_MESSAGE} recipients")
    content_type, content = _body(data.get("body"))
    record_ids = data.get("record_ids") or []
    if not isinstance(record_ids, list) or len(record_ids) > MAX_RECORD_IDS:
        raise field_error("record_ids", f"must be a list of at most {MAX_RECORD_IDS} record ids")
    if not all(isinstance(r, str) and 0 < len(r) <= 128 for r in record_ids):
        raise field_error("record_ids", "must hold record ids of 1-128 characters")
    specs, contents = _attachments(data.get("attachments"))
    request = SendRequest(
        to=to,
        cc=cc,
        bcc=bcc,
        subject=read_str(data, "subject", max_len=MAX_SUBJECT_CHARS) or "",
        content_type=content_type,
        content=content,
        reply_to_activity_id=read_str(data, "reply_to_activity_id", max_len=128) or "",
        record_ids=tuple(dict.fromkeys(record_ids)),
        attachments=specs,
        send_at=_send_at(data, now),
    )
    return request, contents


def _addresses(data: dict[str, Any], name: str) -> tuple[EmailAddress, ...]:
    value = data.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise field_error(name, "must be a list of addresses (strings or {address, name})")
    found: list[EmailAddress] = []
    for item in value:
        raw, display = (item, "") if isinstance(item, str) else _named(name, item)
        address = normalize_address(raw) if len(raw) <= 320 else None
        if address is None:
            raise field_error(name, "holds an entry that is not an email address")
        found.append(EmailAddress(address, display))
    return tuple(found)


def _named(name: str, item: Any) -> tuple[str, str]:
    if not isinstance(item, dict) or set(item) - {"address", "name"} or not isinstance(item.get("address"), str):
        raise field_error(name, "holds an entry that is neither a string nor {address, name}")
    display = item.get("name", "")
    if not isinstance(display, str) or len(display) > 256:
        raise field_error(name, "holds a name that is not a string of at most 256 characters")
    return item["address"], display


def _body(value: Any) -> tuple[str, str]:
    if value is None:
        return "text", ""
    if not isinstance(value, dict) or set(value) - {"content_type", "content"}:
        raise field_error("body", "must be {content_type: 'text'|'html', content}")
    content_type = value.get("content_type", "text")
    content = value.get("content", "")
    if content_type not in ("text", "html"):
        raise field_error("body", "content_type must be 'text' or 'html'")
    if not isinstance(content, str) or len(content) > MAX_CONTENT_CHARS:
        raise field_error("body", f"content must be a string of at most {MAX_CONTENT_CHARS} characters")
    return content_type, content


def _attachments(value: Any) -> tuple[tuple[AttachmentSpec, ...], tuple[bytes, ...]]:
    if value is None:
        return (), ()
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise field_error("attachments", f"must be a list of at most {MAX_ATTACHMENTS} attachments")
    specs: list[AttachmentSpec] = []
    contents: list[bytes] = []
    total = 0
    for item in value:
        if not isinstance(item, dict) or set(item) - {"name", "content_type", "content_base64"}:
            raise field_error("attachments", "each attachment is {name, content_type, content_base64}")
        name, content_type, encoded = item.get("name"), item.get("content_type"), item.get("content_base64")
        if not (isinstance(name, str) and 0 < len(name) <= 255 and isinstance(encoded, str)):
            raise field_error("attachments", "each attachment needs a name (1-255 characters) and content_base64")
        if not isinstance(content_type, str) or not 0 < len(content_type) <= 255:
            raise field_error("attachments", "each attachment needs a content_type")
        total += len(encoded) * 3 // 4
        if total > MAX_ATTACHMENT_BYTES + 2:
            raise field_error("attachments", "may hold at most 150 MB in all")
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise field_error("attachments", "holds content_base64 that is not valid base64") from exc
        specs.append(AttachmentSpec(name, content_type, len(content), hashlib.sha256(content).hexdigest()))
        contents.append(content)
    if sum(spec.size for spec in specs) > MAX_ATTACHMENT_BYTES:
        raise field_error("attachments", "may hold at most 150 MB in all")
    return tuple(specs), tuple(contents)


def _send_at(data: dict[str, Any], now: datetime) -> datetime | None:
    raw = read_str(data, "send_at", max_len=64)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise field_error("send_at", "must be an ISO 8601 date-time with a time zone") from exc
    if moment.tzinfo is None:
        raise field_error("send_at", "must be an ISO 8601 date-time with a time zone")
    if moment > now + MAX_SCHEDULE_AHEAD:
        raise field_error("send_at", "may be at most 30 days ahead")
    return moment
