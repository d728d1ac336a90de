"""A CRM's request to send: checked, stored once per Idempotency-Key, then queued or scheduled.

Invariants:
- One send per (org, Idempotency-Key): the store's create is atomic on the key, so concurrent requests
  with one key get the same send. A request whose fingerprint (a hash of its canonical form: mailbox,
  normalised addresses, subject, body, reply target, records, attachment hashes, ``send_at``) differs
  from the stored send's is refused with ``IdempotencyKeyReused``, never sent.
- A repeated request is answered from the stored send before any other check, so a retry after the
  mailbox changed still gets the send it created.
- Nothing is sent here: the send is stored ``queued`` (and put on the queue) or ``scheduled`` (due at
  ``send_at``); the state machine does the provider's work.
- A queued send is never stranded: it is also due ``RESCUE_AFTER`` after it was stored (the minute timer
  queues it again should the queue message be lost), and a repeated request queues it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sync_core.domain.model import EmailAddress, MailboxStatus
from sync_core.domain.representation import iso
from sync_core.domain.sending import Send, SendRequest, SendStatus
from sync_core.errors import IdempotencyKeyReused, InvalidRequest, MailboxNotFound, SendingRefused
from sync_core.use_cases import telemetry
from sync_core.use_cases.send.common import SendDeps, enqueue

RESCUE_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class SendRequested:
    send: Send
    created: bool


def fingerprint(mailbox_id: str, request: SendRequest) -> str:
    def parties(items: tuple[EmailAddress, ...]) -> list[list[str]]:
        return [[p.address, p.name] for p in items]

    canonical = {
        "mailbox_id": mailbox_id,
        "to": parties(request.to),
        "cc": parties(request.cc),
        "bcc": parties(request.bcc),
        "subject": request.subject,
        "body": [request.content_type, request.content],
        "reply_to_activity_id": request.reply_to_activity_id,
        "record_ids": list(request.record_ids),
        "attachments": [[a.name, a.content_type, a.size, a.sha256] for a in request.attachments],
        "send_at": iso(request.send_at) if request.send_at else None,
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def request_send(
    deps: SendDeps,
    org_id: str,
    mailbox_id: str,
    *,
    idempotency_key: str,
    request: SendRequest,
    contents: Sequence[bytes],
) -> SendRequested:
    """Store the send (or find the one this key made) and queue or schedule it."""
    print_ = fingerprint(mailbox_id, request)
    existing = deps.sends.by_key(org_id, idempotency_key)
    if existing is not None:
        return _repeated(deps, existing.value, print_)
    settings = deps.settings.get(org_id)
    if not settings.sending_enabled:
        raise SendingRefused(
            "sending_disabled",
            "sending is off for this organisation: set sending_enabled in its settings, then reconnect "
            "delegated mailboxes so they grant the send permission",
        )
    stored = deps.mailboxes.get(org_id, mailbox_id)
    if stored is None:
        raise MailboxNotFound(mailbox_id)
    mailbox = stored.value
    if mailbox.status is not MailboxStatus.ACTIVE or not mailbox.enabled:
        raise SendingRefused(
            "mailbox_not_active",
            f"the mailbox is {mailbox.effective_status(settings.automation_enabled)[0].value}, not active: "
            "reconnect or enable it, then send again",
        )
    problem = deps.sender.permission_problem(mailbox)
    if problem is not None:
        raise SendingRefused("send_permission_missing", problem)
    if request.reply_to_activity_id and deps.activities.get(org_id, request.reply_to_activity_id) is None:
        raise InvalidRequest("reply_activity_not_found", "reply_to_activity_id names no activity of this org")
    now = deps.clock.now()
    scheduled = request.send_at is not None and request.send_at > now
    send = Send(
        org_id=org_id,
        send_id=deps.new_id(),
        mailbox_id=mailbox_id,
        idempotency_key=idempotency_key,
        fingerprint=print_,
        request=request,
        created_at=now,
        status=SendStatus.SCHEDULED if scheduled else SendStatus.QUEUED,
        not_before=request.send_at if scheduled else None,
    )
    result, created = deps.sends.create(send, contents)
    if not created:  # a concurrent request with the same key won
        return _repeated(deps, result.value, print_)
    deps.sends.set_due(org_id, send.send_id, request.send_at if scheduled else now + RESCUE_AFTER)
    if not scheduled:
        enqueue(deps, org_id, send.send_id)
    return SendRequested(result.value, created=True)


def _repeated(deps: SendDeps, send: Send, print_: str) -> SendRequested:
    same = _same(send, print_)
    telemetry.emit_send(same.org_id, same.mailbox_id, same.send_id, outcome="duplicate", state=same.step.value)
    if same.status is SendStatus.QUEUED and same.not_before is None:
        enqueue(deps, same.org_id, same.send_id)  # harmless if one is queued: the machine resumes
    return SendRequested(same, created=False)


def _same(send: Send, print_: str) -> Send:
    if send.fingerprint != print_:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request; use a new key for a new message"
        )
    return send
