"""The send state machine: one send of the CRM's taken through the provider, exactly once.

    queued/scheduled ──(due, pacing slot)──▶ PREPARING ──prepare──▶ PREPARED ──▶ SUBMITTING ──submit──▶
    SUBMITTED ──inspect: SENT──▶ CONFIRMED (status sent, activity saved) ── _finished ──▶ send.sent
    any step ── refused / permission missing / unprovable ──▶ failed ── _finished ──▶ send.failed

Each arrow is a compare-and-set of the send (``SendStore.replace`` at its etag) written BEFORE the
provider call it announces (``PREPARING``, ``SUBMITTING``) or AFTER the call it records (``PREPARED``
with the draft's handle, ``SUBMITTED``, ``CONFIRMED``). A crash between any two writes resumes from the
last checkpoint, by asking the provider what its state proves (``MailSender.inspect``):

- ``PREPARING``: a draft may exist without its handle. Every draft ``locate`` finds for the send is
  discarded (it was never submitted: submitting needs the handle, written only at ``PREPARED``), then
  the draft is prepared again.
- ``PREPARED``: the draft exists and nothing was submitted: go on to ``SUBMITTING``.
- ``SUBMITTING``: a submit may have happened. The draft is submitted only when ``inspect`` proves it
  ``NOT_SENT``; ``SENT``/``IN_FLIGHT`` move on to ``SUBMITTED``; ``GONE``/``UNKNOWN`` prove nothing, so
  the send fails as ``outcome_unknown``, never resent. ``NOT_PREPARED`` (a sender that keeps the
  prepared message in the worker's memory, Gmail's, lost it with a dead worker; nothing was sent) is
  followed by ``prepare`` again from the stored request: such a sender's ``prepare`` is deterministic
  (the Message-ID comes from the send id, the Date from the request), so it answers the same handle and
  the same bytes, and the submit sends the message that was prepared; a different handle fails the send
  without a submit.
- ``SUBMITTED``: the sent copy is read back; until it is readable (``IN_FLIGHT``) the send is looked at
  again later (``CONFIRM_DELAYS``), and the activity is saved under the Message-ID that copy carries (the
  one the sync will see), so the sync's copy merges into it.

**Invariant: a message is submitted to the provider only when no submit happened for this send yet or
the provider's own state proves the previous one did not send.** Hence a crash, a timeout, a redelivered
queue message or two workers at once never deliver twice (two workers: the second's compare-and-set
fails before its provider call). A provider's 429 or outage (``TransientFailure``) makes the send due
again later (its ``Retry-After`` when given), as the sync does; it gives up after ``GIVE_UP_AFTER``.
Every terminal state goes through ``_finished``, the one place a send ends.

**One worker at a time.** Queue messages may be delivered twice and the timer releases sends again, so
two workers can hold one send. Before any provider call a worker takes the send's lease (``lease_owner``,
``lease_until``) with a compare-and-set; another worker finding an unexpired lease leaves the send
alone, and every later checkpoint of the first is a compare-and-set too, so a worker whose lease was
taken over (it outlived ``SendDeps.lease``) fails its next write and stops before its next provider call.
A submit is the one call that cannot be taken back, so a worker makes sure just before it that its lease
has ``SUBMIT_MARGIN`` left (renewing it by compare-and-set if not): no second worker can take the send
over while the submit is under way, and one that takes it over later finds the sent copy.
A worker that died holds the lease until it runs out; then the next release resumes the send.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta

from sync_core.domain.model import (
    Activity,
    AttachmentSummary,
    Direction,
    EmailAddress,
    Mailbox,
    MailboxStatus,
    MailMessage,
    RecordRef,
    activity_id_for,
)
from sync_core.domain.sending import Send, SendStatus, SendStep
from sync_core.domain.text import html_text, preview
from sync_core.errors import (
    ConcurrencyConflict,
    ConfigurationFailure,
    GrantFailure,
    MailServerLoginFailed,
    ProviderRefused,
    TransientFailure,
)
from sync_core.ports import Versioned
from sync_core.ports.send import DraftState, OutgoingAttachment, OutgoingMessage, ProviderView, ReplyTarget
from sync_core.use_cases import pipeline, telemetry
from sync_core.use_cases.send import pacing
from sync_core.use_cases.send.common import SendDeps

log = logging.getLogger(__name__)

MAX_TRANSITIONS = 12
CONFIRM_DELAYS = (5, 15, 30, 60, 120, 300, 600, 900)  # seconds between looks for the sent copy
GIVE_UP_AFTER = timedelta(hours=24)
TRANSIENT_DELAY = 60  # seconds, when the provider named no Retry-After
SUBMIT_MARGIN = timedelta(minutes=2)  # lease left before a submit, else it is renewed first
SENT_EVENT, FAILED_EVENT = "send.sent", "send.failed"
GAVE_UP = (
    "the provider was unavailable or kept throttling the mailbox for a day, and nothing was sent: "
    "send it again with a new key"
)
NOT_REBUILT = (
    "the prepared message was lost with the worker that built it and could not be built again the same; "
    "nothing was sent: send it again with a new key"
)


class _Wait(Exception):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def deliver(deps: SendDeps, org_id: str, send_id: str) -> str:
    """Take the send as far as it can go now; returns its status (or ``waiting``/``missing``). Raises
    only for storage trouble (the queue then retries the message)."""
    me = deps.new_id()
    for _ in range(MAX_TRANSITIONS):
        stored = deps.sends.get(org_id, send_id)
        if stored is None:
            return "missing"
        try:
            outcome = _advance(deps, stored, me)
        except ConcurrencyConflict:
            continue  # someone else moved it: look again
        if outcome is not None:
            return outcome
    return "busy"


def _advance(deps: SendDeps, stored: Versioned[Send], me: str) -> str | None:
    """One transition; None when the send moved on and should be looked at again."""
    send, now = stored.value, deps.clock.now()
    if send.terminal:
        if send.status is not SendStatus.CANCELED and not send.announced:
            deps.sends.drop_content(send.org_id, send.send_id)  # a worker may have died before it did
            _announce(deps, stored)
        deps.sends.set_due(send.org_id, send.send_id, None)
        return send.status.value
    if send.not_before is not None and now < send.not_before:
        deps.sends.set_due(send.org_id, send.send_id, send.not_before)
        return "waiting"
    mailbox_row = deps.mailboxes.get(send.org_id, send.mailbox_id)
    mailbox = mailbox_row.value if mailbox_row is not None else None
    if send.step is SendStep.NONE:
        return _start(deps, stored, mailbox, now, me)
    if send.lease_owner != me:
        if send.lease_until is not None and now < send.lease_until:
            deps.sends.set_due(send.org_id, send.send_id, send.lease_until)
            return "busy"  # another worker drives it; if it died, its lease runs out and the timer resumes
        deps.sends.replace(replace(send, lease_owner=me, lease_until=now + deps.lease), stored.etag)
        return None
    if mailbox is None:
        return _finished(deps, stored, send.failed(*_unprovable("the mailbox was removed")))
    try:
        return _step(deps, stored, mailbox, now)
    except TransientFailure as exc:
        if now - send.created_at > GIVE_UP_AFTER and send.step in (SendStep.PREPARING, SendStep.PREPARED):
            return _finished(deps, stored, send.failed("provider_unavailable", GAVE_UP))
        return _later(deps, stored, exc.retry_after or TRANSIENT_DELAY)
    except _Wait as wait:
        return _later(deps, stored, wait.seconds)
    except (GrantFailure, ConfigurationFailure, ProviderRefused) as exc:
        if send.step in (SendStep.PREPARING, SendStep.PREPARED, SendStep.SUBMITTING):
            # Refused before or at the submit: nothing was sent by this attempt.
            return _finished(deps, stored, send.failed(*_refusal(deps, mailbox, exc)))
        return _later(deps, stored, CONFIRM_DELAYS[-1])  # submitted: keep looking for the copy


def _start(deps: SendDeps, stored: Versioned[Send], mailbox: Mailbox | None, now: datetime, me: str) -> str | None:
    send = stored.value
    if mailbox is None or mailbox.status is not MailboxStatus.ACTIVE or not mailbox.enabled:
        reason = "the mailbox is gone" if mailbox is None else f"the mailbox is {mailbox.status.value}"
        return _finished(deps, stored, send.failed("mailbox_not_active", f"{reason}: reconnect it, then send again"))
    recipients = len(send.request.recipients)
    wait = pacing.reserve(deps.sends, send.org_id, send.mailbox_id, now, recipients)
    if wait is not None:
        deps.sends.replace(send.waiting(wait), stored.etag)
        deps.sends.set_due(send.org_id, send.send_id, wait)
        return "waiting"
    deps.sends.replace(send.at(SendStep.PREPARING, lease_owner=me, lease_until=now + deps.lease), stored.etag)
    return None


def _step(deps: SendDeps, stored: Versioned[Send], mailbox: Mailbox, now: datetime) -> str | None:
    send = stored.value
    match send.step:
        case SendStep.PREPARING:
            for orphan in deps.sender.locate(mailbox, send.send_id):
                deps.sender.discard(mailbox, orphan)
            handle = deps.sender.prepare(mailbox, _outgoing(deps, send, mailbox))
            deps.sends.replace(send.at(SendStep.PREPARED, handle=handle), stored.etag)
        case SendStep.PREPARED:
            deps.sends.replace(send.at(SendStep.SUBMITTING, attempts=send.attempts + 1), stored.etag)
        case SendStep.SUBMITTING:
            view = deps.sender.inspect(mailbox, send.handle)
            if view.state is DraftState.NOT_PREPARED:  # not sent, and the prepared message died with a worker
                rebuilt = deps.sender.prepare(mailbox, _outgoing(deps, send, mailbox))
                if rebuilt != send.handle:
                    deps.sender.discard(mailbox, rebuilt)
                    return _finished(deps, stored, send.failed("provider_refused", NOT_REBUILT))
                view = ProviderView(DraftState.NOT_SENT)
            if view.state is DraftState.NOT_SENT:
                stored = _held_for_submit(deps, stored)
                deps.sender.submit(mailbox, send.handle)
            elif view.state in (DraftState.GONE, DraftState.UNKNOWN):
                return _finished(deps, stored, send.failed(*_unprovable(f"the draft is {view.state.value}")))
            deps.sends.replace(stored.value.at(SendStep.SUBMITTED, attempts=0), stored.etag)
        case SendStep.SUBMITTED:
            view = deps.sender.inspect(mailbox, send.handle)
            if view.state is DraftState.SENT:
                activity_id = _log_activity(deps, send, mailbox, view, now)
                done = send.at(
                    SendStep.CONFIRMED,
                    internet_message_id=view.internet_message_id,
                    sent_at=view.sent_at or now,
                    activity_id=activity_id,
                )
                return _finished(deps, stored, replace(done, status=SendStatus.SENT))
            if view.state in (DraftState.GONE, DraftState.UNKNOWN) or now - send.created_at > GIVE_UP_AFTER:
                return _finished(deps, stored, send.failed(*_unprovable("its sent copy never appeared")))
            delay = CONFIRM_DELAYS[min(send.attempts, len(CONFIRM_DELAYS) - 1)]
            deps.sends.replace(replace(send, attempts=send.attempts + 1), stored.etag)
            raise _Wait(delay)
        case SendStep.CONFIRMED:  # written together with ``sent``; only reachable through a bad row
            return _finished(deps, stored, replace(send, status=SendStatus.SENT))
    return None


def _held_for_submit(deps: SendDeps, stored: Versioned[Send]) -> Versioned[Send]:
    """The send with a lease that outlasts the submit: renewed (compare-and-set) when less than
    ``SUBMIT_MARGIN`` is left, so a worker that outlived its lease (another may have taken the send
    over and be about to submit it) stops here, before the provider call, and the next worker that
    may take it over comes a whole lease after this submit, when its sent copy is readable."""
    send, now = stored.value, deps.clock.now()
    if send.lease_until is not None and send.lease_until - now >= SUBMIT_MARGIN:
        return stored
    return deps.sends.replace(replace(send, lease_until=now + deps.lease), stored.etag)


def _later(deps: SendDeps, stored: Versioned[Send], seconds: float) -> str:
    """Due again in ``seconds`` (the timer queues it); the status and step stay as they are, and the
    lease is given up so whichever worker the timer's release reaches may go on."""
    at = deps.clock.now() + timedelta(seconds=seconds)
    current = deps.sends.get(stored.value.org_id, stored.value.send_id)
    if current is not None and not current.value.terminal:
        deps.sends.set_due(stored.value.org_id, stored.value.send_id, at)
        _event(current.value, "retrying", retry_after=seconds)
        with contextlib.suppress(ConcurrencyConflict):
            deps.sends.replace(replace(current.value, lease_owner="", lease_until=None), current.etag)
    return "waiting"


