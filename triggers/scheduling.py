"""Scheduling: the minute timer, the queue-triggered sync of one mailbox, "Sync now" and backfill.

The queue is ``%SYNC_QUEUE_NAME%`` (an app setting; ``mailbox-sync`` in local.settings.json.example and
the deployment) on the ``AzureWebJobsStorage`` account, read with host.json's ``messageEncoding``
(base64), which is how ``StorageWorkQueue`` writes. A failing message is retried by the host up to
host.json's ``maxDequeueCount``; on that last delivery the use case sets the mailbox to ``error`` before
the exception sends the message to ``<queue>-poison``.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import azure.functions as func

from sync_core import bootstrap
from triggers.http_json import run

log = logging.getLogger(__name__)

bp = func.Blueprint()

TIMER_SCHEDULE = "0 * * * * *"  # NCRONTAB, seconds first: every minute
QUEUE_SETTING = "%SYNC_QUEUE_NAME%"
HOST_JSON = Path(__file__).resolve().parents[1] / "host.json"
DEFAULT_MAX_DEQUEUE_COUNT = 5  # the Storage Queues extension's default


@functools.cache
def max_dequeue_count() -> int:
    """host.json ``extensions.queues.maxDequeueCount``: the delivery after which the host poisons a message."""
    try:
        queues = json.loads(HOST_JSON.read_text(encoding="utf-8"))["extensions"]["queues"]
        return int(queues.get("maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT))
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_DEQUEUE_COUNT


@bp.timer_trigger(arg_name="timer", schedule=TIMER_SCHEDULE, run_on_startup=False)
def enqueue_due_mailboxes(timer: func.TimerRequest) -> None:
    from sync_core.use_cases import schedule

    if timer.past_due:
        log.info("timer: running late")
    schedule.enqueue_due(bootstrap.services().schedule_deps())
    release_due_sends()


def release_due_sends() -> None:
    """Queue the sends that fell due (``send_at``, pacing, a provider's Retry-After); never fails the
    sync's tick."""
    from sync_core.use_cases import send

    try:
        send.release_due(bootstrap.services().send_deps())
    except Exception as exc:
        log.error("timer: could not release due sends: %s", type(exc).__name__)


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_SETTING, connection="AzureWebJobsStorage")
def sync_mailbox_from_queue(msg: func.QueueMessage) -> None:
    from sync_core.use_cases import commands

    commands.dispatch(bootstrap.services(), "sync", msg.get_body(), int(msg.dequeue_count or 1), max_dequeue_count())


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/sync", methods=["POST"])
def sync_mailbox_now(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import sync_requests

    return run(req, sync_requests.sync_now)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/backfill", methods=["POST"])
def backfill_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import sync_requests

    return run(req, sync_requests.backfill)
