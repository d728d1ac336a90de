"""Attachments of the Graph emulator's messages: one POST under 3 MB, upload sessions for 3 to 150 MB.

Facts (learn.microsoft.com/graph/outlook-large-attachments and graph/api/attachment-createuploadsession,
recorded in docs/graph-send-facts.md):

* ``POST messages/{id}/attachments`` takes a ``#microsoft.graph.fileAttachment`` "under 3 MB"; a larger
  one is ``400 BadRequest`` "Maximum request length exceeded." (microsoft-graph-docs #85), a request body
  over 4 MB ``413``.
* ``POST messages/{id}/attachments/createUploadSession`` with ``{"AttachmentItem": {"attachmentType":
  "file", "name", "size", "isInline"?, "contentId"?}}`` answers ``201`` and an uploadSession:
  ``uploadUrl``, ``expirationDateTime``, ``nextExpectedRanges: ["0-"]``. Under 3 MB:
  ``ErrorAttachmentSizeShouldNotBeLessThanMinimumSize``. Over the message size limit (35 MB by default):
  ``ErrorMessageSizeExceeded`` "The message exceeds the maximum supported size." (docs-contrib #2561).
* The uploadUrl is pre-authenticated: its ``PUT``s carry no Authorization header. Each ``PUT`` sends
  ``Content-Range: bytes {start}-{end}/{total}`` and ``Content-Length``, "up to 4 MB each time", "in
  order"; it answers ``200`` with ``nextExpectedRanges: ["{next}"]`` and the same expirationDateTime,
  and the last one ``201 Created`` with a ``Location`` naming the attachment and no body. ``DELETE`` on
  the uploadUrl cancels the session (``204``).

Choices where the documentation says nothing (NOT CONFIRMED on the real service): a fragment that does not
start at the next expected byte is ``416`` (OneDrive's answer to an unexpected range) and changes
nothing; a malformed or inconsistent Content-Range is ``400``; a fragment over 4 MB is ``413``; ``GET`` on
the uploadUrl reports the session (OneDrive's resume call); sessions live 2 hours; a wrong authtoken is
``401``, an unknown session ``404``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .core import GraphContext, Request, Response, graph_error, graph_time, now_utc
from .mail_model import Attachment, Message, new_id, render_attachment
from .mail_send_model import (
    GRAPH_REQUEST_LIMIT,
    INLINE_ATTACHMENT_LIMIT,
    UPLOAD_CHUNK_LIMIT,
    UPLOAD_SESSION_LIFETIME_S,
    UPLOAD_SESSION_MINIMUM,
    UploadSession,
)

if TYPE_CHECKING:
    from .mail import MailStore, _Call

UPLOAD_PATH = re.compile(
    r"^/api/v2\.0/Users\('(?P<user>[^'@]+)@(?P<tenant>[^']+)'\)/Messages\('(?P<message>[^']+)'\)"
    r"/AttachmentSessions\('(?P<session>[^']+)'\)$"
)
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def add_attachment(store: MailStore, call: _Call, msg: Message) -> Response:
    """``POST messages/{id}/attachments``: a file attachment under 3 MB (201, the attachment)."""
    if len(call.ctx.request.body) > GRAPH_REQUEST_LIMIT:
        return graph_error(413, "RequestEntityTooLarge", "Maximum request length exceeded.")
    try:
        item = json.loads(call.ctx.request.body or b"null")
    except ValueError:
        item = None
    if not isinstance(item, dict) or str(item.get("@odata.type", "")).lower() != "#microsoft.graph.fileattachment":
        return graph_error(400, "BadRequest", "Only a '#microsoft.graph.fileAttachment' can be added here.")
    try:
        content = base64.b64decode(str(item.get("contentBytes") or ""), validate=True)
    except (binascii.Error, ValueError):
        return graph_error(400, "BadRequest", "'contentBytes' is not valid base64.")
    if len(content) >= INLINE_ATTACHMENT_LIMIT:
        return graph_error(400, "BadRequest", "Maximum request length exceeded.")
    if _message_size(msg) + len(content) > store.send_limits.max_message_size:
        return graph_error(413, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
    att = Attachment(
        id=new_id("AAMkADAwATM0MDAAMS1hBGAAABEgAQ", 24),
        name=str(item.get("name") or "attachment"),
        content_type=str(item.get("contentType") or "application/octet-stream"),
        size=len(content),
        is_inline=bool(item.get("isInline", False)),
        last_modified=now_utc(),
        content=content,
        content_id=item.get("contentId"),
    )
    _attach(store, call.box, msg, att)
    context = (
        f"{call.ctx.base_url}/$metadata#users('{call.ctx.mailbox_id}')/messages('{_shown(msg, call)}')"
        "/attachments/$entity"
    )
    return Response.json(201, {"@odata.context": context, **render_attachment(att)})


def delete_attachment(store: MailStore, call: _Call, msg: Message, attachment_id: str) -> Response:
    """``DELETE messages/{id}/attachments/{aid}`` (204)."""
    att = next((a for a in msg.attachments if a.id == attachment_id), None)
    if att is None:
        return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    msg.attachments.remove(att)
    _changed(store, call.box, msg)
    return Response(204)


def create_upload_session(store: MailStore, call: _Call, msg: Message) -> Response:
    """``POST messages/{id}/attachments/createUploadSession`` (201, the uploadSession)."""
    try:
        payload = json.loads(call.ctx.request.body or b"null")
    except ValueError:
        payload = None
    item = None
    if isinstance(payload, dict):
        item = next((v for k, v in payload.items() if k.lower() == "attachmentitem"), None)
    if not isinstance(item, dict) or str(item.get("attachmentType", "file")).lower() != "file" or not item.get("name"):
        return graph_error(400, "BadRequest", "'AttachmentItem' needs attachmentType 'file', a name and a size.")
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return graph_error(400, "BadRequest", "'AttachmentItem.size' must be a non-negative integer.")
    if size < UPLOAD_SESSION_MINIMUM:
        return graph_error(
            400,
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachment size should not be less than 3 MB; add it with a single POST on the attachments instead.",
        )
    if _message_size(msg) + size > store.send_limits.max_message_size:
        return graph_error(413, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
    box = call.box
    session = UploadSession(
        id=new_id("AAMkADAwATM0MDAAMS1hBGAAAUs", 18),
        token=secrets.token_urlsafe(32),
        user_id=box.user_id,
        tenant_id=box.tenant_id,
        message_id=msg.immutable_id,
        name=str(item["name"]),
        content_type=str(item.get("contentType") or "application/octet-stream"),
        size=size,
        is_inline=bool(item.get("isInline", False)),
        content_id=item.get("contentId"),
        expires=now_utc().replace(microsecond=0) + timedelta(seconds=UPLOAD_SESSION_LIFETIME_S),
    )
    store.sending.uploads[session.id] = session
    origin = call.ctx.base_url.removesuffix("/v1.0")
    return Response.json(
        201,
        {
            "@odata.context": f"{call.ctx.base_url}/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{origin}{_session_path(session, msg.immutable_id)}?authtoken={session.token}",
            "expirationDateTime": graph_time(session.expires),
            "nextExpectedRanges": ["0-"],
        },
    )


def session_mailbox(store: MailStore, path: str) -> str | None:
    """The mailbox an upload URL belongs to (for faults and counters), or None."""
    match = UPLOAD_PATH.match(path)
    with store.lock:
        session = store.sending.uploads.get(match["session"]) if match else None
        return session.user_id if session is not None else None


def handle_upload(store: MailStore, request: Request, origin: str) -> Response:
    """``PUT``/``GET``/``DELETE`` on an uploadUrl (no bearer token: the URL's authtoken is the credential)."""
    match = UPLOAD_PATH.match(request.path)
    if match is None:
        return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    token = request.query.get("authtoken", "")
    with store.lock:
        session = store.sending.uploads.get(match["session"])
        if session is None or session.user_id != match["user"] or now_utc() >= session.expires:
            if session is not None:
                del store.sending.uploads[session.id]
            return graph_error(404, "ErrorItemNotFound", "The upload session was not found or has expired.")
        if not hmac.compare_digest(token.encode(), session.token.encode()):
            return graph_error(401, "InvalidAuthenticationToken", "The authtoken of the upload URL is not valid.")
        method = request.method.upper()
        if method == "DELETE":
            del store.sending.uploads[session.id]
            return Response(204)
        if method == "GET":
            return _session_status(session, origin)
        if method != "PUT":
            return graph_error(405, "ErrorInvalidRequest", f"The OData request is not supported: {method}")
        return _put_fragment(store, session, request, origin)


def _put_fragment(store: MailStore, session: UploadSession, request: Request, origin: str) -> Response:
    parsed = CONTENT_RANGE.match(request.headers.get("content-range", "").strip())
    if parsed is None:
        return graph_error(400, "ErrorInvalidRequest", "Content-Range must be 'bytes {start}-{end}/{total}'.")
    start, end, total = (int(g) for g in parsed.groups())
    if total != session.size or end < start or end >= total or len(request.body) != end - start + 1:
        return graph_error(
            400,
            "ErrorInvalidRequest",
            f"The Content-Range does not match the body ({len(request.body)} bytes) "
            f"or the session's size ({session.size}).",
        )
    if len(request.body) > UPLOAD_CHUNK_LIMIT:
        return graph_error(413, "RequestEntityTooLarge", "Upload fragments must be at most 4 MB.")
    expected = len(session.received)
    if start != expected:
        response = graph_error(
            416, "InvalidRange", f"Fragments must be uploaded in order; the next expected byte is {expected}."
        )
        return response
    session.received += request.body
    if len(session.received) < session.size:
        return _session_status(session, origin)
    del store.sending.uploads[session.id]
    box = store._mailbox(session.user_id, session.tenant_id)
    msg = box.message(session.message_id)
    if msg is None:
        return graph_error(404, "ErrorItemNotFound", "The message of this upload session no longer exists.")
    att = Attachment(
        id=new_id("AAMkADAwATM0MDAAMS1hBGAAABEgAQ", 24),
        name=session.name,
        content_type=session.content_type,
        size=session.size,
        is_inline=session.is_inline,
        last_modified=now_utc(),
        content=bytes(session.received),
        content_id=session.content_id,
    )
    _attach(store, box, msg, att)
    location = (
        f"{origin}/api/v2.0/Users('{session.user_id}@{session.tenant_id}')/Messages('{session.message_id}')"
        f"/Attachments('{att.id}')"
    )
    return Response(201, {"Location": location})


def _session_status(session: UploadSession, origin: str) -> Response:
    context = (
        f"{origin}/api/v2.0/$metadata#Users('{session.user_id}@{session.tenant_id}')"
        f"/Messages('{session.message_id}')/AttachmentSessions/$entity"
    )
    return Response.json(
        200,
        {
            "@odata.context": context,
            "expirationDateTime": graph_time(session.expires),
            "nextExpectedRanges": [str(len(session.received))],
        },
    )


def _session_path(session: UploadSession, message_id: str) -> str:
    return (
        f"/api/v2.0/Users('{session.user_id}@{session.tenant_id}')/Messages('{message_id}')"
        f"/AttachmentSessions('{session.id}')"
    )


def _attach(store: MailStore, box: Any, msg: Message, att: Attachment) -> None:
    msg.attachments.append(att)
    _changed(store, box, msg)


def _changed(store: MailStore, box: Any, msg: Message) -> None:
    msg.touch(now_utc())
    box.record("updated", msg, msg.folder_id, frozenset({"hasAttachments"}))
    store._notify(box, msg.folder_id, "updated", msg)


def _message_size(msg: Message) -> int:
    return len(msg.body.encode("utf-8")) + sum(a.size for a in msg.attachments)


def _shown(msg: Message, call: _Call) -> str:
    return msg.immutable_id if call.view.immutable_ids else msg.rest_id


__all__ = ["GraphContext", "add_attachment", "create_upload_session", "delete_attachment", "handle_upload"]