def _finished(deps: SendDeps, stored: Versioned[Send], ended: Send) -> str:
    """The one place a send reaches a terminal state (``sent``, ``failed``; ``canceled`` ends in
    ``schedule.cancel``): stored, no longer due, then announced to the CRM."""
    _event(ended, ended.status.value, ended.error.code if ended.error else "")
    written = deps.sends.replace(ended.forgotten(), stored.etag)
    deps.sends.set_due(ended.org_id, ended.send_id, None)
    deps.sends.drop_content(ended.org_id, ended.send_id)
    _announce(deps, written)
    return ended.status.value


def _event(send: Send, outcome: str, failure: str = "", retry_after: float | None = None) -> None:
    """The send's operational event (``telemetry.emit_send``): ids, states and counts, never addresses."""
    telemetry.emit_send(
        send.org_id,
        send.mailbox_id,
        send.send_id,
        outcome=outcome,
        state=send.step.value,
        attempt=send.attempts,
        failure_class=failure,
        recipients=len(send.request.recipients),
        attachments=len(send.request.attachments),
        retry_after_s=retry_after,
    )


def _announce(deps: SendDeps, stored: Versioned[Send]) -> None:
    send = stored.value
    if deps.announce is not None:
        deps.announce(send.org_id, SENT_EVENT if send.status is SendStatus.SENT else FAILED_EVENT, send.send_id)
    deps.sends.replace(replace(send, announced=True), stored.etag)


