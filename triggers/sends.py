"""CRM routes for sending mail through a connected mailbox (function key): send, status, list, cancel.
The send itself runs on the push queue (``DeliverSend``, dispatched by ``commands.dispatch``) and the
minute timer releases sends that fell due (``triggers.scheduling``)."""

from __future__ import annotations

import azure.functions as func

from triggers.http_json import run

bp = func.Blueprint()


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/messages:send", methods=["POST"])
def send_message(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import sends

    return run(req, sends.send_message)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/sends", methods=["GET"])
def list_sends(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import sends

    return run(req, sends.list_sends)


@bp.route(route="orgs/{org}/sends/{send_id}", methods=["GET"])
def get_send(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import sends

    return run(req, sends.get_send)


@bp.route(route="orgs/{org}/sends/{send_id}", methods=["DELETE"])
def cancel_send(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import sends

    return run(req, sends.cancel_send)
