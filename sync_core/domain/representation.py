"""JSON representations shared by the HTTP API and the CRM webhooks: times and activities.

One place, so an activity looks the same in ``GET /activities/{id}`` and in a webhook's ``data``, and every
time is ISO 8601 in UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sync_core.domain.model import Activity, EmailAddress
from sync_core.domain.sending import Send


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; a naive datetime is taken as UTC."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None


def activity_to_json(activity: Activity) -> dict[str, Any]:
    return {
        "id": activity.activity_id,
        "internet_message_id": activity.internet_message_id,
        "thread_id": activity.thread_id,
        "conversation_id": activity.conversation_id,
        "subject": activity.subject,
        "body": activity.body_text,
        "body_preview": activity.body_preview,
        "body_truncated": activity.body_truncated,
        "from": _party(activity.sender) if activity.sender else None,
        "to": [_party(p) for p in activity.to],
        "cc": [_party(p) for p in activity.cc],
        "sent_at": iso(activity.sent_at) if activity.sent_at else None,
        "received_at": iso(activity.received_at),
        "direction": activity.direction.value,
        "mailbox_ids": list(activity.mailbox_ids),
        "records": [{"id": ref.record_id, "type": ref.record_type} for ref in activity.records],
        "attachments": [
            {"name": item.name, "size": item.size, "content_type": item.content_type} for item in activity.attachments
        ],
        "sent_from_crm": activity.sent_from_crm,
        "send_id": activity.send_id,
    }


def send_to_json(send: Send) -> dict[str, Any]:
    """A send as ``GET …/sends/{id}`` and the ``send.*`` webhooks show it (never its body or BCC)."""
    return {
        "id": send.send_id,
        "mailbox_id": send.mailbox_id,
        "status": send.status.value,
        "internet_message_id": send.internet_message_id or None,
        "activity_id": send.activity_id or None,
        "error": {"code": send.error.code, "message": send.error.message} if send.error else None,
        "created_at": iso(send.created_at),
        "sent_at": iso_or_none(send.sent_at),
        "not_before": iso_or_none(send.not_before),
        "send_at": iso_or_none(send.request.send_at),
    }


def _party(party: EmailAddress) -> dict[str, str]:
    return {"address": party.address, "name": party.name}