def _refusal(deps: SendDeps, mailbox: Mailbox, exc: Exception) -> tuple[str, str]:
    """(code, message) of a send refused before or at its submit. The messages name no provider: what
    is missing in a provider's own terms comes from its sender (``permission_problem``)."""
    if isinstance(exc, GrantFailure):
        # A mail server's refusal of the login carries its own reason (never the password).
        why = f": {exc}" if isinstance(exc, MailServerLoginFailed) else ""
        return "needs_reauth", f"the mailbox must be connected again before it can send{why}"
    if isinstance(exc, ConfigurationFailure):
        missing = _what_to_grant(deps, mailbox)
        return "send_permission_missing", f"the provider denied sending from this mailbox: {missing}"
    status = getattr(exc, "status", 0)
    code = getattr(exc, "provider_code", "")
    return "provider_refused", f"the provider refused the message ({status} {code})".strip()


def _what_to_grant(deps: SendDeps, mailbox: Mailbox) -> str:
    """The sender's own account of the missing permission, else the general one (the provider refused
    though the connection looks complete: e.g. a shared mailbox without the right to send as it)."""
    try:
        problem = deps.sender.permission_problem(mailbox)
    except Exception as exc:  # a hint only: the refusal stands whatever the lookup does
        log.info("send: the permission hint failed: %s", type(exc).__name__)
        problem = None
    return problem or (
        "grant its connection the permission to send (and, for a shared mailbox, the right to send as it), "
        "connect it again, then send again"
    )


