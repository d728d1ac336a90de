"""CRM routes for an org's mailboxes (function key): application-mode add, list, status, PATCH,
disconnect, run reports, explain, and sign out all users."""

from __future__ import annotations

import azure.functions as func

from triggers.http_json import run

bp = func.Blueprint()


@bp.route(route="orgs/{org}/mailboxes", methods=["POST"])
def add_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.add_mailbox)


@bp.route(route="orgs/{org}/mailboxes", methods=["GET"])
def list_mailboxes(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.list_mailboxes)


@bp.route(route="orgs/{org}/mailboxes:sign-out-all", methods=["POST"])
def sign_out_all_mailboxes(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.sign_out_all_mailboxes)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}", methods=["GET"])
def get_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.get_mailbox)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}", methods=["PATCH"])
def update_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.update_mailbox)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}", methods=["DELETE"])
def disconnect_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.delete_mailbox)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/runs", methods=["GET"])
def list_mailbox_runs(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.list_runs)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/runs/{run_id}", methods=["GET"])
def get_mailbox_run(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.get_run)


@bp.route(route="orgs/{org}/mailboxes/{mailbox_id}/explain", methods=["POST"])
def explain_message(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.explain_message)


@bp.route(route="orgs/{org}/google/service-account", methods=["PUT"])
def put_google_service_account(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import org_access

    return run(req, org_access.put_service_account)


@bp.route(route="orgs/{org}/google/service-account", methods=["GET"])
def get_google_service_account(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import org_access

    return run(req, org_access.get_service_account)


@bp.route(route="orgs/{org}/google/service-account", methods=["DELETE"])
def delete_google_service_account(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import org_access

    return run(req, org_access.delete_service_account)
