"""GET /api/health: storage reachable, version. Anonymous (load balancers and uptime checks call it)."""

from __future__ import annotations

import azure.functions as func

from triggers.http_json import run

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import health as api

    return run(req, api.get_health)
