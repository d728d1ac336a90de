"""The ``MailSender`` port on Microsoft Graph: a draft with an immutable id, its attachments, ``send``,
then the same id read back from Sent Items.

Graph's facts this relies on (learn.microsoft.com/graph/…):
- ``POST /users/{id}/messages`` with ``Prefer: IdType="ImmutableId"`` creates a draft whose id survives
  the move to Sent Items (outlook-immutable-id); custom ``internetMessageHeaders`` must start with ``x-``
  and are set only at creation (user-post-messages). The draft carries ``x-crm-send-id`` so ``locate``
  finds a draft whose id was never checkpointed.
- ``createReply`` makes a reply draft whose In-Reply-To, References and conversation follow the original
  (message-createreply); when the original is gone, the draft is created from MIME (``Content-Type:
  text/plain``, base64 MIME; user-post-messages "create a message in MIME format") carrying those
  headers itself.
- Attachments under 3 MB go in one POST; 3 to 150 MB through ``createUploadSession`` and PUTs of byte
  ranges (outlook-large-attachments), ``UPLOAD_CHUNK`` each, a multiple of 320 KiB as recommended.
- ``POST …/messages/{id}/send`` answers 202 (message-send); the read of the Sent Items copy "might not
  succeed immediately" (outlook-immutable-id), hence ``IN_FLIGHT``.
- Permissions (permissions-reference): drafts, attachments, createReply need Mail.ReadWrite; ``send``
  needs Mail.Send (Mail.Send.Shared / Mail.ReadWrite.Shared delegated on a shared mailbox). A 403 is
  ``MailboxAccessDenied``; a 429 (``ErrorSubmissionQuotaExceeded``) a ``TransientGraphError`` with its
  Retry-After (GraphHttp's retries first).

``inspect`` proves ``NOT_SENT`` only for an item that is still a draft in Drafts: one item leaves Drafts
once, so submitting it again cannot make a second message. A ``send`` whose answer says the item is no
longer a draft (a retried submit that had gone through) is checked with ``inspect`` and taken as done.
"""

from __future__ import annotations

import base64
import email.policy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any
from urllib.parse import quote

from sync_core.adapters.graph.http import GraphHttp
from sync_core.domain.model import ConnectionMode, EmailAddress, Mailbox
from sync_core.errors import ConfigurationFailure, GrantFailure, MessageNotFound, ProviderRefused, TransientFailure
from sync_core.ports.identity import TokenSource
from sync_core.ports.send import DraftState, OutgoingAttachment, OutgoingMessage, ProviderView

IMMUTABLE = ('IdType="ImmutableId"',)
SEND_ID_HEADER = "x-crm-send-id"
INLINE_LIMIT = 3 * 1024 * 1024
UPLOAD_CHUNK = 12 * 320 * 1024  # 3.75 MiB: under Graph's 4 MiB per PUT, a multiple of 320 KiB
LOCATE_PAGE = 50
SENDING_PERMISSIONS = ("Mail.ReadWrite", "Mail.Send")


