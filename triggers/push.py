"""Push: Graph change and lifecycle notifications (anonymous: clientState protects them), RFC 822 ingest,
CRM webhook deliveries and secret, the org's subscriptions (function key); the subscription timer, the
storage maintenance timer (webhook outbox, key rotation) and the push queue.

The push queue is ``%SYNC_QUEUE_NAME%-push`` (``mailbox-sync-push`` with the default sync queue name):
CRM webhook delivery attempts and lifecycle follow-ups that call Graph. No new app setting is needed.
"""

from __future__ import annotations

import azure.functions as func

from sync_core import bootstrap
from triggers.http_json import run

bp = func.Blueprint()

SUBSCRIPTION_TIMER = "0 */5 * * * *"  # NCRONTAB, seconds first: every 5 minutes
MAINTENANCE_TIMER = "30 */5 * * * *"  # every 5 minutes, 30 s after the subscription timer
PUSH_QUEUE = "%SYNC_QUEUE_NAME%-push"


@bp.route(route="notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.change_notifications)


@bp.route(route="google/push", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def gmail_push(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.gmail_push)


@bp.route(route="notifications/lifecycle", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_lifecycle_notifications(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.lifecycle_notifications)


@bp.route(route="orgs/{org}/messages:ingest", methods=["POST"])
def ingest_message(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.ingest_message)


@bp.route(route="orgs/{org}/webhooks/deliveries", methods=["GET"])
def webhook_deliveries(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.webhook_deliveries)


@bp.route(route="orgs/{org}/webhooks/secret", methods=["POST"])
def webhook_secret(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.webhook_secret)


@bp.route(route="orgs/{org}/subscriptions", methods=["GET"])
def list_subscriptions(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import push

    return run(req, push.list_subscriptions)


@bp.timer_trigger(arg_name="timer", schedule=SUBSCRIPTION_TIMER, run_on_startup=False)
def maintain_subscriptions(timer: func.TimerRequest) -> None:
    bootstrap.services().maintain_subscriptions()


@bp.timer_trigger(arg_name="timer", schedule=MAINTENANCE_TIMER, run_on_startup=False)
def maintain_storage(timer: func.TimerRequest) -> None:
    """Announce webhook events a crashed worker left in the outbox; while keys rotate, re-wrap secrets."""
    from sync_core.use_cases import maintenance

    maintenance.maintain(bootstrap.services().maintenance_deps())


@bp.queue_trigger(arg_name="msg", queue_name=PUSH_QUEUE, connection="AzureWebJobsStorage")
def push_work_from_queue(msg: func.QueueMessage) -> None:
    from sync_core.use_cases import commands

    commands.dispatch(bootstrap.services(), "push", msg.get_body())
