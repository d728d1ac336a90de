"""GET /api/health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync_core.api.http import ApiRequest, ApiResponse

if TYPE_CHECKING:
    from sync_core.bootstrap import Services


def get_health(svc: Services, _req: ApiRequest) -> ApiResponse:
    report = svc.health()
    return ApiResponse(200 if report["status"] == "ok" else 503, report)
