"""Sending through the Graph emulator: drafts, ``send``, ``sendMail``, ``createReply`` and delivery.

Routes (after ``me/`` or ``users/{key}/``; the server has checked the token, the Mail.* permission from
:func:`required_permissions`, the mailbox, limits and faults):

=======  ==========================================  =============================================
POST     messages, mailFolders/{f}/messages          create a draft (201, the message)
PATCH    messages/{id}                               update (200); body, subject, replyTo and
                                                     internetMessageId only while ``isDraft``
DELETE   messages/{id}                               move to Deleted Items (permanent there) (204)
POST     messages/{id}/send                          send a draft (202, no body)
POST     messages/{id}/createReply[All]              a reply draft (201, the message)
POST     sendMail                                    send JSON or base64 MIME (202, no body)
=======  ==========================================  =============================================

Attachments and upload sessions are in :mod:`emulator.mail_upload`. Every fact below is in
docs/graph-send-facts.md with its source.

Invariants:

* A sent draft keeps its immutable id: it moves from Drafts to Sent Items (a new REST id, as any move),
  ``isDraft`` false, ``sentDateTime`` the moment of sending (learn.microsoft.com/graph/outlook-immutable-id:
  the immutable id stays "the same" across moves in a mailbox; the read of the Sent Items copy "might not
  succeed immediately" in the real service, here it always does). Its custom ``x-`` headers are gone
  from the Sent Items copy (microsoft-graph-docs #12726).
* A message has an internetMessageId from creation (the draft in the createReply example of
  learn.microsoft.com/graph/api/message-createreply has one); a client-set one (``internetMessageId``,
  updatable "only if isDraft = true", message-update) is kept, and the same id is on every copy.
* Every recipient that is a mailbox of the emulator's directory (any tenant; each mailbox once, however
  often it is addressed) gets one copy in its Inbox through the same path as delivered mail (delta,
  change notifications); Bcc is never on a recipient's copy. Every other address is handed to the
  outbox (``GET /_emulator/outbox``): one entry per sent message.
* While a mailbox's submissions are held (control API ``…/submission/hold``), a submitted message waits
  in its Outbox (``isDraft`` false, same immutable id) and nobody receives it until ``…/release``: the
  emulator's deterministic stand-in for "might not succeed immediately". Held submissions count
  against the limits when submitted.
* A submission is checked in this order: recipients (400), rights to send as ``from`` (403
  ``ErrorSendAsDenied``), Exchange Online's limits (429 ``ErrorSubmissionQuotaExceeded`` with
  Retry-After), then it happens completely under the store's lock (no half-sent message).
* Directory lookups happen before the store's lock is taken (:class:`AddressBook` is a copy).
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core import GraphContext, Response, graph_error, now_utc
from .mail_compose import _generated_headers, compose_message, new_internet_message_id
from .mail_mime import parse_mime
from .mail_model import (
    Attachment,
    Folder,
    Message,
    View,
    looks_like_html,
    looks_like_id,
    new_id,
    recipient,
    render_message,
)
from .mail_send_model import GRAPH_REQUEST_LIMIT, HeldSubmission, OutboxEntry, SendLimits
from .mail_upload import add_attachment, create_upload_session, delete_attachment

if TYPE_CHECKING:
    from .mail import MailStore, _Call

MAIL_READ = ("Mail.Read", "Mail.ReadBasic", "Mail.ReadBasic.All", "Mail.ReadWrite")
SEND_AS_DENIED = (
    "The user account which was used to submit this request does not have the right to send mail on behalf "
    "of the specified sending account. Cannot submit message."
)
QUOTA_EXCEEDED = (
    "The message couldn't be sent because the sender's submission quota was exceeded. Please try again later."
)
INVALID_RECIPIENTS = "At least one recipient is not valid."
ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
RECIPIENT_PROPS = {"toRecipients": "to", "ccRecipients": "cc", "bccRecipients": "bcc", "replyTo": "reply_to"}
SIMPLE_PROPS = {
    "subject": "subject",
    "importance": "importance",
    "categories": "categories",
    "flag": "flag",
    "inferenceClassification": "inference_classification",
    "isRead": "is_read",
    "isDeliveryReceiptRequested": "is_delivery_receipt_requested",
    "isReadReceiptRequested": "is_read_receipt_requested",
    "internetMessageId": "internet_message_id",
}
WRITABLE = {*RECIPIENT_PROPS, *SIMPLE_PROPS, "body", "from", "sender", "internetMessageHeaders", "attachments"}
DRAFT_ONLY = {"body", "subject", "replyTo", "internetMessageId"}  # message-update: "only if isDraft = true"
_CANONICAL = {name.lower(): name for name in WRITABLE}


def required_permissions(method: str, rest: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(permissions for one's own mailbox, delegated permissions for another's) a mailbox route needs.

    Reads: Mail.Read family / Mail.Read.Shared; ``send`` and ``sendMail``: Mail.Send / Mail.Send.Shared;
    every other write (drafts, attachments, upload sessions, createReply): Mail.ReadWrite /
    Mail.ReadWrite.Shared (learn.microsoft.com/graph/api/user-sendmail, message-send, user-post-messages,
    message-update, message-createreply, attachment-createuploadsession, permissions-reference).
    """
    lowered = rest.lower().strip("/")
    if method.upper() == "GET":
        return MAIL_READ, ("Mail.Read.Shared", "Mail.ReadWrite.Shared")
    if lowered == "sendmail" or lowered.endswith("/send"):
        return ("Mail.Send",), ("Mail.Send.Shared",)
    return ("Mail.ReadWrite",), ("Mail.ReadWrite.Shared",)


