"""CRM routes for activities: a record's timeline and threads, one activity, delete (function key)."""

from __future__ import annotations

import azure.functions as func

from triggers.http_json import run

bp = func.Blueprint()


@bp.route(route="orgs/{org}/records/{record_id}/activities", methods=["GET"])
def list_record_activities(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import activities

    return run(req, activities.list_activities)


@bp.route(route="orgs/{org}/activities/{activity_id}", methods=["GET"])
def get_activity(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import activities

    return run(req, activities.get_activity)


@bp.route(route="orgs/{org}/activities/{activity_id}", methods=["DELETE"])
def delete_activity(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import activities

    return run(req, activities.delete_activity)