class GraphMailSender:
    """Sends from one mailbox at a time; ``http_for`` gives the GraphHttp (token, limits) of a mailbox,
    ``tokens_for`` (optional) its sending token source, to see the permissions a token carries."""

    def __init__(
        self, http_for: Callable[[Mailbox], GraphHttp], tokens_for: Callable[[Mailbox], TokenSource] | None = None
    ) -> None:
        self._http_for = http_for
        self._tokens_for = tokens_for

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        """Reads the sending token's ``roles`` (application) or ``scp`` (delegated) claim: both of
        ``SENDING_PERMISSIONS`` must be there (their ``.Shared`` forms count for a delegated shared
        mailbox). A token that cannot be had because the consent lacks them says so; an unreadable
        token or an unreachable identity platform tells nothing (None: the send finds out)."""
        if self._tokens_for is None:
            return None
        application = mailbox.mode is ConnectionMode.APPLICATION
        try:
            token = self._tokens_for(mailbox)(False)
        except GrantFailure:
            return (
                "the mailbox's connection has not granted sending (Mail.ReadWrite, Mail.Send): "
                "connect it again with the organisation's sending_enabled on"
            )
        except (TransientFailure, ConfigurationFailure):
            return None
        granted = _claims(token, "roles" if application else "scp")
        if granted is None:
            return None
        have = {permission.lower().removesuffix(".shared") for permission in granted}
        missing = [p for p in SENDING_PERMISSIONS if p.lower() not in have]
        if not missing:
            return None
        if application:
            return (
                f"the app lacks the {' and '.join(missing)} application permission: add it to the app "
                "registration and have an admin consent again"
            )
        return f"the mailbox's connection lacks {' and '.join(missing)}: connect it again to grant it"

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        http, user = self._http_for(mailbox), _user_path(mailbox)
        target = message.reply_to
        if target is not None and target.source_id:
            draft = http.call(
                "POST",
                f"{user}/messages/{quote(target.source_id, safe='')}/createReply",
                json_body={"message": _json_message(message, with_header=False)},
                prefer=IMMUTABLE,
            )
        elif target is not None:
            raw = base64.b64encode(_mime(message))
            draft = http.call("POST", f"{user}/messages", data=raw, content_type="text/plain", prefer=IMMUTABLE)
        else:
            draft = http.call("POST", f"{user}/messages", json_body=_json_message(message), prefer=IMMUTABLE)
        handle = str(draft["id"])
        for attachment in message.attachments:
            self._attach(http, f"{user}/messages/{quote(handle, safe='')}", attachment)
        return handle

    def _attach(self, http: GraphHttp, item: str, attachment: OutgoingAttachment) -> None:
        size = len(attachment.content)
        if size < INLINE_LIMIT:
            http.call(
                "POST",
                f"{item}/attachments",
                json_body={
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": attachment.name,
                    "contentType": attachment.content_type,
                    "contentBytes": base64.b64encode(attachment.content).decode("ascii"),
                },
                prefer=IMMUTABLE,
            )
            return
        session = http.call(
            "POST",
            f"{item}/attachments/createUploadSession",
            json_body={
                "AttachmentItem": {
                    "attachmentType": "file",
                    "name": attachment.name,
                    "size": size,
                    "contentType": attachment.content_type,
                }
            },
            prefer=IMMUTABLE,
        )
        url = str(session["uploadUrl"])
        for start in range(0, size, UPLOAD_CHUNK):
            chunk = attachment.content[start : start + UPLOAD_CHUNK]
            end = start + len(chunk) - 1
            http.upload(
                url,
                chunk,
                {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Type": "application/octet-stream"},
            )

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        http = self._http_for(mailbox)
        payload = http.call(
            "GET",
            f"{_user_path(mailbox)}/mailFolders('drafts')/messages",
            params={
                "$select": "id,internetMessageHeaders",
                "$top": str(LOCATE_PAGE),
                "$orderby": "createdDateTime desc",
            },
            prefer=IMMUTABLE,
        )
        found = []
        for item in (payload or {}).get("value", []):
            headers = {
                str(h.get("name", "")).lower(): str(h.get("value", ""))
                for h in item.get("internetMessageHeaders") or []
            }
            if headers.get(SEND_ID_HEADER) == send_id:
                found.append(str(item["id"]))
        return tuple(found)

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        try:
            self._http_for(mailbox).call(
                "DELETE", f"{_user_path(mailbox)}/messages/{quote(handle, safe='')}", prefer=IMMUTABLE
            )
        except MessageNotFound:
            return

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        try:
            self._http_for(mailbox).call(
                "POST", f"{_user_path(mailbox)}/messages/{quote(handle, safe='')}/send", prefer=IMMUTABLE
            )
        except (ProviderRefused, MessageNotFound):
            # A retried POST whose first attempt went through finds no draft any more: that is success.
            if self.inspect(mailbox, handle).state in (DraftState.SENT, DraftState.IN_FLIGHT):
                return
            raise

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        http, user = self._http_for(mailbox), _user_path(mailbox)
        try:
            item = http.call(
                "GET",
                f"{user}/messages/{quote(handle, safe='')}",
                params={"$select": "id,isDraft,internetMessageId,sentDateTime,parentFolderId,conversationId"},
                prefer=IMMUTABLE,
            )
        except MessageNotFound:
            return ProviderView(DraftState.GONE)
        if item.get("isDraft"):
            drafts = http.call("GET", f"{user}/mailFolders('drafts')", params={"$select": "id"}, prefer=IMMUTABLE)
            in_drafts = str(item.get("parentFolderId")) == str((drafts or {}).get("id"))
            return ProviderView(DraftState.NOT_SENT if in_drafts else DraftState.IN_FLIGHT)
        sent_at = item.get("sentDateTime")
        return ProviderView(
            DraftState.SENT,
            str(item.get("internetMessageId") or ""),
            datetime.fromisoformat(str(sent_at).replace("Z", "+00:00")).astimezone(UTC) if sent_at else None,
            str(item.get("conversationId") or ""),
        )


def _claims(access_token: str, name: str) -> tuple[str, ...] | None:
    """A claim of an access token, read not validated (it came from the token endpoint over TLS): ``roles``
    is a list, ``scp`` a space-separated string. None when the token is not a readable JWT."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    value = claims.get(name) if isinstance(claims, dict) else None
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    if isinstance(value, str):
        return tuple(value.split())
    return ()


def _user_path(mailbox: Mailbox) -> str:
    return f"users/{quote(mailbox.graph_user_id or mailbox.address, safe='@')}"


def _recipients(parties: tuple[EmailAddress, ...]) -> list[dict[str, Any]]:
    return [{"emailAddress": {"address": p.address, "name": p.name or p.address}} for p in parties]


def _json_message(message: OutgoingMessage, *, with_header: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": message.subject,
        "body": {"contentType": "HTML" if message.content_type == "html" else "Text", "content": message.content},
        "toRecipients": _recipients(message.to),
        "ccRecipients": _recipients(message.cc),
        "bccRecipients": _recipients(message.bcc),
    }
    if with_header:
        body["internetMessageHeaders"] = [{"name": SEND_ID_HEADER, "value": message.send_id}]
    return body


def _mime(message: OutgoingMessage) -> bytes:
    """The message as MIME, for a reply whose original is gone: In-Reply-To and References set here."""
    # RFC 5322 allows 998 characters a line: folded at the default 78, a long Message-ID (Exchange's are)
    # in In-Reply-To would become RFC 2047 encoded words, which no mail system reads as a thread.
    mime = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
    mime["From"] = formataddr((message.sender.name, message.sender.address))
    for name, parties in (("To", message.to), ("Cc", message.cc), ("Bcc", message.bcc)):
        if parties:
            mime[name] = ", ".join(formataddr((p.name, p.address)) for p in parties)
    mime["Subject"] = message.subject
    mime["Message-ID"] = make_msgid(domain=message.sender.domain or None)
    if message.reply_to is not None:
        mime["In-Reply-To"] = message.reply_to.internet_message_id
        mime["References"] = " ".join(message.reply_to.references or (message.reply_to.internet_message_id,))
    mime[SEND_ID_HEADER] = message.send_id
    mime.set_content(message.content, subtype="html" if message.content_type == "html" else "plain")
    return mime.as_bytes()
