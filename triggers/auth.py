"""Connecting mailboxes: start sign-in and admin consent (function key), and the two OAuth redirect
targets (anonymous: the stored, single-use state protects them)."""

from __future__ import annotations

import azure.functions as func

from triggers.http_json import run

bp = func.Blueprint()


@bp.route(route="orgs/{org}/mailboxes/connect", methods=["POST"])
def connect_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import auth

    return run(req, auth.connect_mailbox)


@bp.route(route="orgs/{org}/mailboxes/connect:confirm", methods=["POST"])
def confirm_connect_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import mailboxes

    return run(req, mailboxes.confirm_connect_mailbox)


@bp.route(route="orgs/{org}/admin-consent", methods=["GET"])
def admin_consent_url(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import auth

    return run(req, auth.admin_consent_url)


@bp.route(route="auth/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import auth

    return run(req, auth.connect_callback)


@bp.route(route="auth/admin-consent/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def admin_consent_callback(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import auth

    return run(req, auth.admin_consent_callback)
