"""CRM routes for settings and the records index (function key)."""

from __future__ import annotations

import azure.functions as func

from triggers.http_json import run

bp = func.Blueprint()


@bp.route(route="orgs/{org}/settings", methods=["GET"])
def get_settings(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import settings

    return run(req, settings.get_settings)


@bp.route(route="orgs/{org}/settings", methods=["PUT"])
def put_settings(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import settings

    return run(req, settings.put_settings)


@bp.route(route="orgs/{org}/settings:preview", methods=["POST"])
def preview_settings(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import settings

    return run(req, settings.preview_settings)


@bp.route(route="orgs/{org}/records/{record_id}/backfill", methods=["GET"])
def get_record_backfill(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import records

    return run(req, records.get_record_backfill)


@bp.route(route="orgs/{org}/records/{record_id}", methods=["GET"])
def get_record(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import records

    return run(req, records.get_record)


@bp.route(route="orgs/{org}/records/{record_id}", methods=["PUT"])
def put_record(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import records

    return run(req, records.put_record)


@bp.route(route="orgs/{org}/records/{record_id}", methods=["DELETE"])
def delete_record(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import records

    return run(req, records.delete_record)


@bp.route(route="orgs/{org}/records:batch", methods=["POST"])
def batch_records(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import records

    return run(req, records.batch_records)