def _unprovable(why: str) -> tuple[str, str]:
    return "outcome_unknown", (
        f"whether the message went out cannot be proven ({why}); it was not resent: "
        "check the mailbox's sent mail before sending again"
    )


# -- the message and its activity ----------------------------------------------------------------------


def _outgoing(deps: SendDeps, send: Send, mailbox: Mailbox) -> OutgoingMessage:
    request = send.request
    contents = deps.sends.content(send.org_id, send.send_id)
    attachments = tuple(
        OutgoingAttachment(spec.name, spec.content_type, content)
        for spec, content in zip(request.attachments, contents, strict=True)
    )
    return OutgoingMessage(
        send_id=send.send_id,
        sender=EmailAddress(mailbox.address),
        to=request.to,
        cc=request.cc,
        bcc=request.bcc,
        subject=request.subject,
        content_type=request.content_type,
        content=request.content,
        attachments=attachments,
        reply_to=_reply_target(deps, send, mailbox),
        date=request.send_at or send.created_at,
    )


def _reply_target(deps: SendDeps, send: Send, mailbox: Mailbox) -> ReplyTarget | None:
    """The original, found in the mailbox by its Message-ID (a reply through the provider), or only its
    Message-ID and References when the mailbox no longer has it (the threading headers go in the MIME)."""
    activity_id = send.request.reply_to_activity_id
    if not activity_id:
        return None
    original = deps.activities.get(send.org_id, activity_id)
    if original is None:
        return None
    found = deps.mail.find_message(mailbox, original.internet_message_id)
    references = (*(found.references if found else ()), original.internet_message_id)
    return ReplyTarget(original.internet_message_id, tuple(dict.fromkeys(references)), found.source_id if found else "")


