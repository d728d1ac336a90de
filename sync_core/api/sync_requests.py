"""POST /api/orgs/{org}/mailboxes/{mailbox_id}/sync ("Sync now") and .../backfill ``{days}`` (``dry_run``:
a preview answered at once, storing nothing).

Both answer 202 once the run is queued (or coalesced with one already queued): the sync itself happens
on the queue. The answer names the run to poll: ``run_id``, ``run_url`` and a ``Location`` header, all for
``GET …/runs/{run_id}`` (``use_cases.run_status``); a coalesced request names the run already queued.
404 for an unknown mailbox; 409 when the mailbox cannot sync (``needs_reauth``, ``error``,
``disconnected``, or paused: disabled, or the org's automation is off), so a broken connection never
produces a partial history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sync_core.api.http import ApiRequest, ApiResponse, field_error, ok, read_bool, read_int, reject_unknown
from sync_core.domain.representation import iso
from sync_core.use_cases import schedule

if TYPE_CHECKING:
    from sync_core.bootstrap import Services


def run_url(org: str, mailbox_id: str, run_id: str) -> str:
    """Where the CRM polls a run: ``GET /api/orgs/{org}/mailboxes/{mailbox_id}/runs/{run_id}``."""
    return f"/api/orgs/{quote(org, safe='')}/mailboxes/{quote(mailbox_id, safe='')}/runs/{quote(run_id, safe='')}"


def _accepted(org: str, mailbox_id: str, result: schedule.SyncRequest, payload: dict[str, Any]) -> ApiResponse:
    url = run_url(org, mailbox_id, result.run_id)
    body = {"mailbox_id": mailbox_id, "status": result.status, "run_id": result.run_id, "run_url": url, **payload}
    return ApiResponse(202, body, {"Location": url})


def sync_now(svc: Services, req: ApiRequest) -> ApiResponse:
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    if req.body.strip():
        reject_unknown(req.json_body(), set())  # the route takes no fields; an empty object is fine
    result = schedule.request_sync(svc.schedule_deps(), org, mailbox_id)
    return _accepted(org, mailbox_id, result, {})


def backfill(svc: Services, req: ApiRequest) -> ApiResponse:
    """Queue a backfill (202), or with ``"dry_run": true`` answer what it would log (200, inline and
    bounded: ``use_cases.preview``), under the stored settings or ``"settings"`` laid over them."""
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    body = req.json_body()
    reject_unknown(body, {"days", "dry_run", "settings"})
    days = read_int(body, "days", 1, schedule.MAX_BACKFILL_DAYS)
    if days is None:
        raise field_error("days", f"is required: an integer from 1 to {schedule.MAX_BACKFILL_DAYS}")
    dry_run = read_bool(body, "dry_run")
    if dry_run:
        from sync_core.api.settings import proposed_settings  # noqa: PLC0415
        from sync_core.use_cases import preview  # noqa: PLC0415

        proposed = proposed_settings(svc, org, body.get("settings"))
        return ok(preview.preview_backfill(svc.preview_deps(), org, mailbox_id, days, proposed).to_json())
    if "settings" in body:
        raise field_error("settings", "is for dry runs only (\"dry_run\": true); change settings with PUT …/settings")
    result = schedule.request_backfill(svc.schedule_deps(), org, mailbox_id, days)
    return _accepted(org, mailbox_id, result, {"days": days, "since": iso(result.since) if result.since else None})


