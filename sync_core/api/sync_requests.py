"""POST /api/orgs/{org}/mailboxes/{mailbox_id}/sync ("Sync now") and .../backfill ``{days}``.

Both answer 202 once the run is queued (or coalesced with one already queued): the sync itself happens
on the queue. 404 for an unknown mailbox; 409 when the mailbox cannot sync (``needs_reauth``, ``error``,
``disconnected``, or paused: disabled, or the org's automation is off), so a broken connection never
produces a partial history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync_core.api.http import ApiRequest, ApiResponse, field_error, read_int, reject_unknown
from sync_core.domain.representation import iso
from sync_core.use_cases import schedule

if TYPE_CHECKING:
    from sync_core.bootstrap import Services


def sync_now(svc: Services, req: ApiRequest) -> ApiResponse:
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    if req.body.strip():
        reject_unknown(req.json_body(), set())  # the route takes no fields; an empty object is fine
    result = schedule.request_sync(svc.schedule_deps(), org, mailbox_id)
    return ApiResponse(202, {"mailbox_id": mailbox_id, "status": result.status})


def backfill(svc: Services, req: ApiRequest) -> ApiResponse:
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    body = req.json_body()
    reject_unknown(body, {"days"})
    days = read_int(body, "days", 1, schedule.MAX_BACKFILL_DAYS)
    if days is None:
        raise field_error("days", f"is required: an integer from 1 to {schedule.MAX_BACKFILL_DAYS}")
    result = schedule.request_backfill(svc.schedule_deps(), org, mailbox_id, days)
    payload: dict[str, Any] = {
        "mailbox_id": mailbox_id,
        "status": result.status,
        "days": days,
        "since": iso(result.since) if result.since else None,
    }
    return ApiResponse(202, payload)