def _log_activity(deps: SendDeps, send: Send, mailbox: Mailbox, view: ProviderView, now: datetime) -> str:
    """Save the sent message as one activity (direction ``sent``; BCC never stored) on the send's
    ``record_ids`` plus the records normal matching finds; its id is the one the sync's copy of the same
    Message-ID derives. Returns the activity id, or "" when no record wants it."""
    request = send.request
    internet_message_id, sent_at = view.internet_message_id, view.sent_at or now
    target = _reply_target(deps, send, mailbox) if request.reply_to_activity_id else None
    body = html_text(request.content).text if request.content_type == "html" else request.content
    message = MailMessage(
        source_id=send.handle,
        internet_message_id=internet_message_id,
        subject=request.subject,
        sender=EmailAddress(mailbox.address),
        to=request.to,
        cc=request.cc,
        received_at=sent_at,
        sent_at=sent_at,
        body_text=body,
        body_preview=preview(body),
        folder="sentitems",
        attachments=tuple(AttachmentSummary(a.name, a.size, a.content_type) for a in request.attachments),
        conversation_id=view.conversation_id or None,
        in_reply_to=target.internet_message_id if target else None,
        references=target.references if target else (),
    )
    settings = deps.settings.get(send.org_id)
    built = pipeline.build_activities(
        [message], mailbox, settings, records=deps.records, activities=deps.activities, reasons=Counter()
    )
    chosen = [
        RecordRef(r.record_id, r.record_type) for rid in request.record_ids if (r := deps.records.get(send.org_id, rid))
    ]
    if built:
        activity = built[0]
    elif chosen:
        threads = pipeline.thread_ids(deps.activities, send.org_id, [message])
        activity = Activity(
            org_id=send.org_id,
            activity_id=activity_id_for(send.org_id, internet_message_id),
            internet_message_id=internet_message_id,
            thread_id=threads[internet_message_id],
            subject=message.subject,
            body_text=body,
            body_preview=message.body_preview,
            body_truncated=False,
            sender=message.sender,
            to=message.to,
            cc=message.cc,
            sent_at=sent_at,
            received_at=sent_at,
            direction=Direction.SENT,
            mailbox_ids=(mailbox.mailbox_id,),
            records=(),
            attachments=message.attachments,
            conversation_id=message.conversation_id,
        )
    else:
        return ""
    known = {ref.record_id for ref in activity.records}
    records = activity.records + tuple(ref for ref in chosen if ref.record_id not in known)
    activity = replace(activity, records=records, sent_from_crm=True, send_id=send.send_id)
    written = deps.activities.save([activity], announce_at=deps.clock.now() if deps.events else None)
    if deps.events is not None and written.events:
        deps.events.created(send.org_id, written.events)
    return activity.activity_id
