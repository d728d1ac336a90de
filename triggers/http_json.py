"""The one bridge between Azure Functions HTTP bindings and sync_core's HTTP API handlers.

Importing it stays cheap (see triggers/__init__.py): ``sync_core.api.http`` is plain data types and
``sync_core.bootstrap`` imports its adapters and SDKs only when ``services()`` first builds them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import azure.functions as func

from sync_core import bootstrap
from sync_core.api.http import ApiError, ApiRequest, ApiResponse
from sync_core.errors import SyncError

log = logging.getLogger(__name__)

Handler = Callable[["bootstrap.Services", ApiRequest], ApiResponse]


def run(req: func.HttpRequest, handler: Handler) -> func.HttpResponse:
    """Parse the binding, call the handler, map the result. A ``SyncError`` the handler lets escape gets its
    status from the one table (``sync_core.api.errors``); anything else, or an error without a row, is a
    500 whose body never carries exception text (it may hold data); the log gets the exception type only."""
    request = ApiRequest(
        method=req.method.upper(),
        route=dict(req.route_params),
        query=dict(req.params),
        headers={k.lower(): v for k, v in req.headers.items()},
        body=req.get_body() or b"",
    )
    try:
        response = handler(bootstrap.services(), request)
    except ApiError as exc:
        return json_response(exc.status, exc.body())
    except SyncError as exc:
        from sync_core.api.errors import api_error_of  # loaded on the first refused call only

        mapped = api_error_of(exc)
        if mapped is not None:
            return json_response(mapped.status, mapped.body())
        log.error("unhandled %s in %s", type(exc).__name__, getattr(handler, "__name__", "handler"))
        return json_response(500, ApiError(500, "internal_error", "the server failed; try again").body())
    except Exception as exc:
        log.error("unhandled %s in %s", type(exc).__name__, getattr(handler, "__name__", "handler"))
        return json_response(500, ApiError(500, "internal_error", "the server failed; try again").body())
    if isinstance(response.body, str):
        return func.HttpResponse(response.body, status_code=response.status, headers=dict(response.headers))
    return json_response(response.status, response.body, response.headers)


def json_response(status: int, payload: object, headers: object = None) -> func.HttpResponse:
    if status == 204:
        return func.HttpResponse(status_code=204)
    return func.HttpResponse(
        json.dumps(payload), status_code=status, mimetype="application/json", headers=dict(headers or {})  # type: ignore[call-overload]
    )
