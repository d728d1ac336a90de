"""Queue messages as typed commands, and the one dispatcher the queue triggers call.

Two queues carry commands: the sync queue (``SyncMailbox``: run one mailbox; ``BackfillRecords``, kind
``record_backfill``: run one record backfill job under the same mailbox lease) and the push queue
(``DeliverWebhook``: one attempt of a CRM webhook delivery; ``SubscriptionWork``: renew or recreate a Graph
subscription, or subscribe a mailbox that just became active; ``DeliverSend``: drive one send of the CRM's
through its state machine, ``use_cases.send.machine``). Invariants:

- The wire format is the JSON a deploy before this module wrote, byte-for-byte in meaning, so messages
  queued by an older deploy still parse: a sync message is ``{org_id, mailbox_id, reason}`` (no kind), with
  ``run_id`` when a CRM was given one to poll; a push
  message carries ``kind`` (``webhook`` or ``subscription``) and its fields.
- ``parse_*`` raises ``InvalidCommand`` for anything else; ``dispatch`` drops such a message with a log line
  and returns ``invalid`` (retrying would read the same bytes), never raising for it.
- ``dispatch`` raises what the handler raises (storage or Graph trouble), so the host retries the message.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard

from sync_core.errors import InvalidCommand

if TYPE_CHECKING:
    from sync_core.use_cases.notifications import NotificationDeps
    from sync_core.use_cases.record_backfill import RecordBackfillDeps
    from sync_core.use_cases.schedule import ScheduleDeps
    from sync_core.use_cases.send import SendDeps
    from sync_core.use_cases.subscriptions import SubscriptionDeps
    from sync_core.use_cases.webhooks import WebhookDeps

log = logging.getLogger(__name__)

WEBHOOK_KIND = "webhook"
RECORD_BACKFILL_KIND = "record_backfill"
SUBSCRIPTION_KIND = "subscription"
SEND_KIND = "send"
WEBHOOK_EVENTS = ("activity.created", "activity.deleted", "send.sent", "send.failed")


class SyncReason(StrEnum):
    """Why a sync message was queued (logs and run reports)."""

    TIMER = "timer"
    SYNC_NOW = "sync_now"
    BACKFILL = "backfill"
    CONTINUATION = "continuation"
    SCHEDULED = "scheduled"


class SubscriptionAction(StrEnum):
    REAUTHORIZE = "reauthorize"
    RECREATE = "recreate"
    ENSURE = "ensure"  # a mailbox became active: give it its subscriptions now (an older deploy drops it)


# -- commands ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncMailbox:
    """Run one sync of a mailbox (the sync queue). ``reason`` is free text on the wire: an older or newer
    deploy's reason is kept as it came. ``run_id``: the id a CRM was given to poll ("Sync now", backfill,
    and their follow-ups), which the run reports under; written only when set, so a message without one
    (the timer's, an older deploy's) keeps the older JSON, and a run id that is not a short token is
    dropped rather than failing the message."""

    org_id: str
    mailbox_id: str
    reason: str
    run_id: str = ""

    def to_json(self) -> dict[str, str]:
        data = {"org_id": self.org_id, "mailbox_id": self.mailbox_id, "reason": str(self.reason)}
        if self.run_id:
            data["run_id"] = self.run_id
        return data

    @classmethod
    def parse(cls, body: bytes | str) -> SyncMailbox:
        data = _json_object(body)
        org_id, mailbox_id, reason = data.get("org_id"), data.get("mailbox_id"), data.get("reason", "")
        if not (isinstance(org_id, str) and org_id and isinstance(mailbox_id, str) and mailbox_id):
            raise InvalidCommand("the message lacks org_id or mailbox_id")
        run_id = data.get("run_id")
        return cls(org_id, mailbox_id, str(reason), run_id if valid_run_id(run_id) else "")


RUN_ID = re.compile(r"[0-9a-f]{32}")


def new_run_id() -> str:
    """A fresh run id: 32 lowercase hex digits (a UUID4), safe in a URL path and a Table row key."""
    return uuid.uuid4().hex


def valid_run_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class BackfillRecords:
    """Run (or continue) one record backfill job of a mailbox (the sync queue, ``kind``
    ``record_backfill``; ``use_cases.record_backfill``). A deploy older than this command reads it as a
    plain sync of the mailbox (its ``SyncMailbox.parse`` ignores ``kind``): harmless, and the job waits."""

    org_id: str
    mailbox_id: str
    job_id: str

    def to_json(self) -> dict[str, str]:
        return {
            "kind": RECORD_BACKFILL_KIND,
            "org_id": self.org_id,
            "mailbox_id": self.mailbox_id,
            "reason": "record_backfill",
            "job_id": self.job_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackfillRecords:
        org_id, mailbox_id, job_id = data.get("org_id"), data.get("mailbox_id"), data.get("job_id")
        if not (isinstance(org_id, str) and org_id and isinstance(mailbox_id, str) and mailbox_id):
            raise InvalidCommand("the message lacks org_id or mailbox_id")
        if not valid_run_id(job_id):
            raise InvalidCommand("the message lacks a valid job_id")
        return cls(org_id, mailbox_id, job_id)


def parse_record_backfill(body: bytes | str) -> BackfillRecords | None:
    """The sync-queue message as a ``BackfillRecords`` when its ``kind`` says so, else None (a
    ``SyncMailbox``, parsed by the scheduler); ``InvalidCommand`` for a malformed one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # the scheduler's parse reports it
    if not isinstance(data, dict) or data.get("kind") != RECORD_BACKFILL_KIND:
        return None
    return BackfillRecords.from_json(data)