class AddressBook:
    """A copy of the directory's users taken before the store's lock: who an address is."""

    def __init__(self, users: Iterable[Any]) -> None:
        self.by_id: dict[str, Any] = {}
        self._by_address: dict[str, list[Any]] = {}
        for user in users:
            self.by_id[user.id] = user
            for address in user.addresses():
                self._by_address.setdefault(address, []).append(user)

    def find(self, address: str, tenant_id: str) -> Any:
        """The mailbox ``address`` reaches (its tenant's first), or None when it is outside the emulator."""
        found = self._by_address.get(address.lower().removeprefix("smtp:"), [])
        return next((u for u in found if u.tenant_id == tenant_id), found[0] if found else None)


@dataclass
class Submission:
    """A message about to be submitted: its mailbox, whom it is from, who is shown as its ``sender``
    (None: the ``from`` mailbox itself, as with Send As) and where it goes."""

    owner: Any
    from_user: Any
    sender: dict[str, Any] | None
    recipients: list[str]


# == routing ========================================================================================


def handle_write(store: MailStore, call: _Call, segments: list[str], book: AddressBook) -> Response:
    """A write route of a mailbox (see the module table); 405 for anything else. Call under the lock."""
    method = call.ctx.request.method.upper()
    if len(call.ctx.request.body) > GRAPH_REQUEST_LIMIT:
        # Graph's request size limit: microsoft-graph-docs #85 ("a 4MB limit on the size of a request"),
        # InnoGE/laravel-msgraph-mail #41 (sendMail with attachments over 4 MB fails)
        return graph_error(413, "RequestEntityTooLarge", "Maximum request length exceeded.")
    lowered = [s.lower() for s in segments]
    if lowered == ["sendmail"] and method == "POST":
        return send_mail(store, call, book)
    if lowered[:1] == ["mailfolders"] and len(lowered) >= 3 and lowered[2] == "messages":
        folder = call.box.folder(segments[1])
        if folder is None:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        if len(lowered) == 3 and method == "POST":
            return create_draft(store, call, book, folder.well_known or folder.id)
        segments, lowered = ["messages", *segments[3:]], ["messages", *lowered[3:]]
    if lowered == ["messages"] and method == "POST":
        return create_draft(store, call, book, "drafts")
    if lowered[:1] != ["messages"] or len(lowered) < 2:
        return _not_supported(call)
    msg = call.box.message(segments[1])
    if msg is None and not looks_like_id(segments[1]):
        return graph_error(400, "ErrorInvalidIdMalformed", "Id is malformed.")
    if msg is None:
        return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    rest = lowered[2:]
    if not rest and method == "PATCH":
        return update_message(store, call, msg)
    if not rest and method == "DELETE":
        return delete_message(store, call, msg)
    if rest == ["send"] and method == "POST":
        return send_draft(store, call, msg, book)
    if rest in (["createreply"], ["createreplyall"]) and method == "POST":
        return create_reply(store, call, msg, book, reply_all=rest == ["createreplyall"])
    if rest == ["attachments"] and method == "POST":
        return add_attachment(store, call, msg)
    if rest == ["attachments", "createuploadsession"] and method == "POST":
        return create_upload_session(store, call, msg)
    if len(rest) == 2 and rest[0] == "attachments" and method == "DELETE":
        return delete_attachment(store, call, msg, segments[3])
    return _not_supported(call)


def _not_supported(call: _Call) -> Response:
    ctx = call.ctx
    return graph_error(
        405, "ErrorInvalidRequest", f"The OData request is not supported: {ctx.request.method} {ctx.rest}"
    )


