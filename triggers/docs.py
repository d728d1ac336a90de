"""GET /api/openapi.json: the API's OpenAPI document. Anonymous, and independent of storage and settings
(it does not go through ``sync_core.bootstrap.services()``), so it is served even when they are broken."""

from __future__ import annotations

import azure.functions as func

from sync_core.api.http import ApiRequest

bp = func.Blueprint()


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    from sync_core.api import openapi

    request = ApiRequest(method=req.method.upper(), headers={k.lower(): v for k, v in req.headers.items()})
    response = openapi.get_openapi(request)
    headers = dict(response.headers)
    content_type = headers.pop("Content-Type", "")
    return func.HttpResponse(
        response.body,
        status_code=response.status,
        headers=headers,
        mimetype=content_type.split(";")[0] or None,
        charset="utf-8",
    )