@dataclass(frozen=True)
class DeliverWebhook:
    """One attempt (``attempt``, from 1) of the delivery ``delivery_id`` of an activity event to the org's
    webhook (the push queue)."""

    org_id: str
    delivery_id: str
    event: str
    activity_id: str
    created_at: datetime
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": WEBHOOK_KIND,
            "org_id": self.org_id,
            "delivery_id": self.delivery_id,
            "event": self.event,
            "activity_id": self.activity_id,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "attempt": self.attempt,
        }

    @classmethod
    def from_json(cls, message: Any) -> DeliverWebhook:
        try:
            command = cls(
                org_id=str(message["org_id"]),
                delivery_id=str(message["delivery_id"]),
                event=str(message["event"]),
                activity_id=str(message["activity_id"]),
                created_at=datetime.fromisoformat(str(message["created_at"])),
                attempt=int(message["attempt"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidCommand("not a webhook delivery message") from exc
        if command.event not in WEBHOOK_EVENTS or command.attempt < 1:
            raise InvalidCommand("not a webhook delivery message")
        return command


@dataclass(frozen=True)
class SubscriptionWork:
    """Renew (``reauthorize``) or subscribe again (``recreate``) one Graph subscription, or subscribe a
    mailbox that just became active (``ensure``, by ``org_id`` and ``mailbox_id``; no subscription id),
    on the push queue. ``action`` stays a string: an action this version does not know is dropped by its
    handler. The mailbox fields are written only when set, so the older messages' JSON is unchanged."""

    action: str
    subscription_id: str = ""
    org_id: str = ""
    mailbox_id: str = ""

    def to_json(self) -> dict[str, str]:
        data = {"kind": SUBSCRIPTION_KIND, "action": str(self.action), "subscription_id": self.subscription_id}
        if self.org_id or self.mailbox_id:
            data.update(org_id=self.org_id, mailbox_id=self.mailbox_id)
        return data

    @classmethod
    def from_json(cls, message: Any) -> SubscriptionWork:
        return cls(
            str(message.get("action")),
            str(message.get("subscription_id", "")),
            str(message.get("org_id", "")),
            str(message.get("mailbox_id", "")),
        )


@dataclass(frozen=True)
class DeliverSend:
    """Drive the send ``send_id`` of ``org_id`` as far as it can go now (the push queue, kind ``send``).
    Repeating it is harmless: the state machine resumes from the send's checkpoint."""

    org_id: str
    send_id: str

    def to_json(self) -> dict[str, str]:
        return {"kind": SEND_KIND, "org_id": self.org_id, "send_id": self.send_id}

    @classmethod
    def from_json(cls, message: Any) -> DeliverSend:
        org_id, send_id = message.get("org_id"), message.get("send_id")
        if not (isinstance(org_id, str) and org_id and isinstance(send_id, str) and send_id):
            raise InvalidCommand("a send message lacks org_id or send_id")
        return cls(org_id, send_id)


PushCommand = DeliverWebhook | SubscriptionWork | DeliverSend


def parse_push(body: bytes | str) -> PushCommand:
    """A push-queue message as its command (by ``kind``); ``InvalidCommand`` otherwise."""
    data = _json_object(body)
    kind = data.get("kind")
    if kind == WEBHOOK_KIND:
        return DeliverWebhook.from_json(data)
    if kind == SUBSCRIPTION_KIND:
        return SubscriptionWork.from_json(data)
    if kind == SEND_KIND:
        return DeliverSend.from_json(data)
    raise InvalidCommand(f"a message of unknown kind {str(kind)[:40]!r}")


def _json_object(body: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCommand("the message is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidCommand("the message is not a JSON object")
    return data


# -- the dispatcher ------------------------------------------------------------------------------------


class Handlers(Protocol):
    """Where the dispatcher gets each use case's dependencies (``bootstrap.Services``)."""

    def schedule_deps(self) -> ScheduleDeps: ...
    def webhook_deps(self) -> WebhookDeps: ...
    def notification_deps(self) -> NotificationDeps: ...
    def subscription_deps(self) -> SubscriptionDeps: ...
    def record_backfill_deps(self) -> RecordBackfillDeps: ...
    def send_deps(self) -> SendDeps: ...


def dispatch(
    app: Handlers,
    queue: Literal["sync", "push"],
    body: bytes | str,
    dequeue_count: int = 1,
    max_dequeue_count: int = 1,
) -> str:
    """Parse one message of ``queue`` and run its command; returns the outcome (``invalid`` for a message
    that is not a command). A sync message goes through ``schedule.process_message`` (the one entry the
    tests drive too): its last failing delivery (``dequeue_count`` reaching ``max_dequeue_count``)
    records the failure on the mailbox before the exception poisons the message."""
    # The use cases load on the first message, not when a trigger module is indexed (cold start).
    from sync_core.use_cases import notifications, schedule, send, webhooks  # noqa: PLC0415

    if queue == "sync":
        try:
            backfill = parse_record_backfill(body)
        except InvalidCommand as exc:
            log.warning("sync queue: dropping a record backfill message: %s", exc)
            return "invalid"
        if backfill is not None:
            from sync_core.use_cases import record_backfill  # noqa: PLC0415

            return record_backfill.process(app.record_backfill_deps(), backfill).value
        return schedule.process_message(app.schedule_deps(), body, dequeue_count, max_dequeue_count)
    try:
        command = parse_push(body)
    except InvalidCommand as exc:
        log.warning("push queue: dropping a message: %s", exc)  # retrying would never make it valid
        return "invalid"
    match command:
        case DeliverWebhook():
            return webhooks.deliver(app.webhook_deps(), command).status
        case SubscriptionWork():
            return notifications.process_work(app.notification_deps(), app.subscription_deps(), command)
        case DeliverSend():
            return send.deliver(app.send_deps(), command.org_id, command.send_id)