# == drafts =========================================================================================


def create_draft(store: MailStore, call: _Call, book: AddressBook, folder: str) -> Response:
    """``POST messages``: a draft (``isDraft`` true) in ``folder``, from the mailbox owner unless set."""
    payload = _json_object(call.ctx)
    if isinstance(payload, Response):
        return payload
    fields = message_fields(payload, creating=True)
    if isinstance(fields, Response):
        return fields
    owner = book.by_id[call.ctx.mailbox_id]
    fields.setdefault("from", _owner_address(owner))
    sizes = sum(a.size for a in fields.get("_attachments", []))
    if sizes > store.send_limits.max_message_size:
        return message_too_large()
    attachments = fields.pop("_attachments", [])
    msg = store._create_message(call.box, {**fields, "folder": folder, "is_draft": True, "is_read": True})
    msg.attachments = attachments
    return Response.json(201, {"@odata.context": entity_context(call.ctx), **render_message(msg, call.view)})


def update_message(store: MailStore, call: _Call, msg: Message) -> Response:
    """``PATCH messages/{id}``: the writable properties; draft-only ones refused on a sent message."""
    payload = _json_object(call.ctx)
    if isinstance(payload, Response):
        return payload
    names = {_CANONICAL.get(key.lower(), key) for key in payload if not key.startswith("@odata.")}
    if "internetMessageHeaders" in names:
        return graph_error(400, "ErrorInvalidPropertySet", "Set action is invalid for property.")
    if not msg.is_draft and names & DRAFT_ONLY:
        return graph_error(
            400, "ErrorInvalidPropertyUpdateSentMessage", "Update operation is invalid for property of a sent message."
        )
    fields = message_fields(payload, creating=False)
    if isinstance(fields, Response):
        return fields
    changed = apply_fields(msg, fields)
    msg.touch(now_utc())
    call.box.record("updated", msg, msg.folder_id, frozenset(changed))
    store._notify(call.box, msg.folder_id, "updated", msg)
    return Response.json(200, {"@odata.context": entity_context(call.ctx), **render_message(msg, call.view)})


def delete_message(store: MailStore, call: _Call, msg: Message) -> Response:
    """``DELETE messages/{id}``: to Deleted Items (Outlook's delete); from Deleted Items, gone for good."""
    deleted = call.box.folder("deleteditems")
    if deleted is not None and msg.folder_id != deleted.id:
        store._relocate(call.box, msg, deleted)
    else:
        call.box.record("deleted", msg, msg.folder_id)
        store._notify(call.box, msg.folder_id, "deleted", msg)
        del call.box.messages[msg.immutable_id]
        del call.box.rest_index[msg.rest_id]
    return Response(204)


def create_reply(store: MailStore, call: _Call, original: Message, book: AddressBook, *, reply_all: bool) -> Response:
    """``createReply[All]``: a draft answering ``original``: In-Reply-To, References and the conversation
    follow it; addressed to its ``replyTo`` (or ``from``); a ``comment`` or a ``message`` may shape it,
    not both (learn.microsoft.com/graph/api/message-createreply)."""
    payload = _json_object(call.ctx, allow_empty=True)
    if isinstance(payload, Response):
        return payload
    message = payload.get("message") or {}
    if not isinstance(message, dict):
        return _bad_body("'message' must be an object.")
    comment = payload.get("comment")
    if comment is not None and "body" in message:
        return graph_error(400, "ErrorInvalidRequest", "Specify either a comment or the body of the message, not both.")
    extra = message_fields(message, creating=True)
    if isinstance(extra, Response):
        return extra
    owner = book.by_id[call.ctx.mailbox_id]
    mine = owner.addresses() if owner is not None else set()
    to = list(original.reply_to or ([original.from_] if original.from_ else []))
    cc: list[dict[str, Any]] = []
    if reply_all:
        to += [r for r in original.to if _address(r) not in mine]
        cc = [r for r in original.cc if _address(r) not in mine]
    references = [*(original.header("References") or "").split(), original.internet_message_id]
    answered = re.match(r"^\s*re\s*:", original.subject, re.IGNORECASE)
    subject = original.subject if answered else f"RE: {original.subject}"
    fields: dict[str, Any] = {
        "from": _owner_address(owner),
        "to": _unique(to),
        "cc": _unique(cc),
        "subject": subject,
        "body": _reply_body(original, str(comment or "")),
        "body_type": "html",
        "in_reply_to": original.internet_message_id,
        "references": references,
    }
    attachments = extra.pop("_attachments", [])
    fields.update(extra)
    msg = store._create_message(call.box, {**fields, "folder": "drafts", "is_draft": True, "is_read": True})
    msg.attachments = attachments
    return Response.json(201, {"@odata.context": entity_context(call.ctx), **render_message(msg, call.view)})


