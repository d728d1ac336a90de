"""What every step of sending needs: the ports (``SendDeps``) and how a send is put on the queue.

A send is driven by ``DeliverSend`` commands on the push queue (``use_cases.commands``). A send that must
wait (``send_at``, pacing, a provider's 429) gets a due time in the sends store instead of a delayed
queue message (queues cap delays at 7 days, ``send_at`` reaches 30); the minute timer
(``schedule.release_due``) queues what fell due. A command for a send that is not due yet, or already
finished, changes nothing, so a message delivered twice is harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sync_core.ports import (
    ActivityEvents,
    ActivityStore,
    Clock,
    MailboxRepository,
    MailSource,
    RecordsIndex,
    SettingsRepository,
    WorkQueue,
)
from sync_core.ports.send import MailSender, SendStore
from sync_core.use_cases.commands import DeliverSend


@dataclass
class SendDeps:
    sends: SendStore
    mailboxes: MailboxRepository
    settings: SettingsRepository
    records: RecordsIndex
    activities: ActivityStore
    mail: MailSource
    sender: MailSender
    queue: WorkQueue
    """The push queue (``DeliverSend`` commands)."""
    clock: Clock
    announce: Callable[[str, str, str], None] | None = None
    """(org, event, send id): queue the CRM webhook of a send's end; None: no webhooks."""
    events: ActivityEvents | None = None
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex
    lease: timedelta = timedelta(minutes=5)
    """How long a worker holds a send's provider steps (``Send.lease_owner``) before another may resume."""


def enqueue(deps: SendDeps, org_id: str, send_id: str) -> None:
    deps.queue.enqueue(DeliverSend(org_id, send_id).to_json())


def command_json(org_id: str, send_id: str) -> Mapping[str, Any]:
    return DeliverSend(org_id, send_id).to_json()