# == sending ========================================================================================


def send_draft(store: MailStore, call: _Call, msg: Message, book: AddressBook) -> Response:
    """``POST messages/{id}/send``: 202 and no body; the draft becomes the Sent Items copy."""
    if not msg.is_draft:
        return graph_error(400, "ErrorInvalidOperation", "Only a draft can be sent; this message was sent already.")
    submission = check_submission(store, call, msg.from_, [*msg.to, *msg.cc, *msg.bcc], book)
    if isinstance(submission, Response):
        return submission
    sentitems = call.box.folder("sentitems")
    assert sentitems is not None  # every mailbox has the well-known folders
    custom = [h for h in msg.headers if _is_custom(h["name"])]
    _as_sent(msg, submission, sentitems)
    store._relocate(call.box, msg, _landing(store, call, sentitems))
    deliver(store, msg, submission, book, custom, saved=True)
    return Response(202)


def send_mail(store: MailStore, call: _Call, book: AddressBook) -> Response:
    """``POST sendMail``: JSON ``{message, saveToSentItems}`` or base64 MIME (``Content-Type: text/plain``);
    202 and no body (learn.microsoft.com/graph/api/user-sendmail)."""
    content_type = call.ctx.request.headers.get("content-type", "").lower()
    if content_type.startswith("text/plain"):
        return _send_mime(store, call, book)
    payload = _json_object(call.ctx)
    if isinstance(payload, Response):
        return payload
    lowered = {k.lower(): v for k, v in payload.items()}
    message = lowered.get("message")
    if not isinstance(message, dict):
        return graph_error(400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty.")
    save = lowered.get("savetosentitems", True)
    if not isinstance(save, bool):
        return _bad_body("'saveToSentItems' must be true or false.")
    fields = message_fields(message, creating=True)
    if isinstance(fields, Response):
        return fields
    owner = book.by_id[call.ctx.mailbox_id]
    fields.setdefault("from", _owner_address(owner))
    attachments = fields.pop("_attachments", [])
    if sum(a.size for a in attachments) > store.send_limits.max_message_size:
        return message_too_large()
    everyone = [*_recipients(fields, "to"), *_recipients(fields, "cc"), *_recipients(fields, "bcc")]
    submission = check_submission(store, call, recipient(fields["from"]), everyone, book)
    if isinstance(submission, Response):
        return submission
    custom = [h for h in fields.get("headers", []) if _is_custom(h["name"])]
    now = now_utc().replace(microsecond=0)
    fields = {**fields, "sent": now.isoformat(), "received": now.isoformat(), "headers": []}
    fields.setdefault("internet_message_id", new_internet_message_id(_domain(submission.from_user, fields)))
    sentitems = call.box.folder("sentitems")
    assert sentitems is not None
    if save:
        landing = _landing(store, call, sentitems)
        msg = store._create_message(call.box, {**fields, "folder": landing.id, "is_read": True})
    else:  # saveToSentItems false: nothing is kept, the message exists only on its way out
        msg = compose_message(call.box, sentitems, fields)
        del call.box.messages[msg.immutable_id]
    msg.attachments = attachments
    _as_sent(msg, submission, sentitems)
    deliver(store, msg, submission, book, custom, saved=save)
    return Response(202)


def _send_mime(store: MailStore, call: _Call, book: AddressBook) -> Response:
    """sendMail with a base64 MIME body: the MIME's own headers (Message-ID, In-Reply-To, References)
    are kept; the Sent Items copy returns it from ``$value``; recipients' copies lose the Bcc line."""
    try:
        raw = base64.b64decode(call.ctx.request.body.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.strip() or b":" not in raw.split(b"\n", 1)[0]:
        return graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
    fields = parse_mime(raw)
    owner = book.by_id[call.ctx.mailbox_id]
    if not fields.get("from"):
        fields["from"] = recipient(_owner_address(owner))
        raw = f"From: {owner.mail}\r\n".encode() + raw
    if not fields.get("internet_message_id"):
        fields["internet_message_id"] = new_internet_message_id(_domain(owner, fields))
        raw = f"Message-ID: {fields['internet_message_id']}\r\n".encode() + raw
    if len(raw) > store.send_limits.max_message_size:
        return message_too_large()
    everyone = [*fields["to"], *fields["cc"], *fields["bcc"]]
    submission = check_submission(store, call, fields["from"], everyone, book)
    if isinstance(submission, Response):
        return submission
    now = now_utc().replace(microsecond=0)
    fields["received"] = now.isoformat()
    fields["sent"] = fields.get("sent") or now.isoformat()
    sentitems = call.box.folder("sentitems")
    assert sentitems is not None
    landing = _landing(store, call, sentitems)
    msg = store._create_message(call.box, {**fields, "folder": landing.id, "is_read": True}, raw_mime=raw)
    if submission.sender is not None:
        msg.sender = submission.sender
    without_bcc = {
        **fields,
        "bcc": [],
        "headers": [h for h in fields["headers"] if h["name"].lower() != "bcc"],
    }
    submit(store, msg, submission, book, without_bcc, raw_mime=_strip_header(raw, "Bcc"), saved=True)
    return Response(202)


def check_submission(
    store: MailStore, call: _Call, from_: Any, everyone: list[dict[str, Any]], book: AddressBook
) -> Submission | Response:
    """Recipients, the right to send as ``from``, then the sending limits (see the module invariants)."""
    addresses = [_address(r) for r in everyone]
    if not addresses or any(not ADDRESS.match(a) for a in addresses):
        return graph_error(400, "ErrorInvalidRecipients", INVALID_RECIPIENTS)
    limits: SendLimits = store.send_limits
    if len(addresses) > limits.recipients_per_message:
        return graph_error(
            400,
            "ErrorExceededMaxRecipientLimit",
            f"The message has {len(addresses)} recipients; at most {limits.recipients_per_message} are allowed.",
        )
    owner = book.by_id[call.ctx.mailbox_id]
    principal = call.ctx.principal
    from_address = _address(from_) if from_ else owner.mail
    from_user = owner if from_address in owner.addresses() else book.find(from_address, owner.tenant_id)
    rights = store.sending
    sender: dict[str, Any] | None = None
    if not principal.is_app and principal.user_id != owner.id:
        # delegated, in another's mailbox (the server checked FullAccess): the signed-in user needs Send As
        # or Send on Behalf on it (learn.microsoft.com/graph/outlook-send-mail-from-other-user)
        actor = book.by_id.get(principal.user_id or "")
        if from_user is not owner or actor is None:
            return graph_error(403, "ErrorSendAsDenied", SEND_AS_DENIED)
        if not rights.has_right(owner.id, actor.id, "SendAs"):
            if not rights.has_right(owner.id, actor.id, "SendOnBehalf"):
                return graph_error(403, "ErrorSendAsDenied", SEND_AS_DENIED)
            sender = _owner_address(actor)
    elif from_user is not owner:
        # from another mailbox through one's own: Mail.Send.Shared (delegated) and a mailbox right
        if from_user is None or not (principal.is_app or principal.has_permission("Mail.Send.Shared")):
            return graph_error(403, "ErrorSendAsDenied", SEND_AS_DENIED)
        if not rights.has_right(from_user.id, owner.id, "SendAs"):
            if not rights.has_right(from_user.id, owner.id, "SendOnBehalf"):
                return graph_error(403, "ErrorSendAsDenied", SEND_AS_DENIED)
            sender = _owner_address(owner)
    wait = rights.quota_wait(owner.id, len(addresses), limits, time.time())
    if wait is not None:
        return graph_error(429, "ErrorSubmissionQuotaExceeded", QUOTA_EXCEEDED, {"Retry-After": str(wait)})
    return Submission(owner, from_user, sender, addresses)


def deliver(
    store: MailStore,
    msg: Message,
    submission: Submission,
    book: AddressBook,
    custom: list[dict[str, str]],
    *,
    saved: bool,
) -> None:
    """Submit ``msg`` with recipients' copies made of its fields and the ``custom`` x- headers."""
    fields = {
        "from": msg.from_,
        "sender": msg.sender,
        "to": msg.to,
        "cc": msg.cc,
        "reply_to": msg.reply_to,
        "subject": msg.subject,
        "body": msg.body,
        "body_type": msg.body_type,
        "internet_message_id": msg.internet_message_id,
        "in_reply_to": msg.header("In-Reply-To"),
        "references": (msg.header("References") or "").split(),
        "sent": msg.sent.isoformat(),
        "received": msg.sent.isoformat(),
        "importance": msg.importance,
        "is_read_receipt_requested": msg.is_read_receipt_requested,
        "is_delivery_receipt_requested": msg.is_delivery_receipt_requested,
        "headers": custom,
    }
    submit(store, msg, submission, book, fields, saved=saved)


def submit(
    store: MailStore,
    msg: Message,
    submission: Submission,
    book: AddressBook,
    fields: dict[str, Any],
    *,
    raw_mime: bytes | None = None,
    saved: bool,
) -> None:
    """Count the submission against the limits, then deliver it, or keep it in the Outbox while the
    mailbox's submissions are held (``msg`` is already there when ``saved``)."""
    sending = store.sending
    sending.count_submission(submission.owner.id, len(submission.recipients))
    if submission.owner.id in sending.holding:
        sending.held.append(HeldSubmission(submission.owner.id, msg, saved, submission.recipients, fields, raw_mime))
        return
    _deliver_copies(store, msg, submission, book, fields, raw_mime=raw_mime)


def release_held(store: MailStore, owner_id: str, book: AddressBook) -> int:
    """Deliver what ``owner_id``'s Outbox holds: each saved copy moves to Sent Items (same immutable id),
    recipients get theirs. Stops holding. Returns how many messages went out. Call under the lock."""
    sending = store.sending
    sending.holding.discard(owner_id)
    mine = [h for h in sending.held if h.owner_id == owner_id]
    sending.held = [h for h in sending.held if h.owner_id != owner_id]
    owner = book.by_id[owner_id]
    box = store._mailbox(owner.id, owner.tenant_id)
    sentitems = box.folder("sentitems")
    assert sentitems is not None
    for held in mine:
        kept = box.message(held.message.immutable_id)
        if held.saved and kept is not None and kept.folder_id != sentitems.id:
            store._relocate(box, kept, sentitems)
        submission = Submission(owner, None, None, held.recipients)
        _deliver_copies(store, held.message, submission, book, held.fields, raw_mime=held.raw_mime)
    return len(mine)


def _landing(store: MailStore, call: _Call, sentitems: Folder) -> Folder:
    """Where a submitted message waits: the Outbox while the mailbox's submissions are held."""
    outbox = call.box.folder("outbox")
    held = call.box.user_id in store.sending.holding
    return outbox if held and outbox is not None else sentitems


def _deliver_copies(
    store: MailStore,
    msg: Message,
    submission: Submission,
    book: AddressBook,
    fields: dict[str, Any],
    *,
    raw_mime: bytes | None = None,
) -> None:
    owner = submission.owner
    targets: dict[str, Any] = {}
    external: list[str] = []
    for address in submission.recipients:
        user = book.find(address, owner.tenant_id)
        if user is None:
            external.append(address)
        else:
            targets.setdefault(user.id, user)
    for user in targets.values():
        box = store._mailbox(user.id, user.tenant_id)
        copy = {**fields, "folder": "inbox", "bcc": [], "is_read": False}
        delivered = store._create_message(box, copy, raw_mime=raw_mime)
        if raw_mime is None and msg.attachments:
            delivered.attachments = [_clone(a) for a in msg.attachments]
            has_attach = "yes" if any(not a.is_inline for a in msg.attachments) else ""
            for header in delivered.headers:
                if header["name"] == "X-MS-Has-Attach":
                    header["value"] = has_attach
    if external:
        store.sending.outbox.append(
            OutboxEntry(
                id=new_id("outbox-", 12),
                sender_id=owner.id,
                from_address=_address(msg.from_) if msg.from_ else owner.mail,
                internet_message_id=msg.internet_message_id,
                subject=msg.subject,
                to=[a for a in (_address(r) for r in msg.to) if a in external],
                cc=[a for a in (_address(r) for r in msg.cc) if a in external],
                envelope=list(dict.fromkeys(external)),
                sent=msg.sent,
            )
        )


# == message JSON ===================================================================================


def message_fields(payload: dict[str, Any], *, creating: bool) -> dict[str, Any] | Response:
    """Control-style fields (see ``MailStore.deliver``) of a Graph message JSON, or the 400 Graph answers.

    ``internetMessageHeaders``: names must start with ``x-``/``X-``, 1 to 5 of them
    (``InvalidInternetMessageHeader``, ``InvalidInternetMessageHeaderCollection``: freescout-mail365 #7,
    msgraph-sdk-dotnet #2208). ``attachments`` become ``_attachments`` (file attachments only).
    """
    fields: dict[str, Any] = {}
    for key, value in payload.items():
        if key.startswith("@odata."):
            continue
        name = _CANONICAL.get(key.lower())
        if name is None:
            return graph_error(
                400,
                "RequestBodyRead",
                f"The property '{key}' does not exist on type 'microsoft.graph.message'. Make sure to only use "
                "property names that are defined by the type or mark the type as open type.",
            )
        if name in RECIPIENT_PROPS:
            parsed = _recipient_list(value)
            if parsed is None:
                return _bad_body(f"'{name}' must be a collection of recipients.")
            fields[RECIPIENT_PROPS[name]] = parsed
        elif name in ("from", "sender"):
            one = _recipient_list([value]) if value is not None else []
            if one is None:
                return _bad_body(f"'{name}' must be a recipient.")
            fields[name] = one[0] if one else None
        elif name == "body":
            if not isinstance(value, dict):
                return _bad_body("'body' must be an itemBody.")
            content = str(value.get("content") or "")
            kind = str(value.get("contentType") or ("html" if looks_like_html(content) else "text")).lower()
            fields["body"], fields["body_type"] = content, "html" if kind == "html" else "text"
        elif name == "internetMessageHeaders":
            headers = _custom_headers(value)
            if isinstance(headers, Response):
                return headers
            fields["headers"] = headers
        elif name == "attachments":
            attachments = _inline_attachments(value)
            if isinstance(attachments, Response):
                return attachments
            fields["_attachments"] = attachments
        else:
            problem = _simple_value_problem(name, value)
            if problem:
                return _bad_body(problem)
            fields[SIMPLE_PROPS[name]] = value.lower() if name in ("importance", "inferenceClassification") else value
    if not creating:
        fields.pop("headers", None)
    return fields


def _simple_value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the message property ``name`` (None if it can)."""
    if name in ("isRead", "isDeliveryReceiptRequested", "isReadReceiptRequested"):
        return None if isinstance(value, bool) else f"'{name}' must be true or false."
    if name == "importance":
        return None if str(value).lower() in ("low", "normal", "high") else "'importance' must be low, normal or high."
    if name == "inferenceClassification":
        known = str(value).lower() in ("focused", "other")
        return None if known else "'inferenceClassification' must be focused or other."
    if name == "categories":
        ok = isinstance(value, list) and all(isinstance(c, str) for c in value)
        return None if ok else "'categories' must be a collection of strings."
    if name == "flag":
        return None if isinstance(value, dict) else "'flag' must be a followupFlag object."
    return None if isinstance(value, str) else f"'{name}' must be a string."


def apply_fields(msg: Message, fields: dict[str, Any]) -> set[str]:
    """Write ``fields`` onto ``msg``; returns the Graph properties that changed (for delta)."""
    changed: set[str] = set()
    for key, attr, prop in (
        ("to", "to", "toRecipients"),
        ("cc", "cc", "ccRecipients"),
        ("bcc", "bcc", "bccRecipients"),
        ("reply_to", "reply_to", "replyTo"),
        ("from", "from_", "from"),
        ("sender", "sender", "sender"),
        ("subject", "subject", "subject"),
        ("importance", "importance", "importance"),
        ("categories", "categories", "categories"),
        ("inference_classification", "inference_classification", "inferenceClassification"),
        ("is_read", "is_read", "isRead"),
        ("is_delivery_receipt_requested", "is_delivery_receipt_requested", "isDeliveryReceiptRequested"),
        ("is_read_receipt_requested", "is_read_receipt_requested", "isReadReceiptRequested"),
        ("internet_message_id", "internet_message_id", "internetMessageId"),
    ):
        if key in fields:
            setattr(msg, attr, fields[key])
            changed.add(prop)
    if "flag" in fields:
        msg.flag = dict(fields["flag"]) if isinstance(fields["flag"], dict) else {"flagStatus": str(fields["flag"])}
        changed.add("flag")
    if "body" in fields:
        msg.body, msg.body_type = fields["body"], fields["body_type"]
        changed |= {"body", "bodyPreview", "uniqueBody"}
    if "_attachments" in fields:
        msg.attachments += fields["_attachments"]
        changed.add("hasAttachments")
    return changed


def _custom_headers(value: Any) -> list[dict[str, str]] | Response:
    if not isinstance(value, list) or not 1 <= len(value) <= 5:
        return graph_error(
            400,
            "InvalidInternetMessageHeaderCollection",
            "The number of internet message headers is invalid; it should be between 1 and 5.",
        )
    headers = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item.get("name"):
            return _bad_body("Each internet message header needs a 'name' and a 'value'.")
        name = str(item["name"])
        if not name.lower().startswith("x-"):
            return graph_error(
                400,
                "InvalidInternetMessageHeader",
                f"The internet message header name '{name}' should start with 'x-' or 'X-'.",
            )
        headers.append({"name": name, "value": str(item.get("value", ""))})
    return headers


def _inline_attachments(value: Any) -> list[Attachment] | Response:
    if not isinstance(value, list):
        return _bad_body("'attachments' must be a collection.")
    out = []
    for item in value:
        if not isinstance(item, dict) or item.get("@odata.type", "").lower() != "#microsoft.graph.fileattachment":
            return _bad_body("Only '#microsoft.graph.fileAttachment' attachments are supported here.")
        try:
            content = base64.b64decode(str(item.get("contentBytes") or ""), validate=True)
        except (binascii.Error, ValueError):
            return _bad_body("'contentBytes' is not valid base64.")
        out.append(
            Attachment(
                id=new_id("AAMkADAwATM0MDAAMS1hBGAAABEgAQ", 24),
                name=str(item.get("name") or "attachment"),
                content_type=str(item.get("contentType") or "application/octet-stream"),
                size=len(content),
                is_inline=bool(item.get("isInline", False)),
                last_modified=now_utc(),
                content=content,
                content_id=item.get("contentId"),
            )
        )
    return out


# == helpers ========================================================================================


def entity_context(ctx: GraphContext) -> str:
    return f"{ctx.base_url}/$metadata#users('{ctx.mailbox_id}')/messages/$entity"


def message_too_large() -> Response:
    return graph_error(413, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")


def _as_sent(msg: Message, submission: Submission, sentitems: Folder) -> None:
    """What submission does to the sent copy: not a draft, sent now, ``sender`` per the right used, and
    transport headers without the custom ``x-`` ones (microsoft-graph-docs #12726)."""
    now = now_utc().replace(microsecond=0)
    msg.is_draft, msg.is_read, msg.sent, msg.received = False, True, now, now
    if submission.sender is not None:
        msg.sender = submission.sender
    in_reply_to = msg.header("In-Reply-To")
    references = (msg.header("References") or "").split()
    msg.headers = _generated_headers(msg, sentitems, in_reply_to, references, {})
    msg.touch(now)


def _is_custom(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith("x-") and not lowered.startswith("x-ms-")


def _json_object(ctx: GraphContext, *, allow_empty: bool = False) -> dict[str, Any] | Response:
    if not ctx.request.body.strip():
        return {} if allow_empty else _bad_body("The request body is empty.")
    try:
        payload = json.loads(ctx.request.body)
    except ValueError:
        return _bad_body("The request body is not valid JSON.")
    if not isinstance(payload, dict):
        return _bad_body("The request body must be a JSON object.")
    return payload


def _bad_body(message: str) -> Response:
    return graph_error(400, "BadRequest", message)


def _recipient_list(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        inner = item.get("emailAddress") if isinstance(item, dict) else None
        if not isinstance(inner, dict):
            return None
        address = str(inner.get("address") or "")
        out.append({"emailAddress": {"name": str(inner.get("name") or address), "address": address}})
    return out


def _recipients(fields: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(fields.get(key) or [])


def _address(rcpt: Any) -> str:
    return str(((rcpt or {}).get("emailAddress") or {}).get("address") or "").lower()


def _unique(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for value in values:
        if _address(value) not in seen:
            seen.add(_address(value))
            out.append(value)
    return out


def _owner_address(owner: Any) -> dict[str, Any] | None:
    return None if owner is None else {"emailAddress": {"name": owner.display_name, "address": owner.mail}}


def _domain(user: Any, fields: dict[str, Any]) -> str:
    address = _address(recipient(fields.get("from"))) or (user.mail if user is not None else "")
    return address.partition("@")[2]


def _reply_body(original: Message, comment: str) -> str:
    sender = (original.from_ or {}).get("emailAddress", {})
    quoted = original.body if original.body_type == "html" else html.escape(original.body).replace("\n", "<br>")
    return (
        f"<html><body><div>{html.escape(comment)}</div><hr><div id=\"divRplyFwdMsg\"><b>From:</b> "
        f"{html.escape(str(sender.get('name') or sender.get('address') or ''))}<br><b>Subject:</b> "
        f"{html.escape(original.subject)}</div>{quoted}</body></html>"
    )


def _strip_header(raw: bytes, name: str) -> bytes:
    """``raw`` without the header ``name`` (folded continuation lines included)."""
    head, sep, body = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == name.lower().encode()
        if not skipping:
            kept.append(line)
    return b"".join(kept) + sep + body


def _clone(att: Attachment) -> Attachment:
    return Attachment(
        id=new_id("AAMkADAwATM0MDAAMS1hBGAAABEgAQ", 24),
        name=att.name,
        content_type=att.content_type,
        size=att.size,
        is_inline=att.is_inline,
        last_modified=att.last_modified,
        content=att.content,
        content_id=att.content_id,
    )


__all__ = ["AddressBook", "View", "handle_write", "required_permissions"]
